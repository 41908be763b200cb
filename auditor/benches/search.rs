//! How fast the web interface's search answers on a big archive: this program fills a database
//! of its own with synthetic messages (default 1 000 000, spread over 30 days; each with a
//! session, 2 recipients out of 100 000 addresses in 1 000 domains, 3 headers and 2 module
//! results; senders from 50 000 addresses in 2 000 domains; 20 000 client addresses), with
//! MariaDB's SEQUENCE engine so the fill takes minutes, then serves the web interface in-process
//! and times `/api/v1/messages` over HTTP (first page, 50 rows, newest first) for searches by
//! sender address, sender domain, recipient domain, client address and network, SASL user
//! and a one-day date range, the free-text box, and as a `domain-admin` of two recipient
//! domains (the role's scope in the SQL). Prints p50/p95 per kind; the target is p95 ≤ 300 ms.
//!
//! `cargo bench -p auditor --bench search` (optionally `-- <messages>`; `-- <messages> keep`
//! keeps the database for another look). Uses the local MariaDB. Not in CI.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use platform::config::WebApiToken;
use sqlx::AssertSqlSafe;
use test_support::TestDb;
use tokio_util::sync::CancellationToken;

const DEFAULT_MESSAGES: u64 = 1_000_000;
const CHUNK: u64 = 50_000;
const DAYS: u64 = 30;
const SAMPLES: usize = 60;
const TOKEN: &str = "bench-token";
/// A `domain-admin` of two of the 1 000 recipient domains (`rd1.example`, `rd2.example`).
const DOMAIN_TOKEN: &str = "bench-domain-admin-token";

/// Statements run per chunk `[a, b]` of message numbers; `{a}`, `{b}`, `{n}` and `{span}`
/// (seconds) are replaced by numbers, never by input.
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
    "INSERT IGNORE INTO message_recipient (message, recipient, status, count, domain, date) \
     SELECT UNHEX(CONCAT('ff', LPAD(HEX(seq), 30, '0'))), \
       @r := 1 + (seq * IF(k = 0, 13, 29) + k * 7) MOD 100000, 'accepted', 1, \
       CONCAT('rd', @r MOD 1000, '.example'), \
       UTC_TIMESTAMP(6) - INTERVAL (seq * {span} DIV {n}) SECOND \
     FROM seq_{a}_to_{b} JOIN (SELECT 0 AS k UNION ALL SELECT 1) ks",
    "INSERT INTO message_header (message, sequence, name, body) \
     SELECT UNHEX(CONCAT('ff', LPAD(HEX(seq), 30, '0'))), h, \
       ELT(h + 1, 'Received', 'Subject', 'Message-ID'), \
       ELT(h + 1, CONCAT('from client.example by mx.example id ', seq), \
           CONCAT('Subject number ', seq MOD 1000), CONCAT('<', seq, '@bench.example>')) \
     FROM seq_{a}_to_{b} JOIN (SELECT 0 AS h UNION ALL SELECT 1 UNION ALL SELECT 2) hs",
    "INSERT INTO message_result (message, module, verdict, score, weighted_score, duration, \
     verdict_msg, determinants) \
     SELECT UNHEX(CONCAT('ff', LPAD(HEX(seq), 30, '0'))), ELT(k + 1, 'rspamd', 'spamassassin'), \
       IF(seq MOD 10 >= 9 AND k = 0, 'reject', 'permit'), (seq MOD 100) / 10, (seq MOD 100) / 20, \
       0.01 + (seq MOD 50) / 1000, '', CONCAT('{\"symbols\":{\"S', seq MOD 97, '\":1}}') \
     FROM seq_{a}_to_{b} JOIN (SELECT 0 AS k UNION ALL SELECT 1) ks",
];

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

/// A small deterministic generator (no extra crate for a benchmark).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

