//! One message read back whole: the message and session row, recipients, headers, module
//! results, the bounces linked to it and the stored body.

use chrono::{DateTime, Utc};
use platform::database::Database;
use sqlx::{MySql, QueryBuilder};
use uuid::Uuid;

use super::Scope;

/// The `message` row with its session, MTA and instance.
#[derive(Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub session: Uuid,
    pub queue_id: String,
    pub mta_hostname: String,
    pub date: DateTime<Utc>,
    pub body_size: u64,
    pub body_hash: String,
    #[sqlx(rename = "messageId")]
    pub message_id: String,
    pub subject: String,
    pub sender_local: String,
    pub sender_domain: String,
    pub rcpt_count: u32,
    pub verdict: String,
    pub applied: String,
    pub verdict_msg: String,
    #[sqlx(rename = "rejectScore")]
    pub reject_score: f64,
    #[sqlx(rename = "rejectScoreThreshold")]
    pub reject_threshold: f64,
    #[sqlx(rename = "tempfailScore")]
    pub tempfail_score: f64,
    #[sqlx(rename = "tempfailScoreThreshold")]
    pub tempfail_threshold: f64,
    pub noop: bool,
    pub whitelisted: bool,
    pub failure: Option<String>,
    pub answered: bool,
    pub headers_truncated: bool,
    pub date_connect: DateTime<Utc>,
    pub ip: String,
    pub port: Option<u16>,
    pub reverse_dns: String,
    pub helo: String,
    pub sasl_username: String,
    pub sasl_method: String,
    pub sasl_sender: String,
    pub cert_issuer: String,
    pub cert_subject: String,
    pub cipher_bits: Option<u16>,
    pub cipher: String,
    pub tls_version: String,
    /// The geoip module's country and ASN of the client (`schema/0008_geoip.sql`).
    pub country: Option<String>,
    pub asn: Option<u32>,
    pub client_hostname: String,
    pub daemon_name: String,
    pub instance: String,
}

#[derive(Debug, sqlx::FromRow)]
pub struct RecipientRow {
    pub local: String,
    pub domain: String,
    pub status: String,
    pub count: u32,
    pub reason: Option<String>,
}

/// One module's result as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct ResultRow {
    pub module: String,
    pub verdict: String,
    pub score: f64,
    pub weighted_score: f64,
    /// Seconds.
    pub duration: f64,
    pub verdict_msg: String,
    /// JSON text (as the module sent it, re-serialised).
    pub determinants: String,
    pub late: bool,
}

/// A bounce linked to the message, with its reports as one line.
#[derive(Debug, sqlx::FromRow)]
pub struct LinkedBounceRow {
    pub id: u64,
    pub date: DateTime<Utc>,
    pub link: Option<String>,
    pub kind: String,
    /// `status recipient, …`
    pub reports: Option<String>,
}

/// Everything stored about one message.
#[derive(Debug)]
pub struct MessageRecord {
    pub message: MessageRow,
    pub recipients: Vec<RecipientRow>,
    /// (name, value) as received, in order.
    pub headers: Vec<(Vec<u8>, Vec<u8>)>,
    pub results: Vec<ResultRow>,
    pub bounces: Vec<LinkedBounceRow>,
    /// The stored body's chunks in order; empty when none was stored.
    pub body: Vec<Vec<u8>>,
}

/// The message `id`, or `None` when the archive has no such message in `scope`. A
/// `domain-admin` that sees the message by a recipient sees only the recipients of its
/// domains; headers and body are not read when the scope may not read contents.
///
/// # Errors
/// The database failed.
pub async fn message(
    pool: &Database,
    scope: &Scope,
    id: Uuid,
) -> Result<Option<MessageRecord>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT m.session, m.queue_id, m.mta_hostname, m.date, m.body_size, m.body_hash, \
         m.messageId, m.subject, m.sender_local, m.sender_domain, m.rcpt_count, m.verdict, \
         m.applied, m.verdict_msg, m.rejectScore, m.rejectScoreThreshold, m.tempfailScore, \
         m.tempfailScoreThreshold, m.noop, m.whitelisted, m.failure, m.answered, \
         m.headers_truncated, s.date_connect, s.ip, s.port, s.reverse_dns, s.helo, \
         s.sasl_username, s.sasl_method, s.sasl_sender, s.cert_issuer, s.cert_subject, \
         s.cipher_bits, s.cipher, s.tls_version, s.country, s.asn, c.hostname AS client_hostname, c.daemon_name, \
         i.name AS instance \
         FROM message m JOIN session s ON s.id = m.session \
         JOIN cluegetter_client c ON c.id = s.cluegetter_client \
         JOIN instance i ON i.id = s.cluegetter_instance \
         WHERE m.id = ",
    );
    q.push_bind(id);
    scope.push_message(&mut q);
    let message: Option<MessageRow> = q.build_query_as().fetch_optional(pool).await?;
    let Some(message) = message else {
        return Ok(None);
    };
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT r.local, r.domain, mr.status, mr.count, mr.reason \
         FROM message_recipient mr JOIN recipient r ON r.id = mr.recipient \
         WHERE mr.message = ",
    );
    q.push_bind(id);
    if !scope.covers_sender(&message.sender_domain, &message.sasl_username) {
        scope.push_recipient(&mut q);
    }
    q.push(" ORDER BY mr.status, r.domain, r.local");
    let recipients = q.build_query_as().fetch_all(pool).await?;
    let headers = if scope.contents {
        sqlx::query_as("SELECT name, body FROM message_header WHERE message = ? ORDER BY sequence")
            .bind(id)
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    let results = sqlx::query_as(
        "SELECT module, verdict, score, weighted_score, duration, verdict_msg, determinants, late \
         FROM message_result WHERE message = ? ORDER BY late, module",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let bounces = sqlx::query_as(
        "SELECT b.id, b.date, CAST(b.link AS CHAR) AS link, CAST(b.kind AS CHAR) AS kind, \
         (SELECT CAST(GROUP_CONCAT(CONCAT(r.status, ' ', r.recipient) ORDER BY r.sequence \
           SEPARATOR ', ') AS CHAR) FROM bounce_report r WHERE r.bounce = b.id) AS reports \
         FROM bounce b WHERE b.message = ? ORDER BY b.received",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let body = if scope.contents {
        sqlx::query_scalar("SELECT body FROM message_body WHERE message = ? ORDER BY sequence")
            .bind(id)
            .fetch_all(pool)
            .await?
    } else {
        Vec::new()
    };
    Ok(Some(MessageRecord {
        message,
        recipients,
        headers,
        results,
        bounces,
        body,
    }))
}
