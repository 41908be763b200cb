//! How long a reputation check takes with the counters of a big archive: this program fills a
//! database of its own with synthetic archived messages (default 1 000 000 over 30 days, as
//! the auditor's search bench fills them: MariaDB's SEQUENCE engine, 60 000 client addresses in
//! 20 000 /24s, senders in 2 000 domains, every tenth message with one of 500 SASL logins, 70 %
//! permitted, 20 % rejected, 10 % tempfailed), then derives from them the `reputation_count`
//! rows the auditor would have written (one per factor value and day), and times whole checks
//! (`Module::check`: the factor values, the one indexed statement, the decision) for random
//! clients of the archive with a SASL login (so every factor is judged and no SPF lookup is
//! made): one at a time, and `CONCURRENCY` in flight. Prints p50/p99; the target is p99 ≤ 5 ms.
//!
//! A plain `SELECT 1` round trip is timed the same way beside them, as the floor the machine
//! gives any statement (on a shared, loaded machine the tail is mostly the scheduler's).
//!
//! `cargo bench -p check-workers --bench reputation` (optionally `-- <messages>`; `-- keep`
//! keeps the filled database and prints its URL; `REPUTATION_BENCH_DATABASE=<that URL>` times
//! the checks on it again without filling). Uses the local MariaDB. Not in CI.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use check_workers::module::Module as _;
use check_workers::modules::reputation::Reputation;
use chrono::Utc;
use futures::StreamExt as _;
use platform::config::Config;
use sqlx::AssertSqlSafe;
use test_support::TestDb;
use wire::{Action, CheckRequest, Envelope, MessageId, SessionInfo, WIRE_VERSION};

const DEFAULT_MESSAGES: u64 = 1_000_000;
const CHUNK: u64 = 50_000;
const DAYS: u64 = 30;
const CHECKS: usize = 20_000;
const CONCURRENCY: usize = 32;

/// Statements run per chunk `[a, b]` of message numbers; `{a}`, `{b}`, `{n}` and `{span}`
/// (seconds) are replaced by numbers, never by input. The sessions and messages of the
/// auditor's search bench (no headers, recipients or results: the check never reads them).
const FILL: &[&str] = &[
    "INSERT INTO session (id, cluegetter_instance, cluegetter_client, date_connect, ip, ip_bin, \
     port, reverse_dns, helo, sasl_username) \
     SELECT UNHEX(LPAD(HEX(seq), 32, '0')), 1, 1, \
       UTC_TIMESTAMP(6) - INTERVAL (seq * {span} DIV {n}) SECOND - INTERVAL 2 SECOND, \
       @ip := CONCAT('10.', (seq * 7919) MOD 20000 DIV 256, '.', (seq * 7919) MOD 20000 MOD 256, '.', 1 + seq MOD 3), \
       INET6_ATON(@ip), 40000, 'client.example', 'helo.example', \
       IF(seq MOD 10 = 0, CONCAT('user', seq MOD 500), '') \
     FROM seq_{a}_to_{b}",
    "INSERT INTO message (id, session, queue_id, mta_hostname, date, body_size, body_hash, \
     messageId, subject, sender_local, sender_domain, rcpt_count, verdict, applied, verdict_msg, \
     rejectScore, rejectScoreThreshold, tempfailScore, tempfailScoreThreshold) \
     SELECT UNHEX(CONCAT('ff', LPAD(HEX(seq), 30, '0'))), UNHEX(LPAD(HEX(seq), 32, '0')), \
       CONCAT('Q', HEX(seq)), 'mx.example', \
       UTC_TIMESTAMP(6) - INTERVAL (seq * {span} DIV {n}) SECOND, 1000 + seq MOD 5000, \
       MD5(seq), CONCAT('<', seq, '@bench.example>'), CONCAT('Subject number ', seq MOD 1000), \
       CONCAT('s', (seq * 31) MOD 50000 DIV 2000), CONCAT('d', (seq * 31) MOD 2000, '.example'), 2, \
       @v := ELT(1 + IF(seq MOD 10 < 7, 0, IF(seq MOD 10 < 9, 2, 1)), 'permit', 'tempfail', 'reject'), \
       @v, '', IF(@v = 'reject', 7.5, 0.5), 5, 0, 8 \
     FROM seq_{a}_to_{b}",
];

