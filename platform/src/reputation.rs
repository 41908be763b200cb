//! The reputation module's closed sets and counting rules that two processes share: the
//! factors a message is known by, their values (check-workers looks them up, the auditor counts
//! them, and both must spell them alike), and how one recorded message counts. Pure; no I/O.
//!
//! **Counting invariant**: a message counts once, on the UTC day it was received, for each of
//! its factor values, as [`counted`] judges its record: the verdict the rules gave (so `noop`
//! and whitelisted messages count as production would have), refused only when the modules
//! that decided it ([`wire::decision::decided_by`]) are not all among [`NEUTRAL_MODULES`], and
//! not at all when the error rule or a failure made it (not the sender's doing).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::NaiveDate;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use wire::decision::{Cause, decided_by};
use wire::{Action, AuditEvent, ModuleName, SessionInfo};

/// The module's name on the wire and in the configuration.
pub const MODULE: &str = "reputation";

/// Modules whose refusals say nothing about the sender's quality: greylisting and quotas
/// tempfail good senders too, and reputation's own refusals would feed back into themselves.
pub const NEUTRAL_MODULES: [&str; 3] = ["greylisting", "quotas", MODULE];

/// The determinant in which the module records that the envelope sender's domain passed SPF
/// for the client (`"pass"`); the auditor counts `sender_domain` only then or with a SASL login.
pub const SPF_DETERMINANT: &str = "sender_domain_spf";

/// Longest value kept (`reputation_count.value` is `VARCHAR(255)`), in characters.
pub const VALUE_CHARS: usize = 255;

/// What a message is known by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Factor {
    ClientAddress,
    /// The client's /24 (IPv4) or /64 (IPv6), as `network-ipv4-prefix`/`network-ipv6-prefix`.
    ClientNetwork,
    /// The envelope sender's domain, lower-cased; counted only for authenticated mail.
    SenderDomain,
    SaslUsername,
}

impl Factor {
    pub const ALL: [Factor; 4] = [
        Factor::ClientAddress,
        Factor::ClientNetwork,
        Factor::SenderDomain,
        Factor::SaslUsername,
    ];

    /// The name in the configuration, `reputation_count.factor` and the determinants.
    pub fn as_str(self) -> &'static str {
        match self {
            Factor::ClientAddress => "client_address",
            Factor::ClientNetwork => "client_network",
            Factor::SenderDomain => "sender_domain",
            Factor::SaslUsername => "sasl_username",
        }
    }
}

impl fmt::Display for Factor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Factor {
    type Err = String;

    /// A factor's name, in any case, surrounding space ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Factor::ALL
            .into_iter()
            .find(|factor| factor.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let known: Vec<&str> = Factor::ALL.iter().map(|f| f.as_str()).collect();
                format!("unknown factor `{s}` (known: {})", known.join(", "))
            })
    }
}

/// The prefix lengths of `client_network`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefixes {
    pub ipv4: u8,
    pub ipv6: u8,
}

impl Default for Prefixes {
    fn default() -> Self {
        Self { ipv4: 24, ipv6: 64 }
    }
}

