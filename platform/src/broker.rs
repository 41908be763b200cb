//! Broker plumbing every process shares: connecting with backoff and declaring the topology.
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

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use tokio_util::sync::CancellationToken;

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

/// One connection attempt.
///
/// # Errors
/// The broker is unreachable or refuses the login or vhost.
pub async fn connect(url: &str, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    Connection::connect(url, properties).await
}

/// Connects, retrying with exponential backoff (100 ms doubling up to `max_backoff`) until it
/// works or `cancel` fires (then `None`). Each failure is logged once per attempt.
pub async fn connect_with_backoff(
    url: &str,
    name: &str,
    max_backoff: Duration,
    cancel: &CancellationToken,
) -> Option<Connection> {
    let mut delay = Duration::from_millis(100);
    loop {
        match connect(url, name).await {
            Ok(connection) => return Some(connection),
            Err(error) => {
                tracing::warn!(
                    broker = %redact(url),
                    %error,
                    retry_in = ?delay,
                    "cannot connect to RabbitMQ; retrying"
                );
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return None,
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(max_backoff.max(Duration::from_millis(100)));
    }
}

/// The URL without its password, for logs.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
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
