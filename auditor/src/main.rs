//! `auditor [--config FILE] [--log-level LEVEL] [migrate|run|dead-letters ...]`: parses the
//! command line, loads the configuration, starts logging and metrics, and calls the library.
//! Nothing else.
//!
//! Exit codes: 0 after a clean shutdown or migration, 1 on a failure, 2 on a bad command line
//! or configuration.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use platform::backoff::Backoff;
use platform::cli::CommonArgs;
use platform::config::Config;
use tokio_util::sync::CancellationToken;

/// Stores cluegetter's audit events in the MySQL/MariaDB archive.
#[derive(Debug, Parser)]
#[command(name = "auditor", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Clone, Subcommand)]
enum Command {
    /// Create the database if missing, apply the schema migrations, and exit.
    Migrate,
    /// Migrate, then consume audit events until SIGTERM or SIGINT (the default).
    Run,
    /// The events that could not be stored (queue `cluegetter.audit.dead-letter`).
    #[command(subcommand)]
    DeadLetters(DeadLetters),
    /// The web interface's tools.
    #[command(subcommand)]
    Web(Web),
}

#[derive(Debug, Clone, Subcommand)]
enum Web {
    /// Add a user: asks for the password (twice, not echoed; from stdin, one line, when that
    /// is not a terminal) and prints the `[[auditor.web-users]]` block to paste into the
    /// configuration.
    AddUser {
        /// The user name, as typed at the login form.
        name: String,
        /// What the user may see: admin (everything), domain-admin (only the messages,
        /// bounces and quotas of its --domain's), auditor (everything but headers and bodies).
        #[arg(long, value_enum, default_value_t = auditor::web::auth::Role::Admin)]
        role: auditor::web::auth::Role,
        /// A domain of a domain-admin (repeat for several); only with --role domain-admin.
        #[arg(long = "domain", value_name = "DOMAIN")]
        domains: Vec<String>,
    },
    /// Ask for a password (not echoed; from stdin, one line, when that is not a terminal) and
    /// print its argon2 hash for `[[auditor.web-users]] password-hash`.
    HashPassword,
}

