//! Postfix's delivery lines, read from its log: pure, no I/O, the clock an argument.
//!
//! A delivery line is what a delivery agent (smtp, lmtp, local, virtual, pipe, error, discard,
//! or qmgr for a deferred queue) logs for one recipient and one attempt:
//!
//! ```text
//! <time> <host> <syslog_name>/<service>[<pid>]: <QUEUEID>: to=<addr>, [orig_to=<addr>,]
//!     relay=<relay>, [conn_use=<n>,] delay=<s>, delays=<a/b/c/d>, dsn=<x.y.z>,
//!     status=<sent|deferred|bounced|expired> (<text>)
//! ```
//!
//! `<time>` is RFC 3339 (`journalctl -o short-iso`, `short-iso-precise`, rsyslog's high
//! precision format; an offset written `+0000` or `+00:00`) or the classic syslog `Mon DD
//! HH:MM:SS` that Postfix's own `maillog_file` and traditional syslog write: that one is read in
//! the host's time zone ([`Clock::offset`]) and given the year that puts it at most a day after
//! [`Clock::now`]. The queue id is short (hex) or long (`enable_long_queue_ids`); the program is
//! any `syslog_name` (`postfix`, `postfix-out`, `postfix/submission`) followed by `/service`.
//! Every other line (connections, `NOQUEUE` rejects, `from=` lines, other programs, address
//! verification probes with `status=deliverable`) is `None`: [`parse_line`] never fails.

use chrono::{
    DateTime, Datelike as _, FixedOffset, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, Utc,
};
use wire::DeliveryStatus;

/// Longest queue id accepted (the archive's `queue_id` column).
pub const MAX_QUEUE_ID: usize = 32;

/// What the parser needs of the outside world to date a classic syslog time stamp.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    /// Now: a time stamp without a year gets the year that puts it at most a day after this.
    pub now: DateTime<Utc>,
    /// The offset the log's local times are written in (the host's time zone).
    pub offset: FixedOffset,
}

impl Clock {
    /// The host's clock and time zone now.
    pub fn local() -> Self {
        let now = chrono::Local::now();
        Self {
            now: now.with_timezone(&Utc),
            offset: *now.offset(),
        }
    }
}

/// One delivery line, as logged.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryLine {
    pub log_time: DateTime<Utc>,
    /// The host field of the line.
    pub host: String,
    /// The delivery agent: the program's last `/` component (`smtp`, `local`, ...).
    pub service: String,
    pub queue_id: String,
    pub recipient: String,
    /// Empty when the line had no `orig_to=`.
    pub orig_to: String,
    pub status: DeliveryStatus,
    pub dsn: String,
    pub relay: String,
    pub delay: Option<f64>,
    /// The text after the status, without its parentheses.
    pub reason: String,
}

/// The delivery line in `line`, or `None` for any other line.
pub fn parse_line(line: &str, clock: &Clock) -> Option<DeliveryLine> {
    let line = line.trim_end_matches(['\n', '\r']);
    let mut rest = line.trim_start();
    let log_time = if rest.starts_with(|c: char| c.is_ascii_digit()) {
        rfc3339_time(token(&mut rest)?)?
    } else {
        let month = token(&mut rest)?;
        let day = token(&mut rest)?;
        let time = token(&mut rest)?;
        classic_time(month, day, time, clock)?
    };
    let host = token(&mut rest)?;
    let service = program_service(token(&mut rest)?)?;
    let queue_id = token(&mut rest)?.strip_suffix(':')?;
    if !is_queue_id(queue_id) {
        return None;
    }
    let fields = rest.strip_prefix(' ')?;
    let fields = parse_fields(fields)?;
    Some(DeliveryLine {
        log_time,
        host: host.to_owned(),
        service: service.to_owned(),
        queue_id: queue_id.to_owned(),
        recipient: fields.to?.to_owned(),
        orig_to: fields.orig_to.unwrap_or_default().to_owned(),
        status: fields.status,
        dsn: fields.dsn.unwrap_or_default().to_owned(),
        relay: fields.relay.unwrap_or_default().to_owned(),
        delay: fields.delay,
        reason: fields.reason.to_owned(),
    })
}

