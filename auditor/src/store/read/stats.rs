//! The statistics read back for a date range: messages per period and verdict, the most
//! rejected senders, SASL users and client addresses, module latencies. Each query is one
//! index range over the period (schema/0005's covering indexes).

use chrono::{DateTime, Utc};
use platform::database::Database;

use crate::store::values::datetime;

/// Messages of one verdict in one period.
#[derive(Debug, sqlx::FromRow)]
pub struct VerdictCount {
    /// The period as `DATE_FORMAT` wrote it.
    pub bucket: String,
    pub verdict: String,
    #[sqlx(rename = "n")]
    pub count: i64,
}

/// A rejected sender and how often.
#[derive(Debug, sqlx::FromRow)]
pub struct SenderCount {
    pub sender_local: String,
    pub sender_domain: String,
    #[sqlx(rename = "n")]
    pub count: i64,
}

/// A value (SASL user, client address) and how often.
#[derive(Debug, sqlx::FromRow)]
pub struct LabelCount {
    pub label: String,
    #[sqlx(rename = "n")]
    pub count: i64,
}

/// One module's results in the range and how long they took.
#[derive(Debug, sqlx::FromRow)]
pub struct LatencyRow {
    pub module: String,
    pub results: i64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

/// Messages per period (`format`, a `DATE_FORMAT` pattern, names the period) and verdict.
///
/// # Errors
/// The database failed.
pub async fn per_verdict(
    pool: &Database,
    format: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<VerdictCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT CAST(DATE_FORMAT(date, ?) AS CHAR) AS bucket, CAST(verdict AS CHAR) AS verdict, \
         COUNT(*) AS n \
         FROM message WHERE date >= ? AND date < ? GROUP BY bucket, verdict ORDER BY bucket",
    )
    .bind(format)
    .bind(datetime(from))
    .bind(datetime(to))
    .fetch_all(pool)
    .await
}

/// The `top` most rejected senders.
///
/// # Errors
/// The database failed.
pub async fn top_rejected_senders(
    pool: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    top: u32,
) -> Result<Vec<SenderCount>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sender_local, sender_domain, COUNT(*) AS n FROM message \
         WHERE verdict = 'reject' AND date >= ? AND date < ? \
         GROUP BY sender_domain, sender_local \
         ORDER BY n DESC, sender_domain, sender_local LIMIT ?",
    )
    .bind(datetime(from))
    .bind(datetime(to))
    .bind(top)
    .fetch_all(pool)
    .await
}

/// What [`top_rejected`] counts by: a column of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectedBy {
    SaslUser,
    ClientIp,
}

/// The `top` values of `by` with the most rejected messages (empty values left out).
///
/// # Errors
/// The database failed.
pub async fn top_rejected(
    pool: &Database,
    by: RejectedBy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    top: u32,
) -> Result<Vec<LabelCount>, sqlx::Error> {
    // static text per column: the column is never a value from the request
    let sql = match by {
        RejectedBy::SaslUser => {
            "SELECT s.sasl_username AS label, COUNT(*) AS n \
             FROM message m JOIN session s ON s.id = m.session \
             WHERE m.verdict = 'reject' AND m.date >= ? AND m.date < ? AND s.sasl_username <> '' \
             GROUP BY s.sasl_username ORDER BY n DESC, s.sasl_username LIMIT ?"
        }
        RejectedBy::ClientIp => {
            "SELECT s.ip AS label, COUNT(*) AS n FROM message m JOIN session s ON s.id = m.session \
             WHERE m.verdict = 'reject' AND m.date >= ? AND m.date < ? AND s.ip <> '' \
             GROUP BY s.ip ORDER BY n DESC, s.ip LIMIT ?"
        }
    };
    sqlx::query_as(sql)
        .bind(datetime(from))
        .bind(datetime(to))
        .bind(top)
        .fetch_all(pool)
        .await
}

/// Each module's result count, average and longest duration (ms), by module name.
///
/// # Errors
/// The database failed.
pub async fn module_latency(
    pool: &Database,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<LatencyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT r.module, COUNT(*) AS results, CAST(AVG(r.duration) * 1000 AS DOUBLE) AS avg_ms, \
         CAST(MAX(r.duration) * 1000 AS DOUBLE) AS max_ms \
         FROM message m JOIN message_result r ON r.message = m.id \
         WHERE m.date >= ? AND m.date < ? GROUP BY r.module ORDER BY r.module",
    )
    .bind(datetime(from))
    .bind(datetime(to))
    .fetch_all(pool)
    .await
}
