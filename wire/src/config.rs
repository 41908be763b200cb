//! The one configuration file per host, shared by every process (DESIGN.md "Configuration").
//!
//! `cluegetter.example.toml` at the repository root documents every key and equals
//! [`Config::default()`] (a test below checks both ways). ClueGetter's `[cluegetter]` keys stand
//! at the top level; each process reads the sections it needs. Environment overrides:
//! `CLUEGETTER_NOOP=true`, `CLUEGETTER_MESSAGE_REJECT_SCORE=6`, `CLUEGETTER_RSPAMD__ENABLED=true`
//! (`__` separates a section from its key; `_` inside a name stands for `-`).
//!
//! Unknown keys are an error, as in ClueGetter: a typo must not silently fall back to a default.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::contract::CheckStage;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

/// The modules a check worker can serve and the gateway can ask. Group membership and
/// `--modules` are checked against this list.
pub const KNOWN_MODULES: &[&str] = &["quotas", "rspamd", "spamassassin", "clamav", "greylisting"];

/// Everything in the file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Instance name: one per MTA role (mx, submission, outbound); many hosts may share one.
    pub instance: String,
    /// Never tempfail, reject or discard; the would-be verdict is still stored.
    pub noop: bool,
    pub message_reject_score: f64,
    pub message_tempfail_score: f64,
    pub message_spamflag_score: f64,
    pub breaker_score: f64,
    /// Client networks whose messages are permitted at end of message (still checked and audited).
    #[serde(deserialize_with = "deserialize_networks")]
    pub whitelist: Vec<IpNet>,
    /// Headers added to every message: `[U] Name: value` (`[U]`: delete existing headers of
    /// that name first), with `%{clientIp}`, `%{hostname}`, `%{rejectScore}`, `%{spamFlag}`,
    /// `%{recipient}` (one header per recipient). An empty value only deletes.
    #[serde(deserialize_with = "deserialize_add_headers")]
    pub add_header: Vec<AddHeader>,
    /// Add `Message-ID: <unixtime.queueid.cluegetter@host>` to a message that has none.
    pub insert_missing_message_id: bool,
    /// Header carrying the message's UUID, so bounce reports can be joined to it; empty: none.
    pub id_header: String,
    /// Monitoring hosts: their connections that carry no message are logged at debug level
    /// only. Bare addresses mean /32 or /128.
    #[serde(deserialize_with = "deserialize_networks")]
    pub monitor_host: Vec<IpNet>,
    pub broker: BrokerConfig,
    pub database: DatabaseConfig,
    pub gateway: GatewayConfig,
    pub check_workers: CheckWorkersConfig,
    pub auditor: AuditorConfig,
    pub bounce_ingest: BounceIngestConfig,
    /// `[module-groups.<name>]` with `<module> = <weight>` lines (ClueGetter's `[moduleGroup]`).
    pub module_groups: BTreeMap<String, BTreeMap<String, f64>>,
    pub stage_checks: StageChecksConfig,
    pub quotas: QuotasConfig,
    pub rspamd: RspamdConfig,
    pub spamassassin: SpamAssassinConfig,
    pub clamav: ClamavConfig,
    pub greylisting: GreylistingConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance: "default".to_owned(),
            noop: false,
            message_reject_score: 5.0,
            message_tempfail_score: 8.0,
            message_spamflag_score: 4.5,
            breaker_score: 100.0,
            whitelist: Vec::new(),
            add_header: Vec::new(),
            insert_missing_message_id: true,
            id_header: "X-Cluegetter-Id".to_owned(),
            monitor_host: Vec::new(),
            broker: BrokerConfig::default(),
            database: DatabaseConfig::default(),
            gateway: GatewayConfig::default(),
            check_workers: CheckWorkersConfig::default(),
            auditor: AuditorConfig::default(),
            bounce_ingest: BounceIngestConfig::default(),
            module_groups: BTreeMap::new(),
            stage_checks: StageChecksConfig::default(),
            quotas: QuotasConfig::default(),
            rspamd: RspamdConfig::default(),
            spamassassin: SpamAssassinConfig::default(),
            clamav: ClamavConfig::default(),
            greylisting: GreylistingConfig::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// AMQP URL; the vhost is its path (`%2f` is `/`).
    pub url: String,
    /// Longest pause between two reconnection attempts.
    #[serde(with = "humantime_serde")]
    pub reconnect_max_backoff: Duration,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            reconnect_max_backoff: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DatabaseConfig {
    pub url: String,
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            url: "mysql://root@127.0.0.1:3306/cluegetter".to_owned(),
            max_connections: 8,
        }
    }
}

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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AuditorConfig {
    pub metrics_listen: SocketAddr,
    /// Events written in one transaction at most.
    pub batch_size: u16,
    /// Longest an event waits for its batch to fill before the batch is committed anyway.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Time between two prune runs of the archive (this instance's rows only); 0s: never.
    #[serde(with = "humantime_serde")]
    pub archive_prune_interval: Duration,
    /// How long `message` rows are kept, with their recipient links and quota tally rows; then
    /// sessions left without messages and recipients no message refers to. At least as long
    /// as the three below (ClueGetter's rule).
    #[serde(with = "humantime_serde")]
    pub archive_retention_message: Duration,
    /// How long `message_result` rows are kept; 0s: module results are not stored.
    #[serde(with = "humantime_serde")]
    pub archive_retention_message_result: Duration,
    /// How long `message_header` rows are kept; 0s: headers are not stored.
    #[serde(with = "humantime_serde")]
    pub archive_retention_header: Duration,
    /// How long `message_body` rows are kept; 0s: bodies are not stored.
    #[serde(with = "humantime_serde")]
    pub archive_retention_body: Duration,
    /// A retention shorter than this is never pruned (a typo must not empty the archive; so 0s
    /// also means "kept for ever" where storing is concerned). ClueGetter's 1.01 weeks.
    #[serde(with = "humantime_serde")]
    pub archive_retention_safeguard: Duration,
    /// The web interface and JSON API (plain HTTP: keep it on loopback or behind a TLS proxy).
    pub web_listen: SocketAddr,
    /// Give the session cookie the `Secure` flag (set it when a TLS proxy serves the UI).
    pub web_cookie_secure: bool,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub web_session_lifetime: Duration,
    /// Failed logins for one user name, or from one client address (an IPv6 client's /64),
    /// within `web-login-failure-window` after which further attempts are refused (HTTP 429)
    /// until the window has passed.
    pub web_login_max_failures: u32,
    /// The sliding window over which failed logins are counted.
    #[serde(with = "humantime_serde")]
    pub web_login_failure_window: Duration,
    /// Who may log in: name and argon2 PHC hash (`auditor web hash-password`).
    pub web_users: Vec<WebUser>,
    /// Tokens for scripts (`Authorization: Bearer <token>`), stored as SHA-256 hex digests.
    pub web_api_tokens: Vec<WebApiToken>,
}

