//! The messages that cross the broker: check requests, check results, audit events.
//!
//! Versioning rule (DESIGN.md "The wire contract"): every message carries `version`, the
//! contract's *major* version. Changes within a major version are additive only: new fields
//! get `#[serde(default)]`, and unknown fields are ignored on read (no `deny_unknown_fields`
//! here, ever). A reader that meets another major version does not guess: it dead-letters the
//! message with the reason ([`check_version`]).
//!
//! These types know nothing of lapin, sqlx or the milter protocol; they are plain serde.

use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The contract's major version, carried in every message as `version`.
pub const WIRE_VERSION: u32 = 1;

/// The identity of one message through every process, row and log line: a UUID v7 given by
/// the gateway at MAIL FROM (Postfix's queue id only exists from DATA on and differs per MTA).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// What a module suggests, and what the verdict is. Closed set, lower-case on the wire.
///
/// The order of the variants is ClueGetter's "highest action wins" order for the
/// per-recipient checks; the verdict itself does not rely on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Permit,
    Tempfail,
    Reject,
    Error,
    Discard,
    Quarantine,
}

/// The SMTP stage a check is asked at. Every enabled module is asked at end of message, where
/// ClueGetter's verdict is made; `[stage-checks]` asks some of them earlier too, so that a client,
/// a HELO name or one recipient can be refused on the spot (DESIGN.md "Where the verdict is made").
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckStage {
    /// The client connected: only the session is known.
    Connect,
    /// HELO/EHLO (again after STARTTLS): the session with its HELO name and TLS.
    Helo,
    /// One RCPT TO: the sender and this one recipient (`envelope.recipients` holds just it).
    Rcpt,
    /// End of message: everything.
    #[default]
    Eom,
}

impl CheckStage {
    pub const ALL: [CheckStage; 4] = [
        CheckStage::Connect,
        CheckStage::Helo,
        CheckStage::Rcpt,
        CheckStage::Eom,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CheckStage::Connect => "connect",
            CheckStage::Helo => "helo",
            CheckStage::Rcpt => "rcpt",
            CheckStage::Eom => "eom",
        }
    }
}

impl fmt::Display for CheckStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Action {
    pub const ALL: [Action; 6] = [
        Action::Permit,
        Action::Tempfail,
        Action::Reject,
        Action::Error,
        Action::Discard,
        Action::Quarantine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Permit => "permit",
            Action::Tempfail => "tempfail",
            Action::Reject => "reject",
            Action::Error => "error",
            Action::Discard => "discard",
            Action::Quarantine => "quarantine",
        }
    }

    /// The action a module's suggestion counts as in the verdict, given its raw `score`: an
    /// `error` stays an error whatever its score, a non-finite score is an error, a zero score
    /// counts as permit (it adds nothing to any sum), anything else as suggested. The gateway's
    /// verdict and the auditor's pages both use this one rule.
    pub fn counted_as(self, score: f64) -> Action {
        if self == Action::Error || !score.is_finite() {
            Action::Error
        } else if score == 0.0 {
            Action::Permit
        } else {
            self
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Action {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Action::ALL
            .into_iter()
            .find(|a| a.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown action `{s}`"))
    }
}

/// One header as received, in order. Values are kept as text; bytes that are not UTF-8 are
/// replaced (U+FFFD) by the gateway before they get here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub name: String,
    pub value: String,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// TLS facts of the SMTP session, from Postfix's TLS macros (present from HELO on).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsInfo {
    pub version: String,
    pub cipher: String,
    pub cipher_bits: Option<u16>,
    pub cert_subject: String,
    pub cert_issuer: String,
}

/// One SMTP connection as the gateway saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionInfo {
    /// Per SMTP connection (UUID v7); several messages may share it.
    pub session_id: Uuid,
    pub connected_at: DateTime<Utc>,
    /// Absent for a Unix-socket or unknown-family client.
    pub client_addr: Option<IpAddr>,
    #[serde(default)]
    pub client_port: Option<u16>,
    /// The client's host name as Postfix gives it at CONNECT (`unknown` when it has none).
    #[serde(default)]
    pub client_name: String,
    #[serde(default)]
    pub helo: String,
    #[serde(default)]
    pub sasl_username: String,
    #[serde(default)]
    pub sasl_method: String,
    #[serde(default)]
    pub sasl_sender: String,
    #[serde(default)]
    pub tls: Option<TlsInfo>,
    /// Postfix's `j` macro: the MTA's host name.
    #[serde(default)]
    pub mta_hostname: String,
    /// Postfix's `{daemon_name}` macro: which Postfix service.
    #[serde(default)]
    pub daemon_name: String,
}

