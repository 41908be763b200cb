//! Statistics: `/stats` (SVG charts) and `/api/v1/stats` (the same figures as JSON) for a date
//! range (default the last 24 h): messages per hour (per day beyond three days) by verdict,
//! the most rejected senders, SASL users and client addresses, and module latencies. Each
//! query is one index range over the period (schema/0005's covering indexes).

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::api::{Nav, fmt_date};
use super::auth::Identity;
use super::search::{VERDICTS, address, parse_range};
use super::svg::{self, Chart};
use super::{AppState, WebError};

const TOP: u32 = 10;
/// Longest range shown (a year), so a typo cannot scan the whole archive at once.
const MAX_RANGE_DAYS: i64 = 366;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct StatsParams {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize)]
pub struct Bucket {
    pub start: String,
    /// messages per verdict
    pub counts: BTreeMap<String, i64>,
}

#[derive(Debug, Serialize)]
pub struct Count {
    pub label: String,
    pub count: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct Latency {
    pub module: String,
    pub results: i64,
    pub avg_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Serialize)]
pub struct Stats {
    pub from: String,
    pub to: String,
    /// `hour` or `day`
    pub bucket: &'static str,
    pub buckets: Vec<Bucket>,
    pub top_rejected_senders: Vec<Count>,
    pub top_rejected_sasl_users: Vec<Count>,
    pub top_rejected_client_ips: Vec<Count>,
    pub module_latency: Vec<Latency>,
}

async fn stats(state: &AppState, params: &StatsParams) -> Result<Stats, WebError> {
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
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT CAST(DATE_FORMAT(date, ?) AS CHAR) AS bucket, CAST(verdict AS CHAR), COUNT(*) \
         FROM message WHERE date >= ? AND date < ? GROUP BY bucket, verdict ORDER BY bucket",
    )
    .bind(format)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
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
    for (bucket, verdict, count) in rows {
        if let Some(b) = buckets.iter_mut().find(|b| b.start == bucket) {
            b.counts.insert(verdict, count);
        }
    }
    let senders: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT sender_local, sender_domain, COUNT(*) AS n FROM message \
         WHERE verdict = 'reject' AND date >= ? AND date < ? \
         GROUP BY sender_domain, sender_local ORDER BY n DESC, sender_domain, sender_local LIMIT ?",
    )
    .bind(from)
    .bind(to)
    .bind(TOP)
    .fetch_all(pool)
    .await?;
    let sasl: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.sasl_username, COUNT(*) AS n FROM message m JOIN session s ON s.id = m.session \
         WHERE m.verdict = 'reject' AND m.date >= ? AND m.date < ? AND s.sasl_username <> '' \
         GROUP BY s.sasl_username ORDER BY n DESC, s.sasl_username LIMIT ?",
    )
    .bind(from)
    .bind(to)
    .bind(TOP)
    .fetch_all(pool)
    .await?;
    let ips: Vec<(String, i64)> = sqlx::query_as(
        "SELECT s.ip, COUNT(*) AS n FROM message m JOIN session s ON s.id = m.session \
         WHERE m.verdict = 'reject' AND m.date >= ? AND m.date < ? AND s.ip <> '' \
         GROUP BY s.ip ORDER BY n DESC, s.ip LIMIT ?",
    )
    .bind(from)
    .bind(to)
    .bind(TOP)
    .fetch_all(pool)
    .await?;
    let module_latency: Vec<Latency> = sqlx::query_as(
        "SELECT r.module, COUNT(*) AS results, CAST(AVG(r.duration) * 1000 AS DOUBLE) AS avg_ms, \
         CAST(MAX(r.duration) * 1000 AS DOUBLE) AS max_ms \
         FROM message m JOIN message_result r ON r.message = m.id \
         WHERE m.date >= ? AND m.date < ? GROUP BY r.module ORDER BY r.module",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    let count = |(label, count): (String, i64)| Count { label, count };
    Ok(Stats {
        from: fmt_date(from),
        to: fmt_date(to),
        bucket: if hourly { "hour" } else { "day" },
        buckets,
        top_rejected_senders: senders
            .into_iter()
            .map(|(local, domain, n)| Count {
                label: address(&local, &domain),
                count: n,
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
    let series: Vec<(String, Vec<f64>)> = VERDICTS
        .iter()
        .filter(|v| stats.buckets.iter().any(|b| b.counts.contains_key(**v)))
        .map(|v| {
            (
                (*v).to_owned(),
                stats
                    .buckets
                    .iter()
                    .map(|b| b.counts.get(*v).copied().unwrap_or(0) as f64)
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
    Query(params): Query<StatsParams>,
) -> Result<StatsTemplate, WebError> {
    let s = stats(&state, &params).await?;
    Ok(StatsTemplate {
        nav: Nav::new(&identity, "stats"),
        charts: charts(&s),
        q: params,
        s,
    })
}

/// `GET /api/v1/stats`
pub async fn api(
    State(state): State<AppState>,
    Query(params): Query<StatsParams>,
) -> Result<Json<Stats>, WebError> {
    Ok(Json(stats(&state, &params).await?))
}
