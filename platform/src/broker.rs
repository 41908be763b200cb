//! Broker plumbing every process shares: connecting (to the first node of a list that
//! answers, again and again with backoff: [`Supervisor`]) and declaring the topology.
//!
//! Topology (DESIGN.md "Processes and the broker"; names in `wire::routing`):
//! - `cluegetter.check`, a direct exchange; one classic, transient queue
//!   `cluegetter.check.<module>` per module, bound with the module name, declared again by
//!   workers and gateways after every reconnect. Workers on any host compete on it; requests
//!   carry their own expiration, and a request lost with a node is timed out by the gateway.
//! - each gateway's own exclusive, server-named reply queue (declared by the gateway).
//! - `cluegetter.audit`, a durable fanout exchange; the auditor's `cluegetter.audit.archive` and
//!   the quotas module's `cluegetter.quotas.settle` are bound to it; events the auditor refuses go
//!   to `cluegetter.audit.dead-letter` with the reason, and so (by RabbitMQ, at least once) does
//!   an event delivered [`DELIVERY_LIMIT`] times.
//! - `cluegetter.bounce`, a durable fanout exchange for bounce events (bounce-ingest →
//!   auditor), with `cluegetter.bounce.archive` and `cluegetter.bounce.dead-letter` likewise.
//! - `cluegetter.delivery`, a durable fanout exchange for delivery events (bounce-ingest
//!   `maillog` → auditor), with `cluegetter.delivery.archive` and
//!   `cluegetter.delivery.dead-letter` likewise.
//!
//! What must survive the loss of a node (archive, settle and dead-letter queues) is on quorum
//! queues ([`QueueKind::Replicated`]); a queue an older version declared otherwise is used as
//! it is, with a warning that says how to migrate it ([`declare_queue`]). Publishes that must
//! not be lost are persistent, `mandatory` and confirmed ([`publish_confirmed`]).
//!
//! We do not use lapin's automatic recovery: an exclusive reply queue and the requests in
//! flight die with their connection anyway, so each process runs its own reconnect loop and
//! re-declares what it needs (CRATES.md, gotcha 4).

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::uri::AMQPUri;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use lapin::{Confirmation, PublisherConfirm};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
pub use crate::config::redact;
use crate::config::{BrokerConfig, Urls};

// The names are the contract's; re-exported so that the code declaring topology finds both here.
pub use wire::routing::*;

/// Longest [`close`] waits for the broker's Close-Ok.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes a connection that may already be broken, without waiting for ever: on a connection
/// that died with an I/O error lapin can wait for a Close-Ok that never comes, and a task that
/// awaits it would never reconnect (the gateway's audit publisher did, in the fault tests).
pub async fn close(connection: &Connection, code: u16, reason: &str) {
    match tokio::time::timeout(CLOSE_TIMEOUT, connection.close(code, reason.into())).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::debug!(%error, "closing the RabbitMQ connection"),
        Err(_) => tracing::debug!("RabbitMQ connection close not acknowledged; dropped"),
    }
}

/// The AMQP heartbeat (seconds) asked for when a URL does not say (`?heartbeat=N`; 0 turns it
/// off). A node cut off by a network partition sends nothing, not even a close, so its
/// connections are only known dead when two heartbeats are missed: without one (RabbitMQ
/// proposes 60 s) a partition would hold every process on the lost node for two minutes.
pub const DEFAULT_HEARTBEAT: u16 = 3;

/// `url` parsed, with [`DEFAULT_HEARTBEAT`] unless it asks for its own.
///
/// # Errors
/// The URL cannot be parsed (the reason, without the URL: it may hold a password).
pub fn amqp_uri(url: &str) -> Result<AMQPUri, String> {
    let mut uri: AMQPUri = url.parse()?;
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(DEFAULT_HEARTBEAT);
    }
    Ok(uri)
}

