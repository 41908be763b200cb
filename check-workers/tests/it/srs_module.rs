//! The srs module served by the real worker loop over the real broker (this test plays the
//! gateway): a forwarded message's sender rewritten into the forwarding domain, a bounce to it
//! reversed, a forged and an expired SRS recipient refused at RCPT with `5.1.1`, the null and
//! a local sender untouched; and check-workers refusing to start without its secrets file.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use check_workers::modules::srs::{Secrets, Settings, Srs};
use platform::config::Config;
use test_support::{TestBroker, init_test_logging};
use wire::{Action, CheckRequest, CheckResult, CheckStage, Header, MessageId};

use crate::harness::{Gateway, Workers, request};

const REPLY_WITHIN: Duration = Duration::from_secs(15);
const STOP_WITHIN: Duration = Duration::from_secs(15);
const SECRET: &str = "the test's own secret";

/// A secrets file of the test's own, removed on drop.
struct SecretsFile(PathBuf);

impl SecretsFile {
    fn new(contents: &str) -> Self {
        let path = std::env::temp_dir().join(format!("cluegetter-srs-{}", MessageId::new()));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }
}

impl Drop for SecretsFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn config(broker_url: &str, secrets: &SecretsFile) -> Config {
    let mut config = crate::harness::config(broker_url);
    config.rspamd.enabled = false;
    config.srs.enabled = true;
    config.srs.secrets_file = secrets.0.clone();
    config.srs.domain = "srs.virtual.test".into();
    config.srs.local_domains = vec!["virtual.test".into()];
    config
}

fn srs_request(
    stage: CheckStage,
    sender: &str,
    recipients: &[&str],
    headers: &[(&str, &str)],
) -> CheckRequest {
    let mut request = request("srs", None);
    request.stage = stage;
    request.envelope.sender = sender.into();
    request.envelope.recipients = recipients.iter().map(|r| (*r).to_owned()).collect();
    request.headers = headers.iter().map(|(n, v)| Header::new(*n, *v)).collect();
    request
}

async fn ask(gateway: &mut Gateway, request: &CheckRequest) -> CheckResult {
    gateway.send(request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.module, "srs");
    result
}

fn assert_permit_unchanged(result: &CheckResult) {
    assert_eq!(
        (result.action, result.score),
        (Action::Permit, 0.0),
        "{result:?}"
    );
    assert!(result.changes.is_empty(), "{result:?}");
    assert_eq!(result.enhanced_status, None);
}

