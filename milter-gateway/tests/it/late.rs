//! Late results (issue 4): when the breaker fires, or the message deadline passes before a
//! module's own timeout, Postfix gets its answer at once; the module's result that comes
//! afterwards is still recorded in the audit event, marked late, and changes nothing of the
//! verdict. The event is spooled (answered) before the answer, held from publishing while the
//! module is outstanding, and published once, with the late result or, once the module's
//! timeout passed, without it.
//!
//! The slow module is played by [`HeldWorker`] (`spamassassin`), which answers a `held.test`
//! sender only when the test says so: no guessing how slow is slow enough.

use std::time::Duration;

use milter_gateway::milter::Response;
use test_support::{TestBroker, eventually};
use wire::Action;

use crate::helpers::*;

/// rspamd by [`Worker`] (by sender), spamassassin by [`HeldWorker`], breaker at 5.
async fn start(
    adjust: impl FnOnce(&mut platform::config::Config),
) -> (TestBroker, Worker, HeldWorker, Gateway, std::path::PathBuf) {
    let broker = TestBroker::new().unwrap();
    let worker = Worker::start(&broker.url).await;
    let held = HeldWorker::start(&broker.url, "spamassassin").await;
    let mut config = config(&broker.url);
    config.spamassassin.enabled = true;
    config.spamassassin.timeout = Duration::from_secs(60);
    config.breaker_score = 5.0;
    adjust(&mut config);
    let spool_dir = config.gateway.spool_dir.clone();
    let gateway = Gateway::start(config).await;
    gateway.wait_until_ready().await;
    (broker, worker, held, gateway, spool_dir)
}

/// The spooled event of the message, once it is in the spool marked answered (the rename
/// follows the answer): (file name, event).
async fn in_spool(spool_dir: &std::path::Path, queue_id: &str) -> (String, wire::AuditEvent) {
    eventually(Duration::from_secs(30), "the spooled event", || async {
        spooled(spool_dir)
            .into_iter()
            .find(|(name, e)| e.message.queue_id == queue_id && name.ends_with(".answered"))
    })
    .await
    .unwrap()
}

