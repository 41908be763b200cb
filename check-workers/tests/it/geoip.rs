//! The geoip module against the real MariaDB (a database per test, `schema/` applied) and
//! MaxMind databases the test writes ([`test_support::mmdb`]: TEST-NET-1 NL, TEST-NET-2 US,
//! TEST-NET-3 CN, 2001:db8::/32 DE): countries beyond `max-countries` refused and not
//! recorded, the window, what is not judged, `check-workers geoip show|forget`, two workers on
//! one login through the broker, and a database file missing, damaged and replaced.
//!
//! Windows are measured by the database's clock, which a test cannot pause: the window test
//! uses two seconds and retries until it has passed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use platform::config::{Config, GeoipAction, UnknownCountry};
use test_support::{TestBroker, TestDb, eventually, init_test_logging, mmdb};
use wire::{Action, CheckRequest, CheckResult};

use check_workers::geoip_cli::{GeoipCommand, run as cli};
use check_workers::module::Module as _;
use check_workers::modules::geoip::Geoip;

use crate::harness::{Gateway, Workers, request};

const REPLY_WITHIN: Duration = Duration::from_secs(15);
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// A directory of this test's own for its database files.
struct Files(PathBuf);

impl Files {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("cg-geoip-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn country(&self) -> PathBuf {
        self.0.join("country.mmdb")
    }

    fn asn(&self) -> PathBuf {
        self.0.join("asn.mmdb")
    }

    /// Writes `bytes` as the country database the way geoipupdate does: a new file renamed
    /// over the old one.
    fn replace_country(&self, bytes: &[u8]) {
        let temporary = self.0.join("country.mmdb.new");
        std::fs::write(&temporary, bytes).unwrap();
        std::fs::rename(&temporary, self.country()).unwrap();
    }
}

