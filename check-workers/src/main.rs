//! `check-workers`: flags, configuration, logging, metrics and signals; then
//! [`check_workers::run`]. `check-workers quota …` runs an operator command instead
//! ([`check_workers::quota_cli`]).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// Answers the gateway's check requests for the enabled modules (competing consumers of
/// `cluegetter.check.<module>`; run as many as you like, on any host).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Configuration file (TOML); without one, the defaults (see cluegetter.example.toml).
    #[arg(long, env = "CLUEGETTER_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Log level or tracing filter (RUST_LOG wins when set).
    #[arg(
        long,
        env = "CLUEGETTER_LOG_LEVEL",
        default_value = "info",
        global = true
    )]
    log_level: String,
    /// Serve only these modules (comma-separated); each must be enabled in the configuration.
    #[arg(long, value_delimiter = ',')]
    modules: Option<Vec<String>>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// The quota tables: show a value's current counts, import ClueGetter's rows.
    #[command(subcommand)]
    Quota(check_workers::quota_cli::QuotaCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config =
        match platform::config::load(args.config.as_deref(), platform::config::env_overrides()) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("check-workers: {error}");
                return ExitCode::from(2);
            }
        };
    if let Err(error) = platform::telemetry::init_logging(&args.log_level) {
        eprintln!("check-workers: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("check-workers: cannot start the runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::Quota(command)) = args.command {
        let mut stdout = std::io::stdout().lock();
        return match runtime.block_on(check_workers::quota_cli::run(&config, command, &mut stdout))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("check-workers quota: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(serve(config, args.modules)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("check-workers: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(
    config: platform::config::Config,
    modules: Option<Vec<String>>,
) -> anyhow::Result<()> {
    platform::telemetry::serve_metrics(config.check_workers.metrics_listen)
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    check_workers::run(config, modules, shutdown).await
}

/// SIGTERM or SIGINT: stop consuming and finish the checks in flight; a second one exits at
/// once (the unacked requests go back to the queue when the connection drops).
async fn wait_for_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => Some(term),
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only Ctrl-C stops check-workers");
            None
        }
    };
    let next_signal = async |term: &mut Option<tokio::signal::unix::Signal>| match term {
        Some(term) => {
            tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = tokio::signal::ctrl_c() => "SIGINT",
            }
        }
        None => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    };
    let first = next_signal(&mut term).await;
    tracing::info!("{first}: finishing checks in flight");
    shutdown.cancel();
    let second = next_signal(&mut term).await;
    tracing::warn!("{second} again: exiting without waiting");
    std::process::exit(1);
}
