//! The MaxMind databases (`[geoip] database`, `asn-database`): read into memory, looked up,
//! and read again when the file changes, without a restart.
//!
//! Every `reload-interval` one check looks at the file (a `stat`: length, modification time,
//! inode). When that changed, the file is read and checked whole (`Reader::verify`) on a
//! blocking thread; only a file that passes replaces the one in use. A damaged file is logged
//! once and the last good one stays; a file missing at start leaves the module without a
//! database, so every lookup is an error until the file appears. The file is read into memory,
//! not mapped: an operator copying a new file over the old one in place cannot pull pages from
//! under a lookup.
//!
//! This file does not judge anything; [`classify`] only says which addresses are not looked
//! up at all (loopback, private, link-local, unique-local).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use maxminddb::{MaxMindDbError, Reader, geoip2};

/// An address that is never looked up, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotPublic {
    Unspecified,
    Loopback,
    /// RFC 1918 (and IPv4's 0.0.0.0/8 "this network").
    Private,
    LinkLocal,
    /// IPv6 unique-local, fc00::/7.
    UniqueLocal,
}

impl NotPublic {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Loopback => "loopback",
            Self::Private => "private",
            Self::LinkLocal => "link-local",
            Self::UniqueLocal => "unique-local",
        }
    }
}

/// Which addresses are not looked up: loopback, RFC 1918, link-local, unique-local. The
/// documentation ranges (TEST-NET-1..3, 2001:db8::/32) are looked up like any other address.
/// IPv4-mapped IPv6 addresses are judged as the IPv4 address.
pub fn classify(ip: IpAddr) -> Result<IpAddr, NotPublic> {
    let ip = ip.to_canonical();
    let not_public = match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    };
    match not_public {
        Some(why) => Err(why),
        None => Ok(ip),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<NotPublic> {
    if ip.is_unspecified() {
        Some(NotPublic::Unspecified)
    } else if ip.is_loopback() {
        Some(NotPublic::Loopback)
    } else if ip.is_private() || ip.octets()[0] == 0 {
        Some(NotPublic::Private)
    } else if ip.is_link_local() {
        Some(NotPublic::LinkLocal)
    } else {
        None
    }
}

fn classify_v6(ip: Ipv6Addr) -> Option<NotPublic> {
    let first = ip.segments()[0];
    if ip.is_unspecified() {
        Some(NotPublic::Unspecified)
    } else if ip.is_loopback() {
        Some(NotPublic::Loopback)
    } else if first & 0xffc0 == 0xfe80 {
        Some(NotPublic::LinkLocal)
    } else if first & 0xfe00 == 0xfc00 {
        Some(NotPublic::UniqueLocal)
    } else {
        None
    }
}

/// What the databases said about one address.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Found {
    /// ISO 3166-1 alpha-2, upper case; `None`: the database has no country for the address.
    pub country: Option<String>,
    /// Where the country came from: `country`, or `registered_country` when the record has
    /// only that (anycast and satellite ranges).
    pub country_source: Option<&'static str>,
    pub asn: Option<u32>,
    pub as_org: Option<String>,
    /// The ASN database is configured but could not be used (the lookup goes on without it).
    pub asn_error: Option<String>,
}

/// Why an address could not be looked up.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// No good file was ever read: it is missing or damaged.
    #[error("no usable database {path}: {why}")]
    NotLoaded { path: PathBuf, why: String },
    /// The file in use could not be read at that address (a damaged record).
    #[error("cannot look up {ip} in {path}")]
    Read {
        ip: IpAddr,
        path: PathBuf,
        #[source]
        source: MaxMindDbError,
    },
}

/// The country database and, when configured, the ASN database.
pub struct GeoDb {
    country: Watched,
    asn: Option<Watched>,
}

