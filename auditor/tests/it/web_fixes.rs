//! Issue 20's defects of the web interface, each with its regression test: badges show what
//! counted, encoded words decoded and bidirectional controls shown, one error type (JSON for
//! `/api`, a page elsewhere, 503 while the database is away), the bounce list open-ended and
//! readable for unparseable reports, `auditor web add-user`.

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

use reqwest::StatusCode;
use test_support::eventually;
use wire::{Action, Header};

use crate::support;
use crate::web::{TOKEN, WebEnv, client, start_server, web_config};

/// rspamd suggests reject with every score: on a permitted message its result is a muted
/// badge and its "has been blocked" text is not shown; the quotas tempfail's reason reads as
/// the module now writes it.
#[tokio::test]
async fn badges_show_what_counted() {
    let env = WebEnv::new().await;
    let mut clean = support::event();
    clean.verdict.verdict = Action::Permit;
    clean.verdict.applied = Action::Permit;
    clean.verdict.noop = false;
    clean.verdict.reason = String::new();
    clean.results = vec![
        support::result(
            clean.message_id,
            "rspamd",
            Action::Reject,
            3.0,
            serde_json::json!({}),
            false,
        ),
        support::result(
            clean.message_id,
            "quotas",
            Action::Permit,
            0.0,
            serde_json::json!({}),
            false,
        ),
    ];
    clean.results[0].result.message =
        "Our system has detected … this message has been blocked.".into();
    let mut over = support::event();
    over.verdict.verdict = Action::Tempfail;
    over.verdict.applied = Action::Tempfail;
    over.verdict.noop = false;
    over.verdict.reason =
        "Exceeding quota, max of 1 messages per 60 seconds for sender 'a@b'".into();
    over.results = vec![support::result(
        over.message_id,
        "quotas",
        Action::Tempfail,
        100.0,
        serde_json::json!({}),
        false,
    )];
    over.results[0].result.message = over.verdict.reason.clone();
    env.store(&[clean.clone(), over.clone()]).await;

    let json = env
        .api_json(&format!("/api/v1/messages/{}", clean.message_id.0))
        .await;
    let results = json["results"].as_array().unwrap();
    let rspamd = results.iter().find(|r| r["module"] == "rspamd").unwrap();
    assert_eq!(rspamd["suggested"], "reject");
    assert_eq!(rspamd["counted_as"], "reject");
    assert_eq!(rspamd["gave_reason"], false);
    let quotas = results.iter().find(|r| r["module"] == "quotas").unwrap();
    assert_eq!(quotas["counted_as"], "permit");

    let session = env.login().await;
    let (status, html) = env
        .page(&session, &format!("/messages/{}", clean.message_id.0))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<span class=\"verdict muted\""), "{html}");
    assert!(
        !html.contains("<span class=\"verdict reject\""),
        "no red badge on a permitted message: {html}"
    );
    assert!(!html.contains("has been blocked"), "{html}");

    let (status, html) = env
        .page(&session, &format!("/messages/{}", over.message_id.0))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<span class=\"verdict tempfail\""), "{html}");
    assert!(
        html.contains("Reply text</th><td>Exceeding quota, max of 1 messages"),
        "{html}"
    );
    assert!(!html.contains("REJECT Policy reject"), "{html}");
}

