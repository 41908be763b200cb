//! The geoip module (issue 17): a SASL login used from more countries than `max-countries`
//! within `window` is stopped (a stolen password used from three continents within the hour).
//!
//! Per message, at end of message:
//! 1. the client address is looked up in the MaxMind database ([`lookup`]) unless it is
//!    loopback, RFC 1918, link-local or unique-local; its country and ASN go into the
//!    determinants of every result (the auditor stores them with the session);
//! 2. a message without a SASL login (or, with `also-senders`, an envelope sender), from an
//!    `exempt` login, from a client not looked up, or from an address without a country (with
//!    `unknown-country = "ignore"`) → **permit**, score 0, with the reason (`skipped`);
//! 3. otherwise the login's countries within `window` are read and the country judged in one
//!    locked transaction ([`store`], shared by every worker): a country that would make the
//!    count exceed `max-countries` → `action` with `score`, and the country is **not**
//!    recorded (the real user is not locked out by the attacker's attempts); else **permit**,
//!    score 0, and the country recorded.
//!
//! The rules are pure ([`policy`]). No database file, or MariaDB down: error results (the
//! worker turns them into ClueGetter's error score; `on-error` says what they do).

pub mod lookup;
pub mod policy;
pub mod store;

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use platform::config::{Config, GeoipAction, GeoipConfig, UnknownCountry};
use serde_json::{Value, json};
use wire::{Action, CheckRequest, CheckResult};

use self::lookup::{Found, GeoDb, classify};
use self::policy::{
    Decision, UNKNOWN_COUNTRY, countries_named, duration_text, is_exempt, normalise_login,
};
use self::store::{Judged, Store};
use crate::module::{Module, ModuleError, error_chain};

pub const NAME: &str = "geoip";

/// Outcomes per message (`outcome`): `no_login`, `exempt`, `no_address`, `not_public`,
/// `unknown_country`, `permitted`, `refused`.
pub const METRIC_OUTCOMES: &str = "cluegetter_geoip_outcomes_total";

/// How often a worker deletes rows older than the window.
const PRUNE_EVERY: Duration = Duration::from_secs(600);
/// Rows deleted in one prune at most.
const PRUNE_LIMIT: u32 = 10_000;

/// The module: its settings, the MaxMind databases and the history in MariaDB.
pub struct Geoip {
    settings: GeoipConfig,
    db: GeoDb,
    store: Store,
    /// When this worker last pruned; never held across an await.
    last_prune: Mutex<Instant>,
}

impl Geoip {
    /// The module for `[geoip]` and `[database]`. Nothing is read or connected yet: the
    /// database file is read at the first check (and again when it changes), MariaDB is
    /// reached on first use, so a worker starts without either.
    ///
    /// # Errors
    /// `database.url` cannot be parsed.
    pub fn new(config: &Config) -> Result<Self, ModuleError> {
        let settings = config.geoip.clone();
        let acquire_timeout = settings.timeout.mul_f64(0.8);
        let store = store_for(config, acquire_timeout)?;
        let db = GeoDb::new(
            &settings.database,
            settings.asn_database.as_deref(),
            settings.reload_interval,
        );
        metrics::describe_counter!(METRIC_OUTCOMES, "Messages judged by geoip, by outcome");
        Ok(Self {
            settings,
            db,
            store,
            last_prune: Mutex::new(Instant::now()),
        })
    }

    /// The MaxMind databases, read as a check would (for the benchmark and tests).
    pub fn geo_db(&self) -> &GeoDb {
        &self.db
    }

    /// Deletes stale rows every [`PRUNE_EVERY`] per worker; a failure is only logged.
    async fn prune_if_due(&self) {
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
        match self.store.prune(self.settings.window, PRUNE_LIMIT).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "geoip: deleted countries older than the window"),
            Err(error) => {
                tracing::warn!(error = %error_chain(&error), "geoip: cannot delete stale rows")
            }
        }
    }
}

/// The store for `[database]`, shared with `check-workers geoip`.
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
        service: "the geoip history (MariaDB)",
        source: Box::new(source),
    })
}

