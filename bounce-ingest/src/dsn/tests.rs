//! The parser's tests: the golden corpus (`resources/dsn/*.eml`, each with the `.json` it must
//! read to, run with LF and with CRLF line ends), the named boundaries, and property tests.
//!
//! `BLESS=1 cargo test -p bounce-ingest golden` rewrites the `.json` files from the LF run
//! (review the diff); a mismatch writes `<name>.<LF|CRLF>.failed` beside the file.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use super::*;

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("resources/dsn")
}

fn with_lf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'\r' && raw.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(raw[i]);
        i += 1;
    }
    out
}

fn with_crlf(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 20);
    for &b in &with_lf(raw) {
        if b == b'\n' {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

#[test]
fn golden_reports_read_as_expected_with_lf_and_crlf() {
    let bless = std::env::var_os("BLESS").is_some();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    paths.sort();
    let mut ran = 0;
    let mut failed = Vec::new();
    for path in &paths {
        let raw = std::fs::read(path).unwrap();
        let expected_path = path.with_extension("json");
        for (ending, input) in [("LF", with_lf(&raw)), ("CRLF", with_crlf(&raw))] {
            let report = parse(&input, &ParseOptions::default());
            check_invariants(&input, &report);
            let got = serde_json::to_string_pretty(&report).unwrap() + "\n";
            if bless && ending == "LF" {
                std::fs::write(&expected_path, &got).unwrap();
            }
            let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
            let failed_path = path.with_extension(format!("{ending}.failed"));
            if got == expected {
                let _ = std::fs::remove_file(&failed_path);
            } else {
                std::fs::write(&failed_path, &got).unwrap();
                failed.push(failed_path.display().to_string());
            }
            ran += 1;
        }
    }
    assert!(
        ran >= 26,
        "the corpus has 13 reports at least, ran {ran} cases"
    );
    assert!(failed.is_empty(), "mismatches (see the files): {failed:#?}");
}

fn golden(name: &str) -> DeliveryReport {
    let raw = std::fs::read(corpus().join(name)).unwrap();
    parse(&raw, &ParseOptions::default())
}

/// The fields the issue names, spelled out once beside the JSON, for the reports the pipeline
/// depends on.
#[test]
fn postfix_bounce_gives_the_join_keys_and_the_recipient() {
    let report = golden("postfix-bounce.eml");
    assert_eq!(report.status, ParseStatus::Parsed, "{:?}", report.problems);
    assert_eq!(report.kind, ReportKind::DeliveryStatus);
    let per_message = &report.per_message;
    assert_eq!(
        per_message.reporting_mta,
        Some(TypedValue::new("dns", "mx.cluegetter.test"))
    );
    assert_eq!(per_message.queue_id, "4jZC0P6BDPz6XPm");
    assert_eq!(
        per_message.sender,
        Some(TypedValue::new("rfc822", "sender@example.org"))
    );
    assert_eq!(
        per_message.arrival_date.map(|d| d.to_rfc3339()),
        Some("2026-11-25T09:12:02+00:00".into())
    );
    let [recipient] = report.recipients.as_slice() else {
        panic!("one recipient: {:?}", report.recipients);
    };
    assert_eq!(
        recipient.final_recipient,
        Some(TypedValue::new("rfc822", "nosuchuser@cluegetter.test"))
    );
    assert_eq!(recipient.action, Some(DsnAction::Failed));
    assert_eq!(recipient.status, "5.1.1");
    assert_eq!(
        recipient.diagnostic_code,
        Some(TypedValue::new("x-postfix", "unknown user: \"nosuchuser\""))
    );
    let returned = &report.returned;
    assert!(returned.present);
    assert_eq!(
        returned.message_id,
        "<20261125091202.041233@client.example.org>"
    );
    assert_eq!(
        returned.cluegetter_id.map(|id| id.to_string()),
        Some("019ab9c2-7d5e-7a31-8f00-2b6c1d3e4f50".into())
    );
}

#[test]
fn d27_blank_lines_with_crlf_split_the_recipient_blocks() {
    let body = b"Reporting-MTA: dns; a\r\n\r\nFinal-Recipient: rfc822; x@y\r\nAction: failed\r\nStatus: 5.0.0\r\n \t \r\nFinal-Recipient: rfc822; z@y\r\nAction: delayed\r\nStatus: 4.0.0\r\n";
    let blocks: Vec<&[u8]> = split_blocks(body).collect();
    assert_eq!(blocks.len(), 3, "{blocks:?}");
    let mut reader = Reader {
        report: DeliveryReport::default(),
        problems_left_out: 0,
    };
    reader.read_delivery_status(body, ReportKind::DeliveryStatus);
    let actions: Vec<_> = reader.report.recipients.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        vec![Some(DsnAction::Failed), Some(DsnAction::Delayed)]
    );
    assert!(
        reader.report.problems.is_empty(),
        "{:?}",
        reader.report.problems
    );
}

#[test]
fn d27_a_plain_text_report_is_kept_as_unparseable_with_its_reason() {
    let report = golden("qmail-plain-text.eml");
    assert_eq!(report.status, ParseStatus::Unparseable);
    assert_eq!(
        report.problems,
        vec!["no delivery-status part: the report is text/plain"]
    );
    // the quoted headers still give the join keys
    assert_eq!(
        report.returned.message_id,
        "<20261125140210.12339.qmail@mail.example.com>"
    );
    assert!(report.returned.cluegetter_id.is_some());
}

#[test]
fn folded_values_are_unfolded_to_single_spaces() {
    assert_eq!(unfold("a\r\n\tb  \n   c\r\n"), "a b c");
    assert_eq!(unfold("  a\rb "), "a b");
    assert_eq!(unfold("one"), "one");
    let report = golden("folded-diagnostic-code.eml");
    let diagnostic = report.recipients[0].diagnostic_code.clone().unwrap();
    assert_eq!(diagnostic.kind, "smtp");
    assert_eq!(
        diagnostic.value,
        "550-5.7.1 [192.0.2.33] Our system has detected that this message is likely \
         unsolicited mail. To reduce the amount of spam sent to our users, this message has \
         been blocked. 550 5.7.1 Please visit https://support.example.net/unsolicited for \
         more information."
    );
}

#[test]
fn typed_fields_split_at_the_first_semicolon_only_after_a_type() {
    assert_eq!(typed("rfc822;a@b"), TypedValue::new("rfc822", "a@b"));
    assert_eq!(typed("RFC822 ;  a@b "), TypedValue::new("rfc822", "a@b"));
    assert_eq!(typed("smtp; 550 x; y"), TypedValue::new("smtp", "550 x; y"));
    assert_eq!(
        typed("550 user unknown; mailbox gone"),
        TypedValue::new("", "550 user unknown; mailbox gone")
    );
    assert_eq!(typed("a@b"), TypedValue::new("", "a@b"));
    assert_eq!(typed(";x"), TypedValue::new("", ";x"));
}

#[test]
fn status_codes_are_found_in_their_field() {
    for good in ["5.1.1", "4.4.7", "2.0.0", "5.1.10", "5.999.999"] {
        assert!(is_status_code(good), "{good}");
    }
    for bad in ["6.1.1", "5.1", "5.1.1.1", "5..1", "5.1.1000", "x.1.1", ""] {
        assert!(!is_status_code(bad), "{bad}");
    }
    let mut reader = Reader {
        report: DeliveryReport::default(),
        problems_left_out: 0,
    };
    assert_eq!(reader.status("5.7.1 (delivery not authorized)"), "5.7.1");
    assert_eq!(reader.status("(550) 5.1.1"), "5.1.1");
    assert!(reader.report.problems.is_empty());
    assert_eq!(reader.status("permanent failure"), "permanent failure");
    assert_eq!(reader.report.problems.len(), 1);
}

#[test]
fn utf8_escapes_decode_to_printable_characters_only() {
    assert_eq!(decode_unicode_escapes("\\x{674E}\\x{5A1C}@x"), "李娜@x");
    assert_eq!(decode_unicode_escapes("a\\x{20}b"), "a\\x{20}b");
    assert_eq!(decode_unicode_escapes("a\\x{D800}b"), "a\\x{D800}b");
    assert_eq!(decode_unicode_escapes("a\\x{1234567}b"), "a\\x{1234567}b");
    assert_eq!(decode_unicode_escapes("\\x{41"), "\\x{41");
    assert_eq!(decode_unicode_escapes("\\x{}"), "\\x{}");
}

#[test]
fn dates_are_read_tolerantly_and_to_utc() {
    let date = parse_date("Tue, 25 Nov 2026 04:10:07 -0800 (PST)").unwrap();
    assert_eq!(date.to_rfc3339(), "2026-11-25T12:10:07+00:00");
    assert_eq!(
        parse_date("25 Nov 2026 14:02:11 -0000").map(|d| d.to_rfc3339()),
        Some("2026-11-25T14:02:11+00:00".into())
    );
    assert_eq!(parse_date("yesterday"), None);
    assert_eq!(parse_date(""), None);
}

#[test]
fn values_are_bounded() {
    let long = format!(
        "Reporting-MTA: dns; {}\n\nFinal-Recipient: rfc822; a@b\nAction: failed\nStatus: 5.0.0\nDiagnostic-Code: smtp; {}\n",
        "m".repeat(10_000),
        "é".repeat(10_000)
    );
    let mut reader = Reader {
        report: DeliveryReport::default(),
        problems_left_out: 0,
    };
    reader.read_delivery_status(long.as_bytes(), ReportKind::DeliveryStatus);
    let report = reader.finish();
    let mta = report.per_message.reporting_mta.unwrap();
    assert!(mta.value.len() <= MAX_FIELD_BYTES);
    let diagnostic = report.recipients[0].diagnostic_code.clone().unwrap();
    assert!(diagnostic.value.len() <= MAX_FIELD_BYTES);
    assert!(diagnostic.value.chars().all(|c| c == 'é'));
}

#[test]
fn recipient_blocks_beyond_the_bound_are_counted_not_read() {
    let mut body = String::from("Reporting-MTA: dns; a\n");
    for i in 0..MAX_RECIPIENTS + 5 {
        body.push_str(&format!(
            "\nFinal-Recipient: rfc822; r{i}@x\nAction: failed\nStatus: 5.0.0\n"
        ));
    }
    let mut reader = Reader {
        report: DeliveryReport::default(),
        problems_left_out: 0,
    };
    reader.read_delivery_status(body.as_bytes(), ReportKind::DeliveryStatus);
    assert_eq!(reader.report.recipients.len(), MAX_RECIPIENTS);
    assert_eq!(
        reader.report.problems,
        vec![format!(
            "5 more recipient blocks than the {MAX_RECIPIENTS} read"
        )]
    );
}

#[test]
fn problems_are_bounded() {
    let mut body = String::from("Reporting-MTA: dns; a\n");
    for _ in 0..50 {
        body.push_str("\nFinal-Recipient: rfc822; r@x\nAction: exploded\nStatus: 5.0.0\n");
    }
    let mut reader = Reader {
        report: DeliveryReport::default(),
        problems_left_out: 0,
    };
    reader.read_delivery_status(body.as_bytes(), ReportKind::DeliveryStatus);
    let report = reader.finish();
    assert_eq!(report.problems.len(), MAX_PROBLEMS + 1);
    assert_eq!(report.problems[MAX_PROBLEMS], "30 more problems");
}

#[test]
fn the_returned_message_s_own_delivery_status_is_not_this_report_s() {
    // a bounce of a bounce: the returned message is itself a report
    let inner = std::fs::read_to_string(corpus().join("postfix-bounce.eml")).unwrap();
    let outer = format!(
        "From: MAILER-DAEMON@b.example\nContent-Type: multipart/mixed; boundary=\"x\"\n\n--x\n\
         Content-Type: text/plain\n\nsorry\n--x\nContent-Type: message/rfc822\n\n{inner}\n--x--\n"
    );
    let report = parse(outer.as_bytes(), &ParseOptions::default());
    assert_eq!(report.kind, ReportKind::Other);
    assert!(report.recipients.is_empty());
    assert!(report.returned.present);
    assert_eq!(
        report.returned.message_id,
        "<4jZC0Q2nYkz6XPq@mx.cluegetter.test>"
    );
}

#[test]
fn the_id_header_is_configurable_and_can_be_off() {
    let raw = std::fs::read(corpus().join("postfix-bounce.eml")).unwrap();
    let renamed = String::from_utf8(raw.clone())
        .unwrap()
        .replace("X-Cluegetter-Id:", "X-Our-Id:");
    let report = parse(
        renamed.as_bytes(),
        &ParseOptions {
            id_header: "x-our-id",
        },
    );
    assert!(report.returned.cluegetter_id.is_some());
    let report = parse(&raw, &ParseOptions { id_header: "" });
    assert_eq!(report.returned.cluegetter_id, None);
    assert_eq!(report.status, ParseStatus::Parsed);
}

mod proptests {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    struct Recipient {
        address: String,
        action: DsnAction,
        status: String,
        diagnostic: Vec<String>,
    }

    fn recipient() -> impl Strategy<Value = Recipient> {
        (
            "[a-z0-9][a-z0-9.+_-]{0,15}@[a-z0-9-]{1,12}\\.(test|example|invalid)",
            prop_oneof![
                Just(DsnAction::Failed),
                Just(DsnAction::Delayed),
                Just(DsnAction::Delivered),
                Just(DsnAction::Relayed),
                Just(DsnAction::Expanded),
            ],
            ("[245]", 0_u16..1000, 0_u16..1000).prop_map(|(c, s, d)| format!("{c}.{s}.{d}")),
            proptest::collection::vec("[!-~]{1,20}", 1..30),
        )
            .prop_map(|(address, action, status, diagnostic)| Recipient {
                address,
                action,
                status,
                diagnostic,
            })
    }

    /// `words` as a field value folded after any of its words (`fold[i]` says whether to
    /// break before word `i`), with one of several continuation indents.
    fn folded(words: &[String], folds: &[bool], eol: &str) -> String {
        let mut out = String::new();
        for (i, word) in words.iter().enumerate() {
            if i > 0 {
                if folds.get(i).copied().unwrap_or(false) {
                    out.push_str(eol);
                    out.push_str(["\t", " ", "    ", " \t "][i % 4]);
                } else {
                    out.push(' ');
                }
            }
            out.push_str(word);
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn any_bytes_parse_within_the_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            fuzz_dsn(&bytes);
        }

        #[test]
        fn header_like_text_parses_within_the_bounds(
            text in "([A-Za-z-]{1,20}:[ \t]?[ -~]{0,40}(\r?\n[ \t][ -~]{0,20})?\r?\n|\r?\n|--B\r?\n|Content-Type: message/(delivery-status|rfc822)\r?\n){0,40}"
        ) {
            fuzz_dsn(text.as_bytes());
        }

        #[test]
        fn generated_reports_read_back(
            queue_id in "[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{12,16}",
            host in "[a-z]{1,10}(\\.[a-z]{1,10}){1,3}",
            recipients in proptest::collection::vec(recipient(), 1..6),
            folds in proptest::collection::vec(any::<bool>(), 30),
            crlf in any::<bool>(),
            id in any::<u128>(),
        ) {
            let eol = if crlf { "\r\n" } else { "\n" };
            let id = uuid::Uuid::from_u128(id);
            let mut text = [
                "From: MAILER-DAEMON@x.example".to_owned(),
                "MIME-Version: 1.0".to_owned(),
                "Content-Type: multipart/report; report-type=delivery-status;".to_owned(),
                "\tboundary=\"b0und4ry\"".to_owned(),
                String::new(),
                "--b0und4ry".to_owned(),
                "Content-Type: message/delivery-status".to_owned(),
                String::new(),
                format!("Reporting-MTA: dns; {host}"),
                format!("X-Postfix-Queue-ID: {queue_id}"),
            ]
            .join(eol);
            text.push_str(eol);
            for recipient in &recipients {
                text.push_str(eol);
                text.push_str(&format!("Final-Recipient: rfc822; {}{eol}", recipient.address));
                text.push_str(&format!("Action: {}{eol}", recipient.action.as_str()));
                text.push_str(&format!("Status: {}{eol}", recipient.status));
                text.push_str(&format!(
                    "Diagnostic-Code: smtp; {}{eol}",
                    folded(&recipient.diagnostic, &folds, eol)
                ));
            }
            text.push_str(&[
                String::new(),
                "--b0und4ry".to_owned(),
                "Content-Type: text/rfc822-headers".to_owned(),
                String::new(),
                "Message-ID: <m@x.example>".to_owned(),
                format!("X-Cluegetter-Id: {id}"),
                String::new(),
                "--b0und4ry--".to_owned(),
                String::new(),
            ].join(eol));

            let report = parse(text.as_bytes(), &ParseOptions::default());
            check_invariants(text.as_bytes(), &report);
            prop_assert_eq!(report.status, ParseStatus::Parsed, "{:?}", report.problems);
            prop_assert_eq!(&report.per_message.queue_id, &queue_id);
            prop_assert_eq!(report.per_message.reporting_mta.clone(), Some(TypedValue::new("dns", host)));
            prop_assert_eq!(report.recipients.len(), recipients.len());
            for (got, want) in report.recipients.iter().zip(&recipients) {
                prop_assert_eq!(got.final_recipient.clone(), Some(TypedValue::new("rfc822", want.address.clone())));
                prop_assert_eq!(got.action, Some(want.action));
                prop_assert_eq!(&got.status, &want.status);
                prop_assert_eq!(got.diagnostic_code.clone(), Some(TypedValue::new("smtp", want.diagnostic.join(" "))));
            }
            prop_assert_eq!(report.returned.cluegetter_id, Some(MessageId(id)));
            prop_assert_eq!(&report.returned.message_id, "<m@x.example>");
        }
    }
}
