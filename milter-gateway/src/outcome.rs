//! The fail policy, pure: what is applied and what is answered, from what the modules decided
//! (or why nothing could be decided), `noop`, the whitelist, `fail-action`, the audit spool's
//! answer and the stage. One function, [`outcome`], for end of message and for the early
//! stages (CONNECT, HELO, RCPT); `connection.rs` and `early.rs` only carry it out.
//!
//! Not here: the verdict itself (`verdict.rs`: scores, weights, the error rule), the reply
//! text's format (`reply.rs`) and the header changes (`headers.rs`); this module says whether
//! the changes are sent, not which.
//!
//! The rules (DESIGN.md "Fail policy"):
//! - `noop` permits everything, whatever happened (the would-be verdict is still recorded).
//! - A whitelisted client is permitted at end of message (and still checked and audited).
//! - No verdict at all (the broker away) is the verdict tempfail; `fail-action` says what is
//!   applied: tempfail, or accept.
//! - At end of message the audit event is on disk before the answer; when the spool refuses
//!   it (full, or the disk failed) and `fail-action` is tempfail, the message is tempfailed
//!   rather than answered without a record (even a whitelisted one; not under `noop`). With
//!   `fail-action = "accept"` the verdict is applied as it is.
//! - Before end of message, discard and quarantine (whole-message actions) continue: end of
//!   message asks again and applies them. A refused RCPT is kept with our reply.
//! - Header and envelope changes go out only where the message goes on (permit, quarantine).

use platform::config::FailAction;
use wire::{Action, CheckStage};

use crate::milter::Response;
use crate::reply;

/// The reason recorded when no verdict could be had.
pub const UNCHECKED_REASON: &str =
    "The message could not be checked right now, please try again later";
/// The reply's reason when what is applied is not the verdict (the fail action).
pub const UNAVAILABLE_REASON: &str = "Service temporarily unavailable, please try again later";
/// The reply when the reply text cannot be made (it always can: a safe fallback).
const FALLBACK_REPLY: &str = "451 4.7.1 Please try again later";

/// What the modules' answers came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Judged {
    /// The verdict of `verdict::decide`, its reason already substituted, and the enhanced
    /// status code of the result the reason came from.
    Decided {
        action: Action,
        reason: String,
        enhanced_status: Option<String>,
    },
    /// No verdict could be had: the modules could not be asked (the broker is away, or a
    /// publish failed). The text says why.
    Failed(String),
}

/// What the audit spool made of the event (end of message only).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Spooled<'a> {
    /// Nothing is spooled at this stage (before end of message).
    NotUsed,
    /// The event is on disk (or, when the event is being built, is about to be).
    Written,
    /// The spool refused it (full, or the disk failed); the text says why.
    Refused(&'a str),
}

/// Everything the fail policy depends on.
#[derive(Clone, Debug)]
pub struct Facts<'a> {
    pub stage: CheckStage,
    pub judged: Judged,
    pub noop: bool,
    /// The client is on the whitelist.
    pub whitelisted: bool,
    pub fail_action: FailAction,
    pub spooled: Spooled<'a>,
    /// Postfix's queue id, for the reply text (empty before end of message).
    pub queue_id: &'a str,
}

/// What is applied and answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Outcome {
    /// What the verdict rules said (tempfail when no verdict could be had).
    pub verdict: Action,
    /// The verdict's reason.
    pub reason: String,
    /// What is applied.
    pub applied: Action,
    /// Why no verdict, or no record, could be had (kept in the audit event).
    pub failure: Option<String>,
    /// Send the header and envelope changes before the answer.
    pub changes: bool,
    /// The answer, in order (after the changes, if any).
    pub answer: Vec<Response>,
    /// At RCPT: the reply that refused the recipient, kept among the message's refused
    /// recipients.
    pub refused_recipient: Option<String>,
}

