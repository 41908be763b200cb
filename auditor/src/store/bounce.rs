//! The SQL of bounce events: one `bounce` row and its `bounce_report` rows per event, in one
//! transaction, idempotent on the bounce UUID; the link to the reported message; and relinking
//! the bounces stored before their message, or linked by a weaker key (schema/0004_bounces.sql).
//!
//! Pure conversions from the event to column values are at the bottom ([`BounceRow`]), so they
//! can be tested without a database. This module knows nothing of the broker.

use chrono::{DateTime, Utc};
use platform::database::Database;
use sqlx::{MySql, MySqlConnection, QueryBuilder};
use uuid::Uuid;
use wire::BounceEvent;
use wire::contract::{RecipientReport, TypedValue};

use super::values::{TEXT_BYTES, datetime, opt_datetime, truncate_chars, truncate_utf8_bytes};
use super::{is_duplicate_key, is_refusal, mysql_error_number};

/// How a bounce was joined to its message (`bounce.link`), in the order they are tried.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Link {
    /// Postfix's queue id and the reporting MTA's host name.
    QueueId,
    /// The gateway's id header in the returned headers.
    CluegetterId,
    /// The returned Message-ID.
    MessageId,
}

impl Link {
    pub const ALL: [Link; 3] = [Link::QueueId, Link::CluegetterId, Link::MessageId];

    pub fn as_str(self) -> &'static str {
        match self {
            Link::QueueId => "queue_id",
            Link::CluegetterId => "cluegetter_id",
            Link::MessageId => "message_id",
        }
    }
}

/// What became of one bounce event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BounceOutcome {
    /// Committed; linked to its message, or not (yet).
    Stored { link: Option<Link> },
    /// Its bounce UUID was stored already; nothing was written.
    Duplicate,
    /// The database refused one of its values; nothing was written. The text says why.
    Refused(String),
}

/// `ER_NET_PACKET_TOO_LARGE`: the raw report does not fit the server's `max_allowed_packet`;
/// retrying can never help.
const ER_NET_PACKET_TOO_LARGE: u16 = 1153;

/// Writes bounce events; owns its pool.
pub struct BounceStore {
    pool: Database,
}

impl BounceStore {
    pub fn new(pool: impl Into<Database>) -> Self {
        Self { pool: pool.into() }
    }

    pub fn pool(&self) -> &Database {
        &self.pool
    }

    /// Stores the event in one transaction.
    ///
    /// # Errors
    /// Anything but a refusal of the event's values: nothing is stored; trying again later is
    /// safe.
    pub async fn write(&self, event: &BounceEvent) -> Result<BounceOutcome, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        match write_rows(&mut tx, event).await {
            Ok(Some(link)) => {
                tx.commit().await?;
                Ok(BounceOutcome::Stored { link })
            }
            Ok(None) => {
                tx.rollback().await?;
                Ok(BounceOutcome::Duplicate)
            }
            Err(error) if is_duplicate_key(&error) => {
                // another auditor stored it between our check and our insert
                tx.rollback().await?;
                Ok(BounceOutcome::Duplicate)
            }
            Err(error)
                if is_refusal(&error)
                    || mysql_error_number(&error) == Some(ER_NET_PACKET_TOO_LARGE) =>
            {
                let _ = tx.rollback().await;
                Ok(BounceOutcome::Refused(format!(
                    "refused by the database: {error}"
                )))
            }
            Err(error) => Err(error),
        }
    }

    /// Links the bounces received since `since` to messages stored since they came: an
    /// unlinked bounce by any key, a bounce linked by a weaker key by a stronger one (several
    /// messages may share a Message-ID). Returns how many were (re)linked by each [`Link`], in
    /// [`Link::ALL`] order.
    ///
    /// # Errors
    /// The database failed; nothing is lost, the next pass tries again.
    pub async fn relink(&self, since: DateTime<Utc>) -> Result<[u64; 3], sqlx::Error> {
        // static SQL, strongest key first; each only touches bounces without a stronger link
        let statements: [&'static str; 3] = [
            "UPDATE bounce b JOIN message m \
               ON m.queue_id = b.queueId AND m.mta_hostname = b.mta_hostname \
             SET b.message = m.id, b.link = 'queue_id' \
             WHERE (b.link IS NULL OR b.link IN ('cluegetter_id', 'message_id')) \
               AND b.received >= ? AND b.queueId <> '' AND b.mta_hostname <> ''",
            "UPDATE bounce b JOIN message m ON m.id = b.cluegetter_id \
             SET b.message = m.id, b.link = 'cluegetter_id' \
             WHERE (b.link IS NULL OR b.link = 'message_id') AND b.received >= ?",
            "UPDATE bounce b JOIN message m ON m.messageId = b.messageId \
             SET b.message = m.id, b.link = 'message_id' \
             WHERE b.link IS NULL AND b.received >= ? AND b.messageId <> ''",
        ];
        let mut linked = [0; 3];
        for (count, sql) in linked.iter_mut().zip(statements) {
            *count = sqlx::query(sql)
                .bind(datetime(since))
                .execute(&self.pool)
                .await?
                .rows_affected();
        }
        Ok(linked)
    }
}