/// `=?UTF-8?B?…?=` in Subject and From is decoded (list, page, API); a right-to-left override
/// is shown as a marked `<U+202E>`, never left to act.
#[tokio::test]
async fn encoded_words_are_decoded_and_bidi_controls_shown() {
    let env = WebEnv::new().await;
    let mut event = support::event();
    let subject = "=?UTF-8?B?R3LDvMOfZQ==?= aus =?ISO-8859-1?Q?K=F6ln?=";
    event.message.subject = subject.into();
    event.message.headers = vec![
        Header::new("Subject", subject),
        Header::new(
            "From",
            "=?UTF-8?Q?J=C3=BCrgen_M=C3=BCller?= <j@example.org>",
        ),
        Header::new("X-Note", "Invoice \u{202E}fdp.exe"),
    ];
    event.message.sender = "j@example.org".into();
    let mut bidi = support::event();
    bidi.message.subject = "Invoice \u{202E}fdp.exe".into();
    bidi.message.queue_id = "QBIDI".into();
    env.store(&[event.clone(), bidi.clone()]).await;

    let json = env
        .api_json("/api/v1/messages?sender=j%40example.org")
        .await;
    assert_eq!(json["messages"][0]["subject"], "Grüße aus Köln");
    let json = env
        .api_json(&format!("/api/v1/messages/{}", event.message_id.0))
        .await;
    assert_eq!(json["subject"], "Grüße aus Köln");
    assert_eq!(
        json["headers"][0]["value"], subject,
        "the API keeps the value as received"
    );
    assert_eq!(json["headers"][0]["decoded"], "Grüße aus Köln");
    assert_eq!(
        json["headers"][1]["decoded"],
        "Jürgen Müller <j@example.org>"
    );

    let session = env.login().await;
    let (_, html) = env.page(&session, "/messages?sender=j%40example.org").await;
    assert!(html.contains("Grüße aus Köln"), "{html}");
    let (_, html) = env
        .page(&session, &format!("/messages/{}", event.message_id.0))
        .await;
    assert!(
        html.contains("Jürgen Müller &#60;j@example.org&#62;"),
        "{html}"
    );
    assert!(
        html.contains("Invoice <span class=bidi>&lt;U+202E&gt;</span>fdp.exe"),
        "{html}"
    );
    assert!(!html.contains('\u{202E}'), "no override reaches the page");
    let (_, html) = env.page(&session, "/messages?queue_id=QBIDI").await;
    assert!(
        html.contains("<span class=bidi>&lt;U+202E&gt;</span>"),
        "{html}"
    );
    assert!(!html.contains('\u{202E}'));
}

