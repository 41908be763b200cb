//! The consume → check → reply → ack loop itself, with a stand-in module whose behaviour the
//! request's queue id selects, so errors, timeouts, panics and slowness can be had on demand.

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use check_workers::module::{Module, ModuleError};
use check_workers::worker::{self, ModuleWorker, WorkerSettings};
use test_support::{TestBroker, eventually, init_test_logging};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use wire::{Action, CheckRequest, CheckResult, MessageId, WIRE_VERSION};

use crate::harness::{Gateway, Workers, config, plain_request, request};

const STANDIN: &str = "standin";
const REPLY_WITHIN: Duration = Duration::from_secs(15);

/// Answers by the request's queue id: `fail` → an error, `hang` → never, `panic` → panics,
/// `slow` → permit after 400 ms, anything else → permit at once. Reports each start.
struct StandIn {
    started: mpsc::UnboundedSender<MessageId>,
    running: AtomicUsize,
    most_at_once: AtomicUsize,
}

#[async_trait]
impl Module for StandIn {
    fn name(&self) -> &'static str {
        STANDIN
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let _ = self.started.send(request.message_id);
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_at_once.fetch_max(now, Ordering::SeqCst);
        let outcome = match request.queue_id.as_str() {
            "fail" => Err(ModuleError::Unavailable {
                service: STANDIN,
                source: Box::new(std::io::Error::other("connection refused")),
            }),
            "hang" => std::future::pending().await,
            "panic" => panic!("stand-in module told to panic"),
            "slow" => {
                tokio::time::sleep(Duration::from_millis(400)).await;
                Ok(permit(request))
            }
            _ => Ok(permit(request)),
        };
        self.running.fetch_sub(1, Ordering::SeqCst);
        outcome
    }
}

fn permit(request: &CheckRequest) -> CheckResult {
    CheckResult {
        version: WIRE_VERSION,
        message_id: request.message_id,
        // the worker fills in its own name; a module's slip here does not leak
        module: "whatever".into(),
        action: Action::Permit,
        score: 1.0,
        message: String::new(),
        determinants: serde_json::json!({}),
        duration: 0.0,
        changes: Default::default(),
        enhanced_status: None,
    }
}

/// `worker::serve` with the stand-in, in a task of this test.
struct Serving {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    module: Arc<StandIn>,
    started: mpsc::UnboundedReceiver<MessageId>,
}

impl Serving {
    fn start(url: &str, prefetch: u16, timeout: Duration) -> Self {
        let (started_tx, started) = mpsc::unbounded_channel();
        let module = Arc::new(StandIn {
            started: started_tx,
            running: AtomicUsize::new(0),
            most_at_once: AtomicUsize::new(0),
        });
        let settings = WorkerSettings {
            broker_urls: url.into(),
            connection_name: format!("check-workers test {STANDIN}"),
            reconnect_max_backoff: Duration::from_secs(1),
            prefetch,
            drain_timeout: Duration::from_secs(5),
        };
        let workers = vec![ModuleWorker {
            module: Arc::clone(&module) as Arc<dyn Module>,
            timeout,
        }];
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let task = tokio::spawn(async move { worker::serve(&settings, &workers, &token).await });
        Self {
            shutdown,
            task,
            module,
            started,
        }
    }

    async fn stop(self, within: Duration) {
        self.shutdown.cancel();
        tokio::time::timeout(within, self.task)
            .await
            .expect("serve did not return in time")
            .unwrap();
    }
}

fn standin_request(behaviour: &str) -> CheckRequest {
    let mut request = request(STANDIN, None);
    request.queue_id = behaviour.into();
    request
}

