//! How fast the auditor drains a full queue into MariaDB: this program fills the audit queue
//! of a vhost of its own with realistic events (10 headers, 2 recipients out of a pool of
//! 500 addresses, 3 module results, two messages per SMTP session), then starts the `auditor`
//! binary (release, default `batch-size` 200 and `[database] max-connections` 8) on a database
//! of its own and times it until every event has its `message` row and the queue is empty.
//! Three runs, each on a fresh vhost and database; the median is the figure to quote.
//!
//! `cargo bench -p auditor --bench drain` (optionally `-- <events per run>`, default 20 000).
//! Uses the local RabbitMQ and MariaDB (`scripts/start-peers.sh rabbitmq mariadb`). Not in CI.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use lapin::BasicProperties;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use platform::broker::{AUDIT_EXCHANGE, AUDIT_QUEUE};
use test_support::{TestBroker, TestDb};
use uuid::Uuid;
use wire::{
    Action, AuditEvent, AuditMessage, AuditResult, AuditVerdict, CheckResult, Header, MessageId,
    MilterChanges, SessionInfo, TlsInfo, WIRE_VERSION,
};

const DEFAULT_EVENTS: usize = 20_000;
const RUNS: usize = 3;
const RECIPIENT_POOL: usize = 500;
/// Confirms outstanding while the queue is filled.
const PUBLISH_WINDOW: usize = 1000;

/// The auditor binary; killed when dropped.
struct Auditor(Child);

impl Drop for Auditor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_auditor(broker: &str, database: &str) -> Auditor {
    let child = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .env_remove("CLUEGETTER_CONFIG")
        .env("CLUEGETTER_LOG_LEVEL", "warn")
        .env("CLUEGETTER_AUDITOR__METRICS_LISTEN", "127.0.0.1:0")
        .env("CLUEGETTER_AUDITOR__ARCHIVE_PRUNE_INTERVAL", "0s")
        .env("CLUEGETTER_BROKER__URL", broker)
        .env("CLUEGETTER_DATABASE__URL", database)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    Auditor(child)
}

fn session(n: usize) -> SessionInfo {
    SessionInfo {
        session_id: Uuid::now_v7(),
        connected_at: Utc::now(),
        client_addr: Some(format!("198.51.100.{}", n % 250 + 1).parse().unwrap()),
        client_port: Some(40_000 + (n % 20_000) as u16),
        client_name: format!("client{}.example.net", n % 250),
        helo: format!("client{}.example.net", n % 250),
        sasl_username: String::new(),
        sasl_method: String::new(),
        sasl_sender: String::new(),
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            cipher_bits: Some(256),
            cert_subject: String::new(),
            cert_issuer: String::new(),
        }),
        mta_hostname: "mx1.example.org".into(),
        daemon_name: "smtpd".into(),
    }
}

fn result(
    message_id: MessageId,
    module: &str,
    score: f64,
    determinants: serde_json::Value,
) -> AuditResult {
    AuditResult {
        result: CheckResult {
            version: WIRE_VERSION,
            message_id,
            module: module.into(),
            action: Action::Permit,
            score,
            message: String::new(),
            determinants,
            duration: 0.042,
            changes: MilterChanges::default(),
            enhanced_status: None,
        },
        weighted_score: score,
        late: false,
    }
}

