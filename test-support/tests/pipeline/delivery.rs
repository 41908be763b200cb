//! Issue 20's delivery status, end to end: a real Postfix instance (its `maillog_file`, as
//! scripts/postfix-instance.sh configures it) delivers one message locally (sent), cannot reach
//! the relay of another (a closed port: deferred) and refuses the recipient of a third (an
//! unknown local user: bounced). `bounce-ingest maillog <file>` follows the log; the auditor
//! stores the delivery lines and its API shows each on its message (joined by queue id and host
//! name: the log's `mx` is myhostname's first label, the gateway's `mta_hostname` all of it),
//! and the search finds them by delivery status. Then the follower is run again from the start
//! (no state file): everything is published again and the table does not change.

use std::path::PathBuf;
use std::time::Duration;

use bounce_ingest::follow::{self, Source};
use platform::config::{Config, WebApiToken};
use serde_json::Value;
use test_support::eventually;
use test_support::postfix::{PostfixOptions, free_port};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{Extras, Pipeline};

const WAIT: Duration = Duration::from_secs(60);
const TOKEN: &str = "delivery-test-token-0123456789";

async fn message_id(pipeline: &Pipeline, subject: &str) -> (Uuid, String, String) {
    let pool = &pipeline.db.pool;
    eventually(WAIT, "the message's archive row", || async {
        sqlx::query_as::<_, (Uuid, String, String)>(
            "SELECT id, queue_id, mta_hostname FROM message WHERE subject = ?",
        )
        .bind(subject)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
    })
    .await
    .unwrap()
}

struct Web {
    base: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
}

impl Web {
    async fn start(config: &Config) -> Self {
        let mut config = config.clone();
        config.auditor.web_api_tokens.push(WebApiToken {
            name: "tests".into(),
            sha256: auditor::web::auth::token_sha256_hex(TOKEN),
            role: Default::default(),
            domains: Vec::new(),
        });
        let pool = auditor::store::connect_lazy(&config.database.url, 4).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        tokio::spawn(auditor::web::serve(
            listener,
            auditor::web::AppState::new(&config, pool),
            shutdown.clone(),
        ));
        Self {
            base,
            client: reqwest::Client::builder().no_proxy().build().unwrap(),
            shutdown,
        }
    }

    async fn get(&self, path: &str) -> Value {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap()
    }

