//! `bounce-ingest [--config FILE] [--log-level LEVEL] [run | submit [--via HOST:PORT] |
//! maillog FILE|-]`: parses
//! the command line, loads the configuration, starts logging (and metrics for `run`), and calls
//! the library. Nothing else.
//!
//! Exit codes. `run`: 0 after a clean shutdown, 1 on a failure, 2 on a bad command line or
//! configuration. `submit`: 0 once the report is safe; 75 (EX_TEMPFAIL: Postfix keeps the report
//! and retries) on any failure, a bad configuration or command line included, since a report
//! bounced back to MAILER-DAEMON is lost; 66 (EX_NOINPUT) when stdin was empty.

use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context as _;
use bounce_ingest::submit::{EX_TEMPFAIL, Submitted};
use clap::{Parser, Subcommand};
use platform::cli::CommonArgs;
use platform::config::Config;
use tokio_util::sync::CancellationToken;

/// Receives Postfix's delivery reports (bounces, delay warnings) for cluegetter.
#[derive(Debug, Parser)]
#[command(name = "bounce-ingest", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Serve the TCP listener and publish what it receives (the default).
    Run,
    /// Read one report on stdin and hand it on (a Postfix alias pipe); exit 0 only when it is
    /// safe, 75 otherwise so that Postfix retries.
    Submit {
        /// Hand the report to a running listener instead of RabbitMQ (no broker credentials
        /// needed where the pipe runs).
        #[arg(long, value_name = "HOST:PORT")]
        via: Option<SocketAddr>,
    },
    /// Follow Postfix's log (its `maillog_file`, by position, rotation-safe) or read it from
    /// a pipe (`-`: `journalctl -f -u postfix -o short-iso | bounce-ingest maillog -`) and
    /// publish a delivery event per recipient and attempt (sent, deferred, bounced).
    Maillog {
        /// The log file to follow, or `-` for standard input.
        #[arg(value_name = "FILE|-")]
        source: String,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            let submitting = std::env::args_os().any(|a| a == "submit");
            if submitting
                && !matches!(
                    error.kind(),
                    ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
                )
            {
                // a report must not be bounced for a typo in the alias: keep it queued
                let _ = error.print();
                return ExitCode::from(EX_TEMPFAIL);
            }
            error.exit();
        }
    };
    let command = cli.command.unwrap_or(Command::Run);
    match command {
        Command::Run => platform::cli::run("bounce-ingest", &cli.common, serve),
        Command::Maillog { source } => {
            let source = bounce_ingest::follow::Source::from_arg(&source);
            platform::cli::run("bounce-ingest", &cli.common, move |config| {
                maillog(config, source)
            })
        }
        Command::Submit { via } => {
            // every failure, a bad configuration included, keeps the report queued in Postfix
            let config = match cli.common.load() {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("bounce-ingest: {error}");
                    return ExitCode::from(EX_TEMPFAIL);
                }
            };
            match tokio::runtime::Runtime::new() {
                Ok(runtime) => runtime.block_on(submit(config, via)),
                Err(error) => {
                    eprintln!("bounce-ingest: cannot start the async runtime: {error}");
                    ExitCode::from(EX_TEMPFAIL)
                }
            }
        }
    }
}

async fn submit(config: Config, via: Option<SocketAddr>) -> ExitCode {
    let mut stdin = tokio::io::stdin();
    match bounce_ingest::submit::submit(&config, &mut stdin, via).await {
        Ok(Submitted::Published(bounce_id)) => {
            tracing::info!(%bounce_id, "delivery report handed to RabbitMQ");
            ExitCode::SUCCESS
        }
        Ok(Submitted::Spooled(answer)) => {
            tracing::info!(%answer, "delivery report handed to the listener");
            ExitCode::SUCCESS
        }
        Err(error) => {
            let code = error.exit_code();
            tracing::error!(
                exit = code,
                "delivery report not handed on: {:#}",
                anyhow::Error::new(error)
            );
            ExitCode::from(code)
        }
    }
}

async fn maillog(config: Config, source: bounce_ingest::follow::Source) -> anyhow::Result<()> {
    platform::telemetry::serve_metrics(config.bounce_ingest.maillog_metrics_listen)
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    platform::shutdown::cancel_on_signal(shutdown.clone(), "stopping after the lines in hand");
    bounce_ingest::follow::run(config, source, shutdown).await
}

async fn serve(config: Config) -> anyhow::Result<()> {
    platform::telemetry::serve_metrics(config.bounce_ingest.metrics_listen)
        .map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.bounce_ingest.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.bounce_ingest.listen))?;
    let shutdown = CancellationToken::new();
    platform::shutdown::cancel_on_signal(shutdown.clone(), "finishing the reports being read");
    bounce_ingest::run(config, listener, shutdown).await
}
