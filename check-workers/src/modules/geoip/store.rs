//! The countries each login sent from, in MariaDB (`schema/0008_geoip.sql`,
//! `geoip_login_country`), shared by every worker on every host. All SQL of the module is here.
//!
//! One check is one transaction on the database's clock: upsert the login's lock row (country
//! `''`), which row-locks it, so two workers judging the same login take turns; delete the
//! login's countries older than the window; read the rest; [`decide`]; record the country only
//! when permitted. Conflicts InnoDB rolls back (deadlocks with a prune) are tried again.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use platform::config::Urls;
use platform::database::{ConflictRetries, Database, PoolSettings};
use sqlx::{MySqlConnection, Row as _};

use super::policy::{Decision, Seen, decide};

/// How often a transaction that conflicted is tried in all.
const ATTEMPTS: u32 = 4;

/// What one check found and did.
#[derive(Clone, Debug, PartialEq)]
pub struct Judged {
    pub decision: Decision,
    /// The login's countries within the window, after this message (a refused country is not
    /// among them).
    pub history: Vec<Seen>,
    /// The database's clock at the check.
    pub now: DateTime<Utc>,
}

/// The table, through a pool made on first use.
pub struct Store {
    pool: Database,
}

impl Store {
    /// A store for `urls` (one server or a Galera cluster's nodes); a check waits at most `acquire_timeout` for a connection.
    ///
    /// # Errors
    /// The URL cannot be parsed.
    pub fn new(
        urls: impl Into<Urls>,
        max_connections: u32,
        acquire_timeout: Duration,
    ) -> Result<Self, sqlx::Error> {
        let settings = PoolSettings::new(max_connections).acquire_timeout(acquire_timeout);
        Ok(Self {
            pool: Database::new(&urls.into(), settings)?,
        })
    }

    fn pool(&self) -> &Database {
        &self.pool
    }

    /// Judges a message of `login` (normalised) from `country` and records the country when it
    /// is permitted.
    ///
    /// # Errors
    /// The database failed (conflicts are tried again first); nothing was recorded.
    pub async fn judge(
        &self,
        login: &str,
        country: &str,
        window: Duration,
        max_countries: u32,
    ) -> Result<Judged, sqlx::Error> {
        let mut retries = ConflictRetries::new("geoip transaction", ATTEMPTS);
        loop {
            let outcome = self.try_judge(login, country, window, max_countries).await;
            if let Err(error) = &outcome
                && retries.again(error).await
            {
                continue;
            }
            // a node that is gone makes the database look for another before the next check
            return self.pool().report(outcome);
        }
    }

    async fn try_judge(
        &self,
        login: &str,
        country: &str,
        window: Duration,
        max_countries: u32,
    ) -> Result<Judged, sqlx::Error> {
        let mut tx = self.pool().begin().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&mut *tx)
            .await?;
        // The lock row: every check of this login queues here until the one before commits.
        sqlx::query(
            "INSERT INTO geoip_login_country (login, country, first_seen, last_seen, messages) \
             VALUES (?, '', ?, ?, 0) ON DUPLICATE KEY UPDATE last_seen = VALUES(last_seen)",
        )
        .bind(login)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let cutoff = cutoff(now, window);
        sqlx::query(
            "DELETE FROM geoip_login_country WHERE login = ? AND country <> '' AND last_seen < ?",
        )
        .bind(login)
        .bind(cutoff)
        .execute(&mut *tx)
        .await?;
        let mut history = read_history(&mut tx, login, None).await?;
        let decision = decide(&history, country, max_countries);
        if decision == Decision::Permit {
            sqlx::query(
                "INSERT INTO geoip_login_country (login, country, first_seen, last_seen, messages) \
                 VALUES (?, ?, ?, ?, 1) \
                 ON DUPLICATE KEY UPDATE messages = messages + 1, last_seen = VALUES(last_seen)",
            )
            .bind(login)
            .bind(country)
            .bind(now)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            match history.iter_mut().find(|seen| seen.country == country) {
                Some(seen) => {
                    seen.messages += 1;
                    seen.last_seen = now;
                }
                None => history.push(Seen {
                    country: country.to_owned(),
                    first_seen: now,
                    last_seen: now,
                    messages: 1,
                }),
            }
        }
        tx.commit().await?;
        Ok(Judged {
            decision,
            history,
            now,
        })
    }

    /// The login's countries within `window` (for `check-workers geoip show`).
    ///
    /// # Errors
    /// The database failed.
    pub async fn show(&self, login: &str, window: Duration) -> Result<Vec<Seen>, sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&mut *conn)
            .await?;
        read_history(&mut conn, login, Some(cutoff(now, window))).await
    }

    /// Forgets everything about the login; returns the countries deleted.
    ///
    /// # Errors
    /// The database failed.
    pub async fn forget(&self, login: &str) -> Result<u64, sqlx::Error> {
        let done = sqlx::query("DELETE FROM geoip_login_country WHERE login = ? AND country <> ''")
            .bind(login)
            .execute(self.pool())
            .await?;
        sqlx::query("DELETE FROM geoip_login_country WHERE login = ?")
            .bind(login)
            .execute(self.pool())
            .await?;
        Ok(done.rows_affected())
    }

    /// Deletes at most `limit` rows not seen within `window` (other logins' stale countries and
    /// idle lock rows); returns how many.
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune(&self, window: Duration, limit: u32) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM geoip_login_country \
             WHERE last_seen < UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND LIMIT ?",
        )
        .bind(u64::try_from(window.as_micros()).unwrap_or(u64::MAX))
        .bind(limit)
        .execute(self.pool())
        .await?;
        Ok(done.rows_affected())
    }
}

/// The instant before which a country no longer counts.
fn cutoff(now: DateTime<Utc>, window: Duration) -> DateTime<Utc> {
    let window = TimeDelta::from_std(window).unwrap_or(TimeDelta::MAX);
    now.checked_sub_signed(window)
        .unwrap_or(DateTime::<Utc>::UNIX_EPOCH)
}

/// The login's countries (without the lock row), oldest first; only those seen from `since` on
/// when given.
async fn read_history(
    conn: &mut MySqlConnection,
    login: &str,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Seen>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT country, first_seen, last_seen, messages FROM geoip_login_country \
         WHERE login = ? AND country <> '' AND last_seen >= ? ORDER BY first_seen, country",
    )
    .bind(login)
    .bind(since.unwrap_or(DateTime::<Utc>::UNIX_EPOCH))
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|row| {
            Ok(Seen {
                country: row.try_get("country")?,
                first_seen: row.try_get("first_seen")?,
                last_seen: row.try_get("last_seen")?,
                messages: row.try_get("messages")?,
            })
        })
        .collect()
}
