//! Delivery reports read tolerantly: RFC 3464 delivery status notifications and RFC 6533's
//! global (UTF-8) form, over mail-parser's MIME structure.
//!
//! Pure: bytes in, a [`DeliveryReport`] out. It never fails and never panics; what it cannot
//! read it says in `problems`, and the caller keeps the raw report whatever this returns.
//!
//! mail-parser gives the structure (the top-level parts of `multipart/report`, transfer
//! encodings, nested messages) and reads header blocks; this layer knows what a delivery
//! status says. mail-parser 0.11 hands `message/delivery-status` over as an opaque part, so its
//! body is split into blocks at blank lines (also `\r\n` ones, and whitespace-only lines; spec
//! gap D.27) and each block is read as a header block. The first block holds the per-message
//! fields, the others one recipient each. Values are unfolded (every line break with the
//! white space around it becomes one space) and `type; value` fields are split.
//!
//! Tolerance, beyond the RFCs: a report that is not `multipart/report` is searched for a
//! delivery-status part all the same; a first block that is a recipient block is read as one;
//! `Status` may carry text around its code; a plain-text bounce (qmail, old Exim) yields no
//! delivery status but its quoted header block is read for the returned Message-ID and the
//! gateway's id header. Only the top-level message is searched: a delivery status inside the
//! *returned* message (a bounce of a bounce) is not this report's.
//!
//! Bounds: at most [`MAX_RECIPIENTS`] recipient blocks, [`MAX_FIELD_BYTES`] per value and
//! [`MAX_PROBLEMS`] problems; the input itself is bounded by the caller (`max-size`).
//!
//! It knows nothing of sockets, the broker or the configuration file.

use std::borrow::Cow;

use chrono::{DateTime, Utc};
use mail_parser::parsers::MessageStream;
use mail_parser::{
    HeaderName, HeaderValue, Message, MessageParser, MessagePart, MimeHeaders as _, PartType,
};
use wire::MessageId;
use wire::contract::{
    DeliveryReport, DsnAction, ParseStatus, PerMessageFields, RecipientReport, ReportKind,
    TypedValue,
};

/// Recipient blocks read per report; the rest is only in the raw report.
pub const MAX_RECIPIENTS: usize = 1000;
/// Bytes kept of one field value (after unfolding), cut at a character boundary.
pub const MAX_FIELD_BYTES: usize = 4096;
/// Problems listed per report; one more says how many were left out.
pub const MAX_PROBLEMS: usize = 20;
/// Bytes of a value quoted in a problem.
const QUOTE_BYTES: usize = 64;

/// What the parser needs to know of the deployment.
#[derive(Clone, Copy, Debug)]
pub struct ParseOptions<'a> {
    /// The header the gateway adds with the message's UUID (`id-header`); empty: none.
    pub id_header: &'a str,
}

impl Default for ParseOptions<'_> {
    fn default() -> Self {
        Self {
            id_header: "X-Cluegetter-Id",
        }
    }
}

/// Reads a delivery report; see the module documentation.
///
/// A panic in the MIME library (none is known in release builds; mail-parser is fuzzed
/// upstream and here) is caught and becomes an unparseable report, so the raw report is still
/// kept. Under a fuzzer the panic hook aborts first, so such a panic is still found.
pub fn parse(raw: &[u8], options: &ParseOptions<'_>) -> DeliveryReport {
    let guarded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut reader = Reader {
            report: DeliveryReport::default(),
            problems_left_out: 0,
        };
        reader.read(raw, options);
        reader.finish()
    }));
    guarded.unwrap_or_else(|_| DeliveryReport {
        problems: vec!["the MIME parser failed on this report".to_owned()],
        ..DeliveryReport::default()
    })
}

struct Reader {
    report: DeliveryReport,
    problems_left_out: usize,
}

/// A part's media type, lower-cased; `text/plain` when it has none (RFC 2045 §5.2).
fn media_type(part: &MessagePart<'_>) -> (String, String) {
    match part.content_type() {
        Some(content_type) => (
            content_type.ctype().to_ascii_lowercase(),
            content_type
                .subtype()
                .unwrap_or_default()
                .to_ascii_lowercase(),
        ),
        None => ("text".to_owned(), "plain".to_owned()),
    }
}

impl Reader {
    fn problem(&mut self, text: impl Into<String>) {
        if self.report.problems.len() < MAX_PROBLEMS {
            self.report.problems.push(text.into());
        } else {
            self.problems_left_out += 1;
        }
    }

