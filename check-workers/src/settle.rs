//! The quotas settle consumer: every audit event, through the durable queue
//! `cluegetter.quotas.settle` bound to the audit fanout, keeps or releases the reservations its
//! message made (DESIGN.md, durability invariant 3; the database side is
//! [`Settler`](crate::modules::quotas::Settler)).
//!
//! Runs in every check-workers process that serves the quotas module (competing consumers;
//! settling is idempotent, so a redelivered event changes nothing). An event is acked only
//! after its settlement is committed; while the database is down the event is kept and retried
//! with backoff (the queue holds the rest), and on shutdown it is left unacked for redelivery.
//! An event that cannot be read is logged and dropped: the auditor dead-letters its own copy.
//!
//! The queue exists once a quotas worker has started, so every event of a message that a quota
//! check reserved for is in it. An operator who turns quotas off for good deletes the queue
//! (`rabbitmqctl delete_queue cluegetter.quotas.settle`), or it keeps collecting events.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions, BasicRejectOptions};
use lapin::types::FieldTable;
use lapin::{Connection, message::Delivery};
use platform::backoff::Backoff;
use platform::broker;
use platform::config::Urls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use wire::AuditEvent;

use crate::module::error_chain;
use crate::modules::quotas::Settler;

/// The replicated queue of audit events the quotas module settles from.
pub use platform::broker::SETTLE_QUEUE;

/// Events settled (`outcome`: `kept`, `released`, `nothing` when the message reserved nothing,
/// `unreadable`).
pub const METRIC_SETTLED: &str = "cluegetter_quota_settled_total";
/// Settle attempts the database failed.
pub const METRIC_SETTLE_ERRORS: &str = "cluegetter_quota_settle_errors_total";
/// Tally rows a race between database nodes left reserved, settled by the periodic reconcile.
pub const METRIC_RECONCILED: &str = "cluegetter_quota_reservations_reconciled_total";

/// Events handled at once per process.
const PREFETCH: u16 = 32;
/// How long shutdown waits for settlements in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest pause between attempts to settle one event while the database fails.
const MAX_DB_RETRY_DELAY: Duration = Duration::from_secs(5);

/// How the consumer talks to the broker.
#[derive(Clone, Debug)]
pub struct SettleSettings {
    /// `[broker] url`: the nodes, tried in turn.
    pub broker_urls: Urls,
    pub connection_name: String,
    pub reconnect_max_backoff: Duration,
}

pub fn describe_metrics() {
    metrics::describe_counter!(METRIC_SETTLED, "Audit events settled, by outcome");
    metrics::describe_counter!(
        METRIC_SETTLE_ERRORS,
        "Settle attempts that failed in the database (retried)"
    );
    metrics::describe_counter!(
        METRIC_RECONCILED,
        "Quota tally rows left reserved by a race between database nodes, settled later from the remembered verdict"
    );
}

/// Consumes the settle queue until `shutdown`, reconnecting whenever the broker goes away, and
/// every 30 s settles what a race between database nodes left reserved and prunes old
/// remembered verdicts. Cancels `ready` once the queue is declared.
pub async fn serve(
    settings: &SettleSettings,
    settler: &Settler,
    ready: &CancellationToken,
    shutdown: &CancellationToken,
) {
    describe_metrics();
    let settler = Arc::new(settler.clone());
    let mut supervisor = broker::Supervisor::new(
        &settings.broker_urls,
        settings.connection_name.clone(),
        settings.reconnect_max_backoff,
    );
    while let Some(connection) = supervisor.connect(shutdown).await {
        let outcome = session(&connection, &settler, ready, shutdown).await;
        if !supervisor.end(&connection, outcome, shutdown).await {
            break;
        }
    }
}

/// Why a settle session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("settle queue {SETTLE_QUEUE}")]
    Broker(#[from] lapin::Error),
    #[error("the broker cancelled the consumer on {SETTLE_QUEUE} (queue deleted?)")]
    Cancelled,
}

