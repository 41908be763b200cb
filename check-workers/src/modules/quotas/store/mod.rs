//! All of the quotas' SQL (`schema/0002_quotas.sql`), one file per concern:
//! - [`check`]: creating concrete rows from regex rows, and the atomic check-and-reserve;
//! - [`settle`]: keeping or releasing a message's reservations;
//! - [`show`]: a factor value's rows and windows now (`check-workers quota show`);
//! - [`import`]: inserting ClueGetter's rows (`check-workers quota import`).
//!
//! This file holds what they share: the pool, the compiled regex rows, the lookups of a
//! message's rows and their profiles' periods, and the retry of transactions InnoDB rolled
//! back. The windows' arithmetic is [`super::window`]'s, with no SQL.
//!
//! A window of `p` seconds at time `now` counts the units of tally rows dated after `now − p`
//! that are `kept`, or `reserved` and younger than the reservation TTL.
//!
//! This module knows nothing of the broker.

mod check;
mod import;
mod settle;
mod show;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use platform::config::Config;
use platform::config::Urls;
use platform::database::{ConflictRetries, Database, PoolSettings};
use regex::Regex;
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row as _};

pub use self::check::{CheckOutcome, QuotaUsage};
pub use self::import::ImportError;
pub use self::settle::SETTLEMENT_MEMORY;
pub use self::show::{MatchingRegex, Shown, ShownPeriod, ShownQuota};
pub use super::window::PeriodUsage;
use super::{Factor, Selector};

/// How the database is named in errors.
pub const SERVICE: &str = "the quota database";

/// Attempts of one transaction that keeps losing conflicts (deadlocks; under Galera,
/// certification failures at COMMIT when two nodes wrote the same quota rows: with eight
/// checks of one row at once, one of them can lose several rounds in a row). The pauses
/// between them add up to about a quarter of a second at most, far inside the module timeout.
const ATTEMPTS: u32 = 10;

/// A `quota` row with its profile's name.
#[derive(Clone, Debug)]
struct QuotaRow {
    id: u64,
    selector: Selector,
    value: String,
    profile: u64,
    profile_name: String,
    instigator: Option<u64>,
}

/// The quota tables, through a pool made on first use.
#[derive(Clone)]
pub struct QuotaStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Database,
    reservation_ttl: Duration,
    /// Compiled regex rows by pattern; `None` for a pattern that does not compile (logged once).
    /// Never held across an await.
    regexes: Mutex<HashMap<String, Option<Arc<Regex>>>>,
}

impl QuotaStore {
    /// A store for `[database]` with `[quotas] reservation-ttl`; waits for a connection at most
    /// the module timeout.
    ///
    /// # Errors
    /// The URL cannot be parsed.
    pub fn from_config(config: &Config) -> Result<Self, sqlx::Error> {
        Self::new(
            config.database.url.clone(),
            config.database.max_connections,
            config.quotas.timeout,
            config.quotas.reservation_ttl,
        )
    }

