//! The one way a process opens MariaDB: a pool that connects on first use (so a process starts,
//! and keeps its broker consumer, while the database is down), and whose every connection runs
//! in UTC, in strict mode (a value that does not fit is an error, never silently cut) and at
//! READ COMMITTED (each statement sees what committed before it; no gap locks between
//! concurrent writers).

use std::sync::OnceLock;
use std::time::Duration;

use sqlx::Executor as _;
use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_utc_and_refuse_a_bad_url() {
        assert!(options("mysql://root@127.0.0.1:3306/cluegetter").is_ok());
        assert!(options("not a url").is_err());
    }
}
