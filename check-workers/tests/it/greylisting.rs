//! The greylisting module against the real MariaDB (a database per test, `schema/` applied):
//! ClueGetter's flow through the broker and two worker processes, spec gap A.6 (sibling
//! servers, recipients reordered or split), the SPF whitelist with records served by a
//! `dnsmasq` of the test's own (as PEERS.md §7 runs one for rspamd), the retry window, the
//! network auto-whitelist, and MariaDB down.
//!
//! Greylisting periods are measured by the database's clock, which a test cannot pause: the
//! tests use periods of a second or two and retry until the period has passed.

use std::time::{Duration, Instant};

use futures::future::join_all;
use platform::config::Config;
use test_support::{TestBroker, TestDb, eventually, init_test_logging};
use wire::{Action, CheckRequest, CheckResult};

use check_workers::module::{Module as _, error_chain};
use check_workers::modules::greylisting::{GREYLISTED_MESSAGE, Greylisting};

use crate::harness::{Dnsmasq, Gateway, Workers, median, request};

const REPLY_WITHIN: Duration = Duration::from_secs(15);
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// Greylisting only, on this test's vhost and database, with a short initial period.
fn config(broker_url: &str, db: &TestDb, initial_period: Duration) -> Config {
    let mut config = crate::harness::config(broker_url);
    config.rspamd.enabled = false;
    config.database.url = db.url.as_str().into();
    config.greylisting.enabled = true;
    config.greylisting.initial_period = initial_period;
    config
}

fn grey(ip: &str, sender: &str, recipients: &[&str]) -> CheckRequest {
    let mut request = request("greylisting", None);
    request.session.client_addr = Some(ip.parse().unwrap());
    request.envelope.sender = sender.to_owned();
    request.envelope.recipients = recipients.iter().map(|r| (*r).to_owned()).collect();
    request
}

