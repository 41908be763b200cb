//! What the pages and the JSON API share: the navigation bar, time formatting, ids in paths.

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::WebError;
use super::auth::Identity;

/// The navigation bar: who is logged in, the logout form's CSRF token, the current section.
pub struct Nav {
    pub user: String,
    pub csrf: String,
    pub active: &'static str,
}

impl Nav {
    pub fn new(identity: &Identity, active: &'static str) -> Self {
        Self {
            user: identity.user.clone(),
            csrf: identity.csrf.clone(),
            active,
        }
    }

    /// Whether `section` is the current one (its link is marked active).
    pub fn is(&self, section: &str) -> bool {
        self.active == section
    }
}

/// Times as the pages and the API show them: UTC, to the second.
pub fn fmt_date(date: DateTime<Utc>) -> String {
    date.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn fmt_opt_date(date: Option<DateTime<Utc>>) -> String {
    date.map(fmt_date).unwrap_or_default()
}

/// A message UUID from a path segment; anything else is 404.
pub fn parse_uuid(text: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(text).map_err(|_| WebError::NotFound)
}

/// Bytes as text for display (headers and bodies are binary in the archive).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}
