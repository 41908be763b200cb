//! The greylisting module (spec/modules.md §2): ClueGetter's greylisting with its state in
//! MariaDB ([`store`]), shared by every worker of the instance.
//!
//! Per message, first match wins:
//! 1. a SASL-authenticated client, a client in `whitelist`, or one without an IP address →
//!    **permit**, score 0, nothing stored (spec gap C.23: ClueGetter greylisted them too);
//! 2. the client address (or, with `auto-whitelist-after`, its network) is whitelisted and was
//!    seen within `whitelist-period` → **permit**, score 1; the entry is refreshed;
//! 3. the client passes the SPF policy of a `whitelist-spf` domain ([`spf`]) → **permit**,
//!    score 1, and the address is whitelisted;
//! 4. the triplets, one per recipient: (client network, sender, recipient). Every triplet
//!    passed before or first seen at least `initial-period` ago → **permit**, score 1, and
//!    the address is whitelisted; otherwise **tempfail** with `initial-score` and ClueGetter's
//!    "Greylisting in effect, please come back later". `initial-score` stays below the
//!    tempfail threshold, so greylisting alone does not tempfail: it tips over mail that also
//!    scored elsewhere.
//!
//! Departures from ClueGetter, on purpose:
//! - the IP whitelist is checked before SPF (ClueGetter: after): the outcome is the same and a
//!   known client costs no DNS lookups;
//! - triplets are per recipient and keyed on the client's network (/24, /64), so a retry from
//!   another server of the same farm, with the recipients in another order or split over
//!   several transactions passes (spec gap A.6, postgrey#49);
//! - an unpassed triplet lives `retry-window` (2 days, postgrey's default) instead of 90
//!   minutes;
//! - `auto-whitelist-after` (off by default): once that many triplets of a network passed, the
//!   whole network is whitelisted;
//! - database errors are error results (the worker turns them into ClueGetter's error score).

pub mod spf;
pub mod store;

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ipnet::IpNet;
use platform::config::{Config, GreylistingConfig};
use platform::database::ConflictRetries;
use serde_json::{Value, json};
use wire::{Action, CheckRequest, CheckResult};

use self::spf::{SpfOutcome, SpfWhitelist};
use self::store::{Attempt, Store, Timing, Triplets};
use crate::module::{Module, ModuleError, error_chain};

pub const NAME: &str = "greylisting";

/// ClueGetter's reason for a greylisted message.
pub const GREYLISTED_MESSAGE: &str = "Greylisting in effect, please come back later";

/// The score of a message let through (ClueGetter's; a permit weighs nothing in the verdict).
pub const PERMIT_SCORE: f64 = 1.0;

/// Outcomes per message (`outcome`): `authenticated`, `whitelisted_network`, `no_address`,
/// `no_recipients`, `whitelist`, `spf`, `passed`, `greylisted`.
pub const METRIC_OUTCOMES: &str = "cluegetter_greylisting_outcomes_total";

/// How often a worker deletes stale rows (whitelist entries and triplets nobody can use).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Rows per table deleted in one prune at most.
const PRUNE_LIMIT: u32 = 10_000;

/// The module: its settings, the database and the SPF whitelist.
pub struct Greylisting {
    settings: GreylistingConfig,
    /// The top-level `whitelist`: never greylisted.
    whitelist: Vec<IpNet>,
    store: Store,
    spf: SpfWhitelist,
    /// When this worker last pruned; never held across an await.
    last_prune: Mutex<Instant>,
}

impl Greylisting {
    /// The module for `[greylisting]`, the top-level `whitelist` and `[database]`. Nothing is
    /// connected yet: the database and the resolver are reached on first use, so a worker
    /// starts (and answers with error results) while MariaDB is down.
    ///
    /// # Errors
    /// `database.url` cannot be parsed.
    pub fn new(config: &Config) -> Result<Self, ModuleError> {
        let settings = config.greylisting.clone();
        // Leave a little of the module timeout for the answer: a pool that cannot connect
        // gives its own error rather than the worker's "no answer within".
        let acquire_timeout = settings.timeout.mul_f64(0.8);
        let store = Store::new(
            config.database.url.clone(),
            config.database.max_connections,
            acquire_timeout,
        )
        .map_err(|source| ModuleError::Request {
            service: "the greylisting database",
            source: Box::new(source),
        })?;
        let spf = SpfWhitelist::new(
            &settings.whitelist_spf,
            settings.dns_resolver,
            settings.spf_timeout,
        );
        metrics::describe_counter!(
            METRIC_OUTCOMES,
            "Messages judged by greylisting, by what decided"
        );
        Ok(Self {
            settings,
            whitelist: config.whitelist.clone(),
            store,
            spf,
            last_prune: Mutex::new(Instant::now()),
        })
    }

