//! Pure conversions from wire values to column values: address splitting and lower-casing, the
//! binary client address, cutting peer text to its column, and grouping the envelope recipients.
//!
//! No I/O and no SQL here. The column limits below must match `schema/`; the integration tests
//! write values at each limit.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use ipnet::IpNet;
use wire::{AuditResult, ModuleName, RejectedRecipient};

/// `VARCHAR(255)` address local parts (`message.sender_local`, `recipient.local`), in characters.
pub const LOCAL_PART_CHARS: usize = 255;
/// `VARCHAR(253)` domains (`message.sender_domain`, `recipient.domain`), in characters.
pub const DOMAIN_CHARS: usize = 253;
/// `VARCHAR(255)` session text (`helo`, `reverse_dns`, `sasl_username`, certificate names, ...).
pub const SESSION_TEXT_CHARS: usize = 255;
/// `VARCHAR(32)` `session.sasl_method`.
pub const SASL_METHOD_CHARS: usize = 32;
/// `VARCHAR(31)` `session.tls_version`.
pub const TLS_VERSION_CHARS: usize = 31;
/// `VARCHAR(998)` `message.messageId` and `message.subject` (a header line's length limit).
pub const HEADER_LINE_CHARS: usize = 998;
/// `TEXT` columns hold 65 535 bytes.
pub const TEXT_BYTES: usize = 65_535;
/// `VARBINARY(255)` `message_header.name`.
pub const HEADER_NAME_BYTES: usize = 255;
/// `BLOB` `message_header.body`.
pub const HEADER_BODY_BYTES: usize = 65_535;
/// `message_body` chunk size, as ClueGetter stored it.
pub const BODY_CHUNK_BYTES: usize = 65_535;
/// Largest `message_result.determinants` kept as is (LONGTEXT could hold more, but one row must
/// stay far below the server's `max_allowed_packet`); a larger value is replaced by a note.
pub const DETERMINANTS_BYTES: usize = 1024 * 1024;

/// The earliest time a DATETIME column holds: 1000-01-01 00:00:00.
pub fn datetime_min() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(1000, 1, 1)
        .and_then(|day| day.and_hms_opt(0, 0, 0))
        .map_or(DateTime::<Utc>::MIN_UTC, |time| time.and_utc())
}

/// The latest time a DATETIME(6) column holds: 9999-12-31 23:59:59.999999.
pub fn datetime_max() -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(9999, 12, 31)
        .and_then(|day| day.and_hms_micro_opt(23, 59, 59, 999_999))
        .map_or(DateTime::<Utc>::MAX_UTC, |time| time.and_utc())
}

/// `time` as a DATETIME bind parameter, cut to the DATETIME range (years 1000 to 9999).
///
/// Never bind a `DateTime<Utc>` itself: sqlx sends it as MySQL's TIMESTAMP type, and MariaDB
/// takes such a parameter through the TIMESTAMP range (1970 to 2038-01-19), so a bound past
/// either end no longer compares as the date it was (a range ending in 2039 matched nothing).
/// A `NaiveDateTime` is sent as DATETIME, which holds every date the columns hold.
pub fn datetime(time: DateTime<Utc>) -> NaiveDateTime {
    time.clamp(datetime_min(), datetime_max()).naive_utc()
}

/// [`datetime`] of an optional time.
pub fn opt_datetime(time: Option<DateTime<Utc>>) -> Option<NaiveDateTime> {
    time.map(datetime)
}

/// An address split at its last `@` into (local part, domain), both lower-cased and cut to their
/// columns. Surrounding whitespace and angle brackets are dropped. Without `@` the whole address
/// is the local part and the domain is empty; the null sender is `("", "")`.
pub fn split_address(address: &str) -> (String, String) {
    let trimmed = address.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(trimmed);
    let (local, domain) = bare.rsplit_once('@').unwrap_or((bare, ""));
    (
        truncate_chars(&local.to_lowercase(), LOCAL_PART_CHARS).to_owned(),
        truncate_chars(&domain.to_lowercase(), DOMAIN_CHARS).to_owned(),
    )
}

