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

/// Serves Prometheus `/metrics` on `addr` (any path answers; loopback by default, no login) and
/// returns the address it serves on. Port 0 picks a free port, so that several replicas on one
/// host (`docker-compose up --scale check-workers=N` with host networking) do not fight over one
/// port; each process logs the port it got.
///
/// # Errors
/// The address cannot be bound, or a recorder is already installed.
pub fn serve_metrics(addr: SocketAddr) -> Result<SocketAddr, String> {
    // The exporter binds before it installs its recorder, so a port taken between the probe
    // and the exporter's own bind can simply be probed again.
    let tries = if addr.port() == 0 { 5 } else { 1 };
    let mut last_error = String::new();
    for _ in 0..tries {
        let target = if addr.port() == 0 {
            free_port(addr).map_err(|e| format!("cannot serve metrics on {addr}: {e}"))?
        } else {
            addr
        };
        match metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(target)
            .install()
        {
            Ok(()) => {
                tracing::info!(metrics_listen = %target, "serving /metrics");
                crate::database::describe_metrics();
                return Ok(target);
            }
            Err(e) => last_error = format!("cannot serve metrics on {target}: {e}"),
        }
    }
    Err(last_error)
}

/// A port on `addr`'s interface that is free now (the kernel's choice for port 0).
fn free_port(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    std::net::TcpListener::bind(addr)?.local_addr()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn port_zero_becomes_a_concrete_free_port() {
        let addr = free_port(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        assert_ne!(addr.port(), 0);
        assert!(addr.ip().is_loopback());
    }
}
