//! All of the auditor's SQL for writing: batches of audit events into the archive tables of
//! `schema/` (pruning is [`crate::prune`]). What the web interface reads is [`read`]'s.
//!
//! A batch is one transaction, written with a few multi-row statements per table
//! ([`batch`]). If the database refuses one of its values (a value that does not fit its
//! column, a second result of one module, ...), the transaction is rolled back and the batch
//! is written again an event at a time, each in a savepoint: the refused event is rolled back
//! to its savepoint and reported as [`Outcome::Refused`], so the other events of the batch are
//! still committed. Any other error (connection lost, deadlock, lock wait timeout, missing
//! table) aborts the whole batch and is returned, so the caller acks nothing and tries again.
//!
//! Idempotence: an event whose message UUID already has a row is [`Outcome::Duplicate`] and
//! changes nothing, not even its session row.
//!
//! This module knows nothing of the broker.

mod batch;
pub mod bounce;
pub mod delivery;
pub mod read;
pub mod values;

use std::collections::HashMap;

use platform::config::Urls;
use platform::database::{Database, PoolSettings};
use sqlx::Connection as _;
use sqlx::mysql::MySqlDatabaseError;
use wire::AuditEvent;

pub use values::{canonical_ip, ip_bin, network_bounds, split_address};

/// What became of one event of a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Its rows are in the committed transaction.
    Stored,
    /// A row with its message UUID existed already; nothing was written.
    Duplicate,
    /// The database refused one of its values; nothing of it was written. The text says why.
    Refused(String),
}

/// The archive's database (one server, or a Galera cluster's nodes with failover), which does
/// not connect until it is used, so the auditor starts (and keeps its broker consumer) while
/// the database is down; [`platform::database`] gives every connection UTC, strict mode and
/// READ COMMITTED (fewer gap locks between concurrent auditors), and waits at most 5 s for one
/// (the callers have their own backoff).
///
/// # Errors
/// A URL cannot be parsed.
pub fn connect_lazy(urls: &Urls, max_connections: u32) -> Result<Database, sqlx::Error> {
    let settings = PoolSettings::new(max_connections).statement_cache(batch::STATEMENT_CACHE);
    Database::new(urls, settings)
}

/// Ids of `instance` and `cluegetter_client` rows, known to be committed.
#[derive(Debug, Default)]
struct Ids {
    instances: HashMap<String, u64>,
    clients: HashMap<(String, String), u64>,
    /// Recipient addresses by (domain, local part) as the unique key compares them
    /// (`batch::address_key`); at most [`RECIPIENT_CACHE`].
    recipients: HashMap<(String, String), u64>,
}

/// Recipient ids kept in memory at most; beyond, the cache starts over.
const RECIPIENT_CACHE: usize = 100_000;

impl Ids {
    fn extend(&mut self, other: Ids) {
        self.instances.extend(other.instances);
        self.clients.extend(other.clients);
        if self.recipients.len() + other.recipients.len() > RECIPIENT_CACHE {
            self.recipients.clear();
        }
        self.recipients.extend(other.recipients);
    }
}

/// Which parts of a message are stored (`archive-retention-*` of 0s: none of that kind).
/// Messages, sessions and recipient links always are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kinds {
    pub headers: bool,
    pub results: bool,
    /// Only when the gateway sent the body at all.
    pub bodies: bool,
    /// The reputation counters (`reputation_count`), with `client_network`'s prefixes: when
    /// `[reputation] enabled`.
    pub reputation: Option<platform::reputation::Prefixes>,
}

impl Kinds {
    pub const ALL: Kinds = Kinds {
        headers: true,
        results: true,
        bodies: true,
        reputation: None,
    };

    pub fn from_config(config: &platform::config::Config) -> Self {
        let auditor = &config.auditor;
        Self {
            headers: !auditor.archive_retention_header.is_zero(),
            results: !auditor.archive_retention_message_result.is_zero(),
            bodies: !auditor.archive_retention_body.is_zero(),
            reputation: config
                .reputation
                .enabled
                .then(|| config.reputation.prefixes()),
        }
    }
}

/// Writes audit events; owns the pool and the small id caches.
pub struct Store {
    pool: Database,
    kinds: Kinds,
    /// Only ever holds ids of committed rows: ids learned in a batch are added after its commit.
    ids: Ids,
}

impl Store {
    /// A store that keeps every part of a message.
    pub fn new(pool: impl Into<Database>) -> Self {
        Self::with_kinds(pool, Kinds::ALL)
    }

    pub fn with_kinds(pool: impl Into<Database>, kinds: Kinds) -> Self {
        Self {
            pool: pool.into(),
            kinds,
            ids: Ids::default(),
        }
    }

    pub fn pool(&self) -> &Database {
        &self.pool
    }

    /// Writes the events in one transaction and returns what became of each, in order.
    ///
    /// # Errors
    /// Anything that is not a refusal of one event's values: the transaction is rolled back and
    /// nothing of the batch is stored. Trying again later is always safe.
    pub async fn write_batch(
        &mut self,
        events: &[&AuditEvent],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let outcome = self.run_write_batch(events).await;
        // a node that is gone makes the database look for another before the retry
        self.pool.report(outcome)
    }