/// One connection attempt, without a time limit (the supervisor's is [`CONNECT_TIMEOUT`]).
///
/// # Errors
/// The URL cannot be parsed, or the broker is unreachable or refuses the login or vhost.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match amqp_uri(url) {
        Ok(uri) => Connection::connect_uri(uri, properties).await,
        // lapin words the parse error itself
        Err(_) => Connection::connect(url, properties).await,
    }
}

/// Longest one connection attempt may take (TCP, TLS, the AMQP handshake): a node that accepts
/// TCP and never answers (a paused minority, an address that drops packets) must not hold a
/// process back from the next node.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`connect_any`] got no connection.
#[derive(Debug, thiserror::Error)]
#[error("no RabbitMQ node answered (last: {node}: {reason})")]
pub struct ConnectError {
    /// The last node tried, without its password.
    pub node: String,
    pub reason: String,
}

/// A connection to the first of `urls` that answers within [`CONNECT_TIMEOUT`], each tried
/// once: for one-shot commands (`bounce-ingest submit`, `auditor dead-letters`), which report
/// a failure rather than wait; services use a [`Supervisor`].
///
/// # Errors
/// No node answered; the error names the last one and why.
pub async fn connect_any(urls: &Urls, name: &str) -> Result<Connection, ConnectError> {
    let mut last = ConnectError {
        node: String::new(),
        reason: "no broker URL configured".to_owned(),
    };
    for url in urls.as_slice() {
        let reason = match tokio::time::timeout(CONNECT_TIMEOUT, connect(url, name)).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
        };
        tracing::debug!(broker = %redact(url), %reason, "cannot connect to RabbitMQ");
        last = ConnectError {
            node: redact(url),
            reason,
        };
    }
    Err(last)
}

/// The one way a process keeps a broker connection: connect to the first node of
/// `[broker] url` that answers, rotating through the list; run a session on the connection;
/// when it is lost, close it, pause ([`Backoff`]) and connect again starting at the next node;
/// for ever, until the shutdown token fires ([`Supervisor::connect`], [`Supervisor::end`]).
/// A loop rather than a closure-taking method: the sessions borrow their caller's state, and
/// spawned tasks must stay `Send`.
///
/// We do not use lapin's recovery: it re-declares server-named `amq.gen-…` queues by name,
/// which RabbitMQ refuses, and the requests in flight die with the connection anyway; each
/// session declares what it needs (CRATES.md, gotcha 4).
#[derive(Debug)]
pub struct Supervisor {
    urls: Vec<String>,
    /// Shown in RabbitMQ's connection list and in our logs.
    name: String,
    max_backoff: Duration,
    /// Where the next attempt starts.
    next: usize,
    /// The node of the connection handed out last, while it is in use.
    current: Option<usize>,
    /// Pauses between sessions; reset by a session that lasted.
    session_backoff: Backoff,
    /// Connections handed out so far.
    sessions: u64,
    /// When the connection handed out last was made.
    session_started: Option<Instant>,
}

impl Supervisor {
    pub fn new(urls: &Urls, name: impl Into<String>, max_backoff: Duration) -> Self {
        Self {
            urls: urls.as_slice().to_vec(),
            name: name.into(),
            max_backoff,
            next: 0,
            current: None,
            session_backoff: Backoff::new(max_backoff).with_jitter(),
            sessions: 0,
            session_started: None,
        }
    }

    /// For `[broker]`.
    pub fn from_config(config: &BrokerConfig, name: impl Into<String>) -> Self {
        Self::new(&config.url, name, config.reconnect_max_backoff)
    }

    /// The node of the connection handed out last, without its password.
    pub fn current_node(&self) -> Option<String> {
        self.current
            .and_then(|i| self.urls.get(i))
            .map(|u| redact(u))
    }

    /// How many connections were handed out so far (more than one: it reconnected).
    pub fn sessions(&self) -> u64 {
        self.sessions
    }

