//! The search's query string validated into the store's [`MessageQuery`]: each parameter
//! parsed or refused with a 400 that names it. Pure: no SQL, no clock but `Utc::now()` for
//! the default range.

use chrono::{DateTime, TimeDelta, Utc};
use wire::{Action, DeliveryStatus, ModuleName};

use super::params::SearchParams;
use crate::store::read::AddressFilter;
use crate::store::read::search::{FreeText, MessageQuery, SaslFilter, Sort};
use crate::web::error::WebError;
use crate::web::params::{free_text, parse_ip_range, parse_paging, parse_range};

/// A range up to now (`last=`): its name and label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Last {
    Hour,
    Today,
    Week,
}

/// The `last` values as the query string spells them.
pub const LASTS: &[(&str, Last)] = &[
    ("1h", Last::Hour),
    ("today", Last::Today),
    ("7d", Last::Week),
];

impl Last {
    /// The range ending at `now`.
    pub fn range(self, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let from = match self {
            Last::Hour => now - TimeDelta::hours(1),
            Last::Today => now
                .date_naive()
                .and_hms_opt(0, 0, 0)
                .map_or(now, |midnight| midnight.and_utc()),
            Last::Week => now - TimeDelta::days(7),
        };
        (from, now)
    }
}

/// `sasl`: `prefix*`, `@domain` or the exact login.
fn parse_sasl(text: Option<String>) -> Option<SaslFilter> {
    let text = text?;
    if let Some(prefix) = text.strip_suffix('*') {
        return Some(SaslFilter::Prefix(prefix.to_owned()));
    }
    if let Some(domain) = text.strip_prefix('@') {
        return Some(SaslFilter::Domain(domain.to_lowercase()));
    }
    Some(SaslFilter::Exact(text))
}

/// `q`: the free text, with what it could be as an address and as a client address.
fn parse_text(text: Option<String>) -> Option<FreeText> {
    let text = text?;
    let address = (text.contains('@') || (text.contains('.') && !text.contains(' ')))
        .then(|| AddressFilter::parse(&text))
        .flatten();
    let ip = parse_ip_range(&text).ok();
    Some(FreeText { text, address, ip })
}

/// The sort keys as the query string spells them, with the column each sorts by.
pub const SORTS: &[(&str, Sort)] = &[
    ("date", Sort::Date),
    ("sender", Sort::Sender),
    ("subject", Sort::Subject),
    ("verdict", Sort::Verdict),
    ("size", Sort::Size),
    ("queue_id", Sort::QueueId),
];

/// The verdicts the archive knows (`message.verdict` ENUM): `wire`'s actions.
pub fn verdict_names() -> Vec<&'static str> {
    Action::ALL.iter().map(|a| a.as_str()).collect()
}

/// The modules this build knows, offered by the search form (any other name is searched too).
pub fn module_names() -> Vec<&'static str> {
    ModuleName::KNOWN_NAMES.to_vec()
}

/// The delivery statuses Postfix logs (`message_delivery.status`).
pub fn delivery_names() -> Vec<&'static str> {
    DeliveryStatus::ALL.map(DeliveryStatus::as_str).to_vec()
}

/// `params` validated; a parameter that cannot be understood is a 400 naming it.
pub fn parse(params: &SearchParams) -> Result<MessageQuery, WebError> {
    let verdict = match params.verdict.trim() {
        "" => None,
        text => Some(text.parse::<Action>().map_err(|_| {
            WebError::BadRequest(format!(
                "verdict: {text:?} is not one of {}",
                verdict_names().join(", ")
            ))
        })?),
    };
    let delivery = match params.delivery.trim() {
        "" => None,
        text => Some(text.parse::<DeliveryStatus>().map_err(|_| {
            WebError::BadRequest(format!(
                "delivery: {text:?} is not one of {}",
                delivery_names().join(", ")
            ))
        })?),
    };
    let sort = match params.sort.trim() {
        "" => Sort::Date,
        text => SORTS
            .iter()
            .find(|(name, _)| *name == text)
            .map(|(_, sort)| *sort)
            .ok_or_else(|| {
                let names: Vec<&str> = SORTS.iter().map(|(name, _)| *name).collect();
                WebError::BadRequest(format!("sort: {text:?} is not one of {}", names.join(", ")))
            })?,
    };
    let ascending = match params.dir.trim() {
        "" | "desc" => false,
        "asc" => true,
        other => {
            return Err(WebError::BadRequest(format!(
                "dir: {other:?} is not asc or desc"
            )));
        }
    };
    let (from, to) = match params.last.trim() {
        "" => parse_range(&params.from, &params.to)?,
        text => {
            let last = LASTS
                .iter()
                .find(|(name, _)| *name == text)
                .map(|(_, last)| *last)
                .ok_or_else(|| {
                    let names: Vec<&str> = LASTS.iter().map(|(name, _)| *name).collect();
                    WebError::BadRequest(format!(
                        "last: {text:?} is not one of {}",
                        names.join(", ")
                    ))
                })?;
            if !params.from.trim().is_empty() || !params.to.trim().is_empty() {
                return Err(WebError::BadRequest(
                    "last: give either last or from and to, not both".to_owned(),
                ));
            }
            last.range(Utc::now())
        }
    };
    let (page, per_page) = parse_paging(&params.page, &params.per_page)?;
    let ip = match params.ip.trim() {
        "" => None,
        text => Some(parse_ip_range(text)?),
    };
    let queue_id = free_text("queue_id", &params.queue_id)?;
    let module = free_text("module", &params.module)?;
    let suggested = free_text("suggested", &params.suggested)?;
    let matches_nothing = [&queue_id, &module, &suggested]
        .into_iter()
        .flatten()
        .any(|text| !text.is_ascii());
    let module = module.map(|name| ModuleName::parse(&name));
    let suggested = suggested.map(|name| ModuleName::parse(&name));
    Ok(MessageQuery {
        matches_nothing,
        sender: free_text("sender", &params.sender)?.and_then(|text| AddressFilter::parse(&text)),
        recipient: free_text("recipient", &params.recipient)?
            .and_then(|text| AddressFilter::parse(&text)),
        ip,
        sasl: parse_sasl(free_text("sasl", &params.sasl)?),
        text: parse_text(free_text("q", &params.q)?),
        country: parse_country(&params.country)?,
        queue_id,
        message_id: free_text("message_id", &params.message_id)?,
        subject: free_text("subject", &params.subject)?,
        verdict,
        module,
        suggested,
        instance: free_text("instance", &params.instance)?,
        delivery,
        from,
        to,
        sort,
        ascending,
        page,
        per_page,
    })
}

