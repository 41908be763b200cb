//! The message search: one page of message summaries for a validated [`MessageQuery`].
//!
//! A deferred join: the inner query finds the page's message ids from indexes alone where it
//! can (only the filters' tables are joined), the outer one reads the ~50 full rows. On an
//! archive larger than the buffer pool this is what keeps a page well under a second.

use chrono::{DateTime, Utc};
use platform::database::Database;
use sqlx::{MySql, QueryBuilder};
use uuid::Uuid;
use wire::{Action, DeliveryStatus, ModuleName};

use super::{AddressFilter, IpRange, like_escape};
use crate::store::values::datetime;

/// The column a result list is sorted by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Sort {
    #[default]
    Date,
    Sender,
    Subject,
    Verdict,
    Size,
    QueueId,
}

/// A validated search; [`MessageQuery::sql`] turns it into SQL.
#[derive(Clone, Debug)]
pub struct MessageQuery {
    pub sender: Option<AddressFilter>,
    pub recipient: Option<AddressFilter>,
    pub ip: Option<IpRange>,
    pub sasl: Option<String>,
    /// ISO 3166-1 alpha-2, upper case (`session.country`).
    pub country: Option<String>,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub verdict: Option<Action>,
    /// A module that decided the verdict (`message_result.decisive`, `wire::decision`: the
    /// verdict would have been different without its result). For results archived before the
    /// flag existed: a module that suggested the refusal the message got. A module this build
    /// does not know is searched too (the archive keeps what newer workers answered).
    pub module: Option<ModuleName>,
    /// A module that suggested reject or tempfail with a score above 0, whatever the verdict
    /// (rspamd suggests reject with its score on every message: this finds them all).
    pub suggested: Option<ModuleName>,
    pub instance: Option<String>,
    /// A delivery line of this status was logged for the message (schema/0011).
    pub delivery: Option<DeliveryStatus>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sort: Sort,
    pub ascending: bool,
    /// From 1.
    pub page: u32,
    pub per_page: u32,
    /// A filter no row can match (non-ASCII text for an ASCII column, which MariaDB would
    /// refuse to compare): answered empty without a query.
    pub matches_nothing: bool,
}

/// One message of a result list, as stored.
#[derive(Debug, sqlx::FromRow)]
pub struct MessageRow {
    pub id: Uuid,
    pub date: DateTime<Utc>,
    pub queue_id: String,
    pub mta_hostname: String,
    pub sender_local: String,
    pub sender_domain: String,
    pub subject: String,
    pub verdict: String,
    pub applied: String,
    pub rcpt_count: u32,
    pub body_size: u64,
    #[sqlx(rename = "rejectScore")]
    pub reject_score: f64,
    pub ip: String,
    pub sasl_username: String,
    pub instance: String,
}

/// The page `query` asks for, plus one row more when another page follows.
///
/// # Errors
/// The database failed.
pub async fn messages(
    pool: &Database,
    query: &MessageQuery,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    if query.matches_nothing {
        return Ok(Vec::new());
    }
    query.sql().build_query_as().fetch_all(pool).await
}

impl MessageQuery {
    /// The SQL for one page, plus one row to tell whether another page follows.
    pub fn sql(&self) -> QueryBuilder<MySql> {
        let mut q = QueryBuilder::new(
            "SELECT m.id, m.date, m.queue_id, m.mta_hostname, m.sender_local, m.sender_domain, \
             m.subject, m.verdict, m.applied, m.rcpt_count, m.body_size, m.rejectScore, \
             s.ip, s.sasl_username, i.name AS instance FROM (",
        );
        if self.by_recipient_only() {
            self.push_recipient_ids(&mut q);
        } else {
            self.push_ids(&mut q);
        }
        q.push(
            ") page JOIN message m ON m.id = page.id \
             JOIN session s ON s.id = m.session \
             JOIN instance i ON i.id = s.cluegetter_instance",
        );
        q.push(self.order_by());
        q
    }

