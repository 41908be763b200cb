//! `[quotas]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

/// `[quotas]` (spec/modules.md §1): limits per factor value over trailing windows, counted
/// exactly in MariaDB (`[database]`); the definitions are ClueGetter's tables.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct QuotasConfig {
    pub enabled: bool,
    /// Count the client's IP address (one unit per recipient).
    pub account_client_address: bool,
    /// Count the envelope sender (one unit per recipient; the null sender is skipped).
    pub account_sender: bool,
    /// Count the sender's domain (one unit per recipient; the null sender is skipped).
    pub account_sender_domain: bool,
    /// Count each recipient address (one unit each).
    pub account_recipient: bool,
    /// Count each recipient domain (one unit per recipient in it).
    pub account_recipient_domain: bool,
    /// Count the SASL login (one unit per recipient); a session without login is not counted.
    pub account_sasl_username: bool,
    /// Verdicts whose messages keep their reservation (are counted); judged on the verdict the
    /// rules gave, so `noop` counts as production would. A whitelisted client's message counts
    /// as permitted.
    pub tally_status: Vec<wire::Action>,
    /// A reservation whose verdict never arrives stops counting after this long. Longer than
    /// the gateway may hold an event in its spool; a verdict that comes later still settles it.
    #[serde(with = "humantime_serde")]
    pub reservation_ttl: Duration,
    /// Longest one check may take; also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for QuotasConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            account_client_address: true,
            account_sender: false,
            account_sender_domain: false,
            account_recipient: false,
            account_recipient_domain: false,
            account_sasl_username: false,
            tally_status: vec![wire::Action::Permit],
            reservation_ttl: Duration::from_secs(2 * 24 * 3600),
            timeout: Duration::from_secs(5),
            on_error: OnError::Tempfail,
        }
    }
}

impl QuotasConfig {
    /// `tally-status` must name something; a reservation must outlive the gateway's wait.
    pub(in crate::config) fn validate(&self, message_deadline: Duration) -> Result<(), String> {
        if self.tally_status.is_empty() {
            return Err(
                "[quotas] tally-status must name at least one verdict (ClueGetter's default: [\"permit\"])"
                    .into(),
            );
        }
        if self.reservation_ttl <= message_deadline {
            return Err(format!(
                "[quotas] reservation-ttl ({:?}) must be longer than [gateway] message-deadline ({:?})",
                self.reservation_ttl, message_deadline
            ));
        }
        Ok(())
    }
}

module_settings!(QuotasConfig, metadata);
