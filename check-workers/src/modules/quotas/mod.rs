//! The quotas module (spec/modules.md §1): limits per factor value (client address, sender,
//! sender domain, recipient, recipient domain, SASL login) over trailing windows, defined in
//! ClueGetter's tables and counted exactly in MariaDB however many workers serve the module.
//!
//! Per message:
//! 1. [`factors`]: the factor values of the message and what each costs (ClueGetter's unit
//!    rules: a sender-side factor costs one unit per recipient, a recipient or recipient domain
//!    one unit per recipient address in it). Values are lower-cased; an empty SASL login, the
//!    null sender and a client without an IP address are not factors.
//! 2. [`store::QuotaStore::check`]: the quota rows of this instance for those values. A value
//!    without an exact row gets one from every regex row of its selector that matches it
//!    (`instigator` = the regex row), and later messages find that concrete row. Then, in one
//!    transaction: lock the rows, count every period's exact sliding window, and if no period
//!    would go over its curb reserve the units (DESIGN.md, durability invariant 3).
//! 3. [`to_result`]: over a curb → tempfail, score 100, ClueGetter's words ("Exceeding quota,
//!    max of …", which log parsers look for); within every curb → permit, score 1; no quota row
//!    matched → permit, score 0 (nothing was counted). The determinants list every matched row
//!    and period ("n of curb in the last hour").
//!
//! The reservation is settled by the message's audit event ([`crate::settle`] consumes them;
//! [`Settler`] here does the database side).
//!
//! Departures from ClueGetter, on purpose (spec/gaps-and-bugs.md A.1–A.5):
//! - check and count are one atomic step, so concurrent messages cannot overshoot a curb;
//! - windows are exact (a tally row per message and quota, no key expiry), so periods longer
//!   than 24 h count correctly;
//! - definitions are read from the tables at every check: a change applies to the next message;
//! - regex matches create concrete rows, as ClueGetter's README says (≤0.5.4 behaviour);
//! - a recipient domain shared by several recipients is one factor value costing one unit per
//!   recipient, not several results; an empty SASL login is never counted;
//! - `sender_sld` and `recipient_sld` rows load but are not counted (no public-suffix list).
//!
//! Nothing here talks to RabbitMQ.

pub mod import;
pub mod store;
pub mod window;

use std::time::Duration;

use async_trait::async_trait;
use platform::config::{Config, QuotasConfig};
use serde_json::json;
use wire::{Action, AuditEvent, CheckRequest, CheckResult};

use crate::module::{Module, ModuleError};

// the selectors are shared with the auditor's quota page, so they are `platform`'s
pub use platform::quotas::Selector;
pub use store::{CheckOutcome, QuotaStore, QuotaUsage};
pub use window::PeriodUsage;

pub const NAME: &str = "quotas";

/// The score of a message over a quota: ClueGetter's 100, which trips the default breaker.
pub const EXCEEDED_SCORE: f64 = 100.0;
/// The score of a message within its quotas.
pub const PERMIT_SCORE: f64 = 1.0;
/// The score of a message no quota row matched: nothing was counted.
pub const UNMATCHED_SCORE: f64 = 0.0;

/// One factor value of a message and the units it costs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Factor {
    pub selector: Selector,
    /// Lower-cased (the textual IP address for `client_address`).
    pub value: String,
    pub units: u32,
}

