//! All of the quotas' SQL (`schema/0002_quotas.sql`): finding the rows for a message's factor
//! values, creating concrete rows from regex rows, the atomic check-and-reserve, settling,
//! showing counts and importing ClueGetter's rows.
//!
//! **Check and reserve** (DESIGN.md, durability invariant 3) is one READ COMMITTED
//! transaction: `SELECT … FOR UPDATE` on the matched `quota` rows in id order (so two messages
//! sharing rows lock them in the same order and cannot deadlock on them), then per row one sum
//! over its tally (`quota_message`) for every period of its profile, then — only if no period
//! would go over its curb — the message's tally rows are inserted as `reserved`. A second worker
//! checking the same row waits on the lock and then counts the first one's reservation, so two
//! workers never both take the last unit. The clock is the database's (`UTC_TIMESTAMP(6)`), so
//! workers on hosts with skewed clocks agree on the windows.
//!
//! A window of `p` seconds at time `now` counts the units of tally rows dated after `now − p`
//! that are `kept`, or `reserved` and younger than the reservation TTL. A message's own rows are
//! never counted against it, so a redelivered check decides the same way and reserves nothing
//! twice.
//!
//! **Settling** sets the message's rows `kept` or `released` (idempotent; it also applies to
//! expired reservations, which then count again if kept). When the event carries no quotas
//! result, the reservation may be committed only after the event is settled (the check finished
//! after the gateway stopped waiting); the verdict is then also written to `quota_settlement`,
//! which the reserving transaction reads, with a locking read, after inserting its rows. Both
//! orders end settled; the only interleaving that could leave a reservation unsettled makes the
//! two transactions wait on each other, and InnoDB's deadlock detection rolls one back, which is
//! retried.
//!
//! This module knows nothing of the broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chrono::NaiveDateTime;
use regex::Regex;
use serde::Serialize;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPoolOptions};
use sqlx::{Executor as _, MySql, MySqlConnection, MySqlPool, QueryBuilder, Row as _};
use wire::MessageId;
use platform::config::Config;

use super::import::{ImportTable, Table};
use super::{Factor, Selector};

/// How the database is named in errors.
pub const SERVICE: &str = "the quota database";

/// MariaDB's "deadlock found" and "lock wait timeout": the transaction was rolled back and may
/// simply be tried again.
const ER_LOCK_DEADLOCK: u16 = 1213;
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
/// Attempts of one transaction that keeps meeting deadlocks.
const ATTEMPTS: u32 = 5;
/// How long a verdict that came before its message's reservation is remembered. A check runs
/// at most its module timeout after the request was delivered (requests expire after it), so
/// a reservation commits within seconds of the verdict or never; an hour is ample.
pub const SETTLEMENT_MEMORY: Duration = Duration::from_secs(3600);

/// One period of one matched quota row, as counted for this message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PeriodUsage {
    /// Seconds.
    pub period: u32,
    pub curb: u32,
    /// Units counted in the window, this message not included.
    pub used: u64,
    /// `used` plus this message's units.
    pub would_be: u64,
    /// `would_be` is over `curb`.
    pub exceeded: bool,
}

/// One matched quota row and its periods.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct QuotaUsage {
    pub quota_id: u64,
    pub selector: Selector,
    pub value: String,
    /// The regex row that created this row, if one did.
    pub instigator: Option<u64>,
    pub profile_id: u64,
    pub profile: String,
    /// What this message costs the row.
    pub units: u32,
    /// Shortest period first.
    pub periods: Vec<PeriodUsage>,
}

/// What a check found and did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckOutcome {
    /// Every matched row, in factor order.
    pub quotas: Vec<QuotaUsage>,
    /// The message's units were reserved (false when a period would go over its curb, or no
    /// row matched).
    pub reserved: bool,
}

/// The counts of one row for `check-workers quota show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShownQuota {
    pub quota_id: u64,
    pub selector: Selector,
    pub value: String,
    pub instigator: Option<u64>,
    pub profile_id: u64,
    pub profile: String,
    pub periods: Vec<ShownPeriod>,
}

