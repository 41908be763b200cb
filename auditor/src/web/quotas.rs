//! Quotas: `/quotas` shows, for a selector and value, each matching quota's periods with the
//! usage in the trailing window against the curb, and the usage over the last 48 hours per
//! period as a chart; then the classes with their profiles and periods, and the regex rows
//! with the concrete rows they instigated. Reads schema/0002's tables, bind parameters only.
//!
//! Usage counts what the quotas module counts (check-workers `modules/quotas/store.rs`): `kept`
//! tally rows, and `reserved` rows younger than `[quotas] reservation-ttl` (read from the same
//! configuration file); released rows and expired reservations count for nothing. At each hour
//! of the chart, a reservation counts if it was younger than the TTL then.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Query, State};
use chrono::{DateTime, TimeDelta, Timelike as _, Utc};
use serde::{Deserialize, Serialize};

use super::api::{Nav, fmt_date};
use super::auth::Identity;
use super::search::free_text;
use super::svg::{self, Chart};
use super::{AppState, WebError};

/// `quota.selector`'s ENUM.
pub const SELECTORS: &[&str] = &[
    "sender",
    "recipient",
    "client_address",
    "sasl_username",
    "sender_domain",
    "recipient_domain",
    "sender_sld",
    "recipient_sld",
];
/// The chart's span, in hours.
const HOURS: i64 = 48;
/// Longest window the chart sums over (longer periods are cut to it).
const MAX_WINDOW_SECS: i64 = 8 * 24 * 3600;
/// Most tally rows read for one quota's chart.
const MAX_TALLY_ROWS: i64 = 200_000;

#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct QuotaParams {
    pub selector: String,
    pub value: String,
    /// a regex row's id: list the rows it instigated
    pub instigator: String,
}

#[derive(Debug, Serialize)]
pub struct PeriodUsage {
    pub period_secs: u32,
    pub period: String,
    pub curb: u32,
    pub used: i64,
    pub over: bool,
}

#[derive(Debug, Serialize)]
pub struct QuotaUsage {
    pub id: u64,
    pub selector: String,
    pub value: String,
    pub is_regex: bool,
    pub profile: String,
    pub class: String,
    pub instigator: Option<u64>,
    pub date_added: String,
    pub periods: Vec<PeriodUsage>,
    #[serde(skip)]
    pub charts: Vec<Chart>,
}

#[derive(Debug, Serialize)]
pub struct ProfileInfo {
    pub id: u64,
    pub name: String,
    pub periods: Vec<(u32, u32)>,
    /// `1h: 100, 1d: 1000`
    pub summary: String,
}

#[derive(Debug, Serialize)]
pub struct ClassInfo {
    pub id: u64,
    pub name: String,
    pub instance: String,
    pub profiles: Vec<ProfileInfo>,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct RegexRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    pub profile: String,
    pub instigated: i64,
}

#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct ConcreteRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    #[serde(skip)]
    date_added: chrono::NaiveDateTime,
    #[sqlx(skip)]
    pub added: String,
}

#[derive(Debug, Serialize)]
pub struct QuotaOverview {
    pub selector: String,
    pub value: String,
    pub quotas: Vec<QuotaUsage>,
    pub classes: Vec<ClassInfo>,
    pub regexes: Vec<RegexRow>,
    pub instigator: Option<u64>,
    pub instigated: Vec<ConcreteRow>,
}

#[derive(Debug, sqlx::FromRow)]
struct QuotaRow {
    id: u64,
    selector: String,
    value: Option<String>,
    is_regex: bool,
    profile: u64,
    profile_name: String,
    class_name: String,
    instigator: Option<u64>,
    date_added: chrono::NaiveDateTime,
}

/// `3600` → `1h`, `90` → `1m30s`.
pub fn fmt_period(secs: u32) -> String {
    humantime_format(u64::from(secs))
}

fn humantime_format(mut secs: u64) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

