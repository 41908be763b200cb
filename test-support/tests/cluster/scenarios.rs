//! The cluster scenarios: a load at the real gateway with the real auditor behind it, both on
//! the three-node broker; a node `kill -9`ed mid-run and started again; drain; the books.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use platform::broker::{AUDIT_DEAD_LETTER_QUEUE, AUDIT_QUEUE};
use sqlx::MySqlPool;
use test_support::TestDb;
use tokio::time::Instant;

use crate::account::{self, Accounting};
use crate::client::{Drive, Load, Sent};
use crate::cluster::{Cluster, Node};
use crate::processes::{Kind, Process, Setup};
use crate::services::free_port;

mod bench;
pub use bench::cluster_bench;

/// Messages per scenario, and how fast they come (slower than the single-node test: the
/// failover should happen while the load goes on).
const MESSAGES: usize = 3000;
const RATE: f64 = 150.0;
const CONNECTIONS: usize = 20;
/// When in the load the node is killed.
const KILL_AT: f64 = 0.3;
/// Longest wait for the processes to be connected to another node after the kill.
const FAILOVER: Duration = Duration::from_secs(90);
/// Longest wait for the pipeline to drain after the load.
const DRAIN: Duration = Duration::from_secs(180);
/// What the processes log when they have a broker connection (platform::broker::Supervisor).
const CONNECTED: &str = "connected to RabbitMQ";

/// The cluster and the directory everything lives in.
pub struct Lab {
    root: PathBuf,
    cluster: Arc<Cluster>,
    scenarios: usize,
}

impl Lab {
    pub fn new(root: PathBuf, cluster: Cluster) -> Self {
        Self {
            root,
            cluster: Arc::new(cluster),
            scenarios: 0,
        }
    }

    /// A directory, a fresh database on the shared MariaDB and ports for the next scenario;
    /// the audit queues declared and emptied.
    async fn setup(&mut self, name: &str) -> Result<(Setup, TestDb)> {
        let db = TestDb::empty().await?;
        let setup = self.setup_with(name, vec![db.url.clone()]).await?;
        Ok((setup, db))
    }

    /// As [`Lab::setup`], with `[database] url` = `database_urls`.
    async fn setup_with(&mut self, name: &str, database_urls: Vec<String>) -> Result<Setup> {
        self.scenarios += 1;
        let broker = BrokerLink::open(self.cluster.broker_urls()).await?;
        for queue in [AUDIT_QUEUE, AUDIT_DEAD_LETTER_QUEUE] {
            broker
                .channel
                .queue_purge(queue.into(), QueuePurgeOptions::default())
                .await?;
        }
        broker.close().await;
        let setup = Setup {
            dir: self.root.join(format!("{}-{name}", self.scenarios)),
            broker_urls: self.cluster.broker_urls().to_vec(),
            database_urls,
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

    /// Runs a blocking `cluster.sh` call beside the load.
    async fn cluster<T: Send + 'static>(
        &self,
        call: impl FnOnce(&Cluster) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let cluster = self.cluster.clone();
        tokio::task::spawn_blocking(move || call(&cluster)).await?
    }
}

/// A connection to the first node that answers, for the test's own look at the queues.
struct BrokerLink {
    connection: Connection,
    channel: Channel,
}

impl BrokerLink {
    async fn open(urls: &[String]) -> Result<Self> {
        let urls = platform::config::Urls::from(urls.to_vec());
        let connection = platform::broker::connect_any(&urls, "cluster-test")
            .await
            .context("no RabbitMQ node of the cluster answered")?;
        platform::broker::declare_audit_topology(&connection).await?;
        let channel = connection.create_channel().await?;
        Ok(Self {
            connection,
            channel,
        })
    }

    /// `queue` as it is (a passive declare: a missing queue closes the channel).
    async fn look(&self, queue: &str) -> Result<lapin::Queue> {
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
            .await?)
    }

