//! The one consume → check → reply → ack loop, written once for every module.
//!
//! One RabbitMQ connection per process; per module one channel with `basic_qos(prefetch)` and one
//! consumer on the durable queue `cluegetter.check.<module>`, which workers on any host share.
//! Each delivery is handled in its own task (at most `prefetch` per module at once):
//!
//! 1. decode the [`CheckRequest`]; an undecodable one or one of another wire major version is
//!    logged with the reason and rejected without requeue (it would only come back; a
//!    dead-letter exchange on the queue, if one is ever configured, receives it);
//! 2. a request without `reply_to` has nobody waiting: logged and acked, not checked;
//! 3. run the module under its `timeout`; an error, a timeout or a panic becomes ClueGetter's
//!    error result (score 25) with the reason in `determinants.error`;
//! 4. publish the result to the default exchange, routing key = `reply_to`, same
//!    `correlation_id`, on the delivery's channel; then ack. Publishing before acking on one
//!    channel means the broker has routed the reply whenever it has seen the ack, so a request
//!    is never lost between the two; the reverse failure (reply sent, ack lost) gives a duplicate
//!    reply, which the gateway drops as late.
//!
//! A lost connection or channel ends the whole session: checks in flight are abandoned (their
//! requests were not acked, so the broker hands them out again), and the loop reconnects with
//! backoff. On shutdown the consumers are cancelled, checks in flight get `drain_timeout` to
//! finish and reply, and the connection is closed, which requeues anything still unacked.
//!
//! Nothing here knows any module; nothing here decides a verdict.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt as _;
use futures::StreamExt as _;
use futures::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection, Consumer, message::Delivery};
use platform::broker;
use platform::config::Urls;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use wire::{CheckRequest, CheckResult, WIRE_VERSION};

use crate::module::{Module, error_chain};

/// Requests taken off a module's queue (`module`).
pub const METRIC_REQUESTS: &str = "cluegetter_check_requests_total";
/// Results published (`module`, `action`).
pub const METRIC_RESULTS: &str = "cluegetter_check_results_total";
/// Requests that did not get a module's own answer (`module`, `reason`: `check_failed`,
/// `timeout`, `panic`, `undecodable`, `no_reply_to`, `reply_failed`).
pub const METRIC_ERRORS: &str = "cluegetter_check_errors_total";
/// Seconds a module spent on a check, errors and timeouts included (`module`).
pub const METRIC_DURATION: &str = "cluegetter_check_duration_seconds";

/// A module and how long one check may take.
#[derive(Clone)]
pub struct ModuleWorker {
    pub module: Arc<dyn Module>,
    /// The module's `timeout`; also the `expiration` the gateway gives its requests.
    pub timeout: Duration,
}

/// How the loop talks to the broker.
#[derive(Clone, Debug)]
pub struct WorkerSettings {
    /// `[broker] url`: the nodes, tried in turn.
    pub broker_urls: Urls,
    /// Shown in RabbitMQ's connection list.
    pub connection_name: String,
    /// Longest pause between reconnection attempts.
    pub reconnect_max_backoff: Duration,
    /// Requests per module in flight at once (AMQP prefetch); at least 1.
    pub prefetch: u16,
    /// How long shutdown waits for checks in flight before abandoning them to be redelivered.
    pub drain_timeout: Duration,
}

/// Registers the metric descriptions (once per process is enough; repeating is harmless).
pub fn describe_metrics() {
    metrics::describe_counter!(METRIC_REQUESTS, "Check requests taken off a module's queue");
    metrics::describe_counter!(
        METRIC_RESULTS,
        "Check results published, by suggested action"
    );
    metrics::describe_counter!(
        METRIC_ERRORS,
        "Check requests that got no answer of the module's own, by reason"
    );
    metrics::describe_histogram!(
        METRIC_DURATION,
        metrics::Unit::Seconds,
        "Time a module spent on one check"
    );
}

/// Serves `modules` until `shutdown` fires, reconnecting whenever the broker goes away
/// ([`broker::Supervisor`]). Returns once the consumers are cancelled, the checks in flight
/// have finished (or `drain_timeout` passed) and the connection is closed.
pub async fn serve(
    settings: &WorkerSettings,
    modules: &[ModuleWorker],
    shutdown: &CancellationToken,
) {
    let mut supervisor = broker::Supervisor::new(
        &settings.broker_urls,
        settings.connection_name.clone(),
        settings.reconnect_max_backoff,
    );
    while let Some(connection) = supervisor.connect(shutdown).await {
        let outcome = session(&connection, settings, modules, shutdown).await;
        if !supervisor.end(&connection, outcome, shutdown).await {
            break;
        }
    }
    tracing::info!("check-workers stopped consuming");
}

/// Why a broker session ended other than by shutdown.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("cannot start consuming {queue}")]
    Setup {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("consumer on {queue} failed")]
    Consume {
        queue: String,
        #[source]
        source: lapin::Error,
    },
    #[error("the broker cancelled the consumer on {queue} (queue deleted?)")]
    Cancelled { queue: String },
}

