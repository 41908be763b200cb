//! bounce-ingest against the real RabbitMQ (PEERS.md), each test on its own vhost: the listener
//! run in-process on port 0, and the real `bounce-ingest submit` binary as Postfix's local(8)
//! runs it (stdin in, exit status out).

#![allow(clippy::unwrap_used)]

mod maillog;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use lapin::options::BasicGetOptions;
use platform::broker::BOUNCE_QUEUE;
use platform::config::Config;
use test_support::{TestBroker, eventually};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::contract::ParseStatus;
use wire::{BounceEvent, BounceSource};

const WAIT: Duration = Duration::from_secs(30);

fn report(name: &str) -> Vec<u8> {
    std::fs::read(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("resources/dsn")
            .join(name),
    )
    .unwrap()
}

fn temp_spool() -> PathBuf {
    std::env::temp_dir().join(format!("cgt-bounce-spool-{}", uuid::Uuid::now_v7()))
}

fn config(broker_url: &str, spool: &Path) -> Config {
    let mut config = Config::default();
    config.broker.url = broker_url.into();
    config.broker.reconnect_max_backoff = Duration::from_millis(300);
    config.bounce_ingest.spool_dir = spool.to_path_buf();
    config.bounce_ingest.read_timeout = Duration::from_secs(5);
    config
}

/// An AMQP URL where nothing listens.
fn dead_broker_url() -> String {
    let port = test_support::postfix::free_port().unwrap();
    format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
}