#[tokio::test]
async fn forwards_reverses_and_refuses_through_the_worker() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let secrets = SecretsFile::new(&format!("{SECRET}\nan older secret\n"));
    let mut gateway = Gateway::connect(&broker.url, &["srs"]).await;
    let workers = Workers::start(config(&broker.url, &secrets));

    // forwarded: X-Original-To names an address that is not an envelope recipient
    let forwarded = srs_request(
        CheckStage::Eom,
        "alice@sender.test",
        &["bob@external.test"],
        &[("Subject", "hi"), ("X-Original-To", "fwd@virtual.test")],
    );
    let result = ask(&mut gateway, &forwarded).await;
    assert_eq!((result.action, result.score), (Action::Permit, 0.0));
    let rewritten = result.changes.new_sender.clone().unwrap();
    assert!(rewritten.starts_with("SRS0="), "{rewritten}");
    assert!(
        rewritten.ends_with("=sender.test=alice@virtual.test"),
        "{rewritten}"
    );
    assert_eq!(
        result.determinants["sender"]["original"],
        "alice@sender.test"
    );
    assert_eq!(
        result.determinants["sender"]["rewritten"],
        rewritten.as_str()
    );
    // what PostSRSd with the same secret writes (the scheme's own tests check it byte for byte)
    let srs = Srs::new(
        &Secrets::new(vec![SECRET.as_bytes().to_vec()]).unwrap(),
        Settings::default(),
    )
    .unwrap();
    let now = SystemTime::now();
    assert_eq!(
        rewritten,
        srs.forward("alice@sender.test", "virtual.test", now)
            .unwrap()
    );

    // the bounce: accepted at RCPT, reversed at end of message
    let rcpt = srs_request(CheckStage::Rcpt, "", &[&rewritten], &[]);
    let result = ask(&mut gateway, &rcpt).await;
    assert_permit_unchanged(&result);
    assert_eq!(result.determinants["reverses_to"], "alice@sender.test");
    let bounce = srs_request(CheckStage::Eom, "", &[&rewritten], &[]);
    let result = ask(&mut gateway, &bounce).await;
    assert_eq!(
        result.changes.delete_recipients,
        std::slice::from_ref(&rewritten)
    );
    assert_eq!(result.changes.add_recipients, ["alice@sender.test"]);
    assert_eq!(result.changes.new_sender, None);
    assert_eq!(
        result.determinants["recipients"][0]["reversed"],
        "alice@sender.test"
    );

    // tampered and expired: refused at RCPT with 5.1.1
    // another hash, also ignoring case
    let hash = if rewritten[5..9].eq_ignore_ascii_case("AAAA") {
        "BBBB"
    } else {
        "AAAA"
    };
    let tampered = format!("{}{hash}{}", &rewritten[..5], &rewritten[9..]);
    let expired = srs
        .forward(
            "alice@sender.test",
            "virtual.test",
            now - Duration::from_secs(30 * 86_400),
        )
        .unwrap();
    for (address, why) in [(&tampered, "hash is invalid"), (&expired, "has expired")] {
        let result = ask(
            &mut gateway,
            &srs_request(CheckStage::Rcpt, "", &[address], &[]),
        )
        .await;
        assert_eq!(
            (result.action, result.score),
            (Action::Reject, 100.0),
            "{result:?}"
        );
        assert_eq!(result.enhanced_status.as_deref(), Some("5.1.1"));
        assert!(
            result.message.starts_with("Invalid SRS address: "),
            "{}",
            result.message
        );
        assert!(result.message.contains(why), "{}", result.message);
    }

    // an SRS address signed with the older secret still reverses
    let older = Srs::new(
        &Secrets::new(vec![b"an older secret".to_vec()]).unwrap(),
        Settings::default(),
    )
    .unwrap()
    .forward("carol@sender.test", "virtual.test", now)
    .unwrap();
    let result = ask(
        &mut gateway,
        &srs_request(CheckStage::Rcpt, "", &[&older], &[]),
    )
    .await;
    assert_permit_unchanged(&result);

    // never rewritten: the null sender, a local sender, a message that was not forwarded
    for (sender, recipients, header) in [
        ("", &["bob@external.test"][..], "fwd@virtual.test"),
        (
            "carol@virtual.test",
            &["bob@external.test"][..],
            "fwd@virtual.test",
        ),
        (
            "alice@sender.test",
            &["bob@virtual.test"][..],
            "bob@virtual.test",
        ),
    ] {
        let request = srs_request(
            CheckStage::Eom,
            sender,
            recipients,
            &[("X-Original-To", header)],
        );
        let result = ask(&mut gateway, &request).await;
        assert_permit_unchanged(&result);
        assert!(
            result.determinants["sender"]["unchanged"].is_string(),
            "{result:?}"
        );
    }
    // an SRS recipient of another domain is not ours to judge
    let foreign = srs_request(
        CheckStage::Rcpt,
        "",
        &["SRS0=xxxx=AA=h.test=u@elsewhere.test"],
        &[],
    );
    assert_permit_unchanged(&ask(&mut gateway, &foreign).await);

    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn a_missing_or_empty_secrets_file_stops_check_workers() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let empty = SecretsFile::new("\n\n");
    let mut config = config(&broker.url, &empty);
    let error = check_workers::run(config.clone(), None, Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        format!(
            "cannot set up module `srs`: SRS secrets file {}: no secret (one secret per line, \
             the first signs, all verify)",
            empty.0.display()
        )
    );
    config.srs.secrets_file = "/nonexistent/postsrsd.secret".into();
    let error = check_workers::run(config, None, Default::default())
        .await
        .unwrap_err();
    assert_eq!(
        format!("{error:#}"),
        "cannot set up module `srs`: cannot read the SRS secrets file \
         /nonexistent/postsrsd.secret: No such file or directory (os error 2)"
    );
}