/// Failures are written one way: JSON under /api, a page elsewhere; axum's own text never
/// leaks (a repeated parameter, an unknown method, an unknown route).
#[tokio::test]
async fn every_failure_is_json_for_the_api_and_a_page_elsewhere() {
    let env = WebEnv::new().await;
    for (path, status) in [
        ("/api/v1/nope", StatusCode::NOT_FOUND),
        ("/api/v1/messages?page=1&page=2", StatusCode::BAD_REQUEST),
        ("/api/v1/messages/not-a-uuid", StatusCode::NOT_FOUND),
        ("/api/v1/bounces/x", StatusCode::NOT_FOUND),
    ] {
        let response = env
            .client
            .get(env.url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert_eq!(
            response.headers()["content-type"],
            "application/json",
            "{path}"
        );
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["status"], status.as_u16(), "{path}");
        assert!(json["error"].is_string(), "{path}: {json}");
    }
    let response = env
        .client
        .post(env.url("/api/v1/messages"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    let json: serde_json::Value = response.json().await.unwrap();
    assert_eq!(json["error"], "Method Not Allowed");
    // unauthenticated API calls: JSON 401 with the challenge
    let response = env
        .client
        .get(env.url("/api/v1/messages"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    assert_eq!(response.headers()["content-type"], "application/json");

    let session = env.login().await;
    for (path, status) in [
        ("/no/such/page", StatusCode::NOT_FOUND),
        ("/messages/not-a-uuid", StatusCode::NOT_FOUND),
    ] {
        let response = env
            .client
            .get(env.url(path))
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), status, "{path}");
        assert!(
            response.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(response.headers().contains_key("content-security-policy"));
        let html = response.text().await.unwrap();
        assert!(html.contains("id=\"error-status\""), "{path}: {html}");
    }
    // a repeated parameter of the login form: our 400, not axum's "Failed to deserialize"
    let response = env
        .client
        .get(env.url("/login?next=%2Fa&next=%2Fb"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    let html = response.text().await.unwrap();
    assert!(html.contains("duplicate field `next`"), "{html}");
    assert!(!html.contains("Failed to deserialize"), "{html}");
    // a form axum cannot read
    let response = env
        .client
        .post(env.url("/login"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let html = response.text().await.unwrap();
    assert!(
        html.contains("Unsupported Media Type") && !html.contains("Expected request"),
        "{html}"
    );
}

/// The database away: token calls and sessions alike get 503 with Retry-After, JSON for the
/// API, a page elsewhere; the login form still shows.
#[tokio::test]
async fn with_the_database_away_the_web_answers_503() {
    test_support::init_test_logging();
    let (addr, web) = start_server("mysql://root@127.0.0.1:1/cluegetter", &web_config(true)).await;
    let client = client();
    let url = |path: &str| format!("http://{addr}{path}");
    for path in ["/api/v1/messages", "/api/v1/bounces", "/api/v1/stats"] {
        let response = client
            .get(url(path))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(response.headers()["retry-after"], "5");
        assert_eq!(response.headers()["content-type"], "application/json");
        let json: serde_json::Value = response.json().await.unwrap();
        assert_eq!(json["status"], 503);
    }
    let session = format!("cg_session={}", "ab".repeat(32));
    let response = client
        .get(url("/messages"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let response = client
        .get(url("/api/v1/messages"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["content-type"], "application/json");
    assert_eq!(
        client.get(url("/login")).send().await.unwrap().status(),
        StatusCode::OK
    );
    web.cancel();
}

/// The real binary with the database down at start: the web port opens anyway and answers 503
/// while the consumer waits for the database.
#[tokio::test]
async fn the_auditor_opens_the_web_port_while_the_database_is_down_at_start() {
    let env = support::Env::new().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = std::env::temp_dir().join(format!("auditor-web-down-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("cluegetter.toml");
    std::fs::write(
        &config,
        format!(
            "[broker]\nurl = \"{}\"\n[database]\nurl = \"mysql://root@127.0.0.1:1/cluegetter\"\n\
             [auditor]\nmetrics-listen = \"127.0.0.1:0\"\nweb-listen = \"127.0.0.1:{port}\"\n\
             [[auditor.web-api-tokens]]\nname = \"t\"\nsha256 = \"{}\"\n",
            env.broker.url,
            auditor::web::auth::token_sha256_hex(TOKEN)
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["--config", config.to_str().unwrap(), "run"])
        .env_remove("CLUEGETTER_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = client();
    let status = eventually(Duration::from_secs(30), "the web port answers", || {
        let client = client.clone();
        async move {
            let response = client
                .get(format!("http://127.0.0.1:{port}/api/v1/messages"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .ok()?;
            Some(response.status())
        }
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let exited = child.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.unwrap(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(exited.success(), "{exited:?}");
}

/// A report dated in the future by its own Date header is listed by default; a report that
/// could not be parsed says so instead of showing a blank row.
#[tokio::test]
async fn the_bounce_list_shows_future_and_unparseable_reports() {
    let env = WebEnv::new().await;
    let store = auditor::store::bounce::BounceStore::new(env.db.pool.clone());
    let mut future = crate::bounces::bounce(support::now() + chrono::Duration::days(400));
    future.report.recipients[0].final_recipient = Some(wire::contract::TypedValue::new(
        "rfc822",
        "future@example.net",
    ));
    let mut broken = crate::bounces::bounce(support::now());
    broken.report.status = wire::contract::ParseStatus::Unparseable;
    broken.report.problems = vec!["no message/delivery-status part".into()];
    broken.report.recipients.clear();
    broken.report.subject = "Mail delivery failed".into();
    for event in [&future, &broken] {
        store.write(event).await.unwrap();
    }
    let json = env.api_json("/api/v1/bounces").await;
    let reports = json["reports"].as_array().unwrap();
    assert!(
        reports
            .iter()
            .any(|r| r["recipient"] == "future@example.net"),
        "{json}"
    );
    let unreadable = reports
        .iter()
        .find(|r| r["parse_status"] == "unparseable")
        .unwrap();
    assert_eq!(
        unreadable["parse_reason"],
        "no message/delivery-status part"
    );
    assert_eq!(unreadable["subject"], "Mail delivery failed");
    let session = env.login().await;
    let (status, html) = env.page(&session, "/bounces").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("future@example.net"), "{html}");
    assert!(
        html.contains("no recipient could be read: no message/delivery-status part"),
        "{html}"
    );
    assert!(html.contains("report: Mail delivery failed"), "{html}");
}

/// `auditor web add-user NAME` prints a block the configuration loads, with a hash the login
/// accepts; the password comes from stdin when that is not a terminal.
#[test]
fn add_user_prints_a_block_the_configuration_takes() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["web", "add-user", "post\"master", "--role", "admin"])
        .env_remove("CLUEGETTER_CONFIG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{}\n", crate::web::PASSWORD).as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let block = String::from_utf8(output.stdout).unwrap();
    assert!(block.contains("[[auditor.web-users]]"), "{block}");
    let dir = std::env::temp_dir().join(format!("auditor-add-user-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("cluegetter.toml");
    std::fs::write(
        &path,
        format!("[auditor]\nweb-cookie-secure = false\n{block}"),
    )
    .unwrap();
    let config = platform::config::load(Some(&path), Default::default()).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(config.auditor.web_users[0].name, "post\"master");
    let auth = auditor::web::auth::Auth::from_config(&config.auditor);
    assert!(!auth.has_no_users());
    // refused names
    for bad in ["", " pm", "a\tb"] {
        let status = Command::new(env!("CARGO_BIN_EXE_auditor"))
            .args(["web", "add-user", bad])
            .env_remove("CLUEGETTER_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!status.success(), "{bad:?}");
    }
}
