//! `[broker]` and `[database]`: where a process finds RabbitMQ and MariaDB.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL; the vhost is its path (`%2f` is `/`).
    pub url: String,
    /// Longest pause between two reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            reconnect_max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "mysql://root@127.0.0.1:3306/cluegetter".to_owned(),
            max_connections: 8,
        }
    }
}
