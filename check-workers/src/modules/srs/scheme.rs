//! The Sender Rewriting Scheme exactly as libsrs2 writes it inside PostSRSd 1.x (Debian's
//! `postsrsd` 1.10), so that addresses either one signs the other reverses with the same secret.
//! Pure: no I/O, no clock (the time is an argument), no policy (which senders to rewrite and into
//! which domain is the caller's choice).
//!
//! # The addresses
//! Forwarding `user@host` into the domain `d`:
//! ```text
//! SRS0=HHHH=TT=host=user@d                         a plain sender
//! SRS1=HHHH=host1==HHHH=TT=host=user@d             a sender that was SRS0=HHHH=TT=host=user@host1
//! SRS1=HHHH=host1==HHHH=TT=host=user@d             re-forwarding SRS1=XXXX=host1==…@host2 (new hash,
//!                                                  host1 kept: bounces skip the middle hops)
//! ```
//! - The first separator (after `SRS0`/`SRS1`) is [`Separator`] (`=`, `+` or `-`), the others
//!   are always `=`. Reversal accepts any of the three after the tag, and the tag in any case.
//! - `TT`: the day (UTC days since 1970) modulo 1024 in two base32 characters
//!   (`A`–`Z`, `2`–`7`), most significant first.
//! - `HHHH`: the first `hash_length` characters of the standard base64 (`+`, `/`) of
//!   HMAC-SHA1(secret, the parts concatenated), each part ASCII-lower-cased: `TT`, `host`,
//!   `user` for SRS0; `host1` and everything after `host1=` (beginning with the SRS0 address's
//!   own separator) for SRS1.
//!
//! # Reversal, as libsrs2 checks it
//! - The local part is everything before the first `@`; the domain after it is not looked at
//!   (the caller decides which domains are ours).
//! - The hash is compared ignoring ASCII case, against every secret. One shorter than
//!   `hash_min` is refused; of a longer one only the first `hash_length` characters count.
//! - SRS0 only: the age, `(today - TT) mod 1024` days, must be at most `max_age_days`, so a
//!   stamp "from the future" reads as almost 1024 days old.
//! - Reversing SRS0 gives `user@host`; reversing SRS1 gives `SRS0<rest>@host1`, the address at
//!   the first forwarder, which reverses it in turn.
//!
//! Departures from libsrs2, all about addresses neither side writes from real ones: an empty host
//! or user part, and a timestamp that is not two base32 characters, are [`Malformed`] here (libsrs2
//! reverses `SRS0=HHHH=TT==@d` into `@`); forwarding a sender with an empty local part or domain, or
//! a domain with `@` or `=` in it (libsrs2 writes an address that does not reverse), is refused; the hash is checked before the age (libsrs2 checks the age first), so a forged address
//! reads as forged, not as expired. Unlike libsrs2 without `alwaysrewrite`, [`Srs::forward`]
//! rewrites a sender whose domain is the target domain too: whom to rewrite is the caller's policy.
//! PostSRSd also leaves a sender alone that already reverses with its own secrets ("Already
//! rewritten"); a caller that wants that asks [`Srs::reverse`] first.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, KeyInit as _, Mac as _};
use sha1::Sha1;

use super::secrets::Secrets;

/// libsrs2's and PostSRSd's default hash length.
pub const DEFAULT_HASH_LENGTH: usize = 4;
/// libsrs2's default age limit, which PostSRSd 1.x keeps (it has no option for it).
pub const DEFAULT_MAX_AGE_DAYS: u16 = 21;
/// The longest hash: base64 of the 20 bytes of HMAC-SHA1 has 27 characters before its padding.
pub const MAX_HASH_LENGTH: usize = 27;
/// Timestamps count days modulo this (two base32 characters).
pub const TIMESTAMP_SLOTS: u16 = 1024;

const SECONDS_PER_DAY: u64 = 86_400;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// The character after `SRS0`/`SRS1` in the addresses we write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Separator {
    /// `=`, libsrs2's and PostSRSd's default
    #[default]
    Equals,
    /// `+`
    Plus,
    /// `-`
    Minus,
}

impl Separator {
    pub fn as_char(self) -> char {
        match self {
            Separator::Equals => '=',
            Separator::Plus => '+',
            Separator::Minus => '-',
        }
    }

    /// The separator written `c`, if libsrs2 allows it.
    pub fn from_char(c: char) -> Option<Self> {
        match c {
            '=' => Some(Separator::Equals),
            '+' => Some(Separator::Plus),
            '-' => Some(Separator::Minus),
            _ => None,
        }
    }
}

/// How addresses are written and checked; [`Settings::default`] is PostSRSd 1.x's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// The character after the tag in addresses we write (PostSRSd `-a`).
    pub separator: Separator,
    /// Hash characters written, and compared (PostSRSd `-n`), 1 to [`MAX_HASH_LENGTH`].
    pub hash_length: usize,
    /// Fewest hash characters accepted (PostSRSd `-N`), 1 to `hash_length`.
    pub hash_min: usize,
    /// Oldest SRS0 address reversed, in days, below [`TIMESTAMP_SLOTS`].
    pub max_age_days: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            separator: Separator::Equals,
            hash_length: DEFAULT_HASH_LENGTH,
            hash_min: DEFAULT_HASH_LENGTH,
            max_age_days: DEFAULT_MAX_AGE_DAYS,
        }
    }
}

/// Settings that cannot work.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("hash length {0} is outside 1..={MAX_HASH_LENGTH}")]
    HashLength(usize),
    #[error("minimum hash length {hash_min} is outside 1..={hash_length} (the hash length)")]
    HashMin { hash_min: usize, hash_length: usize },
    #[error("max-age of {0} days is not below {TIMESTAMP_SLOTS} (timestamps wrap around then)")]
    MaxAge(u16),
}

