//! `bounce-ingest maillog FILE|-`: Postfix's log into delivery events, at least once.
//!
//! - `FILE` (Postfix's `maillog_file`, or a syslog file) is followed by position: the inode and
//!   the offset after the last line whose events RabbitMQ confirmed are kept in
//!   `[bounce-ingest] maillog-state-file` (written to a temporary file, fsynced, renamed). After a
//!   restart it goes on from there; a line published but not yet recorded is published again,
//!   which the auditor's idempotent insert absorbs. Without a state file, or when the file's
//!   inode changed, it starts at the beginning of the file. At the end of the file it polls
//!   every `maillog-poll-interval`: a file renamed away (logrotate, `postfix logrotate`) is
//!   read to its end, then the new file at the path from its start; a file shorter than the
//!   offset (copytruncate) is read again from its start.
//! - `-` reads standard input (`journalctl -f -u postfix -o short-iso | bounce-ingest maillog -`)
//!   until it closes; there is no position to keep (journald's cursor would be; see README).
//!
//! Lines are read in batches (what is already buffered, at most [`BATCH`]): the batch's
//! delivery events are published together, persistent, `mandatory`, and confirmed, before its
//! offset is recorded. A partial last line (Postfix still writing) waits for its newline.

use std::io::SeekFrom;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel, Connection};
use platform::backoff::Backoff;
use platform::broker::{self, PublishError};
use platform::config::Config;
use tokio::io::{AsyncBufReadExt as _, AsyncRead, AsyncSeekExt as _, BufReader};
use tokio_util::sync::CancellationToken;
use wire::{DeliveryEvent, WIRE_VERSION};

use crate::maillog::{self, Clock, DeliveryLine};
use crate::metrics;

/// Most lines published as one window of confirms.
pub const BATCH: usize = 512;
/// A longer line is not a Postfix delivery line; it is skipped.
pub const MAX_LINE: usize = 64 * 1024;

/// Where `maillog` reads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// Follow this file by position.
    File(PathBuf),
    /// Standard input, until it closes.
    Stdin,
}

impl Source {
    pub fn from_arg(arg: &str) -> Self {
        if arg == "-" {
            Source::Stdin
        } else {
            Source::File(PathBuf::from(arg))
        }
    }
}

/// The follower's place in the file: the state file's content.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub inode: u64,
    pub offset: u64,
}

impl Position {
    /// `v1 <inode> <offset>`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut words = text.split_whitespace();
        if words.next()? != "v1" {
            return None;
        }
        let inode = words.next()?.parse().ok()?;
        let offset = words.next()?.parse().ok()?;
        words.next().is_none().then_some(Self { inode, offset })
    }

    pub fn to_text(self) -> String {
        format!("v1 {} {}\n", self.inode, self.offset)
    }

    /// Where to start reading a file of this `inode` and `len`: at the kept offset when it is
    /// the same file and not shorter than it, else at its beginning.
    pub fn start_in(state: Option<Self>, inode: u64, len: u64) -> u64 {
        match state {
            Some(kept) if kept.inode == inode && kept.offset <= len => kept.offset,
            _ => 0,
        }
    }
}

