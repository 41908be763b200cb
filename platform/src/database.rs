//! The one way a process opens MariaDB: a pool that connects on first use (so a process starts,
//! and keeps its broker consumer, while the database is down), and whose every connection runs
//! in UTC, in strict mode (a value that does not fit is an error, never silently cut) and at
//! READ COMMITTED (each statement sees what committed before it; no gap locks between
//! concurrent writers).

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::Executor as _;
use sqlx::mysql::{MySqlConnectOptions, MySqlDatabaseError, MySqlPool, MySqlPoolOptions};

use crate::backoff::Backoff;

use crate::config::DatabaseConfig;

/// How a pool is sized and how long a caller waits for a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolSettings {
    /// At least 1.
    pub max_connections: u32,
    /// How long taking a connection may wait; short while the database is down, because the
    /// callers have their own backoff (or a module timeout).
    pub acquire_timeout: Duration,
    /// Prepared statements kept per connection; `None`: sqlx's default.
    pub statement_cache: Option<usize>,
}

impl PoolSettings {
    /// `max_connections`, waiting at most 5 s for one.
    pub fn new(max_connections: u32) -> Self {
        Self {
            max_connections,
            acquire_timeout: Duration::from_secs(5),
            statement_cache: None,
        }
    }

    /// `[database] max-connections`.
    pub fn from_config(config: &DatabaseConfig) -> Self {
        Self::new(config.max_connections)
    }

    #[must_use]
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    #[must_use]
    pub fn statement_cache(mut self, capacity: usize) -> Self {
        self.statement_cache = Some(capacity);
        self
    }
}

/// The connect options of a URL, in UTC.
///
/// # Errors
/// The URL cannot be parsed.
pub fn options(url: &str) -> Result<MySqlConnectOptions, sqlx::Error> {
    let options: MySqlConnectOptions = url.parse()?;
    Ok(options.timezone(Some("+00:00".to_owned())))
}

/// A pool for `url` that connects on first use. Call inside a Tokio runtime (sqlx starts its
/// maintenance task); [`LazyPool`] defers even that.
///
/// # Errors
/// The URL cannot be parsed.
pub fn pool(url: &str, settings: &PoolSettings) -> Result<MySqlPool, sqlx::Error> {
    Ok(pool_with(options(url)?, settings))
}

/// As [`pool`], from options already parsed.
pub fn pool_with(options: MySqlConnectOptions, settings: &PoolSettings) -> MySqlPool {
    let options = match settings.statement_cache {
        Some(capacity) => options.statement_cache_capacity(capacity),
        None => options,
    };
    MySqlPoolOptions::new()
        .max_connections(settings.max_connections.max(1))
        .acquire_timeout(settings.acquire_timeout)
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
        .connect_lazy_with(options)
}

/// A pool made on first use, for stores built outside a runtime (a module is configured
/// before the worker's runtime serves it).
#[derive(Debug)]
pub struct LazyPool {
    options: MySqlConnectOptions,
    settings: PoolSettings,
    pool: OnceLock<MySqlPool>,
}

impl LazyPool {
    /// # Errors
    /// The URL cannot be parsed.
    pub fn new(url: &str, settings: PoolSettings) -> Result<Self, sqlx::Error> {
        Ok(Self {
            options: options(url)?,
            settings,
            pool: OnceLock::new(),
        })
    }

    /// The pool; made now if this is the first call (inside the runtime).
    pub fn get(&self) -> &MySqlPool {
        self.pool
            .get_or_init(|| pool_with(self.options.clone(), &self.settings))
    }
}

/// Whether the error says the server could not be reached or the connection broke (worth
/// retrying elsewhere or later), as opposed to a statement the server refused.
pub fn is_connection_error(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    )
}

/// MariaDB's "Deadlock found when trying to get lock": InnoDB chose this transaction as a
/// deadlock victim, or (under Galera) another node's transaction certified first.
pub const ER_LOCK_DEADLOCK: u16 = 1213;
/// "Lock wait timeout exceeded".
pub const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

/// Whether the server rolled the transaction back because it lost a conflict with another
/// one, and asks for it to be tried again: a deadlock, a Galera certification failure (both
/// 1213) or a lock wait timeout (1205).
pub fn is_conflict(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), ER_LOCK_DEADLOCK | ER_LOCK_WAIT_TIMEOUT)),
        _ => false,
    }
}

/// The one way to retry a transaction that lost a conflict ([`is_conflict`]): a bounded number
/// of attempts, each after a short pause with jitter, so that two writers that collided (on
/// two Galera nodes, they collide at COMMIT) do not collide again at once.
///
/// ```ignore
/// let mut retries = ConflictRetries::new("quota transaction", 5);
/// loop {
///     let outcome = transaction(&mut conn).await;
///     if let Err(error) = &outcome && retries.again(error).await { continue; }
///     return outcome;
/// }
/// ```
#[derive(Debug)]
pub struct ConflictRetries {
    /// What is tried, for the log.
    what: &'static str,
    made: u32,
    attempts: u32,
    pause: Backoff,
}

impl ConflictRetries {
    /// First pause; they double up to [`ConflictRetries::MAX_PAUSE`], with jitter.
    pub const FIRST_PAUSE: Duration = Duration::from_millis(2);
    pub const MAX_PAUSE: Duration = Duration::from_millis(50);

    /// At most `attempts` in all (the first included).
    pub fn new(what: &'static str, attempts: u32) -> Self {
        Self {
            what,
            made: 1,
            attempts,
            pause: Backoff::starting_at(Self::FIRST_PAUSE, Self::MAX_PAUSE).with_jitter(),
        }
    }

    /// Whether to try again after `error`: only a conflict, and only while attempts are left;
    /// pauses before saying yes.
    pub async fn again(&mut self, error: &sqlx::Error) -> bool {
        if !self.should_retry(error) {
            return false;
        }
        let pause = self.pause.next_delay();
        tracing::debug!(%error, attempt = self.made, ?pause, "{} lost a conflict; retrying", self.what);
        self.made += 1;
        tokio::time::sleep(pause).await;
        true
    }

    /// The decision of [`ConflictRetries::again`], without the pause.
    pub fn should_retry(&self, error: &sqlx::Error) -> bool {
        self.made < self.attempts && is_conflict(error)
    }

    /// Attempts made so far.
    pub fn attempts_made(&self) -> u32 {
        self.made
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_conflicts_are_retried_and_only_so_often() {
        let retries = ConflictRetries::new("test", 3);
        assert!(!retries.should_retry(&sqlx::Error::RowNotFound));
        assert!(!retries.should_retry(&sqlx::Error::PoolTimedOut));
    }

    #[test]
    fn options_are_utc_and_refuse_a_bad_url() {
        assert!(options("mysql://root@127.0.0.1:3306/cluegetter").is_ok());
        assert!(options("not a url").is_err());
    }
}