    async fn page(&self, path: &str) -> String {
        self.client
            .get(format!("{}{path}", self.base))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for Web {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn follower(
    config: &Config,
    log: PathBuf,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(follow::run(
        config.clone(),
        Source::File(log),
        shutdown.clone(),
    ));
    (shutdown, task)
}

async fn row_count(pipeline: &Pipeline) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM message_delivery")
        .fetch_one(&pipeline.db.pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delivery_lines_of_a_real_postfix_are_joined_to_their_messages() {
    let closed_port = free_port().unwrap();
    let postfix = Box::new(move |_: &Config, _| PostfixOptions {
        main_cf_extra: vec![
            // smtpd accepts any local user; local(8) then bounces the unknown one
            "local_recipient_maps =".to_owned(),
            format!("transport_maps = inline:{{ slow.test=smtp:[127.0.0.1]:{closed_port} }}"),
        ],
        // a local domain (mydestination) needs an alias table
        aliases: vec!["postmaster: rcpt@mailbox.test".to_owned()],
        ..PostfixOptions::default()
    });
    let pipeline = Pipeline::start_with_extras(
        |_| {},
        Extras {
            postfix: Some(postfix),
            ..Extras::default()
        },
    )
    .await
    .unwrap();

    let cases = [
        ("deliver me", "rcpt@mailbox.test", "sent", "2.0.0"),
        ("defer me", "someone@slow.test", "deferred", "4.4.1"),
        (
            "bounce me",
            "nosuchuser@cluegetter.test",
            "bounced",
            "5.1.1",
        ),
    ];
    for (subject, to, _, _) in cases {
        let sent = pipeline
            .send(&[
                "--from",
                "sender@example.org",
                "--to",
                to,
                "--header",
                &format!("Subject: {subject}"),
            ])
            .await
            .unwrap();
        let reply = sent.data_reply().unwrap_or_default().to_owned();
        assert!(reply.starts_with("250"), "{reply}\n{}", sent.transcript);
    }
    let mut messages = Vec::new();
    for (subject, ..) in cases {
        messages.push(message_id(&pipeline, subject).await);
    }
    // the gateway records the whole {j}; Postfix's maillog_file writes its first label
    assert_eq!(messages[0].2, "mx.cluegetter.test");

    let dir = std::env::temp_dir().join(format!("cgt-delivery-{}", Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = Config::default();
    config.broker.url = pipeline.broker.url.as_str().into();
    config.database.url = pipeline.db.url.as_str().into();
    config.bounce_ingest.maillog_state_file = dir.join("maillog.state");
    config.bounce_ingest.maillog_poll_interval = Duration::from_millis(100);
    let log = pipeline.postfix.dir().join("postfix.log");
    let (stop, task) = follower(&config, log.clone());
    let web = Web::start(&config).await;

    let started = std::time::Instant::now();
    for ((id, queue_id, _), (subject, to, status, dsn)) in messages.iter().zip(cases) {
        let found = eventually(
            WAIT,
            &format!("the {status} line of {subject:?}"),
            || async {
                let detail = web.get(&format!("/api/v1/messages/{id}")).await;
                detail["deliveries"]
                    .as_array()
                    .and_then(|lines| lines.iter().find(|d| d["status"] == status).cloned())
            },
        )
        .await;
        let line = match found {
            Ok(line) => line,
            Err(error) => panic!(
                "{error} (queue id {queue_id})\nPostfix log:\n{}",
                pipeline.postfix.log()
            ),
        };
        assert_eq!(line["recipient"], to);
        assert_eq!(line["dsn"], dsn);
        assert!(!line["time"].as_str().unwrap_or_default().is_empty());
        let reason = line["reason"].as_str().unwrap_or_default();
        match status {
            "sent" => assert_eq!(reason, "delivered to mailbox"),
            "deferred" => assert!(reason.contains("Connection refused"), "{reason}"),
            _ => assert!(reason.contains("unknown user"), "{reason}"),
        }
    }
    let joined_in = started.elapsed();

    // the search: a delivery marker per message and the delivery filter
    let bounced = web.get("/api/v1/messages?delivery=bounced").await;
    let ids: Vec<&str> = bounced["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, [messages[2].0.hyphenated().to_string()]);
    assert_eq!(bounced["messages"][0]["delivery"]["bounced"], 1);
    let all = web.get("/api/v1/messages").await;
    for m in all["messages"].as_array().unwrap() {
        let counts = &m["delivery"];
        let total: u64 = ["sent", "deferred", "bounced", "expired"]
            .iter()
            .map(|k| counts[k].as_u64().unwrap_or(0))
            .sum();
        assert!(total >= 1, "{m}");
    }
    // the message page's Delivery table
    let page = web.page(&format!("/messages/{}", messages[1].0)).await;
    assert!(page.contains(r#"id="deliveries""#), "{page}");
    assert!(page.contains("someone@slow.test") && page.contains("deferred"));

    // the whole log published and recorded, and stored by the auditor
    let state_file = config.bounce_ingest.maillog_state_file.clone();
    let length = std::fs::metadata(&log).unwrap().len();
    eventually(WAIT, "the follower to record the whole log", || async {
        follow::load_position(&state_file)
            .ok()
            .flatten()
            .filter(|p| p.offset >= length)
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let rows = row_count(&pipeline).await;
    assert!(rows >= 3, "{rows}");

    // at least once: from the start again (no state), every line is published again, and the
    // table keeps one row per line
    std::fs::remove_file(&config.bounce_ingest.maillog_state_file).unwrap();
    let before = std::fs::metadata(&log).unwrap().len();
    let (stop, task) = follower(&config, log.clone());
    eventually(WAIT, "the follower to catch up again", || async {
        follow::load_position(&state_file)
            .ok()
            .flatten()
            .filter(|p| p.offset >= before)
    })
    .await
    .unwrap();
    // let the auditor consume what was published again
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    let again = row_count(&pipeline).await;
    assert!(again >= rows, "{again} < {rows}");
    assert_eq!(again, rows, "publishing the log again added rows");
    eprintln!(
        "delivery: 3 messages joined {joined_in:?} after the follower started; {rows} rows, \
         {again} after publishing the whole log again"
    );
    drop(web);
    pipeline.stop().await.unwrap();
    std::fs::remove_dir_all(dir).unwrap();
}