/// The `n`-th event: what a gateway with rspamd, spamassassin and quotas sends for an
/// ordinary message.
fn event(n: usize, session: &SessionInfo) -> AuditEvent {
    let message_id = MessageId::new();
    let queue_id = format!("4Bn{n:012X}");
    let rcpt = |k: usize| format!("user{}@example.org", (n * 2 + k) % RECIPIENT_POOL);
    let (to_a, to_b) = (rcpt(0), rcpt(1));
    let headers = vec![
        Header::new(
            "Received",
            format!(
                "from {} ({} [{}]) by mx1.example.org (Postfix) with ESMTPS id {queue_id}",
                session.helo,
                session.client_name,
                session.client_addr.unwrap()
            ),
        ),
        Header::new("Date", "Wed, 25 Nov 2026 08:30:16 +0000"),
        Header::new("From", "\"Newsletter\" <news@shop.example.com>"),
        Header::new("To", format!("{to_a}, {to_b}")),
        Header::new("Subject", format!("Your weekly digest #{n}")),
        Header::new("Message-ID", format!("<{n}.{queue_id}@shop.example.com>")),
        Header::new("MIME-Version", "1.0"),
        Header::new(
            "Content-Type",
            "multipart/alternative; boundary=\"=_b1a2c3d4e5\"",
        ),
        Header::new(
            "DKIM-Signature",
            "v=1; a=rsa-sha256; c=relaxed/relaxed; d=shop.example.com; s=mail; \
             h=from:to:subject:date:message-id; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; \
             b=dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSwganVzdCBzb21lIGJ5dGVzIG9mIGEgcmVhbGlzdGljIGxlbmd0aA==",
        ),
        Header::new(
            "List-Unsubscribe",
            "<https://shop.example.com/u/abcdef0123456789>",
        ),
    ];
    AuditEvent {
        version: WIRE_VERSION,
        instance: "default".into(),
        message_id,
        answered: true,
        session: session.clone(),
        message: AuditMessage {
            queue_id,
            received_at: Utc::now(),
            sender: "bounce+1234@shop.example.com".into(),
            recipients: vec![to_a, to_b],
            rejected_recipients: Vec::new(),
            headers,
            headers_truncated: false,
            body_size: 18_432,
            body_hash: "9e107d9d372bb6826bd81d3542a419d6".into(),
            body: None,
            message_id_header: format!("<{n}@shop.example.com>"),
            subject: format!("Your weekly digest #{n}"),
        },
        verdict: AuditVerdict {
            verdict: Action::Permit,
            applied: Action::Permit,
            reason: String::new(),
            reject_score: 1.2,
            reject_threshold: 5.0,
            tempfail_score: 0.0,
            tempfail_threshold: 8.0,
            noop: false,
            whitelisted: false,
            failure: None,
        },
        results: vec![
            result(
                message_id,
                "rspamd",
                0.8,
                serde_json::json!({
                    "action": "no action", "score": 1.19, "required_score": 15.0,
                    "symbols": {
                        "DKIM_SIGNED": { "score": 0.0, "options": ["shop.example.com:s=mail"] },
                        "MIME_GOOD": { "score": -0.1, "options": ["multipart/alternative"] },
                        "RCVD_TLS_ALL": { "score": 0.0 },
                        "HAS_LIST_UNSUB": { "score": -0.01 },
                        "BULK_HEADER": { "score": 1.3 }
                    }
                }),
            ),
            result(
                message_id,
                "spamassassin",
                0.4,
                serde_json::json!({ "score": 0.4, "tests": ["HTML_MESSAGE", "DKIM_SIGNED", "DKIM_VALID"] }),
            ),
            result(
                message_id,
                "quotas",
                0.0,
                serde_json::json!({ "client_address": { "period": 3600, "count": 12, "curb": 500 } }),
            ),
        ],
    }
}

