//! The spool's on-disk format: segment files of checksummed records.
//!
//! A segment starts with the line `cluegetter-spool 2\n`, then holds records back to back;
//! what follows the last record is zeros (the file is preallocated). A record:
//!
//! ```text
//! "CGSR"  kind:u8  flags:u8  0:u16  len:u32le  crc32:u32le  payload (len bytes)
//! ```
//!
//! `crc32` covers kind, flags, the two zero bytes, `len` and the payload. The payload starts
//! with the message id (16 bytes); an `Event` record goes on with the event as wire JSON.
//! Kinds: `Event` (the whole event; flag bit 0: the MTA got its answer), `Answered` and
//! `Removed` (the id only). The last record about an id wins, in file order, and segments
//! are read in the order of their sequence numbers.
//!
//! [`scan`] is the parser: it never panics, whatever the bytes, and tells a torn tail (a
//! write cut short by a crash: nothing valid after it) from damage in the middle (valid
//! records after it, which it skips to).

use uuid::Uuid;
use wire::MessageId;

/// The first bytes of every segment file.
pub const FILE_MAGIC: &[u8] = b"cluegetter-spool 2\n";
/// The first bytes of every record.
pub const RECORD_MAGIC: [u8; 4] = *b"CGSR";
/// Bytes before a record's payload.
pub const HEADER_LEN: usize = 16;
/// Bytes of the message id at the start of every payload.
pub const ID_LEN: usize = 16;
/// Largest payload a record may claim; anything larger is damage, not a record.
pub const MAX_PAYLOAD: usize = 256 * 1024 * 1024;

const FLAG_ANSWERED: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Event = 1,
    Answered = 2,
    Removed = 3,
}

impl Kind {
    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            1 => Some(Self::Event),
            2 => Some(Self::Answered),
            3 => Some(Self::Removed),
            _ => None,
        }
    }
}

/// One record as found in a segment.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// Where the record starts in the segment.
    pub offset: usize,
    /// Its length, header included.
    pub len: usize,
    pub kind: Kind,
    /// For `Event`: the MTA had its answer when this copy was written.
    pub answered: bool,
    pub id: MessageId,
    /// For `Event`: the event as wire JSON; empty otherwise.
    pub json: &'a [u8],
}

/// What was wrong in a segment, if anything.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Bytes skipped between valid records (real damage: the file was changed or the disk
    /// returned wrong data).
    pub skipped: usize,
    /// Where a torn last record starts (a write a crash cut short); nothing valid follows.
    pub torn_at: Option<usize>,
}

/// A parsed segment.
#[derive(Debug)]
pub struct Scan<'a> {
    pub records: Vec<Record<'a>>,
    pub damage: Damage,
}

/// The file does not start with [`FILE_MAGIC`]: not a segment of this version.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a cluegetter spool segment (version 2)")]
pub struct NotASegment;

/// Encodes one record.
pub fn encode(kind: Kind, answered: bool, id: MessageId, json: &[u8]) -> Vec<u8> {
    let json = if kind == Kind::Event { json } else { &[] };
    let len = ID_LEN + json.len();
    let mut record = Vec::with_capacity(HEADER_LEN + len);
    record.extend_from_slice(&RECORD_MAGIC);
    record.push(kind as u8);
    record.push(if answered && kind == Kind::Event {
        FLAG_ANSWERED
    } else {
        0
    });
    record.extend_from_slice(&[0, 0]);
    // MAX_PAYLOAD is far below u32::MAX; a larger event is refused before it gets here
    record.extend_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    record.extend_from_slice(&[0; 4]);
    record.extend_from_slice(id.0.as_bytes());
    record.extend_from_slice(json);
    let crc = checksum(&record[4..12], &record[HEADER_LEN..]);
    record[12..16].copy_from_slice(&crc.to_le_bytes());
    record
}

fn checksum(header: &[u8], payload: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(header);
    hasher.update(payload);
    hasher.finalize()
}