    fn finish(mut self) -> DeliveryReport {
        if self.problems_left_out > 0 {
            let n = self.problems_left_out;
            self.report.problems.push(format!("{n} more problems"));
        }
        self.report.status = match self.report.kind {
            ReportKind::Other => ParseStatus::Unparseable,
            _ if self.report.problems.is_empty() => ParseStatus::Parsed,
            _ => ParseStatus::Partial,
        };
        self.report
    }

    fn read(&mut self, raw: &[u8], options: &ParseOptions<'_>) {
        let Some(message) = MessageParser::new().parse(raw) else {
            self.problem("not a mail message: no header found");
            return;
        };
        let Some(root) = message.parts.first() else {
            self.problem("not a mail message: no header found");
            return;
        };
        for header in &root.headers {
            let value = || raw_value(&message.raw_message, header);
            match header.name {
                HeaderName::Date if self.report.date.is_none() => {
                    self.report.date = match &header.value {
                        HeaderValue::DateTime(date) => to_utc(date),
                        _ => None,
                    };
                    if self.report.date.is_none() {
                        self.problem(format!("Date `{}` is not a date", quote(&value())));
                    }
                }
                HeaderName::From if self.report.from.is_empty() => self.report.from = value(),
                HeaderName::Subject if self.report.subject.is_empty() => {
                    self.report.subject = decoded_text(&header.value).unwrap_or_else(value);
                }
                _ => {}
            }
        }

        // The parts of the top-level message (mail-parser lists every part of every multipart
        // level here, but not those inside a returned message).
        let mut status_parts = message
            .parts
            .iter()
            .filter_map(|part| match media_type(part) {
                (t, s) if t == "message" && s == "delivery-status" => {
                    Some((part, ReportKind::DeliveryStatus))
                }
                (t, s) if t == "message" && s == "global-delivery-status" => {
                    Some((part, ReportKind::GlobalDeliveryStatus))
                }
                _ => None,
            });
        let returned_part = message.parts.iter().skip(1).find(|part| {
            matches!(
                media_type(part),
                (t, s) if (t == "text" && s == "rfc822-headers")
                    || (t == "message" && matches!(s.as_str(), "rfc822-headers" | "global-headers" | "rfc822" | "global"))
            )
        });

        match status_parts.next() {
            Some((part, kind)) => {
                self.report.kind = kind;
                let extra = status_parts.count();
                if extra > 0 {
                    self.problem(format!(
                        "{} delivery-status parts; only the first was read",
                        extra + 1
                    ));
                }
                self.read_delivery_status(&part_bytes(&message, part), kind);
            }
            None => {
                let (t, s) = media_type(root);
                let report_type = root
                    .content_type()
                    .and_then(|c| c.attribute("report-type"))
                    .map(|r| format!(", report-type {}", quote(r)))
                    .unwrap_or_default();
                self.problem(format!(
                    "no delivery-status part: the report is {}/{}{report_type}",
                    quote(&t),
                    quote(&s)
                ));
            }
        }

        match returned_part {
            Some(part) => match returned_header_block(&message, part) {
                Some(block) => self.read_returned(&block, options),
                None => self.problem("the returned message has no readable header"),
            },
            None if self.report.kind == ReportKind::Other => {
                // a plain-text bounce: look for the header block it quotes
                if let Some(block) = quoted_header_block(&message) {
                    self.read_returned(block, options);
                }
            }
            None => {}
        }
    }

    fn read_delivery_status(&mut self, body: &[u8], kind: ReportKind) {
        let mut blocks = split_blocks(body).map(fields).filter(|f| !f.is_empty());
        let Some(first) = blocks.next() else {
            self.problem("the delivery-status part is empty");
            return;
        };
        let first_is_recipient = has_field(&first, "final-recipient")
            || has_field(&first, "original-recipient")
            || has_field(&first, "action");
        if first_is_recipient && !has_field(&first, "reporting-mta") {
            self.problem("no per-message block: the report starts with a recipient");
            self.read_recipient(&first, kind);
        } else {
            self.read_per_message(&first);
        }
        let mut left_out = 0_usize;
        for block in blocks {
            if self.report.recipients.len() >= MAX_RECIPIENTS {
                left_out += 1;
                continue;
            }
            self.read_recipient(&block, kind);
        }
        if left_out > 0 {
            self.problem(format!(
                "{left_out} more recipient blocks than the {MAX_RECIPIENTS} read"
            ));
        }
        if self.report.recipients.is_empty() {
            self.problem("no recipient block");
        }
    }

