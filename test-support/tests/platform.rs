//! The platform crate's plumbing against the real services, taken away and given back by a
//! [`TcpProxy`] in front of them: the broker supervisor rotates past a node that does not answer
//! and comes back after a loss; the database pool waits out a server that refuses, and sets up
//! every connection (UTC, READ COMMITTED, strict mode) when it accepts.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::options::{BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use platform::broker::{self, Supervisor};
use platform::config::Urls;
use platform::database::{self, PoolSettings};
use test_support::TestBroker;
use test_support::proxy::TcpProxy;
use tokio_util::sync::CancellationToken;

const RABBITMQ: &str = "127.0.0.1:5672";
const MARIADB: &str = "127.0.0.1:3306";
const WAIT: Duration = Duration::from_secs(20);

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A port nothing listens on (connecting is refused).
fn dead_port() -> u16 {
    test_support::postfix::free_port().unwrap()
}

fn amqp(port: u16, vhost: &str) -> String {
    format!("amqp://guest:guest@127.0.0.1:{port}/{vhost}")
}

/// A session as the processes run one: a channel, an exclusive queue, a consumer, until the
/// consumer ends (the connection broke) or `shutdown`.
async fn session(
    connection: &lapin::Connection,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let channel = connection.create_channel().await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            queue.name().as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    tokio::select! {
        () = shutdown.cancelled() => Ok(()),
        next = consumer.next() => match next {
            Some(Err(error)) => Err(error.into()),
            Some(Ok(_)) => anyhow::bail!("nothing publishes to this queue"),
            None => anyhow::bail!("the consumer ended"),
        },
    }
}

#[tokio::test]
async fn the_supervisor_skips_a_dead_node_and_comes_back_after_a_loss() {
    test_support::init_test_logging();
    let broker = TestBroker::new().unwrap();
    let proxy = TcpProxy::start(addr(RABBITMQ)).await.unwrap();
    let urls = Urls::from(vec![
        amqp(dead_port(), &broker.vhost),
        amqp(proxy.port(), &broker.vhost),
    ]);
    let mut supervisor = Supervisor::new(&urls, "platform test", Duration::from_secs(1));
    let shutdown = CancellationToken::new();

    let connection = tokio::time::timeout(WAIT, supervisor.connect(&shutdown))
        .await
        .expect("connected in time")
        .expect("not shut down");
    let node = supervisor.current_node().unwrap();
    assert!(node.contains(&format!(":{}/", proxy.port())), "{node}");
    assert!(
        node.contains("guest:***@"),
        "the password is not logged: {node}"
    );

    // the node goes away in the middle of the session
    let cut = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        proxy.cut();
    };
    let (outcome, ()) = tokio::join!(
        tokio::time::timeout(WAIT, session(&connection, &shutdown)),
        cut
    );
    let outcome = outcome.expect("the session noticed the loss");
    assert!(outcome.is_err());
    assert!(supervisor.end(&connection, outcome, &shutdown).await);

    // neither node answers for a while; then the second does again
    let restore = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore().await.unwrap();
    };
    let (connection, ()) = tokio::join!(
        tokio::time::timeout(WAIT, supervisor.connect(&shutdown)),
        restore
    );
    let connection = connection.expect("reconnected in time").unwrap();
    assert_eq!(supervisor.sessions(), 2);
    assert!(
        supervisor
            .current_node()
            .unwrap()
            .contains(&format!(":{}/", proxy.port()))
    );

    // a session that saw shutdown ends the loop
    shutdown.cancel();
    let outcome = session(&connection, &shutdown).await;
    assert!(outcome.is_ok());
    assert!(!supervisor.end(&connection, outcome, &shutdown).await);
    assert!(supervisor.connect(&shutdown).await.is_none());
}

#[tokio::test]
async fn a_one_shot_connection_takes_the_first_node_that_answers_or_names_the_last() {
    let broker = TestBroker::new().unwrap();
    let dead = dead_port();
    let urls = Urls::from(vec![amqp(dead, &broker.vhost), broker.url.clone()]);
    let connection = broker::connect_any(&urls, "platform test").await.unwrap();
    broker::close(&connection, 200, "done").await;

    let urls = Urls::from(vec![
        amqp(dead, &broker.vhost),
        amqp(dead_port(), &broker.vhost),
    ]);
    let error = broker::connect_any(&urls, "platform test")
        .await
        .unwrap_err();
    let shown = error.to_string();
    assert!(shown.starts_with("no RabbitMQ node answered"), "{shown}");
    assert!(shown.contains("guest:***@"), "{shown}");
}

#[tokio::test]
async fn the_pool_waits_out_a_refusing_database_and_sets_up_every_connection() {
    let proxy = TcpProxy::start_cut(addr(MARIADB)).await.unwrap();
    let url = format!("mysql://root@127.0.0.1:{}/", proxy.port());
    let settings = PoolSettings::new(2).acquire_timeout(Duration::from_secs(1));
    let pool = database::pool(&url, &settings).unwrap();

    let refused = sqlx::query("SELECT 1").execute(&pool).await.unwrap_err();
    assert!(database::is_connection_error(&refused), "{refused:?}");

    proxy.restore().await.unwrap();
    let check = async || {
        sqlx::query_as::<_, (String, String, String)>(
            "SELECT @@session.time_zone, @@session.tx_isolation, @@session.sql_mode",
        )
        .fetch_one(&pool)
        .await
    };
    let (zone, isolation, mode) = check().await.unwrap();
    assert_eq!(zone, "+00:00");
    assert_eq!(isolation, "READ-COMMITTED");
    assert!(mode.contains("STRICT_ALL_TABLES"), "{mode}");

    // taken away while connected, then back: the pool makes new connections by itself
    proxy.cut();
    assert!(check().await.is_err());
    proxy.restore().await.unwrap();
    let (zone, ..) =
        test_support::eventually(WAIT, "the pool reconnects", || async { check().await.ok() })
            .await
            .unwrap();
    assert_eq!(zone, "+00:00");
}