#[tokio::test]
async fn undecodable_requests_do_not_stop_the_worker() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &["rspamd"]).await;
    let workers = Workers::start(config(&broker.url));
    let expiration = Duration::from_secs(30);

    gateway
        .publish_raw(
            "rspamd",
            "garbage",
            b"\x00\xffnot json at all",
            true,
            expiration,
        )
        .await;
    let future_version = format!(
        r#"{{"version":{},"message_id":"{}","something":"new"}}"#,
        WIRE_VERSION + 1,
        MessageId::new()
    );
    gateway
        .publish_raw(
            "rspamd",
            "future",
            future_version.as_bytes(),
            true,
            expiration,
        )
        .await;
    let nobody_waits = plain_request();
    gateway
        .publish_raw(
            "rspamd",
            &nobody_waits.message_id.to_string(),
            &wire::contract::encode(&nobody_waits),
            false,
            expiration,
        )
        .await;
    let good = plain_request();
    gateway.send(&good).await;

    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, good.message_id.to_string());
    assert_eq!(result.action, Action::Reject);
    gateway.no_reply(Duration::from_millis(500)).await;

    // After a clean stop nothing is back in the queue: the bad ones were rejected without
    // requeue, the one without reply_to was acked.
    workers.stop(Duration::from_secs(15)).await.unwrap();
    assert_eq!(gateway.ready_in_queue("rspamd").await, 0);
}

#[tokio::test]
async fn module_errors_timeouts_and_panics_become_error_results() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &[STANDIN]).await;
    let serving = Serving::start(&broker.url, 8, Duration::from_millis(300));

    let requests: Vec<CheckRequest> = ["fail", "hang", "panic", "ok"]
        .into_iter()
        .map(standin_request)
        .collect();
    for request in &requests {
        gateway.send(request).await;
    }
    let mut by_behaviour = HashMap::new();
    for _ in &requests {
        let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
        let request = requests
            .iter()
            .find(|r| r.message_id.to_string() == correlation_id)
            .expect("a reply to one of our requests");
        assert_eq!(result.message_id, request.message_id);
        assert_eq!(result.module, STANDIN);
        by_behaviour.insert(request.queue_id.clone(), result);
    }

    let reason = |b: &str| {
        by_behaviour[b].determinants["error"]
            .as_str()
            .map(str::to_owned)
    };
    for behaviour in ["fail", "hang", "panic"] {
        assert_eq!(by_behaviour[behaviour].action, Action::Error, "{behaviour}");
        assert_eq!(by_behaviour[behaviour].score, 25.0, "{behaviour}");
    }
    assert_eq!(
        reason("fail").unwrap(),
        "cannot reach standin: connection refused"
    );
    assert_eq!(
        reason("hang").unwrap(),
        "no answer within the module timeout of 300ms"
    );
    assert_eq!(reason("panic").unwrap(), "the module panicked");
    let hang_duration = by_behaviour["hang"].duration;
    assert!((0.3..1.0).contains(&hang_duration), "{hang_duration}");
    assert_eq!(by_behaviour["ok"].action, Action::Permit);

    // asked at a stage the module does not check at: an error result, the module not called
    let mut early = standin_request("panic");
    early.stage = wire::CheckStage::Connect;
    gateway.send(&early).await;
    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, early.message_id.to_string());
    assert_eq!(result.action, Action::Error);
    assert_eq!(
        result.determinants["error"].as_str(),
        Some("standin does not check at stage connect")
    );

    // and the worker goes on
    let after = standin_request("ok");
    gateway.send(&after).await;
    let (correlation_id, _) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, after.message_id.to_string());
    serving.stop(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn checks_run_concurrently_up_to_prefetch() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &[STANDIN]).await;
    // Queue the requests first, so the worker finds them all waiting.
    let requests: Vec<CheckRequest> = (0..6).map(|_| standin_request("slow")).collect();
    for request in &requests {
        gateway.send(request).await;
    }
    let started = Instant::now();
    let serving = Serving::start(&broker.url, 3, Duration::from_secs(5));
    for _ in &requests {
        let (_, result) = gateway.next_reply(REPLY_WITHIN).await;
        assert_eq!(result.action, Action::Permit);
    }
    let took = started.elapsed();

    // 6 checks of 400 ms, 3 at a time: two rounds, not six and not one.
    assert_eq!(serving.module.most_at_once.load(Ordering::SeqCst), 3);
    assert!(took >= Duration::from_millis(800), "{took:?}");
    assert!(took < Duration::from_millis(2400), "{took:?}");
    serving.stop(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn shutdown_finishes_the_checks_in_flight_and_takes_no_more() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &[STANDIN]).await;
    let mut serving = Serving::start(&broker.url, 4, Duration::from_secs(5));

    let slow = standin_request("slow");
    gateway.send(&slow).await;
    let started = tokio::time::timeout(REPLY_WITHIN, serving.started.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(started, slow.message_id);
    serving.shutdown.cancel();

    let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, slow.message_id.to_string());
    assert_eq!(result.action, Action::Permit);
    let Serving { task, .. } = serving;
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("serve returns after draining")
        .unwrap();

    // acked (not back in the queue), and a request sent now waits for the next worker
    assert_eq!(gateway.ready_in_queue(STANDIN).await, 0);
    gateway.send(&standin_request("ok")).await;
    gateway.no_reply(Duration::from_millis(500)).await;
    assert_eq!(gateway.ready_in_queue(STANDIN).await, 1);
}

