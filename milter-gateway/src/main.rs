//! `milter-gateway`: flags, configuration, logging; then [`milter_gateway::run`].

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use platform::cli::CommonArgs;
use tokio_util::sync::CancellationToken;

/// The milter Postfix talks to (smtpd_milters = inet:127.0.0.1:10033).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let args = Args::parse();
    platform::cli::run("milter-gateway", &args.common, serve)
}

async fn serve(config: platform::config::Config) -> anyhow::Result<()> {
    platform::telemetry::serve_metrics(config.gateway.metrics_listen)
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.gateway.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.gateway.listen))?;
    let shutdown = CancellationToken::new();
    platform::shutdown::cancel_on_signal(shutdown.clone(), "finishing messages in flight");
    milter_gateway::run(config, listener, shutdown).await
}