    fn timing(&self) -> Timing {
        Timing {
            initial_period: self.settings.initial_period,
            retry_window: self.settings.retry_window,
            auto_whitelist_after: self.settings.auto_whitelist_after,
        }
    }

    /// Steps 2–4 for a client with an address.
    async fn judge(&self, request: &CheckRequest, ip: IpAddr) -> Result<Judgement, sqlx::Error> {
        let instance = self.store.instance_id(&request.instance).await?;
        let address = store::address_key(ip);
        let network = store::network(
            ip,
            self.settings.client_ipv4_prefix,
            self.settings.client_ipv6_prefix,
        );
        let mut keys = vec![address.clone()];
        if self.settings.auto_whitelist_after > 0 {
            keys.push(network.to_string());
        }
        if self
            .store
            .whitelist_hit(instance, &keys, self.settings.whitelist_period)
            .await?
        {
            return Ok(Judgement::Whitelisted { network });
        }
        let host_domain = match request.session.mta_hostname.as_str() {
            "" => "localhost",
            name => name,
        };
        let spf = self.spf.check(store::canonical(ip), host_domain).await;
        if spf.passed.is_some() {
            self.store.whitelist(instance, &address).await?;
            return Ok(Judgement::Spf { spf, network });
        }
        let triplets = Triplets::new(
            network,
            &request.envelope.sender,
            &request.envelope.recipients,
        );
        let attempt = self
            .store
            .record_attempt(instance, &triplets, &address, self.timing())
            .await?;
        self.prune_if_due(instance).await;
        Ok(Judgement::Triplets {
            spf,
            triplets,
            attempt,
        })
    }

    /// Deletes stale rows every [`PRUNE_EVERY`] per worker; a failure is only logged.
    async fn prune_if_due(&self, instance: u64) {
        let due = match self.last_prune.lock() {
            Ok(mut last) if last.elapsed() >= PRUNE_EVERY => {
                *last = Instant::now();
                true
            }
            _ => false,
        };
        if !due {
            return;
        }
        match self
            .store
            .prune(
                instance,
                self.timing(),
                self.settings.whitelist_period,
                PRUNE_LIMIT,
            )
            .await
        {
            Ok(0) => {}
            Ok(rows) => tracing::info!(
                rows,
                "greylisting: deleted stale triplets and whitelist entries"
            ),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "greylisting: cannot delete stale rows")
            }
        }
    }
}

/// What decided, for clients that were looked up.
enum Judgement {
    Whitelisted {
        network: IpNet,
    },
    Spf {
        spf: SpfOutcome,
        network: IpNet,
    },
    Triplets {
        spf: SpfOutcome,
        triplets: Triplets,
        attempt: Attempt,
    },
}

#[async_trait]
impl Module for Greylisting {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let ip = match self.exempt(request) {
            Ok(ip) => ip,
            Err((outcome, why)) => {
                metrics::counter!(METRIC_OUTCOMES, "outcome" => outcome).increment(1);
                return Ok(permit(request, 0.0, json!({ "skipped": why })));
            }
        };
        // Two workers on the same triplet or client can deadlock in any of the statements
        // (the whitelist upsert, the instance row), not only in the triplet transaction, which
        // retries on its own: try the whole judgement again, as InnoDB asks.
        let mut retries = ConflictRetries::new("greylisting judgement", 4);
        let judgement = loop {
            match self.judge(request, ip).await {
                Ok(judgement) => break judgement,
                Err(error) if retries.should_retry(&error) => {
                    retries.again(&error).await;
                }
                Err(source) => {
                    return Err(ModuleError::Unavailable {
                        service: "the greylisting database",
                        source: Box::new(source),
                    });
                }
            }
        };
        Ok(to_result(request, ip, judgement, &self.settings))
    }
}

