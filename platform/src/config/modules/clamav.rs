//! `[clamav]` and the clamd address.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

/// Where clamd listens: `tcp://host:port`, `unix:///path`, or a bare socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `host:port` (a host name, an IPv4 address or a bracketed IPv6 address).
    Tcp(String),
    Unix(PathBuf),
}

impl ClamdAddress {
    /// Parses the `address` key.
    ///
    /// # Errors
    /// A `tcp://` address without a port, an empty path, or another scheme.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(host_port) = text.strip_prefix("tcp://") {
            let host_port = host_port.trim_end_matches('/');
            let has_port = host_port
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !has_port {
                return Err(format!(
                    "clamd address `{text}`: expected tcp://host:port (e.g. tcp://127.0.0.1:3310)"
                ));
            }
            return Ok(Self::Tcp(host_port.to_owned()));
        }
        let path = text.strip_prefix("unix://").unwrap_or(text);
        if path.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        Err(format!(
            "clamd address `{text}`: expected tcp://host:port, unix:///path or /path"
        ))
    }
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(host_port) => write!(f, "tcp://{host_port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl Serialize for ClamdAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ClamdAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[clamav]`: clamd's INSTREAM (spec/modules.md §5).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClamavConfig {
    pub enabled: bool,
    pub address: ClamdAddress,
    /// Reject score of a message clamd finds something in.
    pub default_score: f64,
    pub max_size: usize,
    /// Longest a scan may take (connect included); also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for ClamavConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            address: ClamdAddress::Tcp("127.0.0.1:3310".to_owned()),
            default_score: 10.0,
            max_size: 10 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(ClamavConfig, content);
