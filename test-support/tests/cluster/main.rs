//! Fault tests of the audit path on a real three-node RabbitMQ cluster (`scripts/cluster.sh`,
//! quorum queues) and a three-node Galera cluster: an answered message has exactly one audit
//! record when a broker node or a database node dies.
//!
//! The test starts both clusters, runs the real `milter-gateway` and `auditor` binaries with
//! `[broker] url` = the three RabbitMQ nodes, drives a few thousand messages at the gateway as
//! Postfix would, `kill -9`s a node mid-run, starts it again, waits for the pipeline to drain,
//! and does the books with the fault test's modules (`../faults/`):
//!
//! - `rabbit-node-kill9`: the node every process connects to first (node 1); four
//!   `check-workers` serve the quotas module in both broker scenarios, so every message needs a
//!   check over the broker too;
//! - `rabbit-partition`: node 1 cut off from the other nodes and every client by iptables
//!   (both directions), kept away until the others see it gone and it paused
//!   (`pause_minority`), then healed; the processes find their silent connections dead by the
//!   AMQP heartbeat (3 s) and move on;
//! - `audit-leader-kill9`: the node that leads the quorum queue `cluegetter.audit.archive`;
//! - `galera-node-kill9`: with `[database] url` = the three Galera nodes, the node the auditor
//!   writes to (node 1); the books are done on node 2;
//! - `galera-quota-race`: quotas exact across Galera nodes, four `check-workers` processes (two
//!   writing to node 1, two to node 2) and eight clients against one curb, five runs
//!   (`CG_QUOTA_RUNS=20` for the longer bench).
//!
//! - `cluster-bench`, only when named in `CG_CLUSTER_SCENARIOS`: the same flood on the single
//!   node and on the clusters, interleaved rounds, throughput and answer-time medians
//!   (`scenarios/bench.rs`).
//!
//! In the first two the archive is a fresh database on the shared MariaDB at 127.0.0.1:3306.
//!
//! It prints, per scenario, how many messages were tempfailed and how long the failover took
//! (the kill to the gateway's and auditor's "connected to RabbitMQ" on another node, and the
//! longest pause in answers). Needs root, `scripts/start-peers.sh cluster` and
//! `cargo build --bins` first (`scripts/test.sh` does both); about three minutes.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../faults/account.rs"]
mod account;
#[allow(dead_code)]
#[path = "../faults/client.rs"]
mod client;
#[allow(dead_code)]
#[path = "../faults/processes.rs"]
mod processes;
#[allow(dead_code)]
#[path = "../faults/services.rs"]
mod services;

mod cluster;
mod scenarios;

use std::io::Write as _;

use account::Accounting;
use cluster::Cluster;

/// Longest a scenario may take (they take under a minute).
const SCENARIO_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Straight to stderr: the harness captures `println!`, and the books are the point.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answered_message_is_lost_or_duplicated_when_a_broker_node_dies() {
    test_support::init_test_logging();
    let root = std::env::temp_dir().join(format!("cgcluster-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let started = std::time::Instant::now();
    let cluster = tokio::task::spawn_blocking({
        let dir = root.join("cluster");
        move || Cluster::start(dir)
    })
    .await
    .unwrap()
    .expect("scripts/cluster.sh start (as root, after scripts/start-peers.sh cluster)");
    report(&format!(
        "cluster tests: three RabbitMQ nodes {:?} under {} (up in {:.1} s)",
        cluster.broker_urls(),
        root.display(),
        started.elapsed().as_secs_f64()
    ));

    let mut lab = scenarios::Lab::new(root.clone(), cluster);
    let mut books: Vec<Accounting> = Vec::new();
    let mut failure = None;
    // CG_CLUSTER_SCENARIOS=name,name runs only those (while working on one; CI runs all)
    let only = std::env::var("CG_CLUSTER_SCENARIOS").ok();
    let chosen = [
        "rabbit-node-kill9",
        "rabbit-partition",
        "audit-leader-kill9",
        "galera-node-kill9",
        "galera-quota-race",
    ]
    .into_iter()
    // the bench (cluster against single node) only when asked for by name
    .chain(
        only.as_deref()
            .is_some_and(|o| o.split(',').any(|o| o == "cluster-bench"))
            .then_some("cluster-bench"),
    )
    .filter(|name| {
        only.as_deref()
            .is_none_or(|only| only.split(',').any(|o| o == *name))
    });
    for scenario in chosen {
        let begun = std::time::Instant::now();
        let run = async {
            match scenario {
                "rabbit-node-kill9" => scenarios::node_kill(&mut lab).await,
                "rabbit-partition" => scenarios::partition(&mut lab).await,
                "audit-leader-kill9" => scenarios::leader_kill(&mut lab).await,
                "galera-node-kill9" => scenarios::galera_kill(&mut lab).await,
                "cluster-bench" => scenarios::cluster_bench(&mut lab).await,
                _ => scenarios::galera_quota_race(&mut lab).await,
            }
        };
        let result = tokio::time::timeout(SCENARIO_LIMIT, run)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("did not finish in {SCENARIO_LIMIT:?}")));
        match result {
            Ok(accounting) => {
                report(&format!(
                    "{accounting}\n{:<22} ({:.1} s)",
                    "",
                    begun.elapsed().as_secs_f64()
                ));
                books.push(accounting);
            }
            Err(error) => {
                report(&format!("{scenario:<22} could not run: {error:#}"));
                failure = Some(format!("{scenario}: {error:#}"));
                break;
            }
        }
    }

    let broken: Vec<&Accounting> = books.iter().filter(|b| !b.ok()).collect();
    let keep = failure.is_some() || !broken.is_empty();
    // the cluster stops here whatever happened (and on a panic, when `lab` is dropped)
    let stopping = std::time::Instant::now();
    tokio::task::spawn_blocking(move || drop(lab))
        .await
        .unwrap();
    report(&format!(
        "cluster tests took {:.1} s (stopping the cluster {:.1} s)",
        started.elapsed().as_secs_f64(),
        stopping.elapsed().as_secs_f64()
    ));
    if keep {
        report(&format!(
            "logs kept under {} (cluster/rabbitN/log, gateway.log and auditor.log per scenario)",
            root.display()
        ));
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    assert!(failure.is_none(), "a scenario could not run: {failure:?}");
    assert!(
        broken.is_empty(),
        "lost or duplicated audit records:\n{}",
        broken
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
