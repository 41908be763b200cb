//! Statistics: `/stats` (SVG charts) and `/api/v1/stats` (the same figures as JSON) for a date
//! range (default the last 24 h): messages per hour (per day beyond three days) by verdict,
//! the most rejected senders, SASL users and client addresses, and module latencies. The SQL
//! is `store::read::stats`'s; this file fills the empty periods and draws.

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wire::Action;

use super::auth::Identity;
use super::error::WebError;
use super::format::{address, fmt_date};
use super::nav::Nav;
use super::params::{Params, parse_range};
use super::state::AppState;
use super::svg::{self, Chart};
use crate::store::read::Scope;
use crate::store::read::stats::{self as read, RejectedBy};

const TOP: u32 = 10;
/// Longest range shown (a year), so a typo cannot scan the whole archive at once.
const MAX_RANGE_DAYS: i64 = 366;

/// The page's query string as typed; an empty value means "not set". The doc comments are the
/// OpenAPI document's descriptions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct StatsParams {
    /// Start, UTC (default: 24 h before `to`); the range spans at most 366 days.
    pub from: String,
    /// End, UTC (default: now).
    pub to: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Bucket {
    pub start: String,
    /// messages per verdict
    pub counts: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Count {
    pub label: String,
    pub count: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Latency {
    pub module: String,
    pub results: i64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub from: String,
    pub to: String,
    /// `hour` or `day`
    #[schema(value_type = String)]
    pub bucket: &'static str,
    pub buckets: Vec<Bucket>,
    pub top_rejected_senders: Vec<Count>,
    pub top_rejected_sasl_users: Vec<Count>,
    pub top_rejected_client_ips: Vec<Count>,
    pub module_latency: Vec<Latency>,
}

async fn stats(state: &AppState, scope: &Scope, params: &StatsParams) -> Result<Stats, WebError> {
    let (from, to) = parse_range(&params.from, &params.to)?;
    if to - from > TimeDelta::days(MAX_RANGE_DAYS) {
        return Err(WebError::BadRequest(format!(
            "the range may span {MAX_RANGE_DAYS} days at most"
        )));
    }
    let pool = &state.pool;
    let hourly = to - from <= TimeDelta::days(3);
    let (format, step) = if hourly {
        ("%Y-%m-%d %H:00", TimeDelta::hours(1))
    } else {
        ("%Y-%m-%d", TimeDelta::days(1))
    };
    let rows = read::per_verdict(pool, scope, format, from, to).await?;
    // every bucket of the range, also the empty ones
    let mut buckets: Vec<Bucket> = Vec::new();
    let mut start = truncate(from, hourly);
    while start < to && buckets.len() < 1000 {
        buckets.push(Bucket {
            start: start.format(format).to_string(),
            counts: BTreeMap::new(),
        });
        start += step;
    }
    for row in rows {
        if let Some(b) = buckets.iter_mut().find(|b| b.start == row.bucket) {
            b.counts.insert(row.verdict, row.count);
        }
    }
    let senders = read::top_rejected_senders(pool, scope, from, to, TOP).await?;
    let sasl = read::top_rejected(pool, scope, RejectedBy::SaslUser, from, to, TOP).await?;
    let ips = read::top_rejected(pool, scope, RejectedBy::ClientIp, from, to, TOP).await?;
    let module_latency = read::module_latency(pool, scope, from, to)
        .await?
        .into_iter()
        .map(|l| Latency {
            module: l.module,
            results: l.results,
            avg_ms: l.avg_ms,
            max_ms: l.max_ms,
        })
        .collect();
    let count = |row: read::LabelCount| Count {
        label: row.label,
        count: row.count,
    };
    Ok(Stats {
        from: fmt_date(from),
        to: fmt_date(to),
        bucket: if hourly { "hour" } else { "day" },
        buckets,
        top_rejected_senders: senders
            .into_iter()
            .map(|row| Count {
                label: address(&row.sender_local, &row.sender_domain),
                count: row.count,
            })
            .collect(),
        top_rejected_sasl_users: sasl.into_iter().map(count).collect(),
        top_rejected_client_ips: ips.into_iter().map(count).collect(),
        module_latency,
    })
}

fn truncate(time: DateTime<Utc>, hourly: bool) -> DateTime<Utc> {
    let secs = time.timestamp();
    let unit = if hourly { 3600 } else { 86_400 };
    DateTime::from_timestamp(secs - secs.rem_euclid(unit), 0).unwrap_or(time)
}

fn charts(stats: &Stats) -> Vec<Chart> {
    let labels: Vec<String> = stats
        .buckets
        .iter()
        .map(|b| {
            // the hour alone, or the day alone, keeps the axis readable
            if stats.bucket == "hour" {
                b.start.get(11..).unwrap_or(&b.start).to_owned()
            } else {
                b.start.get(5..).unwrap_or(&b.start).to_owned()
            }
        })
        .collect();
    let series: Vec<(String, Vec<f64>)> = Action::ALL
        .iter()
        .map(|v| v.as_str())
        .filter(|v| stats.buckets.iter().any(|b| b.counts.contains_key(*v)))
        .map(|v| {
            (
                v.to_owned(),
                stats
                    .buckets
                    .iter()
                    .map(|b| b.counts.get(v).copied().unwrap_or(0) as f64)
                    .collect(),
            )
        })
        .collect();
    let bars = |counts: &[Count]| -> Vec<(String, f64)> {
        counts
            .iter()
            .map(|c| (c.label.clone(), c.count as f64))
            .collect()
    };
    vec![
        svg::stacked_columns(
            "per-verdict",
            &format!("Messages per {} by verdict", stats.bucket),
            &labels,
            &series,
            None,
        ),
        svg::horizontal_bars(
            "top-senders",
            "Most rejected senders",
            &bars(&stats.top_rejected_senders),
            "",
        ),
        svg::horizontal_bars(
            "top-sasl",
            "Most rejected SASL users",
            &bars(&stats.top_rejected_sasl_users),
            "",
        ),
        svg::horizontal_bars(
            "top-ips",
            "Most rejected client addresses",
            &bars(&stats.top_rejected_client_ips),
            "",
        ),
        svg::horizontal_bars(
            "latency",
            "Module latency, average (ms)",
            &stats
                .module_latency
                .iter()
                .map(|l| (l.module.clone(), (l.avg_ms * 10.0).round() / 10.0))
                .collect::<Vec<_>>(),
            " ms",
        ),
    ]
}

#[derive(Template, WebTemplate)]
#[template(path = "stats.html")]
pub struct StatsTemplate {
    nav: Nav,
    q: StatsParams,
    s: Stats,
    charts: Vec<Chart>,
}

/// `GET /stats`
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Params(params): Params<StatsParams>,
) -> Result<StatsTemplate, WebError> {
    let s = stats(&state, &identity.scope, &params).await?;
    Ok(StatsTemplate {
        nav: Nav::new(&identity, "stats"),
        charts: charts(&s),
        q: params,
        s,
    })
}

/// `GET /api/v1/stats`
#[utoipa::path(
    get,
    path = "/api/v1/stats",
    operation_id = "stats",
    summary = "Messages per hour (or day) by verdict, top rejected senders, SASL users and client addresses, module latencies.",
    params(StatsParams),
    responses(
        (status = 200, description = "The figures.", body = Stats),
        (status = 400, description = "A parameter cannot be understood, or the route has no such parameter (the text says which)."),
        (status = 401, description = "No valid session cookie or bearer token."),
    ),
)]
pub async fn api(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Params(params): Params<StatsParams>,
) -> Result<Json<Stats>, WebError> {
    Ok(Json(stats(&state, &identity.scope, &params).await?))
}
