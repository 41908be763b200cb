//! Date ranges over the whole DATETIME range (years 1000 to 9999): messages and bounces dated
//! past 2038 or before 1970 are stored, found by a range that covers them, and a range past
//! the ends of DATETIME is cut to them rather than matching nothing (issue 20).

use chrono::{DateTime, NaiveDate, Utc};
use reqwest::StatusCode;

use crate::web::{WebEnv, queue_ids, three_events};

fn at(year: i32) -> DateTime<Utc> {
    NaiveDate::from_ymd_opt(year, 6, 1)
        .and_then(|d| d.and_hms_opt(12, 0, 0))
        .unwrap()
        .and_utc()
}

#[tokio::test]
async fn message_and_bounce_ranges_work_from_the_year_1000_to_9999() {
    let env = WebEnv::new().await;
    let mut events = three_events();
    // QA1 in 9999, QB2 in 1000, QC3 an hour ago
    events[0].message.received_at = at(9999);
    events[0].session.connected_at = at(9999);
    events[1].message.received_at = at(1000);
    events[1].session.connected_at = at(1000);
    env.store(&events).await;
    let cases: &[(&str, &[&str])] = &[
        ("from=9999-01-01&to=9999-12-31", &["QA1"]),
        ("from=2039-01-01&to=9999-12-31T23:59:59", &["QA1"]),
        ("from=1000-01-01&to=1000-12-31", &["QB2"]),
        ("from=1000-01-01&to=1969-12-31", &["QB2"]),
        // past the ends of DATETIME: cut to them
        ("from=0001-01-01&to=1001-01-01", &["QB2"]),
        // without `to`: until now
        ("from=0999-12-31T23:00", &["QB2", "QC3"]),
        (
            "from=1000-01-01&to=9999-12-31T23:59:59",
            &["QA1", "QB2", "QC3"],
        ),
        // the recipient index's own date column, alone and with another filter
        (
            "recipient=two.example&from=9999-01-01&to=9999-12-31",
            &["QA1"],
        ),
        (
            "recipient=two.example&from=1000-01-01&to=1001-01-01",
            &["QB2"],
        ),
        (
            "recipient=two.example&verdict=reject&from=9999-01-01&to=9999-12-31",
            &["QA1"],
        ),
        (
            "recipient=erin%40two.example&from=1000-01-01&to=1001-01-01&ip=198.51.100.7",
            &["QB2"],
        ),
    ];
    for (query, expected) in cases {
        let json = env.api_json(&format!("/api/v1/messages?{query}")).await;
        assert_eq!(queue_ids(&json), *expected, "{query}");
    }
    let json = env
        .api_json("/api/v1/messages?from=9999-01-01&to=9999-12-31")
        .await;
    assert_eq!(json["messages"][0]["date"], "9999-06-01 12:00:00");
    let id = json["messages"][0]["id"].as_str().unwrap().to_owned();
    let message = env.api_json(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(message["date"], "9999-06-01 12:00:00");

    // the pages
    let session = env.login().await;
    let (status, html) = env
        .page(&session, "/messages?from=9999-01-01&to=9999-12-31")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("QA1") && !html.contains("QC3"), "{html}");
    let (status, html) = env
        .page(&session, "/messages?from=1000-01-01&to=1000-12-31")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("QB2") && !html.contains("QC3"), "{html}");

    // bounces dated by their reports' Date headers
    let store = auditor::store::bounce::BounceStore::new(env.db.pool.clone());
    for year in [1000, 9999] {
        let mut bounce = crate::bounces::bounce(at(year));
        bounce.report.recipients[0].final_recipient = Some(wire::contract::TypedValue::new(
            "rfc822",
            format!("y{year}@example.net"),
        ));
        store.write(&bounce).await.unwrap();
    }
    let recipients = |json: &serde_json::Value| -> Vec<String> {
        let mut list: Vec<String> = json["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["recipient"].as_str().unwrap().to_owned())
            .filter(|r| r.starts_with('y'))
            .collect();
        list.sort();
        list
    };
    for (query, expected) in [
        ("from=9999-01-01&to=9999-12-31", vec!["y9999@example.net"]),
        ("from=1000-01-01&to=1000-12-31", vec!["y1000@example.net"]),
        (
            "from=0001-01-01&to=9999-12-31T23:59:59",
            vec!["y1000@example.net", "y9999@example.net"],
        ),
        (
            "recipient=y9999%40example.net&from=2039-01-01",
            vec!["y9999@example.net"],
        ),
        (
            "status=5.1&from=1000-01-01&to=1001-01-01",
            vec!["y1000@example.net"],
        ),
    ] {
        let json = env.api_json(&format!("/api/v1/bounces?{query}")).await;
        assert_eq!(recipients(&json), expected, "{query}");
    }
    let (status, html) = env
        .page(&session, "/bounces?from=9999-01-01&to=9999-12-31")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("y9999@example.net"), "{html}");
    assert!(!html.contains("y1000@example.net"), "{html}");
}
