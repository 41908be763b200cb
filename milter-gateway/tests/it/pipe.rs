//! One milter connection over `tokio::io::duplex`, no listener: `connection::serve` is generic
//! over its transport, so the end-of-message path (ask, decide, spool, answer) runs here with
//! exactly the parts `milter_gateway::run` wires together. The broker is a port nobody
//! listens on: these tests need no peer at all, and they pin what the fail policy
//! (`outcome.rs`) does end to end when the broker is away or the spool is full, with
//! `fail-action` tempfail and accept.

use std::path::PathBuf;
use std::sync::Arc;

use milter_gateway::audit::AuditPublisher;
use milter_gateway::context::Context;
use milter_gateway::dispatch::Dispatcher;
use milter_gateway::milter::Response;
use milter_gateway::{connection, spool};
use platform::config::{Config, FailAction};
use tokio::io::DuplexStream;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use wire::Action;

use crate::helpers::{Mta, config, spooled};

/// The gateway's side of one connection, and what it needs, stopped by [`Pipe::stop`].
struct Pipe {
    mta: Mta<DuplexStream>,
    connection: JoinHandle<()>,
    background: TaskTracker,
    broker_shutdown: CancellationToken,
    spool_dir: PathBuf,
}

/// A configuration whose broker is away; `rspamd` enabled or not.
fn away(rspamd: bool, fail_action: FailAction) -> Config {
    let closed = test_support::postfix::free_port().unwrap();
    let mut config = config(&format!("amqp://guest:guest@127.0.0.1:{closed}/%2f"));
    config.rspamd.enabled = rspamd;
    config.gateway.fail_action = fail_action;
    // a message waits for a broker link up to its module's timeout
    config.rspamd.timeout = std::time::Duration::from_millis(500);
    config
}

impl Pipe {
    async fn start(config: Config) -> Pipe {
        test_support::init_test_logging();
        let background = TaskTracker::new();
        let broker_shutdown = CancellationToken::new();
        let spool_dir = config.gateway.spool_dir.clone();
        let dispatcher = Dispatcher::start(&config, &background, broker_shutdown.clone());
        let (spool, replay) =
            spool::Spool::open(&spool_dir, config.gateway.spool_max_size).unwrap();
        let audit =
            AuditPublisher::start(&config, spool, replay, &background, broker_shutdown.clone());
        let ctx = Arc::new(Context::new(config, dispatcher, audit));
        let (mta_side, gateway_side) = tokio::io::duplex(64 * 1024);
        let connection = tokio::spawn(connection::serve(
            gateway_side,
            "duplex",
            ctx,
            CancellationToken::new(),
        ));
        let mta = Mta::over(mta_side).await;
        Pipe {
            mta,
            connection,
            background,
            broker_shutdown,
            spool_dir,
        }
    }

    /// One message from `permit@example.org`; the end-of-message replies.
    async fn message(&mut self, queue_id: &str) -> Vec<Response> {
        self.mta.client().await;
        self.mta
            .message("permit@example.org", &["rcpt@mailbox.test"], queue_id)
            .await
    }

    /// QUIT, then the connection's task and the broker tasks end; returns what the spool
    /// holds (nothing was confirmed: the broker is away).
    async fn stop(self) -> Vec<wire::AuditEvent> {
        self.mta.quit().await;
        self.connection.await.unwrap();
        self.broker_shutdown.cancel();
        self.background.close();
        self.background.wait().await;
        let events = spooled(&self.spool_dir)
            .into_iter()
            .map(|(_, e)| e)
            .collect();
        let _ = std::fs::remove_dir_all(&self.spool_dir);
        events
    }
}

fn final_reply(replies: &[Response]) -> &Response {
    replies.last().expect("an answer at end of message")
}

fn adds_the_id_header(replies: &[Response]) -> bool {
    replies
        .iter()
        .any(|r| matches!(r, Response::AddHeader { name, .. } if name == "X-Cluegetter-Id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_module_enabled_the_message_is_permitted_with_its_changes_and_spooled() {
    let mut pipe = Pipe::start(away(false, FailAction::Tempfail)).await;
    let replies = pipe.message("4PIPEq01").await;
    assert_eq!(final_reply(&replies), &Response::Continue, "{replies:?}");
    assert!(adds_the_id_header(&replies), "{replies:?}");
    let events = pipe.stop().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let event = &events[0];
    assert_eq!(event.message.queue_id, "4PIPEq01");
    assert_eq!(event.verdict.applied, Action::Permit);
    assert_eq!(event.verdict.failure, None);
    assert!(event.answered);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_away_with_fail_action_tempfail_the_message_is_deferred() {
    let mut pipe = Pipe::start(away(true, FailAction::Tempfail)).await;
    let replies = pipe.message("4PIPEq02").await;
    assert_eq!(
        final_reply(&replies),
        &Response::ReplyCode(
            "451 4.7.1 The message could not be checked right now, please try again later \
             (4PIPEq02)"
                .to_owned()
        ),
    );
    assert!(!adds_the_id_header(&replies), "{replies:?}");
    let events = pipe.stop().await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0].verdict.applied, Action::Tempfail);
    assert!(events[0].verdict.failure.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_away_with_fail_action_accept_the_message_passes_and_the_record_says_why() {
    let mut pipe = Pipe::start(away(true, FailAction::Accept)).await;
    let replies = pipe.message("4PIPEq03").await;
    assert_eq!(final_reply(&replies), &Response::Continue, "{replies:?}");
    assert!(adds_the_id_header(&replies), "{replies:?}");
    let events = pipe.stop().await;
    assert_eq!(events.len(), 1, "{events:?}");
    let verdict = &events[0].verdict;
    assert_eq!(verdict.verdict, Action::Tempfail);
    assert_eq!(verdict.applied, Action::Permit);
    assert!(verdict.failure.is_some(), "{verdict:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_defers_the_message_rather_than_answer_without_a_record() {
    let mut config = away(false, FailAction::Tempfail);
    // smaller than any audit event
    config.gateway.spool_max_size = 256;
    let mut pipe = Pipe::start(config).await;
    let replies = pipe.message("4PIPEq04").await;
    assert_eq!(
        replies,
        vec![Response::ReplyCode(
            "451 4.7.1 Service temporarily unavailable, please try again later (4PIPEq04)"
                .to_owned()
        )],
    );
    assert!(pipe.stop().await.is_empty(), "nothing could be spooled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_with_fail_action_accept_lets_the_message_pass() {
    let mut config = away(false, FailAction::Accept);
    config.gateway.spool_max_size = 256;
    let mut pipe = Pipe::start(config).await;
    let replies = pipe.message("4PIPEq05").await;
    assert_eq!(final_reply(&replies), &Response::Continue, "{replies:?}");
    assert!(adds_the_id_header(&replies), "{replies:?}");
    assert!(pipe.stop().await.is_empty(), "nothing could be spooled");
}
