//! The cluster against the single node, side by side: the same flood through the real gateway,
//! auditor and four `check-workers` (quotas, so every message needs a check over the broker and
//! a database write), once on the system's RabbitMQ and MariaDB at 127.0.0.1 and once on the
//! three-node RabbitMQ cluster (quorum queues) and the three-node Galera cluster, in
//! interleaved rounds. Prints each round and the medians: answers per second (first end of
//! message to last answer), the answer time's p50 and p99 (end of message to the final reply),
//! and how long the archive took to hold every answered message after the last answer.
//!
//! Not part of the default scenarios (CI): `CG_CLUSTER_SCENARIOS=cluster-bench`, optionally
//! `CG_BENCH_ROUNDS` (3) and `CG_BENCH_MESSAGES` (3000).

use std::net::SocketAddr;

use anyhow::Result;
use test_support::{TestBroker, TestDb};

use super::*;

/// One round's figures.
#[derive(Clone, Copy, Debug)]
struct Figures {
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    archived_after_s: f64,
    not_accepted: usize,
}

fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(default)
}

pub async fn cluster_bench(lab: &mut Lab) -> Result<Accounting> {
    let rounds = env_number("CG_BENCH_ROUNDS", 3);
    let messages = env_number("CG_BENCH_MESSAGES", 3000);
    let mut single = Vec::new();
    let mut cluster = Vec::new();
    let mut notes = Vec::new();
    let mut books = Accounting {
        scenario: "cluster-bench".to_owned(),
        ..Accounting::default()
    };
    for round in 1..=rounds {
        for on_cluster in [false, true] {
            let (figures, accounting) = bench_round(lab, on_cluster, round, messages).await?;
            let what = if on_cluster { "cluster" } else { "single " };
            let line = format!(
                "round {round} {what}: {:.0} msg/s, answer p50 {:.1} ms p99 {:.1} ms, archived \
                 {:.1} s after the last answer, {} not accepted; lost {} duplicated {}",
                figures.per_second,
                figures.p50_ms,
                figures.p99_ms,
                figures.archived_after_s,
                figures.not_accepted,
                accounting.lost,
                accounting.duplicated
            );
            crate::report(&format!("{:<22} {line}", ""));
            notes.push(line);
            books.sent += accounting.sent;
            books.answered += accounting.answered;
            books.rows += accounting.rows;
            books.lost += accounting.lost;
            books.duplicated += accounting.duplicated;
            books.uuid_mismatch += accounting.uuid_mismatch;
            books.phantom += accounting.phantom;
            books.not_accepted += accounting.not_accepted;
            if on_cluster {
                cluster.push(figures);
            } else {
                single.push(figures);
            }
        }
    }
    let median = |figures: &[Figures], field: fn(&Figures) -> f64| {
        let mut values: Vec<f64> = figures.iter().map(field).collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let (s_rate, c_rate) = (
        median(&single, |f| f.per_second),
        median(&cluster, |f| f.per_second),
    );
    notes.push(format!(
        "medians of {rounds} rounds × {messages} messages, 20 connections, quotas on 4 workers: \
         single {s_rate:.0} msg/s (p50 {:.1} ms, p99 {:.1} ms, archived +{:.1} s); cluster \
         {c_rate:.0} msg/s (p50 {:.1} ms, p99 {:.1} ms, archived +{:.1} s); cluster/single \
         throughput {:.2}",
        median(&single, |f| f.p50_ms),
        median(&single, |f| f.p99_ms),
        median(&single, |f| f.archived_after_s),
        median(&cluster, |f| f.p50_ms),
        median(&cluster, |f| f.p99_ms),
        median(&cluster, |f| f.archived_after_s),
        c_rate / s_rate
    ));
    books.notes = notes;
    Ok(books)
}

/// One run of the flood on the single node or on the cluster.
async fn bench_round(
    lab: &mut Lab,
    on_cluster: bool,
    round: usize,
    messages: usize,
) -> Result<(Figures, Accounting)> {
    let name = format!(
        "bench-{}-{round}",
        if on_cluster { "cluster" } else { "single" }
    );
    // keep what the single node needs alive for the round
    let mut _single: Option<(TestBroker, TestDb)> = None;
    let (mut setup, archive_url) = if on_cluster {
        let database = format!("cg_bench_{}_{round}", std::process::id());
        let urls = lab.cluster.database_urls(&database);
        let setup = lab.setup_with(&name, urls.clone()).await?;
        (setup, urls[0].clone())
    } else {
        let broker = TestBroker::new()?;
        let db = TestDb::empty().await?;
        let mut setup = lab.setup_with(&name, vec![db.url.clone()]).await?;
        setup.broker_urls = vec![broker.url.clone()];
        let url = db.url.clone();
        _single = Some((broker, db));
        (setup, url)
    };
    setup.extra = QUOTAS.to_owned();
    setup.write_config()?;
    let mut gateway = Process::start(Kind::Gateway, &setup).await?;
    let mut auditor = Process::start(Kind::Auditor, &setup).await?;
    migrated(&setup).await?;
    let mut workers = start_workers(&setup, WORKERS, |_| setup.database_urls.clone()).await?;
    let pool = archive_on(&archive_url, "message").await?;

    let sent = Drive::start(
        SocketAddr::from(([127, 0, 0, 1], setup.milter_port)),
        Load {
            messages,
            connections: CONNECTIONS,
            rate: 1e9,
            per_session: 5,
            prefix: format!("B{}{round}", if on_cluster { 'C' } else { 'S' }),
        },
    )
    .finish()
    .await;
    let last_answer = sent.iter().filter_map(|s| s.answered_at).max();
    let first_eom = sent.iter().filter_map(|s| s.eom_at).min();
    drain(&setup, &pool, &sent).await?;
    let archived_after_s = last_answer.map_or(f64::NAN, |at| at.elapsed().as_secs_f64() - 2.0);
    let books = account::account(&name, &pool, &sent).await?;

    let mut times: Vec<f64> = sent
        .iter()
        .filter_map(|s| Some((s.answered_at? - s.eom_at?).as_secs_f64() * 1000.0))
        .collect();
    times.sort_by(f64::total_cmp);
    let quantile = |q: f64| {
        times
            .get(((times.len() as f64 * q) as usize).min(times.len().saturating_sub(1)))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let answered = sent.iter().filter(|s| s.answered()).count();
    let span = match (first_eom, last_answer) {
        (Some(first), Some(last)) if last > first => (last - first).as_secs_f64(),
        _ => f64::NAN,
    };
    let figures = Figures {
        per_second: answered as f64 / span,
        p50_ms: quantile(0.5),
        p99_ms: quantile(0.99),
        archived_after_s: archived_after_s.max(0.0),
        not_accepted: books.not_accepted,
    };
    gateway.stop().await;
    for worker in &mut workers {
        worker.stop().await;
    }
    auditor.stop().await;
    pool.close().await;
    Ok((figures, books))
}
