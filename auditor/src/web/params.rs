//! Query parameters, read the one way every page and API route reads them: the query string
//! into a parameter struct ([`Params`], which refuses a name the struct does not have), then
//! free text, times and ranges, paging, addresses and networks, ids in paths. Each parser names
//! the parameter it refuses in its [`WebError::BadRequest`].

use std::net::IpAddr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeDelta, Utc};
use ipnet::IpNet;
use serde::de::DeserializeOwned;
use utoipa::openapi::schema::{Object, ObjectBuilder, Type};
use uuid::Uuid;

use super::error::WebError;
use crate::store::read::IpRange;
use crate::store::values::{datetime_max, datetime_min};

pub const DEFAULT_PER_PAGE: u32 = 50;
pub const MAX_PER_PAGE: u32 = 500;
/// OFFSET beyond this is refused: narrow the search instead.
pub const MAX_PAGE: u32 = 2000;

/// A query string read into `T`. Unlike axum's `Query`, a failure is a [`WebError::BadRequest`]
/// that names the parameter, and the parameter structs refuse names they do not have
/// (`#[serde(deny_unknown_fields)]`): a typo such as `Sender=` is a 400, never the whole
/// unfiltered list.
#[derive(Debug)]
pub struct Params<T>(pub T);

impl<T, S> FromRequestParts<S> for Params<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = WebError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        from_query(parts.uri.query().unwrap_or_default()).map(Params)
    }
}

/// `query` (a URL's query string) into `T`, or a 400 that says which parameter is wrong.
pub fn from_query<T: DeserializeOwned>(query: &str) -> Result<T, WebError> {
    serde_urlencoded::from_str(query)
        .map_err(|error| WebError::BadRequest(format!("query parameters: {error}")))
}

/// The OpenAPI schema of a parameter that takes one of `values` (a closed set's names).
pub fn one_of(values: impl IntoIterator<Item = &'static str>) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values))
        .build()
}

/// A free-text filter: trimmed, empty means unset. Control characters are refused: the
/// archive's collation ignores some (a NUL would match every empty value).
pub fn free_text(name: &str, text: &str) -> Result<Option<String>, WebError> {
    if text.chars().any(char::is_control) {
        return Err(WebError::BadRequest(format!(
            "{name}: control characters are not allowed"
        )));
    }
    let text = text.trim();
    Ok((!text.is_empty()).then(|| text.to_owned()))
}

/// A time as typed in a form (`2026-11-25T10:00`, with seconds, with a space, a bare date, or
/// RFC 3339), UTC.
pub fn parse_time(name: &str, text: &str) -> Result<Option<DateTime<Utc>>, WebError> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(Some(time.with_timezone(&Utc)));
    }
    for format in [
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M",
        "%Y-%m-%d %H:%M:%S",
    ] {
        if let Ok(time) = NaiveDateTime::parse_from_str(text, format) {
            return Ok(Some(time.and_utc()));
        }
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(date.and_hms_opt(0, 0, 0).map(|t| t.and_utc()));
    }
    Err(WebError::BadRequest(format!(
        "{name}: {text:?} is not a time (use YYYY-MM-DDTHH:MM, UTC)"
    )))
}

/// `from`/`to` with the defaults: the 24 hours before `to`, `to` now. Both are cut to what the
/// archive's DATETIME columns hold (years 1000 to 9999), so a range reaching past either end
/// finds what lies inside it.
pub fn parse_range(from: &str, to: &str) -> Result<(DateTime<Utc>, DateTime<Utc>), WebError> {
    let to = parse_time("to", to)?.unwrap_or_else(Utc::now);
    let from = match parse_time("from", from)? {
        Some(from) => from,
        None => to
            .checked_sub_signed(TimeDelta::hours(24))
            .unwrap_or_else(datetime_min),
    };
    let within = |time: DateTime<Utc>| time.clamp(datetime_min(), datetime_max());
    Ok((within(from), within(to)))
}

/// `page` and `per_page`.
pub fn parse_paging(page: &str, per_page: &str) -> Result<(u32, u32), WebError> {
    let number = |name: &str, text: &str, default: u32, max: u32| -> Result<u32, WebError> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(default);
        }
        match text.parse::<u32>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(WebError::BadRequest(format!(
                "{name}: {text:?} is not a number from 1 to {max}"
            ))),
        }
    };
    Ok((
        number("page", page, 1, MAX_PAGE)?,
        number("per_page", per_page, DEFAULT_PER_PAGE, MAX_PER_PAGE)?,
    ))
}

/// `ip`: a client address or network.
pub fn parse_ip_range(text: &str) -> Result<IpRange, WebError> {
    let text = text.trim();
    if let Ok(addr) = text.parse::<IpAddr>() {
        return Ok(IpRange::address(addr));
    }
    let net: IpNet = text.parse().map_err(|_| {
        WebError::BadRequest(format!("ip: {text:?} is not an address or a network"))
    })?;
    Ok(IpRange::network(net))
}

/// A message UUID from a path segment; anything else is 404.
pub fn parse_uuid(text: &str) -> Result<Uuid, WebError> {
    Uuid::parse_str(text).map_err(|_| WebError::NotFound)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Two {
        sender: String,
        page: String,
    }

    #[test]
    fn an_unknown_parameter_is_refused_by_name() {
        let two: Two = from_query("sender=a%40b.example&page=2").unwrap();
        assert_eq!(
            (two.sender.as_str(), two.page.as_str()),
            ("a@b.example", "2")
        );
        match from_query::<Two>("Sender=a") {
            Err(WebError::BadRequest(text)) => {
                assert!(text.contains("unknown field `Sender`"), "{text}");
                assert!(
                    text.contains("`sender`"),
                    "the known names are listed: {text}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            from_query::<Two>("page=1&page=2"),
            Err(WebError::BadRequest(_))
        ));
        assert!(from_query::<Two>("").is_ok());
    }

    #[test]
    fn ranges_are_cut_to_the_datetime_range() {
        let (from, _) = parse_range("0001-01-01", "9999-12-31T23:59:59").unwrap();
        assert_eq!(from, datetime_min());
        let (from, to) = parse_range("", "1000-01-01T06:00").unwrap();
        assert_eq!(
            (from, to.to_rfc3339().as_str()),
            (datetime_min(), "1000-01-01T06:00:00+00:00")
        );
        let (from, to) = parse_range("9999-01-01", "9999-12-31").unwrap();
        assert_eq!(from.to_rfc3339(), "9999-01-01T00:00:00+00:00");
        assert_eq!(to.to_rfc3339(), "9999-12-31T00:00:00+00:00");
    }

    #[test]
    fn networks_become_binary_bounds() {
        let range = parse_ip_range("192.0.2.0/24").unwrap();
        assert_eq!(range.first, vec![192, 0, 2, 0]);
        assert_eq!(range.last, vec![192, 0, 2, 255]);
        let one = parse_ip_range("::ffff:192.0.2.7").unwrap();
        assert_eq!(one.first, vec![192, 0, 2, 7]);
        let mapped = parse_ip_range("::ffff:192.0.2.0/120").unwrap();
        assert_eq!(mapped.last, vec![192, 0, 2, 255]);
        assert_eq!(parse_ip_range("2001:db8::/32").unwrap().first.len(), 16);
        assert!(parse_ip_range("' OR 1=1 --").is_err());
    }
}
