//! The old spool format (one file per event, `<uuid>.event` or `<uuid>.answered`, written
//! by earlier gateways): imported into the log at start, then deleted once synced. Nothing
//! writes it any more.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use wire::AuditEvent;

use super::Spool;
use super::segment::set_aside;

/// The old spool's file header (one file per event).
pub(super) const LEGACY_MAGIC: &[u8] = b"cluegetter-spool 1\n";

impl Spool {
    /// Imports the old spool's one-file-per-event files, then deletes them once their
    /// records are synced.
    pub(super) fn import_legacy(&self, files: &[PathBuf]) -> io::Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let mut imported = Vec::new();
        for path in files {
            let answered = path.extension().is_some_and(|e| e == "answered");
            match read_legacy(path) {
                Ok(event) => {
                    let entry = self
                        .write(&event)
                        .map_err(|e| io::Error::other(e.to_string()))?;
                    if answered {
                        self.mark_answered(&entry);
                    }
                    imported.push(path.clone());
                }
                Err(error) => set_aside(path, &error.to_string()),
            }
        }
        self.inner.sync_round(false);
        for path in &imported {
            fs::remove_file(path)?;
        }
        tracing::info!(
            events = imported.len(),
            "imported the audit events of the old spool format"
        );
        Ok(())
    }
}

fn read_legacy(path: &Path) -> io::Result<AuditEvent> {
    let bytes = fs::read(path)?;
    let json = bytes
        .strip_prefix(LEGACY_MAGIC)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a version 1 spool file"))?;
    let event = wire::contract::decode::<AuditEvent>(json)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if event.message_id.to_string() != stem {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the file name is not the event's message id",
        ));
    }
    Ok(event)
}
