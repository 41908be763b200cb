//! Quota checks per second through the real pipeline pieces: this program plays the gateway
//! (publishes `CheckRequest`s to `cluegetter.check`, keeps `IN_FLIGHT` outstanding, reads the
//! replies) against 1 and against 4 `check-workers` processes (the release binary, default
//! `prefetch` 16 and `[database] max-connections` 8), on the local RabbitMQ and MariaDB, with a
//! vhost and a database of its own.
//!
//! Two loads: every message on one SASL login (one hot quota row: every check waits for the
//! row lock of the one before), and messages spread over `KEYS` logins with a row each. The
//! curb is out of reach, so every check reserves (the most work a check does).
//!
//! `cargo bench -p check-workers --bench quotas` (optionally `-- <messages>`). Not in CI.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use check_workers::modules::quotas::{NAME, QuotaStore, import};
use chrono::Utc;
use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use test_support::{TestBroker, TestDb, eventually};
use wire::{Action, CheckRequest, CheckResult, Envelope, MessageId, SessionInfo, WIRE_VERSION};

const IN_FLIGHT: usize = 128;
const KEYS: usize = 1000;
const DEFAULT_MESSAGES: usize = 4000;

struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_workers(n: usize, broker: &str, db: &str) -> Vec<Process> {
    (0..n)
        .map(|_| {
            let child = Command::new(env!("CARGO_BIN_EXE_check-workers"))
                .env_remove("CLUEGETTER_CONFIG")
                .env("CLUEGETTER_LOG_LEVEL", "warn")
                .env("CLUEGETTER_CHECK_WORKERS__METRICS_LISTEN", "127.0.0.1:0")
                .env("CLUEGETTER_BROKER__URL", broker)
                .env("CLUEGETTER_DATABASE__URL", db)
                .env("CLUEGETTER_QUOTAS__ENABLED", "true")
                .env("CLUEGETTER_QUOTAS__ACCOUNT_SASL_USERNAME", "true")
                .env("CLUEGETTER_QUOTAS__ACCOUNT_CLIENT_ADDRESS", "false")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .unwrap();
            Process(child)
        })
        .collect()
}

fn request(login: &str) -> CheckRequest {
    CheckRequest {
        version: WIRE_VERSION,
        instance: "default".into(),
        message_id: MessageId::new(),
        queue_id: String::new(),
        module: NAME.into(),
        session: SessionInfo {
            session_id: MessageId::new().0,
            connected_at: Utc::now(),
            client_addr: Some("192.0.2.10".parse().unwrap()),
            client_port: None,
            client_name: String::new(),
            helo: String::new(),
            sasl_username: login.to_owned(),
            sasl_method: "PLAIN".into(),
            sasl_sender: String::new(),
            tls: None,
            mta_hostname: String::new(),
            daemon_name: String::new(),
        },
        envelope: Envelope {
            sender: login.to_owned(),
            recipients: vec!["rcpt@example.net".into()],
        },
        headers: Vec::new(),
        content: None,
        content_truncated: false,
        sent_at: Utc::now(),
        stage: wire::CheckStage::Eom,
    }
}

/// Sends the requests keeping `IN_FLIGHT` outstanding; checks per second and the actions.
async fn run(
    broker: &str,
    requests: &[CheckRequest],
    workers: usize,
) -> (f64, HashMap<Action, usize>) {
    let connection = Connection::connect(broker, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    platform::broker::declare_check_topology(&connection, NAME)
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "the workers consuming", || async {
        let queue = channel
            .queue_declare(
                platform::broker::check_queue(NAME).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        (queue.consumer_count() as usize == workers).then_some(())
    })
    .await
    .unwrap();
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let reply_queue = reply_queue.name().to_string();
    let mut replies = channel
        .basic_consume(
            reply_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    let publish = |request: &CheckRequest| {
        let channel = channel.clone();
        let reply_queue = reply_queue.clone();
        let body = wire::contract::encode(request);
        let correlation_id = request.message_id.to_string();
        async move {
            channel
                .basic_publish(
                    platform::broker::CHECK_EXCHANGE.into(),
                    NAME.into(),
                    BasicPublishOptions::default(),
                    &body,
                    BasicProperties::default()
                        .with_correlation_id(correlation_id.into())
                        .with_reply_to(reply_queue.into())
                        .with_expiration("60000".into()),
                )
                .await
                .unwrap()
                .await
                .unwrap();
        }
    };
    let started = Instant::now();
    let mut sent = 0;
    while sent < requests.len().min(IN_FLIGHT) {
        publish(&requests[sent]).await;
        sent += 1;
    }
    let mut actions: HashMap<Action, usize> = HashMap::new();
    let mut received = 0;
    while received < requests.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .expect("no reply within 60 s")
            .unwrap()
            .unwrap();
        let result: CheckResult = wire::contract::decode(&delivery.data).unwrap();
        *actions.entry(result.action).or_default() += 1;
        received += 1;
        if sent < requests.len() {
            publish(&requests[sent]).await;
            sent += 1;
        }
    }
    let rate = requests.len() as f64 / started.elapsed().as_secs_f64();
    let _ = connection.close(200, "bench done".into()).await;
    (rate, actions)
}

#[tokio::main]
async fn main() {
    let messages: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_MESSAGES);
    let db = TestDb::migrated().await.unwrap();
    let store = QuotaStore::new(
        &db.url,
        2,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )
    .unwrap();
    store
        .import(
            &import::parse(
                "quota_class:\n| id | instance | name |\n| 1 | 1 | bench |\n\
                 quota_profile:\n| id | class | name |\n| 1 | 1 | unreachable |\n\
                 quota_profile_period:\n| profile | period | curb |\n| 1 | 300 | 100000000 |\n| 1 | 86400 | 100000000 |\n",
            )
            .unwrap(),
        )
        .await
        .unwrap();
    println!(
        "quota checks per second ({messages} messages per line, {IN_FLIGHT} in flight, 2 periods per quota)"
    );
    println!("{:<8} {:<24} {:>10}", "workers", "load", "checks/s");
    for workers in [1, 4] {
        for spread in [false, true] {
            let tag = format!("w{workers}{}", if spread { "s" } else { "h" });
            let logins: Vec<String> = if spread {
                (0..KEYS)
                    .map(|k| format!("{tag}-{k}@example.org"))
                    .collect()
            } else {
                vec![format!("{tag}-hot@example.org")]
            };
            for login in &logins {
                sqlx::query(
                    "INSERT INTO quota (selector, value, profile) VALUES ('sasl_username', ?, 1)",
                )
                .bind(login)
                .execute(&db.pool)
                .await
                .unwrap();
            }
            let requests: Vec<CheckRequest> = (0..messages)
                .map(|n| request(&logins[n % logins.len()]))
                .collect();
            let broker = TestBroker::new().unwrap();
            let _processes = start_workers(workers, &broker.url, &db.url);
            // warm up connections and statement caches
            let warm: Vec<CheckRequest> = (0..200)
                .map(|n| request(&logins[n % logins.len()]))
                .collect();
            run(&broker.url, &warm, workers).await;
            let (rate, actions) = run(&broker.url, &requests, workers).await;
            assert_eq!(actions.get(&Action::Permit), Some(&messages), "{actions:?}");
            let load = if spread {
                format!("{KEYS} keys")
            } else {
                "one hot key".to_owned()
            };
            println!("{workers:<8} {load:<24} {rate:>10.0}");
        }
    }
}