/// One period's window right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShownPeriod {
    pub period: u32,
    pub curb: u32,
    /// `kept` plus `reserved`: what a check counts.
    pub used: u64,
    pub kept: u64,
    /// Reservations younger than the TTL, not yet settled.
    pub reserved: u64,
    /// Reservations older than the TTL, never settled: not counted.
    pub expired: u64,
}

/// A regex row of the instance that would create a row for the value shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchingRegex {
    pub quota_id: u64,
    pub pattern: String,
    pub profile_id: u64,
    pub profile: String,
}

/// `check-workers quota show`: the value's rows and their windows, or, when it has none yet,
/// the regex rows that would create some at its next message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shown {
    pub instance: String,
    pub selector: Selector,
    pub value: String,
    /// The database's time of the count (UTC).
    pub at: NaiveDateTime,
    pub quotas: Vec<ShownQuota>,
    pub matching_regexes: Vec<MatchingRegex>,
}

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
    options: MySqlConnectOptions,
    max_connections: u32,
    acquire_timeout: Duration,
    /// Made on first use, inside the runtime (sqlx spawns its maintenance task then).
    pool: OnceLock<MySqlPool>,
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
            &config.database.url,
            config.database.max_connections,
            config.quotas.timeout,
            config.quotas.reservation_ttl,
        )
    }

    /// # Errors
    /// The URL cannot be parsed.
    pub fn new(
        url: &str,
        max_connections: u32,
        acquire_timeout: Duration,
        reservation_ttl: Duration,
    ) -> Result<Self, sqlx::Error> {
        let options: MySqlConnectOptions = url.parse()?;
        Ok(Self {
            inner: Arc::new(Inner {
                options: options.timezone(Some("+00:00".to_owned())),
                max_connections: max_connections.max(1),
                acquire_timeout,
                pool: OnceLock::new(),
                reservation_ttl,
                regexes: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The pool: UTC, strict mode, READ COMMITTED (each statement sees what committed before
    /// it, which the check relies on after taking its locks; and no gap locks).
    pub fn pool(&self) -> &MySqlPool {
        self.inner.pool.get_or_init(|| {
            MySqlPoolOptions::new()
                .max_connections(self.inner.max_connections)
                .acquire_timeout(self.inner.acquire_timeout)
                .after_connect(|conn, _meta| {
                    Box::pin(async move {
                        conn.execute(
                            "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES')",
                        )
                        .await?;
                        conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED")
                            .await?;
                        Ok(())
                    })
                })
                .connect_lazy_with(self.inner.options.clone())
        })
    }

    pub fn reservation_ttl(&self) -> Duration {
        self.inner.reservation_ttl
    }

    /// Checks the message's factor values against the instance's quotas and, if every period
    /// has room, reserves its units; see the module documentation.
    ///
    /// # Errors
    /// The database failed (after retrying deadlocks); nothing was reserved.
    pub async fn check(
        &self,
        instance: &str,
        message: MessageId,
        factors: &[Factor],
    ) -> Result<CheckOutcome, sqlx::Error> {
        if factors.is_empty() {
            return Ok(CheckOutcome::default());
        }
        let mut conn = self.pool().acquire().await?;
        let mut rows = exact_rows(&mut conn, instance, factors).await?;
        let missing: Vec<&Factor> = factors
            .iter()
            .enumerate()
            .filter(|(n, _)| !rows.iter().any(|(m, _)| m == n))
            .map(|(_, factor)| factor)
            .collect();
        if !missing.is_empty()
            && self
                .create_from_regexes(&mut conn, instance, &missing)
                .await?
        {
            rows = exact_rows(&mut conn, instance, factors).await?;
        }
        if rows.is_empty() {
            return Ok(CheckOutcome::default());
        }
        let periods = periods_of(&mut conn, rows.iter().map(|(_, row)| row.profile)).await?;
        // Each row with the units of its factor, in factor order.
        let matched: Vec<(QuotaRow, u32)> = rows
            .into_iter()
            .filter_map(|(n, row)| factors.get(n).map(|factor| (row, factor.units)))
            .collect();
        let mut attempt = 1;
        loop {
            match self.reserve(&mut conn, message, &matched, &periods).await {
                Err(error) if attempt < ATTEMPTS && is_retryable(&error) => {
                    tracing::debug!(%error, attempt, "quota transaction rolled back; retrying");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// The locked part of [`QuotaStore::check`].
    async fn reserve(
        &self,
        conn: &mut MySqlConnection,
        message: MessageId,
        matched: &[(QuotaRow, u32)],
        periods: &HashMap<u64, Vec<(u32, u32)>>,
    ) -> Result<CheckOutcome, sqlx::Error> {
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        let mut ids: Vec<u64> = matched.iter().map(|(row, _)| row.id).collect();
        ids.sort_unstable();
        ids.dedup();
        // The lock. UTC_TIMESTAMP is the statement's start, before any wait for the lock: a row
        // committed while we waited is newer than `now` and still inside every window, so the
        // count can only be larger, never miss it.
        let mut lock =
            QueryBuilder::<MySql>::new("SELECT id, UTC_TIMESTAMP(6) FROM quota WHERE id IN (");
        push_list(&mut lock, &ids);
        lock.push(") ORDER BY id FOR UPDATE");
        let locked: Vec<(u64, NaiveDateTime)> = lock.build_query_as().fetch_all(&mut *tx).await?;
        let Some(&(_, now)) = locked.first() else {
            // every row was deleted since it was found
            tx.commit().await?;
            return Ok(CheckOutcome::default());
        };
        let ttl_cutoff = before(now, self.inner.reservation_ttl.as_secs());

        let mut outcome = CheckOutcome::default();
        for (row, units) in matched {
            if !locked.iter().any(|(id, _)| *id == row.id) {
                continue;
            }
            let row_periods = periods.get(&row.profile).map(Vec::as_slice).unwrap_or(&[]);
            let used = window_sums(&mut tx, row.id, message, now, ttl_cutoff, row_periods).await?;
            let periods = row_periods
                .iter()
                .zip(used)
                .map(|(&(period, curb), used)| {
                    let would_be = used + u64::from(*units);
                    PeriodUsage {
                        period,
                        curb,
                        used,
                        would_be,
                        exceeded: would_be > u64::from(curb),
                    }
                })
                .collect();
            outcome.quotas.push(QuotaUsage {
                quota_id: row.id,
                selector: row.selector,
                value: row.value.clone(),
                instigator: row.instigator,
                profile_id: row.profile,
                profile: row.profile_name.clone(),
                units: *units,
                periods,
            });
        }
        let exceeded = outcome
            .quotas
            .iter()
            .any(|q| q.periods.iter().any(|p| p.exceeded));
        if exceeded || outcome.quotas.is_empty() {
            // Over a curb: nothing is reserved (ClueGetter does not count refused messages).
            tx.commit().await?;
            return Ok(outcome);
        }

        // Units per row (a row is matched by one factor value, but be safe).
        let mut units_by_row: Vec<(u64, u64)> = Vec::new();
        for usage in &outcome.quotas {
            match units_by_row
                .iter_mut()
                .find(|(id, _)| *id == usage.quota_id)
            {
                Some((_, units)) => *units += u64::from(usage.units),
                None => units_by_row.push((usage.quota_id, u64::from(usage.units))),
            }
        }
        let mut insert = QueryBuilder::<MySql>::new(
            "INSERT INTO quota_message (quota, message, units, date, status) ",
        );
        insert.push_values(&units_by_row, |mut values, (id, units)| {
            values
                .push_bind(*id)
                .push_bind(message.0)
                .push_bind(*units)
                .push_bind(now)
                .push("'reserved'");
        });
        // A redelivered check: the rows of its first run stay as they are (maybe settled).
        insert.push(" ON DUPLICATE KEY UPDATE quota = quota");
        insert.build().execute(&mut *tx).await?;

        // A verdict that came before this reservation (see the module documentation); a
        // locking read, so an uncommitted one is waited for.
        let settled: Option<bool> =
            sqlx::query_scalar("SELECT counted FROM quota_settlement WHERE message = ? FOR UPDATE")
                .bind(message.0)
                .fetch_optional(&mut *tx)
                .await?;
        if let Some(counted) = settled {
            sqlx::query(
                "UPDATE quota_message SET status = IF(?, 'kept', 'released'), settled = ? \
                 WHERE message = ? AND status = 'reserved'",
            )
            .bind(counted)
            .bind(now)
            .bind(message.0)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        outcome.reserved = true;
        Ok(outcome)
    }

    /// Creates concrete rows for factor values that have no exact row, from every regex row of
    /// the instance and selector that matches the value. Returns whether any row may be new.
    async fn create_from_regexes(
        &self,
        conn: &mut MySqlConnection,
        instance: &str,
        missing: &[&Factor],
    ) -> Result<bool, sqlx::Error> {
        let mut selectors: Vec<&'static str> =
            missing.iter().map(|f| f.selector.as_str()).collect();
        selectors.sort_unstable();
        selectors.dedup();
        let mut query = QueryBuilder::<MySql>::new(
            "SELECT q.id, CAST(q.selector AS CHAR), q.value, q.profile FROM quota q \
             JOIN quota_profile p ON p.id = q.profile \
             JOIN quota_class c ON c.id = p.class \
             JOIN instance i ON i.id = c.cluegetter_instance \
             WHERE i.name = ",
        );
        query.push_bind(instance.to_owned());
        query.push(" AND q.is_regex = 1 AND q.value IS NOT NULL AND q.selector IN (");
        push_list(&mut query, &selectors);
        query.push(") ORDER BY q.id");
        let regex_rows: Vec<(u64, String, String, u64)> =
            query.build_query_as().fetch_all(&mut *conn).await?;
        let mut created = false;
        for factor in missing {
            for (id, selector, pattern, profile) in &regex_rows {
                if selector != factor.selector.as_str() {
                    continue;
                }
                let Some(regex) = self.regex(*id, pattern) else {
                    continue;
                };
                if !regex.is_match(&factor.value) {
                    continue;
                }
                // Another worker may create the same row at the same moment: the unique key
                // (selector, value, profile) keeps one.
                let result = sqlx::query(
                    "INSERT INTO quota (selector, value, is_regex, profile, instigator, date_added) \
                     VALUES (?, ?, 0, ?, ?, UTC_TIMESTAMP()) ON DUPLICATE KEY UPDATE id = id",
                )
                .bind(factor.selector.as_str())
                .bind(&factor.value)
                .bind(*profile)
                .bind(*id)
                .execute(&mut *conn)
                .await?;
                if result.rows_affected() > 0 {
                    tracing::info!(
                        selector = %factor.selector,
                        value = %factor.value,
                        instigator = id,
                        profile,
                        "regex quota matched: created the concrete quota row"
                    );
                }
                created = true;
            }
        }
        Ok(created)
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

    /// Keeps (`counted`) or releases the message's reservations; with `remember`, also records
    /// the verdict for a reservation not committed yet. Returns the tally rows settled.
    ///
    /// # Errors
    /// The database failed (after retrying deadlocks); nothing was changed.
    pub async fn settle(
        &self,
        message: MessageId,
        counted: bool,
        remember: bool,
    ) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        let mut attempt = 1;
        loop {
            match settle_once(&mut conn, message, counted, remember).await {
                Err(error) if attempt < ATTEMPTS && is_retryable(&error) => {
                    tracing::debug!(%error, attempt, "settle rolled back; retrying");
                    attempt += 1;
                }
                outcome => return outcome,
            }
        }
    }

    /// Deletes remembered verdicts older than [`SETTLEMENT_MEMORY`] (no reservation can still
    /// be on its way for them).
    ///
    /// # Errors
    /// The database failed.
    pub async fn prune_settlements(&self) -> Result<u64, sqlx::Error> {
        let result = sqlx::query(
            "DELETE FROM quota_settlement WHERE date < UTC_TIMESTAMP(6) - INTERVAL ? SECOND",
        )
        .bind(SETTLEMENT_MEMORY.as_secs())
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
    }

    /// The windows of the instance's rows for one factor value, as a check would count them now
    /// (without creating rows from regexes).
    ///
    /// # Errors
    /// The database failed.
    pub async fn show(
        &self,
        instance: &str,
        selector: Selector,
        value: &str,
    ) -> Result<Shown, sqlx::Error> {
        let value = value.trim().to_lowercase();
        let mut conn = self.pool().acquire().await?;
        let factor = Factor {
            selector,
            value: value.clone(),
            units: 0,
        };
        let rows: Vec<QuotaRow> = exact_rows(&mut conn, instance, std::slice::from_ref(&factor))
            .await?
            .into_iter()
            .map(|(_, row)| row)
            .collect();
        let periods = periods_of(&mut conn, rows.iter().map(|r| r.profile)).await?;
        let now: NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&mut *conn)
            .await?;
        let ttl_cutoff = before(now, self.inner.reservation_ttl.as_secs());
        let mut quotas = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut shown = Vec::new();
            for &(period, curb) in periods.get(&row.profile).map(Vec::as_slice).unwrap_or(&[]) {
                let cutoff = before(now, u64::from(period));
                let (kept, reserved, expired): (u64, u64, u64) = sqlx::query_as(
                    "SELECT \
                       CAST(COALESCE(SUM(IF(status = 'kept', units, 0)), 0) AS UNSIGNED), \
                       CAST(COALESCE(SUM(IF(status = 'reserved' AND date > ?, units, 0)), 0) AS UNSIGNED), \
                       CAST(COALESCE(SUM(IF(status = 'reserved' AND date <= ?, units, 0)), 0) AS UNSIGNED) \
                     FROM quota_message FORCE INDEX (quota_message_window) \
                     WHERE quota = ? AND date > ?",
                )
                .bind(ttl_cutoff)
                .bind(ttl_cutoff)
                .bind(row.id)
                .bind(cutoff)
                .fetch_one(&mut *conn)
                .await?;
                shown.push(ShownPeriod {
                    period,
                    curb,
                    used: kept + reserved,
                    kept,
                    reserved,
                    expired,
                });
            }
            quotas.push(ShownQuota {
                quota_id: row.id,
                selector: row.selector,
                value: row.value.clone(),
                instigator: row.instigator,
                profile_id: row.profile,
                profile: row.profile_name.clone(),
                periods: shown,
            });
        }
        let mut matching_regexes = Vec::new();
        if rows.is_empty() {
            let regex_rows: Vec<(u64, String, u64, String)> = sqlx::query_as(
                "SELECT q.id, q.value, q.profile, p.name FROM quota q \
                 JOIN quota_profile p ON p.id = q.profile \
                 JOIN quota_class c ON c.id = p.class \
                 JOIN instance i ON i.id = c.cluegetter_instance \
                 WHERE i.name = ? AND q.is_regex = 1 AND q.selector = ? AND q.value IS NOT NULL \
                 ORDER BY q.id",
            )
            .bind(instance)
            .bind(selector.as_str())
            .fetch_all(&mut *conn)
            .await?;
            for (quota_id, pattern, profile_id, profile) in regex_rows {
                if self
                    .regex(quota_id, &pattern)
                    .is_some_and(|regex| regex.is_match(&value))
                {
                    matching_regexes.push(MatchingRegex {
                        quota_id,
                        pattern,
                        profile_id,
                        profile,
                    });
                }
            }
        }
        Ok(Shown {
            instance: instance.to_owned(),
            selector,
            value,
            at: now,
            quotas,
            matching_regexes,
        })
    }

    /// Inserts ClueGetter's rows, all tables in one transaction, parents first; returns the rows
    /// inserted per table.
    ///
    /// # Errors
    /// A row the database refuses (a duplicate id, a reference to a missing row, a value that
    /// does not fit); nothing is inserted then. The error names the table and the row's line.
    pub async fn import(&self, tables: &[ImportTable]) -> Result<Vec<(Table, u64)>, ImportError> {
        let mut ordered: Vec<&ImportTable> = tables.iter().collect();
        ordered.sort_by_key(|t| t.table);
        let mut tx = self.pool().begin().await.map_err(ImportError::Database)?;
        let mut counts = Vec::new();
        for table in ordered {
            let mut inserted = 0;
            for row in &table.rows {
                let mut insert = QueryBuilder::<MySql>::new("INSERT INTO ");
                insert.push(table.table.as_str()).push(" (");
                let mut columns = insert.separated(", ");
                for column in &table.columns {
                    columns.push(*column);
                }
                insert.push(") VALUES (");
                let mut values = insert.separated(", ");
                for value in &row.values {
                    values.push_bind(value.clone());
                }
                insert.push(")");
                insert
                    .build()
                    .execute(&mut *tx)
                    .await
                    .map_err(|source| ImportError::Row {
                        table: table.table,
                        line: row.line,
                        source,
                    })?;
                inserted += 1;
            }
            counts.push((table.table, inserted));
        }
        tx.commit().await.map_err(ImportError::Database)?;
        Ok(counts)
    }
}

/// Why an import stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("table {table}, line {line}: the database refused the row")]
    Row {
        table: Table,
        line: usize,
        #[source]
        source: sqlx::Error,
    },
    #[error("cannot write the rows")]
    Database(#[source] sqlx::Error),
}

/// One attempt of [`QuotaStore::settle`].
async fn settle_once(
    conn: &mut MySqlConnection,
    message: MessageId,
    counted: bool,
    remember: bool,
) -> Result<u64, sqlx::Error> {
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    if remember {
        sqlx::query(
            "INSERT INTO quota_settlement (message, counted, date) VALUES (?, ?, UTC_TIMESTAMP(6)) \
             ON DUPLICATE KEY UPDATE counted = VALUES(counted)",
        )
        .bind(message.0)
        .bind(counted)
        .execute(&mut *tx)
        .await?;
    }
    // A locking read waits for a reservation being committed (an UPDATE at READ COMMITTED
    // would skip rows that have no committed version yet).
    let rows: Vec<u64> =
        sqlx::query_scalar("SELECT quota FROM quota_message WHERE message = ? FOR UPDATE")
            .bind(message.0)
            .fetch_all(&mut *tx)
            .await?;
    if !rows.is_empty() {
        sqlx::query(
            "UPDATE quota_message SET status = IF(?, 'kept', 'released'), settled = UTC_TIMESTAMP(6) \
             WHERE message = ?",
        )
        .bind(counted)
        .bind(message.0)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(rows.len() as u64)
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

/// The units counted in each period's window for one row, this message left out: one query
/// over the longest window with a sum per period.
async fn window_sums(
    conn: &mut MySqlConnection,
    quota: u64,
    message: MessageId,
    now: NaiveDateTime,
    ttl_cutoff: NaiveDateTime,
    periods: &[(u32, u32)],
) -> Result<Vec<u64>, sqlx::Error> {
    let Some(longest) = periods.iter().map(|(period, _)| *period).max() else {
        return Ok(Vec::new());
    };
    let cutoff = |period: u32| before(now, u64::from(period));
    let mut query = QueryBuilder::<MySql>::new("SELECT ");
    for (n, (period, _)) in periods.iter().enumerate() {
        if n > 0 {
            query.push(", ");
        }
        query
            .push("CAST(COALESCE(SUM(IF(date > ")
            .push_bind(cutoff(*period))
            .push(", units, 0)), 0) AS UNSIGNED)");
    }
    query
        // The window is a range of this index, which also holds every column read; left to
        // itself the optimizer may walk the primary key through the row's whole history.
        .push(" FROM quota_message FORCE INDEX (quota_message_window) WHERE quota = ")
        .push_bind(quota)
        .push(" AND date > ")
        .push_bind(cutoff(longest))
        .push(" AND message <> ")
        .push_bind(message.0)
        .push(" AND (status = 'kept' OR (status = 'reserved' AND date > ")
        .push_bind(ttl_cutoff)
        .push("))");
    let row = query.build().fetch_one(&mut *conn).await?;
    (0..periods.len())
        .map(|n| row.try_get::<u64, _>(n))
        .collect()
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

/// `now` less `seconds` (at most a century, which DATETIME can always hold).
fn before(now: NaiveDateTime, seconds: u64) -> NaiveDateTime {
    const CENTURY: i64 = 100 * 366 * 24 * 3600;
    let seconds = i64::try_from(seconds).unwrap_or(CENTURY).min(CENTURY);
    now.checked_sub_signed(chrono::TimeDelta::seconds(seconds))
        .unwrap_or(now)
}

/// A deadlock or lock wait timeout: InnoDB rolled the transaction back; try again.
fn is_retryable(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT)),
        _ => false,
    }
}
