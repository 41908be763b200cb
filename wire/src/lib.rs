//! The parts every cluegetter process shares.
//!
//! Layout:
//! - [`contract`]: what crosses the broker (check requests and results, audit events, bounce
//!   events), with the versioning rule. The only place wire types are defined.
//! - [`config`]: the one configuration file per host, its defaults and environment overrides.
//! - [`broker`]: RabbitMQ connection with backoff and the exchange/queue topology.
//! - [`telemetry`]: logging and the Prometheus endpoint for the binaries.

pub mod broker;
pub mod config;
pub mod contract;
pub mod telemetry;

pub use contract::{
    Action, AuditEvent, AuditMessage, AuditResult, AuditVerdict, BounceEvent, BounceId,
    BounceSource, CheckRequest, CheckResult, CheckStage, DeliveryReport, Envelope, Header,
    HeaderAt, MessageId, MilterChanges, RejectedRecipient, SessionInfo, TlsInfo, WIRE_VERSION,
};
