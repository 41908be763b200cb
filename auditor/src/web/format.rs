//! Values as the pages and the JSON API show them: times (UTC, to the second), periods
//! (`1h30m`), addresses (`<>` for the null sender), stored bytes as text, header values with
//! their RFC 2047 encoded words decoded ([`decode_header`]), and the one HTML escaper of every
//! template ([`VisibleHtml`]: HTML escaped, and bidirectional controls shown, never obeyed).

use std::fmt;

use chrono::{DateTime, Utc};
use mail_parser::parsers::MessageStream;
use mail_parser::{Addr, Address, HeaderValue};

/// Times as the pages and the API show them: UTC, to the second.
pub fn fmt_date(date: DateTime<Utc>) -> String {
    date.format("%Y-%m-%d %H:%M:%S").to_string()
}

pub fn fmt_opt_date(date: Option<DateTime<Utc>>) -> String {
    date.map(fmt_date).unwrap_or_default()
}

/// `3600` → `1h`, `90` → `1m30s`.
pub fn fmt_period(secs: u32) -> String {
    let mut secs = u64::from(secs);
    if secs == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// `local@domain`, or `<>` for the null sender.
pub fn address(local: &str, domain: &str) -> String {
    match (local.is_empty(), domain.is_empty()) {
        (true, true) => "<>".to_owned(),
        (_, true) => local.to_owned(),
        _ => format!("{local}@{domain}"),
    }
}

/// Bytes as text for display (headers and bodies are binary in the archive).
pub fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The headers whose values are shown decoded: unstructured text and address lists, where
/// RFC 2047 encoded words (`=?UTF-8?B?…?=`) may appear.
const ADDRESS_HEADERS: &[&str] = &[
    "from",
    "to",
    "cc",
    "bcc",
    "reply-to",
    "sender",
    "resent-from",
    "resent-to",
    "resent-cc",
    "resent-sender",
];
const TEXT_HEADERS: &[&str] = &["subject", "comments", "keywords", "thread-topic"];

/// The value of header `name` as a reader wants it: encoded words decoded (mail-parser's
/// decoders, every charset it knows) in the headers that may hold them; `None` when there is
/// nothing to decode or the header is not one of those. Folding is undone.
pub fn decode_header(name: &str, value: &str) -> Option<String> {
    if !value.contains("=?") {
        return None;
    }
    let name = name.trim().to_ascii_lowercase();
    let decoded = if ADDRESS_HEADERS.contains(&name.as_str()) {
        decode_addresses(value).or_else(|| decode_text(value))
    } else if TEXT_HEADERS.contains(&name.as_str()) {
        decode_text(value)
    } else {
        None
    };
    decoded.filter(|decoded| decoded != value)
}

/// An unstructured value (a Subject) with its encoded words decoded; the value itself when it
/// has none or they cannot be read.
pub fn decode_subject(value: &str) -> String {
    decode_text(value).unwrap_or_else(|| value.to_owned())
}

/// The value on one line, ended as mail-parser's header parsers expect it.
fn one_line(value: &str) -> Vec<u8> {
    let mut bytes: Vec<u8> = value
        .bytes()
        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b })
        .collect();
    bytes.push(b'\n');
    bytes
}

fn decode_text(value: &str) -> Option<String> {
    if !value.contains("=?") {
        return None;
    }
    let bytes = one_line(value);
    match MessageStream::new(&bytes).parse_unstructured() {
        HeaderValue::Text(text) => Some(text.into_owned()),
        _ => None,
    }
}

fn decode_addresses(value: &str) -> Option<String> {
    let bytes = one_line(value);
    let shown = |addr: &Addr<'_>| -> Option<String> {
        match (addr.name.as_deref(), addr.address.as_deref()) {
            (Some(name), Some(address)) => Some(format!("{name} <{address}>")),
            (None, Some(address)) => Some(address.to_owned()),
            (Some(name), None) => Some(name.to_owned()),
            (None, None) => None,
        }
    };
    let list = |addrs: &[Addr<'_>]| -> String {
        addrs
            .iter()
            .filter_map(shown)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let text = match MessageStream::new(&bytes).parse_address() {
        HeaderValue::Address(Address::List(addrs)) => list(&addrs),
        HeaderValue::Address(Address::Group(groups)) => groups
            .iter()
            .map(|group| match group.name.as_deref() {
                Some(name) => format!("{name}: {};", list(&group.addresses)),
                None => list(&group.addresses),
            })
            .collect::<Vec<_>>()
            .join(", "),
        _ => return None,
    };
    (!text.is_empty()).then_some(text)
}

/// Whether `c` is a bidirectional control: the embeddings and overrides (U+202A–U+202E), the
/// isolates (U+2066–U+2069), the marks (U+200E, U+200F, U+061C). Shown as text, they would
/// reorder what a postmaster reads ("Invoice \u{202E}fdp.exe" reads "Invoice exe.pdf").
pub fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// The HTML escaper of every template (`askama.toml`): askama's own escaping, and each
/// bidirectional control written as a marked `<U+202E>` that shows where it was without acting
/// on the text around it. The mark has no quotes, so it stays inert inside an attribute value.
#[derive(Clone, Copy, Debug, Default)]
pub struct VisibleHtml;

