//! The reputation module (issue 18): previous verdicts in future verdicts.
//!
//! The auditor counts every archived message per factor value and UTC day into
//! `reputation_count` (`platform::reputation` says how a message counts; the auditor writes the
//! counters in the transaction that archives it). At end of message this module:
//! 1. takes the message's values of the configured `factors` (`platform::reputation::values_of`,
//!    the same spelling the auditor counts by);
//! 2. sums each value's counters over the days `window` overlaps, in one indexed statement
//!    ([`store`]); beside it, for mail without a SASL login, checks the sender domain's SPF
//!    policy for the client and records the result (`sender_domain_spf`), which the auditor
//!    needs to count the domain (forging a domain must not poison it);
//! 3. judges ([`policy`], pure): a value with at least `min-messages` judged messages of which a
//!    share above `bad-ratio` was refused gives `max-score × (share − bad-ratio) /
//!    (1 − bad-ratio)`; the highest over the factors is a **reject** with that score; otherwise
//!    **permit**, score 0. The determinants show every value's counts, ratio and score.
//!
//! MariaDB down: an error result (`on-error` says what it does). A failed SPF check is no error:
//! the domain just does not count for this message.

pub mod policy;
pub mod store;

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use mail_auth::SpfResult;
use platform::config::{Config, ReputationConfig};
use platform::reputation::{Factor, SPF_DETERMINANT, sender_domain, values_of};
use serde_json::{Value, json};
use wire::{Action, CheckRequest, CheckResult};

use self::policy::{Thresholds, decide, duration_text, judge, reason, row};
use self::store::Store;
use crate::module::{Module, ModuleError};
use crate::modules::spf::{Spf, describe};

pub const NAME: &str = platform::reputation::MODULE;

/// Outcomes per message (`outcome`): `permitted`, `rejected`.
pub const METRIC_OUTCOMES: &str = "cluegetter_reputation_outcomes_total";
/// The SPF checks of sender domains (`result`: pass, fail, …, `error`, `timeout`).
pub const METRIC_SPF: &str = "cluegetter_reputation_spf_total";

/// The module: its settings, the counters in MariaDB and the SPF resolver.
pub struct Reputation {
    settings: ReputationConfig,
    thresholds: Thresholds,
    store: Store,
    spf: Spf,
}

impl Reputation {
    /// The module for `[reputation]` and `[database]`; MariaDB is reached on first use.
    ///
    /// # Errors
    /// `database.url` cannot be parsed.
    pub fn new(config: &Config) -> Result<Self, ModuleError> {
        let settings = config.reputation.clone();
        let store = store_for(config, settings.timeout.mul_f64(0.8))?;
        metrics::describe_counter!(METRIC_OUTCOMES, "Messages judged by reputation, by outcome");
        metrics::describe_counter!(METRIC_SPF, "Sender-domain SPF checks of reputation");
        Ok(Self {
            thresholds: Thresholds::from_config(&settings),
            spf: Spf::new(settings.dns_resolver, settings.spf_timeout),
            settings,
            store,
        })
    }

    /// The SPF result of the sender's domain for the client, when the domain may count by it:
    /// `sender_domain` judged, no SASL login (that counts anyway), a sender with a domain.
    async fn sender_spf(&self, request: &CheckRequest) -> Option<String> {
        let session = &request.session;
        if !self.settings.judges(Factor::SenderDomain) || !session.sasl_username.trim().is_empty() {
            return None;
        }
        let ip: IpAddr = session.client_addr?.to_canonical();
        let domain = sender_domain(&request.envelope.sender)?;
        let host_domain = match session.mta_hostname.as_str() {
            "" => "localhost",
            name => name,
        };
        let sender = request.envelope.sender.trim().trim_matches(['<', '>']);
        let checked = tokio::time::timeout(
            self.settings.spf_timeout,
            self.spf.verify_mail_from(ip, &domain, host_domain, sender),
        )
        .await;
        let result = match checked {
            Ok(Ok(result)) => describe(result).to_owned(),
            Ok(Err(error)) => {
                tracing::info!(%error, "reputation: cannot check the sender domain's SPF");
                metrics::counter!(METRIC_SPF, "result" => "error").increment(1);
                return Some(format!("error: {error}"));
            }
            Err(_) => {
                metrics::counter!(METRIC_SPF, "result" => "timeout").increment(1);
                return Some(format!(
                    "timeout: not done within {}",
                    duration_text(self.settings.spf_timeout)
                ));
            }
        };
        let label = if result == describe(SpfResult::Pass) {
            "pass"
        } else {
            "other"
        };
        metrics::counter!(METRIC_SPF, "result" => label).increment(1);
        Some(result)
    }
}

/// The store for `[database]`, shared with `check-workers reputation`.
///
/// # Errors
/// `database.url` cannot be parsed.
pub fn store_for(config: &Config, acquire_timeout: Duration) -> Result<Store, ModuleError> {
    Store::new(
        config.database.url.clone(),
        config.database.max_connections,
        acquire_timeout,
    )
    .map_err(|source| ModuleError::Request {
        service: "the reputation counters (MariaDB)",
        source: Box::new(source),
    })
}

#[async_trait]
impl Module for Reputation {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let settings = &self.settings;
        let values = values_of(
            &settings.factors,
            &request.session,
            &request.envelope.sender,
            settings.prefixes(),
        );
        let (found, spf) = tokio::join!(
            self.store.counts(&values, settings.window),
            self.sender_spf(request)
        );
        let found = found.map_err(|source| ModuleError::Unavailable {
            service: "the reputation counters (MariaDB)",
            source: Box::new(source),
        })?;
        let judged = judge(found, &self.thresholds);
        let (action, score, worst) = decide(&judged);
        let message = worst
            .map(|worst| reason(worst, settings.window))
            .unwrap_or_default();
        // every value asked about, with zero counts when it has none
        let rows: Vec<Value> = values
            .iter()
            .map(|(factor, value)| {
                judged
                    .iter()
                    .find(|j| j.factor == *factor && &j.value == value)
                    .map(row)
                    .unwrap_or_else(|| {
                        row(&policy::Judged {
                            factor: *factor,
                            value: value.clone(),
                            counts: Default::default(),
                            score: None,
                        })
                    })
            })
            .collect();
        let mut determinants = json!({
            "window": duration_text(settings.window),
            "min_messages": settings.min_messages,
            "bad_ratio": settings.bad_ratio,
            "max_score": settings.max_score,
            "factors": rows,
        });
        if let Some(worst) = worst {
            determinants["worst"] = json!({"factor": worst.factor.as_str(), "value": worst.value});
        }
        if let Some(spf) = spf {
            determinants[SPF_DETERMINANT] = json!(spf);
        }
        let outcome = if action == Action::Reject {
            "rejected"
        } else {
            "permitted"
        };
        metrics::counter!(METRIC_OUTCOMES, "outcome" => outcome).increment(1);
        Ok(CheckResult::new(
            request.message_id,
            NAME,
            action,
            score,
            message,
            determinants,
        ))
    }
}
