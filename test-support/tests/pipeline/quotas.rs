//! Issue 6's proof through the whole pipeline: ClueGetter's README quota scenario, with the SASL
//! login presented to a real Postfix by XCLIENT (so the gateway reads it from `{auth_authen}`):
//! john@doe.com (small: 150 per 24 h) gets message 151 tempfailed with the quota text, jane@doe.com
//! (large: 500 per 5 min, 10 000 per 24 h) does not; the audit events settle the reservations.

use std::sync::Arc;
use std::time::Duration;

use check_workers::modules::quotas::{QuotaStore, import};
use test_support::eventually;
use test_support::postfix::SwaksOutcome;
use tokio::sync::Semaphore;

use crate::Pipeline;

/// ClueGetter's README, "Quotas", the tables exactly as written there.
const README_JOHN_AND_JANE: &str = "\
quota:
+-----+----------------+----------------+----------+---------+------------+
| id  | selector       | value          | is_regex | profile | instigator |
+-----+----------------+----------------+----------+---------+------------+
|   1 | sasl_username  | john@doe.com   |        0 |       1 |       NULL |
|   2 | sasl_username  | jane@doe.com   |        0 |       2 |       NULL |
+-----+----------------+----------------+----------+---------+------------+

quota_profile:
+----+----------------------------+
| id | class | name               |
+----+----------------------------+
|  1 |     1 | small-sasl         |
|  2 |     1 | large-sasl         |
+----+----------------------------+

quota_class:
+----+-------------------------------+
| id | instance | name               |
+----+-------------------------------+
|  1 |        1 | Paying Customers   |
+----+-------------------------------+

quota_profile_period:
+----+---------+--------+-------+
| id | profile | period | curb  |
+----+---------+--------+-------+
|  1 |       1 |  86400 |   150 |
|  2 |       2 |    300 |   500 |
|  3 |       2 |  86400 | 10000 |
+----+---------+--------+-------+
";

/// swaks runs at once.
const PARALLEL: usize = 8;

/// Sends `count` messages logged in as `login`, `PARALLEL` at a time; the outcomes in order.
async fn send_as(
    pipeline: &Arc<Pipeline>,
    login: &str,
    first: usize,
    count: usize,
) -> Vec<SwaksOutcome> {
    let slots = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = Vec::with_capacity(count);
    for n in first..first + count {
        let pipeline = Arc::clone(pipeline);
        let slots = Arc::clone(&slots);
        let login = login.to_owned();
        tasks.push(tokio::spawn(async move {
            let _slot = slots.acquire_owned().await.unwrap();
            let subject = format!("Subject: {login} {n}");
            pipeline
                .send(&[
                    "--from",
                    &login,
                    "--to",
                    "rcpt@mailbox.test",
                    "--xclient-login",
                    &login,
                    "--header",
                    &subject,
                    "--body",
                    "quota test",
                ])
                .await
                .unwrap()
        }));
    }
    let mut outcomes = Vec::with_capacity(count);
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_john_gets_message_151_tempfailed_and_jane_does_not() {
    let pipeline = Pipeline::start(|config| {
        config.rspamd.enabled = false;
        config.quotas.enabled = true;
        config.quotas.account_sasl_username = true;
        config.quotas.account_client_address = false;
    })
    .await
    .unwrap();
    let store = QuotaStore::new(
        &pipeline.db.url,
        2,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )
    .unwrap();
    store
        .import(&import::parse(README_JOHN_AND_JANE).unwrap())
        .await
        .unwrap();
    let pipeline = Arc::new(pipeline);

    let john = send_as(&pipeline, "john@doe.com", 1, 150).await;
    for (n, outcome) in john.iter().enumerate() {
        let reply = outcome.data_reply().unwrap_or_default();
        assert!(
            reply.starts_with("250"),
            "john's message {} was refused: {reply}\n{}",
            n + 1,
            outcome.transcript
        );
    }
    let refused = send_as(&pipeline, "john@doe.com", 151, 1).await;
    let reply = refused[0].data_reply().unwrap_or_default().to_owned();
    assert!(
        reply.starts_with("451 4.7.1"),
        "{reply}\n{}",
        refused[0].transcript
    );
    assert!(
        reply.contains(
            "Exceeding quota, max of 150 messages per 86400 seconds for sasl_username 'john@doe.com'"
        ),
        "{reply}"
    );

    let jane = send_as(&pipeline, "jane@doe.com", 1, 151).await;
    for (n, outcome) in jane.iter().enumerate() {
        let reply = outcome.data_reply().unwrap_or_default();
        assert!(
            reply.starts_with("250"),
            "jane's message {} was refused: {reply}\n{}",
            n + 1,
            outcome.transcript
        );
    }

    // The audit events settle the reservations: john's 150 and jane's 151 are kept; the
    // tempfailed message reserved nothing.
    let pool = &pipeline.db.pool;
    let kept = eventually(Duration::from_secs(60), "every reservation kept", || async {
        let counts: (u64, u64, u64) = sqlx::query_as(
            "SELECT CAST(COALESCE(SUM(IF(quota = 1 AND status = 'kept', units, 0)), 0) AS UNSIGNED), \
                    CAST(COALESCE(SUM(IF(quota = 2 AND status = 'kept', units, 0)), 0) AS UNSIGNED), \
                    CAST(COALESCE(SUM(status <> 'kept'), 0) AS UNSIGNED) \
             FROM quota_message",
        )
        .fetch_one(pool)
        .await
        .ok()?;
        (counts.0 == 150 && counts.1 == 151 && counts.2 == 0).then_some(counts)
    })
    .await
    .unwrap();
    assert_eq!(kept, (150, 151, 0));

    // The archive holds the quota's explanation of the refused message.
    let (verdict, determinants): (String, String) = eventually(
        Duration::from_secs(20),
        "the refused message in the archive",
        || async {
            sqlx::query_as(
                "SELECT CAST(r.verdict AS CHAR), r.determinants FROM message m \
                 JOIN message_result r ON r.message = m.id AND r.module = 'quotas' \
                 WHERE m.subject = 'john@doe.com 151'",
            )
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
        },
    )
    .await
    .unwrap();
    assert_eq!(verdict, "tempfail");
    assert!(
        determinants.contains("151 of 150 in the last day for sasl_username 'john@doe.com'"),
        "{determinants}"
    );
    // The reservations are settled from the settle queue, the archive from its own queue:
    // either may be first, so this row is waited for too.
    let session_login: String = eventually(
        Duration::from_secs(20),
        "jane's first message in the archive",
        || async {
            sqlx::query_scalar(
                "SELECT s.sasl_username FROM message m JOIN session s ON s.id = m.session \
                 WHERE m.subject = 'jane@doe.com 1'",
            )
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
        },
    )
    .await
    .unwrap();
    assert_eq!(session_login, "jane@doe.com");

    let Ok(pipeline) = Arc::try_unwrap(pipeline) else {
        panic!("a swaks task still holds the pipeline");
    };
    pipeline.stop().await.unwrap();
}
