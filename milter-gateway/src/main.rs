//! `milter-gateway`: flags, configuration, logging; then [`milter_gateway::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The milter Postfix talks to (smtpd_milters = inet:127.0.0.1:10033).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); without one, the defaults (see cluegetter.example.toml).
    #[arg(long, env = "CLUEGETTER_CONFIG")]
    config: Option<PathBuf>,
    /// Log level or tracing filter (RUST_LOG wins when set).
    #[arg(long, env = "CLUEGETTER_LOG_LEVEL", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config =
        match platform::config::load(args.config.as_deref(), platform::config::env_overrides()) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("milter-gateway: {error}");
                return ExitCode::from(2);
            }
        };
    if let Err(error) = platform::telemetry::init_logging(&args.log_level) {
        eprintln!("milter-gateway: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("milter-gateway: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("milter-gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: platform::config::Config) -> anyhow::Result<()> {
    platform::telemetry::serve_metrics(config.gateway.metrics_listen)
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    milter_gateway::run(config, listener, shutdown).await
}

/// SIGTERM or SIGINT: stop taking connections and finish the messages in flight.
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: finishing messages in flight"),
                _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: finishing messages in flight"),
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops the gateway");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    shutdown.cancel();
}
