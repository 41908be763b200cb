//! Delivery reports read back: a filtered list (one row per reported recipient) and one report
//! whole. Reads `bounce` and `bounce_report` (schema/0004).

use chrono::{DateTime, Utc};
use platform::database::Database;
use sqlx::{MySql, QueryBuilder};
use uuid::Uuid;

use super::{AddressFilter, Scope, like_escape};
use crate::store::values::datetime;

/// A validated bounce list query.
#[derive(Clone, Debug)]
pub struct BounceQuery {
    pub recipient: Option<AddressFilter>,
    /// A status code or its start (`5`, `5.1`, `4.7.1`): digits and dots only.
    pub status: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Only reports not linked to a message.
    pub unlinked: bool,
    /// From 1.
    pub page: u32,
    pub per_page: u32,
}

/// One recipient of one report (or a report without parsed recipients).
#[derive(Debug, sqlx::FromRow)]
pub struct ListRow {
    pub id: u64,
    pub date: DateTime<Utc>,
    pub message: Option<Uuid>,
    pub link: Option<String>,
    pub kind: String,
    pub parse_status: String,
    pub status: Option<String>,
    pub action: Option<String>,
    pub recipient: Option<String>,
    pub diag_code: Option<String>,
    pub orig_subject: String,
    pub subject: String,
    pub parse_reason: Option<String>,
}

/// The page `query` asks for, plus one row more when another page follows.
///
/// # Errors
/// The database failed.
pub async fn list(
    pool: &Database,
    scope: &Scope,
    query: &BounceQuery,
) -> Result<Vec<ListRow>, sqlx::Error> {
    query.sql(scope).build_query_as().fetch_all(pool).await
}

impl BounceQuery {
    fn sql(&self, scope: &Scope) -> QueryBuilder<MySql> {
        let mut q = QueryBuilder::new(
            "SELECT b.id, b.date, b.message, CAST(b.link AS CHAR) AS link, \
             CAST(b.kind AS CHAR) AS kind, CAST(b.parse_status AS CHAR) AS parse_status, \
             r.status, CAST(r.action AS CHAR) AS action, r.recipient, r.diag_code, b.orig_subject, \
             b.subject, b.parse_reason \
             FROM bounce b ",
        );
        let reports_filtered = self.recipient.is_some() || self.status.is_some();
        // without a report filter a bounce without parsed reports is listed too
        q.push(if reports_filtered {
            "JOIN bounce_report r ON r.bounce = b.id "
        } else {
            "LEFT JOIN bounce_report r ON r.bounce = b.id "
        });
        q.push("WHERE b.date >= ");
        q.push_bind(datetime(self.from));
        q.push(" AND b.date < ");
        q.push_bind(datetime(self.to));
        if reports_filtered {
            // the copy of the date in bounce_report lets its (recipient|status, date) keys work
            q.push(" AND r.date >= ");
            q.push_bind(datetime(self.from));
            q.push(" AND r.date < ");
            q.push_bind(datetime(self.to));
        }
        match &self.recipient {
            Some(AddressFilter::Address { local, domain }) => {
                q.push(" AND r.recipient = ");
                q.push_bind(if domain.is_empty() {
                    local.clone()
                } else {
                    format!("{local}@{domain}")
                });
            }
            Some(AddressFilter::Domain(domain)) => {
                q.push(" AND r.recipient_domain = ");
                q.push_bind(domain.clone());
            }
            None => {}
        }
        if let Some(status) = &self.status {
            q.push(" AND r.status LIKE ");
            q.push_bind(format!("{}%", like_escape(status)));
        }
        if self.unlinked {
            q.push(" AND b.message IS NULL");
        }
        scope.push_bounce(&mut q);
        q.push(" ORDER BY b.date DESC, b.id DESC, r.sequence LIMIT ");
        q.push_bind(u64::from(self.per_page) + 1);
        q.push(" OFFSET ");
        q.push_bind(u64::from(self.page.saturating_sub(1)) * u64::from(self.per_page));
        q
    }
}

/// The `bounce` row with its instance.
#[derive(Debug, sqlx::FromRow)]
pub struct BounceRow {
    pub id: u64,
    pub date: DateTime<Utc>,
    pub received: DateTime<Utc>,
    pub mta: String,
    #[sqlx(rename = "queueId")]
    pub queue_id: String,
    #[sqlx(rename = "messageId")]
    pub message_id: String,
    pub sender: String,
    pub source: String,
    pub peer: String,
    pub kind: String,
    pub parse_status: String,
    pub parse_reason: Option<String>,
    pub subject: String,
    pub received_from_mta: String,
    pub arrival_date: Option<DateTime<Utc>>,
    pub orig_from: String,
    pub orig_to: String,
    pub orig_subject: String,
    pub mta_hostname: String,
    pub message: Option<Uuid>,
    pub link: Option<String>,
    pub raw: Vec<u8>,
    pub raw_size: u64,
    pub instance: String,
}

/// One `bounce_report` row: a recipient of the report.
#[derive(Debug, sqlx::FromRow)]
pub struct ReportRow {
    pub status: String,
    pub action: Option<String>,
    pub orig_rcpt: String,
    pub final_rcpt: String,
    pub recipient: String,
    pub remote_mta: String,
    pub diag_code: Option<String>,
    pub last_attempt_date: Option<DateTime<Utc>>,
    pub will_retry_until: Option<DateTime<Utc>>,
}

/// The report `id` with its recipients in order, or `None` when there is no such report in
/// `scope` (the raw report is empty when the scope may not read contents).
///
/// # Errors
/// The database failed.
pub async fn bounce(
    pool: &Database,
    scope: &Scope,
    id: u64,
) -> Result<Option<(BounceRow, Vec<ReportRow>)>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT b.id, b.date, b.received, b.mta, b.queueId, b.messageId, b.sender, \
         CAST(b.source AS CHAR) AS source, b.peer, CAST(b.kind AS CHAR) AS kind, \
         CAST(b.parse_status AS CHAR) AS parse_status, b.parse_reason, b.subject, \
         b.received_from_mta, b.arrival_date, b.orig_from, b.orig_to, b.orig_subject, \
         b.mta_hostname, b.message, CAST(b.link AS CHAR) AS link, ",
    );
    // the raw report holds the returned message's headers (and often its body)
    q.push(if scope.contents {
        "b.raw"
    } else {
        "CAST('' AS BINARY) AS raw"
    });
    q.push(
        ", b.raw_size, i.name AS instance \
         FROM bounce b JOIN instance i ON i.id = b.cluegetter_instance WHERE b.id = ",
    );
    q.push_bind(id);
    scope.push_bounce(&mut q);
    let bounce: Option<BounceRow> = q.build_query_as().fetch_optional(pool).await?;
    let Some(bounce) = bounce else {
        return Ok(None);
    };
    let reports = sqlx::query_as(
        "SELECT status, CAST(action AS CHAR) AS action, orig_rcpt, final_rcpt, recipient, \
         remote_mta, diag_code, last_attempt_date, will_retry_until \
         FROM bounce_report WHERE bounce = ? ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some((bounce, reports)))
}
