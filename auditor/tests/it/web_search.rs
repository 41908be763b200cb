//! The search's conveniences against the real MariaDB: the free-text box, SASL logins by
//! prefix or domain, the ranges up to now (`last=`), the result count, the recipients in the
//! list and the values that filter when clicked.

use reqwest::StatusCode;

use crate::support;
use crate::web::{WebEnv, queue_ids, three_events};

#[tokio::test]
async fn free_text_sasl_prefixes_and_domains_and_the_last_hour() {
    let env = WebEnv::new().await;
    let mut events = three_events();
    // a SASL login with a domain, for the domain filter
    events[1].session.sasl_username = "carol@three.example".into();
    env.store(&events).await;
    let cases: &[(&str, &[&str])] = &[
        // the free text as each field in turn
        ("q=alice%40one.example", &["QA1"]),
        ("q=one.example", &["QA1"]),
        ("q=erin%40two.example", &["QB2"]),
        ("q=four.example", &["QB2"]),
        ("q=Lunch", &["QB2"]),
        ("q=50%25+off_", &["QA1"]),
        ("q=QC3", &["QC3"]),
        ("q=%3Cb2%40three.example%3E", &["QB2"]),
        ("q=b2%40three.example", &["QB2"]),
        ("q=198.51.100.7", &["QB2"]),
        ("q=2001%3Adb8%3A%3A%2F32", &["QC3"]),
        ("q=%C3%BCml%C3%A4ut", &[]),
        ("q=%27+OR+1%3D1+--", &[]),
        // with another filter: both must match
        ("q=two.example&verdict=reject", &["QA1"]),
        // SASL: exact, prefix, domain
        ("sasl=alice", &["QA1"]),
        ("sasl=ali*", &["QA1"]),
        ("sasl=a*", &["QA1"]),
        ("sasl=%40three.example", &["QB2"]),
        ("sasl=car*", &["QB2"]),
        ("sasl=%25*", &[]),
        // ranges up to now: QC3 is an hour older than the others
        ("last=1h", &["QA1", "QB2"]),
        ("last=7d", &["QA1", "QB2", "QC3"]),
    ];
    for (query, expected) in cases {
        let json = env.api_json(&format!("/api/v1/messages?{query}")).await;
        assert_eq!(queue_ids(&json), *expected, "{query}");
        assert_eq!(json["count"], expected.len(), "{query}");
    }
    for query in ["last=1y", "last=1h&from=2026-01-01", "q=%07"] {
        let (status, body) = env.api(&format!("/api/v1/messages?{query}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
    }
}

#[tokio::test]
async fn the_list_counts_shows_recipients_and_links_its_values_to_filters() {
    let env = WebEnv::new().await;
    let mut events = three_events();
    // more messages than a page
    for n in 0..7 {
        let mut e = support::event();
        e.message.queue_id = format!("QX{n}");
        e.message.recipients = (0..8).map(|r| format!("r{r}@many.example")).collect();
        events.push(e);
    }
    env.store(&events).await;
    let json = env.api_json("/api/v1/messages?per_page=3").await;
    assert_eq!(json["count"], 10);
    assert_eq!(json["count_capped"], false);
    assert_eq!(json["has_more"], true);
    let json = env.api_json("/api/v1/messages?per_page=3&page=2").await;
    assert_eq!(json["count"], 10);
    let json = env.api_json("/api/v1/messages?queue_id=QB2").await;
    assert_eq!(
        json["messages"][0]["recipients"],
        // by domain: the rejected one of support::event() too
        serde_json::json!(["x@example.net", "dave@four.example", "erin@two.example"])
    );
    let json = env.api_json("/api/v1/messages?queue_id=QX0").await;
    // the first five (the rejected one of support::event() too), by domain and address
    let listed = json["messages"][0]["recipients"].as_array().unwrap();
    assert_eq!(listed.len(), 5, "{listed:?}");

    let session = env.login().await;
    let (status, html) = env.page(&session, "/messages?per_page=3").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("10 messages"), "the count is shown");
    let (_, html) = env.page(&session, "/messages?queue_id=QB2").await;
    assert!(html.contains("1 message,"), "{html}");
    assert!(html.contains("x@example.net, dave@four.example, erin@two.example"));
    // sender, client address and login filter when clicked
    assert!(html.contains("href=\"/messages?sender=carol%40three.example&#38;queue_id=QB2\""));
    assert!(html.contains("href=\"/messages?ip=198.51.100.7&#38;queue_id=QB2\""));
    let (_, html) = env.page(&session, "/messages?queue_id=QA1").await;
    assert!(
        html.contains("href=\"/messages?sasl=alice&#38;queue_id=QA1\""),
        "{html}"
    );
    // the ranges up to now keep the other filters
    assert!(
        html.contains("href=\"/messages?queue_id=QA1&#38;last=1h\""),
        "{html}"
    );
    assert!(html.contains("last hour") && html.contains("7 days"));
    let (status, html) = env.page(&session, "/messages?last=today").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("QA1"));
}