/// Reads the state file; a missing one is no position, an unreadable one an error.
///
/// # Errors
/// The file exists but cannot be read or is not a position.
pub fn load_position(path: &Path) -> anyhow::Result<Option<Position>> {
    match std::fs::read_to_string(path) {
        Ok(text) => Position::parse(&text)
            .map(Some)
            .with_context(|| format!("{} is not a maillog position", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes the state file: a temporary file beside it, fsynced, renamed over it.
///
/// # Errors
/// The directory is not writable.
pub fn store_position(path: &Path, position: Position) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(".tmp");
    let temporary = PathBuf::from(temporary);
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(position.to_text().as_bytes())?;
    file.sync_data()?;
    std::fs::rename(&temporary, path)
}

/// The delivery event of one line.
pub fn event(config: &Config, line: DeliveryLine) -> DeliveryEvent {
    let host = if config.bounce_ingest.maillog_hostname.is_empty() {
        line.host
    } else {
        config.bounce_ingest.maillog_hostname.clone()
    };
    DeliveryEvent {
        version: WIRE_VERSION,
        instance: config.instance.clone(),
        mta_hostname: host.to_ascii_lowercase(),
        queue_id: line.queue_id,
        recipient: line.recipient,
        orig_to: line.orig_to,
        status: line.status,
        dsn: line.dsn,
        relay: line.relay,
        delay: line.delay,
        reason: line.reason,
        service: line.service,
        log_time: line.log_time,
    }
}

/// Runs `maillog` until `shutdown` fires (or, for [`Source::Stdin`], the input ends).
///
/// # Errors
/// The state file cannot be read or written.
pub async fn run(
    config: Config,
    source: Source,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    metrics::describe();
    let mut publisher = Publisher::new(&config);
    let outcome = match &source {
        Source::Stdin => {
            let stdin = BufReader::new(tokio::io::stdin());
            follow_stream(&config, stdin, &mut publisher, &shutdown).await
        }
        Source::File(path) => follow_file(&config, path, &mut publisher, &shutdown).await,
    };
    publisher.close().await;
    outcome
}

/// Publishes `events` from a stream until it ends or `shutdown`.
///
/// # Errors
/// Reading the stream failed.
pub async fn follow_stream<R: AsyncRead + Unpin>(
    config: &Config,
    mut reader: BufReader<R>,
    publisher: &mut Publisher,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let mut buffer = Vec::new();
    loop {
        let batch = tokio::select! {
            batch = read_batch(&mut reader, &mut buffer) => batch.context("cannot read the input")?,
            () = shutdown.cancelled() => return Ok(()),
        };
        let events = events_of(config, &batch.lines);
        if !publisher.publish_all(&events, shutdown).await {
            return Ok(());
        }
        if batch.at_end {
            if !buffer.is_empty() {
                // the last line had no newline: the input ended, so it is whole
                let lines = vec![std::mem::take(&mut buffer)];
                let events = events_of(config, &lines);
                publisher.publish_all(&events, shutdown).await;
            }
            tracing::info!("the input ended");
            return Ok(());
        }
    }
}

async fn follow_file(
    config: &Config,
    path: &Path,
    publisher: &mut Publisher,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let state_file = config.bounce_ingest.maillog_state_file.clone();
    let poll = config.bounce_ingest.maillog_poll_interval;
    let mut kept = load_position(&state_file)?;
    let mut waiting_logged = false;
    'files: loop {
        let file = match tokio::fs::File::open(path).await {
            Ok(file) => file,
            Err(error) => {
                if !waiting_logged {
                    tracing::warn!(file = %path.display(), %error, "cannot open the log; waiting for it");
                    waiting_logged = true;
                }
                if !sleep(poll, shutdown).await {
                    return Ok(());
                }
                continue 'files;
            }
        };
        waiting_logged = false;
        let meta = file.metadata().await.context("cannot stat the log")?;
        let inode = meta.ino();
        let mut offset = Position::start_in(kept, inode, meta.len());
        tracing::info!(file = %path.display(), inode, offset, "following the log");
        let mut reader = BufReader::new(file);
        reader.seek(SeekFrom::Start(offset)).await?;
        let mut buffer = Vec::new();
        let mut renamed = false;
        loop {
            let batch = read_batch(&mut reader, &mut buffer)
                .await
                .context("cannot read the log")?;
            let events = events_of(config, &batch.lines);
            if !publisher.publish_all(&events, shutdown).await {
                return Ok(());
            }
            if batch.bytes > 0 {
                offset += batch.bytes;
                let position = Position { inode, offset };
                let target = state_file.clone();
                tokio::task::spawn_blocking(move || store_position(&target, position))
                    .await
                    .context("the state writer failed")?
                    .with_context(|| format!("cannot write {}", state_file.display()))?;
            }
            if !batch.at_end {
                continue;
            }
            if renamed {
                // the old file was read to its end after the rename: on to the new one
                metrics_rotation("renamed");
                tracing::info!(file = %path.display(), "the log was rotated; reading the new file");
                kept = None;
                continue 'files;
            }
            if !sleep(poll, shutdown).await {
                return Ok(());
            }
            match tokio::fs::metadata(path).await {
                Ok(now) if now.ino() != inode => renamed = true,
                _ => {}
            }
            let len = reader.get_ref().metadata().await?.len();
            if len < offset + buffer.len() as u64 {
                metrics_rotation("truncated");
                tracing::info!(file = %path.display(), "the log was truncated; reading it from its start");
                reader.seek(SeekFrom::Start(0)).await?;
                buffer.clear();
                offset = 0;
            }
        }
    }
}

fn metrics_rotation(how: &'static str) {
    ::metrics::counter!(metrics::ROTATIONS, "how" => how).increment(1);
}

async fn sleep(pause: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(pause) => true,
        () = shutdown.cancelled() => false,
    }
}

/// Whole lines read, how many bytes they took, and whether the reader had nothing more now.
struct Batch {
    lines: Vec<Vec<u8>>,
    bytes: u64,
    at_end: bool,
}

/// Reads whole lines while more are buffered, at most [`BATCH`]; waits only for the first.
/// A partial line stays in `buffer` for the next call.
async fn read_batch<R: AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
    buffer: &mut Vec<u8>,
) -> std::io::Result<Batch> {
    let mut batch = Batch {
        lines: Vec::new(),
        bytes: 0,
        at_end: false,
    };
    while batch.lines.len() < BATCH {
        let read = reader.read_until(b'\n', buffer).await?;
        if read == 0 || buffer.last() != Some(&b'\n') {
            // at the end for now; a partial line waits in `buffer`
            batch.at_end = true;
            break;
        }
        let line = std::mem::take(buffer);
        batch.bytes += line.len() as u64;
        if line.len() <= MAX_LINE {
            batch.lines.push(line);
        }
        if reader.buffer().is_empty() {
            break;
        }
    }
    if buffer.len() > MAX_LINE {
        // not a line anyone wrote for us: count it as read and drop what we hold of it
        batch.bytes += buffer.len() as u64;
        buffer.clear();
    }
    Ok(batch)
}

