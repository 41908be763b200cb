//! `check-workers`: flags, configuration, logging, metrics and signals; then
//! [`check_workers::run`]. `check-workers quota …`, `check-workers geoip …` and
//! `check-workers reputation …` run an operator command instead ([`check_workers::quota_cli`],
//! [`check_workers::geoip_cli`], [`check_workers::reputation_cli`]).

use std::process::ExitCode;

use clap::Parser;
use platform::cli::CommonArgs;
use tokio_util::sync::CancellationToken;

/// Answers the gateway's check requests for the enabled modules (competing consumers of
/// `cluegetter.check.<module>`; run as many as you like, on any host).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
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
    /// The geoip module's history: show or forget a login's countries.
    #[command(subcommand)]
    Geoip(check_workers::geoip_cli::GeoipCommand),
    /// The reputation counters: show a factor value's counts and the score they give.
    #[command(subcommand)]
    Reputation(check_workers::reputation_cli::ReputationCommand),
}

fn main() -> ExitCode {
    let args = Args::parse();
    match args.command {
        Some(Command::Quota(command)) => {
            platform::cli::run("check-workers quota", &args.common, async |config| {
                let mut stdout = std::io::stdout().lock();
                check_workers::quota_cli::run(&config, command, &mut stdout).await
            })
        }
        Some(Command::Geoip(command)) => {
            platform::cli::run("check-workers geoip", &args.common, async |config| {
                let mut stdout = std::io::stdout().lock();
                check_workers::geoip_cli::run(&config, command, &mut stdout).await
            })
        }
        Some(Command::Reputation(command)) => {
            platform::cli::run("check-workers reputation", &args.common, async |config| {
                let mut stdout = std::io::stdout().lock();
                check_workers::reputation_cli::run(&config, command, &mut stdout).await
            })
        }
        None => platform::cli::run("check-workers", &args.common, |config| {
            serve(config, args.modules)
        }),
    }
}

async fn serve(
    config: platform::config::Config,
    modules: Option<Vec<String>>,
) -> anyhow::Result<()> {
    platform::telemetry::serve_metrics(config.check_workers.metrics_listen)
        .map_err(anyhow::Error::msg)?;
    let shutdown = CancellationToken::new();
    platform::shutdown::cancel_on_signal(shutdown.clone(), "finishing checks in flight");
    check_workers::run(config, modules, shutdown).await
}
