//! Whom the SRS module rewrites, into which domain, and which recipients it reverses or
//! refuses: `[srs]`'s rules over the scheme ([`Srs`]). Pure: the time is an argument, the
//! outcome a value ([`Eom`], [`Rcpt`]) that `mod.rs` turns into a result.
//!
//! - **Forward** (end of message): never the null sender, a sender in our domains (`domain`,
//!   `local-domains`), or one that already reverses with our secrets (PostSRSd's "already
//!   rewritten"). Otherwise, with `rewrite = "always"`, into `domain`; with `"header"`, only
//!   when `recipient-header` names an address that is not an envelope recipient, into that
//!   address's domain when it is ours (else `domain`), so a client never chooses which domain
//!   we sign for.
//! - **Reverse**: an SRS recipient in our domains is checked at RCPT (refused when malformed,
//!   forged or expired) and replaced at end of message by the address it stands for. SRS
//!   addresses in other domains are not ours to judge.

use std::time::SystemTime;

use platform::config::{SrsConfig, SrsRewrite};
use serde_json::{Value, json};
use wire::{Envelope, Header, MilterChanges};

use super::scheme::{Kind, ReverseError, Srs, is_srs_address};

/// The enhanced status code of a refused SRS recipient: bad destination mailbox address.
pub const REFUSED_STATUS: &str = "5.1.1";

/// The rules with the scheme they apply.
#[derive(Debug)]
pub struct Policy {
    srs: Srs,
    config: SrsConfig,
}

/// What happens to the envelope sender.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sender {
    /// Rewritten into `domain`.
    Rewritten {
        original: String,
        rewritten: String,
        domain: String,
    },
    /// Left as it is, and why.
    Unchanged { original: String, why: String },
}

/// What happens to one envelope recipient that is an SRS address in our domains.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// Replaced by the address it stands for.
    Reversed {
        address: String,
        original: String,
        kind: Kind,
    },
    /// Left alone: it does not reverse (refused at RCPT unless noop or a whitelisted client
    /// let it through, or it expired since).
    Refused {
        address: String,
        error: ReverseError,
    },
}

/// End of message: the sender and the SRS recipients.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Eom {
    pub sender: Sender,
    pub recipients: Vec<Recipient>,
}

/// RCPT: one recipient.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rcpt {
    /// Not an SRS address, or not in our domains: nothing to say.
    NotOurs,
    /// A good SRS address of ours, and what it reverses to.
    Valid { original: String, kind: Kind },
    /// Refused.
    Refused(ReverseError),
}

impl Policy {
    pub fn new(srs: Srs, config: SrsConfig) -> Self {
        Self { srs, config }
    }

    /// The sender and recipients of a message at end of message.
    pub fn at_eom(&self, envelope: &Envelope, headers: &[Header], now: SystemTime) -> Eom {
        let recipients = envelope
            .recipients
            .iter()
            .filter(|address| self.is_ours(address))
            .filter_map(|address| match self.srs.reverse(address, now) {
                Ok(Some(reversed)) => Some(Recipient::Reversed {
                    address: address.clone(),
                    original: reversed.address,
                    kind: reversed.kind,
                }),
                // `is_ours` saw an SRS tag, so `Ok(None)` does not happen
                Ok(None) => None,
                Err(error) => Some(Recipient::Refused {
                    address: address.clone(),
                    error,
                }),
            })
            .collect();
        Eom {
            sender: self.sender(envelope, headers, now),
            recipients,
        }
    }

    /// One recipient at RCPT.
    pub fn at_rcpt(&self, recipient: &str, now: SystemTime) -> Rcpt {
        if !self.is_ours(recipient) {
            return Rcpt::NotOurs;
        }
        match self.srs.reverse(recipient, now) {
            Ok(Some(reversed)) => Rcpt::Valid {
                original: reversed.address,
                kind: reversed.kind,
            },
            Ok(None) => Rcpt::NotOurs,
            Err(error) => Rcpt::Refused(error),
        }
    }

    /// An SRS address in one of our domains.
    fn is_ours(&self, address: &str) -> bool {
        is_srs_address(address)
            && address
                .rsplit_once('@')
                .is_some_and(|(_, domain)| self.config.is_local_domain(domain))
    }

