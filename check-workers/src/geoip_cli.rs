//! `check-workers geoip …`: the operator's view of the geoip module's history.
//!
//! - `geoip show LOGIN`: the countries the login sent from within `[geoip] window`, with first
//!   and last seen and the messages counted;
//! - `geoip forget LOGIN`: clears the login's history (after a user's real trip), so the next
//!   message starts it anew.
//!
//! Both talk to `[database]` directly; neither needs the broker nor the MaxMind file.

use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use platform::config::Config;

use crate::modules::geoip::policy::{Seen, duration_text, normalise_login};
use crate::modules::geoip::store_for;

/// `check-workers geoip …`
#[derive(clap::Subcommand, Debug, Clone)]
pub enum GeoipCommand {
    /// Show the countries a login (or sender) sent from within the window.
    Show {
        /// The SASL login (compared case-insensitively).
        login: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Forget a login's countries.
    Forget {
        /// The SASL login (compared case-insensitively).
        login: String,
    },
}

/// Runs one geoip command, writing its report to `out`.
///
/// # Errors
/// The database cannot be reached or refuses.
pub async fn run(
    config: &Config,
    command: GeoipCommand,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let store =
        store_for(config, Duration::from_secs(10)).context("[database] url cannot be used")?;
    match command {
        GeoipCommand::Show { login, json } => {
            let login = normalise_login(&login);
            let history = store
                .show(&login, config.geoip.window)
                .await
                .with_context(|| format!("cannot read the countries of {login}"))?;
            if json {
                serde_json::to_writer_pretty(
                    &mut *out,
                    &serde_json::json!({ "login": login, "countries": history }),
                )?;
                writeln!(out)?;
            } else {
                write!(out, "{}", render(&login, config.geoip.window, &history))?;
            }
        }
        GeoipCommand::Forget { login } => {
            let login = normalise_login(&login);
            let n = store
                .forget(&login)
                .await
                .with_context(|| format!("cannot forget the countries of {login}"))?;
            writeln!(out, "forgot {n} countries of {login}")?;
        }
    }
    Ok(())
}

/// The text form of `geoip show`.
pub fn render(login: &str, window: Duration, history: &[Seen]) -> String {
    let mut text = format!(
        "{login}: {} countries within {}\n",
        history.len(),
        duration_text(window)
    );
    for seen in history {
        text.push_str(&format!(
            "  {:<7} first {}  last {}  {} messages\n",
            seen.country,
            seen.first_seen.format("%Y-%m-%d %H:%M:%S UTC"),
            seen.last_seen.format("%Y-%m-%d %H:%M:%S UTC"),
            seen.messages
        ));
    }
    text
}
