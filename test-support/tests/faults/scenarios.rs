//! The scenarios: each drives a load of messages at a real `milter-gateway` with a real
//! `auditor` behind it, on the private broker and database, breaks something for real in the
//! middle of the load, heals it, waits until everything has drained, and does the books.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use platform::broker::{AUDIT_DEAD_LETTER_QUEUE, AUDIT_EXCHANGE, AUDIT_QUEUE};
use sqlx::mysql::MySqlPoolOptions;
use sqlx::{AssertSqlSafe, MySqlPool};
use tokio::time::Instant;
use wire::AuditEvent;

use crate::account::{self, Accounting};
use crate::client::{Drive, Load, Sent};
use crate::processes::{Kind, Process, Setup};
use crate::services::{PrivateBroker, PrivateDb, free_port};

/// Messages per fault scenario, and how fast they come.
const MESSAGES: usize = 3000;
const RATE: f64 = 300.0;
const CONNECTIONS: usize = 20;
/// Longest wait for the pipeline to drain after the load.
const DRAIN: Duration = Duration::from_secs(120);

/// The private services and the directory everything lives in.
pub struct Lab {
    pub root: PathBuf,
    pub broker: PrivateBroker,
    pub db: PrivateDb,
    scenarios: usize,
}

impl Lab {
    pub async fn start(root: PathBuf) -> Result<Self> {
        let (broker_dir, db_dir) = (root.join("rabbitmq"), root.join("mariadb"));
        let (broker, db) =
            tokio::try_join!(PrivateBroker::start(&broker_dir), PrivateDb::start(&db_dir),)?;
        Ok(Self {
            root,
            broker,
            db,
            scenarios: 0,
        })
    }

    /// A directory, a database and ports for the next scenario; the audit queues emptied.
    async fn setup(&mut self, name: &str) -> Result<Setup> {
        self.scenarios += 1;
        let database = format!("faults_{}", self.scenarios);
        let server = MySqlPoolOptions::new()
            .max_connections(1)
            .connect(&self.db.url(""))
            .await
            .context("connect to the private MariaDB")?;
        // `database` is ours, never input
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci"
        )))
        .execute(&server)
        .await?;
        server.close().await;
        let broker = BrokerLink::open(&self.broker.url()).await?;
        broker.purge().await?;
        broker.close().await;
        let setup = Setup {
            dir: self.root.join(format!("{}-{name}", self.scenarios)),
            broker_urls: vec![self.broker.url()],
            database_urls: vec![self.db.url(&database)],
            milter_port: free_port()?,
            gateway_metrics: free_port()?,
            auditor_metrics: free_port()?,
            auditor_web: free_port()?,
            worker_metrics: free_port()?,
            extra: String::new(),
        };
        setup.write_config()?;
        Ok(setup)
    }
}

fn load(prefix: &str, messages: usize) -> Load {
    Load {
        messages,
        connections: CONNECTIONS,
        rate: RATE,
        per_session: 5,
        prefix: prefix.to_owned(),
    }
}

fn milter_addr(setup: &Setup) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], setup.milter_port))
}

async fn pool(setup: &Setup) -> Result<MySqlPool> {
    Ok(MySqlPoolOptions::new()
        .max_connections(2)
        .connect(setup.database_url())
        .await?)
}

/// A connection to the private broker for the test's own look at the queues.
struct BrokerLink {
    connection: Connection,
    channel: Channel,
}

