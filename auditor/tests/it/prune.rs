//! Archive retention: rows of various ages, pruned per kind as ClueGetter did, this instance
//! only, never below the safeguard; and `archive-retention-* = 0s` stores nothing of a kind.

use std::time::Duration;

use auditor::prune::{Pruned, Pruner, Retention};
use auditor::store::{Kinds, Outcome, Store};
use chrono::{DateTime, Utc};
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use wire::AuditEvent;

use crate::support::{self, Env, count};

/// An event of `instance` that ended `age` ago, its session opened 5 s before.
fn event_aged(instance: &str, age: chrono::Duration) -> AuditEvent {
    let mut event = support::event();
    event.instance = instance.into();
    event.message.received_at = support::now() - age;
    event.session.connected_at = event.message.received_at - chrono::Duration::seconds(5);
    // a UUID v7 of its own time, as the gateway gives one at MAIL FROM
    let at = event.session.connected_at;
    event.message_id = wire::MessageId(uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        at.timestamp() as u64,
        at.timestamp_subsec_nanos(),
    )));
    for result in &mut event.results {
        result.result.message_id = event.message_id;
    }
    event
}

/// (message, headers, body chunks, results, recipient links) of one message.
async fn rows(pool: &MySqlPool, event: &AuditEvent) -> [i64; 5] {
    let id = event.message_id;
    [
        count(pool, "message", id).await,
        count(pool, "message_header", id).await,
        count(pool, "message_body", id).await,
        count(pool, "message_result", id).await,
        count(pool, "message_recipient", id).await,
    ]
}