/// A user of the auditor's web interface.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebUser {
    pub name: String,
    /// Argon2 PHC string (`$argon2id$v=19$...`); never the password itself.
    pub password_hash: String,
}

/// An API token of the auditor's web interface.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebApiToken {
    /// Who or what uses it (shown in the log).
    pub name: String,
    /// Lower-case hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
}

/// One week, the unit of ClueGetter's `archive-retention-*` keys.
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// `26w` for whole weeks, humantime's form otherwise.
fn in_weeks(duration: Duration) -> String {
    if duration.as_secs().is_multiple_of(WEEK.as_secs()) && duration.subsec_nanos() == 0 {
        format!("{}w", duration.as_secs() / WEEK.as_secs())
    } else {
        humantime_serde::re::humantime::format_duration(duration).to_string()
    }
}

impl Default for AuditorConfig {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9135)),
            batch_size: 200,
            batch_wait: Duration::from_millis(50),
            archive_prune_interval: Duration::from_secs(6 * 3600),
            archive_retention_message: WEEK * 52,
            archive_retention_message_result: WEEK * 2,
            archive_retention_header: WEEK * 26,
            archive_retention_body: WEEK * 2,
            // 1.01 weeks: 7 days, 1 h 40 min 48 s
            archive_retention_safeguard: Duration::from_secs(610_848),
            web_listen: SocketAddr::from(([127, 0, 0, 1], 1937)),
            web_cookie_secure: false,
            web_session_lifetime: Duration::from_secs(8 * 3600),
            web_login_max_failures: 5,
            web_login_failure_window: Duration::from_secs(15 * 60),
            web_users: Vec::new(),
            web_api_tokens: Vec::new(),
        }
    }
}

impl AuditorConfig {
    /// ClueGetter's rule: messages are kept at least as long as any of their parts.
    fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.web_login_max_failures) {
            return Err(format!(
                "[auditor] web-login-max-failures ({}) must be between 1 and 1000",
                self.web_login_max_failures
            ));
        }
        if self.web_login_failure_window < Duration::from_secs(1) {
            return Err(format!(
                "[auditor] web-login-failure-window ({:?}) must be at least 1s",
                self.web_login_failure_window
            ));
        }
        for user in &self.web_users {
            if !user.password_hash.starts_with("$argon2") {
                return Err(format!(
                    "[auditor] web-users: the password-hash of {:?} is not an argon2 PHC string \
                     (make one with `auditor web hash-password`)",
                    user.name
                ));
            }
        }
        for token in &self.web_api_tokens {
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "[auditor] web-api-tokens: the sha256 of {:?} is not 64 hex digits",
                    token.name
                ));
            }
        }
        for (key, value) in [
            (
                "archive-retention-message-result",
                self.archive_retention_message_result,
            ),
            ("archive-retention-header", self.archive_retention_header),
            ("archive-retention-body", self.archive_retention_body),
        ] {
            if value > self.archive_retention_message {
                return Err(format!(
                    "[auditor] archive-retention-message ({}) must be at least as long as {key} ({})",
                    in_weeks(self.archive_retention_message),
                    in_weeks(value)
                ));
            }
        }
        Ok(())
    }
}

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
        }
    }
}

impl BounceIngestConfig {
    /// The largest `max-size`: what a MEDIUMBLOB holds.
    pub const MAX_SIZE_LIMIT: usize = 16 * 1024 * 1024 - 1;

    fn validate(&self) -> Result<(), String> {
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
        Ok(())
    }
}

/// What an error of a module does to the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// ClueGetter's rule: an error no group member excuses tempfails the message.
    Tempfail,
    /// The module contributes nothing when it fails.
    Ignore,
}

/// The keys every check module has.
/// `[stage-checks]`: modules also asked before end of message, at the stage where the answer
/// is given on the spot (a reject at CONNECT refuses the client, at RCPT that one recipient).
/// Every enabled module is asked at end of message regardless.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StageChecksConfig {
    pub connect: Vec<String>,
    pub helo: Vec<String>,
    pub rcpt: Vec<String>,
}

