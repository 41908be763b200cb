//! `[srs]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

/// The longest age an SRS0 address may be given: timestamps count days modulo 1024.
const MAX_AGE_LIMIT_DAYS: u64 = 1023;
/// The longest hash: base64 of HMAC-SHA1 has 27 characters before its padding.
const MAX_HASH_LENGTH: usize = 27;
const SECONDS_PER_DAY: u64 = 86_400;

/// Which senders are rewritten (`rewrite`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SrsRewrite {
    /// ClueGetter's rule: a message is forwarded when its `recipient-header` names an address
    /// that is not one of its envelope recipients; it is rewritten into that header's domain
    /// when that is one of `local-domains`, else into `domain`.
    Header,
    /// PostSRSd's: every sender outside `local-domains` (and `domain`), into `domain`.
    Always,
    /// No sender is rewritten; SRS recipients are still checked and reversed (the MX of the
    /// two-hop setup, where the client's own headers must not decide anything).
    Never,
}

/// `[srs]`: the Sender Rewriting Scheme, byte-compatible with PostSRSd 1.x. Forwarded mail
/// gets an SRS envelope sender (so it keeps passing SPF); SRS recipients in our domains are
/// checked at RCPT and reversed at end of message (so bounces find the real sender). It judges
/// nothing: permit, score 0, or a refused forged or expired SRS recipient at RCPT.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SrsConfig {
    pub enabled: bool,
    /// PostSRSd's secrets file: one secret per line, the first signs, all verify. Read by
    /// check-workers at start; a missing or empty file stops it.
    pub secrets_file: PathBuf,
    /// The domain SRS addresses are written into when no better one is known (PostSRSd's
    /// `-d`); also one of ours for reversal. Required when enabled.
    pub domain: String,
    /// Our domains: their senders are never rewritten, SRS recipients in them are checked and
    /// reversed, and a `recipient-header` address in one of them names the domain to rewrite
    /// into. Compared case-insensitively.
    pub local_domains: Vec<String>,
    pub rewrite: SrsRewrite,
    /// The header naming the address a message was sent to before it was forwarded (`rewrite
    /// = "header"`).
    pub recipient_header: String,
    /// Hash characters written and compared (PostSRSd's `-n`).
    pub hash_length: usize,
    /// Fewest hash characters accepted (PostSRSd's `-N`).
    pub hash_min_length: usize,
    /// The character after `SRS0`/`SRS1` in the addresses written: `=`, `+` or `-` (PostSRSd's
    /// `-a`). Reversal accepts all three.
    pub separator: char,
    /// Oldest SRS0 address reversed, in whole days (libsrs2's default, which PostSRSd keeps).
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Longest one check may take; also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for SrsConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            secrets_file: PathBuf::from("/etc/postsrsd.secret"),
            domain: String::new(),
            local_domains: Vec::new(),
            rewrite: SrsRewrite::Header,
            recipient_header: "X-Original-To".to_owned(),
            hash_length: 4,
            hash_min_length: 4,
            separator: '=',
            max_age: Duration::from_secs(21 * SECONDS_PER_DAY),
            timeout: Duration::from_secs(5),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(SrsConfig, metadata);

impl SrsConfig {
    /// `max-age` in days (validation makes it whole and below 1024).
    pub fn max_age_days(&self) -> u16 {
        u16::try_from(self.max_age.as_secs() / SECONDS_PER_DAY).unwrap_or(u16::MAX)
    }

    /// Whether `domain` is one of ours: `domain` or one of `local-domains`, ignoring case.
    pub fn is_local_domain(&self, domain: &str) -> bool {
        (!self.domain.is_empty() && self.domain.eq_ignore_ascii_case(domain))
            || self
                .local_domains
                .iter()
                .any(|local| local.eq_ignore_ascii_case(domain))
    }

    /// Whether the gateway asks the module about `recipient` at RCPT: the module is enabled
    /// and the address starts like an SRS address (`SRS0` or `SRS1` in any case, then `=`, `+`
    /// or `-`; check-workers' `srs::is_srs_address` tests the same, and a test there keeps the
    /// two equal). Other recipients cost no round trip.
    pub fn asks_at_rcpt(&self, recipient: &str) -> bool {
        let bytes = recipient.as_bytes();
        self.enabled
            && bytes.len() >= 5
            && bytes[..3].eq_ignore_ascii_case(b"SRS")
            && matches!(bytes[3], b'0' | b'1')
            && matches!(bytes[4], b'=' | b'+' | b'-')
    }

    pub(in crate::config) fn validate(&self) -> Result<(), String> {
        if !(1..=MAX_HASH_LENGTH).contains(&self.hash_length) {
            return Err(format!(
                "[srs] hash-length must be 1 to {MAX_HASH_LENGTH} (is {})",
                self.hash_length
            ));
        }
        if !(1..=self.hash_length).contains(&self.hash_min_length) {
            return Err(format!(
                "[srs] hash-min-length must be 1 to hash-length ({}) (is {})",
                self.hash_length, self.hash_min_length
            ));
        }
        if !matches!(self.separator, '=' | '+' | '-') {
            return Err(format!(
                "[srs] separator must be \"=\", \"+\" or \"-\" (is {:?})",
                self.separator
            ));
        }
        let max_age = self.max_age.as_secs();
        if self.max_age.subsec_nanos() != 0
            || !max_age.is_multiple_of(SECONDS_PER_DAY)
            || max_age / SECONDS_PER_DAY > MAX_AGE_LIMIT_DAYS
        {
            return Err(
                "[srs] max-age must be whole days, at most 1023d (SRS timestamps count days modulo 1024)"
                    .into(),
            );
        }
        for domain in self.local_domains.iter().chain(Some(&self.domain)) {
            if domain.contains(['@', '=', ' ']) {
                return Err(format!("[srs] `{domain}` is not a domain name"));
            }
        }
        if self.local_domains.iter().any(String::is_empty) {
            return Err("[srs] local-domains holds an empty name".into());
        }
        if self.recipient_header.is_empty()
            || !self
                .recipient_header
                .bytes()
                .all(|b| (33..=126).contains(&b) && b != b':')
        {
            return Err(format!(
                "[srs] recipient-header `{}` is not a header name",
                self.recipient_header
            ));
        }
        if self.enabled {
            if self.domain.is_empty() {
                return Err(
                    "[srs] domain must be set when the module is enabled (the domain SRS addresses are written into, PostSRSd's -d)"
                        .into(),
                );
            }
            if self.secrets_file.as_os_str().is_empty() {
                return Err("[srs] secrets-file must be set when the module is enabled".into());
            }
        }
        Ok(())
    }
}
