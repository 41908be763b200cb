//! The reputation module against the real MariaDB (a database per test, `schema/` applied),
//! reading counters the test writes as the auditor would (`reputation_count`): the score of a
//! bad value, the highest factor deciding, values without enough messages, the window's days,
//! the sender domain's SPF check (the test's own dnsmasq), `check-workers reputation show`,
//! and MariaDB down.

use std::time::Duration;

use platform::config::Config;
use platform::reputation::Factor;
use test_support::{TestDb, init_test_logging};
use wire::{Action, CheckRequest};

use check_workers::module::Module as _;
use check_workers::modules::reputation::Reputation;
use check_workers::reputation_cli::{ReputationCommand, run as cli};

use crate::harness::{Dnsmasq, request};

fn config(db: &TestDb) -> Config {
    let mut config = crate::harness::config("amqp://127.0.0.1:1/unused");
    config.rspamd.enabled = false;
    config.database.url = db.url.as_str().into();
    config.reputation.enabled = true;
    // no SPF lookups unless a test asks: a dead resolver port answers at once
    config.reputation.dns_resolver = Some("127.0.0.1:9".parse().unwrap());
    config.reputation.spf_timeout = Duration::from_millis(300);
    config
}

/// A counter row `days_ago` days back on the database's clock.
async fn put(db: &TestDb, factor: &str, value: &str, days_ago: u32, counts: [u64; 4]) {
    sqlx::query(
        "INSERT INTO reputation_count (factor, value, day, messages, rejected, tempfailed, \
             permitted, reject_score) \
         VALUES (?, ?, UTC_DATE() - INTERVAL ? DAY, ?, ?, ?, ?, ?)",
    )
    .bind(factor)
    .bind(value)
    .bind(days_ago)
    .bind(counts[0])
    .bind(counts[1])
    .bind(counts[2])
    .bind(counts[3])
    .bind(counts[1] as f64 * 15.0)
    .execute(&db.pool)
    .await
    .unwrap();
}

fn from(ip: &str, sasl: &str, sender: &str) -> CheckRequest {
    let mut request = request("reputation", None);
    request.session.client_addr = Some(ip.parse().unwrap());
    request.session.sasl_username = sasl.into();
    request.envelope.sender = sender.into();
    request
}

#[tokio::test]
async fn a_bad_value_is_rejected_with_the_highest_factor_score() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let module = Reputation::new(&config(&db)).unwrap();
    // 198.51.100.50: 12 rejected of 12 over two days; its /24 shares them plus 4 permitted
    put(&db, "client_address", "198.51.100.50", 0, [8, 8, 0, 0]).await;
    put(&db, "client_address", "198.51.100.50", 1, [5, 4, 0, 0]).await;
    put(&db, "client_network", "198.51.100.0/24", 0, [12, 12, 0, 4]).await;
    // beyond the window (7d): does not count
    put(&db, "client_address", "198.51.100.50", 9, [100, 0, 0, 100]).await;

    let result = module
        .check(&from("198.51.100.50", "", "someone@example.org"))
        .await
        .unwrap();
    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert_eq!(result.score, 8.0);
    assert_eq!(
        result.message,
        "Poor reputation: 12 of 12 judged messages from client address 198.51.100.50 in the \
         last 7d were refused"
    );
    let d = &result.determinants;
    assert_eq!(d["worst"]["factor"], "client_address");
    assert_eq!(d["factors"][0]["messages"], 13);
    assert_eq!(d["factors"][0]["rejected"], 12);
    assert_eq!(d["factors"][0]["refused_ratio"], 1.0);
    assert_eq!(d["factors"][0]["mean_reject_score"], 15.0);
    assert_eq!(d["factors"][1]["value"], "198.51.100.0/24");
    assert_eq!(d["factors"][1]["refused_ratio"], 0.75);
    assert_eq!(d["factors"][1]["score"], 4.0);
    // no SASL login: the sender domain's SPF was checked (the dead resolver: no pass)
    assert!(
        d["sender_domain_spf"]
            .as_str()
            .unwrap()
            .starts_with("temperror")
            || d["sender_domain_spf"]
                .as_str()
                .unwrap()
                .starts_with("timeout"),
        "{d}"
    );

    // a neighbour: the network's 0.75 alone, 4 points
    let neighbour = module
        .check(&from("198.51.100.51", "alice", "alice@example.org"))
        .await
        .unwrap();
    assert_eq!((neighbour.action, neighbour.score), (Action::Reject, 4.0));
    assert!(neighbour.determinants.get("sender_domain_spf").is_none());
    assert_eq!(
        neighbour.determinants["factors"][2]["factor"],
        "sender_domain"
    );
    assert_eq!(neighbour.determinants["factors"][3]["value"], "alice");

    // without client_network among the factors, the neighbour is fine
    let mut narrow = config(&db);
    narrow.reputation.factors = vec![Factor::ClientAddress, Factor::SenderDomain];
    let narrow = Reputation::new(&narrow).unwrap();
    let fine = narrow
        .check(&from("198.51.100.51", "", "someone@example.org"))
        .await
        .unwrap();
    assert_eq!((fine.action, fine.score), (Action::Permit, 0.0));
    assert_eq!(fine.message, "");

    // an unrelated network: nothing known, permitted
    let unknown = module
        .check(&from("203.0.113.7", "", "someone@example.org"))
        .await
        .unwrap();
    assert_eq!((unknown.action, unknown.score), (Action::Permit, 0.0));
    assert_eq!(unknown.determinants["factors"][0]["messages"], 0);
    assert!(unknown.determinants["factors"][0]["score"].is_null());
}

