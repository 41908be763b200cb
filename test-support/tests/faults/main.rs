//! Fault tests of the audit path (DESIGN.md "Durability invariants" 1 and 2): an answered
//! message has exactly one audit record, whatever breaks.
//!
//! The test starts a RabbitMQ node and a MariaDB server of its own (`services`), on their own
//! ports and directories, runs the real `milter-gateway` and `auditor` binaries against them
//! (`processes`), drives a few thousand messages at the gateway as Postfix would (`client`),
//! breaks something for real in the middle (`scenarios`), and then does the books message by
//! message (`account`): answered messages against audit rows, printing lost, duplicated and
//! unanswered-but-stored counts. It fails on any lost or duplicated record.
//!
//! One `#[test]` runs the scenarios one after the other, so they never overlap; other tests
//! may run beside it, as they use the shared services. Needs `cargo build --bins` first
//! (`scripts/test.sh` does it); a minute or two.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod account;
mod client;
mod processes;
mod scenarios;
mod services;

use std::io::Write as _;

use account::Accounting;
use scenarios::Lab;

/// Longest a scenario may take (they take 10 to 20 s).
const SCENARIO_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Straight to stderr: the harness captures `println!`, and the books are the point.
fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answered_message_is_lost_or_duplicated_whatever_breaks() {
    test_support::init_test_logging();
    let root = std::env::temp_dir().join(format!("cgfaults-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let started = std::time::Instant::now();
    let mut lab = Lab::start(root.clone())
        .await
        .expect("private RabbitMQ and MariaDB start");
    report(&format!(
        "fault tests: private RabbitMQ on 127.0.0.1:{} and MariaDB on 127.0.0.1:{} under {} \
         (up in {:.1} s)",
        lab.broker.port,
        lab.db.port,
        root.display(),
        started.elapsed().as_secs_f64()
    ));

    let mut books: Vec<Accounting> = Vec::new();
    let mut failure = None;
    for scenario in [
        "rabbitmq-restart",
        "mariadb-kill9",
        "auditor-kill9",
        "gateway-kill9",
        "redelivered-replayed",
    ] {
        let begun = std::time::Instant::now();
        let run = async {
            match scenario {
                "rabbitmq-restart" => scenarios::rabbitmq_restart(&mut lab).await,
                "mariadb-kill9" => scenarios::mariadb_down(&mut lab).await,
                "auditor-kill9" => scenarios::auditor_kill(&mut lab).await,
                "gateway-kill9" => scenarios::gateway_kill(&mut lab).await,
                _ => scenarios::redelivery_and_replay(&mut lab).await,
            }
        };
        let result = tokio::time::timeout(SCENARIO_LIMIT, run)
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("did not finish in {SCENARIO_LIMIT:?}")));
        match result {
            Ok(accounting) => {
                report(&format!(
                    "{accounting}\n{:<22} ({:.1} s)",
                    "",
                    begun.elapsed().as_secs_f64()
                ));
                books.push(accounting);
            }
            Err(error) => {
                report(&format!("{scenario:<22} could not run: {error:#}"));
                failure = Some(format!("{scenario}: {error:#}"));
                break;
            }
        }
    }
    report(&format!(
        "fault tests took {:.1} s",
        started.elapsed().as_secs_f64()
    ));

    let broken: Vec<&Accounting> = books.iter().filter(|b| !b.ok()).collect();
    if failure.is_none() && broken.is_empty() {
        drop(lab);
        let _ = std::fs::remove_dir_all(&root);
    } else {
        report(&format!(
            "logs and data kept under {} (gateway.log, auditor.log per scenario)",
            root.display()
        ));
    }
    assert!(failure.is_none(), "a scenario could not run: {failure:?}");
    assert!(
        broken.is_empty(),
        "lost or duplicated audit records:\n{}",
        broken
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    );
}
