//! While the database cannot be written, nothing is acked; what the auditor held goes back to the
//! queue when it stops, and the next auditor stores it.

use platform::broker::AUDIT_QUEUE;
use test_support::eventually;

use crate::support::{self, Env, WAIT};

#[tokio::test]
async fn while_the_database_is_unreachable_nothing_is_acked() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let events = [support::event(), support::event()];
    for event in &events {
        publisher.publish_event(event).await;
    }

    // nothing listens on port 1
    let mut config = env.config();
    config.database.url = "mysql://root@127.0.0.1:1/cluegetter".into();
    let unreachable = env.start_auditor_with(config);
    // the auditor holds both deliveries (none ready) ...
    eventually(WAIT, "the auditor to take both events", || async {
        (publisher.ready(AUDIT_QUEUE).await == 0).then_some(())
    })
    .await
    .unwrap();
    // ... and gives them back unacked when it stops
    unreachable.stop().await;
    eventually(WAIT, "both events back in the queue", || async {
        (publisher.ready(AUDIT_QUEUE).await == 2).then_some(())
    })
    .await
    .unwrap();

    let auditor = env.start_auditor();
    for event in &events {
        env.wait_stored(event.message_id).await;
    }
    auditor.stop().await;
    assert_eq!(publisher.ready(AUDIT_QUEUE).await, 0);
}