/// A check module's name. On the wire it stays a string (`CheckRequest::module`,
/// `CheckResult::module`, the routing key): during a rolling upgrade a newer worker may answer
/// for a module an older auditor or gateway has never heard of, and that must not make the
/// older process refuse (dead-letter) the event. Code that needs to know which module it has
/// parses the string into this enum; a name it does not know is [`ModuleName::Unknown`], kept
/// as it came.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ModuleName {
    Quotas,
    Rspamd,
    SpamAssassin,
    Clamav,
    Greylisting,
    Srs,
    Geoip,
    Reputation,
    /// A module this build does not know, as it was spelled.
    Unknown(String),
}

impl ModuleName {
    /// The modules this build knows, in the configuration's order.
    pub const KNOWN: [ModuleName; 8] = [
        ModuleName::Quotas,
        ModuleName::Rspamd,
        ModuleName::SpamAssassin,
        ModuleName::Clamav,
        ModuleName::Greylisting,
        ModuleName::Srs,
        ModuleName::Geoip,
        ModuleName::Reputation,
    ];

    /// The names of [`ModuleName::KNOWN`], in the same order.
    pub const KNOWN_NAMES: [&'static str; 8] = [
        "quotas",
        "rspamd",
        "spamassassin",
        "clamav",
        "greylisting",
        "srs",
        "geoip",
        "reputation",
    ];

    /// `name` as this build knows it (exactly as the wire and the configuration spell it), or
    /// [`ModuleName::Unknown`].
    pub fn parse(name: &str) -> Self {
        match name {
            "quotas" => Self::Quotas,
            "rspamd" => Self::Rspamd,
            "spamassassin" => Self::SpamAssassin,
            "clamav" => Self::Clamav,
            "greylisting" => Self::Greylisting,
            "srs" => Self::Srs,
            "geoip" => Self::Geoip,
            "reputation" => Self::Reputation,
            other => Self::Unknown(other.to_owned()),
        }
    }

    /// The name as the wire, the routing key and the configuration spell it.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Quotas => "quotas",
            Self::Rspamd => "rspamd",
            Self::SpamAssassin => "spamassassin",
            Self::Clamav => "clamav",
            Self::Greylisting => "greylisting",
            Self::Srs => "srs",
            Self::Geoip => "geoip",
            Self::Reputation => "reputation",
            Self::Unknown(name) => name,
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, Self::Unknown(_))
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ModuleName {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

impl From<&str> for ModuleName {
    fn from(name: &str) -> Self {
        Self::parse(name)
    }
}

/// The SMTP envelope. Addresses without the angle brackets, as given (case preserved).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub sender: String,
    pub recipients: Vec<String>,
}

/// Gateway → check worker, one per enabled module per message; routing key = module name.
/// The AMQP `correlation_id` is the message id, `reply_to` the gateway's reply queue and
/// `expiration` the module's timeout, so nobody works on a request no one waits for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckRequest {
    pub version: u32,
    pub instance: String,
    pub message_id: MessageId,
    pub queue_id: String,
    pub module: String,
    pub session: SessionInfo,
    pub envelope: Envelope,
    pub headers: Vec<Header>,
    /// The message as content modules see it (a synthetic `Received` header, the headers, a
    /// blank line, the body), truncated at the module's `max-size`. Absent for metadata modules.
    #[serde(default, with = "base64_opt")]
    pub content: Option<Vec<u8>>,
    /// True when `content` was cut at `max-size` (or the gateway kept less of the body).
    #[serde(default)]
    pub content_truncated: bool,
    pub sent_at: DateTime<Utc>,
    /// Where in the SMTP conversation the gateway asks. Before end of message `message_id` is
    /// a fresh UUID per check (it is the reply's correlation id, and a late answer must never
    /// pass for the message's own end-of-message result); the queue id, headers and content
    /// are empty there.
    #[serde(default)]
    pub stage: CheckStage,
}

/// A header with a position: see [`MilterChanges::change_headers`] and
/// [`MilterChanges::insert_headers`] for what `index` counts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderAt {
    pub name: String,
    pub index: i64,
    #[serde(default)]
    pub value: String,
}

/// Header and envelope changes a module asks the gateway to apply at end of message.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MilterChanges {
    /// Headers appended after the message's own.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add_headers: Vec<Header>,
    /// Header names whose every occurrence is removed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove_headers: Vec<String>,
    /// One occurrence of a header changed, or removed when `value` is empty. `index` counts
    /// the occurrences of `name` (case-insensitive) among the headers as received: 1 is the
    /// first, -1 the last. An occurrence the message does not have is left alone.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub change_headers: Vec<HeaderAt>,
    /// Headers inserted at a position among all headers: `index` 0 is before the first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub insert_headers: Vec<HeaderAt>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new_sender: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub add_recipients: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub delete_recipients: Vec<String>,
}

