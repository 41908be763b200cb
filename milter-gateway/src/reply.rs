//! The SMTP reply text the gateway sends Postfix at end of message (SMFIR_REPLYCODE).
//!
//! Pure: it only makes text. It knows nothing of the milter packet around it and does not decide
//! the verdict (`crate::verdict` does); it makes any reason safe to send:
//!
//! - reject is `550 5.7.1 <reason> (<queue id>)`, tempfail `451 4.7.1 <reason> (<queue id>)`;
//!   never 421, which makes Postfix drop the whole SMTP session (spec gap C.19);
//! - Postfix reads the text as a format (`%%` → `%`, a lone `%` makes the reply malformed and
//!   Postfix falls back to `milter_default_action`), so `%` is doubled;
//! - SMTP replies are ASCII lines: control characters (CR, LF, NUL, TAB, …) and other whitespace
//!   become a space, other non-ASCII characters `?`, runs of spaces collapse to one;
//! - the whole reply is at most [`MAX_REPLY_LEN`] bytes, so with CRLF it fits RFC 5321's 512-octet
//!   reply line; a long reason is cut (marked `...`) and the queue id suffix is kept.

use wire::Action;

use crate::verdict::UNSPECIFIED_REASON;

/// The longest reply text, in bytes (RFC 5321 §4.5.3.1.5: 512 octets with the CRLF).
pub const MAX_REPLY_LEN: usize = 510;

/// The longest queue id kept in the reply, in bytes after escaping. Postfix's long queue ids
/// are about 16 characters; anything longer is not one.
pub const MAX_QUEUE_ID_LEN: usize = 64;

/// What marks a reason that was cut short.
const CUT_MARK: &str = "...";

/// The reply text for a verdict; `None` for permit, discard and quarantine, which set none.
///
/// An `error` action (never a verdict of `decide`) is answered like tempfail, the safe side.
/// An empty queue id leaves out the ` (<queue id>)` suffix; an empty reason becomes
/// "Reason Unspecified".
pub fn smtp_reply(action: Action, reason: &str, queue_id: &str) -> Option<String> {
    smtp_reply_with_status(action, None, reason, queue_id)
}

/// As [`smtp_reply`], with the enhanced status code a module gave (`5.1.1`) in place of ours
/// when it is one (RFC 3463: `class.subject.detail`, each 1 to 3 digits) and its class agrees
/// with the action (5 for reject, 4 for tempfail); otherwise ours is used. The basic code stays
/// ours (550, 451): never 421.
pub fn smtp_reply_with_status(
    action: Action,
    enhanced_status: Option<&str>,
    reason: &str,
    queue_id: &str,
) -> Option<String> {
    let (basic, class, ours) = match action {
        Action::Reject => ("550", '5', "5.7.1"),
        Action::Tempfail | Action::Error => ("451", '4', "4.7.1"),
        Action::Permit | Action::Discard | Action::Quarantine => return None,
    };
    let status = enhanced_status
        .filter(|status| is_enhanced_status(status) && status.starts_with(class))
        .unwrap_or(ours);
    let code = format!("{basic} {status}");
    let code = code.as_str();
    let queue_id = escape_bounded(&clean(queue_id), MAX_QUEUE_ID_LEN, false);
    let suffix = if queue_id.is_empty() {
        String::new()
    } else {
        format!(" ({queue_id})")
    };
    // code + space + reason + suffix; the suffix is at most 3 + MAX_QUEUE_ID_LEN, so the
    // budget is always well above zero.
    let budget = MAX_REPLY_LEN.saturating_sub(code.len() + 1 + suffix.len());
    let mut reason = escape_bounded(&clean(reason), budget, true);
    if reason.is_empty() {
        reason = UNSPECIFIED_REASON.to_owned();
    }
    Some(format!("{code} {reason}{suffix}"))
}

/// RFC 3463's `class.subject.detail`: a class of 2, 4 or 5, then two numbers of 1 to 3 digits.
fn is_enhanced_status(status: &str) -> bool {
    let mut parts = status.split('.');
    let number = |part: Option<&str>| {
        part.is_some_and(|p| (1..=3).contains(&p.len()) && p.bytes().all(|b| b.is_ascii_digit()))
    };
    matches!(parts.next(), Some("2" | "4" | "5"))
        && number(parts.next())
        && number(parts.next())
        && parts.next().is_none()
}

