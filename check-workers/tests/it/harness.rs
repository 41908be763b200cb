//! The test's side of the broker (it plays the gateway) and request builders.

use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use platform::config::Config;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::{CheckRequest, CheckResult, Envelope, Header, MessageId, SessionInfo, WIRE_VERSION};

/// GTUBE, in two halves so this file is not itself spam.
pub fn gtube() -> String {
    let head = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD";
    let tail = "-ANTI-UBE-TEST-EMAIL*C.34X";
    format!("{head}{tail}")
}

/// A message as the gateway builds it for content modules: a synthetic `Received` header, the
/// headers, a blank line, the body.
pub fn message_text(queue_id: &str, subject: &str, body: &str) -> Vec<u8> {
    let date = Utc::now().to_rfc2822();
    format!(
        "Received: from mail.example.org (mail.example.org [192.0.2.10])\r\n\
         \tby mx.example.net with SMTP id {queue_id}; {date}\r\n\
         \t(envelope-from <alice@example.org>)\r\n\
         From: Alice <alice@example.org>\r\n\
         To: Bob <bob@example.net>\r\n\
         Subject: {subject}\r\n\
         Message-ID: <{}@example.org>\r\n\
         Date: {date}\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         {body}\r\n",
        MessageId::new()
    )
    .into_bytes()
}

/// A request for `module` carrying `content`.
pub fn request(module: &str, content: Option<Vec<u8>>) -> CheckRequest {
    let client_addr: IpAddr = "192.0.2.10".parse().unwrap();
    CheckRequest {
        version: WIRE_VERSION,
        instance: "default".into(),
        message_id: MessageId::new(),
        queue_id: "4jZB211qk4z6XPl".into(),
        module: module.into(),
        session: SessionInfo {
            session_id: MessageId::new().0,
            connected_at: Utc::now(),
            client_addr: Some(client_addr),
            client_port: Some(40000),
            client_name: "mail.example.org".into(),
            helo: "mail.example.org".into(),
            sasl_username: String::new(),
            sasl_method: String::new(),
            sasl_sender: String::new(),
            tls: None,
            mta_hostname: "mx.example.net".into(),
            daemon_name: "smtpd".into(),
        },
        envelope: Envelope {
            sender: "alice@example.org".into(),
            recipients: vec!["bob@example.net".into()],
        },
        headers: vec![Header::new("Subject", "test")],
        content,
        content_truncated: false,
        sent_at: Utc::now(),
        stage: wire::CheckStage::Eom,
    }
}

/// A plain, friendly message for rspamd.
pub fn plain_request() -> CheckRequest {
    let text = message_text(
        "4jZB211qk4z6XPl",
        "Lunch tomorrow",
        "Hi Bob,\r\n\r\nshall we have lunch tomorrow at noon?\r\n\r\nAlice",
    );
    request("rspamd", Some(text))
}

/// The GTUBE message.
pub fn gtube_request() -> CheckRequest {
    let text = message_text("4jZB211qk4z6XPm", "Test spam mail (GTUBE)", &gtube());
    request("rspamd", Some(text))
}

/// The configuration the tests run the workers with: rspamd enabled, broker = the test's vhost.
pub fn config(broker_url: &str) -> Config {
    let mut config = Config::default();
    config.broker.url = broker_url.into();
    config.broker.reconnect_max_backoff = Duration::from_secs(1);
    config.rspamd.enabled = true;
    config
}

/// `check_workers::run` in a task of this test, with its shutdown token.
pub struct Workers {
    pub shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Workers {
    pub fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(check_workers::run(config, None, shutdown.clone()));
        Self { shutdown, task }
    }

    /// Cancels and waits for `run` to return (it must, within `within`).
    pub async fn stop(self, within: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(within, self.task)
            .await
            .map_err(|_| anyhow::anyhow!("run did not return within {within:?} of shutdown"))??
    }
}

/// The test's stand-in for the gateway: a connection, the check topology, and an exclusive
/// reply queue it consumes.
pub struct Gateway {
    _connection: Connection,
    pub channel: Channel,
    pub reply_queue: String,
    replies: Consumer,
}