impl StageChecksConfig {
    /// The modules asked at `stage` (none at end of message: that is every enabled module).
    pub fn modules(&self, stage: CheckStage) -> &[String] {
        match stage {
            CheckStage::Connect => &self.connect,
            CheckStage::Helo => &self.helo,
            CheckStage::Rcpt => &self.rcpt,
            CheckStage::Eom => &[],
        }
    }

    /// The stages before end of message at which `module` is asked.
    pub fn stages_of(&self, module: &str) -> Vec<CheckStage> {
        [CheckStage::Connect, CheckStage::Helo, CheckStage::Rcpt]
            .into_iter()
            .filter(|stage| self.modules(*stage).iter().any(|m| m == module))
            .collect()
    }
}

pub trait ModuleSettings {
    fn enabled(&self) -> bool;
    fn timeout(&self) -> Duration;
    /// Bytes of the message the module gets; `None` for metadata-only modules.
    fn max_size(&self) -> Option<usize>;
    fn on_error(&self) -> OnError;
}

/// `impl ModuleSettings` for a module section with `enabled`, `timeout` and `on-error` keys;
/// a `content` module also has `max-size` (the bytes of the message it gets).
macro_rules! module_settings {
    ($section:ty, $kind:ident) => {
        impl ModuleSettings for $section {
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn timeout(&self) -> Duration {
                self.timeout
            }
            fn max_size(&self) -> Option<usize> {
                module_settings!(@max_size self, $kind)
            }
            fn on_error(&self) -> OnError {
                self.on_error
            }
        }
    };
    (@max_size $self:ident, content) => {
        Some($self.max_size)
    };
    (@max_size $self:ident, metadata) => {
        None
    };
}

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
    pub tally_status: Vec<crate::contract::Action>,
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
            tally_status: vec![crate::contract::Action::Permit],
            reservation_ttl: Duration::from_secs(2 * 24 * 3600),
            timeout: Duration::from_secs(5),
            on_error: OnError::Tempfail,
        }
    }
}

impl QuotasConfig {
    /// `tally-status` must name something; a reservation must outlive the gateway's wait.
    fn validate(&self, message_deadline: Duration) -> Result<(), String> {
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

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RspamdConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// rspamd's score × multiplier is the reject score this module contributes.
    pub multiplier: f64,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_size: usize,
    pub on_error: OnError,
}

impl Default for RspamdConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".to_owned(),
            port: 11333,
            multiplier: 0.67,
            timeout: Duration::from_secs(10),
            max_size: 2 * 1024 * 1024,
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(RspamdConfig, content);

/// `[spamassassin]`: spamd over TCP (spec/modules.md §3). ClueGetter's `delay` is gone: the
/// breaker lives in the gateway, which simply stops waiting.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SpamAssassinConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Longest wait for the TCP connection to spamd (ClueGetter truncated its 0.1 s to 0 = no
    /// limit; spec gap B.9).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest the whole exchange with spamd may take; also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_size: usize,
    /// `RULE_NAME: message`: the reason given when that rule is the highest-scoring matched
    /// rule that has one. Rule names are upper-cased; a rule listed twice is an error.
    #[serde(deserialize_with = "deserialize_verdict_msgs")]
    pub verdict_msg: Vec<VerdictMsg>,
    pub on_error: OnError,
}

impl Default for SpamAssassinConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".to_owned(),
            port: 783,
            connect_timeout: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
            max_size: 500_000,
            verdict_msg: Vec::new(),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(SpamAssassinConfig, content);

/// One `verdict-msg` line, parsed: `RULE_NAME: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictMsg {
    /// Upper-cased SpamAssassin rule name.
    pub rule: String,
    /// Whitespace collapsed; may use the gateway's `%{...}` variables.
    pub message: String,
}

impl VerdictMsg {
    /// Parses `RULE_NAME: message`.
    ///
    /// # Errors
    /// No `:`, a rule name that is not `[A-Za-z0-9_]+`, or an empty message.
    pub fn parse(line: &str) -> Result<Self, String> {
        let (rule, message) = line
            .split_once(':')
            .ok_or_else(|| format!("verdict-msg `{line}`: expected `RULE_NAME: message`"))?;
        let rule = rule.trim().to_ascii_uppercase();
        if rule.is_empty() || !rule.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "verdict-msg `{line}`: `{rule}` is not a SpamAssassin rule name"
            ));
        }
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if message.is_empty() {
            return Err(format!("verdict-msg `{line}`: the message is empty"));
        }
        Ok(Self { rule, message })
    }
}

impl Serialize for VerdictMsg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}: {}", self.rule, self.message))
    }
}

/// `verdict-msg` lines; a rule named twice (in any case) is refused (spec gap D.33).
fn deserialize_verdict_msgs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VerdictMsg>, D::Error> {
    let lines: Vec<String> = Vec::deserialize(d)?;
    let mut parsed: Vec<VerdictMsg> = Vec::with_capacity(lines.len());
    for line in &lines {
        let entry = VerdictMsg::parse(line).map_err(serde::de::Error::custom)?;
        if parsed.iter().any(|seen| seen.rule == entry.rule) {
            return Err(serde::de::Error::custom(format!(
                "verdict-msg: rule `{}` is listed twice",
                entry.rule
            )));
        }
        parsed.push(entry);
    }
    Ok(parsed)
}

/// Where clamd listens: `tcp://host:port`, `unix:///path`, or a bare socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClamdAddress {
    /// `host:port` (a host name, an IPv4 address or a bracketed IPv6 address).
    Tcp(String),
    Unix(PathBuf),
}