/// The reason text of a quarantine (SMFIR_QUARANTINE, a NUL-terminated string Postfix logs and
/// keeps with the held message): printable ASCII with single spaces, at most
/// [`MAX_REPLY_LEN`] bytes, never empty. Not a format, so `%` stays single.
pub fn quarantine_reason(reason: &str) -> String {
    let mut text = clean(reason);
    if text.len() > MAX_REPLY_LEN {
        // ASCII, so any byte index is a char boundary.
        text.truncate(MAX_REPLY_LEN - CUT_MARK.len());
        let kept = text.trim_end().len();
        text.truncate(kept);
        text.push_str(CUT_MARK);
    }
    if text.is_empty() {
        UNSPECIFIED_REASON.to_owned()
    } else {
        text
    }
}

/// The text as printable ASCII with single spaces and no leading or trailing space; `%` is
/// kept single here (escaping is [`escape_bounded`]'s).
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pending_space = false;
    for c in text.chars() {
        let c = if c.is_whitespace() || c.is_control() {
            ' '
        } else if c.is_ascii() {
            c
        } else {
            '?'
        };
        if c == ' ' {
            pending_space = !out.is_empty();
        } else {
            if pending_space {
                out.push(' ');
                pending_space = false;
            }
            out.push(c);
        }
    }
    out
}

