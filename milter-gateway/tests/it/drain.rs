//! SIGTERM (issue 4): the real `milter-gateway` binary, with a message in flight that waits
//! on a module, gets SIGTERM. It stops accepting connections at once, still gives the message
//! its final answer once the module answered, publishes its audit event (or leaves it spooled
//! for the next start), and exits 0 within its bound (`server::DRAIN_TIMEOUT`, 30 s, plus the
//! audit drain).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use milter_gateway::milter::Response;
use test_support::{TestBroker, eventually};
use tokio::net::TcpStream;

use crate::helpers::*;

/// The gateway binary of this build, killed if the test ends without it having exited.
struct Process(Child);

impl Process {
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal}");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_message_in_flight_refuses_new_connections_and_exits_0() {
    test_support::init_test_logging();
    let broker = TestBroker::new().unwrap();
    let held = HeldWorker::start(&broker.url, "rspamd").await;
    let dir = std::env::temp_dir().join(format!("cgt-it-drain-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let spool_dir = dir.join("spool");
    let port = free_port();
    let config = dir.join("cluegetter.toml");
    std::fs::write(
        &config,
        format!(
            "instance = \"drain\"\n\
             [broker]\n\
             url = \"{broker}\"\n\
             reconnect-max-backoff = \"500ms\"\n\
             [gateway]\n\
             listen = \"127.0.0.1:{port}\"\n\
             metrics-listen = \"127.0.0.1:{metrics}\"\n\
             spool-dir = \"{spool}\"\n\
             progress-interval = \"200ms\"\n\
             [rspamd]\n\
             enabled = true\n\
             timeout = \"60s\"\n",
            broker = broker.url,
            metrics = free_port(),
            spool = spool_dir.display(),
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("gateway.log")).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_milter-gateway"));
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLUEGETTER_")) {
        command.env_remove(key);
    }
    let mut gateway = Process(
        command
            .arg("--config")
            .arg(&config)
            .env("CLUEGETTER_LOG_LEVEL", "info,lapin=warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
    eventually(Duration::from_secs(30), "the gateway listens", || async {
        TcpStream::connect(addr).await.ok().map(|_| ())
    })
    .await
    .unwrap();
    wait_until_ready(addr).await;
    let mut tap = AuditTap::start(&broker.url).await;

    // A message waits on rspamd, held by the worker.
    let sender = format!("permit@{HELD_DOMAIN}");
    let mut mta = Mta::connect(addr).await;
    mta.client().await;
    mta.envelope(&sender, &["rcpt@mailbox.test"]).await;
    mta.content(
        "DRAINQID",
        &[("Subject", "in flight at SIGTERM")],
        b"In flight.\r\n",
    )
    .await;
    let in_flight = tokio::spawn(async move {
        let replies = mta.end_of_message("DRAINQID").await;
        (mta, replies)
    });
    eventually(
        Duration::from_secs(30),
        "the request at the worker",
        || async { held.saw(&sender).then_some(()) },
    )
    .await
    .unwrap();

    gateway.signal("TERM");
    eventually(
        Duration::from_secs(30),
        "new connections refused",
        || async { TcpStream::connect(addr).await.is_err().then_some(()) },
    )
    .await
    .unwrap();
    assert!(
        !in_flight.is_finished(),
        "the message is still waiting on its module"
    );
    assert!(
        gateway.0.try_wait().unwrap().is_none(),
        "the gateway waits for the message in flight"
    );

    held.release();
    let (_mta, replies) = tokio::time::timeout(Duration::from_secs(30), in_flight)
        .await
        .expect("the message gets its final answer")
        .unwrap();
    assert_eq!(replies.last(), Some(&Response::Continue), "{replies:?}");

    // exits 0 within the drain bound (30 s for connections, 5 s for the audit queue)
    let end = tokio::time::Instant::now() + Duration::from_secs(45);
    let status = loop {
        if let Some(status) = gateway.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the gateway did not exit within 45 s of SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");

    // the record: published, or left in the spool for the next start
    match tap.next_for("DRAINQID", Duration::from_secs(10)).await {
        Some(event) => {
            assert!(event.answered);
            assert_eq!(event.results.len(), 1);
            assert_eq!(event.results[0].result.score, HELD_SCORE);
            assert!(
                !spooled(&spool_dir)
                    .iter()
                    .any(|(_, e)| e.message.queue_id == "DRAINQID"),
                "published and still spooled"
            );
        }
        None => {
            let left = spooled(&spool_dir);
            assert!(
                left.iter().any(
                    |(name, e)| e.message.queue_id == "DRAINQID" && name.ends_with(".answered")
                ),
                "neither published nor spooled: {left:?}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