    async fn ready(&self, queue: &str) -> Result<u32> {
        Ok(self.look(queue).await?.message_count())
    }

    /// Consumers of `queue`.
    async fn consumers(&self, queue: &str) -> Result<u32> {
        Ok(self.look(queue).await?.consumer_count())
    }

    async fn close(self) {
        let _ = self.connection.close(200, "done".into()).await;
    }
}

fn spooled(setup: &Setup) -> usize {
    milter_gateway::spool::inspect(&setup.spool_dir()).map_or(0, |events| events.len())
}

/// Waits until the spool and the archive queue are empty, every answered message has its row
/// and the row count has stood still for two seconds (or [`DRAIN`] passed: the books will
/// show what is missing). A broker error (a node that just died) only means "not yet".
async fn drain(setup: &Setup, pool: &MySqlPool, sent: &[Sent]) -> Result<()> {
    let end = Instant::now() + DRAIN;
    let mut last = (usize::MAX, Instant::now());
    let mut link: Option<BrokerLink> = None;
    loop {
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message")
            .fetch_one(pool)
            .await?;
        let rows = usize::try_from(rows).unwrap_or(0);
        if rows != last.0 {
            last = (rows, Instant::now());
        }
        if link.is_none() {
            link = BrokerLink::open(&setup.broker_urls).await.ok();
        }
        let queued = match &link {
            Some(l) => l.ready(AUDIT_QUEUE).await.ok(),
            None => None,
        };
        if queued.is_none() {
            link = None;
        }
        let settled = spooled(setup) == 0
            && queued == Some(0)
            && account::missing(pool, sent).await? == 0
            && last.1.elapsed() >= Duration::from_secs(2);
        if settled || Instant::now() >= end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    if let Some(link) = link {
        link.close().await;
    }
    Ok(())
}

/// The supervisor's "connected to RabbitMQ" lines of a process log (the ones that name the
/// node; the gateway's check dispatch logs one of its own without it).
fn connections(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(CONNECTED) && line.contains("@127.0.0."))
        .map(str::to_owned)
        .collect()
}

