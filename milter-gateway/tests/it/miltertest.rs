//! The miltertest scripts in `scripts/miltertest/`, one per stage and reply, against the
//! in-process gateway and the in-test worker.

use std::path::PathBuf;
use std::time::Duration;

use milter_gateway::milter::{Command, Family, Response};
use test_support::TestBroker;
use wire::CheckStage;

use crate::helpers::*;

/// How a script must end: exit code 0, or (for what the gateway cannot do yet) non-zero.
struct Case {
    script: &'static str,
    defines: Vec<(&'static str, &'static str)>,
    passes: bool,
    /// Why a case fails today.
    fixme: &'static str,
}

fn case(
    script: &'static str,
    defines: &[(&'static str, &'static str)],
    passes: bool,
    fixme: &'static str,
) -> Case {
    Case {
        script,
        defines: defines.to_vec(),
        passes,
        fixme,
    }
}

fn scripts_dir() -> PathBuf {
    test_support::repo_root().join("scripts/miltertest")
}

/// Runs one script; returns whether it exited 0, and what it printed.
async fn run(case: &Case, port: u16) -> (bool, String) {
    let dir = scripts_dir();
    let mut command = tokio::process::Command::new("miltertest");
    command
        .arg("-s")
        .arg(dir.join(case.script))
        .arg("-D")
        .arg(format!("dir={}", dir.display()))
        .arg("-D")
        .arg(format!("port={port}"));
    for (name, value) in &case.defines {
        command.arg("-D").arg(format!("{name}={value}"));
    }
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .unwrap_or_else(|_| panic!("{} did not finish within 60 s", case.script))
        .expect("run miltertest (scripts/start-peers.sh tools installs it)");
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), printed)
}

/// Runs the cases in turn; the descriptions of those that did not end as expected.
async fn run_all(cases: &[Case], port: u16) -> Vec<String> {
    let mut wrong = Vec::new();
    for case in cases {
        let (passed, printed) = run(case, port).await;
        eprintln!(
            "miltertest {} {:?}: {} (expected {}) {}\n{printed}",
            case.script,
            case.defines,
            if passed { "passed" } else { "failed" },
            if case.passes { "pass" } else { "fail" },
            case.fixme
        );
        if passed != case.passes {
            wrong.push(format!("{} {:?}: {printed}", case.script, case.defines));
        }
    }
    wrong
}

/// With `[stage-checks]` the module is asked at CONNECT, HELO and RCPT, and its answer is
/// given there: the blocked client is refused, the HELO deferred, one recipient of two refused
/// while the message goes on for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stage_checks_answer_at_their_stage() {
    let broker = TestBroker::new().unwrap();
    let worker = Worker::start(&broker.url).await;
    let gateway = Gateway::start(staged_config(&broker.url)).await;
    gateway.wait_until_ready().await;
    let cases = [
        case("connect-reject.lua", &[], true, ""),
        case("helo-tempfail.lua", &[], true, ""),
        case("rcpt-reject.lua", &[], true, ""),
    ];
    let wrong = run_all(&cases, gateway.addr.port()).await;
    assert!(
        wrong.is_empty(),
        "scripts that did not end as expected:\n{}",
        wrong.join("\n")
    );

    // the exact replies: no queue id exists before DATA, so none is quoted
    let mut mta = Mta::connect(gateway.addr).await;
    let replies = mta
        .send(Command::Connect {
            hostname: BLOCKED_CLIENT.into(),
            family: Family::Inet,
            port: Some(40_001),
            address: "192.0.2.66".into(),
        })
        .await;
    assert_eq!(
        replies,
        [Response::ReplyCode(format!("550 5.7.1 {REJECT_REASON}"))]
    );
    let mut mta = Mta::connect(gateway.addr).await;
    mta.client().await;
    let replies = mta.send(Command::Helo(DEFERRED_HELO.into())).await;
    assert_eq!(
        replies,
        [Response::ReplyCode(format!("451 4.7.1 {TEMPFAIL_REASON}"))]
    );

    let at_connect = worker.requests_at(CheckStage::Connect);
    assert!(
        at_connect
            .iter()
            .any(|r| r.session.client_name == BLOCKED_CLIENT && r.envelope.sender.is_empty()),
        "{at_connect:?}"
    );
    let at_helo = worker.requests_at(CheckStage::Helo);
    assert!(at_helo.iter().any(|r| r.session.helo == DEFERRED_HELO));
    // one request per recipient, each about that recipient alone, with the sender
    let at_rcpt: Vec<Vec<String>> = worker
        .requests_at(CheckStage::Rcpt)
        .into_iter()
        .filter(|r| r.envelope.sender == "permit@example.org")
        .map(|r| r.envelope.recipients)
        .collect();
    assert_eq!(
        at_rcpt,
        [
            vec!["ok@mailbox.test".to_owned()],
            vec!["reject-me@mailbox.test".to_owned()]
        ]
    );
    // at end of message the refused recipient is gone from the envelope
    let eom = worker.requests_from("permit@example.org");
    assert_eq!(eom.len(), 1, "{eom:?}");
    assert_eq!(eom[0].envelope.recipients, ["ok@mailbox.test"]);
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_script_ends_as_expected() {
    let broker = TestBroker::new().unwrap();
    let worker = Worker::start(&broker.url).await;
    let gateway = Gateway::start(config(&broker.url)).await;
    gateway.wait_until_ready().await;
    let port = gateway.addr.port();

    let changes = EOM_CHANGES_APPLIED;
    let cases = vec![
        // without [stage-checks] nothing is asked before end of message: CONNECT and HELO are
        // negotiated as no-reply, RCPT continues (the stage cases with checks are below)
        case("connect-reject.lua", &[("expect", "continue")], true, ""),
        case("helo-tempfail.lua", &[("expect", "continue")], true, ""),
        case("rcpt-reject.lua", &[("expect", "continue")], true, ""),
        case("eom-reject.lua", &[("reason", REJECT_REASON)], true, ""),
        case("eom-tempfail.lua", &[("reason", TEMPFAIL_REASON)], true, ""),
        case(
            "eom-header.lua",
            &[],
            changes,
            if changes {
                ""
            } else {
                "FIXME(connection.rs): CheckResult.changes are not sent at end of message"
            },
        ),
        case("chgfrom.lua", &[], true, ""),
        case(
            "quarantine.lua",
            &[],
            QUARANTINE_VERDICT,
            if QUARANTINE_VERDICT {
                ""
            } else {
                "FIXME(verdict.rs): a quarantine result never becomes a quarantine verdict"
            },
        ),
        case("abort-mid-body.lua", &[("reason", REJECT_REASON)], true, ""),
        case(
            "two-messages.lua",
            &[("tempfail_reason", TEMPFAIL_REASON)],
            true,
            "",
        ),
        case("progress.lua", &[("wait", "1")], true, ""),
    ];

    let wrong = run_all(&cases, port).await;
    assert!(
        wrong.is_empty(),
        "scripts that did not end as expected:\n{}",
        wrong.join("\n")
    );

    // The aborted message never reached a module; every finished one did, once.
    assert!(worker.requests_from("aborted@example.org").is_empty());
    assert_eq!(
        worker.requests_from("tempfail@example.org").len(),
        2,
        "eom-tempfail and two-messages"
    );
    assert_eq!(worker.requests_from("slow@example.org").len(), 1);
    assert!(!worker.senders().is_empty());
    gateway.stop().await;
}
