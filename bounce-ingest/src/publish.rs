//! Bounce events to RabbitMQ: persistent, `mandatory`, with publisher confirms, on the bounce
//! exchange (declared here too, so nothing published before the auditor's first start is
//! dropped as unroutable).
//!
//! [`publish`] is one confirmed publish (what `submit` does before it exits 0).
//! [`SpoolPublisher`] is the listener's background task: it publishes the spooled events in
//! order, retrying each until it is confirmed, reconnecting as needed, and removes an event
//! from the spool only then; what the spool holds is what RabbitMQ has not confirmed.

use std::collections::VecDeque;
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel, Connection};
use platform::backoff::Backoff;
use platform::broker;
use platform::config::Config;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::BounceEvent;

use crate::metrics;
use crate::spool::{Spool, SpoolEntry};

pub use platform::broker::PublishError;

/// A channel with the bounce topology declared and publisher confirms on.
///
/// # Errors
/// The channel cannot be opened or the broker refuses a declaration.
pub async fn open_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    broker::declare_bounce_topology(&channel).await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Publishes one event and waits for RabbitMQ's confirm.
///
/// # Errors
/// Anything short of an ack for a routed message.
pub async fn publish(channel: &Channel, event: &BounceEvent) -> Result<(), PublishError> {
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(event.bounce_id.to_string().into());
    broker::publish_confirmed(
        channel,
        broker::BOUNCE_EXCHANGE,
        "",
        &wire::contract::encode(event),
        properties,
    )
    .await
}

/// The handle the listener queues spooled events on. Dropping every handle lets the task
/// publish what is queued and end.
#[derive(Clone)]
pub struct SpoolPublisher {
    queue: mpsc::UnboundedSender<SpoolEntry>,
}

impl SpoolPublisher {
    /// Starts publishing, beginning with `replay` (what an earlier run left in the spool).
    /// The task ends when every handle is dropped and the queue is empty, or when `stop`
    /// fires (what is left stays in the spool for the next start).
    pub fn start(
        config: &Config,
        spool: Spool,
        replay: Vec<SpoolEntry>,
        tracker: &TaskTracker,
        stop: CancellationToken,
    ) -> Self {
        if !replay.is_empty() {
            tracing::info!(
                events = replay.len(),
                "publishing bounce events left in the spool"
            );
        }
        let (queue, receiver) = mpsc::unbounded_channel();
        tracker.spawn(publish_loop(
            broker::Supervisor::from_config(&config.broker, "bounce-ingest"),
            config.broker.reconnect_max_backoff,
            spool,
            replay.into(),
            receiver,
            stop,
        ));
        Self { queue }
    }

    /// Queues a spooled event for publishing.
    pub fn enqueue(&self, entry: SpoolEntry) {
        // The task only ends before every handle is dropped on `stop`; then the event stays
        // in the spool and is published on the next start.
        let _ = self.queue.send(entry);
    }
}

/// A connection to the first node that answers, with the bounce channel set up.
async fn connect(
    supervisor: &mut broker::Supervisor,
    stop: &CancellationToken,
) -> Option<(Connection, Channel)> {
    loop {
        let connection = supervisor.connect(stop).await?;
        match open_channel(&connection).await {
            Ok(channel) => return Some((connection, channel)),
            Err(error) => {
                if !supervisor.end(&connection, Err(error), stop).await {
                    return None;
                }
            }
        }
    }
}

async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

async fn publish_loop(
    mut supervisor: broker::Supervisor,
    max_backoff: Duration,
    spool: Spool,
    mut pending: VecDeque<SpoolEntry>,
    mut queue: mpsc::UnboundedReceiver<SpoolEntry>,
    stop: CancellationToken,
) {
    let mut link: Option<(Connection, Channel)> = None;
    let mut backoff = Backoff::new(max_backoff);
    'events: loop {
        let entry = match pending.pop_front() {
            Some(entry) => entry,
            None => tokio::select! {
                next = queue.recv() => match next {
                    Some(entry) => entry,
                    None => break 'events,
                },
                () = stop.cancelled() => break 'events,
            },
        };
        let loader = spool.clone();
        let load_entry = entry.clone();
        let Some(Some(event)) = blocking(move || loader.load(&load_entry)).await else {
            continue;
        };
        loop {
            if link.is_none() {
                link = connect(&mut supervisor, &stop).await;
            }
            let Some((_, channel)) = link.as_ref() else {
                break 'events;
            };
            match publish(channel, &event).await {
                Ok(()) => {
                    ::metrics::counter!(metrics::PUBLISHED).increment(1);
                    tracing::debug!(bounce_id = %event.bounce_id, "bounce event confirmed");
                    let remover = spool.clone();
                    blocking(move || remover.remove(&entry)).await;
                    backoff.reset();
                    break;
                }
                Err(error) => {
                    ::metrics::counter!(metrics::PUBLISH_RETRIES).increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(bounce_id = %event.bounce_id, %error, retry_in = ?delay,
                        "bounce event not confirmed; retrying");
                    if let Some((connection, _)) = link.take() {
                        platform::broker::close(&connection, 320, "reconnecting").await;
                        supervisor.lost();
                    }
                    if !backoff.sleep_for(delay, &stop).await {
                        break 'events;
                    }
                }
            }
        }
    }
    let left = pending.len() + queue.len();
    if left > 0 || stop.is_cancelled() {
        tracing::info!(
            waiting = left,
            "bounce publisher stopped; spooled events are published on the next start"
        );
    }
    if let Some((connection, _)) = link {
        platform::broker::close(&connection, 200, "shutting down").await;
    }
}