    fn sender(&self, envelope: &Envelope, headers: &[Header], now: SystemTime) -> Sender {
        let original = envelope.sender.clone();
        let unchanged = |why: &str| Sender::Unchanged {
            original: original.clone(),
            why: why.to_owned(),
        };
        if original.is_empty() || original == "<>" {
            return unchanged("the null sender");
        }
        let Some((_, sender_domain)) = original.rsplit_once('@') else {
            return unchanged("the sender has no domain");
        };
        if self.config.is_local_domain(sender_domain) {
            return unchanged("the sender is in one of our domains");
        }
        if matches!(self.srs.reverse(&original, now), Ok(Some(_))) {
            return unchanged("the sender is an SRS address we signed");
        }
        let domain = match self.config.rewrite {
            SrsRewrite::Never => return unchanged("rewrite = \"never\""),
            SrsRewrite::Always => self.config.domain.clone(),
            SrsRewrite::Header => match self.forwarded_for(envelope, headers) {
                Some(address) => match address.rsplit_once('@') {
                    Some((_, domain)) if self.config.is_local_domain(domain) => domain.to_owned(),
                    _ => self.config.domain.clone(),
                },
                None => {
                    return unchanged(&format!(
                        "not forwarded (no {} naming another recipient)",
                        self.config.recipient_header
                    ));
                }
            },
        };
        match self.srs.forward(&original, &domain, now) {
            Ok(rewritten) => Sender::Rewritten {
                original,
                rewritten,
                domain,
            },
            Err(error) => unchanged(&format!("cannot be rewritten: {error}")),
        }
    }

    /// The first address a `recipient-header` names that is not an envelope recipient: the
    /// address the message was sent to before it was forwarded.
    fn forwarded_for(&self, envelope: &Envelope, headers: &[Header]) -> Option<String> {
        headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(&self.config.recipient_header))
            .flat_map(|h| h.value.split(','))
            .map(|value| {
                value
                    .trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .trim()
            })
            .filter(|address| address.contains('@'))
            .find(|address| {
                !envelope
                    .recipients
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(address))
            })
            .map(str::to_owned)
    }
}

impl Eom {
    /// The envelope changes: the new sender, and each reversed recipient deleted and its
    /// original added (once per address).
    pub fn changes(&self) -> MilterChanges {
        let mut changes = MilterChanges::default();
        if let Sender::Rewritten { rewritten, .. } = &self.sender {
            changes.new_sender = Some(rewritten.clone());
        }
        for recipient in &self.recipients {
            if let Recipient::Reversed {
                address, original, ..
            } = recipient
            {
                changes.delete_recipients.push(address.clone());
                if !changes
                    .add_recipients
                    .iter()
                    .any(|a| a.eq_ignore_ascii_case(original))
                {
                    changes.add_recipients.push(original.clone());
                }
            }
        }
        changes
    }

    /// What the archive shows: the sender before and after, the recipients reversed or left.
    pub fn determinants(&self) -> Value {
        let sender = match &self.sender {
            Sender::Rewritten {
                original,
                rewritten,
                domain,
            } => json!({ "original": original, "rewritten": rewritten, "domain": domain }),
            Sender::Unchanged { original, why } => {
                json!({ "original": original, "unchanged": why })
            }
        };
        let recipients: Vec<Value> = self
            .recipients
            .iter()
            .map(|recipient| match recipient {
                Recipient::Reversed {
                    address,
                    original,
                    kind,
                } => json!({ "address": address, "reversed": original, "kind": kind.as_str() }),
                Recipient::Refused { address, error } => {
                    json!({ "address": address, "not_reversed": error.to_string() })
                }
            })
            .collect();
        let mut determinants = json!({ "sender": sender });
        if !recipients.is_empty() {
            determinants["recipients"] = Value::Array(recipients);
        }
        determinants
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::modules::srs::{Secrets, Settings};

    const DAY: u64 = 86_400;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(20_000 * DAY + 3600)
    }