/// Writes the rows; `None` when the bounce is stored already.
async fn write_rows(
    conn: &mut MySqlConnection,
    event: &BounceEvent,
) -> Result<Option<Option<Link>>, sqlx::Error> {
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS(SELECT 1 FROM bounce WHERE bounce_id = ?)")
            .bind(event.bounce_id.0)
            .fetch_one(&mut *conn)
            .await?;
    if exists {
        return Ok(None);
    }
    let row = BounceRow::new(event);
    let instance = instance_id(conn, &event.instance).await?;
    let link = find_message(conn, &row).await?;
    let bounce = sqlx::query(
        "INSERT INTO bounce (cluegetter_instance, date, mta, queueId, messageId, sender, \
           bounce_id, received, source, peer, kind, parse_status, parse_reason, subject, \
           received_from_mta, arrival_date, orig_from, orig_to, orig_subject, cluegetter_id, \
           mta_hostname, message, link, raw, raw_size) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(instance)
    .bind(datetime(row.date))
    .bind(&row.mta)
    .bind(&row.queue_id)
    .bind(&row.message_id)
    .bind(&row.sender)
    .bind(event.bounce_id.0)
    .bind(datetime(event.received_at))
    .bind(event.source.as_str())
    .bind(
        event
            .peer
            .map(|p| p.to_canonical().to_string())
            .unwrap_or_default(),
    )
    .bind(event.report.kind.as_str())
    .bind(event.report.status.as_str())
    .bind(&row.parse_reason)
    .bind(truncate_chars(&event.report.subject, LINE_CHARS))
    .bind(&row.received_from_mta)
    .bind(opt_datetime(event.report.per_message.arrival_date))
    .bind(truncate_chars(&event.report.returned.from, LINE_CHARS))
    .bind(truncate_chars(&event.report.returned.to, LINE_CHARS))
    .bind(truncate_chars(&event.report.returned.subject, LINE_CHARS))
    .bind(row.cluegetter_id)
    .bind(&row.mta_hostname)
    .bind(link.map(|(id, _)| id))
    .bind(link.map(|(_, how)| how.as_str()))
    .bind(event.raw.as_slice())
    .bind(event.raw_size)
    .execute(&mut *conn)
    .await?
    .last_insert_id();

    let reports: Vec<ReportRow> = event
        .report
        .recipients
        .iter()
        .enumerate()
        .map(|(sequence, recipient)| ReportRow::new(sequence, recipient))
        .collect();
    for chunk in reports.chunks(100) {
        let mut insert: QueryBuilder<MySql> = QueryBuilder::new(
            "INSERT INTO bounce_report (bounce, sequence, status, orig_rcpt, final_rcpt, \
             remote_mta, diag_code, action, recipient, recipient_domain, last_attempt_date, \
             will_retry_until, date) ",
        );
        insert.push_values(chunk, |mut values, report| {
            values
                .push_bind(bounce)
                .push_bind(report.sequence)
                .push_bind(report.status.clone())
                .push_bind(report.orig_rcpt.clone())
                .push_bind(report.final_rcpt.clone())
                .push_bind(report.remote_mta.clone())
                .push_bind(report.diag_code.clone())
                .push_bind(report.action)
                .push_bind(report.recipient.clone())
                .push_bind(report.recipient_domain.clone())
                .push_bind(opt_datetime(report.last_attempt_date))
                .push_bind(opt_datetime(report.will_retry_until))
                .push_bind(datetime(row.date));
        });
        insert.build().execute(&mut *conn).await?;
    }
    Ok(Some(link.map(|(_, how)| how)))
}

/// The id of the instance called `name`, adding the row if the name is new.
pub(super) async fn instance_id(
    conn: &mut MySqlConnection,
    name: &str,
) -> Result<u64, sqlx::Error> {
    let found: Option<u64> = sqlx::query_scalar("SELECT id FROM instance WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    match found {
        Some(id) => Ok(id),
        // LAST_INSERT_ID(id) makes a concurrent insert of the same name return its id
        None => Ok(sqlx::query(
            "INSERT INTO instance (name) VALUES (?) ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
        )
        .bind(name)
        .execute(&mut *conn)
        .await?
        .last_insert_id()),
    }
}

/// The reported message's archive row, by the strongest key that finds one. One statement, so
/// one snapshot: an audit event committed meanwhile cannot make a weaker key win.
async fn find_message(
    conn: &mut MySqlConnection,
    row: &BounceRow,
) -> Result<Option<(Uuid, Link)>, sqlx::Error> {
    let by_queue_id = !row.queue_id.is_empty() && !row.mta_hostname.is_empty();
    let found: Option<(Uuid, i32)> = sqlx::query_as(
        "SELECT id, CASE WHEN ? AND queue_id = ? AND mta_hostname = ? THEN 0 \
                         WHEN id = ? THEN 1 ELSE 2 END AS how \
         FROM message \
         WHERE (? AND queue_id = ? AND mta_hostname = ?) OR id = ? OR (? AND messageId = ?) \
         ORDER BY how, date DESC LIMIT 1",
    )
    .bind(by_queue_id)
    .bind(&row.queue_id)
    .bind(&row.mta_hostname)
    .bind(row.cluegetter_id)
    .bind(by_queue_id)
    .bind(&row.queue_id)
    .bind(&row.mta_hostname)
    .bind(row.cluegetter_id)
    .bind(!row.message_id.is_empty())
    .bind(&row.message_id)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(found.map(|(id, how)| {
        let link = match how {
            0 => Link::QueueId,
            1 => Link::CluegetterId,
            _ => Link::MessageId,
        };
        (id, link)
    }))
}

/// `VARCHAR(998)` header-line columns.
const LINE_CHARS: usize = 998;
/// `VARCHAR(128)` MTA columns (`mta`, `received_from_mta`, `remote_mta`).
const MTA_CHARS: usize = 128;
/// `VARCHAR(255)` address columns (`sender`, `orig_rcpt`, `final_rcpt`, `recipient`).
const ADDRESS_CHARS: usize = 255;
/// `VARCHAR(253)` `bounce_report.recipient_domain`.
const DOMAIN_CHARS: usize = 253;
/// `VARCHAR(16)` `bounce_report.status`.
const STATUS_CHARS: usize = 16;
/// `VARCHAR(32)` ASCII `bounce.queueId`.
const QUEUE_ID_CHARS: usize = 32;
/// `VARCHAR(127)` ASCII `bounce.mta_hostname`.
const HOSTNAME_CHARS: usize = 127;

/// The `bounce` values that need converting, cut to their columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BounceRow {
    pub date: DateTime<Utc>,
    pub mta: String,
    pub queue_id: String,
    pub message_id: String,
    pub sender: String,
    pub parse_reason: Option<String>,
    pub received_from_mta: String,
    pub cluegetter_id: Option<Uuid>,
    pub mta_hostname: String,
}

