//! The consumer loop: audit events from `cluegetter.audit.archive` into the archive in batches.
//! Commit, then ack.
//!
//! Per batch (at most `auditor.batch-size` deliveries; the first waits at most `auditor.batch-wait`
//! for the others):
//! 1. decode each delivery; one that is not JSON or of another wire major version is poison;
//! 2. write the decodable events in one transaction ([`Store::write_batch`]); an event the database
//!    refuses is poison too, the others are committed. If the database cannot be written at all,
//!    nothing is acked: the batch is retried with backoff while no further deliveries are taken
//!    (the broker holds them back once the prefetch is used up);
//! 3. publish each poison delivery, unchanged but for the header `x-cluegetter-reason`, to
//!    `cluegetter.audit.dead-letter` and wait for the broker's confirms (`auditor dead-letters
//!    replay` puts them back once the cause is fixed, see [`crate::dead_letters`]);
//! 4. ack everything up to the batch's last delivery tag at once.
//!
//! A crash anywhere before step 4 means redelivery, which changes nothing in the archive (inserts
//! are idempotent on the message UUID). A lost broker connection drops the batch being collected
//! (the broker redelivers it) and reconnects with backoff. On shutdown the batch in hand is
//! finished, then the consumer is cancelled and the channel closed, so prefetched deliveries go
//! back to the queue.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, Connection, Consumer};
use platform::backoff::Backoff;
use platform::broker::{self, AUDIT_DEAD_LETTER_QUEUE, AUDIT_QUEUE};
use platform::config::Config;
use platform::database::Database;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::AuditEvent;
use wire::contract::{self, WireError};

use crate::metrics;
use crate::store::{Kinds, Outcome, Store};

/// The AMQP header that carries why an event was dead-lettered.
pub const REASON_HEADER: &str = "x-cluegetter-reason";

/// The settings of the loop, read once from the configuration.
struct Settings {
    /// For logs: the database URL without its password.
    database_shown: String,
    batch_size: usize,
    batch_wait: Duration,
    /// Longest pause between two attempts, for the broker and for the database alike.
    max_backoff: Duration,
}

impl Settings {
    fn new(config: &Config) -> Self {
        Self {
            database_shown: config.database.url.to_string(),
            batch_size: usize::from(config.auditor.batch_size.max(1)),
            batch_wait: config.auditor.batch_wait,
            max_backoff: config.broker.reconnect_max_backoff,
        }
    }

    /// Deliveries the broker may have in flight to us: two batches, so the next one is arriving
    /// while the current one is written.
    fn prefetch(&self) -> u16 {
        u16::try_from(self.batch_size.saturating_mul(2)).unwrap_or(u16::MAX)
    }
}

/// Consumes until `shutdown` (see [`crate::run`]), writing with `pool`.
///
/// # Errors
/// None so far: broker and database failures are retried for ever.
pub async fn run(
    config: &Config,
    pool: Database,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    metrics::describe();
    let settings = Settings::new(config);
    let kinds = Kinds::from_config(config);
    let mut store = Store::with_kinds(pool, kinds);
    let mut supervisor = broker::Supervisor::from_config(&config.broker, "cluegetter-auditor");
    tracing::info!(
        queue = AUDIT_QUEUE,
        batch_size = settings.batch_size,
        batch_wait = ?settings.batch_wait,
        store_headers = kinds.headers,
        store_results = kinds.results,
        store_bodies = kinds.bodies,
        "auditor starting"
    );
    // Closing a session's connection returns our unacked deliveries to the queue.
    while let Some(connection) = supervisor.connect(&shutdown).await {
        if supervisor.sessions() > 1 {
            ::metrics::counter!(metrics::BROKER_RECONNECTS).increment(1);
        }
        let outcome = consume(&connection, &mut store, &settings, &shutdown).await;
        if !supervisor.end(&connection, outcome, &shutdown).await {
            break;
        }
    }
    Ok(())
}