/// The scheme with its secrets and settings: forwards senders, reverses recipients.
#[derive(Clone)]
pub struct Srs {
    /// One keyed HMAC per secret, the signing one first (keyed once, cloned per hash).
    keys: Vec<Hmac<Sha1>>,
    settings: Settings,
}

impl std::fmt::Debug for Srs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srs")
            .field("secrets", &self.keys.len())
            .field("settings", &self.settings)
            .finish()
    }
}

/// Which kind of SRS address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `SRS0=HHHH=TT=host=user@…`: one forwarding hop.
    Srs0,
    /// `SRS1=HHHH=host1==HHHH=TT=host=user@…`: forwarded again.
    Srs1,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Srs0 => "SRS0",
            Kind::Srs1 => "SRS1",
        }
    }
}

/// A reversed address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reversed {
    /// What the SRS address was.
    pub kind: Kind,
    /// Where the mail goes now: the original sender for SRS0, the SRS0 address at the first
    /// forwarder for SRS1.
    pub address: String,
}

/// An SRS address taken apart, nothing checked yet: the parts borrow the address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SrsAddress<'a> {
    /// `SRS0<sep>hash=stamp=host=user@domain`
    Srs0 {
        separator: Separator,
        hash: &'a str,
        /// two base32 characters, any case
        stamp: &'a str,
        host: &'a str,
        user: &'a str,
        domain: Option<&'a str>,
    },
    /// `SRS1<sep>hash=host=rest@domain`, `rest` the SRS0 address's local part after its `SRS0`
    Srs1 {
        separator: Separator,
        hash: &'a str,
        host: &'a str,
        rest: &'a str,
        domain: Option<&'a str>,
    },
}

impl<'a> SrsAddress<'a> {
    /// `address` taken apart: `Ok(None)` when it is no SRS address (its local part does not
    /// start with `SRS0` or `SRS1`, any case, and a separator), so it is left alone.
    ///
    /// # Errors
    /// It starts like an SRS address but lacks a part, or a part is empty, or the SRS0 stamp is
    /// not two base32 characters.
    pub fn parse(address: &'a str) -> Result<Option<Self>, Malformed> {
        let (local, domain) = match address.split_once('@') {
            Some((local, domain)) => (local, Some(domain)),
            None => (address, None),
        };
        let Some((kind, separator)) = tag(local) else {
            return Ok(None);
        };
        // the tag and separator are 5 ASCII bytes
        let after_tag = &local[5..];
        if after_tag.is_empty() {
            return Err(Malformed::NoHash);
        }
        match kind {
            Kind::Srs0 => {
                let (hash, rest) = after_tag.split_once('=').ok_or(Malformed::NoTimestamp)?;
                let (stamp, rest) = rest.split_once('=').ok_or(Malformed::NoHost)?;
                let (host, user) = rest.split_once('=').ok_or(Malformed::NoUser)?;
                if host.is_empty() {
                    return Err(Malformed::NoHost);
                }
                if user.is_empty() {
                    return Err(Malformed::NoUser);
                }
                if stamp_value(stamp).is_none() {
                    return Err(Malformed::Timestamp);
                }
                Ok(Some(SrsAddress::Srs0 {
                    separator,
                    hash,
                    stamp,
                    host,
                    user,
                    domain,
                }))
            }
            Kind::Srs1 => {
                let (hash, rest) = after_tag.split_once('=').ok_or(Malformed::NoHost)?;
                let (host, rest) = rest.split_once('=').ok_or(Malformed::NoUser)?;
                if host.is_empty() {
                    return Err(Malformed::NoHost);
                }
                if rest.is_empty() {
                    return Err(Malformed::NoUser);
                }
                Ok(Some(SrsAddress::Srs1 {
                    separator,
                    hash,
                    host,
                    rest,
                    domain,
                }))
            }
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            SrsAddress::Srs0 { .. } => Kind::Srs0,
            SrsAddress::Srs1 { .. } => Kind::Srs1,
        }
    }

    /// The domain after the first `@`, if there is one.
    pub fn domain(&self) -> Option<&'a str> {
        match self {
            SrsAddress::Srs0 { domain, .. } | SrsAddress::Srs1 { domain, .. } => *domain,
        }
    }
}

/// What is wrong with the shape of an SRS address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("no hash")]
    NoHash,
    #[error("no timestamp")]
    NoTimestamp,
    #[error("no host")]
    NoHost,
    #[error("no user")]
    NoUser,
    #[error("the timestamp is not two base32 characters")]
    Timestamp,
}

/// Why an SRS recipient is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReverseError {
    #[error("malformed {kind} address: {reason}", kind = .kind.as_str())]
    Malformed { kind: Kind, reason: Malformed },
    #[error("the SRS hash is shorter than {hash_min} characters")]
    HashTooShort { hash_min: usize },
    #[error("the SRS hash is invalid (forged, or signed with a secret no longer kept)")]
    BadHash,
    #[error("the SRS address has expired ({age_days} days old, at most {max_age_days} accepted)")]
    Expired { age_days: u16, max_age_days: u16 },
}

/// Why a sender cannot be forwarded (it is then left as it is).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("the sender has no `@`")]
    NoAtSign,
    #[error("the sender has an empty local part, or its domain is empty or holds `@` or `=`")]
    NotAnAddress,
    #[error("the domain to rewrite into is empty")]
    NoDomain,
    #[error("the sender is a malformed SRS1 address: {0}")]
    Malformed(Malformed),
}

