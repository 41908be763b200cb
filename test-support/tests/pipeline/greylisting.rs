//! Greylisting through a real Postfix, with client addresses presented by XCLIENT
//! (`swaks --xclient-addr`): the first attempt of an unknown client is tempfailed (greylisting's
//! 7 tempfail points plus spamd's few reject points reach the tempfail threshold of 8), the
//! retry after `initial-period` is delivered, and the client is whitelisted, so its next
//! message is not greylisted at all.

use std::time::{Duration, Instant};

use test_support::eventually;

use crate::Pipeline;

const CLIENT: &str = "198.51.100.7";

/// (verdict, score, determinants) of `module`'s result for the message with this subject.
async fn module_result(
    pipeline: &Pipeline,
    subject: &str,
    module: &str,
) -> (String, f64, serde_json::Value) {
    // stored with the message by the auditor, a moment after Postfix got its answer
    let (verdict, score, determinants): (String, f64, String) =
        eventually(Duration::from_secs(20), "the module result", || async {
            sqlx::query_as(
                "SELECT r.verdict, r.score, r.determinants FROM message_result r \
                 JOIN message m ON m.id = r.message WHERE m.subject = ? AND r.module = ?",
            )
            .bind(subject)
            .bind(module)
            .fetch_optional(&pipeline.db.pool)
            .await
            .ok()
            .flatten()
        })
        .await
        .unwrap();
    (verdict, score, serde_json::from_str(&determinants).unwrap())
}

async fn send_from_client(
    pipeline: &Pipeline,
    subject: &str,
    sender: &str,
) -> (bool, String, String) {
    let subject_header = format!("Subject: {subject}");
    let sent = pipeline
        .send(&[
            "--from",
            sender,
            "--to",
            "rcpt@mailbox.test",
            "--helo",
            "mail.example.org",
            "--xclient-addr",
            CLIENT,
            // without it Postfix keeps the name of the real client, "localhost"
            "--xclient-name",
            "[UNAVAILABLE]",
            "--header",
            &subject_header,
            "--body",
            "This is a test mailing",
        ])
        .await
        .unwrap();
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    (sent.success, reply, sent.transcript)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unknown_client_is_greylisted_its_retry_delivered_and_then_it_is_whitelisted() {
    let pipeline = Pipeline::start(|c| {
        c.rspamd.enabled = false;
        c.spamassassin.enabled = true;
        c.greylisting.enabled = true;
        c.greylisting.initial_period = Duration::from_secs(2);
    })
    .await
    .unwrap();

    // 1. First attempt: tempfailed with greylisting's reason.
    let first_sent = Instant::now();
    let (success, reply, transcript) =
        send_from_client(&pipeline, "greylist first", "news@example.org").await;
    assert!(!success, "{transcript}");
    assert_eq!(
        reply.split(" (").next().unwrap_or_default(),
        "451 4.7.1 Greylisting in effect, please come back later",
        "{transcript}"
    );
    let (verdict, applied, _, _) = pipeline.archived("greylist first").await.unwrap();
    assert_eq!(
        (verdict.as_str(), applied.as_str()),
        ("tempfail", "tempfail")
    );
    let (grey_verdict, grey_score, grey) =
        module_result(&pipeline, "greylist first", "greylisting").await;
    assert_eq!((grey_verdict.as_str(), grey_score), ("tempfail", 7.0));
    assert_eq!(grey["client"], CLIENT);
    assert_eq!(grey["network"], "198.51.100.0/24");
    // spamd's points are what tips it over: 7 + spam ≥ 8, and spam alone < 5 (no reject)
    let (spam_verdict, spam_score, _) =
        module_result(&pipeline, "greylist first", "spamassassin").await;
    assert_eq!(spam_verdict, "reject");
    assert!((1.0..5.0).contains(&spam_score), "spamd score {spam_score}");

    // 2. The retry after initial-period is delivered, and the client whitelisted.
    // (the database's clock decides; wait on it, not on ours)
    eventually(
        Duration::from_secs(20),
        "the triplet past the period",
        || async {
            let age: i64 = sqlx::query_scalar(
                "SELECT MIN(TIMESTAMPDIFF(MICROSECOND, first_seen, UTC_TIMESTAMP(6))) \
             FROM greylist_triplet",
            )
            .fetch_one(&pipeline.db.pool)
            .await
            .ok()?;
            (age >= 2_000_000).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(first_sent.elapsed() >= Duration::from_secs(2));
    let (success, reply, transcript) =
        send_from_client(&pipeline, "greylist retry", "news@example.org").await;
    assert!(success, "{transcript}");
    assert!(reply.starts_with("250"), "{reply}");
    let (grey_verdict, _, grey) = module_result(&pipeline, "greylist retry", "greylisting").await;
    assert_eq!(grey_verdict, "permit");
    assert_eq!(grey["whitelisted"], true);
    assert!(grey["time_diff"].as_f64().unwrap() >= 2.0, "{grey}");
    let whitelist: Vec<String> = sqlx::query_scalar("SELECT ip FROM greylist_whitelist")
        .fetch_all(&pipeline.db.pool)
        .await
        .unwrap();
    assert_eq!(whitelist, [CLIENT]);

    // 3. Another sender from the whitelisted client: delivered at once.
    let (success, _, transcript) =
        send_from_client(&pipeline, "greylist whitelisted", "other@example.org").await;
    assert!(success, "{transcript}");
    let (grey_verdict, _, grey) =
        module_result(&pipeline, "greylist whitelisted", "greylisting").await;
    assert_eq!(grey_verdict, "permit");
    assert_eq!(grey["found_in_whitelist"], true);

    eventually(Duration::from_secs(20), "delivery of both", || async {
        let mbox = pipeline.postfix.mailbox();
        (mbox.contains("Subject: greylist retry") && mbox.contains("Subject: greylist whitelisted"))
            .then_some(())
    })
    .await
    .unwrap();
    assert!(
        !pipeline
            .postfix
            .mailbox()
            .contains("Subject: greylist first")
    );
    pipeline.stop().await.unwrap();
}
