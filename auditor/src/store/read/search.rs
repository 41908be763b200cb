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

use super::{AddressFilter, IpRange, Scope, like_escape};
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

/// A SASL login filter: the exact login, logins beginning with a prefix, or logins of a
/// domain (`…@domain`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SaslFilter {
    Exact(String),
    Prefix(String),
    Domain(String),
}

/// The free-text box: one text looked for as a sender, a recipient, a subject, a queue id, a
/// Message-ID and a client address at once (any of them matches).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FreeText {
    pub text: String,
    /// The text as an address or domain (for sender and recipient).
    pub address: Option<AddressFilter>,
    /// The text as a client address or network.
    pub ip: Option<IpRange>,
}

/// Most messages a search counts (the page says "more than" beyond it).
pub const COUNT_CAP: u64 = 10_000;

/// A validated search; [`MessageQuery::sql`] turns it into SQL.
#[derive(Clone, Debug)]
pub struct MessageQuery {
    pub sender: Option<AddressFilter>,
    pub recipient: Option<AddressFilter>,
    pub ip: Option<IpRange>,
    pub sasl: Option<SaslFilter>,
    /// The free-text box.
    pub text: Option<FreeText>,
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

/// How many messages match `query` in `scope`, at most [`COUNT_CAP`] + 1.
///
/// # Errors
/// The database failed.
pub async fn count(
    pool: &Database,
    scope: &Scope,
    query: &MessageQuery,
) -> Result<u64, sqlx::Error> {
    if query.matches_nothing {
        return Ok(0);
    }
    let mut q = QueryBuilder::<MySql>::new("SELECT COUNT(*) FROM (");
    query.push_ids(&mut q, scope, false);
    q.push(" LIMIT ");
    q.push_bind(COUNT_CAP + 1);
    q.push(") counted");
    let n: i64 = q.build_query_scalar().fetch_one(pool).await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A recipient of a listed message.
#[derive(Debug, sqlx::FromRow)]
pub struct ListedRecipient {
    pub message: Uuid,
    pub local: String,
    pub domain: String,
}

/// Recipients shown per message in a result list at most.
pub const RECIPIENTS_LISTED: i64 = 5;

/// The first `limit` recipients of each of `messages` (by domain and local part; the list
/// shows [`RECIPIENTS_LISTED`]). Within a scope limited to domains, only recipients of those domains, except for the
/// messages in `whole` (those the scope covers by their sender).
///
/// # Errors
/// The database failed.
pub async fn recipients_of(
    pool: &Database,
    scope: &Scope,
    messages: &[Uuid],
    whole: &[Uuid],
    limit: i64,
) -> Result<Vec<ListedRecipient>, sqlx::Error> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT message, local, domain FROM (SELECT mr.message, r.local, r.domain, \
         ROW_NUMBER() OVER (PARTITION BY mr.message ORDER BY r.domain, r.local) AS n \
         FROM message_recipient mr JOIN recipient r ON r.id = mr.recipient \
         WHERE mr.message IN (",
    );
    let mut list = q.separated(", ");
    for id in messages {
        list.push_bind(*id);
    }
    q.push(")");
    if scope.domains.is_some() {
        q.push(" AND (TRUE");
        scope.push_recipient(&mut q);
        q.push(" OR mr.message IN (NULL");
        for id in whole {
            q.push(", ");
            q.push_bind(*id);
        }
        q.push("))");
    }
    q.push(") listed WHERE n <= ");
    q.push_bind(limit);
    q.push(" ORDER BY message, n");
    q.build_query_as().fetch_all(pool).await
}

/// The page `query` asks for, plus one row more when another page follows.
///
/// # Errors
/// The database failed.
pub async fn messages(
    pool: &Database,
    scope: &Scope,
    query: &MessageQuery,
) -> Result<Vec<MessageRow>, sqlx::Error> {
    if query.matches_nothing {
        return Ok(Vec::new());
    }
    query.sql(scope).build_query_as().fetch_all(pool).await
}

impl MessageQuery {
    /// The SQL for one page within `scope`, plus one row to tell whether another page follows.
    pub fn sql(&self, scope: &Scope) -> QueryBuilder<MySql> {
        let mut q = QueryBuilder::new(
            "SELECT m.id, m.date, m.queue_id, m.mta_hostname, m.sender_local, m.sender_domain, \
             m.subject, m.verdict, m.applied, m.rcpt_count, m.body_size, m.rejectScore, \
             s.ip, s.sasl_username, i.name AS instance FROM (",
        );
        if self.by_recipient_only() && scope.domains.is_none() {
            self.push_recipient_ids(&mut q);
        } else {
            self.push_ids(&mut q, scope, true);
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
            && self.text.is_none()
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

    /// The ids of the matching messages; with `paged`, sorted and cut to the page.
    fn push_ids(&self, q: &mut QueryBuilder<MySql>, scope: &Scope, paged: bool) {
        q.push("SELECT m.id FROM message m");
        // the scope and the free text as id sets read by their own keys
        scope.push_message_ids(q, self.from, self.to);
        if let Some(text) = &self.text {
            self.push_text(q, text, scope);
        }
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
                scope.push_searchable_recipient(q);
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
                scope.push_searchable_recipient(q);
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
        match &self.sasl {
            Some(SaslFilter::Exact(login)) => {
                q.push(" AND s.sasl_username = ");
                q.push_bind(login.clone());
            }
            Some(SaslFilter::Prefix(prefix)) => {
                q.push(" AND s.sasl_username LIKE ");
                q.push_bind(format!("{}%", like_escape(prefix)));
            }
            Some(SaslFilter::Domain(domain)) => {
                q.push(" AND s.sasl_username LIKE ");
                q.push_bind(format!("%@{}", like_escape(domain)));
            }
            None => {}
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
        if paged {
            q.push(self.order_by());
            self.push_limit(q);
        }
    }

    /// ` JOIN (…) text_ids ON text_ids.id = m.id`: the free text as any of sender,
    /// recipient, queue id, Message-ID and client address, and in the subject when it is none
    /// of the first two kinds (an address or a client address is not looked for in subjects):
    /// a union of id sets, each read by its own key and bounded by the date range.
    fn push_text(&self, q: &mut QueryBuilder<MySql>, text: &FreeText, scope: &Scope) {
        q.push(" JOIN (");
        let mut first = true;
        let mut branch = |q: &mut QueryBuilder<MySql>, select: &'static str| {
            if !first {
                q.push(" UNION ");
            }
            first = false;
            q.push(select);
        };
        // the queue id and Message-ID columns are ASCII: MariaDB refuses to compare others
        if text.text.is_ascii() {
            let bare = text.text.trim_start_matches('<').trim_end_matches('>');
            branch(q, "SELECT t.id FROM message t WHERE t.queue_id = ");
            q.push_bind(text.text.clone());
            self.push_text_dates(q, "t");
            branch(q, "SELECT t.id FROM message t WHERE t.messageId IN (");
            q.push_bind(bare.to_owned());
            q.push(", ");
            q.push_bind(format!("<{bare}>"));
            q.push(")");
            self.push_text_dates(q, "t");
        }
        match &text.address {
            Some(AddressFilter::Address { local, domain }) => {
                branch(q, "SELECT t.id FROM message t WHERE t.sender_domain = ");
                q.push_bind(domain.clone());
                q.push(" AND t.sender_local = ");
                q.push_bind(local.clone());
                self.push_text_dates(q, "t");
                branch(
                    q,
                    "SELECT mr.message FROM message_recipient mr \
                     JOIN recipient r ON r.id = mr.recipient WHERE r.domain = ",
                );
                q.push_bind(domain.clone());
                q.push(" AND r.local = ");
                q.push_bind(local.clone());
                self.push_text_dates(q, "mr");
                scope.push_searchable_recipient(q);
            }
            Some(AddressFilter::Domain(domain)) => {
                branch(q, "SELECT t.id FROM message t WHERE t.sender_domain = ");
                q.push_bind(domain.clone());
                self.push_text_dates(q, "t");
                branch(
                    q,
                    "SELECT mr.message FROM message_recipient mr WHERE mr.domain = ",
                );
                q.push_bind(domain.clone());
                self.push_text_dates(q, "mr");
                scope.push_searchable_recipient(q);
            }
            None => {}
        }
        if let Some(range) = &text.ip {
            branch(
                q,
                "SELECT t.id FROM message t JOIN session ts ON ts.id = t.session \
                 WHERE LENGTH(ts.ip_bin) = ",
            );
            q.push_bind(range.first.len() as u32);
            q.push(" AND ts.ip_bin BETWEEN ");
            q.push_bind(range.first.clone());
            q.push(" AND ");
            q.push_bind(range.last.clone());
            self.push_text_dates(q, "t");
        }
        if text.address.is_none() && text.ip.is_none() {
            branch(q, "SELECT t.id FROM message t WHERE t.subject LIKE ");
            q.push_bind(format!("%{}%", like_escape(&text.text)));
            self.push_text_dates(q, "t");
        }
        q.push(") text_ids ON text_ids.id = m.id");
    }

    /// ` AND a.date >= ? AND a.date < ?` for the alias `a` (static) of a free-text branch.
    fn push_text_dates(&self, q: &mut QueryBuilder<MySql>, alias: &'static str) {
        q.push(" AND ");
        q.push(alias);
        q.push(".date >= ");
        q.push_bind(datetime(self.from));
        q.push(" AND ");
        q.push(alias);
        q.push(".date < ");
        q.push_bind(datetime(self.to));
    }
}
