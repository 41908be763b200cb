//! What every handler shares ([`AppState`]): the archive's pool, the users and sessions, and
//! the quota settings the quota page counts by.

use std::sync::Arc;
use std::time::Duration;

use platform::database::Database;

use super::auth::Auth;
use super::server::Limits;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: Database,
    pub auth: Arc<Auth>,
    /// `[quotas] reservation-ttl`: older unsettled reservations no longer count.
    pub reservation_ttl: Duration,
    /// The server's bounds (`web-max-connections`, the timeouts).
    pub limits: Limits,
    /// `web-csv-max-rows`: most rows of one CSV export.
    pub csv_max_rows: u32,
}

impl AppState {
    /// From the whole configuration: `[auditor]`'s web keys and `[quotas] reservation-ttl`.
    pub fn new(config: &platform::config::Config, pool: impl Into<Database>) -> Self {
        Self {
            pool: pool.into(),
            auth: Arc::new(Auth::from_config(&config.auditor)),
            reservation_ttl: config.quotas.reservation_ttl,
            limits: Limits::from_config(&config.auditor),
            csv_max_rows: config.auditor.web_csv_max_rows,
        }
    }
}