/// Why a message is not judged (the metric's outcome and the reason in the determinants).
type Skip = (&'static str, String);

#[async_trait]
impl Module for Geoip {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        self.db.refresh().await;
        let session = &request.session;
        let mut facts = json!({});
        // 1. The client, looked up for every message: the archive keeps its country.
        let looked_up = match session.client_addr.map(classify) {
            None => Err(("no_address", "the client has no IP address".to_owned())),
            Some(Err(why)) => {
                facts["client"] =
                    json!(session.client_addr.map(|ip| ip.to_canonical().to_string()));
                Err((
                    "not_public",
                    format!("the client address is {} (not looked up)", why.as_str()),
                ))
            }
            Some(Ok(ip)) => {
                facts["client"] = json!(ip.to_string());
                let found = self
                    .db
                    .lookup(ip)
                    .map_err(|source| ModuleError::Unavailable {
                        service: "the geoip database file",
                        source: Box::new(source),
                    })?;
                add_found(&mut facts, &found);
                Ok((ip, found))
            }
        };
        // 2. Whose history, and whether to judge at all.
        let judged = self.subject(request).and_then(|(kind, login)| {
            let (ip, found) = looked_up?;
            facts[kind] = json!(login);
            let country = match (&found.country, self.settings.unknown_country) {
                (Some(country), _) => country.clone(),
                (None, UnknownCountry::Count) => UNKNOWN_COUNTRY.to_owned(),
                (None, UnknownCountry::Ignore) => {
                    return Err((
                        "unknown_country",
                        format!("the database has no country for {ip}"),
                    ));
                }
            };
            Ok((kind, login, country))
        });
        let (kind, login, country) = match judged {
            Ok(subject) => subject,
            Err((outcome, why)) => {
                metrics::counter!(METRIC_OUTCOMES, "outcome" => outcome).increment(1);
                facts["skipped"] = json!(why);
                return Ok(result(request, Action::Permit, 0.0, String::new(), facts));
            }
        };
        // 3. The judgement, in the login's locked transaction.
        let judged = self
            .store
            .judge(
                &login,
                &country,
                self.settings.window,
                self.settings.max_countries,
            )
            .await
            .map_err(|source| ModuleError::Unavailable {
                service: "the geoip history (MariaDB)",
                source: Box::new(source),
            })?;
        self.prune_if_due().await;
        Ok(self.to_result(request, facts, kind, &login, &country, &judged))
    }
}

impl Geoip {
    /// The login (or sender) whose history the message counts in, or why there is none.
    fn subject(&self, request: &CheckRequest) -> Result<(&'static str, String), Skip> {
        let sasl = request.session.sasl_username.trim();
        let (kind, login) = if !sasl.is_empty() {
            ("login", normalise_login(sasl))
        } else if self.settings.also_senders && !request.envelope.sender.trim().is_empty() {
            ("sender", normalise_login(&request.envelope.sender))
        } else {
            let why = if self.settings.also_senders {
                "no SASL login and the null sender"
            } else {
                "no SASL login"
            };
            return Err(("no_login", why.to_owned()));
        };
        if is_exempt(&self.settings.exempt, &login) {
            return Err(("exempt", format!("{login} is exempt")));
        }
        Ok((kind, login))
    }

    fn to_result(
        &self,
        request: &CheckRequest,
        mut facts: Value,
        kind: &str,
        login: &str,
        country: &str,
        judged: &Judged,
    ) -> CheckResult {
        let settings = &self.settings;
        facts["country_judged"] = json!(country);
        facts["window"] = json!(duration_text(settings.window));
        facts["max_countries"] = json!(settings.max_countries);
        facts["countries"] = json!(
            judged
                .history
                .iter()
                .map(|seen| json!({
                    "country": seen.country,
                    "first_seen": seen.first_seen.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "last_seen": seen.last_seen.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    "messages": seen.messages,
                }))
                .collect::<Vec<_>>()
        );
        let refused = judged.decision == Decision::Refuse;
        facts["recorded"] = json!(!refused);
        if !refused {
            metrics::counter!(METRIC_OUTCOMES, "outcome" => "permitted").increment(1);
            return result(request, Action::Permit, 0.0, String::new(), facts);
        }
        metrics::counter!(METRIC_OUTCOMES, "outcome" => "refused").increment(1);
        let named = countries_named(&judged.history, country).join(", ");
        let message = format!(
            "{kind} {login} used from more than {} countries within {}: {named}",
            settings.max_countries,
            duration_text(settings.window),
        );
        let action = match settings.action {
            GeoipAction::Reject => Action::Reject,
            GeoipAction::Tempfail => Action::Tempfail,
        };
        result(request, action, settings.score, message, facts)
    }
}

/// What the database said, as determinants: `country` and `asn` at the top level (the auditor
/// stores them with the session), the rest beside them.
fn add_found(facts: &mut Value, found: &Found) {
    facts["country"] = json!(found.country);
    if found.country_source == Some("registered_country") {
        facts["country_source"] = json!("registered_country");
    }
    if found.asn.is_some() || found.as_org.is_some() {
        facts["asn"] = json!(found.asn);
        facts["as_org"] = json!(found.as_org);
    }
    if let Some(error) = &found.asn_error {
        facts["asn_error"] = json!(error);
    }
}

fn result(
    request: &CheckRequest,
    action: Action,
    score: f64,
    message: String,
    determinants: Value,
) -> CheckResult {
    CheckResult::new(
        request.message_id,
        NAME,
        action,
        score,
        message,
        determinants,
    )
}
