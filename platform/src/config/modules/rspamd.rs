//! `[rspamd]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RspamdConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// rspamd's score × multiplier is the reject score this module contributes.
    pub multiplier: f64,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_size: usize,
    pub on_error: OnError,
}

impl Default for RspamdConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".to_owned(),
            port: 11333,
            multiplier: 0.67,
            timeout: Duration::from_secs(10),
            max_size: 2 * 1024 * 1024,
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(RspamdConfig, content);
