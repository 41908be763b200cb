//! The ClamAV module end to end against the real clamd on 127.0.0.1:3310 with the test-only
//! EICAR signature database (PEERS.md §8): EICAR as a base64 attachment, a clean attachment,
//! clamd refusing a stream over its StreamMaxLength, clamd down at start and coming back.

use std::time::{Duration, Instant};

use platform::config::{ClamavConfig, ClamdAddress, Config};
use test_support::{TestBroker, init_test_logging};
use tokio::net::TcpListener;
use wire::Action;

use check_workers::module::{Module as _, ModuleError, error_chain};
use check_workers::modules::clamav::{Clamav, MALWARE_MESSAGE};

use crate::harness::{Gateway, Workers, median, request};

const REPLY_WITHIN: Duration = Duration::from_secs(15);
const STOP_WITHIN: Duration = Duration::from_secs(15);

/// The EICAR test file, in two halves so that this source is not itself "infected".
fn eicar() -> String {
    let head = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$";
    let tail = "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";
    format!("{head}{tail}")
}

/// Base64 with line breaks every 76 characters, as mail carries attachments.
fn base64_lines(data: &[u8]) -> String {
    use base64::Engine as _;
    let encoded = base64::engine::general_purpose::STANDARD.encode(data);
    encoded
        .as_bytes()
        .chunks(76)
        .map(|line| String::from_utf8_lossy(line).into_owned())
        .collect::<Vec<_>>()
        .join("\r\n")
}

/// A multipart message with one attachment, as the gateway builds content.
fn with_attachment(name: &str, attachment: &[u8]) -> Vec<u8> {
    format!(
        "Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n\
         \tby mx.example.net with SMTP id 4jZB211qk4z6XPc; Tue, 25 Nov 2025 08:00:00 +0000\r\n\
         \t(envelope-from <alice@example.org>)\r\n\
         From: Alice <alice@example.org>\r\n\
         To: Bob <bob@example.net>\r\n\
         Subject: the file\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/mixed; boundary=\"b1\"\r\n\
         \r\n\
         --b1\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Here it is.\r\n\
         --b1\r\n\
         Content-Type: application/octet-stream; name=\"{name}\"\r\n\
         Content-Transfer-Encoding: base64\r\n\
         Content-Disposition: attachment; filename=\"{name}\"\r\n\
         \r\n\
         {}\r\n\
         --b1--\r\n",
        base64_lines(attachment)
    )
    .into_bytes()
}

fn config(broker_url: &str) -> Config {
    let mut config = crate::harness::config(broker_url);
    config.rspamd.enabled = false;
    config.clamav.enabled = true;
    config
}

#[tokio::test]
async fn eicar_attachment_is_rejected_with_the_default_score_and_named() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["clamav"]).await;
    let workers = Workers::start(config(&broker.url));

    let request = request(
        "clamav",
        Some(with_attachment("eicar.com", eicar().as_bytes())),
    );
    gateway.send(&request).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(correlation_id, request.message_id.to_string());
    assert_eq!(result.module, "clamav");
    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert_eq!(result.score, 10.0);
    assert_eq!(result.message, MALWARE_MESSAGE);
    let d = &result.determinants;
    assert_eq!(d["status"], "FOUND");
    let virus = d["virus"].as_str().unwrap();
    assert!(virus.starts_with("Peers.Test.EICAR-"), "{d}");
    assert!(
        d["reply"]
            .as_str()
            .unwrap()
            .starts_with("stream: Peers.Test.EICAR-"),
        "{d}"
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn clean_attachment_is_permitted() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["clamav"]).await;
    let workers = Workers::start(config(&broker.url));

    let request = request(
        "clamav",
        Some(with_attachment(
            "report.txt",
            b"Quarterly figures: all fine.\n",
        )),
    );
    gateway.send(&request).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;

    assert_eq!(result.action, Action::Permit, "{result:?}");
    assert_eq!(result.score, 0.0);
    assert_eq!(result.determinants["status"], "OK");
    assert_eq!(result.determinants["reply"], "stream: OK");
    workers.stop(STOP_WITHIN).await.unwrap();
}

