//! SRS through a real Postfix (issue 19): a message from alice@sender.test carrying
//! `X-Original-To: fwd@virtual.test` for bob@external.test leaves with the envelope sender
//! `SRS0=…=sender.test=alice@virtual.test` (Postfix's log says so); a bounce to that address is
//! delivered to alice@sender.test; a tampered hash and an expired timestamp are refused at RCPT
//! with `550 5.1.1`; the null sender and a local sender are left alone. The archive keeps the
//! original and rewritten sender and the reversed recipient in the module's determinants.
//! With `rewrite = "always"`, every outside sender is rewritten into `domain`.
//!
//! The instance's default transport discards mail with `status=sent (sink)`, after qmgr logged
//! the envelope sender (`from=<…>`) and the delivery agent the recipient (`to=<…>`).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use check_workers::modules::srs::{Secrets, Settings, Srs};
use test_support::eventually;
use test_support::postfix::PostfixOptions;

use crate::{Extras, Pipeline};

const SECRET: &str = "pipeline srs secret";

/// The queue id in Postfix's answer to the DATA dot (`250 2.0.0 Ok: queued as QID`).
fn queue_id(reply: &str) -> String {
    reply
        .rsplit_once("queued as ")
        .map(|(_, id)| id.trim().to_owned())
        .unwrap_or_else(|| panic!("no queue id in {reply:?}"))
}

/// The `from=<…>` and `to=<…>` Postfix logged for queue id `id`, once it was delivered.
async fn delivered(pipeline: &Pipeline, id: &str) -> (String, Vec<String>) {
    let marker = format!("{id}: ");
    eventually(
        Duration::from_secs(20),
        "the delivery in Postfix's log",
        || async {
            let log = pipeline.postfix.log();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&marker)).collect();
            let field = |line: &str, name: &str| {
                let start = line.find(name)? + name.len();
                let end = line[start..].find('>')?;
                Some(line[start..start + end].to_owned())
            };
            let from = lines.iter().find_map(|l| field(l, "from=<"))?;
            let to: Vec<String> = lines
                .iter()
                .filter(|l| l.contains("status=sent"))
                .filter_map(|l| field(l, " to=<"))
                .collect();
            (!to.is_empty() && lines.iter().any(|l| l.contains(": removed"))).then_some((from, to))
        },
    )
    .await
    .unwrap()
}