impl BounceRow {
    pub fn new(event: &BounceEvent) -> Self {
        let report = &event.report;
        let per_message = &report.per_message;
        let line = |value: &Option<TypedValue>, max| {
            value
                .as_ref()
                .map(|v| truncate_chars(&v.to_line(), max).to_owned())
                .unwrap_or_default()
        };
        let message_id = if report.returned.message_id.is_empty() {
            &per_message.original_message_id
        } else {
            &report.returned.message_id
        };
        Self {
            date: report.date.unwrap_or(event.received_at),
            mta: line(&per_message.reporting_mta, MTA_CHARS),
            queue_id: queue_id(&per_message.queue_id),
            message_id: truncate_chars(message_id, LINE_CHARS).to_owned(),
            sender: line(&per_message.sender, ADDRESS_CHARS),
            parse_reason: (!report.problems.is_empty())
                .then(|| truncate_utf8_bytes(&report.problems.join("\n"), TEXT_BYTES).to_owned()),
            received_from_mta: line(&per_message.received_from_mta, MTA_CHARS),
            cluegetter_id: report.returned.cluegetter_id.map(|id| id.0),
            mta_hostname: per_message
                .reporting_mta
                .as_ref()
                .map(host_name)
                .unwrap_or_default(),
        }
    }
}