    fn config(rewrite: SrsRewrite) -> SrsConfig {
        SrsConfig {
            enabled: true,
            domain: "srs.example.net".into(),
            local_domains: vec!["virtual.test".into(), "Example.NET".into()],
            rewrite,
            ..SrsConfig::default()
        }
    }

    fn policy(rewrite: SrsRewrite) -> Policy {
        let secrets = Secrets::new(vec![b"s3cret".to_vec()]).unwrap();
        Policy::new(
            Srs::new(&secrets, Settings::default()).unwrap(),
            config(rewrite),
        )
    }

    fn envelope(sender: &str, recipients: &[&str]) -> Envelope {
        Envelope {
            sender: sender.into(),
            recipients: recipients.iter().map(|r| (*r).to_owned()).collect(),
        }
    }

    fn original_to(address: &str) -> Vec<Header> {
        vec![
            Header::new("Subject", "hi"),
            Header::new("x-original-to", address),
        ]
    }

    fn rewritten(eom: &Eom) -> Option<(&str, &str)> {
        match &eom.sender {
            Sender::Rewritten {
                rewritten, domain, ..
            } => Some((rewritten.as_str(), domain.as_str())),
            Sender::Unchanged { .. } => None,
        }
    }

    #[test]
    fn header_mode_rewrites_into_the_forwarding_domain() {
        let policy = policy(SrsRewrite::Header);
        let eom = policy.at_eom(
            &envelope("alice@sender.test", &["bob@external.test"]),
            &original_to("fwd@virtual.test"),
            now(),
        );
        let (address, domain) = rewritten(&eom).unwrap();
        assert_eq!(domain, "virtual.test");
        assert!(address.starts_with("SRS0="), "{address}");
        assert!(
            address.ends_with("=sender.test=alice@virtual.test"),
            "{address}"
        );
        let changes = eom.changes();
        assert_eq!(changes.new_sender.as_deref(), Some(address));
        assert!(changes.add_recipients.is_empty() && changes.delete_recipients.is_empty());
        let determinants = eom.determinants();
        assert_eq!(determinants["sender"]["original"], "alice@sender.test");
        assert_eq!(determinants["sender"]["rewritten"], address);
        // and it reverses to the sender
        assert_eq!(
            policy.at_rcpt(address, now()),
            Rcpt::Valid {
                original: "alice@sender.test".into(),
                kind: Kind::Srs0
            }
        );
    }

    #[test]
    fn header_mode_signs_only_for_our_domains() {
        let policy = policy(SrsRewrite::Header);
        // the header names a domain that is not ours: `domain`
        let eom = policy.at_eom(
            &envelope("alice@sender.test", &["bob@external.test"]),
            &original_to("<victim@elsewhere.test>"),
            now(),
        );
        assert_eq!(rewritten(&eom).unwrap().1, "srs.example.net");
    }

    #[test]
    fn header_mode_needs_a_header_naming_another_recipient() {
        let policy = policy(SrsRewrite::Header);
        for headers in [
            vec![Header::new("Subject", "no header")],
            original_to("BOB@external.test"),
            original_to("not an address"),
        ] {
            let eom = policy.at_eom(
                &envelope("alice@sender.test", &["bob@external.test"]),
                &headers,
                now(),
            );
            assert!(
                matches!(&eom.sender, Sender::Unchanged { why, .. } if why.starts_with("not forwarded")),
                "{headers:?}: {eom:?}"
            );
            assert!(eom.changes().is_empty());
        }
    }

    #[test]
    fn always_mode_rewrites_every_outside_sender_into_domain() {
        let policy = policy(SrsRewrite::Always);
        let eom = policy.at_eom(
            &envelope("alice@sender.test", &["bob@external.test"]),
            &[],
            now(),
        );
        let (address, domain) = rewritten(&eom).unwrap();
        assert_eq!(domain, "srs.example.net");
        assert!(address.ends_with("@srs.example.net"));
    }

