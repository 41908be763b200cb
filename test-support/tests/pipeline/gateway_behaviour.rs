//! Issue 4's end-to-end cases: noop, whitelist, a module whose workers are gone, `[U]`
//! headers and the inserted Message-ID, observed in the delivered mail and the archive.

use std::time::{Duration, Instant};

use test_support::eventually;

use crate::{GTUBE, Pipeline};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn noop_delivers_spam_but_archives_the_verdict_it_would_have_had() {
    let pipeline = Pipeline::start(|c| c.noop = true).await.unwrap();
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: noop gtube",
            "--body",
            GTUBE,
        ])
        .await
        .unwrap();
    assert!(sent.success, "noop must deliver:\n{}", sent.transcript);
    eventually(Duration::from_secs(20), "delivery", || async {
        pipeline
            .postfix
            .mailbox()
            .contains("Subject: noop gtube")
            .then_some(())
    })
    .await
    .unwrap();
    let (verdict, applied, noop, _) = pipeline.archived("noop gtube").await.unwrap();
    assert_eq!(
        (verdict.as_str(), applied.as_str(), noop),
        ("reject", "permit", true)
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn whitelisted_client_is_permitted_but_still_checked_and_archived() {
    let pipeline = Pipeline::start(|c| c.whitelist = vec!["127.0.0.0/8".parse().unwrap()])
        .await
        .unwrap();
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: whitelisted gtube",
            "--body",
            GTUBE,
        ])
        .await
        .unwrap();
    assert!(
        sent.success,
        "whitelisted client refused:\n{}",
        sent.transcript
    );
    let (verdict, applied, noop, whitelisted) =
        pipeline.archived("whitelisted gtube").await.unwrap();
    assert_eq!(
        (verdict.as_str(), applied.as_str(), noop, whitelisted),
        ("reject", "permit", false, true)
    );
    let results: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM message_result r JOIN message m ON m.id = r.message \
         WHERE m.subject = 'whitelisted gtube' AND r.module = 'rspamd' AND r.verdict = 'reject'",
    )
    .fetch_one(&pipeline.db.pool)
    .await
    .unwrap();
    assert_eq!(results, 1, "the module still checked it");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_module_without_workers_tempfails_within_its_timeout_and_is_archived_as_error() {
    let pipeline = Pipeline::start_without_workers(|c| c.rspamd.timeout = Duration::from_secs(2))
        .await
        .unwrap();
    let started = Instant::now();
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: nobody home",
        ])
        .await
        .unwrap();
    let elapsed = started.elapsed();
    assert!(!sent.success, "{}", sent.transcript);
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    assert!(
        reply.starts_with("451 4.7.1"),
        "{reply}\n{}",
        sent.transcript
    );
    assert!(!reply.starts_with("421"), "never 421 (C.19)");
    assert!(
        elapsed < Duration::from_secs(15),
        "answered after {elapsed:?}"
    );
    let (verdict, applied, _, _) = pipeline.archived("nobody home").await.unwrap();
    assert_eq!(
        (verdict.as_str(), applied.as_str()),
        ("tempfail", "tempfail")
    );
    let module_verdict: String = sqlx::query_scalar(
        "SELECT r.verdict FROM message_result r JOIN message m ON m.id = r.message \
         WHERE m.subject = 'nobody home' AND r.module = 'rspamd'",
    )
    .fetch_one(&pipeline.db.pool)
    .await
    .unwrap();
    assert_eq!(module_verdict, "error");
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unique_headers_are_replaced_and_a_missing_message_id_is_inserted() {
    let pipeline = Pipeline::start(|c| {
        c.add_header = vec![
            platform::config::AddHeader::parse("[U] X-Spam-Flag: %{spamFlag}").unwrap(),
            platform::config::AddHeader::parse("X-Scanned: cluegetter at %{hostname}").unwrap(),
        ];
    })
    .await
    .unwrap();
    // No Message-ID, and two forged X-Spam-Flag headers.
    let data = "From: a@example.org\\nTo: rcpt@mailbox.test\\nSubject: header work\\n\
                X-Spam-Flag: forged-1\\nX-Spam-Flag: forged-2\\n\\nhello\\n";
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--data",
            data,
        ])
        .await
        .unwrap();
    assert!(sent.success, "{}", sent.transcript);
    let mbox = eventually(Duration::from_secs(20), "delivery", || async {
        let mbox = pipeline.postfix.mailbox();
        mbox.contains("Subject: header work").then_some(mbox)
    })
    .await
    .unwrap();
    assert!(
        !mbox.contains("forged-"),
        "[U] deleted every occurrence:\n{mbox}"
    );
    assert!(mbox.contains("X-Spam-Flag: NO"), "{mbox}");
    assert!(
        mbox.contains("X-Scanned: cluegetter at mx.cluegetter.test"),
        "{mbox}"
    );
    assert!(
        mbox.contains(".cluegetter@mx.cluegetter.test>"),
        "inserted Message-ID:\n{mbox}"
    );
    let id_line = mbox
        .lines()
        .find(|l| l.starts_with("X-Cluegetter-Id: "))
        .unwrap_or_else(|| panic!("no X-Cluegetter-Id:\n{mbox}"));
    // the archive stores the inserted Message-ID, and the id header names the archived message
    let uuid = id_line
        .trim_start_matches("X-Cluegetter-Id: ")
        .trim()
        .to_owned();
    let stored: String = eventually(Duration::from_secs(20), "the archive row", || async {
        sqlx::query_scalar::<_, String>(
            "SELECT messageId FROM message WHERE id = UNHEX(REPLACE(?, '-', ''))",
        )
        .bind(&uuid)
        .fetch_optional(&pipeline.db.pool)
        .await
        .ok()
        .flatten()
    })
    .await
    .unwrap();
    assert!(
        stored.ends_with(".cluegetter@mx.cluegetter.test>"),
        "{stored}"
    );
    pipeline.stop().await.unwrap();
}