async fn fill(url: &str, events: usize) {
    let connection = platform::broker::connect(url, "auditor-bench")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    platform::broker::declare_audit_topology(&connection)
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let mut session_info = session(0);
    let mut pending = Vec::with_capacity(PUBLISH_WINDOW);
    for n in 0..events {
        if n % 2 == 0 {
            session_info = session(n);
        }
        let bytes = wire::contract::encode(&event(n, &session_info));
        let confirm = channel
            .basic_publish(
                AUDIT_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                &bytes,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap();
        pending.push(confirm);
        if pending.len() == PUBLISH_WINDOW {
            for confirm in pending.drain(..) {
                assert!(confirm.await.unwrap().is_ack());
            }
        }
    }
    for confirm in pending {
        assert!(confirm.await.unwrap().is_ack());
    }
    let _ = connection.close(200, "filled".into()).await;
}

struct Run {
    /// Events per second from the auditor's start to the last row.
    overall: f64,
    /// Events per second once the auditor is under way (its prefetch taken and a batch
    /// committed) to the last row.
    steady: f64,
}

async fn one_run(events: usize) -> Run {
    let broker = TestBroker::new().unwrap();
    // another server than the shared one (e.g. one with its slow query log on):
    // AUDITOR_BENCH_DATABASE=mysql://root@127.0.0.1:33306/auditor_bench (dropped first)
    let (url, pool, _db) = match std::env::var("AUDITOR_BENCH_DATABASE") {
        Ok(url) => {
            let (base, query) = url.split_once('?').unwrap_or((&url, ""));
            let (server, name) = base.rsplit_once('/').unwrap();
            let admin = sqlx::MySqlPool::connect(&format!("{server}/?{query}"))
                .await
                .unwrap();
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS `{name}`"
            )))
            .execute(&admin)
            .await
            .unwrap();
            admin.close().await;
            auditor::migrate(&url).await.unwrap();
            let pool = sqlx::MySqlPool::connect(&url).await.unwrap();
            (url, pool, None)
        }
        Err(_) => {
            let db = TestDb::empty().await.unwrap();
            auditor::migrate(&db.url).await.unwrap();
            (db.url.clone(), db.pool.clone(), Some(db))
        }
    };
    fill(&broker.url, events).await;
    let depth = broker.queue_depth(AUDIT_QUEUE).unwrap_or(0);
    println!("  queue filled: {events} events (management API shows {depth})");

    let started = Instant::now();
    let process = start_auditor(&broker.url, &url);
    // Watch the queue (cheap) while it drains, and count rows (a scan) only at the end.
    let connection = platform::broker::connect(&broker.url, "auditor-bench watch")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut first: Option<(Instant, u32)> = None;
    let deadline = started + Duration::from_secs(600);
    loop {
        let ready = channel
            .queue_declare(
                AUDIT_QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count();
        // the auditor took its prefetch (400) and committed at least a batch
        if first.is_none() && (ready as usize) < events.saturating_sub(600) {
            first = Some((Instant::now(), ready));
        }
        if ready == 0 {
            let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message")
                .fetch_one(&pool)
                .await
                .unwrap();
            if stored as usize >= events {
                break;
            }
        }
        assert!(Instant::now() < deadline, "not drained after 10 min");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let end = Instant::now();
    drop(process);
    let _ = connection.close(200, "done".into()).await;
    let overall = events as f64 / (end - started).as_secs_f64();
    let (first_at, ready_then) = first.unwrap_or((started, events as u32));
    let steady = f64::from(ready_then) / (end - first_at).as_secs_f64().max(1e-3);
    Run { overall, steady }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` does not, and gets no
    // benchmark. A bare number is the event count.
    if !std::env::args().any(|arg| arg == "--bench") {
        println!("auditor drain: a benchmark; run it with `cargo bench -p auditor --bench drain`");
        return;
    }
    let events = std::env::args()
        .skip(1)
        .find_map(|arg| arg.parse::<usize>().ok())
        .unwrap_or(DEFAULT_EVENTS);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    println!(
        "auditor drain: {events} events per run (10 headers, 2 recipients, 3 results), {RUNS} runs"
    );
    let mut overall = Vec::new();
    let mut steady = Vec::new();
    for run in 1..=RUNS {
        let result = runtime.block_on(one_run(events));
        println!(
            "  run {run}: {:.0} events/s from start, {:.0} events/s under way",
            result.overall, result.steady
        );
        overall.push(result.overall);
        steady.push(result.steady);
    }
    println!(
        "median: {:.0} events/s from start ({:.0} events/s under way)",
        median(overall),
        median(steady)
    );
}
