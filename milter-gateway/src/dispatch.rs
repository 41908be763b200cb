//! Checks as RPCs over RabbitMQ: publish one request per module, route the replies back to the
//! message that waits for them.
//!
//! A supervisor task owns the broker link: it connects ([`broker::Supervisor`]: the first node
//! that answers, with backoff, for ever), declares the module queues and a fresh exclusive
//! reply queue for this gateway, consumes the replies and hands each to the waiting message by
//! its correlation id (the message UUID).
//!
//! A lost link does not cost a verdict when another node answers in time:
//! - a message that finds no link waits for the next one, until its earliest module timeout
//!   passes ([`DispatchError::BrokerDown`] only then);
//! - the requests of the messages waiting when a link breaks are kept, and published again on
//!   the next link (with their reply queue, which died with the old link, replaced), each while
//!   its module's timeout has not passed. A request may so reach a worker twice; every module
//!   is idempotent on the message id (a redelivered request is nothing new to them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use platform::broker;
use platform::config::Config;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use wire::{CheckRequest, CheckResult, MessageId};

/// Why a message's requests could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error("RabbitMQ is not reachable")]
    BrokerDown,
    #[error("cannot publish the check request: {0}")]
    Publish(#[from] lapin::Error),
}

/// The live link to the broker: a channel for publishing and the reply queue's name.
struct Link {
    channel: Channel,
    reply_queue: String,
}

/// One request, kept until its module answered or its timeout passed.
#[derive(Clone)]
struct Request {
    module: String,
    body: Arc<[u8]>,
    expires: Instant,
}

/// A message waiting for results: where they go, and what is still unanswered.
struct Waiter {
    results: mpsc::UnboundedSender<CheckResult>,
    unanswered: Vec<Request>,
}

struct Shared {
    /// The current link; `None` while (re)connecting. Messages wait on it.
    link: watch::Sender<Option<Arc<Link>>>,
    waiters: Mutex<HashMap<MessageId, Waiter>>,
}

/// Cheap to clone; one per gateway.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

/// The results of one message, as they come. Dropping it stops the routing.
pub struct Pending {
    pub results: mpsc::UnboundedReceiver<CheckResult>,
    message_id: MessageId,
    shared: Arc<Shared>,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Ok(mut waiters) = self.shared.waiters.lock() {
            waiters.remove(&self.message_id);
        }
    }
}

impl Dispatcher {
    /// Starts the supervisor; returns at once (messages wait for the first link, up to their
    /// module timeouts).
    pub fn start(
        config: &Config,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let modules: Vec<String> = config
            .enabled_modules()
            .into_iter()
            .map(str::to_owned)
            .collect();
        let dispatcher = Self::unconnected();
        tracker.spawn(supervise(
            broker::Supervisor::from_config(&config.broker, "milter-gateway"),
            modules,
            dispatcher.shared.clone(),
            shutdown,
        ));
        dispatcher
    }

