//! From bytes on a pipe or socket to a [`BounceEvent`]: reading one report with a size bound,
//! and wrapping the parsed report with its identity and the raw bytes.
//!
//! A report longer than `max-size` is read to its end all the same (the sender must see it
//! taken), but only its first `max-size` bytes are kept; the event says how long it was and
//! the report is marked partial.

use std::net::IpAddr;

use chrono::Utc;
use platform::config::Config;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use wire::contract::ParseStatus;
use wire::{BounceEvent, BounceId, BounceSource, WIRE_VERSION};

use crate::dsn::{self, ParseOptions};
use crate::metrics;

/// One report as read: its first `max-size` bytes and how many there were in all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Received {
    pub kept: Vec<u8>,
    pub total: u64,
}

impl Received {
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    pub fn was_cut(&self) -> bool {
        self.total > self.kept.len() as u64
    }
}

const CHUNK: usize = 16 * 1024;

/// Reads until end of input, keeping at most `max` bytes; `into` collects them, so that what
/// was read before an error or a timeout is still there.
///
/// # Errors
/// The read failed; `into` holds what came before.
pub async fn read_bounded<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: usize,
    into: &mut Received,
) -> std::io::Result<()> {
    let mut chunk = vec![0_u8; CHUNK];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        into.total = into.total.saturating_add(n as u64);
        let room = max.saturating_sub(into.kept.len());
        if room > 0 {
            let take = n.min(room);
            if into.kept.capacity() < into.kept.len() + take {
                // grow by doubling, but never past the bound
                let want = (into.kept.capacity() * 2).clamp(into.kept.len() + take, max);
                into.kept.reserve_exact(want - into.kept.len());
            }
            into.kept.extend_from_slice(&chunk[..take]);
        }
    }
}

/// The event for one received report: a new bounce id, the parse, the raw bytes. `note` is a
/// problem the reader saw (a timeout), added to the parser's.
pub fn event(
    config: &Config,
    received: Received,
    source: BounceSource,
    peer: Option<IpAddr>,
    note: Option<String>,
) -> BounceEvent {
    let options = ParseOptions {
        id_header: &config.id_header,
    };
    let mut report = dsn::parse(&received.kept, &options);
    let mut extra = Vec::new();
    if received.was_cut() {
        extra.push(format!(
            "the report is {} bytes; only the first {} were kept (bounce-ingest max-size)",
            received.total,
            received.kept.len()
        ));
    }
    extra.extend(note);
    if !extra.is_empty() {
        report.problems.extend(extra);
        if report.status == ParseStatus::Parsed {
            report.status = ParseStatus::Partial;
        }
    }
    metrics::parsed(source, report.status);
    BounceEvent {
        version: WIRE_VERSION,
        instance: config.instance.clone(),
        bounce_id: BounceId::new(),
        received_at: Utc::now(),
        source,
        peer,
        raw: received.kept,
        raw_size: received.total,
        report,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_long_input_is_read_to_its_end_and_kept_up_to_the_bound() {
        let input = vec![b'x'; 100_000];
        let mut received = Received::default();
        read_bounded(&mut input.as_slice(), 40_000, &mut received)
            .await
            .unwrap();
        assert_eq!(received.total, 100_000);
        assert_eq!(received.kept.len(), 40_000);
        assert!(
            received.kept.capacity() <= 40_000,
            "never reserved past the bound"
        );
        assert!(received.was_cut());

        let mut short = Received::default();
        read_bounded(&mut &b"abc"[..], 40_000, &mut short)
            .await
            .unwrap();
        assert_eq!((short.kept.as_slice(), short.total), (&b"abc"[..], 3));
        assert!(!short.was_cut());
    }

    #[test]
    fn a_cut_report_is_partial_and_says_so() {
        let config = Config::default();
        let raw = std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/resources/dsn/postfix-bounce.eml"
        ))
        .unwrap();
        let whole = event(
            &config,
            Received {
                kept: raw.clone(),
                total: raw.len() as u64,
            },
            BounceSource::Submit,
            None,
            None,
        );
        assert_eq!(whole.report.status, ParseStatus::Parsed);
        let cut = event(
            &config,
            Received {
                kept: raw.clone(),
                total: raw.len() as u64 + 10,
            },
            BounceSource::Tcp,
            Some("127.0.0.1".parse().unwrap()),
            Some("the connection timed out".into()),
        );
        assert_eq!(cut.report.status, ParseStatus::Partial);
        assert_eq!(cut.raw, raw);
        assert_eq!(cut.raw_size, raw.len() as u64 + 10);
        assert!(cut.report.problems[0].contains("only the first"));
        assert_eq!(cut.report.problems[1], "the connection timed out");
        assert_ne!(cut.bounce_id, whole.bounce_id);
    }
}
