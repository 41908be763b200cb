//! The navigation bar every page shows: who is logged in, the logout form's CSRF token, the
//! current section.

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
