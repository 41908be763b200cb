//! What every cluegetter process runs on, written once.
//!
//! Layout:
//! - [`config`]: the one configuration file per host, its defaults, environment overrides and
//!   validation; one file per section.
//! - [`broker`]: connecting to RabbitMQ and declaring the topology (the names are
//!   `wire::routing`'s).
//! - [`backoff`]: the one retry pause (exponential, capped, optionally jittered).
//! - [`database`]: the one way to open MariaDB (UTC, strict mode, READ COMMITTED, lazy).
//! - [`shutdown`]: the one SIGTERM/SIGINT handler.
//! - [`cli`]: the flags every binary takes and the steps every `main` runs.
//! - [`telemetry`]: logging and the Prometheus endpoint for the binaries.
//! - [`quotas`]: the quota selectors, which check-workers counts by and the auditor shows.
//! - [`reputation`]: the reputation factors, their values and how a recorded message counts,
//!   which check-workers looks up and the auditor counts.
//!
//! **Architecture invariant**: `platform` depends on no process crate; it knows nothing of
//! milter or the archive's tables, and of the modules only their configuration and the closed
//! sets that two processes share (quota selectors, reputation factors).

use std::error::Error as StdError;

pub mod backoff;
pub mod broker;
pub mod cli;
pub mod config;
pub mod database;
pub mod quotas;
pub mod reputation;
pub mod shutdown;
pub mod telemetry;

/// The error and its causes on one line, `outer: inner: innermost` (anyhow's `{:#}`), for logs
/// and for the `error` determinant of a module result.
pub fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some libraries repeat their source in their own message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
