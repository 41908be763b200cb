//! Events that can never be stored go to the dead-letter queue with the reason; the good events
//! of the same batch are stored.

use platform::broker::AUDIT_QUEUE;
use wire::{Action, WIRE_VERSION};

use crate::support::{self, Env, count};

#[tokio::test]
async fn poison_events_are_dead_lettered_and_the_rest_of_their_batch_is_stored() {
    let env = Env::new().await;
    let publisher = env.publisher().await;

    let good: Vec<_> = (0..3).map(|_| support::event()).collect();
    let mut too_long = support::event();
    too_long.message.queue_id = "Q".repeat(100);
    let mut twice = support::event();
    let again = support::result(
        twice.message_id,
        "rspamd",
        Action::Permit,
        0.0,
        serde_json::json!({}),
        false,
    );
    twice.results.push(again);
    let next_version = format!(
        r#"{{"version":{},"message_id":"{}","message":{{"queue_id":"4NEXT"}}}}"#,
        WIRE_VERSION + 1,
        wire::MessageId::new()
    );

    // queued before the auditor starts, so they arrive in one batch
    publisher.publish_event(&good[0]).await;
    publisher.publish(b"\xff\x00 this is not JSON").await;
    publisher.publish_event(&too_long).await;
    publisher.publish_event(&good[1]).await;
    publisher.publish(next_version.as_bytes()).await;
    publisher.publish_event(&twice).await;
    publisher.publish_event(&good[2]).await;

    let auditor = env.start_auditor();
    for event in &good {
        env.wait_stored(event.message_id).await;
    }
    let dead = publisher.dead_letters(4).await;
    auditor.stop().await;

    let reason_of = |body: &[u8]| -> &str {
        let found: Vec<&str> = dead
            .iter()
            .filter(|(b, _)| b.as_slice() == body)
            .map(|(_, reason)| reason.as_str())
            .collect();
        assert_eq!(found.len(), 1, "one dead letter with that body, as it came");
        found[0]
    };
    let reason = reason_of(&wire::contract::encode(&too_long));
    assert!(
        reason.starts_with("refused by the database")
            && reason.contains("Data too long for column 'queue_id'"),
        "{reason}"
    );
    let reason = reason_of(&wire::contract::encode(&twice));
    assert!(
        reason.starts_with("refused by the database") && reason.contains("Duplicate entry"),
        "{reason}"
    );
    let reason = reason_of(b"\xff\x00 this is not JSON");
    assert!(reason.starts_with("undecodable message"), "{reason}");
    assert_eq!(
        reason_of(next_version.as_bytes()),
        format!(
            "wire version {} is not supported (this build speaks major version {WIRE_VERSION})",
            WIRE_VERSION + 1
        )
    );

    // nothing of a refused event is left behind, not even half of it
    let pool = env.pool();
    for refused in [&too_long, &twice] {
        for table in [
            "message",
            "message_header",
            "message_result",
            "message_recipient",
        ] {
            assert_eq!(count(pool, table, refused.message_id).await, 0, "{table}");
        }
        let sessions: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM session WHERE id = ?")
            .bind(refused.session.session_id)
            .fetch_one(pool)
            .await
            .unwrap();
        assert_eq!(sessions, 0);
    }
    assert_eq!(
        publisher.ready(AUDIT_QUEUE).await,
        0,
        "poison and good events acked"
    );
    assert_eq!(
        publisher
            .ready(platform::broker::AUDIT_DEAD_LETTER_QUEUE)
            .await,
        0,
        "exactly four dead letters"
    );
}