/// A channel that consumes `queue` with at most `prefetch` deliveries unacked, and publishes
/// (dead letters) with confirms; its consumer and the consumer's tag (`tag_prefix-<uuid>`).
pub(crate) async fn open_consumer(
    connection: &Connection,
    queue: &str,
    tag_prefix: &str,
    prefetch: u16,
) -> anyhow::Result<(Channel, Consumer, String)> {
    let channel = connection
        .create_channel()
        .await
        .context("cannot open a channel")?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("cannot enable publisher confirms")?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await
        .context("cannot set the prefetch")?;
    let tag = format!("{tag_prefix}-{}", uuid::Uuid::now_v7());
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.as_str().into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .with_context(|| format!("cannot consume {queue}"))?;
    Ok((channel, consumer, tag))
}

/// The delivery's properties with the reason it is dead-lettered for in [`REASON_HEADER`].
pub(crate) fn with_reason(delivery: &Delivery, reason: &str) -> lapin::BasicProperties {
    let mut headers = delivery.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    delivery.properties.clone().with_headers(headers)
}

/// The one-by-one consumer of the bounce and delivery archives, on one connection: the caller
/// takes deliveries with [`OneByOne::next`] and stores (or dead-letters) and acks each on
/// [`OneByOne::channel`], then [`OneByOne::close`]s it, so prefetched deliveries go back.
pub(crate) struct OneByOne {
    channel: Channel,
    consumer: Consumer,
    tag: String,
    queue: &'static str,
}

impl OneByOne {
    pub(crate) async fn open(
        connection: &Connection,
        queue: &'static str,
        tag_prefix: &str,
        prefetch: u16,
    ) -> anyhow::Result<Self> {
        let (channel, consumer, tag) =
            open_consumer(connection, queue, tag_prefix, prefetch).await?;
        tracing::info!(queue, "consuming");
        Ok(Self {
            channel,
            consumer,
            tag,
            queue,
        })
    }

    pub(crate) fn channel(&self) -> &Channel {
        &self.channel
    }

    /// The next delivery; `None` once `shutdown` fired.
    ///
    /// # Errors
    /// The broker failed or cancelled the consumer.
    pub(crate) async fn next(
        &mut self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<Delivery>> {
        let queue = self.queue;
        tokio::select! {
            biased;
            () = shutdown.cancelled() => Ok(None),
            next = self.consumer.next() => match next {
                Some(Ok(delivery)) => Ok(Some(delivery)),
                Some(Err(error)) => Err(error).with_context(|| format!("consuming {queue} failed")),
                None => bail!("the broker cancelled our consumer of {queue}"),
            },
        }
    }

    /// Cancels the consumer and closes the channel.
    pub(crate) async fn close(self) {
        let _ = self
            .channel
            .basic_cancel(self.tag.as_str().into(), BasicCancelOptions::default())
            .await;
        let _ = self.channel.close(200, "auditor stopping".into()).await;
    }
}

/// Consumes on one connection until shutdown (`Ok`) or a broker error (`Err`).
async fn consume(
    connection: &Connection,
    store: &mut Store,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    broker::declare_audit_topology(connection)
        .await
        .context("cannot declare the audit exchange and queues")?;
    let (channel, mut consumer, consumer_tag) = open_consumer(
        connection,
        AUDIT_QUEUE,
        "cluegetter-auditor",
        settings.prefetch(),
    )
    .await?;
    tracing::info!(
        queue = AUDIT_QUEUE,
        prefetch = settings.prefetch(),
        "consuming audit events"
    );

    loop {
        let (batch, stop) = collect(&mut consumer, settings, shutdown).await?;
        if !batch.is_empty() {
            let finished = process(&channel, store, batch, settings, shutdown).await?;
            if !finished {
                return Ok(());
            }
        }
        if stop {
            let _ = channel
                .basic_cancel(consumer_tag.as_str().into(), BasicCancelOptions::default())
                .await;
            let _ = channel.close(200, "auditor stopping".into()).await;
            return Ok(());
        }
    }
}

/// The next batch: waits for a first delivery, then takes more until the batch is full or
/// `batch_wait` has passed since the first. The flag is true when shutdown was asked for.
async fn collect(
    consumer: &mut Consumer,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Vec<Delivery>, bool)> {
    let first = tokio::select! {
        biased;
        () = shutdown.cancelled() => return Ok((Vec::new(), true)),
        next = consumer.next() => delivery(next)?,
    };
    let deadline = Instant::now() + settings.batch_wait;
    let mut batch = vec![first];
    while batch.len() < settings.batch_size {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => return Ok((batch, true)),
            () = tokio::time::sleep_until(deadline) => break,
            next = consumer.next() => batch.push(delivery(next)?),
        }
    }
    Ok((batch, false))
}