async fn fill(db: &TestDb, messages: u64) {
    let pool = &db.pool;
    sqlx::raw_sql("INSERT INTO cluegetter_client (id, hostname, daemon_name) VALUES (1, 'mx.example', 'smtpd')")
        .execute(pool)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO recipient (id, local, domain) SELECT seq, CONCAT('r', seq), \
         CONCAT('rd', seq MOD 1000, '.example') FROM seq_1_to_100000",
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
    sqlx::raw_sql("ANALYZE TABLE session, message, message_recipient, message_result, recipient")
        .execute(pool)
        .await
        .unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let messages = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES);
    let keep = args.iter().any(|a| a == "keep");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let db = TestDb::migrated().await.unwrap();
        // the test helper applies schema/ with sqlx; the auditor's own migrate is the same files
        eprintln!(
            "database {} — filling {messages} messages over {DAYS} days",
            db.name
        );
        let fill_started = Instant::now();
        fill(&db, messages).await;
        eprintln!("fill took {:.1?}", fill_started.elapsed());

        let mut config = platform::config::Config::default();
        config.auditor.web_api_tokens.push(WebApiToken {
            name: "bench".into(),
            sha256: auditor::web::auth::token_sha256_hex(TOKEN),
            ..Default::default()
        });
        config.auditor.web_api_tokens.push(WebApiToken {
            name: "bench-domain-admin".into(),
            sha256: auditor::web::auth::token_sha256_hex(DOMAIN_TOKEN),
            role: platform::config::WebRole::DomainAdmin,
            domains: vec!["rd1.example".into(), "rd2.example".into()],
        });
        let pool = auditor::store::connect_lazy(&(&db.url).into(), 8).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(auditor::web::serve(
            listener,
            auditor::web::AppState::new(&config, pool),
            shutdown.clone(),
        ));
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let month = format!(
            "from={}",
            (chrono::Utc::now() - chrono::Duration::days(DAYS as i64 + 1)).format("%Y-%m-%dT%H:%M")
        );
        let mut rng = Lcg(42);
        type Make = Box<dyn FnMut(&mut Lcg) -> String>;
        let kinds: Vec<(&str, Make)> = vec![
            (
                "sender address, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| {
                        let i = r.next(2000);
                        // a sender that exists: local part from the same sequence number
                        let seq = i + 2000 * r.next(messages / 2000);
                        format!(
                            "{month}&sender=s{}%40d{}.example",
                            (seq * 31) % 50_000 / 2000,
                            (seq * 31) % 2000
                        )
                    }
                }),
            ),
            (
                "sender domain, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| format!("{month}&sender=%40d{}.example", r.next(2000))
                }),
            ),
            (
                "recipient domain, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| format!("{month}&recipient=rd{}.example", r.next(1000))
                }),
            ),
            (
                "recipient address, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| {
                        let id = 1 + r.next(100_000);
                        format!("{month}&recipient=r{id}%40rd{}.example", id % 1000)
                    }
                }),
            ),
            (
                "client IP, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| {
                        let k = r.next(20_000);
                        format!("{month}&ip=10.{}.{}.{}", k / 256, k % 256, 1 + r.next(3))
                    }
                }),
            ),
            (
                "client /24, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| {
                        format!("{month}&ip=10.{}.{}.0%2F24", r.next(78), r.next(256))
                    }
                }),
            ),
            (
                "SASL user, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| format!("{month}&sasl=user{}", r.next(500))
                }),
            ),
            (
                "date range, 1 day",
                Box::new(|r: &mut Lcg| {
                    let end = chrono::Utc::now()
                        - chrono::Duration::hours(r.next(24 * (DAYS - 1)) as i64);
                    let start = end - chrono::Duration::days(1);
                    format!(
                        "from={}&to={}",
                        start.format("%Y-%m-%dT%H:%M"),
                        end.format("%Y-%m-%dT%H:%M")
                    )
                }),
            ),
            (
                "verdict reject, 1 day",
                Box::new(|_: &mut Lcg| "verdict=reject".to_owned()),
            ),
            (
                "free text address, 30 days",
                Box::new({
                    let month = month.clone();
                    move |r: &mut Lcg| {
                        let id = 1 + r.next(100_000);
                        format!("{month}&q=r{id}%40rd{}.example", id % 1000)
                    }
                }),
            ),
            ("domain-admin: 1 day", Box::new(|_: &mut Lcg| String::new())),
            (
                "domain-admin: 30 days",
                Box::new({
                    let month = month.clone();
                    move |_: &mut Lcg| month.clone()
                }),
            ),
        ];
        println!(
            "{:<28} {:>9} {:>9} {:>9} {:>7}",
            "search (first page, 50 rows)", "p50", "p95", "max", "rows"
        );
        let mut worst = Duration::ZERO;
        for (name, mut make) in kinds {
            let mut times = Vec::with_capacity(SAMPLES);
            let mut rows = 0;
            for _ in 0..SAMPLES {
                let url = format!("http://{addr}/api/v1/messages?{}", make(&mut rng));
                let started = Instant::now();
                let token = if name.starts_with("domain-admin") {
                    DOMAIN_TOKEN
                } else {
                    TOKEN
                };
                let response = client.get(&url).bearer_auth(token).send().await.unwrap();
                let status = response.status();
                let body = response.text().await.unwrap();
                times.push(started.elapsed());
                assert!(status.is_success(), "{url}: {status} {body}");
                let json: serde_json::Value = serde_json::from_str(&body).unwrap();
                rows += json["messages"].as_array().map_or(0, Vec::len);
            }
            times.sort();
            let p95 = percentile(&times, 0.95);
            worst = worst.max(p95);
            println!(
                "{name:<28} {:>9.1?} {:>9.1?} {:>9.1?} {:>7.1}",
                percentile(&times, 0.5),
                p95,
                times[times.len() - 1],
                rows as f64 / SAMPLES as f64
            );
        }
        println!("worst p95 {worst:.1?} (target ≤ 300 ms)");
        shutdown.cancel();
        if keep {
            eprintln!("keeping database {}", db.name);
            std::mem::forget(db);
        }
    });
}