    /// # Errors
    /// The URL cannot be parsed.
    pub fn new(
        urls: impl Into<Urls>,
        max_connections: u32,
        acquire_timeout: Duration,
        reservation_ttl: Duration,
    ) -> Result<Self, sqlx::Error> {
        let settings = PoolSettings::new(max_connections).acquire_timeout(acquire_timeout);
        Ok(Self {
            inner: Arc::new(Inner {
                pool: Database::new(&urls.into(), settings)?,
                reservation_ttl,
                regexes: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The pool ([`platform::database`]: UTC, strict mode, READ COMMITTED: each statement sees
    /// what committed before it, which the check relies on after taking its locks; and no gap
    /// locks).
    pub fn pool(&self) -> &Database {
        &self.inner.pool
    }

    pub fn reservation_ttl(&self) -> Duration {
        self.inner.reservation_ttl
    }

    /// The compiled regex of a row; a pattern that does not compile is logged once and skipped
    /// (as ClueGetter did).
    fn regex(&self, id: u64, pattern: &str) -> Option<Arc<Regex>> {
        let mut cache = self
            .inner
            .regexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        cache
            .entry(pattern.to_owned())
            .or_insert_with(|| match Regex::new(pattern) {
                Ok(regex) => Some(Arc::new(regex)),
                Err(error) => {
                    tracing::warn!(quota = id, pattern, %error, "regex quota row does not compile; skipped");
                    None
                }
            })
            .clone()
    }
}

/// The retries of one transaction ([`platform::database::ConflictRetries`]).
fn retries(what: &'static str) -> ConflictRetries {
    ConflictRetries::new(what, ATTEMPTS)
}

/// The instance's exact (non-regex) rows for the factor values, with their profile names, each
/// with the index of its factor in `factors`; in factor order. The database compares the values
/// (with the column's collation), so which factor a row belongs to comes back from it.
async fn exact_rows(
    conn: &mut MySqlConnection,
    instance: &str,
    factors: &[Factor],
) -> Result<Vec<(usize, QuotaRow)>, sqlx::Error> {
    let mut query = QueryBuilder::<MySql>::new(
        "SELECT f.n, q.id, CAST(q.selector AS CHAR), q.value, q.profile, p.name, q.instigator \
         FROM (",
    );
    for (n, factor) in factors.iter().enumerate() {
        if n > 0 {
            query.push(" UNION ALL ");
        }
        query
            .push("SELECT ")
            .push_bind(n as u64)
            .push(" AS n, ")
            .push_bind(factor.selector.as_str())
            .push(" AS selector, ")
            .push_bind(factor.value.clone())
            .push(" AS value");
    }
    query.push(
        ") f \
         JOIN quota q ON q.selector = f.selector COLLATE utf8mb4_unicode_ci \
           AND q.value = f.value COLLATE utf8mb4_unicode_ci AND q.is_regex = 0 \
         JOIN quota_profile p ON p.id = q.profile \
         JOIN quota_class c ON c.id = p.class \
         JOIN instance i ON i.id = c.cluegetter_instance \
         WHERE i.name = ",
    );
    query.push_bind(instance.to_owned());
    query.push(" ORDER BY f.n, q.id");
    let rows = query.build().fetch_all(&mut *conn).await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        let n: u64 = row.try_get(0)?;
        let selector: String = row.try_get(2)?;
        let Ok(selector) = selector.parse::<Selector>() else {
            continue;
        };
        found.push((
            usize::try_from(n).unwrap_or(usize::MAX),
            QuotaRow {
                id: row.try_get(1)?,
                selector,
                value: row.try_get::<Option<String>, _>(3)?.unwrap_or_default(),
                profile: row.try_get(4)?,
                profile_name: row.try_get(5)?,
                instigator: row.try_get(6)?,
            },
        ));
    }
    Ok(found)
}

/// The periods of the profiles: `(period, curb)`, shortest period first.
async fn periods_of(
    conn: &mut MySqlConnection,
    profiles: impl Iterator<Item = u64>,
) -> Result<HashMap<u64, Vec<(u32, u32)>>, sqlx::Error> {
    let mut profiles: Vec<u64> = profiles.collect();
    profiles.sort_unstable();
    profiles.dedup();
    let mut periods: HashMap<u64, Vec<(u32, u32)>> = HashMap::new();
    if profiles.is_empty() {
        return Ok(periods);
    }
    let mut query = QueryBuilder::<MySql>::new(
        "SELECT profile, period, curb FROM quota_profile_period WHERE profile IN (",
    );
    push_list(&mut query, &profiles);
    query.push(") ORDER BY profile, period, curb, id");
    let rows: Vec<(u64, u32, u32)> = query.build_query_as().fetch_all(&mut *conn).await?;
    for (profile, period, curb) in rows {
        periods.entry(profile).or_default().push((period, curb));
    }
    Ok(periods)
}

/// `?, ?, …` bound to the items.
fn push_list<T>(query: &mut QueryBuilder<MySql>, items: &[T])
where
    T: for<'t> sqlx::Encode<'t, MySql> + sqlx::Type<MySql> + Clone,
{
    let mut list = query.separated(", ");
    for item in items {
        list.push_bind(item.clone());
    }
}