    fn read_per_message(&mut self, fields: &[(String, String)]) {
        let mut per_message = PerMessageFields::default();
        for (name, value) in fields {
            match name.as_str() {
                "reporting-mta" => per_message.reporting_mta = Some(typed(value)),
                "received-from-mta" => per_message.received_from_mta = Some(typed(value)),
                "original-envelope-id" => per_message.original_envelope_id.clone_from(value),
                "arrival-date" => per_message.arrival_date = self.date("Arrival-Date", value),
                "x-postfix-queue-id" => per_message.queue_id.clone_from(value),
                "x-postfix-sender" => per_message.sender = Some(typed(value)),
                "x-original-message-id" => per_message.original_message_id.clone_from(value),
                _ => {}
            }
        }
        if per_message.reporting_mta.is_none() {
            self.problem("no Reporting-MTA");
        }
        self.report.per_message = per_message;
    }

    fn read_recipient(&mut self, fields: &[(String, String)], kind: ReportKind) {
        let mut recipient = RecipientReport::default();
        let mut known = false;
        for (name, value) in fields {
            known |= matches!(
                name.as_str(),
                "final-recipient"
                    | "original-recipient"
                    | "action"
                    | "status"
                    | "remote-mta"
                    | "diagnostic-code"
                    | "last-attempt-date"
                    | "will-retry-until"
                    | "final-log-id"
            );
            match name.as_str() {
                "final-recipient" => recipient.final_recipient = Some(address(value, kind)),
                "original-recipient" => recipient.original_recipient = Some(address(value, kind)),
                "action" => recipient.action = Some(self.action(value)),
                "status" => recipient.status = self.status(value),
                "remote-mta" => recipient.remote_mta = Some(typed(value)),
                "diagnostic-code" => recipient.diagnostic_code = Some(typed(value)),
                "last-attempt-date" => {
                    recipient.last_attempt_date = self.date("Last-Attempt-Date", value);
                }
                "will-retry-until" => {
                    recipient.will_retry_until = self.date("Will-Retry-Until", value);
                }
                _ => {}
            }
        }
        if !known {
            self.problem("a block without recipient fields was skipped");
            return;
        }
        for (missing, field) in [
            (recipient.final_recipient.is_none(), "Final-Recipient"),
            (recipient.action.is_none(), "Action"),
            (recipient.status.is_empty(), "Status"),
        ] {
            if missing {
                let n = self.report.recipients.len() + 1;
                self.problem(format!("recipient block {n} has no {field}"));
            }
        }
        self.report.recipients.push(recipient);
    }

    fn action(&mut self, value: &str) -> DsnAction {
        let word = value
            .split(|c: char| c.is_whitespace() || c == '(' || c == ';')
            .find(|w| !w.is_empty())
            .unwrap_or_default()
            .to_ascii_lowercase();
        match word.as_str() {
            "failed" => DsnAction::Failed,
            "delayed" => DsnAction::Delayed,
            "delivered" => DsnAction::Delivered,
            "relayed" => DsnAction::Relayed,
            "expanded" => DsnAction::Expanded,
            _ => {
                self.problem(format!(
                    "Action `{}` is not an RFC 3464 action",
                    quote(value)
                ));
                DsnAction::Unknown
            }
        }
    }

    /// The status code, or the value as written when it holds none.
    fn status(&mut self, value: &str) -> String {
        let code = value
            .split(|c: char| c.is_whitespace() || matches!(c, '(' | ')' | ';' | ','))
            .find(|token| is_status_code(token));
        match code {
            Some(code) => code.to_owned(),
            None => {
                self.problem(format!("Status `{}` holds no status code", quote(value)));
                value.to_owned()
            }
        }
    }

    fn date(&mut self, field: &str, value: &str) -> Option<DateTime<Utc>> {
        let date = parse_date(value);
        if date.is_none() {
            self.problem(format!("{field} `{}` is not a date", quote(value)));
        }
        date
    }