/// The factor values of a message that the configuration counts, each (selector, value) once
/// with its units summed, in a stable order: client address, sender, sender domain, login,
/// then each recipient's address and domain in envelope order.
pub fn factors(request: &CheckRequest, config: &QuotasConfig) -> Vec<Factor> {
    let mut found: Vec<Factor> = Vec::new();
    let mut add = |selector: Selector, value: String, units: u32| {
        if let Some(factor) = found
            .iter_mut()
            .find(|f| f.selector == selector && f.value == value)
        {
            factor.units = factor.units.saturating_add(units);
        } else {
            found.push(Factor {
                selector,
                value,
                units,
            });
        }
    };
    // A message at end of data has at least one recipient; count it as one if not.
    let n_recipients = u32::try_from(request.envelope.recipients.len())
        .unwrap_or(u32::MAX)
        .max(1);
    if config.account_client_address
        && let Some(addr) = request.session.client_addr
    {
        add(
            Selector::ClientAddress,
            addr.to_canonical().to_string(),
            n_recipients,
        );
    }
    let sender = normalise(&request.envelope.sender);
    if !sender.is_empty() && sender != "<>" {
        if config.account_sender {
            add(Selector::Sender, sender.clone(), n_recipients);
        }
        if config.account_sender_domain
            && let Some(domain) = domain_of(&sender)
        {
            add(Selector::SenderDomain, domain.to_owned(), n_recipients);
        }
    }
    let login = request.session.sasl_username.trim();
    if config.account_sasl_username && !login.is_empty() {
        add(Selector::SaslUsername, login.to_lowercase(), n_recipients);
    }
    for recipient in &request.envelope.recipients {
        let recipient = normalise(recipient);
        if recipient.is_empty() {
            continue;
        }
        if config.account_recipient {
            add(Selector::Recipient, recipient.clone(), 1);
        }
        if config.account_recipient_domain
            && let Some(domain) = domain_of(&recipient)
        {
            add(Selector::RecipientDomain, domain.to_owned(), 1);
        }
    }
    found
}

/// An envelope address as a factor value: without angle brackets or surrounding space,
/// lower-cased.
fn normalise(address: &str) -> String {
    let address = address.trim();
    let address = address
        .strip_prefix('<')
        .and_then(|a| a.strip_suffix('>'))
        .unwrap_or(address);
    if address.is_empty() {
        // the null sender
        return "<>".to_owned();
    }
    address.to_lowercase()
}

/// The domain of an address (after the last `@`), if it has a non-empty one.
fn domain_of(address: &str) -> Option<&str> {
    address
        .rsplit_once('@')
        .map(|(_, domain)| domain)
        .filter(|domain| !domain.is_empty())
}

/// The reason text for a message over a quota: ClueGetter's words, which log parsers look for,
/// without its "REJECT Policy reject;" prefix, which contradicted the 451 it went out with.
pub fn exceeded_message(usage: &QuotaUsage, period: &PeriodUsage) -> String {
    format!(
        "Exceeding quota, max of {} messages per {} seconds for {} '{}'",
        period.curb, period.period, usage.selector, usage.value
    )
}

/// The check result of an outcome: tempfail with score 100 and the text of the first period
/// that would go over its curb (factors in [`factors`] order, periods shortest first), or
/// permit with score 1, or score 0 when no quota row matched.
pub fn to_result(request: &CheckRequest, outcome: &CheckOutcome) -> CheckResult {
    let exceeded = outcome.quotas.iter().find_map(|usage| {
        usage
            .periods
            .iter()
            .find(|period| period.exceeded)
            .map(|period| (usage, period))
    });
    let mut entries = Vec::new();
    let mut summary = Vec::new();
    for usage in &outcome.quotas {
        if usage.periods.is_empty() {
            entries.push(json!({
                "selector": usage.selector,
                "value": usage.value,
                "quota_id": usage.quota_id,
                "instigator": usage.instigator,
                "profile_id": usage.profile_id,
                "profile": usage.profile,
                "units": usage.units,
                "period": null,
                "curb": null,
                "exceeded": false,
            }));
            summary.push(format!(
                "{} '{}' (quota {}, profile {}): no periods, not limited",
                usage.selector, usage.value, usage.quota_id, usage.profile
            ));
        }
        for period in &usage.periods {
            entries.push(json!({
                "selector": usage.selector,
                "value": usage.value,
                "quota_id": usage.quota_id,
                "instigator": usage.instigator,
                "profile_id": usage.profile_id,
                "profile": usage.profile,
                "units": usage.units,
                "period": period.period,
                "curb": period.curb,
                "used": period.used,
                "would_be": period.would_be,
                "exceeded": period.exceeded,
            }));
            summary.push(format!(
                "{} of {} in {} for {} '{}' (quota {}{}, profile {}){}",
                period.would_be,
                period.curb,
                platform::quotas::last_period(u64::from(period.period)),
                usage.selector,
                usage.value,
                usage.quota_id,
                usage
                    .instigator
                    .map(|id| format!(", created by regex quota {id}"))
                    .unwrap_or_default(),
                usage.profile,
                if period.exceeded { ": exceeded" } else { "" },
            ));
        }
    }
    if outcome.quotas.is_empty() {
        summary.push("no quota row matched: nothing counted".to_owned());
    }
    let determinants = json!({
        "quotas": entries,
        "summary": summary,
        "reserved": outcome.reserved,
    });
    let (action, score, message) = match exceeded {
        Some((usage, period)) => (
            Action::Tempfail,
            EXCEEDED_SCORE,
            exceeded_message(usage, period),
        ),
        None if outcome.quotas.is_empty() => (Action::Permit, UNMATCHED_SCORE, String::new()),
        None => (Action::Permit, PERMIT_SCORE, String::new()),
    };
    CheckResult::new(
        request.message_id,
        NAME,
        action,
        score,
        message,
        determinants,
    )
}