impl MilterChanges {
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// Check worker → gateway, on the request's `reply_to` with its `correlation_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CheckResult {
    pub version: u32,
    pub message_id: MessageId,
    pub module: String,
    pub action: Action,
    pub score: f64,
    #[serde(default)]
    pub message: String,
    /// Why, as the module explains it (a JSON object; rendered as text, never as HTML).
    #[serde(default)]
    pub determinants: serde_json::Value,
    /// Seconds the module spent on the check.
    #[serde(default)]
    pub duration: f64,
    #[serde(default, skip_serializing_if = "MilterChanges::is_empty")]
    pub changes: MilterChanges,
    /// The RFC 3463 enhanced status code (`class.subject.detail`, e.g. `5.1.1` for a bad
    /// recipient) the SMTP reply should carry when this result's message becomes the reply's
    /// reason. Absent: the gateway's own (`5.7.1`, `4.7.1`). The gateway uses it only when its
    /// class agrees with what is answered (5 for a reject, 4 for a tempfail). Added within
    /// version 1: older results have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enhanced_status: Option<String>,
}

impl CheckResult {
    /// A module's judgement of a message: no milter changes, no enhanced status code, the
    /// duration left for the worker to fill in.
    pub fn new(
        message_id: MessageId,
        module: impl Into<String>,
        action: Action,
        score: f64,
        message: impl Into<String>,
        determinants: serde_json::Value,
    ) -> Self {
        Self {
            version: WIRE_VERSION,
            message_id,
            module: module.into(),
            action,
            score,
            message: message.into(),
            determinants,
            duration: 0.0,
            changes: MilterChanges::default(),
            enhanced_status: None,
        }
    }

    /// The result a module gives when it could not check: ClueGetter's error score 25.
    pub fn error(
        message_id: MessageId,
        module: impl Into<String>,
        reason: impl fmt::Display,
    ) -> Self {
        Self::new(
            message_id,
            module,
            Action::Error,
            25.0,
            "An internal error occurred",
            serde_json::json!({ "error": reason.to_string() }),
        )
    }
}

/// A recipient Postfix refused at RCPT itself, with its reason (SMFIP_RCPT_REJ).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RejectedRecipient {
    pub address: String,
    pub reason: String,
}

/// The message part of an audit event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditMessage {
    pub queue_id: String,
    /// End of message, when the verdict was made (not the time it was stored; spec gap A.8).
    pub received_at: DateTime<Utc>,
    pub sender: String,
    pub recipients: Vec<String>,
    #[serde(default)]
    pub rejected_recipients: Vec<RejectedRecipient>,
    pub headers: Vec<Header>,
    /// True when the gateway stopped keeping headers at its configured bounds.
    #[serde(default)]
    pub headers_truncated: bool,
    pub body_size: u64,
    /// MD5 of the body, lower-case hex (ClueGetter's `body_hash`).
    #[serde(default)]
    pub body_hash: String,
    /// The body for the archive, when body archiving is on (the gateway's
    /// `audit-body-max-size` > 0 and `archive-retention-body` > 0): its first bytes, at most
    /// `audit-body-max-size`. Shorter than `body_size` when it was cut there
    /// ([`AuditMessage::body_truncated`]); `body_size` and `body_hash` are always the whole
    /// body's.
    #[serde(default, with = "base64_opt", skip_serializing_if = "Option::is_none")]
    pub body: Option<Vec<u8>>,
    /// The `Message-ID` header's value (the one the gateway inserted, if it had to).
    #[serde(default)]
    pub message_id_header: String,
    #[serde(default)]
    pub subject: String,
}

impl AuditMessage {
    /// True when the event carries a body that is only the first part of the message's body.
    pub fn body_truncated(&self) -> bool {
        self.body
            .as_ref()
            .is_some_and(|body| (body.len() as u64) < self.body_size)
    }
}

/// The verdict part of an audit event, with the arithmetic that made it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditVerdict {
    /// The verdict the rules gave (in `noop` mode: the one that *would* have been given).
    pub verdict: Action,
    /// What Postfix was told: `permit` under noop or whitelist, else the verdict.
    pub applied: Action,
    pub reason: String,
    pub reject_score: f64,
    pub reject_threshold: f64,
    pub tempfail_score: f64,
    pub tempfail_threshold: f64,
    #[serde(default)]
    pub noop: bool,
    #[serde(default)]
    pub whitelisted: bool,
    /// Set when no module verdict could be had at all (broker down, deadline): why the
    /// configured fail action was applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// One module result as stored: the result plus what the gateway made of it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditResult {
    #[serde(flatten)]
    pub result: CheckResult,
    pub weighted_score: f64,
    /// Arrived after the verdict was made (the breaker fired, or the message deadline passed
    /// before the module's own timeout): recorded, but it did not count, so its
    /// `weighted_score` is 0 and the verdict's totals leave it out. A module the deadline cut
    /// counted as an error; its late result replaces that error result and keeps the error's
    /// text under `determinants.counted_as`.
    #[serde(default)]
    pub late: bool,
}