    /// Only a recipient (and the date range), newest first: the recipient index alone gives
    /// the page (`message_recipient.date` is a copy of `message.date`).
    fn by_recipient_only(&self) -> bool {
        self.recipient.is_some()
            && self.sort == Sort::Date
            && self.sender.is_none()
            && self.ip.is_none()
            && self.sasl.is_none()
            && self.country.is_none()
            && self.queue_id.is_none()
            && self.message_id.is_none()
            && self.subject.is_none()
            && self.verdict.is_none()
            && self.module.is_none()
            && self.suggested.is_none()
            && self.instance.is_none()
            && self.delivery.is_none()
    }

    fn push_recipient_ids(&self, q: &mut QueryBuilder<MySql>) {
        q.push("SELECT mr.message AS id, MAX(mr.date) AS date FROM message_recipient mr WHERE ");
        match &self.recipient {
            Some(AddressFilter::Address { local, domain }) => {
                q.push("mr.recipient IN (SELECT r.id FROM recipient r WHERE r.domain = ");
                q.push_bind(domain.clone());
                q.push(" AND r.local = ");
                q.push_bind(local.clone());
                q.push(")");
            }
            Some(AddressFilter::Domain(domain)) => {
                q.push("mr.domain = ");
                q.push_bind(domain.clone());
            }
            None => {
                q.push("FALSE");
            }
        }
        q.push(" AND mr.date >= ");
        q.push_bind(datetime(self.from));
        q.push(" AND mr.date < ");
        q.push_bind(datetime(self.to));
        let dir = if self.ascending { " ASC" } else { " DESC" };
        q.push(" GROUP BY mr.message ORDER BY date");
        q.push(dir);
        q.push(", id");
        q.push(dir);
        self.push_limit(q);
    }

    fn push_limit(&self, q: &mut QueryBuilder<MySql>) {
        q.push(" LIMIT ");
        q.push_bind(u64::from(self.per_page) + 1);
        q.push(" OFFSET ");
        q.push_bind(u64::from(self.page.saturating_sub(1)) * u64::from(self.per_page));
    }

    /// ` ORDER BY ...` from static fragments (the sort is a [`Sort`]).
    fn order_by(&self) -> String {
        let dir = if self.ascending { " ASC" } else { " DESC" };
        let column = match self.sort {
            Sort::Date => "m.date",
            Sort::Sender => "m.sender_domain",
            Sort::Subject => "m.subject",
            Sort::Verdict => "m.verdict",
            Sort::Size => "m.body_size",
            Sort::QueueId => "m.queue_id",
        };
        let mut order = format!(" ORDER BY {column}{dir}");
        if self.sort == Sort::Sender {
            order.push_str(&format!(", m.sender_local{dir}"));
        }
        if self.sort != Sort::Date {
            order.push_str(&format!(", m.date{dir}"));
        }
        order.push_str(&format!(", m.id{dir}"));
        order
    }