impl Srs {
    /// # Errors
    /// `settings` out of their ranges (see [`Settings`]).
    pub fn new(secrets: &Secrets, settings: Settings) -> Result<Self, SettingsError> {
        if !(1..=MAX_HASH_LENGTH).contains(&settings.hash_length) {
            return Err(SettingsError::HashLength(settings.hash_length));
        }
        if !(1..=settings.hash_length).contains(&settings.hash_min) {
            return Err(SettingsError::HashMin {
                hash_min: settings.hash_min,
                hash_length: settings.hash_length,
            });
        }
        if settings.max_age_days >= TIMESTAMP_SLOTS {
            return Err(SettingsError::MaxAge(settings.max_age_days));
        }
        let keys = secrets
            .iter()
            // HMAC takes keys of any length; `filter_map` only because the trait is fallible
            .filter_map(|secret| Hmac::<Sha1>::new_from_slice(secret).ok())
            .collect();
        Ok(Self { keys, settings })
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The envelope sender `sender` forwarded into `domain` at `now` (the module's notes say
    /// how): a plain address becomes SRS0, an SRS0 address SRS1, an SRS1 address SRS1 with a
    /// new hash. `domain` may be given as an address (`…@domain`), as libsrs2 allows.
    ///
    /// # Errors
    /// `sender` has no `@`, an empty local part, an empty domain or one with `@` or `=` in it
    /// (its SRS address could not be reversed), or is a malformed SRS1 address;
    /// `domain` is empty.
    pub fn forward(
        &self,
        sender: &str,
        domain: &str,
        now: SystemTime,
    ) -> Result<String, ForwardError> {
        let domain = domain.rsplit('@').next().unwrap_or_default();
        if domain.is_empty() {
            return Err(ForwardError::NoDomain);
        }
        let (user, host) = sender.split_once('@').ok_or(ForwardError::NoAtSign)?;
        if user.is_empty() || host.is_empty() || host.contains(['@', '=']) {
            return Err(ForwardError::NotAnAddress);
        }
        let separator = self.settings.separator.as_char();
        match tag(user) {
            Some((Kind::Srs1, _)) => {
                // the old hash is dropped; the first forwarder and the SRS0 part are signed anew
                let (host1, rest) = match SrsAddress::parse(user) {
                    Ok(Some(SrsAddress::Srs1 { host, rest, .. })) => (host, rest),
                    Ok(_) => return Err(ForwardError::Malformed(Malformed::NoHash)),
                    Err(reason) => return Err(ForwardError::Malformed(reason)),
                };
                let hash = self.hash(&[host1, rest]);
                Ok(format!("SRS1{separator}{hash}={host1}={rest}@{domain}"))
            }
            Some((Kind::Srs0, _)) => {
                // not checked: we cannot (it may be another forwarder's), and need not
                let rest = &user[4..];
                let hash = self.hash(&[host, rest]);
                Ok(format!("SRS1{separator}{hash}={host}={rest}@{domain}"))
            }
            None => {
                let stamp = stamp(now);
                let stamp = std::str::from_utf8(&stamp).unwrap_or_default();
                let hash = self.hash(&[stamp, host, user]);
                Ok(format!(
                    "SRS0{separator}{hash}={stamp}={host}={user}@{domain}"
                ))
            }
        }
    }

    /// The recipient `address` reversed at `now`: `Ok(None)` when it is no SRS address (left
    /// alone), the address to deliver to when it is a good one. The domain is not looked at.
    ///
    /// # Errors
    /// The address starts like an SRS address but is malformed, its hash is too short or
    /// invalid, or (SRS0) it is older than `max_age_days`.
    pub fn reverse(
        &self,
        address: &str,
        now: SystemTime,
    ) -> Result<Option<Reversed>, ReverseError> {
        let parsed = match SrsAddress::parse(address) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => return Ok(None),
            Err(reason) => {
                let kind = tag(address).map_or(Kind::Srs0, |(kind, _)| kind);
                return Err(ReverseError::Malformed { kind, reason });
            }
        };
        match parsed {
            SrsAddress::Srs0 {
                hash,
                stamp,
                host,
                user,
                ..
            } => {
                self.check_hash(hash, &[stamp, host, user])?;
                // `parse` checked the stamp's characters
                let then = stamp_value(stamp).unwrap_or_default();
                let age_days = (day_slot(now) + TIMESTAMP_SLOTS - then) % TIMESTAMP_SLOTS;
                if age_days > self.settings.max_age_days {
                    return Err(ReverseError::Expired {
                        age_days,
                        max_age_days: self.settings.max_age_days,
                    });
                }
                Ok(Some(Reversed {
                    kind: Kind::Srs0,
                    address: format!("{user}@{host}"),
                }))
            }
            SrsAddress::Srs1 {
                hash, host, rest, ..
            } => {
                self.check_hash(hash, &[host, rest])?;
                Ok(Some(Reversed {
                    kind: Kind::Srs1,
                    address: format!("SRS0{rest}@{host}"),
                }))
            }
        }
    }

    /// The full hash (all 27 characters) of `parts` under key `key`.
    fn full_hash(key: &Hmac<Sha1>, parts: &[&str]) -> String {
        let mut mac = key.clone();
        for part in parts {
            mac.update(part.to_ascii_lowercase().as_bytes());
        }
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(mac.finalize().into_bytes())
    }

    /// The hash written into new addresses: `hash_length` characters, with the first secret.
    fn hash(&self, parts: &[&str]) -> String {
        let Some(key) = self.keys.first() else {
            return String::new();
        };
        let mut hash = Self::full_hash(key, parts);
        hash.truncate(self.settings.hash_length);
        hash
    }

    /// libsrs2's check: at least `hash_min` characters, the first `hash_length` of them equal
    /// (ignoring ASCII case) to the hash under some secret.
    fn check_hash(&self, given: &str, parts: &[&str]) -> Result<(), ReverseError> {
        let given = given.as_bytes();
        if given.len() < self.settings.hash_min {
            return Err(ReverseError::HashTooShort {
                hash_min: self.settings.hash_min,
            });
        }
        let given = &given[..given.len().min(self.settings.hash_length)];
        let matches = self.keys.iter().any(|key| {
            let expected = Self::full_hash(key, parts);
            // every byte compared, whatever the first difference
            expected.len() >= given.len()
                && given
                    .iter()
                    .zip(expected.as_bytes())
                    .fold(0u8, |diff, (a, b)| {
                        diff | (a.to_ascii_lowercase() ^ b.to_ascii_lowercase())
                    })
                    == 0
        });
        if matches {
            Ok(())
        } else {
            Err(ReverseError::BadHash)
        }
    }
}

/// Whether `address` starts like an SRS address (`SRS0` or `SRS1` in any case, then `=`, `+` or
/// `-`): the recipients to check at RCPT.
pub fn is_srs_address(address: &str) -> bool {
    tag(address).is_some()
}

/// The kind and separator of a local part that starts like an SRS address.
fn tag(local: &str) -> Option<(Kind, Separator)> {
    let bytes = local.as_bytes();
    if bytes.len() < 5 || !bytes[..3].eq_ignore_ascii_case(b"SRS") {
        return None;
    }
    let kind = match bytes[3] {
        b'0' => Kind::Srs0,
        b'1' => Kind::Srs1,
        _ => return None,
    };
    let separator = Separator::from_char(char::from(bytes[4]))?;
    Some((kind, separator))
}

/// UTC days since 1970 at `now`, modulo [`TIMESTAMP_SLOTS`]; a clock before 1970 counts as
/// day 0.
fn day_slot(now: SystemTime) -> u16 {
    let days = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / SECONDS_PER_DAY;
    // below 1024, so it fits
    u16::try_from(days % u64::from(TIMESTAMP_SLOTS)).unwrap_or_default()
}

/// The two base32 characters of the day at `now`.
fn stamp(now: SystemTime) -> [u8; 2] {
    let slot = usize::from(day_slot(now));
    [BASE32[(slot >> 5) & 31], BASE32[slot & 31]]
}

/// The day slot a stamp names, if it is two base32 characters (any case).
fn stamp_value(stamp: &str) -> Option<u16> {
    let bytes = stamp.as_bytes();
    if bytes.len() != 2 {
        return None;
    }
    let digit = |b: u8| {
        BASE32
            .iter()
            .position(|&c| c == b.to_ascii_uppercase())
            .and_then(|p| u16::try_from(p).ok())
    };
    Some(digit(bytes[0])? << 5 | digit(bytes[1])?)
}

/// The address parser's and the scheme's fuzz oracle, called by
/// `fuzz/fuzz_targets/srs_address.rs` and the property tests. It panics on a violation.
///
/// For any bytes, read as an address (lossy UTF-8): parsing and reversing return; a parsed
/// address is made of its parts (nothing lost or added); reversing succeeds only for what
/// parses. Forwarding it succeeds for anything with a non-empty local part and domain (and,
/// for SRS1, the parts); and then reversing the result gives back the sender (SRS0 with its
/// tag in capitals), or for an SRS1 sender the SRS0 address at its first forwarder.
#[cfg(any(test, fuzzing))]
pub fn fuzz_address(data: &[u8]) {
    let address = String::from_utf8_lossy(data);
    let srs = fuzz_srs();
    let now = UNIX_EPOCH + std::time::Duration::from_secs(20_000 * SECONDS_PER_DAY);

    let parsed = SrsAddress::parse(&address);
    if let Ok(Some(parts)) = parsed {
        // the tag is written in capitals, and the tag and separator are 5 ASCII bytes
        let again = reassemble(&parts);
        assert!(again[..4].eq_ignore_ascii_case(&address[..4]), "{parts:?}");
        assert_eq!(again[4..], address[4..], "{parts:?}");
    }
    if parsed.is_err() {
        assert!(is_srs_address(&address));
    }
    match srs.reverse(&address, now) {
        Ok(Some(_)) => assert!(matches!(parsed, Ok(Some(_)))),
        Ok(None) => assert_eq!(parsed, Ok(None)),
        Err(ReverseError::Malformed { reason, .. }) => assert_eq!(parsed, Err(reason)),
        Err(_) => assert!(matches!(parsed, Ok(Some(_)))),
    }

    let Ok(forwarded) = srs.forward(&address, "fuzz.test", now) else {
        return;
    };
    assert!(forwarded.ends_with("@fuzz.test"), "{forwarded}");
    let reversed = srs
        .reverse(&forwarded, now)
        .unwrap_or_else(|e| panic!("{address} → {forwarded}: {e}"))
        .unwrap_or_else(|| panic!("{address} → {forwarded}: not SRS"));
    // `forward` succeeded, so there is an `@`
    let (user, host) = address.split_once('@').unwrap_or_default();
    let expected = match tag(user) {
        None => address.to_string(),
        Some((Kind::Srs0, _)) => format!("SRS0{}@{host}", &user[4..]),
        Some((Kind::Srs1, _)) => match SrsAddress::parse(user) {
            Ok(Some(SrsAddress::Srs1 { host, rest, .. })) => format!("SRS0{rest}@{host}"),
            other => panic!("{address} forwarded but its SRS1 part reads {other:?}"),
        },
    };
    assert_eq!(reversed.address, expected, "{address} → {forwarded}");
}

#[cfg(any(test, fuzzing))]
fn fuzz_srs() -> Srs {
    let secrets = Secrets::new(vec![b"fuzz secret".to_vec()]).unwrap_or_else(|e| panic!("{e}"));
    Srs::new(&secrets, Settings::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// The address `parts` came from.
#[cfg(any(test, fuzzing))]
fn reassemble(parts: &SrsAddress<'_>) -> String {
    let (local, domain) = match *parts {
        SrsAddress::Srs0 {
            separator,
            hash,
            stamp,
            host,
            user,
            domain,
        } => (
            format!("SRS0{}{hash}={stamp}={host}={user}", separator.as_char()),
            domain,
        ),
        SrsAddress::Srs1 {
            separator,
            hash,
            host,
            rest,
            domain,
        } => (
            format!("SRS1{}{hash}={host}={rest}", separator.as_char()),
            domain,
        ),
    };
    match domain {
        Some(domain) => format!("{local}@{domain}"),
        None => local,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use super::*;

    /// 2026-12-07, day 20794 (slot 314, stamp `J2`), when the vectors below were captured.
    const CAPTURE_DAY: u64 = 20_794;

    fn day(n: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(n * SECONDS_PER_DAY + 12_345)
    }

    fn srs_with(secrets: &[&str], settings: Settings) -> Srs {
        let secrets =
            Secrets::new(secrets.iter().map(|s| s.as_bytes().to_vec()).collect()).unwrap();
        Srs::new(&secrets, settings).unwrap()
    }

    fn srs() -> Srs {
        srs_with(&["test secret", "old secret"], Settings::default())
    }

    /// What PostSRSd 1.10 (`postsrsd -s FILE -d srs.test`, FILE "test secret\nold secret\n")
    /// answered on its forward table on 2026-12-07.
    const POSTSRSD_FORWARDS: &[(&str, &str)] = &[
        (
            "alice@example.com",
            "SRS0=MbPa=J2=example.com=alice@srs.test",
        ),
        (
            "Alice.X@Example.COM",
            "SRS0=p5Kp=J2=Example.COM=Alice.X@srs.test",
        ),
        (
            "SRS0=abcd=AB=orig.test=bob@fwd1.test",
            "SRS1=krfx=fwd1.test==abcd=AB=orig.test=bob@srs.test",
        ),
        (
            "SRS1=xxxx=fwd1.test==abcd=AB=orig.test=bob@fwd2.test",
            "SRS1=krfx=fwd1.test==abcd=AB=orig.test=bob@srs.test",
        ),
        ("srs0+x@h", "SRS1=vFm5=h=+x@srs.test"),
    ];

    #[test]
    fn forwards_byte_for_byte_as_postsrsd() {
        let srs = srs();
        for (sender, expected) in POSTSRSD_FORWARDS {
            assert_eq!(
                srs.forward(sender, "srs.test", day(CAPTURE_DAY)).unwrap(),
                *expected,
                "{sender}"
            );
        }
    }

    #[test]
    fn reverses_what_postsrsd_wrote() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        let reverse = |a: &str| srs.reverse(a, now).unwrap().unwrap();
        assert_eq!(
            reverse("SRS0=MbPa=J2=example.com=alice@srs.test"),
            Reversed {
                kind: Kind::Srs0,
                address: "alice@example.com".into()
            }
        );
        assert_eq!(
            reverse("SRS0=p5Kp=J2=Example.COM=Alice.X@srs.test").address,
            "Alice.X@Example.COM"
        );
        assert_eq!(
            reverse("SRS1=krfx=fwd1.test==abcd=AB=orig.test=bob@srs.test"),
            Reversed {
                kind: Kind::Srs1,
                address: "SRS0=abcd=AB=orig.test=bob@fwd1.test".into()
            }
        );
        assert_eq!(reverse("SRS1=vFm5=h=+x@srs.test").address, "SRS0+x@h");
    }

    #[test]
    fn the_timestamp_is_the_day_modulo_1024_in_base32() {
        assert_eq!(&stamp(day(CAPTURE_DAY)), b"J2");
        assert_eq!(&stamp(day(0)), b"AA");
        assert_eq!(&stamp(day(1023)), b"77");
        assert_eq!(&stamp(day(1024)), b"AA");
        assert_eq!(&stamp(day(33)), b"BB");
        // a day begins at midnight UTC
        let midnight = UNIX_EPOCH + Duration::from_secs(34 * SECONDS_PER_DAY);
        assert_eq!(&stamp(midnight - Duration::from_secs(1)), b"BB");
        assert_eq!(&stamp(midnight), b"BC");
        assert_eq!(&stamp(UNIX_EPOCH - Duration::from_secs(5)), b"AA");
        for slot in 0..1024 {
            let s = stamp(day(slot));
            assert_eq!(
                stamp_value(std::str::from_utf8(&s).unwrap()),
                Some(slot as u16)
            );
        }
        assert_eq!(stamp_value("j2"), Some(314));
        assert_eq!(stamp_value("J"), None);
        assert_eq!(stamp_value("J22"), None);
        assert_eq!(stamp_value("J1"), None);
        assert_eq!(stamp_value("é"), None);
    }

    #[test]
    fn an_address_is_good_for_max_age_days_and_then_expires() {
        let srs = srs();
        let address = srs
            .forward("a@b.test", "srs.test", day(CAPTURE_DAY))
            .unwrap();
        for age in 0..=21 {
            assert!(
                srs.reverse(&address, day(CAPTURE_DAY + age)).is_ok(),
                "{age}"
            );
        }
        assert_eq!(
            srs.reverse(&address, day(CAPTURE_DAY + 22)),
            Err(ReverseError::Expired {
                age_days: 22,
                max_age_days: 21
            })
        );
        // a stamp from tomorrow is 1023 days old, as libsrs2 reads it
        assert_eq!(
            srs.reverse(&address, day(CAPTURE_DAY - 1)),
            Err(ReverseError::Expired {
                age_days: 1023,
                max_age_days: 21
            })
        );
        // and 1024 days later the stamp is today's again
        assert!(srs.reverse(&address, day(CAPTURE_DAY + 1024)).is_ok());
        // SRS1 carries no stamp of its own
        let srs1 = srs
            .forward(&address, "next.test", day(CAPTURE_DAY))
            .unwrap();
        assert!(srs.reverse(&srs1, day(CAPTURE_DAY + 500)).is_ok());
    }

    #[test]
    fn the_hash_is_compared_ignoring_case_and_with_every_secret() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        for address in [
            "SRS0=mbpa=J2=example.com=alice@srs.test",
            "SRS0=MBPA=j2=EXAMPLE.COM=ALICE@srs.test",
            "srs0=MbPa=J2=example.com=alice@srs.test",
            "SRS0+MbPa=J2=example.com=alice@srs.test",
            "SRS0-MbPa=J2=example.com=alice@other.test",
            "SRS0=MbPa=J2=example.com=alice",
        ] {
            assert!(srs.reverse(address, now).unwrap().is_some(), "{address}");
        }
        // the case of host and user is kept
        assert_eq!(
            srs.reverse("SRS0=MbPa=J2=EXAMPLE.com=ALICE@srs.test", now)
                .unwrap()
                .unwrap()
                .address,
            "ALICE@EXAMPLE.com"
        );
        // signed with the second (old) secret
        let old = srs_with(&["old secret"], Settings::default());
        let address = old.forward("a@b.test", "srs.test", now).unwrap();
        assert!(srs.reverse(&address, now).unwrap().is_some());
        // but not with a secret we do not have
        let other = srs_with(&["other"], Settings::default());
        assert_eq!(other.reverse(&address, now), Err(ReverseError::BadHash));
    }

    #[test]
    fn a_tampered_address_is_refused() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        for address in [
            "SRS0=MbPb=J2=example.com=alice@srs.test",
            "SRS0=MbPa=J2=example.com=alicf@srs.test",
            "SRS0=MbPa=J2=example.org=alice@srs.test",
            "SRS0=MbPa=J3=example.com=alice@srs.test",
            "SRS1=krfx=fwd2.test==abcd=AB=orig.test=bob@srs.test",
            "SRS1=krfx=fwd1.test==abcd=AB=orig.test=eve@srs.test",
        ] {
            assert_eq!(
                srs.reverse(address, now),
                Err(ReverseError::BadHash),
                "{address}"
            );
        }
    }

    #[test]
    fn hash_lengths_follow_libsrs2() {
        let now = day(CAPTURE_DAY);
        let srs = srs();
        // shorter than hash_min (4)
        assert_eq!(
            srs.reverse("SRS0=MbP=J2=example.com=alice@srs.test", now),
            Err(ReverseError::HashTooShort { hash_min: 4 })
        );
        assert_eq!(
            srs.reverse("SRS0==J2=example.com=alice@srs.test", now),
            Err(ReverseError::HashTooShort { hash_min: 4 })
        );
        // longer: only the first hash_length characters count
        assert!(
            srs.reverse("SRS0=MbPaXYZ=J2=example.com=alice@srs.test", now)
                .unwrap()
                .is_some()
        );
        // a longer hash written, a shorter one accepted
        let long = srs_with(
            &["test secret"],
            Settings {
                hash_length: 8,
                hash_min: 6,
                ..Settings::default()
            },
        );
        let address = long.forward("alice@example.com", "srs.test", now).unwrap();
        assert!(address.starts_with("SRS0=MbPa"), "{address}");
        assert_eq!(
            address.len(),
            "SRS0=MbPa=J2=example.com=alice@srs.test".len() + 4
        );
        // the hash is address[5..13]: cut to 6 characters, then to 5
        let cut = format!("{}{}", &address[..11], &address[13..]);
        assert!(long.reverse(&cut, now).unwrap().is_some(), "{cut}");
        let too_short = format!("{}{}", &address[..10], &address[13..]);
        assert_eq!(
            long.reverse(&too_short, now),
            Err(ReverseError::HashTooShort { hash_min: 6 })
        );
        // the whole 27 characters
        let full = srs_with(
            &["test secret"],
            Settings {
                hash_length: MAX_HASH_LENGTH,
                hash_min: MAX_HASH_LENGTH,
                ..Settings::default()
            },
        );
        let address = full.forward("alice@example.com", "srs.test", now).unwrap();
        assert!(full.reverse(&address, now).unwrap().is_some());
    }

    #[test]
    fn the_separator_is_written_after_the_tag_only() {
        let now = day(CAPTURE_DAY);
        let plus = srs_with(
            &["test secret"],
            Settings {
                separator: Separator::Plus,
                ..Settings::default()
            },
        );
        assert_eq!(
            plus.forward("alice@example.com", "srs.test", now).unwrap(),
            "SRS0+MbPa=J2=example.com=alice@srs.test"
        );
        let srs0 = plus.forward("alice@example.com", "one.test", now).unwrap();
        let srs1 = plus.forward(&srs0, "two.test", now).unwrap();
        assert!(srs1.starts_with("SRS1+"), "{srs1}");
        assert!(srs1.contains("=one.test=+MbPa=J2="), "{srs1}");
        assert_eq!(plus.reverse(&srs1, now).unwrap().unwrap().address, srs0);
        // any separator is read, whatever we write
        assert!(srs().reverse(&srs1, now).unwrap().is_some());
    }

    #[test]
    fn srs1_chains_back_to_the_first_forwarder() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        let srs0 = srs.forward("bob@orig.test", "fwd1.test", now).unwrap();
        let srs1 = srs.forward(&srs0, "fwd2.test", now).unwrap();
        let again = srs.forward(&srs1, "fwd3.test", now).unwrap();
        assert!(
            srs1.starts_with("SRS1=") && srs1.ends_with("@fwd2.test"),
            "{srs1}"
        );
        assert!(
            again.starts_with("SRS1=") && again.ends_with("@fwd3.test"),
            "{again}"
        );
        assert!(again.contains("=fwd1.test=="), "{again}");
        for address in [&srs1, &again] {
            let reversed = srs.reverse(address, now).unwrap().unwrap();
            assert_eq!(reversed.kind, Kind::Srs1);
            assert_eq!(reversed.address, srs0);
        }
        assert_eq!(
            srs.reverse(&srs0, now).unwrap().unwrap().address,
            "bob@orig.test"
        );
    }