    /// A connection to the first node that answers, from where the last attempt left off;
    /// after a round in which none did, a pause (from 100 ms doubling to `max_backoff`) and
    /// another round. `None` once `shutdown` fires.
    pub async fn connect(&mut self, shutdown: &CancellationToken) -> Option<Connection> {
        let mut backoff = Backoff::new(self.max_backoff).with_jitter();
        let n_urls = self.urls.len();
        if n_urls == 0 {
            tracing::error!(connection = %self.name, "no broker URL configured");
            return None;
        }
        loop {
            for _ in 0..n_urls {
                let index = self.next % n_urls;
                let url = &self.urls[index];
                let attempt = tokio::time::timeout(CONNECT_TIMEOUT, connect(url, &self.name));
                let attempt = tokio::select! {
                    () = shutdown.cancelled() => return None,
                    attempt = attempt => attempt,
                };
                let error = match attempt {
                    Ok(Ok(connection)) => {
                        self.current = Some(index);
                        self.sessions += 1;
                        self.session_started = Some(Instant::now());
                        tracing::info!(
                            connection = %self.name,
                            broker = %redact(url),
                            "connected to RabbitMQ"
                        );
                        return Some(connection);
                    }
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => format!("no answer within {CONNECT_TIMEOUT:?}"),
                };
                tracing::warn!(
                    connection = %self.name,
                    broker = %redact(url),
                    %error,
                    "cannot connect to RabbitMQ"
                );
                self.next = (index + 1) % n_urls;
            }
            let delay = backoff.next_delay();
            tracing::warn!(
                connection = %self.name,
                retry_in = ?delay,
                "no RabbitMQ node answered; retrying"
            );
            if !backoff.sleep_for(delay, shutdown).await {
                return None;
            }
        }
    }

    /// The connection handed out last broke: the next attempt starts at the next node.
    pub fn lost(&mut self) {
        if let Some(index) = self.current.take() {
            self.next = (index + 1) % self.urls.len().max(1);
        }
    }

    /// Ends the session on `connection` (from [`Supervisor::connect`]): `Ok` means it saw
    /// `shutdown`, so the connection is closed (200) and the answer is `false`: stop. `Err`
    /// means it broke (or could not be set up): the connection is closed (320, bounded by
    /// [`CLOSE_TIMEOUT`]), the loss logged with the node, and after a pause the answer is
    /// `true`: connect again, starting at the next node. The pause grows while sessions keep
    /// failing soon after they start, and starts over after one that lasted `max_backoff`;
    /// `false` if `shutdown` fires during it.
    ///
    /// Callers loop:
    /// `while let Some(c) = supervisor.connect(&stop).await { let r = session(&c).await;
    /// if !supervisor.end(&c, r, &stop).await { break } }`.
    pub async fn end<E>(
        &mut self,
        connection: &Connection,
        outcome: Result<(), E>,
        shutdown: &CancellationToken,
    ) -> bool
    where
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Err(error) = outcome else {
            close(connection, 200, "shutting down").await;
            self.current = None;
            return false;
        };
        let error = crate::error_chain(&*error.into());
        close(connection, 320, "reconnecting").await;
        let node = self.current_node().unwrap_or_default();
        self.lost();
        if self
            .session_started
            .is_some_and(|started| started.elapsed() >= self.max_backoff)
        {
            self.session_backoff.reset();
        }
        let delay = self.session_backoff.next_delay();
        tracing::warn!(
            connection = %self.name,
            broker = %node,
            %error,
            retry_in = ?delay,
            "lost the RabbitMQ session; reconnecting"
        );
        self.session_backoff.sleep_for(delay, shutdown).await
    }
}

/// Why a publish that must not be lost did not end in a routed, confirmed message.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("RabbitMQ: {0}")]
    Broker(#[from] lapin::Error),
    #[error("RabbitMQ returned it as unroutable (no queue is bound for it)")]
    Unroutable,
    #[error("RabbitMQ refused (nacked) it")]
    Nacked,
    #[error("publisher confirms are off on this channel")]
    NoConfirm,
}

