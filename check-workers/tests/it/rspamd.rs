//! The rspamd module end to end: gateway stand-in → RabbitMQ → `check_workers::run` → rspamd on
//! 127.0.0.1:11333 → reply.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use test_support::{TestBroker, init_test_logging};
use wire::Action;

use crate::harness::{Gateway, Workers, config, gtube_request, median, plain_request, request};

const REPLY_WITHIN: Duration = Duration::from_secs(15);
const STOP_WITHIN: Duration = Duration::from_secs(15);

fn symbol_names(determinants: &serde_json::Value) -> Vec<String> {
    determinants["symbols"]
        .as_array()
        .expect("symbols is a list")
        .iter()
        .map(|s| s["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn gtube_is_rejected_with_rspamds_score_times_the_multiplier() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    let workers = Workers::start(config(&broker.url));

    let request = gtube_request();
    gateway.send(&request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.message_id, request.message_id);
    assert_eq!(result.module, "rspamd");
    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert!(result.score >= 15.0 * 0.67 - 1e-9, "score {}", result.score);
    assert!(
        result.message.starts_with(
            "Our system has detected that this message is likely unsolicited mail (SPAM)."
        ),
        "{}",
        result.message
    );
    let d = &result.determinants;
    assert_eq!(d["multiplier"], 0.67);
    assert_eq!(d["action"], "reject");
    assert!(d["score"].as_f64().unwrap() >= 15.0, "{d}");
    assert!((result.score - d["score"].as_f64().unwrap() * 0.67).abs() < 1e-9);
    assert!(symbol_names(d).contains(&"GTUBE".to_owned()), "{d}");
    assert_eq!(d["smtp_message"], "Gtube pattern", "{d}");
    assert!(
        result.duration > 0.0 && result.duration < 10.0,
        "{}",
        result.duration
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn plain_message_gets_a_reject_suggestion_with_a_low_score() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    let workers = Workers::start(config(&broker.url));

    let request = plain_request();
    gateway.send(&request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert!(
        result.score < 5.0,
        "score {} ({})",
        result.score,
        result.determinants
    );
    let d = &result.determinants;
    assert!(!symbol_names(d).contains(&"GTUBE".to_owned()), "{d}");
    let scores: Vec<f64> = d["symbols"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["score"].as_f64().unwrap())
        .collect();
    assert!(!scores.is_empty(), "{d}");
    assert!(
        scores.windows(2).all(|w| w[0] >= w[1]),
        "not sorted by score: {scores:?}"
    );
    // rspamd 3.4 always asks to strip a forged X-Spam header
    assert_eq!(
        result.changes.remove_headers,
        ["X-Spam"],
        "{:?}",
        result.changes
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn unreachable_rspamd_gives_an_error_result_within_the_timeout() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    // A port nothing listens on: bound by us, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = config(&broker.url);
    config.rspamd.port = port;
    config.rspamd.timeout = Duration::from_secs(3);
    let workers = Workers::start(config);

    let request = plain_request();
    let sent = Instant::now();
    gateway.send(&request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert!(
        sent.elapsed() < Duration::from_secs(3),
        "took {:?}",
        sent.elapsed()
    );
    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.action, Action::Error);
    assert_eq!(result.score, 25.0);
    let reason = result.determinants["error"].as_str().unwrap();
    assert!(reason.starts_with("cannot reach rspamd"), "{reason}");
    assert!(reason.contains(&format!("127.0.0.1:{port}")), "{reason}");
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn silent_rspamd_gives_an_error_result_at_the_timeout() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    // Accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = config(&broker.url);
    config.rspamd.port = port;
    config.rspamd.timeout = Duration::from_secs(1);
    let workers = Workers::start(config);

    let request = plain_request();
    let sent = Instant::now();
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    let waited = sent.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "answered after {waited:?}"
    );
    assert!(waited < Duration::from_secs(4), "answered after {waited:?}");
    assert_eq!(result.action, Action::Error);
    assert_eq!(
        result.determinants["error"],
        "no answer within the module timeout of 1s"
    );
    assert!(
        result.duration >= 0.9 && result.duration < 2.0,
        "{}",
        result.duration
    );
    workers.stop(STOP_WITHIN).await.unwrap();
    silent.abort();
}

#[tokio::test]
async fn request_without_content_is_an_error_result() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    let workers = Workers::start(config(&broker.url));

    let request = request("rspamd", None);
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(result.action, Action::Error);
    assert_eq!(result.determinants["error"], "no message content");
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn two_requests_in_flight_are_answered_with_their_own_correlation_ids() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    let workers = Workers::start(config(&broker.url));

    let spam = gtube_request();
    let ham = plain_request();
    gateway.send(&spam).await;
    gateway.send(&ham).await;
    let mut replies = HashMap::new();
    for _ in 0..2 {
        let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert_eq!(correlation_id, result.message_id.to_string());
        replies.insert(correlation_id, result);
    }

    let spam_result = &replies[&spam.message_id.to_string()];
    let ham_result = &replies[&ham.message_id.to_string()];
    assert!(spam_result.score >= 10.0, "{spam_result:?}");
    assert!(symbol_names(&spam_result.determinants).contains(&"GTUBE".to_owned()));
    assert!(ham_result.score < 5.0, "{ham_result:?}");
    assert!(!symbol_names(&ham_result.determinants).contains(&"GTUBE".to_owned()));
    workers.stop(STOP_WITHIN).await.unwrap();
}

/// Not a benchmark: 20 scans one after another, to see what one scan costs here. Run with
/// `--nocapture` to read the figures.
#[tokio::test]
async fn scan_latency_of_twenty_messages() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    let workers = Workers::start(config(&broker.url));

    let mut scan_seconds = Vec::new();
    let mut round_trip_seconds = Vec::new();
    for _ in 0..20 {
        let request = plain_request();
        let sent = Instant::now();
        gateway.send(&request).await;
        let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
        round_trip_seconds.push(sent.elapsed().as_secs_f64());
        assert_eq!(correlation_id, request.message_id.to_string());
        assert_eq!(result.action, Action::Reject, "{result:?}");
        scan_seconds.push(result.duration);
    }
    let max = scan_seconds.iter().copied().fold(0.0, f64::max);
    println!(
        "rspamd scan latency over 20 messages: median {:.1} ms, max {:.1} ms; \
         request-to-reply median {:.1} ms",
        median(scan_seconds) * 1000.0,
        max * 1000.0,
        median(round_trip_seconds) * 1000.0
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}