/// Doubles every `%` of `clean` and keeps the result within `max` bytes, cutting between
/// characters (never inside a `%%` pair) and, when `mark` is set, ending a cut text with
/// [`CUT_MARK`]. `clean` is ASCII, so every byte is a character.
fn escape_bounded(clean: &str, max: usize, mark: bool) -> String {
    let escaped_len = clean.len() + clean.matches('%').count();
    let (limit, cut) = if escaped_len <= max {
        (max, false)
    } else if mark && max > CUT_MARK.len() {
        (max - CUT_MARK.len(), true)
    } else {
        (max, true)
    };
    let mut out = String::with_capacity(limit.min(escaped_len) + CUT_MARK.len());
    for c in clean.chars() {
        let unit_len = if c == '%' { 2 } else { c.len_utf8() };
        if out.len() + unit_len > limit {
            break;
        }
        if c == '%' {
            out.push_str("%%");
        } else {
            out.push(c);
        }
    }
    if cut {
        let kept = out.trim_end().len();
        out.truncate(kept);
        if mark && max > CUT_MARK.len() {
            out.push_str(CUT_MARK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn replies_per_action() {
        let table = [
            (Action::Reject, Some("550 5.7.1 Spam (4jZBMT31Pyz1TVqc)")),
            (Action::Tempfail, Some("451 4.7.1 Spam (4jZBMT31Pyz1TVqc)")),
            (Action::Error, Some("451 4.7.1 Spam (4jZBMT31Pyz1TVqc)")),
            (Action::Permit, None),
            (Action::Discard, None),
            (Action::Quarantine, None),
        ];
        for (action, expected) in table {
            assert_eq!(
                smtp_reply(action, "Spam", "4jZBMT31Pyz1TVqc").as_deref(),
                expected,
                "{action}"
            );
        }
    }

    #[test]
    fn a_module_status_code_is_used_when_it_agrees_with_the_action() {
        let table = [
            (Action::Reject, Some("5.1.1"), "550 5.1.1 Bad SRS"),
            (Action::Reject, Some("5.7.26"), "550 5.7.26 Bad SRS"),
            (Action::Tempfail, Some("4.2.2"), "451 4.2.2 Bad SRS"),
            (Action::Error, Some("4.3.0"), "451 4.3.0 Bad SRS"),
            // another class than the answer's, or no status code at all: ours
            (Action::Reject, Some("4.1.1"), "550 5.7.1 Bad SRS"),
            (Action::Tempfail, Some("5.1.1"), "451 4.7.1 Bad SRS"),
            (Action::Reject, Some("2.0.0"), "550 5.7.1 Bad SRS"),
            (Action::Reject, Some("5.1"), "550 5.7.1 Bad SRS"),
            (Action::Reject, Some("5.1.1.1"), "550 5.7.1 Bad SRS"),
            (Action::Reject, Some("5.1000.1"), "550 5.7.1 Bad SRS"),
            (Action::Reject, Some("5.1.x"), "550 5.7.1 Bad SRS"),
            (Action::Reject, Some("5.1.1\r\n250 ok"), "550 5.7.1 Bad SRS"),
            (Action::Reject, Some(""), "550 5.7.1 Bad SRS"),
            (Action::Reject, None, "550 5.7.1 Bad SRS"),
        ];
        for (action, status, expected) in table {
            assert_eq!(
                smtp_reply_with_status(action, status, "Bad SRS", "").as_deref(),
                Some(expected),
                "{action} {status:?}"
            );
        }
        assert_eq!(
            smtp_reply_with_status(Action::Permit, Some("5.1.1"), "x", ""),
            None
        );
    }

    #[test]
    fn c19_never_replies_421() {
        for action in Action::ALL {
            if let Some(reply) = smtp_reply(action, "421 4.7.0 go away", "Q") {
                assert!(!reply.starts_with("421"), "{reply}");
                assert!(reply.starts_with("550 5.7.1 ") || reply.starts_with("451 4.7.1 "));
            }
        }
    }

    #[test]
    fn makes_the_text_safe() {
        let table = [
            ("empty queue id", "Spam", "", "550 5.7.1 Spam"),
            ("blank queue id", "Spam", " \r\n", "550 5.7.1 Spam"),
            (
                "percent doubled",
                "100% spam",
                "Q",
                "550 5.7.1 100%% spam (Q)",
            ),
            ("percent in queue id", "x", "A%B", "550 5.7.1 x (A%%B)"),
            (
                "CRLF",
                "line one\r\n550 injected",
                "Q",
                "550 5.7.1 line one 550 injected (Q)",
            ),
            ("NUL and tab", "a\0b\tc", "Q", "550 5.7.1 a b c (Q)"),
            (
                "runs collapse and trim",
                "  a \r\n\r\n  b  ",
                "Q",
                "550 5.7.1 a b (Q)",
            ),
            (
                "non-ASCII",
                "Späm ✉ score",
                "Q",
                "550 5.7.1 Sp?m ? score (Q)",
            ),
            (
                "no-break space",
                "a\u{a0}b\u{2028}c",
                "Q",
                "550 5.7.1 a b c (Q)",
            ),
            ("DEL and C1", "a\u{7f}b\u{85}c", "Q", "550 5.7.1 a b c (Q)"),
            ("empty reason", "", "Q", "550 5.7.1 Reason Unspecified (Q)"),
            (
                "blank reason",
                "\r\n\0",
                "Q",
                "550 5.7.1 Reason Unspecified (Q)",
            ),
        ];
        for (name, reason, queue_id, expected) in table {
            assert_eq!(
                smtp_reply(Action::Reject, reason, queue_id).unwrap(),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn long_reason_is_cut_and_keeps_the_queue_id() {
        let reply = smtp_reply(Action::Tempfail, &"x".repeat(2000), "4jZBMT31Pyz1TVqc").unwrap();
        assert_eq!(reply.len(), MAX_REPLY_LEN);
        assert!(reply.ends_with("x... (4jZBMT31Pyz1TVqc)"), "{reply}");
        assert!(reply.starts_with("451 4.7.1 xxx"));
    }

    #[test]
    fn reason_of_exactly_the_budget_is_not_cut() {
        let budget = MAX_REPLY_LEN - "550 5.7.1 ".len() - " (Q)".len();
        let reply = smtp_reply(Action::Reject, &"y".repeat(budget), "Q").unwrap();
        assert_eq!(reply.len(), MAX_REPLY_LEN);
        assert!(!reply.contains("..."));
        let longer = smtp_reply(Action::Reject, &"y".repeat(budget + 1), "Q").unwrap();
        assert_eq!(longer.len(), MAX_REPLY_LEN);
        assert!(longer.ends_with("y... (Q)"));
    }

    #[test]
    fn cut_never_splits_a_doubled_percent() {
        for n in 240..260 {
            let reason = format!("{}{}", "a".repeat(n), "%".repeat(400));
            let reply = smtp_reply(Action::Reject, &reason, "").unwrap();
            assert!(reply.len() <= MAX_REPLY_LEN);
            let body = reply.trim_end_matches("...");
            assert_eq!(body.matches('%').count() % 2, 0, "{reply}");
        }
    }

    #[test]
    fn quarantine_reason_is_clean_text() {
        let table = [
            ("held by %{lua}\r\n", "held by %{lua}"),
            ("a\0b", "a b"),
            ("Grüße", "Gr??e"),
            ("", UNSPECIFIED_REASON),
            (" \t ", UNSPECIFIED_REASON),
        ];
        for (reason, expected) in table {
            assert_eq!(quarantine_reason(reason), expected, "{reason:?}");
        }
        let long = quarantine_reason(&"z ".repeat(1000));
        assert_eq!(long.len(), MAX_REPLY_LEN);
        assert!(long.ends_with("z..."));
        let spaced = quarantine_reason(&format!("{} tail", "w".repeat(506)));
        assert_eq!(
            spaced,
            format!("{}...", "w".repeat(506)),
            "no space before the mark"
        );
    }

    #[test]
    fn long_queue_id_is_bounded() {
        let reply = smtp_reply(Action::Reject, "Spam", &"Q".repeat(500)).unwrap();
        assert_eq!(
            reply,
            format!("550 5.7.1 Spam ({})", "Q".repeat(MAX_QUEUE_ID_LEN))
        );
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use proptest::prelude::*;

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[%\r\n\0 \ta-z✉ä]{0,700}",
            prop::collection::vec(
                prop::sample::select(vec!["%", "\r\n", "\0", " ", "x", "é"]),
                0..400
            )
            .prop_map(|parts| parts.concat()),
        ]
    }

    /// True when every `%` is part of a `%%` pair, read left to right.
    fn percents_paired(text: &str) -> bool {
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c == '%' && chars.next() != Some('%') {
                return false;
            }
        }
        true
    }

    proptest! {
        #[test]
        fn reply_is_always_safe(
            action in prop::sample::select(Action::ALL.to_vec()),
            reason in text(),
            queue_id in text(),
        ) {
            let Some(reply) = smtp_reply(action, &reason, &queue_id) else {
                prop_assert!(matches!(action, Action::Permit | Action::Discard | Action::Quarantine));
                return Ok(());
            };
            prop_assert!(reply.len() <= MAX_REPLY_LEN, "{} bytes", reply.len());
            prop_assert!(reply.is_ascii());
            prop_assert!(!reply.contains(['\r', '\n', '\0']));
            prop_assert!(!reply.chars().any(|c| c.is_ascii_control()));
            prop_assert!(percents_paired(&reply), "{}", reply);
            prop_assert!(!reply.contains("  "));
            prop_assert!(reply.starts_with("550 5.7.1 ") || reply.starts_with("451 4.7.1 "));
        }

        #[test]
        fn reply_with_any_status_is_always_safe(
            action in prop::sample::select(Action::ALL.to_vec()),
            status in prop_oneof![text(), "[245]\\.[0-9]{1,4}\\.[0-9]{1,4}"],
            reason in text(),
        ) {
            let Some(reply) = smtp_reply_with_status(action, Some(&status), &reason, "Q") else {
                return Ok(());
            };
            prop_assert!(reply.len() <= MAX_REPLY_LEN);
            prop_assert!(reply.is_ascii() && !reply.chars().any(|c| c.is_ascii_control()));
            prop_assert!(percents_paired(&reply), "{}", reply);
            let (basic, rest) = reply.split_once(' ').unwrap();
            let class = if action == Action::Reject { "5" } else { "4" };
            prop_assert_eq!(basic, if action == Action::Reject { "550" } else { "451" });
            let used = rest.split(' ').next().unwrap();
            prop_assert!(used.starts_with(class) && is_enhanced_status(used), "{}", reply);
        }

        #[test]
        fn quarantine_reason_is_always_safe(reason in text()) {
            let text = quarantine_reason(&reason);
            prop_assert!(!text.is_empty());
            prop_assert!(text.len() <= MAX_REPLY_LEN);
            prop_assert!(text.is_ascii());
            prop_assert!(!text.chars().any(|c| c.is_ascii_control()));
        }

        #[test]
        fn plain_queue_id_is_kept(reason in text(), queue_id in "[0-9A-Za-z]{1,20}") {
            let reply = smtp_reply(Action::Reject, &reason, &queue_id).unwrap();
            let suffix = format!(" ({queue_id})");
            prop_assert!(reply.ends_with(&suffix), "{}", reply);
        }
    }
}