/// Waits until the log has `want` more "connected" lines than `before`, none of them to
/// `gone` (the killed node's address); how long that took.
async fn reconnected(log: &Path, before: usize, want: usize, gone: &str) -> Result<Duration> {
    let begun = Instant::now();
    loop {
        let lines = connections(log);
        let new = lines.get(before..).unwrap_or_default();
        if new.iter().any(|line| line.contains(gone)) {
            bail!("{} reconnected to the killed node: {new:?}", log.display());
        }
        if new.len() >= want {
            return Ok(begun.elapsed());
        }
        if begun.elapsed() >= FAILOVER {
            bail!(
                "{}: only {} new broker connections within {FAILOVER:?}: {new:?}",
                log.display(),
                new.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The host part of node `n`'s URL, as the processes log it (`127.0.0.(n+1):port`).
fn host_port(url: &str) -> String {
    url.rsplit_once('@')
        .map_or(url, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// What befalls the broker node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// `kill -9`, then started again.
    Kill9,
    /// Cut off from the other nodes and every client by iptables (both directions) until the
    /// other two see it gone and it paused (`pause_minority`), then healed.
    Partition,
}

/// Runs the load with both processes on the cluster, strikes node `victim(lab)` with `fault`
/// once [`KILL_AT`] of it is done, measures the failover, brings the node back (restart or
/// heal), drains, and does the books.
async fn killed_node_run(
    lab: &mut Lab,
    name: &str,
    prefix: &str,
    fault: Fault,
    victim: impl AsyncFnOnce(&Lab) -> Result<(usize, String)>,
) -> Result<Accounting> {
    let (mut setup, db) = lab.setup(name).await?;
    // a metadata module, so that every message needs a check over the broker as well
    setup.extra = QUOTAS.to_owned();
    setup.write_config()?;
    // the gateway first: the others' outgoing connections take ephemeral ports, and one could
    // be the milter port chosen (free a moment ago)
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    migrated(&setup).await?;
    let mut workers = start_workers(&setup, WORKERS, |_| setup.database_urls.clone()).await?;
    let (gateway_log, auditor_log) = (setup.dir.join("gateway.log"), setup.dir.join("auditor.log"));
    // the gateway connects twice (audit publisher, check dispatch), the auditor twice
    // (archive consumer, bounces)
    let on_node1 = |log: &Path| {
        connections(log)
            .iter()
            .filter(|line| line.contains(&host_port(&setup.broker_urls[0])))
            .count()
    };
    // both connected before the load (an auditor that could not start shows here); the
    // gateway's audit publisher connects with the first event
    let (gateway_up, auditor_up) = tokio::join!(
        reconnected(&gateway_log, 0, 1, "no node"),
        reconnected(&auditor_log, 0, 1, "no node"),
    );
    gateway_up.context("the gateway's connections before the load")?;
    auditor_up.context("the auditor's connection before the load")?;
    let drive = Drive::start(
        SocketAddr::from(([127, 0, 0, 1], setup.milter_port)),
        Load {
            messages: MESSAGES,
            connections: CONNECTIONS,
            rate: RATE,
            per_session: 5,
            prefix: prefix.to_owned(),
        },
    );
    drive
        .wait_done((MESSAGES as f64 * KILL_AT) as usize)
        .await?;
    let (node, why) = victim(lab).await?;
    let gone = host_port(&setup.broker_urls[node - 1]);
    let (gateway_on_1, auditor_on_1) = (on_node1(&gateway_log), on_node1(&auditor_log));
    let mut notes = vec![format!(
        "gateway has {gateway_on_1} and auditor {auditor_on_1} connections on node 1; killing \
         node {node} ({gone}, {why}) {:.1} s into the load",
        MESSAGES as f64 * KILL_AT / RATE
    )];
    let (gateway_before, auditor_before) = (
        connections(&gateway_log).len(),
        connections(&auditor_log).len(),
    );
    let killed = Instant::now();
    let spool_at_kill = spooled(&setup);
    match fault {
        Fault::Kill9 => lab.cluster(move |c| c.kill9(Node::Rabbit, node)).await?,
        Fault::Partition => lab.cluster(move |c| c.isolate_rabbit(node)).await?,
    }
    let mut failover = String::new();
    if why.starts_with("leader") {
        // the fault bites only if the queue gets a new leader on one of the other two
        let ask = if node == 1 { 2 } else { 1 };
        let end = Instant::now() + FAILOVER;
        let leader = loop {
            match lab.cluster(move |c| c.leader(ask, AUDIT_QUEUE)).await {
                Ok(leader) if leader != node => break leader,
                _ if Instant::now() >= end => {
                    bail!("{AUDIT_QUEUE} has no leader but node {node} {FAILOVER:?} after the kill")
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        failover = format!(
            "node {leader} leads {AUDIT_QUEUE} {:.1} s after the kill",
            killed.elapsed().as_secs_f64()
        );
    }
    if node == 1 {
        // every connection was on the killed node: each must move to another
        let (g, a) = tokio::try_join!(
            reconnected(&gateway_log, gateway_before, gateway_on_1.max(1), &gone),
            reconnected(&auditor_log, auditor_before, auditor_on_1.max(1), &gone),
        )?;
        failover = format!(
            "{failover}{}failover: gateway on another node {:.1} s after the kill, auditor {:.1} s",
            if failover.is_empty() { "" } else { "; " },
            g.as_secs_f64(),
            a.as_secs_f64()
        );
    }
    if fault == Fault::Partition {
        // the majority must have seen it go (net_ticktime 8 s) for the partition to be one
        let ask = if node == 1 { 2 } else { 1 };
        let end = Instant::now() + FAILOVER;
        while lab.cluster(move |c| c.running_seen_by(ask)).await.ok() != Some(2) {
            if Instant::now() >= end {
                bail!("node {ask} still sees node {node} running {FAILOVER:?} after the cut");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        notes.push(format!(
            "node {ask} sees node {node} gone {:.1} s after the cut",
            killed.elapsed().as_secs_f64()
        ));
    }
    // the node comes back while the load goes on (or after it)
    let restart = tokio::spawn({
        let cluster = lab.cluster.clone();
        async move {
            tokio::task::spawn_blocking(move || match fault {
                Fault::Kill9 => cluster.restart(Node::Rabbit, node),
                Fault::Partition => heal_and_rejoin(&cluster, node),
            })
            .await?
        }
    });
    let sent = drive.finish().await;
    let restart_wait = Instant::now();
    restart.await??;
    notes.push(format!(
        "node {node} back in the cluster {:.1} s after the fault ({:.1} s after the load)",
        killed.elapsed().as_secs_f64(),
        restart_wait.elapsed().as_secs_f64()
    ));
    drain(&setup, &db.pool, &sent).await?;
    let mut books = account::account(name, &db.pool, &sent).await?;
    notes.push(answers_note(&sent, killed, spool_at_kill, &failover));
    let (gateway_after, auditor_after) = (
        connections(&gateway_log).len(),
        connections(&auditor_log).len(),
    );
    notes.push(format!(
        "broker connections made after the kill: gateway {}, auditor {}",
        gateway_after - gateway_before,
        auditor_after - auditor_before
    ));
    books.notes = notes;
    books.notes.push(metrics_note(&gateway, &auditor));
    books.notes.push(format!(
        "{WORKERS} check-workers (quotas): {} checks timed out at the gateway, {} messages \
         found no broker",
        gateway
            .metric("cluegetter_gateway_module_timeouts_total{module=\"quotas\"}")
            .unwrap_or(-1.0),
        gateway
            .metric("cluegetter_gateway_broker_unavailable_total")
            .unwrap_or(-1.0)
    ));
    // A message that finds the link down waits for the next node (up to its module's
    // timeout), so a node killed must cost no message its verdict.
    let no_broker = gateway.metric("cluegetter_gateway_broker_unavailable_total")?;
    gateway.stop().await;
    for worker in &mut workers {
        worker.stop().await;
    }
    auditor.stop().await;
    // (A partition is another matter: until the other nodes notice it, after net_ticktime,
    // RabbitMQ 3's metadata operations stall, declaring a reply queue among them; messages
    // that come meanwhile may find no link in time. What must hold there is the books.)
    if fault == Fault::Kill9 && no_broker > 0.0 {
        bail!("{no_broker} messages found no broker: the gateway did not wait for the next node");
    }
    Ok(books)
}

/// The quotas module on every message, counting the client address; no quota row, so every
/// check is a round trip to a worker and a look in the database, and everything is permitted.
const QUOTAS: &str = "[quotas]\nenabled = true\n";
/// Worker processes in the broker scenarios.
const WORKERS: usize = 4;

/// Waits until the auditor has brought the schema up to date (a statement beside a
/// migration's DDL on Galera is aborted; the modules need the tables).
async fn migrated(setup: &Setup) -> Result<()> {
    let log = setup.dir.join("auditor.log");
    let end = Instant::now() + FAILOVER;
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("database schema is up to date")
    {
        if Instant::now() >= end {
            bail!("the auditor did not migrate the database within {FAILOVER:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// `count` check-workers processes, each with a setup of its own (directory, metrics port,
/// `[database] url` = `database_urls(i)`), and waits until all consume the quotas queue.
async fn start_workers(
    setup: &Setup,
    count: usize,
    database_urls: impl Fn(usize) -> Vec<String>,
) -> Result<Vec<Process>> {
    let mut workers = Vec::new();
    // a port free now may be one the setup chose but nothing listens on yet (the milter's)
    let mut taken = vec![
        setup.milter_port,
        setup.gateway_metrics,
        setup.auditor_metrics,
        setup.auditor_web,
        setup.worker_metrics,
    ];
    for i in 0..count {
        let mut own = setup.clone();
        own.dir = setup.dir.join(format!("worker{i}"));
        own.worker_metrics = loop {
            let port = free_port()?;
            if !taken.contains(&port) {
                taken.push(port);
                break port;
            }
        };
        own.database_urls = database_urls(i);
        own.write_config()?;
        workers.push(Process::start(Kind::Worker, &own).await?);
    }
    let queue = platform::broker::check_queue("quotas");
    let end = Instant::now() + FAILOVER;
    loop {
        // a passive declare of a queue not there yet closes the channel: a new link each time
        let link = BrokerLink::open(&setup.broker_urls).await?;
        let consumers = link.consumers(&queue).await.unwrap_or(0);
        link.close().await;
        if consumers >= count as u32 {
            return Ok(workers);
        }
        if Instant::now() >= end {
            bail!("{count} consumers on {queue} not there within {FAILOVER:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Whether the message was tempfailed: the gateway answers with a reply code (`451 4.7.1 …`),
/// or a plain tempfail.
fn is_tempfail(sent: &Sent) -> bool {
    matches!(sent.reply.as_deref(), Some(r) if r == "tempfail" || r.starts_with('4'))
}

/// Tempfails, and the longest time without an answer after the kill.
fn answers_note(sent: &[Sent], killed: Instant, spool_at_kill: usize, failover: &str) -> String {
    let tempfailed = sent.iter().filter(|s| is_tempfail(s)).count();
    let tempfailed_after = sent
        .iter()
        .filter(|s| is_tempfail(s))
        .filter(|s| s.answered_at.is_some_and(|at| at >= killed))
        .count();
    let mut times: Vec<Instant> = sent.iter().filter_map(|s| s.answered_at).collect();
    times.sort();
    let first_permit = sent
        .iter()
        .filter(|s| matches!(s.reply.as_deref(), Some("continue" | "accept")))
        .filter_map(|s| s.answered_at)
        .filter(|at| *at >= killed)
        .min()
        .map_or(-1.0, |at| (at - killed).as_secs_f64());
    let mut gap = Duration::ZERO;
    let mut previous = killed;
    for at in times.iter().filter(|at| **at >= killed) {
        gap = gap.max(*at - previous);
        previous = *at;
    }
    format!(
        "{failover}{}tempfailed {tempfailed} ({tempfailed_after} after the kill); first permit \
         {first_permit:.2} s after the kill; longest pause in answers after it {:.2} s; \
         {spool_at_kill} events in the spool at the kill",
        if failover.is_empty() { "" } else { "; " },
        gap.as_secs_f64()
    )
}

fn metrics_note(gateway: &Process, auditor: &Process) -> String {
    let g = |name: &str| gateway.metric(name).unwrap_or(-1.0);
    let a = |name: &str| auditor.metric(name).unwrap_or(-1.0);
    format!(
        "last gateway: spooled {} published {} confirmed {} publish-retries {}; last auditor: \
         committed {} duplicates-skipped {} batch-failures {}",
        g("cluegetter_gateway_spooled_total"),
        g("cluegetter_gateway_audit_published_total"),
        g("cluegetter_gateway_audit_confirmed_total"),
        g("cluegetter_gateway_audit_publish_retries_total"),
        a("cluegetter_auditor_events_committed_total"),
        a("cluegetter_auditor_duplicates_skipped_total"),
        a("cluegetter_auditor_batch_failures_total"),
    )
}

/// Heals the isolation of `node` and waits until the other nodes see it running again (it
/// resumes from its pause and rejoins).
fn heal_and_rejoin(cluster: &Cluster, node: usize) -> Result<()> {
    cluster.heal(node)?;
    let ask = if node == 1 { 2 } else { 1 };
    let end = std::time::Instant::now() + FAILOVER;
    while cluster.running_seen_by(ask).ok() != Some(3) {
        if std::time::Instant::now() >= end {
            bail!("node {node} not running again {FAILOVER:?} after the heal");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

/// `kill -9` of node 1, the one every process connects to first: they all move on.
pub async fn node_kill(lab: &mut Lab) -> Result<Accounting> {
    killed_node_run(lab, "rabbit-node-kill9", "CNK", Fault::Kill9, async |_| {
        Ok((1, "where the processes are".to_owned()))
    })
    .await
}

/// Node 1, the one every process connects to first, cut off by a partition: its connections
/// go silent (no close comes through), the processes find them dead by the AMQP heartbeat and
/// move on; the node pauses (`pause_minority`), is healed, and rejoins.
pub async fn partition(lab: &mut Lab) -> Result<Accounting> {
    killed_node_run(
        lab,
        "rabbit-partition",
        "CNP",
        Fault::Partition,
        async |_| Ok((1, "where the processes are; cut off by iptables".to_owned())),
    )
    .await
}

/// `kill -9` of the node that leads the archive queue: a new leader is elected among the
/// other two; the processes see channel errors and reconnect where needed.
pub async fn leader_kill(lab: &mut Lab) -> Result<Accounting> {
    killed_node_run(
        lab,
        "audit-leader-kill9",
        "CLK",
        Fault::Kill9,
        async |lab| {
            let leader = lab.cluster(|c| c.leader(2, AUDIT_QUEUE)).await?;
            Ok((leader, format!("leader of {AUDIT_QUEUE}")))
        },
    )
    .await
}

/// What the auditor logs when it moved to another database node (platform::database).
const MOVED: &str = "moved to another database node";

/// `kill -9` of the Galera node the auditor writes to (node 1, the first of `[database] url`)
/// mid-run: the auditor moves to another node, the killed one rejoins, and every answered
/// message has exactly one row (counted on node 2).
pub async fn galera_kill(lab: &mut Lab) -> Result<Accounting> {
    let name = "galera-node-kill9";
    let database = format!("cg_galera_{}", std::process::id());
    let urls = lab.cluster.database_urls(&database);
    let setup = lab.setup_with(name, urls.clone()).await?;
    // the auditor creates the database and its tables on node 1 (`migrate` at start)
    // the gateway first (see `killed_node_run`)
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    let auditor_log = setup.dir.join("auditor.log");
    let pool = archive_on(&urls[1], "message").await?;
    let drive = Drive::start(
        SocketAddr::from(([127, 0, 0, 1], setup.milter_port)),
        Load {
            messages: MESSAGES,
            connections: CONNECTIONS,
            rate: RATE,
            per_session: 5,
            prefix: "CGK".to_owned(),
        },
    );
    drive
        .wait_done((MESSAGES as f64 * KILL_AT) as usize)
        .await?;
    let committed_at_kill = auditor
        .metric("cluegetter_auditor_events_committed_total")
        .unwrap_or(-1.0);
    let killed = Instant::now();
    lab.cluster(|c| c.kill9(Node::Galera, 1)).await?;
    // the auditor finds node 1 gone at its next batch and moves on
    let moved = loop {
        let log = std::fs::read_to_string(&auditor_log).unwrap_or_default();
        if let Some(line) = log.lines().find(|line| line.contains(MOVED)) {
            break (killed.elapsed(), line.to_owned());
        }
        if killed.elapsed() >= FAILOVER {
            bail!("the auditor did not move to another database node within {FAILOVER:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // the failover target (a list's acquire gives up after 1.5 s, then the probe)
    if moved.0 > Duration::from_secs(5) {
        bail!(
            "the auditor moved to another database node {:.1} s after the kill (target 5 s)",
            moved.0.as_secs_f64()
        );
    }
    let restart = tokio::spawn({
        let cluster = lab.cluster.clone();
        async move { tokio::task::spawn_blocking(move || cluster.restart(Node::Galera, 1)).await? }
    });
    let sent = drive.finish().await;
    let restart_wait = Instant::now();
    restart.await??;
    let mut notes = vec![
        format!(
            "killed Galera node 1 (where the auditor writes) {:.1} s into the load, with {} \
             events committed; the auditor moved {:.1} s after the kill: {}",
            MESSAGES as f64 * KILL_AT / RATE,
            committed_at_kill,
            moved.0.as_secs_f64(),
            moved.1.trim()
        ),
        format!(
            "Galera node 1 back in the cluster {:.1} s after the kill ({:.1} s after the load)",
            killed.elapsed().as_secs_f64(),
            restart_wait.elapsed().as_secs_f64()
        ),
    ];
    drain(&setup, &pool, &sent).await?;
    let mut books = account::account(name, &pool, &sent).await?;
    notes.push(answers_note(&sent, killed, 0, ""));
    books.notes = notes;
    books.notes.push(metrics_note(&gateway, &auditor));
    gateway.stop().await;
    auditor.stop().await;
    pool.close().await;
    Ok(books)
}

/// Quota race across Galera nodes: runs, messages per run, recipients per message, curb.
const QUOTA_RUNS: usize = 5;
const QUOTA_MESSAGES: usize = 300;
const QUOTA_CURB: usize = 200;
/// Every message of the load has two recipients in `mailbox.test` (`../faults/client.rs`).
const QUOTA_UNITS_PER_MESSAGE: usize = 2;
const QUOTA_WORKERS: usize = 4;
const QUOTA_CLIENTS: usize = 8;

/// Quotas stay exact across Galera nodes: the quota module on four `check-workers` processes,
/// two writing to Galera node 1 and two to node 2 (`[database] url` in another order), eight
/// SMTP clients at once, a curb of 200 recipients an hour for the recipient domain (100
/// messages of two recipients): exactly 100 messages are permitted and 200 units kept, every
/// run. Two nodes' transactions on one quota row conflict at commit (Galera certification,
/// 1213); the store tries them again.
pub async fn galera_quota_race(lab: &mut Lab) -> Result<Accounting> {
    let name = "galera-quota-race";
    let database = format!("cg_quota_{}", std::process::id());
    let urls = lab.cluster.database_urls(&database);
    let mut setup = lab.setup_with(name, urls.clone()).await?;
    setup.extra = "[quotas]\n\
                   enabled = true\n\
                   account-client-address = false\n\
                   account-recipient-domain = true\n"
        .to_owned();
    setup.write_config()?;
    // the gateway first (see `killed_node_run`)
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    migrated(&setup).await?;
    let (pool1, pool2) = (
        archive_on(&urls[0], "quota").await?,
        archive_on(&urls[1], "quota").await?,
    );
    sqlx::query("INSERT INTO instance (name) VALUES ('faults')")
        .execute(&pool1)
        .await?;
    sqlx::query(
        "INSERT INTO quota_class (cluegetter_instance, name) \
         SELECT id, 'race' FROM instance WHERE name = 'faults'",
    )
    .execute(&pool1)
    .await?;
    sqlx::query("INSERT INTO quota_profile (class, name) SELECT id, 'race' FROM quota_class")
        .execute(&pool1)
        .await?;
    sqlx::query("INSERT INTO quota_profile_period (profile, period, curb) SELECT id, 3600, ? FROM quota_profile")
        .bind(u32::try_from(QUOTA_CURB)?)
        .execute(&pool1)
        .await?;
    sqlx::query(
        "INSERT INTO quota (selector, value, profile) \
         SELECT 'recipient_domain', 'mailbox.test', id FROM quota_profile",
    )
    .execute(&pool1)
    .await?;

    // two workers on node 1 first, two on node 2 first
    let mut workers = start_workers(&setup, QUOTA_WORKERS, |i| {
        let mut urls = urls.clone();
        if i % 2 == 1 {
            urls.swap(0, 1);
        }
        urls
    })
    .await?;
    reconnected(&setup.dir.join("gateway.log"), 0, 1, "no node")
        .await
        .context("the gateway's broker connection before the load")?;

    let expected = QUOTA_CURB / QUOTA_UNITS_PER_MESSAGE;
    let mut all_sent = Vec::new();
    let mut notes = Vec::new();
    let mut wrong = Vec::new();
    // CG_QUOTA_RUNS=20: the bench length (CI runs QUOTA_RUNS)
    let runs = std::env::var("CG_QUOTA_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(QUOTA_RUNS);
    for run in 0..runs {
        let begun = Instant::now();
        let sent = Drive::start(
            SocketAddr::from(([127, 0, 0, 1], setup.milter_port)),
            Load {
                messages: QUOTA_MESSAGES,
                connections: QUOTA_CLIENTS,
                rate: 1000.0,
                per_session: 5,
                prefix: format!("CQR{run}"),
            },
        )
        .finish()
        .await;
        let took = begun.elapsed();
        let permitted = sent
            .iter()
            .filter(|s| matches!(s.reply.as_deref(), Some("continue" | "accept")))
            .count();
        let tempfailed = sent.iter().filter(|s| is_tempfail(s)).count();
        // every reservation settled (the audit events reach the workers' settle queue)
        let (kept, unsettled) = wait_settled(&pool2).await?;
        let note = format!(
            "run {run}: {QUOTA_MESSAGES} messages from {QUOTA_CLIENTS} clients in {:.1} s: \
             {permitted} permitted, {tempfailed} tempfailed, {kept} units kept (curb \
             {QUOTA_CURB}), {unsettled} reservations unsettled",
            took.as_secs_f64()
        );
        crate::report(&note);
        if permitted != expected || kept != QUOTA_CURB as u64 || unsettled != 0 {
            wrong.push(note.clone());
        }
        notes.push(note);
        sqlx::query("DELETE FROM quota_message")
            .execute(&pool1)
            .await?;
        all_sent.extend(sent);
    }
    let conflicts: f64 = workers
        .iter()
        .map(|w| {
            w.metric("cluegetter_database_conflict_retries_total{what=\"quota transaction\"}")
                .unwrap_or(0.0)
        })
        .sum();
    notes.push(format!("conflict retries in the workers: {conflicts}"));
    drain(&setup, &pool2, &all_sent).await?;
    let mut books = account::account(name, &pool2, &all_sent).await?;
    books.notes = notes;
    gateway.stop().await;
    for worker in &mut workers {
        worker.stop().await;
    }
    auditor.stop().await;
    pool1.close().await;
    pool2.close().await;
    if !wrong.is_empty() {
        bail!("quotas not exact across Galera nodes: {}", wrong.join("; "));
    }
    Ok(books)
}

/// A small pool on the Galera node at `url`, once the archive there has `table` (the auditor
/// migrates on node 1; Galera replicates the schema).
async fn archive_on(url: &str, table: &'static str) -> Result<MySqlPool> {
    test_support::eventually(FAILOVER, "the archive on a Galera node", || async move {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(2)
            .connect(url)
            .await
            .ok()?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT 1 FROM {table} LIMIT 1"
        )))
        .execute(&pool)
        .await
        .ok()?;
        Some(pool)
    })
    .await
}

/// Waits until no reservation is left unsettled (at most 30 s); the units kept and the
/// reservations left unsettled.
async fn wait_settled(pool: &MySqlPool) -> Result<(u64, u64)> {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let (settled, reserved, kept): (u64, u64, u64) = sqlx::query_as(
            "SELECT CAST((SELECT COUNT(*) FROM quota_settlement) AS UNSIGNED), \
                    CAST(COALESCE(SUM(status = 'reserved'), 0) AS UNSIGNED), \
                    CAST(COALESCE(SUM(IF(status = 'kept', units, 0)), 0) AS UNSIGNED) \
             FROM quota_message",
        )
        .fetch_one(pool)
        .await?;
        if (reserved == 0 && settled > 0) || Instant::now() >= end {
            return Ok((kept, reserved));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
