//! `[check-workers]`: what every check worker process shares.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct CheckWorkersConfig {
    pub metrics_listen: SocketAddr,
    /// Requests each module consumer works on at once (AMQP prefetch).
    pub prefetch: u16,
}

impl Default for CheckWorkersConfig {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9134)),
            prefetch: 16,
        }
    }
}