async fn send(
    pipeline: &Pipeline,
    from: &str,
    to: &str,
    subject: &str,
    original_to: Option<&str>,
) -> test_support::postfix::SwaksOutcome {
    let subject = format!("Subject: {subject}");
    let mut args = vec!["--from", from, "--to", to, "--header", subject.as_str()];
    let header = original_to.map(|address| format!("X-Original-To: {address}"));
    if let Some(header) = &header {
        args.extend(["--add-header", header.as_str()]);
    }
    args.extend(["--body", "forwarded"]);
    pipeline.send(&args).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forwarded_mail_is_rewritten_bounces_come_back_and_forgeries_are_refused() {
    let secrets = std::env::temp_dir().join(format!("cgt-srs-{}", uuid::Uuid::now_v7()));
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let secrets_file: PathBuf = secrets.clone();
    // virtual.test is a virtual alias domain with one alias, and SRS addresses in it count as
    // known recipients through the README's identity recipient_canonical_maps entry
    let canonical =
        std::env::temp_dir().join(format!("cgt-srs-canonical-{}", uuid::Uuid::now_v7()));
    std::fs::write(&canonical, "/^(SRS[01][=+-].*@virtual\\.test)$/ ${1}\n").unwrap();
    let canonical_map = format!("recipient_canonical_maps = regexp:{}", canonical.display());
    let extras = Extras {
        postfix: Some(Box::new(move |_, _| PostfixOptions {
            main_cf_extra: vec![
                "virtual_alias_domains = virtual.test".to_owned(),
                "virtual_alias_maps = inline:{ fwd@virtual.test=bob@external.test }".to_owned(),
                canonical_map,
            ],
            ..PostfixOptions::default()
        })),
        ..Extras::default()
    };
    let pipeline = Pipeline::start_with_extras(
        move |c| {
            c.rspamd.enabled = false;
            c.srs.enabled = true;
            c.srs.secrets_file = secrets_file;
            c.srs.domain = "srs.example.net".into();
            c.srs.local_domains = vec!["virtual.test".into()];
        },
        extras,
    )
    .await
    .unwrap();

    // forwarded: rewritten into the forwarding domain
    let sent = send(
        &pipeline,
        "alice@sender.test",
        "bob@external.test",
        "forwarded",
        Some("fwd@virtual.test"),
    )
    .await;
    assert!(sent.success, "{}", sent.transcript);
    let (from, to) = delivered(&pipeline, &queue_id(sent.data_reply().unwrap())).await;
    assert!(from.starts_with("SRS0="), "{from}");
    assert!(from.ends_with("=sender.test=alice@virtual.test"), "{from}");
    assert_eq!(to, ["bob@external.test"]);
    let srs = Srs::new(
        &Secrets::new(vec![SECRET.as_bytes().to_vec()]).unwrap(),
        Settings::default(),
    )
    .unwrap();
    let now = SystemTime::now();
    assert_eq!(
        from,
        srs.forward("alice@sender.test", "virtual.test", now)
            .unwrap()
    );

    // the bounce to it goes to alice@sender.test
    let bounce = send(&pipeline, "<>", &from, "bounce", None).await;
    assert!(bounce.success, "{}", bounce.transcript);
    let (bounce_from, bounce_to) =
        delivered(&pipeline, &queue_id(bounce.data_reply().unwrap())).await;
    assert_eq!(bounce_from, "");
    assert_eq!(bounce_to, ["alice@sender.test"]);

    // tampered and expired: refused at RCPT
    let hash = if from[5..9].eq_ignore_ascii_case("AAAA") {
        "BBBB"
    } else {
        "AAAA"
    };
    let tampered = format!("{}{hash}{}", &from[..5], &from[9..]);
    let expired = srs
        .forward(
            "alice@sender.test",
            "virtual.test",
            now - Duration::from_secs(30 * 86_400),
        )
        .unwrap();
    for (address, why) in [(&tampered, "hash is invalid"), (&expired, "has expired")] {
        let refused = send(&pipeline, "<>", address, "forged", None).await;
        assert!(!refused.success, "{}", refused.transcript);
        let line = refused
            .transcript
            .lines()
            .find(|l| l.starts_with("<** ") && l.contains("550"))
            .unwrap_or_else(|| panic!("no refusal:\n{}", refused.transcript));
        assert!(
            line.contains("550 5.1.1 Invalid SRS address: ") && line.contains(why),
            "{line}"
        );
    }
    assert!(
        pipeline.postfix.log().contains("milter-reject: RCPT from"),
        "{}",
        pipeline.postfix.log()
    );

    // left alone: the null sender and a local sender, though forwarded
    for (sender, subject) in [
        ("<>", "null sender"),
        ("carol@virtual.test", "local sender"),
    ] {
        let sent = send(
            &pipeline,
            sender,
            "bob@external.test",
            subject,
            Some("fwd@virtual.test"),
        )
        .await;
        assert!(sent.success, "{}", sent.transcript);
        let (from, _) = delivered(&pipeline, &queue_id(sent.data_reply().unwrap())).await;
        assert_eq!(from, sender.trim_matches(['<', '>']), "{subject}");
    }

    // the archive: original and rewritten sender, the reversed recipient
    let determinants = |subject: &'static str| {
        let pool = pipeline.db.pool.clone();
        async move {
            let text: String = eventually(Duration::from_secs(20), "the srs result", || async {
                sqlx::query_scalar(
                    "SELECT r.determinants FROM message_result r JOIN message m \
                     ON m.id = r.message WHERE m.subject = ? AND r.module = 'srs'",
                )
                .bind(subject)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten()
            })
            .await
            .unwrap();
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        }
    };
    let forwarded = determinants("forwarded").await;
    assert_eq!(forwarded["sender"]["original"], "alice@sender.test");
    assert_eq!(forwarded["sender"]["rewritten"], from.as_str());
    let bounced = determinants("bounce").await;
    assert_eq!(bounced["recipients"][0]["address"], from.as_str());
    assert_eq!(bounced["recipients"][0]["reversed"], "alice@sender.test");

    // a plain unknown address of the virtual domain is still refused by Postfix itself, and
    // the gateway tells that refusal (RCPT_REJ) from the accepted SRS address of the same
    // virtual alias domain
    let unknown = send(
        &pipeline,
        "<>",
        &format!("nobody@virtual.test,{from}"),
        "unknown",
        None,
    )
    .await;
    assert!(unknown.success, "{}", unknown.transcript);
    assert!(
        unknown
            .transcript
            .contains("<** 550 5.1.1 <nobody@virtual.test>"),
        "{}",
        unknown.transcript
    );
    let (_, to) = delivered(&pipeline, &queue_id(unknown.data_reply().unwrap())).await;
    assert_eq!(to, ["alice@sender.test"]);
    let statuses: Vec<(String, String)> =
        eventually(Duration::from_secs(20), "the recipient rows", || async {
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT r.local, mr.status FROM message_recipient mr \
                 JOIN recipient r ON r.id = mr.recipient JOIN message m ON m.id = mr.message \
                 WHERE m.subject = 'unknown' ORDER BY r.local",
            )
            .fetch_all(&pipeline.db.pool)
            .await
            .ok()?;
            (rows.len() == 2).then_some(rows)
        })
        .await
        .unwrap();
    assert_eq!(statuses[0], ("nobody".to_owned(), "rejected".to_owned()));
    assert_eq!(statuses[1].1, "accepted");

    pipeline.stop().await.unwrap();
    std::fs::remove_file(&secrets).unwrap();
    std::fs::remove_file(&canonical).unwrap();
}

