//! Issue 5's body archive end to end: the gateway puts the body in the audit event (at most
//! `[gateway] audit-body-max-size`), the auditor stores it in `message_body`, and a body that
//! was cut says so (`message.body_truncated`), with the whole body's size beside it.

use std::time::Duration;

use test_support::eventually;

use crate::Pipeline;

/// What the archive holds for the message with this subject, once stored:
/// (body as stored, body_size, body_truncated).
async fn archived_body(pipeline: &Pipeline, subject: &str) -> (Vec<u8>, u64, bool) {
    let pool = &pipeline.db.pool;
    let (id, body_size, body_truncated): (Vec<u8>, u64, bool) =
        eventually(Duration::from_secs(30), "the archived message", || async {
            sqlx::query_as("SELECT id, body_size, body_truncated FROM message WHERE subject = ?")
                .bind(subject)
                .fetch_optional(pool)
                .await
                .ok()
                .flatten()
        })
        .await
        .unwrap();
    // the body chunks are written in the message's own transaction: no wait needed
    let chunks: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT body FROM message_body WHERE message = ? ORDER BY sequence")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
    (chunks.concat(), body_size, body_truncated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_body_reaches_the_archive_and_a_body_beyond_the_audit_limit_is_stored_cut_and_marked() {
    const LIMIT: usize = 2048;
    let pipeline = Pipeline::start(|c| c.gateway.audit_body_max_size = LIMIT)
        .await
        .unwrap();

    // A short body: stored whole.
    let short = "Short and sweet: body-marker-7f3a.\nSecond line.";
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: short body",
            "--body",
            short,
        ])
        .await
        .unwrap();
    assert!(sent.success, "{}", sent.transcript);
    let (stored, size, truncated) = archived_body(&pipeline, "short body").await;
    let text = String::from_utf8_lossy(&stored).into_owned();
    assert!(
        text.contains("Short and sweet: body-marker-7f3a.\r\nSecond line."),
        "the body as Postfix passed it (CRLF): {text:?}"
    );
    assert_eq!(stored.len() as u64, size, "all of it");
    assert!(!truncated);

    // A body of 5.6 KB: the first LIMIT bytes, marked truncated, the whole size kept.
    let long: String = (0..100)
        .map(|i| format!("line {i:04}: the quick brown fox jumps over the lazy dog\n"))
        .collect();
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: long body",
            "--body",
            &long,
        ])
        .await
        .unwrap();
    assert!(sent.success, "{}", sent.transcript);
    let (stored, size, truncated) = archived_body(&pipeline, "long body").await;
    assert_eq!(stored.len(), LIMIT, "cut at audit-body-max-size");
    assert!(truncated, "marked truncated");
    let expected_prefix = long.replace('\n', "\r\n");
    assert!(
        size >= expected_prefix.len() as u64,
        "body_size is the whole body's, not the stored part's: {size}"
    );
    assert_eq!(
        String::from_utf8_lossy(&stored),
        expected_prefix[..LIMIT],
        "the stored part is the body's beginning"
    );

    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_body_is_archived_when_body_retention_is_off() {
    let pipeline = Pipeline::start(|c| c.auditor.archive_retention_body = Duration::ZERO)
        .await
        .unwrap();
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: body off",
            "--body",
            "Not to be kept.",
        ])
        .await
        .unwrap();
    assert!(sent.success, "{}", sent.transcript);
    let (stored, size, truncated) = archived_body(&pipeline, "body off").await;
    assert!(stored.is_empty(), "no body rows");
    assert!(size > 0, "the size is still recorded");
    assert!(!truncated);
    pipeline.stop().await.unwrap();
}
