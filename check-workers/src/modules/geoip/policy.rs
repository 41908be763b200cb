//! The module's rules as pure functions: whose history a message counts in, who is exempt, and
//! whether a country is one too many. No I/O, no clock: [`super::store`] runs [`decide`] inside
//! the transaction that holds the login's lock.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Logins are compared lower-cased and stored cut to this many characters (the column width).
pub const LOGIN_CHARS: usize = 255;

/// The country counted for an address the database has no country for, with
/// `unknown-country = "count"`.
pub const UNKNOWN_COUNTRY: &str = "unknown";

/// One country a login sent from within the window.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Seen {
    pub country: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Messages permitted from this country since `first_seen`.
    pub messages: u64,
}

/// Whether the message's country may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The country is known already or still fits: record it.
    Permit,
    /// The country would make the login's count exceed `max-countries`: refuse, record nothing.
    Refuse,
}

/// The decision for a message from `country` by a login whose countries within the window
/// are `history`.
pub fn decide(history: &[Seen], country: &str, max_countries: u32) -> Decision {
    if history.iter().any(|seen| seen.country == country) {
        return Decision::Permit;
    }
    let after = history.len().saturating_add(1);
    if after > usize::try_from(max_countries).unwrap_or(usize::MAX) {
        Decision::Refuse
    } else {
        Decision::Permit
    }
}

/// The countries as the message names them: the history in the order first used, then the
/// message's own if it is new (`NL, US, CN`).
pub fn countries_named(history: &[Seen], country: &str) -> Vec<String> {
    let mut sorted: Vec<&Seen> = history.iter().collect();
    sorted.sort_by(|a, b| {
        a.first_seen
            .cmp(&b.first_seen)
            .then(a.country.cmp(&b.country))
    });
    let mut names: Vec<String> = sorted.iter().map(|seen| seen.country.clone()).collect();
    if !names.iter().any(|name| name == country) {
        names.push(country.to_owned());
    }
    names
}

/// A duration as the configuration writes it, in its largest whole unit (`24h`, `90m`, `2d`).
pub fn duration_text(duration: std::time::Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        s if s % 86_400 == 0 && s / 86_400 != 1 => format!("{}d", s / 86_400),
        s if s % 3_600 == 0 => format!("{}h", s / 3_600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A login or sender as it is stored and compared: trimmed, lower-cased, cut to the column.
pub fn normalise_login(login: &str) -> String {
    login
        .trim()
        .to_lowercase()
        .chars()
        .take(LOGIN_CHARS)
        .collect()
}

/// Whether `login` (normalised) is exempt: named in `exempt`, or its domain is (`@domain`).
/// Entries compare case-insensitively.
pub fn is_exempt(exempt: &[String], login: &str) -> bool {
    let domain = login.rsplit_once('@').map(|(_, domain)| domain);
    exempt.iter().any(|entry| {
        let entry = entry.trim().to_lowercase();
        match entry.strip_prefix('@') {
            Some(exempt_domain) => domain == Some(exempt_domain),
            None => entry == login,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone as _;

    fn seen(country: &str, first: i64) -> Seen {
        let at = |s| Utc.timestamp_opt(s, 0).single().unwrap_or_default();
        Seen {
            country: country.to_owned(),
            first_seen: at(first),
            last_seen: at(first + 10),
            messages: 1,
        }
    }

    #[test]
    fn a_known_country_is_always_permitted() {
        let history = [seen("NL", 1), seen("US", 2), seen("DE", 3)];
        assert_eq!(decide(&history, "US", 2), Decision::Permit);
    }

    #[test]
    fn a_new_country_is_refused_only_past_max_countries() {
        assert_eq!(decide(&[], "NL", 1), Decision::Permit);
        assert_eq!(decide(&[seen("NL", 1)], "US", 2), Decision::Permit);
        assert_eq!(
            decide(&[seen("NL", 1), seen("US", 2)], "CN", 2),
            Decision::Refuse
        );
        assert_eq!(decide(&[seen("NL", 1)], "US", 1), Decision::Refuse);
    }

    #[test]
    fn the_message_names_countries_in_the_order_first_used() {
        let history = [seen("US", 5), seen("NL", 1)];
        assert_eq!(countries_named(&history, "CN"), ["NL", "US", "CN"]);
        assert_eq!(countries_named(&history, "US"), ["NL", "US"]);
    }

    #[test]
    fn exempt_logins_and_domains() {
        let exempt = vec![
            "Webmail@Example.org".to_owned(),
            "@trusted.example".to_owned(),
        ];
        assert!(is_exempt(&exempt, "webmail@example.org"));
        assert!(is_exempt(&exempt, "anyone@trusted.example"));
        assert!(!is_exempt(&exempt, "anyone@untrusted.example"));
        assert!(!is_exempt(&exempt, "trusted.example"));
        assert!(!is_exempt(&exempt, "other@example.org"));
    }

    #[test]
    fn durations_are_written_as_the_configuration_does() {
        use std::time::Duration;
        assert_eq!(duration_text(Duration::from_secs(86_400)), "24h");
        assert_eq!(duration_text(Duration::from_secs(2 * 86_400)), "2d");
        assert_eq!(duration_text(Duration::from_secs(5_400)), "90m");
        assert_eq!(duration_text(Duration::from_secs(2)), "2s");
        assert_eq!(duration_text(Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn logins_are_trimmed_lower_cased_and_cut() {
        assert_eq!(normalise_login(" User@Example.ORG "), "user@example.org");
        assert_eq!(normalise_login(&"x".repeat(300)).len(), LOGIN_CHARS);
    }

    mod proptests {
        use super::super::*;
        use super::seen;
        use proptest::prelude::*;

        proptest! {
            /// Whatever order countries come in, the recorded history never holds more than
            /// `max-countries`, and a country already recorded is never refused.
            #[test]
            fn history_never_exceeds_max_countries(
                max in 1u32..5,
                countries in proptest::collection::vec(0u8..8, 0..40),
            ) {
                let mut history: Vec<Seen> = Vec::new();
                for (i, c) in countries.iter().enumerate() {
                    let country = format!("C{c}");
                    let known = history.iter().any(|s| s.country == country);
                    match decide(&history, &country, max) {
                        Decision::Permit => {
                            if !known {
                                history.push(seen(&country, i64::try_from(i).unwrap_or(0)));
                            }
                        }
                        Decision::Refuse => prop_assert!(!known),
                    }
                    prop_assert!(history.len() <= max as usize);
                }
            }
        }
    }
}