/// A queue id as Postfix writes them (ASCII letters and digits) fits its ASCII column; anything
/// else can match no message and is not stored.
fn queue_id(value: &str) -> String {
    let valid = !value.is_empty()
        && value.len() <= QUEUE_ID_CHARS
        && value.bytes().all(|b| b.is_ascii_alphanumeric());
    if valid {
        value.to_owned()
    } else {
        String::new()
    }
}

/// The host name of a `dns; host` Reporting-MTA, lower-cased, without a final dot; '' when the
/// field is of another type or not an ASCII host name (it could match no `message.mta_hostname`).
fn host_name(mta: &TypedValue) -> String {
    if !(mta.kind.is_empty() || mta.kind == "dns") {
        return String::new();
    }
    let host = mta
        .value
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .trim_end_matches('.')
        .to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= HOSTNAME_CHARS
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if valid { host } else { String::new() }
}

/// One `bounce_report` row's values, cut to their columns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub sequence: u32,
    pub status: String,
    pub orig_rcpt: String,
    pub final_rcpt: String,
    pub remote_mta: String,
    pub diag_code: Option<String>,
    pub action: Option<&'static str>,
    pub recipient: String,
    pub recipient_domain: String,
    pub last_attempt_date: Option<DateTime<Utc>>,
    pub will_retry_until: Option<DateTime<Utc>>,
}

