//! GeoIP through a real Postfix, with client addresses and SASL logins presented by XCLIENT
//! (`swaks --xclient-addr … --xclient-login …`) and a MaxMind database the test writes
//! (TEST-NET-1 NL, TEST-NET-2 US, TEST-NET-3 CN): one login sends from NL, then US (delivered),
//! then CN (rejected, the three countries in the reply); another login from CN only is
//! delivered; once `window` has passed the first login's countries are forgotten and CN is
//! delivered. The archive keeps each session's country and ASN.

use std::path::PathBuf;
use std::time::Duration;

use test_support::{eventually, mmdb};

use crate::Pipeline;

/// Long enough for the first three messages to be sent within it.
const WINDOW: Duration = Duration::from_secs(8);

async fn send(
    pipeline: &Pipeline,
    login: &str,
    client: &str,
    subject: &str,
) -> (bool, String, String) {
    let subject_header = format!("Subject: {subject}");
    let sent = pipeline
        .send(&[
            "--from",
            login,
            "--to",
            "rcpt@mailbox.test",
            "--helo",
            "mail.example.org",
            "--xclient-addr",
            client,
            "--xclient-name",
            "[UNAVAILABLE]",
            "--xclient-login",
            login,
            "--header",
            &subject_header,
            "--body",
            "Sent from somewhere",
        ])
        .await
        .unwrap();
    let reply = sent.data_reply().unwrap_or_default().to_owned();
    (sent.success, reply, sent.transcript)
}

/// The archived session's (country, asn) of the message with this subject.
async fn session_geo(pipeline: &Pipeline, subject: &str) -> (Option<String>, Option<u32>) {
    pipeline.archived(subject).await.unwrap();
    sqlx::query_as(
        "SELECT s.country, s.asn FROM message m JOIN session s ON s.id = m.session \
         WHERE m.subject = ?",
    )
    .bind(subject)
    .fetch_one(&pipeline.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_login_from_a_third_country_is_rejected_until_the_window_passed() {
    let dir = std::env::temp_dir().join(format!("cgt-geoip-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let country: PathBuf = dir.join("country.mmdb");
    let asn: PathBuf = dir.join("asn.mmdb");
    std::fs::write(&country, mmdb::test_country_db()).unwrap();
    std::fs::write(&asn, mmdb::test_asn_db()).unwrap();
    let pipeline = Pipeline::start(|c| {
        c.rspamd.enabled = false;
        c.geoip.enabled = true;
        c.geoip.database = country.clone();
        c.geoip.asn_database = Some(asn.clone());
        c.geoip.window = WINDOW;
    })
    .await
    .unwrap();
    let alice = "alice@example.org";

    let (ok, reply, transcript) = send(&pipeline, alice, "192.0.2.10", "geo nl").await;
    assert!(ok, "{reply}\n{transcript}");
    let (ok, reply, transcript) = send(&pipeline, alice, "198.51.100.7", "geo us").await;
    assert!(ok, "{reply}\n{transcript}");
    let (ok, reply, transcript) = send(&pipeline, alice, "203.0.113.5", "geo cn").await;
    assert!(!ok, "{transcript}");
    assert_eq!(
        reply.split(" (").next().unwrap_or_default(),
        "550 5.7.1 login alice@example.org used from more than 2 countries within 8s: NL, US, CN",
        "{transcript}"
    );
    let (verdict, applied, _, _) = pipeline.archived("geo cn").await.unwrap();
    assert_eq!((verdict.as_str(), applied.as_str()), ("reject", "reject"));

    // Another login from CN only is fine.
    let (ok, reply, transcript) =
        send(&pipeline, "bob@example.org", "203.0.113.5", "geo bob").await;
    assert!(ok, "{reply}\n{transcript}");

    // The archive keeps each session's country and ASN.
    assert_eq!(
        session_geo(&pipeline, "geo nl").await,
        (Some("NL".into()), Some(64496))
    );
    assert_eq!(
        session_geo(&pipeline, "geo cn").await,
        (Some("CN".into()), Some(64498))
    );

    // After the window alice's countries are forgotten: CN is now her first.
    eventually(
        Duration::from_secs(30),
        "alice's countries to age out",
        || async {
            let young: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM geoip_login_country WHERE login = ? AND country <> '' \
             AND last_seen >= UTC_TIMESTAMP(6) - INTERVAL ? MICROSECOND",
            )
            .bind(alice)
            .bind(i64::try_from(WINDOW.as_micros()).unwrap())
            .fetch_one(&pipeline.db.pool)
            .await
            .ok()?;
            (young == 0).then_some(())
        },
    )
    .await
    .unwrap();
    let (ok, reply, transcript) = send(&pipeline, alice, "203.0.113.5", "geo cn later").await;
    assert!(ok, "{reply}\n{transcript}");
    let countries: Vec<String> = sqlx::query_scalar(
        "SELECT country FROM geoip_login_country WHERE login = ? AND country <> ''",
    )
    .bind(alice)
    .fetch_all(&pipeline.db.pool)
    .await
    .unwrap();
    assert_eq!(countries, ["CN"]);

    pipeline.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
