//! `auditor dead-letters count|show|replay`: dead-lettered events wait with their reason and go
//! back once the cause is fixed; one that is still poison comes back to the dead-letter queue.

use auditor::dead_letters;
use platform::broker::{AUDIT_DEAD_LETTER_QUEUE, AUDIT_QUEUE};
use test_support::eventually;

use crate::support::{self, Env, WAIT, count};

#[tokio::test]
async fn dead_letters_are_shown_and_replayed_once_the_cause_is_fixed() {
    let env = Env::new().await;
    let url = platform::config::Urls::from(env.broker.url.as_str());
    let publisher = env.publisher().await;
    assert_eq!(dead_letters::count(&url).await.unwrap(), 0);

    // a queue id longer than its column: refused until an operator widens the column
    let mut too_long = support::event();
    too_long.message.queue_id = "Q".repeat(40);
    let garbage = b"\xff this is not an event".as_slice();
    let good = support::event();
    publisher.publish_event(&too_long).await;
    publisher.publish(garbage).await;
    publisher.publish_event(&good).await;

    let auditor = env.start_auditor();
    env.wait_stored(good.message_id).await;
    eventually(WAIT, "two dead letters", || {
        let url = url.clone();
        async move { (dead_letters::count(&url).await.ok()? == 2).then_some(()) }
    })
    .await
    .unwrap();

    let (total, shown) = dead_letters::show(&url, 10).await.unwrap();
    assert_eq!(total, 2);
    assert_eq!(shown.len(), 2);
    let refused = shown
        .iter()
        .find(|letter| letter.message_id == too_long.message_id.to_string())
        .expect("the refused event is shown");
    assert_eq!(refused.queue_id, too_long.message.queue_id);
    assert!(
        refused
            .reason
            .contains("Data too long for column 'queue_id'"),
        "{}",
        refused.reason
    );
    assert_eq!(refused.replays, 0);
    let undecodable = shown
        .iter()
        .find(|letter| letter.message_id == "unknown")
        .expect("the undecodable event is shown");
    assert!(
        undecodable.reason.starts_with("undecodable message"),
        "{}",
        undecodable.reason
    );
    assert_eq!(undecodable.bytes, garbage.len());
    // showing takes nothing away
    assert_eq!(dead_letters::count(&url).await.unwrap(), 2);

    // the operator widens the column, then replays
    sqlx::query("ALTER TABLE message MODIFY queue_id VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL")
        .execute(env.pool())
        .await
        .unwrap();
    assert_eq!(dead_letters::replay(&url, None).await.unwrap(), 2);
    env.wait_stored(too_long.message_id).await;
    assert_eq!(
        count(env.pool(), "message_header", too_long.message_id).await,
        4
    );

    // the undecodable one is poison still: it is back, once replayed
    eventually(WAIT, "the undecodable event dead-lettered again", || {
        let url = url.clone();
        async move {
            let (_, shown) = dead_letters::show(&url, 10).await.ok()?;
            (shown.len() == 1 && shown[0].replays == 1).then_some(())
        }
    })
    .await
    .unwrap();
    auditor.stop().await;

    // with the auditor stopped, a replay with a limit moves that many and leaves the rest
    assert_eq!(dead_letters::replay(&url, Some(0)).await.unwrap(), 0);
    assert_eq!(dead_letters::replay(&url, Some(5)).await.unwrap(), 1);
    assert_eq!(publisher.ready(AUDIT_DEAD_LETTER_QUEUE).await, 0);
    assert_eq!(publisher.ready(AUDIT_QUEUE).await, 1);
}
