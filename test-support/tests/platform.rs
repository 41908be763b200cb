//! The platform crate's plumbing against the real services, taken away and given back by a
//! [`TcpProxy`] in front of them: the broker supervisor rotates past a node that does not answer
//! and comes back after a loss; the database pool waits out a server that refuses, and sets up
//! every connection (UTC, READ COMMITTED, strict mode) when it accepts.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt as _;
use lapin::BasicProperties;
use lapin::options::{
    BasicConsumeOptions, BasicGetOptions, BasicRejectOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use platform::broker::{self, Supervisor};
use platform::config::Urls;
use platform::database::{self, Database, PoolSettings};
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

/// Two database nodes (two proxies in front of the one MariaDB): a statement that finds the node
/// in use gone fails, the database probes and moves to the other, where the next statement
/// runs; while no node answers it stays where it is; when the node in use goes again and the
/// first is back, it moves back.
#[tokio::test]
async fn the_database_moves_to_the_next_node_that_answers_and_back() {
    let one = TcpProxy::start(addr(MARIADB)).await.unwrap();
    let two = TcpProxy::start(addr(MARIADB)).await.unwrap();
    let url = |proxy: &TcpProxy| format!("mysql://root@127.0.0.1:{}/", proxy.port());
    let urls = Urls::new(url(&one), [url(&two)]);
    let settings = PoolSettings::new(2).acquire_timeout(Duration::from_secs(1));
    let db = Database::new(&urls, settings).unwrap();
    let select = async || {
        sqlx::query_scalar::<_, i64>("SELECT 1")
            .fetch_one(&db)
            .await
    };
    let on = |node: usize| {
        let db = db.clone();
        move || {
            let db = db.clone();
            async move { (db.current_node() == node).then_some(()) }
        }
    };
    assert_eq!(select().await.unwrap(), 1);
    assert_eq!(db.current_node(), 0);

    one.cut();
    let error = select().await.unwrap_err();
    assert!(database::is_connection_error(&error), "{error:?}");
    test_support::eventually(WAIT, "moved to node 2", on(1))
        .await
        .unwrap();
    assert_eq!(select().await.unwrap(), 1, "runs on node 2");

    // nothing answers: the probe finds no node and the database stays on node 2
    two.cut();
    assert!(select().await.is_err());
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(db.current_node(), 1);

    // node 1 is back: a failed transaction start moves the database there
    one.restore().await.unwrap();
    let mut moved = false;
    for _ in 0..50 {
        match db.begin().await {
            Ok(tx) => {
                tx.rollback().await.unwrap();
                moved = true;
                break;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    assert!(moved, "a transaction could be started again");
    assert_eq!(db.current_node(), 0);
    assert_eq!(select().await.unwrap(), 1);
}

/// A pool that is only busy (every connection taken, so taking one times out) is not a dead
/// node: the database asks the node in use first and stays on it. And with a list, taking a
/// connection gives up after at most `LIST_ACQUIRE_TIMEOUT`, so a dead node is found fast.
#[tokio::test]
async fn a_busy_pool_stays_on_its_node_and_a_list_gives_up_waiting_early() {
    let one = TcpProxy::start(addr(MARIADB)).await.unwrap();
    let two = TcpProxy::start(addr(MARIADB)).await.unwrap();
    let url = |proxy: &TcpProxy| format!("mysql://root@127.0.0.1:{}/", proxy.port());
    let urls = Urls::new(url(&one), [url(&two)]);
    let settings = PoolSettings::new(1).acquire_timeout(Duration::from_secs(30));
    let db = Database::new(&urls, settings).unwrap();
    let held = db.acquire().await.unwrap();
    let started = std::time::Instant::now();
    let busy = db.acquire().await.unwrap_err();
    assert!(matches!(busy, sqlx::Error::PoolTimedOut), "{busy:?}");
    let waited = started.elapsed();
    assert!(
        waited < database::LIST_ACQUIRE_TIMEOUT + Duration::from_secs(1),
        "waited {waited:?} for a connection"
    );
    // the probe runs in the background: give it time to (wrongly) move
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(db.current_node(), 0, "a busy pool moved the database");
    drop(held);
    sqlx::query("SELECT 1").execute(&db).await.unwrap();
}

/// Two transactions that take the same two rows in opposite order: InnoDB rolls one back
/// (1213); [`database::ConflictRetries`] tries it again and both end up committed.
#[tokio::test]
async fn a_transaction_that_loses_a_deadlock_is_tried_again_and_commits() {
    let db = test_support::TestDb::empty().await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE t (id INT PRIMARY KEY, n INT NOT NULL); INSERT INTO t VALUES (1, 0), (2, 0)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let pool = database::pool(&db.url, &PoolSettings::new(2)).unwrap();
    let both_hold_one = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let writer = |first: i32, second: i32| {
        let pool = pool.clone();
        let both_hold_one = both_hold_one.clone();
        async move {
            let mut retries = database::ConflictRetries::new("test transaction", 5);
            loop {
                let attempt = retries.attempts_made();
                let outcome: Result<(), sqlx::Error> = async {
                    let mut tx = pool.begin().await?;
                    sqlx::query("UPDATE t SET n = n + 1 WHERE id = ?")
                        .bind(first)
                        .execute(&mut *tx)
                        .await?;
                    if attempt == 1 {
                        both_hold_one.wait().await;
                    }
                    sqlx::query("UPDATE t SET n = n + 1 WHERE id = ?")
                        .bind(second)
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await
                }
                .await;
                if let Err(error) = &outcome
                    && retries.again(error).await
                {
                    continue;
                }
                return (outcome, retries.attempts_made());
            }
        }
    };
    let ((a, a_attempts), (b, b_attempts)) =
        tokio::time::timeout(WAIT, async { tokio::join!(writer(1, 2), writer(2, 1)) })
            .await
            .expect("no transaction hangs");
    a.unwrap();
    b.unwrap();
    assert!(
        a_attempts + b_attempts > 2,
        "one of them was a deadlock victim"
    );
    let rows: Vec<(i32, i32)> = sqlx::query_as("SELECT id, n FROM t ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(rows, vec![(1, 2), (2, 2)]);
}

async fn open(broker: &TestBroker) -> lapin::Connection {
    broker::connect(&broker.url, "platform test").await.unwrap()
}

#[tokio::test]
async fn what_must_survive_a_node_is_on_quorum_queues_and_check_requests_are_transient() {
    let broker = TestBroker::new().unwrap();
    let connection = open(&broker).await;
    broker::declare_audit_topology(&connection).await.unwrap();
    broker::declare_bounce_topology(&connection).await.unwrap();
    broker::declare_settle_topology(&connection).await.unwrap();
    broker::declare_check_topology(&connection, "rspamd")
        .await
        .unwrap();
    // declaring again (every reconnect does) changes nothing
    broker::declare_audit_topology(&connection).await.unwrap();
    broker::declare_check_topology(&connection, "rspamd")
        .await
        .unwrap();
    for queue in [
        broker::AUDIT_QUEUE,
        broker::AUDIT_DEAD_LETTER_QUEUE,
        broker::BOUNCE_QUEUE,
        broker::BOUNCE_DEAD_LETTER_QUEUE,
        broker::SETTLE_QUEUE,
    ] {
        let info = broker.queue_info(queue).unwrap();
        assert_eq!(info["type"], "quorum", "{queue}: {info}");
        assert_eq!(info["durable"], true, "{queue}");
    }
    let archive = broker.queue_info(broker::AUDIT_QUEUE).unwrap();
    assert_eq!(
        archive["arguments"]["x-dead-letter-strategy"],
        "at-least-once"
    );
    let check = broker.queue_info(&broker::check_queue("rspamd")).unwrap();
    assert_eq!(check["type"], "classic", "{check}");
    assert_eq!(check["durable"], false, "{check}");
    broker::close(&connection, 200, "done").await;
}

#[tokio::test]
async fn an_older_classic_archive_queue_is_used_as_it_is() {
    let broker = TestBroker::new().unwrap();
    let connection = open(&broker).await;
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_declare(
            broker::AUDIT_QUEUE.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    broker::declare_audit_topology(&connection).await.unwrap();
    assert_eq!(
        broker.queue_info(broker::AUDIT_QUEUE).unwrap()["type"],
        "classic"
    );

    // and it still takes the events, confirmed
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    broker::publish_confirmed(
        &channel,
        broker::AUDIT_EXCHANGE,
        "",
        b"{}",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let got = channel
        .basic_get(broker::AUDIT_QUEUE.into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(got.is_some());
    broker::close(&connection, 200, "done").await;
}

#[tokio::test]
async fn an_event_no_consumer_can_take_goes_to_the_dead_letter_queue_after_the_delivery_limit() {
    let broker = TestBroker::new().unwrap();
    let connection = open(&broker).await;
    broker::declare_audit_topology(&connection).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    broker::publish_confirmed(
        &channel,
        broker::AUDIT_EXCHANGE,
        "",
        b"poison",
        BasicProperties::default(),
    )
    .await
    .unwrap();
    let mut deliveries = 0;
    while let Some(message) = channel
        .basic_get(
            broker::AUDIT_QUEUE.into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .unwrap()
    {
        deliveries += 1;
        assert!(
            deliveries <= broker::DELIVERY_LIMIT + 1,
            "never dead-lettered"
        );
        // as a consumer that crashes on it: back to the queue
        message
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: true })
            .await
            .unwrap();
    }
    assert!(deliveries >= broker::DELIVERY_LIMIT, "{deliveries}");
    let dead = test_support::eventually(WAIT, "the event dead-lettered", || async {
        channel
            .basic_get(
                broker::AUDIT_DEAD_LETTER_QUEUE.into(),
                BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(dead.delivery.data, b"poison");
    broker::close(&connection, 200, "done").await;
}