/// The client's network as `client_network` spells it (`198.51.100.0/24`); IPv4-mapped IPv6
/// addresses count as IPv4. A prefix beyond the family's length is taken as the full length.
pub fn network_of(ip: IpAddr, prefixes: Prefixes) -> IpNet {
    let ip = ip.to_canonical();
    let prefix = match ip {
        IpAddr::V4(_) => prefixes.ipv4.min(32),
        IpAddr::V6(_) => prefixes.ipv6.min(128),
    };
    // within the family's length, so never an error; the host route is the fallback anyway
    IpNet::new(ip, prefix)
        .map(|net| net.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// `text` cut to [`VALUE_CHARS`] characters.
fn cut(text: &str) -> String {
    match text.char_indices().nth(VALUE_CHARS) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// The domain of an envelope sender, lower-cased, without angle brackets; `None` for the null
/// sender and an address without a domain.
pub fn sender_domain(sender: &str) -> Option<String> {
    let trimmed = sender.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .unwrap_or(trimmed);
    let (_, domain) = bare.rsplit_once('@')?;
    let domain = domain.trim().trim_end_matches('.').to_lowercase();
    (!domain.is_empty()).then(|| cut(&domain))
}

/// The value of `factor` for a message of `session` from `sender`, or `None` when the message
/// has none (no client address, the null sender, no SASL login).
pub fn value_of(
    factor: Factor,
    session: &SessionInfo,
    sender: &str,
    prefixes: Prefixes,
) -> Option<String> {
    match factor {
        Factor::ClientAddress => session.client_addr.map(|ip| ip.to_canonical().to_string()),
        Factor::ClientNetwork => session
            .client_addr
            .map(|ip| network_of(ip, prefixes).to_string()),
        Factor::SenderDomain => sender_domain(sender),
        Factor::SaslUsername => {
            let login = session.sasl_username.trim();
            (!login.is_empty()).then(|| cut(&login.to_lowercase()))
        }
    }
}

/// The values of `factors` a message has, in the order given.
pub fn values_of(
    factors: &[Factor],
    session: &SessionInfo,
    sender: &str,
    prefixes: Prefixes,
) -> Vec<(Factor, String)> {
    factors
        .iter()
        .filter_map(|factor| {
            value_of(*factor, session, sender, prefixes).map(|value| (*factor, value))
        })
        .collect()
}

/// A value as an operator types it (`check-workers reputation show`), spelled as the counters
/// spell it: an address in its canonical form; for `client_network` an address or a network,
/// either taken to its network of the configured prefix; domains and logins lower-cased.
///
/// # Errors
/// An address or network that does not parse, or an empty value.
pub fn normalise(factor: Factor, input: &str, prefixes: Prefixes) -> Result<String, String> {
    let input = input.trim();
    if input.is_empty() {
        return Err("the value is empty".into());
    }
    match factor {
        Factor::ClientAddress => input
            .parse::<IpAddr>()
            .map(|ip| ip.to_canonical().to_string())
            .map_err(|_| format!("`{input}` is not an IP address")),
        Factor::ClientNetwork => {
            let ip = match input.parse::<IpNet>() {
                Ok(net) => net.network(),
                Err(_) => input
                    .parse::<IpAddr>()
                    .map_err(|_| format!("`{input}` is not an IP address or network"))?,
            };
            Ok(network_of(ip, prefixes).to_string())
        }
        Factor::SenderDomain => Ok(cut(&input
            .trim_start_matches('@')
            .trim_end_matches('.')
            .to_lowercase())),
        Factor::SaslUsername => Ok(cut(&input.to_lowercase())),
    }
}

/// How one recorded message counts for its factor values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Counted {
    /// Rejected, and decided by at least one module beyond [`NEUTRAL_MODULES`].
    Rejected,
    /// Tempfailed by the scores, decided by at least one module beyond [`NEUTRAL_MODULES`].
    Tempfailed,
    Permitted,
    /// Says nothing about the sender: a refusal decided only by greylisting, quotas or
    /// reputation; the error rule; no module verdict; discard and quarantine.
    Neutral,
}

/// How the record counts (see the module documentation); `noop` and whitelisted messages by
/// the verdict the rules gave.
pub fn counted(event: &AuditEvent) -> Counted {
    let verdict = &event.verdict;
    if verdict.failure.is_some() {
        return Counted::Neutral;
    }
    match verdict.verdict {
        Action::Permit => Counted::Permitted,
        Action::Reject | Action::Tempfail => {
            let decided = decided_by(verdict, &event.results);
            if decided.cause != Cause::Scores || !decided.any_beyond(&NEUTRAL_MODULES) {
                Counted::Neutral
            } else if verdict.verdict == Action::Reject {
                Counted::Rejected
            } else {
                Counted::Tempfailed
            }
        }
        Action::Discard | Action::Quarantine | Action::Error => Counted::Neutral,
    }
}

/// What one message adds to a counter row.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Tally {
    /// Every message, neutral ones included.
    pub messages: u64,
    pub rejected: u64,
    pub tempfailed: u64,
    pub permitted: u64,
    /// The sum of the reject scores of the rejected, tempfailed and permitted messages, without
    /// reputation's own points.
    pub reject_score: f64,
}

impl Tally {
    /// The message counted `how` with `reject_score` points.
    pub fn of(how: Counted, reject_score: f64) -> Self {
        let mut tally = Tally {
            messages: 1,
            ..Tally::default()
        };
        match how {
            Counted::Rejected => tally.rejected = 1,
            Counted::Tempfailed => tally.tempfailed = 1,
            Counted::Permitted => tally.permitted = 1,
            Counted::Neutral => return tally,
        }
        tally.reject_score = if reject_score.is_finite() {
            reject_score
        } else {
            0.0
        };
        tally
    }

    pub fn add(&mut self, other: &Tally) {
        self.messages += other.messages;
        self.rejected += other.rejected;
        self.tempfailed += other.tempfailed;
        self.permitted += other.permitted;
        self.reject_score += other.reject_score;
    }

    /// The messages that say something about the sender.
    pub fn judged(&self) -> u64 {
        self.rejected + self.tempfailed + self.permitted
    }

    /// The share of the judged messages refused (0 with none).
    pub fn refused_ratio(&self) -> f64 {
        match self.judged() {
            0 => 0.0,
            judged => (self.rejected + self.tempfailed) as f64 / judged as f64,
        }
    }

    /// The mean reject score of the judged messages (0 with none).
    pub fn mean_reject_score(&self) -> f64 {
        match self.judged() {
            0 => 0.0,
            judged => self.reject_score / judged as f64,
        }
    }
}

/// True when the message's sender domain may count: a SASL login sent it, or the reputation
/// module found that the domain's SPF policy passes the client.
pub fn sender_domain_authenticated(event: &AuditEvent) -> bool {
    !event.session.sasl_username.trim().is_empty()
        || event.results.iter().any(|r| {
            ModuleName::parse(&r.result.module) == ModuleName::Reputation
                && r.result
                    .determinants
                    .get(SPF_DETERMINANT)
                    .and_then(|v| v.as_str())
                    == Some("pass")
        })
}

/// The counter rows one recorded message adds: for every factor value it has (the sender
/// domain only when [`sender_domain_authenticated`]), on the UTC day it was received.
pub fn tally(event: &AuditEvent, prefixes: Prefixes) -> Vec<(Factor, String, NaiveDate, Tally)> {
    let how = counted(event);
    // reputation's own reject points are not the sender's record
    let own: f64 = event
        .results
        .iter()
        .filter(|r| {
            !r.late
                && ModuleName::parse(&r.result.module) == ModuleName::Reputation
                && r.result.action == Action::Reject
                && r.weighted_score.is_finite()
        })
        .map(|r| r.weighted_score)
        .sum();
    let one = Tally::of(how, event.verdict.reject_score - own);
    let day = event.message.received_at.date_naive();
    let authenticated = sender_domain_authenticated(event);
    values_of(
        &Factor::ALL,
        &event.session,
        &event.message.sender,
        prefixes,
    )
    .into_iter()
    .filter(|(factor, _)| *factor != Factor::SenderDomain || authenticated)
    .map(|(factor, value)| (factor, value, day, one))
    .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Utc;
    use serde_json::json;
    use wire::{AuditMessage, AuditResult, AuditVerdict, CheckResult, MessageId, WIRE_VERSION};

    fn session(ip: &str, sasl: &str) -> SessionInfo {
        SessionInfo {
            session_id: uuid::Uuid::now_v7(),
            connected_at: Utc::now(),
            client_addr: Some(ip.parse().unwrap()),
            client_port: None,
            client_name: String::new(),
            helo: String::new(),
            sasl_username: sasl.into(),
            sasl_method: String::new(),
            sasl_sender: String::new(),
            tls: None,
            mta_hostname: String::new(),
            daemon_name: String::new(),
        }
    }

    fn result(module: &str, action: Action, score: f64) -> AuditResult {
        AuditResult {
            result: CheckResult::new(MessageId::new(), module, action, score, "", json!({})),
            weighted_score: score,
            late: false,
        }
    }

    fn event(verdict: Action, results: Vec<AuditResult>) -> AuditEvent {
        let reject_score = results
            .iter()
            .filter(|r| r.result.action == Action::Reject)
            .map(|r| r.weighted_score)
            .sum();
        AuditEvent {
            version: WIRE_VERSION,
            instance: "default".into(),
            message_id: MessageId::new(),
            answered: true,
            session: session("198.51.100.50", ""),
            message: AuditMessage {
                queue_id: String::new(),
                received_at: Utc::now(),
                sender: "Someone@Example.ORG".into(),
                recipients: vec![],
                rejected_recipients: vec![],
                headers: vec![],
                headers_truncated: false,
                body_size: 0,
                body_hash: String::new(),
                body: None,
                message_id_header: String::new(),
                subject: String::new(),
            },
            verdict: AuditVerdict {
                verdict,
                applied: verdict,
                reason: String::new(),
                reject_score,
                reject_threshold: 5.0,
                tempfail_score: 0.0,
                tempfail_threshold: 8.0,
                noop: false,
                whitelisted: false,
                failure: None,
            },
            results,
        }
    }

    #[test]
    fn factors_read_back_from_their_names() {
        for factor in Factor::ALL {
            assert_eq!(factor.as_str().parse::<Factor>().unwrap(), factor);
            assert_eq!(
                serde_json::to_value(factor).unwrap(),
                json!(factor.as_str())
            );
        }
        assert!("country".parse::<Factor>().is_err());
    }

    #[test]
    fn values_are_spelled_one_way() {
        let prefixes = Prefixes::default();
        let s = session("::ffff:198.51.100.50", " Alice@Example.org ");
        assert_eq!(
            values_of(&Factor::ALL, &s, "<Bob@Sub.Example.ORG>", prefixes),
            [
                (Factor::ClientAddress, "198.51.100.50".to_owned()),
                (Factor::ClientNetwork, "198.51.100.0/24".to_owned()),
                (Factor::SenderDomain, "sub.example.org".to_owned()),
                (Factor::SaslUsername, "alice@example.org".to_owned()),
            ]
        );
        let v6 = session("2001:db8:1:2:3::4", "");
        assert_eq!(
            value_of(Factor::ClientNetwork, &v6, "", prefixes).unwrap(),
            "2001:db8:1:2::/64"
        );
        assert_eq!(value_of(Factor::SenderDomain, &v6, "", prefixes), None);
        assert_eq!(value_of(Factor::SaslUsername, &v6, "", prefixes), None);
        let wide = Prefixes {
            ipv4: 40,
            ipv6: 200,
        };
        assert_eq!(
            value_of(Factor::ClientNetwork, &s, "", wide).unwrap(),
            "198.51.100.50/32"
        );
    }

    #[test]
    fn typed_values_are_spelled_as_counted() {
        let p = Prefixes::default();
        assert_eq!(
            normalise(Factor::ClientAddress, " ::ffff:198.51.100.50", p).unwrap(),
            "198.51.100.50"
        );
        assert_eq!(
            normalise(Factor::ClientNetwork, "198.51.100.77", p).unwrap(),
            "198.51.100.0/24"
        );
        assert_eq!(
            normalise(Factor::ClientNetwork, "198.51.100.0/24", p).unwrap(),
            "198.51.100.0/24"
        );
        assert_eq!(
            normalise(Factor::SenderDomain, "@Example.ORG.", p).unwrap(),
            "example.org"
        );
        assert_eq!(
            normalise(Factor::SaslUsername, "Alice", p).unwrap(),
            "alice"
        );
        assert!(normalise(Factor::ClientAddress, "nope", p).is_err());
        assert!(normalise(Factor::SaslUsername, " ", p).is_err());
    }

    #[test]
    fn refusals_count_unless_only_neutral_modules_decided_them() {
        let spam = event(
            Action::Reject,
            vec![
                result("rspamd", Action::Reject, 15.0),
                result("reputation", Action::Permit, 0.0),
            ],
        );
        assert_eq!(counted(&spam), Counted::Rejected);
        let by_reputation = event(
            Action::Reject,
            vec![
                result("rspamd", Action::Permit, 0.0),
                result("reputation", Action::Reject, 8.0),
            ],
        );
        assert_eq!(counted(&by_reputation), Counted::Neutral);
        let greylisted = event(
            Action::Tempfail,
            vec![result("greylisting", Action::Tempfail, 9.0)],
        );
        assert_eq!(counted(&greylisted), Counted::Neutral);
        let mut noop = spam.clone();
        noop.verdict.noop = true;
        noop.verdict.applied = Action::Permit;
        assert_eq!(counted(&noop), Counted::Rejected);
        let mut failed = spam.clone();
        failed.verdict.failure = Some("broker away".into());
        assert_eq!(counted(&failed), Counted::Neutral);
        let error = event(
            Action::Tempfail,
            vec![AuditResult {
                result: CheckResult::error(MessageId::new(), "rspamd", "down"),
                weighted_score: 25.0,
                late: false,
            }],
        );
        assert_eq!(counted(&error), Counted::Neutral);
        assert_eq!(counted(&event(Action::Permit, vec![])), Counted::Permitted);
    }

    #[test]
    fn the_tally_leaves_reputations_points_and_unauthenticated_domains_out() {
        let spam = event(
            Action::Reject,
            vec![
                result("rspamd", Action::Reject, 15.0),
                result("reputation", Action::Reject, 8.0),
            ],
        );
        let rows = tally(&spam, Prefixes::default());
        let factors: Vec<Factor> = rows.iter().map(|r| r.0).collect();
        assert_eq!(factors, [Factor::ClientAddress, Factor::ClientNetwork]);
        assert_eq!(rows[0].3.rejected, 1);
        assert_eq!(rows[0].3.reject_score, 15.0);

        let mut spf = spam.clone();
        spf.results[1].result.determinants = json!({ SPF_DETERMINANT: "pass" });
        let rows = tally(&spf, Prefixes::default());
        assert_eq!(rows[2].0, Factor::SenderDomain);
        assert_eq!(rows[2].1, "example.org");

        let mut sasl = spam;
        sasl.session.sasl_username = "alice".into();
        let factors: Vec<Factor> = tally(&sasl, Prefixes::default())
            .iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(factors, Factor::ALL);
    }

    #[test]
    fn ratios_and_means_of_nothing_are_zero() {
        let mut t = Tally::default();
        assert_eq!(t.refused_ratio(), 0.0);
        assert_eq!(t.mean_reject_score(), 0.0);
        t.add(&Tally::of(Counted::Rejected, 10.0));
        t.add(&Tally::of(Counted::Permitted, 0.0));
        t.add(&Tally::of(Counted::Neutral, 99.0));
        assert_eq!(t.messages, 3);
        assert_eq!(t.judged(), 2);
        assert_eq!(t.refused_ratio(), 0.5);
        assert_eq!(t.mean_reject_score(), 5.0);
    }
}
