//! `milter-bench`: plays Postfix against the gateway over loopback and measures it.
//!
//! Each of `--connections` tasks opens milter connections in a loop and sends what Postfix
//! 3.7 sends (PEERS.md §4): OPTNEG with Postfix's offer (v6, actions 0x1ff, protocol
//! 0x1fffff), then per SMTP session CONNECT and HELO, and per message MAIL, RCPT, DATA, ten
//! headers, EOH, one body chunk (`--body-size`, 4 KiB by default), BODYEOB and the ABORT that
//! follows a transaction; QUIT after `--messages-per-connection` messages. Every packet comes
//! with the macros Postfix would send before it. Stages the gateway negotiated as NR_* get no
//! wait; the others wait for their reply. The time from sending BODYEOB to the final answer
//! (progress and modifications skipped) is the latency reported.
//!
//! Without `--target`, the gateway runs in this process on its own runtime, with no module
//! enabled (so it answers at once, after queueing the audit event) and `--broker-url` for
//! the audit events (default: a closed port, so they wait in the gateway's memory queue).
//!
//! `--idle N` first opens N connections that negotiate, CONNECT, HELO and then wait, and
//! prints the RSS of the gateway's process (this one, or `--pid`) before and after.
//!
//! Build with `--release` to measure: `cargo run --release -p milter-gateway --bin
//! milter-bench -- --seconds 10`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::Parser;
use futures::{SinkExt, StreamExt};
use milter_gateway::milter::optneg::Negotiated;
use milter_gateway::milter::{Command, Family, MtaCodec, Response};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

/// Postfix 3.7's offer: version 6, all nine actions, the full v6 event mask.
const POSTFIX_OFFER: (u32, u32, u32) = (6, 0x1ff, 0x1f_ffff);