impl askama::filters::Escaper for VisibleHtml {
    fn write_escaped_str<W: fmt::Write>(&self, mut dest: W, string: &str) -> fmt::Result {
        let mut rest = string;
        while let Some(at) = rest.find(is_bidi_control) {
            askama::filters::Html.write_escaped_str(&mut dest, &rest[..at])?;
            let control = rest[at..].chars().next().unwrap_or_default();
            write!(
                dest,
                "<span class=bidi>&lt;U+{:04X}&gt;</span>",
                u32::from(control)
            )?;
            rest = &rest[at + control.len_utf8()..];
        }
        askama::filters::Html.write_escaped_str(dest, rest)
    }
}

/// `text` escaped as the templates escape it (for tests and the few places that build HTML).
pub fn visible_html(text: &str) -> String {
    let mut out = String::new();
    let _ = askama::filters::Escaper::write_escaped_str(&VisibleHtml, &mut out, text);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encoded_words_are_decoded_in_subjects_and_addresses() {
        assert_eq!(
            decode_subject("=?UTF-8?B?R3LDvMOfZQ==?= aus =?ISO-8859-1?Q?K=F6ln?="),
            "Grüße aus Köln"
        );
        // adjacent encoded words join without the space between them (RFC 2047 §6.2)
        assert_eq!(decode_subject("=?UTF-8?Q?a?= =?UTF-8?Q?b?="), "ab");
        assert_eq!(decode_subject("plain =? not a word"), "plain =? not a word");
        assert_eq!(
            decode_header("From", "=?UTF-8?B?SsO8cmdlbg==?= <j@example.org>").as_deref(),
            Some("Jürgen <j@example.org>")
        );
        assert_eq!(
            decode_header(
                "To",
                "\"=?UTF-8?Q?Ren=C3=A9?=\" <r@example.org>, b@example.org"
            )
            .as_deref(),
            Some("René <r@example.org>, b@example.org")
        );
        assert_eq!(
            decode_header("subject", "=?utf-8?q?caf=C3=A9?=\r\n =?utf-8?q?_ol=C3=A9?=").as_deref(),
            Some("café olé")
        );
        // nothing to decode, or a header that holds no encoded words
        assert_eq!(decode_header("Subject", "Lunch"), None);
        assert_eq!(decode_header("Received", "from =?UTF-8?Q?x?= by y"), None);
    }

    #[test]
    fn bidi_controls_are_shown_never_obeyed() {
        assert_eq!(
            visible_html("Invoice \u{202E}fdp.exe"),
            "Invoice <span class=bidi>&lt;U+202E&gt;</span>fdp.exe"
        );
        for c in [
            '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200E}', '\u{200F}', '\u{061C}',
        ] {
            let shown = visible_html(&format!("a{c}b"));
            assert!(!shown.contains(c), "{c:?}: {shown}");
            assert!(
                shown.contains(&format!("U+{:04X}", u32::from(c))),
                "{shown}"
            );
        }
        assert_eq!(
            visible_html("<b>\"x\"</b>"),
            "&#60;b&#62;&#34;x&#34;&#60;/b&#62;"
        );
        // ordinary right-to-left text is left alone
        assert_eq!(visible_html("שלום"), "שלום");
    }

    proptest! {
        /// Whatever the text, the escaped form holds no bidirectional control, no raw markup
        /// of its own and no quote, and reads back as the text with the controls named.
        #[test]
        fn escaped_text_is_inert(text in any::<String>()) {
            let shown = visible_html(&text);
            prop_assert!(!shown.chars().any(is_bidi_control));
            prop_assert!(!shown.contains('"') && !shown.contains('\''));
            let without_marks = shown.replace("<span class=bidi>", "").replace("</span>", "");
            prop_assert!(!without_marks.contains('<') && !without_marks.contains('>'));
        }

        /// Decoding never panics and never invents a control character out of plain text.
        #[test]
        fn decoding_any_value_is_total(name in prop::sample::select(vec!["Subject", "From", "To", "X"]), value in any::<String>()) {
            let _ = decode_header(name, &value);
            let _ = decode_subject(&value);
        }
    }

    #[test]
    fn periods_read_as_durations() {
        assert_eq!(fmt_period(3600), "1h");
        assert_eq!(fmt_period(90), "1m30s");
        assert_eq!(fmt_period(86_400 * 7), "7d");
        assert_eq!(fmt_period(0), "0s");
    }

    #[test]
    fn the_null_sender_reads_as_angle_brackets() {
        assert_eq!(address("", ""), "<>");
        assert_eq!(address("a", "b.example"), "a@b.example");
        assert_eq!(address("postmaster", ""), "postmaster");
    }
}
