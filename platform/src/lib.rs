//! What every cluegetter process runs on, written once.
//!
//! Layout:
//! - [`config`]: the one configuration file per host, its defaults, environment overrides and
//!   validation; one file per section.
//! - [`broker`]: connecting to RabbitMQ and declaring the topology (the names are
//!   `wire::routing`'s).
//! - [`telemetry`]: logging and the Prometheus endpoint for the binaries.
//!
//! **Architecture invariant**: `platform` depends on no process crate; it knows nothing of
//! milter, modules or the archive's tables.

pub mod broker;
pub mod config;
pub mod telemetry;
