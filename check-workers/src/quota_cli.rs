//! `check-workers quota …`: the operator's view of the quota tables.
//!
//! - `quota show <selector> <value>`: the value's quota rows in this instance and, per period,
//!   what a check would count right now (kept and reserved units, and expired reservations that
//!   no longer count); or, for a value without rows, the regex rows that will create one.
//! - `quota import [FILE]`: ClueGetter's rows, as the `mysql` client prints them (boxed, as in
//!   ClueGetter's README, or `--batch`), one `<table>:` section per table; all or nothing.
//!
//! Both talk to `[database]` directly; neither needs the broker.

use std::io::{Read as _, Write};
use std::path::PathBuf;

use anyhow::Context as _;
use platform::config::Config;

use crate::modules::quotas::store::Shown;
use crate::modules::quotas::{QuotaStore, Selector, import};

/// `check-workers quota …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum QuotaCommand {
    /// Show a factor value's quotas and their current counts per period.
    Show {
        /// client_address, sender, sender_domain, recipient, recipient_domain or sasl_username.
        #[arg(value_parser = parse_selector)]
        selector: Selector,
        /// The factor value (compared case-insensitively).
        value: String,
        /// The instance whose quotas to show (default: the configuration's `instance`).
        #[arg(long)]
        instance: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Import ClueGetter quota rows (mysql client output, sections `quota_class:`,
    /// `quota_profile:`, `quota_profile_period:`, `quota:`), in one transaction.
    Import {
        /// The file to read; standard input when absent or `-`.
        file: Option<PathBuf>,
    },
}

fn parse_selector(text: &str) -> Result<Selector, String> {
    text.parse()
}

/// Runs one quota command, writing its report to `out`.
///
/// # Errors
/// The database cannot be reached or refuses, or the import input cannot be read or parsed.
pub async fn run(
    config: &Config,
    command: QuotaCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store = QuotaStore::from_config(config).context("[database] url cannot be used")?;
    match command {
        QuotaCommand::Show {
            selector,
            value,
            instance,
            json,
        } => {
            let instance = instance.unwrap_or_else(|| config.instance.clone());
            let shown = store
                .show(&instance, selector, &value)
                .await
                .with_context(|| format!("cannot read the quotas of {selector} '{value}'"))?;
            if json {
                serde_json::to_writer_pretty(&mut *out, &shown)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", render(&shown))?;
            }
        }
        QuotaCommand::Import { file } => {
            let text = match file.as_deref() {
                None => read_stdin()?,
                Some(path) if path.as_os_str() == "-" => read_stdin()?,
                Some(path) => std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read {}", path.display()))?,
            };
            let tables = import::parse(&text).context("cannot read the quota rows")?;
            let counts = store
                .import(&tables)
                .await
                .context("nothing was imported")?;
            let summary: Vec<String> = counts
                .iter()
                .map(|(table, n)| format!("{n} {table}"))
                .collect();
            writeln!(out, "imported {}", summary.join(", "))?;
        }
    }
    Ok(())
}

fn read_stdin() -> anyhow::Result<String> {
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("cannot read standard input")?;
    Ok(text)
}

/// The text form of `quota show`.
pub fn render(shown: &Shown) -> String {
    let mut text = format!(
        "{} '{}' in instance {} at {} UTC\n",
        shown.selector, shown.value, shown.instance, shown.at
    );
    if shown.quotas.is_empty() {
        if shown.matching_regexes.is_empty() {
            text.push_str("no quota applies: not limited\n");
        }
        for regex in &shown.matching_regexes {
            text.push_str(&format!(
                "no row yet; regex quota {} `{}` (profile {} {}) matches: the next message creates one\n",
                regex.quota_id, regex.pattern, regex.profile_id, regex.profile
            ));
        }
    }
    for quota in &shown.quotas {
        let instigator = quota
            .instigator
            .map(|id| format!(", created by regex quota {id}"))
            .unwrap_or_default();
        text.push_str(&format!(
            "quota {} (profile {} {}{}):\n",
            quota.quota_id, quota.profile_id, quota.profile, instigator
        ));
        if quota.periods.is_empty() {
            text.push_str("  no periods: not limited\n");
        }
        for period in &quota.periods {
            text.push_str(&format!(
                "  {} of {} in {} (kept {}, reserved {}; {} in expired reservations not counted)\n",
                period.used,
                period.curb,
                platform::quotas::last_period(u64::from(period.period)),
                period.kept,
                period.reserved,
                period.expired
            ));
        }
    }
    text
}
