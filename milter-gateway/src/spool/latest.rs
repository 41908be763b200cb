//! "The last record about an id wins", as one pure function ([`after`]): what is known of an
//! id after one more of its records, read in the order they were written. Both the replay at
//! start (`segment.rs`, where the value is where the event's latest copy is) and
//! [`super::inspect`] (where it is the event itself) go through it. No I/O.
//!
//! - an `Event` record makes its event the latest, with the record's answered flag (a rewrite
//!   appends a new version; a copy forward carries the flag);
//! - an `Answered` record marks the latest event answered (about an id not in the spool, or no
//!   longer: nothing);
//! - a `Removed` record (RabbitMQ confirmed the event) forgets the id, and so does an `Event`
//!   record that is checksummed but cannot be used (set aside for the operator: the older
//!   version it replaced is stale).

/// A value that carries the answered flag of its event.
pub(super) trait Answerable {
    /// The same, marked answered.
    #[must_use]
    fn answered(self) -> Self;
}

/// What one record says about its id.
#[derive(Debug)]
pub(super) enum Said<T> {
    /// An `Event` record, its answered flag already in the value; `None` when it cannot be
    /// used.
    Event(Option<T>),
    Answered,
    Removed,
}

/// What is known of an id once `said` is read after `current` (`None`: not in the spool).
pub(super) fn after<T: Answerable>(current: Option<T>, said: Said<T>) -> Option<T> {
    match said {
        Said::Event(event) => event,
        Said::Answered => current.map(Answerable::answered),
        Said::Removed => None,
    }
}

impl Answerable for super::Located {
    fn answered(self) -> Self {
        Self {
            answered: true,
            ..self
        }
    }
}

impl Answerable for wire::AuditEvent {
    fn answered(mut self) -> Self {
        self.answered = true;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An event version (`u8`) and its answered flag.
    #[derive(Clone, Copy, Debug, PartialEq)]
    struct V(u8, bool);

    impl Answerable for V {
        fn answered(self) -> Self {
            V(self.0, true)
        }
    }

    fn replay(records: Vec<Said<V>>) -> Option<V> {
        records.into_iter().fold(None, after)
    }

    /// A case: its name, the records in order, and what must be left.
    type Row = (&'static str, Vec<Said<V>>, Option<V>);

    #[test]
    fn the_last_record_about_an_id_wins() {
        use Said::{Answered, Event, Removed};
        let rows: Vec<Row> = vec![
            ("nothing", vec![], None),
            ("written", vec![Event(Some(V(1, false)))], Some(V(1, false))),
            (
                "written answered (a copy forward)",
                vec![Event(Some(V(1, true)))],
                Some(V(1, true)),
            ),
            (
                "answered after",
                vec![Event(Some(V(1, false))), Answered],
                Some(V(1, true)),
            ),
            (
                "answered twice",
                vec![Event(Some(V(1, false))), Answered, Answered],
                Some(V(1, true)),
            ),
            ("answered about nothing", vec![Answered], None),
            (
                "removed",
                vec![Event(Some(V(1, false))), Answered, Removed],
                None,
            ),
            (
                "answered after removed",
                vec![Event(Some(V(1, false))), Removed, Answered],
                None,
            ),
            ("removed about nothing", vec![Removed], None),
            (
                "a new version wins (with its own flag)",
                vec![Event(Some(V(1, false))), Answered, Event(Some(V(2, true)))],
                Some(V(2, true)),
            ),
            (
                "a new version written before the answer",
                vec![Event(Some(V(1, false))), Event(Some(V(2, false))), Answered],
                Some(V(2, true)),
            ),
            (
                "an unusable new version forgets the old one",
                vec![Event(Some(V(1, true))), Event(None)],
                None,
            ),
            (
                "a usable version after an unusable one",
                vec![Event(None), Event(Some(V(2, false)))],
                Some(V(2, false)),
            ),
            (
                "written again after removed (replayed and spooled anew)",
                vec![Event(Some(V(1, true))), Removed, Event(Some(V(1, false)))],
                Some(V(1, false)),
            ),
        ];
        for (name, records, expected) in rows {
            assert_eq!(replay(records), expected, "{name}");
        }
    }
}
