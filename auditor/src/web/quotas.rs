//! Quotas: `/quotas` shows, for a selector and value, each matching quota's periods with the
//! usage in the trailing window against the curb, and the usage over the last 48 hours per
//! period as a chart; then the classes with their profiles and periods, and the regex rows
//! with the concrete rows they instigated. The SQL is `store::read::quotas`'s; the usage
//! arithmetic and the charts are this file's.
//!
//! Usage counts what the quotas module counts (check-workers `modules/quotas/store.rs`): `kept`
//! tally rows, and `reserved` rows younger than `[quotas] reservation-ttl` (read from the same
//! configuration file); released rows and expired reservations count for nothing. At each hour
//! of the chart, a reservation counts if it was younger than the TTL then.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::State;
use chrono::{DateTime, TimeDelta, Timelike as _, Utc};
use platform::quotas::Selector;
use serde::{Deserialize, Serialize};
use utoipa::openapi::schema::Object;
use utoipa::{IntoParams, ToSchema};

use super::auth::Identity;
use super::error::WebError;
use super::format::{fmt_date, fmt_period};
use super::nav::Nav;
use super::params::{Params, free_text, one_of};
use super::state::AppState;
use super::svg::{self, Chart};
use crate::store::read::quotas::{self as read, QuotaRow};

/// The chart's span, in hours.
const HOURS: i64 = 48;
/// Longest window the chart sums over (longer periods are cut to it).
const MAX_WINDOW_SECS: i64 = 8 * 24 * 3600;
/// Most tally rows read for one quota's chart.
const MAX_TALLY_ROWS: i64 = 200_000;

/// The page's query string as typed; an empty value means "not set". The doc comments are the
/// OpenAPI document's descriptions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct QuotaParams {
    /// The factor: `quota.selector`.
    #[param(schema_with = selector_schema)]
    pub selector: String,
    /// The factor's value (case-insensitive).
    pub value: String,
    /// A regex row's id: list the rows it created.
    pub instigator: String,
}

