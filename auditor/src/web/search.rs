//! The message search: `/messages` (page) and `/api/v1/messages` (JSON), one query for both.
//!
//! Every filter is in the URL (bookmarkable). Parsing validates each parameter into a
//! [`Filter`]; [`Filter::query`] builds the SQL from static fragments and binds every value,
//! so no input ever becomes SQL text. Each filter matches an index (0001, 0005), and the date
//! range (default: the last 24 h) bounds every scan.

use std::net::IpAddr;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sqlx::{MySql, QueryBuilder};
use uuid::Uuid;

use super::api::{Nav, fmt_date};
use super::{AppState, WebError};
use crate::store::values::{ip_bin, network_bounds, split_address};

/// The verdicts the archive knows (`message.verdict` ENUM).
pub const VERDICTS: &[&str] = &[
    "permit",
    "tempfail",
    "reject",
    "error",
    "discard",
    "quarantine",
];
const SORTS: &[&str] = &["date", "sender", "subject", "verdict", "size", "queue_id"];
pub const DEFAULT_PER_PAGE: u32 = 50;
pub const MAX_PER_PAGE: u32 = 500;
/// OFFSET beyond this is refused: narrow the search instead.
const MAX_PAGE: u32 = 2000;

/// The query string as typed; an empty value means "not set".
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct SearchParams {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sender: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sasl: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub queue_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verdict: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub module: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sort: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub page: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub per_page: String,
}

impl SearchParams {
    /// This search's URL with `change` applied (for paging and sorting links).
    pub fn href(&self, change: impl FnOnce(&mut Self)) -> String {
        let mut copy = self.clone();
        change(&mut copy);
        format!(
            "/messages?{}",
            serde_urlencoded::to_string(&copy).unwrap_or_default()
        )
    }
}

/// An address filter: an exact address, or every address of a domain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AddressFilter {
    Address { local: String, domain: String },
    Domain(String),
}

impl AddressFilter {
    /// `a@b` an address, `@b` or `b` a domain, `<>` the null sender.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.is_empty() {
            return None;
        }
        if text == "<>" {
            return Some(Self::Address {
                local: String::new(),
                domain: String::new(),
            });
        }
        if let Some(domain) = text.strip_prefix('@') {
            return Some(Self::Domain(domain.to_lowercase()));
        }
        if text.contains('@') {
            let (local, domain) = split_address(text);
            return Some(Self::Address { local, domain });
        }
        Some(Self::Domain(text.to_lowercase()))
    }
}

/// A client address or network as `ip_bin` bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpRange {
    pub first: Vec<u8>,
    pub last: Vec<u8>,
}

impl IpRange {
    pub fn parse(text: &str) -> Result<Self, WebError> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<IpAddr>() {
            let bin = ip_bin(addr);
            return Ok(Self {
                first: bin.clone(),
                last: bin,
            });
        }
        let net: IpNet = text.parse().map_err(|_| {
            WebError::BadRequest(format!("ip: {text:?} is not an address or a network"))
        })?;
        // an IPv4-mapped IPv6 network means the IPv4 one (the archive stores those as IPv4)
        let net = match net {
            IpNet::V6(v6) if v6.addr().to_ipv4_mapped().is_some() && v6.prefix_len() >= 96 => {
                match v6.addr().to_ipv4_mapped() {
                    Some(v4) => IpNet::V4(
                        ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                            .map_err(|_| WebError::BadRequest("ip: bad prefix".into()))?,
                    ),
                    None => net,
                }
            }
            other => other,
        };
        let (first, last) = network_bounds(&net);
        Ok(Self { first, last })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sort {
    Date,
    Sender,
    Subject,
    Verdict,
    Size,
    QueueId,
}

/// A validated search.
#[derive(Clone, Debug)]
pub struct Filter {
    pub sender: Option<AddressFilter>,
    pub recipient: Option<AddressFilter>,
    pub ip: Option<IpRange>,
    pub sasl: Option<String>,
    pub queue_id: Option<String>,
    pub message_id: Option<String>,
    pub subject: Option<String>,
    pub verdict: Option<&'static str>,
    pub module: Option<String>,
    pub instance: Option<String>,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub sort: Sort,
    pub ascending: bool,
    pub page: u32,
    pub per_page: u32,
    /// A filter no row can match (non-ASCII text for an ASCII column, which MariaDB would
    /// refuse to compare): answered empty without a query.
    pub matches_nothing: bool,
}

/// A free-text filter: trimmed, empty means unset. Control characters are refused: the
/// archive's collation ignores some (a NUL would match every empty value).
pub fn free_text(name: &str, text: &str) -> Result<Option<String>, WebError> {
    if text.chars().any(char::is_control) {
        return Err(WebError::BadRequest(format!(
            "{name}: control characters are not allowed"
        )));
    }
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// A time as typed in a form (`2026-11-25T10:00`, with seconds, with a space, a bare date, or
/// RFC 3339), UTC.
pub fn parse_time(name: &str, text: &str) -> Result<Option<DateTime<Utc>>, WebError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(time.with_timezone(&Utc)));
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(time.and_utc()));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(WebError::BadRequest(format!(
        "{name}: {text:?} is not a time (use YYYY-MM-DDTHH:MM, UTC)"
    )))
}

