//! The quotas module against the real MariaDB and RabbitMQ: ClueGetter's README scenarios, the
//! settle queue, expiry, the database being down, the operator commands, and exactness with four
//! check-workers processes competing for the last units of one quota.

use std::collections::HashMap;
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use check_workers::modules::quotas::{self, NAME, QuotaStore, import};
use lapin::options::{BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use platform::config::Config;
use sqlx::MySqlPool;
use test_support::{TestBroker, TestDb, eventually, init_test_logging};
use wire::{
    Action, AuditEvent, AuditMessage, AuditResult, AuditVerdict, CheckRequest, CheckResult,
    MessageId, WIRE_VERSION,
};

use crate::harness::{Gateway, Workers, request};

const REPLY_WITHIN: Duration = Duration::from_secs(30);

/// ClueGetter's README, "Quotas", the tables exactly as written there.
pub const README_JOHN_AND_JANE: &str = "\
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

/// ClueGetter's README, "Regexes", the quota table as written there, with profiles 3 and 4 of
/// ClueGetter's seed data (`High Volume`, `Limited Volume`) that it refers to.
const README_REGEX: &str = "\
quota_class:
| id | instance | name     |
|  1 |        1 | Trusted  |
|  2 |        1 | Villains |

quota_profile:
| id | class | name           |
|  3 |     1 | High Volume    |
|  4 |     2 | Limited Volume |

quota_profile_period:
| id | profile | period | curb  |
|  1 |       3 |    300 |   500 |
|  2 |       3 |   3600 |  1000 |
|  3 |       3 |  86400 | 10000 |
|  4 |       4 |    300 |    15 |
|  5 |       4 |   3600 |    50 |
|  6 |       4 |  86400 |   100 |

quota:
+-----+----------------+----------------+----------+---------+------------+
| id  | selector       | value          | is_regex | profile | instigator |
+-----+----------------+----------------+----------+---------+------------+
|   1 | client_address | 127.0.0.1      |        0 |       3 |       NULL |
|   2 | client_address | ^.*$           |        1 |       4 |       NULL |
+-----+----------------+----------------+----------+---------+------------+
";

/// The configuration of a quotas worker on this test's vhost and database.
fn quota_config(broker_url: &str, db_url: &str) -> Config {
    let mut config = Config::default();
    config.broker.url = broker_url.into();
    config.broker.reconnect_max_backoff = Duration::from_secs(1);
    config.database.url = db_url.into();
    config.quotas.enabled = true;
    config.quotas.account_sasl_username = true;
    config.quotas.account_client_address = true;
    config
}

/// A quotas request from `client` logged in as `login`, to `recipients`.
fn quota_request(login: &str, client: &str, recipients: &[&str]) -> CheckRequest {
    let mut request = request(NAME, None);
    request.session.sasl_username = login.to_owned();
    request.session.client_addr = Some(client.parse::<IpAddr>().unwrap());
    request.envelope.recipients = recipients.iter().map(|r| (*r).to_owned()).collect();
    request
}

/// The audit event the gateway would publish for this request with `result` and `verdict`.
fn audit_event(
    request: &CheckRequest,
    result: Option<&CheckResult>,
    verdict: Action,
) -> AuditEvent {
    AuditEvent {
        version: WIRE_VERSION,
        instance: request.instance.clone(),
        message_id: request.message_id,
        answered: true,
        session: request.session.clone(),
        message: AuditMessage {
            queue_id: request.queue_id.clone(),
            received_at: chrono::Utc::now(),
            sender: request.envelope.sender.clone(),
            recipients: request.envelope.recipients.clone(),
            rejected_recipients: Vec::new(),
            headers: request.headers.clone(),
            headers_truncated: false,
            body_size: 0,
            body_hash: String::new(),
            body: None,
            message_id_header: String::new(),
            subject: String::new(),
        },
        verdict: AuditVerdict {
            verdict,
            applied: verdict,
            reason: String::new(),
            reject_score: 0.0,
            reject_threshold: 5.0,
            tempfail_score: 0.0,
            tempfail_threshold: 8.0,
            noop: false,
            whitelisted: false,
            failure: None,
        },
        results: result
            .map(|result| AuditResult {
                result: result.clone(),
                weighted_score: result.score,
                late: false,
            })
            .into_iter()
            .collect(),
    }
}

/// Publishes an audit event to the audit fanout, as the gateway does.
async fn publish_event(channel: &Channel, event: &AuditEvent) {
    channel
        .basic_publish(
            platform::broker::AUDIT_EXCHANGE.into(),
            "".into(),
            BasicPublishOptions::default(),
            &wire::contract::encode(event),
            BasicProperties::default()
                .with_delivery_mode(2)
                .with_message_id(event.message_id.to_string().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

/// The tally rows of a message: (quota, status, units).
async fn tally(pool: &MySqlPool, message: MessageId) -> Vec<(u64, String, u32)> {
    sqlx::query_as(
        "SELECT quota, CAST(status AS CHAR), units FROM quota_message WHERE message = ? ORDER BY quota",
    )
    .bind(message.0)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until the message's tally rows all have `status`.
async fn wait_for_status(pool: &MySqlPool, message: MessageId, status: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("tally rows {status}"),
        || async {
            let rows = tally(pool, message).await;
            (!rows.is_empty() && rows.iter().all(|(_, s, _)| s == status)).then_some(())
        },
    )
    .await
    .unwrap();
}

async fn import_text(db: &TestDb, text: &str) {
    let store = QuotaStore::new(
        &db.url,
        2,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )
    .unwrap();
    store.import(&import::parse(text).unwrap()).await.unwrap();
}

/// Sends the requests with up to `in_flight` at once and returns the replies by message id.
async fn check_all(
    gateway: &mut Gateway,
    requests: &[CheckRequest],
    in_flight: usize,
) -> HashMap<MessageId, CheckResult> {
    let mut replies = HashMap::new();
    let mut sent = 0;
    while sent < requests.len().min(in_flight) {
        gateway.send(&requests[sent]).await;
        sent += 1;
    }
    while replies.len() < requests.len() {
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        replies.insert(result.message_id, result);
        if sent < requests.len() {
            gateway.send(&requests[sent]).await;
            sent += 1;
        }
    }
    replies
}

async fn check_one(gateway: &mut Gateway, request: &CheckRequest) -> CheckResult {
    gateway.send(request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, request.message_id.to_string());
    result
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_john_is_tempfailed_at_message_151_and_jane_is_not() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    import_text(&db, README_JOHN_AND_JANE).await;
    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    let workers = Workers::start(quota_config(&broker.url, &db.url));

    let john: Vec<CheckRequest> = (0..150)
        .map(|_| quota_request("john@doe.com", "192.0.2.10", &["bob@example.net"]))
        .collect();
    let replies = check_all(&mut gateway, &john, 16).await;
    assert!(
        replies
            .values()
            .all(|r| r.action == Action::Permit && r.score == 1.0),
        "{:?}",
        replies.values().find(|r| r.action != Action::Permit)
    );
    let last = check_one(
        &mut gateway,
        &quota_request("John@Doe.com", "192.0.2.10", &["bob@example.net"]),
    )
    .await;
    assert_eq!(last.action, Action::Tempfail);
    assert_eq!(last.score, 100.0);
    assert_eq!(
        last.message,
        "Exceeding quota, max of 150 messages per 86400 seconds for sasl_username 'john@doe.com'"
    );
    assert_eq!(
        last.determinants["summary"][0],
        "151 of 150 in the last day for sasl_username 'john@doe.com' (quota 1, profile small-sasl): exceeded"
    );
    assert_eq!(last.determinants["quotas"][0]["quota_id"], 1);
    assert_eq!(last.determinants["reserved"], false);

    // jane's large package: 500 per 5 minutes, 10 000 per day
    let jane: Vec<CheckRequest> = (0..151)
        .map(|_| quota_request("jane@doe.com", "192.0.2.11", &["bob@example.net"]))
        .collect();
    let replies = check_all(&mut gateway, &jane, 16).await;
    assert!(replies.values().all(|r| r.action == Action::Permit));
    let one = replies.values().next().unwrap();
    let periods: Vec<u64> = one.determinants["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["period"].as_u64().unwrap())
        .collect();
    assert_eq!(
        periods,
        [300, 86400],
        "every period of jane's profile applies"
    );

    let units: (u64, u64) = sqlx::query_as(
        "SELECT CAST(SUM(quota = 1) AS UNSIGNED), CAST(SUM(quota = 2) AS UNSIGNED) FROM quota_message",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(units, (150, 151), "the tempfailed message reserved nothing");
    workers.stop(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readme_regex_row_creates_the_concrete_row_with_its_instigator() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    import_text(&db, README_REGEX).await;
    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    let mut config = quota_config(&broker.url, &db.url);
    config.quotas.account_sasl_username = false;
    let workers = Workers::start(config);

    let first = check_one(
        &mut gateway,
        &quota_request("", "127.0.0.128", &["a@example.net"]),
    )
    .await;
    assert_eq!(first.action, Action::Permit);
    assert_eq!(first.determinants["quotas"][0]["quota_id"], 3);
    assert_eq!(first.determinants["quotas"][0]["instigator"], 2);
    let exact = check_one(
        &mut gateway,
        &quota_request("", "127.0.0.1", &["a@example.net"]),
    )
    .await;
    assert_eq!(exact.determinants["quotas"][0]["quota_id"], 1);
    // the concrete row is what the next message of that address finds
    let second = check_one(
        &mut gateway,
        &quota_request("", "127.0.0.128", &["a@example.net"]),
    )
    .await;
    assert_eq!(second.determinants["quotas"][0]["quota_id"], 3);
    assert_eq!(second.determinants["quotas"][0]["used"], 1);

    let rows: Vec<(u64, String, String, bool, u64, Option<u64>)> = sqlx::query_as(
        "SELECT id, CAST(selector AS CHAR), value, is_regex, profile, instigator FROM quota ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (
                1,
                "client_address".into(),
                "127.0.0.1".into(),
                false,
                3,
                None
            ),
            (2, "client_address".into(), "^.*$".into(), true, 4, None),
            (
                3,
                "client_address".into(),
                "127.0.0.128".into(),
                false,
                4,
                Some(2)
            ),
        ]
    );
    workers.stop(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_rejected_by_another_module_is_not_counted_but_a_whitelisted_one_is() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    import_text(&db, README_JOHN_AND_JANE).await;
    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    let workers = Workers::start(quota_config(&broker.url, &db.url));

    // rejected by another module: released (tally-status = permit)
    let rejected = quota_request(
        "john@doe.com",
        "192.0.2.10",
        &["a@example.net", "b@example.net"],
    );
    let result = check_one(&mut gateway, &rejected).await;
    assert_eq!(result.action, Action::Permit);
    assert_eq!(
        tally(&db.pool, rejected.message_id).await,
        [(1, "reserved".into(), 2)]
    );
    publish_event(
        &gateway.channel,
        &audit_event(&rejected, Some(&result), Action::Reject),
    )
    .await;
    wait_for_status(&db.pool, rejected.message_id, "released").await;

    // under noop the would-be verdict decides, as in production
    let noop = quota_request("john@doe.com", "192.0.2.10", &["a@example.net"]);
    let result = check_one(&mut gateway, &noop).await;
    let mut event = audit_event(&noop, Some(&result), Action::Reject);
    event.verdict.noop = true;
    event.verdict.applied = Action::Permit;
    publish_event(&gateway.channel, &event).await;
    wait_for_status(&db.pool, noop.message_id, "released").await;

    // a whitelisted client's message is delivered, so it counts (as in ClueGetter)
    let whitelisted = quota_request("john@doe.com", "192.0.2.10", &["a@example.net"]);
    let result = check_one(&mut gateway, &whitelisted).await;
    let mut event = audit_event(&whitelisted, Some(&result), Action::Reject);
    event.verdict.whitelisted = true;
    event.verdict.applied = Action::Permit;
    publish_event(&gateway.channel, &event).await;
    wait_for_status(&db.pool, whitelisted.message_id, "kept").await;

    // permitted: kept; the same event again changes nothing
    let permitted = quota_request("john@doe.com", "192.0.2.10", &["a@example.net"]);
    let result = check_one(&mut gateway, &permitted).await;
    let event = audit_event(&permitted, Some(&result), Action::Permit);
    publish_event(&gateway.channel, &event).await;
    publish_event(&gateway.channel, &event).await;
    wait_for_status(&db.pool, permitted.message_id, "kept").await;

    let next = check_one(
        &mut gateway,
        &quota_request("john@doe.com", "192.0.2.10", &["a@example.net"]),
    )
    .await;
    assert_eq!(
        next.determinants["quotas"][0]["used"], 2,
        "only the two kept messages count"
    );
    workers.stop(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reservation_whose_verdict_never_comes_expires_and_a_late_verdict_still_settles_it() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    import_text(
        &db,
        "quota_class:\n| id | instance | name |\n| 1 | 1 | c |\n\
         quota_profile:\n| id | class | name |\n| 1 | 1 | one-per-hour |\n\
         quota_profile_period:\n| profile | period | curb |\n| 1 | 3600 | 1 |\n\
         quota:\n| selector | value | profile |\n| sasl_username | ttl@example.org | 1 |\n",
    )
    .await;
    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    let mut config = quota_config(&broker.url, &db.url);
    config.quotas.reservation_ttl = Duration::from_secs(60);
    let workers = Workers::start(config);
    let message = || quota_request("ttl@example.org", "192.0.2.10", &["a@example.net"]);

    let lost = message();
    let lost_result = check_one(&mut gateway, &lost).await;
    assert_eq!(lost_result.action, Action::Permit);
    // its reservation counts while it is young
    let blocked = check_one(&mut gateway, &message()).await;
    assert_eq!(blocked.action, Action::Tempfail);
    // two minutes later (the row back-dated), older than the reservation TTL: it no longer counts
    sqlx::query("UPDATE quota_message SET date = date - INTERVAL 120 SECOND WHERE message = ?")
        .bind(lost.message_id.0)
        .execute(&db.pool)
        .await
        .unwrap();
    let after_expiry = message();
    let result = check_one(&mut gateway, &after_expiry).await;
    assert_eq!(result.action, Action::Permit, "{}", result.determinants);
    assert_eq!(result.determinants["quotas"][0]["used"], 0);

    // the verdict arrives after all: the message was permitted, so it counts again
    publish_event(
        &gateway.channel,
        &audit_event(&lost, Some(&lost_result), Action::Permit),
    )
    .await;
    wait_for_status(&db.pool, lost.message_id, "kept").await;
    let store =
        QuotaStore::new(&db.url, 1, Duration::from_secs(5), Duration::from_secs(60)).unwrap();
    let shown = store
        .show("default", quotas::Selector::SaslUsername, "ttl@example.org")
        .await
        .unwrap();
    let period = &shown.quotas[0].periods[0];
    assert_eq!(
        (period.used, period.kept, period.reserved, period.expired),
        (2, 1, 1, 0)
    );
    workers.stop(Duration::from_secs(20)).await.unwrap();
}

#[tokio::test]
async fn a_verdict_that_comes_before_the_reservation_settles_it_when_it_is_made() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    import_text(&db, README_JOHN_AND_JANE).await;
    let store = QuotaStore::new(
        &db.url,
        2,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )
    .unwrap();
    let factors = [quotas::Factor {
        selector: quotas::Selector::SaslUsername,
        value: "john@doe.com".into(),
        units: 1,
    }];

    // the gateway stopped waiting for the check; the event carried no quotas result
    let released = MessageId::new();
    assert_eq!(store.settle(released, false, true).await.unwrap(), 0);
    let outcome = store.check("default", released, &factors).await.unwrap();
    assert!(outcome.reserved);
    assert_eq!(tally(&db.pool, released).await, [(1, "released".into(), 1)]);

    let kept = MessageId::new();
    store.settle(kept, true, true).await.unwrap();
    store.check("default", kept, &factors).await.unwrap();
    assert_eq!(tally(&db.pool, kept).await, [(1, "kept".into(), 1)]);

    // a redelivered check neither reserves twice nor counts itself
    let again = store.check("default", kept, &factors).await.unwrap();
    assert_eq!(again.quotas[0].periods[0].used, 0);
    assert_eq!(tally(&db.pool, kept).await, [(1, "kept".into(), 1)]);

    // remembered verdicts older than the TTL are pruned
    sqlx::query("UPDATE quota_settlement SET date = date - INTERVAL 2 HOUR")
        .execute(&db.pool)
        .await
        .unwrap();
    assert_eq!(store.prune_settlements().await.unwrap(), 2);
}

/// Under Galera a reservation committed on one node and its remembered verdict on another do
/// not see each other (the locking reads block only on one node): the periodic reconcile
/// settles such a reservation from the remembered verdict, and leaves young reservations and
/// those without a verdict alone.
#[tokio::test]
async fn a_reservation_a_cross_node_race_left_reserved_is_settled_from_the_remembered_verdict() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    import_text(&db, README_JOHN_AND_JANE).await;
    let store = QuotaStore::new(
        &db.url,
        2,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )
    .unwrap();
    let factors = [quotas::Factor {
        selector: quotas::Selector::SaslUsername,
        value: "john@doe.com".into(),
        units: 1,
    }];
    let raced = MessageId::new();
    let young = MessageId::new();
    let unjudged = MessageId::new();
    for message in [raced, young, unjudged] {
        assert!(
            store
                .check("default", message, &factors)
                .await
                .unwrap()
                .reserved
        );
    }
    // the race's outcome: verdicts remembered, reservations untouched
    for (message, counted) in [(raced, true), (young, false)] {
        sqlx::query(
            "INSERT INTO quota_settlement (message, counted, date) VALUES (?, ?, UTC_TIMESTAMP(6))",
        )
        .bind(message.0)
        .bind(counted)
        .execute(&db.pool)
        .await
        .unwrap();
    }
    for message in [raced, unjudged] {
        sqlx::query("UPDATE quota_message SET date = date - INTERVAL 1 MINUTE WHERE message = ?")
            .bind(message.0)
            .execute(&db.pool)
            .await
            .unwrap();
    }
    assert_eq!(store.reconcile_settlements().await.unwrap(), 1);
    assert_eq!(tally(&db.pool, raced).await, [(1, "kept".into(), 1)]);
    assert_eq!(tally(&db.pool, young).await, [(1, "reserved".into(), 1)]);
    assert_eq!(tally(&db.pool, unjudged).await, [(1, "reserved".into(), 1)]);
    assert_eq!(store.reconcile_settlements().await.unwrap(), 0);
}

#[tokio::test]
async fn a_second_instance_does_not_see_the_first_ones_quotas() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    import_text(&db, README_JOHN_AND_JANE).await;
    let store = QuotaStore::new(
        &db.url,
        2,
        Duration::from_secs(5),
        Duration::from_secs(3600),
    )
    .unwrap();
    let factors = [quotas::Factor {
        selector: quotas::Selector::SaslUsername,
        value: "john@doe.com".into(),
        units: 1,
    }];
    let outcome = store
        .check("outbound", MessageId::new(), &factors)
        .await
        .unwrap();
    assert!(outcome.quotas.is_empty());
    assert!(!outcome.reserved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_down_gives_error_results_and_the_worker_keeps_serving() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    // nothing listens on port 1
    let mut config = quota_config(&broker.url, "mysql://root@127.0.0.1:1/cluegetter");
    config.quotas.timeout = Duration::from_secs(2);
    let workers = Workers::start(config);
    for _ in 0..2 {
        let result = check_one(
            &mut gateway,
            &quota_request("john@doe.com", "192.0.2.10", &["a@b.test"]),
        )
        .await;
        assert_eq!(result.action, Action::Error, "{}", result.determinants);
        assert_eq!(result.score, 25.0);
    }
    workers.stop(Duration::from_secs(20)).await.unwrap();
}

/// A check-workers process of its own, killed when dropped.
struct Process(Child);

impl Process {
    fn start(envs: &[(&str, &str)], args: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_check-workers"));
        command
            .args(args)
            .env_remove("CLUEGETTER_CONFIG")
            .env("CLUEGETTER_LOG_LEVEL", "warn")
            .env("CLUEGETTER_CHECK_WORKERS__METRICS_LISTEN", "127.0.0.1:0")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (key, value) in envs {
            command.env(key, value);
        }
        Self(command.spawn().unwrap())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs `check-workers <args>` to the end; its stdout, or a panic with its stderr.
fn run_command(envs: &[(&str, &str)], args: &[&str], stdin: Option<&str>) -> String {
    use std::io::Write as _;
    let mut command = Command::new(env!("CARGO_BIN_EXE_check-workers"));
    command
        .args(args)
        .env_remove("CLUEGETTER_CONFIG")
        .env("CLUEGETTER_LOG_LEVEL", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input
        .write_all(stdin.unwrap_or_default().as_bytes())
        .unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "check-workers {args:?} failed: {}{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quota_import_and_show_through_the_binary() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    let envs = [("CLUEGETTER_DATABASE__URL", db.url.as_str())];
    let imported = run_command(&envs, &["quota", "import", "-"], Some(README_JOHN_AND_JANE));
    assert_eq!(
        imported.trim(),
        "imported 1 quota_class, 2 quota_profile, 3 quota_profile_period, 2 quota"
    );
    let date_added: u64 = sqlx::query_scalar(
        "SELECT CAST(COUNT(*) AS UNSIGNED) FROM quota WHERE date_added > UTC_TIMESTAMP() - INTERVAL 1 HOUR",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        date_added, 2,
        "rows without date_added get the time of import"
    );

    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    let workers = Workers::start(quota_config(&broker.url, &db.url));
    let result = check_one(
        &mut gateway,
        &quota_request(
            "jane@doe.com",
            "192.0.2.10",
            &["a@example.net", "b@example.net"],
        ),
    )
    .await;
    assert_eq!(result.action, Action::Permit);
    workers.stop(Duration::from_secs(20)).await.unwrap();

    let shown = run_command(
        &envs,
        &["quota", "show", "sasl_username", "Jane@Doe.com"],
        None,
    );
    assert!(
        shown.contains("sasl_username 'jane@doe.com' in instance default"),
        "{shown}"
    );
    assert!(shown.contains("quota 2 (profile 2 large-sasl):"), "{shown}");
    assert!(
        shown.contains("  2 of 500 in the last 5 minutes (kept 0, reserved 2; 0 in expired reservations not counted)"),
        "{shown}"
    );
    assert!(shown.contains("  2 of 10000 in the last day"), "{shown}");
    let json = run_command(
        &envs,
        &["quota", "show", "--json", "sasl_username", "jane@doe.com"],
        None,
    );
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["quotas"][0]["periods"][1]["used"], 2);

    let none = run_command(
        &envs,
        &["quota", "show", "client_address", "192.0.2.10"],
        None,
    );
    assert!(none.contains("no quota applies: not limited"), "{none}");

    // a second import of the same rows is refused as a whole
    let mut command = Command::new(env!("CARGO_BIN_EXE_check-workers"));
    let output = command
        .args(["quota", "import", "/nonexistent/quota.txt"])
        .env("CLUEGETTER_DATABASE__URL", &db.url)
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot read /nonexistent/quota.txt"));
}

/// Four check-workers processes, 64 messages in flight, 200 messages for one SASL login with a
/// curb of 100: exactly 100 are permitted and exactly 100 units are kept, every one of 20 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_processes_never_permit_more_than_the_curb() {
    const PROCESSES: usize = 4;
    const RUNS: usize = 20;
    const MESSAGES: usize = 200;
    const CURB: usize = 100;
    const IN_FLIGHT: usize = 64;
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    import_text(
        &db,
        "quota_class:\n| id | instance | name |\n| 1 | 1 | load |\n\
         quota_profile:\n| id | class | name |\n| 1 | 1 | hundred-an-hour |\n\
         quota_profile_period:\n| profile | period | curb |\n| 1 | 3600 | 100 |\n",
    )
    .await;
    let mut gateway = Gateway::connect(&broker.url, &[NAME]).await;
    let envs = [
        ("CLUEGETTER_BROKER__URL", broker.url.as_str()),
        ("CLUEGETTER_DATABASE__URL", db.url.as_str()),
        ("CLUEGETTER_QUOTAS__ENABLED", "true"),
        ("CLUEGETTER_QUOTAS__ACCOUNT_SASL_USERNAME", "true"),
        ("CLUEGETTER_QUOTAS__ACCOUNT_CLIENT_ADDRESS", "false"),
        ("CLUEGETTER_CHECK_WORKERS__PREFETCH", "16"),
    ];
    let _processes: Vec<Process> = (0..PROCESSES).map(|_| Process::start(&envs, &[])).collect();
    // all four consume before the first run
    eventually(
        Duration::from_secs(60),
        "four consumers on the quotas queue",
        || async {
            let queue = gateway
                .channel
                .queue_declare(
                    platform::broker::check_queue(NAME).as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            (queue.consumer_count() as usize == PROCESSES).then_some(())
        },
    )
    .await
    .unwrap();

    for run in 0..RUNS {
        let login = format!("load-{run}@example.org");
        sqlx::query("INSERT INTO quota (selector, value, profile) VALUES ('sasl_username', ?, 1)")
            .bind(&login)
            .execute(&db.pool)
            .await
            .unwrap();
        let quota_id: u64 = sqlx::query_scalar("SELECT id FROM quota WHERE value = ?")
            .bind(&login)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        let requests: Vec<CheckRequest> = (0..MESSAGES)
            .map(|_| quota_request(&login, "192.0.2.10", &["a@example.net"]))
            .collect();
        let started = Instant::now();
        let replies = check_all(&mut gateway, &requests, IN_FLIGHT).await;
        let elapsed = started.elapsed();
        let permitted = replies
            .values()
            .filter(|r| r.action == Action::Permit)
            .count();
        let tempfailed = replies
            .values()
            .filter(|r| r.action == Action::Tempfail)
            .count();
        assert_eq!(
            (permitted, tempfailed),
            (CURB, MESSAGES - CURB),
            "run {run}: {:?}",
            replies.values().find(|r| r.action == Action::Error)
        );
        for request in &requests {
            let result = &replies[&request.message_id];
            publish_event(
                &gateway.channel,
                &audit_event(request, Some(result), result.action),
            )
            .await;
        }
        let (kept, units, others): (u64, u64, u64) = eventually(
            Duration::from_secs(60),
            "every reservation settled",
            || async {
                let counts: (u64, u64, u64) = sqlx::query_as(
                    "SELECT CAST(COALESCE(SUM(status = 'kept'), 0) AS UNSIGNED), \
                            CAST(COALESCE(SUM(IF(status = 'kept', units, 0)), 0) AS UNSIGNED), \
                            CAST(COALESCE(SUM(status <> 'kept'), 0) AS UNSIGNED) \
                     FROM quota_message WHERE quota = ?",
                )
                .bind(quota_id)
                .fetch_one(&db.pool)
                .await
                .ok()?;
                (counts.0 + counts.2 >= CURB as u64 && counts.2 == 0).then_some(counts)
            },
        )
        .await
        .unwrap();
        assert_eq!(
            (kept, units, others),
            (CURB as u64, CURB as u64, 0),
            "run {run}"
        );
        eprintln!(
            "run {run}: {MESSAGES} checks in {elapsed:?}, {permitted} permitted, {units} units kept"
        );
    }
}
