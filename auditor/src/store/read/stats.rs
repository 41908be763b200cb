//! The statistics read back for a date range: messages per period and verdict, the most
//! rejected senders, SASL users and client addresses, module latencies. Each query is one
//! index range over the period (schema/0005's covering indexes). Each counts only the
//! messages in the reader's [`Scope`].

use chrono::{DateTime, Utc};
use platform::database::Database;
use sqlx::{MySql, QueryBuilder};

use super::Scope;
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
    scope: &Scope,
    format: &str,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<VerdictCount>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new("SELECT CAST(DATE_FORMAT(m.date, ");
    q.push_bind(format.to_owned());
    q.push(
        ") AS CHAR) AS bucket, CAST(m.verdict AS CHAR) AS verdict, COUNT(*) AS n \
         FROM message m",
    );
    scope.push_message_ids(&mut q, from, to);
    q.push(" WHERE m.date >= ");
    push_range(&mut q, from, to);
    q.push(" GROUP BY bucket, verdict ORDER BY bucket");
    q.build_query_as().fetch_all(pool).await
}

/// `? AND m.date < ?` with the range bound (after `m.date >= `).
fn push_range(q: &mut QueryBuilder<MySql>, from: DateTime<Utc>, to: DateTime<Utc>) {
    q.push_bind(datetime(from));
    q.push(" AND m.date < ");
    q.push_bind(datetime(to));
}

/// The `top` most rejected senders.
///
/// # Errors
/// The database failed.
pub async fn top_rejected_senders(
    pool: &Database,
    scope: &Scope,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    top: u32,
) -> Result<Vec<SenderCount>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT m.sender_local, m.sender_domain, COUNT(*) AS n FROM message m",
    );
    scope.push_message_ids(&mut q, from, to);
    q.push(" WHERE m.verdict = 'reject' AND m.date >= ");
    push_range(&mut q, from, to);
    q.push(
        " GROUP BY m.sender_domain, m.sender_local \
         ORDER BY n DESC, m.sender_domain, m.sender_local LIMIT ",
    );
    q.push_bind(top);
    q.build_query_as().fetch_all(pool).await
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
    scope: &Scope,
    by: RejectedBy,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    top: u32,
) -> Result<Vec<LabelCount>, sqlx::Error> {
    // static text per column: the column is never a value from the request
    let column = match by {
        RejectedBy::SaslUser => "s.sasl_username",
        RejectedBy::ClientIp => "s.ip",
    };
    let mut q = QueryBuilder::<MySql>::new("SELECT ");
    q.push(column);
    q.push(" AS label, COUNT(*) AS n FROM message m JOIN session s ON s.id = m.session");
    scope.push_message_ids(&mut q, from, to);
    q.push(" WHERE m.verdict = 'reject' AND m.date >= ");
    push_range(&mut q, from, to);
    q.push(" AND ");
    q.push(column);
    q.push(" <> ''");
    q.push(" GROUP BY ");
    q.push(column);
    q.push(" ORDER BY n DESC, ");
    q.push(column);
    q.push(" LIMIT ");
    q.push_bind(top);
    q.build_query_as().fetch_all(pool).await
}

/// Each module's result count, average and longest duration (ms), by module name.
///
/// # Errors
/// The database failed.
pub async fn module_latency(
    pool: &Database,
    scope: &Scope,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<LatencyRow>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT r.module, COUNT(*) AS results, CAST(AVG(r.duration) * 1000 AS DOUBLE) AS avg_ms, \
         CAST(MAX(r.duration) * 1000 AS DOUBLE) AS max_ms \
         FROM message m JOIN message_result r ON r.message = m.id",
    );
    scope.push_message_ids(&mut q, from, to);
    q.push(" WHERE m.date >= ");
    push_range(&mut q, from, to);
    q.push(" GROUP BY r.module ORDER BY r.module");
    q.build_query_as().fetch_all(pool).await
}
