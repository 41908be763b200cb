//! `[gateway]`: the milter listener, its limits, deadlines, spool and fail action.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Config;

/// What the gateway answers when it cannot get a verdict at all (broker unreachable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FailAction {
    Tempfail,
    Accept,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Milter listener (Postfix: `smtpd_milters = inet:127.0.0.1:10033`).
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// Longest wait for module results after end of message; far below Postfix's
    /// `milter_content_timeout` (300 s).
    #[serde(with = "humantime_serde")]
    pub message_deadline: Duration,
    /// How often SMFIR_PROGRESS is sent while waiting, so Postfix's timers never fire.
    #[serde(with = "humantime_serde")]
    pub progress_interval: Duration,
    /// Answer when no verdict can be had (broker down): `tempfail` (451 4.7.1) or `accept`.
    /// Under `noop` the gateway always accepts.
    pub fail_action: FailAction,
    /// Where audit events wait for RabbitMQ's confirm (created if missing).
    pub spool_dir: PathBuf,
    /// Most bytes the spool may hold; when full, messages get the fail action.
    pub spool_max_size: u64,
    /// Largest milter packet accepted; a longer one is a protocol error.
    pub max_packet_size: u32,
    /// Most concurrent milter connections (one per SMTP session).
    pub max_connections: usize,
    /// Headers kept per message; beyond this the message is judged and audited as truncated.
    pub max_headers: usize,
    /// Bytes of header names and values kept per message.
    pub max_header_bytes: usize,
    /// Bytes of the body put in the audit event for the archive (`message_body`); a longer
    /// body is archived cut at this size and marked truncated. 0: no body in the event. No
    /// body is sent either when `[auditor] archive-retention-body` is 0s. At most 64 MiB.
    pub audit_body_max_size: usize,
}

impl GatewayConfig {
    /// The largest `audit-body-max-size` (the event travels base64-encoded, one RabbitMQ
    /// message and one spool file).
    pub const AUDIT_BODY_MAX_SIZE_LIMIT: usize = 64 * 1024 * 1024;

    /// Bytes of the body the audit event carries: `audit-body-max-size`, or 0 when bodies are
    /// not archived (`[auditor] archive-retention-body = "0s"`, which this host's file says).
    pub fn audit_body_limit(config: &Config) -> usize {
        if config.auditor.archive_retention_body.is_zero() {
            0
        } else {
            config.gateway.audit_body_max_size
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 10033)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9133)),
            message_deadline: Duration::from_secs(20),
            progress_interval: Duration::from_secs(5),
            fail_action: FailAction::Tempfail,
            spool_dir: PathBuf::from("/var/spool/cluegetter"),
            spool_max_size: 1024 * 1024 * 1024,
            max_packet_size: 1024 * 1024,
            max_connections: 4096,
            max_headers: 1000,
            max_header_bytes: 1024 * 1024,
            audit_body_max_size: 1024 * 1024,
        }
    }
}