/// One connection's life: set up every module's consumer, consume until shutdown or the first
/// failure, then drain or abandon the checks in flight.
async fn session(
    connection: &Connection,
    settings: &WorkerSettings,
    modules: &[ModuleWorker],
    shutdown: &CancellationToken,
) -> Result<(), SessionError> {
    let mut consumers = Vec::with_capacity(modules.len());
    for worker in modules {
        let queue = broker::check_queue(worker.module.name());
        let (channel, consumer) = start_consumer(connection, worker, settings.prefetch)
            .await
            .map_err(|source| SessionError::Setup {
                queue: queue.clone(),
                source,
            })?;
        tracing::info!(%queue, prefetch = settings.prefetch, "consuming check requests");
        consumers.push((worker, channel, consumer));
    }

    // Fires when one consumer fails: the others stop taking requests so the session can end.
    let lost = CancellationToken::new();
    // Fires when the checks in flight are to give up (session lost, or drain time over).
    // Owned here; every check task holds a clone.
    let abandon = CancellationToken::new();
    let in_flight = TaskTracker::new();

    let channels: Vec<Channel> = consumers
        .iter()
        .map(|(_, channel, _)| channel.clone())
        .collect();
    let outcomes = join_all(consumers.into_iter().map(|(worker, channel, consumer)| {
        let context = ConsumeContext {
            worker,
            channel,
            shutdown,
            lost: &lost,
            abandon: &abandon,
            in_flight: &in_flight,
        };
        let span = tracing::info_span!("consume", module = worker.module.name());
        consume(context, consumer).instrument(span)
    }))
    .await;
    in_flight.close();

    let failure = outcomes.into_iter().find_map(Result::err);
    if failure.is_none() {
        // Shutdown: the consumers are cancelled; let the checks in flight reply and ack.
        if !in_flight.is_empty() {
            tracing::info!(
                checks = in_flight.len(),
                limit = %humantime::format_duration(settings.drain_timeout),
                "waiting for checks in flight"
            );
        }
        if tokio::time::timeout(settings.drain_timeout, in_flight.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                checks = in_flight.len(),
                "checks still running after the drain time; abandoning them (they will be redelivered)"
            );
        }
    }
    abandon.cancel();
    in_flight.wait().await;
    if failure.is_none() {
        // Closed one by one before the connection: a channel left to close itself on drop
        // races the connection's close (lapin then logs "invalid channel state: Closing").
        for channel in channels {
            if let Err(error) = channel
                .close(200, "check-workers shutting down".into())
                .await
            {
                tracing::debug!(%error, "cannot close a channel");
            }
        }
    }
    failure.map_or(Ok(()), Err)
}

/// A channel with the prefetch limit, the module's topology, and a consumer on its queue.
async fn start_consumer(
    connection: &Connection,
    worker: &ModuleWorker,
    prefetch: u16,
) -> Result<(Channel, Consumer), lapin::Error> {
    let name = worker.module.name();
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    broker::declare_check_topology(&channel, name).await?;
    let consumer = channel
        .basic_consume(
            broker::check_queue(name).into(),
            // a server-generated tag: unique across the workers sharing the queue
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((channel, consumer))
}

/// What one consumer loop needs; borrowed from [`session`], which outlives the loop.
struct ConsumeContext<'a> {
    worker: &'a ModuleWorker,
    channel: Channel,
    shutdown: &'a CancellationToken,
    lost: &'a CancellationToken,
    abandon: &'a CancellationToken,
    in_flight: &'a TaskTracker,
}

/// Takes deliveries off one consumer and hands each to its own task. Returns `Ok` when told to stop (shutdown, or another consumer of the session failed),
/// after cancelling the consumer; `Err` when this consumer failed.
async fn consume(context: ConsumeContext<'_>, mut consumer: Consumer) -> Result<(), SessionError> {
    let queue = consumer.queue().to_string();
    let outcome = loop {
        // No semaphore of our own: the broker hands out at most `prefetch` unacked deliveries,
        // and each task acks (or rejects) as its last step.
        let delivery = tokio::select! {
            biased;
            () = context.shutdown.cancelled() => break Ok(()),
            () = context.lost.cancelled() => break Ok(()),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(source)) => break Err(SessionError::Consume { queue, source }),
                None => break Err(SessionError::Cancelled { queue }),
            },
        };
        let check = handle(
            context.worker.clone(),
            context.channel.clone(),
            delivery,
            context.abandon.clone(),
        );
        context.in_flight.spawn(check.in_current_span());
    };
    if outcome.is_err() {
        context.lost.cancel();
    } else if context.channel.status().connected()
        && let Err(error) = context
            .channel
            .basic_cancel(consumer.tag(), BasicCancelOptions::default())
            .await
    {
        // Closing the connection next stops the deliveries all the same.
        tracing::debug!(%error, "cannot cancel the consumer");
    }
    outcome
}