/// `country`: a two-letter ISO 3166-1 code in any case, as `session.country` holds it (upper
/// case).
fn parse_country(text: &str) -> Result<Option<String>, WebError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if text.len() == 2 && text.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(Some(text.to_ascii_uppercase()))
    } else {
        Err(WebError::BadRequest(format!(
            "country: {text:?} is not a two-letter country code (ISO 3166-1)"
        )))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bad_parameters_are_400_not_500() {
        for (field, value) in [
            ("verdict", "maybe"),
            ("sort", "id; DROP TABLE message"),
            ("dir", "sideways"),
            ("page", "0"),
            ("per_page", "100000"),
            ("from", "yesterday"),
        ] {
            let mut params = SearchParams::default();
            match field {
                "verdict" => params.verdict = value.into(),
                "sort" => params.sort = value.into(),
                "dir" => params.dir = value.into(),
                "page" => params.page = value.into(),
                "per_page" => params.per_page = value.into(),
                _ => params.from = value.into(),
            }
            assert!(
                matches!(parse(&params), Err(WebError::BadRequest(_))),
                "{field}={value}"
            );
        }
    }

    #[test]
    fn sasl_logins_by_prefix_or_domain_and_the_free_text_as_what_it_could_be() {
        assert_eq!(
            parse_sasl(Some("ali*".into())),
            Some(SaslFilter::Prefix("ali".into()))
        );
        assert_eq!(
            parse_sasl(Some("@One.Example".into())),
            Some(SaslFilter::Domain("one.example".into()))
        );
        assert_eq!(
            parse_sasl(Some("alice".into())),
            Some(SaslFilter::Exact("alice".into()))
        );
        let text = parse_text(Some("192.0.2.10".into())).unwrap();
        assert!(text.ip.is_some());
        let text = parse_text(Some("bob@two.example".into())).unwrap();
        assert!(text.ip.is_none());
        assert!(matches!(text.address, Some(AddressFilter::Address { .. })));
        let text = parse_text(Some("Invoice 50%".into())).unwrap();
        assert_eq!((text.address, text.ip), (None, None));
    }

    #[test]
    fn the_last_hour_today_and_seven_days_end_now() {
        let now = "2026-12-07T22:30:00Z".parse::<DateTime<Utc>>().unwrap();
        let at = |text: &str| text.parse::<DateTime<Utc>>().unwrap();
        assert_eq!(Last::Hour.range(now), (at("2026-12-07T21:30:00Z"), now));
        assert_eq!(Last::Today.range(now), (at("2026-12-07T00:00:00Z"), now));
        assert_eq!(Last::Week.range(now), (at("2026-11-30T22:30:00Z"), now));
        let params = SearchParams {
            last: "1h".into(),
            from: "2026-01-01".into(),
            ..SearchParams::default()
        };
        assert!(matches!(parse(&params), Err(WebError::BadRequest(_))));
        let params = SearchParams {
            last: "1y".into(),
            ..SearchParams::default()
        };
        assert!(matches!(parse(&params), Err(WebError::BadRequest(_))));
    }

    #[test]
    fn countries_are_two_letters_in_any_case() {
        assert_eq!(parse_country(" nl ").ok().flatten().as_deref(), Some("NL"));
        assert_eq!(parse_country("").ok().flatten(), None);
        for bad in ["NLD", "N1", "ñl", "N"] {
            assert!(
                matches!(parse_country(bad), Err(WebError::BadRequest(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn verdicts_are_the_wire_actions_in_any_case() {
        let params = SearchParams {
            verdict: "Reject".into(),
            ..SearchParams::default()
        };
        assert_eq!(
            parse(&params).ok().and_then(|q| q.verdict),
            Some(Action::Reject)
        );
    }
}