/// The quotas check: the factors the configuration counts, and the store.
pub struct Quotas {
    config: QuotasConfig,
    store: QuotaStore,
}

impl Quotas {
    /// A module whose database pool connects on first use, so check-workers start (and answer
    /// with error results) while the database is down.
    ///
    /// # Errors
    /// `[database] url` cannot be parsed.
    pub fn new(config: &Config) -> Result<Self, ModuleError> {
        let store = QuotaStore::from_config(config).map_err(|source| ModuleError::Request {
            service: store::SERVICE,
            source: Box::new(source),
        })?;
        Ok(Self {
            config: config.quotas.clone(),
            store,
        })
    }
}

#[async_trait]
impl Module for Quotas {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let factors = factors(request, &self.config);
        let outcome = self
            .store
            .check(&request.instance, request.message_id, &factors)
            .await
            .map_err(|source| ModuleError::Unavailable {
                service: store::SERVICE,
                source: Box::new(source),
            })?;
        let result = to_result(request, &outcome);
        if result.action == Action::Tempfail {
            tracing::info!(reason = %result.message, "quota exceeded");
        } else {
            tracing::debug!(quotas = outcome.quotas.len(), "quotas reserved");
        }
        Ok(result)
    }
}

/// The database side of settling: turns an audit event into kept or released reservations.
#[derive(Clone)]
pub struct Settler {
    store: QuotaStore,
    tally_status: Vec<Action>,
}

/// What settling one event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The message counts (its verdict is in `tally-status`).
    pub counted: bool,
    /// Tally rows the event settled (0 for a message that reserved nothing).
    pub rows: u64,
}

impl Settler {
    /// # Errors
    /// `[database] url` cannot be parsed.
    pub fn new(config: &Config) -> Result<Self, sqlx::Error> {
        Ok(Self {
            store: QuotaStore::from_config(config)?,
            tally_status: config.quotas.tally_status.clone(),
        })
    }

    pub fn store(&self) -> &QuotaStore {
        &self.store
    }

    /// Keeps or releases the reservations of the event's message. Idempotent: the same event
    /// again changes nothing; an event whose reservations expired still settles them.
    ///
    /// # Errors
    /// The database failed; nothing was changed and trying again is safe.
    pub async fn settle(&self, event: &AuditEvent) -> Result<Settled, sqlx::Error> {
        let counted = counts(event, &self.tally_status);
        // A quotas result in the event means its reservation was committed before the gateway
        // heard of it, so it is there to settle. Without one (the check answered after the
        // gateway stopped waiting, or after the breaker fired), a reservation may still be
        // committed in a moment: the verdict is remembered for it. No check was asked when the
        // gateway had no broker at all.
        let remember = event.verdict.failure.is_none()
            && !event
                .results
                .iter()
                .any(|r| r.result.module == NAME && r.result.action != Action::Error);
        let rows = self
            .store
            .settle(event.message_id, counted, remember)
            .await?;
        Ok(Settled { counted, rows })
    }

