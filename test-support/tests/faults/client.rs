//! The MTA side of the milter protocol, as Postfix 3.7 speaks it (PEERS.md §4), driving
//! messages at the gateway over concurrent connections and writing down, per message, what
//! happened: whether end of message was sent, the final reply if one came, and the message's
//! UUID from the `X-Cluegetter-Id` header the gateway adds before its reply.
//!
//! Every message has a queue id (`{i}`) of its own, which the archive stores beside the UUID, so
//! a message whose reply never came (the gateway was killed) can still be found.
//!
//! When the gateway goes away the connection's message in flight is written down as it stands
//! and the connection is opened again, until the gateway is back.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bytes::Bytes;
use futures::{SinkExt as _, StreamExt as _};
use milter_gateway::milter::optneg::Negotiated;
use milter_gateway::milter::{Command, Family, MtaCodec, Response};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use uuid::Uuid;

/// Postfix 3.7's offer: version 6, all nine actions, the full v6 event mask.
const POSTFIX_OFFER: (u32, u32, u32) = (6, 0x1ff, 0x1f_ffff);
/// Longest wait for one reply.
const REPLY_WAIT: Duration = Duration::from_secs(30);
/// How long a connection keeps trying to reach a gateway that is down.
const RECONNECT_FOR: Duration = Duration::from_secs(90);

/// What became of one message.
#[derive(Clone, Debug)]
pub struct Sent {
    pub queue_id: String,
    /// From the `X-Cluegetter-Id` header change, when it came.
    pub uuid: Option<Uuid>,
    /// End of message reached the gateway's socket.
    pub eom_sent: bool,
    /// The final reply to end of message: `continue`, `accept`, `tempfail`, or a reply code.
    pub reply: Option<String>,
    /// When the final reply came (the cluster test times failovers with it).
    #[allow(dead_code)]
    pub answered_at: Option<Instant>,
    /// When end of message was sent (the cluster bench times answers with it).
    #[allow(dead_code)]
    pub eom_at: Option<Instant>,
}

impl Sent {
    pub fn answered(&self) -> bool {
        self.reply.is_some()
    }
}

/// How to drive.
#[derive(Clone, Debug)]
pub struct Load {
    pub messages: usize,
    pub connections: usize,
    /// Messages per second over all connections.
    pub rate: f64,
    /// Messages per SMTP session (connection) before QUIT.
    pub per_session: usize,
    /// Starts every queue id of this run (unique per scenario).
    pub prefix: String,
}

/// A load running in the background.
pub struct Drive {
    /// Messages finished so far (answered or not).
    pub done: Arc<AtomicUsize>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    sent: Arc<Mutex<Vec<Sent>>>,
}

