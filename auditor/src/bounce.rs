//! Bounce events from `cluegetter.bounce.archive` into `bounce` / `bounce_report`. Commit, then
//! ack; beside it, the relinker.
//!
//! Bounces are few (one per delivery report), so they are stored one at a time, each in its own
//! transaction: decode (not JSON or another wire major version: poison), write ([`BounceStore`];
//! a value the database refuses: poison), dead-letter poison to
//! `cluegetter.bounce.dead-letter` with the reason and wait for the broker's confirm, then ack.
//! While the database cannot be written nothing is acked: the event is retried with backoff and
//! the broker holds the rest (prefetch). A lost broker connection means redelivery, which
//! changes nothing (idempotent on the bounce UUID).
//!
//! A bounce can arrive before its message's audit event (the report is written by Postfix
//! seconds after the gateway answered, and the audit event may still be in the gateway's spool).
//! Such a bounce is stored unlinked; the relinker joins the unlinked bounces of the last
//! [`RELINK_WINDOW`] to messages stored since, every [`RELINK_EVERY`].

use std::time::Duration;

use anyhow::Context as _;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use lapin::{Channel, Connection};
use platform::backoff::Backoff;
use platform::broker::{self, BOUNCE_DEAD_LETTER_QUEUE, BOUNCE_QUEUE};
use platform::config::Config;
use tokio_util::sync::CancellationToken;
use wire::BounceEvent;
use wire::contract::{self, WireError};

use crate::consume::{OneByOne, with_reason};
use crate::store;
use crate::store::bounce::{BounceOutcome, BounceStore, Link};

/// How often unlinked bounces are matched again.
pub const RELINK_EVERY: Duration = Duration::from_secs(5);
/// How far back unlinked bounces are matched again (longer than a gateway's spool plausibly
/// holds an audit event; older ones are left as they are).
pub const RELINK_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Deliveries in flight to this consumer.
const PREFETCH: u16 = 16;

/// Bounce events stored, by `status` (`parsed`, `partial`, `unparseable`).
pub const STORED: &str = "cluegetter_auditor_bounces_stored_total";
/// Bounces linked to their message, by `link` (`queue_id`, `cluegetter_id`, `message_id`) and
/// `when` (`stored`: on arrival, `later`: by the relinker).
pub const LINKED: &str = "cluegetter_auditor_bounces_linked_total";
/// Bounces stored without a link (their message unknown so far).
pub const UNLINKED: &str = "cluegetter_auditor_bounces_unlinked_total";
/// Redelivered bounce events skipped.
pub const DUPLICATES: &str = "cluegetter_auditor_bounce_duplicates_total";
/// Bounce events sent to the dead-letter queue, by `reason` (`undecodable`, `version`,
/// `refused`).
pub const DEAD_LETTERED: &str = "cluegetter_auditor_bounces_dead_lettered_total";

fn describe() {
    metrics::describe_counter!(STORED, "Bounce events stored, by parse status");
    metrics::describe_counter!(LINKED, "Bounces linked to their message, by link and when");
    metrics::describe_counter!(UNLINKED, "Bounces stored before (or without) their message");
    metrics::describe_counter!(DUPLICATES, "Redelivered bounce events skipped");
    metrics::describe_counter!(DEAD_LETTERED, "Bounce events dead-lettered, by reason");
    for status in ["parsed", "partial", "unparseable"] {
        metrics::counter!(STORED, "status" => status).increment(0);
    }
    for link in Link::ALL {
        for when in ["stored", "later"] {
            metrics::counter!(LINKED, "link" => link.as_str(), "when" => when).increment(0);
        }
    }
    for reason in ["undecodable", "version", "refused"] {
        metrics::counter!(DEAD_LETTERED, "reason" => reason).increment(0);
    }
    metrics::counter!(UNLINKED).increment(0);
    metrics::counter!(DUPLICATES).increment(0);
}

/// Consumes bounce events and relinks until `shutdown` fires; keeps reconnecting to the broker
/// and retrying the database meanwhile.
///
/// # Errors
/// `database.url` cannot be parsed.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    describe();
    // bounces are few: a small pool beside the audit consumer's
    let pool = store::connect_lazy(&config.database.url, 2).context("invalid database.url")?;
    let store = BounceStore::new(pool);
    let max_backoff = config.broker.reconnect_max_backoff;
    let mut supervisor =
        broker::Supervisor::from_config(&config.broker, "cluegetter-auditor bounces");
    let consuming = async {
        while let Some(connection) = supervisor.connect(&shutdown).await {
            let outcome = consume(&connection, &store, max_backoff, &shutdown).await;
            if !supervisor.end(&connection, outcome, &shutdown).await {
                break;
            }
        }
    };
    tokio::join!(consuming, relink_for_ever(&store, &shutdown));
    store.pool().close().await;
    Ok(())
}