#[tokio::test]
async fn a_stream_over_clamds_limit_is_an_error_result() {
    init_test_logging();
    // clamd-peers.conf has StreamMaxLength 25M; max-size lets 26 MB through. The module is
    // called directly: a 26 MB request is no test of RabbitMQ.
    let clamav = Clamav::new(&ClamavConfig {
        max_size: 26 * 1024 * 1024,
        timeout: Duration::from_secs(30),
        ..ClamavConfig::default()
    });
    let mut content = with_attachment("big.bin", b"x");
    content.resize(26 * 1024 * 1024, b'a');
    let error = clamav
        .check(&request("clamav", Some(content)))
        .await
        .unwrap_err();
    assert!(matches!(error, ModuleError::BadReply { .. }), "{error:?}");
    assert_eq!(
        error_chain(&error),
        "unreadable reply from clamav: clamd could not scan the message: INSTREAM size limit exceeded."
    );
}

#[tokio::test]
async fn max_size_cuts_what_clamd_sees() {
    init_test_logging();
    let clamav = Clamav::new(&ClamavConfig {
        max_size: 1_000,
        ..ClamavConfig::default()
    });
    // the virus lies beyond the first 1000 bytes
    let mut content = with_attachment("pad.txt", &[b'.'; 2_000]);
    content.extend_from_slice(eicar().as_bytes());
    let result = clamav
        .check(&request("clamav", Some(content)))
        .await
        .unwrap();
    assert_eq!(result.action, Action::Permit, "{result:?}");
    assert_eq!(result.determinants["scanned_bytes"], 1_000);
    assert_eq!(result.determinants["content_truncated"], true);
}

/// clamd down when the workers start: they keep running and answer with error results; once
/// clamd is reachable, scans work. "clamd" here is a TCP relay to the real one, started late.
#[tokio::test]
async fn clamd_down_at_start_gives_error_results_until_it_is_back() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["clamav"]).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = config(&broker.url);
    config.clamav.address = ClamdAddress::Tcp(format!("127.0.0.1:{port}"));
    config.clamav.timeout = Duration::from_secs(5);
    let workers = Workers::start(config);

    let down = request("clamav", Some(with_attachment("a.txt", b"hello")));
    gateway.send(&down).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(result.action, Action::Error, "{result:?}");
    assert_eq!(
        result.determinants["error"],
        format!(
            "cannot reach clamav: cannot connect to clamd at tcp://127.0.0.1:{port}: \
             Connection refused (os error 111)"
        )
    );

    let relay = relay_to_clamd(port).await;
    let back = request(
        "clamav",
        Some(with_attachment("eicar.com", eicar().as_bytes())),
    );
    gateway.send(&back).await;
    let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(result.action, Action::Reject, "{result:?}");
    assert!(
        result.determinants["virus"]
            .as_str()
            .unwrap()
            .starts_with("Peers.Test.EICAR-")
    );
    workers.stop(STOP_WITHIN).await.unwrap();
    relay.abort();
}

/// Listens on 127.0.0.1:`port` and relays every connection to the real clamd.
async fn relay_to_clamd(port: u16) -> tokio::task::JoinHandle<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                if let Ok(mut clamd) = tokio::net::TcpStream::connect("127.0.0.1:3310").await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut clamd).await;
                }
            });
        }
    })
}

/// Not a benchmark: 20 scans of a message with an attachment, one after another.
#[tokio::test]
async fn scan_latency_of_twenty_messages() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["clamav"]).await;
    let workers = Workers::start(config(&broker.url));

    let attachment: Vec<u8> = (0..20_000u32).map(|n| (n % 251) as u8).collect();
    let mut scan_seconds = Vec::new();
    let mut round_trip_seconds = Vec::new();
    for _ in 0..20 {
        let request = request("clamav", Some(with_attachment("data.bin", &attachment)));
        let sent = Instant::now();
        gateway.send(&request).await;
        let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
        round_trip_seconds.push(sent.elapsed().as_secs_f64());
        assert_eq!(correlation_id, request.message_id.to_string());
        assert_eq!(result.action, Action::Permit, "{result:?}");
        scan_seconds.push(result.duration);
    }
    let max = scan_seconds.iter().copied().fold(0.0, f64::max);
    println!(
        "clamav scan latency over 20 messages (~27 kB base64 attachment): median {:.1} ms, \
         max {:.1} ms; request-to-reply median {:.1} ms",
        median(scan_seconds) * 1000.0,
        max * 1000.0,
        median(round_trip_seconds) * 1000.0
    );
    workers.stop(STOP_WITHIN).await.unwrap();
}