impl Gateway {
    /// Connects and declares the topology of `modules` (so requests queue up even before a
    /// worker has declared it).
    pub async fn connect(url: &str, modules: &[&str]) -> Self {
        let connection = Connection::connect(
            url,
            ConnectionProperties::default().with_connection_name("test gateway".into()),
        )
        .await
        .unwrap();
        let channel = connection.create_channel().await.unwrap();
        for module in modules {
            platform::broker::declare_check_topology(&connection, module)
                .await
                .unwrap();
        }
        let reply_queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        let reply_queue = reply_queue.name().to_string();
        let replies = channel
            .basic_consume(
                reply_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        Self {
            _connection: connection,
            channel,
            reply_queue,
            replies,
        }
    }

    /// Publishes raw bytes as a request to `module`; `reply_to` is this gateway's queue unless
    /// `with_reply_to` is false.
    pub async fn publish_raw(
        &self,
        module: &str,
        correlation_id: &str,
        body: &[u8],
        with_reply_to: bool,
        expiration: Duration,
    ) {
        let mut properties = BasicProperties::default()
            .with_correlation_id(correlation_id.into())
            .with_content_type("application/json".into())
            .with_expiration(expiration.as_millis().to_string().into());
        if with_reply_to {
            properties = properties.with_reply_to(self.reply_queue.as_str().into());
        }
        self.channel
            .basic_publish(
                platform::broker::CHECK_EXCHANGE.into(),
                module.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// Publishes a request as the gateway does: correlation id = message id.
    pub async fn send(&self, request: &CheckRequest) {
        self.publish_raw(
            &request.module,
            &request.message_id.to_string(),
            &wire::contract::encode(request),
            true,
            Duration::from_secs(30),
        )
        .await;
    }

    /// The next reply and its correlation id; fails after `within`.
    pub async fn next_reply(&mut self, within: Duration) -> (String, CheckResult) {
        let delivery = tokio::time::timeout(within, self.replies.next())
            .await
            .unwrap_or_else(|_| panic!("no reply within {within:?}"))
            .expect("reply consumer ended")
            .unwrap();
        let correlation_id = delivery
            .properties
            .correlation_id()
            .as_ref()
            .map(ToString::to_string)
            .expect("reply without correlation_id");
        let result: CheckResult = wire::contract::decode(&delivery.data).unwrap();
        (correlation_id, result)
    }

    /// Asserts that no reply comes within `within`.
    pub async fn no_reply(&mut self, within: Duration) {
        if let Ok(Some(delivery)) = tokio::time::timeout(within, self.replies.next()).await {
            panic!("unexpected reply: {delivery:?}");
        }
    }

    /// Messages ready (not delivered) in a module's queue.
    pub async fn ready_in_queue(&self, module: &str) -> u32 {
        self.channel
            .queue_declare(
                platform::broker::check_queue(module).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
            .message_count()
    }
}

/// The median of some seconds.
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// A `dnsmasq` of the test's own on 127.0.0.1, serving TXT records; stopped on drop.
pub struct Dnsmasq {
    child: Child,
    pub address: SocketAddr,
}

impl Dnsmasq {
    pub async fn start(txt_records: &[(&str, &str)]) -> Self {
        for _ in 0..5 {
            let port = std::net::UdpSocket::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut command = Command::new(if std::path::Path::new("/usr/sbin/dnsmasq").exists() {
                "/usr/sbin/dnsmasq"
            } else {
                "dnsmasq"
            });
            command
                .args([
                    "--keep-in-foreground",
                    "--no-resolv",
                    "--no-hosts",
                    "--conf-file=/dev/null",
                    "--bind-interfaces",
                    "--listen-address=127.0.0.1",
                    "--user=root",
                    "--pid-file=",
                ])
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (name, text) in txt_records {
                // no quotes: on the command line dnsmasq would keep them in the record
                command.arg(format!("--txt-record={name},{text}"));
            }
            let mut child = command
                .spawn()
                .expect("run dnsmasq (scripts/start-peers.sh tools installs dnsmasq-base)");
            let address = SocketAddr::from(([127, 0, 0, 1], port));
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            let up = loop {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break false;
                }
                if tokio::net::TcpStream::connect(address).await.is_ok() {
                    break true;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "dnsmasq does not listen on {address}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if up {
                return Self { child, address };
            }
            // the port was taken after all; try another
        }
        panic!("cannot start dnsmasq");
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
