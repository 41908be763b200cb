//! `check-workers quota show`: a factor value's rows and their windows as a check would count
//! them now, split into kept, live reservations and expired ones; or, for a value without rows,
//! the regex rows that would create some. It reads only: no row is created, nothing reserved.

use chrono::NaiveDateTime;
use serde::Serialize;

use super::super::window::Windows;
use super::super::{Factor, Selector};
use super::{QuotaRow, QuotaStore, exact_rows, periods_of};

/// The counts of one row for `check-workers quota show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShownQuota {
    pub quota_id: u64,
    pub selector: Selector,
    pub value: String,
    pub instigator: Option<u64>,
    pub profile_id: u64,
    pub profile: String,
    pub periods: Vec<ShownPeriod>,
}

/// One period's window right now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ShownPeriod {
    pub period: u32,
    pub curb: u32,
    /// `kept` plus `reserved`: what a check counts.
    pub used: u64,
    pub kept: u64,
    /// Reservations younger than the TTL, not yet settled.
    pub reserved: u64,
    /// Reservations older than the TTL, never settled: not counted.
    pub expired: u64,
}

/// A regex row of the instance that would create a row for the value shown.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchingRegex {
    pub quota_id: u64,
    pub pattern: String,
    pub profile_id: u64,
    pub profile: String,
}

/// `check-workers quota show`: the value's rows and their windows, or, when it has none yet,
/// the regex rows that would create some at its next message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Shown {
    pub instance: String,
    pub selector: Selector,
    pub value: String,
    /// The database's time of the count (UTC).
    pub at: NaiveDateTime,
    pub quotas: Vec<ShownQuota>,
    pub matching_regexes: Vec<MatchingRegex>,
}

impl QuotaStore {
    /// The windows of the instance's rows for one factor value, as a check would count them now
    /// (without creating rows from regexes).
    ///
    /// # Errors
    /// The database failed.
    pub async fn show(
        &self,
        instance: &str,
        selector: Selector,
        value: &str,
    ) -> Result<Shown, sqlx::Error> {
        let value = value.trim().to_lowercase();
        let mut conn = self.pool().acquire().await?;
        let factor = Factor {
            selector,
            value: value.clone(),
            units: 0,
        };
        let rows: Vec<QuotaRow> = exact_rows(&mut conn, instance, std::slice::from_ref(&factor))
            .await?
            .into_iter()
            .map(|(_, row)| row)
            .collect();
        let periods = periods_of(&mut conn, rows.iter().map(|r| r.profile)).await?;
        let now: NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&mut *conn)
            .await?;
        let windows = Windows::at(now, self.inner.reservation_ttl);
        let mut quotas = Vec::with_capacity(rows.len());
        for row in &rows {
            let mut shown = Vec::new();
            for &(period, curb) in periods.get(&row.profile).map(Vec::as_slice).unwrap_or(&[]) {
                let (kept, reserved, expired): (u64, u64, u64) = sqlx::query_as(
                    "SELECT \
                       CAST(COALESCE(SUM(IF(status = 'kept', units, 0)), 0) AS UNSIGNED), \
                       CAST(COALESCE(SUM(IF(status = 'reserved' AND date > ?, units, 0)), 0) AS UNSIGNED), \
                       CAST(COALESCE(SUM(IF(status = 'reserved' AND date <= ?, units, 0)), 0) AS UNSIGNED) \
                     FROM quota_message FORCE INDEX (quota_message_window) \
                     WHERE quota = ? AND date > ?",
                )
                .bind(windows.ttl_cutoff)
                .bind(windows.ttl_cutoff)
                .bind(row.id)
                .bind(windows.cutoff(period))
                .fetch_one(&mut *conn)
                .await?;
                shown.push(ShownPeriod {
                    period,
                    curb,
                    used: kept + reserved,
                    kept,
                    reserved,
                    expired,
                });
            }
            quotas.push(ShownQuota {
                quota_id: row.id,
                selector: row.selector,
                value: row.value.clone(),
                instigator: row.instigator,
                profile_id: row.profile,
                profile: row.profile_name.clone(),
                periods: shown,
            });
        }
        let mut matching_regexes = Vec::new();
        if rows.is_empty() {
            let regex_rows: Vec<(u64, String, u64, String)> = sqlx::query_as(
                "SELECT q.id, q.value, q.profile, p.name FROM quota q \
                 JOIN quota_profile p ON p.id = q.profile \
                 JOIN quota_class c ON c.id = p.class \
                 JOIN instance i ON i.id = c.cluegetter_instance \
                 WHERE i.name = ? AND q.is_regex = 1 AND q.selector = ? AND q.value IS NOT NULL \
                 ORDER BY q.id",
            )
            .bind(instance)
            .bind(selector.as_str())
            .fetch_all(&mut *conn)
            .await?;
            for (quota_id, pattern, profile_id, profile) in regex_rows {
                if self
                    .regex(quota_id, &pattern)
                    .is_some_and(|regex| regex.is_match(&value))
                {
                    matching_regexes.push(MatchingRegex {
                        quota_id,
                        pattern,
                        profile_id,
                        profile,
                    });
                }
            }
        }
        Ok(Shown {
            instance: instance.to_owned(),
            selector,
            value,
            at: now,
            quotas,
            matching_regexes,
        })
    }
}