async fn count(db: &TestDb, table: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM {table}")))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

async fn whitelisted(db: &TestDb) -> Vec<String> {
    sqlx::query_scalar("SELECT ip FROM greylist_whitelist ORDER BY ip")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

/// Waits (on the database's clock, which decides) until every triplet was first seen at least
/// `period` ago.
async fn wait_until_older_than(db: &TestDb, period: Duration) {
    let micros = i64::try_from(period.as_micros()).unwrap();
    eventually(
        Duration::from_secs(20),
        "triplets past the period",
        || async {
            let young: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM greylist_triplet \
             WHERE TIMESTAMPDIFF(MICROSECOND, first_seen, UTC_TIMESTAMP(6)) < ?",
            )
            .bind(micros)
            .fetch_one(&db.pool)
            .await
            .ok()?;
            (young == 0).then_some(())
        },
    )
    .await
    .unwrap();
}

fn assert_greylisted(result: &CheckResult) {
    assert_eq!(result.action, Action::Tempfail, "{result:?}");
    assert_eq!(result.score, 7.0);
    assert_eq!(result.message, GREYLISTED_MESSAGE);
    assert_eq!(result.determinants["whitelisted"], false);
}

fn assert_permitted(result: &CheckResult) {
    assert_eq!(result.action, Action::Permit, "{result:?}");
    assert_eq!(result.score, 1.0);
}

/// Checks `request` with `module` until it is let through; returns that result and how long
/// after `since` it came. Every earlier answer must be "greylisted".
async fn retry_until_permitted(
    module: &Greylisting,
    request: &CheckRequest,
    since: Instant,
) -> (CheckResult, Duration) {
    loop {
        let result = module.check(request).await.unwrap();
        if result.action == Action::Permit {
            return (result, since.elapsed());
        }
        assert_greylisted(&result);
        assert!(
            since.elapsed() < Duration::from_secs(20),
            "never let through"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn first_attempt_is_greylisted_a_retry_after_the_period_passes_and_the_client_is_whitelisted()
{
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["greylisting"]).await;
    let workers = Workers::start(config(&broker.url, &db, Duration::from_secs(2)));

    let first = grey("198.51.100.7", "alice@example.org", &["bob@example.net"]);
    let started = Instant::now();
    gateway.send(&first).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, first.message_id.to_string());
    assert_greylisted(&result);
    let d = &result.determinants;
    assert_eq!(d["found_in_whitelist"], false);
    assert_eq!(d["found_in_spf_whitelist"], false);
    assert_eq!(d["network"], "198.51.100.0/24");
    assert_eq!(d["client"], "198.51.100.7");
    assert_eq!(d["sender"], "alice@example.org");
    assert_eq!(d["triplets"][0]["recipient"], "bob@example.net");
    assert_eq!(d["triplets"][0]["passed_before"], false);
    assert!(d["time_diff"].as_f64().unwrap() < 1.0, "{d}");

    // Postfix retries the same message; too early is greylisted again, then it passes.
    let passed = loop {
        let retry = grey("198.51.100.7", "alice@example.org", &["bob@example.net"]);
        gateway.send(&retry).await;
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        if result.action == Action::Permit {
            break result;
        }
        assert_greylisted(&result);
        assert!(started.elapsed() < Duration::from_secs(20));
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "let through after {:?}",
        started.elapsed()
    );
    assert_permitted(&passed);
    assert_eq!(passed.determinants["whitelisted"], true);
    assert!(passed.determinants["time_diff"].as_f64().unwrap() >= 2.0);
    assert_eq!(whitelisted(&db).await, ["198.51.100.7"]);

    // Another message from the whitelisted client: no greylisting.
    let other = grey("198.51.100.7", "carol@example.org", &["dave@example.net"]);
    gateway.send(&other).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_permitted(&result);
    assert_eq!(result.determinants["found_in_whitelist"], true);

    // The whitelist holds the address, not its network.
    let neighbour = grey("198.51.100.8", "erin@example.org", &["dave@example.net"]);
    gateway.send(&neighbour).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_greylisted(&result);

    assert_eq!(count(&db, "greylist_triplet").await, 2);
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn a6_retries_from_a_sibling_server_or_with_recipients_reordered_or_split_pass() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let module = Greylisting::new(&config("amqp://unused", &db, Duration::from_secs(1))).unwrap();

    // Recipients in another order, from another server of the same /24.
    let started = Instant::now();
    let first = module
        .check(&grey(
            "198.51.100.7",
            "news@example.org",
            &["a@example.net", "B@example.net"],
        ))
        .await
        .unwrap();
    assert_greylisted(&first);
    assert_eq!(first.determinants["triplets"].as_array().unwrap().len(), 2);
    let (passed, after) = retry_until_permitted(
        &module,
        &grey(
            "198.51.100.99",
            "News@Example.org",
            &["b@example.net", "a@example.net"],
        ),
        started,
    )
    .await;
    assert!(after >= Duration::from_secs(1), "{after:?}");
    assert_eq!(passed.determinants["network"], "198.51.100.0/24");
    assert_eq!(whitelisted(&db).await, ["198.51.100.99"]);

    // Recipients split over two transactions, from two more servers of the farm.
    let started = Instant::now();
    assert_greylisted(
        &module
            .check(&grey(
                "203.0.113.5",
                "bulk@example.org",
                &["x@example.net", "y@example.net", "z@example.net"],
            ))
            .await
            .unwrap(),
    );
    retry_until_permitted(
        &module,
        &grey("203.0.113.6", "bulk@example.org", &["y@example.net"]),
        started,
    )
    .await;
    let split = module
        .check(&grey(
            "203.0.113.7",
            "bulk@example.org",
            &["z@example.net", "x@example.net"],
        ))
        .await
        .unwrap();
    assert_permitted(&split);
    assert_eq!(split.determinants["triplets"][0]["passed_before"], false);

    // A retry that adds a recipient never seen is greylisted for that one.
    let added = module
        .check(&grey(
            "203.0.113.8",
            "bulk@example.org",
            &["x@example.net", "new@example.net"],
        ))
        .await
        .unwrap();
    assert_greylisted(&added);
    assert_eq!(
        whitelisted(&db).await,
        ["198.51.100.99", "203.0.113.6", "203.0.113.7"]
    );
}

#[tokio::test]
async fn authenticated_whitelisted_and_addressless_clients_are_never_greylisted() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let mut config = config("amqp://unused", &db, Duration::from_secs(300));
    config.whitelist = vec![
        "192.0.2.0/24".parse().unwrap(),
        "2001:db8::/32".parse().unwrap(),
    ];
    let module = Greylisting::new(&config).unwrap();

    let mut authenticated = grey("198.51.100.7", "a@example.org", &["b@example.net"]);
    authenticated.session.sasl_username = "alice".into();
    let in_whitelist = grey("192.0.2.44", "a@example.org", &["b@example.net"]);
    let mapped = grey("::ffff:192.0.2.45", "a@example.org", &["b@example.net"]);
    let v6 = grey("2001:db8::1", "a@example.org", &["b@example.net"]);
    let mut unix_socket = grey("198.51.100.7", "a@example.org", &["b@example.net"]);
    unix_socket.session.client_addr = None;
    for (request, why) in [
        (&authenticated, "the client is SASL-authenticated"),
        (&in_whitelist, "the client is in the whitelist networks"),
        (&mapped, "the client is in the whitelist networks"),
        (&v6, "the client is in the whitelist networks"),
        (&unix_socket, "the client has no IP address"),
    ] {
        let result = module.check(request).await.unwrap();
        assert_eq!(result.action, Action::Permit, "{why}");
        assert_eq!(result.score, 0.0);
        assert_eq!(result.determinants["skipped"], why);
    }
    assert_eq!(count(&db, "greylist_triplet").await, 0);
    assert_eq!(count(&db, "greylist_whitelist").await, 0);
}

#[tokio::test]
async fn a_client_passing_a_whitelist_spf_domain_is_permitted_and_whitelisted() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let dns = Dnsmasq::start(&[
        ("example.test", "v=spf1 ip4:198.51.100.0/24 -all"),
        ("broken.test", "v=spf1 ip4:not-an-address -all"),
    ])
    .await;
    let mut config = config("amqp://unused", &db, Duration::from_secs(300));
    config.greylisting.whitelist_spf = vec![
        "nospf.test".into(),
        "broken.test".into(),
        "example.test".into(),
    ];
    config.greylisting.dns_resolver = Some(dns.address);
    let module = Greylisting::new(&config).unwrap();

    let result = module
        .check(&grey(
            "198.51.100.7",
            "a@anywhere.example",
            &["b@example.net"],
        ))
        .await
        .unwrap();
    assert_permitted(&result);
    let d = &result.determinants;
    assert_eq!(d["found_in_spf_whitelist"], true, "{d}");
    assert_eq!(d["spf_domain"], "example.test");
    assert_eq!(
        d["spf_error"], "broken.test: permerror (the policy is invalid)",
        "{d}"
    );
    assert_eq!(whitelisted(&db).await, ["198.51.100.7"]);
    assert_eq!(count(&db, "greylist_triplet").await, 0);

    // next time the whitelist answers, without DNS
    let again = module
        .check(&grey(
            "198.51.100.7",
            "c@anywhere.example",
            &["d@example.net"],
        ))
        .await
        .unwrap();
    assert_eq!(again.determinants["found_in_whitelist"], true);

    // an address the policy does not list falls through to the triplet
    let outside = module
        .check(&grey(
            "203.0.113.9",
            "a@anywhere.example",
            &["b@example.net"],
        ))
        .await
        .unwrap();
    assert_greylisted(&outside);
    assert_eq!(outside.determinants["found_in_spf_whitelist"], false);
}

