//! The one way a process opens MariaDB: a pool that connects on first use (so a process starts,
//! and keeps its broker consumer, while the database is down), and whose every connection runs
//! in UTC, in strict mode (a value that does not fit is an error, never silently cut) and at
//! READ COMMITTED (each statement sees what committed before it; no gap locks between
//! concurrent writers).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{StreamExt as _, TryStreamExt as _};
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions,
    MySqlQueryResult, MySqlRow, MySqlStatement, MySqlTypeInfo,
};
use sqlx::pool::PoolConnection;
use sqlx::{Connection as _, Describe, Either, Execute, Executor, SqlStr, Transaction};

use crate::backoff::Backoff;
use crate::config::{DatabaseConfig, Urls, redact};

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
                sqlx::Executor::execute(
                    &mut *conn,
                    "SET SESSION sql_mode = CONCAT(@@SESSION.sql_mode, ',STRICT_ALL_TABLES')",
                )
                .await?;
                sqlx::Executor::execute(
                    &mut *conn,
                    "SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
                )
                .await?;
                if is_galera(&mut *conn).await? {
                    // causal reads: a statement sees every transaction committed anywhere in
                    // the cluster before it began (a quota reservation committed on one node
                    // and settled on another; an archive row stored on one node and looked
                    // up on another), not only those this node has applied so far
                    sqlx::Executor::execute(&mut *conn, "SET SESSION wsrep_sync_wait = 1").await?;
                }
                Ok(())
            })
        })
        .connect_lazy_with(options)
}

/// The one way a process reaches MariaDB: the nodes of `[database] url` (one server, or the
/// nodes of a Galera cluster), a pool for each made on first use (so a store can be built
/// outside a runtime, and a process starts while the database is down), and the node in use.
///
/// Statements run on the node in use: `&Database` is an [`sqlx::Executor`], and
/// [`Database::begin`] and [`Database::acquire`] take a connection from that node's pool. When
/// one of them fails in a way that says the node is gone or cannot serve
/// ([`is_connection_error`]) and there is more than one node, a single probe (never two at
/// once) tries the nodes in turn, starting after the one in use, and moves every later
/// statement to the first that answers and is ready (Galera's `wsrep_ready`). The caller's
/// statement still fails: callers already retry (the auditor with backoff, a module as an
/// error result), and the retry runs on the new node. A statement that fails inside a
/// transaction is not seen here; the next `begin` on the dead node is.
///
/// Cheap to clone: clones share the pools and the node in use.
#[derive(Clone)]
pub struct Database {
    inner: Arc<Inner>,
}

struct Inner {
    nodes: Vec<Node>,
    settings: PoolSettings,
    /// Index into `nodes` of the node statements go to.
    current: AtomicUsize,
    /// Whether a probe is running (at most one).
    probing: AtomicBool,
}

struct Node {
    /// The URL without its password, for logs.
    shown: String,
    options: MySqlConnectOptions,
    pool: OnceLock<MySqlPool>,
}

impl fmt::Debug for Database {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Database")
            .field(
                "nodes",
                &self
                    .inner
                    .nodes
                    .iter()
                    .map(|n| &n.shown)
                    .collect::<Vec<_>>(),
            )
            .field("current", &self.current_node())
            .finish_non_exhaustive()
    }
}

/// Transactions tried again after losing a conflict ([`ConflictRetries`]), by what was tried.
pub const METRIC_CONFLICT_RETRIES: &str = "cluegetter_database_conflict_retries_total";
/// Moves to another database node ([`Database`]).
pub const METRIC_FAILOVERS: &str = "cluegetter_database_failovers_total";

/// Describes this module's metrics (once the recorder is installed).
pub fn describe_metrics() {
    metrics::describe_counter!(
        METRIC_CONFLICT_RETRIES,
        "Database transactions tried again after losing a conflict (deadlock, Galera certification, lock wait timeout)"
    );
    metrics::describe_counter!(
        METRIC_FAILOVERS,
        "Moves to another node of [database] url after the node in use failed"
    );
}

/// How long the probe waits for one node to accept a connection and answer.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The longest acquire timeout of a pool whose `[database] url` is a list: taking a connection
/// of a node that died fails after it, and that failure is what starts the probe.
pub const LIST_ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