    #[test]
    fn addresses_that_are_not_srs_are_left_alone() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        for address in [
            "",
            "alice@example.com",
            "SRS0",
            "SRS0@x",
            "SRS2=a=b=c=d@x",
            "SRS0_a=b=c=d@x",
            "xSRS0=a=b=c=d@x",
            "alice@SRS0=a=b=c=d",
        ] {
            assert_eq!(srs.reverse(address, now), Ok(None), "{address}");
            assert!(!is_srs_address(address), "{address}");
        }
        assert!(is_srs_address("srs1-"));
    }

    #[test]
    fn malformed_srs_addresses_say_what_is_missing() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        let cases = [
            ("SRS0=@x", Kind::Srs0, Malformed::NoHash),
            ("SRS0=hash@x", Kind::Srs0, Malformed::NoTimestamp),
            ("SRS0=hash=J2@x", Kind::Srs0, Malformed::NoHost),
            ("SRS0=hash=J2=host@x", Kind::Srs0, Malformed::NoUser),
            ("SRS0=hash=J2==user@x", Kind::Srs0, Malformed::NoHost),
            ("SRS0=hash=J2=host=@x", Kind::Srs0, Malformed::NoUser),
            ("SRS0=hash=J=host=user@x", Kind::Srs0, Malformed::Timestamp),
            ("SRS0=hash=J0=host=user@x", Kind::Srs0, Malformed::Timestamp),
            ("SRS1=", Kind::Srs1, Malformed::NoHash),
            ("SRS1=hash@x", Kind::Srs1, Malformed::NoHost),
            ("SRS1=hash=host@x", Kind::Srs1, Malformed::NoUser),
            ("SRS1=hash==rest@x", Kind::Srs1, Malformed::NoHost),
            ("SRS1=hash=host=@x", Kind::Srs1, Malformed::NoUser),
        ];
        for (address, kind, reason) in cases {
            assert_eq!(
                srs.reverse(address, now),
                Err(ReverseError::Malformed { kind, reason }),
                "{address}"
            );
        }
        assert_eq!(
            ReverseError::Malformed {
                kind: Kind::Srs1,
                reason: Malformed::NoHost
            }
            .to_string(),
            "malformed SRS1 address: no host"
        );
    }

    #[test]
    fn the_parser_borrows_the_parts() {
        assert_eq!(
            SrsAddress::parse("srs0+HaSh=J2=Host=us=er@Dom@x").unwrap(),
            Some(SrsAddress::Srs0 {
                separator: Separator::Plus,
                hash: "HaSh",
                stamp: "J2",
                host: "Host",
                user: "us=er",
                domain: Some("Dom@x"),
            })
        );
        let parsed = SrsAddress::parse("SRS1-h=fwd==h0=AB=o=u").unwrap().unwrap();
        assert_eq!(parsed.kind(), Kind::Srs1);
        assert_eq!(parsed.domain(), None);
        assert_eq!(
            parsed,
            SrsAddress::Srs1 {
                separator: Separator::Minus,
                hash: "h",
                host: "fwd",
                rest: "=h0=AB=o=u",
                domain: None,
            }
        );
    }

    #[test]
    fn senders_that_cannot_be_forwarded() {
        let srs = srs();
        let now = day(CAPTURE_DAY);
        let cases = [
            ("", ForwardError::NoAtSign),
            ("alice", ForwardError::NoAtSign),
            ("@example.com", ForwardError::NotAnAddress),
            ("alice@", ForwardError::NotAnAddress),
            ("a@b@c", ForwardError::NotAnAddress),
            ("a@b=c", ForwardError::NotAnAddress),
            ("SRS1=@x", ForwardError::Malformed(Malformed::NoHash)),
            ("SRS1=h=host@x", ForwardError::Malformed(Malformed::NoUser)),
        ];
        for (sender, error) in cases {
            assert_eq!(srs.forward(sender, "srs.test", now), Err(error), "{sender}");
        }
        assert_eq!(
            srs.forward("a@b.test", "", now),
            Err(ForwardError::NoDomain)
        );
        assert_eq!(
            srs.forward("a@b.test", "postmaster@", now),
            Err(ForwardError::NoDomain)
        );
        // the domain may come as an address, as libsrs2 allows
        assert_eq!(
            srs.forward("alice@example.com", "fwd@srs.test", day(CAPTURE_DAY))
                .unwrap(),
            "SRS0=MbPa=J2=example.com=alice@srs.test"
        );
        // a sender in the target domain is rewritten too (the caller's policy decides)
        assert!(
            srs.forward("x@srs.test", "srs.test", now)
                .unwrap()
                .starts_with("SRS0=")
        );
    }

    #[test]
    fn settings_out_of_range_are_refused() {
        let secrets = Secrets::new(vec![b"s".to_vec()]).unwrap();
        let with = |f: fn(&mut Settings)| {
            let mut settings = Settings::default();
            f(&mut settings);
            Srs::new(&secrets, settings).map(|_| ())
        };
        assert_eq!(with(|_| {}), Ok(()));
        assert_eq!(
            with(|s| s.hash_length = 0),
            Err(SettingsError::HashLength(0))
        );
        assert_eq!(
            with(|s| s.hash_length = 28),
            Err(SettingsError::HashLength(28))
        );
        assert_eq!(
            with(|s| s.hash_min = 5),
            Err(SettingsError::HashMin {
                hash_min: 5,
                hash_length: 4
            })
        );
        assert_eq!(
            with(|s| s.hash_min = 0),
            Err(SettingsError::HashMin {
                hash_min: 0,
                hash_length: 4
            })
        );
        assert_eq!(
            with(|s| s.max_age_days = 1024),
            Err(SettingsError::MaxAge(1024))
        );
        assert_eq!(with(|s| s.max_age_days = 1023), Ok(()));
    }

    #[test]
    fn debug_never_shows_a_secret() {
        let debug = format!("{:?}", srs());
        assert!(!debug.contains("secret\""), "{debug}");
        assert!(debug.starts_with("Srs { secrets: 2,"), "{debug}");
    }

    #[test]
    fn the_oracle_holds_for_the_examples() {
        for (sender, forwarded) in POSTSRSD_FORWARDS {
            fuzz_address(sender.as_bytes());
            fuzz_address(forwarded.as_bytes());
        }
        for address in [
            "",
            "@",
            "SRS0=",
            "SRS1=a=b=c@d",
            "a@b@c",
            "SRS0=x=YY=h=u@d",
            "é@ü",
        ] {
            fuzz_address(address.as_bytes());
        }
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;

    /// Local parts as mail has them, odd characters included (quotes, `=`, `+`, `/`, spaces,
    /// non-ASCII), never an `@`; sometimes an SRS0 address's, its tag in any case. (SRS1 senders
    /// have their own test: most strings with an SRS1 tag are not SRS1 addresses.)
    fn local_part() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~\" é-]{1,40}",
            "[sS][rR][sS]0[=+-][a-zA-Z0-9=+-]{0,20}",
        ]
        .prop_filter("no SRS1 tag", |s| !matches!(tag(s), Some((Kind::Srs1, _))))
    }

    fn domain() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9-]{1,20}(\\.[a-zA-Z0-9-]{1,20}){0,3}"
    }

    fn settings() -> impl Strategy<Value = Settings> {
        (
            prop_oneof![
                Just(Separator::Equals),
                Just(Separator::Plus),
                Just(Separator::Minus)
            ],
            1..=MAX_HASH_LENGTH,
            0..1024u16,
        )
            .prop_flat_map(|(separator, hash_length, max_age_days)| {
                (1..=hash_length).prop_map(move |hash_min| Settings {
                    separator,
                    hash_length,
                    hash_min,
                    max_age_days,
                })
            })
    }

    fn secrets() -> impl Strategy<Value = Vec<Vec<u8>>> {
        prop::collection::vec(prop::collection::vec(any::<u8>(), 1..40), 1..4)
    }

    fn at(days: u64, seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(days * SECONDS_PER_DAY + seconds % SECONDS_PER_DAY)
    }

    proptest! {
        #[test]
        fn forward_then_reverse_is_the_identity(
            user in local_part(),
            host in domain(),
            srs_domain in domain(),
            secrets in secrets(),
            settings in settings(),
            day in 0..100_000u64,
            second in any::<u64>(),
            later in any::<u16>(),
        ) {
            let secrets = Secrets::new(secrets).unwrap();
            let srs = Srs::new(&secrets, settings).unwrap();
            let sender = format!("{user}@{host}");
            let forwarded = srs.forward(&sender, &srs_domain, at(day, second)).unwrap();
            prop_assert!(is_srs_address(&forwarded));
            let at_domain = format!("@{srs_domain}");
            prop_assert!(forwarded.ends_with(&at_domain));
            let expected = match tag(&user) {
                Some(_) => format!("SRS0{}@{host}", &user[4..]),
                None => sender.clone(),
            };
            let age = u64::from(later) % 1024;
            let reversed = srs.reverse(&forwarded, at(day + age, second));
            if tag(&user).is_some() || age <= u64::from(settings.max_age_days) {
                // SRS1 (from an SRS0-looking sender) never expires by itself
                prop_assert_eq!(reversed.unwrap().unwrap().address, expected.clone());
            } else {
                prop_assert_eq!(
                    reversed,
                    Err(ReverseError::Expired {
                        age_days: u16::try_from(age).unwrap(),
                        max_age_days: settings.max_age_days
                    })
                );
            }
            // any case of the hash, and any later secret list that still holds the signer
            let mut rotated = vec![b"a newer secret".to_vec()];
            rotated.extend(secrets.iter().map(<[u8]>::to_vec));
            let rotated = Srs::new(&Secrets::new(rotated).unwrap(), settings).unwrap();
            let upper = forwarded.to_ascii_uppercase();
            let upper_local = upper.split('@').next().unwrap();
            if tag(&user).is_none() {
                let parsed = SrsAddress::parse(&upper).unwrap().unwrap();
                prop_assert_eq!(parsed.kind(), Kind::Srs0);
            }
            let elsewhere = format!("{upper_local}@x");
            prop_assert!(rotated.reverse(&elsewhere, at(day, second)).unwrap().is_some());
        }

        #[test]
        fn srs1_chains_reverse_to_the_srs0_form(
            user in local_part().prop_filter("a plain sender", |u| tag(u).is_none()),
            hosts in prop::collection::vec(domain(), 4),
            secrets in secrets(),
            settings in settings(),
            day in 0..100_000u64,
        ) {
            let srs = Srs::new(&Secrets::new(secrets).unwrap(), settings).unwrap();
            let now = at(day, 0);
            let sender = format!("{user}@{}", hosts[0]);
            let first = srs.forward(&sender, &hosts[1], now).unwrap();
            let second = srs.forward(&first, &hosts[2], now).unwrap();
            let third = srs.forward(&second, &hosts[3], now).unwrap();
            for srs1 in [&second, &third] {
                let tag = format!("SRS1{}", settings.separator.as_char());
                prop_assert!(srs1[..5].eq_ignore_ascii_case(&tag));
                let reversed = srs.reverse(srs1, now).unwrap().unwrap();
                prop_assert_eq!(reversed.kind, Kind::Srs1);
                // the SRS0 form of the first hop, its tag in capitals
                prop_assert_eq!(&reversed.address, &format!("SRS0{}", &first[4..]));
            }
        }

        #[test]
        fn the_parser_and_the_scheme_never_panic(address in ".{0,80}") {
            fuzz_address(address.as_bytes());
        }

        #[test]
        fn srs_shaped_input_never_panics(address in "[sS][rR][sS][01][=+-][a-zA-Z0-9=@é+-]{0,40}") {
            fuzz_address(address.as_bytes());
        }

        #[test]
        fn any_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..100)) {
            fuzz_address(&data);
        }
    }
}
