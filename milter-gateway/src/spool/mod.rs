//! The audit spool: every audit event is on disk before Postfix hears the answer, and stays
//! there until RabbitMQ has confirmed it (DESIGN.md, durability invariant 1).
//!
//! An append-only log of checksummed records ([`format`]) in preallocated segment files
//! (`<seq>.seg`, 16 hex digits). Writing an event is one `pwrite` into a file that already
//! exists and already has its blocks: no file is created, renamed or deleted per event, so
//! the answer never waits on the file system's journal or on the directory's lock (one file
//! per event did: with 3,000 events/s its renames and unlinks queued on the directory and
//! the spool's p99 went from 0.3 ms to 10-20 ms).
//!
//! - An event is written as an `Event` record before the answer (a `write` in the page
//!   cache, which survives a kill -9 of the gateway); `Answered` marks that the MTA got its
//!   answer; `Removed` that RabbitMQ confirmed it. A rewrite (late results) appends the new
//!   version of the event: the last record about an id wins.
//! - Removals are queued and written, in batches, by the spool's own thread, which also
//!   syncs (`fdatasync`) the segments written since its last round, every few milliseconds,
//!   for power loss; the SMTP answer does not wait for that.
//! - Segments are deleted oldest first, once none of their events is left. An old segment
//!   that holds few events still waiting (held for late results, say) has them copied
//!   forward, so one slow event never pins the whole spool.
//! - On start every segment is read in order: the events not removed are replayed. A torn
//!   last record (a crash mid-write; its message was never answered) is ignored; damage in
//!   the middle is skipped and the segment copied aside (`.corrupt`) for the operator. Files
//!   of the old one-file-per-event spool (`<uuid>.event`, `<uuid>.answered`) are imported.
//!
//! The size bound counts the bytes written to segments, dead records included, until their
//! segment is deleted.
//!
//! Here: the handle ([`Spool`]), the index of latest copies and appending (with rotation to
//! a new segment). Beside it: [`format`] (the record format and its parser), `segment.rs`
//! (segment files: made, read back, read at start, deleted, set aside), `sync.rs` (the spool's
//! thread and the handle that stops it), `legacy.rs` (importing the old format) and
//! `latest.rs` (the last record about an id wins: one pure function, shared by the replay at
//! start and [`inspect`]).

pub mod format;
mod latest;
mod legacy;
mod segment;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use wire::{AuditEvent, MessageId};

use format::Kind;
use latest::Said;
use segment::{
    SEGMENT_MAX, SEGMENT_MIN, Segment, create_segment, delete, read_record, read_segment,
};
use sync::{Inner, sync_loop};

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the audit spool {dir} is full ({used} of {max} bytes): RabbitMQ has been away too long"
    )]
    Full { dir: String, used: u64, max: u64 },
    #[error("cannot write to the audit spool {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// One event in the spool.
#[derive(Debug, Clone)]
pub struct SpoolEntry {
    pub message_id: MessageId,
}

/// An event found on disk at start, to be published again ([`Spool::load`] reads it).
#[derive(Debug)]
pub struct Replayed {
    pub entry: SpoolEntry,
    pub answered: bool,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

/// What the handle and the sync thread share.
struct Shared {
    /// Held (`flock`) while the spool is open.
    _lock: File,
    dir: PathBuf,
    max_bytes: u64,
    segment_size: u64,
    state: Mutex<State>,
    /// Confirmed events, written as `Removed` by the sync thread.
    removed: Mutex<Vec<MessageId>>,
}

/// Where the latest copy of an event is.
#[derive(Clone, Copy)]
struct Located {
    seq: u64,
    offset: u64,
    len: u64,
    answered: bool,
}

#[derive(Default)]
struct State {
    /// By sequence number: the order they were written in.
    segments: BTreeMap<u64, Segment>,
    /// The segment appended to; `None`: the next write starts a new one.
    active: Option<u64>,
    /// A preallocated segment the sync thread made ready for the next rotation.
    spare: Option<(u64, Segment)>,
    next_seq: u64,
    index: HashMap<MessageId, Located>,
    /// Bytes written to the segments that still exist.
    used: u64,
    /// Segments written since the sync thread's last round.
    unsynced: BTreeMap<u64, Arc<File>>,
    /// A segment file was created since the last round (the directory needs a sync).
    created: bool,
    /// Segment files to delete, outside the lock.
    doomed: Vec<PathBuf>,
}

impl State {
    /// Makes `located` the event's latest copy, in the index and in its segment's live set.
    fn place(&mut self, id: MessageId, located: Located) {
        self.forget(id);
        self.index.insert(id, located);
        if let Some(segment) = self.segments.get_mut(&located.seq) {
            segment.live.insert(id);
            segment.live_bytes += located.len;
        }
    }