impl Drop for Files {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// geoip only, on this test's database and files.
fn config(broker_url: &str, db: &TestDb, files: &Files) -> Config {
    let mut config = crate::harness::config(broker_url);
    config.rspamd.enabled = false;
    config.database.url = db.url.as_str().into();
    config.geoip.enabled = true;
    config.geoip.database = files.country();
    config.geoip.asn_database = Some(files.asn());
    config.geoip.reload_interval = Duration::from_millis(100);
    config
}

async fn setup() -> (TestDb, Files, Config) {
    init_test_logging();
    let db = TestDb::migrated().await.unwrap();
    let files = Files::new();
    files.replace_country(&mmdb::test_country_db());
    std::fs::write(files.asn(), mmdb::test_asn_db()).unwrap();
    let config = config("amqp://127.0.0.1:1/unused", &db, &files);
    (db, files, config)
}

fn geo(login: &str, ip: &str) -> CheckRequest {
    let mut request = request("geoip", None);
    request.session.client_addr = Some(ip.parse().unwrap());
    request.session.sasl_username = login.to_owned();
    request.session.sasl_method = if login.is_empty() { "" } else { "PLAIN" }.to_owned();
    request
}

fn assert_permitted(result: &CheckResult) {
    assert_eq!(result.action, Action::Permit, "{result:?}");
    assert_eq!(result.score, 0.0, "{result:?}");
}

async fn countries(db: &TestDb, login: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT country FROM geoip_login_country WHERE login = ? AND country <> '' \
         ORDER BY first_seen, country",
    )
    .bind(login)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn cli_output(config: &Config, command: GeoipCommand) -> String {
    let mut out = Vec::new();
    cli(config, command, &mut out).await.unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn a_third_country_is_refused_named_and_not_recorded() {
    let (db, _files, config) = setup().await;
    let module = Geoip::new(&config).unwrap();

    let nl = module
        .check(&geo("Alice@Example.org", "192.0.2.10"))
        .await
        .unwrap();
    assert_permitted(&nl);
    assert_eq!(nl.determinants["country"], "NL");
    assert_eq!(nl.determinants["asn"], 64496);
    assert_eq!(nl.determinants["as_org"], "Example Transit NL");
    assert_eq!(nl.determinants["client"], "192.0.2.10");
    assert_eq!(nl.determinants["recorded"], true);
    let us = module
        .check(&geo("alice@example.org", "198.51.100.7"))
        .await
        .unwrap();
    assert_permitted(&us);

    let cn = module
        .check(&geo("alice@example.org", "203.0.113.5"))
        .await
        .unwrap();
    assert_eq!(cn.action, Action::Reject, "{cn:?}");
    assert_eq!(cn.score, 10.0);
    assert_eq!(
        cn.message,
        "login alice@example.org used from more than 2 countries within 24h: NL, US, CN"
    );
    let d = &cn.determinants;
    assert_eq!(d["country"], "CN");
    assert_eq!(d["asn"], 64498);
    assert_eq!(d["client"], "203.0.113.5");
    assert_eq!(d["recorded"], false);
    assert_eq!(d["max_countries"], 2);
    let listed = d["countries"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{d}");
    assert_eq!(listed[0]["country"], "NL");
    assert_eq!(listed[0]["messages"], 1);
    assert!(listed[0]["first_seen"].as_str().unwrap().ends_with('Z'));
    assert!(listed[1]["last_seen"].is_string());
    assert_eq!(countries(&db, "alice@example.org").await, ["NL", "US"]);

    // The real user goes on from a known country; the attacker stays refused.
    let again = module
        .check(&geo("alice@example.org", "192.0.2.99"))
        .await
        .unwrap();
    assert_permitted(&again);
    let again = module
        .check(&geo("alice@example.org", "203.0.113.6"))
        .await
        .unwrap();
    assert_eq!(again.action, Action::Reject);
    // IPv6: a fourth country, refused too.
    let de = module
        .check(&geo("alice@example.org", "2001:db8::25"))
        .await
        .unwrap();
    assert_eq!(de.action, Action::Reject);
    assert!(de.message.ends_with("NL, US, DE"), "{}", de.message);

    // Another login from CN only is fine.
    let bob = module
        .check(&geo("bob@example.org", "203.0.113.5"))
        .await
        .unwrap();
    assert_permitted(&bob);

    // The operator's view, and forgetting after a real trip.
    let shown = cli_output(
        &config,
        GeoipCommand::Show {
            login: "ALICE@example.org".into(),
            json: false,
        },
    )
    .await;
    assert!(
        shown.starts_with("alice@example.org: 2 countries within 24h\n"),
        "{shown}"
    );
    assert!(shown.contains("  NL      first "), "{shown}");
    assert!(shown.contains("  2 messages"), "{shown}");
    let json = cli_output(
        &config,
        GeoipCommand::Show {
            login: "alice@example.org".into(),
            json: true,
        },
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(json["countries"][1]["country"], "US");
    let forgot = cli_output(
        &config,
        GeoipCommand::Forget {
            login: "alice@example.org".into(),
        },
    )
    .await;
    assert_eq!(forgot, "forgot 2 countries of alice@example.org\n");
    let after = module
        .check(&geo("alice@example.org", "203.0.113.5"))
        .await
        .unwrap();
    assert_permitted(&after);
    assert_eq!(countries(&db, "alice@example.org").await, ["CN"]);
}

#[tokio::test]
async fn countries_are_forgotten_after_the_window() {
    let (db, _files, mut config) = setup().await;
    config.geoip.window = Duration::from_secs(2);
    config.geoip.action = GeoipAction::Tempfail;
    config.geoip.score = 4.0;
    let module = Geoip::new(&config).unwrap();
    assert_permitted(&module.check(&geo("carol", "192.0.2.1")).await.unwrap());
    assert_permitted(&module.check(&geo("carol", "198.51.100.1")).await.unwrap());
    let refused = module.check(&geo("carol", "203.0.113.1")).await.unwrap();
    assert_eq!(refused.action, Action::Tempfail);
    assert_eq!(refused.score, 4.0);
    assert!(
        refused.message.contains("within 2s: NL, US, CN"),
        "{}",
        refused.message
    );

    // The window is measured by the database's clock: wait on it, then CN is carol's first.
    eventually(Duration::from_secs(10), "the window to pass", || async {
        let young: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM geoip_login_country WHERE login = 'carol' AND country <> '' \
             AND last_seen >= UTC_TIMESTAMP(6) - INTERVAL 2 SECOND",
        )
        .fetch_one(&db.pool)
        .await
        .ok()?;
        (young == 0).then_some(())
    })
    .await
    .unwrap();
    let permitted = module.check(&geo("carol", "203.0.113.1")).await.unwrap();
    assert_permitted(&permitted);
    assert_eq!(
        permitted.determinants["countries"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(countries(&db, "carol").await, ["CN"]);
}

#[tokio::test]
async fn what_is_not_judged_is_permitted_with_the_reason() {
    let (db, _files, mut config) = setup().await;
    config.geoip.exempt = vec!["@trusted.example".into(), "Webmail".into()];
    let module = Geoip::new(&config).unwrap();
    let skipped = |result: &CheckResult| {
        assert_permitted(result);
        result.determinants["skipped"].as_str().unwrap().to_owned()
    };

    for ip in [
        "10.1.2.3",
        "127.0.0.1",
        "192.168.0.9",
        "169.254.3.3",
        "fd00::1",
        "fe80::1",
    ] {
        let result = module.check(&geo("dave", ip)).await.unwrap();
        assert!(
            skipped(&result).contains("(not looked up)"),
            "{ip}: {result:?}"
        );
    }
    // No SASL login: not judged, but the country is still there for the archive.
    let anonymous = module.check(&geo("", "198.51.100.3")).await.unwrap();
    assert_eq!(skipped(&anonymous), "no SASL login");
    assert_eq!(anonymous.determinants["country"], "US");
    let exempt = module
        .check(&geo("x@Trusted.example", "203.0.113.5"))
        .await
        .unwrap();
    assert_eq!(skipped(&exempt), "x@trusted.example is exempt");
    let exempt = module.check(&geo("webmail", "203.0.113.5")).await.unwrap();
    assert_eq!(skipped(&exempt), "webmail is exempt");
    let unknown = module.check(&geo("dave", "8.8.8.8")).await.unwrap();
    assert_eq!(skipped(&unknown), "the database has no country for 8.8.8.8");
    assert_eq!(unknown.determinants["country"], serde_json::Value::Null);
    assert!(countries(&db, "dave").await.is_empty());

    // `unknown-country = "count"`: an unknown address is a country of its own.
    config.geoip.unknown_country = UnknownCountry::Count;
    config.geoip.max_countries = 1;
    let counting = Geoip::new(&config).unwrap();
    assert_permitted(&counting.check(&geo("dave", "8.8.8.8")).await.unwrap());
    let refused = counting.check(&geo("dave", "192.0.2.1")).await.unwrap();
    assert_eq!(refused.action, Action::Reject);
    assert!(
        refused.message.ends_with(": unknown, NL"),
        "{}",
        refused.message
    );

    // `also-senders`: the envelope sender of unauthenticated mail is judged the same way.
    config.geoip.also_senders = true;
    let senders = Geoip::new(&config).unwrap();
    let mut first = geo("", "192.0.2.1");
    first.envelope.sender = "Erin@example.net".into();
    let result = senders.check(&first).await.unwrap();
    assert_permitted(&result);
    assert_eq!(result.determinants["sender"], "erin@example.net");
    let mut second = geo("", "198.51.100.1");
    second.envelope.sender = "erin@example.net".into();
    let refused = senders.check(&second).await.unwrap();
    assert_eq!(refused.action, Action::Reject);
    assert!(
        refused
            .message
            .starts_with("sender erin@example.net used from more than 1 countries")
    );
}

/// A check-workers process of its own, killed when dropped.
struct Process(Child);

impl Process {
    fn start(envs: &[(&str, &str)]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_check-workers"));
        command
            .env_remove("CLUEGETTER_CONFIG")
            .env("CLUEGETTER_LOG_LEVEL", "warn")
            .env("CLUEGETTER_CHECK_WORKERS__METRICS_LISTEN", "127.0.0.1:0")
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        Self(command.spawn().unwrap())
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Two check-workers processes, each with four requests in flight; per round a login that used
/// NL sends from US and CN at once, eight times each: exactly one of them becomes its second
/// country, every message from it is permitted and every one from the other refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_worker_processes_on_the_same_login_agree() {
    const ROUNDS: usize = 10;
    const BURST: usize = 16;
    let broker = TestBroker::new().unwrap();
    let (db, files, _) = setup().await;
    let mut gateway = Gateway::connect(&broker.url, &["geoip"]).await;
    let country = files.country().display().to_string();
    let envs = [
        ("CLUEGETTER_BROKER__URL", broker.url.as_str()),
        ("CLUEGETTER_DATABASE__URL", db.url.as_str()),
        ("CLUEGETTER_GEOIP__ENABLED", "true"),
        ("CLUEGETTER_GEOIP__DATABASE", country.as_str()),
        ("CLUEGETTER_CHECK_WORKERS__PREFETCH", "4"),
    ];
    let _processes = [Process::start(&envs), Process::start(&envs)];
    eventually(
        Duration::from_secs(60),
        "two consumers on the geoip queue",
        || async {
            let queue = gateway
                .channel
                .queue_declare(
                    platform::broker::check_queue("geoip").as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await
                .ok()?;
            (queue.consumer_count() == 2).then_some(())
        },
    )
    .await
    .unwrap();

    let mut firsts = Vec::new();
    for round in 0..ROUNDS {
        let login = format!("frank{round}@example.org");
        assert_permitted(&ask(&mut gateway, &geo(&login, "192.0.2.1")).await);
        for i in 0..BURST {
            let ip = if i % 2 == 0 {
                "198.51.100.1"
            } else {
                "203.0.113.1"
            };
            gateway.send(&geo(&login, ip)).await;
        }
        let mut permitted = Vec::new();
        let mut refused = Vec::new();
        for _ in 0..BURST {
            let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
            let country = result.determinants["country"].as_str().unwrap().to_owned();
            match result.action {
                Action::Permit => permitted.push(country),
                Action::Reject => refused.push(country),
                _ => panic!("{result:?}"),
            }
        }
        let recorded = countries(&db, &login).await;
        assert_eq!(recorded.len(), 2, "{recorded:?}");
        let second = recorded[1].clone();
        assert_eq!(permitted.len(), BURST / 2, "{permitted:?} {refused:?}");
        assert!(permitted.iter().all(|c| *c == second), "{permitted:?}");
        assert!(refused.iter().all(|c| *c != second), "{refused:?}");
        firsts.push(second);
    }
    eprintln!("second countries per round: {firsts:?}");
}

/// Sends `request` (under a new message id) and returns the reply.
async fn ask(gateway: &mut Gateway, request: &CheckRequest) -> CheckResult {
    let mut request = request.clone();
    request.message_id = wire::MessageId::new();
    gateway.send(&request).await;
    gateway.next_reply(REPLY_WITHIN).await.1
}

/// Asks until the reply satisfies `wanted` (the worker looks at the file every 100 ms).
async fn ask_until(
    gateway: &mut Gateway,
    request: &CheckRequest,
    what: &str,
    wanted: impl Fn(&CheckResult) -> bool,
) -> CheckResult {
    for _ in 0..100 {
        let result = ask(gateway, request).await;
        if wanted(&result) {
            return result;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("never {what}");
}

fn write_damaged(path: &Path) {
    // A database cut short: the metadata marker is gone with its end.
    let good = mmdb::test_country_db();
    std::fs::write(path, &good[..good.len() / 2]).unwrap();
}

#[tokio::test]
async fn a_missing_or_damaged_database_gives_errors_and_a_good_one_is_taken_up() {
    let broker = TestBroker::new().unwrap();
    let (db, files, _) = setup().await;
    std::fs::remove_file(files.country()).unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["geoip"]).await;
    let workers = Workers::start(config(&broker.url, &db, &files));
    let request = geo("gina@example.org", "192.0.2.1");

    // Missing at start: errors, and the worker keeps serving.
    for _ in 0..2 {
        gateway.send(&request).await;
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert_eq!(result.action, Action::Error, "{result:?}");
        let error = result.determinants["error"].as_str().unwrap();
        assert!(
            error.starts_with("cannot reach the geoip database file: no usable database"),
            "{error}"
        );
        assert!(error.contains("No such file"), "{error}");
    }
    // A damaged file: still errors, saying so.
    write_damaged(&files.country());
    let result = ask_until(&mut gateway, &request, "the damaged file named", |result| {
        result.determinants["error"]
            .as_str()
            .is_some_and(|error| error.contains("not a MaxMind database"))
    })
    .await;
    assert_eq!(result.action, Action::Error);
    // A good file appears: taken up without a restart.
    files.replace_country(&mmdb::test_country_db());
    let result = ask_until(&mut gateway, &request, "permitted", |result| {
        result.action == Action::Permit
    })
    .await;
    assert_eq!(result.determinants["country"], "NL");
    // A damaged update: logged, the last good one stays in use.
    write_damaged(&files.country());
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..3 {
        let result = ask(&mut gateway, &request).await;
        assert_permitted(&result);
        assert_eq!(result.determinants["country"], "NL");
    }
    // And a new good one (NL's network now says DE) replaces it.
    let mut writer = mmdb::Writer::new("GeoLite2-Country");
    writer.insert(
        "192.0.2.0".parse().unwrap(),
        24,
        &mmdb::Value::map([(
            "country",
            mmdb::Value::map([("iso_code", mmdb::Value::str("DE"))]),
        )]),
    );
    files.replace_country(&writer.to_bytes());
    ask_until(&mut gateway, &request, "the new file in use", |result| {
        result.determinants["country"] == "DE"
    })
    .await;
    workers.stop(STOP_WITHIN).await.unwrap();
}

/// The unit tests of `lookup.rs` read the fuzz seeds (`src/` may not use test-support): they
/// must stay what the writer makes.
#[test]
fn the_fuzz_seeds_are_the_test_databases() {
    let seeds = test_support::repo_root().join("fuzz/corpus/geoip_database");
    assert_eq!(
        std::fs::read(seeds.join("seed-country")).unwrap(),
        mmdb::test_country_db()
    );
    assert_eq!(
        std::fs::read(seeds.join("seed-asn")).unwrap(),
        mmdb::test_asn_db()
    );
}