impl BrokerLink {
    async fn open(url: &str) -> Result<Self> {
        let connection = platform::broker::connect(url, "faults-test").await?;
        let channel = connection.create_channel().await?;
        platform::broker::declare_audit_topology(&connection).await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    async fn purge(&self) -> Result<()> {
        for queue in [AUDIT_QUEUE, AUDIT_DEAD_LETTER_QUEUE] {
            self.channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await?;
        }
        self.channel
            .queue_delete(TAP_QUEUE.into(), QueueDeleteOptions::default())
            .await?;
        Ok(())
    }

    async fn ready(&self, queue: &str) -> Result<u32> {
        Ok(self
            .channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count())
    }

    async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

/// Audit events in the gateway's spool (read from its segment files, as a restart would).
fn spooled(setup: &Setup) -> usize {
    milter_gateway::spool::inspect(&setup.spool_dir()).map_or(0, |events| events.len())
}

/// Waits until the spool is empty, the archive queue is empty, every answered message has its
/// row and the row count has stood still for two seconds (or [`DRAIN`] passed: the books
/// will show what is missing).
async fn drain(setup: &Setup, sent: &[Sent]) -> Result<MySqlPool> {
    let pool = pool(setup).await?;
    let broker = BrokerLink::open(setup.broker_url()).await?;
    let end = Instant::now() + DRAIN;
    let mut last = (usize::MAX, Instant::now());
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message")
            .fetch_one(&pool)
            .await?;
        let rows = usize::try_from(rows).unwrap_or(0);
        if rows != last.0 {
            last = (rows, Instant::now());
        }
        let settled = spooled(setup) == 0
            && broker.ready(AUDIT_QUEUE).await? == 0
            && account::missing(&pool, sent).await? == 0
            && last.1.elapsed() >= Duration::from_secs(2);
        if settled || Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    broker.close().await;
    Ok(pool)
}

/// Runs `load` with both processes up, calls `fault` once `at` of it is done, drains, and
/// does the books.
async fn faulted_run<F>(
    lab: &mut Lab,
    name: &str,
    prefix: &str,
    faults: &[f64],
    mut fault: F,
) -> Result<Accounting>
where
    F: AsyncFnMut(&mut Lab, &Setup, &mut Process, &mut Process, &mut Vec<String>) -> Result<()>,
{
    let setup = lab.setup(name).await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let drive = Drive::start(milter_addr(&setup), load(prefix, MESSAGES));
    let mut notes = Vec::new();
    for at in faults {
        drive.wait_done((MESSAGES as f64 * at) as usize).await?;
        fault(lab, &setup, &mut gateway, &mut auditor, &mut notes).await?;
    }
    let sent = drive.finish().await;
    let pool = drain(&setup, &sent).await?;
    let mut books = account::account(name, &pool, &sent).await?;
    books.notes = notes;
    books.notes.push(metrics_note(&gateway, &auditor));
    gateway.stop().await;
    auditor.stop().await;
    pool.close().await;
    Ok(books)
}

fn metrics_note(gateway: &Process, auditor: &Process) -> String {
    let g = |name: &str| gateway.metric(name).unwrap_or(-1.0);
    let a = |name: &str| auditor.metric(name).unwrap_or(-1.0);
    format!(
        "last gateway: spooled {} published {} confirmed {} replayed {} publish-retries {}; \
         last auditor: committed {} duplicates-skipped {} batch-failures {} dead-lettered {}",
        g("cluegetter_gateway_spooled_total"),
        g("cluegetter_gateway_audit_published_total"),
        g("cluegetter_gateway_audit_confirmed_total"),
        g("cluegetter_gateway_audit_replayed_total"),
        g("cluegetter_gateway_audit_publish_retries_total"),
        a("cluegetter_auditor_events_committed_total"),
        a("cluegetter_auditor_duplicates_skipped_total"),
        a("cluegetter_auditor_batch_failures_total"),
        a("cluegetter_auditor_dead_lettered_total{reason=\"refused\"}")
            + a("cluegetter_auditor_dead_lettered_total{reason=\"undecodable\"}")
            + a("cluegetter_auditor_dead_lettered_total{reason=\"version\"}"),
    )
}

/// RabbitMQ stopped (cleanly) for a few seconds mid-run, then started again: the gateway
/// keeps answering from its spool and publishes the backlog when the broker is back; the
/// auditor reconnects.
pub async fn rabbitmq_restart(lab: &mut Lab) -> Result<Accounting> {
    faulted_run(
        lab,
        "rabbitmq-restart",
        "FRB",
        &[0.3],
        async |lab, setup, _, _, notes| {
            let started = Instant::now();
            lab.broker.stop().await?;
            tokio::time::sleep(Duration::from_secs(3)).await;
            let spool = spooled(setup);
            lab.broker.restart().await?;
            notes.push(format!(
                "RabbitMQ down for {:.1} s; {spool} events in the spool when it came back",
                started.elapsed().as_secs_f64()
            ));
            if spool == 0 {
                bail!("the spool was empty while RabbitMQ was down: the fault did not bite");
            }
            Ok(())
        },
    )
    .await
}

/// MariaDB killed (`kill -9`) mid-run and started again 5 s later: the auditor's batch fails,
/// nothing is acked, it retries until the database is back.
pub async fn mariadb_down(lab: &mut Lab) -> Result<Accounting> {
    faulted_run(
        lab,
        "mariadb-kill9",
        "FDB",
        &[0.3],
        async |lab, _, _, auditor, notes| {
            let started = Instant::now();
            lab.db.kill().await?;
            tokio::time::sleep(Duration::from_secs(5)).await;
            lab.db.restart().await?;
            // an attempt gives up after the pool's 5 s acquire timeout
            let failures =
                eventually_metric(auditor, "cluegetter_auditor_batch_failures_total").await;
            notes.push(format!(
                "MariaDB down for {:.1} s; {failures} failed batch attempts meanwhile",
                started.elapsed().as_secs_f64()
            ));
            if failures == 0.0 {
                bail!("no batch failed while MariaDB was down: the fault did not bite");
            }
            Ok(())
        },
    )
    .await
}

/// The auditor `kill -9`ed twice mid-run and started again: what it held unacked is
/// redelivered, what it had committed but not acked is found stored and skipped.
pub async fn auditor_kill(lab: &mut Lab) -> Result<Accounting> {
    faulted_run(
        lab,
        "auditor-kill9",
        "FAU",
        &[0.3, 0.6],
        async |_, setup, _, auditor, notes| {
            let committed = auditor.metric("cluegetter_auditor_events_committed_total")?;
            let skipped = auditor.metric("cluegetter_auditor_duplicates_skipped_total")?;
            auditor.kill9();
            tokio::time::sleep(Duration::from_secs(1)).await;
            *auditor = Process::start(Kind::Auditor, setup).await?;
            notes.push(format!(
                "auditor killed after committing {committed} events (and skipping {skipped} \
             redelivered ones), restarted"
            ));
            Ok(())
        },
    )
    .await
}

/// The gateway `kill -9`ed twice mid-run and started again on the same spool: whatever was
/// spooled and not confirmed is replayed; messages in flight were never answered. The
/// second time RabbitMQ is down (from a little before the kill to a little after the
/// restart), so the spool holds hundreds of events, which the new gateway replays once the
/// broker is back.
pub async fn gateway_kill(lab: &mut Lab) -> Result<Accounting> {
    let mut step = 0;
    faulted_run(
        lab,
        "gateway-kill9",
        "FGW",
        &[0.3, 0.5, 0.65],
        async |lab, setup, gateway, _, notes| {
            step += 1;
            if step == 2 {
                lab.broker.stop().await?;
                notes.push("RabbitMQ stopped".into());
                return Ok(());
            }
            gateway.kill9();
            let left = spooled(setup);
            *gateway = Process::start(Kind::Gateway, setup).await?;
            if step == 3 {
                tokio::time::sleep(Duration::from_secs(1)).await;
                lab.broker.restart().await?;
            }
            // Nothing left to replay, nothing to wait for: the load goes on meanwhile, and a
            // wait here would let it finish before the next fault (the next steps need it).
            let replayed = if left == 0 {
                0.0
            } else {
                eventually_metric(gateway, "cluegetter_gateway_audit_replayed_total").await
            };
            notes.push(format!(
                "gateway killed with {left} events in its spool; the new one replayed \
                 {replayed}{}",
                if step == 3 {
                    "; then RabbitMQ started again"
                } else {
                    ""
                }
            ));
            if step == 3 && left < 100 {
                bail!("only {left} events in the spool of the killed gateway: no real replay");
            }
            Ok(())
        },
    )
    .await
}

/// The replayed counter is set once the spool is read; it may take a moment to be served.
async fn eventually_metric(process: &Process, name: &str) -> f64 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        match process.metric(name) {
            Ok(value) if value > 0.0 => return value,
            _ if Instant::now() >= end => return 0.0,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A queue bound to the audit exchange that keeps a copy of every event, for the test.
const TAP_QUEUE: &str = "faults.tap";
/// Events redelivered and events replayed in the last scenario.
const AGAIN: usize = 50;

/// A clean run, then the same events again twice over: redelivered by RabbitMQ to an auditor
/// (taken and given back unacked, so they carry the redelivered flag) and replayed from the
/// spool of a restarted gateway. Nothing may change in the archive.
pub async fn redelivery_and_replay(lab: &mut Lab) -> Result<Accounting> {
    let name = "redelivered-replayed";
    let setup = lab.setup(name).await?;
    let link = BrokerLink::open(setup.broker_url()).await?;
    link.channel
        .queue_declare(
            TAP_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    link.channel
        .queue_bind(
            TAP_QUEUE.into(),
            AUDIT_EXCHANGE.into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let sent = Drive::start(milter_addr(&setup), load("FRR", 1000))
        .finish()
        .await;
    let pool = drain(&setup, &sent).await?;
    let before = footprint(&pool).await?;

    // copies of stored events, as the gateway published them
    let mut events: Vec<AuditEvent> = Vec::new();
    while events.len() < 2 * AGAIN {
        let Some(message) = link
            .channel
            .basic_get(TAP_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await?
        else {
            bail!("the tap queue has only {} events", events.len());
        };
        events.push(wire::contract::decode(&message.delivery.data)?);
    }
    let (redelivered, replayed) = events.split_at(AGAIN);

    // redelivery: with the auditor stopped, the events are queued, taken by a consumer and
    // given back unacked
    auditor.stop().await;
    link.channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    for event in redelivered {
        let confirm = link
            .channel
            .basic_publish(
                "".into(),
                AUDIT_QUEUE.into(),
                BasicPublishOptions::default(),
                &wire::contract::encode(event),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await?
            .await?;
        if !confirm.is_ack() {
            bail!("the broker did not take a redelivery");
        }
    }
    let taker = link.connection.create_channel().await?;
    for _ in 0..AGAIN {
        taker
            .basic_get(AUDIT_QUEUE.into(), BasicGetOptions { no_ack: false })
            .await?
            .context("an event to take")?;
    }
    taker.close(200, "give them back".into()).await?;
    let check = link.connection.create_channel().await?;
    let first = check
        .basic_get(AUDIT_QUEUE.into(), BasicGetOptions { no_ack: false })
        .await?
        .context("an event back in the queue")?;
    if !first.delivery.redelivered {
        bail!("the events given back do not carry the redelivered flag");
    }
    check.close(200, "give it back".into()).await?;

    // replay: the events left in the spool of a gateway that stopped, found at its start
    gateway.stop().await;
    {
        let (spool, leftover) = milter_gateway::spool::Spool::open(&setup.spool_dir(), 1 << 30)?;
        if !leftover.is_empty() {
            bail!(
                "the gateway stopped with {} events in its spool",
                leftover.len()
            );
        }
        for event in replayed {
            let entry = spool.write(event)?;
            spool.mark_answered(&entry);
        }
    }
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    let end = Instant::now() + Duration::from_secs(60);
    let (mut skipped, mut replays) = (0.0, 0.0);
    while Instant::now() < end {
        skipped = auditor
            .metric("cluegetter_auditor_duplicates_skipped_total")
            .unwrap_or(0.0);
        replays = gateway
            .metric("cluegetter_gateway_audit_replayed_total")
            .unwrap_or(0.0);
        if skipped >= (2 * AGAIN) as f64 && spooled(&setup) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pool = drain(&setup, &sent).await?;
    let after = footprint(&pool).await?;
    let mut books = account::account(name, &pool, &sent).await?;
    books.notes.push(format!(
        "{AGAIN} events redelivered (redelivered flag set) and {AGAIN} replayed from the spool \
         (gateway replayed {replays}); auditor skipped {skipped} as already stored; archive \
         rows before {before:?}, after {after:?}"
    ));
    if before != after {
        books.duplicated += 1;
    }
    books.notes.push(metrics_note(&gateway, &auditor));
    gateway.stop().await;
    auditor.stop().await;
    link.close().await;
    pool.close().await;
    if skipped < (2 * AGAIN) as f64 {
        bail!(
            "the auditor skipped only {skipped} of {} repeated events",
            2 * AGAIN
        );
    }
    Ok(books)
}

/// Row counts of every archive table.
async fn footprint(pool: &MySqlPool) -> Result<Vec<i64>> {
    let mut counts = Vec::new();
    for sql in [
        "SELECT COUNT(*) FROM message",
        "SELECT COUNT(*) FROM session",
        "SELECT COUNT(*) FROM message_header",
        "SELECT COUNT(*) FROM message_recipient",
        "SELECT COUNT(*) FROM recipient",
        "SELECT COUNT(*) FROM message_result",
        "SELECT COUNT(*) FROM message_body",
    ] {
        counts.push(sqlx::query_scalar(sql).fetch_one(pool).await?);
    }
    Ok(counts)
}
