//! The quotas module's closed sets that more than one process knows: the selectors
//! (`quota.selector`). check-workers counts by them; the auditor's quota page and API offer and
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

#[cfg(test)]
mod tests {
    use super::*;

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
