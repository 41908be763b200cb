//! Reputation through a real Postfix, with client addresses presented by XCLIENT
//! (`swaks --xclient-addr`) and rspamd as the scanner (its multiplier lowered so that the
//! test clients' clean mail stays below the reject threshold): 12 GTUBE messages from one address are
//! rejected by rspamd and counted by the auditor; then a clean message from the same address is
//! rejected by reputation (the reply says why), one from its /24 too (with the default factors),
//! and one from an unrelated network is delivered with reputation's score 0. Without
//! `client_network` among the factors the neighbour is delivered. Under noop the counts are
//! those of production, and greylisting-only tempfails count in `messages` alone.

use std::time::Duration;

use platform::reputation::Factor;
use test_support::eventually;

use crate::{GTUBE, Pipeline};

/// Sends a message from `client`: GTUBE when `spam`, else a friendly one. (success, reply,
/// transcript)
async fn send(
    pipeline: &Pipeline,
    client: &str,
    sender: &str,
    subject: &str,
    spam: bool,
) -> (bool, String, String) {
    let subject_header = format!("Subject: {subject}");
    let body = if spam {
        GTUBE
    } else {
        "Hi Bob,\n\nshall we have lunch tomorrow at noon?\n\nAlice"
    };
    let sent = pipeline
        .send(&[
            "--from",
            sender,
            "--to",
            "rcpt@mailbox.test",
            "--helo",
            "mail.example.org",
            "--xclient-addr",
            client,
            "--xclient-name",
            "[UNAVAILABLE]",
            "--header",
            &subject_header,
            "--body",
            body,
        ])
        .await
        .unwrap();
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    (sent.success, reply, sent.transcript)
}

/// (messages, rejected, tempfailed, permitted) of a value, all days.
async fn counts(pipeline: &Pipeline, factor: &str, value: &str) -> (i64, i64, i64, i64) {
    sqlx::query_as(
        "SELECT CAST(COALESCE(SUM(messages), 0) AS SIGNED), \
             CAST(COALESCE(SUM(rejected), 0) AS SIGNED), \
             CAST(COALESCE(SUM(tempfailed), 0) AS SIGNED), \
             CAST(COALESCE(SUM(permitted), 0) AS SIGNED) \
         FROM reputation_count WHERE factor = ? AND value = ?",
    )
    .bind(factor)
    .bind(value)
    .fetch_one(&pipeline.db.pool)
    .await
    .unwrap()
}

/// (verdict, score, determinants) of reputation's result for the message with this subject.
async fn reputation_result(pipeline: &Pipeline, subject: &str) -> (String, f64, serde_json::Value) {
    let (verdict, score, determinants): (String, f64, String) =
        eventually(Duration::from_secs(20), "the reputation result", || async {
            sqlx::query_as(
                "SELECT r.verdict, r.score, r.determinants FROM message_result r \
                 JOIN message m ON m.id = r.message WHERE m.subject = ? AND r.module = ?",
            )
            .bind(subject)
            .bind("reputation")
            .fetch_optional(&pipeline.db.pool)
            .await
            .ok()
            .flatten()
        })
        .await
        .unwrap();
    (verdict, score, serde_json::from_str(&determinants).unwrap())
}

/// 12 GTUBE messages from `client`, each refused by rspamd (or, under noop, delivered), and
/// archived (so counted) before this returns.
async fn spam_from(pipeline: &Pipeline, client: &str, noop: bool) {
    for i in 0..12 {
        let subject = format!("spam {client} {i}");
        let (ok, reply, transcript) =
            send(pipeline, client, "spammer@example.org", &subject, true).await;
        assert_eq!(ok, noop, "{reply}\n{transcript}");
        let (verdict, _, _, _) = pipeline.archived(&subject).await.unwrap();
        assert_eq!(verdict, "reject", "{subject}");
    }
}