/// The address as `session.ip` and `session.ip_bin` hold it: IPv4-mapped IPv6 addresses
/// (`::ffff:192.0.2.1`) become plain IPv4, so one client has one form.
pub fn canonical_ip(addr: IpAddr) -> IpAddr {
    addr.to_canonical()
}

/// The binary form of a client address, as MySQL's `INET6_ATON()` gives it: 4 bytes for IPv4,
/// 16 for IPv6, after [`canonical_ip`].
pub fn ip_bin(addr: IpAddr) -> Vec<u8> {
    match canonical_ip(addr) {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The first and last `ip_bin` of a network, for `LENGTH(ip_bin) = <len> AND ip_bin BETWEEN ? AND ?`
/// (the length is that of either bound). An IPv6 network is taken as given, so search IPv4 clients
/// with an IPv4 network.
pub fn network_bounds(net: &IpNet) -> (Vec<u8>, Vec<u8>) {
    let net = net.trunc();
    match net {
        IpNet::V4(v4) => (
            v4.network().octets().to_vec(),
            v4.broadcast().octets().to_vec(),
        ),
        IpNet::V6(v6) => (
            v6.network().octets().to_vec(),
            v6.broadcast().octets().to_vec(),
        ),
    }
}

/// At most `max` characters of `text` (MySQL counts `VARCHAR(n)` in characters).
pub fn truncate_chars(text: &str, max: usize) -> &str {
    match text.char_indices().nth(max) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// At most `max` bytes of `text`, cut on a character boundary (for `TEXT` columns).
pub fn truncate_utf8_bytes(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// At most `max` bytes of a binary value, and whether anything was cut.
pub fn truncate_bytes(bytes: &[u8], max: usize) -> (&[u8], bool) {
    if bytes.len() <= max {
        (bytes, false)
    } else {
        (&bytes[..max], true)
    }
}

/// The determinants as stored: their JSON text, or a note when they are too large to keep.
pub fn determinants_json(determinants: &serde_json::Value) -> String {
    let text = determinants.to_string();
    if text.len() <= DETERMINANTS_BYTES {
        text
    } else {
        serde_json::json!({ "cluegetter_truncated": true, "bytes": text.len() }).to_string()
    }
}

/// Pads a list of `IN` values to a power of two by repeating its last value, which changes
/// nothing in an `IN` list but keeps the number of statement shapes small (see
/// `store::batch` on why statements must stay prepared).
pub fn pad_list<T: Clone>(list: &mut Vec<T>) {
    if let Some(last) = list.last().cloned() {
        list.resize(list.len().next_power_of_two(), last);
    }
}

/// Whether Postfix accepted the recipient or rejected it at RCPT (`message_recipient.status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RecipientStatus {
    Accepted,
    Rejected,
}

impl RecipientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RecipientStatus::Accepted => "accepted",
            RecipientStatus::Rejected => "rejected",
        }
    }
}

/// One `message_recipient` row before the recipient's id is known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecipientRow {
    pub local: String,
    pub domain: String,
    pub status: RecipientStatus,
    /// How often the (lower-cased) address appeared with this status.
    pub count: u32,
    /// Postfix's reply for the first rejection of this address; `None` when accepted.
    pub reason: Option<String>,
}

/// The envelope recipients grouped by (address, status) in order of first appearance, duplicates
/// counted, addresses compared after lower-casing.
pub fn recipient_rows(accepted: &[String], rejected: &[RejectedRecipient]) -> Vec<RecipientRow> {
    let mut rows: Vec<RecipientRow> = Vec::new();
    let mut index: HashMap<(String, String, RecipientStatus), usize> = HashMap::new();
    let all = accepted
        .iter()
        .map(|address| (address.as_str(), RecipientStatus::Accepted, None))
        .chain(rejected.iter().map(|r| {
            (
                r.address.as_str(),
                RecipientStatus::Rejected,
                Some(truncate_utf8_bytes(&r.reason, TEXT_BYTES)),
            )
        }));
    for (address, status, reason) in all {
        let (local, domain) = split_address(address);
        match index.entry((local.clone(), domain.clone(), status)) {
            std::collections::hash_map::Entry::Occupied(seen) => {
                let row = &mut rows[*seen.get()];
                row.count = row.count.saturating_add(1);
            }
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(rows.len());
                rows.push(RecipientRow {
                    local,
                    domain,
                    status,
                    count: 1,
                    reason: reason.map(str::to_owned),
                });
            }
        }
    }
    rows
}

