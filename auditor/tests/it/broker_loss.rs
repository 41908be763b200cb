//! A broker connection that is lost (here: closed by the broker on an operator's request) is
//! reopened; events published meanwhile are stored.

use std::process::Command;

use platform::broker::AUDIT_QUEUE;
use test_support::eventually;

use crate::support::{self, Env, WAIT};

/// The management API's names of the auditor's connections to `vhost`.
fn auditor_connections(vhost: &str) -> Vec<String> {
    let output = Command::new("curl")
        .args(["-s", "-u", "guest:guest"])
        .arg(format!(
            "http://127.0.0.1:15672/api/vhosts/{vhost}/connections"
        ))
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["client_properties"]["connection_name"] == "cluegetter-auditor")
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect()
}

/// Asks the broker to close a connection, as `rabbitmqctl close_connection` does.
fn close_connection(name: &str) {
    let status = Command::new("curl")
        .args(["-s", "-f", "-u", "guest:guest", "-X", "DELETE"])
        .arg(format!(
            "http://127.0.0.1:15672/api/connections/{}",
            name.replace(' ', "%20").replace('>', "%3E")
        ))
        .status()
        .unwrap();
    assert!(status.success(), "closed {name}");
}

#[tokio::test]
async fn a_lost_broker_connection_is_reopened() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let auditor = env.start_auditor();
    let before = support::event();
    publisher.publish_event(&before).await;
    env.wait_stored(before.message_id).await;

    let vhost = env.broker.vhost.clone();
    let first = eventually(WAIT, "the auditor's connection listed", || {
        let vhost = vhost.clone();
        async move {
            let names = tokio::task::spawn_blocking(move || auditor_connections(&vhost))
                .await
                .unwrap();
            names.into_iter().next()
        }
    })
    .await
    .unwrap();
    tokio::task::spawn_blocking({
        let first = first.clone();
        move || close_connection(&first)
    })
    .await
    .unwrap();

    let after = support::event();
    publisher.publish_event(&after).await;
    env.wait_stored(after.message_id).await;
    let vhost = env.broker.vhost.clone();
    eventually(WAIT, "a new auditor connection", || {
        let (vhost, first) = (vhost.clone(), first.clone());
        async move {
            let names = tokio::task::spawn_blocking(move || auditor_connections(&vhost))
                .await
                .unwrap();
            (!names.is_empty() && !names.contains(&first)).then_some(())
        }
    })
    .await
    .unwrap();
    auditor.stop().await;
    assert_eq!(publisher.ready(AUDIT_QUEUE).await, 0);
}
