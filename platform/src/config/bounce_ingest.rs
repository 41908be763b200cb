//! `[bounce-ingest]`: the delivery-report listener, its allow-list, sizes and spool; the
//! maillog follower's state file, host name and poll interval.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::deserialize_networks;

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BounceIngestConfig {
    /// Delivery-report listener (ClueGetter's `nc` pipe, and `bounce-ingest submit --via`).
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// Client networks the listener takes reports from; any other connection is closed
    /// unread. Bare addresses mean /32 or /128.
    #[serde(deserialize_with = "deserialize_networks")]
    pub allow: Vec<IpNet>,
    /// Bytes of one report that are kept; a longer report is read to its end and stored cut
    /// at this size, marked partial. At most 16 MiB - 1 (the archive's MEDIUMBLOB).
    pub max_size: usize,
    /// Longest the listener waits for a whole report on one connection.
    #[serde(with = "humantime_serde")]
    pub read_timeout: Duration,
    /// Longest `bounce-ingest submit` tries to hand a report on (to RabbitMQ, or to the
    /// listener with `--via`) before it exits 75 so that Postfix keeps the report and retries.
    #[serde(with = "humantime_serde")]
    pub submit_timeout: Duration,
    /// Where the listener keeps reports until RabbitMQ confirmed them (created if missing).
    pub spool_dir: PathBuf,
    /// Most bytes the spool may hold; when full, the listener refuses reports (the sender
    /// keeps them) rather than lose them.
    pub spool_max_size: u64,
    /// `bounce-ingest maillog FILE`: where the follower keeps its place (inode and offset),
    /// written after RabbitMQ confirmed the events before it.
    pub maillog_state_file: PathBuf,
    /// The MTA host name delivery events carry; empty: each log line's host.
    pub maillog_hostname: String,
    /// How often the follower polls for more lines and for rotation at the end of the file.
    #[serde(with = "humantime_serde")]
    pub maillog_poll_interval: Duration,
    /// `/metrics` of `bounce-ingest maillog`.
    pub maillog_metrics_listen: SocketAddr,
}

impl Default for BounceIngestConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 10034)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9136)),
            // loopback only (a const assertion: the prefix lengths are valid)
            allow: vec![
                IpNet::new_assert(IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 0)), 8),
                IpNet::new_assert(IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 128),
            ],
            max_size: 4 * 1024 * 1024,
            read_timeout: Duration::from_secs(30),
            submit_timeout: Duration::from_secs(30),
            spool_dir: PathBuf::from("/var/spool/cluegetter-bounce"),
            spool_max_size: 256 * 1024 * 1024,
            maillog_state_file: PathBuf::from("/var/lib/cluegetter/maillog.state"),
            maillog_hostname: String::new(),
            maillog_poll_interval: Duration::from_millis(500),
            maillog_metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9137)),
        }
    }
}

impl BounceIngestConfig {
    /// The largest `max-size`: what a MEDIUMBLOB holds.
    pub const MAX_SIZE_LIMIT: usize = 16 * 1024 * 1024 - 1;

    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1024..=Self::MAX_SIZE_LIMIT).contains(&self.max_size) {
            return Err(format!(
                "[bounce-ingest] max-size must be 1024 to {} bytes (is {})",
                Self::MAX_SIZE_LIMIT,
                self.max_size
            ));
        }
        if self.read_timeout.is_zero() || self.submit_timeout.is_zero() {
            return Err(
                "[bounce-ingest] read-timeout and submit-timeout must be longer than 0s".into(),
            );
        }
        if self.spool_max_size < 2 * self.max_size as u64 {
            return Err(format!(
                "[bounce-ingest] spool-max-size ({}) must be at least twice max-size ({})",
                self.spool_max_size, self.max_size
            ));
        }
        if self.maillog_poll_interval.is_zero() {
            return Err("[bounce-ingest] maillog-poll-interval must be longer than 0s".into());
        }
        if self.maillog_hostname.len() > 127
            || !self
                .maillog_hostname
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_')
        {
            return Err(format!(
                "[bounce-ingest] maillog-hostname must be a host name of at most 127 ASCII \
                 letters, digits, '.', '-' and '_' (is {:?})",
                self.maillog_hostname
            ));
        }
        Ok(())
    }
}