    #[test]
    fn null_local_and_own_srs_senders_are_never_rewritten() {
        for rewrite in [SrsRewrite::Header, SrsRewrite::Always] {
            let policy = policy(rewrite);
            let ours = policy
                .srs
                .forward("alice@sender.test", "elsewhere.test", now())
                .unwrap();
            for (sender, why) in [
                ("", "the null sender"),
                ("<>", "the null sender"),
                ("carol@virtual.test", "the sender is in one of our domains"),
                ("carol@EXAMPLE.net", "the sender is in one of our domains"),
                (
                    "dave@srs.example.net",
                    "the sender is in one of our domains",
                ),
                (ours.as_str(), "the sender is an SRS address we signed"),
                ("nodomain", "the sender has no domain"),
            ] {
                let eom = policy.at_eom(
                    &envelope(sender, &["bob@external.test"]),
                    &original_to("fwd@virtual.test"),
                    now(),
                );
                assert_eq!(
                    eom.sender,
                    Sender::Unchanged {
                        original: sender.into(),
                        why: why.into()
                    },
                    "{rewrite:?}"
                );
            }
        }
    }

    #[test]
    fn never_mode_rewrites_nothing_but_still_reverses() {
        let policy = policy(SrsRewrite::Never);
        let good = policy
            .srs
            .forward("alice@sender.test", "virtual.test", now())
            .unwrap();
        let eom = policy.at_eom(
            &envelope("mallory@sender.test", &["bob@virtual.test", &good]),
            &original_to("other@virtual.test"),
            now(),
        );
        assert!(matches!(eom.sender, Sender::Unchanged { .. }), "{eom:?}");
        assert_eq!(eom.changes().add_recipients, ["alice@sender.test"]);
        assert_eq!(eom.changes().new_sender, None);
    }

    #[test]
    fn an_srs0_sender_from_elsewhere_becomes_srs1() {
        let policy = policy(SrsRewrite::Always);
        let eom = policy.at_eom(
            &envelope(
                "SRS0=abcd=TT=orig.test=u@forwarder.test",
                &["x@external.test"],
            ),
            &[],
            now(),
        );
        let (address, _) = rewritten(&eom).unwrap();
        assert!(address.starts_with("SRS1="), "{address}");
        assert!(
            address.contains("=forwarder.test==abcd=TT=orig.test=u@"),
            "{address}"
        );
    }

    #[test]
    fn srs_recipients_of_ours_are_reversed_others_left_alone() {
        let policy = policy(SrsRewrite::Header);
        let good = policy
            .srs
            .forward("alice@sender.test", "virtual.test", now())
            .unwrap();
        let twice = policy
            .srs
            .forward("carol@other.test", "example.net", now())
            .unwrap();
        let forged = good.replacen("SRS0=", "SRS0=x", 1);
        let foreign = "SRS0=abcd=TT=orig.test=u@elsewhere.test";
        let eom = policy.at_eom(
            &envelope("", &[&good, "plain@virtual.test", &forged, foreign, &twice]),
            &[],
            now(),
        );
        assert_eq!(eom.recipients.len(), 3, "{eom:?}");
        let changes = eom.changes();
        assert_eq!(changes.delete_recipients, [good.clone(), twice.clone()]);
        assert_eq!(
            changes.add_recipients,
            ["alice@sender.test", "carol@other.test"]
        );
        let determinants = eom.determinants();
        assert_eq!(
            determinants["recipients"][0]["reversed"],
            "alice@sender.test"
        );
        assert_eq!(determinants["recipients"][1]["address"], forged);
        assert!(
            determinants["recipients"][1]["not_reversed"]
                .as_str()
                .unwrap()
                .contains("invalid")
        );
    }

