//! Quotas read back (schema/0002's tables): the rows for a selector and value, their periods
//! and tally rows, the classes with their profiles, the regex rows and what they instigated.
//! What counts as usage is the page's arithmetic over the tally rows, not this file's.

use chrono::{DateTime, NaiveDateTime, Utc};
use platform::database::Database;
use platform::quotas::Selector;
use sqlx::{MySql, QueryBuilder};

use super::Scope;
use crate::store::values::datetime;

/// A `quota` row with its profile and class.
#[derive(Debug, sqlx::FromRow)]
pub struct QuotaRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    pub is_regex: bool,
    pub profile: u64,
    pub profile_name: String,
    pub class_name: String,
    pub instigator: Option<u64>,
    pub date_added: NaiveDateTime,
}

/// A class with one of its profiles (none: the class has no profile).
#[derive(Debug, sqlx::FromRow)]
pub struct ClassRow {
    pub class_id: u64,
    pub class_name: String,
    pub instance: String,
    pub profile_id: Option<u64>,
    pub profile_name: Option<String>,
}

/// One period of a profile: at most `curb` units per `period` seconds.
#[derive(Debug, sqlx::FromRow)]
pub struct PeriodRow {
    pub profile: u64,
    pub period: u32,
    pub curb: u32,
}

/// A regex row and how many concrete rows it instigated.
#[derive(Debug, sqlx::FromRow)]
pub struct RegexRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    pub profile: String,
    pub instigated: i64,
}

/// A concrete row a regex row instigated.
#[derive(Debug, sqlx::FromRow)]
pub struct ConcreteRow {
    pub id: u64,
    pub selector: String,
    pub value: Option<String>,
    pub date_added: NaiveDateTime,
}

/// A tally row that still counts or may count (not released).
#[derive(Debug, sqlx::FromRow)]
pub struct TallyRow {
    pub date: DateTime<Utc>,
    pub units: u32,
    /// Still `reserved` (else `kept`).
    pub reserved: bool,
}

/// The concrete and regex rows of `selector` with exactly `value` (at most 100).
///
/// # Errors
/// The database failed.
pub async fn quotas_of(
    pool: &Database,
    scope: &Scope,
    selector: Selector,
    value: &str,
) -> Result<Vec<QuotaRow>, sqlx::Error> {
    // the module stores values lower-cased; the column compares case-insensitively anyway
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT q.id, CAST(q.selector AS CHAR) AS selector, q.value, q.is_regex, q.profile, \
         p.name AS profile_name, c.name AS class_name, q.instigator, q.date_added \
         FROM quota q JOIN quota_profile p ON p.id = q.profile \
         JOIN quota_class c ON c.id = p.class \
         WHERE q.selector = ",
    );
    q.push_bind(selector.as_str());
    q.push(" AND q.value = ");
    q.push_bind(value.to_lowercase());
    scope.push_quota(&mut q);
    q.push(" ORDER BY q.id LIMIT 100");
    q.build_query_as().fetch_all(pool).await
}

/// The database's clock, which the quotas module counts by.
///
/// # Errors
/// The database failed.
pub async fn now(pool: &Database) -> Result<DateTime<Utc>, sqlx::Error> {
    sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
        .fetch_one(pool)
        .await
}

/// Every class with each of its profiles, by class and profile id (at most 1000 rows).
///
/// # Errors
/// The database failed.
pub async fn classes(pool: &Database) -> Result<Vec<ClassRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT c.id AS class_id, c.name AS class_name, i.name AS instance, \
         p.id AS profile_id, p.name AS profile_name FROM quota_class c \
         JOIN instance i ON i.id = c.cluegetter_instance \
         LEFT JOIN quota_profile p ON p.class = c.id ORDER BY c.id, p.id LIMIT 1000",
    )
    .fetch_all(pool)
    .await
}

/// Every profile's periods, by profile and period (at most 5000 rows).
///
/// # Errors
/// The database failed.
pub async fn all_periods(pool: &Database) -> Result<Vec<PeriodRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT profile, period, curb FROM quota_profile_period ORDER BY profile, period LIMIT 5000",
    )
    .fetch_all(pool)
    .await
}

/// The periods of `profile`, shortest first.
///
/// # Errors
/// The database failed.
pub async fn periods_of(pool: &Database, profile: u64) -> Result<Vec<PeriodRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT profile, period, curb FROM quota_profile_period WHERE profile = ? ORDER BY period",
    )
    .bind(profile)
    .fetch_all(pool)
    .await
}

/// The regex rows with the number of rows each instigated (at most 500); none for a scope
/// limited to domains.
///
/// # Errors
/// The database failed.
pub async fn regexes(pool: &Database, scope: &Scope) -> Result<Vec<RegexRow>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT q.id, CAST(q.selector AS CHAR) AS selector, q.value, p.name AS profile, \
         (SELECT COUNT(*) FROM quota x WHERE x.instigator = q.id) AS instigated \
         FROM quota q JOIN quota_profile p ON p.id = q.profile \
         WHERE q.is_regex = 1",
    );
    scope.push_quota(&mut q);
    q.push(" ORDER BY q.id LIMIT 500");
    q.build_query_as().fetch_all(pool).await
}

/// The rows in `scope` regex row `id` instigated, newest first (at most 500).
///
/// # Errors
/// The database failed.
pub async fn instigated_by(
    pool: &Database,
    scope: &Scope,
    id: u64,
) -> Result<Vec<ConcreteRow>, sqlx::Error> {
    let mut q = QueryBuilder::<MySql>::new(
        "SELECT q.id, CAST(q.selector AS CHAR) AS selector, q.value, q.date_added FROM quota q \
         WHERE q.instigator = ",
    );
    q.push_bind(id);
    scope.push_quota(&mut q);
    q.push(" ORDER BY q.id DESC LIMIT 500");
    q.build_query_as().fetch_all(pool).await
}

/// The tally rows of `quota` since `since` that are not released, oldest first, at most `limit`.
///
/// # Errors
/// The database failed.
pub async fn tally(
    pool: &Database,
    quota: u64,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<TallyRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT date, units, status = 'reserved' AS reserved FROM quota_message \
         WHERE quota = ? AND date >= ? AND status <> 'released' ORDER BY date LIMIT ?",
    )
    .bind(quota)
    .bind(datetime(since))
    .bind(limit)
    .fetch_all(pool)
    .await
}
