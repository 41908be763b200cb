//! The TCP listener (ClueGetter's `nc host 10034` pipe, and `bounce-ingest submit --via`): one
//! report per connection, read to end of input with a size bound and a time limit.
//!
//! The answer is one line, then the connection is closed: `250 2.0.0 Ok: queued as <bounce id>`
//! once the report is in the spool (written and fsynced), or `451 4.3.0 <why>` followed by a
//! reset when it could not be kept, so the sender keeps it. A client outside `allow` is closed
//! unread; so is a connection that sent nothing.
//!
//! A sender that is still connected after `read-timeout` without closing its side (an `nc`
//! that does not half-close, `-N`/`-q0` missing) gets its report taken as it is, marked as
//! possibly incomplete, rather than lost.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use platform::config::Config;
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;
use wire::BounceSource;

use crate::metrics;
use crate::publish::SpoolPublisher;
use crate::report::{self, Received, read_bounded};
use crate::spool::Spool;

/// Connections read at once; each may hold up to `max-size` bytes.
pub const MAX_CONNECTIONS: usize = 16;
/// Longest we try to write our one-line answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection needs.
pub struct Context {
    pub config: Config,
    pub spool: Spool,
    /// Queues spooled events for publishing; the publisher ends once every clone is dropped.
    pub publisher: SpoolPublisher,
}

impl Context {
    fn allows(&self, peer: IpAddr) -> bool {
        let peer = peer.to_canonical();
        self.config
            .bounce_ingest
            .allow
            .iter()
            .any(|net: &IpNet| net.contains(&peer))
    }
}

/// Accepts connections until `shutdown` fires, then waits for the reports being read (each
/// bounded by `read-timeout`).
pub async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let accepted = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // out of file descriptors and the like: pause rather than spin
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        if !ctx.allows(peer.ip()) {
            metrics::refused("not-allowed");
            tracing::warn!(%peer, "connection from outside bounce-ingest.allow closed unread");
            continue;
        }
        let permit = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit,
        };
        let Ok(permit) = permit else { break };
        let ctx = ctx.clone();
        let span = tracing::info_span!("report", %peer);
        connections.spawn(
            async move {
                handle(stream, peer, &ctx).await;
                drop(permit);
            }
            .instrument(span),
        );
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

async fn handle(mut stream: TcpStream, peer: SocketAddr, ctx: &Context) {
    let settings = &ctx.config.bounce_ingest;
    let mut received = Received::default();
    let read = tokio::time::timeout(
        settings.read_timeout,
        read_bounded(&mut stream, settings.max_size, &mut received),
    )
    .await;
    let note = match read {
        Ok(Ok(())) => None,
        Ok(Err(error)) if received.is_empty() => {
            metrics::refused("read-error");
            tracing::warn!(%error, "connection failed before any report was read");
            return;
        }
        Ok(Err(error)) => {
            // the sender went away mid-report: keep what came, say so, and answer no one
            tracing::warn!(%error, bytes = received.total, "connection failed mid-report; keeping what was read");
            Some(format!(
                "the connection failed after {} bytes ({error}); the report may be incomplete",
                received.total
            ))
        }
        Err(_) if received.is_empty() => {
            metrics::refused("empty");
            tracing::warn!(timeout = %humantime::format_duration(settings.read_timeout), "nothing received before read-timeout");
            return;
        }
        Err(_) => Some(format!(
            "the sender had not finished after read-timeout ({}); the report may be incomplete",
            humantime::format_duration(settings.read_timeout)
        )),
    };
    if received.is_empty() {
        metrics::refused("empty");
        tracing::debug!("connection closed without a report");
        return;
    }
    let event = report::event(
        &ctx.config,
        received,
        BounceSource::Tcp,
        Some(peer.ip()),
        note,
    );
    let bounce_id = event.bounce_id;
    let status = event.report.status;
    let spool = ctx.spool.clone();
    match tokio::task::spawn_blocking(move || spool.write(&event)).await {
        Ok(Ok(entry)) => {
            ctx.publisher.enqueue(entry);
            tracing::info!(%bounce_id, status = status.as_str(), "delivery report spooled");
            let answer = format!("250 2.0.0 Ok: queued as {bounce_id}\r\n");
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, async {
                stream.write_all(answer.as_bytes()).await?;
                stream.shutdown().await
            })
            .await;
        }
        outcome => {
            let why = match outcome {
                Ok(Err(error)) => error.to_string(),
                _ => "the spool writer failed".to_owned(),
            };
            metrics::refused("spool");
            tracing::error!(%bounce_id, error = %why, "delivery report NOT kept; the sender is told to keep it");
            let answer = format!("451 4.3.0 cannot keep the report: {why}\r\n");
            let _ = tokio::time::timeout(ANSWER_TIMEOUT, stream.write_all(answer.as_bytes())).await;
            // a reset, not a clean close: a sender that ignores our answer still sees a failure
            let _ = stream.set_zero_linger();
        }
    }
}
