//! Delivery status read back (schema/0011_delivery.sql): a message's delivery lines, and the
//! counts per status for a page of search results. The join to the message is made here: the
//! same queue id, and the message's MTA host name equal to the line's or beginning with it and
//! a dot (Postfix's maillog_file writes myhostname's first label; the gateway records all of
//! {j}).

use chrono::{DateTime, Utc};
use platform::database::Database;
use sqlx::{MySql, QueryBuilder};
use uuid::Uuid;

/// The join condition between `message m` and `message_delivery d` (static SQL).
pub const JOIN: &str = "d.queue_id = m.queue_id AND (d.mta_hostname = m.mta_hostname \
     OR d.mta_hostname = SUBSTRING_INDEX(m.mta_hostname, '.', 1))";

/// One delivery line as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct DeliveryRow {
    pub recipient: String,
    pub orig_to: String,
    pub status: String,
    pub log_time: DateTime<Utc>,
    pub relay: String,
    pub dsn: String,
    pub delay: Option<f64>,
    pub reason: String,
    pub service: String,
}

/// The delivery lines of message `id`, by recipient, oldest first.
///
/// # Errors
/// The database failed.
pub async fn of_message(pool: &Database, id: Uuid) -> Result<Vec<DeliveryRow>, sqlx::Error> {
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT d.recipient, d.orig_to, CAST(d.status AS CHAR) AS status, d.log_time, d.relay, \
         d.dsn, d.delay, d.reason, d.service \
         FROM message m JOIN message_delivery d ON ",
    );
    q.push(JOIN);
    q.push(" WHERE m.id = ");
    q.push_bind(id);
    q.push(" AND m.queue_id <> '' ORDER BY d.recipient, d.log_time, d.id");
    q.build_query_as().fetch_all(pool).await
}

/// Recipients per (message, status) for the messages `ids`: (message, status, recipients).
///
/// # Errors
/// The database failed.
pub async fn counts(
    pool: &Database,
    ids: &[Uuid],
) -> Result<Vec<(Uuid, String, i64)>, sqlx::Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q: QueryBuilder<MySql> = QueryBuilder::new(
        "SELECT m.id, CAST(d.status AS CHAR) AS status, COUNT(DISTINCT d.recipient) AS n \
         FROM message m JOIN message_delivery d ON ",
    );
    q.push(JOIN);
    q.push(" WHERE m.queue_id <> '' AND m.id IN (");
    let mut ids_sql = q.separated(", ");
    for id in ids {
        ids_sql.push_bind(*id);
    }
    q.push(") GROUP BY m.id, d.status");
    q.build_query_as().fetch_all(pool).await
}
