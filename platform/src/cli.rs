//! What every binary's `main` does before its own work: the flags every binary takes, loading
//! the configuration, starting logging, and running the async part on a runtime with one exit
//! status convention (0 done, 1 failed, 2 bad command line or configuration).

use std::fmt::Display;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::config::{self, Config};

/// The flags of every binary, accepted before or after any subcommand
/// (`bounce-ingest submit --config FILE`, as an alias pipe is naturally written).
#[derive(clap::Args, Clone, Debug)]
pub struct CommonArgs {
    /// Configuration file (TOML); without one, the defaults (see cluegetter.example.toml).
    #[arg(long, env = "CLUEGETTER_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as
    /// `info,milter_gateway=debug`; `RUST_LOG` wins when set. Logs go to stderr.
    #[arg(
        long,
        env = "CLUEGETTER_LOG_LEVEL",
        value_name = "LEVEL",
        default_value = "info",
        global = true
    )]
    pub log_level: String,
}

impl CommonArgs {
    /// The configuration (file, defaults, `CLUEGETTER_*` overrides), with logging started.
    ///
    /// # Errors
    /// The line to print before exiting with [`EXIT_USAGE`]: the file is unreadable or
    /// invalid, or the log level is not a filter.
    pub fn load(&self) -> Result<Config, String> {
        let config = config::load(self.config.as_deref(), config::env_overrides())
            .map_err(|error| error.to_string())?;
        crate::telemetry::init_logging(&self.log_level)?;
        Ok(config)
    }
}

/// Exit status for a bad command line or configuration.
pub const EXIT_USAGE: u8 = 2;

/// Loads the configuration as [`CommonArgs::load`] does and runs `body` on a new runtime;
/// prints what went wrong as `program: …` (the cause chain on one line) and returns the exit
/// status.
pub fn run<F, Fut, E>(program: &str, args: &CommonArgs, body: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let config = match args.load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("{program}: {error}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    block_on(program, body(config))
}

/// Runs `future` on a new multi-thread runtime; an error is logged (stderr) as `{error:#}`.
pub fn block_on<Fut, E>(program: &str, future: Fut) -> ExitCode
where
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("{program}: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(future) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // logging goes to stderr: this is the one line an operator sees
            tracing::error!("{error:#}");
            ExitCode::FAILURE
        }
    }
}
