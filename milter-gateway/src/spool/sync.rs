//! The spool's own thread: every few milliseconds while there is work it writes the queued
//! removals, syncs (`fdatasync`) what was written, deletes drained segments oldest first,
//! copies the few events of a mostly dead oldest segment forward and prepares the next
//! segment; and the handle that stops it (one last round) when the last `Spool` goes.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use wire::MessageId;

use super::format::{self, Kind};
use super::segment::{create_segment, delete, read_record};
use super::{Located, Shared, State, lock};

/// How often written segments are synced (as a group) and removals written.
const SYNC_EVERY: Duration = Duration::from_millis(5);
/// Bytes of waiting events copied forward out of an old segment per round of the sync thread.
const COMPACT_PER_ROUND: u64 = 1024 * 1024;

/// The spool's handle: when the last clone goes, the sync thread is stopped and one last
/// round writes the queued removals.
pub(super) struct Inner {
    pub(super) shared: Arc<Shared>,
    /// Wakes the sync thread. Capacity 1, so signals coalesce; dropped to stop it.
    pub(super) wake: Option<std_mpsc::SyncSender<()>>,
    pub(super) thread: Option<std::thread::JoinHandle<()>>,
}

impl std::ops::Deref for Inner {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Inner {
    pub(super) fn wake(&self) {
        if let Some(wake) = &self.wake {
            let _ = wake.try_send(());
        }
    }
}

impl Drop for Inner {
    /// The last `Spool` is gone (the gateway stops): stop the sync thread, then write the
    /// queued removals and sync, so that the next start does not publish confirmed events
    /// again, and nothing is written after this returns.
    fn drop(&mut self) {
        drop(self.wake.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.sync_round(false);
        let state = self.lock();
        let mut doomed = state.doomed.clone();
        if let Some((_, spare)) = &state.spare {
            doomed.push(spare.path.clone());
        }
        drop(state);
        delete(&doomed);
    }
}

impl Shared {
    /// Writes the queued removals, lets a drained active segment go (`urgent`: whatever its
    /// size, as the spool is full), deletes the oldest segments that hold no event (oldest
    /// first, so that a record in a later segment never outlives what it is about) and
    /// copies the few events of a mostly dead oldest segment forward. Returns true when more
    /// is left to do.
    pub(super) fn reclaim(&self, state: &mut State, urgent: bool) -> bool {
        let removed = std::mem::take(&mut *lock(&self.removed));
        let mut markers = Vec::new();
        for id in removed {
            if state.forget(id) {
                markers.extend_from_slice(&format::encode(Kind::Removed, false, id, &[]));
            }
        }
        if !markers.is_empty()
            && let Err(error) = self.append(state, &markers)
        {
            // a replay would publish them again (the auditor ignores duplicates)
            tracing::warn!(%error, "cannot record confirmed audit events in the spool");
        }
        if let Some(active) = state.active
            && let Some(segment) = state.segments.get(&active)
            && segment.live.is_empty()
            && (urgent || segment.written >= self.segment_size / 2)
        {
            state.active = None;
        }
        self.delete_drained(state);
        let more = self.compact(state);
        self.delete_drained(state);
        more
    }

    fn delete_drained(&self, state: &mut State) {
        while let Some(entry) = state.segments.first_entry() {
            if Some(*entry.key()) == state.active || !entry.get().live.is_empty() {
                break;
            }
            let segment = entry.remove();
            state.used = state.used.saturating_sub(segment.written);
            state.doomed.push(segment.path);
        }
        metrics::gauge!("cluegetter_gateway_spool_segments").set(state.segments.len() as f64);
    }

    /// Copies forward the events left in the oldest segment when they are at most half of
    /// it, up to [`COMPACT_PER_ROUND`] bytes. True when some are left to copy.
    fn compact(&self, state: &mut State) -> bool {
        let Some((&oldest, segment)) = state.segments.first_key_value() else {
            return false;
        };
        if Some(oldest) == state.active
            || segment.live.is_empty()
            || segment.live_bytes * 2 > segment.written
        {
            return false;
        }
        let ids: Vec<MessageId> = segment.live.iter().copied().collect();
        let mut budget = COMPACT_PER_ROUND;
        for id in ids {
            if budget == 0 {
                return true;
            }
            let Some((located, segment)) = state.locate(id) else {
                continue;
            };
            let moved = read_record(segment, located).and_then(|bytes| {
                let record = format::parse_record(&bytes).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "damaged spool record")
                })?;
                let copy = format::encode(Kind::Event, located.answered, id, record.json);
                let (seq, offset) = self.append(state, &copy)?;
                Ok(Located {
                    seq,
                    offset,
                    len: copy.len() as u64,
                    answered: located.answered,
                })
            });
            match moved {
                Ok(copy) => {
                    budget = budget.saturating_sub(copy.len);
                    state.place(id, copy);
                }
                Err(error) => {
                    // leave it where it is: the segment stays until the event is confirmed
                    tracing::warn!(message_id = %id, %error, "cannot copy a spooled event forward");
                    return false;
                }
            }
        }
        false
    }

    /// One round of the sync thread: reclaim, sync what was written, delete drained
    /// segments, prepare a spare. True when more is left to do.
    pub(super) fn sync_round(&self, prepare_spare: bool) -> bool {
        let mut state = self.lock();
        let more = self.reclaim(&mut state, false);
        let unsynced = std::mem::take(&mut state.unsynced);
        let created = std::mem::take(&mut state.created);
        let doomed = std::mem::take(&mut state.doomed);
        let spare_seq = if prepare_spare && state.spare.is_none() {
            let seq = state.next_seq;
            state.next_seq += 1;
            Some(seq)
        } else {
            None
        };
        self.publish_gauges(&state);
        drop(state);

        for file in unsynced.values() {
            if let Err(error) = file.sync_data() {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot sync the audit spool");
            }
        }
        if created && let Err(error) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %self.dir.display(), %error, "cannot sync the audit spool's directory");
        }
        delete(&doomed);
        if let Some(seq) = spare_seq {
            match create_segment(&self.dir, seq, self.segment_size) {
                Ok(spare) => {
                    let mut state = self.lock();
                    state.created = true;
                    if let Some((_, stale)) = state.spare.replace((seq, spare)) {
                        state.doomed.push(stale.path);
                    }
                }
                Err(error) => {
                    tracing::warn!(dir = %self.dir.display(), %error, "cannot prepare a spool segment");
                }
            }
        }
        more
    }

    pub(super) fn publish_gauges(&self, state: &State) {
        metrics::gauge!("cluegetter_gateway_spool_bytes").set(state.used as f64);
        metrics::gauge!("cluegetter_gateway_spool_events").set(state.index.len() as f64);
        metrics::gauge!("cluegetter_gateway_spool_segments").set(state.segments.len() as f64);
    }
}

/// Every few milliseconds while there is something to do: one round. Ends when the handle
/// drops its sender.
pub(super) fn sync_loop(shared: &Shared, woken: &std_mpsc::Receiver<()>) {
    let mut more = false;
    loop {
        let stopped = if more {
            matches!(woken.try_recv(), Err(std_mpsc::TryRecvError::Disconnected))
        } else {
            woken.recv().is_err()
        };
        if stopped {
            break;
        }
        std::thread::sleep(SYNC_EVERY);
        more = shared.sync_round(true);
    }
}
