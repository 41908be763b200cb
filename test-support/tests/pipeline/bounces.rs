//! Issue 7's proof: Postfix configured as the README says (notify_classes, bounce and delay
//! notice recipients, delay_warning_time, the alias piping into `bounce-ingest submit`) writes
//! real delivery reports for a message the gateway accepted; they land in `bounce` /
//! `bounce_report`, linked to the message's archive row.
//!
//! - An unknown local user (`local_recipient_maps =`, so smtpd accepts it and local(8) bounces
//!   it): `bounce-ingest submit` hands the report straight to RabbitMQ.
//! - A destination that answers 4xx (an `smtp-sink -r RCPT` behind a transport map) with
//!   `delay_warning_time = 1s`: the delay report goes through `submit --via` to bounce-ingest's
//!   listener, so the listener and its spool are on the path too.
//!
//! local(8) runs the pipe as `nobody` (the alias file is root's), so it runs the real binary
//! that `cargo build --bins` put in this build's directory (scripts/test.sh builds it first).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};
use chrono::{DateTime, Utc};
use platform::config::Config;
use sqlx::Row as _;
use test_support::eventually;
use test_support::postfix::{PostfixOptions, free_port};
use uuid::Uuid;

use crate::{Extras, Pipeline};

const WAIT: Duration = Duration::from_secs(60);

/// What README "Bounce handling" puts in main.cf, with timers short enough for a test.
fn notify_lines() -> Vec<String> {
    [
        "notify_classes = resource, software, bounce, data, delay, protocol",
        "bounce_notice_recipient = bounce-processing",
        "delay_notice_recipient = bounce-processing",
        "delay_warning_time = 1s",
        "queue_run_delay = 1s",
        "minimal_backoff_time = 1s",
        "maximal_backoff_time = 2s",
    ]
    .map(str::to_owned)
    .to_vec()
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() {
                        newest(&path)
                    } else {
                        entry
                            .metadata()
                            .and_then(|m| m.modified())
                            .unwrap_or(SystemTime::UNIX_EPOCH)
                    }
                })
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// This build's `bounce-ingest` binary (this test runs from `target/<profile>/deps/`), refused
/// when it is missing or older than its sources.
fn bounce_ingest_binary() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let path = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot tell where the build's binaries are")?
        .join("bounce-ingest");
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
                path.display()
            )
        })?;
    let root = test_support::repo_root();
    for sources in ["bounce-ingest/src", "wire/src"] {
        if newest(&root.join(sources)) > built {
            bail!(
                "{} is older than {sources}: run `cargo build --bins` first",
                path.display()
            );
        }
    }
    Ok(path)
}

/// `smtp-sink` answering RCPT TO with 4xx, killed (it is our child) when dropped.
struct SoftRejectingSink {
    child: Child,
    port: u16,
}