/// Gateway → audit exchange, once per message that reached end of data. Published
/// persistent with publisher confirms; the auditor stores it idempotently on `message_id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    pub version: u32,
    pub instance: String,
    pub message_id: MessageId,
    /// True when the MTA got the final answer; false for events replayed from the spool of a
    /// gateway that died before answering.
    pub answered: bool,
    pub session: SessionInfo,
    pub message: AuditMessage,
    pub verdict: AuditVerdict,
    pub results: Vec<AuditResult>,
}

/// The identity of one delivery report: a UUID v7 given by bounce-ingest when the report
/// arrives. It keys the report through the broker and the archive, so a redelivered or
/// replayed event is stored once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BounceId(pub Uuid);

impl BounceId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for BounceId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for BounceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How a delivery report reached bounce-ingest.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BounceSource {
    /// `bounce-ingest submit`, run by Postfix's local(8) from an alias pipe.
    Submit,
    /// The TCP listener (ClueGetter's `nc` pipe, or `bounce-ingest submit --via`).
    Tcp,
}

impl BounceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceSource::Submit => "submit",
            BounceSource::Tcp => "tcp",
        }
    }
}

/// bounce-ingest → bounce exchange, once per delivery report received. Published persistent
/// with publisher confirms; the auditor stores it idempotently on `bounce_id`. A report that
/// could not be parsed is sent all the same, with `report.status` = `unparseable` and the
/// reason: the raw report is always kept.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BounceEvent {
    pub version: u32,
    pub instance: String,
    pub bounce_id: BounceId,
    /// When bounce-ingest had read the whole report.
    pub received_at: DateTime<Utc>,
    pub source: BounceSource,
    /// The TCP client's address (`tcp` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<IpAddr>,
    /// The report as received, at most bounce-ingest's `max-size` bytes; base64 on the wire.
    #[serde(with = "base64_bytes")]
    pub raw: Vec<u8>,
    /// Bytes received in all; more than `raw.len()` when the report was cut at `max-size`.
    pub raw_size: u64,
    pub report: DeliveryReport,
}

/// How far a report could be read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ParseStatus {
    /// A delivery status notification, every field where RFC 3464 wants it.
    Parsed,
    /// A delivery status notification with something missing or unreadable (see `problems`).
    Partial,
    /// No delivery status could be read (see `problems`); only the raw report is meaningful,
    /// and the returned headers if they could be found.
    #[default]
    Unparseable,
}

impl ParseStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ParseStatus::Parsed => "parsed",
            ParseStatus::Partial => "partial",
            ParseStatus::Unparseable => "unparseable",
        }
    }
}

/// Which kind of report it was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportKind {
    /// `message/delivery-status` (RFC 3464).
    DeliveryStatus,
    /// `message/global-delivery-status` (RFC 6533: UTF-8 allowed in the fields).
    GlobalDeliveryStatus,
    /// No delivery-status part: a plain-text bounce, another kind of report, or not mail.
    #[default]
    Other,
}

impl ReportKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportKind::DeliveryStatus => "delivery-status",
            ReportKind::GlobalDeliveryStatus => "global-delivery-status",
            ReportKind::Other => "other",
        }
    }
}

/// A DSN field of the form `type; value` (`rfc822; user@example.net`, `dns; mx.example.net`,
/// `smtp; 550 5.1.1 ...`), unfolded. `type` is lower-cased and empty when the field had none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TypedValue {
    #[serde(rename = "type")]
    pub kind: String,
    pub value: String,
}

impl TypedValue {
    pub fn new(kind: impl Into<String>, value: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            value: value.into(),
        }
    }

    /// The field as one line, `type; value` (just `value` without a type): what ClueGetter
    /// stored as the raw field.
    pub fn to_line(&self) -> String {
        if self.kind.is_empty() {
            self.value.clone()
        } else {
            format!("{}; {}", self.kind, self.value)
        }
    }
}

/// The `Action` of a per-recipient block (RFC 3464 §2.3.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DsnAction {
    Failed,
    Delayed,
    Delivered,
    Relayed,
    Expanded,
    /// Present but none of the above (the raw report has it).
    #[serde(other)]
    Unknown,
}

impl DsnAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DsnAction::Failed => "failed",
            DsnAction::Delayed => "delayed",
            DsnAction::Delivered => "delivered",
            DsnAction::Relayed => "relayed",
            DsnAction::Expanded => "expanded",
            DsnAction::Unknown => "unknown",
        }
    }
}

/// The per-message fields of a delivery status (RFC 3464 §2.2, plus Postfix's and Gmail's).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct PerMessageFields {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting_mta: Option<TypedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub received_from_mta: Option<TypedValue>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub original_envelope_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arrival_date: Option<DateTime<Utc>>,
    /// `X-Postfix-Queue-ID`: the reported message's queue id at the reporting MTA.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub queue_id: String,
    /// `X-Postfix-Sender`: the reported message's envelope sender.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender: Option<TypedValue>,
    /// `X-Original-Message-ID` (Gmail): the reported message's Message-ID when the report
    /// returns no headers.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub original_message_id: String,
}