/// The next space-separated token (leading spaces skipped; `None` at the end).
fn token<'a>(rest: &mut &'a str) -> Option<&'a str> {
    let text = rest.trim_start_matches(' ');
    if text.is_empty() {
        return None;
    }
    let end = text.find(' ').unwrap_or(text.len());
    let (token, after) = text.split_at(end);
    *rest = after;
    Some(token)
}

fn rfc3339_time(text: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .or_else(|_| DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// `Mon DD HH:MM:SS` in `clock.offset`, in the year that puts it at most a day after now.
fn classic_time(month: &str, day: &str, time: &str, clock: &Clock) -> Option<DateTime<Utc>> {
    let month = u32::try_from(MONTHS.iter().position(|m| *m == month)? + 1).ok()?;
    if day.is_empty() || day.len() > 2 || !day.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let time = NaiveTime::parse_from_str(time, "%H:%M:%S%.f").ok()?;
    let this_year = clock
        .now
        .with_timezone(&clock.offset)
        .date_naive()
        .year_ce()
        .1;
    let this_year = i32::try_from(this_year).ok()?;
    let latest = clock.now + TimeDelta::days(1);
    // this year, else the year before (a December line read in January), else a leap day
    // further back
    for year in [
        this_year,
        this_year - 1,
        this_year - 2,
        this_year - 3,
        this_year - 4,
    ] {
        let Some(date) = NaiveDate::from_ymd_opt(year, month, day) else {
            continue;
        };
        let local = NaiveDateTime::new(date, time);
        let utc = local.checked_sub_offset(clock.offset)?.and_utc();
        if utc <= latest {
            return Some(utc);
        }
    }
    None
}

/// `postfix/smtp[123]:`, `postfix-out/submission/smtpd[9]:`, `postfix/local:` → the service.
fn program_service(tag: &str) -> Option<&str> {
    let tag = tag.strip_suffix(':')?;
    let program = match tag.strip_suffix(']') {
        Some(with_pid) => {
            let (program, pid) = with_pid.rsplit_once('[')?;
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            program
        }
        None => tag,
    };
    let (name, service) = program.rsplit_once('/')?;
    if name.is_empty()
        || service.is_empty()
        || !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return None;
    }
    Some(service)
}

/// A short (hex) or long queue id: ASCII letters and digits, 5 to [`MAX_QUEUE_ID`].
fn is_queue_id(id: &str) -> bool {
    (5..=MAX_QUEUE_ID).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric())
        && id != "NOQUEUE"
}

struct Fields<'a> {
    to: Option<&'a str>,
    orig_to: Option<&'a str>,
    relay: Option<&'a str>,
    dsn: Option<&'a str>,
    delay: Option<f64>,
    status: DeliveryStatus,
    reason: &'a str,
}

/// `to=<a>, orig_to=<b>, relay=r, delay=1, delays=.., dsn=2.0.0, status=sent (text)`.
fn parse_fields(mut rest: &str) -> Option<Fields<'_>> {
    if !rest.starts_with("to=<") {
        return None;
    }
    let mut fields = Fields {
        to: None,
        orig_to: None,
        relay: None,
        dsn: None,
        delay: None,
        status: DeliveryStatus::Sent,
        reason: "",
    };
    loop {
        if let Some(after) = rest.strip_prefix("status=") {
            let (word, text) = after.split_once(' ').unwrap_or((after, ""));
            fields.status = status(word)?;
            let text = text.trim();
            fields.reason = text
                .strip_prefix('(')
                .and_then(|t| t.strip_suffix(')'))
                .unwrap_or(text);
            return fields.to.map(|_| fields);
        }
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
            return None;
        }
        let value;
        if let Some(address) = after.strip_prefix('<') {
            let (inner, next) = address.split_once(">, ")?;
            value = inner;
            rest = next;
        } else {
            let (inner, next) = after.split_once(", ")?;
            value = inner;
            rest = next;
        }
        match key {
            "to" if fields.to.is_none() => {
                if value.is_empty() {
                    return None;
                }
                fields.to = Some(value);
            }
            "orig_to" => fields.orig_to = Some(value),
            "relay" => fields.relay = Some(value),
            "dsn" => fields.dsn = Some(value),
            "delay" => {
                fields.delay = value
                    .parse::<f64>()
                    .ok()
                    .filter(|d| d.is_finite() && *d >= 0.0);
            }
            _ => {}
        }
    }
}