fn events_of(config: &Config, lines: &[Vec<u8>]) -> Vec<DeliveryEvent> {
    let clock = Clock::local();
    let mut events = Vec::new();
    for line in lines {
        let text = String::from_utf8_lossy(line);
        match maillog::parse_line(&text, &clock) {
            Some(delivery) => {
                ::metrics::counter!(metrics::MAILLOG_LINES, "kind" => "delivery").increment(1);
                tracing::debug!(queue_id = %delivery.queue_id, status = %delivery.status,
                    recipient = %delivery.recipient, "delivery line");
                events.push(event(config, delivery));
            }
            None => {
                ::metrics::counter!(metrics::MAILLOG_LINES, "kind" => "other").increment(1);
            }
        }
    }
    events
}

/// Confirmed publishing of delivery events, reconnecting as needed.
pub struct Publisher {
    supervisor: broker::Supervisor,
    link: Option<(Connection, Channel)>,
    backoff: Backoff,
}

impl Publisher {
    pub fn new(config: &Config) -> Self {
        Self {
            supervisor: broker::Supervisor::from_config(&config.broker, "bounce-ingest maillog"),
            link: None,
            backoff: Backoff::new(config.broker.reconnect_max_backoff),
        }
    }

    /// Publishes every event and waits for RabbitMQ's confirms, trying again (all of them: the
    /// auditor stores a repeated event once) until they are all confirmed. False when
    /// `shutdown` came first.
    pub async fn publish_all(
        &mut self,
        events: &[DeliveryEvent],
        shutdown: &CancellationToken,
    ) -> bool {
        if events.is_empty() {
            return true;
        }
        loop {
            if self.link.is_none() {
                self.link = self.connect(shutdown).await;
            }
            let Some((_, channel)) = self.link.as_ref() else {
                return false;
            };
            match publish_window(channel, events).await {
                Ok(()) => {
                    for event in events {
                        ::metrics::counter!(metrics::DELIVERIES, "status" => event.status.as_str())
                            .increment(1);
                    }
                    self.backoff.reset();
                    return true;
                }
                Err(error) => {
                    ::metrics::counter!(metrics::PUBLISH_RETRIES).increment(1);
                    let delay = self.backoff.next_delay();
                    tracing::warn!(%error, events = events.len(), retry_in = ?delay,
                        "delivery events not confirmed; retrying");
                    if let Some((connection, _)) = self.link.take() {
                        broker::close(&connection, 320, "reconnecting").await;
                        self.supervisor.lost();
                    }
                    if !self.backoff.sleep_for(delay, shutdown).await {
                        return false;
                    }
                }
            }
        }
    }

