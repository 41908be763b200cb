//! A redelivered or replayed event changes nothing (DESIGN.md "Durability invariants" 2).

use auditor::store::{Outcome, Store};
use platform::broker::AUDIT_QUEUE;
use sqlx::MySqlPool;
use wire::MessageId;

use crate::support::{self, Env, count};

/// Everything the archive holds for one message, to compare before and after.
async fn footprint(pool: &MySqlPool, id: MessageId) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "message",
        "message_header",
        "message_body",
        "message_result",
        "message_recipient",
    ] {
        counts.push(count(pool, table, id).await);
    }
    for sql in [
        "SELECT COUNT(*) FROM session",
        "SELECT COUNT(*) FROM recipient",
        "SELECT COUNT(*) FROM cluegetter_client",
        "SELECT COUNT(*) FROM instance",
    ] {
        counts.push(sqlx::query_scalar(sql).fetch_one(pool).await.unwrap());
    }
    counts
}

#[tokio::test]
async fn the_same_event_twice_in_one_batch_is_stored_once() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let event = support::event();
    let marker = support::event();
    // all three are queued before the auditor starts, so they arrive in one batch
    publisher.publish_event(&event).await;
    publisher.publish_event(&event).await;
    publisher.publish_event(&marker).await;
    let auditor = env.start_auditor();
    env.wait_stored(marker.message_id).await;
    auditor.stop().await;

    let pool = env.pool();
    assert_eq!(
        footprint(pool, event.message_id).await,
        // message, 4 headers, 1 body chunk, 2 results, 3 recipient links; 2 sessions, 3
        // recipients, 1 client, 1 instance
        vec![1, 4, 1, 2, 3, 2, 3, 1, 1]
    );
    assert_eq!(publisher.ready(AUDIT_QUEUE).await, 0, "all three acked");
}

#[tokio::test]
async fn a_replay_to_a_restarted_auditor_changes_nothing() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let event = support::event();
    let first = env.start_auditor();
    publisher.publish_event(&event).await;
    env.wait_stored(event.message_id).await;
    first.stop().await;
    let before = footprint(env.pool(), event.message_id).await;
    let date_before: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT date FROM message WHERE id = ?")
            .bind(event.message_id.0)
            .fetch_one(env.pool())
            .await
            .unwrap();

    // a gateway replaying its spool sends the same event again, perhaps changed in transit
    let mut replayed = event.clone();
    replayed.message.received_at = support::now();
    replayed.verdict.reason = "something else".into();
    let mut marker = support::event();
    marker.session = event.session.clone();
    let second = env.start_auditor();
    publisher.publish_event(&replayed).await;
    publisher.publish_event(&marker).await;
    env.wait_stored(marker.message_id).await;
    second.stop().await;

    assert_eq!(footprint(env.pool(), event.message_id).await, before);
    let (date_after, reason): (chrono::DateTime<chrono::Utc>, String) =
        sqlx::query_as("SELECT date, verdict_msg FROM message WHERE id = ?")
            .bind(event.message_id.0)
            .fetch_one(env.pool())
            .await
            .unwrap();
    assert_eq!(
        (date_after, reason.as_str()),
        (date_before, "Spam detected")
    );
    assert_eq!(publisher.ready(AUDIT_QUEUE).await, 0);
}

/// A consumer that committed a batch and was killed before its ack: the broker redelivers the
/// events to the next auditor, which finds their rows and only acks.
#[tokio::test]
async fn a_redelivery_of_a_committed_but_unacked_event_is_skipped_and_acked() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let event = support::event();
    // the killed consumer's commit
    let mut store = Store::new(env.pool().clone());
    assert_eq!(
        store.write_batch(&[&event]).await.unwrap(),
        vec![Outcome::Stored]
    );
    let before = footprint(env.pool(), event.message_id).await;
    assert_eq!(
        store.write_batch(&[&event]).await.unwrap(),
        vec![Outcome::Duplicate]
    );

    // the broker's redelivery
    publisher.publish_event(&event).await;
    let mut marker = support::event();
    marker.session = event.session.clone();
    publisher.publish_event(&marker).await;
    let auditor = env.start_auditor();
    env.wait_stored(marker.message_id).await;
    auditor.stop().await;

    assert_eq!(footprint(env.pool(), event.message_id).await, before);
    assert_eq!(
        publisher.ready(AUDIT_QUEUE).await,
        0,
        "the redelivery was acked"
    );
}