fn reputation(c: &mut platform::config::Config) {
    c.reputation.enabled = true;
    // rspamd scores these test clients' clean mail about 7.9 (no reverse DNS, HELO and sender
    // domains that do not resolve): at 0.4 that is 3.2 reject points, below the threshold,
    // and GTUBE's 15 still rejects with 6
    c.rspamd.multiplier = 0.4;
    // the sender domain's SPF against a port nobody answers: fails at once, the domain does
    // not count (there is no DNS for these test domains anyway)
    c.reputation.dns_resolver = Some("127.0.0.1:9".parse().unwrap());
    c.reputation.spf_timeout = Duration::from_millis(500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_the_scanner_refused_is_refused_by_reputation() {
    let pipeline = Pipeline::start(reputation).await.unwrap();
    spam_from(&pipeline, "198.51.100.50", false).await;
    assert_eq!(
        counts(&pipeline, "client_address", "198.51.100.50").await,
        (12, 12, 0, 0)
    );

    // the same address, a clean message: rejected, and the reply says why
    let (ok, reply, transcript) = send(
        &pipeline,
        "198.51.100.50",
        "alice@example.org",
        "clean .50",
        false,
    )
    .await;
    assert!(!ok, "{transcript}");
    assert_eq!(
        reply.split(" (").next().unwrap_or_default(),
        "550 5.7.1 Poor reputation: 12 of 12 judged messages from client address \
         198.51.100.50 in the last 7d were refused",
        "{transcript}"
    );
    let (verdict, score, d) = reputation_result(&pipeline, "clean .50").await;
    assert_eq!((verdict.as_str(), score), ("reject", 8.0));
    assert_eq!(d["factors"][0]["rejected"], 12, "{d}");
    assert_eq!(d["factors"][1]["value"], "198.51.100.0/24", "{d}");

    // its /24 neighbour: rejected by the network's record
    let (ok, reply, transcript) = send(
        &pipeline,
        "198.51.100.51",
        "alice@example.org",
        "clean .51",
        false,
    )
    .await;
    assert!(!ok, "{transcript}");
    assert!(
        reply.contains("from client network 198.51.100.0/24"),
        "{reply}\n{transcript}"
    );

    // an unrelated network: delivered, reputation's score 0
    let (ok, reply, transcript) = send(
        &pipeline,
        "203.0.113.7",
        "alice@example.org",
        "clean other",
        false,
    )
    .await;
    assert!(ok, "{reply}\n{transcript}");
    let (verdict, score, _) = reputation_result(&pipeline, "clean other").await;
    assert_eq!((verdict.as_str(), score), ("permit", 0.0));

    // reputation's own refusals say nothing of the sender: counted in messages alone
    pipeline.archived("clean .51").await.unwrap();
    assert_eq!(
        counts(&pipeline, "client_address", "198.51.100.50").await,
        (13, 12, 0, 0)
    );
    assert_eq!(
        counts(&pipeline, "client_network", "198.51.100.0/24").await,
        (14, 12, 0, 0)
    );
    assert_eq!(
        counts(&pipeline, "client_address", "203.0.113.7").await,
        (1, 0, 0, 1)
    );
    // no SASL login and no SPF pass: the sender domains were not counted
    assert_eq!(
        counts(&pipeline, "sender_domain", "example.org").await,
        (0, 0, 0, 0)
    );
    // and the decisive flags in the archive say who decided
    let decisive: Vec<(String, Option<bool>)> = sqlx::query_as(
        "SELECT r.module, r.decisive FROM message_result r JOIN message m ON m.id = r.message \
         WHERE m.subject = 'clean .50' ORDER BY r.module",
    )
    .fetch_all(&pipeline.db.pool)
    .await
    .unwrap();
    assert_eq!(
        decisive,
        [
            ("reputation".into(), Some(true)),
            ("rspamd".into(), Some(false))
        ]
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_client_network_the_neighbour_is_delivered() {
    let pipeline = Pipeline::start(|c| {
        reputation(c);
        c.reputation.factors = vec![
            Factor::ClientAddress,
            Factor::SenderDomain,
            Factor::SaslUsername,
        ];
    })
    .await
    .unwrap();
    spam_from(&pipeline, "198.51.100.50", false).await;
    let (ok, reply, transcript) = send(
        &pipeline,
        "198.51.100.51",
        "alice@example.org",
        "clean .51",
        false,
    )
    .await;
    assert!(ok, "{reply}\n{transcript}");
    let (verdict, score, d) = reputation_result(&pipeline, "clean .51").await;
    assert_eq!((verdict.as_str(), score), ("permit", 0.0), "{d}");
    // the network is still counted, for when it is judged
    assert_eq!(
        counts(&pipeline, "client_network", "198.51.100.0/24").await,
        (13, 12, 0, 1)
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn under_noop_the_counts_are_production_s_and_greylisting_does_not_count() {
    let pipeline = Pipeline::start(|c| {
        reputation(c);
        c.noop = true;
        c.greylisting.enabled = true;
        // greylisting alone tempfails, whatever rspamd's few points for a clean message
        c.greylisting.initial_score = 20.0;
    })
    .await
    .unwrap();
    // delivered under noop, counted as the rejects they would have been
    spam_from(&pipeline, "198.51.100.50", true).await;
    assert_eq!(
        counts(&pipeline, "client_address", "198.51.100.50").await,
        (12, 12, 0, 0)
    );
    // greylisted clean messages: tempfail would-be verdicts, decided by greylisting alone
    for i in 0..3 {
        let subject = format!("grey {i}");
        let sender = format!("friend{i}@example.org");
        let (ok, reply, transcript) = send(&pipeline, "192.0.2.77", &sender, &subject, false).await;
        assert!(ok, "noop delivers: {reply}\n{transcript}");
        let (verdict, applied, _, _) = pipeline.archived(&subject).await.unwrap();
        assert_eq!((verdict.as_str(), applied.as_str()), ("tempfail", "permit"));
    }
    assert_eq!(
        counts(&pipeline, "client_address", "192.0.2.77").await,
        (3, 0, 0, 0)
    );
    // the bad address's clean message: delivered, but its would-be verdict is reputation's
    let (ok, reply, transcript) = send(
        &pipeline,
        "198.51.100.50",
        "alice@example.org",
        "clean .50",
        false,
    )
    .await;
    assert!(ok, "noop delivers: {reply}\n{transcript}");
    let (verdict, score, _) = reputation_result(&pipeline, "clean .50").await;
    assert_eq!((verdict.as_str(), score), ("reject", 8.0));
    let (verdict, applied, noop, _) = pipeline.archived("clean .50").await.unwrap();
    assert_eq!(
        (verdict.as_str(), applied.as_str(), noop),
        ("reject", "permit", true)
    );
    pipeline.stop().await.unwrap();
}
