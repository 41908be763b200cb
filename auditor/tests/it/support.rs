//! What every test needs: a vhost and a migrated database, a running auditor, a publisher on the
//! audit exchange, and a complete sample event.

use std::time::Duration;

use chrono::{DateTime, SubsecRound as _, Utc};
use lapin::options::{
    BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};
use platform::broker::{AUDIT_DEAD_LETTER_QUEUE, AUDIT_EXCHANGE};
use platform::config::Config;
use sqlx::MySqlPool;
use test_support::{TestBroker, TestDb, eventually};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;
use wire::contract::RejectedRecipient;
use wire::{
    Action, AuditEvent, AuditMessage, AuditResult, AuditVerdict, CheckResult, Header, MessageId,
    MilterChanges, SessionInfo, TlsInfo, WIRE_VERSION,
};

pub const WAIT: Duration = Duration::from_secs(30);

/// A vhost and a database migrated by `auditor::migrate`.
pub struct Env {
    pub broker: TestBroker,
    pub db: TestDb,
}

impl Env {
    pub async fn new() -> Self {
        test_support::init_test_logging();
        let broker = TestBroker::new().unwrap();
        let db = TestDb::empty().await.unwrap();
        auditor::migrate(&db.url).await.unwrap();
        Self { broker, db }
    }

    pub fn config(&self) -> Config {
        let mut config = Config::default();
        config.broker.url = self.broker.url.as_str().into();
        config.broker.reconnect_max_backoff = Duration::from_millis(500);
        config.database.url = self.db.url.as_str().into();
        config.database.max_connections = 2;
        config.auditor.batch_size = 50;
        config.auditor.batch_wait = Duration::from_millis(300);
        config
    }

    pub fn start_auditor(&self) -> RunningAuditor {
        self.start_auditor_with(self.config())
    }

    pub fn start_auditor_with(&self, config: Config) -> RunningAuditor {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(auditor::run(config, shutdown.clone()));
        RunningAuditor { shutdown, task }
    }

    pub async fn publisher(&self) -> Publisher {
        Publisher::connect(&self.broker.url).await
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.db.pool
    }

    /// Waits until the message has its row.
    pub async fn wait_stored(&self, id: MessageId) {
        let pool = self.pool().clone();
        eventually(WAIT, &format!("message {id} stored"), || {
            let pool = pool.clone();
            async move { (count(&pool, "message", id).await == 1).then_some(()) }
        })
        .await
        .unwrap();
    }
}

/// `auditor::run` in a task of the test's runtime.
pub struct RunningAuditor {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl RunningAuditor {
    /// Shuts it down and checks it returned cleanly.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the auditor stops within 30 s of shutdown")
            .expect("the auditor task did not panic")
            .expect("the auditor returned Ok");
    }
}

/// Rows of `table` whose message column (`id` for `message`) is `id`.
pub async fn count(pool: &MySqlPool, table: &str, id: MessageId) -> i64 {
    let sql: &'static str = match table {
        "message" => "SELECT COUNT(*) FROM message WHERE id = ?",
        "message_header" => "SELECT COUNT(*) FROM message_header WHERE message = ?",
        "message_body" => "SELECT COUNT(*) FROM message_body WHERE message = ?",
        "message_result" => "SELECT COUNT(*) FROM message_result WHERE message = ?",
        "message_recipient" => "SELECT COUNT(*) FROM message_recipient WHERE message = ?",
        other => panic!("no count query for {other}"),
    };
    sqlx::query_scalar(sql)
        .bind(id.0)
        .fetch_one(pool)
        .await
        .unwrap()
}

/// A connection to the test's vhost with a confirming channel and the audit topology declared.
pub struct Publisher {
    _connection: Connection,
    channel: Channel,
}

impl Publisher {
    pub async fn connect(url: &str) -> Self {
        let connection = platform::broker::connect(url, "auditor-test")
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
        Self {
            _connection: connection,
            channel,
        }
    }

