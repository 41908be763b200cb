//! The milter listener: accepts connections up to `max-connections`, one task each, and on
//! shutdown stops accepting and lets the messages in flight finish (bounded by
//! [`DRAIN_TIMEOUT`]).

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection;
use crate::context::Context;

/// Longest a shutdown waits for connections in the middle of a message.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a shutdown waits for the audit events held for late results to be queued.
const LATE_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, ctx: Arc<Context>, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(ctx.config.gateway.max_connections.max(1)));
    let connections = TaskTracker::new();
    loop {
        let permit = tokio::select! {
            permit = limit.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break, // the semaphore is never closed
            },
            () = shutdown.cancelled() => break,
        };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // e.g. EMFILE: back off rather than spin
                tracing::warn!(%error, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown".to_owned(), |a| a.to_string());
        metrics::gauge!("cluegetter_gateway_connections").increment(1.0);
        let ctx = ctx.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            connection::serve(stream, &peer, ctx, shutdown).await;
            metrics::gauge!("cluegetter_gateway_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown: connections still open after {DRAIN_TIMEOUT:?}; closing them"
        );
    }
    // Audit events held for late results stop waiting at shutdown and are queued at once.
    ctx.late.close();
    if tokio::time::timeout(LATE_DRAIN_TIMEOUT, ctx.late.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            remaining = ctx.late.len(),
            "shutdown: audit events still held after {LATE_DRAIN_TIMEOUT:?}; they are replayed from the spool"
        );
    }
}