/// `from`/`to` with the defaults: the 24 hours before `to`, `to` now.
pub fn parse_range(from: &str, to: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), WebError> {
    let to = parse_time("to", to)?.unwrap_or_else(Utc::now);
    let from = parse_time("from", from)?.unwrap_or(to - TimeDelta::hours(24));
    Ok((from, to))
}

/// `page` and `per_page`.
pub fn parse_paging(page: &str, per_page: &str) -> Result<(u32, u32), WebError> {
    let number = |name: &str, text: &str, default: u32, max: u32| -> Result<u32, WebError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(default);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(WebError::BadRequest(format!(
                "{name}: {text:?} is not a number from 1 to {max}"
            ))),
        }
    };
    Ok((
        number("page", page, 1, MAX_PAGE)?,
        number("per_page", per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
    ))
}

impl Filter {
    pub fn parse(params: &SearchParams) -> Result<Self, WebError> {
        let verdict = match params.verdict.trim() {
            "" => None,
            text => Some(
                VERDICTS
                    .iter()
                    .copied()
                    .find(|v| v.eq_ignore_ascii_case(text))
                    .ok_or_else(|| {
                        WebError::BadRequest(format!(
                            "verdict: {text:?} is not one of {}",
                            VERDICTS.join(", ")
                        ))
                    })?,
            ),
        };
        let sort = match params.sort.trim() {
            "" | "date" => Sort::Date,
            "sender" => Sort::Sender,
            "subject" => Sort::Subject,
            "verdict" => Sort::Verdict,
            "size" => Sort::Size,
            "queue_id" => Sort::QueueId,
            other => {
                return Err(WebError::BadRequest(format!(
                    "sort: {other:?} is not one of {}",
                    SORTS.join(", ")
                )));
            }
        };
        let ascending = match params.dir.trim() {
            "" | "desc" => false,
            "asc" => true,
            other => {
                return Err(WebError::BadRequest(format!(
                    "dir: {other:?} is not asc or desc"
                )));
            }
        };
        let (from, to) = parse_range(&params.from, &params.to)?;
        let (page, per_page) = parse_paging(&params.page, &params.per_page)?;
        let ip = match params.ip.trim() {
            "" => None,
            text => Some(IpRange::parse(text)?),
        };
        let queue_id = free_text("queue_id", &params.queue_id)?;
        let module = free_text("module", &params.module)?;
        let matches_nothing = [&queue_id, &module]
            .into_iter()
            .flatten()
            .any(|text| !text.is_ascii());
        Ok(Self {
            matches_nothing,
            sender: free_text("sender", &params.sender)?
                .and_then(|text| AddressFilter::parse(&text)),
            recipient: free_text("recipient", &params.recipient)?
                .and_then(|text| AddressFilter::parse(&text)),
            ip,
            sasl: free_text("sasl", &params.sasl)?,
            queue_id,
            message_id: free_text("message_id", &params.message_id)?,
            subject: free_text("subject", &params.subject)?,
            verdict,
            module,
            instance: free_text("instance", &params.instance)?,
            from,
            to,
            sort,
            ascending,
            page,
            per_page,
        })
    }

    /// The SQL for one page, plus one row to tell whether another page follows.
    ///
    /// A deferred join: the inner query finds the page's message ids from indexes alone where
    /// it can (only the filters' tables are joined), the outer one reads the ~50 full rows. On
    /// an archive larger than the buffer pool this is what keeps a page well under a second.
    pub fn query(&self) -> QueryBuilder<MySql> {
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
            && self.queue_id.is_none()
            && self.message_id.is_none()
            && self.subject.is_none()
            && self.verdict.is_none()
            && self.module.is_none()
            && self.instance.is_none()
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
        q.push_bind(self.from);
        q.push(" AND mr.date < ");
        q.push_bind(self.to);
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
        q.push_bind(u64::from(self.page - 1) * u64::from(self.per_page));
    }

