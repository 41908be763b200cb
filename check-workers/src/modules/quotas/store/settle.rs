//! Settling a message's reservations: its tally rows become `kept` or `released`
//! (idempotent; it also applies to expired reservations, which then count again if kept).
//!
//! When the event carries no quotas result, the reservation may be committed only after the
//! event is settled (the check finished after the gateway stopped waiting); the verdict is then
//! also written to `quota_settlement`, which the reserving transaction ([`super::check`])
//! reads, with a locking read, after inserting its rows. Both orders end settled; the only
//! interleaving that could leave a reservation unsettled makes the two transactions wait on
//! each other, and InnoDB's deadlock detection rolls one back, which is retried.

use std::time::Duration;

use sqlx::MySqlConnection;
use wire::MessageId;

use super::{QuotaStore, retries};

/// How long a verdict that came before its message's reservation is remembered. A check runs
/// at most its module timeout after the request was delivered (requests expire after it), so
/// a reservation commits within seconds of the verdict or never; an hour is ample.
pub const SETTLEMENT_MEMORY: Duration = Duration::from_secs(3600);

/// How old a reservation must be before [`QuotaStore::reconcile_settlements`] looks at it: the
/// transactions that race to settle it have long committed by then.
pub const RECONCILE_AFTER: Duration = Duration::from_secs(10);

impl QuotaStore {
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
        let outcome = self.run_settle(message, counted, remember).await;
        self.pool().report(outcome)
    }

    /// [`Self::settle`], whose failure the caller reports to the database (a node that is gone
    /// makes it look for another).
    async fn run_settle(
        &self,
        message: MessageId,
        counted: bool,
        remember: bool,
    ) -> Result<u64, sqlx::Error> {
        let mut conn = self.pool().acquire().await?;
        let mut retries = retries("settle");
        loop {
            let outcome = settle_once(&mut conn, message, counted, remember).await;
            if let Err(error) = &outcome
                && retries.again(error).await
            {
                continue;
            }
            return outcome;
        }
    }

    /// Settles the reservations older than [`RECONCILE_AFTER`] that are still `reserved` though
    /// their message's verdict is remembered. Under Galera the locking reads that order a
    /// reservation and a remembered verdict ([`super::check`], [`Self::settle`]) do not block a
    /// transaction on another node, so a check that finishes after the gateway stopped waiting,
    /// committed on one node while its verdict is remembered on another, can leave its rows
    /// reserved; this finds them. Returns the tally rows settled (0 but for that race).
    ///
    /// # Errors
    /// The database failed.
    pub async fn reconcile_settlements(&self) -> Result<u64, sqlx::Error> {
        let result = sqlx::query(
            "UPDATE quota_settlement s JOIN quota_message q ON q.message = s.message \
             SET q.status = IF(s.counted, 'kept', 'released'), q.settled = UTC_TIMESTAMP(6) \
             WHERE q.status = 'reserved' AND q.date < UTC_TIMESTAMP(6) - INTERVAL ? SECOND",
        )
        .bind(RECONCILE_AFTER.as_secs())
        .execute(self.pool())
        .await?;
        Ok(result.rows_affected())
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
