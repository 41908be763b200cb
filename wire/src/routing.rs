//! The broker's names: exchanges, queues and routing keys every process agrees on. The
//! declarations (arguments, bindings) and connecting are `platform::broker`'s; these are only
//! the names, so that a process that cannot link lapin (a tool, a test) can still speak them.
//!
//! Topology (DESIGN.md "Processes and the broker"):
//! - `cluegetter.check`, a direct exchange; one queue `cluegetter.check.<module>` per module,
//!   bound with the module name. Workers on any host compete on it.
//! - each gateway's own exclusive, server-named reply queue.
//! - `cluegetter.audit`, a durable fanout exchange; the auditor's `cluegetter.audit.archive` and
//!   the quotas settle queue are bound to it; refused events go to `cluegetter.audit.dead-letter`.
//! - `cluegetter.bounce`, a durable fanout exchange for bounce events (bounce-ingest → auditor),
//!   with `cluegetter.bounce.archive` and `cluegetter.bounce.dead-letter`.
//! - `cluegetter.delivery`, a durable fanout exchange for delivery events (bounce-ingest
//!   `maillog` → auditor), with `cluegetter.delivery.archive` and `cluegetter.delivery.dead-letter`.

pub const CHECK_EXCHANGE: &str = "cluegetter.check";
pub const AUDIT_EXCHANGE: &str = "cluegetter.audit";
pub const AUDIT_QUEUE: &str = "cluegetter.audit.archive";
pub const AUDIT_DEAD_LETTER_QUEUE: &str = "cluegetter.audit.dead-letter";
pub const BOUNCE_EXCHANGE: &str = "cluegetter.bounce";
pub const BOUNCE_QUEUE: &str = "cluegetter.bounce.archive";
pub const BOUNCE_DEAD_LETTER_QUEUE: &str = "cluegetter.bounce.dead-letter";
pub const DELIVERY_EXCHANGE: &str = "cluegetter.delivery";
pub const DELIVERY_QUEUE: &str = "cluegetter.delivery.archive";
pub const DELIVERY_DEAD_LETTER_QUEUE: &str = "cluegetter.delivery.dead-letter";
/// The quotas module's copy of the audit events, from which it settles its reservations.
pub const SETTLE_QUEUE: &str = "cluegetter.quotas.settle";

/// The queue a module's workers consume.
pub fn check_queue(module: &str) -> String {
    format!("cluegetter.check.{module}")
}