impl GeoDb {
    /// The databases at these paths, looked at every `interval`. Nothing is read yet: the first
    /// [`GeoDb::refresh`] reads them.
    pub fn new(country: &Path, asn: Option<&Path>, interval: Duration) -> Self {
        Self {
            country: Watched::new(country, "country", interval),
            asn: asn.map(|path| Watched::new(path, "ASN", interval)),
        }
    }

    /// Reads the files again if they changed and the interval passed; at most one caller at a
    /// time does, the others go on with what is in use (or, while there is none yet, wait for
    /// that caller, so the checks that come first after a start all find the database).
    pub async fn refresh(&self) {
        self.country.refresh().await;
        if let Some(asn) = &self.asn {
            asn.refresh().await;
        }
    }

    /// Looks `ip` up in the databases in use (without reading the files again).
    ///
    /// # Errors
    /// No country database could be read yet, or its record for `ip` is damaged.
    pub fn lookup(&self, ip: IpAddr) -> Result<Found, LookupError> {
        let reader = self.country.current()?;
        let read_error = |source| LookupError::Read {
            ip,
            path: self.country.path.clone(),
            source,
        };
        let mut found = Found::default();
        (found.country, found.country_source) = country_of(&reader, ip).map_err(read_error)?;
        if let Some(asn) = &self.asn {
            match asn.current().and_then(|reader| {
                let result = reader.lookup(ip).map_err(|source| LookupError::Read {
                    ip,
                    path: asn.path.clone(),
                    source,
                })?;
                result
                    .decode::<geoip2::Asn>()
                    .map_err(|source| LookupError::Read {
                        ip,
                        path: asn.path.clone(),
                        source,
                    })
                    .map(|record| {
                        record.map(|r| {
                            (
                                r.autonomous_system_number,
                                r.autonomous_system_organization.map(str::to_owned),
                            )
                        })
                    })
            }) {
                Ok(Some((number, org))) => {
                    found.asn = number;
                    found.as_org = org;
                }
                Ok(None) => {}
                Err(error) => found.asn_error = Some(crate::module::error_chain(&error)),
            }
        }
        Ok(found)
    }
}

/// What identifies one version of a file without reading it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

fn signature(path: &Path) -> std::io::Result<Signature> {
    let meta = std::fs::metadata(path)?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let inode = 0;
    Ok(Signature {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode,
    })
}

/// One database file and the version of it in use.
struct Watched {
    path: PathBuf,
    label: &'static str,
    interval: Duration,
    /// The reader in use; replaced whole, never held across an await (callers clone the Arc).
    current: RwLock<Option<Arc<Reader<Vec<u8>>>>>,
    /// When the file was last looked at and what was found; never held across an await.
    state: Mutex<WatchState>,
    /// Held by the one caller looking at and reading the file.
    reading: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct WatchState {
    last_look: Option<Instant>,
    /// The version in use.
    loaded: Option<Signature>,
    /// The last version that could not be used, so it is not read again and again.
    refused: Option<Signature>,
    /// Why there is no usable version, for the error results (cleared once one is in use).
    why_not: String,
}

impl Watched {
    fn new(path: &Path, label: &'static str, interval: Duration) -> Self {
        Self {
            path: path.to_owned(),
            label,
            interval,
            current: RwLock::new(None),
            reading: tokio::sync::Mutex::new(()),
            state: Mutex::new(WatchState {
                why_not: "not read yet".to_owned(),
                ..WatchState::default()
            }),
        }
    }

    fn current(&self) -> Result<Arc<Reader<Vec<u8>>>, LookupError> {
        let current = self.current.read().ok().and_then(|guard| guard.clone());
        current.ok_or_else(|| LookupError::NotLoaded {
            path: self.path.clone(),
            why: self
                .state
                .lock()
                .map(|state| state.why_not.clone())
                .unwrap_or_default(),
        })
    }