    fn push_ids(&self, q: &mut QueryBuilder<MySql>) {
        q.push("SELECT m.id FROM message m");
        // the session (and instance) rows are read only when a filter needs them
        if self.ip.is_some()
            || self.sasl.is_some()
            || self.country.is_some()
            || self.instance.is_some()
        {
            q.push(" JOIN session s ON s.id = m.session");
        }
        if self.instance.is_some() {
            q.push(" JOIN instance i ON i.id = s.cluegetter_instance");
        }
        q.push(" WHERE m.date >= ");
        q.push_bind(datetime(self.from));
        q.push(" AND m.date < ");
        q.push_bind(datetime(self.to));
        match &self.sender {
            Some(AddressFilter::Address { local, domain }) => {
                q.push(" AND m.sender_domain = ");
                q.push_bind(domain.clone());
                q.push(" AND m.sender_local = ");
                q.push_bind(local.clone());
            }
            Some(AddressFilter::Domain(domain)) => {
                q.push(" AND m.sender_domain = ");
                q.push_bind(domain.clone());
            }
            None => {}
        }
        match &self.recipient {
            Some(AddressFilter::Address { local, domain }) => {
                q.push(
                    " AND m.id IN (SELECT mr.message FROM message_recipient mr \
                     JOIN recipient r ON r.id = mr.recipient WHERE r.domain = ",
                );
                q.push_bind(domain.clone());
                q.push(" AND r.local = ");
                q.push_bind(local.clone());
                q.push(" AND mr.date >= ");
                q.push_bind(datetime(self.from));
                q.push(" AND mr.date < ");
                q.push_bind(datetime(self.to));
                q.push(")");
            }
            Some(AddressFilter::Domain(domain)) => {
                q.push(
                    " AND m.id IN (SELECT mr.message FROM message_recipient mr WHERE mr.domain = ",
                );
                q.push_bind(domain.clone());
                q.push(" AND mr.date >= ");
                q.push_bind(datetime(self.from));
                q.push(" AND mr.date < ");
                q.push_bind(datetime(self.to));
                q.push(")");
            }
            None => {}
        }
        if let Some(range) = &self.ip {
            // the length keeps IPv4 values out of IPv6 ranges and back (0001's convention)
            q.push(" AND LENGTH(s.ip_bin) = ");
            q.push_bind(range.first.len() as u32);
            q.push(" AND s.ip_bin BETWEEN ");
            q.push_bind(range.first.clone());
            q.push(" AND ");
            q.push_bind(range.last.clone());
        }
        if let Some(sasl) = &self.sasl {
            q.push(" AND s.sasl_username = ");
            q.push_bind(sasl.clone());
        }
        if let Some(country) = &self.country {
            q.push(" AND s.country = ");
            q.push_bind(country.clone());
        }
        if let Some(queue_id) = &self.queue_id {
            q.push(" AND m.queue_id = ");
            q.push_bind(queue_id.clone());
        }
        if let Some(message_id) = &self.message_id {
            // with or without the angle brackets
            let bare = message_id.trim_start_matches('<').trim_end_matches('>');
            q.push(" AND m.messageId IN (");
            q.push_bind(bare.to_owned());
            q.push(", ");
            q.push_bind(format!("<{bare}>"));
            q.push(")");
        }
        if let Some(subject) = &self.subject {
            q.push(" AND m.subject LIKE ");
            q.push_bind(format!("%{}%", like_escape(subject)));
        }
        if let Some(verdict) = self.verdict {
            q.push(" AND m.verdict = ");
            q.push_bind(verdict.as_str());
        }
        if let Some(module) = &self.module {
            q.push(
                " AND EXISTS (SELECT 1 FROM message_result r WHERE r.message = m.id \
                 AND r.module = ",
            );
            q.push_bind(module.as_str().to_owned());
            q.push(
                " AND (r.decisive = 1 OR (r.decisive IS NULL AND r.verdict = m.verdict \
                 AND m.verdict IN ('reject', 'tempfail'))))",
            );
        }
        if let Some(module) = &self.suggested {
            q.push(
                " AND EXISTS (SELECT 1 FROM message_result r WHERE r.message = m.id \
                 AND r.module = ",
            );
            q.push_bind(module.as_str().to_owned());
            q.push(" AND r.verdict IN ('reject', 'tempfail') AND r.score > 0)");
        }
        if let Some(instance) = &self.instance {
            q.push(" AND i.name = ");
            q.push_bind(instance.clone());
        }
        if let Some(status) = self.delivery {
            q.push(" AND m.queue_id <> '' AND EXISTS (SELECT 1 FROM message_delivery d WHERE ");
            q.push(super::delivery::JOIN);
            q.push(" AND d.status = ");
            q.push_bind(status.as_str());
            q.push(")");
        }
        q.push(self.order_by());
        self.push_limit(q);
    }
}
