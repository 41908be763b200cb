//! The broker link lost and found again (`dispatch.rs`): a message that finds no link waits
//! for the next one within its module's timeout, and the requests of a message asked on a link
//! that breaks are asked again on the next one, so a failover costs no verdict. The broker is
//! reached through a [`TcpProxy`] the test cuts and restores; the workers connect directly.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use milter_gateway::milter::Response;
use test_support::proxy::TcpProxy;
use test_support::{TestBroker, eventually};

use crate::helpers::*;

fn through(proxy: &TcpProxy, broker: &TestBroker) -> String {
    let vhost = broker.url.rsplit('/').next().unwrap_or_default();
    format!("amqp://guest:guest@127.0.0.1:{}/{vhost}", proxy.port())
}

fn rabbitmq() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5672))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_that_finds_no_broker_waits_for_it_within_its_module_timeout() {
    let broker = TestBroker::new().unwrap();
    let _worker = Worker::start(&broker.url).await;
    let proxy = TcpProxy::start_cut(rabbitmq()).await.unwrap();
    let gateway = Gateway::start(config(&through(&proxy, &broker))).await;

    let addr = gateway.addr;
    let started = Instant::now();
    let message = tokio::spawn(async move {
        let mut mta = Mta::connect(addr).await;
        mta.client().await;
        let replies = mta
            .message("permit@example.org", &["rcpt@mailbox.test"], "4FOWAITq01")
            .await;
        mta.quit().await;
        replies
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    proxy.restore().await.unwrap();
    let replies = message.await.unwrap();
    assert_eq!(replies.last(), Some(&Response::Continue), "{replies:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "answered before the broker was there"
    );
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_without_a_broker_past_its_module_timeout_gets_the_fail_action() {
    let broker = TestBroker::new().unwrap();
    let proxy = TcpProxy::start_cut(rabbitmq()).await.unwrap();
    let mut config = config(&through(&proxy, &broker));
    config.rspamd.timeout = Duration::from_secs(1);
    let gateway = Gateway::start(config).await;
    let mut mta = Mta::connect(gateway.addr).await;
    mta.client().await;
    let started = Instant::now();
    let replies = mta
        .message("permit@example.org", &["rcpt@mailbox.test"], "4FOWAITq02")
        .await;
    let waited = started.elapsed();
    let Some(Response::ReplyCode(text)) = replies.last() else {
        panic!("{replies:?}")
    };
    assert!(text.starts_with("451 4.7.1 "), "{text}");
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&waited),
        "waited {waited:?} for a broker, with a 1 s module timeout"
    );
    mta.quit().await;
    gateway.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_asked_on_a_link_that_breaks_are_asked_again_on_the_next() {
    let broker = TestBroker::new().unwrap();
    let held = HeldWorker::start(&broker.url, "rspamd").await;
    let proxy = TcpProxy::start(rabbitmq()).await.unwrap();
    let gateway = Gateway::start(config(&through(&proxy, &broker))).await;
    gateway.wait_until_ready().await;

    let sender = format!("someone@{HELD_DOMAIN}");
    let addr = gateway.addr;
    let message = tokio::spawn({
        let sender = sender.clone();
        async move {
            let mut mta = Mta::connect(addr).await;
            mta.client().await;
            let replies = mta
                .message(&sender, &["rcpt@mailbox.test"], "4FOAGAINq01")
                .await;
            mta.quit().await;
            replies
        }
    });
    eventually(Duration::from_secs(10), "the first request", || async {
        (held.seen_from(&sender) == 1).then_some(())
    })
    .await
    .unwrap();
    // the link breaks while the message waits; its reply queue dies with it
    proxy.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.restore().await.unwrap();
    eventually(
        Duration::from_secs(10),
        "the request asked again",
        || async { (held.seen_from(&sender) == 2).then_some(()) },
    )
    .await
    .unwrap();
    held.release();
    let replies = message.await.unwrap();
    // the answer to the first request went to the dead reply queue; the second one counted
    assert_eq!(replies.last(), Some(&Response::Continue), "{replies:?}");
    gateway.stop().await;
}
