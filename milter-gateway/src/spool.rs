//! The audit spool: every audit event is on disk before Postfix hears the answer, and stays
//! there until RabbitMQ has confirmed it (DESIGN.md, durability invariant 1).
//!
//! One file per event, so that nothing needs compaction and a torn write can only ever be a
//! temporary file:
//! - `<uuid>.tmp`: being written (left-overs are deleted at start);
//! - `<uuid>.event`: written (a `write` + `rename`, which survives a kill -9 of the gateway),
//!   the answer not yet sent;
//! - `<uuid>.answered`: renamed once the MTA got the final answer.
//!
//! An event whose publishing waits for late results is rewritten in place the same way
//! (`<uuid>.tmp`, then a `rename` over the `.event` or `.answered` file): a crash leaves the
//! old event or the new one, never a mix.
//!
//! On start every `.event` and `.answered` file is replayed (the former marked unanswered).
//! The file system is synced (`syncfs`) every few milliseconds by a background thread while
//! events are written, for power loss;
//! the SMTP answer does not wait for that.
//!
//! File format, versioned: the line `cluegetter-spool 1\n`, then the event as JSON.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use wire::{AuditEvent, MessageId};

const MAGIC: &[u8] = b"cluegetter-spool 1\n";
/// How often written files are fsynced (as a group).
const FSYNC_EVERY: Duration = Duration::from_millis(5);

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
    size: u64,
}

/// An event found on disk at start, to be published again.
#[derive(Debug)]
pub struct Replayed {
    pub entry: SpoolEntry,
    pub event: AuditEvent,
}

/// Cheap to clone.
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
    /// "Something was written": wakes the sync thread, which then syncs the file system once
    /// for everything written meanwhile. Capacity 1, so signals coalesce; the thread ends when
    /// the last `Spool` is dropped.
    fsync: std_mpsc::SyncSender<()>,
}