    /// Drops the event from the index and its segment's live set; true when it was there.
    fn forget(&mut self, id: MessageId) -> bool {
        let Some(old) = self.index.remove(&id) else {
            return false;
        };
        if let Some(segment) = self.segments.get_mut(&old.seq) {
            segment.live.remove(&id);
            segment.live_bytes = segment.live_bytes.saturating_sub(old.len);
        }
        true
    }

    fn locate(&self, id: MessageId) -> Option<(Located, &Segment)> {
        let located = *self.index.get(&id)?;
        Some((located, self.segments.get(&located.seq)?))
    }
}

impl Spool {
    /// Opens (creating) the directory, reads what an earlier run left and returns the events
    /// to replay, oldest first.
    ///
    /// # Errors
    /// The directory cannot be created or read, or a segment cannot be read.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Self, Vec<Replayed>)> {
        fs::create_dir_all(dir)?;
        // Two gateways appending to one spool would corrupt it: the second one refuses to
        // start. The lock goes with the process, however it ends.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join("lock"))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the audit spool {} is in use by another milter-gateway",
                    dir.display()
                ),
            ));
        }
        let mut segments = Vec::new();
        let mut legacy = Vec::new();
        for dirent in fs::read_dir(dir)? {
            let path = dirent?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if let Some(seq) = segment::seq_of(&path) {
                segments.push((seq, path));
                continue;
            }
            match name.rsplit_once('.') {
                Some((_, "event" | "answered")) => legacy.push(path),
                Some((_, "tmp")) => {
                    let _ = fs::remove_file(&path);
                }
                _ => {}
            }
        }
        segments.sort();
        legacy.sort();

        let segment_size = (max_bytes / 8).clamp(SEGMENT_MIN, SEGMENT_MAX);
        let mut state = State::default();
        for (seq, path) in segments {
            read_segment(dir, seq, path, &mut state)?;
        }
        let shared = Arc::new(Shared {
            _lock: lock,
            dir: dir.to_path_buf(),
            max_bytes,
            segment_size,
            state: Mutex::new(state),
            removed: Mutex::new(Vec::new()),
        });
        let (wake, woken) = std_mpsc::sync_channel::<()>(1);
        let thread = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("spool-sync".into())
                .spawn(move || sync_loop(&shared, &woken))?
        };
        let spool = Self {
            inner: Arc::new(Inner {
                shared,
                wake: Some(wake),
                thread: Some(thread),
            }),
        };
        spool.import_legacy(&legacy)?;
        {
            let mut state = spool.inner.lock();
            spool.inner.reclaim(&mut state, false);
            let doomed = std::mem::take(&mut state.doomed);
            drop(state);
            delete(&doomed);
        }
        let mut replay: Vec<Replayed> = spool
            .inner
            .lock()
            .index
            .iter()
            .map(|(id, located)| Replayed {
                entry: SpoolEntry { message_id: *id },
                answered: located.answered,
            })
            .collect();
        // oldest first (UUID v7 sorts by time)
        replay.sort_by_key(|r| r.entry.message_id);
        spool.inner.publish_gauges(&spool.inner.lock());
        Ok((spool, replay))
    }

    fn io_error(&self, source: io::Error) -> SpoolError {
        SpoolError::Io {
            dir: self.inner.dir.display().to_string(),
            source,
        }
    }

    /// Writes the event (as not yet answered).
    ///
    /// # Errors
    /// The spool is full, or the disk refused the write.
    pub fn write(&self, event: &AuditEvent) -> Result<SpoolEntry, SpoolError> {
        self.write_encoded(event.message_id, &wire::contract::encode(event))
    }

    /// Writes an event already encoded as wire JSON. Blocking file I/O: call it from a
    /// blocking context (`spawn_blocking`) on the async side.
    ///
    /// # Errors
    /// The spool is full, or the disk refused the write.
    pub fn write_encoded(&self, id: MessageId, json: &[u8]) -> Result<SpoolEntry, SpoolError> {
        self.append_event(id, json, None)?;
        metrics::counter!("cluegetter_gateway_spooled_total").increment(1);
        Ok(SpoolEntry { message_id: id })
    }

    /// Replaces a written event by a new version of it (same message id), keeping its
    /// answered flag. Blocking file I/O, like [`Spool::write_encoded`].
    ///
    /// # Errors
    /// The event is no longer in the spool, the spool is full, or the disk refused the write;
    /// the old event is then left as it was.
    pub fn rewrite_encoded(
        &self,
        entry: &SpoolEntry,
        json: &[u8],
    ) -> Result<SpoolEntry, SpoolError> {
        self.append_event(entry.message_id, json, Some(entry))?;
        Ok(entry.clone())
    }

    fn append_event(
        &self,
        id: MessageId,
        json: &[u8],
        replacing: Option<&SpoolEntry>,
    ) -> Result<(), SpoolError> {
        if json.len() > format::MAX_PAYLOAD - format::ID_LEN {
            return Err(self.io_error(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the audit event is too large to spool ({} bytes)",
                    json.len()
                ),
            )));
        }
        let mut state = self.inner.lock();
        let answered = match replacing {
            None => false,
            Some(entry) => match state.index.get(&entry.message_id) {
                Some(located) => located.answered,
                None => {
                    return Err(self.io_error(io::Error::new(
                        io::ErrorKind::NotFound,
                        format!("{id} is no longer in the spool"),
                    )));
                }
            },
        };
        let record = format::encode(Kind::Event, answered, id, json);
        let len = record.len() as u64;
        if state.used + len > self.inner.max_bytes {
            // confirmed events may be waiting to be let go of: do it now
            self.inner.reclaim(&mut state, true);
            let doomed = std::mem::take(&mut state.doomed);
            delete(&doomed);
            if state.used + len > self.inner.max_bytes {
                metrics::counter!("cluegetter_gateway_spool_full_total").increment(1);
                return Err(SpoolError::Full {
                    dir: self.inner.dir.display().to_string(),
                    used: state.used,
                    max: self.inner.max_bytes,
                });
            }
        }
        let (seq, offset) = self
            .inner
            .append(&mut state, &record)
            .map_err(|e| self.io_error(e))?;
        state.place(
            id,
            Located {
                seq,
                offset,
                len,
                answered,
            },
        );
        metrics::gauge!("cluegetter_gateway_spool_bytes").set(state.used as f64);
        metrics::gauge!("cluegetter_gateway_spool_events").set(state.index.len() as f64);
        drop(state);
        self.inner.wake();
        Ok(())
    }

    /// Records that the MTA got its answer. Blocking file I/O (a small write), like
    /// [`Spool::write_encoded`].
    pub fn mark_answered(&self, entry: &SpoolEntry) {
        let id = entry.message_id;
        let mut state = self.inner.lock();
        match state.index.get(&id) {
            // already confirmed and removed is fine
            None | Some(Located { answered: true, .. }) => return,
            Some(_) => {}
        }
        let record = format::encode(Kind::Answered, true, id, &[]);
        match self.inner.append(&mut state, &record) {
            Ok(_) => {
                if let Some(located) = state.index.get_mut(&id) {
                    located.answered = true;
                }
            }
            // only costs the flag: a replay would say "not answered"
            Err(error) => {
                tracing::warn!(message_id = %id, %error, "cannot mark the spooled event answered");
            }
        }
    }

    /// Lets the event go once RabbitMQ confirmed it (written by the spool's thread within a
    /// few milliseconds; never blocks).
    pub fn remove(&self, entry: &SpoolEntry) {
        lock(&self.inner.removed).push(entry.message_id);
        self.inner.wake();
    }

    /// Reads a spooled event back, with its answered flag. Blocking file I/O (a read that
    /// is usually served from the page cache).
    ///
    /// # Errors
    /// The event is no longer in the spool, or its record cannot be read.
    pub fn load(&self, entry: &SpoolEntry) -> io::Result<AuditEvent> {
        let state = self.inner.lock();
        let (located, segment) = state.locate(entry.message_id).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is no longer in the spool", entry.message_id),
            )
        })?;
        let bytes = read_record(segment, located)?;
        drop(state);
        let record = format::parse_record(&bytes)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "damaged spool record"))?;
        let mut event = wire::contract::decode::<AuditEvent>(record.json)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        event.answered = located.answered;
        Ok(event)
    }

    /// Bytes the spool's segments hold now (dead records included until their segment goes).
    pub fn used_bytes(&self) -> u64 {
        self.inner.lock().used
    }

    /// Events in the spool now (not yet confirmed).
    pub fn len(&self) -> usize {
        self.inner.lock().index.len()
    }

    /// True when no event is waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    /// Appends one record to the active segment (starting a new one when it is full).
    fn append(&self, state: &mut State, record: &[u8]) -> io::Result<(u64, u64)> {
        let len = record.len() as u64;
        let seq = match state.active {
            Some(seq)
                if state
                    .segments
                    .get(&seq)
                    .is_some_and(|s| s.written + len <= s.capacity) =>
            {
                seq
            }
            _ => self.rotate(state, len)?,
        };
        let segment = state
            .segments
            .get_mut(&seq)
            .ok_or_else(|| io::Error::other("the active spool segment is missing"))?;
        let offset = segment.written;
        segment.file.write_all_at(record, offset)?;
        segment.written += len;
        let file = Arc::clone(&segment.file);
        state.used += len;
        state.unsynced.insert(seq, file);
        Ok((seq, offset))
    }

    /// Starts a new active segment with room for a record of `len` bytes.
    fn rotate(&self, state: &mut State, len: u64) -> io::Result<u64> {
        let capacity = self.segment_size.max(format::FILE_MAGIC.len() as u64 + len);
        let newest = state.segments.keys().next_back().copied();
        let (seq, segment) = match state.spare.take() {
            Some((seq, spare))
                if spare.capacity >= capacity && newest.is_none_or(|newest| seq > newest) =>
            {
                (seq, spare)
            }
            other => {
                if let Some((_, stale)) = other {
                    state.doomed.push(stale.path);
                }
                let seq = state.next_seq;
                state.next_seq += 1;
                (seq, create_segment(&self.dir, seq, capacity)?)
            }
        };
        state.created = true;
        state.used += segment.written;
        state.unsynced.insert(seq, Arc::clone(&segment.file));
        state.segments.insert(seq, segment);
        state.active = Some(seq);
        metrics::gauge!("cluegetter_gateway_spool_segments").set(state.segments.len() as f64);
        Ok(seq)
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // nothing panics while holding these; if something did, the data is still consistent
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The events a gateway's spool directory holds now, with their answered flags, read
/// without changing anything (for tests and for the operator's eyes).
///
/// # Errors
/// The directory or a segment cannot be read.
pub fn inspect(dir: &Path) -> io::Result<Vec<AuditEvent>> {
    let mut segments: Vec<(u64, PathBuf)> = fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|d| {
            let path = d.path();
            Some((segment::seq_of(&path)?, path))
        })
        .collect();
    segments.sort();
    let mut events: HashMap<MessageId, AuditEvent> = HashMap::new();
    for (_, path) in segments {
        let data = match fs::read(&path) {
            Ok(data) => data,
            // deleted meanwhile: drained
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let Ok(scan) = format::scan(&data) else {
            continue;
        };
        for record in scan.records {
            let said = match record.kind {
                Kind::Event => Said::Event(
                    wire::contract::decode::<AuditEvent>(record.json)
                        .ok()
                        .filter(|event| event.message_id == record.id)
                        .map(|event| AuditEvent {
                            answered: record.answered,
                            ..event
                        }),
                ),
                Kind::Answered => Said::Answered,
                Kind::Removed => Said::Removed,
            };
            if let Some(event) = latest::after(events.remove(&record.id), said) {
                events.insert(record.id, event);
            }
        }
    }
    let mut events: Vec<AuditEvent> = events.into_values().collect();
    events.sort_by_key(|e| e.message_id);
    Ok(events)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::Utc;
    use proptest::prelude::*;
    use uuid::Uuid;
    use wire::{Action, AuditMessage, AuditVerdict, SessionInfo, WIRE_VERSION};

    use super::legacy::LEGACY_MAGIC;
    use super::*;

    pub(crate) fn event() -> AuditEvent {
        AuditEvent {
            version: WIRE_VERSION,
            instance: "default".into(),
            message_id: MessageId::new(),
            answered: true,
            session: SessionInfo {
                session_id: Uuid::now_v7(),
                connected_at: Utc::now(),
                client_addr: None,
                client_port: None,
                client_name: String::new(),
                helo: String::new(),
                sasl_username: String::new(),
                sasl_method: String::new(),
                sasl_sender: String::new(),
                tls: None,
                mta_hostname: String::new(),
                daemon_name: String::new(),
            },
            message: AuditMessage {
                queue_id: "Q".into(),
                received_at: Utc::now(),
                sender: String::new(),
                recipients: vec![],
                rejected_recipients: vec![],
                headers: vec![],
                headers_truncated: false,
                body_size: 0,
                body_hash: String::new(),
                body: None,
                message_id_header: String::new(),
                subject: String::new(),
            },
            verdict: AuditVerdict {
                verdict: Action::Permit,
                applied: Action::Permit,
                reason: String::new(),
                reject_score: 0.0,
                reject_threshold: 5.0,
                tempfail_score: 0.0,
                tempfail_threshold: 8.0,
                noop: false,
                whitelisted: false,
                failure: None,
            },
            results: vec![],
        }
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cg-spool-{}", Uuid::now_v7()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// What a kill -9 leaves: the files as they are in the page cache now, opened by a new
    /// process (a copy, so that this process's spool thread cannot touch them).
    fn crash_copy(spool: &Spool, dir: &Path) -> PathBuf {
        // nothing is appended or copied forward meanwhile; only drained segments and spare
        // ones may come and go
        let _writes = spool.inner.lock();
        let copy = temp_dir();
        for name in names(dir) {
            match fs::copy(dir.join(&name), copy.join(&name)) {
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => panic!("{error}"),
            }
        }
        copy
    }

    fn replayed(replay: &[Replayed]) -> Vec<(MessageId, bool)> {
        replay
            .iter()
            .map(|r| (r.entry.message_id, r.answered))
            .collect()
    }

    #[test]
    fn written_events_are_replayed_with_their_answered_flag_until_removed() {
        let dir = temp_dir();
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        let (a, b, c) = (event(), event(), event());
        let ea = spool.write(&a).unwrap();
        let eb = spool.write(&b).unwrap();
        let ec = spool.write(&c).unwrap();
        spool.mark_answered(&eb);
        spool.mark_answered(&ec);
        // killed now: all three come back, b and c answered
        let crashed = crash_copy(&spool, &dir);
        let (_, replay) = Spool::open(&crashed, 1 << 20).unwrap();
        assert_eq!(
            replayed(&replay),
            vec![
                (a.message_id, false),
                (b.message_id, true),
                (c.message_id, true)
            ]
        );
        fs::remove_dir_all(&crashed).unwrap();

        spool.remove(&ec);
        drop(spool); // a clean stop writes the removal
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            replayed(&replay),
            vec![(a.message_id, false), (b.message_id, true)]
        );
        assert_eq!(spool.load(&eb).unwrap().message_id, b.message_id);
        assert!(spool.load(&eb).unwrap().answered);
        assert!(!spool.load(&ea).unwrap().answered);
        assert!(spool.load(&ec).is_err(), "removed");
        spool.remove(&ea);
        spool.remove(&replay[1].entry);
        drop(spool);
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        assert!(spool.is_empty());
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rewritten_event_replaces_the_old_one_and_keeps_its_answered_flag() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        let mut e = event();
        let entry = spool.write(&e).unwrap();
        spool.mark_answered(&entry);
        e.message.subject = "a much longer subject than before, with late results".into();
        let json = wire::contract::encode(&e);
        let rewritten = spool.rewrite_encoded(&entry, &json).unwrap();
        let back = spool.load(&rewritten).unwrap();
        assert!(back.answered, "still answered");
        assert_eq!(back.message.subject, e.message.subject);
        let seen = inspect(&dir).unwrap();
        assert_eq!(seen.len(), 1);
        assert!(seen[0].answered);
        assert_eq!(seen[0].message.subject, e.message.subject);

        let crashed = crash_copy(&spool, &dir);
        let (copy, replay) = Spool::open(&crashed, 1 << 20).unwrap();
        assert_eq!(replayed(&replay), vec![(e.message_id, true)]);
        assert_eq!(
            copy.load(&replay[0].entry).unwrap().message.subject,
            e.message.subject
        );
        drop(copy);
        fs::remove_dir_all(&crashed).unwrap();

        spool.remove(&rewritten);
        drop(spool);
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        // gone: refused, nothing written
        let used = spool.used_bytes();
        assert!(spool.rewrite_encoded(&rewritten, &json).is_err());
        assert_eq!(spool.used_bytes(), used);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_spool_refuses_loudly_and_frees_space_on_remove() {
        let dir = temp_dir();
        // room for one event and a half
        let one = (format::FILE_MAGIC.len()
            + format::HEADER_LEN
            + format::ID_LEN
            + wire::contract::encode(&event()).len()) as u64;
        let (spool, _) = Spool::open(&dir, one * 3 / 2).unwrap();
        let first = spool.write(&event()).unwrap();
        let err = spool.write(&event()).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        spool.remove(&first);
        spool.write(&event()).unwrap();
        assert!(spool.used_bytes() <= one * 3 / 2);
        drop(spool);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_second_gateway_on_the_same_spool_is_refused_until_the_first_stops() {
        let dir = temp_dir();
        let (first, _) = Spool::open(&dir, 1 << 20).unwrap();
        let Err(error) = Spool::open(&dir, 1 << 20) else {
            panic!("two spools open on one directory");
        };
        assert!(error.to_string().contains("in use"), "{error}");
        drop(first);
        let (again, _) = Spool::open(&dir, 1 << 20).unwrap();
        drop(again);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_files_are_set_aside_not_deleted() {
        let dir = temp_dir();
        let id = MessageId::new();
        fs::write(dir.join(format!("{id}.event")), b"garbage").unwrap();
        fs::write(dir.join("0000000000000007.seg"), b"not a segment").unwrap();
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        drop(spool);
        let names = names(&dir);
        assert!(names.contains(&format!("{id}.event.corrupt")), "{names:?}");
        assert!(names.contains(&"0000000000000007.seg.corrupt".to_owned()));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_torn_last_write_is_dropped_and_damage_in_the_middle_is_skipped_and_copied_aside() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        let events: Vec<AuditEvent> = (0..4).map(|_| event()).collect();
        for e in &events {
            spool.write(e).unwrap();
        }
        let crashed = crash_copy(&spool, &dir);
        drop(spool);
        let segment = names(&crashed)
            .into_iter()
            .map(|n| crashed.join(n))
            .find(|p| fs::metadata(p).unwrap().len() > 100)
            .unwrap();
        let mut data = fs::read(&segment).unwrap();
        let scan = format::scan(&data).unwrap();
        let (second, last) = (scan.records[1].offset, &scan.records[3]);
        let (last_at, last_len) = (last.offset, last.len);
        // the second record damaged, the last one cut short
        data[second + format::HEADER_LEN + 3] ^= 0xff;
        data[last_at + last_len / 2..last_at + last_len].fill(0);
        fs::write(&segment, &data).unwrap();

        let (copy, replay) = Spool::open(&crashed, 1 << 20).unwrap();
        assert_eq!(
            replayed(&replay),
            vec![(events[0].message_id, false), (events[2].message_id, false)]
        );
        drop(copy);
        assert!(
            names(&crashed).iter().any(|n| n.ends_with(".seg.corrupt")),
            "the damaged segment is copied aside"
        );
        fs::remove_dir_all(&crashed).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_old_spool_format_is_imported() {
        let dir = temp_dir();
        let (a, b) = (event(), event());
        for (e, kind) in [(&a, "event"), (&b, "answered")] {
            let mut bytes = LEGACY_MAGIC.to_vec();
            bytes.extend_from_slice(&wire::contract::encode(e));
            fs::write(dir.join(format!("{}.{kind}", e.message_id)), bytes).unwrap();
        }
        fs::write(dir.join(format!("{}.tmp", MessageId::new())), b"torn").unwrap();
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(
            replayed(&replay),
            vec![(a.message_id, false), (b.message_id, true)]
        );
        assert!(
            names(&dir)
                .iter()
                .all(|n| n.ends_with(".seg") || n == "lock"),
            "{:?}",
            names(&dir)
        );
        drop(spool);
        let (_, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(replay.len(), 2, "kept in the new format");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn one_event_held_back_does_not_pin_the_segments_written_after_it() {
        let dir = temp_dir();
        // small segments (512 KiB), room for far more than the live events
        let (spool, _) = Spool::open(&dir, 4 << 20).unwrap();
        let mut held = event();
        held.message.subject = "held for late results".into();
        let held_entry = spool.write(&held).unwrap();
        spool.mark_answered(&held_entry);
        for _ in 0..2000 {
            let entry = spool.write(&event()).unwrap();
            spool.mark_answered(&entry);
            spool.remove(&entry);
            spool.inner.sync_round(false);
        }
        for _ in 0..10 {
            spool.inner.sync_round(false);
        }
        let segments = names(&dir).iter().filter(|n| n.ends_with(".seg")).count();
        assert!(
            segments <= 3,
            "{segments} segments left: the held event was not copied forward"
        );
        assert!(
            spool.used_bytes() < 3 * spool.inner.segment_size,
            "{}",
            spool.used_bytes()
        );
        let back = spool.load(&held_entry).unwrap();
        assert!(back.answered);
        assert_eq!(back.message.subject, held.message.subject);
        drop(spool);
        let (_, replay) = Spool::open(&dir, 4 << 20).unwrap();
        assert_eq!(replayed(&replay), vec![(held.message_id, true)]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Write,
        Mark(usize),
        Rewrite(usize),
        Remove(usize),
        Round,
        Reopen,
        Crash,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Write),
            2 => any::<usize>().prop_map(Op::Mark),
            2 => any::<usize>().prop_map(Op::Rewrite),
            3 => any::<usize>().prop_map(Op::Remove),
            2 => Just(Op::Round),
            1 => Just(Op::Reopen),
            1 => Just(Op::Crash),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

        /// Any sequence of writes, marks, rewrites, removals, sync rounds, clean restarts and
        /// kill -9s: the spool holds exactly the events not removed, each in its latest
        /// version and with its answered flag (a crash may bring back a removal not yet
        /// written, never lose an event or a mark).
        #[test]
        fn the_spool_agrees_with_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut dir = temp_dir();
            // small, so that segments rotate, drain and get compacted
            let max = 1 << 20;
            let (mut spool, _) = Spool::open(&dir, max).unwrap();
            // id -> (answered, version, removed but maybe not yet written)
            let mut model: BTreeMap<MessageId, (bool, u32, bool)> = BTreeMap::new();
            let pick = |model: &BTreeMap<MessageId, (bool, u32, bool)>, i: usize| {
                let live: Vec<MessageId> =
                    model.iter().filter(|(_, v)| !v.2).map(|(k, _)| *k).collect();
                (!live.is_empty()).then(|| live[i % live.len()])
            };
            for op in ops {
                match op {
                    Op::Write => {
                        let mut e = event();
                        e.message.subject = "v0".into();
                        e.message.body = Some(vec![b'x'; 3000]);
                        spool.write(&e).unwrap();
                        model.insert(e.message_id, (false, 0, false));
                    }
                    Op::Mark(i) => if let Some(id) = pick(&model, i) {
                        spool.mark_answered(&SpoolEntry { message_id: id });
                        if let Some(v) = model.get_mut(&id) { v.0 = true; }
                    },
                    Op::Rewrite(i) => if let Some(id) = pick(&model, i) {
                        let entry = SpoolEntry { message_id: id };
                        let mut e = spool.load(&entry).unwrap();
                        let v = model.get_mut(&id).unwrap();
                        v.1 += 1;
                        e.message.subject = format!("v{}", v.1);
                        spool.rewrite_encoded(&entry, &wire::contract::encode(&e)).unwrap();
                    },
                    Op::Remove(i) => if let Some(id) = pick(&model, i) {
                        spool.remove(&SpoolEntry { message_id: id });
                        if let Some(v) = model.get_mut(&id) { v.2 = true; }
                    },
                    Op::Round => {
                        spool.inner.sync_round(false);
                        model.retain(|_, v| !v.2);
                    }
                    Op::Reopen | Op::Crash => {
                        let crash = matches!(op, Op::Crash);
                        let next = if crash {
                            let copy = crash_copy(&spool, &dir);
                            drop(spool);
                            copy
                        } else {
                            drop(spool);
                            model.retain(|_, v| !v.2);
                            dir.clone()
                        };
                        let (reopened, replay) = Spool::open(&next, max).unwrap();
                        let got: BTreeMap<MessageId, bool> =
                            replay.iter().map(|r| (r.entry.message_id, r.answered)).collect();
                        // a removal not yet written may come back after a crash
                        model.retain(|id, v| !v.2 || got.contains_key(id));
                        for v in model.values_mut() { v.2 = false; }
                        let want: BTreeMap<MessageId, bool> =
                            model.iter().map(|(k, v)| (*k, v.0)).collect();
                        prop_assert_eq!(&got, &want);
                        for (id, (_, version, _)) in &model {
                            let e = reopened.load(&SpoolEntry { message_id: *id }).unwrap();
                            prop_assert_eq!(e.message.subject, format!("v{version}"));
                        }
                        if crash {
                            fs::remove_dir_all(&dir).unwrap();
                        }
                        spool = reopened;
                        dir = next;
                    }
                }
            }
            prop_assert!(spool.used_bytes() <= max + SEGMENT_MIN);
            drop(spool);
            fs::remove_dir_all(&dir).unwrap();
        }
    }
}
