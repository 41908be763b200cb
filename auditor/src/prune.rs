//! Archive pruning (spec/schema.md §2 "Archive pruning", ClueGetter v0.6.0): every
//! `archive-prune-interval`, this instance's rows older than their `archive-retention-*` are
//! deleted, a kind at a time and in that order: body chunks, headers, module results, quota
//! tally rows, recipient links and messages, then sessions left without messages, then
//! recipient addresses no message refers to; and, with `[reputation]` enabled, the reputation
//! counters of days before the window (shared by every instance). A kind whose retention is below
//! `archive-retention-safeguard` is never pruned. A run stops at the first SQL error; the next
//! run starts over.
//!
//! Small batches, each its own short transaction (autocommit), with a pause between them: the
//! rows of a batch are found with a plain read and deleted by key, so no statement locks more
//! than a batch of rows for more than a moment and the consumer keeps writing meanwhile. The
//! key lists are padded to a power of two, so the statements stay prepared (see
//! `store::batch` on why that matters).
//!
//! Finding old children fast: `message_header`, `message_result` and `message_body` have no
//! date, but their `message` column is the message's UUID v7, which starts with its creation
//! time, and each has an index that starts with it. So "children of messages older than T" is
//! an index range `message < <UUID v7 of T>` (filtered exactly by `message.date`), and rows
//! already pruned are never scanned again. Children of messages whose UUID is not a v7 are left
//! to the cascade when their message goes.
//!
//! Messages are owned by an instance through their session (`session.cluegetter_instance`);
//! quota tally rows through quota → profile → class. Recipient addresses are shared by every
//! instance: an address goes when no message of any instance refers to it.

use std::time::Duration;

use chrono::{DateTime, Utc};
use platform::config::Config;
use platform::database::Database;
use sqlx::{AssertSqlSafe, MySql, QueryBuilder, SqlSafeStr as _};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::metrics;
use crate::store::values::pad_list;

/// The retention of each kind, as configured (see `[auditor]` in `cluegetter.example.toml`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    pub message: Duration,
    pub message_result: Duration,
    pub header: Duration,
    pub body: Duration,
    pub safeguard: Duration,
    /// `[reputation] window` when the module is enabled: counter days older than it go (they
    /// are no instance's, and not archive rows: the safeguard does not apply).
    pub reputation_window: Option<Duration>,
}

impl Retention {
    pub fn from_config(config: &Config) -> Self {
        let auditor = &config.auditor;
        Self {
            message: auditor.archive_retention_message,
            message_result: auditor.archive_retention_message_result,
            header: auditor.archive_retention_header,
            body: auditor.archive_retention_body,
            safeguard: auditor.archive_retention_safeguard,
            reputation_window: config
                .reputation
                .enabled
                .then_some(config.reputation.window),
        }
    }

    /// The first day of reputation counters kept at `now`: the first day the window overlaps.
    fn reputation_first_day(&self, now: DateTime<Utc>) -> Option<chrono::NaiveDate> {
        let window = chrono::Duration::from_std(self.reputation_window?).ok()?;
        Some(now.checked_sub_signed(window)?.date_naive())
    }

    /// The time before which rows of a kind with this retention go; `None` when the kind is
    /// never pruned (below the safeguard) or the retention reaches back before 1970.
    fn cutoff(&self, retention: Duration, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if retention < self.safeguard {
            return None;
        }
        let cutoff = now.checked_sub_signed(chrono::Duration::from_std(retention).ok()?)?;
        (cutoff.timestamp_millis() > 0).then_some(cutoff)
    }
}

/// Rows deleted by one run, per table.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    pub message_body: u64,
    pub message_header: u64,
    pub message_result: u64,
    pub quota_message: u64,
    pub message_recipient: u64,
    /// Messages themselves (their remaining children went with them, by cascade).
    pub message: u64,
    pub session: u64,
    pub recipient: u64,
    /// Delivery lines of Postfix's log (schema/0011) logged before the message cut-off.
    pub message_delivery: u64,
    /// Reputation counter days older than `[reputation] window`.
    pub reputation_count: u64,
}

impl Pruned {
    pub fn total(&self) -> u64 {
        self.message_body
            + self.message_header
            + self.message_result
            + self.quota_message
            + self.message_recipient
            + self.message
            + self.session
            + self.recipient
            + self.message_delivery
            + self.reputation_count
    }
}