async fn overview(state: &AppState, params: &QuotaParams) -> Result<QuotaOverview, WebError> {
    let pool = &state.pool;
    let selector = match params.selector.trim() {
        "" => None,
        text => Some(
            SELECTORS
                .iter()
                .copied()
                .find(|s| *s == text)
                .ok_or_else(|| {
                    WebError::BadRequest(format!(
                        "selector: {text:?} is not one of {}",
                        SELECTORS.join(", ")
                    ))
                })?,
        ),
    };
    let value = free_text("value", &params.value)?;
    let instigator = match params.instigator.trim() {
        "" => None,
        text => Some(text.parse::<u64>().map_err(|_| {
            WebError::BadRequest(format!("instigator: {text:?} is not a quota id"))
        })?),
    };
    let mut quotas = Vec::new();
    if let (Some(selector), Some(value)) = (selector, &value) {
        // the module stores values lower-cased; the column compares case-insensitively anyway
        let rows: Vec<QuotaRow> = sqlx::query_as(
            "SELECT q.id, CAST(q.selector AS CHAR) AS selector, q.value, q.is_regex, q.profile, \
             p.name AS profile_name, c.name AS class_name, q.instigator, q.date_added \
             FROM quota q JOIN quota_profile p ON p.id = q.profile \
             JOIN quota_class c ON c.id = p.class \
             WHERE q.selector = ? AND q.value = ? ORDER BY q.id LIMIT 100",
        )
        .bind(selector)
        .bind(value.to_lowercase())
        .fetch_all(pool)
        .await?;
        let now: DateTime<Utc> = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(pool)
            .await?;
        for row in rows {
            quotas.push(usage(state, row, now).await?);
        }
    }
    // (class id, class name, instance, profile id, profile name)
    type ClassRow = (u64, String, String, Option<u64>, Option<String>);
    let class_rows: Vec<ClassRow> = sqlx::query_as(
        "SELECT c.id, c.name, i.name, p.id, p.name FROM quota_class c \
         JOIN instance i ON i.id = c.cluegetter_instance \
         LEFT JOIN quota_profile p ON p.class = c.id ORDER BY c.id, p.id LIMIT 1000",
    )
    .fetch_all(pool)
    .await?;
    let period_rows: Vec<(u64, u32, u32)> = sqlx::query_as(
        "SELECT profile, period, curb FROM quota_profile_period ORDER BY profile, period LIMIT 5000",
    )
    .fetch_all(pool)
    .await?;
    let mut classes: Vec<ClassInfo> = Vec::new();
    for (class_id, class_name, instance, profile_id, profile_name) in class_rows {
        if classes.last().is_none_or(|c| c.id != class_id) {
            classes.push(ClassInfo {
                id: class_id,
                name: class_name,
                instance,
                profiles: Vec::new(),
            });
        }
        if let (Some(id), Some(name), Some(class)) = (profile_id, profile_name, classes.last_mut())
        {
            let periods: Vec<(u32, u32)> = period_rows
                .iter()
                .filter(|(p, _, _)| *p == id)
                .map(|(_, period, curb)| (*period, *curb))
                .collect();
            let summary = periods
                .iter()
                .map(|(period, curb)| format!("{} per {}", curb, fmt_period(*period)))
                .collect::<Vec<_>>()
                .join(", ");
            class.profiles.push(ProfileInfo {
                id,
                name,
                periods,
                summary,
            });
        }
    }
    let regexes: Vec<RegexRow> = sqlx::query_as(
        "SELECT q.id, CAST(q.selector AS CHAR) AS selector, q.value, p.name AS profile, \
         (SELECT COUNT(*) FROM quota x WHERE x.instigator = q.id) AS instigated \
         FROM quota q JOIN quota_profile p ON p.id = q.profile \
         WHERE q.is_regex = 1 ORDER BY q.id LIMIT 500",
    )
    .fetch_all(pool)
    .await?;
    let mut instigated: Vec<ConcreteRow> = match instigator {
        Some(id) => {
            sqlx::query_as(
                "SELECT id, CAST(selector AS CHAR) AS selector, value, date_added FROM quota \
                 WHERE instigator = ? ORDER BY id DESC LIMIT 500",
            )
            .bind(id)
            .fetch_all(pool)
            .await?
        }
        None => Vec::new(),
    };
    for row in &mut instigated {
        row.added = row.date_added.format("%Y-%m-%d %H:%M:%S").to_string();
    }
    Ok(QuotaOverview {
        selector: selector.unwrap_or_default().to_owned(),
        value: value.unwrap_or_default(),
        quotas,
        classes,
        regexes,
        instigator,
        instigated,
    })
}