impl ReportRow {
    pub fn new(sequence: usize, report: &RecipientReport) -> Self {
        let line = |value: &Option<TypedValue>, max| {
            value
                .as_ref()
                .map(|v| truncate_chars(&v.to_line(), max).to_owned())
                .unwrap_or_default()
        };
        let address = report
            .final_recipient
            .as_ref()
            .or(report.original_recipient.as_ref())
            .map(|v| {
                v.value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_lowercase()
            })
            .unwrap_or_default();
        let domain = address
            .rsplit_once('@')
            .map(|(_, domain)| truncate_chars(domain, DOMAIN_CHARS).to_owned())
            .unwrap_or_default();
        Self {
            sequence: u32::try_from(sequence).unwrap_or(u32::MAX),
            status: truncate_chars(&report.status, STATUS_CHARS).to_owned(),
            orig_rcpt: line(&report.original_recipient, ADDRESS_CHARS),
            final_rcpt: line(&report.final_recipient, ADDRESS_CHARS),
            remote_mta: line(&report.remote_mta, MTA_CHARS),
            diag_code: report
                .diagnostic_code
                .as_ref()
                .map(|v| truncate_utf8_bytes(&v.to_line(), TEXT_BYTES).to_owned()),
            action: report.action.map(|a| a.as_str()),
            recipient: truncate_chars(&address, ADDRESS_CHARS).to_owned(),
            recipient_domain: domain,
            last_attempt_date: report.last_attempt_date,
            will_retry_until: report.will_retry_until,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use wire::contract::{DsnAction, ParseStatus};
    use wire::{BounceId, BounceSource, DeliveryReport, MessageId, WIRE_VERSION};

    use super::*;

    fn event() -> BounceEvent {
        BounceEvent {
            version: WIRE_VERSION,
            instance: "default".into(),
            bounce_id: BounceId::new(),
            received_at: Utc::now(),
            source: BounceSource::Submit,
            peer: None,
            raw: Vec::new(),
            raw_size: 0,
            report: DeliveryReport::default(),
        }
    }

    #[test]
    fn the_join_keys_are_normalised_and_junk_is_left_out() {
        let mta = |kind: &str, value: &str| TypedValue::new(kind, value);
        assert_eq!(host_name(&mta("dns", "MX.Example.NET.")), "mx.example.net");
        assert_eq!(
            host_name(&mta("dns", "mx.example.net (192.0.2.1)")),
            "mx.example.net"
        );
        assert_eq!(host_name(&mta("", "mx.example.net")), "mx.example.net");
        assert_eq!(host_name(&mta("x-local", "mx.example.net")), "");
        assert_eq!(host_name(&mta("dns", "mx.例子.广告")), "");
        assert_eq!(queue_id("4jZC0P6BDPz6XPm"), "4jZC0P6BDPz6XPm");
        assert_eq!(queue_id("4jZC'; DROP"), "");
        assert_eq!(queue_id(&"A".repeat(33)), "");
    }

    #[test]
    fn a_report_without_date_or_returned_headers_still_has_its_columns() {
        let mut event = event();
        event.report.status = ParseStatus::Partial;
        event.report.problems = vec!["one".into(), "two".into()];
        event.report.per_message.original_message_id = "<gmail@x>".into();
        event.report.returned.cluegetter_id = Some(MessageId::new());
        let row = BounceRow::new(&event);
        assert_eq!(row.date, event.received_at);
        assert_eq!(row.message_id, "<gmail@x>");
        assert_eq!(row.parse_reason.as_deref(), Some("one\ntwo"));
        assert_eq!(row.mta, "");
        assert!(row.cluegetter_id.is_some());
        event.report.returned.message_id = "<returned@x>".into();
        assert_eq!(BounceRow::new(&event).message_id, "<returned@x>");
    }

    #[test]
    fn recipient_rows_keep_clue_getter_s_raw_fields_and_a_search_key() {
        let report = RecipientReport {
            final_recipient: Some(TypedValue::new("rfc822", "<Bob@Example.COM>")),
            original_recipient: Some(TypedValue::new("rfc822", "bob@example.com")),
            action: Some(DsnAction::Failed),
            status: "5.1.1 but much longer than sixteen".into(),
            remote_mta: Some(TypedValue::new("dns", "mx.example.com")),
            diagnostic_code: Some(TypedValue::new("smtp", "550 5.1.1 unknown")),
            last_attempt_date: None,
            will_retry_until: None,
        };
        let row = ReportRow::new(3, &report);
        assert_eq!(row.sequence, 3);
        assert_eq!(row.final_rcpt, "rfc822; <Bob@Example.COM>");
        assert_eq!(row.orig_rcpt, "rfc822; bob@example.com");
        assert_eq!(row.recipient, "bob@example.com");
        assert_eq!(row.recipient_domain, "example.com");
        assert_eq!(row.status.chars().count(), STATUS_CHARS);
        assert_eq!(row.diag_code.as_deref(), Some("smtp; 550 5.1.1 unknown"));
        assert_eq!(row.action, Some("failed"));
        let empty = ReportRow::new(0, &RecipientReport::default());
        assert_eq!(
            (empty.recipient.as_str(), empty.final_rcpt.as_str()),
            ("", "")
        );
        assert_eq!(empty.diag_code, None);
    }
}
