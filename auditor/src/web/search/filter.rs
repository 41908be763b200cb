//! The search's query string validated into the store's [`MessageQuery`]: each parameter
//! parsed or refused with a 400 that names it. Pure: no SQL, no clock but `Utc::now()` for
//! the default range.

use wire::{Action, DeliveryStatus, ModuleName};

use super::params::SearchParams;
use crate::store::read::AddressFilter;
use crate::store::read::search::{MessageQuery, Sort};
use crate::web::error::WebError;
use crate::web::params::{free_text, parse_ip_range, parse_paging, parse_range};

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
    let (from, to) = parse_range(&params.from, &params.to)?;
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
        sasl: free_text("sasl", &params.sasl)?,
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
