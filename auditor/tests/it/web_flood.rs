//! A flood of idle connections on the web port (issue 20): 500 clients that connect and send
//! nothing. The connection cap keeps the auditor's own sockets bounded, the header read timeout
//! closes the idle ones, the consumer (on its own runtime) keeps archiving meanwhile, and the UI
//! answers.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::support::{self, Env};
use crate::web::{TOKEN, client, web_config};

const FLOOD: usize = 500;
const CAP: u32 = 64;

/// Open file descriptors of this process (the auditor runs in it, beside the flood's clients).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_idle_connections_neither_stop_archiving_nor_the_ui() {
    let env = Env::new().await;
    let mut config = env.config();
    config.auditor = web_config(true);
    config.auditor.batch_size = 50;
    config.auditor.batch_wait = Duration::from_millis(300);
    config.auditor.web_listen = "127.0.0.1:0".parse().unwrap();
    config.auditor.web_max_connections = CAP;
    config.auditor.web_header_read_timeout = Duration::from_secs(2);
    config.auditor.web_idle_timeout = Duration::from_secs(4);
    config.auditor.web_request_timeout = Duration::from_secs(3);
    let auditor = env.start_auditor_with(config.clone());
    let shutdown = tokio_util::sync::CancellationToken::new();
    let (addr, web) = auditor::web::spawn(&config, shutdown.clone()).unwrap();
    let before = open_fds();

    // the flood: connect, send nothing, keep the socket
    let mut idle = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // the flood's own sockets plus at most CAP accepted ones (and a few of the test's own)
    let during = open_fds();
    assert!(
        during <= before + FLOOD + CAP as usize + 16,
        "{during} fds open during the flood ({before} before): the cap of {CAP} does not hold"
    );

    // the consumer keeps archiving
    let publisher = env.publisher().await;
    let started = Instant::now();
    let event = support::event();
    publisher.publish_event(&event).await;
    env.wait_stored(event.message_id).await;
    let archived_in = started.elapsed();

    // the UI answers, once the idle connections ahead of it in the queue have timed out
    let started = Instant::now();
    let response = client()
        .get(format!(
            "http://{addr}/api/v1/messages/{}",
            event.message_id.0
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answered_in = started.elapsed();
    eprintln!(
        "flood of {FLOOD} idle connections (cap {CAP}): fds {before} before, {during} during; \
         event archived in {archived_in:?}; UI answered in {answered_in:?}"
    );
    assert!(archived_in < Duration::from_secs(10), "{archived_in:?}");
    assert!(answered_in < Duration::from_secs(30), "{answered_in:?}");

    // the server closed the idle connections it accepted (header read timeout)
    let mut closed = 0;
    for mut stream in idle.drain(..CAP as usize) {
        let mut buf = [0_u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(
            Duration::from_secs(1),
            tokio::io::AsyncReadExt::read(&mut stream, &mut buf),
        )
        .await
        {
            closed += 1;
        }
    }
    assert_eq!(
        closed, CAP,
        "the first {CAP} idle connections were closed by the server"
    );
    drop(idle);
    shutdown.cancel();
    tokio::task::spawn_blocking(move || web.join().unwrap().unwrap())
        .await
        .unwrap();
    auditor.stop().await;
}