/// One per-recipient block of a delivery status (RFC 3464 §2.3).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RecipientReport {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub final_recipient: Option<TypedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub original_recipient: Option<TypedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<DsnAction>,
    /// The status code (`5.1.1`), or the field as written when it holds none.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub remote_mta: Option<TypedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diagnostic_code: Option<TypedValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_attempt_date: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub will_retry_until: Option<DateTime<Utc>>,
}

/// What the report returned of the reported message's headers: the ones a bounce is joined
/// and searched by. Values as written, unfolded; only `subject` has its RFC 2047 encoded words
/// decoded.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ReturnedHeaders {
    /// The report carried the message or its headers (`text/rfc822-headers`,
    /// `message/rfc822`, their `global` forms, or a header block in a plain-text bounce).
    pub present: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The gateway's id header (`X-Cluegetter-Id`, configurable): the message's UUID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluegetter_id: Option<MessageId>,
}

/// A delivery report as bounce-ingest read it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeliveryReport {
    pub status: ParseStatus,
    /// Why it is partial or unparseable, one sentence each; empty when parsed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
    pub kind: ReportKind,
    /// The report's own `Date:` header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub date: Option<DateTime<Utc>>,
    /// The report's own `From:` (as written) and `Subject:` (RFC 2047 decoded), unfolded.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    pub per_message: PerMessageFields,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub recipients: Vec<RecipientReport>,
    pub returned: ReturnedHeaders,
}

/// What Postfix's log said became of one recipient (`status=` of a delivery agent's line).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeliveryStatus {
    /// Handed over: delivered locally or accepted by the next hop.
    Sent,
    /// Not now; Postfix keeps the message and tries again.
    Deferred,
    /// Refused for good; Postfix returns the message to its sender.
    Bounced,
    /// Deferred until `maximal_queue_lifetime` passed; returned to the sender.
    Expired,
}

impl DeliveryStatus {
    pub const ALL: [DeliveryStatus; 4] = [
        DeliveryStatus::Sent,
        DeliveryStatus::Deferred,
        DeliveryStatus::Bounced,
        DeliveryStatus::Expired,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Sent => "sent",
            DeliveryStatus::Deferred => "deferred",
            DeliveryStatus::Bounced => "bounced",
            DeliveryStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for DeliveryStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DeliveryStatus {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DeliveryStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown delivery status {s:?}"))
    }
}

/// bounce-ingest (`maillog`) → delivery exchange, once per delivery line of Postfix's log (one
/// recipient, one attempt). Published persistent with publisher confirms, at least once; the
/// auditor stores it idempotently on (`mta_hostname`, `queue_id`, `recipient`, `status`,
/// `log_time`) and joins it to its message by queue id and MTA host name when it is read.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeliveryEvent {
    pub version: u32,
    pub instance: String,
    /// The MTA whose queue id this is: the log line's host, or `[bounce-ingest]
    /// maillog-hostname` when set (what the gateway records as `mta_hostname`).
    pub mta_hostname: String,
    pub queue_id: String,
    /// `to=`, without the angle brackets, as Postfix logged it.
    pub recipient: String,
    /// `orig_to=`, when Postfix logged one (the address before aliasing or rewriting).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub orig_to: String,
    pub status: DeliveryStatus,
    /// `dsn=` (`2.0.0`, `4.4.1`, `5.1.1`); empty when absent.
    #[serde(default)]
    pub dsn: String,
    /// `relay=` (`mx.example.net[192.0.2.1]:25`, `local`, `none`); empty when absent.
    #[serde(default)]
    pub relay: String,
    /// `delay=`, seconds from arrival to this attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<f64>,
    /// The text in parentheses after the status (the remote reply, or why not).
    #[serde(default)]
    pub reason: String,
    /// The delivery agent that logged it (`smtp`, `lmtp`, `local`, `virtual`, `pipe`, ...).
    #[serde(default)]
    pub service: String,
    /// When Postfix logged it.
    pub log_time: DateTime<Utc>,
}

/// Why a received message is not one we can read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("undecodable message: {0}")]
    Decode(#[from] serde_json::Error),
    #[error(
        "wire version {found} is not supported (this build speaks major version {WIRE_VERSION})"
    )]
    Version { found: u32 },
}

/// The version rule: the same major version, or the message goes to a dead-letter queue.
pub fn check_version(found: u32) -> Result<(), WireError> {
    if found == WIRE_VERSION {
        Ok(())
    } else {
        Err(WireError::Version { found })
    }
}

/// Decodes any versioned wire message and applies the version rule.
pub fn decode<T: serde::de::DeserializeOwned + Versioned>(bytes: &[u8]) -> Result<T, WireError> {
    // Read the version first, so a message of another major version is named as such even
    // when its shape has changed beyond what `T` can read.
    #[derive(Deserialize)]
    struct VersionOnly {
        version: u32,
    }
    let probe: VersionOnly = serde_json::from_slice(bytes)?;
    check_version(probe.version)?;
    Ok(serde_json::from_slice(bytes)?)
}