/// One quota's periods: usage now, and the trailing-window usage at each hour of the last
/// [`HOURS`] hours.
async fn usage(
    state: &AppState,
    row: QuotaRow,
    now: DateTime<Utc>,
) -> Result<QuotaUsage, WebError> {
    let periods: Vec<(u32, u32)> = sqlx::query_as(
        "SELECT period, curb FROM quota_profile_period WHERE profile = ? ORDER BY period",
    )
    .bind(row.profile)
    .fetch_all(&state.pool)
    .await?;
    let longest = periods
        .iter()
        .map(|(p, _)| i64::from(*p))
        .max()
        .unwrap_or(0)
        .min(MAX_WINDOW_SECS);
    let since = now - TimeDelta::hours(HOURS) - TimeDelta::seconds(longest);
    // (date, units, still reserved)
    let tally: Vec<(DateTime<Utc>, u32, bool)> = sqlx::query_as(
        "SELECT date, units, status = 'reserved' FROM quota_message \
         WHERE quota = ? AND date >= ? AND status <> 'released' ORDER BY date LIMIT ?",
    )
    .bind(row.id)
    .bind(since)
    .bind(MAX_TALLY_ROWS)
    .fetch_all(&state.pool)
    .await?;
    let ttl = TimeDelta::from_std(state.reservation_ttl).unwrap_or(TimeDelta::MAX);
    // as the module counts at `end`: kept rows, and reservations younger than the TTL
    let window_sum = |end: DateTime<Utc>, secs: u32| -> i64 {
        let start = end - TimeDelta::seconds(i64::from(secs));
        let ttl_cutoff = end
            .checked_sub_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        tally
            .iter()
            .filter(|(date, _, reserved)| {
                *date > start && *date <= end && (!*reserved || *date > ttl_cutoff)
            })
            .map(|(_, units, _)| i64::from(*units))
            .sum()
    };
    // hour marks, the last one now
    let first_hour = now
        .with_minute(0)
        .and_then(|t| t.with_second(0))
        .and_then(|t| t.with_nanosecond(0))
        .unwrap_or(now)
        - TimeDelta::hours(HOURS - 1);
    let marks: Vec<DateTime<Utc>> = (0..HOURS)
        .map(|h| first_hour + TimeDelta::hours(h))
        .chain(std::iter::once(now))
        .collect();
    let labels: Vec<String> = marks
        .iter()
        .map(|t| t.format("%d %H:%M").to_string())
        .collect();
    let mut usages = Vec::new();
    let mut charts = Vec::new();
    for (period, curb) in periods {
        let used = window_sum(now, period);
        let series: Vec<f64> = marks
            .iter()
            .map(|end| window_sum(*end, period) as f64)
            .collect();
        charts.push(svg::stacked_columns(
            &format!("quota-{}-{}", row.id, period),
            &format!(
                "Units in the trailing {} window, last {HOURS} hours (curb {curb})",
                fmt_period(period)
            ),
            &labels,
            &[("bar".to_owned(), series)],
            Some(f64::from(curb)),
        ));
        usages.push(PeriodUsage {
            period_secs: period,
            period: fmt_period(period),
            curb,
            used,
            over: used >= i64::from(curb),
        });
    }
    Ok(QuotaUsage {
        id: row.id,
        selector: row.selector,
        value: row.value.unwrap_or_default(),
        is_regex: row.is_regex,
        profile: row.profile_name,
        class: row.class_name,
        instigator: row.instigator,
        date_added: fmt_date(row.date_added.and_utc()),
        periods: usages,
        charts,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "quotas.html")]
pub struct QuotasTemplate {
    nav: Nav,
    selectors: &'static [&'static str],
    o: QuotaOverview,
}

/// `GET /quotas`
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Query(params): Query<QuotaParams>,
) -> Result<QuotasTemplate, WebError> {
    Ok(QuotasTemplate {
        nav: Nav::new(&identity, "quotas"),
        selectors: SELECTORS,
        o: overview(&state, &params).await?,
    })
}

/// `GET /api/v1/quotas`
pub async fn api(
    State(state): State<AppState>,
    Query(params): Query<QuotaParams>,
) -> Result<Json<QuotaOverview>, WebError> {
    Ok(Json(overview(&state, &params).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_as_durations() {
        assert_eq!(fmt_period(3600), "1h");
        assert_eq!(fmt_period(90), "1m30s");
        assert_eq!(fmt_period(86_400 * 7), "7d");
        assert_eq!(fmt_period(0), "0s");
    }
}
