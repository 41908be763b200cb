//! The SpamAssassin module end to end: gateway stand-in → RabbitMQ → `check_workers::run` → the
//! real spamd on 127.0.0.1:783 (`--local`, PEERS.md §6) → reply. Also spamd gone, silent or
//! not accepting connections, which must give error results within the timeouts, never a hang.

use std::time::{Duration, Instant};

use platform::config::{Config, VerdictMsg};
use test_support::{TestBroker, init_test_logging};
use wire::Action;

use crate::harness::{Gateway, Workers, gtube, median, message_text, request};

const REPLY_WITHIN: Duration = Duration::from_secs(15);
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// Workers serving only spamassassin, on the test's vhost.
fn config(broker_url: &str) -> Config {
    let mut config = crate::harness::config(broker_url);
    config.rspamd.enabled = false;
    config.spamassassin.enabled = true;
    config
}

fn spamassassin_request(subject: &str, body: &str) -> wire::CheckRequest {
    request(
        "spamassassin",
        Some(message_text("4jZB211qk4z6XPs", subject, body)),
    )
}

fn symbols(determinants: &serde_json::Value) -> Vec<String> {
    determinants["report"]
        .as_array()
        .expect("report is a list")
        .iter()
        .map(|f| f["symbol"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// A port on 127.0.0.1 that nothing listens on (bound, then released): spamd stopped.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn gtube_is_rejected_with_a_score_above_1000_and_its_verdict_msg() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    let mut config = config(&broker.url);
    config.spamassassin.verdict_msg = vec![
        VerdictMsg::parse("gtube: The GTUBE test message, sent from %{clientIp}").unwrap(),
        VerdictMsg::parse("NO_RELAYS: lower than GTUBE, never chosen").unwrap(),
    ];
    let workers = Workers::start(config);

    let request = spamassassin_request("Test spam mail (GTUBE)", &gtube());
    gateway.send(&request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.module, "spamassassin");
    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert!(result.score > 1000.0, "score {}", result.score);
    assert_eq!(
        result.message,
        "The GTUBE test message, sent from %{clientIp}"
    );
    let d = &result.determinants;
    assert_eq!(d["spam"], true);
    assert_eq!(d["threshold"], 5.0);
    assert_eq!(d["score"], result.score);
    let symbols = symbols(d);
    assert_eq!(symbols[0], "GTUBE", "highest first: {d}");
    let gtube_fact = &d["report"][0];
    assert_eq!(gtube_fact["score"], 1000.0);
    assert!(
        gtube_fact["description"]
            .as_str()
            .unwrap()
            .contains("Generic Test for Unsolicited Bulk Email"),
        "{gtube_fact}"
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn plain_message_gets_a_low_score_and_the_generic_text() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    let workers = Workers::start(config(&broker.url));

    let request = spamassassin_request(
        "Lunch tomorrow",
        "Hi Bob,\r\n\r\nshall we have lunch tomorrow at noon?\r\n\r\nAlice",
    );
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert!(
        result.score < 5.0,
        "score {} ({})",
        result.score,
        result.determinants
    );
    assert!(
        result.message.starts_with(
            "Our system has detected that this message is likely unsolicited mail (SPAM)."
        ),
        "{}",
        result.message
    );
    assert_eq!(result.determinants["spam"], false);
    assert!(!symbols(&result.determinants).contains(&"GTUBE".to_owned()));
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn a_message_over_max_size_is_cut_and_still_scanned() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    let mut config = config(&broker.url);
    config.spamassassin.max_size = 2_000;
    let workers = Workers::start(config);

    // GTUBE past the cut: spamd never sees it
    let body = format!(
        "{}\r\n{}",
        "lorem ipsum dolor sit amet ".repeat(200),
        gtube()
    );
    let request = spamassassin_request("Long", &body);
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert_eq!(result.determinants["content_truncated"], true);
    assert!(result.score < 1000.0, "{}", result.determinants);
    assert!(!symbols(&result.determinants).contains(&"GTUBE".to_owned()));
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn spamd_stopped_gives_an_error_result_at_once() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    let port = dead_port();
    let mut config = config(&broker.url);
    config.spamassassin.port = port;
    config.spamassassin.timeout = Duration::from_secs(3);
    let workers = Workers::start(config);

    let request = spamassassin_request("x", "y");
    let sent = Instant::now();
    gateway.send(&request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.action, Action::Error);
    assert_eq!(result.score, 25.0);
    assert_eq!(
        result.determinants["error"],
        format!(
            "cannot reach spamassassin: cannot connect to spamd at 127.0.0.1:{port}: \
             Connection refused (os error 111)"
        )
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn b9_a_connect_that_hangs_ends_at_the_connect_timeout() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    // A listener with a full accept queue: Linux drops further SYNs, so a connect hangs.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let _filler = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let mut config = config(&broker.url);
    config.spamassassin.port = port;
    config.spamassassin.connect_timeout = Duration::from_millis(300);
    config.spamassassin.timeout = Duration::from_secs(5);
    let workers = Workers::start(config);

    let request = spamassassin_request("x", "y");
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(result.action, Action::Error);
    assert_eq!(
        result.determinants["error"],
        format!(
            "cannot reach spamassassin: no connection to spamd at 127.0.0.1:{port} within 300ms"
        )
    );
    assert!(
        result.duration >= 0.29 && result.duration < 1.5,
        "{}",
        result.duration
    );
    workers.stop(STOP_WITHIN).await.unwrap();
    drop(listener);
}

#[tokio::test]
async fn b9_a_silent_spamd_ends_at_the_timeout() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    // Accepts connections, reads, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let mut config = config(&broker.url);
    config.spamassassin.port = port;
    config.spamassassin.timeout = Duration::from_secs(1);
    let workers = Workers::start(config);

    let request = spamassassin_request("x", "y");
    let sent = Instant::now();
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    let waited = sent.elapsed();
    assert!(waited >= Duration::from_millis(900), "{waited:?}");
    assert!(waited < Duration::from_secs(4), "{waited:?}");
    assert_eq!(result.action, Action::Error);
    // the worker's timer and the client's are the same length; either may say so first
    let reason = result.determinants["error"].as_str().unwrap();
    assert!(
        reason == "no answer within the module timeout of 1s"
            || reason
                == format!(
                    "cannot reach spamassassin: spamd at 127.0.0.1:{port} did not answer within 1s"
                ),
        "{reason}"
    );
    workers.stop(STOP_WITHIN).await.unwrap();
    silent.abort();
}

#[tokio::test]
async fn a_peer_that_is_not_spamd_gives_an_unreadable_reply_error() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    // An HTTP server where spamd should be: it answers, but not in spamd's protocol.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let http = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        while let Ok((mut socket, _)) = listener.accept().await {
            // read all of it (the client half-closes), so closing sends no RST
            let mut request = Vec::new();
            let _ = socket.read_to_end(&mut request).await;
            let _ = socket
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
        }
    });
    let mut config = config(&broker.url);
    config.spamassassin.port = port;
    let workers = Workers::start(config);

    gateway.send(&spamassassin_request("x", "y")).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(result.action, Action::Error);
    let reason = result.determinants["error"].as_str().unwrap();
    assert!(
        reason
            == "unreadable reply from spamassassin: status line `HTTP/1.1 400 Bad Request` is not \
                `SPAMD/<version> <code> <text>`",
        "{reason}"
    );
    workers.stop(STOP_WITHIN).await.unwrap();
    http.abort();
}

/// Not a benchmark: 20 scans one after another, to see what one scan costs here. Run with
/// `--nocapture` to read the figures.
#[tokio::test]
async fn scan_latency_of_twenty_messages() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["spamassassin"]).await;
    let workers = Workers::start(config(&broker.url));

    let mut scan_seconds = Vec::new();
    let mut round_trip_seconds = Vec::new();
    for n in 0..20 {
        let request = spamassassin_request(
            &format!("Lunch {n}"),
            "Hi Bob,\r\n\r\nshall we have lunch tomorrow at noon?\r\n\r\nAlice",
        );
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
        "spamassassin scan latency over 20 messages: median {:.1} ms, max {:.1} ms; \
         request-to-reply median {:.1} ms",
        median(scan_seconds) * 1000.0,
        max * 1000.0,
        median(round_trip_seconds) * 1000.0
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}
