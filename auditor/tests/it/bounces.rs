//! Bounce events (issue 7): stored in `bounce` / `bounce_report` with ClueGetter's columns, linked
//! to the reported message by queue id, id header or Message-ID, linked later when the message
//! comes after its bounce, stored once, poison dead-lettered, unparseable reports kept raw.

use std::time::Duration;

use chrono::{DateTime, Utc};
use lapin::options::{BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use platform::broker::{BOUNCE_DEAD_LETTER_QUEUE, BOUNCE_EXCHANGE};
use sqlx::Row as _;
use test_support::eventually;
use uuid::Uuid;
use wire::contract::{
    DeliveryReport, DsnAction, ParseStatus, PerMessageFields, RecipientReport, ReportKind,
    ReturnedHeaders, TypedValue,
};
use wire::{BounceEvent, BounceId, BounceSource, MessageId, WIRE_VERSION};

use crate::support::{self, Env, WAIT};

/// A connection with a confirming channel and the bounce topology declared.
struct BouncePublisher {
    _connection: Connection,
    channel: Channel,
}

impl BouncePublisher {
    async fn connect(url: &str) -> Self {
        let connection = platform::broker::connect(url, "auditor-bounce-test")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        platform::broker::declare_bounce_topology(&connection)
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

    async fn publish(&self, bytes: &[u8]) {
        let confirm = self
            .channel
            .basic_publish(
                BOUNCE_EXCHANGE.into(),
                "".into(),
                BasicPublishOptions::default(),
                bytes,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
        assert!(confirm.is_ack());
    }

    async fn publish_event(&self, event: &BounceEvent) {
        self.publish(&wire::contract::encode(event)).await;
    }

    /// Takes `n` messages off the bounce dead-letter queue: (body, reason).
    async fn dead_letters(&self, n: usize) -> Vec<(Vec<u8>, String)> {
        let mut taken = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        while taken.len() < n {
            assert!(tokio::time::Instant::now() < deadline, "{n} dead letters");
            let got = self
                .channel
                .basic_get(
                    BOUNCE_DEAD_LETTER_QUEUE.into(),
                    BasicGetOptions { no_ack: true },
                )
                .await
                .unwrap();
            let Some(message) = got else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let reason = message
                .delivery
                .properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(auditor::consume::REASON_HEADER).cloned())
                .map(|value| match value {
                    AMQPValue::LongString(s) => s.to_string(),
                    other => panic!("reason of another type: {other:?}"),
                })
                .expect("a reason header");
            taken.push((message.delivery.data, reason));
        }
        taken
    }
}

/// A Postfix-like report about one failed recipient; the join keys are set by the caller.
pub fn bounce(date: DateTime<Utc>) -> BounceEvent {
    BounceEvent {
        version: WIRE_VERSION,
        instance: "default".into(),
        bounce_id: BounceId::new(),
        received_at: support::now(),
        source: BounceSource::Submit,
        peer: None,
        raw: b"Subject: the raw report\r\n\r\n\xe2\x82\xac and 8-bit \xff".to_vec(),
        raw_size: 1234,
        report: DeliveryReport {
            status: ParseStatus::Parsed,
            problems: Vec::new(),
            kind: ReportKind::DeliveryStatus,
            date: Some(date),
            from: "MAILER-DAEMON@mx.example.net (Mail Delivery System)".into(),
            subject: "Undelivered Mail Returned to Sender".into(),
            per_message: PerMessageFields {
                reporting_mta: Some(TypedValue::new("dns", "MX.Example.NET.")),
                arrival_date: Some(date - chrono::Duration::seconds(3)),
                sender: Some(TypedValue::new("rfc822", "alice@example.org")),
                ..PerMessageFields::default()
            },
            recipients: vec![
                RecipientReport {
                    final_recipient: Some(TypedValue::new("rfc822", "Bob@Example.NET")),
                    original_recipient: Some(TypedValue::new("rfc822", "bob@example.net")),
                    action: Some(DsnAction::Failed),
                    status: "5.1.1".into(),
                    remote_mta: Some(TypedValue::new("dns", "mx.example.net")),
                    diagnostic_code: Some(TypedValue::new("smtp", "550 5.1.1 unknown user")),
                    last_attempt_date: Some(date),
                    will_retry_until: None,
                },
                RecipientReport {
                    final_recipient: Some(TypedValue::new("rfc822", "carol@example.net")),
                    action: Some(DsnAction::Delayed),
                    status: "4.4.1".into(),
                    will_retry_until: Some(date + chrono::Duration::days(5)),
                    ..RecipientReport::default()
                },
            ],
            returned: ReturnedHeaders {
                present: true,
                from: "alice@example.org".into(),
                to: "bob@example.net".into(),
                subject: "Grüße".into(),
                ..ReturnedHeaders::default()
            },
        },
    }
}

/// (message link, link method) of a bounce, once stored.
async fn stored_link(env: &Env, id: BounceId) -> (Option<Uuid>, Option<String>) {
    let pool = env.pool().clone();
    eventually(WAIT, &format!("bounce {id} stored"), || {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (Option<Uuid>, Option<String>)>(
                "SELECT message, link FROM bounce WHERE bounce_id = ?",
            )
            .bind(id.0)
            .fetch_optional(&pool)
            .await
            .unwrap()
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn bounces_are_stored_and_linked_by_queue_id_id_header_or_message_id() {
    let env = Env::new().await;
    let audit = env.publisher().await;
    let bounces = BouncePublisher::connect(&env.broker.url).await;
    let auditor = env.start_auditor();

    let mut by_queue = support::event();
    by_queue.message.queue_id = "4jQueueOne1".into();
    by_queue.message.message_id_header = "<one@example.org>".into();
    let mut by_header = support::event();
    by_header.message.message_id_header = "<two@example.org>".into();
    let mut by_message_id = support::event();
    by_message_id.message.message_id_header = "<three@example.org>".into();
    for event in [&by_queue, &by_header, &by_message_id] {
        audit.publish_event(event).await;
        env.wait_stored(event.message_id).await;
    }

    let date = support::now();
    let mut b1 = bounce(date);
    b1.report.per_message.queue_id = "4jQueueOne1".into();
    // a Message-ID that matches another message: the queue id wins
    b1.report.returned.message_id = "<three@example.org>".into();
    let mut b2 = bounce(date);
    b2.report.returned.cluegetter_id = Some(by_header.message_id);
    let mut b3 = bounce(date);
    b3.report.returned.message_id = "<three@example.org>".into();
    let mut b4 = bounce(date);
    b4.report.per_message.queue_id = "4jNobodyKnows".into();
    b4.report.returned.cluegetter_id = Some(MessageId::new());
    let mut unparseable = bounce(date);
    unparseable.report = DeliveryReport {
        problems: vec!["no delivery-status part: the report is text/plain".into()],
        date: None,
        ..DeliveryReport::default()
    };
    for event in [&b1, &b2, &b3, &b4, &unparseable] {
        bounces.publish_event(event).await;
    }

    assert_eq!(
        stored_link(&env, b1.bounce_id).await,
        (Some(by_queue.message_id.0), Some("queue_id".into()))
    );
    assert_eq!(
        stored_link(&env, b2.bounce_id).await,
        (Some(by_header.message_id.0), Some("cluegetter_id".into()))
    );
    assert_eq!(
        stored_link(&env, b3.bounce_id).await,
        (Some(by_message_id.message_id.0), Some("message_id".into()))
    );
    assert_eq!(stored_link(&env, b4.bounce_id).await, (None, None));
    assert_eq!(stored_link(&env, unparseable.bounce_id).await, (None, None));

    // ClueGetter's columns and ours
    let row = sqlx::query(
        "SELECT b.mta, b.queueId, b.messageId, b.sender, b.date, b.mta_hostname, b.source, \
                b.parse_status, b.parse_reason, b.orig_subject, b.raw, b.raw_size, b.arrival_date, \
                i.name AS instance \
         FROM bounce b JOIN instance i ON i.id = b.cluegetter_instance WHERE b.bounce_id = ?",
    )
    .bind(b1.bounce_id.0)
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("mta"), "dns; MX.Example.NET.");
    assert_eq!(row.get::<String, _>("queueId"), "4jQueueOne1");
    assert_eq!(row.get::<String, _>("messageId"), "<three@example.org>");
    assert_eq!(row.get::<String, _>("sender"), "rfc822; alice@example.org");
    assert_eq!(row.get::<DateTime<Utc>, _>("date"), date);
    assert_eq!(row.get::<String, _>("mta_hostname"), "mx.example.net");
    assert_eq!(row.get::<String, _>("source"), "submit");
    assert_eq!(row.get::<String, _>("parse_status"), "parsed");
    assert_eq!(row.get::<Option<String>, _>("parse_reason"), None);
    assert_eq!(row.get::<String, _>("orig_subject"), "Grüße");
    assert_eq!(row.get::<Vec<u8>, _>("raw"), b1.raw);
    assert_eq!(row.get::<u64, _>("raw_size"), 1234);
    assert_eq!(
        row.get::<Option<DateTime<Utc>>, _>("arrival_date"),
        Some(date - chrono::Duration::seconds(3))
    );
    assert_eq!(row.get::<String, _>("instance"), "default");

    let reports = sqlx::query(
        "SELECT r.sequence, r.status, r.orig_rcpt, r.final_rcpt, r.remote_mta, r.diag_code, \
                r.action, r.recipient, r.recipient_domain, r.last_attempt_date, \
                r.will_retry_until, r.date \
         FROM bounce_report r JOIN bounce b ON b.id = r.bounce \
         WHERE b.bounce_id = ? ORDER BY r.sequence",
    )
    .bind(b1.bounce_id.0)
    .fetch_all(env.pool())
    .await
    .unwrap();
    assert_eq!(reports.len(), 2);
    let first = &reports[0];
    assert_eq!(first.get::<String, _>("status"), "5.1.1");
    assert_eq!(
        first.get::<String, _>("final_rcpt"),
        "rfc822; Bob@Example.NET"
    );
    assert_eq!(
        first.get::<String, _>("orig_rcpt"),
        "rfc822; bob@example.net"
    );
    assert_eq!(first.get::<String, _>("remote_mta"), "dns; mx.example.net");
    assert_eq!(
        first.get::<Option<String>, _>("diag_code").as_deref(),
        Some("smtp; 550 5.1.1 unknown user")
    );
    assert_eq!(first.get::<String, _>("action"), "failed");
    assert_eq!(first.get::<String, _>("recipient"), "bob@example.net");
    assert_eq!(first.get::<String, _>("recipient_domain"), "example.net");
    assert_eq!(first.get::<DateTime<Utc>, _>("date"), date);
    assert_eq!(
        first.get::<Option<DateTime<Utc>>, _>("last_attempt_date"),
        Some(date)
    );
    let second = &reports[1];
    assert_eq!(second.get::<u32, _>("sequence"), 1);
    assert_eq!(second.get::<String, _>("action"), "delayed");
    assert_eq!(second.get::<String, _>("orig_rcpt"), "");
    assert_eq!(second.get::<Option<String>, _>("diag_code"), None);
    assert_eq!(
        second.get::<Option<DateTime<Utc>>, _>("will_retry_until"),
        Some(date + chrono::Duration::days(5))
    );

    // the unparseable report: kept raw, with the reason, dated when it came
    let row = sqlx::query(
        "SELECT parse_status, parse_reason, kind, raw, date, received, \
                (SELECT COUNT(*) FROM bounce_report r WHERE r.bounce = bounce.id) AS n \
         FROM bounce WHERE bounce_id = ?",
    )
    .bind(unparseable.bounce_id.0)
    .fetch_one(env.pool())
    .await
    .unwrap();
    assert_eq!(row.get::<String, _>("parse_status"), "unparseable");
    assert_eq!(
        row.get::<Option<String>, _>("parse_reason").as_deref(),
        Some("no delivery-status part: the report is text/plain")
    );
    assert_eq!(row.get::<String, _>("kind"), "other");
    assert_eq!(row.get::<Vec<u8>, _>("raw"), unparseable.raw);
    assert_eq!(
        row.get::<DateTime<Utc>, _>("date"),
        row.get::<DateTime<Utc>, _>("received")
    );
    assert_eq!(row.get::<i64, _>("n"), 0);

    auditor.stop().await;
}

#[tokio::test]
async fn a_bounce_stored_before_its_message_is_linked_once_the_message_arrives() {
    let env = Env::new().await;
    let audit = env.publisher().await;
    let bounces = BouncePublisher::connect(&env.broker.url).await;
    let auditor = env.start_auditor();

    // nothing matches yet: stored unlinked
    let mut message = support::event();
    message.message.queue_id = "4jLateComer9".into();
    let mut early = bounce(support::now());
    early.report.per_message.queue_id = "4jLateComer9".into();
    bounces.publish_event(&early).await;
    assert_eq!(stored_link(&env, early.bounce_id).await, (None, None));

    // an older message shares the returned Message-ID: linked to it, by the weakest key
    let mut older = support::event();
    older.message.message_id_header = "<shared@example.org>".into();
    audit.publish_event(&older).await;
    env.wait_stored(older.message_id).await;
    let mut shared = bounce(support::now());
    shared.report.per_message.queue_id = "4jLateComer8".into();
    shared.report.returned.message_id = "<shared@example.org>".into();
    bounces.publish_event(&shared).await;
    assert_eq!(
        stored_link(&env, shared.bounce_id).await,
        (Some(older.message_id.0), Some("message_id".into()))
    );

    // the messages the bounces are about arrive: the relinker links both by queue id
    let mut sharing = support::event();
    sharing.message.queue_id = "4jLateComer8".into();
    sharing.message.message_id_header = "<shared@example.org>".into();
    for event in [&message, &sharing] {
        audit.publish_event(event).await;
        env.wait_stored(event.message_id).await;
    }
    for (bounce, about) in [(&early, &message), (&shared, &sharing)] {
        let pool = env.pool().clone();
        let linked = eventually(WAIT, "the relinker links the bounce by queue id", || {
            let pool = pool.clone();
            async move {
                sqlx::query_as::<_, (Option<Uuid>, Option<String>)>(
                    "SELECT message, link FROM bounce WHERE bounce_id = ?",
                )
                .bind(bounce.bounce_id.0)
                .fetch_one(&pool)
                .await
                .ok()
                .filter(|(_, link)| link.as_deref() == Some("queue_id"))
            }
        })
        .await
        .unwrap();
        assert_eq!(linked.0, Some(about.message_id.0));
    }
    auditor.stop().await;
}

#[tokio::test]
async fn a_redelivered_bounce_is_stored_once_and_poison_is_dead_lettered() {
    let env = Env::new().await;
    let bounces = BouncePublisher::connect(&env.broker.url).await;
    let event = bounce(support::now());
    let mut too_long = bounce(support::now());
    // `instance.name` is VARCHAR(20): the database refuses this event's instance
    too_long.instance = "i".repeat(40);
    let next_version = format!(
        r#"{{"version":{},"bounce_id":"{}"}}"#,
        WIRE_VERSION + 1,
        BounceId::new()
    );
    bounces.publish_event(&event).await;
    bounces.publish_event(&event).await;
    bounces.publish(b"\xff not JSON").await;
    bounces.publish(next_version.as_bytes()).await;
    bounces.publish_event(&too_long).await;
    let auditor = env.start_auditor();

    let dead = bounces.dead_letters(3).await;
    stored_link(&env, event.bounce_id).await;
    let reasons: Vec<&str> = dead.iter().map(|(_, r)| r.as_str()).collect();
    assert!(reasons[0].starts_with("undecodable message"), "{reasons:?}");
    assert!(reasons[1].contains("wire version 2"), "{reasons:?}");
    assert!(
        reasons[2].starts_with("refused by the database"),
        "{reasons:?}"
    );
    assert_eq!(dead[2].0, wire::contract::encode(&too_long));
    auditor.stop().await;

    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounce WHERE bounce_id = ?")
        .bind(event.bounce_id.0)
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(n, 1, "stored once");
    let reports: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM bounce_report")
        .fetch_one(env.pool())
        .await
        .unwrap();
    assert_eq!(reports, 2, "only the stored bounce's two recipients");
}