/// The client's country (ISO 3166-1 alpha-2, upper case) and autonomous system as the geoip
/// module's result says (`determinants.country`, `determinants.asn`), for `session.country`
/// and `session.asn`; `None` for what it does not say or says in another form.
pub fn geoip_of(results: &[AuditResult]) -> (Option<String>, Option<u32>) {
    let Some(geoip) = results
        .iter()
        .find(|r| ModuleName::parse(&r.result.module) == ModuleName::Geoip)
    else {
        return (None, None);
    };
    let determinants = &geoip.result.determinants;
    let country = determinants["country"]
        .as_str()
        .filter(|code| code.len() == 2 && code.bytes().all(|b| b.is_ascii_alphabetic()))
        .map(str::to_ascii_uppercase);
    let asn = determinants["asn"]
        .as_u64()
        .and_then(|asn| u32::try_from(asn).ok());
    (country, asn)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn result(module: &str, determinants: serde_json::Value) -> AuditResult {
        AuditResult {
            result: wire::CheckResult {
                version: wire::WIRE_VERSION,
                message_id: wire::MessageId::new(),
                module: module.into(),
                action: wire::Action::Permit,
                score: 0.0,
                message: String::new(),
                determinants,
                duration: 0.0,
                changes: wire::MilterChanges::default(),
                enhanced_status: None,
            },
            weighted_score: 0.0,
            late: false,
        }
    }

    #[test]
    fn the_session_country_is_the_geoip_results() {
        let results = [
            result("rspamd", serde_json::json!({ "country": "US" })),
            result(
                "geoip",
                serde_json::json!({ "country": "nl", "asn": 64496 }),
            ),
        ];
        assert_eq!(geoip_of(&results), (Some("NL".into()), Some(64496)));
        let odd = [result(
            "geoip",
            serde_json::json!({ "country": "unknown", "asn": -1 }),
        )];
        assert_eq!(geoip_of(&odd), (None, None));
        assert_eq!(geoip_of(&results[..1]), (None, None));
    }

    #[test]
    fn split_address_lower_cases_and_splits_at_the_last_at() {
        assert_eq!(
            split_address("Alice.Smith@Example.ORG"),
            ("alice.smith".into(), "example.org".into())
        );
        assert_eq!(
            split_address("\"a@b\"@example.net"),
            ("\"a@b\"".into(), "example.net".into())
        );
        assert_eq!(
            split_address(" <Bob@example.net> "),
            ("bob".into(), "example.net".into())
        );
    }

    #[test]
    fn split_address_without_at_or_empty() {
        assert_eq!(
            split_address("postmaster"),
            ("postmaster".into(), "".into())
        );
        assert_eq!(split_address(""), ("".into(), "".into()));
        assert_eq!(split_address("<>"), ("".into(), "".into()));
    }

    #[test]
    fn split_address_cuts_to_the_columns() {
        let local = "x".repeat(300);
        let domain = format!("{}.example", "d".repeat(300));
        let (l, d) = split_address(&format!("{local}@{domain}"));
        assert_eq!(l.chars().count(), LOCAL_PART_CHARS);
        assert_eq!(d.chars().count(), DOMAIN_CHARS);
    }

    #[test]
    fn split_address_lower_cases_non_ascii() {
        assert_eq!(
            split_address("JOSÉ@Bücher.example"),
            ("josé".into(), "bücher.example".into())
        );
    }

    #[test]
    fn times_are_cut_to_the_datetime_range() {
        use chrono::TimeZone as _;
        let inside = Utc.with_ymd_and_hms(9999, 6, 1, 12, 0, 0).unwrap();
        assert_eq!(datetime(inside), inside.naive_utc());
        let early = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
        assert_eq!(datetime(early).to_string(), "1000-01-01 00:00:00");
        assert_eq!(
            datetime(DateTime::<Utc>::MAX_UTC).to_string(),
            "9999-12-31 23:59:59.999999"
        );
    }

    #[test]
    fn ip_bin_is_inet6_aton() {
        assert_eq!(ip_bin("192.0.2.10".parse().unwrap()), vec![192, 0, 2, 10]);
        let v6 = ip_bin("2001:db8::1".parse().unwrap());
        assert_eq!(v6.len(), 16);
        assert_eq!(&v6[..4], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(v6[15], 1);
    }

    #[test]
    fn ip_bin_stores_mapped_ipv4_as_ipv4() {
        let mapped: IpAddr = "::ffff:192.0.2.10".parse().unwrap();
        assert_eq!(ip_bin(mapped), vec![192, 0, 2, 10]);
        assert_eq!(canonical_ip(mapped).to_string(), "192.0.2.10");
    }

    #[test]
    fn network_bounds_cover_the_network() {
        let (lo, hi) = network_bounds(&"192.0.2.77/24".parse().unwrap());
        assert_eq!(lo, vec![192, 0, 2, 0]);
        assert_eq!(hi, vec![192, 0, 2, 255]);
        let inside = ip_bin("192.0.2.10".parse().unwrap());
        assert!(lo <= inside && inside <= hi);
        let (lo, hi) = network_bounds(&"2001:db8::/32".parse().unwrap());
        assert_eq!(lo.len(), 16);
        assert_eq!(&hi[4..], &[0xff; 12]);
    }

    #[test]
    fn truncation_respects_character_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_utf8_bytes("héllo", 2), "h");
        assert_eq!(truncate_utf8_bytes("héllo", 3), "hé");
        assert_eq!(truncate_bytes(b"abc", 2), (&b"ab"[..], true));
        assert_eq!(truncate_bytes(b"abc", 3), (&b"abc"[..], false));
    }

    #[test]
    fn lists_are_padded_with_their_last_value() {
        let mut list = vec![1, 2, 3];
        pad_list(&mut list);
        assert_eq!(list, vec![1, 2, 3, 3]);
        let mut list = vec![1, 2];
        pad_list(&mut list);
        assert_eq!(list, vec![1, 2]);
        let mut empty: Vec<u8> = Vec::new();
        pad_list(&mut empty);
        assert!(empty.is_empty());
    }

    #[test]
    fn oversized_determinants_become_a_note() {
        let small = serde_json::json!({ "symbols": ["A", "B"] });
        assert_eq!(determinants_json(&small), small.to_string());
        let big = serde_json::json!({ "x": "y".repeat(DETERMINANTS_BYTES) });
        let stored: serde_json::Value = serde_json::from_str(&determinants_json(&big)).unwrap();
        assert_eq!(stored["cluegetter_truncated"], true);
    }

    #[test]
    fn recipients_are_grouped_and_counted_case_insensitively() {
        let accepted = vec![
            "b@example.net".to_owned(),
            "B@Example.NET".to_owned(),
            "c@example.net".to_owned(),
        ];
        let rejected = vec![
            RejectedRecipient {
                address: "x@example.net".into(),
                reason: "550 5.1.1 unknown".into(),
            },
            RejectedRecipient {
                address: "b@example.net".into(),
                reason: "450 4.2.0 later".into(),
            },
        ];
        let rows = recipient_rows(&accepted, &rejected);
        let summary: Vec<_> = rows
            .iter()
            .map(|r| (r.local.as_str(), r.status, r.count, r.reason.as_deref()))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("b", RecipientStatus::Accepted, 2, None),
                ("c", RecipientStatus::Accepted, 1, None),
                ("x", RecipientStatus::Rejected, 1, Some("550 5.1.1 unknown")),
                ("b", RecipientStatus::Rejected, 1, Some("450 4.2.0 later")),
            ]
        );
    }
}
