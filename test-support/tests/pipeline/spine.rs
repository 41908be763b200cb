//! Issue 2's proof: a plain message is delivered, a GTUBE message is rejected with rspamd's
//! reason, and the archive holds exactly those two messages with their details.

use std::time::Duration;

use sqlx::Row;
use test_support::eventually;

use crate::{GTUBE, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn plain_message_is_delivered_and_gtube_is_rejected_and_both_are_archived() {
    let pipeline = Pipeline::start(|_| {}).await.unwrap();

    let plain = pipeline
        .send(&[
            "--from",
            "sender@example.org",
            "--to",
            "rcpt@mailbox.test,second@mailbox.test",
            "--helo",
            "client.example.org",
            "--header",
            "Subject: lunch",
            "--body",
            "Lunch at noon?",
        ])
        .await
        .unwrap();
    assert!(
        plain.success,
        "plain message refused:\n{}",
        plain.transcript
    );
    let reply = plain.data_reply().unwrap_or_default().to_owned();
    assert!(reply.starts_with("250"), "{reply}\n{}", plain.transcript);
    eventually(
        Duration::from_secs(20),
        "delivery to the mailbox",
        || async {
            pipeline
                .postfix
                .mailbox()
                .contains("Subject: lunch")
                .then_some(())
        },
    )
    .await
    .unwrap();

    let spam = pipeline
        .send(&[
            "--from",
            "spammer@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--helo",
            "spam.example.org",
            "--header",
            "Subject: buy now",
            "--body",
            GTUBE,
        ])
        .await
        .unwrap();
    assert!(!spam.success, "GTUBE was accepted:\n{}", spam.transcript);
    let reply = spam.data_reply().unwrap_or_default().to_owned();
    assert!(
        reply.starts_with("550 5.7.1"),
        "{reply}\n{}",
        spam.transcript
    );
    assert!(
        reply.contains("SPAM"),
        "the reason is rspamd's module text: {reply}"
    );
    assert!(
        pipeline
            .postfix
            .log()
            .contains("milter-reject: END-OF-MESSAGE"),
        "{}",
        pipeline.postfix.log()
    );

    // The archive: exactly two messages, with verdicts, recipients, headers, one rspamd result
    // each, joined to their sessions.
    let pool = &pipeline.db.pool;
    eventually(Duration::from_secs(20), "two message rows", || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message")
            .fetch_one(pool)
            .await
            .ok()?;
        (n >= 2).then_some(())
    })
    .await
    .unwrap();
    let rows = sqlx::query(
        "SELECT m.verdict, m.sender_local, m.sender_domain, m.queue_id, m.subject, s.ip, s.helo, \
                (SELECT COUNT(*) FROM message_recipient mr WHERE mr.message = m.id) AS n_rcpt, \
                (SELECT COUNT(*) FROM message_header h WHERE h.message = m.id) AS n_headers, \
                (SELECT COUNT(*) FROM message_result r WHERE r.message = m.id AND r.module = 'rspamd') AS n_rspamd \
         FROM message m JOIN session s ON s.id = m.session ORDER BY m.date",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "exactly two message rows");

    let verdict = |i: usize| rows[i].try_get::<String, _>("verdict").unwrap();
    assert_eq!(verdict(0), "permit");
    assert_eq!(verdict(1), "reject");
    assert_eq!(
        rows[0].try_get::<String, _>("sender_local").unwrap(),
        "sender"
    );
    assert_eq!(
        rows[0].try_get::<String, _>("sender_domain").unwrap(),
        "example.org"
    );
    assert_eq!(rows[0].try_get::<String, _>("subject").unwrap(), "lunch");
    assert_eq!(rows[1].try_get::<String, _>("subject").unwrap(), "buy now");
    for (i, row) in rows.iter().enumerate() {
        assert!(
            !row.try_get::<String, _>("queue_id").unwrap().is_empty(),
            "row {i} queue id"
        );
        assert_eq!(
            row.try_get::<String, _>("ip").unwrap(),
            "127.0.0.1",
            "row {i}"
        );
        assert!(
            row.try_get::<i64, _>("n_headers").unwrap() > 3,
            "row {i} headers"
        );
        assert_eq!(
            row.try_get::<i64, _>("n_rspamd").unwrap(),
            1,
            "row {i} rspamd result"
        );
    }
    assert_eq!(
        rows[0].try_get::<String, _>("helo").unwrap(),
        "client.example.org"
    );
    assert_eq!(
        rows[1].try_get::<String, _>("helo").unwrap(),
        "spam.example.org"
    );
    assert_eq!(rows[0].try_get::<i64, _>("n_rcpt").unwrap(), 2);
    assert_eq!(rows[1].try_get::<i64, _>("n_rcpt").unwrap(), 1);

    let gtube_score: f64 = sqlx::query_scalar(
        "SELECT r.score FROM message_result r JOIN message m ON m.id = r.message WHERE m.verdict = 'reject'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert!(
        gtube_score >= 5.0,
        "rspamd score × multiplier = {gtube_score}"
    );

    pipeline.stop().await.unwrap();
}
