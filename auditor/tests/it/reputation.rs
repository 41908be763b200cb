//! The reputation counters (`reputation_count`, schema 0010): written in the transaction that
//! archives a message, once per message UUID; noop counts like production; refusals decided
//! only by greylisting, quotas or reputation count in `messages` alone; pruned by the window.
//! And `message_result.decisive`.

use std::time::Duration;

use auditor::prune::{Pruner, Retention};
use auditor::store::{Kinds, Outcome, Store};
use chrono::Utc;
use platform::reputation::Prefixes;
use sqlx::MySqlPool;
use tokio_util::sync::CancellationToken;
use wire::{Action, AuditEvent};

use crate::support::{self, Env};

fn kinds() -> Kinds {
    Kinds {
        reputation: Some(Prefixes::default()),
        ..Kinds::ALL
    }
}

/// An event from `ip` with the given verdict and results (weighted = raw).
fn judged(ip: &str, verdict: Action, noop: bool, results: &[(&str, Action, f64)]) -> AuditEvent {
    let mut event = support::event();
    event.session.client_addr = Some(ip.parse().unwrap());
    event.verdict.verdict = verdict;
    event.verdict.noop = noop;
    event.verdict.applied = if noop { Action::Permit } else { verdict };
    event.results = results
        .iter()
        .map(|(module, action, score)| {
            let mut r = support::result(
                event.message_id,
                module,
                *action,
                *score,
                serde_json::json!({}),
                false,
            );
            r.weighted_score = *score;
            r
        })
        .collect();
    event.verdict.reject_score = results
        .iter()
        .filter(|r| r.1 == Action::Reject)
        .map(|r| r.2)
        .sum();
    event
}

