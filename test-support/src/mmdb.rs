//! A small writer of MaxMind DB files (`.mmdb`, format 2.0), so tests and benchmarks make the
//! GeoIP databases they read instead of downloading one: the test databases of
//! `../shared/scripts/make-test-mmdb.pl` ([`test_country_db`], [`test_asn_db`]) and a City-like
//! database of any size ([`city_db`]).
//!
//! What it writes: an IPv6 search tree (IPv4 networks under `::/96`, where readers look for
//! them) with 32-bit records, the 16-byte separator, the data section (each distinct record
//! once), the metadata marker and map. It writes no pointers inside the data section and
//! refuses overlapping networks: enough for tests, not a general writer.

use std::collections::HashMap;
use std::net::IpAddr;

/// A value in the data section.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Str(String),
    Double(f64),
    U16(u16),
    U32(u32),
    U64(u64),
    Bool(bool),
    Map(Vec<(String, Value)>),
    Array(Vec<Value>),
}

impl Value {
    /// A map from `(key, value)` pairs.
    pub fn map<const N: usize>(pairs: [(&str, Value); N]) -> Self {
        Self::Map(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
    }

    pub fn str(text: &str) -> Self {
        Self::Str(text.to_owned())
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Self::Str(text) => {
                control(out, 2, text.len());
                out.extend_from_slice(text.as_bytes());
            }
            Self::Double(value) => {
                control(out, 3, 8);
                out.extend_from_slice(&value.to_be_bytes());
            }
            Self::U16(value) => unsigned(out, 5, u64::from(*value)),
            Self::U32(value) => unsigned(out, 6, u64::from(*value)),
            Self::U64(value) => unsigned(out, 9, *value),
            Self::Bool(value) => control(out, 14, usize::from(*value)),
            Self::Map(pairs) => {
                control(out, 7, pairs.len());
                for (key, value) in pairs {
                    Self::Str(key.clone()).encode(out);
                    value.encode(out);
                }
            }
            Self::Array(values) => {
                control(out, 11, values.len());
                for value in values {
                    value.encode(out);
                }
            }
        }
    }
}

/// The control byte(s) of a value: type (extended past 7) and size.
fn control(out: &mut Vec<u8>, kind: u8, size: usize) {
    let (mut first, extended) = if kind <= 7 {
        (kind << 5, None)
    } else {
        (0, Some(kind - 7))
    };
    let extra: Vec<u8> = if size < 29 {
        first |= size as u8;
        Vec::new()
    } else if size < 29 + 256 {
        first |= 29;
        vec![(size - 29) as u8]
    } else if size < 285 + 65_536 {
        first |= 30;
        ((size - 285) as u16).to_be_bytes().to_vec()
    } else {
        first |= 31;
        (size - 65_821).to_be_bytes()[std::mem::size_of::<usize>() - 3..].to_vec()
    };
    out.push(first);
    out.extend(extended);
    out.extend(extra);
}

fn unsigned(out: &mut Vec<u8>, kind: u8, value: u64) {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    control(out, kind, bytes.len() - skip);
    out.extend_from_slice(&bytes[skip..]);
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Record {
    Empty,
    Node(u32),
    Data(u32),
}

/// A database being built.
pub struct Writer {
    database_type: String,
    nodes: Vec<[Record; 2]>,
    data: Vec<u8>,
    /// Encoded record → its offset in the data section.
    offsets: HashMap<Vec<u8>, u32>,
}

impl Writer {
    pub fn new(database_type: &str) -> Self {
        Self {
            database_type: database_type.to_owned(),
            nodes: vec![[Record::Empty; 2]],
            data: Vec::new(),
            offsets: HashMap::new(),
        }
    }

    /// Adds `network/prefix` → `value`.
    ///
    /// # Panics
    /// The network overlaps one inserted before, or the prefix is too long.
    pub fn insert(&mut self, network: IpAddr, prefix: u8, value: &Value) {
        let (bits, depth) = match network {
            IpAddr::V4(v4) => (u128::from(u32::from(v4)), 96 + u32::from(prefix)),
            IpAddr::V6(v6) => (u128::from(v6), u32::from(prefix)),
        };
        assert!((1..=128).contains(&depth), "prefix /{prefix} too long");
        let mut encoded = Vec::new();
        value.encode(&mut encoded);
        let next_offset = u32::try_from(self.data.len()).unwrap();
        let offset = *self.offsets.entry(encoded.clone()).or_insert(next_offset);
        if offset == next_offset {
            self.data.extend_from_slice(&encoded);
        }
        let mut node = 0usize;
        for i in 0..depth {
            let bit = ((bits >> (127 - i)) & 1) as usize;
            if i + 1 == depth {
                assert_eq!(
                    self.nodes[node][bit],
                    Record::Empty,
                    "{network}/{prefix} overlaps another network"
                );
                self.nodes[node][bit] = Record::Data(offset);
                return;
            }
            node = match self.nodes[node][bit] {
                Record::Node(next) => next as usize,
                Record::Empty => {
                    let next = self.nodes.len();
                    self.nodes.push([Record::Empty; 2]);
                    self.nodes[node][bit] = Record::Node(u32::try_from(next).unwrap());
                    next
                }
                Record::Data(_) => panic!("{network}/{prefix} overlaps another network"),
            };
        }
    }

    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let node_count = u32::try_from(self.nodes.len()).unwrap();
        let value = |record: Record| match record {
            Record::Empty => node_count,
            Record::Node(n) => n,
            Record::Data(offset) => node_count + 16 + offset,
        };
        let mut out = Vec::with_capacity(self.nodes.len() * 8 + 16 + self.data.len() + 256);
        for [left, right] in &self.nodes {
            out.extend_from_slice(&value(*left).to_be_bytes());
            out.extend_from_slice(&value(*right).to_be_bytes());
        }
        out.extend_from_slice(&[0; 16]);
        out.extend_from_slice(&self.data);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        Value::map([
            ("binary_format_major_version", Value::U16(2)),
            ("binary_format_minor_version", Value::U16(0)),
            ("build_epoch", Value::U64(1_700_000_000)),
            ("database_type", Value::str(&self.database_type)),
            (
                "description",
                Value::map([(
                    "en",
                    Value::Str(format!("cluegetter test {}", self.database_type)),
                )]),
            ),
            ("ip_version", Value::U16(6)),
            ("languages", Value::Array(vec![Value::str("en")])),
            ("node_count", Value::U32(node_count)),
            ("record_size", Value::U16(32)),
        ])
        .encode(&mut out);
        out
    }
}