    /// Publishes raw bytes to the audit exchange, persistent, and waits for the confirm.
    pub async fn publish(&self, bytes: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                AUDIT_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_content_type("application/json".into()),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack(), "broker confirmed the publish");
    }

    pub async fn publish_event(&self, event: &AuditEvent) {
        self.publish(&wire::contract::encode(event)).await;
    }

    /// Messages ready in a queue (not counting those a consumer holds unacked).
    pub async fn ready(&self, queue: &str) -> u32 {
        self.channel
            .queue_declare(
                queue.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }

    /// Takes `n` messages off the dead-letter queue: (body, `x-cluegetter-reason`).
    pub async fn dead_letters(&self, n: usize) -> Vec<(Vec<u8>, String)> {
        let mut taken = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while taken.len() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {n} dead letters, got {}",
                taken.len()
            );
            let got = self
                .channel
                .basic_get(
                    AUDIT_DEAD_LETTER_QUEUE.into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            let Some(message) = got else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let delivery = message.delivery;
            let reason = delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(auditor::consume::REASON_HEADER).cloned())
                .map(|value| match value {
                    AMQPValue::LongString(s) => s.to_string(),
                    other => panic!("reason header of another type: {other:?}"),
                })
                .expect("dead letter carries x-cluegetter-reason");
            taken.push((delivery.data, reason));
        }
        taken
    }
}

/// Now, to the microsecond (what DATETIME(6) keeps).
pub fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub fn session() -> SessionInfo {
    SessionInfo {
        session_id: Uuid::now_v7(),
        connected_at: now() - chrono::Duration::seconds(5),
        client_addr: Some("192.0.2.10".parse().unwrap()),
        client_port: Some(40_000),
        client_name: "client.example.org".into(),
        helo: "helo.example.org".into(),
        sasl_username: "alice".into(),
        sasl_method: "PLAIN".into(),
        sasl_sender: String::new(),
        tls: Some(TlsInfo {
            version: "TLSv1.3".into(),
            cipher: "TLS_AES_256_GCM_SHA384".into(),
            cipher_bits: Some(256),
            cert_subject: String::new(),
            cert_issuer: String::new(),
        }),
        mta_hostname: "mx.example.net".into(),
        daemon_name: "smtpd".into(),
    }
}

pub fn result(
    message_id: MessageId,
    module: &str,
    action: Action,
    score: f64,
    determinants: serde_json::Value,
    late: bool,
) -> AuditResult {
    AuditResult {
        result: CheckResult {
            version: WIRE_VERSION,
            message_id,
            module: module.into(),
            action,
            score,
            message: format!("{module} says {action}"),
            determinants,
            duration: 0.125,
            changes: MilterChanges::default(),
            enhanced_status: None,
        },
        weighted_score: score * 0.5,
        late,
    }
}

/// An event with something in every part.
pub fn event() -> AuditEvent {
    let message_id = MessageId::new();
    AuditEvent {
        version: WIRE_VERSION,
        instance: "default".into(),
        message_id,
        answered: true,
        session: session(),
        message: AuditMessage {
            queue_id: "4jZB211qk4z6XPl".into(),
            received_at: now(),
            sender: "Alice@Example.ORG".into(),
            recipients: vec![
                "Bob@example.net".into(),
                "bob@EXAMPLE.net".into(),
                "carol@example.net".into(),
            ],
            rejected_recipients: vec![RejectedRecipient {
                address: "x@example.net".into(),
                reason: "550 5.1.1 <x@example.net>: Recipient address rejected: User unknown"
                    .into(),
            }],
            headers: vec![
                Header::new("Received", "from client.example.org by mx.example.net"),
                Header::new("Subject", "Grüße aus Köln"),
                Header::new("Message-ID", "<abc.123@example.org>"),
                Header::new("Received", "second hop"),
            ],
            headers_truncated: false,
            body_size: 11,
            body_hash: "5eb63bbbe01eeed093cb22bb8f5acdc3".into(),
            body: Some(b"hello world".to_vec()),
            message_id_header: "<abc.123@example.org>".into(),
            subject: "Grüße aus Köln".into(),
        },
        verdict: AuditVerdict {
            verdict: Action::Reject,
            applied: Action::Permit,
            reason: "Spam detected".into(),
            reject_score: 6.25,
            reject_threshold: 5.0,
            tempfail_score: 0.5,
            tempfail_threshold: 8.0,
            noop: true,
            whitelisted: false,
            failure: None,
        },
        results: vec![
            result(
                message_id,
                "rspamd",
                Action::Reject,
                12.5,
                serde_json::json!({
                    "action": "reject",
                    "symbols": { "GTUBE": { "score": 0.0, "options": ["x", "y"] } },
                    "nested": [1, 2, { "deep": null }],
                    "text": "ünïcode \"quoted\" <b>not html</b>"
                }),
                false,
            ),
            result(
                message_id,
                "spamassassin",
                Action::Permit,
                1.0,
                serde_json::json!({ "tests": [] }),
                true,
            ),
        ],
    }
}