/// Consumes on one connection until shutdown (`Ok`) or a broker error (`Err`).
async fn consume(
    connection: &Connection,
    store: &BounceStore,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    broker::declare_bounce_topology(connection)
        .await
        .context("cannot declare the bounce exchange and queues")?;
    let mut queue = OneByOne::open(
        connection,
        BOUNCE_QUEUE,
        "cluegetter-auditor-bounces",
        PREFETCH,
    )
    .await?;
    while let Some(delivery) = queue.next(shutdown).await? {
        if !handle(queue.channel(), store, &delivery, max_backoff, shutdown).await? {
            break;
        }
    }
    queue.close().await;
    Ok(())
}

/// Stores (or dead-letters) one delivery and acks it. Returns false when shutdown came while
/// the database could not be written: then it is not acked and will be redelivered.
async fn handle(
    channel: &Channel,
    store: &BounceStore,
    delivery: &Delivery,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) -> anyhow::Result<bool> {
    let event = match contract::decode::<BounceEvent>(&delivery.data) {
        Ok(event) => event,
        Err(error) => {
            let kind = match error {
                WireError::Decode(_) => "undecodable",
                WireError::Version { .. } => "version",
            };
            dead_letter(channel, delivery, kind, &error.to_string()).await?;
            return ack(channel, delivery).await.map(|()| true);
        }
    };
    let mut backoff = Backoff::new(max_backoff);
    let outcome = loop {
        match store.write(&event).await {
            Ok(outcome) => break outcome,
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::error!(bounce_id = %event.bounce_id, %error, retry_in = ?delay,
                    "cannot write a bounce to the database; not acked; retrying");
                if !backoff.sleep_for(delay, shutdown).await {
                    return Ok(false);
                }
            }
        }
    };
    let report = &event.report;
    let queue_id = report.per_message.queue_id.as_str();
    match outcome {
        BounceOutcome::Stored { link } => {
            metrics::counter!(STORED, "status" => report.status.as_str()).increment(1);
            match link {
                Some(link) => {
                    metrics::counter!(LINKED, "link" => link.as_str(), "when" => "stored")
                        .increment(1);
                }
                None => metrics::counter!(UNLINKED).increment(1),
            }
            tracing::info!(
                bounce_id = %event.bounce_id,
                %queue_id,
                status = report.status.as_str(),
                recipients = report.recipients.len(),
                link = link.map_or("none", Link::as_str),
                "bounce stored"
            );
        }
        BounceOutcome::Duplicate => {
            metrics::counter!(DUPLICATES).increment(1);
            tracing::info!(bounce_id = %event.bounce_id, "bounce already stored (redelivery); skipped");
        }
        BounceOutcome::Refused(reason) => {
            dead_letter(channel, delivery, "refused", &reason).await?;
        }
    }
    ack(channel, delivery).await.map(|()| true)
}

async fn ack(channel: &Channel, delivery: &Delivery) -> anyhow::Result<()> {
    channel
        .basic_ack(delivery.delivery_tag, BasicAckOptions::default())
        .await
        .context("cannot ack a stored bounce (it will be redelivered and skipped)")
}

/// Publishes the delivery, unchanged but for the reason header, to the dead-letter queue and
/// waits for the broker's confirm.
async fn dead_letter(
    channel: &Channel,
    delivery: &Delivery,
    kind: &'static str,
    reason: &str,
) -> anyhow::Result<()> {
    let properties = with_reason(delivery, reason);
    broker::publish_confirmed(
        channel,
        "",
        BOUNCE_DEAD_LETTER_QUEUE,
        &delivery.data,
        properties,
    )
    .await
    .with_context(|| format!("cannot dead-letter a bounce to {BOUNCE_DEAD_LETTER_QUEUE}"))?;
    metrics::counter!(DEAD_LETTERED, "reason" => kind).increment(1);
    tracing::warn!(%reason, queue = BOUNCE_DEAD_LETTER_QUEUE, "poison bounce event dead-lettered");
    Ok(())
}

async fn relink_for_ever(store: &BounceStore, shutdown: &CancellationToken) {
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(RELINK_EVERY) => {}
        }
        let since = chrono::Utc::now() - RELINK_WINDOW;
        match store.relink(since).await {
            Ok(counts) => {
                failing = false;
                for (link, n) in Link::ALL.into_iter().zip(counts) {
                    if n > 0 {
                        metrics::counter!(LINKED, "link" => link.as_str(), "when" => "later")
                            .increment(n);
                        tracing::info!(
                            link = link.as_str(),
                            bounces = n,
                            "bounces linked to their messages"
                        );
                    }
                }
            }
            Err(error) if !failing => {
                failing = true;
                tracing::warn!(%error, "cannot relink bounces; trying again every few seconds");
            }
            Err(error) => tracing::debug!(%error, "cannot relink bounces"),
        }
    }
}