#[tokio::test]
async fn too_few_messages_or_a_ratio_at_bad_ratio_permit() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let module = Reputation::new(&config(&db)).unwrap();
    // 9 refused: below min-messages; neutral messages do not make up the difference
    put(&db, "client_address", "192.0.2.1", 0, [30, 9, 0, 0]).await;
    // exactly half: not above bad-ratio
    put(&db, "client_address", "192.0.2.2", 0, [20, 5, 5, 10]).await;
    for ip in ["192.0.2.1", "192.0.2.2"] {
        let result = module.check(&from(ip, "x", "")).await.unwrap();
        assert_eq!((result.action, result.score), (Action::Permit, 0.0), "{ip}");
    }
}

#[tokio::test]
async fn the_sender_domain_s_spf_pass_is_recorded_for_the_auditor() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let dns = Dnsmasq::start(&[("example.test", "v=spf1 ip4:198.51.100.0/24 -all")]).await;
    let mut config = config(&db);
    config.reputation.dns_resolver = Some(dns.address);
    config.reputation.spf_timeout = Duration::from_secs(3);
    let module = Reputation::new(&config).unwrap();
    let pass = module
        .check(&from("198.51.100.7", "", "a@Example.TEST"))
        .await
        .unwrap();
    assert_eq!(pass.determinants["sender_domain_spf"], "pass");
    let fail = module
        .check(&from("203.0.113.7", "", "a@example.test"))
        .await
        .unwrap();
    assert_eq!(fail.determinants["sender_domain_spf"], "fail");
    // not among the factors: no lookup at all
    config.reputation.factors = vec![Factor::ClientAddress];
    let module = Reputation::new(&config).unwrap();
    let none = module
        .check(&from("198.51.100.7", "", "a@example.test"))
        .await
        .unwrap();
    assert!(none.determinants.get("sender_domain_spf").is_none());
}

#[tokio::test]
async fn show_prints_the_counts_and_the_score() {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let config = config(&db);
    put(&db, "client_network", "198.51.100.0/24", 0, [12, 10, 1, 1]).await;
    put(&db, "client_network", "198.51.100.0/24", 2, [1, 0, 0, 1]).await;
    let mut out = Vec::new();
    cli(
        &config,
        ReputationCommand::Show {
            factor: Factor::ClientNetwork,
            value: "198.51.100.99".into(),
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        "client_network 198.51.100.0/24 within 7d: 13 messages, 10 rejected, 1 tempfailed, \
         2 permitted (13 judged); refused ratio 0.85, mean reject score 11.54; score 5.54"
    );
    assert_eq!(text.lines().count(), 3, "{text}");

    let mut out = Vec::new();
    cli(
        &config,
        ReputationCommand::Show {
            factor: Factor::ClientNetwork,
            value: "198.51.100.0/24".into(),
            json: true,
        },
        &mut out,
    )
    .await
    .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(json["judged"], 13);
    assert_eq!(json["days"].as_array().unwrap().len(), 2);

    let mut out = Vec::new();
    let error = cli(
        &config,
        ReputationCommand::Show {
            factor: Factor::ClientAddress,
            value: "not-an-ip".into(),
            json: false,
        },
        &mut out,
    )
    .await
    .unwrap_err();
    assert!(error.to_string().contains("not an IP address"), "{error}");
}

#[tokio::test]
async fn mariadb_down_is_an_error() {
    init_test_logging();
    let mut config = Config::default();
    config.reputation.enabled = true;
    config.database.url = "mysql://root@127.0.0.1:1/none".into();
    config.reputation.timeout = Duration::from_secs(1);
    let module = Reputation::new(&config).unwrap();
    assert!(module.check(&from("192.0.2.1", "", "")).await.is_err());
}