/// One delivery, start to ack.
async fn handle(
    worker: ModuleWorker,
    channel: Channel,
    delivery: Delivery,
    abandon: CancellationToken,
) {
    let name = worker.module.name();
    metrics::counter!(METRIC_REQUESTS, "module" => name).increment(1);
    let request: CheckRequest = match wire::contract::decode(&delivery.data) {
        Ok(request) => request,
        Err(error) => {
            metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "undecodable")
                .increment(1);
            tracing::warn!(
                module = name,
                error = %error_chain(&error),
                correlation_id = ?delivery.properties.correlation_id(),
                bytes = delivery.data.len(),
                "dropping a check request that cannot be read"
            );
            if let Err(error) = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
            {
                tracing::debug!(%error, "cannot reject the request");
            }
            return;
        }
    };
    let span = tracing::info_span!(
        "check",
        module = name,
        message_id = %request.message_id,
        queue_id = %request.queue_id,
    );
    answer(worker, channel, delivery, request, abandon)
        .instrument(span)
        .await;
}

/// A decoded request: check, reply, ack.
async fn answer(
    worker: ModuleWorker,
    channel: Channel,
    delivery: Delivery,
    request: CheckRequest,
    abandon: CancellationToken,
) {
    let name = worker.module.name();
    if request.module != name {
        tracing::warn!(
            addressed_to = %request.module,
            "request names another module than the queue it came from; checking it as {name}"
        );
    }
    let Some(reply_to) = delivery
        .properties
        .reply_to()
        .clone()
        .filter(|queue| !queue.as_str().is_empty())
    else {
        metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "no_reply_to").increment(1);
        tracing::warn!("check request without reply_to: nobody waits for it; dropped");
        ack(&delivery).await;
        return;
    };

    let started = Instant::now();
    // A gateway whose `[stage-checks]` this host's check-workers would have refused (another
    // host's config): say so in the result rather than judge what this module cannot see.
    let mut result = if worker.module.stages().contains(&request.stage) {
        let outcome = tokio::select! {
            biased;
            () = abandon.cancelled() => {
                tracing::debug!("check abandoned; the broker will redeliver the request");
                return;
            }
            outcome = tokio::time::timeout(
                worker.timeout,
                AssertUnwindSafe(worker.module.check(&request)).catch_unwind(),
            ) => outcome,
        };
        match outcome {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(error))) => {
                let reason = error_chain(&error);
                metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "check_failed")
                    .increment(1);
                tracing::warn!(%reason, "check failed");
                CheckResult::error(request.message_id, name, reason)
            }
            Ok(Err(_panic)) => {
                metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "panic")
                    .increment(1);
                tracing::error!("module panicked during the check");
                CheckResult::error(request.message_id, name, "the module panicked")
            }
            Err(_elapsed) => {
                metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "timeout")
                    .increment(1);
                let reason = format!(
                    "no answer within the module timeout of {}",
                    humantime::format_duration(worker.timeout)
                );
                tracing::warn!(%reason, "check timed out");
                CheckResult::error(request.message_id, name, reason)
            }
        }
    } else {
        metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "stage").increment(1);
        tracing::warn!(stage = %request.stage, "asked at a stage this module does not check at");
        CheckResult::error(
            request.message_id,
            name,
            format!("{name} does not check at stage {}", request.stage),
        )
    };
    // The worker, not the module, vouches for these.
    result.version = WIRE_VERSION;
    result.message_id = request.message_id;
    name.clone_into(&mut result.module);
    result.duration = started.elapsed().as_secs_f64();
    metrics::histogram!(METRIC_DURATION, "module" => name).record(result.duration);

    let correlation_id = delivery
        .properties
        .correlation_id()
        .clone()
        .unwrap_or_else(|| ShortString::from(request.message_id.to_string()));
    let properties = BasicProperties::default()
        .with_correlation_id(correlation_id)
        .with_content_type("application/json".into());
    let published = channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &wire::contract::encode(&result),
            properties,
        )
        .await;
    // Without publisher confirms the returned future resolves at once; awaiting it keeps
    // lapin from holding it for a `wait_for_confirms` that never comes.
    let published = match published {
        Ok(confirm) => confirm.await.map(drop),
        Err(error) => Err(error),
    };
    if let Err(error) = published {
        metrics::counter!(METRIC_ERRORS, "module" => name, "reason" => "reply_failed").increment(1);
        tracing::warn!(%error, "cannot publish the result; the request will be redelivered");
        return;
    }
    metrics::counter!(METRIC_RESULTS, "module" => name, "action" => result.action.as_str())
        .increment(1);
    tracing::debug!(
        action = %result.action,
        score = result.score,
        duration = result.duration,
        "check answered"
    );
    ack(&delivery).await;
}

async fn ack(delivery: &Delivery) {
    if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
        // The channel is gone; the broker redelivers the request to another consumer.
        tracing::warn!(%error, "cannot ack the request");
    }
}
