//! Bounces: `/bounces` lists delivery-report recipients (filter by recipient address or
//! domain, status code prefix, date range, unlinked only), `/bounces/{id}` shows one report
//! with its recipients, its link to the message and the raw report. JSON twins under
//! `/api/v1/bounces`. The SQL is `store::read::bounces`'s; this file validates and renders.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Identity;
use super::error::WebError;
use super::format::{fmt_date, fmt_opt_date, lossy};
use super::nav::Nav;
use super::params::{Params, free_text, parse_paging, parse_range};
use super::state::AppState;
use crate::store::read::bounces::{self as read, BounceQuery};
use crate::store::read::{AddressFilter, Scope};
use crate::store::values::datetime_max;

/// Most raw report bytes shown.
const RAW_SHOWN: usize = 256 * 1024;

/// The list's query string as typed; an empty value means "not set". The doc comments are
/// the OpenAPI document's descriptions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct BounceParams {
    /// Reported recipient: an address, `@domain` or `domain`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    /// Status code or its start (`5`, `5.1`, `4.7.1`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub status: String,
    /// Start, UTC: YYYY-MM-DDTHH:MM[:SS], YYYY-MM-DD or RFC 3339 (default: 24 h before `to`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// End (exclusive), same forms (default: none, so reports dated in the future by their
    /// own Date header are listed too).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// `1`: only reports not linked to a message.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub unlinked: String,
    /// Page number from 1 (at most 2000).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub page: String,
    /// Rows per page, 1 to 500 (default 50).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub per_page: String,
}

impl BounceParams {
    /// The validated query.
    fn query(&self) -> Result<BounceQuery, WebError> {
        let params = self;
        let status = free_text("status", &params.status)?;
        if let Some(status) = &status
            && (status.len() > 16 || !status.chars().all(|c| c.is_ascii_digit() || c == '.'))
        {
            return Err(WebError::BadRequest(format!(
                "status: {status:?} is not a status code or its start (5, 5.1, 4.7.1)"
            )));
        }
        let unlinked = match params.unlinked.trim() {
            "" | "0" => false,
            "1" | "on" | "true" => true,
            other => {
                return Err(WebError::BadRequest(format!(
                    "unlinked: {other:?} is not 1 or 0"
                )));
            }
        };
        let (from, to) = parse_range(&params.from, &params.to)?;
        // a report's date is its own Date header, which may lie ahead of our clock: without a
        // `to` the list is open-ended, else the default "now" would hide such reports
        let to = if params.to.trim().is_empty() {
            datetime_max()
        } else {
            to
        };
        let (page, per_page) = parse_paging(&params.page, &params.per_page)?;
        Ok(BounceQuery {
            recipient: free_text("recipient", &params.recipient)?
                .and_then(|text| AddressFilter::parse(&text)),
            status,
            from,
            to,
            unlinked,
            page,
            per_page,
        })
    }
}

