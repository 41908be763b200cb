//! The message search: `/messages` (page) and `/api/v1/messages` (JSON), one query for both.
//!
//! By concern: [`params`] is the query string as typed (bookmarkable, the page's links),
//! [`filter`] validates it into the store's `MessageQuery` (each refused parameter named in a
//! 400), `store::read::search` builds the SQL from static fragments with every value bound;
//! this file runs it and renders the rows. Each filter matches an index (0001, 0005), and the
//! date range (default: the last 24 h) bounds every scan.

pub mod csv;
pub mod filter;
pub mod params;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use self::params::SearchParams;
use super::auth::Identity;
use super::error::WebError;
use super::format::{address, decode_subject, fmt_date};
use super::nav::Nav;
use super::params::Params;
use super::state::AppState;
use crate::store::read::Scope;
use crate::store::read::search::{self as read, MessageQuery};

/// One message in a result list.
#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct MessageSummary {
    /// The message UUID.
    #[schema(format = Uuid)]
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
    /// The first recipients (by domain and address; a `domain-admin` sees those of its
    /// domains only, unless the message is its by the sender).
    pub recipients: Vec<String>,
    /// Recipients per delivery status Postfix logged for it (`bounce-ingest maillog`); a
    /// recipient deferred, then sent, counts in both.
    pub delivery: DeliveryCounts,
}

/// Recipients with a delivery line of each status.
#[derive(Clone, Debug, Default, Serialize, ToSchema)]
pub struct DeliveryCounts {
    pub sent: u32,
    pub deferred: u32,
    pub bounced: u32,
    pub expired: u32,
}

impl DeliveryCounts {
    pub fn is_empty(&self) -> bool {
        self.sent + self.deferred + self.bounced + self.expired == 0
    }
}

/// One page of results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SearchResult {
    pub messages: Vec<MessageSummary>,
    pub page: u32,
    pub per_page: u32,
    pub has_more: bool,
    pub from: String,
    pub to: String,
    /// How many messages match, counted up to 10000; `count_capped`: more than that.
    pub count: u64,
    pub count_capped: bool,
}

/// The page `query` asks for, of the messages in `scope`.
///
/// # Errors
/// The database failed.
pub async fn run(
    state: &AppState,
    scope: &Scope,
    query: &MessageQuery,
) -> Result<SearchResult, WebError> {
    let mut rows = read::messages(&state.pool, scope, query).await?;
    let has_more = rows.len() > query.per_page as usize;
    rows.truncate(query.per_page as usize);
    let count = if has_more || query.page > 1 {
        read::count(&state.pool, scope, query).await?
    } else {
        rows.len() as u64
    };
    let ids: Vec<uuid::Uuid> = rows.iter().map(|row| row.id).collect();
    let whole: Vec<uuid::Uuid> = rows
        .iter()
        .filter(|row| scope.covers_sender(&row.sender_domain, &row.sasl_username))
        .map(|row| row.id)
        .collect();
    let mut recipients: std::collections::HashMap<uuid::Uuid, Vec<String>> =
        std::collections::HashMap::new();
    for r in read::recipients_of(&state.pool, scope, &ids, &whole, read::RECIPIENTS_LISTED).await? {
        recipients
            .entry(r.message)
            .or_default()
            .push(address(&r.local, &r.domain));
    }
    let mut deliveries: std::collections::HashMap<uuid::Uuid, DeliveryCounts> =
        std::collections::HashMap::new();
    for (id, status, n) in crate::store::read::delivery::counts(&state.pool, &ids).await? {
        let counts = deliveries.entry(id).or_default();
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        match status.as_str() {
            "sent" => counts.sent = n,
            "deferred" => counts.deferred = n,
            "bounced" => counts.bounced = n,
            _ => counts.expired = n,
        }
    }
    let messages = rows
        .into_iter()
        .map(|row| MessageSummary {
            recipients: recipients.remove(&row.id).unwrap_or_default(),
            id: row.id.hyphenated().to_string(),
            date: fmt_date(row.date),
            queue_id: row.queue_id,
            mta_hostname: row.mta_hostname,
            sender: address(&row.sender_local, &row.sender_domain),
            subject: decode_subject(&row.subject),
            verdict: row.verdict,
            applied: row.applied,
            rcpt_count: row.rcpt_count,
            body_size: row.body_size,
            reject_score: row.reject_score,
            client_ip: row.ip,
            sasl_username: row.sasl_username,
            instance: row.instance,
            delivery: deliveries.remove(&row.id).unwrap_or_default(),
        })
        .collect();
    Ok(SearchResult {
        messages,
        page: query.page,
        per_page: query.per_page,
        has_more,
        from: query.from.to_rfc3339(),
        to: query.to.to_rfc3339(),
        count: count.min(read::COUNT_CAP),
        count_capped: count > read::COUNT_CAP,
    })
}

