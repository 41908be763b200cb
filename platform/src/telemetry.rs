//! Logging and metrics set-up shared by the binaries (not called by the libraries' `run`, so
//! tests can run several processes in one address space).

use std::io::IsTerminal as _;
use std::net::SocketAddr;

use tracing_subscriber::EnvFilter;

/// Logs to stderr at `level` (`error`, `warn`, `info`, `debug`, `trace`, or a full
/// `tracing` filter such as `info,milter_gateway=debug`); `RUST_LOG` wins when set.
///
/// # Errors
/// The level is not a valid filter.
pub fn init_logging(level: &str) -> Result<(), String> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(from_env) if !from_env.is_empty() => EnvFilter::try_new(from_env),
        _ => EnvFilter::try_new(level),
    }
    .map_err(|e| format!("invalid log level `{level}`: {e}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // colour codes only for a person at a terminal, never into a log file or journal
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init()
        .map_err(|e| format!("cannot set up logging: {e}"))
}

/// Serves Prometheus `/metrics` on `addr` (any path answers; loopback by default, no login).
///
/// # Errors
/// The address cannot be bound, or a recorder is already installed.
pub fn serve_metrics(addr: SocketAddr) -> Result<(), String> {
    metrics_exporter_prometheus::PrometheusBuilder::new()
        .with_http_listener(addr)
        .install()
        .map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?;
    crate::database::describe_metrics();
    Ok(())
}
