//! `[geoip]`.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

/// `[geoip]` (issue 17): a SASL login used from more countries than `max-countries` within
/// `window` is stopped. The history lives in MariaDB (`[database]`), shared by every worker.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GeoipConfig {
    pub enabled: bool,
    /// A MaxMind GeoLite2/GeoIP2 Country or City database (`.mmdb`); read again when it changes.
    pub database: PathBuf,
    /// A GeoLite2/GeoIP2 ASN database, for the determinants and the archive only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asn_database: Option<PathBuf>,
    /// How often the files are looked at for a new version (a stat, no read).
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Countries used longer ago than this are forgotten.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The most distinct countries one login may send from within `window`.
    pub max_countries: u32,
    /// What a message from one country too many suggests.
    pub action: GeoipAction,
    /// The score of that suggestion.
    pub score: f64,
    /// An address the database has no country for: not judged, or counted as the country
    /// `unknown`.
    pub unknown_country: UnknownCountry,
    /// Logins (`user@example.org`, `user`) or whole domains (`@example.org`) never judged.
    pub exempt: Vec<String>,
    /// Judge the envelope sender the same way for mail without a SASL login.
    pub also_senders: bool,
    /// Longest one check may take (lookup and database); also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

/// `[geoip] action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GeoipAction {
    Reject,
    Tempfail,
}

/// `[geoip] unknown-country`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownCountry {
    Ignore,
    Count,
}

impl Default for GeoipConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            database: PathBuf::from("/var/lib/GeoIP/GeoLite2-Country.mmdb"),
            asn_database: None,
            reload_interval: Duration::from_secs(10),
            window: Duration::from_secs(24 * 3600),
            max_countries: 2,
            action: GeoipAction::Reject,
            score: 10.0,
            unknown_country: UnknownCountry::Ignore,
            exempt: Vec::new(),
            also_senders: false,
            timeout: Duration::from_secs(5),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(GeoipConfig, metadata);

impl GeoipConfig {
    pub(in crate::config) fn validate(&self) -> Result<(), String> {
        if !self.score.is_finite() || self.score < 0.0 {
            return Err("[geoip] score must be a number ≥ 0".into());
        }
        if self.max_countries == 0 {
            return Err("[geoip] max-countries must be at least 1".into());
        }
        if self.window.is_zero() || self.reload_interval.is_zero() {
            return Err("[geoip] window and reload-interval must be longer than 0s".into());
        }
        if self.database.as_os_str().is_empty() {
            return Err("[geoip] database must name a file".into());
        }
        for entry in &self.exempt {
            let login = entry.strip_prefix('@').unwrap_or(entry);
            if login.trim().is_empty() || login.trim() != login {
                return Err(format!(
                    "[geoip] exempt: `{entry}` is not a login or an @domain"
                ));
            }
        }
        Ok(())
    }
}