    async fn refresh(&self) {
        let in_use = self.current.read().is_ok_and(|current| current.is_some());
        let _reading = if in_use {
            match self.reading.try_lock() {
                Ok(guard) => guard,
                Err(_) => return,
            }
        } else {
            self.reading.lock().await
        };
        {
            let Ok(mut state) = self.state.lock() else {
                return;
            };
            let due = state
                .last_look
                .is_none_or(|last| last.elapsed() >= self.interval);
            if !due {
                return;
            }
            state.last_look = Some(Instant::now());
        }
        let path = self.path.clone();
        let (seen, read) = {
            let known = self
                .state
                .lock()
                .map(|state| (state.loaded, state.refused))
                .unwrap_or_default();
            match tokio::task::spawn_blocking(move || look_and_read(&path, known)).await {
                Ok(outcome) => outcome,
                Err(error) => (
                    None,
                    Some(Err(format!("the reading thread failed: {error}"))),
                ),
            }
        };
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        match read {
            None => {}
            Some(Ok((reader, signature))) => {
                let networks = reader.metadata().node_count;
                let kind = reader.metadata().database_type.clone();
                if let Ok(mut current) = self.current.write() {
                    *current = Some(Arc::new(reader));
                }
                state.loaded = Some(signature);
                state.refused = None;
                state.why_not.clear();
                tracing::info!(
                    path = %self.path.display(),
                    database_type = %kind,
                    nodes = networks,
                    "geoip: {} database read",
                    self.label
                );
            }
            Some(Err(why)) => {
                state.refused = seen;
                let in_use = state.loaded.is_some();
                // A missing file is looked at every interval; say so once, not every time.
                let news = in_use || state.why_not != why;
                if !in_use {
                    state.why_not = why.clone();
                }
                if news {
                    tracing::warn!(
                        path = %self.path.display(),
                        error = %why,
                        keeping_last_good = in_use,
                        "geoip: cannot use the {} database",
                        self.label
                    );
                }
            }
        }
    }
}

/// The country of `ip` (ISO code, upper case) and which field gave it: `country`, else
/// `registered_country` (anycast and satellite ranges have only that).
fn country_of(
    reader: &Reader<Vec<u8>>,
    ip: IpAddr,
) -> Result<(Option<String>, Option<&'static str>), MaxMindDbError> {
    let result = reader.lookup(ip)?;
    let Some(record) = result.decode::<geoip2::Country>()? else {
        return Ok((None, None));
    };
    Ok(
        match (record.country.iso_code, record.registered_country.iso_code) {
            (Some(code), _) => (Some(code.to_ascii_uppercase()), Some("country")),
            (None, Some(code)) => (Some(code.to_ascii_uppercase()), Some("registered_country")),
            (None, None) => (None, None),
        },
    )
}

/// A database file's bytes as a reader, only if the whole file is sound (`verify` walks the
/// tree and decodes every record it points to).
fn read_database(bytes: Vec<u8>) -> Result<Reader<Vec<u8>>, String> {
    let reader =
        Reader::from_source(bytes).map_err(|error| format!("not a MaxMind database: {error}"))?;
    reader
        .verify()
        .map_err(|error| format!("damaged database: {error}"))?;
    Ok(reader)
}

/// Fuzz oracle: arbitrary bytes read as a database file never panic, and a file that is
/// accepted answers lookups (a country or none, or an error) without panicking.
#[cfg(any(test, fuzzing))]
pub fn fuzz_database(data: &[u8]) {
    if let Ok(reader) = read_database(data.to_vec()) {
        for ip in ["192.0.2.1", "198.51.100.7", "2001:db8::1", "8.8.8.8", "::"] {
            if let Ok(ip) = ip.parse() {
                let _ = country_of(&reader, ip);
            }
        }
    }
}

type ReadOutcome = Option<Result<(Reader<Vec<u8>>, Signature), String>>;

/// Looks at the file and reads it when it is a version neither in use nor refused before.
/// Returns the version seen (`None`: no file) and what reading gave (`None`: nothing read).
fn look_and_read(
    path: &Path,
    (loaded, refused): (Option<Signature>, Option<Signature>),
) -> (Option<Signature>, ReadOutcome) {
    let seen = match signature(path) {
        Ok(seen) => seen,
        // A file taken away after one was read: the one in use stays, quietly.
        Err(_) if loaded.is_some() => return (None, None),
        Err(error) => return (None, Some(Err(format!("cannot read the file: {error}")))),
    };
    if Some(seen) == loaded || Some(seen) == refused {
        return (Some(seen), None);
    }
    let read = std::fs::read(path)
        .map_err(|error| format!("cannot read the file: {error}"))
        .and_then(read_database);
    // The file may have changed while it was read: what was read is kept under the signature
    // seen before, so a change during the read is looked at again next time.
    (Some(seen), Some(read.map(|reader| (reader, seen))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    }

    #[test]
    fn private_and_local_addresses_are_not_looked_up() {
        for (text, why) in [
            ("127.0.0.1", NotPublic::Loopback),
            ("::1", NotPublic::Loopback),
            ("::ffff:127.0.0.1", NotPublic::Loopback),
            ("10.1.2.3", NotPublic::Private),
            ("172.16.0.1", NotPublic::Private),
            ("172.31.255.255", NotPublic::Private),
            ("192.168.1.1", NotPublic::Private),
            ("::ffff:192.168.1.1", NotPublic::Private),
            ("169.254.1.1", NotPublic::LinkLocal),
            ("fe80::1", NotPublic::LinkLocal),
            ("fd12:3456::1", NotPublic::UniqueLocal),
            ("fc00::1", NotPublic::UniqueLocal),
            ("0.0.0.0", NotPublic::Unspecified),
            ("::", NotPublic::Unspecified),
        ] {
            assert_eq!(classify(ip(text)), Err(why), "{text}");
        }
    }

    #[test]
    fn documentation_and_public_ranges_are_looked_up() {
        for text in [
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.200",
            "2001:db8::1",
            "172.32.0.1",
            "8.8.8.8",
            "2a00:1450::1",
        ] {
            assert_eq!(classify(ip(text)), Ok(ip(text)), "{text}");
        }
        assert_eq!(classify(ip("::ffff:192.0.2.1")), Ok(ip("192.0.2.1")));
    }

    /// `test_support::mmdb::test_country_db()`, as written into the fuzz seeds (`src/` may not
    /// use test-support, `test-support/tests/tidy.rs`).
    const TEST_COUNTRY_DB: &[u8] =
        include_bytes!("../../../../fuzz/corpus/geoip_database/seed-country");

    #[test]
    fn the_test_database_is_read_and_answers() {
        let reader = read_database(TEST_COUNTRY_DB.to_vec()).unwrap();
        for (text, want) in [
            ("192.0.2.77", Some("NL")),
            ("198.51.100.1", Some("US")),
            ("203.0.113.254", Some("CN")),
            ("2001:db8:1::5", Some("DE")),
            ("8.8.8.8", None),
        ] {
            let (country, _) = country_of(&reader, ip(text)).unwrap();
            assert_eq!(country.as_deref(), want, "{text}");
        }
        let cut = TEST_COUNTRY_DB;
        let error = read_database(cut[..cut.len() - 40].to_vec()).unwrap_err();
        assert!(error.starts_with("not a MaxMind database"), "{error}");
    }

    mod proptests {
        use super::super::fuzz_database;
        use super::TEST_COUNTRY_DB;
        use proptest::prelude::*;

        proptest! {
            /// A test database with bytes overwritten anywhere is refused or read, never a
            /// panic; so is any short junk.
            #[test]
            fn damaged_databases_never_panic(
                changes in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
                junk in proptest::collection::vec(any::<u8>(), 0..64),
            ) {
                let mut bytes = TEST_COUNTRY_DB.to_vec();
                let len = bytes.len();
                for (at, value) in changes {
                    bytes[at % len] = value;
                }
                fuzz_database(&bytes);
                fuzz_database(&junk);
            }
        }
    }
}
