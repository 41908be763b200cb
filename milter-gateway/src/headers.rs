//! The changes made to a message at end of message (spec/overview.md §4.6), as milter
//! modifications: `add-header` lines (with `[U]`), modules' header and envelope changes, the
//! missing Message-ID, and the cluegetter id header.
//!
//! Pure: [`modifications`] turns the message, the configuration, the verdict's variables and
//! the module results into the list of [`Response`]s to send before the final reply.

use std::collections::{BTreeMap, BTreeSet};

use platform::config::Config;
use wire::CheckResult;

use crate::milter::Response;
use crate::session::FinishedMessage;
use crate::verdict::{self, Vars};

/// Header values we send: no CR, LF or NUL (Postfix would refuse or split them), and
/// whitespace runs collapsed so folding cannot be injected.
fn clean_value(value: &str) -> String {
    value
        .split(|c: char| c.is_whitespace() || c == '\0' || c.is_control())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| (33..=126).contains(&b) && b != b':')
}

/// Deletes every occurrence of `name` in `message`'s headers: one SMFIR_CHGHEADER with an
/// empty value per occurrence, highest index first, so that whatever the MTA does with the
/// indexes of later headers, each deletion names the header it means (spec gap C.21).
fn delete_all(message: &FinishedMessage, name: &str, out: &mut Vec<Response>) {
    let count = message
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .count();
    for index in (1..=count).rev() {
        out.push(Response::ChangeHeader {
            index: u32::try_from(index).unwrap_or(u32::MAX),
            name: name.to_owned(),
            value: String::new(),
        });
    }
}

/// The 1-based occurrence of `name` that `index` means (1 the first, -1 the last), if the
/// message has it, with the name as that header spells it (Postfix matches names
/// case-insensitively but writes a changed header with the name it is given). Counting from
/// the end needs every header: not when they were cut.
fn occurrence<'m>(message: &'m FinishedMessage, name: &str, index: i64) -> Option<(u32, &'m str)> {
    let same: Vec<&str> = message
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.name.as_str())
        .collect();
    let count = i64::try_from(same.len()).ok()?;
    let from_start = if index > 0 {
        index
    } else if index < 0 && !message.headers_truncated {
        count + 1 + index
    } else {
        return None;
    };
    if !(1..=count).contains(&from_start) {
        return None;
    }
    let spelled = same.get(usize::try_from(from_start - 1).ok()?)?;
    Some((u32::try_from(from_start).ok()?, spelled))
}

/// The generated Message-ID: `<unixtime.queueid.cluegetter@host>`, host being the MTA's name
/// (Postfix's `j`) or, when Postfix did not send it, this machine's (ClueGetter's inverted
/// condition left it empty, spec gap C.22).
pub fn generated_message_id(message: &FinishedMessage) -> String {
    let host = if message.session.mta_hostname.is_empty() {
        std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_owned())
    } else {
        message.session.mta_hostname.clone()
    };
    let queue_id = if message.queue_id.is_empty() {
        message.id.to_string()
    } else {
        message.queue_id.clone()
    };
    format!(
        "<{}.{}.cluegetter@{}>",
        message.received_at.timestamp(),
        queue_id,
        host
    )
}

