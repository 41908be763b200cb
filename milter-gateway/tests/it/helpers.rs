//! The in-process gateway, the in-test check worker, and a raw MTA client.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use milter_gateway::milter::optneg::Negotiated;
use milter_gateway::milter::{Command, Family, MtaCodec, Response};
use platform::config::Config;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use wire::{Action, CheckRequest, CheckResult, CheckStage, Header, MilterChanges, WIRE_VERSION};

/// Whether the gateway sends the `changes` of the check results (SMFIR_ADDHEADER,
/// SMFIR_CHGHEADER, SMFIR_CHGFROM, SMFIR_ADDRCPT, SMFIR_DELRCPT) before its final reply at end
/// of message (connection.rs `judge` with headers.rs). `false` asserts that it does not.
pub const EOM_CHANGES_APPLIED: bool = true;

/// Whether a quarantine result (score ≥ `breaker-score`, as for discard) becomes the
/// quarantine verdict, so that the gateway sends SMFIR_QUARANTINE and Postfix holds the
/// message (verdict.rs `decide`). `false` asserts that the message passes instead.
pub const QUARANTINE_VERDICT: bool = true;

/// The text the worker gives with a reject, and with a tempfail.
pub const REJECT_REASON: &str = "Rejected by the test worker";
pub const TEMPFAIL_REASON: &str = "Deferred by the test worker";
pub const QUARANTINE_REASON: &str = "Quarantined by the test worker";
/// The sender the worker asks for with `chgfrom@…`.
pub const NEW_SENDER: &str = "srs0=hash=tt=example.org=chgfrom@forwarder.test";
/// How long the worker takes for `slow@…`.
pub const SLOW: Duration = Duration::from_millis(2500);

/// The configuration every test starts from: rspamd enabled (answered by [`Worker`]),
/// progress every 200 ms, an audit spool of its own (removed when the [`Gateway`] stops).
pub fn config(broker_url: &str) -> Config {
    let mut config = Config {
        instance: "it".to_owned(),
        ..Config::default()
    };
    config.broker.url = broker_url.into();
    config.broker.reconnect_max_backoff = Duration::from_millis(500);
    config.rspamd.enabled = true;
    config.gateway.progress_interval = Duration::from_millis(200);
    config.gateway.spool_dir =
        std::env::temp_dir().join(format!("cgt-it-spool-{}", uuid::Uuid::now_v7().simple()));
    config
}

/// The gateway, running in this process on `127.0.0.1:<port 0>`; stopped on drop.
pub struct Gateway {
    pub addr: SocketAddr,
    /// The audit spool directory, removed on stop and drop.
    spool_dir: std::path::PathBuf,
    shutdown: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Gateway {
    pub async fn start(config: Config) -> Gateway {
        test_support::init_test_logging();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let spool_dir = config.gateway.spool_dir.clone();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(milter_gateway::run(config, listener, shutdown.clone()));
        Gateway {
            addr,
            spool_dir,
            shutdown,
            task: Some(task),
        }
    }

    /// Waits until a message gets a verdict from the worker (the broker link is up), by
    /// sending `permit@ready.test` messages until one is answered with continue.
    pub async fn wait_until_ready(&self) {
        wait_until_ready(self.addr).await;
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(40), task)
                .await
                .expect("the gateway stops")
                .unwrap()
                .unwrap();
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.spool_dir);
        }
    }
}

/// The client name refused at CONNECT, the HELO name deferred at HELO and the recipient local
/// part refused at RCPT when the gateway asks at those stages (`[stage-checks]`).
pub const BLOCKED_CLIENT: &str = "blocked.example.net";
pub const DEFERRED_HELO: &str = "tempfail.invalid";
pub const REFUSED_RECIPIENT: &str = "reject-me";