impl Drive {
    pub fn start(addr: SocketAddr, load: Load) -> Self {
        let next = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicUsize::new(0));
        let sent = Arc::new(Mutex::new(Vec::with_capacity(load.messages)));
        let started = Instant::now();
        let tasks = (0..load.connections)
            .map(|n| {
                let (next, done, sent, load) =
                    (next.clone(), done.clone(), sent.clone(), load.clone());
                tokio::spawn(async move {
                    connection_loop(addr, n, &load, started, &next, &done, &sent).await;
                })
            })
            .collect();
        Self { done, tasks, sent }
    }

    /// Waits until every connection finished; what happened to each message.
    pub async fn finish(self) -> Vec<Sent> {
        for task in self.tasks {
            let _ = task.await;
        }
        self.sent.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Waits until `count` messages are finished (at most two minutes).
    pub async fn wait_done(&self, count: usize) -> Result<()> {
        let until = Instant::now() + Duration::from_secs(120);
        while self.done.load(Ordering::Relaxed) < count {
            if Instant::now() >= until {
                bail!(
                    "only {} of {count} messages went out in two minutes",
                    self.done.load(Ordering::Relaxed)
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

async fn connection_loop(
    addr: SocketAddr,
    n: usize,
    load: &Load,
    started: Instant,
    next: &AtomicUsize,
    done: &AtomicUsize,
    sent: &Mutex<Vec<Sent>>,
) {
    let mut conn: Option<Conn> = None;
    let mut in_session = 0;
    loop {
        let index = next.fetch_add(1, Ordering::Relaxed);
        if index >= load.messages {
            break;
        }
        // message i goes out at i/rate after the start, whichever connection takes it
        tokio::time::sleep_until(started + Duration::from_secs_f64(index as f64 / load.rate)).await;
        let queue_id = format!("{}{index:06X}", load.prefix);
        let mut record = Sent {
            queue_id,
            uuid: None,
            eom_sent: false,
            reply: None,
            answered_at: None,
            eom_at: None,
        };
        if conn.is_none() {
            conn = Conn::open_with_retry(addr, n).await.ok();
            in_session = 0;
            if conn.is_none() {
                // the gateway stayed away: this connection gives up (the books will show
                // fewer messages sent, and the scenario waiting on them times out)
                break;
            }
        }
        if let Some(c) = conn.as_mut() {
            match c.message(index, &mut record).await {
                Ok(()) => {
                    in_session += 1;
                    if in_session >= load.per_session {
                        let _ = c.framed.send(Command::Quit).await;
                        conn = None;
                    }
                }
                // the gateway went away mid-message: this message stays as it stands
                Err(_) => conn = None,
            }
        }
        if let Ok(mut sent) = sent.lock() {
            sent.push(record);
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(mut c) = conn {
        let _ = c.framed.send(Command::Quit).await;
    }
}

/// One milter connection, negotiated, with CONNECT and HELO sent.
struct Conn {
    framed: Framed<TcpStream, MtaCodec>,
    negotiated: Negotiated,
}

impl Conn {
    async fn open_with_retry(addr: SocketAddr, n: usize) -> Result<Self> {
        let until = Instant::now() + RECONNECT_FOR;
        loop {
            match Self::open(addr, n).await {
                Ok(conn) => return Ok(conn),
                Err(error) if Instant::now() >= until => return Err(error),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    async fn open(addr: SocketAddr, n: usize) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.context("connect")?;
        stream.set_nodelay(true)?;
        let mut framed = Framed::new(stream, MtaCodec::new(1 << 20));
        framed
            .send(Command::OptNeg {
                version: POSTFIX_OFFER.0,
                actions: POSTFIX_OFFER.1,
                protocol: POSTFIX_OFFER.2,
            })
            .await?;
        let negotiated = match reply(&mut framed).await? {
            Response::OptNeg {
                version,
                actions,
                protocol,
                ..
            } => Negotiated {
                version,
                actions,
                protocol,
            },
            other => bail!("OPTNEG answered with {other:?}"),
        };
        let mut conn = Self { framed, negotiated };
        let client = format!("192.0.2.{}", n % 250 + 1);
        conn.macros(
            b'C',
            &[
                ("j", "mx.faults.test"),
                ("{daemon_name}", "smtpd"),
                ("{client_addr}", &client),
                ("_", &format!("client.faults.test [{client}]")),
            ],
        )
        .await?;
        conn.expect_continue(Command::Connect {
            hostname: "client.faults.test".into(),
            family: Family::Inet,
            port: Some(40_000 + n as u16),
            address: client.clone(),
        })
        .await?;
        conn.macros(b'H', &[]).await?;
        conn.expect_continue(Command::Helo("client.faults.test".into()))
            .await?;
        Ok(conn)
    }

    /// Sends a command; when the gateway owes a reply, flushes and waits for it.
    async fn command(&mut self, command: Command) -> Result<Option<Response>> {
        if self.negotiated.no_reply(command.code()) {
            self.framed.feed(command).await?;
            return Ok(None);
        }
        self.framed.send(command).await?;
        reply(&mut self.framed).await.map(Some)
    }

    async fn macros(&mut self, stage: u8, macros: &[(&str, &str)]) -> Result<()> {
        self.framed
            .feed(Command::Macro {
                stage,
                macros: macros
                    .iter()
                    .map(|(name, value)| ((*name).to_owned(), (*value).to_owned()))
                    .collect(),
            })
            .await?;
        Ok(())
    }

    async fn expect_continue(&mut self, command: Command) -> Result<()> {
        let name = command.name();
        match self.command(command).await? {
            None | Some(Response::Continue) => Ok(()),
            Some(other) => bail!("{name} answered with {other:?}"),
        }
    }

    /// One message, written down in `record` as it goes.
    async fn message(&mut self, index: usize, record: &mut Sent) -> Result<()> {
        let queue_id = record.queue_id.clone();
        let sender = format!("sender{}@faults.test", index % 97);
        let recipients = [
            format!("a{}@mailbox.test", index % 50),
            format!("b{}@mailbox.test", index % 50),
        ];
        self.macros(b'M', &[("{mail_addr}", &sender)]).await?;
        self.expect_continue(Command::Mail(vec![
            format!("<{sender}>"),
            "SIZE=2000".into(),
        ]))
        .await?;
        for recipient in &recipients {
            self.macros(
                b'R',
                &[
                    ("{rcpt_addr}", recipient),
                    ("{rcpt_host}", "mailbox.test"),
                    ("{rcpt_mailer}", "virtual"),
                ],
            )
            .await?;
            self.expect_continue(Command::Rcpt(vec![format!("<{recipient}>")]))
                .await?;
        }
        self.macros(b'T', &[("i", &queue_id)]).await?;
        self.expect_continue(Command::Data).await?;
        let headers = [
            (
                "Received",
                format!("from client.faults.test by mx.faults.test with ESMTP id {queue_id}"),
            ),
            ("Date", "Wed, 25 Nov 2026 08:30:16 +0000".into()),
            ("From", format!("<{sender}>")),
            ("To", recipients.join(", ")),
            ("Subject", format!("fault test message {queue_id}")),
            ("Message-ID", format!("<{queue_id}@faults.test>")),
            ("MIME-Version", "1.0".into()),
            ("Content-Type", "text/plain; charset=utf-8".into()),
            ("X-Mailer", "cluegetter fault tests".into()),
            ("X-Fault-Index", index.to_string()),
        ];
        for (name, value) in headers {
            self.macros(b'L', &[("i", &queue_id)]).await?;
            self.expect_continue(Command::Header {
                name: name.to_owned(),
                value: Bytes::from(value),
            })
            .await?;
        }
        self.macros(b'N', &[("i", &queue_id)]).await?;
        self.expect_continue(Command::EndOfHeaders).await?;
        let body = format!("Message {queue_id}.\r\n").repeat(40);
        self.expect_continue(Command::Body(Bytes::from(body)))
            .await?;
        self.macros(b'E', &[("i", &queue_id)]).await?;
        self.framed
            .send(Command::EndOfMessage(Bytes::new()))
            .await?;
        record.eom_sent = true;
        record.eom_at = Some(Instant::now());
        loop {
            match reply(&mut self.framed).await? {
                Response::Progress => {}
                Response::AddHeader { name, value }
                | Response::InsertHeader { name, value, .. }
                    if name.eq_ignore_ascii_case("X-Cluegetter-Id") =>
                {
                    record.uuid = value.trim().parse().ok();
                }
                response if response.is_modification() => {}
                Response::Continue => break record.reply = Some("continue".into()),
                Response::Accept => break record.reply = Some("accept".into()),
                Response::Tempfail => break record.reply = Some("tempfail".into()),
                Response::Reject => break record.reply = Some("reject".into()),
                Response::Discard => break record.reply = Some("discard".into()),
                Response::ReplyCode(text) => break record.reply = Some(text),
                other => bail!("end of message answered with {other:?}"),
            }
        }
        record.answered_at = Some(Instant::now());
        // Postfix ends every transaction with ABORT (no reply)
        self.framed.feed(Command::Abort).await?;
        Ok(())
    }
}

async fn reply(framed: &mut Framed<TcpStream, MtaCodec>) -> Result<Response> {
    match tokio::time::timeout(REPLY_WAIT, framed.next()).await {
        Ok(Some(Ok(response))) => Ok(response),
        Ok(Some(Err(error))) => Err(error).context("undecodable reply"),
        Ok(None) => bail!("the gateway closed the connection"),
        Err(_) => bail!("no reply within {REPLY_WAIT:?}"),
    }
}
