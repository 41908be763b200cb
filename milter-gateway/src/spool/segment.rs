//! Segment files: making one (preallocated, with the file magic), reading a record back,
//! reading a whole segment of an earlier run at start, deleting drained ones, and setting
//! unreadable files aside. What the records mean for an id is `latest.rs`; when segments are
//! made, synced and deleted is the log's (`mod.rs`) and the sync thread's (`sync.rs`).

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use wire::{AuditEvent, MessageId};

use super::format::{self, Kind};
use super::latest::{self, Said};
use super::{Located, State};

/// Largest segment (smaller spools get smaller segments: an eighth of the bound).
pub(super) const SEGMENT_MAX: u64 = 16 * 1024 * 1024;
pub(super) const SEGMENT_MIN: u64 = 64 * 1024;
/// One segment file: preallocated, appended to, deleted once drained.
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    /// Where the next record goes (the file magic included); the bytes it counts for the bound.
    pub(super) written: u64,
    /// Bytes preallocated.
    pub(super) capacity: u64,
    /// Events whose latest copy is here and not removed.
    pub(super) live: HashSet<MessageId>,
    pub(super) live_bytes: u64,
}

/// The sequence number of a segment file (`<seq>.seg`, 16 hex digits); `None` for any other
/// file.
pub(super) fn seq_of(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    u64::from_str_radix(name.strip_suffix(".seg")?, 16).ok()
}

pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016x}.seg"))
}

pub(super) fn create_segment(dir: &Path, seq: u64, capacity: u64) -> io::Result<Segment> {
    let path = segment_path(dir, seq);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)?;
    // Blocks allocated now, so that appending never waits for an allocation; where the file
    // system cannot, appending still works.
    if let Err(error) =
        rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::empty(), 0, capacity)
    {
        tracing::debug!(%error, "cannot preallocate a spool segment");
    }
    file.write_all(format::FILE_MAGIC)?;
    Ok(Segment {
        path,
        file: Arc::new(file),
        written: format::FILE_MAGIC.len() as u64,
        capacity,
        live: HashSet::new(),
        live_bytes: 0,
    })
}

pub(super) fn read_record(segment: &Segment, located: Located) -> io::Result<Vec<u8>> {
    let len = usize::try_from(located.len).map_err(io::Error::other)?;
    let mut bytes = vec![0; len];
    segment.file.read_exact_at(&mut bytes, located.offset)?;
    Ok(bytes)
}

pub(super) fn delete(paths: &[PathBuf]) {
    for path in paths {
        if let Err(error) = fs::remove_file(path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(file = %path.display(), %error, "cannot delete a spool segment");
        }
    }
}

/// Never delete what we cannot read: set it aside for the operator.
pub(super) fn set_aside(path: &Path, why: &str) {
    let mut corrupt = path.as_os_str().to_owned();
    corrupt.push(".corrupt");
    tracing::error!(file = %path.display(), moved_to = ?corrupt, why,
        "unreadable audit spool file set aside");
    metrics::counter!("cluegetter_gateway_spool_corrupt_total").increment(1);
    let _ = fs::rename(path, corrupt);
}

/// Reads one segment of an earlier run into the state.
pub(super) fn read_segment(
    dir: &Path,
    seq: u64,
    path: PathBuf,
    state: &mut State,
) -> io::Result<()> {
    let data = fs::read(&path)?;
    let scan = match format::scan(&data) {
        Ok(scan) => scan,
        Err(error) => {
            set_aside(&path, &error.to_string());
            return Ok(());
        }
    };
    if let Some(at) = scan.damage.torn_at {
        tracing::warn!(file = %path.display(), at,
            "the spool's last write was cut short by a crash (its message was never answered)");
    }
    if scan.damage.skipped > 0 {
        let mut copy = path.as_os_str().to_owned();
        copy.push(".corrupt");
        tracing::error!(file = %path.display(), skipped_bytes = scan.damage.skipped, copy = ?copy,
            "damaged records in the audit spool skipped; the segment is copied aside");
        metrics::counter!("cluegetter_gateway_spool_corrupt_total").increment(1);
        fs::copy(&path, copy)?;
    }
    let file = OpenOptions::new().read(true).write(true).open(&path)?;
    let written = scan
        .records
        .last()
        .map_or(format::FILE_MAGIC.len(), |r| r.offset + r.len) as u64;
    state.segments.insert(
        seq,
        Segment {
            path,
            file: Arc::new(file),
            written,
            capacity: written,
            live: HashSet::new(),
            live_bytes: 0,
        },
    );
    state.used += written;
    state.next_seq = state.next_seq.max(seq + 1);
    for record in scan.records {
        let said = match record.kind {
            Kind::Event => match wire::contract::decode::<AuditEvent>(record.json) {
                Ok(event) if event.message_id == record.id => Said::Event(Some(Located {
                    seq,
                    offset: record.offset as u64,
                    len: record.len as u64,
                    answered: record.answered,
                })),
                Ok(_) | Err(_) => {
                    // checksummed but not an event we can publish (a newer format?): keep it
                    // for the operator and go on without it
                    let aside = dir.join(format!("{}.event.corrupt", record.id));
                    tracing::error!(message_id = %record.id, file = %aside.display(),
                        "a spooled audit event cannot be decoded; set aside");
                    metrics::counter!("cluegetter_gateway_spool_corrupt_total").increment(1);
                    fs::write(&aside, record.json)?;
                    Said::Event(None)
                }
            },
            Kind::Answered => Said::Answered,
            Kind::Removed => Said::Removed,
        };
        match latest::after(state.index.get(&record.id).copied(), said) {
            Some(located) => state.place(record.id, located),
            None => {
                state.forget(record.id);
            }
        }
    }
    Ok(())
}