/// The record at `offset`, if a valid one starts there.
fn record_at(data: &[u8], offset: usize) -> Option<Record<'_>> {
    let header = data.get(offset..offset.checked_add(HEADER_LEN)?)?;
    if header[..4] != RECORD_MAGIC {
        return None;
    }
    let kind = Kind::from_byte(header[4])?;
    let flags = header[5];
    if flags & !FLAG_ANSWERED != 0 || header[6..8] != [0, 0] {
        return None;
    }
    let len = usize::try_from(u32::from_le_bytes(header[8..12].try_into().ok()?)).ok()?;
    if !(ID_LEN..=MAX_PAYLOAD).contains(&len) || (kind != Kind::Event && len != ID_LEN) {
        return None;
    }
    let start = offset + HEADER_LEN;
    let payload = data.get(start..start.checked_add(len)?)?;
    let crc = u32::from_le_bytes(header[12..16].try_into().ok()?);
    if checksum(&header[4..12], payload) != crc {
        return None;
    }
    let id = MessageId(Uuid::from_slice(&payload[..ID_LEN]).ok()?);
    Some(Record {
        offset,
        len: HEADER_LEN + len,
        kind,
        answered: kind == Kind::Event && flags & FLAG_ANSWERED != 0,
        id,
        json: &payload[ID_LEN..],
    })
}

/// The record that is exactly `bytes`, if it is a valid one.
pub fn parse_record(bytes: &[u8]) -> Option<Record<'_>> {
    record_at(bytes, 0).filter(|r| r.len == bytes.len())
}

/// The next offset after `from` where a valid record starts.
fn next_record(data: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(found) = data
        .get(at..)?
        .windows(RECORD_MAGIC.len())
        .position(|w| w == RECORD_MAGIC)
    {
        let offset = at + found;
        if record_at(data, offset).is_some() {
            return Some(offset);
        }
        at = offset + 1;
    }
    None
}

/// Parses a whole segment.
///
/// # Errors
/// The data does not start with [`FILE_MAGIC`].
pub fn scan(data: &[u8]) -> Result<Scan<'_>, NotASegment> {
    if !data.starts_with(FILE_MAGIC) {
        return Err(NotASegment);
    }
    let mut records = Vec::new();
    let mut damage = Damage::default();
    let mut at = FILE_MAGIC.len();
    while at < data.len() {
        if let Some(record) = record_at(data, at) {
            at += record.len;
            records.push(record);
            continue;
        }
        if data[at..].iter().all(|&b| b == 0) {
            break; // the preallocated rest
        }
        match next_record(data, at + 1) {
            Some(next) => {
                damage.skipped += next - at;
                at = next;
            }
            None => {
                damage.torn_at = Some(at);
                break;
            }
        }
    }
    Ok(Scan { records, damage })
}

