//! ClamAV through a real Postfix and the real clamd with the EICAR signature database
//! (PEERS.md §8): EICAR as a base64 attachment (swaks `--attach`) is refused with 550 and the
//! signature's name is in the audit row; a clean attachment is delivered.

use std::path::PathBuf;
use std::time::Duration;

use test_support::eventually;

use crate::Pipeline;

/// The EICAR test file, in two halves so that this source is not itself "infected".
fn eicar() -> String {
    let head = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$";
    let tail = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    format!("{head}{tail}")
}

/// A file for swaks to attach, in the Postfix instance's directory (removed with it).
fn attachment(pipeline: &Pipeline, name: &str, content: &[u8]) -> PathBuf {
    let path = pipeline.postfix.dir().join(name);
    std::fs::write(&path, content).unwrap();
    path
}

async fn clamav_result(pipeline: &Pipeline, subject: &str) -> (String, f64, serde_json::Value) {
    // stored with the message by the auditor, a moment after Postfix got its answer
    let (verdict, score, determinants): (String, f64, String) =
        eventually(Duration::from_secs(20), "the clamav result", || async {
            sqlx::query_as(
                "SELECT r.verdict, r.score, r.determinants FROM message_result r \
                 JOIN message m ON m.id = r.message WHERE m.subject = ? AND r.module = 'clamav'",
            )
            .bind(subject)
            .fetch_optional(&pipeline.db.pool)
            .await
            .ok()
            .flatten()
        })
        .await
        .unwrap();
    (verdict, score, serde_json::from_str(&determinants).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eicar_attachment_is_refused_with_550_and_named_and_a_clean_one_is_delivered() {
    let pipeline = Pipeline::start(|c| {
        c.rspamd.enabled = false;
        c.clamav.enabled = true;
    })
    .await
    .unwrap();

    let infected = attachment(&pipeline, "eicar.com", eicar().as_bytes());
    let attach = format!("@{}", infected.display());
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: eicar attached",
            "--body",
            "See the attachment.",
            "--attach",
            &attach,
        ])
        .await
        .unwrap();
    assert!(!sent.success, "EICAR was accepted:\n{}", sent.transcript);
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    assert!(
        reply.starts_with(
            "550 5.7.1 Our system has detected that this message appears to contain malicious"
        ),
        "{reply}\n{}",
        sent.transcript
    );
    let (verdict, applied, _, _) = pipeline.archived("eicar attached").await.unwrap();
    assert_eq!((verdict.as_str(), applied.as_str()), ("reject", "reject"));
    let (module_verdict, score, determinants) = clamav_result(&pipeline, "eicar attached").await;
    assert_eq!((module_verdict.as_str(), score), ("reject", 10.0));
    assert_eq!(determinants["status"], "FOUND");
    assert!(
        determinants["virus"]
            .as_str()
            .unwrap()
            .starts_with("Peers.Test.EICAR-"),
        "{determinants}"
    );

    let clean = attachment(&pipeline, "figures.txt", b"Quarterly figures: all fine.\n");
    let attach = format!("@{}", clean.display());
    let sent = pipeline
        .send(&[
            "--from",
            "a@example.org",
            "--to",
            "rcpt@mailbox.test",
            "--header",
            "Subject: clean attached",
            "--body",
            "See the attachment.",
            "--attach",
            &attach,
        ])
        .await
        .unwrap();
    assert!(sent.success, "{}", sent.transcript);
    let (verdict, _, _, _) = pipeline.archived("clean attached").await.unwrap();
    assert_eq!(verdict, "permit");
    let (module_verdict, score, determinants) = clamav_result(&pipeline, "clean attached").await;
    assert_eq!((module_verdict.as_str(), score), ("permit", 0.0));
    assert_eq!(determinants["status"], "OK");
    eventually(Duration::from_secs(20), "delivery", || async {
        pipeline
            .postfix
            .mailbox()
            .contains("Subject: clean attached")
            .then_some(())
    })
    .await
    .unwrap();
    pipeline.stop().await.unwrap();
}
