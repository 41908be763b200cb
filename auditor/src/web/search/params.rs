//! The search's query string as typed ([`SearchParams`]): every filter is in the URL, so a
//! search can be bookmarked, and the page's links (paging, sorting) are this search changed.

use serde::{Deserialize, Serialize};
use utoipa::IntoParams;
use utoipa::openapi::schema::Object;
use wire::Action;

use super::filter::{LASTS, SORTS};
use crate::web::params::one_of;

/// The query string as typed; an empty value means "not set". The doc comments are the
/// OpenAPI document's descriptions.
#[derive(Clone, Debug, Default, Deserialize, Serialize, IntoParams)]
#[serde(default, deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchParams {
    /// Free text, looked for at once as a sender or recipient (address or domain), in the
    /// subject, as a queue id, a Message-ID and a client address or network.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub q: String,
    /// Sender: an address (exact, case-insensitive), `@domain` or `domain`, or `<>` for the null
    /// sender.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sender: String,
    /// Recipient: an address, `@domain` or `domain`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub recipient: String,
    /// Client address or network (`192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub ip: String,
    /// SASL user name: exact, `prefix*` for logins beginning with it, or `@domain` for the
    /// logins of a domain.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sasl: String,
    /// The client's country as the geoip module looked it up (ISO 3166-1 alpha-2, e.g. `NL`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub country: String,
    /// Postfix queue id (exact).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub queue_id: String,
    /// Message-ID, with or without angle brackets (exact).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message_id: String,
    /// Subject contains this text (case-insensitive; % and _ are literal).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    /// The verdict the rules gave.
    #[param(schema_with = verdict_schema)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub verdict: String,
    /// A module that decided the verdict (the verdict would have been different without it).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub module: String,
    /// A module that suggested reject or tempfail (score above 0), whatever the verdict.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub suggested: String,
    /// Instance name.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub instance: String,
    /// Postfix logged a delivery attempt of this status for a recipient of the message
    /// (`bounce-ingest maillog`).
    #[param(schema_with = delivery_schema)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub delivery: String,
    /// Start, UTC: YYYY-MM-DDTHH:MM[:SS], YYYY-MM-DD or RFC 3339 (default: 24 h before `to`).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub from: String,
    /// End (exclusive), same forms (default: now).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub to: String,
    /// A range up to now instead of `from` and `to`: the last hour, today (UTC) or the last
    /// 7 days.
    #[param(schema_with = last_schema)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub last: String,
    /// The column to sort by (default: date).
    #[param(schema_with = sort_schema)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub sort: String,
    /// The direction (default: desc).
    #[param(schema_with = dir_schema)]
    #[serde(skip_serializing_if = "String::is_empty")]
    pub dir: String,
    /// Page number from 1 (at most 2000).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub page: String,
    /// Rows per page, 1 to 500 (default 50).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub per_page: String,
}

fn verdict_schema() -> Object {
    one_of(Action::ALL.map(Action::as_str))
}

fn delivery_schema() -> Object {
    one_of(wire::DeliveryStatus::ALL.map(wire::DeliveryStatus::as_str))
}

fn sort_schema() -> Object {
    one_of(SORTS.iter().map(|(name, _)| *name))
}

fn last_schema() -> Object {
    one_of(LASTS.iter().map(|(name, _)| *name))
}

fn dir_schema() -> Object {
    one_of(["asc", "desc"])
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