impl Spool {
    /// Opens (creating) the directory, cleans up torn writes and returns the events to replay.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Self, Vec<Replayed>)> {
        fs::create_dir_all(dir)?;
        let mut replay = Vec::new();
        let mut used = 0;
        for dirent in fs::read_dir(dir)? {
            let path = dirent?.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let Some((stem, kind)) = name.rsplit_once('.') else {
                continue;
            };
            match kind {
                "tmp" => {
                    let _ = fs::remove_file(&path);
                }
                "event" | "answered" => match read_event(&path) {
                    Ok(mut event) if event.message_id.to_string() == stem => {
                        event.answered = kind == "answered";
                        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        used += size;
                        replay.push(Replayed {
                            entry: SpoolEntry {
                                message_id: event.message_id,
                                size,
                            },
                            event,
                        });
                    }
                    Ok(_) | Err(_) => {
                        // Never delete what we cannot read: set it aside for the operator.
                        let corrupt = path.with_extension(format!("{kind}.corrupt"));
                        tracing::error!(file = %path.display(), moved_to = %corrupt.display(),
                            "unreadable audit spool file set aside");
                        metrics::counter!("cluegetter_gateway_spool_corrupt_total").increment(1);
                        let _ = fs::rename(&path, corrupt);
                    }
                },
                _ => {}
            }
        }
        // oldest first (UUID v7 sorts by time)
        replay.sort_by_key(|r| r.entry.message_id);
        let (fsync, dirty) = std_mpsc::sync_channel::<()>(1);
        let sync_dir = File::open(dir)?;
        std::thread::Builder::new()
            .name("spool-fsync".into())
            .spawn(move || fsync_loop(&sync_dir, &dirty))?;
        metrics::gauge!("cluegetter_gateway_spool_bytes").set(used as f64);
        metrics::gauge!("cluegetter_gateway_spool_events").set(replay.len() as f64);
        Ok((
            Self {
                inner: Arc::new(Inner {
                    dir: dir.to_path_buf(),
                    max_bytes,
                    used: AtomicU64::new(used),
                    fsync,
                }),
            },
            replay,
        ))
    }

    fn path(&self, id: MessageId, kind: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.{kind}"))
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
        let size = (MAGIC.len() + json.len()) as u64;
        let used = self.inner.used.fetch_add(size, Ordering::SeqCst) + size;
        if used > self.inner.max_bytes {
            self.inner.used.fetch_sub(size, Ordering::SeqCst);
            metrics::counter!("cluegetter_gateway_spool_full_total").increment(1);
            return Err(SpoolError::Full {
                dir: self.inner.dir.display().to_string(),
                used: used - size,
                max: self.inner.max_bytes,
            });
        }
        let tmp = self.path(id, "tmp");
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(json)?;
            fs::rename(&tmp, self.path(id, "event"))
        })();
        match written {
            Ok(()) => {
                // one pending sync is enough: it covers everything written before it runs
                let _ = self.inner.fsync.try_send(());
                metrics::counter!("cluegetter_gateway_spooled_total").increment(1);
                metrics::gauge!("cluegetter_gateway_spool_bytes").increment(size as f64);
                metrics::gauge!("cluegetter_gateway_spool_events").increment(1.0);
                Ok(SpoolEntry {
                    message_id: id,
                    size,
                })
            }
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                self.inner.used.fetch_sub(size, Ordering::SeqCst);
                Err(self.io_error(error))
            }
        }
    }

    /// Replaces a written event by a new version of it (same message id), keeping its state
    /// (`.event` or `.answered`): written to `<uuid>.tmp`, then renamed over it. Blocking file
    /// I/O, like [`Spool::write_encoded`].
    ///
    /// # Errors
    /// The event is no longer in the spool, the spool is full, or the disk refused the write;
    /// the old event is then left as it was.
    pub fn rewrite_encoded(
        &self,
        entry: &SpoolEntry,
        json: &[u8],
    ) -> Result<SpoolEntry, SpoolError> {
        let id = entry.message_id;
        let target = ["answered", "event"]
            .into_iter()
            .map(|kind| self.path(id, kind))
            .find(|path| path.exists())
            .ok_or_else(|| {
                self.io_error(io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("{id} is no longer in the spool"),
                ))
            })?;
        let size = (MAGIC.len() + json.len()) as u64;
        let grow = size.saturating_sub(entry.size);
        let used = self.inner.used.fetch_add(grow, Ordering::SeqCst) + grow;
        if grow > 0 && used > self.inner.max_bytes {
            self.inner.used.fetch_sub(grow, Ordering::SeqCst);
            metrics::counter!("cluegetter_gateway_spool_full_total").increment(1);
            return Err(SpoolError::Full {
                dir: self.inner.dir.display().to_string(),
                used: used - grow,
                max: self.inner.max_bytes,
            });
        }
        let tmp = self.path(id, "tmp");
        let written = (|| {
            let mut file = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(json)?;
            fs::rename(&tmp, &target)
        })();
        match written {
            Ok(()) => {
                let _ = self.inner.fsync.try_send(());
                let shrink = entry.size.saturating_sub(size);
                self.inner.used.fetch_sub(shrink, Ordering::SeqCst);
                metrics::gauge!("cluegetter_gateway_spool_bytes")
                    .increment(size as f64 - entry.size as f64);
                Ok(SpoolEntry {
                    message_id: id,
                    size,
                })
            }
            Err(error) => {
                let _ = fs::remove_file(&tmp);
                self.inner.used.fetch_sub(grow, Ordering::SeqCst);
                Err(self.io_error(error))
            }
        }
    }

    /// Records that the MTA got its answer.
    pub fn mark_answered(&self, entry: &SpoolEntry) {
        let from = self.path(entry.message_id, "event");
        if let Err(error) = fs::rename(&from, self.path(entry.message_id, "answered")) {
            // Already confirmed and removed is fine; anything else only costs the flag.
            if error.kind() != io::ErrorKind::NotFound {
                tracing::warn!(message_id = %entry.message_id, %error, "cannot mark the spooled event answered");
            }
        }
    }

    /// Removes the event once RabbitMQ confirmed it.
    pub fn remove(&self, entry: &SpoolEntry) {
        let mut removed = false;
        for kind in ["answered", "event"] {
            if fs::remove_file(self.path(entry.message_id, kind)).is_ok() {
                removed = true;
            }
        }
        if removed {
            self.inner.used.fetch_sub(entry.size, Ordering::SeqCst);
            metrics::gauge!("cluegetter_gateway_spool_bytes").decrement(entry.size as f64);
            metrics::gauge!("cluegetter_gateway_spool_events").decrement(1.0);
        }
    }

    /// Reads a spooled event back (the answered flag as the file name says).
    ///
    /// # Errors
    /// The file is gone or unreadable.
    pub fn load(&self, entry: &SpoolEntry) -> io::Result<AuditEvent> {
        let answered = self.path(entry.message_id, "answered");
        if answered.exists() {
            let mut event = read_event(&answered)?;
            event.answered = true;
            return Ok(event);
        }
        let mut event = read_event(&self.path(entry.message_id, "event"))?;
        event.answered = false;
        Ok(event)
    }

    /// Bytes the spool holds now.
    pub fn used_bytes(&self) -> u64 {
        self.inner.used.load(Ordering::SeqCst)
    }
}

