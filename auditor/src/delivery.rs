//! Delivery events (bounce-ingest `maillog`) from `cluegetter.delivery.archive` into
//! `message_delivery`. Commit, then ack.
//!
//! One event per transaction: decode (not JSON or another wire major version: poison), write
//! ([`DeliveryStore`]; a value the database refuses: poison), dead-letter poison to
//! `cluegetter.delivery.dead-letter` with the reason and wait for the broker's confirm, then
//! ack. While the database cannot be written nothing is acked: the event is retried with
//! backoff and the broker holds the rest (prefetch). Redeliveries and bounce-ingest's
//! at-least-once republishing change nothing (the row is unique on the log line).
//!
//! A delivery line is often read before its message's audit event is stored (the gateway's
//! spool publishes it moments after Postfix went on); the row is stored all the same, and the
//! join to the message is made when it is read.

use std::time::Duration;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Connection};
use platform::backoff::Backoff;
use platform::broker::{self, DELIVERY_DEAD_LETTER_QUEUE, DELIVERY_QUEUE};
use platform::config::Config;
use tokio_util::sync::CancellationToken;
use wire::DeliveryEvent;
use wire::contract::{self, WireError};

use crate::consume::{OneByOne, with_reason};
use crate::store;
use crate::store::delivery::{DeliveryOutcome, DeliveryStore};

/// Deliveries in flight to this consumer.
const PREFETCH: u16 = 64;

/// Delivery events stored, by `status` (`sent`, `deferred`, `bounced`, `expired`).
pub const STORED: &str = "cluegetter_auditor_deliveries_stored_total";
/// Delivery events stored already (redelivered or republished), skipped.
pub const DUPLICATES: &str = "cluegetter_auditor_delivery_duplicates_total";
/// Delivery events sent to the dead-letter queue, by `reason` (`undecodable`, `version`,
/// `refused`).
pub const DEAD_LETTERED: &str = "cluegetter_auditor_deliveries_dead_lettered_total";

fn describe() {
    metrics::describe_counter!(STORED, "Delivery events stored, by status");
    metrics::describe_counter!(DUPLICATES, "Delivery events stored already, skipped");
    metrics::describe_counter!(DEAD_LETTERED, "Delivery events dead-lettered, by reason");
    for status in wire::DeliveryStatus::ALL {
        metrics::counter!(STORED, "status" => status.as_str()).increment(0);
    }
    for reason in ["undecodable", "version", "refused"] {
        metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(0);
    }
    metrics::counter!(DUPLICATES).increment(0);
}

/// Consumes delivery events until `shutdown` fires; keeps reconnecting to the broker and
/// retrying the database meanwhile.
///
/// # Errors
/// `database.url` cannot be parsed.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    describe();
    let pool = store::connect_lazy(&config.database.url, 2).context("invalid database.url")?;
    let store = DeliveryStore::new(pool);
    let max_backoff = config.broker.reconnect_max_backoff;
    let mut supervisor =
        broker::Supervisor::from_config(&config.broker, "cluegetter-auditor deliveries");
    while let Some(connection) = supervisor.connect(&shutdown).await {
        let outcome = consume(&connection, &store, max_backoff, &shutdown).await;
        if !supervisor.end(&connection, outcome, &shutdown).await {
            break;
        }
    }
    store.pool().close().await;
    Ok(())
}

/// Consumes on one connection until shutdown (`Ok`) or a broker error (`Err`).
async fn consume(
    connection: &Connection,
    store: &DeliveryStore,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    broker::declare_delivery_topology(connection)
        .await
        .context("cannot declare the delivery exchange and queues")?;
    let mut queue = OneByOne::open(
        connection,
        DELIVERY_QUEUE,
        "cluegetter-auditor-deliveries",
        PREFETCH,
    )
    .await?;
    while let Some(delivery) = queue.next(shutdown).await? {
        if !handle(queue.channel(), store, &delivery, max_backoff, shutdown).await? {
            break;
        }
    }
    queue.close().await;
    Ok(())
}

/// Stores (or dead-letters) one delivery and acks it. Returns false when shutdown came while
/// the database could not be written: then it is not acked and will be redelivered.
async fn handle(
    channel: &Channel,
    store: &DeliveryStore,
    delivery: &Delivery,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let event = match contract::decode::<DeliveryEvent>(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            let kind = match error {
                WireError::Decode(_) => "undecodable",
                WireError::Version { .. } => "version",
            };
            dead_letter(channel, delivery, kind, &error.to_string()).await?;
            return ack(channel, delivery).await.map(|()| true);
        }
    };
    let mut backoff = Backoff::new(max_backoff);
    let outcome = loop {
        match store.write(&event).await {
            Ok(outcome) => break outcome,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::error!(queue_id = %event.queue_id, %error, retry_in = ?delay,
                    "cannot write a delivery event to the database; not acked; retrying");
                if !backoff.sleep_for(delay, shutdown).await {
                    return Ok(false);
                }
            }
        }
    };
    match outcome {
        DeliveryOutcome::Stored => {
            metrics::counter!(STORED, "status" => event.status.as_str()).increment(1);
            tracing::debug!(
                queue_id = %event.queue_id,
                mta = %event.mta_hostname,
                status = event.status.as_str(),
                "delivery stored"
            );
        }
        DeliveryOutcome::Duplicate => {
            metrics::counter!(DUPLICATES).increment(1);
            tracing::debug!(queue_id = %event.queue_id, "delivery already stored; skipped");
        }
        DeliveryOutcome::Refused(reason) => {
            dead_letter(channel, delivery, "refused", &reason).await?;
        }
    }
    ack(channel, delivery).await.map(|()| true)
}

async fn ack(channel: &Channel, delivery: &Delivery) -> anyhow::Result<()> {
    channel
        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
        .await
        .context("cannot ack a stored delivery event (it will be redelivered and skipped)")
}

/// Publishes the delivery, unchanged but for the reason header, to the dead-letter queue and
/// waits for the broker's confirm.
async fn dead_letter(
    channel: &Channel,
    delivery: &Delivery,
    kind: &'static str,
    reason: &str,
) -> anyhow::Result<()> {
    let properties = with_reason(delivery, reason);
    broker::publish_confirmed(
        channel,
        "",
        DELIVERY_DEAD_LETTER_QUEUE,
        &delivery.data,
        properties,
    )
    .await
    .with_context(|| {
        format!("cannot dead-letter a delivery event to {DELIVERY_DEAD_LETTER_QUEUE}")
    })?;
    metrics::counter!(DEAD_LETTERED, "reason" => kind).increment(1);
    tracing::warn!(%reason, queue = DELIVERY_DEAD_LETTER_QUEUE, "poison delivery event dead-lettered");
    Ok(())
}
