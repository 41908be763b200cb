//! The auditor: stores every audit event in the MySQL/MariaDB archive, idempotently, and acks an
//! event only after its rows are committed (DESIGN.md "Durability invariants" 2).
//!
//! Layout:
//! - [`consume`]: the loop from the `cluegetter.audit.archive` queue to the database: batches,
//!   commit then ack, dead-lettering of poison events, reconnecting to the broker, retrying the
//!   database, shutdown.
//! - [`store`]: the SQL that writes events: one transaction per batch, a few multi-row
//!   statements per table, idempotent on the message UUID; [`store::values`] holds the pure
//!   conversions (addresses, binary IPs, limits).
//! - [`prune`]: archive retention, deleting old rows of this instance in small batches.
//! - [`bounce`]: bounce events (bounce-ingest) into `bounce` / `bounce_report`, linked to their
//!   messages, and the relinker for bounces that came before their message.
//! - [`delivery`]: delivery events (bounce-ingest `maillog`) into `message_delivery`, joined
//!   to their messages when read.
//! - [`dead_letters`]: `auditor dead-letters count|show|replay`.
//! - [`migrate`]: creating the database and applying `schema/`, refusing a newer schema.
//! - [`metrics`]: the metric names.
//! - [`web`]: the web interface and JSON API (search, message pages, bounces, quotas,
//!   statistics), behind a login; served by `main.rs` beside the consumer.
//!
//! The auditor knows the wire contract only through `wire`; it never defines a wire type.

pub mod bounce;
pub mod consume;
pub mod dead_letters;
pub mod delivery;
pub mod metrics;
pub mod migrate;
pub mod prune;
pub mod store;
pub mod web;

pub use migrate::{MigrateError, migrate};

/// Consumes audit events and writes them to the archive until `shutdown` fires; then finishes
/// the batch in hand and returns. Prunes the archive meanwhile (`archive-prune-interval`).
/// Keeps reconnecting to the broker and retrying the database, so it only fails on a
/// configuration it cannot use.
///
/// The schema must be up to date: call [`migrate`] first.
///
/// # Errors
/// `database.url` cannot be parsed.
pub async fn run(
    config: platform::config::Config,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use anyhow::Context as _;

    let pool = store::connect_lazy(&config.database.url, config.database.max_connections)
        .context("invalid database.url")?;
    let pruner = prune::Pruner::new(
        pool.clone(),
        &config.instance,
        prune::Retention::from_config(&config),
    );
    // stopped with the consumer, also when that fails
    let stop_pruning = shutdown.child_token();
    let pruning =
        tokio::spawn(pruner.run_every(config.auditor.archive_prune_interval, stop_pruning.clone()));
    let stop_bounces = shutdown.child_token();
    let bounces = tokio::spawn(bounce::run(config.clone(), stop_bounces.clone()));
    let deliveries = tokio::spawn(delivery::run(config.clone(), stop_bounces.clone()));
    let consumed = consume::run(&config, pool.clone(), shutdown).await;
    stop_pruning.cancel();
    stop_bounces.cancel();
    let _ = pruning.await;
    let bounced = bounces.await.context("the bounce consumer panicked")?;
    let delivered = deliveries.await.context("the delivery consumer panicked")?;
    pool.close().await;
    tracing::info!("auditor stopped");
    consumed.and(bounced).and(delivered)
}
