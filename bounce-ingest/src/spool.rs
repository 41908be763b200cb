//! The listener's spool: a report is on disk, written and fsynced, before its sender hears
//! `250`; it stays there until RabbitMQ has confirmed its bounce event.
//!
//! One file per event, `<bounce id>.bounce` (written as `<bounce id>.tmp`, fsynced, renamed,
//! directory fsynced); torn `.tmp` files are deleted at start, unreadable files set aside as
//! `.corrupt` for the operator, never deleted. File format, versioned: the line
//! `cluegetter-bounce-spool 1\n`, then the event as JSON. Only file names are kept in memory:
//! the events are read back one at a time to be published.
//!
//! The gateway's audit spool (`milter-gateway/src/spool.rs`) is the same idea for many small
//! events, fsynced in groups after the answer; bounce reports are few and larger, and the
//! sender (Postfix's pipe) only learns the report is safe from our answer, so each is fsynced
//! before it.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use wire::{BounceEvent, BounceId};

use crate::metrics;

const MAGIC: &[u8] = b"cluegetter-bounce-spool 1\n";

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error(
        "the bounce spool {dir} is full ({used} of {max} bytes): RabbitMQ has been away too long"
    )]
    Full { dir: String, used: u64, max: u64 },
    #[error("cannot write to the bounce spool {dir}: {source}")]
    Io {
        dir: String,
        #[source]
        source: io::Error,
    },
}

/// One event in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    pub id: BounceId,
    size: u64,
}

/// Cheap to clone; every method does blocking file I/O (call from `spawn_blocking`).
#[derive(Clone)]
pub struct Spool {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    max_bytes: u64,
    used: AtomicU64,
}

impl Spool {
    /// Opens (creating) the directory, cleans up torn writes and returns what is left to
    /// publish, oldest first.
    ///
    /// # Errors
    /// The directory cannot be created or read.
    pub fn open(dir: &Path, max_bytes: u64) -> io::Result<(Self, Vec<SpoolEntry>)> {
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
                "bounce" => match read_event(&path) {
                    Ok(event) if event.bounce_id.to_string() == stem => {
                        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                        used += size;
                        replay.push(SpoolEntry {
                            id: event.bounce_id,
                            size,
                        });
                    }
                    Ok(_) | Err(_) => set_aside(&path),
                },
                _ => {}
            }
        }
        // oldest first (UUID v7 sorts by time)
        replay.sort_by_key(|entry| entry.id);
        ::metrics::gauge!(metrics::SPOOL_BYTES).set(used as f64);
        ::metrics::gauge!(metrics::SPOOL_EVENTS).set(replay.len() as f64);
        let spool = Self {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                max_bytes,
                used: AtomicU64::new(used),
            }),
        };
        Ok((spool, replay))
    }

    fn path(&self, id: BounceId, kind: &str) -> PathBuf {
        self.inner.dir.join(format!("{id}.{kind}"))
    }

    /// Writes the event and makes it durable (file and directory fsynced).
    ///
    /// # Errors
    /// The spool is full, or the disk refused the write; nothing is left behind.
    pub fn write(&self, event: &BounceEvent) -> Result<SpoolEntry, SpoolError> {
        let json = wire::contract::encode(event);
        let size = (MAGIC.len() + json.len()) as u64;
        let used = self.inner.used.fetch_add(size, Ordering::SeqCst) + size;
        if used > self.inner.max_bytes {
            self.inner.used.fetch_sub(size, Ordering::SeqCst);
            return Err(SpoolError::Full {
                dir: self.inner.dir.display().to_string(),
                used: used - size,
                max: self.inner.max_bytes,
            });
        }
        let tmp = self.path(event.bounce_id, "tmp");
        let written = (|| {
            let mut file = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
            file.write_all(MAGIC)?;
            file.write_all(&json)?;
            file.sync_all()?;
            fs::rename(&tmp, self.path(event.bounce_id, "bounce"))?;
            File::open(&self.inner.dir)?.sync_all()
        })();
        match written {
            Ok(()) => {
                ::metrics::gauge!(metrics::SPOOL_BYTES).increment(size as f64);
                ::metrics::gauge!(metrics::SPOOL_EVENTS).increment(1.0);
                Ok(SpoolEntry {
                    id: event.bounce_id,
                    size,
                })
            }
            Err(source) => {
                let _ = fs::remove_file(&tmp);
                let _ = fs::remove_file(self.path(event.bounce_id, "bounce"));
                self.inner.used.fetch_sub(size, Ordering::SeqCst);
                Err(SpoolError::Io {
                    dir: self.inner.dir.display().to_string(),
                    source,
                })
            }
        }
    }

    /// Reads a spooled event back. An unreadable one is set aside (`None`): it can never be
    /// published, and must not block the ones behind it.
    pub fn load(&self, entry: &SpoolEntry) -> Option<BounceEvent> {
        let path = self.path(entry.id, "bounce");
        match read_event(&path) {
            Ok(event) => Some(event),
            Err(error) => {
                tracing::error!(bounce_id = %entry.id, %error, "spooled bounce event cannot be read back");
                set_aside(&path);
                self.forget(entry);
                None
            }
        }
    }

    /// Removes the event once RabbitMQ confirmed it.
    pub fn remove(&self, entry: &SpoolEntry) {
        if fs::remove_file(self.path(entry.id, "bounce")).is_ok() {
            self.forget(entry);
        }
    }

    fn forget(&self, entry: &SpoolEntry) {
        self.inner.used.fetch_sub(entry.size, Ordering::SeqCst);
        ::metrics::gauge!(metrics::SPOOL_BYTES).decrement(entry.size as f64);
        ::metrics::gauge!(metrics::SPOOL_EVENTS).decrement(1.0);
    }

    /// Bytes the spool holds now.
    pub fn used_bytes(&self) -> u64 {
        self.inner.used.load(Ordering::SeqCst)
    }
}