    fn unconnected() -> Self {
        Self {
            shared: Arc::new(Shared {
                link: watch::Sender::new(None),
                waiters: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Publishes the requests (all for one message; each with the instant its module's
    /// timeout passes) and returns where their results arrive. Without a link it waits for
    /// one until the earliest of those instants.
    ///
    /// # Errors
    /// No link came in time, or publishing failed on every link that came in time.
    pub async fn ask(
        &self,
        message_id: MessageId,
        requests: &[(CheckRequest, Instant)],
    ) -> Result<Pending, DispatchError> {
        let Some(wait_until) = requests.iter().map(|(_, expires)| *expires).min() else {
            return Ok(self.register(message_id, Vec::new()));
        };
        let requests: Vec<Request> = requests
            .iter()
            .map(|(request, expires)| Request {
                module: request.module.as_str().to_owned(),
                body: wire::contract::encode(request).into(),
                expires: *expires,
            })
            .collect();
        let mut link_changes = self.shared.link.subscribe();
        // Registered before publishing: a link that breaks from now on republishes them.
        let pending = self.register(message_id, requests.clone());
        let mut last_error = DispatchError::BrokerDown;
        loop {
            let link =
                match tokio::time::timeout_at(wait_until, link_changes.wait_for(Option::is_some))
                    .await
                {
                    Ok(Ok(link)) => link.clone(),
                    // the supervisor is gone (shutdown) or no link in time
                    Ok(Err(_)) | Err(_) => return Err(last_error),
                };
            let Some(link) = link else {
                return Err(last_error);
            };
            match publish_all(&link, message_id, &requests).await {
                Ok(()) => return Ok(pending),
                Err(error) => {
                    // The link is broken; let the supervisor notice and make a new one, and
                    // try again on that one.
                    self.shared.link.send_if_modified(|current| {
                        let same = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link));
                        if same {
                            *current = None;
                        }
                        same
                    });
                    last_error = DispatchError::Publish(error);
                }
            }
        }
    }

    fn register(&self, message_id: MessageId, unanswered: Vec<Request>) -> Pending {
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut waiters) = self.shared.waiters.lock() {
            waiters.insert(
                message_id,
                Waiter {
                    results: tx,
                    unanswered,
                },
            );
        }
        Pending {
            results: rx,
            message_id,
            shared: self.shared.clone(),
        }
    }
}

/// Publishes `requests` of one message on `link`, each with what is left of its timeout as
/// its expiration (an expired one is left out: its module already counts as timed out).
async fn publish_all(
    link: &Link,
    message_id: MessageId,
    requests: &[Request],
) -> Result<(), lapin::Error> {
    let now = Instant::now();
    for request in requests.iter().filter(|r| r.expires > now) {
        let left = request.expires - now;
        let properties = BasicProperties::default()
            .with_correlation_id(message_id.to_string().into())
            .with_reply_to(link.reply_queue.as_str().into())
            .with_expiration(left.as_millis().max(1).to_string().into())
            .with_content_type("application/json".into());
        link.channel
            .basic_publish(
                broker::CHECK_EXCHANGE.into(),
                request.module.as_str().into(),
                BasicPublishOptions::default(),
                &request.body,
                properties,
            )
            .await?;
    }
    Ok(())
}

async fn supervise(
    mut supervisor: broker::Supervisor,
    modules: Vec<String>,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    while let Some(connection) = supervisor.connect(&shutdown).await {
        let outcome = run_link(&connection, &modules, &shared, &shutdown).await;
        if outcome.is_err() {
            metrics::counter!("cluegetter_gateway_broker_disconnects_total").increment(1);
        }
        shared.link.send_replace(None);
        if !supervisor.end(&connection, outcome, &shutdown).await {
            break;
        }
    }
    // Shutting down: no result will come any more; every waiting message learns it at once.
    if let Ok(mut waiters) = shared.waiters.lock() {
        waiters.clear();
    }
}

/// Sets up the link, publishes again what the messages still wait for, and routes replies
/// until the link breaks (Err) or shutdown (Ok).
async fn run_link(
    connection: &lapin::Connection,
    modules: &[String],
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    // Declared here too so that requests are queued even before any worker has started.
    for module in modules {
        broker::declare_check_topology(connection, module).await?;
    }
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let reply_queue = reply_queue.name().as_str().to_owned();
    let mut replies = channel
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let link = Arc::new(Link {
        channel: channel.clone(),
        reply_queue: reply_queue.clone(),
    });
    shared.link.send_replace(Some(link.clone()));
    tracing::info!(reply_queue, modules = ?modules, "connected to RabbitMQ");
    republish(shared, &link).await?;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            delivery = replies.next() => {
                let delivery = match delivery {
                    Some(Ok(d)) => d,
                    Some(Err(e)) => return Err(e.into()),
                    None => anyhow::bail!("the reply consumer was cancelled"),
                };
                route_reply(shared, &delivery.data);
            }
        }
    }
}

/// Publishes on a new link the requests still unanswered of the messages that wait (asked
/// on a link that broke: their replies would have gone to its reply queue).
async fn republish(shared: &Shared, link: &Link) -> Result<(), lapin::Error> {
    let now = Instant::now();
    let again: Vec<(MessageId, Vec<Request>)> = match shared.waiters.lock() {
        Ok(waiters) => waiters
            .iter()
            .map(|(id, waiter)| {
                let live: Vec<Request> = waiter
                    .unanswered
                    .iter()
                    .filter(|r| r.expires > now)
                    .cloned()
                    .collect();
                (*id, live)
            })
            .filter(|(_, live)| !live.is_empty())
            .collect(),
        Err(_) => Vec::new(),
    };
    if again.is_empty() {
        return Ok(());
    }
    let count: usize = again.iter().map(|(_, r)| r.len()).sum();
    for (message_id, requests) in &again {
        publish_all(link, *message_id, requests).await?;
    }
    tracing::info!(
        messages = again.len(),
        requests = count,
        "check requests asked on the lost link published again"
    );
    metrics::counter!("cluegetter_gateway_checks_republished_total").increment(count as u64);
    Ok(())
}

fn route_reply(shared: &Shared, data: &[u8]) {
    let result: CheckResult = match wire::contract::decode(data) {
        Ok(result) => result,
        Err(error) => {
            tracing::warn!(%error, "undecodable check result dropped");
            metrics::counter!("cluegetter_gateway_bad_results_total").increment(1);
            return;
        }
    };
    let sender = shared.waiters.lock().ok().and_then(|mut waiters| {
        let waiter = waiters.get_mut(&result.message_id)?;
        waiter.unanswered.retain(|r| r.module != result.module);
        Some(waiter.results.clone())
    });
    match sender {
        Some(sender) => {
            let _ = sender.send(result);
        }
        None => {
            // The verdict was made without it (deadline or breaker).
            tracing::debug!(message_id = %result.message_id, module = %result.module, "result arrived after the verdict");
            metrics::counter!("cluegetter_gateway_results_after_verdict_total", "module" => result.module).increment(1);
        }
    }
}
