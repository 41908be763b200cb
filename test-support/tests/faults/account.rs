//! Accounting in the manner of Jepsen's RabbitMQ checker: what the MTA side saw (messages
//! answered, messages whose answer never came) against what the archive holds, message by
//! message (by queue id, which every message has from DATA on, and by UUID).

use std::collections::HashMap;
use std::fmt;

use anyhow::Result;
use sqlx::MySqlPool;
use uuid::Uuid;

use crate::client::Sent;

/// Headers and recipient links every message of the load has.
pub const HEADERS: i64 = 10;
pub const RECIPIENTS: i64 = 2;

/// One scenario's books.
#[derive(Clone, Debug, Default)]
pub struct Accounting {
    pub scenario: String,
    /// End of message sent.
    pub sent: usize,
    /// A final reply came (the message was answered).
    pub answered: usize,
    /// Answered with anything but continue/accept.
    pub not_accepted: usize,
    /// `message` rows in the scenario's database.
    pub rows: usize,
    /// Answered, and no row: the invariant broken.
    pub lost: usize,
    /// Rows beyond the first for one message (by queue id), plus messages whose child rows
    /// are not exactly one set (headers or recipient links stored twice or partly).
    pub duplicated: usize,
    /// Sent, never answered (the gateway was killed first), yet stored.
    pub unanswered_stored: usize,
    /// ... of which the row says `answered = 0`.
    pub unanswered_stored_flagged: usize,
    /// Sent, never answered, not stored (the gateway died before spooling it).
    pub unanswered_not_stored: usize,
    /// Answered, but the row says `answered = 0` (the gateway died between its reply and
    /// writing the spool's answered mark: the record is there, its flag is pessimistic).
    pub answered_flagged_unanswered: usize,
    /// The row's UUID differs from the `X-Cluegetter-Id` the MTA side was given.
    pub uuid_mismatch: usize,
    /// Rows of messages the MTA side never sent to end of message.
    pub phantom: usize,
    /// Free-form facts from the processes' metrics.
    pub notes: Vec<String>,
}

impl Accounting {
    /// Whether the durability invariant held.
    pub fn ok(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.uuid_mismatch == 0 && self.phantom == 0
    }
}

impl fmt::Display for Accounting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<22} sent {:>5}  answered {:>5}  rows {:>5}  lost {}  duplicated {}  \
             unanswered-stored {} (flagged unanswered {})  unanswered-not-stored {}  \
             answered-but-flagged-unanswered {}  uuid-mismatch {}  phantom {}  not-accepted {}",
            self.scenario,
            self.sent,
            self.answered,
            self.rows,
            self.lost,
            self.duplicated,
            self.unanswered_stored,
            self.unanswered_stored_flagged,
            self.unanswered_not_stored,
            self.answered_flagged_unanswered,
            self.uuid_mismatch,
            self.phantom,
            self.not_accepted,
        )?;
        for note in &self.notes {
            write!(f, "\n{:<22} {note}", "")?;
        }
        Ok(())
    }
}

/// One `message` row and the size of its children.
struct Row {
    id: Uuid,
    answered: bool,
    headers: i64,
    recipients: i64,
}

/// Rows per queue id.
async fn rows(pool: &MySqlPool) -> Result<HashMap<String, Vec<Row>>> {
    let found: Vec<(String, Uuid, bool, i64, i64)> = sqlx::query_as(
        "SELECT m.queue_id, m.id, m.answered, \
             (SELECT COUNT(*) FROM message_header h WHERE h.message = m.id), \
             (SELECT COUNT(*) FROM message_recipient r WHERE r.message = m.id) \
         FROM message m",
    )
    .fetch_all(pool)
    .await?;
    let mut by_queue_id: HashMap<String, Vec<Row>> = HashMap::new();
    for (queue_id, id, answered, headers, recipients) in found {
        by_queue_id.entry(queue_id).or_default().push(Row {
            id,
            answered,
            headers,
            recipients,
        });
    }
    Ok(by_queue_id)
}

/// How many messages answered at the MTA side have no row yet.
pub async fn missing(pool: &MySqlPool, sent: &[Sent]) -> Result<usize> {
    let stored = rows(pool).await?;
    Ok(sent
        .iter()
        .filter(|s| s.answered() && !stored.contains_key(&s.queue_id))
        .count())
}

/// The books of one scenario.
pub async fn account(scenario: &str, pool: &MySqlPool, sent: &[Sent]) -> Result<Accounting> {
    let stored = rows(pool).await?;
    let mut books = Accounting {
        scenario: scenario.to_owned(),
        rows: stored.values().map(Vec::len).sum(),
        ..Accounting::default()
    };
    let mut known = std::collections::HashSet::new();
    for message in sent {
        known.insert(message.queue_id.as_str());
        if !message.eom_sent {
            continue;
        }
        books.sent += 1;
        let found = stored.get(&message.queue_id);
        if message.answered() {
            books.answered += 1;
            if !matches!(message.reply.as_deref(), Some("continue" | "accept")) {
                books.not_accepted += 1;
            }
        }
        let Some(found) = found else {
            if message.answered() {
                books.lost += 1;
            } else {
                books.unanswered_not_stored += 1;
            }
            continue;
        };
        books.duplicated += found.len() - 1;
        let row = &found[0];
        if found
            .iter()
            .any(|r| r.headers != HEADERS || r.recipients != RECIPIENTS)
        {
            books.duplicated += 1;
        }
        if message.uuid.is_some_and(|uuid| uuid != row.id) {
            books.uuid_mismatch += 1;
        }
        if message.answered() {
            if !row.answered {
                books.answered_flagged_unanswered += 1;
            }
        } else {
            books.unanswered_stored += 1;
            if !row.answered {
                books.unanswered_stored_flagged += 1;
            }
        }
    }
    books.phantom = stored
        .iter()
        .filter(|(queue_id, _)| !known.contains(queue_id.as_str()))
        .map(|(_, rows)| rows.len())
        .sum();
    // a row for a message whose end of message never went out is a phantom too
    books.phantom += sent
        .iter()
        .filter(|s| !s.eom_sent && stored.contains_key(&s.queue_id))
        .count();
    Ok(books)
}