/// One connection's life: consume until shutdown (`Ok`) or the first broker failure.
async fn session(
    connection: &Connection,
    settler: &Arc<Settler>,
    ready: &CancellationToken,
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    broker::declare_settle_topology(connection).await?;
    ready.cancel();
    let mut consumer = channel
        .basic_consume(
            SETTLE_QUEUE.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tracing::info!(queue = SETTLE_QUEUE, "settling quota reservations");
    // Fires when the settlements in flight are to give up (session over); each holds a clone.
    let abandon = CancellationToken::new();
    let in_flight = TaskTracker::new();
    let mut prune = tokio::time::interval(settler.prune_interval());
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let outcome = loop {
        let delivery = tokio::select! {
            biased;
            () = shutdown.cancelled() => break Ok(()),
            _ = prune.tick() => {
                let settler = Arc::clone(settler);
                in_flight.spawn(async move {
                    match settler.prune().await {
                        Ok((reconciled, pruned)) => {
                            if reconciled > 0 {
                                tracing::warn!(reconciled, "settled quota reservations a race between database nodes left reserved");
                                metrics::counter!(METRIC_RECONCILED).increment(reconciled);
                            }
                            if pruned > 0 {
                                tracing::debug!(pruned, "pruned remembered quota verdicts");
                            }
                        }
                        Err(error) => tracing::warn!(error = %error_chain(&error), "cannot reconcile or prune remembered quota verdicts"),
                    }
                });
                continue;
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(error)) => break Err(SessionError::Broker(error)),
                None => break Err(SessionError::Cancelled),
            },
        };
        in_flight.spawn(handle(Arc::clone(settler), delivery, abandon.clone()));
    };
    in_flight.close();
    if outcome.is_ok()
        && tokio::time::timeout(DRAIN_TIMEOUT, in_flight.wait())
            .await
            .is_err()
    {
        tracing::warn!("settlements still running after the drain time; they will be redelivered");
    }
    abandon.cancel();
    in_flight.wait().await;
    if outcome.is_ok()
        && let Err(error) = channel
            .close(200, "check-workers shutting down".into())
            .await
    {
        tracing::debug!(%error, "cannot close the settle channel");
    }
    outcome
}

/// One event, start to ack: retried while the database fails, until it works or the session
/// ends (then the event stays unacked and comes back).
async fn handle(settler: Arc<Settler>, delivery: Delivery, abandon: CancellationToken) {
    let event: AuditEvent = match wire::contract::decode(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            metrics::counter!(METRIC_SETTLED, "outcome" => "unreadable").increment(1);
            tracing::warn!(
                error = %error_chain(&error),
                bytes = delivery.data.len(),
                "dropping an audit event the settle queue cannot read (the auditor dead-letters its copy)"
            );
            if let Err(error) = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
            {
                tracing::debug!(%error, "cannot reject the event");
            }
            return;
        }
    };
    let span = tracing::info_span!("settle", message_id = %event.message_id, queue_id = %event.message.queue_id);
    async move {
        let mut backoff = Backoff::new(MAX_DB_RETRY_DELAY);
        loop {
            match settler.settle(&event).await {
                Ok(settled) => {
                    let outcome = match (settled.rows, settled.counted) {
                        (0, _) => "nothing",
                        (_, true) => "kept",
                        (_, false) => "released",
                    };
                    metrics::counter!(METRIC_SETTLED, "outcome" => outcome).increment(1);
                    tracing::debug!(rows = settled.rows, counted = settled.counted, "quota reservations settled");
                    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                        // Redelivered and settled again, which changes nothing.
                        tracing::warn!(%error, "cannot ack the settled event");
                    }
                    return;
                }
                Err(error) => {
                    metrics::counter!(METRIC_SETTLE_ERRORS).increment(1);
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in = ?delay, "cannot settle quota reservations; retrying");
                    if !backoff.sleep_for(delay, &abandon).await {
                        return;
                    }
                }
            }
        }
    }
    .instrument(span)
    .await;
}