fn read_event(path: &Path) -> io::Result<AuditEvent> {
    let bytes = fs::read(path)?;
    let json = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a version 1 spool file"))?;
    wire::contract::decode(json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Syncs the spool's file system every few milliseconds while events are being written: one
/// `syncfs` covers every file and rename since the last one, however many there were.
fn fsync_loop(dir: &File, dirty: &std_mpsc::Receiver<()>) {
    while dirty.recv().is_ok() {
        std::thread::sleep(FSYNC_EVERY);
        if let Err(error) = rustix::fs::syncfs(dir) {
            tracing::warn!(%error, "cannot sync the audit spool's file system");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use chrono::Utc;
    use uuid::Uuid;
    use wire::{Action, AuditMessage, AuditVerdict, SessionInfo, WIRE_VERSION};

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
        spool.remove(&ec);
        drop(spool);
        // a torn write from a killed gateway
        fs::write(
            dir.join(format!("{}.tmp", MessageId::new())),
            b"cluegetter-spool 1\n{",
        )
        .unwrap();

        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        let got: Vec<(MessageId, bool)> = replay
            .iter()
            .map(|r| (r.event.message_id, r.event.answered))
            .collect();
        assert_eq!(got, vec![(a.message_id, false), (b.message_id, true)]);
        assert!(spool.used_bytes() > 0);
        spool.remove(&ea);
        spool.remove(&replay[1].entry);
        assert_eq!(spool.used_bytes(), 0);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "tmp file cleaned, events removed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_rewritten_event_replaces_the_old_one_in_its_state_and_in_the_accounting() {
        let dir = temp_dir();
        let (spool, _) = Spool::open(&dir, 1 << 20).unwrap();
        let mut e = event();
        let entry = spool.write(&e).unwrap();
        spool.mark_answered(&entry);
        e.message.subject = "a much longer subject than before, with late results".into();
        let json = wire::contract::encode(&e);
        let rewritten = spool.rewrite_encoded(&entry, &json).unwrap();
        assert_eq!(spool.used_bytes(), (MAGIC.len() + json.len()) as u64);
        let back = spool.load(&rewritten).unwrap();
        assert!(back.answered, "still answered");
        assert_eq!(back.message.subject, e.message.subject);
        let names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|d| d.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![format!("{}.answered", e.message_id)],
            "no tmp left"
        );
        drop(spool);
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert_eq!(replay.len(), 1);
        assert_eq!(replay[0].event.message.subject, e.message.subject);
        spool.remove(&replay[0].entry);
        assert_eq!(spool.used_bytes(), 0);
        // gone: refused, nothing written
        assert!(spool.rewrite_encoded(&rewritten, &json).is_err());
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_spool_refuses_loudly_and_frees_space_on_remove() {
        let dir = temp_dir();
        // room for one event and a half
        let one = (MAGIC.len() + wire::contract::encode(&event()).len()) as u64;
        let (spool, _) = Spool::open(&dir, one * 3 / 2).unwrap();
        let first = spool.write(&event()).unwrap();
        let err = spool.write(&event()).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        spool.remove(&first);
        spool.write(&event()).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_files_are_set_aside_not_deleted() {
        let dir = temp_dir();
        let id = MessageId::new();
        fs::write(dir.join(format!("{id}.event")), b"garbage").unwrap();
        let (_, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        assert!(dir.join(format!("{id}.event.corrupt")).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
