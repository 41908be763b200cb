//! Broker plumbing every process shares: connecting (to the first node of a list that
//! answers, again and again with backoff: [`Supervisor`]) and declaring the topology.
//!
//! Topology (DESIGN.md "Processes and the broker"):
//! - `cluegetter.check`, a direct exchange; one durable queue `cluegetter.check.<module>` per
//!   module, bound with the module name. Workers on any host compete on it.
//! - each gateway's own exclusive, server-named reply queue (declared by the gateway).
//! - `cluegetter.audit`, a durable fanout exchange; the auditor's durable queue
//!   `cluegetter.audit.archive` is bound to it (the quotas settle queue will be too), and
//!   undecodable or refused events go to `cluegetter.audit.dead-letter` with the reason.
//! - `cluegetter.bounce`, a durable fanout exchange for bounce events (bounce-ingest →
//!   auditor); the auditor's durable queue `cluegetter.bounce.archive` is bound to it, and
//!   events it cannot store go to `cluegetter.bounce.dead-letter` with the reason.
//!
//! We do not use lapin's automatic recovery: an exclusive reply queue and the requests in
//! flight die with their connection anyway, so each process runs its own reconnect loop and
//! re-declares what it needs (CRATES.md, gotcha 4).

use std::time::Duration;

use lapin::options::{
    BasicPublishOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
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

/// One connection attempt, without a time limit (the supervisor's is [`CONNECT_TIMEOUT`]).
///
/// # Errors
/// The broker is unreachable or refuses the login or vhost.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
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

/// Declares the check exchange and the module's durable queue, bound by the module name.
///
/// # Errors
/// The channel failed or the broker refused a declaration (e.g. a queue of the same name with
/// other arguments).
pub async fn declare_check_topology(channel: &Channel, module: &str) -> Result<(), lapin::Error> {
    channel
        .exchange_declare(
            CHECK_EXCHANGE.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let queue = check_queue(module);
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.as_str().into(),
            CHECK_EXCHANGE.into(),
            module.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the audit exchange, the archive queue bound to it, and the dead-letter queue.
///
/// # Errors
/// As [`declare_check_topology`].
pub async fn declare_audit_topology(channel: &Channel) -> Result<(), lapin::Error> {
    declare_fanout_archive(
        channel,
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
pub async fn declare_bounce_topology(channel: &Channel) -> Result<(), lapin::Error> {
    declare_fanout_archive(
        channel,
        BOUNCE_EXCHANGE,
        BOUNCE_QUEUE,
        BOUNCE_DEAD_LETTER_QUEUE,
    )
    .await
}

/// A durable fanout exchange, a durable queue bound to it and a durable dead-letter queue.
async fn declare_fanout_archive(
    channel: &Channel,
    exchange: &str,
    queue: &str,
    dead_letter_queue: &str,
) -> Result<(), lapin::Error> {
    let durable_queue = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for name in [queue, dead_letter_queue] {
        channel
            .queue_declare(name.into(), durable_queue, FieldTable::default())
            .await?;
    }
    channel
        .queue_bind(
            queue.into(),
            exchange.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_only_the_password() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }
}
