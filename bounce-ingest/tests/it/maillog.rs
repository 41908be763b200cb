//! `bounce-ingest maillog FILE` against the real RabbitMQ: the follower publishes each delivery
//! line once confirmed, follows a rename (logrotate) and a truncation (copytruncate), and with
//! its state file goes on where it stopped: nothing published twice, nothing skipped.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bounce_ingest::follow::{self, Source};
use lapin::options::BasicGetOptions;
use platform::broker::DELIVERY_QUEUE;
use platform::config::Config;
use test_support::TestBroker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::{DeliveryEvent, DeliveryStatus};

fn line(queue_id: &str, recipient: &str, status: &str) -> String {
    format!(
        "2026-12-07T22:19:01.{:06}+00:00 mx postfix/smtp[1234]: {queue_id}: to=<{recipient}>, \
         relay=none, delay=1.2, delays=1/0/0.2/0, dsn=4.4.1, status={status} (why not)\n",
        recipient.len()
    )
}

fn append(path: &Path, text: &str) {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

struct Follower {
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Follower {
    fn start(config: &Config, log: &Path) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(follow::run(
            config.clone(),
            Source::File(log.to_path_buf()),
            shutdown.clone(),
        ));
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
    }
}

/// Every delivery event on the auditor's queue within `wait` of the last one.
async fn drain(broker: &TestBroker, wait: Duration) -> Vec<DeliveryEvent> {
    let connection = platform::broker::connect(&broker.url, "maillog-test")
        .await
        .unwrap();
    platform::broker::declare_delivery_topology(&connection)
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut events = Vec::new();
    let mut quiet_since = tokio::time::Instant::now();
    while quiet_since.elapsed() < wait {
        match channel
            .basic_get(DELIVERY_QUEUE.into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
        {
            Some(message) => {
                events.push(wire::contract::decode(&message.delivery.data).unwrap());
                quiet_since = tokio::time::Instant::now();
            }
            None => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    let _ = connection.close(200, "done".into()).await;
    events
}

fn recipients(events: &[DeliveryEvent]) -> Vec<String> {
    events.iter().map(|e| e.recipient.clone()).collect()
}

fn temp_dir() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cgt-maillog-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[tokio::test]
async fn the_follower_survives_rotation_and_truncation_and_resumes_from_its_state_file() {
    test_support::init_test_logging();
    let broker = TestBroker::new().unwrap();
    let dir = temp_dir();
    let log = dir.join("postfix.log");
    let mut config = Config::default();
    config.broker.url = broker.url.as_str().into();
    config.broker.reconnect_max_backoff = Duration::from_millis(300);
    config.bounce_ingest.maillog_state_file = dir.join("maillog.state");
    config.bounce_ingest.maillog_poll_interval = Duration::from_millis(100);
    config.bounce_ingest.maillog_hostname = "MX.Example.NET".into();

    append(
        &log,
        &format!(
            "Dec 07 22:18:55 mx postfix/smtpd[1]: connect from localhost[127.0.0.1]\n{}{}",
            line("4jjxMg5k8dz1SST9", "a@example.net", "sent"),
            line("4jjxMg5k8dz1SST9", "b@example.net", "deferred"),
        ),
    );
    let follower = Follower::start(&config, &log);
    let events = drain(&broker, Duration::from_secs(2)).await;
    assert_eq!(recipients(&events), ["a@example.net", "b@example.net"]);
    assert_eq!(events[0].status, DeliveryStatus::Sent);
    assert_eq!(events[1].status, DeliveryStatus::Deferred);
    assert_eq!(events[1].mta_hostname, "mx.example.net");
    assert_eq!(events[1].reason, "why not");

    // a line written in two pieces is published once whole
    let partial = line("4jjxMg5k8dz1SST9", "c@example.net", "bounced");
    let (first, second) = partial.split_at(40);
    append(&log, first);
    assert!(drain(&broker, Duration::from_millis(500)).await.is_empty());
    append(&log, second);
    assert_eq!(
        recipients(&drain(&broker, Duration::from_secs(1)).await),
        ["c@example.net"]
    );

    // rotation by rename: what the old file still gets is read, then the new file
    let rotated = dir.join("postfix.log.1");
    std::fs::rename(&log, &rotated).unwrap();
    append(
        &rotated,
        &line("5kkxMg5k8dz1SST9", "late@example.net", "sent"),
    );
    append(&log, &line("5kkxMg5k8dz1SST9", "new@example.net", "sent"));
    assert_eq!(
        recipients(&drain(&broker, Duration::from_secs(2)).await),
        ["late@example.net", "new@example.net"]
    );

    // truncation in place (copytruncate): read again from the start
    std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&log)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    append(
        &log,
        &line("6mmxMg5k8dz1SST9", "after-truncation@example.net", "sent"),
    );
    assert_eq!(
        recipients(&drain(&broker, Duration::from_secs(2)).await),
        ["after-truncation@example.net"]
    );
    follower.stop().await;

    // restarted with its state file: nothing again, only what came since
    append(
        &log,
        &line("6mmxMg5k8dz1SST9", "while-down@example.net", "deferred"),
    );
    let follower = Follower::start(&config, &log);
    append(
        &log,
        &line("6mmxMg5k8dz1SST9", "after-restart@example.net", "sent"),
    );
    assert_eq!(
        recipients(&drain(&broker, Duration::from_secs(2)).await),
        ["while-down@example.net", "after-restart@example.net"]
    );
    follower.stop().await;
    let state = follow::load_position(&config.bounce_ingest.maillog_state_file)
        .unwrap()
        .unwrap();
    assert_eq!(state.offset, std::fs::metadata(&log).unwrap().len());
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn with_the_broker_away_nothing_is_recorded_and_everything_is_published_later() {
    test_support::init_test_logging();
    let broker = TestBroker::new().unwrap();
    let dir = temp_dir();
    let log = dir.join("postfix.log");
    append(&log, &line("4jjxMg5k8dz1SST9", "a@example.net", "sent"));
    let mut config = Config::default();
    let port = test_support::postfix::free_port().unwrap();
    config.broker.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f")
        .as_str()
        .into();
    config.broker.reconnect_max_backoff = Duration::from_millis(300);
    config.bounce_ingest.maillog_state_file = dir.join("maillog.state");
    config.bounce_ingest.maillog_poll_interval = Duration::from_millis(100);
    let follower = Follower::start(&config, &log);
    tokio::time::sleep(Duration::from_secs(1)).await;
    follower.stop().await;
    assert_eq!(
        follow::load_position(&config.bounce_ingest.maillog_state_file).unwrap(),
        None,
        "no position is kept for lines RabbitMQ did not confirm"
    );
    config.broker.url = broker.url.as_str().into();
    let follower = Follower::start(&config, &log);
    assert_eq!(
        recipients(&drain(&broker, Duration::from_secs(2)).await),
        ["a@example.net"]
    );
    follower.stop().await;
    std::fs::remove_dir_all(dir).unwrap();
}

#[tokio::test]
async fn maillog_dash_reads_a_pipe_to_its_end_with_the_real_binary() {
    use tokio::io::AsyncWriteExt as _;
    let broker = TestBroker::new().unwrap();
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_bounce-ingest"));
    command
        .args(["maillog", "-"])
        .env_clear()
        .env("CLUEGETTER_BROKER__URL", &broker.url)
        .env(
            "CLUEGETTER_BOUNCE_INGEST__MAILLOG_METRICS_LISTEN",
            "127.0.0.1:0",
        )
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    // journalctl -o short-iso, the last line without its newline
    let text = format!(
        "-- Journal begins --\n{}{}",
        line("4jjxMg5k8dz1SST9", "a@example.net", "sent"),
        line("4jjxMg5k8dz1SST9", "b@example.net", "bounced").trim_end()
    );
    input.write_all(text.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(
        recipients(&drain(&broker, Duration::from_secs(1)).await),
        ["a@example.net", "b@example.net"]
    );
}