/// [`config`] with `rspamd` asked at CONNECT, HELO and RCPT too.
pub fn staged_config(broker_url: &str) -> Config {
    let mut config = config(broker_url);
    let rspamd = vec!["rspamd".to_owned()];
    config.stage_checks.connect = rspamd.clone();
    config.stage_checks.helo = rspamd.clone();
    config.stage_checks.rcpt = rspamd;
    config
}

/// What the worker answers for a request: before end of message by the client name, HELO
/// name or recipient ([`BLOCKED_CLIENT`], [`DEFERRED_HELO`], [`REFUSED_RECIPIENT`]), at end of
/// message by the envelope sender's local part.
pub fn answer(request: &CheckRequest) -> (Duration, CheckResult) {
    let local = match request.stage {
        CheckStage::Connect if request.session.client_name == BLOCKED_CLIENT => "reject",
        CheckStage::Helo if request.session.helo == DEFERRED_HELO => "tempfail",
        CheckStage::Rcpt
            if request
                .envelope
                .recipients
                .iter()
                .any(|r| r.split('@').next() == Some(REFUSED_RECIPIENT)) =>
        {
            "reject"
        }
        CheckStage::Connect | CheckStage::Helo | CheckStage::Rcpt => "permit",
        CheckStage::Eom => request
            .envelope
            .sender
            .split('@')
            .next()
            .unwrap_or_default(),
    };
    let mut result = CheckResult {
        version: WIRE_VERSION,
        message_id: request.message_id,
        module: request.module.clone(),
        action: Action::Permit,
        score: 0.0,
        message: String::new(),
        determinants: serde_json::json!({ "worker": "milter-gateway tests/it" }),
        duration: 0.001,
        changes: MilterChanges::default(),
        enhanced_status: None,
    };
    let mut delay = Duration::ZERO;
    match local {
        "reject" => {
            result.action = Action::Reject;
            result.score = 10.0;
            result.message = REJECT_REASON.to_owned();
        }
        "tempfail" => {
            result.action = Action::Tempfail;
            result.score = 10.0;
            result.message = TEMPFAIL_REASON.to_owned();
        }
        "discard" => {
            result.action = Action::Discard;
            result.score = 100.0;
            result.message = "Discarded by the test worker".to_owned();
        }
        "quarantine" => {
            // like discard, quarantine needs the breaker score (100)
            result.action = Action::Quarantine;
            result.score = 100.0;
            result.message = QUARANTINE_REASON.to_owned();
        }
        "addheader" => {
            result.changes.add_headers = vec![Header::new("X-Cluegetter-Test", "added")];
            result.changes.remove_headers = vec!["X-Strip-Me".to_owned()];
        }
        "editheaders" => {
            // one occurrence of three changed, one removed, the last one counted from the
            // end, and one header inserted before all others
            let at = |name: &str, index: i64, value: &str| wire::HeaderAt {
                name: name.to_owned(),
                index,
                value: value.to_owned(),
            };
            result.changes.change_headers = vec![
                at("X-Multi", 1, "changed"),
                at("X-Multi", 2, ""),
                at("x-multi", -1, "last"),
            ];
            result.changes.insert_headers = vec![at("X-Inserted-First", 0, "top")];
        }
        "chgfrom" => result.changes.new_sender = Some(NEW_SENDER.to_owned()),
        "slow" => delay = SLOW,
        _ => {}
    }
    (delay, result)
}

/// The check worker for module `rspamd`, played by the test on its vhost: answers each
/// request with [`answer`] and keeps every request it saw.
pub struct Worker {
    requests: Arc<Mutex<Vec<CheckRequest>>>,
    shutdown: CancellationToken,
    _connection: lapin::Connection,
}