    /// Reads the returned message's header block.
    fn read_returned(&mut self, block: &[u8], options: &ParseOptions<'_>) {
        let Some(headers) = MessageParser::new().parse_headers(block) else {
            self.problem("the returned message has no readable header");
            return;
        };
        let Some(part) = headers.parts.first() else {
            self.problem("the returned message has no readable header");
            return;
        };
        let returned = &mut self.report.returned;
        returned.present = true;
        let mut bad_id = None;
        for header in &part.headers {
            let value = || raw_value(&headers.raw_message, header);
            let name = header.name.as_str();
            if name.eq_ignore_ascii_case("message-id") && returned.message_id.is_empty() {
                returned.message_id = value();
            } else if name.eq_ignore_ascii_case("from") && returned.from.is_empty() {
                returned.from = value();
            } else if name.eq_ignore_ascii_case("to") && returned.to.is_empty() {
                returned.to = value();
            } else if name.eq_ignore_ascii_case("subject") && returned.subject.is_empty() {
                returned.subject = decoded_text(&header.value).unwrap_or_else(value);
            } else if !options.id_header.is_empty()
                && name.eq_ignore_ascii_case(options.id_header)
                && returned.cluegetter_id.is_none()
            {
                // the first (top-most, latest added) one that is a UUID
                let text = value();
                match uuid::Uuid::try_parse(text.trim_matches(['<', '>'])) {
                    Ok(id) => returned.cluegetter_id = Some(MessageId(id)),
                    Err(_) => bad_id = Some(text),
                }
            }
        }
        if let Some(text) = bad_id
            && self.report.returned.cluegetter_id.is_none()
        {
            let header = options.id_header;
            self.problem(format!("{header} `{}` is not a UUID", quote(&text)));
        }
    }
}

/// Whether `token` is an RFC 3463 status code: class 2, 4 or 5, then two numbers of 1 to 3
/// digits (`5.1.1`, Exchange's `5.1.10`).
fn is_status_code(token: &str) -> bool {
    let mut parts = token.split('.');
    let (Some(class), Some(subject), Some(detail), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let digits = |s: &str| (1..=3).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    matches!(class, "2" | "4" | "5") && digits(subject) && digits(detail)
}

/// The bytes of a part's body, decoded from its transfer encoding.
fn part_bytes<'a>(message: &'a Message<'a>, part: &'a MessagePart<'a>) -> Cow<'a, [u8]> {
    match &part.body {
        PartType::Text(text) | PartType::Html(text) => Cow::Borrowed(text.as_bytes()),
        PartType::Binary(bytes) | PartType::InlineBinary(bytes) => Cow::Borrowed(bytes.as_ref()),
        PartType::Message(inner) => Cow::Borrowed(inner.raw_message.as_ref()),
        PartType::Multipart(_) => Cow::Borrowed(
            message
                .raw_message
                .get(part.offset_body as usize..part.offset_end as usize)
                .unwrap_or_default(),
        ),
    }
}

/// The header block of a returned-message part: the headers of `message/rfc822` (its own
/// parse, whose offsets point into its own raw bytes), or the whole of `text/rfc822-headers`.
fn returned_header_block<'a>(
    message: &'a Message<'a>,
    part: &'a MessagePart<'a>,
) -> Option<Cow<'a, [u8]>> {
    match &part.body {
        PartType::Message(inner) => {
            let root = inner.parts.first()?;
            inner
                .raw_message
                .get(root.offset_header as usize..root.offset_body as usize)
                .filter(|block| !block.is_empty())
                .map(Cow::Borrowed)
        }
        _ => Some(part_bytes(message, part)).filter(|block| !block.is_empty()),
    }
}