/// Encodes a wire message. Our types always serialize; this cannot fail for them.
pub fn encode<T: Serialize + Versioned>(message: &T) -> Vec<u8> {
    serde_json::to_vec(message).unwrap_or_else(|e| {
        // Unreachable for the types in this module (no maps with non-string keys, no
        // fallible serializers); kept total so no caller has to handle it.
        format!("{{\"version\":0,\"error\":\"{e}\"}}").into_bytes()
    })
}

/// The wire messages (they all carry `version`).
pub trait Versioned {}
impl Versioned for CheckRequest {}
impl Versioned for CheckResult {}
impl Versioned for AuditEvent {}
impl Versioned for BounceEvent {}
impl Versioned for DeliveryEvent {}

mod base64_bytes {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(value))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = String::deserialize(d)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(serde::de::Error::custom)
    }
}

mod base64_opt {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(bytes) => s.serialize_some(&STANDARD.encode(bytes)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| STANDARD.decode(t.as_bytes()))
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_zero_score_counts_as_permit_and_errors_stay_errors() {
        assert_eq!(Action::Reject.counted_as(0.0), Action::Permit);
        assert_eq!(Action::Reject.counted_as(-0.0), Action::Permit);
        assert_eq!(Action::Reject.counted_as(3.0), Action::Reject);
        assert_eq!(Action::Reject.counted_as(-1.5), Action::Reject);
        assert_eq!(Action::Tempfail.counted_as(f64::NAN), Action::Error);
        assert_eq!(Action::Error.counted_as(0.0), Action::Error);
        assert_eq!(Action::Permit.counted_as(1.0), Action::Permit);
    }

    pub(crate) fn sample_session() -> SessionInfo {
        SessionInfo {
            session_id: Uuid::now_v7(),
            connected_at: Utc::now(),
            client_addr: Some("192.0.2.10".parse().unwrap()),
            client_port: Some(40000),
            client_name: "client.example.org".into(),
            helo: "client.example.org".into(),
            sasl_username: "alice".into(),
            sasl_method: "PLAIN".into(),
            sasl_sender: String::new(),
            tls: Some(TlsInfo {
                version: "TLSv1.3".into(),
                cipher: "TLS_AES_256_GCM_SHA384".into(),
                cipher_bits: Some(256),
                cert_subject: String::new(),
                cert_issuer: String::new(),
            }),
            mta_hostname: "mx.example.net".into(),
            daemon_name: "smtpd".into(),
        }
    }

    fn sample_request() -> CheckRequest {
        CheckRequest {
            version: WIRE_VERSION,
            instance: "default".into(),
            message_id: MessageId::new(),
            queue_id: "4jZB211qk4z6XPl".into(),
            module: "rspamd".into(),
            session: sample_session(),
            envelope: Envelope {
                sender: "a@example.org".into(),
                recipients: vec!["b@example.net".into(), "c@example.net".into()],
            },
            headers: vec![Header::new("Subject", "hi ünïcode")],
            content: Some(b"Received: x\r\n\r\nbody\0\xff".to_vec()),
            content_truncated: true,
            sent_at: Utc::now(),
            stage: CheckStage::Rcpt,
        }
    }

    #[test]
    fn module_names_parse_known_and_keep_unknown() {
        for (module, name) in ModuleName::KNOWN.iter().zip(ModuleName::KNOWN_NAMES) {
            assert_eq!(module.as_str(), name);
            assert_eq!(&ModuleName::parse(name), module);
            assert!(module.is_known());
        }
        let newer = ModuleName::parse("dmarc");
        assert_eq!(newer, ModuleName::Unknown("dmarc".to_owned()));
        assert_eq!(newer.to_string(), "dmarc");
        assert!(!newer.is_known());
        // the wire spells names exactly: another case is another (unknown) module
        assert!(!ModuleName::parse("RSPAMD").is_known());
    }