/// Why a run stopped early.
#[derive(Debug, thiserror::Error)]
pub enum PruneError {
    #[error("pruning {table} failed: {source}")]
    Sql {
        table: &'static str,
        #[source]
        source: sqlx::Error,
    },
    /// Shutdown came first; what was deleted until then stays deleted.
    #[error("stopped by shutdown")]
    Stopped,
}

fn sql(table: &'static str) -> impl FnOnce(sqlx::Error) -> PruneError {
    move |source| PruneError::Sql { table, source }
}

/// Deletes one instance's old archive rows.
#[derive(Clone, Debug)]
pub struct Pruner {
    pool: Database,
    instance: String,
    retention: Retention,
    /// Rows one statement deletes at most (for messages, whose children go with them, a fifth).
    batch: usize,
    /// Pause between two batches, so the writers get the tables between them.
    pause: Duration,
}

/// The default batch: a few milliseconds of work per statement.
pub const DEFAULT_BATCH: usize = 1000;
/// The default pause between batches.
pub const DEFAULT_PAUSE: Duration = Duration::from_millis(50);

/// Child tables pruned by the message UUID range, with the metric label.
const CHILD_TABLES: [&str; 3] = ["message_body", "message_header", "message_result"];

impl Pruner {
    pub fn new(pool: impl Into<Database>, instance: &str, retention: Retention) -> Self {
        Self {
            pool: pool.into(),
            instance: instance.to_owned(),
            retention,
            batch: DEFAULT_BATCH,
            pause: DEFAULT_PAUSE,
        }
    }

    /// Other batch sizes and pauses (tests use tiny batches to cross batch boundaries).
    pub fn with_batches(mut self, batch: usize, pause: Duration) -> Self {
        self.batch = batch.max(1);
        self.pause = pause;
        self
    }