impl SoftRejectingSink {
    fn start() -> Result<Self> {
        let port = free_port()?;
        let child = Command::new("smtp-sink")
            .args(["-u", "nobody", "-r", "RCPT"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("10")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("run smtp-sink (package postfix)")?;
        Ok(Self { child, port })
    }
}

impl Drop for SoftRejectingSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The archive row of the message with this Subject: (id, queue id).
async fn message_row(pipeline: &Pipeline, subject: &str) -> (Uuid, String) {
    let pool = &pipeline.db.pool;
    eventually(WAIT, "the message's archive row", || async {
        sqlx::query_as::<_, (Uuid, String)>("SELECT id, queue_id FROM message WHERE subject = ?")
            .bind(subject)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
    })
    .await
    .unwrap()
}

/// The bounce about `queue_id` with an `action` report, once stored and linked by the queue id
/// (a race with the audit event may link it by a weaker key first; the relinker upgrades it).
async fn linked_report(pipeline: &Pipeline, queue_id: &str, action: &str) -> sqlx::mysql::MySqlRow {
    let pool = &pipeline.db.pool;
    let found = eventually(WAIT, &format!("a linked '{action}' report"), || async {
        sqlx::query(
            "SELECT b.message, b.link, b.parse_status, b.kind, b.mta, b.sender, b.subject, \
                    b.cluegetter_id, b.source, b.messageId, b.arrival_date, b.raw, \
                    r.final_rcpt, r.status, r.action, r.diag_code, r.remote_mta, r.recipient, \
                    r.will_retry_until \
             FROM bounce b JOIN bounce_report r ON r.bounce = b.id \
             WHERE b.queueId = ? AND r.action = ? AND b.link = 'queue_id'",
        )
        .bind(queue_id)
        .bind(action)
        .fetch_optional(pool)
        .await
        .ok()
        .flatten()
    })
    .await;
    match found {
        Ok(row) => row,
        Err(error) => panic!(
            "{error}\nPostfix log:\n{}\nbounce rows: {:?}",
            pipeline.postfix.log(),
            sqlx::query_as::<_, (String, String, Option<String>)>(
                "SELECT queueId, parse_status, parse_reason FROM bounce"
            )
            .fetch_all(pool)
            .await
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_message_accepted_then_bounced_is_reported_and_linked_to_its_message() {
    let binary = bounce_ingest_binary().unwrap();
    let postfix = Box::new(move |config: &Config, _: Option<SocketAddr>| {
        let mut main_cf_extra = notify_lines();
        // smtpd accepts any local user; local(8) then bounces the unknown one
        main_cf_extra.push("local_recipient_maps =".to_owned());
        PostfixOptions {
            main_cf_extra,
            aliases: vec![format!(
                "bounce-processing: |\"env CLUEGETTER_BROKER__URL={} {} submit\"",
                config.broker.url.first(),
                binary.display()
            )],
            ..PostfixOptions::default()
        }
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

    let sent = pipeline
        .send(&[
            "--from",
            "sender@example.org",
            "--to",
            "nosuchuser@cluegetter.test",
            "--header",
            "Subject: bounce me",
        ])
        .await
        .unwrap();
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    assert!(reply.starts_with("250"), "{reply}\n{}", sent.transcript);
    let (message_id, queue_id) = message_row(&pipeline, "bounce me").await;

    let row = linked_report(&pipeline, &queue_id, "failed").await;
    assert_eq!(row.get::<Option<Uuid>, _>("message"), Some(message_id));
    assert_eq!(row.get::<String, _>("link"), "queue_id");
    assert_eq!(row.get::<String, _>("parse_status"), "parsed");
    assert_eq!(row.get::<String, _>("kind"), "delivery-status");
    assert_eq!(row.get::<String, _>("source"), "submit");
    assert_eq!(row.get::<String, _>("mta"), "dns; mx.cluegetter.test");
    assert_eq!(row.get::<String, _>("sender"), "rfc822; sender@example.org");
    assert_eq!(
        row.get::<String, _>("final_rcpt"),
        "rfc822; nosuchuser@cluegetter.test"
    );
    assert_eq!(
        row.get::<String, _>("recipient"),
        "nosuchuser@cluegetter.test"
    );
    assert_eq!(row.get::<String, _>("status"), "5.1.1");
    let diagnostic = row
        .get::<Option<String>, _>("diag_code")
        .unwrap_or_default();
    assert!(diagnostic.contains("unknown user"), "{diagnostic}");
    // the gateway's id header came back in the returned headers
    assert_eq!(
        row.get::<Option<Uuid>, _>("cluegetter_id"),
        Some(message_id)
    );
    assert!(row.get::<String, _>("messageId").starts_with('<'));
    assert!(
        row.get::<Option<DateTime<Utc>>, _>("arrival_date")
            .is_some()
    );
    let raw = row.get::<Vec<u8>, _>("raw");
    assert!(
        String::from_utf8_lossy(&raw).contains("message/delivery-status"),
        "the raw report is kept"
    );
    pipeline.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deferred_delivery_gives_a_delay_report_through_the_listener_linked_to_its_message() {
    let binary = bounce_ingest_binary().unwrap();
    let sink = SoftRejectingSink::start().unwrap();
    let sink_port = sink.port;
    let postfix = Box::new(move |_: &Config, listener: Option<SocketAddr>| {
        let mut main_cf_extra = notify_lines();
        main_cf_extra.push(format!(
            "transport_maps = inline:{{ slow.test=smtp:[127.0.0.1]:{sink_port} }}"
        ));
        let listener = listener.map(|a| a.to_string()).unwrap_or_default();
        PostfixOptions {
            main_cf_extra,
            aliases: vec![format!(
                "bounce-processing: |\"{} submit --via {listener}\"",
                binary.display()
            )],
            ..PostfixOptions::default()
        }
    });
    let pipeline = Pipeline::start_with_extras(
        |_| {},
        Extras {
            bounce_ingest: true,
            postfix: Some(postfix),
        },
    )
    .await
    .unwrap();

    let sent = pipeline
        .send(&[
            "--from",
            "sender@example.org",
            "--to",
            "someone@slow.test",
            "--header",
            "Subject: delay me",
        ])
        .await
        .unwrap();
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    assert!(reply.starts_with("250"), "{reply}\n{}", sent.transcript);
    let (message_id, queue_id) = message_row(&pipeline, "delay me").await;

    let row = linked_report(&pipeline, &queue_id, "delayed").await;
    assert_eq!(row.get::<Option<Uuid>, _>("message"), Some(message_id));
    assert_eq!(row.get::<String, _>("link"), "queue_id");
    assert_eq!(row.get::<String, _>("source"), "tcp");
    assert_eq!(row.get::<String, _>("parse_status"), "parsed");
    assert_eq!(
        row.get::<String, _>("final_rcpt"),
        "rfc822; someone@slow.test"
    );
    let status = row.get::<String, _>("status");
    assert!(status.starts_with("4."), "{status}");
    assert!(
        row.get::<String, _>("remote_mta").contains("127.0.0.1"),
        "{}",
        row.get::<String, _>("remote_mta")
    );
    assert!(
        row.get::<Option<DateTime<Utc>>, _>("will_retry_until")
            .is_some()
    );
    assert!(
        row.get::<String, _>("subject").contains("Delayed Mail"),
        "{}",
        row.get::<String, _>("subject")
    );
    pipeline.stop().await.unwrap();
    drop(sink);
}