/// (messages, rejected, tempfailed, permitted, reject_score) of a value, all days.
async fn counts(pool: &MySqlPool, factor: &str, value: &str) -> (i64, i64, i64, i64, f64) {
    sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(messages), 0) AS SIGNED), \
             CAST(COALESCE(SUM(rejected), 0) AS SIGNED), \
             CAST(COALESCE(SUM(tempfailed), 0) AS SIGNED), \
             CAST(COALESCE(SUM(permitted), 0) AS SIGNED), COALESCE(SUM(reject_score), 0) \
         FROM reputation_count WHERE factor = ? AND value = ?",
    )
    .bind(factor)
    .bind(value)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn each_message_counts_once_as_its_verdict_says() {
    let env = Env::new().await;
    let pool = env.pool();
    let ip = "198.51.100.50";
    let spam = judged(
        ip,
        Action::Reject,
        false,
        &[("rspamd", Action::Reject, 15.0)],
    );
    // noop: Postfix was told permit, it counts as the reject it would have been
    let noop_spam = judged(
        ip,
        Action::Reject,
        true,
        &[("rspamd", Action::Reject, 15.0)],
    );
    let greylisted = judged(
        ip,
        Action::Tempfail,
        false,
        &[("greylisting", Action::Tempfail, 9.0)],
    );
    let over_quota = judged(
        ip,
        Action::Reject,
        false,
        &[("quotas", Action::Reject, 100.0)],
    );
    let by_reputation = judged(
        ip,
        Action::Reject,
        false,
        &[
            ("rspamd", Action::Permit, 0.0),
            ("reputation", Action::Reject, 8.0),
        ],
    );
    let shared = judged(
        ip,
        Action::Reject,
        false,
        &[
            ("rspamd", Action::Reject, 3.0),
            ("reputation", Action::Reject, 3.0),
        ],
    );
    let clean = judged(
        ip,
        Action::Permit,
        false,
        &[("rspamd", Action::Reject, 1.0)],
    );
    let batch = [
        &spam,
        &noop_spam,
        &spam, // twice in one batch
        &greylisted,
        &over_quota,
        &by_reputation,
        &shared,
        &clean,
    ];
    let mut store = Store::with_kinds(pool.clone(), kinds());
    let outcomes = store.write_batch(&batch).await.unwrap();
    assert_eq!(outcomes[2], Outcome::Duplicate);
    // redelivered later: nothing counts again
    assert_eq!(
        store.write_batch(&[&spam, &clean]).await.unwrap(),
        vec![Outcome::Duplicate; 2]
    );

    // 7 messages; refused by a scanner: spam, noop_spam, shared (3 of reputation's 6 points
    // are not the sender's record: 15 + 15 + 3 + 1 = 34)
    assert_eq!(counts(pool, "client_address", ip).await, (7, 3, 0, 1, 34.0));
    assert_eq!(
        counts(pool, "client_network", "198.51.100.0/24").await,
        (7, 3, 0, 1, 34.0)
    );
    // support::event has the SASL login alice: the sender domain counts
    assert_eq!(counts(pool, "sasl_username", "alice").await.0, 7);
    assert_eq!(counts(pool, "sender_domain", "example.org").await.0, 7);
    let days: i64 = sqlx::query_scalar("SELECT COUNT(DISTINCT day) FROM reputation_count")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(days, 1);

    // an unauthenticated sender domain does not count; one whose SPF passed does
    let mut forged = judged(
        "203.0.113.9",
        Action::Reject,
        false,
        &[("rspamd", Action::Reject, 15.0)],
    );
    forged.session.sasl_username.clear();
    forged.message.sender = "someone@forged.example".into();
    let mut spf = judged(
        "203.0.113.9",
        Action::Permit,
        false,
        &[("reputation", Action::Permit, 0.0)],
    );
    spf.session.sasl_username.clear();
    spf.message.sender = "someone@spf.example".into();
    spf.results[0].result.determinants = serde_json::json!({ "sender_domain_spf": "pass" });
    store.write_batch(&[&forged, &spf]).await.unwrap();
    assert_eq!(counts(pool, "sender_domain", "forged.example").await.0, 0);
    assert_eq!(
        counts(pool, "sender_domain", "spf.example").await,
        (1, 0, 0, 1, 0.0)
    );
    assert_eq!(
        counts(pool, "client_address", "203.0.113.9").await,
        (2, 1, 0, 1, 15.0)
    );

    // the decisive flag of each result
    let decisive: Vec<(String, Option<bool>)> = sqlx::query_as(
        "SELECT module, decisive FROM message_result WHERE message = ? ORDER BY module",
    )
    .bind(shared.message_id.0)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        decisive,
        [
            ("reputation".into(), Some(true)),
            ("rspamd".into(), Some(true))
        ]
    );
    let decisive: Vec<(String, Option<bool>)> = sqlx::query_as(
        "SELECT module, decisive FROM message_result WHERE message = ? ORDER BY module",
    )
    .bind(by_reputation.message_id.0)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(
        decisive,
        [
            ("reputation".into(), Some(true)),
            ("rspamd".into(), Some(false))
        ]
    );
}

#[tokio::test]
async fn without_the_module_nothing_is_counted_and_old_days_are_pruned() {
    let env = Env::new().await;
    let pool = env.pool();
    let mut store = Store::new(pool.clone());
    store.write_batch(&[&support::event()]).await.unwrap();
    let none: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reputation_count")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(none, 0, "Kinds::ALL counts nothing: [reputation] is off");

    let mut old = support::event();
    old.message.received_at = Utc::now() - chrono::Duration::days(9);
    let mut recent = support::event();
    recent.message.received_at = Utc::now() - chrono::Duration::days(6);
    let mut store = Store::with_kinds(pool.clone(), kinds());
    store.write_batch(&[&old, &recent]).await.unwrap();
    let rows = |pool: MySqlPool| async move {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM reputation_count")
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    assert_eq!(rows(pool.clone()).await, 8, "4 factors × 2 days");

    let mut config = env.config();
    config.reputation.enabled = true;
    let pruner = Pruner::new(pool.clone(), "default", Retention::from_config(&config))
        .with_batches(3, Duration::ZERO);
    let pruned = pruner
        .prune_once(Utc::now(), &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(pruned.reputation_count, 4);
    assert_eq!(rows(pool.clone()).await, 4);
}