impl Worker {
    pub async fn start(broker_url: &str) -> Worker {
        let connection = platform::broker::connect(broker_url, "milter-gateway it worker")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        platform::broker::declare_check_topology(&connection, "rspamd")
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                platform::broker::check_queue("rspamd").as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let shutdown = CancellationToken::new();
        let (seen, stop) = (requests.clone(), shutdown.clone());
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => return,
                    delivery = consumer.next() => match delivery {
                        Some(Ok(delivery)) => delivery,
                        _ => return,
                    },
                };
                let request: CheckRequest = wire::contract::decode(&delivery.data).unwrap();
                seen.lock().unwrap().push(request.clone());
                let channel = channel.clone();
                // each in its own task, so a slow answer holds up no other
                tokio::spawn(async move {
                    let (delay, result) = answer(&request);
                    tokio::time::sleep(delay).await;
                    reply(&channel, &delivery, &result).await;
                });
            }
        });
        Worker {
            requests,
            shutdown,
            _connection: connection,
        }
    }

    /// The envelope senders of the requests seen so far, in order.
    pub fn senders(&self) -> Vec<String> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| r.envelope.sender.clone())
            .collect()
    }

    /// The end-of-message requests seen so far for messages from `sender`.
    pub fn requests_from(&self, sender: &str) -> Vec<CheckRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.stage == CheckStage::Eom && r.envelope.sender == sender)
            .cloned()
            .collect()
    }

    /// The requests seen so far at `stage`.
    pub fn requests_at(&self, stage: CheckStage) -> Vec<CheckRequest> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.stage == stage)
            .cloned()
            .collect()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn reply(channel: &Channel, delivery: &lapin::message::Delivery, result: &CheckResult) {
    let reply_to = delivery.properties.reply_to().clone().unwrap();
    let mut properties = BasicProperties::default().with_content_type("application/json".into());
    if let Some(correlation_id) = delivery.properties.correlation_id().clone() {
        properties = properties.with_correlation_id(correlation_id);
    }
    channel
        .basic_publish(
            "".into(),
            reply_to,
            BasicPublishOptions::default(),
            &wire::contract::encode(result),
            properties,
        )
        .await
        .unwrap()
        .await
        .unwrap();
    delivery
        .acker
        .ack(BasicAckOptions::default())
        .await
        .unwrap();
}

/// The MTA's side of one milter connection, as Postfix 3.7 speaks it (PEERS.md §4).
/// The MTA's side of one milter connection, over TCP or (for tests of the connection alone)
/// any other stream, e.g. `tokio::io::duplex`.
pub struct Mta<S = TcpStream> {
    framed: Framed<S, MtaCodec>,
    pub negotiated: Negotiated,
    pub optneg_reply: Response,
}

/// Postfix's offer: version 6, all nine actions, the full v6 event mask.
pub const POSTFIX_OFFER: (u32, u32, u32) = (6, 0x1ff, 0x1f_ffff);