fn selector_schema() -> Object {
    one_of(Selector::ALL.map(Selector::as_str))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct PeriodUsage {
    pub period_secs: u32,
    pub period: String,
    /// "5 of 5 in the last hour"
    pub usage: String,
    pub curb: u32,
    pub used: i64,
    pub over: bool,
}

#[derive(Debug, Serialize, ToSchema)]
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

#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileInfo {
    pub id: u64,
    pub name: String,
    /// (period in seconds, curb) pairs
    #[schema(value_type = Vec<Vec<u32>>)]
    pub periods: Vec<(u32, u32)>,
    /// `1h: 100, 1d: 1000`
    pub summary: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ClassInfo {
    pub id: u64,
    pub name: String,
    pub instance: String,
    pub profiles: Vec<ProfileInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RegexRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    pub profile: String,
    pub instigated: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ConcreteRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    pub added: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuotaOverview {
    pub selector: String,
    pub value: String,
    pub quotas: Vec<QuotaUsage>,
    pub classes: Vec<ClassInfo>,
    pub regexes: Vec<RegexRow>,
    pub instigator: Option<u64>,
    pub instigated: Vec<ConcreteRow>,
}

/// The selectors, as `quota.selector` spells them.
pub fn selector_names() -> Vec<&'static str> {
    Selector::ALL.iter().map(|s| s.as_str()).collect()
}

async fn overview(state: &AppState, params: &QuotaParams) -> Result<QuotaOverview, WebError> {
    let pool = &state.pool;
    let selector = match params.selector.trim() {
        "" => None,
        text => Some(text.parse::<Selector>().map_err(|_| {
            WebError::BadRequest(format!(
                "selector: {text:?} is not one of {}",
                selector_names().join(", ")
            ))
        })?),
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
        let rows = read::quotas_of(pool, selector, value).await?;
        let now = read::now(pool).await?;
        for row in rows {
            quotas.push(usage(state, row, now).await?);
        }
    }
    let class_rows = read::classes(pool).await?;
    let period_rows = read::all_periods(pool).await?;
    let mut classes: Vec<ClassInfo> = Vec::new();
    for row in class_rows {
        if classes.last().is_none_or(|c| c.id != row.class_id) {
            classes.push(ClassInfo {
                id: row.class_id,
                name: row.class_name,
                instance: row.instance,
                profiles: Vec::new(),
            });
        }
        if let (Some(id), Some(name), Some(class)) =
            (row.profile_id, row.profile_name, classes.last_mut())
        {
            let periods: Vec<(u32, u32)> = period_rows
                .iter()
                .filter(|p| p.profile == id)
                .map(|p| (p.period, p.curb))
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
    let regexes = read::regexes(pool)
        .await?
        .into_iter()
        .map(|r| RegexRow {
            id: r.id,
            selector: r.selector,
            value: r.value,
            profile: r.profile,
            instigated: r.instigated,
        })
        .collect();
    let instigated = match instigator {
        Some(id) => read::instigated_by(pool, id)
            .await?
            .into_iter()
            .map(|r| ConcreteRow {
                id: r.id,
                selector: r.selector,
                value: r.value,
                added: r.date_added.format("%Y-%m-%d %H:%M:%S").to_string(),
            })
            .collect(),
        None => Vec::new(),
    };
    Ok(QuotaOverview {
        selector: selector
            .map(Selector::as_str)
            .unwrap_or_default()
            .to_owned(),
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
    let periods: Vec<(u32, u32)> = read::periods_of(&state.pool, row.profile)
        .await?
        .into_iter()
        .map(|p| (p.period, p.curb))
        .collect();
    let longest = periods
        .iter()
        .map(|(p, _)| i64::from(*p))
        .max()
        .unwrap_or(0)
        .min(MAX_WINDOW_SECS);
    let since = now - TimeDelta::hours(HOURS) - TimeDelta::seconds(longest);
    let tally = read::tally(&state.pool, row.id, since, MAX_TALLY_ROWS).await?;
    let ttl = TimeDelta::from_std(state.reservation_ttl).unwrap_or(TimeDelta::MAX);
    // as the module counts at `end`: kept rows, and reservations younger than the TTL
    let window_sum = |end: DateTime<Utc>, secs: u32| -> i64 {
        let start = end - TimeDelta::seconds(i64::from(secs));
        let ttl_cutoff = end
            .checked_sub_signed(ttl)
            .unwrap_or(DateTime::<Utc>::MIN_UTC);
        tally
            .iter()
            .filter(|t| t.date > start && t.date <= end && (!t.reserved || t.date > ttl_cutoff))
            .map(|t| i64::from(t.units))
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
            usage: format!(
                "{used} of {curb} in {}",
                platform::quotas::last_period(u64::from(period))
            ),
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
    selectors: Vec<&'static str>,
    o: QuotaOverview,
}

/// `GET /quotas`
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Params(params): Params<QuotaParams>,
) -> Result<QuotasTemplate, WebError> {
    Ok(QuotasTemplate {
        nav: Nav::new(&identity, "quotas"),
        selectors: selector_names(),
        o: overview(&state, &params).await?,
    })
}

/// `GET /api/v1/quotas`
#[utoipa::path(
    get,
    path = "/api/v1/quotas",
    operation_id = "quotas",
    summary = "Quota usage for a selector and value; classes, profiles and regex rows.",
    params(QuotaParams),
    responses(
        (status = 200, description = "The overview.", body = QuotaOverview),
        (status = 400, description = "A parameter cannot be understood, or the route has no such parameter (the text says which)."),
        (status = 401, description = "No valid session cookie or bearer token."),
    ),
)]
pub async fn api(
    State(state): State<AppState>,
    Params(params): Params<QuotaParams>,
) -> Result<Json<QuotaOverview>, WebError> {
    Ok(Json(overview(&state, &params).await?))
}