/// The broker's pid of every connection of `vhost` whose name starts with `check-workers`.
fn worker_connections(vhost: &str) -> Vec<String> {
    let output = Command::new("rabbitmqctl")
        .args([
            "list_connections",
            "-q",
            "--no-table-headers",
            "pid",
            "vhost",
            "client_properties",
        ])
        .output()
        .expect("rabbitmqctl runs (tests run as root beside the broker, PEERS.md §1)");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut columns = line.split('\t');
            let pid = columns.next()?;
            let line_vhost = columns.next()?;
            let properties = columns.next()?;
            (line_vhost == vhost && properties.contains("\"check-workers")).then(|| pid.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn reconnects_and_resumes_after_losing_the_connection() {
    init_test_logging();
    let broker = TestBroker::new().unwrap();
    let mut gateway = Gateway::connect(&broker.url, &[STANDIN]).await;
    let serving = Serving::start(&broker.url, 4, Duration::from_secs(5));

    let first = standin_request("ok");
    gateway.send(&first).await;
    let (correlation_id, _) = gateway.next_reply(REPLY_WITHIN).await;
    assert_eq!(correlation_id, first.message_id.to_string());

    let before = worker_connections(&broker.vhost);
    assert_eq!(before.len(), 1, "{before:?}");
    let closed = Command::new("rabbitmqctl")
        .args(["close_connection", &before[0], "test: connection lost"])
        .output()
        .unwrap();
    assert!(
        closed.status.success(),
        "{}",
        String::from_utf8_lossy(&closed.stderr)
    );

    let vhost = broker.vhost.clone();
    let after = eventually(Duration::from_secs(20), "a new worker connection", || {
        let vhost = vhost.clone();
        let old = before[0].clone();
        async move {
            let now = worker_connections(&vhost);
            (now.len() == 1 && now[0] != old).then_some(now)
        }
    })
    .await
    .unwrap();
    assert_ne!(after, before);

    let second = standin_request("ok");
    gateway.send(&second).await;
    // The first request's ack may have been in flight when the connection was closed: the
    // broker then redelivers it and the gateway sees a second answer to it (at-least-once;
    // the gateway drops answers it no longer waits for). Anything else is a bug.
    let (correlation_id, result) = loop {
        let (correlation_id, result) = gateway.next_reply(REPLY_WITHIN).await;
        if correlation_id != first.message_id.to_string() {
            break (correlation_id, result);
        }
    };
    assert_eq!(correlation_id, second.message_id.to_string());
    assert_eq!(result.action, Action::Permit);
    serving.stop(Duration::from_secs(10)).await;
}
