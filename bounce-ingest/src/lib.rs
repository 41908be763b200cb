//! bounce-ingest: Postfix's delivery reports (bounces and delay warnings) into bounce events
//! for the auditor, which stores them in `bounce` / `bounce_report` joined to their messages;
//! and Postfix's log into delivery events (`message_delivery`).
//!
//! Layout:
//! - [`dsn`]: the report parser (RFC 3464 / RFC 6533 over mail-parser); pure, never fails.
//! - [`report`]: reading one report with a size bound; the [`wire::BounceEvent`] around it.
//! - [`submit`]: `bounce-ingest submit`, the alias pipe: stdin to RabbitMQ (confirmed) or to the
//!   listener, exit 0 only when the report is safe, else 75 so that Postfix retries.
//! - [`listener`]: the TCP listener (`bounce-ingest run`): allow-list, one report per
//!   connection, answered `250` only once spooled.
//! - [`spool`]: the listener's reports on disk until RabbitMQ confirmed them.
//! - [`publish`]: confirmed publishing, and the spool's background publisher.
//! - [`maillog`]: Postfix's delivery lines (sent, deferred, bounced), read from its log; pure.
//! - [`follow`]: `bounce-ingest maillog FILE|-`: the log followed by position (rotation-safe,
//!   at least once) or read from a pipe, its delivery events published confirmed.
//! - [`metrics`]: the metric names.
//!
//! **Invariant**: a report is never dropped for being unreadable: whatever the parser makes of
//! it, the raw report (up to `max-size`) goes out with the reason.

pub mod dsn;
pub mod follow;
pub mod listener;
pub mod maillog;
pub mod metrics;
pub mod publish;
pub mod report;
pub mod spool;
pub mod submit;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use platform::config::Config;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long the publisher may go on after the listener stopped, to empty its queue; what is
/// left stays in the spool for the next start.
const DRAIN: Duration = Duration::from_secs(5);

/// Serves the listener on `listener` until `shutdown` fires, publishing what it spools (and
/// what an earlier run left in the spool); then finishes the reports being read and gives the
/// publisher a few seconds to empty its queue.
///
/// # Errors
/// The spool directory cannot be opened.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    metrics::describe();
    let dir = config.bounce_ingest.spool_dir.clone();
    let max = config.bounce_ingest.spool_max_size;
    let opened = tokio::task::spawn_blocking(move || spool::Spool::open(&dir, max))
        .await
        .context("the spool opener failed")?;
    let (spool, replay) = opened.with_context(|| {
        format!(
            "cannot open the bounce spool {}",
            config.bounce_ingest.spool_dir.display()
        )
    })?;
    let background = TaskTracker::new();
    let stop_publisher = CancellationToken::new();
    let publisher = publish::SpoolPublisher::start(
        &config,
        spool.clone(),
        replay,
        &background,
        stop_publisher.clone(),
    );
    tracing::info!(
        listen = %listener.local_addr()?,
        instance = %config.instance,
        allow = ?config.bounce_ingest.allow,
        spool = %config.bounce_ingest.spool_dir.display(),
        "bounce-ingest ready"
    );
    let ctx = Arc::new(listener::Context {
        config,
        spool,
        publisher,
    });
    // returns once no connection holds the context, so every publisher handle is gone
    listener::serve(listener, ctx, shutdown).await;
    background.close();
    if tokio::time::timeout(DRAIN, background.wait())
        .await
        .is_err()
    {
        stop_publisher.cancel();
        background.wait().await;
    }
    tracing::info!("bounce-ingest stopped");
    Ok(())
}