impl ClamdAddress {
    /// Parses the `address` key.
    ///
    /// # Errors
    /// A `tcp://` address without a port, an empty path, or another scheme.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if let Some(host_port) = text.strip_prefix("tcp://") {
            let host_port = host_port.trim_end_matches('/');
            let has_port = host_port
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !has_port {
                return Err(format!(
                    "clamd address `{text}`: expected tcp://host:port (e.g. tcp://127.0.0.1:3310)"
                ));
            }
            return Ok(Self::Tcp(host_port.to_owned()));
        }
        let path = text.strip_prefix("unix://").unwrap_or(text);
        if path.starts_with('/') {
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        Err(format!(
            "clamd address `{text}`: expected tcp://host:port, unix:///path or /path"
        ))
    }
}

impl std::fmt::Display for ClamdAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(host_port) => write!(f, "tcp://{host_port}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl Serialize for ClamdAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for ClamdAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// `[clamav]`: clamd's INSTREAM (spec/modules.md §5).
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ClamavConfig {
    pub enabled: bool,
    pub address: ClamdAddress,
    /// Reject score of a message clamd finds something in.
    pub default_score: f64,
    pub max_size: usize,
    /// Longest a scan may take (connect included); also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for ClamavConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            address: ClamdAddress::Tcp("127.0.0.1:3310".to_owned()),
            default_score: 10.0,
            max_size: 10 * 1024 * 1024,
            timeout: Duration::from_secs(10),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(ClamavConfig, content);

/// `[greylisting]` (spec/modules.md §2), its state in MariaDB (`[database]`), shared by every
/// worker of the instance.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct GreylistingConfig {
    pub enabled: bool,
    /// Tempfail score of a message whose triplet is new or too young; below
    /// `message-tempfail-score` on purpose.
    pub initial_score: f64,
    /// How long after the first attempt a retry is accepted.
    #[serde(with = "humantime_serde")]
    pub initial_period: Duration,
    /// A triplet not yet passed is forgotten this long after its first attempt (ClueGetter: 90 min).
    #[serde(with = "humantime_serde")]
    pub retry_window: Duration,
    /// How long a whitelisted client stays whitelisted after it was last seen.
    #[serde(with = "humantime_serde")]
    pub whitelist_period: Duration,
    /// Domains whose SPF policy, passed by the client address, whitelists the client.
    pub whitelist_spf: Vec<String>,
    /// DNS server for the SPF lookups (`ip:port`); absent: the system's resolv.conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns_resolver: Option<SocketAddr>,
    /// Longest the SPF whitelist may take per message, all domains together.
    #[serde(with = "humantime_serde")]
    pub spf_timeout: Duration,
    /// Triplets are keyed on the client's network of this prefix length, not its address.
    pub client_ipv4_prefix: u8,
    pub client_ipv6_prefix: u8,
    /// Once this many triplets from a client network have passed, the whole network is
    /// whitelisted; 0: off (ClueGetter whitelists only the address that passed).
    pub auto_whitelist_after: u32,
    /// Longest one check may take (database and SPF); also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub on_error: OnError,
}

impl Default for GreylistingConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            initial_score: 7.0,
            initial_period: Duration::from_secs(5 * 60),
            retry_window: Duration::from_secs(2 * 24 * 3600),
            whitelist_period: Duration::from_secs(40 * 24 * 3600),
            whitelist_spf: Vec::new(),
            dns_resolver: None,
            spf_timeout: Duration::from_secs(3),
            client_ipv4_prefix: 24,
            client_ipv6_prefix: 64,
            auto_whitelist_after: 0,
            timeout: Duration::from_secs(10),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(GreylistingConfig, metadata);

impl Config {
    /// The settings of a module by name, for the code that treats modules alike.
    pub fn module(&self, name: &str) -> Option<&dyn ModuleSettings> {
        match name {
            "quotas" => Some(&self.quotas),
            "rspamd" => Some(&self.rspamd),
            "spamassassin" => Some(&self.spamassassin),
            "clamav" => Some(&self.clamav),
            "greylisting" => Some(&self.greylisting),
            _ => None,
        }
    }

    /// Names of the enabled modules, in [`KNOWN_MODULES`] order.
    pub fn enabled_modules(&self) -> Vec<&'static str> {
        KNOWN_MODULES
            .iter()
            .copied()
            .filter(|m| self.module(m).is_some_and(|s| s.enabled()))
            .collect()
    }

    /// Whether the client address is in `monitor-host`.
    pub fn is_monitor_host(&self, addr: IpAddr) -> bool {
        self.monitor_host.iter().any(|net| net.contains(&addr))
    }

    /// Whether the client address is in `whitelist`.
    pub fn is_whitelisted(&self, addr: IpAddr) -> bool {
        self.whitelist.iter().any(|net| net.contains(&addr))
    }

    /// Checks what serde cannot: relations between keys.
    fn validate(&self) -> Result<(), String> {
        if self.instance.is_empty() || self.instance.len() > 20 {
            return Err("`instance` must be 1 to 20 characters".into());
        }
        for (key, value) in [
            ("message-reject-score", self.message_reject_score),
            ("message-tempfail-score", self.message_tempfail_score),
            ("message-spamflag-score", self.message_spamflag_score),
            ("breaker-score", self.breaker_score),
        ] {
            // 0 or less would reject (or stop waiting for) every message, results or not
            if !value.is_finite() || value <= 0.0 {
                return Err(format!("`{key}` must be a number above 0 (is {value})"));
            }
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (group, members) in &self.module_groups {
            if members.is_empty() {
                return Err(format!("module group `{group}` has no members"));
            }
            for (module, weight) in members {
                if !KNOWN_MODULES.contains(&module.as_str()) {
                    return Err(format!(
                        "module group `{group}`: unknown module `{module}` (known: {})",
                        KNOWN_MODULES.join(", ")
                    ));
                }
                if !weight.is_finite() || *weight < 0.0 {
                    return Err(format!(
                        "module group `{group}`: weight of `{module}` must be a number ≥ 0"
                    ));
                }
                if let Some(other) = seen.insert(module, group) {
                    return Err(format!(
                        "module `{module}` is in two module groups (`{other}` and `{group}`)"
                    ));
                }
            }
        }
        for module in KNOWN_MODULES {
            if let Some(settings) = self.module(module)
                && settings.timeout().is_zero()
            {
                return Err(format!("[{module}] timeout must be longer than 0s"));
            }
        }
        for stage in [CheckStage::Connect, CheckStage::Helo, CheckStage::Rcpt] {
            for module in self.stage_checks.modules(stage) {
                if !self.module(module).is_some_and(|s| s.enabled()) {
                    return Err(format!(
                        "[stage-checks] {stage}: `{module}` is not an enabled module (enabled: {})",
                        self.enabled_modules().join(", ")
                    ));
                }
            }
        }
        self.validate_content_scanners()?;
        self.greylisting.validate()?;
        self.quotas.validate(self.gateway.message_deadline)?;
        self.auditor.validate()?;
        self.bounce_ingest.validate()?;
        if self.gateway.message_deadline.is_zero() || self.gateway.progress_interval.is_zero() {
            return Err(
                "[gateway] message-deadline and progress-interval must be longer than 0s".into(),
            );
        }
        if self.gateway.max_packet_size < 65_536 + 16 {
            return Err(
                "[gateway] max-packet-size must be at least 65552 (a full body chunk)".into(),
            );
        }
        if self.gateway.audit_body_max_size > GatewayConfig::AUDIT_BODY_MAX_SIZE_LIMIT {
            return Err(format!(
                "[gateway] audit-body-max-size must be at most {} bytes (is {})",
                GatewayConfig::AUDIT_BODY_MAX_SIZE_LIMIT,
                self.gateway.audit_body_max_size
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `[spamassassin]` and `[clamav]` values serde accepts but that make no sense.
    fn validate_content_scanners(&self) -> Result<(), String> {
        if self.spamassassin.connect_timeout.is_zero() {
            return Err("[spamassassin] connect-timeout must be longer than 0s".into());
        }
        if !self.clamav.default_score.is_finite() {
            return Err("[clamav] default-score must be a number".into());
        }
        Ok(())
    }
}

impl GreylistingConfig {
    fn validate(&self) -> Result<(), String> {
        if !self.initial_score.is_finite() {
            return Err("[greylisting] initial-score must be a number".into());
        }
        if self.client_ipv4_prefix > 32 || self.client_ipv6_prefix > 128 {
            return Err(
                "[greylisting] client-ipv4-prefix must be 0 to 32 and client-ipv6-prefix 0 to 128"
                    .into(),
            );
        }
        if self.retry_window <= self.initial_period {
            return Err("[greylisting] retry-window must be longer than initial-period".into());
        }
        if self.whitelist_period.is_zero() || self.spf_timeout.is_zero() {
            return Err(
                "[greylisting] whitelist-period and spf-timeout must be longer than 0s".into(),
            );
        }
        for domain in &self.whitelist_spf {
            let valid = !domain.is_empty()
                && domain.len() <= 253
                && domain
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-' || b == b'_');
            if !valid {
                return Err(format!(
                    "[greylisting] whitelist-spf: `{domain}` is not a domain name"
                ));
            }
        }
        Ok(())
    }
}

/// A configuration that could not be loaded; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("invalid configuration {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The environment variables that are overrides (`CLUEGETTER_*`), less the ones that name
/// where the configuration is rather than what is in it.
pub fn env_overrides() -> HashMap<String, String> {
    const NOT_KEYS: &[&str] = &["CLUEGETTER_CONFIG", "CLUEGETTER_LOG_LEVEL"];
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CLUEGETTER_") && !NOT_KEYS.contains(&k.as_str()))
        .collect()
}

/// Loads the file (if any) over the defaults, then the environment overrides over both.
///
/// # Errors
/// A file that cannot be read or parsed, an unknown key, a value of the wrong type, or keys
/// that contradict each other; the error is one line naming the file.
pub fn load(path: Option<&Path>, env: HashMap<String, String>) -> Result<Config, ConfigError> {
    let shown = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(
            config::File::from(PathBuf::from(path))
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder = builder.add_source(
        config::Environment::with_prefix("CLUEGETTER")
            .prefix_separator("_")
            .separator("__")
            .convert_case(config::Case::Kebab)
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("whitelist")
            .with_list_parse_key("monitor-host")
            .with_list_parse_key("add-header")
            .with_list_parse_key("bounce-ingest.allow")
            .source(Some(env)),
    );
    let load_err = |source| ConfigError::Load {
        path: shown.clone(),
        source,
    };
    let config: Config = builder
        .build()
        .map_err(load_err)?
        .try_deserialize()
        .map_err(load_err)?;
    config.validate().map_err(|reason| ConfigError::Invalid {
        path: shown.clone(),
        reason,
    })?;
    Ok(config)
}

/// One `add-header` line, parsed: `[U] Name: value template`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddHeader {
    /// `[U]`: delete every existing header of this name first.
    pub unique: bool,
    pub name: String,
    pub template: String,
}

impl AddHeader {
    /// Parses `[FLAGS] Name: value`; the only flag is `U`.
    ///
    /// # Errors
    /// No `:`, an empty or invalid header name, or an unknown flag.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut rest = line.trim();
        let mut unique = false;
        if let Some(after) = rest.strip_prefix('[') {
            let (flags, tail) = after
                .split_once(']')
                .ok_or_else(|| format!("add-header `{line}`: `[` without `]`"))?;
            for flag in flags.chars().filter(|c| !c.is_whitespace()) {
                match flag {
                    'U' | 'u' => unique = true,
                    other => {
                        return Err(format!(
                            "add-header `{line}`: unknown flag `{other}` (only U exists)"
                        ));
                    }
                }
            }
            rest = tail.trim_start();
        }
        let (name, template) = rest
            .split_once(':')
            .ok_or_else(|| format!("add-header `{line}`: expected `Name: value`"))?;
        let name = name.trim();
        // RFC 5322 field names: printable ASCII except ':' and space
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(format!(
                "add-header `{line}`: `{name}` is not a header name"
            ));
        }
        Ok(Self {
            unique,
            name: name.to_owned(),
            template: template.trim().to_owned(),
        })
    }
}

impl Serialize for AddHeader {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let flag = if self.unique { "[U] " } else { "" };
        s.serialize_str(&format!("{flag}{}: {}", self.name, self.template))
    }
}

fn deserialize_add_headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AddHeader>, D::Error> {
    let lines: Vec<String> = Vec::deserialize(d)?;
    lines
        .iter()
        .map(|line| AddHeader::parse(line).map_err(serde::de::Error::custom))
        .collect()
}

/// Whitelist entries: CIDRs, or bare addresses meaning /32 and /128.
fn deserialize_networks<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    let entries: Vec<String> = Vec::deserialize(d)?;
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{entry}` is not an IP address or network (e.g. 192.0.2.0/24, 2001:db8::/32)"
                    ))
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn example_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../cluegetter.example.toml")
    }

    #[test]
    fn shipped_example_loads_and_equals_the_defaults() {
        let loaded = load(Some(&example_path()), HashMap::new()).unwrap();
        assert_eq!(loaded, Config::default());
    }

    #[test]
    fn shipped_example_documents_every_key() {
        // Every key of the defaults, serialized, must appear (uncommented) in the example.
        let text = std::fs::read_to_string(example_path()).unwrap();
        let example: toml::Table = toml::from_str(&text).unwrap();
        let defaults: toml::Table = toml::Value::try_from(Config::default())
            .unwrap()
            .try_into()
            .unwrap();
        fn walk(prefix: &str, want: &toml::Table, have: &toml::Table) {
            for (key, value) in want {
                let path = format!("{prefix}{key}");
                let Some(other) = have.get(key) else {
                    panic!("cluegetter.example.toml lacks `{path}`");
                };
                if let (toml::Value::Table(w), toml::Value::Table(h)) = (value, other) {
                    walk(&format!("{path}."), w, h);
                }
            }
        }
        walk("", &defaults, &example);
    }

    #[test]
    fn stage_checks_name_enabled_modules() {
        let mut config = Config::default();
        config.stage_checks.rcpt = vec!["rspamd".to_owned()];
        let error = config.validate().unwrap_err();
        assert!(
            error.contains("[stage-checks] rcpt") && error.contains("rspamd"),
            "{error}"
        );
        config.rspamd.enabled = true;
        config.validate().unwrap();
        assert_eq!(config.stage_checks.stages_of("rspamd"), [CheckStage::Rcpt]);
        assert!(config.stage_checks.modules(CheckStage::Eom).is_empty());
    }

    #[test]
    fn no_file_means_defaults() {
        assert_eq!(load(None, HashMap::new()).unwrap(), Config::default());
    }

    #[test]
    fn environment_overrides_top_level_and_section_keys() {
        let env = HashMap::from([
            ("CLUEGETTER_NOOP".to_owned(), "true".to_owned()),
            (
                "CLUEGETTER_MESSAGE_REJECT_SCORE".to_owned(),
                "6.5".to_owned(),
            ),
            ("CLUEGETTER_RSPAMD__ENABLED".to_owned(), "true".to_owned()),
            ("CLUEGETTER_RSPAMD__TIMEOUT".to_owned(), "3s".to_owned()),
            (
                "CLUEGETTER_BROKER__URL".to_owned(),
                "amqp://x:y@127.0.0.1:5672/v".to_owned(),
            ),
            (
                "CLUEGETTER_WHITELIST".to_owned(),
                "127.0.0.0/8,::1".to_owned(),
            ),
        ]);
        let config = load(None, env).unwrap();
        assert!(config.noop);
        assert_eq!(config.message_reject_score, 6.5);
        assert!(config.rspamd.enabled);
        assert_eq!(config.rspamd.timeout, Duration::from_secs(3));
        assert_eq!(config.broker.url, "amqp://x:y@127.0.0.1:5672/v");
        assert!(config.is_whitelisted("127.0.0.9".parse().unwrap()));
        assert!(config.is_whitelisted("::1".parse().unwrap()));
        assert!(!config.is_whitelisted("192.0.2.1".parse().unwrap()));
    }

    fn load_text(text: &str) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("cg-config-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, text).unwrap();
        let result = load(Some(&path), HashMap::new());
        std::fs::remove_dir_all(&dir).unwrap();
        result
    }

    #[test]
    fn unknown_key_is_a_one_line_error_naming_it() {
        let err = load_text("noop = true\nbreaker-scor = 3\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("breaker-scor"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn bad_whitelist_entry_is_named() {
        let err = load_text("whitelist = [\"10.0.0.0/8\", \"nonsense\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("nonsense"), "{err}");
    }

    #[test]
    fn module_in_two_groups_is_refused() {
        let err = load_text("[module-groups.a]\nrspamd = 0.5\n[module-groups.b]\nrspamd = 0.5\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("two module groups"), "{err}");
    }

    #[test]
    fn add_header_lines_parse_with_the_unique_flag() {
        let config = load_text(
            "add-header = [\"X-Scanned: ClueGetter at %{hostname}\", \"[U] X-Spam-Score: %{rejectScore}\", \"[U] X-Foo:\"]\n",
        )
        .unwrap();
        assert_eq!(config.add_header.len(), 3);
        assert!(!config.add_header[0].unique);
        assert_eq!(config.add_header[0].template, "ClueGetter at %{hostname}");
        assert!(config.add_header[1].unique);
        assert_eq!(config.add_header[2].template, "");
        for bad in ["[X] A: b", "no colon", ": empty name", "Bad Name: x"] {
            let err = load_text(&format!("add-header = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("add-header"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_zero_reject_score_is_refused() {
        let err = load_text("message-reject-score = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("message-reject-score"), "{err}");
    }

    #[test]
    fn bounce_ingest_allow_list_is_overridden_from_the_environment() {
        let env = HashMap::from([(
            "CLUEGETTER_BOUNCE_INGEST__ALLOW".to_owned(),
            "172.16.0.0/12,127.0.0.1".to_owned(),
        )]);
        let config = load(None, env).unwrap();
        assert_eq!(
            config.bounce_ingest.allow,
            vec![
                "172.16.0.0/12".parse::<IpNet>().unwrap(),
                "127.0.0.1/32".parse().unwrap()
            ]
        );
    }

    #[test]
    fn bounce_ingest_limits_are_checked_and_its_allow_list_read() {
        let config = load_text(
            "[bounce-ingest]\nallow = [\"10.1.2.3\", \"192.0.2.0/24\"]\nmax-size = 2048\n",
        )
        .unwrap();
        assert_eq!(
            config.bounce_ingest.allow,
            vec![
                "10.1.2.3/32".parse::<IpNet>().unwrap(),
                "192.0.2.0/24".parse().unwrap()
            ]
        );
        for (text, key) in [
            ("max-size = 16777216", "max-size"),
            ("max-size = 10", "max-size"),
            ("read-timeout = \"0s\"", "read-timeout"),
            ("spool-max-size = 4194304", "spool-max-size"),
            ("allow = [\"loopback\"]", "loopback"),
        ] {
            let err = load_text(&format!("[bounce-ingest]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn durations_are_human() {
        let config = load_text("[gateway]\nmessage-deadline = \"1m 30s\"\n").unwrap();
        assert_eq!(config.gateway.message_deadline, Duration::from_secs(90));
    }

    #[test]
    fn quotas_tally_status_must_name_verdicts_and_reservations_outlive_the_deadline() {
        let config = load_text("[quotas]\ntally-status = [\"permit\", \"reject\"]\n").unwrap();
        assert_eq!(
            config.quotas.tally_status,
            [crate::Action::Permit, crate::Action::Reject]
        );
        for (text, key) in [
            ("[quotas]\ntally-status = []\n", "tally-status"),
            ("[quotas]\ntally-status = [\"accept\"]\n", "accept"),
            ("[quotas]\nreservation-ttl = \"10s\"\n", "reservation-ttl"),
        ] {
            let err = load_text(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn verdict_msg_lines_are_upper_cased_and_collapsed() {
        let config = load_text(
            "[spamassassin]\nverdict-msg = [\"gtube:  This   is\\tGTUBE \", \"RDNS_NONE: No rDNS for %{clientIp}\"]\n",
        )
        .unwrap();
        assert_eq!(
            config.spamassassin.verdict_msg,
            [
                VerdictMsg {
                    rule: "GTUBE".into(),
                    message: "This is GTUBE".into()
                },
                VerdictMsg {
                    rule: "RDNS_NONE".into(),
                    message: "No rDNS for %{clientIp}".into()
                }
            ]
        );
        for bad in ["no colon", "BAD RULE: x", "EMPTY:  "] {
            let err = load_text(&format!("[spamassassin]\nverdict-msg = [\"{bad}\"]\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains("verdict-msg"), "{bad}: {err}");
        }
    }

    #[test]
    fn d33_a_verdict_msg_rule_listed_twice_in_any_case_is_refused() {
        let err = load_text("[spamassassin]\nverdict-msg = [\"GTUBE: a\", \"gtube: b\"]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("`GTUBE` is listed twice"), "{err}");
    }

    #[test]
    fn clamd_addresses_parse_in_the_three_forms() {
        assert_eq!(
            ClamdAddress::parse("tcp://127.0.0.1:3310").unwrap(),
            ClamdAddress::Tcp("127.0.0.1:3310".into())
        );
        assert_eq!(
            ClamdAddress::parse("tcp://[::1]:3310").unwrap(),
            ClamdAddress::Tcp("[::1]:3310".into())
        );
        assert_eq!(
            ClamdAddress::parse("unix:///run/clamav/clamd.ctl").unwrap(),
            ClamdAddress::Unix("/run/clamav/clamd.ctl".into())
        );
        assert_eq!(
            ClamdAddress::parse("/var/run/clamav/clamd.ctl").unwrap(),
            ClamdAddress::Unix("/var/run/clamav/clamd.ctl".into())
        );
        for bad in [
            "tcp://127.0.0.1",
            "tcp://:3310",
            "clamd.ctl",
            "http://x:1",
            "",
        ] {
            assert!(ClamdAddress::parse(bad).is_err(), "{bad}");
        }
        let config = load_text("[clamav]\naddress = \"unix:///tmp/c.sock\"\n").unwrap();
        assert_eq!(config.clamav.address.to_string(), "unix:///tmp/c.sock");
        let err = load_text("[clamav]\naddress = \"localhost\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("localhost"), "{err}");
    }

    #[test]
    fn greylisting_durations_and_resolver_are_read() {
        let config = load_text(
            "[greylisting]\ninitial-period = \"2s\"\nretry-window = \"90m\"\n\
             dns-resolver = \"127.0.0.1:5353\"\nwhitelist-spf = [\"example.test\"]\n",
        )
        .unwrap();
        let g = &config.greylisting;
        assert_eq!(g.initial_period, Duration::from_secs(2));
        assert_eq!(g.retry_window, Duration::from_secs(90 * 60));
        assert_eq!(g.whitelist_period, Duration::from_secs(40 * 24 * 3600));
        assert_eq!(g.dns_resolver, Some("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(g.whitelist_spf, ["example.test"]);
        assert_eq!(config.module("greylisting").unwrap().max_size(), None);
        assert_eq!(
            config.module("clamav").unwrap().max_size(),
            Some(10_485_760)
        );
        assert_eq!(
            config.module("spamassassin").unwrap().max_size(),
            Some(500_000)
        );
    }

    #[test]
    fn greylisting_values_that_make_no_sense_are_refused() {
        for (text, key) in [
            ("client-ipv4-prefix = 33", "client-ipv4-prefix"),
            ("client-ipv6-prefix = 129", "client-ipv6-prefix"),
            ("initial-period = \"3d\"", "retry-window"),
            ("whitelist-spf = [\"not a domain\"]", "whitelist-spf"),
            ("dns-resolver = \"127.0.0.1\"", "dns-resolver"),
        ] {
            let err = load_text(&format!("[greylisting]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = load_text("[spamassassin]\nconnect-timeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("connect-timeout"), "{err}");
    }

    #[test]
    fn auditor_web_users_need_argon2_hashes_and_tokens_sha256_digests() {
        let text = format!(
            "[auditor]\n[[auditor.web-users]]\nname = \"pm\"\npassword-hash = \"$argon2id$x\"\n\
             [[auditor.web-api-tokens]]\nname = \"cron\"\nsha256 = \"{}\"\n",
            "ab".repeat(32)
        );
        let config = load_text(&text).unwrap();
        assert_eq!(config.auditor.web_users[0].name, "pm");
        assert_eq!(config.auditor.web_api_tokens[0].sha256, "ab".repeat(32));
        let err = load_text(
            "[auditor]\n[[auditor.web-users]]\nname = \"pm\"\npassword-hash = \"secret\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("argon2"), "{err}");
        let err =
            load_text("[auditor]\n[[auditor.web-api-tokens]]\nname = \"x\"\nsha256 = \"abc\"\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("64 hex"), "{err}");
    }

    #[test]
    fn auditor_login_throttling_is_read_and_checked() {
        let defaults = AuditorConfig::default();
        assert_eq!(defaults.web_login_max_failures, 5);
        assert_eq!(defaults.web_login_failure_window, Duration::from_secs(900));
        let config = load_text(
            "[auditor]\nweb-login-max-failures = 3\nweb-login-failure-window = \"2m 30s\"\n",
        )
        .unwrap();
        assert_eq!(config.auditor.web_login_max_failures, 3);
        assert_eq!(
            config.auditor.web_login_failure_window,
            Duration::from_secs(150)
        );
        for (text, key) in [
            ("web-login-max-failures = 0", "web-login-max-failures"),
            ("web-login-max-failures = 1001", "web-login-max-failures"),
            (
                "web-login-failure-window = \"0s\"",
                "web-login-failure-window",
            ),
            (
                "web-login-failure-window = \"500ms\"",
                "web-login-failure-window",
            ),
        ] {
            let err = load_text(&format!("[auditor]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
    }

    #[test]
    fn auditor_retention_is_in_weeks_and_messages_outlive_their_parts() {
        let config = load_text(
            "[auditor]\narchive-retention-message = \"4w\"\narchive-retention-header = \"4w\"\n\
             archive-retention-body = \"0s\"\narchive-prune-interval = \"0s\"\n",
        )
        .unwrap();
        let auditor = &config.auditor;
        assert_eq!(
            auditor.archive_retention_message,
            Duration::from_secs(4 * 604_800)
        );
        assert_eq!(auditor.archive_retention_body, Duration::ZERO);
        assert_eq!(auditor.archive_prune_interval, Duration::ZERO);
        assert_eq!(
            AuditorConfig::default()
                .archive_retention_safeguard
                .as_secs_f64()
                / 604_800.0,
            1.01
        );
        let err = load_text("[auditor]\narchive-retention-message = \"25w\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("archive-retention-message (25w)")
                && err.contains("archive-retention-header (26w)"),
            "{err}"
        );
    }
}