struct Running {
    addr: SocketAddr,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn start(config: Config) -> Self {
        test_support::init_test_logging();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(bounce_ingest::run(config, listener, shutdown.clone()));
        Self {
            addr,
            shutdown,
            task,
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Sends one report the way `nc -N` does and returns the answer line.
async fn send(addr: SocketAddr, report: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(report).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer).await;
    answer
}

/// The next bounce event on the auditor's queue.
async fn next_event(broker: &TestBroker) -> BounceEvent {
    let connection = platform::broker::connect(&broker.url, "bounce-ingest-test")
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    platform::broker::declare_bounce_topology(&connection)
        .await
        .unwrap();
    let event = eventually(WAIT, "a bounce event on the queue", || {
        let channel = channel.clone();
        async move {
            channel
                .basic_get(BOUNCE_QUEUE.into(), BasicGetOptions { no_ack: true })
                .await
                .unwrap()
                .map(|message| {
                    wire::contract::decode::<BounceEvent>(&message.delivery.data).unwrap()
                })
        }
    })
    .await
    .unwrap();
    let _ = connection.close(200, "done".into()).await;
    event
}

fn spooled(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter(|e| {
                    e.as_ref()
                        .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "bounce"))
                })
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn the_listener_answers_250_once_spooled_and_publishes_the_report() {
    let broker = TestBroker::new().unwrap();
    let spool = temp_spool();
    let running = Running::start(config(&broker.url, &spool)).await;
    let raw = report("postfix-bounce.eml");

    let answer = send(running.addr, &raw).await;
    let id = answer
        .strip_prefix("250 2.0.0 Ok: queued as ")
        .unwrap_or_else(|| panic!("answer: {answer:?}"))
        .trim()
        .to_owned();

    let event = next_event(&broker).await;
    assert_eq!(event.bounce_id.to_string(), id);
    assert_eq!(event.source, BounceSource::Tcp);
    assert_eq!(event.peer, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(event.raw, raw);
    assert_eq!(event.raw_size, raw.len() as u64);
    assert_eq!(event.report.status, ParseStatus::Parsed);
    assert_eq!(event.report.per_message.queue_id, "4jZC0P6BDPz6XPm");
    eventually(WAIT, "the spool emptied after the confirm", || async {
        (spooled(&spool) == 0).then_some(())
    })
    .await
    .unwrap();
    running.stop().await;
    std::fs::remove_dir_all(&spool).unwrap();
}

#[tokio::test]
async fn with_the_broker_away_reports_are_kept_in_the_spool_and_published_on_the_next_start() {
    let broker = TestBroker::new().unwrap();
    let spool = temp_spool();
    let away = Running::start(config(&dead_broker_url(), &spool)).await;
    let answer = send(away.addr, &report("postfix-delay.eml")).await;
    assert!(answer.starts_with("250 "), "{answer:?}");
    assert_eq!(spooled(&spool), 1, "on disk before the answer");
    away.stop().await;
    assert_eq!(spooled(&spool), 1, "kept over the stop");

    let back = Running::start(config(&broker.url, &spool)).await;
    let event = next_event(&broker).await;
    assert_eq!(event.report.per_message.queue_id, "4jZCq13VdFz6XPw");
    eventually(WAIT, "the spool emptied", || async {
        (spooled(&spool) == 0).then_some(())
    })
    .await
    .unwrap();
    back.stop().await;
    std::fs::remove_dir_all(&spool).unwrap();
}

#[tokio::test]
async fn clients_outside_the_allow_list_are_closed_unread() {
    let broker = TestBroker::new().unwrap();
    let spool = temp_spool();
    let mut config = config(&broker.url, &spool);
    config.bounce_ingest.allow = vec!["192.0.2.0/24".parse().unwrap()];
    let running = Running::start(config).await;
    let answer = send(running.addr, &report("postfix-bounce.eml")).await;
    assert_eq!(answer, "", "no answer, nothing kept");
    assert_eq!(spooled(&spool), 0);
    running.stop().await;
    std::fs::remove_dir_all(&spool).unwrap();
}

#[tokio::test]
async fn an_oversized_report_is_read_to_its_end_and_kept_cut_and_marked() {
    let broker = TestBroker::new().unwrap();
    let spool = temp_spool();
    let mut config = config(&broker.url, &spool);
    config.bounce_ingest.max_size = 2048;
    let running = Running::start(config).await;
    let mut raw = report("postfix-bounce.eml");
    raw.extend(std::iter::repeat_n(b'x', 100_000));

    let answer = send(running.addr, &raw).await;
    assert!(answer.starts_with("250 "), "{answer:?}");
    let event = next_event(&broker).await;
    assert_eq!(event.raw, raw[..2048]);
    assert_eq!(event.raw_size, raw.len() as u64);
    assert_eq!(event.report.status, ParseStatus::Partial);
    assert!(
        event
            .report
            .problems
            .iter()
            .any(|p| p.contains("only the first 2048 were kept")),
        "{:?}",
        event.report.problems
    );
    running.stop().await;
    std::fs::remove_dir_all(&spool).unwrap();
}

#[tokio::test]
async fn a_sender_that_never_closes_gets_its_report_taken_after_read_timeout() {
    let broker = TestBroker::new().unwrap();
    let spool = temp_spool();
    let mut config = config(&broker.url, &spool);
    config.bounce_ingest.read_timeout = Duration::from_secs(1);
    let running = Running::start(config).await;
    let mut stream = TcpStream::connect(running.addr).await.unwrap();
    stream
        .write_all(&report("postfix-bounce.eml"))
        .await
        .unwrap();
    // no shutdown: an `nc` without -N
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("250 "), "{answer:?}");
    let event = next_event(&broker).await;
    assert_eq!(event.report.status, ParseStatus::Partial);
    assert!(
        event
            .report
            .problems
            .iter()
            .any(|p| p.contains("read-timeout")),
        "{:?}",
        event.report.problems
    );
    running.stop().await;
    std::fs::remove_dir_all(&spool).unwrap();
}

/// Runs the real binary as local(8) would: the report on stdin, configuration in the
/// environment. Returns (exit code, stderr).
async fn submit(stdin: &[u8], args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bounce-ingest"));
    command
        .arg("submit")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    // a process that exits at once (a bad configuration) closes its stdin: EPIPE here, and
    // its exit status is what counts, as for local(8)
    let _ = input.write_all(stdin).await;
    drop(input);
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn submit_publishes_and_exits_0_and_exits_75_while_the_broker_is_away() {
    let broker = TestBroker::new().unwrap();
    let raw = report("exim.eml");
    let (code, stderr) = submit(&raw, &[], &[("CLUEGETTER_BROKER__URL", &broker.url)]).await;
    assert_eq!(code, 0, "{stderr}");
    let event = next_event(&broker).await;
    assert_eq!(event.source, BounceSource::Submit);
    assert_eq!(event.peer, None);
    assert_eq!(event.raw, raw);
    assert_eq!(
        event.report.returned.message_id,
        "<5d6e7f80-9a1b-4c2d-8e3f-a4b5c6d7e8f9@example.org>"
    );

    let (code, stderr) = submit(&raw, &[], &[("CLUEGETTER_BROKER__URL", &dead_broker_url())]).await;
    assert_eq!(code, 75, "EX_TEMPFAIL: Postfix keeps the report\n{stderr}");
    assert!(stderr.contains("cannot reach RabbitMQ"), "{stderr}");
    // stderr is a pipe here, as for local(8): plain text, no colour codes
    assert!(
        !stderr.contains('\x1b'),
        "ANSI escapes in a log that is not a terminal: {stderr:?}"
    );
}

/// The alias pipe as it is naturally written (`submit --config FILE`, the flag after the
/// subcommand), with a list of broker nodes whose first does not answer.
#[tokio::test]
async fn submit_takes_config_after_the_subcommand_and_the_first_broker_node_that_answers() {
    let broker = TestBroker::new().unwrap();
    let dir = temp_spool();
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("cluegetter.toml");
    std::fs::write(
        &file,
        format!(
            "[broker]\nurl = [\"{}\", \"{}\"]\n",
            dead_broker_url(),
            broker.url
        ),
    )
    .unwrap();
    let raw = report("exim.eml");
    let (code, stderr) = submit(&raw, &["--config", file.to_str().unwrap()], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let event = next_event(&broker).await;
    assert_eq!(event.raw, raw);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn submit_exits_75_on_a_bad_configuration_or_command_line_and_66_on_empty_input() {
    let raw = report("exim.eml");
    let (code, stderr) = submit(&raw, &[], &[("CLUEGETTER_BOUNCE_INGEST__MAX_SIZE", "1")]).await;
    assert_eq!(code, 75, "{stderr}");
    assert!(stderr.contains("max-size"), "{stderr}");
    let (code, stderr) = submit(&raw, &["--no-such-flag"], &[]).await;
    assert_eq!(code, 75, "{stderr}");
    let (code, stderr) = submit(b"", &[], &[]).await;
    assert_eq!(code, 66, "{stderr}");
}

#[tokio::test]
async fn submit_via_the_listener_exits_0_once_spooled_and_75_when_nobody_listens() {
    let broker = TestBroker::new().unwrap();
    let spool = temp_spool();
    let running = Running::start(config(&broker.url, &spool)).await;
    let raw = report("gmail-no-returned-message.eml");
    let via = running.addr.to_string();
    let (code, stderr) = submit(&raw, &["--via", &via], &[]).await;
    assert_eq!(code, 0, "{stderr}");
    let event = next_event(&broker).await;
    assert_eq!(event.source, BounceSource::Tcp);
    assert_eq!(event.raw, raw);
    running.stop().await;

    let (code, stderr) = submit(&raw, &["--via", &via], &[]).await;
    assert_eq!(code, 75, "{stderr}");
    std::fs::remove_dir_all(&spool).unwrap();
}