    /// Runs [`Pruner::prune_once`] every `interval` until `shutdown` fires; the first run
    /// comes a minute after start (or after `interval`, if that is shorter), so a restarted
    /// auditor first catches up with its queue. A zero interval returns at once.
    pub async fn run_every(self, interval: Duration, shutdown: CancellationToken) {
        if interval.is_zero() {
            tracing::info!("archive pruning is off (archive-prune-interval = 0s)");
            return;
        }
        metrics::describe_pruning();
        let mut next = tokio::time::Instant::now() + interval.min(Duration::from_secs(60));
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep_until(next) => {}
            }
            next = tokio::time::Instant::now() + interval;
            let started = std::time::Instant::now();
            match self.prune_once(Utc::now(), &shutdown).await {
                Ok(pruned) => tracing::info!(
                    instance = %self.instance,
                    rows = pruned.total(),
                    ?pruned,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "archive pruned"
                ),
                Err(PruneError::Stopped) => return,
                Err(error) => {
                    ::metrics::counter!(metrics::PRUNE_FAILURES).increment(1);
                    tracing::warn!(
                        instance = %self.instance,
                        error = format!("{:#}", anyhow::Error::new(error)),
                        next_run_in = ?interval,
                        "archive pruning stopped at an error; the next run starts over"
                    );
                }
            }
        }
    }

    /// One run, deleting what is older than its retention at `now`.
    ///
    /// # Errors
    /// The first SQL error (the run stops there), or [`PruneError::Stopped`] on shutdown.
    pub async fn prune_once(
        &self,
        now: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<Pruned, PruneError> {
        let mut pruned = Pruned::default();
        let instance: Option<u64> = sqlx::query_scalar("SELECT id FROM instance WHERE name = ?")
            .bind(&self.instance)
            .fetch_optional(&self.pool)
            .await
            .map_err(sql("instance"))?;
        if let Some(first_day) = self.retention.reputation_first_day(now) {
            pruned.reputation_count = self.reputation_days(first_day, shutdown).await?;
        }
        let Some(instance) = instance else {
            // no event of this instance was ever stored
            return Ok(pruned);
        };
        let retention = &self.retention;
        for table in CHILD_TABLES {
            let kind = match table {
                "message_body" => retention.body,
                "message_header" => retention.header,
                _ => retention.message_result,
            };
            if let Some(cutoff) = retention.cutoff(kind, now) {
                let rows = self.children(table, instance, cutoff, shutdown).await?;
                match table {
                    "message_body" => pruned.message_body = rows,
                    "message_header" => pruned.message_header = rows,
                    _ => pruned.message_result = rows,
                }
            }
        }
        if let Some(cutoff) = retention.cutoff(retention.message, now) {
            pruned.quota_message = self.quota_links(instance, cutoff, shutdown).await?;
            (pruned.message_recipient, pruned.message) =
                self.messages(instance, cutoff, shutdown).await?;
            pruned.session = self.sessions(instance, cutoff, shutdown).await?;
            pruned.recipient = self.recipients(shutdown).await?;
            pruned.message_delivery = self.deliveries(instance, cutoff, shutdown).await?;
        }
        Ok(pruned)
    }

    /// Reputation counter rows of days before `first_day` (by the `day` index).
    async fn reputation_days(
        &self,
        first_day: chrono::NaiveDate,
        shutdown: &CancellationToken,
    ) -> Result<u64, PruneError> {
        const TABLE: &str = "reputation_count";
        let mut total = 0;
        loop {
            let rows = sqlx::query("DELETE FROM reputation_count WHERE day < ? LIMIT ?")
                .bind(first_day)
                .bind(self.batch as u64)
                .execute(&self.pool)
                .await
                .map_err(sql(TABLE))?
                .rows_affected();
            Self::count(TABLE, rows);
            total += rows;
            if rows < self.batch as u64 {
                return Ok(total);
            }
            self.pause(shutdown).await?;
        }
    }

    /// Pauses between batches; `Err(Stopped)` on shutdown.
    async fn pause(&self, shutdown: &CancellationToken) -> Result<(), PruneError> {
        tokio::select! {
            () = shutdown.cancelled() => Err(PruneError::Stopped),
            () = tokio::time::sleep(self.pause) => Ok(()),
        }
    }

    fn count(table: &'static str, rows: u64) {
        ::metrics::counter!(metrics::PRUNED_ROWS, "table" => table).increment(rows);
    }

    /// Rows of a child table (`message_body`, `message_header`, `message_result`) whose
    /// message is older than `cutoff`.
    async fn children(
        &self,
        table: &'static str,
        instance: u64,
        cutoff: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<u64, PruneError> {
        let bound = uuid_v7_floor(cutoff);
        // `table` is one of CHILD_TABLES, never input
        let find = AssertSqlSafe(format!(
            "SELECT c.message FROM {table} c \
             JOIN message m ON m.id = c.message \
             JOIN session s ON s.id = m.session \
             WHERE c.message < ? AND m.date < ? AND s.cluegetter_instance = ? \
             ORDER BY c.message LIMIT ?"
        ))
        .into_sql_str();
        let mut total = 0;
        loop {
            let mut found: Vec<Uuid> = sqlx::query_scalar(find.clone())
                .bind(bound)
                .bind(cutoff)
                .bind(instance)
                .bind(self.batch as u64)
                .fetch_all(&self.pool)
                .await
                .map_err(sql(table))?;
            let full = found.len() >= self.batch;
            found.dedup();
            if !found.is_empty() {
                let mut delete =
                    QueryBuilder::<MySql>::new(format!("DELETE FROM {table} WHERE message IN "));
                push_list(&mut delete, &found);
                let rows = delete
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(sql(table))?
                    .rows_affected();
                Self::count(table, rows);
                total += rows;
            }
            if !full {
                return Ok(total);
            }
            self.pause(shutdown).await?;
        }
    }

    /// Quota tally rows of this instance's quotas older than `cutoff`.
    async fn quota_links(
        &self,
        instance: u64,
        cutoff: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<u64, PruneError> {
        const TABLE: &str = "quota_message";
        let quotas: Vec<u64> = sqlx::query_scalar(
            "SELECT q.id FROM quota q \
             JOIN quota_profile p ON p.id = q.profile \
             JOIN quota_class c ON c.id = p.class \
             WHERE c.cluegetter_instance = ? ORDER BY q.id",
        )
        .bind(instance)
        .fetch_all(&self.pool)
        .await
        .map_err(sql(TABLE))?;
        let mut total = 0;
        // a range of the (quota, date, ...) index per quota in the list
        for chunk in quotas.chunks(self.batch) {
            loop {
                let mut delete =
                    QueryBuilder::<MySql>::new("DELETE FROM quota_message WHERE quota IN ");
                push_list(&mut delete, chunk);
                delete.push(" AND date < ").push_bind(cutoff);
                delete.push(" LIMIT ").push_bind(self.batch as u64);
                let rows = delete
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(sql(TABLE))?
                    .rows_affected();
                Self::count(TABLE, rows);
                total += rows;
                if rows < self.batch as u64 {
                    break;
                }
                self.pause(shutdown).await?;
            }
        }
        Ok(total)
    }

    /// Messages older than `cutoff`, oldest first: their recipient links, then the messages
    /// (whatever children are left go by cascade). Returns (links, messages).
    async fn messages(
        &self,
        instance: u64,
        cutoff: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<(u64, u64), PruneError> {
        // a message has a dozen or more child rows: fewer messages per batch
        let batch = (self.batch / 5).max(1);
        let (mut links, mut messages) = (0, 0);
        loop {
            let found: Vec<Uuid> = sqlx::query_scalar(
                "SELECT m.id FROM message m JOIN session s ON s.id = m.session \
                 WHERE m.date < ? AND s.cluegetter_instance = ? ORDER BY m.date LIMIT ?",
            )
            .bind(cutoff)
            .bind(instance)
            .bind(batch as u64)
            .fetch_all(&self.pool)
            .await
            .map_err(sql("message"))?;
            if !found.is_empty() {
                let mut delete =
                    QueryBuilder::<MySql>::new("DELETE FROM message_recipient WHERE message IN ");
                push_list(&mut delete, &found);
                let rows = delete
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(sql("message_recipient"))?
                    .rows_affected();
                Self::count("message_recipient", rows);
                links += rows;
                let mut delete = QueryBuilder::<MySql>::new("DELETE FROM message WHERE id IN ");
                push_list(&mut delete, &found);
                let rows = delete
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(sql("message"))?
                    .rows_affected();
                Self::count("message", rows);
                messages += rows;
            }
            if found.len() < batch {
                return Ok((links, messages));
            }
            self.pause(shutdown).await?;
        }
    }

    /// Sessions of this instance that began before `cutoff` and have no message (left).
    async fn sessions(
        &self,
        instance: u64,
        cutoff: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<u64, PruneError> {
        let mut total = 0;
        loop {
            let found: Vec<Uuid> = sqlx::query_scalar(
                "SELECT s.id FROM session s \
                 WHERE s.cluegetter_instance = ? AND s.date_connect < ? \
                   AND NOT EXISTS (SELECT 1 FROM message m WHERE m.session = s.id) \
                 ORDER BY s.date_connect LIMIT ?",
            )
            .bind(instance)
            .bind(cutoff)
            .bind(self.batch as u64)
            .fetch_all(&self.pool)
            .await
            .map_err(sql("session"))?;
            if !found.is_empty() {
                // checked again: an auditor may have stored a message of it meanwhile
                let mut delete = QueryBuilder::<MySql>::new("DELETE FROM session WHERE id IN ");
                push_list(&mut delete, &found);
                delete
                    .push(" AND NOT EXISTS (SELECT 1 FROM message m WHERE m.session = session.id)");
                let rows = delete
                    .build()
                    .execute(&self.pool)
                    .await
                    .map_err(sql("session"))?
                    .rows_affected();
                Self::count("session", rows);
                total += rows;
            }
            if found.len() < self.batch {
                return Ok(total);
            }
            self.pause(shutdown).await?;
        }
    }

    /// Delivery lines of this instance logged before `cutoff` (they are joined to messages
    /// only when read, so they go by their own time, with the messages' retention).
    async fn deliveries(
        &self,
        instance: u64,
        cutoff: DateTime<Utc>,
        shutdown: &CancellationToken,
    ) -> Result<u64, PruneError> {
        let mut total = 0;
        loop {
            let rows = sqlx::query(
                "DELETE FROM message_delivery WHERE cluegetter_instance = ? AND log_time < ? \
                 ORDER BY log_time LIMIT ?",
            )
            .bind(instance)
            .bind(crate::store::values::datetime(cutoff))
            .bind(self.batch as u64)
            .execute(&self.pool)
            .await
            .map_err(sql("message_delivery"))?
            .rows_affected();
            Self::count("message_delivery", rows);
            total += rows;
            if rows < self.batch as u64 {
                return Ok(total);
            }
            self.pause(shutdown).await?;
        }
    }

    /// Recipient addresses no message (of any instance) refers to: one pass over the table in
    /// id order.
    async fn recipients(&self, shutdown: &CancellationToken) -> Result<u64, PruneError> {
        let mut total = 0;
        let mut after = 0_u64;
        loop {
            let found: Vec<u64> = sqlx::query_scalar(
                "SELECT r.id FROM recipient r \
                 WHERE r.id > ? \
                   AND NOT EXISTS (SELECT 1 FROM message_recipient mr WHERE mr.recipient = r.id) \
                 ORDER BY r.id LIMIT ?",
            )
            .bind(after)
            .bind(self.batch as u64)
            .fetch_all(&self.pool)
            .await
            .map_err(sql("recipient"))?;
            let Some(last) = found.last().copied() else {
                return Ok(total);
            };
            let mut delete = QueryBuilder::<MySql>::new("DELETE FROM recipient WHERE id IN ");
            push_list(&mut delete, &found);
            delete.push(
                " AND NOT EXISTS (SELECT 1 FROM message_recipient mr WHERE mr.recipient = recipient.id)",
            );
            let rows = delete
                .build()
                .execute(&self.pool)
                .await
                .map_err(sql("recipient"))?
                .rows_affected();
            Self::count("recipient", rows);
            total += rows;
            if found.len() < self.batch {
                return Ok(total);
            }
            after = last;
            self.pause(shutdown).await?;
        }
    }
}

/// `(?, ?, ...)` with the values bound, padded to a power of two (see [`pad_list`]).
fn push_list<T>(query: &mut QueryBuilder<MySql>, values: &[T])
where
    T: for<'t> sqlx::Encode<'t, MySql> + sqlx::Type<MySql> + Copy,
{
    let mut values = values.to_vec();
    pad_list(&mut values);
    query.push("(");
    let mut list = query.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    query.push(")");
}

/// The smallest UUID v7 of the millisecond `at`: every v7 UUID made before `at` sorts below
/// it (bytewise, as `BINARY(16)` compares).
pub fn uuid_v7_floor(at: DateTime<Utc>) -> Uuid {
    let millis = u64::try_from(at.timestamp_millis()).unwrap_or(0);
    let mut bytes = [0_u8; 16];
    bytes[..6].copy_from_slice(&millis.to_be_bytes()[2..]);
    bytes[6] = 0x70;
    bytes[8] = 0x80;
    Uuid::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_v7_floor_sorts_between_earlier_and_later_uuids() {
        let at = DateTime::parse_from_rfc3339("2026-11-25T08:30:16.123Z")
            .unwrap()
            .with_timezone(&Utc);
        let floor = uuid_v7_floor(at);
        assert_eq!(floor.get_version_num(), 7);
        let (secs, nanos) = floor.get_timestamp().unwrap().to_unix();
        assert_eq!((secs, nanos), (1_795_595_416, 123_000_000));
        let millis = |offset: i64| {
            let ts = at + chrono::Duration::milliseconds(offset);
            let ts = uuid::Timestamp::from_unix(
                uuid::NoContext,
                ts.timestamp() as u64,
                ts.timestamp_subsec_nanos(),
            );
            Uuid::new_v7(ts)
        };
        for _ in 0..100 {
            assert!(millis(-1).as_bytes() < floor.as_bytes());
            assert!(millis(0).as_bytes() >= floor.as_bytes());
            assert!(millis(1).as_bytes() > floor.as_bytes());
        }
    }

    #[test]
    fn a_retention_below_the_safeguard_is_never_pruned() {
        let week = Duration::from_secs(604_800);
        let retention = Retention {
            message: week * 52,
            message_result: week,
            header: Duration::ZERO,
            body: week * 2,
            safeguard: Duration::from_secs(610_848),
            reputation_window: None,
        };
        let now = Utc::now();
        assert_eq!(retention.cutoff(retention.message_result, now), None);
        assert_eq!(retention.cutoff(retention.header, now), None);
        assert_eq!(
            retention.cutoff(retention.body, now),
            Some(now - chrono::Duration::weeks(2))
        );
        // further back than 1970: nothing is that old
        assert_eq!(retention.cutoff(week * 52 * 100, now), None);
    }
}
