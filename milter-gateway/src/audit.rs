//! Audit events: spooled before the answer, published persistent with publisher confirms,
//! removed from the spool only once confirmed, replayed on start (DESIGN.md, invariant 1).
//!
//! The connection calls [`AuditPublisher::spool`] before it answers Postfix and
//! [`AuditPublisher::publish`] after; neither waits on the broker. A background task publishes
//! in order and retries each event until RabbitMQ confirms it, reconnecting as needed, so
//! what the spool holds is exactly what the broker has not confirmed yet.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lapin::options::ConfirmSelectOptions;
use lapin::{BasicProperties, Channel};
use platform::broker;
use platform::config::Config;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::AuditEvent;

use crate::spool::{Replayed, Spool, SpoolEntry, SpoolError};

/// Events kept in memory while they wait; beyond this the spool file is read back instead.
const IN_MEMORY: usize = 1000;
/// An event whose body is larger than this is never kept in memory while it waits (the spool
/// file is read back), so the queue holds at most `IN_MEMORY` × this many body bytes.
const IN_MEMORY_BODY: usize = 64 * 1024;

fn body_len(event: &AuditEvent) -> usize {
    event.message.body.as_ref().map_or(0, Vec::len)
}

/// One event waiting for its confirm.
struct Waiting {
    /// `None` when the spool refused it (full or broken disk): published from memory only.
    entry: Option<SpoolEntry>,
    /// `None` when the spool file holds it and memory should not.
    event: Option<AuditEvent>,
    answered: bool,
}

#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Waiting>>,
    more: Notify,
}

#[derive(Clone)]
pub struct AuditPublisher {
    spool: Spool,
    queue: Arc<Queue>,
}

impl AuditPublisher {
    /// Starts publishing, beginning with what an earlier run left in the spool.
    pub fn start(
        config: &Config,
        spool: Spool,
        replay: Vec<Replayed>,
        tracker: &TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let queue = Arc::new(Queue::default());
        if !replay.is_empty() {
            tracing::info!(
                events = replay.len(),
                "replaying audit events left in the spool"
            );
            metrics::counter!("cluegetter_gateway_audit_replayed_total")
                .increment(replay.len() as u64);
        }
        if let Ok(mut items) = queue.items.lock() {
            // read back from the spool one window at a time, never all at once
            for r in replay {
                items.push_back(Waiting {
                    answered: r.answered,
                    entry: Some(r.entry),
                    event: None,
                });
            }
        }
        tracker.spawn(publish_loop(
            broker::Supervisor::from_config(&config.broker, "milter-gateway audit"),
            spool.clone(),
            queue.clone(),
            shutdown,
        ));
        Self { spool, queue }
    }

