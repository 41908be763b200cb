//! The SRS module (issue 19): the Sender Rewriting Scheme, byte-compatible with PostSRSd 1.x,
//! rewriting into the forwarding virtual domain. It judges nothing (permit, score 0) but
//! changes the envelope at end of message, and refuses a forged or expired SRS recipient of
//! ours at RCPT (the gateway asks it there whenever `[srs]` is enabled).
//!
//! - [`scheme`]: pure forward and reverse rewriting ([`Srs`]), the address parser
//!   ([`SrsAddress`]), their errors; time is an argument.
//! - [`secrets`]: PostSRSd's secrets file ([`Secrets`]): one secret per line, the first signs,
//!   all verify.
//! - [`policy`]: `[srs]`'s rules (whom to rewrite into which domain, which recipients are
//!   ours), pure.
//! - here: the [`Module`]: reads the clock and turns the policy's outcome into a result.
//!
//! Nothing here talks to RabbitMQ.

pub mod policy;
pub mod scheme;
pub mod secrets;

use std::time::{Instant, SystemTime};

use async_trait::async_trait;
use platform::config::SrsConfig;
use serde_json::json;
use wire::{Action, CheckRequest, CheckResult, CheckStage};

pub use scheme::{
    ForwardError, Kind, Malformed, ReverseError, Reversed, Separator, Settings, SettingsError, Srs,
    SrsAddress, is_srs_address,
};
pub use secrets::{Secrets, SecretsError, SecretsFileError};

use self::policy::{Policy, Rcpt};
use crate::module::{Module, ModuleError};

/// The module's name, as `[srs]` and `check.srs` spell it.
pub const NAME: &str = "srs";

/// The score of a refused SRS recipient: it refuses on its own, whatever the thresholds.
pub const REFUSED_SCORE: f64 = 100.0;

/// Outcomes (`outcome`): `rewritten`, `unchanged`, `reversed`, `refused` (RCPT), `valid`
/// (RCPT).
pub const METRIC_OUTCOMES: &str = "cluegetter_srs_outcomes_total";

/// The module: the scheme with its secrets, and `[srs]`'s rules.
#[derive(Debug)]
pub struct SrsModule {
    policy: Policy,
}

/// Why the module cannot be set up; check-workers does not start then.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error(transparent)]
    Secrets(#[from] SecretsFileError),
    #[error("[srs] settings")]
    Settings(#[from] SettingsError),
    #[error("[srs] separator {0:?} is not one of = + -")]
    Separator(char),
}

impl SrsModule {
    /// The module for `[srs]`: reads the secrets file now.
    ///
    /// # Errors
    /// The secrets file is missing, unreadable or holds no secret; a setting is out of range.
    pub fn new(config: &SrsConfig) -> Result<Self, SetupError> {
        let secrets = Secrets::read(&config.secrets_file)?;
        let separator = Separator::from_char(config.separator)
            .ok_or(SetupError::Separator(config.separator))?;
        let settings = Settings {
            separator,
            hash_length: config.hash_length,
            hash_min: config.hash_min_length,
            max_age_days: config.max_age_days(),
        };
        let srs = Srs::new(&secrets, settings)?;
        metrics::describe_counter!(
            METRIC_OUTCOMES,
            "SRS senders rewritten or left, recipients reversed, refused or valid"
        );
        Ok(Self {
            policy: Policy::new(srs, config.clone()),
        })
    }

    fn at_rcpt(&self, request: &CheckRequest, now: SystemTime) -> CheckResult {
        let Some(recipient) = request.envelope.recipients.first() else {
            return result(request, json!({ "skipped": "no recipient" }));
        };
        match self.policy.at_rcpt(recipient, now) {
            Rcpt::NotOurs => result(
                request,
                json!({ "recipient": recipient, "skipped": "not an SRS address of ours" }),
            ),
            Rcpt::Valid { original, kind } => {
                count("valid");
                result(
                    request,
                    json!({ "recipient": recipient, "reverses_to": original, "kind": kind.as_str() }),
                )
            }
            Rcpt::Refused(error) => {
                count("refused");
                tracing::info!(message_id = %request.message_id, %recipient, %error,
                    "SRS recipient refused");
                CheckResult {
                    action: Action::Reject,
                    score: REFUSED_SCORE,
                    message: format!("Invalid SRS address: {error}"),
                    enhanced_status: Some(policy::REFUSED_STATUS.to_owned()),
                    ..result(
                        request,
                        json!({ "recipient": recipient, "refused": error.to_string() }),
                    )
                }
            }
        }
    }

    fn at_eom(&self, request: &CheckRequest, now: SystemTime) -> CheckResult {
        let eom = self.policy.at_eom(&request.envelope, &request.headers, now);
        match &eom.sender {
            policy::Sender::Rewritten {
                original,
                rewritten,
                ..
            } => {
                count("rewritten");
                tracing::debug!(message_id = %request.message_id, queue_id = %request.queue_id,
                    %original, %rewritten, "SRS: sender rewritten");
            }
            policy::Sender::Unchanged { .. } => count("unchanged"),
        }
        for recipient in &eom.recipients {
            count(match recipient {
                policy::Recipient::Reversed { .. } => "reversed",
                policy::Recipient::Refused { .. } => "not_reversed",
            });
        }
        CheckResult {
            changes: eom.changes(),
            ..result(request, eom.determinants())
        }
    }
}

#[async_trait]
impl Module for SrsModule {
    fn name(&self) -> &'static str {
        NAME
    }

    fn stages(&self) -> &'static [CheckStage] {
        &[CheckStage::Rcpt, CheckStage::Eom]
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let started = Instant::now();
        let now = SystemTime::now();
        let mut result = match request.stage {
            CheckStage::Rcpt => self.at_rcpt(request, now),
            // the worker answers other stages for us (`stages`)
            _ => self.at_eom(request, now),
        };
        result.duration = started.elapsed().as_secs_f64();
        Ok(result)
    }
}

/// Permit, score 0, no changes, with `determinants`.
fn result(request: &CheckRequest, determinants: serde_json::Value) -> CheckResult {
    CheckResult::new(
        request.message_id,
        NAME,
        Action::Permit,
        0.0,
        String::new(),
        determinants,
    )
}

fn count(outcome: &'static str) {
    metrics::counter!(METRIC_OUTCOMES, "outcome" => outcome).increment(1);
}