/// `rewrite = "always"` (PostSRSd's behaviour): every sender outside our domains is rewritten
/// into `domain`, forwarded or not; a local sender is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn always_rewrites_every_outside_sender_into_the_srs_domain() {
    let secrets = std::env::temp_dir().join(format!("cgt-srs-{}", uuid::Uuid::now_v7()));
    std::fs::write(&secrets, format!("{SECRET}\n")).unwrap();
    let secrets_file: PathBuf = secrets.clone();
    let pipeline = Pipeline::start(move |c| {
        c.rspamd.enabled = false;
        c.srs.enabled = true;
        c.srs.secrets_file = secrets_file;
        c.srs.domain = "srs.example.net".into();
        c.srs.local_domains = vec!["virtual.test".into()];
        c.srs.rewrite = platform::config::SrsRewrite::Always;
    })
    .await
    .unwrap();

    let sent = send(
        &pipeline,
        "alice@sender.test",
        "bob@external.test",
        "plain",
        None,
    )
    .await;
    assert!(sent.success, "{}", sent.transcript);
    let (from, _) = delivered(&pipeline, &queue_id(sent.data_reply().unwrap())).await;
    assert!(from.starts_with("SRS0="), "{from}");
    assert!(
        from.ends_with("=sender.test=alice@srs.example.net"),
        "{from}"
    );

    let local = send(
        &pipeline,
        "carol@virtual.test",
        "bob@external.test",
        "local",
        None,
    )
    .await;
    assert!(local.success, "{}", local.transcript);
    let (from, _) = delivered(&pipeline, &queue_id(local.data_reply().unwrap())).await;
    assert_eq!(from, "carol@virtual.test");

    pipeline.stop().await.unwrap();
    std::fs::remove_file(&secrets).unwrap();
}