/// The fail policy (see the module's comment for the rules).
pub fn outcome(facts: &Facts<'_>) -> Outcome {
    let eom = facts.stage == CheckStage::Eom;
    let (verdict, reason, enhanced_status, mut failure) = match &facts.judged {
        Judged::Decided {
            action,
            reason,
            enhanced_status,
        } => (*action, reason.clone(), enhanced_status.as_deref(), None),
        Judged::Failed(why) => (
            Action::Tempfail,
            UNCHECKED_REASON.to_owned(),
            None,
            Some(why.clone()),
        ),
    };
    let fail_action = match facts.fail_action {
        FailAction::Tempfail => Action::Tempfail,
        FailAction::Accept => Action::Permit,
    };
    let mut applied = if facts.noop || (eom && facts.whitelisted) {
        Action::Permit
    } else if failure.is_some() {
        fail_action
    } else if !eom && matches!(verdict, Action::Discard | Action::Quarantine) {
        // whole-message actions: end of message asks again and applies them
        Action::Permit
    } else {
        verdict
    };
    if let Spooled::Refused(why) = facts.spooled
        && !facts.noop
        && facts.fail_action == FailAction::Tempfail
    {
        applied = Action::Tempfail;
        failure = Some(why.to_owned());
    }
    // The verdict's reason and status code only when the verdict is what is applied.
    let (reply_reason, reply_status) = if applied == verdict {
        (reason.as_str(), enhanced_status)
    } else {
        (UNAVAILABLE_REASON, None)
    };
    let reply_text = || {
        reply::smtp_reply_with_status(applied, reply_status, reply_reason, facts.queue_id)
            .unwrap_or_else(|| FALLBACK_REPLY.to_owned())
    };
    let answer = match applied {
        Action::Reject | Action::Tempfail | Action::Error => {
            vec![Response::ReplyCode(reply_text())]
        }
        Action::Discard => vec![Response::Discard],
        Action::Quarantine => vec![
            Response::Quarantine(reply::quarantine_reason(&reason)),
            Response::Continue,
        ],
        Action::Permit => vec![Response::Continue],
    };
    let refused_recipient = match answer.first() {
        Some(Response::ReplyCode(text)) if facts.stage == CheckStage::Rcpt => Some(text.clone()),
        _ => None,
    };
    Outcome {
        verdict,
        reason,
        applied,
        failure,
        changes: eom && matches!(applied, Action::Permit | Action::Quarantine),
        answer,
        refused_recipient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REASON: &str = "Spam";

    fn facts(stage: CheckStage, judged: Judged) -> Facts<'static> {
        Facts {
            stage,
            judged,
            noop: false,
            whitelisted: false,
            fail_action: FailAction::Tempfail,
            spooled: if stage == CheckStage::Eom {
                Spooled::Written
            } else {
                Spooled::NotUsed
            },
            queue_id: if stage == CheckStage::Eom { "4QX" } else { "" },
        }
    }

    fn decided(action: Action) -> Judged {
        Judged::Decided {
            action,
            reason: REASON.to_owned(),
            enhanced_status: None,
        }
    }

    fn broker_away() -> Judged {
        Judged::Failed("the broker is away".to_owned())
    }

    fn reply(text: &str) -> Vec<Response> {
        vec![Response::ReplyCode(text.to_owned())]
    }

    fn cont() -> Vec<Response> {
        vec![Response::Continue]
    }

    const REJECT_EOM: &str = "550 5.7.1 Spam (4QX)";
    const TEMPFAIL_EOM: &str = "451 4.7.1 Spam (4QX)";
    const UNAVAILABLE_EOM: &str =
        "451 4.7.1 Service temporarily unavailable, please try again later (4QX)";
    const UNCHECKED_EARLY: &str =
        "451 4.7.1 The message could not be checked right now, please try again later";
    const UNCHECKED_EOM: &str =
        "451 4.7.1 The message could not be checked right now, please try again later (4QX)";

    /// One row: the facts (changed from the default by `tweak`), then what is applied, the
    /// answer, whether changes are sent, and the failure recorded.
    struct Row {
        name: &'static str,
        stage: CheckStage,
        judged: Judged,
        tweak: fn(&mut Facts<'static>),
        verdict: Action,
        applied: Action,
        answer: Vec<Response>,
        changes: bool,
        failure: Option<&'static str>,
    }

    fn none(_: &mut Facts<'static>) {}
    fn noop(f: &mut Facts<'static>) {
        f.noop = true;
    }
    fn whitelisted(f: &mut Facts<'static>) {
        f.whitelisted = true;
    }
    fn accept(f: &mut Facts<'static>) {
        f.fail_action = FailAction::Accept;
    }
    fn spool_full(f: &mut Facts<'static>) {
        f.spooled = Spooled::Refused("the spool is full");
    }
    fn spool_full_accept(f: &mut Facts<'static>) {
        spool_full(f);
        accept(f);
    }
    fn spool_full_noop(f: &mut Facts<'static>) {
        spool_full(f);
        noop(f);
    }
    fn spool_full_whitelisted(f: &mut Facts<'static>) {
        spool_full(f);
        whitelisted(f);
    }
    fn accept_noop(f: &mut Facts<'static>) {
        accept(f);
        noop(f);
    }

    // one row a line: the table reads as a table
    #[rustfmt::skip]
    fn rows() -> Vec<Row> {
        use Action::*;
        use CheckStage::*;
        let quarantined = vec![Response::Quarantine(REASON.to_owned()), Response::Continue];
        let row = |name, stage, judged, tweak, verdict, applied, answer, changes, failure| Row {
            name, stage, judged, tweak, verdict, applied, answer, changes, failure,
        };
        let away = Some("the broker is away");
        let full = Some("the spool is full");
        vec![
            // end of message, a verdict
            row("eom permit", Eom, decided(Permit), none, Permit, Permit, cont(), true, None),
            row("eom reject", Eom, decided(Reject), none, Reject, Reject, reply(REJECT_EOM), false, None),
            row("eom tempfail", Eom, decided(Tempfail), none, Tempfail, Tempfail, reply(TEMPFAIL_EOM), false, None),
            row("eom discard", Eom, decided(Discard), none, Discard, Discard, vec![Response::Discard], false, None),
            row("eom quarantine", Eom, decided(Quarantine), none, Quarantine, Quarantine, quarantined, true, None),
            row("eom error verdict", Eom, decided(Error), none, Error, Error, reply(TEMPFAIL_EOM), false, None),
            row("eom noop reject", Eom, decided(Reject), noop, Reject, Permit, cont(), true, None),
            row("eom noop discard", Eom, decided(Discard), noop, Discard, Permit, cont(), true, None),
            row("eom whitelisted reject", Eom, decided(Reject), whitelisted, Reject, Permit, cont(), true, None),
            row("eom whitelisted quarantine", Eom, decided(Quarantine), whitelisted, Quarantine, Permit, cont(), true, None),
            // end of message, the broker away
            row("eom broker away, tempfail", Eom, broker_away(), none, Tempfail, Tempfail, reply(UNCHECKED_EOM), false, away),
            row("eom broker away, accept", Eom, broker_away(), accept, Tempfail, Permit, cont(), true, away),
            row("eom broker away, noop", Eom, broker_away(), noop, Tempfail, Permit, cont(), true, away),
            row("eom broker away, accept, noop", Eom, broker_away(), accept_noop, Tempfail, Permit, cont(), true, away),
            row("eom broker away, whitelisted", Eom, broker_away(), whitelisted, Tempfail, Permit, cont(), true, away),
            // end of message, the spool refused the event
            row("eom spool full, permit", Eom, decided(Permit), spool_full, Permit, Tempfail, reply(UNAVAILABLE_EOM), false, full),
            row("eom spool full, reject", Eom, decided(Reject), spool_full, Reject, Tempfail, reply(UNAVAILABLE_EOM), false, full),
            row("eom spool full, tempfail", Eom, decided(Tempfail), spool_full, Tempfail, Tempfail, reply(TEMPFAIL_EOM), false, full),
            row("eom spool full, whitelisted", Eom, decided(Permit), spool_full_whitelisted, Permit, Tempfail, reply(UNAVAILABLE_EOM), false, full),
            row("eom spool full, accept, permit", Eom, decided(Permit), spool_full_accept, Permit, Permit, cont(), true, None),
            row("eom spool full, accept, reject", Eom, decided(Reject), spool_full_accept, Reject, Reject, reply(REJECT_EOM), false, None),
            row("eom spool full, noop", Eom, decided(Reject), spool_full_noop, Reject, Permit, cont(), true, None),
            row("eom broker away and spool full", Eom, broker_away(), spool_full, Tempfail, Tempfail, reply(UNCHECKED_EOM), false, full),
            // before end of message
            row("connect permit", Connect, decided(Permit), none, Permit, Permit, cont(), false, None),
            row("connect reject", Connect, decided(Reject), none, Reject, Reject, reply("550 5.7.1 Spam"), false, None),
            row("helo tempfail", Helo, decided(Tempfail), none, Tempfail, Tempfail, reply("451 4.7.1 Spam"), false, None),
            row("rcpt reject", Rcpt, decided(Reject), none, Reject, Reject, reply("550 5.7.1 Spam"), false, None),
            row("rcpt discard continues", Rcpt, decided(Discard), none, Discard, Permit, cont(), false, None),
            row("helo quarantine continues", Helo, decided(Quarantine), none, Quarantine, Permit, cont(), false, None),
            row("rcpt noop reject", Rcpt, decided(Reject), noop, Reject, Permit, cont(), false, None),
            row("connect broker away, tempfail", Connect, broker_away(), none, Tempfail, Tempfail, reply(UNCHECKED_EARLY), false, away),
            row("rcpt broker away, accept", Rcpt, broker_away(), accept, Tempfail, Permit, cont(), false, away),
            row("helo broker away, noop", Helo, broker_away(), noop, Tempfail, Permit, cont(), false, away),
        ]
    }

    #[test]
    fn every_row_of_the_fail_policy() {
        for row in rows() {
            let mut f = facts(row.stage, row.judged.clone());
            (row.tweak)(&mut f);
            let got = outcome(&f);
            let name = row.name;
            assert_eq!(got.verdict, row.verdict, "{name}: verdict");
            assert_eq!(got.applied, row.applied, "{name}: applied");
            assert_eq!(got.answer, row.answer, "{name}: answer");
            assert_eq!(got.changes, row.changes, "{name}: changes");
            assert_eq!(got.failure.as_deref(), row.failure, "{name}: failure");
            let refused = match (&row.answer[..], row.stage) {
                ([Response::ReplyCode(text)], CheckStage::Rcpt) => Some(text.clone()),
                _ => None,
            };
            assert_eq!(got.refused_recipient, refused, "{name}: refused recipient");
            let reason = match &row.judged {
                Judged::Decided { reason, .. } => reason.as_str(),
                Judged::Failed(_) => UNCHECKED_REASON,
            };
            assert_eq!(got.reason, reason, "{name}: reason");
        }
    }

    #[test]
    fn a_long_quarantine_reason_is_cut_for_the_quarantine_response() {
        let long = "x".repeat(1000);
        let got = outcome(&Facts {
            judged: Judged::Decided {
                action: Action::Quarantine,
                reason: long.clone(),
                enhanced_status: None,
            },
            ..facts(CheckStage::Eom, broker_away())
        });
        assert_eq!(
            got.answer,
            vec![
                Response::Quarantine(reply::quarantine_reason(&long)),
                Response::Continue
            ]
        );
        assert_eq!(got.reason, long, "the record keeps the whole reason");
    }

    #[test]
    fn a_refused_recipient_carries_the_module_status_code_only_when_the_verdict_applies() {
        let srs = |noop| {
            outcome(&Facts {
                noop,
                ..facts(
                    CheckStage::Rcpt,
                    Judged::Decided {
                        action: Action::Reject,
                        reason: "Invalid SRS address".to_owned(),
                        enhanced_status: Some("5.1.1".to_owned()),
                    },
                )
            })
        };
        let refused = srs(false);
        assert_eq!(refused.answer, reply("550 5.1.1 Invalid SRS address"));
        assert_eq!(
            refused.refused_recipient.as_deref(),
            Some("550 5.1.1 Invalid SRS address")
        );
        assert_eq!(srs(true).answer, cont());
        // the fail action's answer is ours, never the module's code
        let failed = outcome(&Facts {
            stage: CheckStage::Rcpt,
            ..facts(CheckStage::Rcpt, broker_away())
        });
        assert!(
            matches!(&failed.answer[..], [Response::ReplyCode(t)] if t.starts_with("451 4.7.1 ")),
            "{failed:?}"
        );
    }
}