/// The broker's answer to a publish as a result: only an ack of a routed message is `Ok`
/// (a `mandatory` message nothing routes comes back in the ack).
///
/// # Errors
/// Returned, nacked, or confirms not enabled.
pub fn confirmed(confirmation: &Confirmation) -> Result<(), PublishError> {
    match confirmation {
        Confirmation::Ack(None) => Ok(()),
        Confirmation::Ack(Some(_)) => Err(PublishError::Unroutable),
        Confirmation::Nack(_) => Err(PublishError::Nacked),
        Confirmation::NotRequested => Err(PublishError::NoConfirm),
    }
}

/// The one way to publish what must not be lost: `mandatory` (else an unroutable message is
/// acked and gone) and persistent, on a channel with confirms on. Returns once the message is
/// handed over; await the returned confirm and pass it to [`confirmed`] (publishing a window
/// before awaiting is what makes confirms fast). [`publish_confirmed`] does both for one.
///
/// # Errors
/// The channel failed.
pub async fn publish_mandatory(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<PublisherConfirm, lapin::Error> {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            properties.with_delivery_mode(2),
        )
        .await
}

/// [`publish_mandatory`] and wait for the broker's confirm.
///
/// # Errors
/// Anything short of an ack for a routed message.
pub async fn publish_confirmed(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
) -> Result<(), PublishError> {
    let confirm = publish_mandatory(channel, exchange, routing_key, body, properties).await?;
    confirmed(&confirm.await?)
}

/// Deliveries of one event before a quorum queue gives up on it and dead-letters it (an
/// event that crashes its consumer every time must not block the queue for ever).
pub const DELIVERY_LIMIT: i64 = 20;

/// What a queue must do, which decides how it is declared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QueueKind {
    /// Must survive the loss of a node: a quorum queue (replicated by Raft on a cluster).
    /// With `dead_letter`, a delivery that reaches [`DELIVERY_LIMIT`] is moved there, at least
    /// once (never dropped: `reject-publish` is what at-least-once dead-lettering needs).
    Replicated { dead_letter: Option<&'static str> },
    /// Short-lived requests the sender times out anyway: a classic, transient queue, declared
    /// again after every reconnect, so after a node loss it exists again on a live node.
    Transient,
}

impl QueueKind {
    fn options(self) -> QueueDeclareOptions {
        QueueDeclareOptions {
            durable: matches!(self, QueueKind::Replicated { .. }),
            ..QueueDeclareOptions::default()
        }
    }

