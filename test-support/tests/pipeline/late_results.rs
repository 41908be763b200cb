//! Issue 4's late results end to end: GTUBE through a real Postfix; rspamd's (real worker)
//! result reaches `breaker-score`, so the gateway answers 550 without waiting for
//! spamassassin; spamassassin's result, which comes after the answer, is still stored in
//! MariaDB beside rspamd's, marked late, and the verdict is the one Postfix was given.
//!
//! spamassassin is played by the test on the pipeline's vhost and answers only once swaks has
//! its answer, so "late" does not depend on how fast anything is.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use test_support::eventually;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use wire::{Action, CheckRequest, CheckResult, MilterChanges, WIRE_VERSION};

use crate::{GTUBE, Pipeline};

/// A `message_result` row: module, verdict, score, weighted score, late.
type ResultRow = (String, String, f64, f64, bool);

/// Answers every spamassassin request with a permit (score 1.5), once `release` is notified.
async fn held_spamassassin(
    broker_url: &str,
    release: Arc<Notify>,
    stop: CancellationToken,
) -> lapin::Connection {
    let connection = platform::broker::connect(broker_url, "late results spamassassin")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    platform::broker::declare_check_topology(&connection, "spamassassin")
        .await
        .unwrap();
    let mut consumer = channel
        .basic_consume(
            platform::broker::check_queue("spamassassin")
                .as_str()
                .into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let notified = release.notified();
        tokio::pin!(notified);
        let mut released = false;
        loop {
            let delivery = tokio::select! {
                () = stop.cancelled() => return,
                delivery = consumer.next() => match delivery {
                    Some(Ok(delivery)) => delivery,
                    _ => return,
                },
            };
            if !released {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = &mut notified => released = true,
                }
            }
            let request: CheckRequest = wire::contract::decode(&delivery.data).unwrap();
            let result = CheckResult {
                version: WIRE_VERSION,
                message_id: request.message_id,
                module: request.module.clone(),
                action: Action::Permit,
                score: 1.5,
                message: "Late but here".to_owned(),
                determinants: serde_json::json!({ "worker": "late results test" }),
                duration: 0.001,
                changes: MilterChanges::default(),
                enhanced_status: None,
            };
            let mut properties =
                BasicProperties::default().with_content_type("application/json".into());
            if let Some(correlation_id) = delivery.properties.correlation_id().clone() {
                properties = properties.with_correlation_id(correlation_id);
            }
            let reply_to = delivery.properties.reply_to().clone().unwrap();
            channel
                .basic_publish(
                    "".into(),
                    reply_to,
                    BasicPublishOptions::default(),
                    &wire::contract::encode(&result),
                    properties,
                )
                .await
                .unwrap()
                .await
                .unwrap();
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .unwrap();
        }
    });
    connection
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_result_after_the_breaker_fired_is_archived_marked_late() {
    let pipeline = Pipeline::start_without_workers(|c| {
        c.spamassassin.enabled = true;
        c.spamassassin.timeout = Duration::from_secs(60);
        // rspamd's GTUBE score (≥ 5, see spine.rs) fires the breaker
        c.breaker_score = 5.0;
    })
    .await
    .unwrap();
    // the real check worker, for rspamd only
    let mut workers_config = platform::config::Config::default();
    workers_config.broker.url = pipeline.broker.url.as_str().into();
    workers_config.broker.reconnect_max_backoff = Duration::from_millis(500);
    workers_config.database.url = pipeline.db.url.as_str().into();
    workers_config.rspamd.enabled = true;
    let stop = CancellationToken::new();
    let workers = tokio::spawn(check_workers::run(
        workers_config,
        Some(vec!["rspamd".to_owned()]),
        stop.clone(),
    ));
    let release = Arc::new(Notify::new());
    let _spamassassin =
        held_spamassassin(&pipeline.broker.url, release.clone(), stop.clone()).await;

    let spam = pipeline
        .send(&[
            "--from",
            "spammer@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: late results",
            "--body",
            GTUBE,
        ])
        .await
        .unwrap();
    let reply = spam.data_reply().unwrap_or_default().to_owned();
    assert!(
        reply.starts_with("550 5.7.1"),
        "rejected without waiting for spamassassin: {reply}\n{}",
        spam.transcript
    );
    release.notify_one();

    let pool = &pipeline.db.pool;
    let rows: Vec<ResultRow> =
        eventually(Duration::from_secs(60), "both results archived", || async {
            let rows: Vec<ResultRow> = sqlx::query_as(
                "SELECT r.module, CAST(r.verdict AS CHAR), r.score, r.weighted_score, r.late \
                 FROM message_result r JOIN message m ON m.id = r.message \
                 WHERE m.subject = 'late results' ORDER BY r.module",
            )
            .fetch_all(pool)
            .await
            .ok()?;
            (!rows.is_empty()).then_some(rows)
        })
        .await
        .unwrap();
    assert_eq!(
        rows.len(),
        2,
        "rspamd's and the late one, in one record: {rows:?}"
    );
    let (module, verdict, _, _, late) = &rows[0];
    assert_eq!(
        (module.as_str(), verdict.as_str(), *late),
        ("rspamd", "reject", false)
    );
    let (module, verdict, score, weighted, late) = &rows[1];
    assert_eq!(
        (module.as_str(), verdict.as_str(), *score, *weighted, *late),
        ("spamassassin", "permit", 1.5, 0.0, true),
        "marked late, counted for nothing"
    );
    let (verdict, applied, _, _) = pipeline.archived("late results").await.unwrap();
    assert_eq!((verdict.as_str(), applied.as_str()), ("reject", "reject"));
    let messages: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM message WHERE subject = 'late results'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(messages, 1, "exactly one record");

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(60), workers)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    pipeline.stop().await.unwrap();
}