    async fn connect(&mut self, shutdown: &CancellationToken) -> Option<(Connection, Channel)> {
        loop {
            let connection = self.supervisor.connect(shutdown).await?;
            match open_channel(&connection).await {
                Ok(channel) => return Some((connection, channel)),
                Err(error) => {
                    if !self.supervisor.end(&connection, Err(error), shutdown).await {
                        return None;
                    }
                }
            }
        }
    }

    pub async fn close(self) {
        if let Some((connection, _)) = self.link {
            broker::close(&connection, 200, "shutting down").await;
        }
    }
}

/// A channel with the delivery topology declared and publisher confirms on.
///
/// # Errors
/// The channel cannot be opened or the broker refuses a declaration.
pub async fn open_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    broker::declare_delivery_topology(connection).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes the events, then waits for every confirm.
async fn publish_window(channel: &Channel, events: &[DeliveryEvent]) -> Result<(), PublishError> {
    let mut confirms = Vec::with_capacity(events.len());
    for event in events {
        let properties = BasicProperties::default().with_content_type("application/json".into());
        confirms.push(
            broker::publish_mandatory(
                channel,
                broker::DELIVERY_EXCHANGE,
                "",
                &wire::contract::encode(event),
                properties,
            )
            .await?,
        );
    }
    for confirm in confirms {
        broker::confirmed(&confirm.await?)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn positions_are_written_and_read_and_say_where_to_start() {
        let kept = Position {
            inode: 42,
            offset: 1000,
        };
        assert_eq!(Position::parse(&kept.to_text()), Some(kept));
        assert_eq!(Position::parse("v2 1 2"), None);
        assert_eq!(Position::parse("v1 1"), None);
        assert_eq!(Position::parse("v1 1 2 3"), None);
        // the same file, grown: go on; shorter (truncated) or another file: from the start
        assert_eq!(Position::start_in(Some(kept), 42, 5000), 1000);
        assert_eq!(Position::start_in(Some(kept), 42, 1000), 1000);
        assert_eq!(Position::start_in(Some(kept), 42, 999), 0);
        assert_eq!(Position::start_in(Some(kept), 43, 5000), 0);
        assert_eq!(Position::start_in(None, 42, 5000), 0);
    }

    #[test]
    fn the_state_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("cgt-maillog-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state");
        assert_eq!(load_position(&path).unwrap(), None);
        let position = Position {
            inode: 7,
            offset: 99,
        };
        store_position(&path, position).unwrap();
        assert_eq!(load_position(&path).unwrap(), Some(position));
        std::fs::write(&path, "junk").unwrap();
        assert!(load_position(&path).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn batches_hold_whole_lines_and_a_partial_line_waits() {
        let input: &[u8] = b"one\ntwo\nthr";
        let mut reader = BufReader::new(input);
        let mut buffer = Vec::new();
        let batch = read_batch(&mut reader, &mut buffer).await.unwrap();
        assert_eq!(batch.lines, vec![b"one\n".to_vec(), b"two\n".to_vec()]);
        assert_eq!(batch.bytes, 8);
        let batch = read_batch(&mut reader, &mut buffer).await.unwrap();
        assert!(batch.at_end);
        assert!(batch.lines.is_empty());
        assert_eq!(buffer, b"thr");
    }
}
