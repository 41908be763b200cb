//! An event becomes exactly the rows the web UI reads.

use chrono::{DateTime, Utc};
use uuid::Uuid;
use wire::Header;

use crate::support::{self, Env, count};

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct SessionRow {
    ip: String,
    ip_bin: Vec<u8>,
    port: Option<u16>,
    reverse_dns: String,
    helo: String,
    sasl_username: String,
    sasl_method: String,
    cipher_bits: Option<u16>,
}

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct RecipientRow {
    local: String,
    domain: String,
    status: String,
    count: u32,
    reason: Option<String>,
    /// `message_recipient.domain`, the copy for the domain-and-date index
    link_domain: String,
    date: DateTime<Utc>,
}

#[derive(Debug, sqlx::FromRow)]
struct ResultRow {
    module: String,
    verdict: String,
    score: f64,
    weighted_score: f64,
    duration: f64,
    verdict_msg: String,
    determinants: String,
    late: bool,
}

#[tokio::test]
async fn stores_an_event_with_its_session_recipients_headers_body_and_results() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let mut event = support::event();
    // a header longer than its BLOB column is cut, and the message says so
    event
        .message
        .headers
        .push(Header::new("X-Long", "y".repeat(70_000)));
    let body: Vec<u8> = (0..150_000_u32).map(|i| (i % 251) as u8).collect();
    event.message.body = Some(body.clone());
    event.message.body_size = body.len() as u64;
    let auditor = env.start_auditor();
    publisher.publish_event(&event).await;
    env.wait_stored(event.message_id).await;
    let pool = env.pool();
    let id = event.message_id.0;

    let message: (
        Uuid,
        String,
        String,
        DateTime<Utc>,
        u64,
        String,
        String,
        String,
    ) = sqlx::query_as(
        "SELECT session, queue_id, mta_hostname, date, body_size, body_hash, messageId, subject \
         FROM message WHERE id = ?",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        message,
        (
            event.session.session_id,
            "4jZB211qk4z6XPl".to_owned(),
            "mx.example.net".to_owned(),
            event.message.received_at,
            150_000,
            event.message.body_hash.clone(),
            "<abc.123@example.org>".to_owned(),
            "Grüße aus Köln".to_owned(),
        )
    );
    let sender: (String, String, u32) =
        sqlx::query_as("SELECT sender_local, sender_domain, rcpt_count FROM message WHERE id = ?")
            .bind(id)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(sender, ("alice".into(), "example.org".into(), 3));
    let verdict: (String, String, String, f64, f64, f64, f64) = sqlx::query_as(
        "SELECT CAST(verdict AS CHAR), CAST(applied AS CHAR), verdict_msg, rejectScore, \
         rejectScoreThreshold, tempfailScore, tempfailScoreThreshold FROM message WHERE id = ?",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        verdict,
        (
            "reject".into(),
            "permit".into(),
            "Spam detected".into(),
            6.25,
            5.0,
            0.5,
            8.0
        )
    );
    let flags: (bool, bool, Option<String>, bool, bool) = sqlx::query_as(
        "SELECT noop, whitelisted, failure, answered, headers_truncated FROM message WHERE id = ?",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(flags, (true, false, None, true, true));

    let session: SessionRow = sqlx::query_as(
        "SELECT ip, ip_bin, port, reverse_dns, helo, sasl_username, sasl_method, cipher_bits \
         FROM session WHERE id = ?",
    )
    .bind(event.session.session_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        session,
        SessionRow {
            ip: "192.0.2.10".into(),
            ip_bin: vec![192, 0, 2, 10],
            port: Some(40_000),
            reverse_dns: "client.example.org".into(),
            helo: "helo.example.org".into(),
            sasl_username: "alice".into(),
            sasl_method: "PLAIN".into(),
            cipher_bits: Some(256),
        }
    );
    let session_refs: (u64, String, String, DateTime<Utc>, Option<DateTime<Utc>>) = sqlx::query_as(
        "SELECT s.cluegetter_instance, c.hostname, c.daemon_name, s.date_connect, s.date_disconnect \
         FROM session s JOIN cluegetter_client c ON c.id = s.cluegetter_client WHERE s.id = ?",
    )
    .bind(event.session.session_id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(
        session_refs,
        (
            1,
            "mx.example.net".into(),
            "smtpd".into(),
            event.session.connected_at,
            None
        )
    );
    // the network search the UI does
    let in_network: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM session WHERE LENGTH(ip_bin) = 4 \
         AND ip_bin BETWEEN INET6_ATON('192.0.2.0') AND INET6_ATON('192.0.2.255')",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(in_network, 1);

    let recipients: Vec<RecipientRow> = sqlx::query_as(
        "SELECT r.local, r.domain, CAST(mr.status AS CHAR) AS status, mr.count, mr.reason, \
         mr.domain AS link_domain, mr.date \
         FROM message_recipient mr JOIN recipient r ON r.id = mr.recipient \
         WHERE mr.message = ? ORDER BY mr.status, r.local",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    let row = |local: &str, status: &str, count: u32, reason: Option<&str>| RecipientRow {
        local: local.into(),
        domain: "example.net".into(),
        status: status.into(),
        count,
        reason: reason.map(str::to_owned),
        link_domain: "example.net".into(),
        date: event.message.received_at,
    };
    assert_eq!(
        recipients,
        vec![
            row("bob", "accepted", 2, None),
            row("carol", "accepted", 1, None),
            row(
                "x",
                "rejected",
                1,
                Some(&event.message.rejected_recipients[0].reason)
            ),
        ]
    );

    let headers: Vec<(u32, Vec<u8>, Vec<u8>)> = sqlx::query_as(
        "SELECT sequence, name, body FROM message_header WHERE message = ? ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(headers.len(), event.message.headers.len());
    for (i, ((sequence, name, body), header)) in
        headers.iter().zip(&event.message.headers).enumerate()
    {
        assert_eq!(*sequence as usize, i);
        assert_eq!(name.as_slice(), header.name.as_bytes());
        if header.name == "X-Long" {
            assert_eq!(body.len(), 65_535, "cut to the BLOB column");
        } else {
            assert_eq!(body.as_slice(), header.value.as_bytes());
        }
    }

    let chunks: Vec<(u32, Vec<u8>)> = sqlx::query_as(
        "SELECT sequence, body FROM message_body WHERE message = ? ORDER BY sequence",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(chunks.len(), 3, "150 000 bytes in chunks of 65 535");
    let stored_body: Vec<u8> = chunks.iter().flat_map(|(_, b)| b.iter().copied()).collect();
    assert_eq!(stored_body, body);

    let results: Vec<ResultRow> = sqlx::query_as(
        "SELECT module, CAST(verdict AS CHAR) AS verdict, score, weighted_score, duration, \
         verdict_msg, determinants, late FROM message_result WHERE message = ? ORDER BY module",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(results.len(), 2);
    for (row, expected) in results.iter().zip(&event.results) {
        assert_eq!(row.module, expected.result.module);
        assert_eq!(row.verdict, expected.result.action.as_str());
        assert_eq!(row.score, expected.result.score);
        assert_eq!(row.weighted_score, expected.weighted_score);
        assert_eq!(row.duration, expected.result.duration);
        assert_eq!(row.verdict_msg, expected.result.message);
        let stored: serde_json::Value = serde_json::from_str(&row.determinants).unwrap();
        assert_eq!(stored, expected.result.determinants, "determinants intact");
        assert_eq!(row.late, expected.late);
    }

    auditor.stop().await;
    assert_eq!(
        publisher.ready(platform::broker::AUDIT_QUEUE).await,
        0,
        "acked"
    );
}

#[tokio::test]
async fn messages_of_one_session_share_its_row_and_fill_in_what_it_lacked() {
    let env = Env::new().await;
    let publisher = env.publisher().await;
    let mut first = support::event();
    first.instance = "submission".into();
    first.session.client_addr = Some("2001:db8::25".parse().unwrap());
    first.session.sasl_username = String::new();
    first.session.sasl_method = String::new();
    let mut second = support::event();
    second.instance = first.instance.clone();
    second.session = first.session.clone();
    second.session.sasl_username = "carol".into();
    second.session.sasl_method = "LOGIN".into();
    second.message.queue_id = "4jZB300000000Ab".into();

    let auditor = env.start_auditor();
    publisher.publish_event(&first).await;
    env.wait_stored(first.message_id).await;
    publisher.publish_event(&second).await;
    env.wait_stored(second.message_id).await;
    auditor.stop().await;

    let pool = env.pool();
    let sessions: Vec<(u64, Vec<u8>, String, String, String)> = sqlx::query_as(
        "SELECT cluegetter_instance, ip_bin, ip, sasl_username, sasl_method FROM session",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(sessions.len(), 1);
    let (instance, ip_bin, ip, sasl_username, sasl_method) = &sessions[0];
    assert_eq!(ip_bin.len(), 16);
    assert_eq!(ip, "2001:db8::25");
    assert_eq!(
        (sasl_username.as_str(), sasl_method.as_str()),
        ("carol", "LOGIN")
    );
    let name: String = sqlx::query_scalar("SELECT name FROM instance WHERE id = ?")
        .bind(instance)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(name, "submission", "a new instance name gets its row");
    let instances: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM instance")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(instances, 2);
    for id in [first.message_id, second.message_id] {
        assert_eq!(count(pool, "message", id).await, 1);
    }
    let recipients: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM recipient")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(recipients, 3, "both messages share the recipient rows");
}

/// A batch far larger than one statement of each table: written whole, sessions and recipient
/// addresses shared across its events, two spellings of one address (the database ignores
/// trailing spaces) counted as one link; written again, it changes nothing.
#[tokio::test]
async fn a_large_batch_is_stored_whole_and_a_second_time_changes_nothing() {
    use auditor::store::{Outcome, Store};

    let env = Env::new().await;
    let pool = env.pool();
    let mut events = Vec::new();
    for i in 0..300 {
        let mut event = support::event();
        if i % 2 == 1 {
            let previous: &wire::AuditEvent = &events[i - 1];
            event.session = previous.session.clone();
        }
        event.message.recipients = vec![
            format!("user{}@example.net", i % 7),
            format!("user{}@example.org", i % 5),
        ];
        events.push(event);
    }
    events[10].message.recipients = vec!["Bob @example.net".into(), "bob@example.net".into()];
    let batch: Vec<&wire::AuditEvent> = events.iter().collect();

    let mut store = Store::new(pool.clone());
    assert_eq!(
        store.write_batch(&batch).await.unwrap(),
        vec![Outcome::Stored; 300]
    );
    let tables = async || {
        let mut counts = Vec::new();
        for sql in [
            "SELECT COUNT(*) FROM message",
            "SELECT COUNT(*) FROM session",
            "SELECT COUNT(*) FROM message_header",
            "SELECT COUNT(*) FROM message_body",
            "SELECT COUNT(*) FROM message_result",
            "SELECT COUNT(*) FROM message_recipient",
            "SELECT COUNT(*) FROM recipient",
        ] {
            let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.unwrap();
            counts.push(n);
        }
        counts
    };
    let before = tables().await;
    // 4 headers, 1 body chunk, 2 results each; 2 links each plus the rejected x@example.net,
    // but one event's two spellings of bob are one link; 7 + 5 + x + bob addresses
    assert_eq!(before, vec![300, 150, 1200, 300, 600, 899, 14]);
    let (links, reason): (u32, Option<String>) = sqlx::query_as(
        "SELECT mr.count, mr.reason FROM message_recipient mr \
         JOIN recipient r ON r.id = mr.recipient WHERE mr.message = ? AND r.local = 'bob'",
    )
    .bind(events[10].message_id.0)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!((links, reason), (2, None));
    for event in [&events[0], &events[299]] {
        assert_eq!(count(pool, "message_header", event.message_id).await, 4);
    }

    assert_eq!(
        store.write_batch(&batch).await.unwrap(),
        vec![Outcome::Duplicate; 300]
    );
    assert_eq!(tables().await, before);
}