    /// Puts the event on disk; call before answering the MTA. The file I/O runs on the
    /// blocking pool, not on the connection's worker thread.
    ///
    /// # Errors
    /// The spool is full or the disk failed: the caller applies the fail action (and still
    /// calls [`AuditPublisher::publish`] with `None`, so the record is at least attempted).
    pub async fn spool(&self, event: &AuditEvent) -> Result<SpoolEntry, SpoolError> {
        let spool = self.spool.clone();
        let id = event.message_id;
        let json = wire::contract::encode(event);
        match tokio::task::spawn_blocking(move || spool.write_encoded(id, &json)).await {
            Ok(written) => written,
            Err(join) => Err(SpoolError::Io {
                dir: String::new(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// Rewrites a spooled event (late results added), atomically: the file holds either the
    /// old event or the new one. Call before [`AuditPublisher::publish`], never after.
    ///
    /// # Errors
    /// The spool is full or the disk failed; the old event is left in place.
    pub async fn rewrite(
        &self,
        entry: &SpoolEntry,
        event: &AuditEvent,
    ) -> Result<SpoolEntry, SpoolError> {
        let spool = self.spool.clone();
        let entry = entry.clone();
        let json = wire::contract::encode(event);
        match tokio::task::spawn_blocking(move || spool.rewrite_encoded(&entry, &json)).await {
            Ok(written) => written,
            Err(join) => Err(SpoolError::Io {
                dir: String::new(),
                source: std::io::Error::other(join.to_string()),
            }),
        }
    }

    /// Records in the spool that the MTA got its answer, for an event whose publishing is
    /// held back ([`AuditPublisher::publish`] does it otherwise).
    pub fn mark_answered(&self, entry: &SpoolEntry) {
        let spool = self.spool.clone();
        let entry = entry.clone();
        // a small write, but under the spool's lock: not on a worker thread
        tokio::task::spawn_blocking(move || spool.mark_answered(&entry));
    }

    /// Queues the event for publishing; `answered` says whether the MTA got the final reply.
    pub fn publish(&self, entry: Option<SpoolEntry>, mut event: AuditEvent, answered: bool) {
        event.answered = answered;
        if answered && let Some(entry) = &entry {
            self.mark_answered(entry);
        }
        if let Ok(mut items) = self.queue.items.lock() {
            let keep =
                entry.is_none() || (items.len() < IN_MEMORY && body_len(&event) <= IN_MEMORY_BODY);
            items.push_back(Waiting {
                entry,
                event: keep.then_some(event),
                answered,
            });
            metrics::gauge!("cluegetter_gateway_audit_queue_depth").set(items.len() as f64);
        }
        self.queue.more.notify_one();
    }
}

/// A connection to the first node that answers, with a confirming channel on which the audit
/// topology is declared.
async fn connect_channel(
    supervisor: &mut broker::Supervisor,
    stop: &CancellationToken,
) -> Option<(lapin::Connection, Channel)> {
    loop {
        let connection = supervisor.connect(stop).await?;
        let setup = async {
            let channel = connection.create_channel().await?;
            broker::declare_audit_topology(&channel).await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>(channel)
        };
        match setup.await {
            Ok(channel) => return Some((connection, channel)),
            Err(error) => {
                if !supervisor.end(&connection, Err(error), stop).await {
                    return None;
                }
            }
        }
    }
}

fn properties(event: &AuditEvent) -> BasicProperties {
    BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(event.message_id.to_string().into())
}

/// Publishes the events in one window: all published first, then the confirms awaited in
/// order (serial confirms of persistent messages top out near 2,000/s). Returns how many of
/// the first events were confirmed; the caller retries the rest on a new channel.
async fn publish_window(channel: &Channel, events: &[AuditEvent]) -> (usize, Option<String>) {
    let mut pending = Vec::with_capacity(events.len());
    let mut error = None;
    for event in events {
        // mandatory: an event nothing routes comes back in the confirm instead of being
        // acked and dropped
        match broker::publish_mandatory(
            channel,
            broker::AUDIT_EXCHANGE,
            "",
            &wire::contract::encode(event),
            properties(event),
        )
        .await
        {
            Ok(confirm) => {
                // handed to the broker, not yet confirmed: published minus confirmed is what
                // is in flight (and what a broken channel makes us publish again)
                metrics::counter!("cluegetter_gateway_audit_published_total").increment(1);
                pending.push(confirm);
            }
            Err(e) => {
                error = Some(e.to_string());
                break;
            }
        }
    }
    let mut confirmed = 0;
    for confirm in pending {
        // A confirm that never comes (a link that died without lapin noticing) must not stall
        // the spool for ever: give up, reconnect and publish again (the auditor ignores the
        // duplicate if the broker had taken it).
        match tokio::time::timeout(CONFIRM_TIMEOUT, confirm).await {
            Ok(Ok(confirmation)) => match broker::confirmed(&confirmation) {
                Ok(()) => confirmed += 1,
                Err(refused) => {
                    error = Some(refused.to_string());
                    break;
                }
            },
            Ok(Err(e)) => {
                error = Some(e.to_string());
                break;
            }
            Err(_) => {
                error = Some(format!("no confirm within {CONFIRM_TIMEOUT:?}"));
                break;
            }
        }
    }
    (confirmed, error)
}

/// The event to publish: from memory, or read back from the spool.
fn load(spool: &Spool, waiting: &Waiting) -> Option<AuditEvent> {
    if let Some(event) = &waiting.event {
        return Some(event.clone());
    }
    let entry = waiting.entry.as_ref()?;
    match spool.load(entry) {
        Ok(mut event) => {
            event.answered = waiting.answered;
            Some(event)
        }
        Err(error) => {
            tracing::error!(message_id = %entry.message_id, %error, "spooled audit event cannot be read back");
            None
        }
    }
}

/// Events published before their confirms are awaited.
const WINDOW: usize = 256;
/// Longest wait for one event's confirm before the link is given up as dead.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(30);

async fn publish_loop(
    mut supervisor: broker::Supervisor,
    spool: Spool,
    queue: Arc<Queue>,
    shutdown: CancellationToken,
) {
    let mut link: Option<(lapin::Connection, Channel)> = None;
    loop {
        let batch: Vec<Waiting> = queue
            .items
            .lock()
            .map(|mut q| {
                let n = q.len().min(WINDOW);
                q.drain(..n).collect()
            })
            .unwrap_or_default();
        if batch.is_empty() {
            if shutdown.is_cancelled() {
                break;
            }
            tokio::select! {
                () = queue.more.notified() => {}
                () = shutdown.cancelled() => {}
            }
            continue;
        }
        // reading back from the spool is file I/O: not on a worker thread
        let reader = spool.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            batch
                .into_iter()
                .filter_map(|w| load(&reader, &w).map(|event| (w, event)))
                .collect::<Vec<_>>()
        })
        .await;
        let mut batch: Vec<(Waiting, AuditEvent)> = match loaded {
            Ok(batch) => batch,
            Err(error) => {
                // the closure does not panic; if it ever did, the events are still spooled
                tracing::error!(%error, "cannot read audit events back from the spool");
                continue;
            }
        };
        while !batch.is_empty() {
            if link.is_none() {
                link = connect_channel(&mut supervisor, &shutdown).await;
            }
            let Some((_, channel)) = link.as_ref() else {
                // Shutting down without a broker: the spool keeps the events for the next start.
                let left = queue.items.lock().map(|q| q.len()).unwrap_or(0) + batch.len();
                tracing::warn!(
                    events = left,
                    "stopping with audit events in the spool; they are replayed on the next start"
                );
                return;
            };
            let events: Vec<AuditEvent> = batch.iter().map(|(_, e)| e.clone()).collect();
            let (confirmed, error) = publish_window(channel, &events).await;
            for (waiting, _) in batch.drain(..confirmed) {
                if let Some(entry) = &waiting.entry {
                    spool.remove(entry);
                }
            }
            metrics::counter!("cluegetter_gateway_audit_confirmed_total")
                .increment(confirmed as u64);
            if let Some(error) = error {
                // The unconfirmed ones are published again on a new channel; one the broker
                // did take after all arrives twice, which the auditor ignores (idempotent).
                tracing::warn!(%error, unconfirmed = batch.len(), "audit events not confirmed; retrying");
                metrics::counter!("cluegetter_gateway_audit_publish_retries_total").increment(1);
                if let Some((connection, _)) = link.take() {
                    broker::close(&connection, 320, "reconnecting").await;
                    supervisor.lost();
                }
                if shutdown.is_cancelled() {
                    tracing::warn!(
                        "stopping with audit events in the spool; they are replayed on the next start"
                    );
                    return;
                }
            }
        }
        if let Ok(q) = queue.items.lock() {
            metrics::gauge!("cluegetter_gateway_audit_queue_depth").set(q.len() as f64);
        }
    }
    if let Some((connection, _)) = link {
        broker::close(&connection, 200, "shutting down").await;
    }
}
