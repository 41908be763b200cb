//! What every cluegetter process runs on, written once.
//!
//! Layout:
//! - [`config`]: the one configuration file per host, its defaults, environment overrides and
//!   validation; one file per section.
//! - [`broker`]: connecting to RabbitMQ and declaring the topology (the names are
//!   `wire::routing`'s).
//! - [`telemetry`]: logging and the Prometheus endpoint for the binaries.
//! - [`quotas`]: the quota selectors, which check-workers counts by and the auditor shows.
//!
//! **Architecture invariant**: `platform` depends on no process crate; it knows nothing of
//! milter or the archive's tables, and of the modules only their configuration and the closed
//! sets that two processes share (quota selectors).

pub mod broker;
pub mod config;
pub mod quotas;
pub mod telemetry;