impl Mta {
    pub async fn connect(addr: SocketAddr) -> Mta {
        Mta::over(TcpStream::connect(addr).await.unwrap()).await
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Mta<S> {
    /// Negotiates over `stream` as Postfix does.
    pub async fn over(stream: S) -> Mta<S> {
        let mut framed = Framed::new(stream, MtaCodec::new(1 << 20));
        framed
            .send(Command::OptNeg {
                version: POSTFIX_OFFER.0,
                actions: POSTFIX_OFFER.1,
                protocol: POSTFIX_OFFER.2,
            })
            .await
            .unwrap();
        let optneg_reply = next(&mut framed).await;
        let Response::OptNeg {
            version,
            actions,
            protocol,
            ..
        } = optneg_reply.clone()
        else {
            panic!("expected the OPTNEG reply, got {optneg_reply:?}");
        };
        Mta {
            framed,
            negotiated: Negotiated {
                version,
                actions,
                protocol,
            },
            optneg_reply,
        }
    }

    /// Sends a command; returns the replies it gets: none where the protocol says no reply
    /// (macros, ABORT, stages negotiated as NR_*), every packet up to and including the final
    /// answer at end of message (progress and modifications first), one reply otherwise.
    pub async fn send(&mut self, command: Command) -> Vec<Response> {
        let code = command.code();
        self.framed.send(command).await.unwrap();
        if self.negotiated.no_reply(code) {
            return Vec::new();
        }
        let mut replies = Vec::new();
        loop {
            let response = next(&mut self.framed).await;
            let last = code != b'E'
                || matches!(
                    response,
                    Response::Continue
                        | Response::Accept
                        | Response::Reject
                        | Response::Tempfail
                        | Response::Discard
                        | Response::ReplyCode(_)
                );
            replies.push(response);
            if last {
                return replies;
            }
        }
    }

    async fn macros(&mut self, stage: u8, macros: &[(&str, &str)]) {
        let replies = self
            .send(Command::Macro {
                stage,
                macros: macros
                    .iter()
                    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                    .collect(),
            })
            .await;
        assert!(replies.is_empty());
    }

    /// CONNECT and HELO, as Postfix sends them (no reply: NR_CONN, NR_HELO; or continue).
    pub async fn client(&mut self) {
        let (connect, helo) = self.try_client().await;
        assert!(answered(&connect), "CONNECT: {connect:?}");
        assert!(answered(&helo), "HELO: {helo:?}");
    }

    /// CONNECT and HELO; the replies to each.
    pub async fn try_client(&mut self) -> (Vec<Response>, Vec<Response>) {
        self.macros(
            b'C',
            &[
                ("j", "mx.cluegetter.test"),
                ("{daemon_name}", "mx"),
                ("{client_addr}", "192.0.2.10"),
            ],
        )
        .await;
        let connect = self
            .send(Command::Connect {
                hostname: "client.example.org".into(),
                family: Family::Inet,
                port: Some(40_000),
                address: "192.0.2.10".into(),
            })
            .await;
        self.macros(b'H', &[]).await;
        let helo = self.send(Command::Helo("client.example.org".into())).await;
        (connect, helo)
    }

    /// MAIL and RCPTs; each RCPT must get continue.
    pub async fn envelope(&mut self, sender: &str, recipients: &[&str]) {
        self.macros(b'M', &[("{mail_addr}", sender)]).await;
        assert!(
            self.send(Command::Mail(vec![format!("<{sender}>")]))
                .await
                .is_empty()
        );
        for recipient in recipients {
            self.macros(
                b'R',
                &[("{rcpt_addr}", recipient), ("{rcpt_mailer}", "virtual")],
            )
            .await;
            let replies = self
                .send(Command::Rcpt(vec![format!("<{recipient}>")]))
                .await;
            assert_eq!(replies, vec![Response::Continue], "RCPT {recipient}");
        }
    }

    /// DATA, the headers, EOH and one body chunk (all without reply).
    pub async fn content(&mut self, queue_id: &str, headers: &[(&str, &str)], body: &[u8]) {
        self.macros(b'T', &[("i", queue_id)]).await;
        assert!(self.send(Command::Data).await.is_empty());
        for (name, value) in headers {
            self.macros(b'L', &[("i", queue_id)]).await;
            let replies = self
                .send(Command::Header {
                    name: (*name).to_owned(),
                    value: Bytes::copy_from_slice(value.as_bytes()),
                })
                .await;
            assert!(replies.is_empty());
        }
        self.macros(b'N', &[("i", queue_id)]).await;
        assert!(self.send(Command::EndOfHeaders).await.is_empty());
        if !body.is_empty() {
            assert!(
                self.send(Command::Body(Bytes::copy_from_slice(body)))
                    .await
                    .is_empty()
            );
        }
    }

    /// End of message: everything the gateway sends up to its final answer.
    pub async fn end_of_message(&mut self, queue_id: &str) -> Vec<Response> {
        self.macros(b'E', &[("i", queue_id)]).await;
        self.send(Command::EndOfMessage(Bytes::new())).await
    }

    /// A whole message with a few headers; returns the end-of-message replies. Postfix's
    /// ABORT after the transaction follows.
    pub async fn message(
        &mut self,
        sender: &str,
        recipients: &[&str],
        queue_id: &str,
    ) -> Vec<Response> {
        self.envelope(sender, recipients).await;
        let message_id = format!("<{queue_id}@example.org>");
        self.content(
            queue_id,
            &[
                ("From", sender),
                ("To", recipients[0]),
                ("Subject", "it"),
                ("Message-ID", &message_id),
                ("X-Strip-Me", "yes"),
            ],
            b"Hello from tests/it.\r\n",
        )
        .await;
        let replies = self.end_of_message(queue_id).await;
        assert!(self.send(Command::Abort).await.is_empty());
        replies
    }

    /// QUIT; the gateway must have sent nothing more and must close the connection.
    pub async fn quit(mut self) {
        self.framed.send(Command::Quit).await.unwrap();
        let rest = tokio::time::timeout(Duration::from_secs(5), self.framed.next())
            .await
            .expect("the gateway closes the connection after QUIT");
        assert!(rest.is_none(), "unexpected packet after QUIT: {rest:?}");
    }
}

async fn next<S: AsyncRead + AsyncWrite + Unpin>(framed: &mut Framed<S, MtaCodec>) -> Response {
    match tokio::time::timeout(Duration::from_secs(30), framed.next()).await {
        Ok(Some(Ok(response))) => response,
        other => panic!("no reply from the gateway: {other:?}"),
    }
}

/// A check worker for one module that answers permit at once, except for messages whose
/// envelope sender is in the domain [`HELD_DOMAIN`]: those it holds until the test calls
/// [`HeldWorker::release`] (a module slower than the verdict, without guessing how slow).
pub struct HeldWorker {
    seen: Arc<Mutex<Vec<CheckRequest>>>,
    release: Arc<tokio::sync::Notify>,
    released: Arc<std::sync::atomic::AtomicBool>,
    shutdown: CancellationToken,
    _connection: lapin::Connection,
}

/// The sender domain whose requests [`HeldWorker`] holds.
pub const HELD_DOMAIN: &str = "held.test";
/// What [`HeldWorker`] answers for a held message once released.
pub const HELD_SCORE: f64 = 1.5;
pub const HELD_MESSAGE: &str = "Answered after the verdict";

impl HeldWorker {
    pub async fn start(broker_url: &str, module: &str) -> HeldWorker {
        let connection = platform::broker::connect(broker_url, "milter-gateway it held worker")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        platform::broker::declare_check_topology(&connection, module)
            .await
            .unwrap();
        let mut consumer = channel
            .basic_consume(
                platform::broker::check_queue(module).as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let release = Arc::new(tokio::sync::Notify::new());
        let released = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shutdown = CancellationToken::new();
        let (requests, stop) = (seen.clone(), shutdown.clone());
        let (release_rx, released_rx) = (release.clone(), released.clone());
        tokio::spawn(async move {
            loop {
                let delivery = tokio::select! {
                    () = stop.cancelled() => return,
                    delivery = consumer.next() => match delivery {
                        Some(Ok(delivery)) => delivery,
                        _ => return,
                    },
                };
                let request: CheckRequest = wire::contract::decode(&delivery.data).unwrap();
                requests.lock().unwrap().push(request.clone());
                let channel = channel.clone();
                let (release, released) = (release_rx.clone(), released_rx.clone());
                tokio::spawn(async move {
                    let mut result = CheckResult {
                        version: WIRE_VERSION,
                        message_id: request.message_id,
                        module: request.module.clone(),
                        action: Action::Permit,
                        score: 0.0,
                        message: String::new(),
                        determinants: serde_json::json!({ "worker": "held" }),
                        duration: 0.001,
                        changes: MilterChanges::default(),
                        enhanced_status: None,
                    };
                    if request
                        .envelope
                        .sender
                        .ends_with(&format!("@{HELD_DOMAIN}"))
                    {
                        // wait for the release, without missing one that came first
                        loop {
                            let notified = release.notified();
                            if released.load(std::sync::atomic::Ordering::SeqCst) {
                                break;
                            }
                            notified.await;
                        }
                        result.score = HELD_SCORE;
                        result.message = HELD_MESSAGE.to_owned();
                    }
                    reply(&channel, &delivery, &result).await;
                });
            }
        });
        HeldWorker {
            seen,
            release,
            released,
            shutdown,
            _connection: connection,
        }
    }

    /// Whether a request for a message from `sender` arrived.
    pub fn saw(&self, sender: &str) -> bool {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .any(|r| r.envelope.sender == sender)
    }

    /// How many requests for messages from `sender` arrived.
    pub fn seen_from(&self, sender: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.envelope.sender == sender)
            .count()
    }

    /// Answers every held request, and every later one at once.
    pub fn release(&self) {
        self.released
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.release.notify_waiters();
    }
}

impl Drop for HeldWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The audit events the gateway publishes, read from `cluegetter.audit.archive` on the test's
/// vhost (no auditor runs in these tests).
pub struct AuditTap {
    consumer: lapin::Consumer,
    _connection: lapin::Connection,
}

impl AuditTap {
    pub async fn start(broker_url: &str) -> AuditTap {
        let connection = platform::broker::connect(broker_url, "milter-gateway it audit tap")
            .await
            .unwrap();
        let channel = connection.create_channel().await.unwrap();
        platform::broker::declare_audit_topology(&connection)
            .await
            .unwrap();
        let consumer = channel
            .basic_consume(
                platform::broker::AUDIT_QUEUE.into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        AuditTap {
            consumer,
            _connection: connection,
        }
    }

    /// The next event of the message with this queue id published within `within`, others
    /// skipped; `None` if none came.
    pub async fn next_for(&mut self, queue_id: &str, within: Duration) -> Option<wire::AuditEvent> {
        let end = tokio::time::Instant::now() + within;
        loop {
            let delivery = tokio::time::timeout_at(end, self.consumer.next())
                .await
                .ok()??;
            let event: wire::AuditEvent = wire::contract::decode(&delivery.unwrap().data).unwrap();
            if event.message.queue_id == queue_id {
                return Some(event);
            }
        }
    }
}

/// The audit events in a gateway's spool directory now, each named as the old one-file
/// spool named them: `<uuid>.answered` once the MTA got its answer, `<uuid>.event` before.
pub fn spooled(dir: &std::path::Path) -> Vec<(String, wire::AuditEvent)> {
    milter_gateway::spool::inspect(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|event| {
            let state = if event.answered { "answered" } else { "event" };
            (format!("{}.{state}", event.message_id), event)
        })
        .collect()
}

/// What CONNECT and HELO get: nothing (NR_CONN, NR_HELO), or continue when the gateway asks
/// modules there ([stage-checks]).
fn answered(replies: &[Response]) -> bool {
    replies.is_empty() || replies == [Response::Continue]
}

/// Waits until a message gets a verdict (the gateway's broker link is up), by sending
/// `permit@ready.test` messages until one is answered with continue.
pub async fn wait_until_ready(addr: SocketAddr) {
    test_support::eventually(
        Duration::from_secs(30),
        "the gateway's broker link",
        || async move {
            let mut mta = Mta::connect(addr).await;
            // a gateway with [stage-checks] answers CONNECT and HELO with the fail action until
            // its broker link is up
            let (connect, helo) = mta.try_client().await;
            if !answered(&connect) || !answered(&helo) {
                return None;
            }
            let replies = mta
                .message("permit@ready.test", &["rcpt@mailbox.test"], "READYQID")
                .await;
            (replies.last() == Some(&Response::Continue)).then_some(())
        },
    )
    .await
    .unwrap();
}