impl Greylisting {
    /// Step 1: the client's address, or why the message is not greylisted at all (the metric's
    /// outcome and the reason).
    fn exempt(&self, request: &CheckRequest) -> Result<IpAddr, (&'static str, &'static str)> {
        let session = &request.session;
        if !session.sasl_username.is_empty() {
            return Err(("authenticated", "the client is SASL-authenticated"));
        }
        let Some(ip) = session.client_addr else {
            return Err(("no_address", "the client has no IP address"));
        };
        let canonical = store::canonical(ip);
        if self
            .whitelist
            .iter()
            .any(|net| net.contains(&ip) || net.contains(&canonical))
        {
            return Err((
                "whitelisted_network",
                "the client is in the whitelist networks",
            ));
        }
        if request.envelope.recipients.is_empty() {
            return Err(("no_recipients", "the message has no recipients"));
        }
        Ok(ip)
    }
}

fn permit(request: &CheckRequest, score: f64, determinants: Value) -> CheckResult {
    CheckResult::new(
        request.message_id,
        NAME,
        Action::Permit,
        score,
        String::new(),
        determinants,
    )
}

/// The result and its determinants (ClueGetter's facts, in snake case).
fn to_result(
    request: &CheckRequest,
    ip: IpAddr,
    judgement: Judgement,
    settings: &GreylistingConfig,
) -> CheckResult {
    let client = store::address_key(ip);
    match judgement {
        Judgement::Whitelisted { network } => {
            metrics::counter!(METRIC_OUTCOMES, "outcome" => "whitelist").increment(1);
            permit(
                request,
                PERMIT_SCORE,
                json!({
                    "found_in_whitelist": true,
                    "found_in_spf_whitelist": false,
                    "client": client,
                    "network": network.to_string(),
                    "store": "mariadb",
                }),
            )
        }
        Judgement::Spf { spf, network } => {
            metrics::counter!(METRIC_OUTCOMES, "outcome" => "spf").increment(1);
            permit(
                request,
                PERMIT_SCORE,
                json!({
                    "found_in_whitelist": false,
                    "found_in_spf_whitelist": true,
                    "spf_domain": spf.passed,
                    "spf_error": spf.error,
                    "client": client,
                    "network": network.to_string(),
                    "whitelisted": true,
                    "store": "mariadb",
                }),
            )
        }
        Judgement::Triplets {
            spf,
            triplets,
            attempt,
        } => {
            let youngest = attempt
                .triplets
                .iter()
                .map(|t| t.age)
                .min()
                .unwrap_or_default();
            let determinants = json!({
                "found_in_whitelist": false,
                "found_in_spf_whitelist": false,
                "spf_domain": Value::Null,
                "spf_error": spf.error,
                "client": client,
                "network": triplets.network.to_string(),
                "sender": triplets.sender,
                // seconds since the youngest triplet was first seen
                "time_diff": round_millis(youngest),
                "initial_period": round_millis(settings.initial_period),
                "triplets": attempt.triplets.iter().map(|t| json!({
                    "recipient": t.recipient,
                    "time_diff": round_millis(t.age),
                    "passed_before": t.passed,
                })).collect::<Vec<_>>(),
                "whitelisted": attempt.passed,
                "network_whitelisted": attempt.network_whitelisted,
                "store": "mariadb",
            });
            if attempt.passed {
                metrics::counter!(METRIC_OUTCOMES, "outcome" => "passed").increment(1);
                permit(request, PERMIT_SCORE, determinants)
            } else {
                metrics::counter!(METRIC_OUTCOMES, "outcome" => "greylisted").increment(1);
                CheckResult::new(
                    request.message_id,
                    NAME,
                    Action::Tempfail,
                    settings.initial_score,
                    GREYLISTED_MESSAGE.to_owned(),
                    determinants,
                )
            }
        }
    }
}

/// Seconds with millisecond precision.
fn round_millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}
