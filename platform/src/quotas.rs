//! The quotas module's closed sets that more than one process knows: the selectors
//! (`quota.selector`), and how a period reads (`last_period`). check-workers counts by them; the auditor's quota page and API offer and
//! parse them. They never cross the broker, so they are not `wire`'s.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A factor of a message: ClueGetter's `quota.selector` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selector {
    ClientAddress,
    Sender,
    SenderDomain,
    /// Loaded from ClueGetter's rows, never counted by this build.
    SenderSld,
    SaslUsername,
    Recipient,
    RecipientDomain,
    /// Loaded from ClueGetter's rows, never counted by this build.
    RecipientSld,
}

impl Selector {
    pub const ALL: [Selector; 8] = [
        Selector::ClientAddress,
        Selector::Sender,
        Selector::SenderDomain,
        Selector::SenderSld,
        Selector::SaslUsername,
        Selector::Recipient,
        Selector::RecipientDomain,
        Selector::RecipientSld,
    ];

    /// The name in `quota.selector`.
    pub fn as_str(self) -> &'static str {
        match self {
            Selector::ClientAddress => "client_address",
            Selector::Sender => "sender",
            Selector::SenderDomain => "sender_domain",
            Selector::SenderSld => "sender_sld",
            Selector::SaslUsername => "sasl_username",
            Selector::Recipient => "recipient",
            Selector::RecipientDomain => "recipient_domain",
            Selector::RecipientSld => "recipient_sld",
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Selector {
    type Err = String;

    /// A selector's name, in any case, surrounding space ignored.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Selector::ALL
            .into_iter()
            .find(|selector| selector.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let known: Vec<&str> = Selector::ALL.iter().map(|s| s.as_str()).collect();
                format!("unknown selector `{s}` (known: {})", known.join(", "))
            })
    }
}

/// A quota period as words, for "5 of 5 in the last hour": `the last hour`, `the last 2
/// hours`, `the last day`, `the last 90 minutes`, `the last 45 seconds` (the largest unit that
/// divides it).
pub fn last_period(seconds: u64) -> String {
    let (count, unit) = match seconds {
        0 => return "no time".to_owned(),
        s if s % 86_400 == 0 => (s / 86_400, "day"),
        s if s % 3600 == 0 => (s / 3600, "hour"),
        s if s % 60 == 0 => (s / 60, "minute"),
        s => (s, "second"),
    };
    if count == 1 {
        format!("the last {unit}")
    } else {
        format!("the last {count} {unit}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_read_as_words() {
        assert_eq!(last_period(3600), "the last hour");
        assert_eq!(last_period(7200), "the last 2 hours");
        assert_eq!(last_period(86_400), "the last day");
        assert_eq!(last_period(7 * 86_400), "the last 7 days");
        assert_eq!(last_period(5400), "the last 90 minutes");
        assert_eq!(last_period(60), "the last minute");
        assert_eq!(last_period(45), "the last 45 seconds");
        assert_eq!(last_period(0), "no time");
    }

    #[test]
    fn every_selector_reads_back_from_its_name() {
        for selector in Selector::ALL {
            assert_eq!(selector.as_str().parse::<Selector>(), Ok(selector));
            assert_eq!(
                selector.as_str().to_uppercase().parse::<Selector>(),
                Ok(selector)
            );
        }
        assert!("evil'".parse::<Selector>().is_err());
    }
}