    #[test]
    fn rcpt_refuses_forged_and_expired_addresses_of_ours_only() {
        let policy = policy(SrsRewrite::Header);
        let old = now() - Duration::from_secs(22 * DAY);
        let expired = policy
            .srs
            .forward("alice@sender.test", "virtual.test", old)
            .unwrap();
        assert!(matches!(
            policy.at_rcpt(&expired, now()),
            Rcpt::Refused(ReverseError::Expired {
                age_days: 22,
                max_age_days: 21
            })
        ));
        let good = policy
            .srs
            .forward("alice@sender.test", "virtual.test", now())
            .unwrap();
        // case-insensitive hash, as libsrs2
        let lower = good.to_ascii_lowercase();
        assert!(matches!(policy.at_rcpt(&lower, now()), Rcpt::Valid { .. }));
        // another hash, also ignoring case
        let hash = if good[5..9].eq_ignore_ascii_case("AAAA") {
            "BBBB"
        } else {
            "AAAA"
        };
        let tampered = format!("{}{hash}{}", &good[..5], &good[9..]);
        assert_eq!(
            policy.at_rcpt(&tampered, now()),
            Rcpt::Refused(ReverseError::BadHash)
        );
        assert!(matches!(
            policy.at_rcpt("SRS0=bad@virtual.test", now()),
            Rcpt::Refused(ReverseError::Malformed { .. })
        ));
        assert_eq!(
            policy.at_rcpt("SRS0=xxxx=AA=h=u@elsewhere.test", now()),
            Rcpt::NotOurs
        );
        assert_eq!(policy.at_rcpt("bob@virtual.test", now()), Rcpt::NotOurs);
    }

    #[test]
    fn the_gateway_asks_about_exactly_the_addresses_the_scheme_calls_srs() {
        let config = config(SrsRewrite::Header);
        for address in [
            "SRS0=x@y", "srs1+x@y", "Srs0-", "SRS2=x@y", "SRS0x@y", "SRS0", "", "bob@x", "SRS1=",
            "sRs1=", "SRS0é", "é",
        ] {
            assert_eq!(
                config.asks_at_rcpt(address),
                is_srs_address(address),
                "{address}"
            );
        }
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]
    use std::time::{Duration, UNIX_EPOCH};

    use proptest::prelude::*;

    use super::*;
    use crate::modules::srs::{Secrets, Settings};

    proptest! {
        #[test]
        fn the_gateway_and_the_scheme_agree_on_what_is_srs(address in "([sS][rR][sS][0-2][=+\\-x])?.{0,10}") {
            let config = SrsConfig { enabled: true, ..SrsConfig::default() };
            prop_assert_eq!(config.asks_at_rcpt(&address), is_srs_address(&address));
        }

        /// A forwarded message's rewritten sender, used as a bounce's recipient, is reversed at
        /// end of message into the original sender, and accepted at RCPT, for any sender.
        #[test]
        fn a_bounce_to_a_rewritten_sender_goes_back_to_it(
            user in "[a-zA-Z0-9.!#$%&'*+/=?^_`{|}~-]{1,30}"
                .prop_filter("a plain sender (SRS senders: the scheme's tests)", |u| !is_srs_address(u)),
            host in "[a-z0-9-]{1,20}\\.[a-z]{2,6}",
            day in 0..100_000u64,
            age in 0..=21u64,
        ) {
            let secrets = Secrets::new(vec![b"prop secret".to_vec()]).unwrap();
            let config = SrsConfig {
                enabled: true,
                domain: "srs.example.net".into(),
                local_domains: vec!["virtual.test".into()],
                rewrite: SrsRewrite::Always,
                ..SrsConfig::default()
            };
            let policy = Policy::new(Srs::new(&secrets, Settings::default()).unwrap(), config);
            let sender = format!("{user}@{host}");
            let sent = UNIX_EPOCH + Duration::from_secs(day * 86_400);
            let eom = policy.at_eom(
                &Envelope { sender: sender.clone(), recipients: vec!["x@external.test".into()] },
                &[],
                sent,
            );
            let rewritten = eom.changes().new_sender.unwrap();
            let later = sent + Duration::from_secs(age * 86_400);
            let expected = sender.clone();
            prop_assert_eq!(
                policy.at_rcpt(&rewritten, later),
                Rcpt::Valid { original: expected.clone(), kind: Kind::Srs0 }
            );
            let bounce = policy.at_eom(
                &Envelope { sender: String::new(), recipients: vec![rewritten.clone()] },
                &[],
                later,
            );
            let changes = bounce.changes();
            prop_assert_eq!(changes.delete_recipients, vec![rewritten]);
            prop_assert_eq!(changes.add_recipients, vec![expected]);
        }
    }
}