    async fn run_write_batch(
        &mut self,
        events: &[&AuditEvent],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        match self.try_write_batch(events).await {
            Err(error) if mysql_error_number(&error) == Some(ER_NO_REFERENCED_ROW_2) => {
                // A cached row is gone (a recipient address pruned as unused, an instance
                // deleted by hand): look everything up again.
                tracing::info!(%error, "a cached id is gone; writing the batch again");
                self.ids = Ids::default();
                self.try_write_batch(events).await
            }
            other => other,
        }
    }

    async fn try_write_batch(
        &mut self,
        events: &[&AuditEvent],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        match self.write_together(events).await {
            Err(error) if is_refusal(&error) => {
                tracing::debug!(
                    %error,
                    events = events.len(),
                    "the database refused a value of the batch; writing it an event at a time"
                );
                self.write_one_by_one(events).await
            }
            other => other,
        }
    }

    /// The whole batch with a few statements per table.
    async fn write_together(
        &mut self,
        events: &[&AuditEvent],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut learned = Ids::default();
        let written = batch::write(&mut tx, events, self.kinds, &self.ids, &mut learned).await?;
        if written.contains(&batch::Written::Stored) {
            tx.commit().await?;
            self.ids.extend(learned);
        } else {
            // all duplicates: not even a session row may change (an event that another
            // auditor stored while this one wrote its session is one)
            tx.rollback().await?;
        }
        Ok(written
            .into_iter()
            .map(|w| match w {
                batch::Written::Stored => Outcome::Stored,
                batch::Written::Duplicate => Outcome::Duplicate,
            })
            .collect())
    }

    /// Each event in a savepoint of its own, so that a refused one is left out alone.
    async fn write_one_by_one(
        &mut self,
        events: &[&AuditEvent],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let mut learned = Ids::default();
        let mut outcomes = Vec::with_capacity(events.len());
        // an event that comes twice in the batch: stored once, then a duplicate
        let mut stored = std::collections::HashSet::new();
        for event in events {
            if stored.contains(&event.message_id) {
                outcomes.push(Outcome::Duplicate);
                continue;
            }
            let mut savepoint = tx.begin().await?;
            let mut event_learned = Ids::default();
            let written = batch::write(
                &mut savepoint,
                &[*event],
                self.kinds,
                &self.ids,
                &mut event_learned,
            )
            .await;
            match written {
                Ok(written) if written == [batch::Written::Stored] => {
                    savepoint.commit().await?;
                    learned.extend(event_learned);
                    stored.insert(event.message_id);
                    outcomes.push(Outcome::Stored);
                }
                Ok(_) => {
                    savepoint.rollback().await?;
                    outcomes.push(Outcome::Duplicate);
                }
                Err(error) if is_refusal(&error) => {
                    savepoint.rollback().await?;
                    outcomes.push(Outcome::Refused(format!(
                        "refused by the database: {error}"
                    )));
                }
                Err(error) => return Err(error),
            }
        }
        tx.commit().await?;
        self.ids.extend(learned);
        Ok(outcomes)
    }
}

// MySQL/MariaDB error numbers (mysqld_error.h).
const ER_BAD_NULL_ERROR: u16 = 1048;
const ER_DUP_ENTRY: u16 = 1062;
const ER_WARN_DATA_OUT_OF_RANGE: u16 = 1264;
const WARN_DATA_TRUNCATED: u16 = 1265;
const ER_TRUNCATED_WRONG_VALUE: u16 = 1292;
const ER_INVALID_CHARACTER_STRING: u16 = 1300;
const ER_TRUNCATED_WRONG_VALUE_FOR_FIELD: u16 = 1366;
const ER_ILLEGAL_VALUE_FOR_TYPE: u16 = 1367;
const ER_DATA_TOO_LONG: u16 = 1406;
const ER_NO_REFERENCED_ROW_2: u16 = 1452;
const ER_INVALID_JSON_TEXT: u16 = 3140;
const ER_CHECK_CONSTRAINT_VIOLATED: u16 = 3819;
const ER_CONSTRAINT_FAILED: u16 = 4025;

/// The database errors that say "this event's values are wrong" rather than "the database has a
/// problem": retrying the same event can never succeed, so it is dead-lettered instead.
const REFUSALS: &[u16] = &[
    ER_BAD_NULL_ERROR,
    ER_DUP_ENTRY,
    ER_WARN_DATA_OUT_OF_RANGE,
    WARN_DATA_TRUNCATED,
    ER_TRUNCATED_WRONG_VALUE,
    ER_INVALID_CHARACTER_STRING,
    ER_TRUNCATED_WRONG_VALUE_FOR_FIELD,
    ER_ILLEGAL_VALUE_FOR_TYPE,
    ER_DATA_TOO_LONG,
    ER_INVALID_JSON_TEXT,
    ER_CHECK_CONSTRAINT_VIOLATED,
    ER_CONSTRAINT_FAILED,
];

fn mysql_error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .map(MySqlDatabaseError::number),
        _ => None,
    }
}

/// Whether the error refuses one event's values (see [`REFUSALS`]); a value the driver could
/// not encode counts too.
pub fn is_refusal(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Encode(_))
        || mysql_error_number(error).is_some_and(|n| REFUSALS.contains(&n))
}

fn is_duplicate_key(error: &sqlx::Error) -> bool {
    mysql_error_number(error) == Some(ER_DUP_ENTRY)
}