    /// Settles reservations a cross-node race left reserved though their verdict is
    /// remembered ([`QuotaStore::reconcile_settlements`]), then forgets remembered verdicts
    /// older than [`store::SETTLEMENT_MEMORY`]. Returns (rows reconciled, verdicts forgotten).
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune(&self) -> Result<(u64, u64), sqlx::Error> {
        let reconciled = self.store.reconcile_settlements().await?;
        Ok((reconciled, self.store.prune_settlements().await?))
    }

    /// How often [`Settler::prune`] is worth running.
    pub fn prune_interval(&self) -> Duration {
        Duration::from_secs(30)
    }
}

/// Whether the event's message is counted: the verdict the rules gave (so `noop` counts as
/// production would), a whitelisted client's message counting as permitted (as ClueGetter
/// counted whitelisted clients), must be in `tally-status`.
pub fn counts(event: &AuditEvent, tally_status: &[Action]) -> bool {
    let verdict = if event.verdict.whitelisted {
        Action::Permit
    } else {
        event.verdict.verdict
    };
    tally_status.contains(&verdict)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Utc;
    use wire::WIRE_VERSION;
    use wire::{Envelope, MessageId, SessionInfo};

    fn request(sender: &str, recipients: &[&str], sasl: &str) -> CheckRequest {
        CheckRequest {
            version: WIRE_VERSION,
            instance: "default".into(),
            message_id: MessageId::new(),
            queue_id: String::new(),
            module: NAME.into(),
            session: SessionInfo {
                session_id: MessageId::new().0,
                connected_at: Utc::now(),
                client_addr: Some("::ffff:192.0.2.7".parse().unwrap()),
                client_port: None,
                client_name: String::new(),
                helo: String::new(),
                sasl_username: sasl.into(),
                sasl_method: String::new(),
                sasl_sender: String::new(),
                tls: None,
                mta_hostname: String::new(),
                daemon_name: String::new(),
            },
            envelope: Envelope {
                sender: sender.into(),
                recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
            },
            headers: Vec::new(),
            content: None,
            content_truncated: false,
            sent_at: Utc::now(),
            stage: wire::CheckStage::Eom,
        }
    }

    fn all_on() -> QuotasConfig {
        QuotasConfig {
            account_client_address: true,
            account_sender: true,
            account_sender_domain: true,
            account_recipient: true,
            account_recipient_domain: true,
            account_sasl_username: true,
            ..QuotasConfig::default()
        }
    }

    fn pairs(factors: &[Factor]) -> Vec<(String, String, u32)> {
        factors
            .iter()
            .map(|f| (f.selector.to_string(), f.value.clone(), f.units))
            .collect()
    }

    #[test]
    fn sender_side_factors_cost_one_unit_per_recipient_and_recipients_one_each() {
        let request = request(
            "Alice@Example.ORG",
            &["bob@x.test", "carol@x.test", "dave@y.test"],
            "John@Doe.com",
        );
        assert_eq!(
            pairs(&factors(&request, &all_on())),
            [
                ("client_address".into(), "192.0.2.7".into(), 3),
                ("sender".into(), "alice@example.org".into(), 3),
                ("sender_domain".into(), "example.org".into(), 3),
                ("sasl_username".into(), "john@doe.com".into(), 3),
                ("recipient".into(), "bob@x.test".into(), 1),
                ("recipient_domain".into(), "x.test".into(), 2),
                ("recipient".into(), "carol@x.test".into(), 1),
                ("recipient".into(), "dave@y.test".into(), 1),
                ("recipient_domain".into(), "y.test".into(), 1),
            ]
        );
    }

    #[test]
    fn a4_empty_sasl_login_and_null_sender_are_not_factors() {
        for sender in ["", "<>"] {
            let request = request(sender, &["bob@x.test"], " ");
            let config = QuotasConfig {
                account_client_address: false,
                account_sender: true,
                account_sender_domain: true,
                account_sasl_username: true,
                ..QuotasConfig::default()
            };
            assert!(factors(&request, &config).is_empty(), "{sender:?}");
        }
    }

    #[test]
    fn only_the_configured_factors_are_taken() {
        let request = request("a@b.test", &["c@d.test"], "user");
        // the default: client address only
        assert_eq!(
            pairs(&factors(&request, &QuotasConfig::default())),
            [("client_address".into(), "192.0.2.7".into(), 1)]
        );
    }

    #[test]
    fn a_duplicated_recipient_costs_its_units_twice() {
        let request = request("a@b.test", &["c@d.test", "C@D.test"], "");
        let config = QuotasConfig {
            account_client_address: false,
            account_recipient: true,
            ..QuotasConfig::default()
        };
        assert_eq!(
            pairs(&factors(&request, &config)),
            [("recipient".into(), "c@d.test".into(), 2)]
        );
    }

    fn usage(periods: Vec<PeriodUsage>) -> QuotaUsage {
        QuotaUsage {
            quota_id: 1,
            selector: Selector::SaslUsername,
            value: "john@doe.com".into(),
            instigator: None,
            profile_id: 1,
            profile: "small-sasl".into(),
            units: 1,
            periods,
        }
    }

    #[test]
    fn over_the_curb_is_tempfail_100_with_clue_getters_text() {
        let outcome = CheckOutcome {
            quotas: vec![usage(vec![PeriodUsage {
                period: 86400,
                curb: 150,
                used: 150,
                would_be: 151,
                exceeded: true,
            }])],
            reserved: false,
        };
        let result = to_result(&request("", &["x@y.test"], ""), &outcome);
        assert_eq!(result.action, Action::Tempfail);
        assert_eq!(result.score, 100.0);
        assert_eq!(
            result.message,
            "Exceeding quota, max of 150 messages per 86400 seconds for sasl_username 'john@doe.com'"
        );
        assert_eq!(
            result.determinants["summary"][0],
            "151 of 150 in the last day for sasl_username 'john@doe.com' (quota 1, profile small-sasl): exceeded"
        );
        assert_eq!(result.determinants["quotas"][0]["quota_id"], 1);
        assert_eq!(result.determinants["reserved"], false);
    }

    #[test]
    fn within_every_curb_is_permit_1() {
        let outcome = CheckOutcome {
            quotas: vec![usage(vec![PeriodUsage {
                period: 300,
                curb: 500,
                used: 3,
                would_be: 4,
                exceeded: false,
            }])],
            reserved: true,
        };
        let result = to_result(&request("", &["x@y.test"], ""), &outcome);
        assert_eq!(result.action, Action::Permit);
        assert_eq!(result.score, 1.0);
        assert!(result.message.is_empty());
        assert_eq!(
            result.determinants["summary"][0],
            "4 of 500 in the last 5 minutes for sasl_username 'john@doe.com' (quota 1, profile small-sasl)"
        );
    }

    #[test]
    fn no_matching_row_is_permit_0() {
        let outcome = CheckOutcome {
            quotas: Vec::new(),
            reserved: false,
        };
        let result = to_result(&request("", &["x@y.test"], ""), &outcome);
        assert_eq!(result.action, Action::Permit);
        assert_eq!(result.score, 0.0);
        assert_eq!(
            result.determinants["summary"][0],
            "no quota row matched: nothing counted"
        );
    }

    #[test]
    fn selectors_parse_by_their_table_names() {
        for selector in Selector::ALL {
            assert_eq!(selector.as_str().parse::<Selector>().unwrap(), selector);
        }
        assert!(
            "sasl"
                .parse::<Selector>()
                .unwrap_err()
                .contains("sasl_username")
        );
    }
}
