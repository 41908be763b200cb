//! The search's query string as typed ([`SearchParams`]): every filter is in the URL, so a
//! search can be bookmarked, and the page's links (paging, sorting) are this search changed.

use serde::{Deserialize, Serialize};

/// The query string as typed; an empty value means "not set".
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchParams {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sender: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sasl: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub queue_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verdict: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub module: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sort: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub page: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub per_page: String,
}

impl SearchParams {
    /// This search's URL with `change` applied (for paging and sorting links).
    pub fn href(&self, change: impl FnOnce(&mut Self)) -> String {
        let mut copy = self.clone();
        change(&mut copy);
        format!(
            "/messages?{}",
            serde_urlencoded::to_string(&copy).unwrap_or_default()
        )
    }
}