#[derive(Debug, Clone, Copy, Subcommand)]
enum DeadLetters {
    /// Print how many events are dead-lettered.
    Count,
    /// Print the first dead-lettered events with their reasons (they stay in the queue).
    Show {
        /// How many to print.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// Move dead-lettered events back to the archive queue, once the cause is fixed; prints
    /// how many were moved. Events dead-lettered again meanwhile are not taken again.
    Replay {
        /// Move at most this many (default: all).
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    platform::cli::run("auditor", &cli.common, |config| run(command, config))
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    if let Command::DeadLetters(action) = command {
        return dead_letters(action, &config).await;
    }
    match &command {
        Command::Web(Web::HashPassword) => {
            let password = read_password(false)?;
            println!("{}", auditor::web::hash_password(&password)?);
            return Ok(());
        }
        Command::Web(Web::AddUser {
            name,
            role,
            domains,
        }) => {
            auditor::web::auth::check_user_name(name).map_err(anyhow::Error::msg)?;
            // the role and domains are checked before the password is asked for
            auditor::web::auth::user_toml(name, "", *role, domains).map_err(anyhow::Error::msg)?;
            let password = read_password(true)?;
            let hash = auditor::web::hash_password(&password)?;
            let block = auditor::web::auth::user_toml(name, &hash, *role, domains)
                .map_err(anyhow::Error::msg)?;
            print!("{block}");
            return Ok(());
        }
        _ => {}
    }
    let shutdown = CancellationToken::new();
    platform::shutdown::cancel_on_signal(shutdown.clone(), "finishing the batch in hand");
    async {
        if matches!(command, Command::Run) {
            platform::telemetry::serve_metrics(config.auditor.metrics_listen)
                .map_err(anyhow::Error::msg)?;
        }
        if !matches!(command, Command::Run) {
            migrate_with_retry(&config, &shutdown, Schema::Migrate).await?;
            return Ok(());
        }
        // The web interface first, on its own listener and its own runtime (threads), so it
        // answers (503 for what needs the database) while the database is still away, and
        // neither it nor the consumer can starve the other. Same shutdown.
        let (_, web) = auditor::web::spawn(&config, shutdown.clone())?;
        // With a list of database nodes only `auditor migrate` changes the schema (see
        // `auditor::migrate::check`); with one server the auditor brings it up to date itself.
        let schema = if config.database.url.len() > 1 {
            Schema::Check
        } else {
            Schema::Migrate
        };
        let consumed = async {
            if !migrate_with_retry(&config, &shutdown, schema).await? {
                return Ok(());
            }
            auditor::run(config, shutdown.clone()).await
        }
        .await;
        shutdown.cancel();
        let served = tokio::task::spawn_blocking(move || web.join())
            .await
            .context("cannot wait for the web interface")?
            .map_err(|_| anyhow::anyhow!("the web interface panicked"))?;
        consumed.and(served.context("the web interface failed"))
    }
    .await
}

async fn dead_letters(action: DeadLetters, config: &Config) -> anyhow::Result<()> {
    let url = &config.broker.url;
    match action {
        DeadLetters::Count => println!("{}", auditor::dead_letters::count(url).await?),
        DeadLetters::Show { limit } => {
            let (total, shown) = auditor::dead_letters::show(url, limit).await?;
            println!(
                "{total} dead-lettered event(s){}",
                if shown.len() < total as usize {
                    format!(", the first {}:", shown.len())
                } else {
                    String::new()
                }
            );
            for letter in shown {
                println!(
                    "{}  queue id {}  {} bytes  replayed {} time(s)\n    {}",
                    letter.message_id, letter.queue_id, letter.bytes, letter.replays, letter.reason
                );
            }
        }
        DeadLetters::Replay { limit } => {
            let moved = auditor::dead_letters::replay(url, limit).await?;
            println!(
                "{moved} event(s) moved back to {}",
                platform::broker::AUDIT_QUEUE
            );
        }
    }
    Ok(())
}

/// A password for `auditor web hash-password` and `add-user`: asked on the terminal without
/// echo (twice when `confirm`), or one line from stdin when that is not a terminal.
fn read_password(confirm: bool) -> anyhow::Result<String> {
    use std::io::IsTerminal as _;
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let password = line.trim_end_matches(['\r', '\n']).to_owned();
        anyhow::ensure!(!password.is_empty(), "empty password on stdin");
        return Ok(password);
    }
    let password = auditor::web::terminal::ask_hidden("Password: ")?;
    anyhow::ensure!(!password.is_empty(), "empty password");
    if confirm {
        let again = auditor::web::terminal::ask_hidden("Password again: ")?;
        anyhow::ensure!(again == password, "the passwords differ");
    }
    Ok(password)
}

/// What the auditor does to the schema before it consumes.
#[derive(Clone, Copy, Debug)]
enum Schema {
    /// Brings it up to date (`auditor migrate`; `run` with one database server).
    Migrate,
    /// Only waits until it is up to date (`run` with a list of nodes).
    Check,
}

/// Applies the migrations (or checks the schema), retrying with backoff while the database is
/// unreachable or, when checking, behind. Returns false when shutdown came first.
async fn migrate_with_retry(
    config: &Config,
    shutdown: &CancellationToken,
    schema: Schema,
) -> anyhow::Result<bool> {
    let mut backoff = Backoff::starting_at(
        Duration::from_millis(500),
        config.broker.reconnect_max_backoff,
    );
    loop {
        let outcome = match schema {
            Schema::Migrate => auditor::migrate(config.database.url.clone()).await,
            Schema::Check => auditor::migrate::check(config.database.url.clone()).await,
        };
        match outcome {
            Ok(()) => return Ok(true),
            Err(error) if error.is_transient() => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    error = format!("{:#}", anyhow::Error::new(error)),
                    retry_in = ?delay,
                    "the database schema is not ready yet; retrying"
                );
                if !backoff.sleep_for(delay, shutdown).await {
                    return Ok(false);
                }
            }
            Err(error) => return Err(error).context("cannot bring the database schema up to date"),
        }
    }
}