/// In a report without a delivery status, the header block a plain-text bounce quotes: from
/// the first line that starts with `Return-Path:` or `Received:` in the first text part.
fn quoted_header_block<'a>(message: &'a Message<'a>) -> Option<&'a [u8]> {
    let text = message
        .text_body
        .first()
        .and_then(|id| message.parts.get(*id as usize))
        .and_then(|part| match &part.body {
            PartType::Text(text) => Some(text.as_bytes()),
            _ => None,
        })?;
    let mut start = 0;
    while start < text.len() {
        let line = &text[start..];
        let starts_with = |prefix: &[u8]| {
            line.get(..prefix.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        };
        if starts_with(b"return-path:") || starts_with(b"received:") {
            return Some(line);
        }
        match line.iter().position(|&b| b == b'\n') {
            Some(end) => start += end + 1,
            None => break,
        }
    }
    None
}

/// The blocks of a delivery-status body: runs of lines between blank lines (empty, or only
/// white space: `\r\n` and `\n` alike).
fn split_blocks(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = body;
    std::iter::from_fn(move || {
        // skip blank lines
        loop {
            if rest.is_empty() {
                return None;
            }
            let end = rest
                .iter()
                .position(|&b| b == b'\n')
                .map_or(rest.len(), |i| i + 1);
            if rest[..end].iter().all(u8::is_ascii_whitespace) {
                rest = &rest[end..];
            } else {
                break;
            }
        }
        // take lines up to the next blank one
        let mut taken = 0;
        while taken < rest.len() {
            let line = &rest[taken..];
            let end = line
                .iter()
                .position(|&b| b == b'\n')
                .map_or(line.len(), |i| i + 1);
            if line[..end].iter().all(u8::is_ascii_whitespace) {
                break;
            }
            taken += end;
        }
        let (block, after) = rest.split_at(taken);
        rest = after;
        Some(block)
    })
}

/// The fields of one block: (lower-case name, unfolded value), in order.
fn fields(block: &[u8]) -> Vec<(String, String)> {
    // every field as raw text: no header is given a structured parser
    let parser = MessageParser::new()
        .header_raw(HeaderName::Subject)
        .default_header_raw();
    let Some(parsed) = parser.parse_headers(block) else {
        return Vec::new();
    };
    parsed
        .parts
        .first()
        .map(|part| {
            part.headers
                .iter()
                .map(|header| {
                    (
                        header.name.as_str().to_ascii_lowercase(),
                        raw_value(block, header),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has_field(fields: &[(String, String)], name: &str) -> bool {
    fields.iter().any(|(n, _)| n == name)
}

/// A header's value as written (no RFC 2047 decoding), unfolded, trimmed and cut to
/// [`MAX_FIELD_BYTES`].
fn raw_value(raw: &[u8], header: &mail_parser::Header<'_>) -> String {
    let bytes = raw
        .get(header.offset_start as usize..header.offset_end as usize)
        .unwrap_or_default();
    let bytes = &bytes[..bytes.len().min(MAX_FIELD_BYTES * 2)];
    cut(unfold(&String::from_utf8_lossy(bytes)), MAX_FIELD_BYTES)
}

/// Every line break, with the white space around it, becomes one space; then trimmed.
fn unfold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.trim().chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\r' || c == '\n' {
            while out.ends_with([' ', '\t']) {
                out.pop();
            }
            while chars
                .next_if(|c| matches!(c, '\r' | '\n' | ' ' | '\t'))
                .is_some()
            {}
            out.push(' ');
        } else {
            out.push(c);
        }
    }
    out
}

/// At most `max` bytes, cut at a character boundary (and trimmed again at the cut).
fn cut(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        let kept = text.trim_end().len();
        text.truncate(kept);
    }
    text
}

/// A value quoted in a problem: short, one line.
fn quote(value: &str) -> String {
    let mut end = value.len().min(QUOTE_BYTES + 4);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let mut quoted = cut(value[..end].replace(['\r', '\n'], " "), QUOTE_BYTES);
    if quoted.len() < value.len() {
        quoted.push('…');
    }
    quoted
}

/// `type; value`; a value without a type (or whose "type" is not one word) keeps all of it.
fn typed(value: &str) -> TypedValue {
    if let Some((kind, rest)) = value.split_once(';') {
        let kind = kind.trim();
        let is_type = (1..=32).contains(&kind.len())
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'));
        if is_type {
            return TypedValue::new(kind.to_ascii_lowercase(), rest.trim());
        }
    }
    TypedValue::new("", value.trim())
}

/// A recipient field: typed; an RFC 6533 `utf-8` address has its `\x{HEX}` escapes decoded.
fn address(value: &str, kind: ReportKind) -> TypedValue {
    let mut typed = typed(value);
    if typed.kind == "utf-8" || kind == ReportKind::GlobalDeliveryStatus {
        typed.value = decode_unicode_escapes(&typed.value);
    }
    typed
}

/// `\x{HEX}` (1 to 6 hex digits naming a printable Unicode scalar value) becomes that
/// character; anything else (also an escaped control character or white space) stays as
/// written.
fn decode_unicode_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\\x{") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 3..];
        let decoded = after.find('}').and_then(|close| {
            let hex = &after[..close];
            let valid = (1..=6).contains(&hex.len()) && hex.bytes().all(|b| b.is_ascii_hexdigit());
            valid
                .then(|| u32::from_str_radix(hex, 16).ok().and_then(char::from_u32))
                .flatten()
                .filter(|c| !c.is_control() && !c.is_whitespace())
                .map(|c| (c, close))
        });
        match decoded {
            Some((c, close)) => {
                out.push(c);
                rest = &after[close + 1..];
            }
            None => {
                out.push_str("\\x{");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// An RFC 5322 date, read as tolerantly as mail-parser reads `Date:` headers.
fn parse_date(value: &str) -> Option<DateTime<Utc>> {
    let line = format!("{value}\n");
    match MessageStream::new(line.as_bytes()).parse_date() {
        HeaderValue::DateTime(date) => to_utc(&date),
        _ => None,
    }
}

fn to_utc(date: &mail_parser::DateTime) -> Option<DateTime<Utc>> {
    if date.is_valid() {
        DateTime::from_timestamp(date.to_timestamp(), 0)
    } else {
        None
    }
}

/// Text mail-parser decoded (RFC 2047 encoded words), unfolded.
fn decoded_text(value: &HeaderValue<'_>) -> Option<String> {
    match value {
        HeaderValue::Text(text) => Some(cut(unfold(text), MAX_FIELD_BYTES)),
        _ => None,
    }
}

/// The fuzzing oracle: any bytes, as a whole report and as the body of a delivery-status part,
/// parse without panicking into a report that keeps the documented bounds and rules and
/// survives the wire.
///
/// # Panics
/// When one of those properties does not hold.
#[cfg(any(test, fuzzing))]
pub fn fuzz_dsn(data: &[u8]) {
    check_invariants(data, &parse(data, &ParseOptions::default()));
    let mut wrapped = Vec::with_capacity(data.len() + 512);
    wrapped.extend_from_slice(
        b"From: MAILER-DAEMON@mx.example.net\nContent-Type: multipart/report; \
          report-type=delivery-status; boundary=\"B\"\n\n--B\nContent-Type: \
          message/delivery-status\n\n",
    );
    wrapped.extend_from_slice(data);
    wrapped.extend_from_slice(b"\n--B\nContent-Type: text/rfc822-headers\n\n");
    wrapped.extend_from_slice(data);
    wrapped.extend_from_slice(b"\n--B--\n");
    let report = parse(&wrapped, &ParseOptions::default());
    assert_ne!(
        report.kind,
        ReportKind::Other,
        "the wrapped part was not found"
    );
    check_invariants(&wrapped, &report);
}

#[cfg(any(test, fuzzing))]
fn check_invariants(input: &[u8], report: &DeliveryReport) {
    let status_matches_kind = match report.status {
        ParseStatus::Unparseable => report.kind == ReportKind::Other,
        ParseStatus::Parsed => report.kind != ReportKind::Other && report.problems.is_empty(),
        ParseStatus::Partial => report.kind != ReportKind::Other && !report.problems.is_empty(),
    };
    assert!(status_matches_kind, "{report:?}");
    if report.kind == ReportKind::Other {
        assert!(report.recipients.is_empty());
        assert!(!report.problems.is_empty(), "unparseable without a reason");
    }
    assert!(report.recipients.len() <= MAX_RECIPIENTS);
    assert!(report.problems.len() <= MAX_PROBLEMS + 1);
    let mut texts: Vec<&str> = vec![
        &report.from,
        &report.subject,
        &report.per_message.original_envelope_id,
        &report.per_message.queue_id,
        &report.per_message.original_message_id,
        &report.returned.message_id,
        &report.returned.from,
        &report.returned.to,
        &report.returned.subject,
    ];
    let typed_values = [
        &report.per_message.reporting_mta,
        &report.per_message.received_from_mta,
        &report.per_message.sender,
    ];
    for recipient in &report.recipients {
        texts.push(&recipient.status);
        for typed in [
            &recipient.final_recipient,
            &recipient.original_recipient,
            &recipient.remote_mta,
            &recipient.diagnostic_code,
        ]
        .into_iter()
        .chain(typed_values)
        .flatten()
        {
            texts.push(&typed.kind);
            texts.push(&typed.value);
        }
    }
    for text in texts {
        assert!(
            text.len() <= MAX_FIELD_BYTES,
            "a value longer than the bound"
        );
        assert!(
            !text.contains(['\r', '\n']),
            "a value that is not unfolded: {text:?}"
        );
        assert_eq!(
            text,
            text.trim_matches([' ', '\t']),
            "an untrimmed value: {text:?}"
        );
    }
    // every value is bounded by the input
    let total: usize = report.problems.iter().map(String::len).sum();
    assert!(total <= (MAX_PROBLEMS + 1) * (QUOTE_BYTES * 4 + 200));
    assert!(report.recipients.len() <= input.len());
    // what is read survives the wire
    let json = serde_json::to_vec(report).unwrap_or_default();
    let back: DeliveryReport = serde_json::from_slice(&json).unwrap_or_default();
    assert_eq!(&back, report, "the report does not survive JSON");
}

#[cfg(test)]
mod tests;