fn read_event(path: &Path) -> io::Result<BounceEvent> {
    let bytes = fs::read(path)?;
    let json = bytes.strip_prefix(MAGIC).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "not a version 1 bounce spool file",
        )
    })?;
    wire::contract::decode(json).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Never delete what we cannot read: rename it for the operator.
fn set_aside(path: &Path) {
    let mut corrupt = path.as_os_str().to_owned();
    corrupt.push(".corrupt");
    tracing::error!(file = %path.display(), "unreadable bounce spool file set aside as .corrupt");
    ::metrics::counter!(metrics::SPOOL_CORRUPT).increment(1);
    let _ = fs::rename(path, PathBuf::from(corrupt));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use platform::config::Config;
    use wire::BounceSource;

    use super::*;
    use crate::report::{self, Received};

    fn event(text: &str) -> BounceEvent {
        let received = Received {
            kept: text.as_bytes().to_vec(),
            total: text.len() as u64,
        };
        report::event(&Config::default(), received, BounceSource::Tcp, None, None)
    }

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cgt-bounce-spool-{}", BounceId::new()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn written_events_are_replayed_oldest_first_until_removed() {
        let dir = temp_dir();
        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        let (a, b, c) = (event("a"), event("b"), event("c"));
        let ea = spool.write(&a).unwrap();
        spool.write(&b).unwrap();
        let ec = spool.write(&c).unwrap();
        spool.remove(&ec);
        assert_eq!(spool.load(&ea).unwrap(), a);
        drop(spool);
        // a torn write of a killed process
        fs::write(dir.join(format!("{}.tmp", BounceId::new())), MAGIC).unwrap();

        let (spool, replay) = Spool::open(&dir, 1 << 20).unwrap();
        let ids: Vec<BounceId> = replay.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![a.bounce_id, b.bounce_id]);
        assert_eq!(spool.load(&replay[1]).unwrap(), b);
        for entry in &replay {
            spool.remove(entry);
        }
        assert_eq!(spool.used_bytes(), 0);
        assert_eq!(
            fs::read_dir(&dir).unwrap().count(),
            0,
            "tmp cleaned, events removed"
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_spool_refuses_and_frees_space_on_remove() {
        let dir = temp_dir();
        let one = (MAGIC.len() + wire::contract::encode(&event("x")).len()) as u64;
        let (spool, _) = Spool::open(&dir, one * 3 / 2).unwrap();
        let first = spool.write(&event("x")).unwrap();
        let err = spool.write(&event("y")).unwrap_err();
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        spool.remove(&first);
        spool.write(&event("z")).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn unreadable_files_are_set_aside_not_deleted() {
        let dir = temp_dir();
        let id = BounceId::new();
        fs::write(dir.join(format!("{id}.bounce")), b"garbage").unwrap();
        let (_, replay) = Spool::open(&dir, 1 << 20).unwrap();
        assert!(replay.is_empty());
        assert!(dir.join(format!("{id}.bounce.corrupt")).exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