async fn scalar(pool: &MySqlPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// A quota of the `default` instance with two tally rows, `old` and `new`.
async fn quota_tally(
    pool: &MySqlPool,
    message: &AuditEvent,
    old: DateTime<Utc>,
    new: DateTime<Utc>,
) {
    for sql in [
        "INSERT INTO quota_class (id, cluegetter_instance, name) VALUES (1, 1, 'class')",
        "INSERT INTO quota_profile (id, class, name) VALUES (1, 1, 'profile')",
        "INSERT INTO quota (id, selector, value, profile) VALUES (1, 'sender', 'a@example.org', 1)",
    ] {
        sqlx::query(sql).execute(pool).await.unwrap();
    }
    for (date, message) in [(old, uuid::Uuid::now_v7()), (new, message.message_id.0)] {
        sqlx::query("INSERT INTO quota_message (quota, message, units, date, status) VALUES (1, ?, 1, ?, 'kept')")
            .bind(message)
            .bind(date)
            .execute(pool)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn rows_older_than_their_retention_are_pruned_per_kind_for_this_instance_only() {
    let env = Env::new().await;
    let pool = env.pool();
    let days = chrono::Duration::days;
    let weeks = chrono::Duration::weeks;

    let fresh = event_aged("default", days(1));
    let three_weeks = event_aged("default", weeks(3));
    let thirty_weeks = event_aged("default", weeks(30));
    let mut sixty_weeks = event_aged("default", weeks(60));
    // its only recipient address is no one else's: it goes with it
    sixty_weeks.message.recipients = vec!["only-here@example.net".into()];
    sixty_weeks.message.rejected_recipients.clear();
    // an old message in a session that also has a recent one: the session stays
    let old_in_long_session = event_aged("default", weeks(60));
    let mut recent_in_long_session = event_aged("default", days(1));
    recent_in_long_session.session = old_in_long_session.session.clone();
    // another instance, as old: not ours to prune
    let other_instance = event_aged("other", weeks(60));

    let all = [
        &fresh,
        &three_weeks,
        &thirty_weeks,
        &sixty_weeks,
        &old_in_long_session,
        &recent_in_long_session,
        &other_instance,
    ];
    let mut store = Store::new(pool.clone());
    assert_eq!(
        store.write_batch(&all).await.unwrap(),
        vec![Outcome::Stored; all.len()]
    );
    let now = Utc::now();
    quota_tally(pool, &fresh, now - weeks(53), now - days(1)).await;
    let recipients_before = scalar(pool, "SELECT COUNT(*) FROM recipient").await;
    let sessions_before = scalar(pool, "SELECT COUNT(*) FROM session").await;

    // batches of 2 rows, so every kind takes several rounds
    let pruner = Pruner::new(
        pool.clone(),
        "default",
        Retention::from_config(&env.config()),
    )
    .with_batches(2, Duration::ZERO);
    let shutdown = CancellationToken::new();
    let pruned = pruner.prune_once(now, &shutdown).await.unwrap();

    // each support::event has 4 headers, 1 body chunk, 2 results and 3 recipient links
    assert_eq!(rows(pool, &fresh).await, [1, 4, 1, 2, 3]);
    assert_eq!(
        rows(pool, &three_weeks).await,
        [1, 4, 0, 0, 3],
        "body and results: 2 weeks"
    );
    assert_eq!(
        rows(pool, &thirty_weeks).await,
        [1, 0, 0, 0, 3],
        "headers: 26 weeks"
    );
    assert_eq!(rows(pool, &sixty_weeks).await, [0; 5], "messages: 52 weeks");
    assert_eq!(rows(pool, &old_in_long_session).await, [0; 5]);
    assert_eq!(rows(pool, &recent_in_long_session).await, [1, 4, 1, 2, 3]);
    assert_eq!(
        rows(pool, &other_instance).await,
        [1, 4, 1, 2, 3],
        "another instance's"
    );
    assert_eq!(
        pruned,
        Pruned {
            // three_weeks, thirty_weeks, sixty_weeks, old_in_long_session
            message_body: 4,
            message_result: 8,
            // thirty_weeks, sixty_weeks, old_in_long_session
            message_header: 12,
            quota_message: 1,
            message_recipient: 1 + 3,
            message: 2,
            // sixty_weeks' own session
            session: 1,
            // only-here@example.net
            recipient: 1,
            message_delivery: 0,
            reputation_count: 0,
        }
    );
    assert_eq!(
        scalar(pool, "SELECT COUNT(*) FROM session").await,
        sessions_before - 1
    );
    let long_session: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM session WHERE id = ?")
        .bind(old_in_long_session.session.session_id)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(long_session, 1, "a session with a message left stays");
    assert_eq!(
        scalar(pool, "SELECT COUNT(*) FROM recipient").await,
        recipients_before - 1
    );
    assert_eq!(
        scalar(pool, "SELECT COUNT(*) FROM quota_message").await,
        1,
        "the day-old tally row stays"
    );

    // nothing left to do
    let again = pruner.prune_once(now, &shutdown).await.unwrap();
    assert_eq!(again, Pruned::default());

    // the store had the pruned address's id in its cache: new mail to it is still stored
    let mut again_to_it = support::event();
    again_to_it.message.recipients = vec!["only-here@example.net".into()];
    assert_eq!(
        store.write_batch(&[&again_to_it]).await.unwrap(),
        vec![Outcome::Stored]
    );
    assert_eq!(rows(pool, &again_to_it).await, [1, 4, 1, 2, 2]);
}

#[tokio::test]
async fn retentions_below_the_safeguard_prune_nothing() {
    let env = Env::new().await;
    let pool = env.pool();
    let ancient = event_aged("default", chrono::Duration::weeks(500));
    let mut store = Store::new(pool.clone());
    store.write_batch(&[&ancient]).await.unwrap();

    let week = Duration::from_secs(604_800);
    let retention = Retention {
        message: week,
        message_result: Duration::ZERO,
        header: Duration::ZERO,
        body: week,
        safeguard: Duration::from_secs(610_848),
        reputation_window: None,
    };
    let pruned = Pruner::new(pool.clone(), "default", retention)
        .prune_once(Utc::now(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned, Pruned::default());
    assert_eq!(rows(pool, &ancient).await, [1, 4, 1, 2, 3]);
}

#[tokio::test]
async fn a_retention_of_zero_stores_none_of_that_kind() {
    let env = Env::new().await;
    let pool = env.pool();
    let mut config = env.config();
    config.auditor.archive_retention_header = Duration::ZERO;
    config.auditor.archive_retention_body = Duration::ZERO;
    let kinds = Kinds::from_config(&config);
    assert_eq!(
        kinds,
        Kinds {
            headers: false,
            results: true,
            bodies: false,
            reputation: None,
        }
    );
    let event = support::event();
    let mut store = Store::with_kinds(pool.clone(), kinds);
    store.write_batch(&[&event]).await.unwrap();
    assert_eq!(rows(pool, &event).await, [1, 0, 0, 2, 3]);
    let truncated: bool = sqlx::query_scalar("SELECT headers_truncated FROM message WHERE id = ?")
        .bind(event.message_id.0)
        .fetch_one(pool)
        .await
        .unwrap();
    assert!(!truncated, "not storing headers is not truncating them");
}
