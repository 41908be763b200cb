//! What crosses the broker between cluegetter's processes, and nothing else.
//!
//! Layout:
//! - [`contract`]: the messages (check requests and results, audit events, bounce events,
//!   delivery events), with
//!   the versioning rule. The only place wire types are defined.
//! - [`decision`]: "decided by", which modules a recorded verdict rests on (a pure function of
//!   an audit event, shared by the reputation counters and the archive's search).
//! - [`routing`]: the exchange, queue and routing-key names every process agrees on.
//!
//! **Architecture invariant**: no tokio, lapin, sqlx or configuration here; what every process
//! runs on (config, broker and database plumbing, telemetry) is the `platform` crate's.

pub mod contract;
pub mod decision;
pub mod routing;

pub use contract::{
    Action, AuditEvent, AuditMessage, AuditResult, AuditVerdict, BounceEvent, BounceId,
    BounceSource, CheckRequest, CheckResult, CheckStage, DeliveryEvent, DeliveryReport,
    DeliveryStatus, Envelope, Header, HeaderAt, MessageId, MilterChanges, ModuleName,
    RejectedRecipient, SessionInfo, TlsInfo, WIRE_VERSION,
};
