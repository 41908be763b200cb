//! The navigation bar every page shows: who is logged in, the logout form's CSRF token, the
//! current section.

use super::auth::Identity;

/// The navigation bar: who is logged in, the logout form's CSRF token, the current section.
pub struct Nav {
    pub user: String,
    /// What the user may see, when it is not everything: `domain-admin: a, b` or `auditor`.
    pub role: String,
    pub csrf: String,
    pub active: &'static str,
}

impl Nav {
    pub fn new(identity: &Identity, active: &'static str) -> Self {
        Self {
            user: identity.user.clone(),
            role: match (&identity.scope.domains, identity.scope.contents) {
                (Some(domains), _) => format!("domain-admin: {}", domains.join(", ")),
                (None, false) => "auditor".to_owned(),
                (None, true) => String::new(),
            },
            csrf: identity.csrf.clone(),
            active,
        }
    }

    /// Whether `section` is the current one (its link is marked active).
    pub fn is(&self, section: &str) -> bool {
        self.active == section
    }
}