/// The modifications to send, in order: deletions of every occurrence, changes and removals
/// of one occurrence, insertions, additions, then envelope changes.
/// `inserted_message_id` is the Message-ID to add when the message has none (see
/// [`generated_message_id`]); `None` when none is to be added.
pub fn modifications(
    config: &Config,
    message: &FinishedMessage,
    results: &[CheckResult],
    vars: &Vars<'_>,
    inserted_message_id: Option<&str>,
) -> Vec<Response> {
    let mut out = Vec::new();

    // 1. deletions: [U] lines and modules' remove_headers, each name once
    let mut deleted: BTreeSet<String> = BTreeSet::new();
    let unique_names = config
        .add_header
        .iter()
        .filter(|h| h.unique)
        .map(|h| h.name.clone());
    let module_removals = results
        .iter()
        .flat_map(|r| r.changes.remove_headers.iter().cloned());
    for name in unique_names.chain(module_removals) {
        if valid_name(&name) && deleted.insert(name.to_ascii_lowercase()) {
            delete_all(message, &name, &mut out);
        }
    }

    // 2. one occurrence changed, or removed (empty value), as modules ask, counted in the
    //    headers as received. Per name the highest occurrence goes first, so that removing one
    //    never shifts an index still to come; for one occurrence the last module asking wins.
    let mut changes: BTreeMap<(String, u32), (String, String)> = BTreeMap::new();
    for change in results.iter().flat_map(|r| &r.changes.change_headers) {
        let lower = change.name.to_ascii_lowercase();
        if !valid_name(&change.name) || deleted.contains(&lower) {
            continue;
        }
        match occurrence(message, &change.name, change.index) {
            Some((index, spelled)) => {
                changes.insert(
                    (lower, index),
                    (spelled.to_owned(), clean_value(&change.value)),
                );
            }
            None => tracing::debug!(
                message_id = %message.id,
                header = %change.name,
                index = change.index,
                "a module asked to change a header occurrence the message does not have"
            ),
        }
    }
    for ((_, index), (name, value)) in changes.into_iter().rev() {
        out.push(Response::ChangeHeader { index, name, value });
    }

    // 3. insertions, in the order asked
    for result in results {
        for header in &result.changes.insert_headers {
            let value = clean_value(&header.value);
            if let Ok(index) = u32::try_from(header.index)
                && valid_name(&header.name)
                && !value.is_empty()
            {
                out.push(Response::InsertHeader {
                    index,
                    name: header.name.clone(),
                    value,
                });
            }
        }
    }

    // 4. additions: configured lines (once per recipient with %{recipient}), module headers,
    //    the Message-ID, the cluegetter id
    let add = |name: &str, value: String, out: &mut Vec<Response>| {
        let value = clean_value(&value);
        if valid_name(name) && !value.is_empty() {
            out.push(Response::AddHeader {
                name: name.to_owned(),
                value,
            });
        }
    };
    for line in &config.add_header {
        if line.template.contains("%{recipient}") {
            for recipient in &message.recipients {
                let value = verdict::substitute(&line.template, &vars.with_recipient(recipient));
                add(&line.name, value, &mut out);
            }
        } else {
            add(
                &line.name,
                verdict::substitute(&line.template, vars),
                &mut out,
            );
        }
    }
    for result in results {
        for header in &result.changes.add_headers {
            add(&header.name, header.value.clone(), &mut out);
        }
    }
    if let Some(id) = inserted_message_id {
        add("Message-ID", id.to_owned(), &mut out);
    }
    if !config.id_header.is_empty() {
        add(&config.id_header, message.id.to_string(), &mut out);
    }

    // 5. envelope: the last module that asks for a new sender wins; recipients as asked
    if let Some(sender) = results
        .iter()
        .rev()
        .find_map(|r| r.changes.new_sender.clone())
    {
        out.push(Response::ChangeFrom {
            sender: format!("<{}>", clean_value(&sender)),
            args: None,
        });
    }
    for result in results {
        for recipient in &result.changes.add_recipients {
            out.push(Response::AddRecipient(format!(
                "<{}>",
                clean_value(recipient)
            )));
        }
        for recipient in &result.changes.delete_recipients {
            out.push(Response::DeleteRecipient(format!(
                "<{}>",
                clean_value(recipient)
            )));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::Utc;
    use platform::config::AddHeader;
    use uuid::Uuid;
    use wire::{Action, Header, MessageId, MilterChanges, SessionInfo};

    use super::*;

    fn message(headers: &[(&str, &str)]) -> FinishedMessage {
        FinishedMessage {
            id: MessageId::new(),
            session: SessionInfo {
                session_id: Uuid::now_v7(),
                connected_at: Utc::now(),
                client_addr: Some("192.0.2.7".parse().unwrap()),
                client_port: None,
                client_name: String::new(),
                helo: String::new(),
                sasl_username: String::new(),
                sasl_method: String::new(),
                sasl_sender: String::new(),
                tls: None,
                mta_hostname: "mx.example.net".into(),
                daemon_name: String::new(),
            },
            queue_id: "4jZB211qk4z6XPl".into(),
            sender: "a@example.org".into(),
            recipients: vec!["b@example.net".into(), "c@example.net".into()],
            rejected_recipients: vec![],
            headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
            headers_truncated: false,
            body: vec![],
            body_truncated: false,
            body_size: 0,
            body_hash: String::new(),
            received_at: Utc::now(),
        }
    }

    fn config(lines: &[&str]) -> Config {
        Config {
            add_header: lines.iter().map(|l| AddHeader::parse(l).unwrap()).collect(),
            id_header: String::new(),
            ..Config::default()
        }
    }

    fn vars() -> Vars<'static> {
        Vars {
            client_ip: "192.0.2.7",
            hostname: "mx.example.net",
            reject_score: 3.5,
            spam_flag: false,
            recipient: "",
        }
    }

    #[test]
    fn c21_unique_deletes_every_occurrence_highest_index_first() {
        let m = message(&[
            ("X-Spam", "a"),
            ("Subject", "s"),
            ("x-spam", "b"),
            ("X-SPAM", "c"),
        ]);
        let mods = modifications(
            &config(&["[U] X-Spam: %{rejectScore}"]),
            &m,
            &[],
            &vars(),
            None,
        );
        assert_eq!(
            mods,
            vec![
                Response::ChangeHeader {
                    index: 3,
                    name: "X-Spam".into(),
                    value: String::new()
                },
                Response::ChangeHeader {
                    index: 2,
                    name: "X-Spam".into(),
                    value: String::new()
                },
                Response::ChangeHeader {
                    index: 1,
                    name: "X-Spam".into(),
                    value: String::new()
                },
                Response::AddHeader {
                    name: "X-Spam".into(),
                    value: "3.50".into()
                },
            ]
        );
    }

    #[test]
    fn recipient_headers_are_added_once_per_recipient_and_empty_values_only_delete() {
        let m = message(&[("X-Foo", "old")]);
        let mods = modifications(
            &config(&[
                "[U] X-Original-To: %{recipient}",
                "[U] X-Foo:",
                "X-Scanned: at %{hostname}",
            ]),
            &m,
            &[],
            &vars(),
            None,
        );
        assert_eq!(
            mods,
            vec![
                Response::ChangeHeader {
                    index: 1,
                    name: "X-Foo".into(),
                    value: String::new()
                },
                Response::AddHeader {
                    name: "X-Original-To".into(),
                    value: "b@example.net".into()
                },
                Response::AddHeader {
                    name: "X-Original-To".into(),
                    value: "c@example.net".into()
                },
                Response::AddHeader {
                    name: "X-Scanned".into(),
                    value: "at mx.example.net".into()
                },
            ]
        );
    }

    #[test]
    fn module_changes_and_ids_are_applied() {
        let m = message(&[("X-Spam", "yes")]);
        let mut result = CheckResult::error(m.id, "rspamd", "x");
        result.action = Action::Reject;
        result.changes = MilterChanges {
            add_headers: vec![Header::new("X-Rspamd", "checked\r\nInjected: yes")],
            remove_headers: vec!["X-Spam".into()],
            new_sender: Some("srs0=x@example.org".into()),
            add_recipients: vec!["d@example.net".into()],
            delete_recipients: vec!["b@example.net".into()],
            ..MilterChanges::default()
        };
        let mut cfg = config(&[]);
        cfg.id_header = "X-Cluegetter-Id".into();
        let mods = modifications(&cfg, &m, &[result], &vars(), Some("<1.q.cluegetter@mx>"));
        assert_eq!(
            mods,
            vec![
                Response::ChangeHeader {
                    index: 1,
                    name: "X-Spam".into(),
                    value: String::new()
                },
                Response::AddHeader {
                    name: "X-Rspamd".into(),
                    value: "checked Injected: yes".into()
                },
                Response::AddHeader {
                    name: "Message-ID".into(),
                    value: "<1.q.cluegetter@mx>".into()
                },
                Response::AddHeader {
                    name: "X-Cluegetter-Id".into(),
                    value: m.id.to_string()
                },
                Response::ChangeFrom {
                    sender: "<srs0=x@example.org>".into(),
                    args: None
                },
                Response::AddRecipient("<d@example.net>".into()),
                Response::DeleteRecipient("<b@example.net>".into()),
            ]
        );
    }

    fn change(name: &str, index: i64, value: &str) -> wire::HeaderAt {
        wire::HeaderAt {
            name: name.into(),
            index,
            value: value.into(),
        }
    }

    fn asking(changes: MilterChanges) -> CheckResult {
        CheckResult {
            changes,
            ..CheckResult::error(MessageId::new(), "rspamd", "x")
        }
    }

    #[test]
    fn one_occurrence_is_changed_or_removed_highest_first_and_counted_from_either_end() {
        let m = message(&[
            ("X-Multi", "one"),
            ("Subject", "s"),
            ("x-multi", "two"),
            ("X-MULTI", "three"),
            ("X-Gone", "g"),
        ]);
        let first = asking(MilterChanges {
            change_headers: vec![
                change("X-Multi", 1, "changed"),
                change("X-Multi", 2, ""),
                change("X-Multi", -1, "replaced\r\n by the second module"),
                change("X-Multi", 4, "no fourth"),
                change("X-Multi", -4, "no such"),
                change("X-Multi", 0, "no zeroth"),
                change("X-Absent", 1, "absent"),
                change("X-Gone", 1, "removed entirely anyway"),
                change("Bad:Name", 1, "x"),
            ],
            remove_headers: vec!["X-Gone".into()],
            ..MilterChanges::default()
        });
        let second = asking(MilterChanges {
            change_headers: vec![change("x-multi", 3, "last")],
            ..MilterChanges::default()
        });
        let mods = modifications(&config(&[]), &m, &[first, second], &vars(), None);
        assert_eq!(
            mods,
            vec![
                Response::ChangeHeader {
                    index: 1,
                    name: "X-Gone".into(),
                    value: String::new()
                },
                Response::ChangeHeader {
                    index: 3,
                    name: "X-MULTI".into(),
                    value: "last".into()
                },
                Response::ChangeHeader {
                    index: 2,
                    name: "x-multi".into(),
                    value: String::new()
                },
                Response::ChangeHeader {
                    index: 1,
                    name: "X-Multi".into(),
                    value: "changed".into()
                },
            ]
        );
    }

    #[test]
    fn counting_from_the_end_needs_every_header() {
        let mut m = message(&[("X-Multi", "one"), ("X-Multi", "two")]);
        m.headers_truncated = true;
        let result = asking(MilterChanges {
            change_headers: vec![change("X-Multi", -1, ""), change("X-Multi", 1, "kept")],
            ..MilterChanges::default()
        });
        let mods = modifications(&config(&[]), &m, &[result], &vars(), None);
        assert_eq!(
            mods,
            vec![Response::ChangeHeader {
                index: 1,
                name: "X-Multi".into(),
                value: "kept".into()
            }]
        );
    }

    #[test]
    fn insertions_come_after_changes_and_before_additions() {
        let m = message(&[("Subject", "s")]);
        let result = asking(MilterChanges {
            insert_headers: vec![
                change("Authentication-Results", 0, "mx; spf=pass"),
                change("X-Empty", 0, ""),
                change("X-Negative", -1, "no"),
            ],
            add_headers: vec![Header::new("X-Added", "a")],
            change_headers: vec![change("Subject", 1, "S")],
            ..MilterChanges::default()
        });
        let mods = modifications(&config(&[]), &m, &[result], &vars(), None);
        assert_eq!(
            mods,
            vec![
                Response::ChangeHeader {
                    index: 1,
                    name: "Subject".into(),
                    value: "S".into()
                },
                Response::InsertHeader {
                    index: 0,
                    name: "Authentication-Results".into(),
                    value: "mx; spf=pass".into()
                },
                Response::AddHeader {
                    name: "X-Added".into(),
                    value: "a".into()
                },
            ]
        );
    }

    #[test]
    fn c22_generated_message_id_names_a_host() {
        let mut m = message(&[]);
        let id = generated_message_id(&m);
        assert!(id.ends_with("@mx.example.net>"), "{id}");
        assert!(id.contains(".4jZB211qk4z6XPl.cluegetter@"), "{id}");
        m.session.mta_hostname.clear();
        let id = generated_message_id(&m);
        assert!(!id.ends_with("@>"), "{id}");
    }
}