/// One recipient of one report (or a report without parsed recipients).
#[derive(Debug, Serialize, ToSchema)]
pub struct BounceLine {
    pub bounce: u64,
    pub date: String,
    /// the linked message's UUID, `None` while unlinked
    pub message: Option<String>,
    pub link: String,
    pub kind: String,
    pub parse_status: String,
    pub status: String,
    pub action: String,
    pub recipient: String,
    pub diag_code: String,
    pub orig_subject: String,
    /// The report's own Subject.
    pub subject: String,
    /// Why the report could not be read (whole or in part), one problem per line; empty when
    /// it was.
    pub parse_reason: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BounceList {
    pub reports: Vec<BounceLine>,
    pub page: u32,
    pub per_page: u32,
    pub has_more: bool,
    pub from: String,
    pub to: String,
}

async fn list(
    state: &AppState,
    scope: &Scope,
    filter: &BounceQuery,
) -> Result<BounceList, WebError> {
    let rows = read::list(&state.pool, scope, filter).await?;
    let has_more = rows.len() > filter.per_page as usize;
    Ok(BounceList {
        reports: rows
            .into_iter()
            .take(filter.per_page as usize)
            .map(|r| BounceLine {
                bounce: r.id,
                date: fmt_date(r.date),
                message: r.message.map(|m| m.hyphenated().to_string()),
                link: r.link.unwrap_or_default(),
                kind: r.kind,
                parse_status: r.parse_status,
                status: r.status.unwrap_or_default(),
                action: r.action.unwrap_or_default(),
                recipient: r.recipient.unwrap_or_default(),
                diag_code: r.diag_code.unwrap_or_default(),
                orig_subject: r.orig_subject,
                subject: r.subject,
                parse_reason: r.parse_reason.unwrap_or_default(),
            })
            .collect(),
        page: filter.page,
        per_page: filter.per_page,
        has_more,
        from: filter.from.to_rfc3339(),
        to: filter.to.to_rfc3339(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "bounces.html")]
pub struct BouncesTemplate {
    nav: Nav,
    q: BounceParams,
    error: String,
    result: Option<BounceList>,
    prev_href: String,
    next_href: String,
}

fn href(params: &BounceParams, page: u32) -> String {
    let mut copy = params.clone();
    copy.page = page.to_string();
    format!(
        "/bounces?{}",
        serde_urlencoded::to_string(&copy).unwrap_or_default()
    )
}

/// `GET /bounces`
pub async fn list_page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    params: Result<Params<BounceParams>, WebError>,
) -> Result<Response, WebError> {
    let nav = Nav::new(&identity, "bounces");
    let refused = |nav: Nav, q: BounceParams, error: String| {
        let page = BouncesTemplate {
            nav,
            q,
            error,
            result: None,
            prev_href: String::new(),
            next_href: String::new(),
        };
        (StatusCode::BAD_REQUEST, page).into_response()
    };
    // a parameter the list does not have: the empty form, and why
    let params = match params {
        Ok(Params(params)) => params,
        Err(WebError::BadRequest(error)) => {
            return Ok(refused(nav, BounceParams::default(), error));
        }
        Err(other) => return Err(other),
    };
    let filter = match params.query() {
        Ok(filter) => filter,
        Err(WebError::BadRequest(error)) => return Ok(refused(nav, params, error)),
        Err(other) => return Err(other),
    };
    let result = list(&state, &identity.scope, &filter).await?;
    let prev_href = if filter.page > 1 {
        href(&params, filter.page - 1)
    } else {
        String::new()
    };
    let next_href = if result.has_more {
        href(&params, filter.page + 1)
    } else {
        String::new()
    };
    Ok(BouncesTemplate {
        nav,
        q: params,
        error: String::new(),
        result: Some(result),
        prev_href,
        next_href,
    }
    .into_response())
}

/// `GET /api/v1/bounces`
#[utoipa::path(
    get,
    path = "/api/v1/bounces",
    operation_id = "listBounces",
    summary = "Delivery reports, one row per reported recipient.",
    params(BounceParams),
    responses(
        (status = 200, description = "One page of report rows.", body = BounceList),
        (status = 400, description = "A parameter cannot be understood, or the route has no such parameter (the text says which)."),
        (status = 401, description = "No valid session cookie or bearer token."),
    ),
)]
pub async fn list_api(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Params(params): Params<BounceParams>,
) -> Result<Json<BounceList>, WebError> {
    let filter = params.query()?;
    Ok(Json(list(&state, &identity.scope, &filter).await?))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Report {
    pub status: String,
    pub action: Option<String>,
    pub orig_rcpt: String,
    pub final_rcpt: String,
    pub recipient: String,
    pub remote_mta: String,
    pub diag_code: Option<String>,
    pub last_attempt: String,
    pub retry_until: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct BounceDetail {
    pub id: u64,
    pub instance: String,
    pub date: String,
    pub received: String,
    pub source: String,
    pub peer: String,
    pub kind: String,
    pub parse_status: String,
    pub parse_reason: String,
    pub subject: String,
    pub reporting_mta: String,
    pub mta_hostname: String,
    pub received_from_mta: String,
    pub arrival_date: String,
    pub queue_id: String,
    pub message_id: String,
    pub sender: String,
    pub orig_from: String,
    pub orig_to: String,
    pub orig_subject: String,
    pub message: Option<String>,
    pub link: String,
    pub reports: Vec<Report>,
    pub raw_size: u64,
    /// The report as received, as text (lossy UTF-8, at most 256 KiB); empty when withheld.
    pub raw: String,
    /// The raw report is withheld from this user's role (`auditor`: no message contents).
    pub raw_withheld: bool,
}

async fn detail(state: &AppState, scope: &Scope, id: &str) -> Result<BounceDetail, WebError> {
    let id: u64 = id.parse().map_err(|_| WebError::NotFound)?;
    let (b, reports) = read::bounce(&state.pool, scope, id)
        .await?
        .ok_or(WebError::NotFound)?;
    let reports = reports
        .into_iter()
        .map(|r| Report {
            status: r.status,
            action: r.action,
            orig_rcpt: r.orig_rcpt,
            final_rcpt: r.final_rcpt,
            recipient: r.recipient,
            remote_mta: r.remote_mta,
            diag_code: r.diag_code,
            last_attempt: fmt_opt_date(r.last_attempt_date),
            retry_until: fmt_opt_date(r.will_retry_until),
        })
        .collect();
    let mut raw = b.raw;
    raw.truncate(RAW_SHOWN);
    Ok(BounceDetail {
        id: b.id,
        instance: b.instance,
        date: fmt_date(b.date),
        received: fmt_date(b.received),
        source: b.source,
        peer: b.peer,
        kind: b.kind,
        parse_status: b.parse_status,
        parse_reason: b.parse_reason.unwrap_or_default(),
        subject: b.subject,
        reporting_mta: b.mta,
        mta_hostname: b.mta_hostname,
        received_from_mta: b.received_from_mta,
        arrival_date: fmt_opt_date(b.arrival_date),
        queue_id: b.queue_id,
        message_id: b.message_id,
        sender: b.sender,
        orig_from: b.orig_from,
        orig_to: b.orig_to,
        orig_subject: b.orig_subject,
        message: b.message.map(|m| m.hyphenated().to_string()),
        link: b.link.unwrap_or_default(),
        reports,
        raw_size: b.raw_size,
        raw: lossy(&raw),
        raw_withheld: !scope.contents,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "bounce.html")]
pub struct BounceTemplate {
    nav: Nav,
    b: BounceDetail,
}

/// `GET /bounces/{id}`
pub async fn detail_page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Path(id): Path<String>,
) -> Result<BounceTemplate, WebError> {
    Ok(BounceTemplate {
        nav: Nav::new(&identity, "bounces"),
        b: detail(&state, &identity.scope, &id).await?,
    })
}

/// `GET /api/v1/bounces/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/bounces/{id}",
    operation_id = "getBounce",
    summary = "One delivery report with its recipients and the raw report.",
    params(("id" = u64, Path, minimum = 1, description = "The bounce id.")),
    responses(
        (status = 200, description = "The bounce.", body = BounceDetail),
        (status = 401, description = "No valid session cookie or bearer token."),
        (status = 404, description = "No such bounce."),
    ),
)]
pub async fn detail_api(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<BounceDetail>, WebError> {
    Ok(Json(detail(&state, &identity.scope, &id).await?))
}
