//! `[greylisting]`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

/// `[greylisting]` (spec/modules.md §2), its state in MariaDB (`[database]`), shared by every
/// worker of the instance.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GreylistingConfig {
    pub enabled: bool,
    /// Tempfail score of a message whose triplet is new or too young; below
    /// `message-tempfail-score` on purpose.
    pub initial_score: f64,
    /// How long after the first attempt a retry is accepted.
    #[serde(with = "humantime_serde")]
    pub initial_period: Duration,
    /// A triplet not yet passed is forgotten this long after its first attempt (ClueGetter: 90 min).
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// How long a whitelisted client stays whitelisted after it was last seen.
    #[serde(with = "humantime_serde")]
    pub whitelist_period: Duration,
    /// Domains whose SPF policy, passed by the client address, whitelists the client.
    pub whitelist_spf: Vec<String>,
    /// DNS server for the SPF lookups (`ip:port`); absent: the system's resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolver: Option<SocketAddr>,
    /// Longest the SPF whitelist may take per message, all domains together.
    #[serde(with = "humantime_serde")]
    pub spf_timeout: Duration,
    /// Triplets are keyed on the client's network of this prefix length, not its address.
    pub client_ipv4_prefix: u8,
    pub client_ipv6_prefix: u8,
    /// Once this many triplets from a client network have passed, the whole network is
    /// whitelisted; 0: off (ClueGetter whitelists only the address that passed).
    pub auto_whitelist_after: u32,
    /// Longest one check may take (database and SPF); also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for GreylistingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            initial_score: 7.0,
            initial_period: Duration::from_secs(5 * 60),
            retry_window: Duration::from_secs(2 * 24 * 3600),
            whitelist_period: Duration::from_secs(40 * 24 * 3600),
            whitelist_spf: Vec::new(),
            dns_resolver: None,
            spf_timeout: Duration::from_secs(3),
            client_ipv4_prefix: 24,
            client_ipv6_prefix: 64,
            auto_whitelist_after: 0,
            timeout: Duration::from_secs(10),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(GreylistingConfig, metadata);

impl GreylistingConfig {
    pub(in crate::config) fn validate(&self) -> Result<(), String> {
        if !self.initial_score.is_finite() {
            return Err("[greylisting] initial-score must be a number".into());
        }
        if self.client_ipv4_prefix > 32 || self.client_ipv6_prefix > 128 {
            return Err(
                "[greylisting] client-ipv4-prefix must be 0 to 32 and client-ipv6-prefix 0 to 128"
                    .into(),
            );
        }
        if self.retry_window <= self.initial_period {
            return Err("[greylisting] retry-window must be longer than initial-period".into());
        }
        if self.whitelist_period.is_zero() || self.spf_timeout.is_zero() {
            return Err(
                "[greylisting] whitelist-period and spf-timeout must be longer than 0s".into(),
            );
        }
        for domain in &self.whitelist_spf {
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if !valid {
                return Err(format!(
                    "[greylisting] whitelist-spf: `{domain}` is not a domain name"
                ));
            }
        }
        Ok(())
    }
}