impl Database {
    /// The nodes of `urls`, in the order they are tried; nothing connects yet.
    ///
    /// # Errors
    /// A URL cannot be parsed, or there is none.
    pub fn new(urls: &Urls, settings: PoolSettings) -> Result<Self, sqlx::Error> {
        let nodes = urls
            .as_slice()
            .iter()
            .map(|url| {
                Ok(Node {
                    shown: redact(url),
                    options: options(url)?,
                    pool: OnceLock::new(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        if nodes.is_empty() {
            return Err(sqlx::Error::Configuration("no database URL".into()));
        }
        let settings = if nodes.len() > 1 {
            // a dead node costs a connection attempt refused again and again until the acquire
            // times out, and only then the probe starts: keep that short with a list
            PoolSettings {
                acquire_timeout: settings.acquire_timeout.min(LIST_ACQUIRE_TIMEOUT),
                ..settings
            }
        } else {
            settings
        };
        Ok(Self::with_nodes(nodes, settings))
    }

    /// One node whose pool exists already (tests, benchmarks, one-shot commands).
    pub fn from_pool(pool: MySqlPool) -> Self {
        let options = pool.connect_options();
        let node = Node {
            shown: format!("{}:{}", options.get_host(), options.get_port()),
            options: (*options).clone(),
            pool: OnceLock::from(pool),
        };
        Self::with_nodes(vec![node], PoolSettings::new(1))
    }

    fn with_nodes(nodes: Vec<Node>, settings: PoolSettings) -> Self {
        Self {
            inner: Arc::new(Inner {
                nodes,
                settings,
                current: AtomicUsize::new(0),
                probing: AtomicBool::new(false),
            }),
        }
    }

    /// The pool of the node in use; made now if this is its first use (inside the runtime).
    pub fn pool(&self) -> &MySqlPool {
        let node = &self.inner.nodes[self.current_node()];
        node.pool
            .get_or_init(|| pool_with(node.options.clone(), &self.inner.settings))
    }

    /// Index (in `[database] url`) of the node in use.
    pub fn current_node(&self) -> usize {
        self.inner.current.load(Ordering::Relaxed) % self.inner.nodes.len().max(1)
    }

    /// Starts a transaction on the node in use.
    ///
    /// # Errors
    /// No connection could be had (the node is then probed, see [`Database`]).
    pub async fn begin(&self) -> Result<Transaction<'static, MySql>, sqlx::Error> {
        let begun = self.pool().begin().await;
        self.report(begun)
    }

    /// A connection of the node in use.
    ///
    /// # Errors
    /// No connection could be had (the node is then probed, see [`Database`]).
    pub async fn acquire(&self) -> Result<PoolConnection<MySql>, sqlx::Error> {
        let acquired = self.pool().acquire().await;
        self.report(acquired)
    }

    /// Closes every pool made so far, waiting for their connections to be returned.
    pub async fn close(&self) {
        for node in &self.inner.nodes {
            if let Some(pool) = node.pool.get() {
                pool.close().await;
            }
        }
    }

    /// Passes `outcome` through; a failure that says the node is gone starts a probe.
    pub fn report<T>(&self, outcome: Result<T, sqlx::Error>) -> Result<T, sqlx::Error> {
        if let Err(error) = &outcome {
            self.failed(error);
        }
        outcome
    }

    /// Tells the database that a statement on the node in use failed with `error`: a
    /// connection error ([`is_connection_error`]) starts a probe when there is another node to
    /// go to and no probe is running. Anything else is ignored.
    pub fn failed(&self, error: &sqlx::Error) {
        if self.inner.nodes.len() < 2 || !is_connection_error(error) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.inner.probing.swap(true, Ordering::AcqRel) {
            return;
        }
        let from = self.current_node();
        // A timed-out acquire may only be a busy pool: the node in use is asked first then.
        // Anything else says the node itself failed: the others first, it last.
        let busy = matches!(error, sqlx::Error::PoolTimedOut);
        tracing::warn!(
            %error,
            node = %self.inner.nodes[from].shown,
            "the database node in use failed; looking for one that answers"
        );
        let db = self.clone();
        runtime.spawn(async move {
            db.probe(from, busy).await;
            db.inner.probing.store(false, Ordering::Release);
        });
    }

    /// Tries the nodes in [`probe_order`] (the node in use first when `in_use_first`) and
    /// moves to the first that is ready.
    async fn probe(&self, from: usize, in_use_first: bool) {
        let count = self.inner.nodes.len();
        let order = in_use_first
            .then_some(from)
            .into_iter()
            .chain(probe_order(from, count).filter(move |i| !(in_use_first && *i == from)));
        for index in order {
            let node = &self.inner.nodes[index];
            match tokio::time::timeout(PROBE_TIMEOUT, node_is_ready(&node.options)).await {
                Ok(Ok(true)) => {
                    self.inner.current.store(index, Ordering::Relaxed);
                    if index == from {
                        tracing::info!(node = %node.shown, "the database node in use answers again");
                    } else {
                        metrics::counter!(METRIC_FAILOVERS).increment(1);
                        tracing::warn!(
                            from = %self.inner.nodes[from].shown,
                            to = %node.shown,
                            "moved to another database node"
                        );
                    }
                    return;
                }
                Ok(Ok(false)) => {
                    tracing::info!(node = %node.shown, "database node answers but is not ready (wsrep_ready is OFF)");
                }
                Ok(Err(error)) => {
                    tracing::info!(node = %node.shown, %error, "database node does not answer");
                }
                Err(_) => {
                    tracing::info!(node = %node.shown, timeout = ?PROBE_TIMEOUT, "database node did not answer in time");
                }
            }
        }
        tracing::warn!(
            node = %self.inner.nodes[from].shown,
            "no database node answers; staying on the one in use"
        );
    }
}

/// The order in which a probe that starts from node `from` of `count` tries them: the nodes
/// after it, wrapping round, and `from` itself last (a node that came back is good too).
pub fn probe_order(from: usize, count: usize) -> impl Iterator<Item = usize> {
    (1..=count).map(move |step| (from + step) % count)
}

/// Whether the server at `options` accepts a connection and can serve statements: a Galera
/// node (`wsrep_on`) says so in `wsrep_ready` (OFF while it is not part of the primary
/// component); a server without Galera (no `wsrep_on`, or OFF, where `wsrep_ready` is OFF
/// too) is ready.
async fn node_is_ready(options: &MySqlConnectOptions) -> Result<bool, sqlx::Error> {
    let mut conn = MySqlConnection::connect_with(options).await?;
    if !is_galera(&mut conn).await? {
        return Ok(true);
    }
    let ready: Option<(String, String)> = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'wsrep_ready'")
        .fetch_optional(&mut conn)
        .await?;
    // closing politely is not worth waiting for
    drop(conn);
    Ok(ready.is_some_and(|(_, value)| is_on(&value)))
}

/// Whether the server is a Galera node (`wsrep_on`; Debian's MariaDB has the variable, OFF,
/// without Galera; MySQL has none).
async fn is_galera(conn: &mut MySqlConnection) -> Result<bool, sqlx::Error> {
    let galera: Option<(String, String)> = sqlx::query_as("SHOW GLOBAL VARIABLES LIKE 'wsrep_on'")
        .fetch_optional(&mut *conn)
        .await?;
    Ok(galera.is_some_and(|(_, on)| is_on(&on)))
}

fn is_on(value: &str) -> bool {
    value.eq_ignore_ascii_case("ON")
}

impl From<MySqlPool> for Database {
    fn from(pool: MySqlPool) -> Self {
        Self::from_pool(pool)
    }
}

impl<'c> Executor<'c> for &'c Database {
    type Database = MySql;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<MySqlQueryResult, MySqlRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, MySql>,
    {
        self.pool()
            .fetch_many(query)
            .inspect_err(move |error| self.failed(error))
            .boxed()
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<MySqlRow>, sqlx::Error>>
    where
        'c: 'e,
        E: 'q + Execute<'q, MySql>,
    {
        let fetched = self.pool().fetch_optional(query);
        Box::pin(async move { self.report(fetched.await) })
    }

    fn prepare_with<'e>(
        self,
        sql: SqlStr,
        parameters: &'e [MySqlTypeInfo],
    ) -> BoxFuture<'e, Result<MySqlStatement, sqlx::Error>>
    where
        'c: 'e,
    {
        let prepared = self.pool().prepare_with(sql, parameters);
        Box::pin(async move { self.report(prepared.await) })
    }

    fn describe<'e>(self, sql: SqlStr) -> BoxFuture<'e, Result<Describe<MySql>, sqlx::Error>>
    where
        'c: 'e,
    {
        self.pool().describe(sql)
    }
}

/// Whether the error says the server could not be reached, the connection broke, or the
/// server cannot serve statements now (a Galera node outside the primary component answers
/// 1047; one shutting down, 1053): worth retrying elsewhere or later, as opposed to a statement
/// the server refused.
pub fn is_connection_error(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), ER_UNKNOWN_COM_ERROR | ER_SERVER_SHUTDOWN)),
        _ => false,
    }
}

/// What a Galera node that is not in the primary component answers ("WSREP has not yet
/// prepared node for application use").
pub const ER_UNKNOWN_COM_ERROR: u16 = 1047;
/// "Server shutdown in progress".
pub const ER_SERVER_SHUTDOWN: u16 = 1053;

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
        metrics::counter!(METRIC_CONFLICT_RETRIES, "what" => self.what).increment(1);
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
    fn a_probe_tries_the_next_nodes_first_and_the_failed_one_last() {
        assert_eq!(probe_order(0, 3).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(probe_order(2, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(probe_order(0, 1).collect::<Vec<_>>(), [0]);
        assert_eq!(probe_order(0, 0).count(), 0);
    }

    #[test]
    fn a_node_that_cannot_serve_is_a_connection_error_and_a_refused_value_is_not() {
        assert!(is_connection_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_connection_error(&sqlx::Error::RowNotFound));
    }

    #[test]
    fn options_are_utc_and_refuse_a_bad_url() {
        assert!(options("mysql://root@127.0.0.1:3306/cluegetter").is_ok());
        assert!(options("not a url").is_err());
    }
}
