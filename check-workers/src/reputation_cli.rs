//! `check-workers reputation show <factor> <value>`: the counts the reputation module would
//! read for a value now (the days `[reputation] window` overlaps, summed and per day), its
//! refused ratio, mean reject score and the score it would give, as the determinants show them.
//! Talks to `[database]` only; needs neither the broker nor the module enabled.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use platform::config::Config;
use platform::reputation::{Factor, Tally, normalise};

use crate::modules::reputation::policy::{Judged, Thresholds, duration_text, row, score};
use crate::modules::reputation::store_for;

/// `check-workers reputation …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum ReputationCommand {
    /// Show a value's counts over the window and the score they give.
    Show {
        /// client_address, client_network, sender_domain or sasl_username.
        factor: Factor,
        /// The value: an address; an address or network for client_network; a domain; a login.
        value: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

/// Runs one reputation command, writing its report to `out`.
///
/// # Errors
/// The value cannot be read, or the database cannot be reached or refuses.
pub async fn run(
    config: &Config,
    command: ReputationCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store =
        store_for(config, Duration::from_secs(10)).context("[database] url cannot be used")?;
    let settings = &config.reputation;
    match command {
        ReputationCommand::Show {
            factor,
            value,
            json,
        } => {
            let value =
                normalise(factor, &value, settings.prefixes()).map_err(anyhow::Error::msg)?;
            let days = store
                .days(factor, &value, settings.window)
                .await
                .with_context(|| format!("cannot read the counts of {factor} {value}"))?;
            let mut counts = Tally::default();
            for (_, day) in &days {
                counts.add(day);
            }
            let thresholds = Thresholds::from_config(settings);
            let judged = Judged {
                factor,
                value,
                score: score(&counts, &thresholds),
                counts,
            };
            if json {
                let mut report = row(&judged);
                report["window"] = serde_json::json!(duration_text(settings.window));
                report["days"] = days
                    .iter()
                    .map(|(day, t)| {
                        serde_json::json!({
                            "day": day.to_string(),
                            "messages": t.messages,
                            "rejected": t.rejected,
                            "tempfailed": t.tempfailed,
                            "permitted": t.permitted,
                        })
                    })
                    .collect();
                serde_json::to_writer_pretty(&mut *out, &report)?;
                writeln!(out)?;
            } else {
                write!(out, "{}", render(&judged, settings.window, &days))?;
            }
        }
    }
    Ok(())
}

/// The text form of `reputation show`.
pub fn render(judged: &Judged, window: Duration, days: &[(chrono::NaiveDate, Tally)]) -> String {
    let c = &judged.counts;
    let score = match judged.score {
        Some(score) => format!("{score:.2}"),
        None => "none (too few judged messages)".to_owned(),
    };
    let mut text = format!(
        "{} {} within {}: {} messages, {} rejected, {} tempfailed, {} permitted \
         ({} judged); refused ratio {:.2}, mean reject score {:.2}; score {score}\n",
        judged.factor,
        judged.value,
        duration_text(window),
        c.messages,
        c.rejected,
        c.tempfailed,
        c.permitted,
        c.judged(),
        c.refused_ratio(),
        c.mean_reject_score(),
    );
    for (day, t) in days {
        text.push_str(&format!(
            "  {day}  {} messages, {} rejected, {} tempfailed, {} permitted\n",
            t.messages, t.rejected, t.tempfailed, t.permitted
        ));
    }
    text
}
