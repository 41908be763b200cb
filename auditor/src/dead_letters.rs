//! `auditor dead-letters count|show|replay`: the operator's side of the dead-letter queue
//! `cluegetter.audit.dead-letter`, where the consumer puts events it can never store (see
//! [`crate::consume`]), each with its reason in the header `x-cluegetter-reason`.
//!
//! `replay` moves them back once the cause is fixed (a column widened, a newer auditor
//! deployed): each is published, unchanged but for its headers, to the archive queue and
//! removed from the dead-letter queue only after RabbitMQ confirmed the copy. A crash in
//! between leaves both copies, which is harmless (storing is idempotent on the message UUID).
//! A replay takes at most the messages that were in the queue when it began, so events that
//! are dead-lettered again while it runs are not replayed in a circle.
//!
//! They go to the archive queue (through the default exchange), not to the fanout exchange
//! `cluegetter.audit`: other queues bound to it (the quotas settle queue) had their copy of the
//! event the first time.

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicGetOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use platform::broker::{self, AUDIT_DEAD_LETTER_QUEUE, AUDIT_QUEUE};
use platform::config::Urls;

use crate::consume::REASON_HEADER;

/// The header counting how often an event was replayed from the dead-letter queue.
pub const REPLAYS_HEADER: &str = "x-cluegetter-replays";

/// One dead-lettered event, as far as it can be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message UUID, or `unknown` for an event that is not JSON.
    pub message_id: String,
    pub queue_id: String,
    pub reason: String,
    /// Size of the event as received.
    pub bytes: usize,
    /// Earlier replays of this event.
    pub replays: i64,
}

/// A connection and a channel to the broker, with the audit topology declared.
struct Link {
    connection: Connection,
    channel: Channel,
}

impl Link {
    async fn open(broker_urls: &Urls) -> anyhow::Result<Self> {
        let connection =
            broker::connect_any(broker_urls, "cluegetter-auditor dead-letters").await?;
        let channel = connection
            .create_channel()
            .await
            .context("cannot open a channel")?;
        broker::declare_audit_topology(&channel)
            .await
            .context("cannot declare the audit exchange and queues")?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// Messages ready in the dead-letter queue.
    async fn depth(&self) -> anyhow::Result<u32> {
        let queue = self
            .channel
            .queue_declare(
                AUDIT_DEAD_LETTER_QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .with_context(|| format!("cannot look at {AUDIT_DEAD_LETTER_QUEUE}"))?;
        Ok(queue.message_count())
    }

    /// The next dead letter, unacked (it goes back to the queue when the channel closes).
    async fn next(&self) -> anyhow::Result<Option<Delivery>> {
        let got = self
            .channel
            .basic_get(
                AUDIT_DEAD_LETTER_QUEUE.into(),
                BasicGetOptions { no_ack: false },
            )
            .await
            .with_context(|| format!("cannot get from {AUDIT_DEAD_LETTER_QUEUE}"))?;
        Ok(got.map(|message| message.delivery))
    }

    /// Closes the connection; what was taken and not acked goes back to the queue.
    async fn close(self) {
        let _ = self.channel.close(200, "done".into()).await;
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// How many events wait in the dead-letter queue.
///
/// # Errors
/// The broker cannot be reached or refuses the declarations.
pub async fn count(broker_urls: &Urls) -> anyhow::Result<u32> {
    let link = Link::open(broker_urls).await?;
    let depth = link.depth().await;
    link.close().await;
    depth
}

/// The first `limit` dead letters, left in the queue; and how many there are in all.
///
/// # Errors
/// As [`count`].
pub async fn show(broker_urls: &Urls, limit: usize) -> anyhow::Result<(u32, Vec<DeadLetter>)> {
    let link = Link::open(broker_urls).await?;
    let result = async {
        let depth = link.depth().await?;
        let mut shown = Vec::new();
        while shown.len() < limit {
            let Some(delivery) = link.next().await? else {
                break;
            };
            shown.push(describe(&delivery));
        }
        Ok((depth, shown))
    }
    .await;
    link.close().await;
    result
}

/// Moves up to `limit` dead letters (all of them with `None`) back to the archive queue;
/// returns how many were moved.
///
/// # Errors
/// The broker cannot be reached, or refused or returned a copy; what was moved until then
/// stays moved, the rest stays in the dead-letter queue.
pub async fn replay(broker_urls: &Urls, limit: Option<usize>) -> anyhow::Result<u64> {
    let link = Link::open(broker_urls).await?;
    let result = async {
        link.channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .context("cannot enable publisher confirms")?;
        let depth = usize::try_from(link.depth().await?).unwrap_or(usize::MAX);
        let todo = limit.map_or(depth, |limit| limit.min(depth));
        let mut moved = 0_u64;
        for _ in 0..todo {
            let Some(delivery) = link.next().await? else {
                break;
            };
            let letter = describe(&delivery);
            move_back(&link.channel, &delivery).await.with_context(|| {
                format!(
                    "cannot move event {} (queue id {}) back; it stays dead-lettered",
                    letter.message_id, letter.queue_id
                )
            })?;
            moved += 1;
            tracing::info!(
                message_id = %letter.message_id,
                queue_id = %letter.queue_id,
                reason = %letter.reason,
                replays = letter.replays + 1,
                "dead-lettered audit event moved back to {AUDIT_QUEUE}"
            );
        }
        Ok(moved)
    }
    .await;
    link.close().await;
    result
}

/// Publishes one dead letter to the archive queue and acks it once the broker confirmed.
async fn move_back(channel: &Channel, delivery: &Delivery) -> anyhow::Result<()> {
    let mut headers = delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| h.inner().clone())
        .unwrap_or_default();
    headers.remove(REASON_HEADER);
    let replays = replays(delivery) + 1;
    headers.insert(REPLAYS_HEADER.into(), AMQPValue::LongLongInt(replays));
    let properties = delivery
        .properties
        .clone()
        .with_headers(FieldTable::from(headers));
    broker::publish_confirmed(channel, "", AUDIT_QUEUE, &delivery.data, properties)
        .await
        .with_context(|| format!("cannot move it back to {AUDIT_QUEUE}"))?;
    channel
        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
        .await
        .context("cannot ack the dead letter (it stays, and will be stored only once)")?;
    Ok(())
}

fn header<'a>(delivery: &'a Delivery, name: &str) -> Option<&'a AMQPValue> {
    delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|headers| headers.inner().get(name))
}

fn replays(delivery: &Delivery) -> i64 {
    match header(delivery, REPLAYS_HEADER) {
        Some(AMQPValue::LongLongInt(n)) => *n,
        Some(AMQPValue::LongInt(n)) => i64::from(*n),
        _ => 0,
    }
}

fn describe(delivery: &Delivery) -> DeadLetter {
    let (message_id, queue_id) = crate::consume::loose_identity(&delivery.data);
    let reason = match header(delivery, REASON_HEADER) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        Some(other) => format!("{other:?}"),
        None => "(no reason recorded)".to_owned(),
    };
    DeadLetter {
        message_id,
        queue_id,
        reason,
        bytes: delivery.data.len(),
        replays: replays(delivery),
    }
}
