//! Checks as RPCs over RabbitMQ: publish one request per module, route the replies back to the
//! message that waits for them.
//!
//! A supervisor task owns the broker link: it connects ([`broker::Supervisor`]: the first node
//! that answers, with backoff, for ever), declares the module queues and a fresh exclusive
//! reply queue for this gateway, consumes the replies and hands each to the waiting message by its correlation id (the message UUID). When the link breaks, every
//! waiting message is told at once (its channel closes) and new messages get
//! [`DispatchError::BrokerDown`] until the link is back, so nobody waits on a dead broker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use platform::broker;
use platform::config::Config;
use tokio::sync::mpsc;
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

/// Results on their way to one waiting message.
type Waiters = HashMap<MessageId, mpsc::UnboundedSender<CheckResult>>;

struct Shared {
    link: Mutex<Option<Arc<Link>>>,
    waiters: Mutex<Waiters>,
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
    /// Starts the supervisor; returns at once (the gateway answers with the fail action
    /// until the broker is reachable).
    pub fn start(
        config: &Config,
        tracker: &tokio_util::task::TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        let shared = Arc::new(Shared {
            link: Mutex::new(None),
            waiters: Mutex::new(HashMap::new()),
        });
        let modules: Vec<String> = config
            .enabled_modules()
            .into_iter()
            .map(str::to_owned)
            .collect();
        tracker.spawn(supervise(
            broker::Supervisor::from_config(&config.broker, "milter-gateway"),
            modules,
            shared.clone(),
            shutdown,
        ));
        Self { shared }
    }

    /// Whether the broker link is up right now.
    pub fn is_up(&self) -> bool {
        self.shared
            .link
            .lock()
            .map(|l| l.is_some())
            .unwrap_or(false)
    }

    /// Publishes the requests (all for one message) and returns where their results arrive.
    ///
    /// # Errors
    /// The broker is down, or a publish failed (the link is then dropped and re-made).
    pub async fn ask(
        &self,
        message_id: MessageId,
        requests: &[(CheckRequest, Duration)],
    ) -> Result<Pending, DispatchError> {
        let link = self
            .shared
            .link
            .lock()
            .ok()
            .and_then(|l| l.clone())
            .ok_or(DispatchError::BrokerDown)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if let Ok(mut waiters) = self.shared.waiters.lock() {
            waiters.insert(message_id, tx);
        }
        let pending = Pending {
            results: rx,
            message_id,
            shared: self.shared.clone(),
        };
        for (request, timeout) in requests {
            let properties = BasicProperties::default()
                .with_correlation_id(message_id.to_string().into())
                .with_reply_to(link.reply_queue.as_str().into())
                .with_expiration(timeout.as_millis().max(1).to_string().into())
                .with_content_type("application/json".into());
            let published = link
                .channel
                .basic_publish(
                    broker::CHECK_EXCHANGE.into(),
                    request.module.as_str().into(),
                    BasicPublishOptions::default(),
                    &wire::contract::encode(request),
                    properties,
                )
                .await;
            if let Err(error) = published {
                // The link is broken; let the supervisor notice and make a new one.
                if let Ok(mut l) = self.shared.link.lock() {
                    *l = None;
                }
                return Err(DispatchError::Publish(error));
            }
        }
        Ok(pending)
    }
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
        if let Ok(mut l) = shared.link.lock() {
            *l = None;
        }
        // Every waiting message learns at once that its results will not come.
        if let Ok(mut waiters) = shared.waiters.lock() {
            waiters.clear();
        }
        if !supervisor.end(&connection, outcome, &shutdown).await {
            return;
        }
    }
}

/// Sets up the link and routes replies until the link breaks (Err) or shutdown (Ok).
async fn run_link(
    connection: &lapin::Connection,
    modules: &[String],
    shared: &Arc<Shared>,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    // Declared here too so that requests are queued even before any worker has started.
    for module in modules {
        broker::declare_check_topology(&channel, module).await?;
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
    if let Ok(mut l) = shared.link.lock() {
        *l = Some(Arc::new(Link {
            channel: channel.clone(),
            reply_queue: reply_queue.clone(),
        }));
    }
    tracing::info!(reply_queue, modules = ?modules, "connected to RabbitMQ");
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

fn route_reply(shared: &Shared, data: &[u8]) {
    let result: CheckResult = match wire::contract::decode(data) {
        Ok(result) => result,
        Err(error) => {
            tracing::warn!(%error, "undecodable check result dropped");
            metrics::counter!("cluegetter_gateway_bad_results_total").increment(1);
            return;
        }
    };
    let sender = shared
        .waiters
        .lock()
        .ok()
        .and_then(|w| w.get(&result.message_id).cloned());
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
