//! The body in the audit event (issue 5): its first `audit-body-max-size` bytes, and none when
//! `archive-retention-body` is 0s; the size and hash are always the whole body's.

use std::time::Duration;

use test_support::TestBroker;

use crate::helpers::*;

/// The audit event of one message (body `Hello from tests/it.\r\n`, 22 bytes).
async fn event_with(adjust: impl FnOnce(&mut platform::config::Config)) -> wire::AuditEvent {
    let broker = TestBroker::new().unwrap();
    let _worker = Worker::start(&broker.url).await;
    let mut config = config(&broker.url);
    adjust(&mut config);
    let gateway = Gateway::start(config).await;
    gateway.wait_until_ready().await;
    let mut tap = AuditTap::start(&broker.url).await;
    let mut mta = Mta::connect(gateway.addr).await;
    mta.client().await;
    mta.message("permit@example.org", &["rcpt@mailbox.test"], "BODYQID")
        .await;
    let event = tap
        .next_for("BODYQID", Duration::from_secs(30))
        .await
        .expect("the audit event");
    mta.quit().await;
    gateway.stop().await;
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_carries_the_body_cut_at_audit_body_max_size() {
    let event = event_with(|c| c.gateway.audit_body_max_size = 8).await;
    assert_eq!(event.message.body.as_deref(), Some(b"Hello fr".as_slice()));
    assert_eq!(event.message.body_size, 22, "the whole body's size");
    assert!(event.message.body_truncated());

    let event = event_with(|_| {}).await;
    assert_eq!(
        event.message.body.as_deref(),
        Some(b"Hello from tests/it.\r\n".as_slice())
    );
    assert!(!event.message.body_truncated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_body_in_the_event_when_bodies_are_not_archived() {
    let event = event_with(|c| c.auditor.archive_retention_body = Duration::ZERO).await;
    assert_eq!(event.message.body, None);
    assert_eq!(event.message.body_size, 22);
    let event = event_with(|c| c.gateway.audit_body_max_size = 0).await;
    assert_eq!(event.message.body, None);
}