#[derive(Parser, Debug)]
#[command(about = "Plays Postfix against the milter gateway and measures messages/s and latency")]
struct Args {
    /// A running gateway to measure; without it, one is started in this process.
    #[arg(long)]
    target: Option<SocketAddr>,
    /// Concurrent milter connections sending messages.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// How long to send, in seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Seconds of load before measuring starts.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Messages per milter connection (Postfix: one connection per SMTP session).
    #[arg(long, default_value_t = 1)]
    messages_per_connection: u32,
    /// Messages per second over all connections (paced per connection); 0: as fast as the
    /// gateway answers (each connection sends its next message when the last is answered).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Bytes of body per message (sent as one chunk of at most 65535 bytes each).
    #[arg(long, default_value_t = 4096)]
    body_size: usize,
    /// Open this many idle connections first and report the gateway's RSS.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// The gateway's process, for its RSS with `--target` (default: this process).
    #[arg(long)]
    pid: Option<u32>,
    /// For the in-process gateway: where its audit events go.
    #[arg(long, default_value = "amqp://guest:guest@127.0.0.1:1/%2f")]
    broker_url: String,
    /// For the in-process gateway: its audit spool (default: a fresh directory under the
    /// temporary directory, removed at the end).
    #[arg(long)]
    spool_dir: Option<std::path::PathBuf>,
    /// For the in-process gateway: its runtime's worker threads (default: one per CPU).
    #[arg(long)]
    gateway_threads: Option<usize>,
    /// Log filter for the in-process gateway.
    #[arg(long, default_value = "error")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("milter-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The in-process gateway on its own runtime (and threads), so the load generator does not
/// share its workers.
struct InProcess {
    addr: SocketAddr,
    /// A spool directory we made, to remove at the end.
    own_spool: Option<std::path::PathBuf>,
    shutdown: CancellationToken,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

fn start_gateway(args: &Args) -> anyhow::Result<InProcess> {
    platform::telemetry::init_logging(&args.log_level).map_err(anyhow::Error::msg)?;
    let mut config = platform::config::Config {
        instance: "bench".to_owned(),
        ..platform::config::Config::default()
    };
    config.broker.url = args.broker_url.as_str().into();
    let own_spool = args
        .spool_dir
        .is_none()
        .then(|| std::env::temp_dir().join(format!("milter-bench-spool-{}", std::process::id())));
    if let Some(dir) = args.spool_dir.clone().or_else(|| own_spool.clone()) {
        config.gateway.spool_dir = dir;
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all().thread_name("gateway");
    if let Some(n) = args.gateway_threads {
        builder.worker_threads(n.max(1));
    }
    let runtime = builder.build().context("gateway runtime")?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .context("bind the gateway")?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let thread =
        std::thread::spawn(move || runtime.block_on(milter_gateway::run(config, listener, token)));
    Ok(InProcess {
        addr,
        own_spool,
        shutdown,
        thread,
    })
}

fn run(args: Args) -> anyhow::Result<()> {
    let gateway = match args.target {
        Some(_) => None,
        None => Some(start_gateway(&args)?),
    };
    let addr = match (&gateway, args.target) {
        (Some(g), _) => g.addr,
        (None, Some(target)) => target,
        (None, None) => bail!("no gateway"),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("bench")
        .build()
        .context("bench runtime")?;
    let outcome = runtime.block_on(bench(&args, addr));
    drop(runtime);
    if let Some(gateway) = gateway {
        gateway.shutdown.cancel();
        let stopped = match gateway.thread.join() {
            Ok(result) => result,
            Err(_) => Err(anyhow::anyhow!("the gateway thread panicked")),
        };
        if let Some(dir) = gateway.own_spool {
            let _ = std::fs::remove_dir_all(dir);
        }
        stopped?;
    }
    outcome
}

/// Resident memory of a process in KiB (`VmRSS` in /proc/<pid>/status).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let status = std::fs::read_to_string(path).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

async fn bench(args: &Args, addr: SocketAddr) -> anyhow::Result<()> {
    println!(
        "milter-bench against {addr} ({})",
        if args.target.is_some() {
            "external gateway"
        } else {
            "in-process gateway, no modules"
        }
    );

    // Idle connections: negotiated, connected, HELO sent; then nothing.
    let mut idle = Vec::with_capacity(args.idle);
    if args.idle > 0 {
        let before = rss_kib(args.pid);
        for _ in 0..args.idle {
            let mut conn = Conn::open(addr).await?;
            conn.session_start().await?;
            idle.push(conn);
        }
        // let the gateway settle (its per-connection tasks have read what was sent)
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = rss_kib(args.pid);
        match (before, after) {
            (Some(before), Some(after)) => println!(
                "idle connections: {}  RSS {:.1} MiB before, {:.1} MiB with them ({:.1} KiB each{})",
                args.idle,
                mib(before),
                mib(after),
                after.saturating_sub(before) as f64 / args.idle as f64,
                if args.pid.is_none() && args.target.is_none() {
                    "; this process holds both sides"
                } else {
                    ""
                }
            ),
            _ => println!("idle connections: {}  (RSS not readable)", args.idle),
        }
    }

    if args.seconds <= 0.0 || args.connections == 0 {
        return Ok(());
    }
    let measuring = Arc::new(AtomicBool::new(false));
    let stop = CancellationToken::new();
    let counters = Arc::new(Counters::default());
    let body = Bytes::from(body_text(args.body_size));
    let mut tasks = Vec::with_capacity(args.connections);
    for n in 0..args.connections {
        let (measuring, stop, counters, body) = (
            measuring.clone(),
            stop.clone(),
            counters.clone(),
            body.clone(),
        );
        let per_connection = args.messages_per_connection.max(1);
        let mut pace = (args.rate > 0.0).then(|| {
            let period = Duration::from_secs_f64(args.connections as f64 / args.rate);
            // spread the connections' starts over one period
            let offset = period.mul_f64(n as f64 / args.connections as f64);
            Pace {
                next: tokio::time::Instant::now() + offset,
                period,
            }
        });
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            while !stop.is_cancelled() {
                if let Err(error) = one_connection(
                    addr,
                    n,
                    &mut seq,
                    per_connection,
                    &body,
                    &measuring,
                    &stop,
                    &counters,
                    &mut latencies,
                    pace.as_mut(),
                )
                .await
                {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    eprintln!("connection {n}: {error:#}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            latencies
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(args.warmup.max(0.0))).await;
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    let rss_start = rss_kib(args.pid);
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    measuring.store(false, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let rss_end = rss_kib(args.pid);
    stop.cancel();
    let mut latencies: Vec<u32> = Vec::new();
    for task in tasks {
        latencies.extend(task.await.context("a load task panicked")?);
    }
    latencies.sort_unstable();
    let n = latencies.len();
    let pct = |p: f64| -> f64 {
        if n == 0 {
            return 0.0;
        }
        let idx = ((p * n as f64).ceil() as usize).clamp(1, n) - 1;
        f64::from(latencies[idx]) / 1000.0
    };
    println!(
        "connections {}  body {} B  messages/connection {}  rate {}  measured {:.1} s",
        args.connections,
        args.body_size,
        args.messages_per_connection,
        if args.rate > 0.0 {
            format!("{}/s", args.rate)
        } else {
            "unpaced".to_owned()
        },
        elapsed.as_secs_f64()
    );
    println!(
        "messages {}  => {:.0} messages/s",
        n,
        n as f64 / elapsed.as_secs_f64()
    );
    println!(
        "EOM-to-reply latency: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
        pct(0.50),
        pct(0.99),
        latencies.last().map_or(0.0, |m| f64::from(*m) / 1000.0)
    );
    println!(
        "final replies: continue {}  reply code {}  other {}  errors {}",
        counters.continued.load(Ordering::Relaxed),
        counters.reply_code.load(Ordering::Relaxed),
        counters.other.load(Ordering::Relaxed),
        counters.errors.load(Ordering::Relaxed)
    );
    let not_continued =
        counters.reply_code.load(Ordering::Relaxed) + counters.other.load(Ordering::Relaxed);
    if not_continued > 0 {
        println!(
            "warning: {not_continued} messages were not answered with continue; with no modules \
             that means the gateway could not queue their audit records (broker unreachable or \
             too slow: see --broker-url)"
        );
    }
    if let (Some(a), Some(b)) = (rss_start, rss_end) {
        println!("RSS during the run: {:.1} MiB -> {:.1} MiB", mib(a), mib(b));
    }
    drop(idle);
    Ok(())
}

/// One connection's share of `--rate`: a message every `period`; a late one does not make
/// the next one early.
struct Pace {
    next: tokio::time::Instant,
    period: Duration,
}

impl Pace {
    async fn wait(&mut self) {
        tokio::time::sleep_until(self.next).await;
        self.next = (self.next + self.period).max(tokio::time::Instant::now());
    }
}

#[derive(Default)]
struct Counters {
    continued: AtomicU64,
    reply_code: AtomicU64,
    other: AtomicU64,
    errors: AtomicU64,
}

fn body_text(size: usize) -> Vec<u8> {
    let line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghij.\r\n";
    line.iter().copied().cycle().take(size).collect()
}

/// One milter connection, the MTA's side.
struct Conn {
    framed: Framed<TcpStream, MtaCodec>,
    negotiated: Negotiated,
}

impl Conn {
    async fn open(addr: SocketAddr) -> anyhow::Result<Conn> {
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
        match next(&mut framed).await? {
            Response::OptNeg {
                version,
                actions,
                protocol,
                ..
            } => Ok(Conn {
                framed,
                negotiated: Negotiated {
                    version,
                    actions,
                    protocol,
                },
            }),
            other => bail!("OPTNEG answered with {other:?}"),
        }
    }

    /// Sends a command; when the gateway owes a reply, flushes and waits for it.
    async fn command(&mut self, command: Command) -> anyhow::Result<Option<Response>> {
        let code = command.code();
        if self.negotiated.no_reply(code) {
            self.framed.feed(command).await?;
            return Ok(None);
        }
        self.framed.send(command).await?;
        next(&mut self.framed).await.map(Some)
    }

    async fn macros(&mut self, stage: u8, macros: &[(&str, &str)]) -> anyhow::Result<()> {
        self.command(Command::Macro {
            stage,
            macros: macros
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        })
        .await?;
        Ok(())
    }

    async fn expect_continue(&mut self, command: Command) -> anyhow::Result<()> {
        let name = command.name();
        match self.command(command).await? {
            None | Some(Response::Continue) => Ok(()),
            Some(other) => bail!("{name} answered with {other:?}"),
        }
    }

    async fn session_start(&mut self) -> anyhow::Result<()> {
        self.macros(
            b'C',
            &[
                ("j", "mx.bench.test"),
                ("{daemon_name}", "mx"),
                ("{client_addr}", "192.0.2.10"),
                ("_", "client.bench.test [192.0.2.10]"),
            ],
        )
        .await?;
        self.expect_continue(Command::Connect {
            hostname: "client.bench.test".into(),
            family: Family::Inet,
            port: Some(40_000),
            address: "192.0.2.10".into(),
        })
        .await?;
        self.macros(b'H', &[]).await?;
        self.expect_continue(Command::Helo("client.bench.test".into()))
            .await?;
        self.framed.flush().await?;
        Ok(())
    }

    /// One message; returns the final answer and the BODYEOB-to-answer time.
    async fn message(
        &mut self,
        queue_id: &str,
        body: &Bytes,
    ) -> anyhow::Result<(Response, Duration)> {
        self.macros(b'M', &[("{mail_addr}", "sender@bench.test")])
            .await?;
        self.expect_continue(Command::Mail(vec![
            "<sender@bench.test>".into(),
            "SIZE=5000".into(),
        ]))
        .await?;
        self.macros(
            b'R',
            &[
                ("{rcpt_addr}", "rcpt@mailbox.test"),
                ("{rcpt_host}", "mailbox.test"),
                ("{rcpt_mailer}", "virtual"),
            ],
        )
        .await?;
        self.expect_continue(Command::Rcpt(vec!["<rcpt@mailbox.test>".into()]))
            .await?;
        self.macros(b'T', &[("i", queue_id)]).await?;
        self.expect_continue(Command::Data).await?;
        let message_id = format!("<{queue_id}@bench.test>");
        let headers: [(&str, &str); 10] = [
            (
                "Received",
                "from client.bench.test (client.bench.test [192.0.2.10]) by mx.bench.test",
            ),
            ("Date", "Wed, 25 Nov 2026 08:30:16 +0000"),
            ("From", "Sender <sender@bench.test>"),
            ("To", "rcpt@mailbox.test"),
            ("Subject", "milter-bench message"),
            ("Message-ID", &message_id),
            ("MIME-Version", "1.0"),
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Transfer-Encoding", "8bit"),
            ("X-Mailer", "milter-bench"),
        ];
        for (name, value) in headers {
            self.macros(b'L', &[("i", queue_id)]).await?;
            self.expect_continue(Command::Header {
                name: name.to_owned(),
                value: Bytes::copy_from_slice(value.as_bytes()),
            })
            .await?;
        }
        self.macros(b'N', &[("i", queue_id)]).await?;
        self.expect_continue(Command::EndOfHeaders).await?;
        for chunk in body.chunks(65_535) {
            self.expect_continue(Command::Body(body.slice_ref(chunk)))
                .await?;
        }
        self.macros(b'E', &[("i", queue_id)]).await?;
        let sent = Instant::now();
        self.framed
            .send(Command::EndOfMessage(Bytes::new()))
            .await?;
        loop {
            let response = next(&mut self.framed).await?;
            if response == Response::Progress || response.is_modification() {
                continue;
            }
            let latency = sent.elapsed();
            // Postfix ends every transaction with ABORT (no reply)
            self.framed.feed(Command::Abort).await?;
            return Ok((response, latency));
        }
    }
}

async fn next(framed: &mut Framed<TcpStream, MtaCodec>) -> anyhow::Result<Response> {
    match tokio::time::timeout(Duration::from_secs(60), framed.next()).await {
        Ok(Some(Ok(response))) => Ok(response),
        Ok(Some(Err(error))) => Err(error).context("undecodable reply"),
        Ok(None) => bail!("the gateway closed the connection"),
        Err(_) => bail!("no reply within 60 s"),
    }
}

#[allow(clippy::too_many_arguments)]
async fn one_connection(
    addr: SocketAddr,
    n: usize,
    seq: &mut u64,
    messages: u32,
    body: &Bytes,
    measuring: &AtomicBool,
    stop: &CancellationToken,
    counters: &Counters,
    latencies: &mut Vec<u32>,
    mut pace: Option<&mut Pace>,
) -> anyhow::Result<()> {
    if let Some(pace) = pace.as_deref_mut() {
        pace.wait().await;
    }
    let mut conn = Conn::open(addr).await?;
    conn.session_start().await?;
    for i in 0..messages {
        if stop.is_cancelled() {
            break;
        }
        if i > 0
            && let Some(pace) = pace.as_deref_mut()
        {
            pace.wait().await;
        }
        *seq += 1;
        let queue_id = format!("B{n:04X}Q{:010X}", *seq);
        let (response, latency) = conn.message(&queue_id, body).await?;
        if measuring.load(Ordering::Relaxed) {
            let counter = match response {
                Response::Continue | Response::Accept => &counters.continued,
                Response::ReplyCode(_) => &counters.reply_code,
                _ => &counters.other,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            latencies.push(u32::try_from(latency.as_micros()).unwrap_or(u32::MAX));
        }
    }
    conn.framed.send(Command::Quit).await?;
    Ok(())
}