/// `GET /api/v1/messages`
#[utoipa::path(
    get,
    path = "/api/v1/messages",
    operation_id = "searchMessages",
    summary = "Search messages (newest first by default).",
    params(SearchParams),
    responses(
        (status = 200, description = "One page of messages.", body = SearchResult),
        (status = 400, description = "A parameter cannot be understood, or the route has no such parameter (the text says which)."),
        (status = 401, description = "No valid session cookie or bearer token."),
    ),
)]
pub async fn api(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Params(params): Params<SearchParams>,
) -> Result<Json<SearchResult>, WebError> {
    let query = filter::parse(&params)?;
    Ok(Json(run(&state, &identity.scope, &query).await?))
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
    pub verdicts: Vec<&'static str>,
    pub deliveries: Vec<&'static str>,
    /// Suggestions for the module filter.
    pub modules: Vec<&'static str>,
    pub error: String,
    pub result: Option<SearchResult>,
    pub sort_links: Vec<SortLink>,
    pub prev_href: String,
    pub next_href: String,
    pub from_shown: String,
    pub to_shown: String,
    /// This search as CSV (`/messages.csv?…`).
    pub csv_href: String,
    /// (label, href) of the ranges up to now.
    pub shortcuts: Vec<(&'static str, String)>,
    /// Recipients listed per message at most (more: an ellipsis).
    pub recipients_listed: i64,
}

impl SearchTemplate {
    /// This search narrowed to `value` of `key` (`sender`, `ip`, `sasl`), from the first page.
    pub fn filter_href(&self, key: &str, value: &str) -> String {
        self.q.href(|p| {
            let field = match key {
                "sender" => &mut p.sender,
                "ip" => &mut p.ip,
                _ => &mut p.sasl,
            };
            value.clone_into(field);
            p.page = String::new();
        })
    }
}

/// The ranges up to now as links: this search over the last hour, today, the last 7 days.
fn shortcuts(params: &SearchParams) -> Vec<(&'static str, String)> {
    [("last hour", "1h"), ("today", "today"), ("7 days", "7d")]
        .into_iter()
        .map(|(label, last)| {
            let href = params.href(|p| {
                last.clone_into(&mut p.last);
                p.from = String::new();
                p.to = String::new();
                p.page = String::new();
            });
            (label, href)
        })
        .collect()
}

impl SearchTemplate {
    /// The form alone, with why the search was refused.
    fn refused(nav: Nav, q: SearchParams, error: String) -> Self {
        Self {
            nav,
            q,
            verdicts: filter::verdict_names(),
            deliveries: filter::delivery_names(),
            modules: filter::module_names(),
            error,
            result: None,
            sort_links: Vec::new(),
            prev_href: String::new(),
            next_href: String::new(),
            from_shown: String::new(),
            to_shown: String::new(),
            csv_href: String::new(),
            shortcuts: Vec::new(),
            recipients_listed: read::RECIPIENTS_LISTED,
        }
    }
}

/// The result table's headings: the current sort marked, a click sorts by the column (again:
/// the other way), back to the first page.
fn sort_links(params: &SearchParams) -> Vec<SortLink> {
    [
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
    .collect()
}

/// `GET /messages`
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    params: Result<Params<SearchParams>, WebError>,
) -> Result<Response, WebError> {
    let nav = Nav::new(&identity, "messages");
    // a parameter the search does not have: the empty form, and why
    let params = match params {
        Ok(Params(params)) => params,
        Err(WebError::BadRequest(error)) => {
            let page = SearchTemplate::refused(nav, SearchParams::default(), error);
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
        Err(other) => return Err(other),
    };
    let query = match filter::parse(&params) {
        Ok(query) => query,
        Err(WebError::BadRequest(error)) => {
            let page = SearchTemplate::refused(nav, params, error);
            return Ok((StatusCode::BAD_REQUEST, page).into_response());
        }
        Err(other) => return Err(other),
    };
    let result = run(&state, &identity.scope, &query).await?;
    let prev_href = if query.page > 1 {
        params.href(|p| p.page = (query.page - 1).to_string())
    } else {
        String::new()
    };
    let next_href = if result.has_more {
        params.href(|p| p.page = (query.page + 1).to_string())
    } else {
        String::new()
    };
    let csv_href =
        params
            .href(|p| p.page = String::new())
            .replacen("/messages?", "/messages.csv?", 1);
    let page = SearchTemplate {
        csv_href,
        shortcuts: shortcuts(&params),
        recipients_listed: read::RECIPIENTS_LISTED,
        nav,
        sort_links: sort_links(&params),
        q: params,
        verdicts: filter::verdict_names(),
        deliveries: filter::delivery_names(),
        modules: filter::module_names(),
        error: String::new(),
        from_shown: fmt_date(query.from),
        to_shown: fmt_date(query.to),
        result: Some(result),
        prev_href,
        next_href,
    };
    Ok(page.into_response())
}
