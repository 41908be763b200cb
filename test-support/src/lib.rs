//! Dev-only helpers for tests that talk to the real services (no mocks):
//!
//! - [`TestBroker`]: a RabbitMQ vhost of its own per test, over the management API.
//! - [`TestDb`]: a MariaDB database of its own per test, migrated with `schema/`.
//! - [`postfix`]: throwaway Postfix instances (`scripts/postfix-instance.sh`) and swaks.
//! - [`eventually`]: wait on a condition instead of sleeping.
//! - [`mmdb`]: MaxMind databases (`.mmdb`) made by the test, for the geoip module.
//! - [`proxy::TcpProxy`]: a forwarder in front of a real service, cut and restored to take the
//!   service away from a client and give it back.
//!
//! Names carry their creation time (`cgt-<unix secs>-<random>`); whatever a crashed or failed
//! run left behind is swept by the next run once it is an hour old. A passing test removes
//! its own vhost and database when dropped; a failing one leaves them to be looked at.
//!
//! The whole-pipeline tests (Postfix → gateway → workers → auditor → MariaDB) live in this
//! crate's `tests/`.

#![allow(clippy::unwrap_used)]

pub mod mmdb;
pub mod postfix;
pub mod proxy;

use std::future::Future;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};

const MANAGEMENT: &str = "127.0.0.1:15672";
const SERVER_URL: &str = "mysql://root@127.0.0.1:3306";
const SWEEP_AFTER_SECS: u64 = 3600;

/// The repository root (for `scripts/` and `schema/`).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

fn unique_name(separator: char) -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let random = uuid::Uuid::now_v7().simple().to_string();
    // the last 12 hex digits of a v7 uuid are random
    format!("cgt{separator}{secs}{separator}{}", &random[20..])
}

fn created_secs(name: &str) -> Option<u64> {
    name.split(['-', '_']).nth(1)?.parse().ok()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// A minimal HTTP/1.0 request to RabbitMQ's management API (guest/guest), blocking.
fn management(method: &str, path: &str, body: &str) -> Result<(u16, String)> {
    let mut stream =
        TcpStream::connect(MANAGEMENT).context("connect to RabbitMQ management API")?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // guest:guest
    let request = format!(
        "{method} {path} HTTP/1.0\r\nHost: {MANAGEMENT}\r\nAuthorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("bad HTTP response from management API")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A RabbitMQ vhost for one test. `url` points at it with guest/guest.
pub struct TestBroker {
    pub vhost: String,
    pub url: String,
}

impl TestBroker {
    /// Creates the vhost (and sweeps stale ones).
    pub fn new() -> Result<Self> {
        sweep_vhosts();
        let vhost = unique_name('-');
        let (status, body) = management("PUT", &format!("/api/vhosts/{vhost}"), "")?;
        if !(200..300).contains(&status) {
            bail!("cannot create vhost {vhost}: HTTP {status} {body}");
        }
        let (status, body) = management(
            "PUT",
            &format!("/api/permissions/{vhost}/guest"),
            r#"{"configure":".*","write":".*","read":".*"}"#,
        )?;
        if !(200..300).contains(&status) {
            bail!("cannot grant guest on vhost {vhost}: HTTP {status} {body}");
        }
        let url = format!("amqp://guest:guest@127.0.0.1:5672/{vhost}");
        Ok(Self { vhost, url })
    }

    /// What the management API says of a queue of this vhost (`type`, `durable`, `arguments`,
    /// `messages`, …).
    pub fn queue_info(&self, queue: &str) -> Result<serde_json::Value> {
        let (status, body) = management("GET", &format!("/api/queues/{}/{queue}", self.vhost), "")?;
        if status != 200 {
            bail!("queue {queue}: HTTP {status} {body}");
        }
        Ok(serde_json::from_str(&body)?)
    }

    /// Number of messages ready in a queue of this vhost (management API; refreshed by the
    /// broker every few seconds, so poll it with [`eventually`]).
    pub fn queue_depth(&self, queue: &str) -> Result<u64> {
        let (status, body) = management("GET", &format!("/api/queues/{}/{queue}", self.vhost), "")?;
        if status != 200 {
            bail!("queue {queue}: HTTP {status}");
        }
        let json: serde_json::Value = serde_json::from_str(&body)?;
        Ok(json["messages"].as_u64().unwrap_or(0))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            let _ = management("DELETE", &format!("/api/vhosts/{}", self.vhost), "");
        }
    }
}

fn sweep_vhosts() {
    let Ok((200, body)) = management("GET", "/api/vhosts?columns=name", "") else {
        return;
    };
    for name in body.split('"').filter(|s| s.starts_with("cgt-")) {
        if created_secs(name).is_some_and(|t| now_secs().saturating_sub(t) > SWEEP_AFTER_SECS) {
            let _ = management("DELETE", &format!("/api/vhosts/{name}"), "");
        }
    }
}

/// A MariaDB database for one test, with `schema/` applied.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: MySqlPool,
}

impl TestDb {
    /// An empty database (no tables); see [`TestDb::migrated`].
    pub async fn empty() -> Result<Self> {
        let server = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(SERVER_URL)
            .await
            .context("connect to MariaDB on 127.0.0.1:3306 (run scripts/start-peers.sh mariadb)")?;
        sweep_databases(&server).await;
        let name = unique_name('_');
        // `name` is ours (cgt_<secs>_<hex>), never input
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )))
        .execute(&server)
        .await?;
        server.close().await;
        let url = format!("{SERVER_URL}/{name}");
        let pool = MySqlPoolOptions::new()
            .max_connections(8)
            .connect(&url)
            .await?;
        Ok(Self { name, url, pool })
    }

    /// A database with every migration of `schema/` applied.
    pub async fn migrated() -> Result<Self> {
        let db = Self::empty().await?;
        sqlx::migrate!("../schema")
            .run(&db.pool)
            .await
            .context("apply schema/ migrations")?;
        Ok(db)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test database {} kept for inspection", self.name);
            return;
        }
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the DROP.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(server) = MySqlPoolOptions::new()
                    .max_connections(1)
                    .connect(SERVER_URL)
                    .await
                {
                    let _ =
                        sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                            .execute(&server)
                            .await;
                    server.close().await;
                }
            });
        })
        .join();
    }
}

async fn sweep_databases(server: &MySqlPool) {
    let Ok(names) = sqlx::query_scalar::<_, String>(
        "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME LIKE 'cgt\\_%'",
    )
    .fetch_all(server)
    .await
    else {
        return;
    };
    for name in names {
        if created_secs(&name).is_some_and(|t| now_secs().saturating_sub(t) > SWEEP_AFTER_SECS) {
            let _ = sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS `{name}`")))
                .execute(server)
                .await;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or fails after `deadline`.
pub async fn eventually<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + deadline;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= end {
            bail!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Logs of the code under test, shown by the test harness for failing tests only.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,lapin=warn,sqlx=warn")
            }),
        )
        .with_test_writer()
        .try_init();
}