    /// ` ORDER BY ...` from static fragments (the sort was validated into [`Sort`]).
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
        if self.ip.is_some() || self.sasl.is_some() || self.instance.is_some() {
            q.push(" JOIN session s ON s.id = m.session");
        }
        if self.instance.is_some() {
            q.push(" JOIN instance i ON i.id = s.cluegetter_instance");
        }
        q.push(" WHERE m.date >= ");
        q.push_bind(self.from);
        q.push(" AND m.date < ");
        q.push_bind(self.to);
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
                q.push_bind(self.from);
                q.push(" AND mr.date < ");
                q.push_bind(self.to);
                q.push(")");
            }
            Some(AddressFilter::Domain(domain)) => {
                q.push(
                    " AND m.id IN (SELECT mr.message FROM message_recipient mr WHERE mr.domain = ",
                );
                q.push_bind(domain.clone());
                q.push(" AND mr.date >= ");
                q.push_bind(self.from);
                q.push(" AND mr.date < ");
                q.push_bind(self.to);
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
            q.push_bind(verdict);
        }
        if let Some(module) = &self.module {
            q.push(
                " AND m.id IN (SELECT r.message FROM message_result r \
                 WHERE r.verdict = 'reject' AND r.module = ",
            );
            q.push_bind(module.clone());
            q.push(")");
        }
        if let Some(instance) = &self.instance {
            q.push(" AND i.name = ");
            q.push_bind(instance.clone());
        }
        q.push(self.order_by());
        self.push_limit(q);
    }
}

/// `%`, `_` and `\` taken literally in a `LIKE` pattern (backslash is MariaDB's escape).
pub fn like_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    id: Uuid,
    date: DateTime<Utc>,
    queue_id: String,
    mta_hostname: String,
    sender_local: String,
    sender_domain: String,
    subject: String,
    verdict: String,
    applied: String,
    rcpt_count: u32,
    body_size: u64,
    #[sqlx(rename = "rejectScore")]
    reject_score: f64,
    ip: String,
    sasl_username: String,
    instance: String,
}

/// One message in a result list.
#[derive(Clone, Debug, Serialize)]
pub struct MessageSummary {
    pub id: String,
    pub date: String,
    pub queue_id: String,
    pub mta_hostname: String,
    pub sender: String,
    pub subject: String,
    pub verdict: String,
    pub applied: String,
    pub rcpt_count: u32,
    pub body_size: u64,
    pub reject_score: f64,
    pub client_ip: String,
    pub sasl_username: String,
    pub instance: String,
}

/// `local@domain`, or `<>` for the null sender.
pub fn address(local: &str, domain: &str) -> String {
    match (local.is_empty(), domain.is_empty()) {
        (true, true) => "<>".to_owned(),
        (_, true) => local.to_owned(),
        _ => format!("{local}@{domain}"),
    }
}

/// One page of results.
#[derive(Debug, Serialize)]
pub struct SearchResult {
    pub messages: Vec<MessageSummary>,
    pub page: u32,
    pub per_page: u32,
    pub has_more: bool,
    pub from: String,
    pub to: String,
}

pub async fn run(state: &AppState, filter: &Filter) -> Result<SearchResult, WebError> {
    let rows: Vec<Row> = if filter.matches_nothing {
        Vec::new()
    } else {
        filter
            .query()
            .build_query_as()
            .fetch_all(&state.pool)
            .await?
    };
    let has_more = rows.len() > filter.per_page as usize;
    let messages = rows
        .into_iter()
        .take(filter.per_page as usize)
        .map(|row| MessageSummary {
            id: row.id.hyphenated().to_string(),
            date: fmt_date(row.date),
            queue_id: row.queue_id,
            mta_hostname: row.mta_hostname,
            sender: address(&row.sender_local, &row.sender_domain),
            subject: row.subject,
            verdict: row.verdict,
            applied: row.applied,
            rcpt_count: row.rcpt_count,
            body_size: row.body_size,
            reject_score: row.reject_score,
            client_ip: row.ip,
            sasl_username: row.sasl_username,
            instance: row.instance,
        })
        .collect();
    Ok(SearchResult {
        messages,
        page: filter.page,
        per_page: filter.per_page,
        has_more,
        from: filter.from.to_rfc3339(),
        to: filter.to.to_rfc3339(),
    })
}

/// `GET /api/v1/messages`
pub async fn api(
    State(state): State<AppState>,
    Query(params): Query<SearchParams>,
) -> Result<Json<SearchResult>, WebError> {
    let filter = Filter::parse(&params)?;
    Ok(Json(run(&state, &filter).await?))
}

/// A column heading that sorts by it (again: the other way).
pub struct SortLink {
    pub label: &'static str,
    pub href: String,
    pub marker: &'static str,
}

#[derive(Template, WebTemplate)]
#[template(path = "search.html")]
pub struct SearchTemplate {
    pub nav: Nav,
    pub q: SearchParams,
    pub verdicts: &'static [&'static str],
    pub error: String,
    pub result: Option<SearchResult>,
    pub sort_links: Vec<SortLink>,
    pub prev_href: String,
    pub next_href: String,
    pub from_shown: String,
    pub to_shown: String,
}