/// The networks of `make-test-mmdb.pl`: TEST-NET-1 NL, TEST-NET-2 US, TEST-NET-3 CN,
/// 2001:db8::/32 DE, with their ASNs.
pub const TEST_NETWORKS: [(&str, u8, &str, &str, u32, &str); 4] = [
    (
        "192.0.2.0",
        24,
        "NL",
        "Netherlands",
        64496,
        "Example Transit NL",
    ),
    (
        "198.51.100.0",
        24,
        "US",
        "United States",
        64497,
        "Example Hosting US",
    ),
    (
        "203.0.113.0",
        24,
        "CN",
        "China",
        64498,
        "Example Broadband CN",
    ),
    ("2001:db8::", 32, "DE", "Germany", 64499, "Example IPv6 DE"),
];

fn country_record(iso: &str, name: &str) -> Value {
    let country = || {
        Value::map([
            ("iso_code", Value::str(iso)),
            ("names", Value::map([("en", Value::str(name))])),
        ])
    };
    Value::map([("country", country()), ("registered_country", country())])
}

/// A GeoLite2-Country-like database of [`TEST_NETWORKS`].
pub fn test_country_db() -> Vec<u8> {
    let mut writer = Writer::new("GeoLite2-Country");
    for (net, prefix, iso, name, _, _) in TEST_NETWORKS {
        writer.insert(net.parse().unwrap(), prefix, &country_record(iso, name));
    }
    writer.to_bytes()
}

/// A GeoLite2-ASN-like database of [`TEST_NETWORKS`].
pub fn test_asn_db() -> Vec<u8> {
    let mut writer = Writer::new("GeoLite2-ASN");
    for (net, prefix, _, _, asn, org) in TEST_NETWORKS {
        writer.insert(
            net.parse().unwrap(),
            prefix,
            &Value::map([
                ("autonomous_system_number", Value::U32(asn)),
                ("autonomous_system_organization", Value::str(org)),
            ]),
        );
    }
    writer.to_bytes()
}

/// A GeoLite2-City-like database of `networks` IPv4 /24s spread over the address space (one
/// in every 16 from 1.0.0.0 on, so lookups walk a realistically deep tree), each with a city,
/// continent, country, location and postal code, 5,000 distinct records in all. Returns the
/// file and one address inside each network.
pub fn city_db(networks: u32) -> (Vec<u8>, Vec<IpAddr>) {
    const COUNTRIES: [(&str, &str, &str); 8] = [
        ("NL", "Netherlands", "EU"),
        ("US", "United States", "NA"),
        ("CN", "China", "AS"),
        ("DE", "Germany", "EU"),
        ("BR", "Brazil", "SA"),
        ("AU", "Australia", "OC"),
        ("ZA", "South Africa", "AF"),
        ("JP", "Japan", "AS"),
    ];
    let mut writer = Writer::new("GeoLite2-City");
    let mut addresses = Vec::with_capacity(networks as usize);
    for i in 0..networks {
        let base = 0x0100_0000u32.wrapping_add(i.wrapping_mul(16) << 8);
        let city = i % 5_000;
        let (iso, name, continent) = COUNTRIES[(city % 8) as usize];
        let record = Value::map([
            (
                "city",
                Value::map([
                    ("geoname_id", Value::U32(1_000_000 + city)),
                    (
                        "names",
                        Value::map([("en", Value::Str(format!("City {city}")))]),
                    ),
                ]),
            ),
            (
                "continent",
                Value::map([
                    ("code", Value::str(continent)),
                    ("geoname_id", Value::U32(6_255_000 + city % 8)),
                ]),
            ),
            (
                "country",
                Value::map([
                    ("geoname_id", Value::U32(2_750_000 + city % 8)),
                    ("iso_code", Value::str(iso)),
                    ("names", Value::map([("en", Value::str(name))])),
                ]),
            ),
            (
                "location",
                Value::map([
                    ("accuracy_radius", Value::U16(100)),
                    ("latitude", Value::Double(f64::from(city % 180) - 90.0)),
                    ("longitude", Value::Double(f64::from(city % 360) - 180.0)),
                    ("time_zone", Value::str("Europe/Amsterdam")),
                ]),
            ),
            (
                "postal",
                Value::map([("code", Value::Str(format!("{:05}", city)))]),
            ),
            (
                "registered_country",
                Value::map([
                    ("iso_code", Value::str(iso)),
                    ("is_in_european_union", Value::Bool(continent == "EU")),
                ]),
            ),
        ]);
        let network = IpAddr::V4(base.into());
        writer.insert(network, 24, &record);
        addresses.push(IpAddr::V4((base | 0x2a).into()));
    }
    (writer.to_bytes(), addresses)
}