fn delivery(next: Option<lapin::Result<Delivery>>) -> anyhow::Result<Delivery> {
    match next {
        Some(Ok(delivery)) => Ok(delivery),
        Some(Err(error)) => Err(error).with_context(|| format!("consuming {AUDIT_QUEUE} failed")),
        None => bail!("the broker cancelled our consumer of {AUDIT_QUEUE}"),
    }
}

/// A delivery that goes to the dead-letter queue.
struct Poison<'a> {
    delivery: &'a Delivery,
    /// `undecodable`, `version` or `refused` (the metric's label).
    kind: &'static str,
    reason: String,
    message_id: String,
    queue_id: String,
}

/// Writes, dead-letters and acks one batch. Returns false when shutdown came while the database
/// could not be written: then nothing is acked and the broker will redeliver the batch.
async fn process(
    channel: &Channel,
    store: &mut Store,
    batch: Vec<Delivery>,
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let Some(last_tag) = batch.last().map(|d| d.delivery_tag) else {
        return Ok(true);
    };
    // a batch has at most 65 535 deliveries: exact as f64
    ::metrics::histogram!(metrics::BATCH_SIZE).record(batch.len() as f64);

    let decoded: Vec<Result<AuditEvent, WireError>> = batch
        .iter()
        .map(|d| contract::decode::<AuditEvent>(&d.data))
        .collect();
    let events: Vec<&AuditEvent> = decoded.iter().filter_map(|d| d.as_ref().ok()).collect();

    let outcomes = if events.is_empty() {
        Vec::new()
    } else {
        let mut backoff = Backoff::new(settings.max_backoff);
        loop {
            match store.write_batch(&events).await {
                Ok(outcomes) => break outcomes,
                Err(error) => {
                    ::metrics::counter!(metrics::BATCH_FAILURES).increment(1);
                    let delay = backoff.next_delay();
                    tracing::error!(
                        %error,
                        database = %settings.database_shown,
                        events = events.len(),
                        retry_in = ?delay,
                        "cannot write audit events to the database; nothing acked; retrying"
                    );
                    tokio::select! {
                        () = shutdown.cancelled() => {
                            tracing::warn!(
                                events = events.len(),
                                "stopping with a batch the database did not take; the broker \
                                 will redeliver it"
                            );
                            return Ok(false);
                        }
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    };

    let mut outcomes = outcomes.into_iter();
    let mut poison = Vec::new();
    let (mut stored, mut duplicates) = (0_u64, 0_u64);
    let now = chrono::Utc::now();
    for (delivery, decoded) in batch.iter().zip(&decoded) {
        let event = match decoded {
            Ok(event) => event,
            Err(error) => {
                let (message_id, queue_id) = loose_identity(&delivery.data);
                let kind = match error {
                    WireError::Decode(_) => "undecodable",
                    WireError::Version { .. } => "version",
                };
                poison.push(Poison {
                    delivery,
                    kind,
                    reason: error.to_string(),
                    message_id,
                    queue_id,
                });
                continue;
            }
        };
        let message_id = event.message_id;
        let queue_id = event.message.queue_id.as_str();
        match outcomes.next() {
            Some(Outcome::Stored) => {
                stored += 1;
                metrics::ingest_lag(
                    (now - event.message.received_at)
                        .to_std()
                        .unwrap_or_default(),
                );
                tracing::debug!(
                    %message_id,
                    %queue_id,
                    redelivered = delivery.redelivered,
                    "audit event stored"
                );
            }
            Some(Outcome::Duplicate) => {
                duplicates += 1;
                tracing::info!(
                    %message_id,
                    %queue_id,
                    redelivered = delivery.redelivered,
                    "audit event already stored (redelivery or spool replay); skipped"
                );
            }
            Some(Outcome::Refused(reason)) => poison.push(Poison {
                delivery,
                kind: "refused",
                reason,
                message_id: message_id.to_string(),
                queue_id: queue_id.to_owned(),
            }),
            None => bail!("internal error: the store answered for fewer events than it was given"),
        }
    }
    ::metrics::counter!(metrics::EVENTS_COMMITTED).increment(stored);
    ::metrics::counter!(metrics::DUPLICATES_SKIPPED).increment(duplicates);

    dead_letter(channel, &poison).await?;
    channel
        .basic_ack(last_tag, BasicAckOptions { multiple: true })
        .await
        .context("cannot ack a committed batch (it will be redelivered and skipped)")?;
    tracing::debug!(
        deliveries = batch.len(),
        stored,
        duplicates,
        dead_lettered = poison.len(),
        "batch committed and acked"
    );
    Ok(true)
}

/// Publishes the poison deliveries to the dead-letter queue with their reason, and waits until
/// the broker has confirmed each.
async fn dead_letter(channel: &Channel, poison: &[Poison<'_>]) -> anyhow::Result<()> {
    let mut confirms = Vec::with_capacity(poison.len());
    for item in poison {
        let properties = with_reason(item.delivery, &item.reason);
        let confirm = broker::publish_mandatory(
            channel,
            "",
            AUDIT_DEAD_LETTER_QUEUE,
            &item.delivery.data,
            properties,
        )
        .await
        .context("cannot publish to the dead-letter queue")?;
        confirms.push(confirm);
    }
    for (item, confirm) in poison.iter().zip(confirms) {
        let confirmation = confirm
            .await
            .context("no confirm for a dead-lettered event")?;
        broker::confirmed(&confirmation)
            .with_context(|| format!("cannot dead-letter an event to {AUDIT_DEAD_LETTER_QUEUE}"))?;
        ::metrics::counter!(metrics::DEAD_LETTERED, "reason" => item.kind).increment(1);
        tracing::warn!(
            message_id = %item.message_id,
            queue_id = %item.queue_id,
            reason = %item.reason,
            queue = AUDIT_DEAD_LETTER_QUEUE,
            "poison audit event dead-lettered"
        );
    }
    Ok(())
}

/// The message UUID and queue id of an event that could not be decoded, as far as they can be
/// read, for the log line; `unknown` where they cannot.
pub(crate) fn loose_identity(bytes: &[u8]) -> (String, String) {
    let value: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
    let field = |pointer: &str| {
        value
            .as_ref()
            .and_then(|v| v.pointer(pointer))
            .and_then(serde_json::Value::as_str)
            .unwrap_or("unknown")
            .to_owned()
    };
    (field("/message_id"), field("/message/queue_id"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_identity_reads_what_it_can() {
        let json = br#"{"version":2,"message_id":"0190-x","message":{"queue_id":"4Abc"}}"#;
        assert_eq!(loose_identity(json), ("0190-x".into(), "4Abc".into()));
        assert_eq!(
            loose_identity(b"\xff garbage"),
            ("unknown".into(), "unknown".into())
        );
    }

    #[test]
    fn prefetch_is_two_batches_capped() {
        let mut config = Config::default();
        config.auditor.batch_size = 200;
        assert_eq!(Settings::new(&config).prefetch(), 400);
        config.auditor.batch_size = u16::MAX;
        assert_eq!(Settings::new(&config).prefetch(), u16::MAX);
    }
}