/// `GET /messages`
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<super::auth::Identity>,
    Query(params): Query<SearchParams>,
) -> Result<Response, WebError> {
    let nav = Nav::new(&identity, "messages");
    let filter = match Filter::parse(&params) {
        Ok(filter) => filter,
        Err(WebError::BadRequest(error)) => {
            let page = SearchTemplate {
                nav,
                q: params,
                verdicts: VERDICTS,
                error,
                result: None,
                sort_links: Vec::new(),
                prev_href: String::new(),
                next_href: String::new(),
                from_shown: String::new(),
                to_shown: String::new(),
            };
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
        Err(other) => return Err(other),
    };
    let result = run(&state, &filter).await?;
    let sort_links = [
        ("Date", "date"),
        ("Queue id", "queue_id"),
        ("Sender", "sender"),
        ("Subject", "subject"),
        ("Verdict", "verdict"),
        ("Size", "size"),
    ]
    .into_iter()
    .map(|(label, key)| {
        let current = params.sort.trim() == key || (key == "date" && params.sort.trim().is_empty());
        let ascending_now = params.dir.trim() == "asc";
        SortLink {
            label,
            href: params.href(|p| {
                p.sort = key.to_owned();
                p.dir = if current && !ascending_now {
                    "asc"
                } else {
                    "desc"
                }
                .to_owned();
                p.page = String::new();
            }),
            marker: match (current, ascending_now) {
                (false, _) => "",
                (true, true) => " ▲",
                (true, false) => " ▼",
            },
        }
    })
    .collect();
    let prev_href = if filter.page > 1 {
        params.href(|p| p.page = (filter.page - 1).to_string())
    } else {
        String::new()
    };
    let next_href = if result.has_more {
        params.href(|p| p.page = (filter.page + 1).to_string())
    } else {
        String::new()
    };
    let page = SearchTemplate {
        nav,
        q: params,
        verdicts: VERDICTS,
        error: String::new(),
        from_shown: fmt_date(filter.from),
        to_shown: fmt_date(filter.to),
        result: Some(result),
        sort_links,
        prev_href,
        next_href,
    };
    Ok(page.into_response())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn addresses_domains_and_the_null_sender() {
        assert_eq!(
            AddressFilter::parse(" Bob@Example.NET "),
            Some(AddressFilter::Address {
                local: "bob".into(),
                domain: "example.net".into()
            })
        );
        assert_eq!(
            AddressFilter::parse("@Example.net"),
            Some(AddressFilter::Domain("example.net".into()))
        );
        assert_eq!(
            AddressFilter::parse("example.net"),
            Some(AddressFilter::Domain("example.net".into()))
        );
        assert_eq!(
            AddressFilter::parse("<>"),
            Some(AddressFilter::Address {
                local: String::new(),
                domain: String::new()
            })
        );
        assert_eq!(AddressFilter::parse("  "), None);
    }

    #[test]
    fn networks_become_binary_bounds() {
        let range = IpRange::parse("192.0.2.0/24").unwrap();
        assert_eq!(range.first, vec![192, 0, 2, 0]);
        assert_eq!(range.last, vec![192, 0, 2, 255]);
        let one = IpRange::parse("::ffff:192.0.2.7").unwrap();
        assert_eq!(one.first, vec![192, 0, 2, 7]);
        let mapped = IpRange::parse("::ffff:192.0.2.0/120").unwrap();
        assert_eq!(mapped.last, vec![192, 0, 2, 255]);
        assert_eq!(IpRange::parse("2001:db8::/32").unwrap().first.len(), 16);
        assert!(IpRange::parse("' OR 1=1 --").is_err());
    }

    #[test]
    fn like_metacharacters_are_literal() {
        assert_eq!(like_escape(r"50%_off\"), r"50\%\_off\\");
    }

    #[test]
    fn bad_parameters_are_400_not_500() {
        for (field, value) in [
            ("verdict", "maybe"),
            ("sort", "id; DROP TABLE message"),
            ("dir", "sideways"),
            ("page", "0"),
            ("per_page", "100000"),
            ("from", "yesterday"),
        ] {
            let mut params = SearchParams::default();
            match field {
                "verdict" => params.verdict = value.into(),
                "sort" => params.sort = value.into(),
                "dir" => params.dir = value.into(),
                "page" => params.page = value.into(),
                "per_page" => params.per_page = value.into(),
                _ => params.from = value.into(),
            }
            assert!(
                matches!(Filter::parse(&params), Err(WebError::BadRequest(_))),
                "{field}={value}"
            );
        }
    }
}
