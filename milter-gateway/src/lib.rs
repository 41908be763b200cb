//! The milter gateway: the only thing between Postfix and every message.
//!
//! Layout, top-down:
//! - [`run`]: wires the parts together; `main.rs` only parses flags, loads the configuration
//!   and binds.
//! - [`server`]: the listener (connection cap, graceful drain).
//! - [`connection`]: one milter connection (generic over the transport); end of message: ask,
//!   wait, decide, answer, audit.
//! - [`early`]: the checks before end of message (`[stage-checks]`: CONNECT, HELO, RCPT).
//! - [`context`]: what every connection shares; [`wait`]: asking modules and waiting for
//!   their results (both used by `connection` and `early`).
//! - [`outcome`]: the fail policy, what is applied and answered (pure).
//! - [`session`]: the protocol state machine (pure).
//! - [`milter`]: the wire protocol (codec, commands, responses, negotiation).
//! - [`dispatch`]: check requests and results over RabbitMQ (RPC with correlation ids).
//! - [`verdict`] and [`reply`]: the verdict algorithm and the SMTP reply text (pure).
//! - [`content`]: the message as content modules see it.
//! - [`headers`]: header and envelope changes at end of message (pure).
//! - [`audit`] and [`spool`]: audit events on disk before the answer, published with
//!   confirms, replayed on start.

pub mod audit;
pub mod connection;
pub mod content;
pub mod context;
pub mod dispatch;
pub mod early;
pub mod headers;
pub mod milter;
pub mod outcome;
pub mod reply;
pub mod server;
pub mod session;
pub mod spool;
pub mod verdict;
pub mod wait;

use std::sync::Arc;

use anyhow::Context as _;

use platform::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs the gateway on `listener` until `shutdown` fires, then drains the connections in
/// flight and stops its broker tasks.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let background = TaskTracker::new();
    // The broker tasks outlive the listener: messages in flight at shutdown still get their
    // results and their audit records.
    let broker_shutdown = CancellationToken::new();
    let dispatcher = dispatch::Dispatcher::start(&config, &background, broker_shutdown.clone());
    let (spool, replay) =
        spool::Spool::open(&config.gateway.spool_dir, config.gateway.spool_max_size).with_context(
            || {
                format!(
                    "cannot open the audit spool {}",
                    config.gateway.spool_dir.display()
                )
            },
        )?;
    let audit =
        audit::AuditPublisher::start(&config, spool, replay, &background, broker_shutdown.clone());
    let modules = config.enabled_modules();
    tracing::info!(
        listen = %listener.local_addr()?,
        instance = %config.instance,
        noop = config.noop,
        ?modules,
        "milter gateway ready"
    );
    let ctx = Arc::new(context::Context::new(config, dispatcher, audit));
    server::serve(listener, ctx, shutdown).await;
    broker_shutdown.cancel();
    background.close();
    background.wait().await;
    tracing::info!("milter gateway stopped");
    Ok(())
}