async fn gone_from_spool(spool_dir: &std::path::Path, queue_id: &str) {
    eventually(
        Duration::from_secs(30),
        "the event leaves the spool",
        || async {
            (!spooled(spool_dir)
                .iter()
                .any(|(_, e)| e.message.queue_id == queue_id))
            .then_some(())
        },
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_after_the_breaker_fired_is_recorded_late_and_leaves_the_verdict_alone() {
    let (broker, _worker, held, gateway, spool_dir) = start(|_| {}).await;
    let mut tap = AuditTap::start(&broker.url).await;
    let sender = format!("reject@{HELD_DOMAIN}");
    let mut mta = Mta::connect(gateway.addr).await;
    mta.client().await;

    // rspamd's reject (10) reaches the breaker (5): the answer does not wait for spamassassin.
    let replies = mta
        .message(&sender, &["rcpt@mailbox.test"], "LATEQID1")
        .await;
    assert_eq!(
        replies.last(),
        Some(&Response::ReplyCode(format!(
            "550 5.7.1 {REJECT_REASON} (LATEQID1)"
        ))),
        "{replies:?}"
    );
    eventually(
        Duration::from_secs(30),
        "spamassassin's request",
        || async { held.saw(&sender).then_some(()) },
    )
    .await
    .unwrap();

    // On disk before the answer, marked answered; not published while spamassassin may answer.
    let (file, spooled_event) = in_spool(&spool_dir, "LATEQID1").await;
    assert!(file.ends_with(".answered"), "{file}");
    assert_eq!(
        spooled_event.results.len(),
        1,
        "{:?}",
        spooled_event.results
    );
    assert!(
        tap.next_for("LATEQID1", Duration::from_secs(1))
            .await
            .is_none(),
        "published while a module was outstanding"
    );

    held.release();
    let event = tap
        .next_for("LATEQID1", Duration::from_secs(30))
        .await
        .expect("the event is published once the late result came");
    assert!(event.answered);
    assert_eq!(event.verdict.verdict, Action::Reject);
    assert_eq!(event.verdict.applied, Action::Reject);
    assert_eq!(
        event.verdict, spooled_event.verdict,
        "the late result changed nothing of the verdict"
    );
    assert_eq!(event.results.len(), 2, "{:?}", event.results);
    let rspamd = &event.results[0];
    assert_eq!(rspamd.result.module, "rspamd");
    assert!(!rspamd.late);
    assert_eq!(rspamd.result.action, Action::Reject);
    let late = &event.results[1];
    assert_eq!(late.result.module, "spamassassin");
    assert!(late.late, "marked late");
    assert_eq!(late.result.score, HELD_SCORE);
    assert_eq!(late.result.message, HELD_MESSAGE);
    assert_eq!(late.weighted_score, 0.0, "it did not count");
    gone_from_spool(&spool_dir, "LATEQID1").await;
    assert!(
        tap.next_for("LATEQID1", Duration::from_secs(1))
            .await
            .is_none(),
        "published once"
    );

    mta.quit().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_after_the_message_deadline_replaces_the_error_it_counted_as() {
    let (broker, _worker, held, gateway, spool_dir) =
        start(|c| c.gateway.message_deadline = Duration::from_secs(2)).await;
    let mut tap = AuditTap::start(&broker.url).await;
    let sender = format!("permit@{HELD_DOMAIN}");
    let mut mta = Mta::connect(gateway.addr).await;
    mta.client().await;

    // spamassassin misses the deadline: an error, which tempfails (the error rule).
    let replies = mta
        .message(&sender, &["rcpt@mailbox.test"], "LATEQID2")
        .await;
    match replies.last() {
        Some(Response::ReplyCode(text)) if text.starts_with("451 4.7.1") => {}
        other => panic!("expected a tempfail, got {other:?} in {replies:?}"),
    }
    let (_, spooled_event) = in_spool(&spool_dir, "LATEQID2").await;
    assert_eq!(spooled_event.verdict.verdict, Action::Tempfail);

    held.release();
    let event = tap
        .next_for("LATEQID2", Duration::from_secs(30))
        .await
        .expect("published");
    assert_eq!(event.verdict, spooled_event.verdict, "verdict unchanged");
    let late: Vec<_> = event.results.iter().filter(|r| r.late).collect();
    let spamassassin = late
        .iter()
        .find(|r| r.result.module == "spamassassin")
        .expect("spamassassin's late result");
    assert_eq!(spamassassin.result.action, Action::Permit);
    assert_eq!(spamassassin.result.score, HELD_SCORE);
    assert_eq!(spamassassin.weighted_score, 0.0);
    let determinants = &spamassassin.result.determinants;
    assert_eq!(determinants["counted_as"]["action"], "error");
    assert_eq!(
        determinants["module_determinants"],
        serde_json::json!({ "worker": "held" })
    );
    assert_eq!(
        event
            .results
            .iter()
            .filter(|r| r.result.module == "spamassassin")
            .count(),
        1,
        "one result per module: the late one replaced the error"
    );
    gone_from_spool(&spool_dir, "LATEQID2").await;

    mta.quit().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hold_ends_with_the_module_timeout_when_no_result_comes() {
    let (broker, _worker, held, gateway, spool_dir) =
        start(|c| c.spamassassin.timeout = Duration::from_secs(3)).await;
    let mut tap = AuditTap::start(&broker.url).await;
    let sender = format!("reject@{HELD_DOMAIN}");
    let mut mta = Mta::connect(gateway.addr).await;
    mta.client().await;
    let replies = mta
        .message(&sender, &["rcpt@mailbox.test"], "LATEQID3")
        .await;
    assert!(
        matches!(replies.last(), Some(Response::ReplyCode(t)) if t.starts_with("550 5.7.1")),
        "{replies:?}"
    );
    // never released: published without it once its 3 s passed
    let event = tap
        .next_for("LATEQID3", Duration::from_secs(60))
        .await
        .expect("published after the module's timeout");
    assert!(event.answered);
    assert_eq!(event.verdict.verdict, Action::Reject);
    assert_eq!(event.results.len(), 1, "{:?}", event.results);
    assert!(!event.results[0].late);
    gone_from_spool(&spool_dir, "LATEQID3").await;
    drop(held);

    mta.quit().await;
    gateway.stop().await;
}
