//! `[reputation]`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;
use crate::reputation::{Factor, Prefixes};

/// `[reputation]` (issue 18): the archive's memory put to work. Per factor value, the messages
/// of the last `window` are counted (by the auditor, into `reputation_count`); a value with at
/// least `min-messages` judged messages of which more than `bad-ratio` were refused makes the
/// module suggest reject.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ReputationConfig {
    pub enabled: bool,
    /// The factors judged (the auditor counts every factor whenever the module is enabled).
    pub factors: Vec<Factor>,
    /// How far back messages count, in whole UTC days: the days the window overlaps.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// Fewer judged messages than this for a value: not judged.
    pub min_messages: u32,
    /// A refused share above this suggests reject.
    pub bad_ratio: f64,
    /// The score of a value refused every time; less in proportion above `bad-ratio`.
    pub max_score: f64,
    /// `client_network` is the client's network of this prefix length.
    pub network_ipv4_prefix: u8,
    pub network_ipv6_prefix: u8,
    /// DNS server for the sender domain's SPF check (`ip:port`); absent: the system's
    /// resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolver: Option<SocketAddr>,
    /// Longest the SPF check of the sender domain may take; past it the domain does not count.
    #[serde(with = "humantime_serde")]
    pub spf_timeout: Duration,
    /// Longest one check may take; also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for ReputationConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            factors: Factor::ALL.to_vec(),
            window: Duration::from_secs(7 * 24 * 3600),
            min_messages: 10,
            bad_ratio: 0.5,
            max_score: 8.0,
            network_ipv4_prefix: 24,
            network_ipv6_prefix: 64,
            dns_resolver: None,
            spf_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(ReputationConfig, metadata);

/// The longest `window` (the counters are kept that long).
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

impl ReputationConfig {
    /// `client_network`'s prefix lengths.
    pub fn prefixes(&self) -> Prefixes {
        Prefixes {
            ipv4: self.network_ipv4_prefix,
            ipv6: self.network_ipv6_prefix,
        }
    }

    /// Whether `factor` is judged.
    pub fn judges(&self, factor: Factor) -> bool {
        self.factors.contains(&factor)
    }

    pub(in crate::config) fn validate(&self) -> Result<(), String> {
        if self.factors.is_empty() {
            return Err("[reputation] factors must name at least one factor".into());
        }
        for (i, factor) in self.factors.iter().enumerate() {
            if self.factors[..i].contains(factor) {
                return Err(format!("[reputation] factors: `{factor}` is listed twice"));
            }
        }
        if self.window.is_zero() || self.window > MAX_WINDOW {
            return Err("[reputation] window must be longer than 0s and at most 366d".into());
        }
        if self.min_messages == 0 {
            return Err("[reputation] min-messages must be at least 1".into());
        }
        if !self.bad_ratio.is_finite() || !(0.0..1.0).contains(&self.bad_ratio) {
            return Err("[reputation] bad-ratio must be at least 0 and below 1".into());
        }
        if !self.max_score.is_finite() || self.max_score < 0.0 {
            return Err("[reputation] max-score must be a number ≥ 0".into());
        }
        if self.network_ipv4_prefix > 32 || self.network_ipv6_prefix > 128 {
            return Err(
                "[reputation] network-ipv4-prefix must be 0 to 32 and network-ipv6-prefix 0 to 128"
                    .into(),
            );
        }
        if self.spf_timeout.is_zero() {
            return Err("[reputation] spf-timeout must be longer than 0s".into());
        }
        Ok(())
    }
}