#[tokio::test]
async fn a_dead_resolver_costs_at_most_the_spf_timeout_and_the_triplet_decides() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut config = config("amqp://unused", &db, Duration::from_secs(300));
    config.greylisting.whitelist_spf = vec!["example.test".into(), "other.test".into()];
    config.greylisting.dns_resolver = Some(silent.local_addr().unwrap());
    config.greylisting.spf_timeout = Duration::from_millis(800);
    let module = Greylisting::new(&config).unwrap();

    let started = Instant::now();
    let result = module
        .check(&grey("198.51.100.7", "a@example.org", &["b@example.net"]))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_greylisted(&result);
    assert!(took >= Duration::from_millis(750), "{took:?}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        result.determinants["spf_error"],
        "SPF whitelist not finished within 800ms"
    );
}

#[tokio::test]
async fn a_triplet_not_passed_within_the_retry_window_starts_over() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let mut config = config("amqp://unused", &db, Duration::from_secs(1));
    config.greylisting.retry_window = Duration::from_millis(1_500);
    let module = Greylisting::new(&config).unwrap();
    let request = grey("198.51.100.7", "a@example.org", &["b@example.net"]);

    assert_greylisted(&module.check(&request).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1_700)).await;
    let late = module.check(&request).await.unwrap();
    assert_greylisted(&late);
    assert!(
        late.determinants["time_diff"].as_f64().unwrap() < 0.5,
        "started over: {}",
        late.determinants
    );
    let (_, after) = retry_until_permitted(&module, &request, Instant::now()).await;
    assert!(after >= Duration::from_millis(800), "{after:?}");
}