    /// A result from a module this build does not know still decodes: module names stay
    /// strings on the wire, so a newer worker never makes an older process dead-letter.
    #[test]
    fn a_result_of_an_unknown_module_decodes() {
        let result = CheckResult::error(MessageId::new(), "dmarc", "x");
        let json = serde_json::to_vec(&result).unwrap();
        let back: CheckResult = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            ModuleName::parse(&back.module),
            ModuleName::Unknown("dmarc".into())
        );
    }

    #[test]
    fn a_request_without_a_stage_is_for_end_of_message() {
        // what a gateway from before `[stage-checks]` sends
        let mut json = serde_json::to_value(sample_request()).unwrap();
        json.as_object_mut().unwrap().remove("stage");
        let back: CheckRequest = serde_json::from_value(json).unwrap();
        assert_eq!(back.stage, CheckStage::Eom);
        assert_eq!(
            serde_json::to_value(CheckStage::Connect).unwrap(),
            serde_json::json!("connect")
        );
    }

    #[test]
    fn check_request_round_trips() {
        let request = sample_request();
        let back: CheckRequest = decode(&encode(&request)).unwrap();
        assert_eq!(back, request);
    }

    #[test]
    fn check_result_round_trips_with_changes() {
        let mut result = CheckResult::error(MessageId::new(), "rspamd", "connection refused");
        result
            .changes
            .add_headers
            .push(Header::new("X-Spam", "yes"));
        result.changes.new_sender = Some("srs0=x@example.org".into());
        let back: CheckResult = decode(&encode(&result)).unwrap();
        assert_eq!(back, result);
    }

    #[test]
    fn audit_event_round_trips() {
        let request = sample_request();
        let event = AuditEvent {
            version: WIRE_VERSION,
            instance: "default".into(),
            message_id: request.message_id,
            answered: true,
            session: sample_session(),
            message: AuditMessage {
                queue_id: "4jZB211qk4z6XPl".into(),
                received_at: Utc::now(),
                sender: "a@example.org".into(),
                recipients: vec!["b@example.net".into()],
                rejected_recipients: vec![RejectedRecipient {
                    address: "x@example.net".into(),
                    reason: "550 5.1.1 unknown".into(),
                }],
                headers: vec![Header::new("Subject", "hi")],
                headers_truncated: false,
                body_size: 12,
                body_hash: "0123".into(),
                body: Some(vec![1, 2, 3]),
                message_id_header: "<x@y>".into(),
                subject: "hi".into(),
            },
            verdict: AuditVerdict {
                verdict: Action::Reject,
                applied: Action::Permit,
                reason: "spam".into(),
                reject_score: 10.05,
                reject_threshold: 5.0,
                tempfail_score: 0.0,
                tempfail_threshold: 8.0,
                noop: true,
                whitelisted: false,
                failure: None,
            },
            results: vec![AuditResult {
                result: CheckResult::error(request.message_id, "rspamd", "x"),
                weighted_score: 25.0,
                late: true,
            }],
        };
        let back: AuditEvent = decode(&encode(&event)).unwrap();
        assert_eq!(back, event);
    }

    #[test]
    fn delivery_events_round_trip_and_refuse_another_major_version() {
        let event = DeliveryEvent {
            version: WIRE_VERSION,
            instance: "default".into(),
            mta_hostname: "mx".into(),
            queue_id: "4jjxMg5k8dz1SST9".into(),
            recipient: "rcpt@mailbox.test".into(),
            orig_to: String::new(),
            status: DeliveryStatus::Deferred,
            dsn: "4.4.1".into(),
            relay: "none".into(),
            delay: Some(0.58),
            reason: "connect to 127.0.0.1[127.0.0.1]:9: Connection refused".into(),
            service: "smtp".into(),
            log_time: Utc::now(),
        };
        let bytes = encode(&event);
        assert_eq!(decode::<DeliveryEvent>(&bytes).unwrap(), event);
        let text = String::from_utf8(bytes).unwrap();
        assert!(text.contains(r#""status":"deferred""#), "{text}");
        let other = text.replace(r#""version":1"#, r#""version":2"#);
        assert!(matches!(
            decode::<DeliveryEvent>(other.as_bytes()),
            Err(WireError::Version { found: 2 })
        ));
        for status in DeliveryStatus::ALL {
            assert_eq!(status.as_str().parse::<DeliveryStatus>().unwrap(), status);
        }
    }

    fn sample_bounce() -> BounceEvent {
        BounceEvent {
            version: WIRE_VERSION,
            instance: "default".into(),
            bounce_id: BounceId::new(),
            received_at: Utc::now(),
            source: BounceSource::Tcp,
            peer: Some("127.0.0.1".parse().unwrap()),
            raw: b"Subject: x\r\n\r\n\xff\x00 8-bit".to_vec(),
            raw_size: 1_000_000,
            report: DeliveryReport {
                status: ParseStatus::Partial,
                problems: vec!["the report was cut at max-size".into()],
                kind: ReportKind::GlobalDeliveryStatus,
                date: Some(Utc::now()),
                from: "MAILER-DAEMON@mx.example.net (Mail Delivery System)".into(),
                subject: "Undelivered Mail Returned to Sender".into(),
                per_message: PerMessageFields {
                    reporting_mta: Some(TypedValue::new("dns", "mx.example.net")),
                    received_from_mta: None,
                    original_envelope_id: "envid".into(),
                    arrival_date: Some(Utc::now()),
                    queue_id: "4jZB211qk4z6XPl".into(),
                    sender: Some(TypedValue::new("rfc822", "a@example.org")),
                    original_message_id: String::new(),
                },
                recipients: vec![RecipientReport {
                    final_recipient: Some(TypedValue::new("utf-8", "用户@例子.广告")),
                    original_recipient: None,
                    action: Some(DsnAction::Failed),
                    status: "5.1.1".into(),
                    remote_mta: Some(TypedValue::new("dns", "mx.example.com")),
                    diagnostic_code: Some(TypedValue::new("smtp", "550 5.1.1 unknown")),
                    last_attempt_date: Some(Utc::now()),
                    will_retry_until: None,
                }],
                returned: ReturnedHeaders {
                    present: true,
                    message_id: "<x@example.org>".into(),
                    from: "a@example.org".into(),
                    to: "b@example.net".into(),
                    subject: "hi".into(),
                    cluegetter_id: Some(MessageId::new()),
                },
            },
        }
    }

    #[test]
    fn bounce_event_round_trips_with_8bit_raw_report() {
        let event = sample_bounce();
        let bytes = encode(&event);
        let back: BounceEvent = decode(&bytes).unwrap();
        assert_eq!(back, event);
        // the raw report travels as base64, the fields by their wire names
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["raw"], "U3ViamVjdDogeA0KDQr/ACA4LWJpdA==");
        assert_eq!(json["source"], "tcp");
        assert_eq!(json["report"]["status"], "partial");
        assert_eq!(json["report"]["kind"], "global-delivery-status");
        assert_eq!(json["report"]["recipients"][0]["action"], "failed");
        assert_eq!(
            json["report"]["per_message"]["reporting_mta"],
            serde_json::json!({"type": "dns", "value": "mx.example.net"})
        );
    }

    #[test]
    fn a_minimal_bounce_event_reads_with_defaults_and_unknown_actions_are_kept_as_such() {
        let id = Uuid::now_v7();
        let json = format!(
            r#"{{"version":1,"instance":"default","bounce_id":"{id}",
                "received_at":"2026-11-25T08:00:00Z","source":"submit","raw":"","raw_size":0,
                "report":{{"recipients":[{{"action":"exploded"}}],"from_the_future":1}}}}"#
        );
        let event: BounceEvent = decode(json.as_bytes()).unwrap();
        assert_eq!(event.bounce_id, BounceId(id));
        assert_eq!(event.report.status, ParseStatus::Unparseable);
        assert_eq!(event.report.kind, ReportKind::Other);
        assert!(!event.report.returned.present);
        assert_eq!(event.report.recipients[0].action, Some(DsnAction::Unknown));
        assert_eq!(TypedValue::new("", "x").to_line(), "x");
        assert_eq!(TypedValue::new("rfc822", "a@b").to_line(), "rfc822; a@b");
    }

    #[test]
    fn unknown_fields_are_ignored_and_missing_optional_fields_default() {
        let id = Uuid::now_v7();
        let json = format!(
            r#"{{"version":1,"message_id":"{id}","module":"m","action":"reject","score":3.5,
                "from_the_future":{{"x":1}}}}"#
        );
        let result: CheckResult = decode(json.as_bytes()).unwrap();
        assert_eq!(result.action, Action::Reject);
        assert_eq!(result.message, "");
        assert!(result.changes.is_empty());
    }

    #[test]
    fn the_enhanced_status_is_optional_and_round_trips() {
        // a result from before the field: none
        let id = Uuid::now_v7();
        let old = format!(
            r#"{{"version":1,"message_id":"{id}","module":"srs","action":"reject","score":100.0,
                "message":"no such user","determinants":{{}},"duration":0.001}}"#
        );
        let result: CheckResult = decode(old.as_bytes()).unwrap();
        assert_eq!(result.enhanced_status, None);
        // none is not written, so an older reader sees the result as it always did
        let json = serde_json::to_value(&result).unwrap();
        assert!(json.get("enhanced_status").is_none(), "{json}");
        let mut refused = result;
        refused.enhanced_status = Some("5.1.1".into());
        let bytes = encode(&refused);
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["enhanced_status"], "5.1.1");
        let back: CheckResult = decode(&bytes).unwrap();
        assert_eq!(back, refused);
    }

    #[test]
    fn another_major_version_is_refused_with_its_number() {
        let json = br#"{"version":2,"something":"else"}"#;
        let err = decode::<CheckResult>(json).unwrap_err();
        assert!(matches!(err, WireError::Version { found: 2 }), "{err}");
    }

    #[test]
    fn actions_are_lower_case_on_the_wire() {
        for action in Action::ALL {
            let json = serde_json::to_string(&action).unwrap();
            assert_eq!(json, format!("\"{}\"", action.as_str()));
            assert_eq!(action.as_str().parse::<Action>().unwrap(), action);
        }
    }

    mod proptests {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn any_bytes_decode_to_a_result_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
                let _ = decode::<CheckResult>(&bytes);
                let _ = decode::<AuditEvent>(&bytes);
            }

            #[test]
            fn content_of_any_bytes_round_trips(content in proptest::collection::vec(any::<u8>(), 0..512), header in ".*") {
                let mut request = sample_request();
                request.content = Some(content);
                request.headers = vec![Header::new("X", header)];
                let back: CheckRequest = decode(&encode(&request)).unwrap();
                prop_assert_eq!(back, request);
            }
        }
    }
}
