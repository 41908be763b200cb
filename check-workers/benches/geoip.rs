//! GeoIP checks per second and their p99, with a generated GeoLite2-City-like database of
//! 100,000 networks (`test_support::mmdb::city_db`), in-process against the local MariaDB (a
//! database of its own):
//!
//! 1. reading the file (read + `verify`, what a reload costs);
//! 2. lookups alone (`GeoDb::lookup`, one thread);
//! 3. whole checks (`Module::check`: lookup, the login's locked transaction) with `CONCURRENCY`
//!    in flight, spread over `LOGINS` logins, and all on one login (every check waits for the
//!    row lock of the one before).
//!
//! `cargo bench -p check-workers --bench geoip` (optionally `-- <checks>`). Not in CI.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use check_workers::module::Module as _;
use check_workers::modules::geoip::Geoip;
use check_workers::modules::geoip::lookup::GeoDb;
use chrono::Utc;
use futures::StreamExt as _;
use platform::config::Config;
use test_support::{TestDb, mmdb};
use wire::{Action, CheckRequest, Envelope, MessageId, SessionInfo, WIRE_VERSION};

const NETWORKS: u32 = 100_000;
const LOOKUPS: usize = 1_000_000;
const CONCURRENCY: usize = 32;
const LOGINS: usize = 1_000;
const DEFAULT_CHECKS: usize = 20_000;

fn request(login: &str, ip: std::net::IpAddr) -> CheckRequest {
    CheckRequest {
        version: WIRE_VERSION,
        instance: "default".into(),
        message_id: MessageId::new(),
        queue_id: "4jZB211qk4z6XPl".into(),
        module: "geoip".into(),
        session: SessionInfo {
            session_id: MessageId::new().0,
            connected_at: Utc::now(),
            client_addr: Some(ip),
            client_port: Some(40000),
            client_name: "mail.example.org".into(),
            helo: "mail.example.org".into(),
            sasl_username: login.into(),
            sasl_method: "PLAIN".into(),
            sasl_sender: String::new(),
            tls: None,
            mta_hostname: "mx.example.net".into(),
            daemon_name: "submission".into(),
        },
        envelope: Envelope {
            sender: login.into(),
            recipients: vec!["bob@example.net".into()],
        },
        headers: Vec::new(),
        content: None,
        content_truncated: false,
        sent_at: Utc::now(),
        stage: wire::CheckStage::Eom,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(what: &str, mut latencies: Vec<Duration>, elapsed: Duration) {
    latencies.sort();
    println!(
        "{what:<44} {:>9.0}/s  p50 {:>9.1?}  p99 {:>9.1?}  max {:>9.1?}  (n={})",
        latencies.len() as f64 / elapsed.as_secs_f64(),
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
}

async fn checks(
    module: Arc<Geoip>,
    requests: Vec<CheckRequest>,
) -> (Vec<Duration>, Duration, usize) {
    let started = Instant::now();
    let results: Vec<(Duration, Action)> = futures::stream::iter(requests)
        .map(|request| {
            let module = module.clone();
            async move {
                let at = Instant::now();
                let result = module.check(&request).await.unwrap();
                (at.elapsed(), result.action)
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let refused = results.iter().filter(|(_, a)| *a != Action::Permit).count();
    (
        results.into_iter().map(|(d, _)| d).collect(),
        elapsed,
        refused,
    )
}

#[tokio::main]
async fn main() {
    let n_checks: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(DEFAULT_CHECKS);
    let dir = std::env::temp_dir().join(format!("cg-geoip-bench-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("city.mmdb");
    let made = Instant::now();
    let (bytes, addresses) = mmdb::city_db(NETWORKS);
    std::fs::write(&path, &bytes).unwrap();
    println!(
        "City-like database: {NETWORKS} networks, {:.1} MiB, written in {:.1?}",
        bytes.len() as f64 / (1024.0 * 1024.0),
        made.elapsed()
    );

    // 1. Reading the file, as a reload does.
    let mut reads = Vec::new();
    for _ in 0..5 {
        let at = Instant::now();
        let reader = maxminddb::Reader::from_source(std::fs::read(&path).unwrap()).unwrap();
        reader.verify().unwrap();
        reads.push(at.elapsed());
    }
    reads.sort();
    println!(
        "read + verify (a reload)                     median {:.1?}",
        reads[2]
    );

    // 2. Lookups alone.
    let db = GeoDb::new(&path, None, Duration::from_secs(3600));
    db.refresh().await;
    let mut latencies = Vec::with_capacity(LOOKUPS);
    let started = Instant::now();
    let mut found = 0usize;
    for i in 0..LOOKUPS {
        let ip = addresses[(i * 7_919) % addresses.len()];
        let at = Instant::now();
        let result = db.lookup(ip).unwrap();
        latencies.push(at.elapsed());
        found += usize::from(result.country.is_some());
    }
    assert_eq!(found, LOOKUPS);
    report(
        "lookup (country from a City record)",
        latencies,
        started.elapsed(),
    );

    // 3. Whole checks against MariaDB.
    let test_db = TestDb::migrated().await.unwrap();
    let mut config = Config::default();
    config.database.url = test_db.url.as_str().into();
    config.database.max_connections = 16;
    config.geoip.enabled = true;
    config.geoip.database = path.clone();
    config.geoip.max_countries = 3;
    let module = Arc::new(Geoip::new(&config).unwrap());
    // warm-up: the file read, the pool's connections
    let warm: Vec<CheckRequest> = (0..200)
        .map(|i| request(&format!("warm{i}@example.org"), addresses[i]))
        .collect();
    checks(module.clone(), warm).await;

    let spread: Vec<CheckRequest> = (0..n_checks)
        .map(|i| {
            request(
                &format!("user{}@example.org", i % LOGINS),
                addresses[(i * 7_919) % addresses.len()],
            )
        })
        .collect();
    let (latencies, elapsed, refused) = checks(module.clone(), spread).await;
    report(
        &format!("check, {LOGINS} logins, {CONCURRENCY} in flight"),
        latencies,
        elapsed,
    );
    println!("  ({refused} refused: logins past 3 countries)");

    let hot: Vec<CheckRequest> = (0..n_checks / 4)
        .map(|i| request("hot@example.org", addresses[(i * 7_919) % addresses.len()]))
        .collect();
    let (latencies, elapsed, _) = checks(module.clone(), hot).await;
    report(
        &format!("check, one login, {CONCURRENCY} in flight"),
        latencies,
        elapsed,
    );

    let private: Vec<CheckRequest> = (0..n_checks)
        .map(|i| {
            request(
                &format!("user{}@example.org", i % LOGINS),
                "10.0.0.1".parse().unwrap(),
            )
        })
        .collect();
    let (latencies, elapsed, _) = checks(module, private).await;
    report(
        "check, private client (no lookup, no SQL)",
        latencies,
        elapsed,
    );
    let _ = std::fs::remove_dir_all(&dir);
}