#[tokio::test]
async fn auto_whitelist_after_two_passes_whitelists_the_network() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let mut config = config("amqp://unused", &db, Duration::from_secs(1));
    config.greylisting.auto_whitelist_after = 2;
    let module = Greylisting::new(&config).unwrap();
    let one = grey("198.51.100.7", "a@example.org", &["b@example.net"]);
    let two = grey("198.51.100.8", "c@example.org", &["d@example.net"]);

    let started = Instant::now();
    assert_greylisted(&module.check(&one).await.unwrap());
    assert_greylisted(&module.check(&two).await.unwrap());
    let (first_pass, _) = retry_until_permitted(&module, &one, started).await;
    assert_eq!(first_pass.determinants["network_whitelisted"], false);
    let second_pass = module.check(&two).await.unwrap();
    assert_permitted(&second_pass);
    assert_eq!(second_pass.determinants["network_whitelisted"], true);
    assert_eq!(
        whitelisted(&db).await,
        ["198.51.100.0/24", "198.51.100.7", "198.51.100.8"]
    );

    let stranger = module
        .check(&grey("198.51.100.200", "e@example.org", &["f@example.net"]))
        .await
        .unwrap();
    assert_permitted(&stranger);
    assert_eq!(stranger.determinants["found_in_whitelist"], true);
}

/// Two worker processes consume the queue; a burst of messages with one triplet reaches both.
/// They agree: one triplet row, one first-seen time, every attempt greylisted until the period
/// is over, then every attempt let through and one whitelist row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_on_the_same_triplet_agree() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["greylisting"]).await;
    let mut config = config(&broker.url, &db, Duration::from_secs(2));
    config.check_workers.prefetch = 3;
    let one = Workers::start(config.clone());
    let two = Workers::start(config);
    let burst = 12;

    for _ in 0..burst {
        gateway
            .send(&grey("198.51.100.7", "a@example.org", &["b@example.net"]))
            .await;
    }
    let mut first_round = Vec::new();
    for _ in 0..burst {
        first_round.push(gateway.next_reply(REPLY_WITHIN).await.1);
    }
    for result in &first_round {
        assert_greylisted(result);
    }
    assert_eq!(count(&db, "greylist_triplet").await, 1);

    wait_until_older_than(&db, Duration::from_secs(2)).await;
    for _ in 0..burst {
        gateway
            .send(&grey("198.51.100.7", "a@example.org", &["b@example.net"]))
            .await;
    }
    for _ in 0..burst {
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert_permitted(&result);
    }
    assert_eq!(count(&db, "greylist_triplet").await, 1);
    assert_eq!(whitelisted(&db).await, ["198.51.100.7"]);
    one.stop(STOP_WITHIN).await.unwrap();
    two.stop(STOP_WITHIN).await.unwrap();
}