fn status(word: &str) -> Option<DeliveryStatus> {
    // "status=sent (…)", but also "status=deferred," in some older formats
    word.trim_end_matches(',').parse().ok()
}

#[cfg(any(test, fuzzing))]
impl DeliveryLine {
    /// The line as Postfix would log it, with an RFC 3339 time stamp (for tests and the fuzz
    /// oracle's round trip).
    pub fn to_line(&self, program: &str) -> String {
        use std::fmt::Write as _;
        let mut line = format!(
            "{} {} {program}/{}[4242]: {}: to=<{}>, ",
            self.log_time
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            self.host,
            self.service,
            self.queue_id,
            self.recipient,
        );
        if !self.orig_to.is_empty() {
            let _ = write!(line, "orig_to=<{}>, ", self.orig_to);
        }
        let _ = write!(line, "relay={}, ", self.relay);
        if let Some(delay) = self.delay {
            let _ = write!(line, "delay={delay}, ");
        }
        let _ = write!(
            line,
            "delays=0/0/0/0, dsn={}, status={} ({})",
            self.dsn, self.status, self.reason
        );
        line
    }
}

/// The fuzzing oracle: any bytes (lossy UTF-8) as one log line, under a fixed clock and in two
/// time zones: never a panic; a delivery line found has a queue id, a recipient and fields
/// without line breaks, and written back as a line it parses to itself.
#[cfg(any(test, fuzzing))]
pub fn fuzz_line(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let now = DateTime::from_timestamp(1_796_680_800, 0).unwrap_or_default();
    for offset in [0, 5 * 3600 + 1800] {
        let Some(offset) = FixedOffset::east_opt(offset) else {
            continue;
        };
        let clock = Clock { now, offset };
        for line in text.split('\n') {
            let Some(parsed) = parse_line(line, &clock) else {
                continue;
            };
            assert!(is_queue_id(&parsed.queue_id));
            assert!(!parsed.recipient.is_empty());
            for field in [
                &parsed.host,
                &parsed.recipient,
                &parsed.orig_to,
                &parsed.relay,
                &parsed.dsn,
                &parsed.reason,
            ] {
                assert!(!field.contains('\n'), "{field:?}");
            }
            // written back, it reads the same (the parentheses around the reason are the
            // writer's; the time stamp becomes RFC 3339)
            assert_eq!(parse_line(&parsed.to_line("postfix"), &clock), Some(parsed));
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use proptest::prelude::*;

    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().to_utc()
    }

    fn clock() -> Clock {
        Clock {
            now: utc("2026-12-07T22:40:00Z"),
            offset: FixedOffset::east_opt(0).unwrap(),
        }
    }

    #[test]
    fn reads_the_lines_of_a_real_postfix_3_7_maillog_file() {
        // written by the throwaway instances of scripts/postfix-instance.sh
        let line = "Dec 07 22:18:56 mx postfix-cgt-pfx-42a99edb48a1/virtual[9656]: \
            4jjxMg5k8dz1SST9: to=<rcpt@mailbox.test>, relay=virtual, delay=0.58, \
            delays=0.56/0.01/0/0.01, dsn=2.0.0, status=sent (delivered to mailbox)";
        let parsed = parse_line(line, &clock()).unwrap();
        assert_eq!(
            parsed,
            DeliveryLine {
                log_time: utc("2026-12-07T22:18:56Z"),
                host: "mx".into(),
                service: "virtual".into(),
                queue_id: "4jjxMg5k8dz1SST9".into(),
                recipient: "rcpt@mailbox.test".into(),
                orig_to: String::new(),
                status: DeliveryStatus::Sent,
                dsn: "2.0.0".into(),
                relay: "virtual".into(),
                delay: Some(0.58),
                reason: "delivered to mailbox".into(),
            }
        );
    }

    #[test]
    fn reads_deferred_and_bounced_lines_with_orig_to_and_conn_use() {
        let deferred = "2026-12-07T22:19:01+0000 vm postfix/smtp[1234]: 4jjxMk3hqyz1SRl7: \
            to=<a@example.net>, relay=none, delay=1.2, delays=1/0/0.2/0, dsn=4.4.1, \
            status=deferred (connect to 127.0.0.1[127.0.0.1]:9: Connection refused)";
        let parsed = parse_line(deferred, &clock()).unwrap();
        assert_eq!(parsed.status, DeliveryStatus::Deferred);
        assert_eq!(parsed.host, "vm");
        assert_eq!(parsed.service, "smtp");
        assert_eq!(parsed.relay, "none");
        assert_eq!(parsed.dsn, "4.4.1");
        assert_eq!(
            parsed.reason,
            "connect to 127.0.0.1[127.0.0.1]:9: Connection refused"
        );
        assert_eq!(parsed.log_time, utc("2026-12-07T22:19:01Z"));

        let bounced = "2026-12-07T23:19:02.123456+01:00 vm postfix/submission/local[77]: \
            3F2A1B4C5D: to=<nobody@cluegetter.test>, orig_to=<Nobody@cluegetter.test>, \
            relay=local, conn_use=2, delay=0.01, delays=0/0/0/0, dsn=5.1.1, \
            status=bounced (unknown user: \"nobody\")";
        let parsed = parse_line(bounced, &clock()).unwrap();
        assert_eq!(parsed.status, DeliveryStatus::Bounced);
        assert_eq!(parsed.queue_id, "3F2A1B4C5D");
        assert_eq!(parsed.service, "local");
        assert_eq!(parsed.orig_to, "Nobody@cluegetter.test");
        assert_eq!(parsed.reason, "unknown user: \"nobody\"");
        assert_eq!(parsed.log_time, utc("2026-12-07T22:19:02.123456Z"));

        let remote = "Dec  7 22:19:03 mx postfix/smtp[5]: 4jjxMl1SdTz1SRl7: \
            to=<\"odd, user\"@example.net>, relay=mx.example.net[192.0.2.1]:25, delay=3, \
            delays=0/0/1/2, dsn=5.7.1, status=bounced (host mx.example.net[192.0.2.1] said: \
            550 5.7.1 no (in reply to RCPT TO command))";
        let parsed = parse_line(remote, &clock()).unwrap();
        assert_eq!(parsed.recipient, "\"odd, user\"@example.net");
        assert_eq!(parsed.relay, "mx.example.net[192.0.2.1]:25");
        assert_eq!(parsed.delay, Some(3.0));
        assert!(parsed.reason.ends_with("(in reply to RCPT TO command)"));
    }

    #[test]
    fn ignores_every_other_line() {
        for line in [
            "",
            "Dec 07 22:18:55 mx postfix/smtpd[9631]: connect from localhost[127.0.0.1]",
            "Dec 07 22:18:55 mx postfix/cleanup[9635]: 4jjxMg5k8dz1SST9: message-id=<a@b>",
            "Dec 07 22:18:56 mx postfix/qmgr[9]: 4jjxMg5k8dz1SST9: from=<a@b>, size=1, nrcpt=1 (queue active)",
            "Dec 07 22:18:56 mx postfix/qmgr[9]: 4jjxMg5k8dz1SST9: from=<a@b>, status=expired, returned to sender",
            "Dec 07 22:18:56 mx postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[1.2.3.4]: 554 5.7.1 <a@b>: Relay access denied; from=<a@b> to=<c@d> proto=ESMTP helo=<x>",
            "Dec 07 22:18:56 mx postfix/smtp[9]: 4jjxMg5k8dz1SST9: to=<a@b>, relay=none, delay=1, dsn=2.1.5, status=deliverable (probe)",
            "Dec 07 22:18:56 mx dovecot[9]: 4jjxMg5k8dz1SST9: to=<a@b>, relay=x, dsn=2.0.0, status=sent (ok)",
            "Dec 07 22:18:56 mx postfix/smtp[9]: 4jjxMg5k8dz1SST9: to=<a@b>, relay=x, dsn=2.0.0",
            "Foo 07 22:18:56 mx postfix/smtp[9]: 4jjxMg5k8dz1SST9: to=<a@b>, relay=x, status=sent (ok)",
            "2026-13-07T22:18:56+00:00 mx postfix/smtp[9]: 4jjxMg5k8dz1SST9: to=<a@b>, relay=x, status=sent (ok)",
            "-- Boot 1234 --",
        ] {
            assert_eq!(parse_line(line, &clock()), None, "{line}");
        }
    }

    #[test]
    fn a_classic_time_stamp_gets_the_year_that_is_not_in_the_future_and_the_hosts_offset() {
        let january = Clock {
            now: utc("2027-01-01T00:10:00Z"),
            offset: FixedOffset::east_opt(0).unwrap(),
        };
        assert_eq!(
            classic_time("Dec", "31", "23:59:59", &january),
            Some(utc("2026-12-31T23:59:59Z"))
        );
        assert_eq!(
            classic_time("Jan", "1", "00:09:00", &january),
            Some(utc("2027-01-01T00:09:00Z"))
        );
        let paris = Clock {
            now: utc("2026-07-01T12:00:00Z"),
            offset: FixedOffset::east_opt(7200).unwrap(),
        };
        assert_eq!(
            classic_time("Jul", "01", "13:00:00", &paris),
            Some(utc("2026-07-01T11:00:00Z"))
        );
        // a leap day read in a year that has none goes back to the last one
        let leap = Clock {
            now: utc("2026-03-01T00:00:00Z"),
            offset: FixedOffset::east_opt(0).unwrap(),
        };
        assert_eq!(
            classic_time("Feb", "29", "10:00:00", &leap),
            Some(utc("2024-02-29T10:00:00Z"))
        );
        assert_eq!(classic_time("Feb", "30", "10:00:00", &leap), None);
        assert_eq!(classic_time("Feb", "123", "10:00:00", &leap), None);
    }

    #[test]
    fn the_fuzz_oracle_holds_on_the_seeds() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/maillog_line");
        let mut seeds = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            fuzz_line(&std::fs::read(entry.unwrap().path()).unwrap());
            seeds += 1;
        }
        assert!(seeds > 0);
    }

    fn address() -> impl Strategy<Value = String> {
        (
            "[a-zA-Z0-9._+=-]{1,24}",
            "[a-z0-9-]{1,20}(\\.[a-z]{2,6}){0,2}",
        )
            .prop_map(|(local, domain)| format!("{local}@{domain}"))
    }

    fn delivery_line() -> impl Strategy<Value = DeliveryLine> {
        (
            0i64..4_000_000_000,
            0u32..1_000_000,
            "[a-z][a-z0-9-]{0,20}",
            prop::sample::select(vec!["smtp", "lmtp", "local", "virtual", "pipe", "error"]),
            prop_oneof![
                "[0-9A-F]{6,12}",
                "[0-9B-DF-HJ-NP-TV-Zb-df-hj-np-tv-z]{10,15}z[0-9A-Za-z]{3,8}"
            ],
            address(),
            prop_oneof![Just(String::new()), address()],
            prop::sample::select(DeliveryStatus::ALL.to_vec()),
            "[245]\\.[0-9]\\.[0-9]{1,3}",
            "(none|local|virtual|[a-z0-9.-]{1,30}\\[[0-9.]{7,15}\\]:[0-9]{2,5})",
            prop::option::of(0u32..100_000),
            "[ -~]{0,200}",
        )
            .prop_map(
                |(
                    secs,
                    micros,
                    host,
                    service,
                    queue_id,
                    recipient,
                    orig_to,
                    status,
                    dsn,
                    relay,
                    delay,
                    reason,
                )| {
                    DeliveryLine {
                        log_time: DateTime::from_timestamp(secs, micros * 1000).unwrap(),
                        host,
                        service: service.into(),
                        queue_id,
                        recipient,
                        orig_to,
                        status,
                        dsn,
                        relay,
                        delay: delay.map(|d| f64::from(d) / 100.0),
                        reason: reason.trim().to_owned(),
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn generated_lines_read_back_to_what_was_written(line in delivery_line()) {
            let text = line.to_line("postfix");
            prop_assert_eq!(parse_line(&text, &clock()), Some(line.clone()));
            let text = line.to_line("postfix-out/submission");
            prop_assert_eq!(parse_line(&format!("{text}\r\n"), &clock()), Some(line));
        }

        #[test]
        fn never_panics_on_anything(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            fuzz_line(&bytes);
        }

        #[test]
        fn never_panics_on_near_lines(line in delivery_line(), cut in 0usize..400, junk in "[ -~<>,=()]{0,20}") {
            let mut text = line.to_line("postfix");
            let cut = cut.min(text.len());
            while !text.is_char_boundary(cut) { text.pop(); }
            text.truncate(cut.min(text.len()));
            text.push_str(&junk);
            fuzz_line(text.as_bytes());
        }
    }
}