/// The fuzz oracle: `data` as a whole file and after the file magic. No panic; the records
/// found lie inside the data in order without overlapping, each is exactly what encoding
/// it again gives, and damage is only reported where bytes were not records.
///
/// Compiled only for tests and fuzzing (`--cfg fuzzing`, which cargo-fuzz sets).
///
/// # Panics
/// When the scanner breaks one of those rules.
#[cfg(any(test, fuzzing))]
pub fn fuzz_scan(data: &[u8]) {
    let _ = scan(data);
    let mut file = FILE_MAGIC.to_vec();
    file.extend_from_slice(data);
    let Ok(found) = scan(&file) else {
        panic!("a file starting with the magic was refused");
    };
    let mut end = FILE_MAGIC.len();
    for record in &found.records {
        assert!(record.offset >= end, "records overlap");
        end = record.offset + record.len;
        assert!(end <= file.len(), "a record beyond the data");
        let bytes = &file[record.offset..end];
        assert_eq!(
            encode(record.kind, record.answered, record.id, record.json),
            bytes,
            "a record that does not encode back to its bytes"
        );
        let alone = parse_record(bytes).map(|r| (r.len, r.kind, r.answered, r.id, r.json));
        assert_eq!(
            alone,
            Some((
                record.len,
                record.kind,
                record.answered,
                record.id,
                record.json
            )),
            "the record does not parse alone"
        );
    }
    let covered: usize = found.records.iter().map(|r| r.len).sum();
    assert!(covered + found.damage.skipped <= data.len());
    if let Some(torn) = found.damage.torn_at {
        assert!(torn >= end, "torn before the last record");
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn segment(records: &[Vec<u8>]) -> Vec<u8> {
        let mut data = FILE_MAGIC.to_vec();
        for r in records {
            data.extend_from_slice(r);
        }
        data
    }

    #[test]
    fn records_round_trip_and_the_zero_tail_is_the_end() {
        let a = MessageId::new();
        let b = MessageId::new();
        let mut data = segment(&[
            encode(Kind::Event, false, a, br#"{"x":1}"#),
            encode(Kind::Answered, false, a, b"ignored"),
            encode(Kind::Event, true, b, b"{}"),
            encode(Kind::Removed, false, a, b""),
        ]);
        data.resize(data.len() + 4096, 0);
        let scan = scan(&data).unwrap();
        assert_eq!(scan.damage, Damage::default());
        let got: Vec<(Kind, bool, MessageId, &[u8])> = scan
            .records
            .iter()
            .map(|r| (r.kind, r.answered, r.id, r.json))
            .collect();
        assert_eq!(
            got,
            vec![
                (Kind::Event, false, a, br#"{"x":1}"#.as_slice()),
                (Kind::Answered, false, a, b"".as_slice()),
                (Kind::Event, true, b, b"{}".as_slice()),
                (Kind::Removed, false, a, b"".as_slice()),
            ]
        );
    }

    #[test]
    fn a_torn_last_record_is_reported_and_what_precedes_it_kept() {
        let first = encode(Kind::Event, false, MessageId::new(), b"{}");
        let second = encode(Kind::Event, false, MessageId::new(), &[b'x'; 100]);
        let mut data = segment(&[first, second[..60].to_vec()]);
        let torn = FILE_MAGIC.len() + HEADER_LEN + ID_LEN + 2;
        data.resize(data.len() + 100, 0);
        let scan = scan(&data).unwrap();
        assert_eq!(scan.records.len(), 1);
        assert_eq!(
            scan.damage,
            Damage {
                skipped: 0,
                torn_at: Some(torn)
            }
        );
    }

    #[test]
    fn damage_in_the_middle_is_skipped_to_the_next_valid_record() {
        let ids: Vec<MessageId> = (0..3).map(|_| MessageId::new()).collect();
        let records: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| encode(Kind::Event, false, *id, b"{\"a\":\"bcdef\"}"))
            .collect();
        let mut data = segment(&records);
        // flip one payload byte of the middle record
        let middle = FILE_MAGIC.len() + records[0].len() + HEADER_LEN + 20;
        data[middle] ^= 0x40;
        let scan = scan(&data).unwrap();
        let got: Vec<MessageId> = scan.records.iter().map(|r| r.id).collect();
        assert_eq!(got, vec![ids[0], ids[2]]);
        assert_eq!(scan.damage.skipped, records[1].len());
        assert_eq!(scan.damage.torn_at, None);
    }

    #[test]
    fn other_files_are_refused() {
        assert_eq!(scan(b"cluegetter-spool 1\n{}").unwrap_err(), NotASegment);
        assert_eq!(scan(b"").unwrap_err(), NotASegment);
    }

    proptest! {
        /// Any bytes after the file magic: no panic, and every record found is a valid one
        /// inside the data, in order, without overlaps.
        #[test]
        fn any_bytes_scan_cleanly(tail in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let mut data = FILE_MAGIC.to_vec();
            data.extend_from_slice(&tail);
            let scan = scan(&data).unwrap();
            let mut end = FILE_MAGIC.len();
            for r in &scan.records {
                prop_assert!(r.offset >= end);
                end = r.offset + r.len;
                prop_assert!(end <= data.len());
                let again = record_at(&data, r.offset);
                prop_assert_eq!(again.as_ref(), Some(r));
            }
        }

        /// Encoded records scan back exactly, whatever is cut off or flipped after them.
        #[test]
        fn records_survive_what_follows_them(
            events in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..300)), 1..8),
            garbage in proptest::collection::vec(any::<u8>(), 0..64),
        ) {
            let encoded: Vec<(MessageId, bool, Vec<u8>, Vec<u8>)> = events
                .into_iter()
                .map(|(answered, json)| {
                    let id = MessageId::new();
                    let record = encode(Kind::Event, answered, id, &json);
                    (id, answered, json, record)
                })
                .collect();
            let mut data = FILE_MAGIC.to_vec();
            for (_, _, _, record) in &encoded {
                data.extend_from_slice(record);
            }
            data.extend_from_slice(&garbage);
            let scan = scan(&data).unwrap();
            prop_assert!(scan.records.len() >= encoded.len());
            for ((id, answered, json, _), r) in encoded.iter().zip(&scan.records) {
                prop_assert_eq!(r.id, *id);
                prop_assert_eq!(r.answered, *answered);
                prop_assert_eq!(r.json, json.as_slice());
            }
        }
    }
}
