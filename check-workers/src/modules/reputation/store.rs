//! The counters the auditor keeps (`schema/0010_reputation.sql`, `reputation_count`), read back.
//! All SQL of the module is here: one statement per check, an index range per value on the
//! primary key (factor, value, day), summed over the days the window overlaps on the database's
//! clock. The module never writes: the auditor counts each archived message once.

use std::time::Duration;

use platform::config::Urls;
use platform::database::{Database, PoolSettings};
use platform::reputation::{Factor, Tally};
use sqlx::{MySql, QueryBuilder, Row as _};

/// The table, through a pool made on first use.
pub struct Store {
    pool: Database,
}

impl Store {
    /// A store for `urls` (one server or a Galera cluster's nodes); a check waits at most
    /// `acquire_timeout` for a connection.
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

    /// The counts of each value over the days `window` overlaps, up to now on the database's
    /// clock; a value without rows is not in the answer.
    ///
    /// # Errors
    /// The database failed.
    pub async fn counts(
        &self,
        values: &[(Factor, String)],
        window: Duration,
    ) -> Result<Vec<(Factor, String, Tally)>, sqlx::Error> {
        if values.is_empty() {
            return Ok(Vec::new());
        }
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT factor, value, CAST(SUM(messages) AS UNSIGNED), \
                 CAST(SUM(rejected) AS UNSIGNED), CAST(SUM(tempfailed) AS UNSIGNED), \
                 CAST(SUM(permitted) AS UNSIGNED), SUM(reject_score) \
             FROM reputation_count WHERE ",
        );
        // each branch an index range of its own: (factor, value) equal, day from the first
        for (i, (factor, value)) in values.iter().enumerate() {
            query.push(if i == 0 { "(" } else { " OR (" });
            query
                .push("factor = ")
                .push_bind(factor.as_str())
                .push(" AND value = ")
                .push_bind(value.clone())
                .push(" AND day >= DATE(UTC_TIMESTAMP() - INTERVAL ")
                .push_bind(window.as_secs())
                .push(" SECOND))");
        }
        query.push(" GROUP BY factor, value");
        let outcome = query.build().persistent(true).fetch_all(&self.pool).await;
        // a node that is gone makes the database look for another before the next check
        let rows = self.pool.report(outcome)?;
        let mut found = Vec::with_capacity(rows.len());
        for row in rows {
            let factor: String = row.try_get(0)?;
            let Ok(factor) = factor.parse::<Factor>() else {
                continue;
            };
            let tally = Tally {
                messages: row.try_get(2)?,
                rejected: row.try_get(3)?,
                tempfailed: row.try_get(4)?,
                permitted: row.try_get(5)?,
                reject_score: row.try_get::<Option<f64>, _>(6)?.unwrap_or(0.0),
            };
            found.push((factor, row.try_get(1)?, tally));
        }
        // the order the values were asked in
        found.sort_by_key(|(factor, value, _)| {
            values
                .iter()
                .position(|(f, v)| f == factor && v == value)
                .unwrap_or(usize::MAX)
        });
        Ok(found)
    }

    /// Per day, the counts of one value within `window` (newest first), for
    /// `check-workers reputation show`.
    ///
    /// # Errors
    /// The database failed.
    pub async fn days(
        &self,
        factor: Factor,
        value: &str,
        window: Duration,
    ) -> Result<Vec<(chrono::NaiveDate, Tally)>, sqlx::Error> {
        let outcome = sqlx::query(
            "SELECT day, messages, rejected, tempfailed, permitted, reject_score \
             FROM reputation_count WHERE factor = ? AND value = ? \
             AND day >= DATE(UTC_TIMESTAMP() - INTERVAL ? SECOND) ORDER BY day DESC",
        )
        .bind(factor.as_str())
        .bind(value)
        .bind(window.as_secs())
        .fetch_all(&self.pool)
        .await;
        let rows = self.pool.report(outcome)?;
        rows.into_iter()
            .map(|row| {
                Ok((
                    row.try_get(0)?,
                    Tally {
                        messages: row.try_get(1)?,
                        rejected: row.try_get(2)?,
                        tempfailed: row.try_get(3)?,
                        permitted: row.try_get(4)?,
                        reject_score: row.try_get(5)?,
                    },
                ))
            })
            .collect()
    }
}