    /// The `x-` arguments of the declaration.
    pub fn arguments(self) -> FieldTable {
        let mut arguments = FieldTable::default();
        if let QueueKind::Replicated { dead_letter } = self {
            arguments.insert(
                "x-queue-type".into(),
                AMQPValue::LongString("quorum".into()),
            );
            arguments.insert(
                "x-delivery-limit".into(),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            if let Some(dead_letter) = dead_letter {
                arguments.insert(
                    "x-dead-letter-exchange".into(),
                    AMQPValue::LongString("".into()),
                );
                arguments.insert(
                    "x-dead-letter-routing-key".into(),
                    AMQPValue::LongString(dead_letter.into()),
                );
                arguments.insert(
                    "x-dead-letter-strategy".into(),
                    AMQPValue::LongString("at-least-once".into()),
                );
                arguments.insert(
                    "x-overflow".into(),
                    AMQPValue::LongString("reject-publish".into()),
                );
            }
        }
        arguments
    }

    /// What to tell an operator whose queue of this name was declared otherwise (by an older
    /// version): the queue is used as it is.
    fn migration_advice(self, queue: &str) -> String {
        match self {
            QueueKind::Replicated { .. } => format!(
                "{queue} is a classic queue (declared by an older cluegetter): it works, but is \
                 lost with its node. To make it a quorum queue, stop what publishes to it, let its \
                 consumer empty it (rabbitmqctl list_queues name messages), then \
                 `rabbitmqctl delete_queue {queue}`; the next process to connect declares it anew"
            ),
            QueueKind::Transient => format!(
                "{queue} is a durable queue (declared by an older cluegetter): it works, but is not \
                 re-created on a live node after its node is lost. `rabbitmqctl delete_queue \
                 {queue}` (requests in it are retried by the MTA) lets the next worker or gateway \
                 declare it transient"
            ),
        }
    }
}

/// Declares `queue` as `kind` asks, on a channel of its own (a refused declaration closes
/// the channel). A queue of that name declared otherwise before (a classic archive queue of
/// an older version) is used as it is, with a warning that says how to migrate it.
///
/// # Errors
/// The connection failed, or the broker refused the queue for another reason.
pub async fn declare_queue(
    connection: &Connection,
    queue: &str,
    kind: QueueKind,
) -> Result<(), lapin::Error> {
    let channel = connection.create_channel().await?;
    let declared = channel
        .queue_declare(queue.into(), kind.options(), kind.arguments())
        .await;
    match declared {
        Ok(_) => {
            close_channel(&channel).await;
            Ok(())
        }
        Err(error) if is_precondition_failed(&error) => {
            // the broker closed that channel; make sure the queue exists as it is
            let channel = connection.create_channel().await?;
            channel
                .queue_declare(
                    queue.into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            close_channel(&channel).await;
            tracing::warn!(queue, %error, "{}", kind.migration_advice(queue));
            Ok(())
        }
        Err(error) => Err(error),
    }
}

async fn close_channel(channel: &Channel) {
    if let Err(error) = channel.close(200, "declared".into()).await {
        tracing::debug!(%error, "cannot close a declaring channel");
    }
}

/// The broker refused a declaration because what exists differs (406).
fn is_precondition_failed(error: &lapin::Error) -> bool {
    matches!(error.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// Declares the check exchange and the module's queue (transient), bound by the module name.
///
/// # Errors
/// The connection failed or the broker refused a declaration.
pub async fn declare_check_topology(
    connection: &Connection,
    module: &str,
) -> Result<(), lapin::Error> {
    let queue = check_queue(module);
    declare_queue(connection, &queue, QueueKind::Transient).await?;
    let channel = connection.create_channel().await?;
    declare_exchange(&channel, CHECK_EXCHANGE, ExchangeKind::Direct).await?;
    bind(&channel, &queue, CHECK_EXCHANGE, module).await?;
    close_channel(&channel).await;
    Ok(())
}

/// Declares the audit exchange, the archive queue bound to it, and the dead-letter queue.
///
/// # Errors
/// As [`declare_check_topology`].
pub async fn declare_audit_topology(connection: &Connection) -> Result<(), lapin::Error> {
    declare_fanout_archive(
        connection,
        AUDIT_EXCHANGE,
        AUDIT_QUEUE,
        AUDIT_DEAD_LETTER_QUEUE,
    )
    .await
}

/// Declares the bounce exchange, the auditor's bounce queue bound to it, and its dead-letter
/// queue. bounce-ingest declares it too, so that reports published before any auditor ran are
/// queued rather than dropped as unroutable.
///
/// # Errors
/// As [`declare_check_topology`].
pub async fn declare_bounce_topology(connection: &Connection) -> Result<(), lapin::Error> {
    declare_fanout_archive(
        connection,
        BOUNCE_EXCHANGE,
        BOUNCE_QUEUE,
        BOUNCE_DEAD_LETTER_QUEUE,
    )
    .await
}

/// Declares the delivery exchange, the auditor's delivery queue bound to it, and its
/// dead-letter queue. bounce-ingest declares it too, so that delivery events published before
/// any auditor ran are queued rather than dropped as unroutable.
///
/// # Errors
/// As [`declare_check_topology`].
pub async fn declare_delivery_topology(connection: &Connection) -> Result<(), lapin::Error> {
    declare_fanout_archive(
        connection,
        DELIVERY_EXCHANGE,
        DELIVERY_QUEUE,
        DELIVERY_DEAD_LETTER_QUEUE,
    )
    .await
}

/// Declares the audit exchange and the quotas settle queue bound to it (replicated; an event
/// delivered [`DELIVERY_LIMIT`] times is dropped: the auditor keeps its own copy).
///
/// # Errors
/// As [`declare_check_topology`].
pub async fn declare_settle_topology(connection: &Connection) -> Result<(), lapin::Error> {
    declare_queue(
        connection,
        SETTLE_QUEUE,
        QueueKind::Replicated { dead_letter: None },
    )
    .await?;
    let channel = connection.create_channel().await?;
    declare_exchange(&channel, AUDIT_EXCHANGE, ExchangeKind::Fanout).await?;
    bind(&channel, SETTLE_QUEUE, AUDIT_EXCHANGE, "").await?;
    close_channel(&channel).await;
    Ok(())
}

/// A durable fanout exchange, a replicated queue bound to it and a replicated dead-letter queue
/// that takes what the first could not deliver.
async fn declare_fanout_archive(
    connection: &Connection,
    exchange: &str,
    queue: &str,
    dead_letter_queue: &'static str,
) -> Result<(), lapin::Error> {
    declare_queue(
        connection,
        dead_letter_queue,
        QueueKind::Replicated { dead_letter: None },
    )
    .await?;
    declare_queue(
        connection,
        queue,
        QueueKind::Replicated {
            dead_letter: Some(dead_letter_queue),
        },
    )
    .await?;
    let channel = connection.create_channel().await?;
    declare_exchange(&channel, exchange, ExchangeKind::Fanout).await?;
    bind(&channel, queue, exchange, "").await?;
    close_channel(&channel).await;
    Ok(())
}

async fn declare_exchange(
    channel: &Channel,
    exchange: &str,
    kind: ExchangeKind,
) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            exchange.into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}

async fn bind(
    channel: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
) -> Result<(), lapin::Error> {
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            routing_key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gets_the_default_heartbeat_unless_it_asks_for_its_own() {
        let plain = amqp_uri("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(plain.query.heartbeat, Some(DEFAULT_HEARTBEAT));
        assert_eq!(plain.vhost, "/");
        let own = amqp_uri("amqp://guest:guest@127.0.0.1:5672/v?heartbeat=20").unwrap();
        assert_eq!(own.query.heartbeat, Some(20));
        let off = amqp_uri("amqp://guest:guest@127.0.0.1:5672/v?heartbeat=0").unwrap();
        assert_eq!(off.query.heartbeat, Some(0));
        assert!(amqp_uri("http://nope").is_err());
    }

    #[test]
    fn replicated_queues_are_quorum_with_a_delivery_limit_and_dead_letter_at_least_once() {
        let arguments = QueueKind::Replicated {
            dead_letter: Some(AUDIT_DEAD_LETTER_QUEUE),
        }
        .arguments();
        let get = |key: &str| arguments.inner().get(key).cloned();
        assert_eq!(
            get("x-queue-type"),
            Some(AMQPValue::LongString("quorum".into()))
        );
        assert_eq!(
            get("x-delivery-limit"),
            Some(AMQPValue::LongLongInt(DELIVERY_LIMIT))
        );
        assert_eq!(
            get("x-dead-letter-routing-key"),
            Some(AMQPValue::LongString(AUDIT_DEAD_LETTER_QUEUE.into()))
        );
        assert_eq!(
            get("x-dead-letter-strategy"),
            Some(AMQPValue::LongString("at-least-once".into()))
        );
        assert_eq!(
            get("x-overflow"),
            Some(AMQPValue::LongString("reject-publish".into()))
        );
        assert!(
            QueueKind::Replicated { dead_letter: None }
                .options()
                .durable
        );
        let plain = QueueKind::Replicated { dead_letter: None }.arguments();
        assert!(plain.inner().get("x-dead-letter-strategy").is_none());
    }

    #[test]
    fn check_queues_are_classic_and_transient() {
        assert!(QueueKind::Transient.arguments().inner().is_empty());
        assert!(!QueueKind::Transient.options().durable);
    }

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