/// The counters the auditor would have written for those messages, per factor: `{value}` is
/// the factor's value as an SQL expression over `s` (session) and `m` (message), `{only}` which
/// messages count for it.
const COUNT: &str = "INSERT INTO reputation_count (factor, value, day, messages, rejected, \
     tempfailed, permitted, reject_score) \
     SELECT '{factor}', {value}, DATE(m.date), COUNT(*), SUM(m.verdict = 'reject'), \
       SUM(m.verdict = 'tempfail'), SUM(m.verdict = 'permit'), SUM(m.rejectScore) \
     FROM message m JOIN session s ON s.id = m.session WHERE {only} \
     GROUP BY {value}, DATE(m.date)";

const FACTORS: &[(&str, &str, &str)] = &[
    ("client_address", "s.ip", "TRUE"),
    (
        "client_network",
        "CONCAT(SUBSTRING_INDEX(s.ip, '.', 3), '.0/24')",
        "TRUE",
    ),
    ("sender_domain", "m.sender_domain", "s.sasl_username <> ''"),
    ("sasl_username", "s.sasl_username", "s.sasl_username <> ''"),
];

async fn fill(db: &TestDb, messages: u64) {
    let pool = &db.pool;
    sqlx::raw_sql(
        "INSERT IGNORE INTO instance (id, name) VALUES (1, 'default'); \
         INSERT INTO cluegetter_client (id, hostname, daemon_name) VALUES (1, 'mx.example', 'smtpd')",
    )
    .execute(pool)
    .await
    .unwrap();
    let span = DAYS * 86_400;
    let started = Instant::now();
    let mut a = 1;
    while a <= messages {
        let b = (a + CHUNK - 1).min(messages);
        for statement in FILL {
            let sql = statement
                .replace("{a}", &a.to_string())
                .replace("{b}", &b.to_string())
                .replace("{n}", &messages.to_string())
                .replace("{span}", &span.to_string());
            // numbers only are substituted (see FILL)
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(pool)
                .await
                .unwrap();
        }
        eprint!(
            "\rfilled {b} of {messages} messages ({:.0?})",
            started.elapsed()
        );
        a = b + 1;
    }
    eprintln!();
    for (factor, value, only) in FACTORS {
        let sql = COUNT
            .replace("{factor}", factor)
            .replace("{value}", value)
            .replace("{only}", only);
        // constants only are substituted (see FACTORS)
        sqlx::raw_sql(AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::raw_sql("ANALYZE TABLE session, message, reputation_count")
        .execute(pool)
        .await
        .unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reputation_count")
        .fetch_one(pool)
        .await
        .unwrap();
    eprintln!(
        "counted into {rows} reputation_count rows ({:.0?} in all)",
        started.elapsed()
    );
}

fn request(seq: u64) -> CheckRequest {
    let client = (seq * 7919) % 20_000;
    let ip = format!("10.{}.{}.{}", client / 256, client % 256, 1 + seq % 3);
    CheckRequest {
        version: WIRE_VERSION,
        instance: "default".into(),
        message_id: MessageId::new(),
        queue_id: "4jZB211qk4z6XPl".into(),
        module: "reputation".into(),
        session: SessionInfo {
            session_id: MessageId::new().0,
            connected_at: Utc::now(),
            client_addr: Some(ip.parse().unwrap()),
            client_port: Some(40000),
            client_name: "client.example".into(),
            helo: "helo.example".into(),
            sasl_username: format!("user{}", seq % 500),
            sasl_method: "PLAIN".into(),
            sasl_sender: String::new(),
            tls: None,
            mta_hostname: "mx.example.net".into(),
            daemon_name: "smtpd".into(),
        },
        envelope: Envelope {
            sender: format!("s1@d{}.example", (seq * 31) % 2000),
            recipients: vec!["bob@example.net".into()],
        },
        headers: Vec::new(),
        content: None,
        content_truncated: false,
        sent_at: Utc::now(),
        stage: wire::CheckStage::Eom,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// Runs the checks with `concurrency` in flight: (latencies sorted, elapsed, rejected).
async fn checks(
    module: Arc<Reputation>,
    requests: Vec<CheckRequest>,
    concurrency: usize,
) -> (Vec<Duration>, Duration, usize) {
    let started = Instant::now();
    let results: Vec<(Duration, Action)> = futures::stream::iter(requests)
        .map(|request| {
            let module = module.clone();
            async move {
                let at = Instant::now();
                let result = module.check(&request).await.unwrap();
                (at.elapsed(), result.action)
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let rejected = results.iter().filter(|(_, a)| *a == Action::Reject).count();
    let mut latencies: Vec<Duration> = results.into_iter().map(|(d, _)| d).collect();
    latencies.sort();
    (latencies, elapsed, rejected)
}

fn report(what: &str, latencies: &[Duration], elapsed: Duration) {
    println!(
        "{what:<48} p50 {:>8.2?}  p99 {:>8.2?}  max {:>8.2?}  {:>6.0} checks/s",
        percentile(latencies, 0.5),
        percentile(latencies, 0.99),
        latencies[latencies.len() - 1],
        latencies.len() as f64 / elapsed.as_secs_f64()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and gets no
    // benchmark (the fill takes minutes).
    if !std::env::args().any(|arg| arg == "--bench") {
        println!(
            "reputation: a benchmark; run it with `cargo bench -p check-workers --bench reputation`"
        );
        return;
    }
    let messages: u64 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    let keep = std::env::args().any(|arg| arg == "keep");
    runtime.block_on(run(messages, keep));
}

async fn run(messages: u64, keep: bool) {
    let (url, db) = match std::env::var("REPUTATION_BENCH_DATABASE") {
        Ok(url) => (url, None),
        Err(_) => {
            let db = TestDb::migrated().await.unwrap();
            fill(&db, messages).await;
            (db.url.clone(), Some(db))
        }
    };
    // the floor: a round trip of the smallest statement, one at a time
    let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
    let mut floor = Vec::with_capacity(CHECKS);
    let started = Instant::now();
    for _ in 0..CHECKS {
        let at = Instant::now();
        let _: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&pool)
            .await
            .unwrap();
        floor.push(at.elapsed());
    }
    floor.sort();
    report(
        "SELECT 1, one at a time (the floor)",
        &floor,
        started.elapsed(),
    );
    pool.close().await;
    for window_days in [7u64, 30] {
        let mut config = Config::default();
        config.database.url = url.as_str().into();
        config.database.max_connections = 16;
        config.reputation.enabled = true;
        config.reputation.window = Duration::from_secs(window_days * 86_400);
        // 30 % of the synthetic messages are refused: make some values bad enough to reject
        config.reputation.bad_ratio = 0.3;
        let module = Arc::new(Reputation::new(&config).unwrap());
        // warm-up: the pool's connections, the prepared statements
        let warm: Vec<CheckRequest> = (0..200).map(|i| request(1_000_000 + i)).collect();
        checks(module.clone(), warm, CONCURRENCY).await;

        let one: Vec<CheckRequest> = (0..CHECKS as u64).map(request).collect();
        let (latencies, elapsed, rejected) = checks(module.clone(), one, 1).await;
        report(
            &format!("check, window {window_days}d, one at a time"),
            &latencies,
            elapsed,
        );
        println!("  ({rejected} of {CHECKS} rejected)");
        let many: Vec<CheckRequest> = (0..CHECKS as u64).map(|i| request(i * 13)).collect();
        let (latencies, elapsed, _) = checks(module, many, CONCURRENCY).await;
        report(
            &format!("check, window {window_days}d, {CONCURRENCY} in flight"),
            &latencies,
            elapsed,
        );
    }
    if keep && let Some(db) = db {
        eprintln!("keeping the database: REPUTATION_BENCH_DATABASE={}", db.url);
        std::mem::forget(db);
    }
}
