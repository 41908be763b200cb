//! The check-and-reserve (DESIGN.md, durability invariant 3): one READ COMMITTED transaction
//! that locks the message's quota rows, counts every period's window and, only if no period
//! would go over its curb, inserts the message's tally rows as `reserved`. Also the creation
//! of concrete rows from regex rows that comes before it.
//!
//! `SELECT … FOR UPDATE` takes the matched `quota` rows in id order (so two messages sharing
//! rows lock them in the same order and cannot deadlock on them); then one sum per row over its
//! tally (`quota_message`) for every period of its profile (the cut-offs come from
//! [`super::super::window`]). A second worker checking the same row waits on the lock and then
//! counts the first one's reservation, so two workers never both take the last unit. The clock
//! is the database's (`UTC_TIMESTAMP(6)`), so workers on hosts with skewed clocks agree on the
//! windows. A message's own rows are never counted against it, so a redelivered check decides
//! the same way and reserves nothing twice.
//!
//! After inserting its rows the transaction reads, with a locking read, a verdict settled
//! before the reservation committed (`quota_settlement`, see [`super::settle`]).
//!
//! Under Galera the `FOR UPDATE` locks hold on one node only: a reservation therefore also
//! writes its `quota` rows (`reservations + 1`), so that two reservations made on two nodes at
//! once conflict at certification; the one aborted (1213) is tried again
//! ([`platform::database::ConflictRetries`]) and, with causal reads (`wsrep_sync_wait`), counts
//! the other's. The cluster test's `galera-quota-race` holds it to the curb.

use std::collections::HashMap;

use chrono::NaiveDateTime;
use serde::Serialize;
use sqlx::{MySql, MySqlConnection, QueryBuilder, Row as _};
use wire::MessageId;

use super::super::window::{self, PeriodUsage, Windows};
use super::super::{Factor, Selector};
use super::{QuotaRow, QuotaStore, exact_rows, periods_of, push_list, retries};

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

impl QuotaStore {
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
        let outcome = self.run_check(instance, message, factors).await;
        self.pool().report(outcome)
    }

    /// [`Self::check`], whose failure the caller reports to the database (a node that is gone
    /// makes it look for another).
    async fn run_check(
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
        let mut retries = retries("quota transaction");
        loop {
            let outcome = self.reserve(&mut conn, message, &matched, &periods).await;
            if let Err(error) = &outcome
                && retries.again(error).await
            {
                continue;
            }
            return outcome;
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
        let windows = Windows::at(now, self.inner.reservation_ttl);

        let mut outcome = CheckOutcome::default();
        for (row, units) in matched {
            if !locked.iter().any(|(id, _)| *id == row.id) {
                continue;
            }
            let row_periods = periods.get(&row.profile).map(Vec::as_slice).unwrap_or(&[]);
            let used = window_sums(&mut tx, row.id, message, &windows, row_periods).await?;
            outcome.quotas.push(QuotaUsage {
                quota_id: row.id,
                selector: row.selector,
                value: row.value.clone(),
                instigator: row.instigator,
                profile_id: row.profile,
                profile: row.profile_name.clone(),
                units: *units,
                periods: window::usages(row_periods, &used, *units),
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

        let units_by_row =
            window::units_per_row(outcome.quotas.iter().map(|q| (q.quota_id, q.units)));
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
        // Write the locked rows too: under Galera the lock above holds on this node only, and
        // a reservation of the last unit made on another node at the same moment would commit
        // beside this one. Two transactions that write the same row conflict at certification:
        // one is aborted (1213), tried again, and then counts the other's reservation.
        let mut touch = QueryBuilder::<MySql>::new(
            "UPDATE quota SET reservations = reservations + 1 WHERE id IN (",
        );
        push_list(
            &mut touch,
            &units_by_row.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        );
        touch.push(")");
        touch.build().execute(&mut *tx).await?;

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
}

/// The units counted in each period's window for one row, this message left out: one query
/// over the longest window with a sum per period.
async fn window_sums(
    conn: &mut MySqlConnection,
    quota: u64,
    message: MessageId,
    windows: &Windows,
    periods: &[(u32, u32)],
) -> Result<Vec<u64>, sqlx::Error> {
    let Some(scan_from) = windows.scan_from(periods) else {
        return Ok(Vec::new());
    };
    let mut query = QueryBuilder::<MySql>::new("SELECT ");
    for (n, (period, _)) in periods.iter().enumerate() {
        if n > 0 {
            query.push(", ");
        }
        query
            .push("CAST(COALESCE(SUM(IF(date > ")
            .push_bind(windows.cutoff(*period))
            .push(", units, 0)), 0) AS UNSIGNED)");
    }
    query
        // The window is a range of this index, which also holds every column read; left to
        // itself the optimizer may walk the primary key through the row's whole history.
        .push(" FROM quota_message FORCE INDEX (quota_message_window) WHERE quota = ")
        .push_bind(quota)
        .push(" AND date > ")
        .push_bind(scan_from)
        .push(" AND message <> ")
        .push_bind(message.0)
        .push(" AND (status = 'kept' OR (status = 'reserved' AND date > ")
        .push_bind(windows.ttl_cutoff)
        .push("))");
    let row = query.build().fetch_one(&mut *conn).await?;
    (0..periods.len())
        .map(|n| row.try_get::<u64, _>(n))
        .collect()
}