/// The same at the module level, harder: two module instances (two pools), 32 checks of one
/// new triplet at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_checks_of_one_new_triplet_share_one_first_seen() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let config = config("amqp://unused", &db, Duration::from_secs(300));
    let modules = [
        Greylisting::new(&config).unwrap(),
        Greylisting::new(&config).unwrap(),
    ];
    let request = grey(
        "198.51.100.7",
        "a@example.org",
        &["b@example.net", "c@example.net"],
    );
    let results = join_all((0..32).map(|n| modules[n % 2].check(&request))).await;
    for result in results {
        assert_greylisted(&result.unwrap());
    }
    let first_seen: Vec<chrono::NaiveDateTime> =
        sqlx::query_scalar("SELECT first_seen FROM greylist_triplet ORDER BY recipient")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(first_seen.len(), 2);
}

#[tokio::test]
async fn mariadb_down_gives_error_results_and_the_worker_keeps_serving() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["greylisting"]).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = config(&broker.url, &db, Duration::from_secs(2));
    config.database.url = format!("mysql://root@127.0.0.1:{dead}/nowhere").into();
    config.greylisting.timeout = Duration::from_secs(2);
    let workers = Workers::start(config);

    for _ in 0..2 {
        let request = grey("198.51.100.7", "a@example.org", &["b@example.net"]);
        let sent = Instant::now();
        gateway.send(&request).await;
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert!(
            sent.elapsed() < Duration::from_secs(3),
            "{:?}",
            sent.elapsed()
        );
        assert_eq!(result.action, Action::Error, "{result:?}");
        let reason = result.determinants["error"].as_str().unwrap();
        assert!(
            reason.starts_with("cannot reach the greylisting database"),
            "{reason}"
        );
    }
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn a_database_error_is_named() {
    init_test_logging();
    let db = TestDb::empty().await.unwrap();
    // no tables: the schema was never applied
    let module = Greylisting::new(&config("amqp://unused", &db, Duration::from_secs(2))).unwrap();
    let error = module
        .check(&grey("198.51.100.7", "a@example.org", &["b@example.net"]))
        .await
        .unwrap_err();
    let reason = error_chain(&error);
    assert!(
        reason.starts_with(
            "cannot reach the greylisting database: error returned from database: 1146"
        ),
        "{reason}"
    );
}

/// Not a benchmark: 20 new triplets, then 20 whitelisted clients, one after another.
#[tokio::test]
async fn check_latency_of_twenty_messages() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let db = TestDb::migrated().await.unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["greylisting"]).await;
    let workers = Workers::start(config(&broker.url, &db, Duration::from_secs(300)));

    let mut new_triplet = Vec::new();
    for n in 0..20 {
        let request = grey(
            &format!("198.51.100.{n}"),
            "a@example.org",
            &["b@example.net"],
        );
        gateway.send(&request).await;
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert_greylisted(&result);
        new_triplet.push(result.duration);
    }
    sqlx::query(
        "INSERT INTO greylist_whitelist (cluegetter_instance, ip, last_seen) \
         SELECT 1, CONCAT('203.0.113.', seq), UTC_TIMESTAMP(6) FROM seq_0_to_19",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let mut whitelisted = Vec::new();
    for n in 0..20 {
        let request = grey(
            &format!("203.0.113.{n}"),
            "a@example.org",
            &["b@example.net"],
        );
        gateway.send(&request).await;
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert_eq!(result.determinants["found_in_whitelist"], true);
        whitelisted.push(result.duration);
    }
    println!(
        "greylisting check latency over 20 messages: new triplet median {:.1} ms, \
         whitelisted client median {:.1} ms",
        median(new_triplet) * 1000.0,
        median(whitelisted) * 1000.0
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}
