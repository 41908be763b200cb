//! The web interface and JSON API against the real MariaDB: events are written by the
//! auditor's own `Store` (or its consumer, in the browser test), the server runs in-process on
//! a port of its own, and requests go over real HTTP (reqwest).

use std::net::SocketAddr;
use std::time::Duration;

use platform::config::{AuditorConfig, Config, WebApiToken, WebUser};
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, LOCATION, SET_COOKIE};
use test_support::TestDb;
use tokio_util::sync::CancellationToken;
use wire::{AuditEvent, Header};

use crate::support;

pub const USER: &str = "postmaster";
pub const PASSWORD: &str = "correct horse battery staple";
pub const TOKEN: &str = "test-token-0123456789";

pub const XSS_SCRIPT: &str = "<script>alert('xss')</script>";
pub const XSS_IMG: &str = "\"><img src=x onerror=alert(1)>";

/// A migrated database, a running web server and an HTTP client that does not follow redirects.
pub struct WebEnv {
    pub db: TestDb,
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub config: Config,
    shutdown: CancellationToken,
}

impl Drop for WebEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn web_config(with_users: bool) -> AuditorConfig {
    let mut config = AuditorConfig::default();
    if with_users {
        config.web_users.push(WebUser {
            name: USER.into(),
            password_hash: auditor::web::hash_password(PASSWORD).unwrap(),
        });
        config.web_api_tokens.push(WebApiToken {
            name: "tests".into(),
            sha256: auditor::web::auth::token_sha256_hex(TOKEN),
        });
    }
    config
}

impl WebEnv {
    pub async fn new() -> Self {
        Self::with_config(web_config(true)).await
    }

    pub async fn with_config(config: AuditorConfig) -> Self {
        Self::with_full_config(full_config(config)).await
    }

    /// With the whole configuration (`[quotas] reservation-ttl` is read too).
    pub async fn with_full_config(config: Config) -> Self {
        test_support::init_test_logging();
        let db = TestDb::empty().await.unwrap();
        auditor::migrate(&db.url).await.unwrap();
        Self::serve_full(db, config).await
    }

    pub async fn serve_full(db: TestDb, config: Config) -> Self {
        let (addr, shutdown) = start_full_server(&db.url, &config).await;
        Self {
            db,
            addr,
            client: client(),
            config,
            shutdown,
        }
    }

    /// Stops this web server and starts a new one (a new process, as far as the web interface
    /// is concerned: nothing in memory survives) over the same database, with `config`.
    pub async fn restart(&mut self, config: Config) {
        self.shutdown.cancel();
        let (addr, shutdown) = start_full_server(&self.db.url, &config).await;
        self.addr = addr;
        self.shutdown = shutdown;
        self.config = config;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Writes events with the auditor's own store.
    pub async fn store(&self, events: &[AuditEvent]) {
        let mut store = auditor::store::Store::new(self.db.pool.clone());
        let refs: Vec<&AuditEvent> = events.iter().collect();
        let outcomes = store.write_batch(&refs).await.unwrap();
        assert!(
            outcomes
                .iter()
                .all(|o| *o == auditor::store::Outcome::Stored),
            "{outcomes:?}"
        );
    }

    /// GET with the API token; (status, body).
    pub async fn api(&self, path_and_query: &str) -> (StatusCode, String) {
        let response = self
            .client
            .get(self.url(path_and_query))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn api_json(&self, path_and_query: &str) -> serde_json::Value {
        let (status, body) = self.api(path_and_query).await;
        assert_eq!(status, StatusCode::OK, "{path_and_query}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// Logs in through the form; returns the session cookie (`cg_session=...`).
    pub async fn login(&self) -> Session {
        let (csrf_cookie, csrf) = self.login_form().await;
        let response = self
            .post_form(
                "/login",
                Some(&csrf_cookie),
                &[
                    ("user", USER),
                    ("password", PASSWORD),
                    ("csrf", &csrf),
                    ("next", "/messages"),
                ],
            )
            .await;
        assert_eq!(response.status(), StatusCode::SEE_OTHER);
        let cookie = set_cookie(response.headers(), "cg_session").unwrap();
        Session { cookie }
    }

    /// GET /login: (the CSRF cookie as `name=value`, the form's token).
    pub async fn login_form(&self) -> (String, String) {
        let response = self.client.get(self.url("/login")).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let cookie = set_cookie(response.headers(), "cg_login_csrf").unwrap();
        let html = response.text().await.unwrap();
        (cookie, hidden_value(&html, "csrf").unwrap())
    }

    pub async fn post_form(
        &self,
        path: &str,
        cookie: Option<&str>,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut request = self
            .client
            .post(self.url(path))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(fields).unwrap());
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send().await.unwrap()
    }

    pub async fn page(&self, session: &Session, path: &str) -> (StatusCode, String) {
        let response = self
            .client
            .get(self.url(path))
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap();
        (response.status(), response.text().await.unwrap())
    }
}

/// The defaults with this `[auditor]` section.
pub fn full_config(auditor: AuditorConfig) -> Config {
    Config {
        auditor,
        ..Config::default()
    }
}

/// The web server on a port of its own over the database at `url`; cancel the token to stop it.
pub async fn start_server(url: &str, config: &AuditorConfig) -> (SocketAddr, CancellationToken) {
    start_full_server(url, &full_config(config.clone())).await
}

/// [`start_server`] with the whole configuration.
pub async fn start_full_server(url: &str, config: &Config) -> (SocketAddr, CancellationToken) {
    let pool = auditor::store::connect_lazy(&url.into(), 4).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    tokio::spawn(auditor::web::serve(
        listener,
        auditor::web::AppState::new(config, pool),
        shutdown.clone(),
    ));
    (addr, shutdown)
}

pub struct Session {
    pub cookie: String,
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// `name=value` of the Set-Cookie header for `name`, with its attributes checked.
pub fn set_cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{name}=")))
        .map(|v| {
            assert!(v.contains("HttpOnly"), "{v}");
            assert!(v.contains("SameSite=Strict"), "{v}");
            v.split(';').next().unwrap().to_owned()
        })
}

/// The value of `<input type="hidden" name="NAME" value="...">`.
pub fn hidden_value(html: &str, name: &str) -> Option<String> {
    let marker = format!("name=\"{name}\" value=\"");
    let start = html.find(&marker)? + marker.len();
    let end = html[start..].find('"')? + start;
    Some(html[start..end].to_owned())
}

/// An event whose header, subject and determinants are hostile.
pub fn hostile_event() -> AuditEvent {
    let mut event = support::event();
    event
        .message
        .headers
        .push(Header::new("X-Evil", format!("{XSS_SCRIPT}{XSS_IMG}")));
    event.message.headers.push(Header::new(XSS_IMG, "name too"));
    event.message.subject = format!("hi {XSS_SCRIPT}");
    event.results[0].result.determinants = serde_json::json!({
        "symbols": { XSS_SCRIPT: { "description": XSS_IMG } },
        "note": XSS_SCRIPT,
    });
    event.results[0].result.message = XSS_IMG.into();
    event.verdict.reason = XSS_SCRIPT.into();
    event
}

fn assert_inert(html: &str) {
    assert!(!html.contains("<script"), "raw <script> in the page");
    assert!(!html.contains("<img"), "raw <img> in the page");
    // the text `onerror=alert(1)` may show, escaped, but never inside a tag of its own
}

/// Every guarded route, with something in each path parameter.
pub const PAGES: &[&str] = &[
    "/",
    "/messages",
    "/messages?sender=a%40b.c",
    "/messages/0190a5c8-0000-7000-8000-000000000000",
    "/bounces",
    "/bounces/1",
    "/quotas",
    "/quotas?selector=sender&value=a%40b.c",
    "/stats",
    "/no/such/page",
];
pub const APIS: &[&str] = &[
    "/api/openapi.json",
    "/api/v1/messages",
    "/api/v1/messages/0190a5c8-0000-7000-8000-000000000000",
    "/api/v1/bounces",
    "/api/v1/bounces/1",
    "/api/v1/quotas?selector=sender&value=a",
    "/api/v1/stats",
];

#[tokio::test]
async fn unauthenticated_requests_get_a_redirect_or_401_everywhere() {
    let env = WebEnv::new().await;
    for path in PAGES {
        let response = env.client.get(env.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        let location = response.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with("/login?next="), "{path}: {location}");
        // a bogus session cookie is no better
        let response = env
            .client
            .get(env.url(path))
            .header("cookie", "cg_session=00ff")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
    }
    for path in APIS {
        let response = env.client.get(env.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
        let response = env
            .client
            .get(env.url(path))
            .bearer_auth("not-the-token")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{path}");
    }
    let response = env.post_form("/logout", None, &[("csrf", "x")]).await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    // no debug endpoints, public or not
    for path in ["/debug/pprof/", "/metrics"] {
        let response = env.client.get(env.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::SEE_OTHER, "{path}");
        let (status, _) = env.api(path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
    }
    // the public ones carry the security headers
    for path in ["/login", "/style.css", "/favicon.svg", "/favicon.ico"] {
        let response = env.client.get(env.url(path)).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        let csp = response.headers()["content-security-policy"]
            .to_str()
            .unwrap();
        assert!(csp.contains("default-src 'none'"), "{csp}");
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert_eq!(response.headers()["x-content-type-options"], "nosniff");
        assert_eq!(response.headers()["x-frame-options"], "DENY");
    }
}

#[tokio::test]
async fn login_needs_the_password_and_the_csrf_token_and_logout_ends_the_session() {
    let env = WebEnv::new().await;
    let (csrf_cookie, csrf) = env.login_form().await;
    // no CSRF cookie, or a token that is not the cookie's: 403
    let response = env
        .post_form(
            "/login",
            None,
            &[("user", USER), ("password", PASSWORD), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let response = env
        .post_form(
            "/login",
            Some(&csrf_cookie),
            &[("user", USER), ("password", PASSWORD), ("csrf", "forged")],
        )
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    // a wrong password or user: 401, no session
    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD)] {
        let response = env
            .post_form(
                "/login",
                Some(&csrf_cookie),
                &[("user", user), ("password", password), ("csrf", &csrf)],
            )
            .await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(set_cookie(response.headers(), "cg_session").is_none());
    }
    // an off-site `next` is not followed
    let response = env
        .post_form(
            "/login",
            Some(&csrf_cookie),
            &[
                ("user", USER),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", "//evil.example/"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()[LOCATION], "/messages");
    let session = Session {
        cookie: set_cookie(response.headers(), "cg_session").unwrap(),
    };
    let (status, html) = env.page(&session, "/messages").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains(USER));
    let logout_csrf = hidden_value(&html, "csrf").unwrap();
    // logout without the session's token: refused, session alive
    let response = env
        .post_form("/logout", Some(&session.cookie), &[("csrf", &csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    assert_eq!(env.page(&session, "/messages").await.0, StatusCode::OK);
    let response = env
        .post_form("/logout", Some(&session.cookie), &[("csrf", &logout_csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        env.page(&session, "/messages").await.0,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn without_users_the_ui_starts_but_refuses_every_login() {
    let env = WebEnv::with_config(web_config(false)).await;
    let (cookie, csrf) = env.login_form().await;
    let response = env
        .post_form(
            "/login",
            Some(&cookie),
            &[("user", USER), ("password", PASSWORD), ("csrf", &csrf)],
        )
        .await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("No users are configured")
    );
}

/// Three messages that differ in every searchable part.
pub fn three_events() -> Vec<AuditEvent> {
    let mut a = support::event();
    a.message.sender = "alice@one.example".into();
    a.message.recipients = vec!["bob@two.example".into()];
    a.message.queue_id = "QA1".into();
    a.message.message_id_header = "<a1@one.example>".into();
    a.message.subject = "Invoice 50% off_now".into();
    a.session.client_addr = Some("192.0.2.10".parse().unwrap());
    a.session.sasl_username = "alice".into();
    a.verdict.verdict = wire::Action::Reject;

    let mut b = support::event();
    b.message.sender = "carol@three.example".into();
    b.message.recipients = vec!["dave@four.example".into(), "erin@two.example".into()];
    b.message.queue_id = "QB2".into();
    b.message.message_id_header = "<b2@three.example>".into();
    b.message.subject = "Lunch".into();
    b.session.client_addr = Some("198.51.100.7".parse().unwrap());
    b.session.sasl_username = String::new();
    b.verdict.verdict = wire::Action::Permit;
    b.results.truncate(0);
    b.results.push(support::result(
        b.message_id,
        "clamav",
        wire::Action::Permit,
        0.0,
        serde_json::json!({}),
        false,
    ));
    // the geoip module's lookup of the client, kept with the session
    b.results.push(support::result(
        b.message_id,
        "geoip",
        wire::Action::Permit,
        0.0,
        serde_json::json!({ "country": "US", "asn": 64497, "skipped": "no SASL login" }),
        false,
    ));

    let mut c = support::event();
    c.message.sender = "<>".into();
    c.message.recipients = vec!["frank@two.example".into()];
    c.message.queue_id = "QC3".into();
    c.message.message_id_header = "<c3@x>".into();
    c.message.subject = "Undeliverable".into();
    c.session.client_addr = Some("2001:db8::25".parse().unwrap());
    c.session.sasl_username = String::new();
    c.verdict.verdict = wire::Action::Tempfail;
    c.results.truncate(0);
    // an hour older than the others
    c.message.received_at = support::now() - chrono::Duration::hours(1);
    vec![a, b, c]
}

pub fn queue_ids(json: &serde_json::Value) -> Vec<String> {
    let mut ids: Vec<String> = json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["queue_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn every_search_filter_finds_exactly_its_messages() {
    let env = WebEnv::new().await;
    env.store(&three_events()).await;
    let cases: &[(&str, &[&str])] = &[
        ("", &["QA1", "QB2", "QC3"]),
        ("sender=ALICE%40one.example", &["QA1"]),
        ("sender=%40three.example", &["QB2"]),
        ("sender=three.example", &["QB2"]),
        ("sender=%3C%3E", &["QC3"]),
        ("recipient=two.example", &["QA1", "QB2", "QC3"]),
        ("recipient=dave%40four.example", &["QB2"]),
        ("recipient=%40four.example", &["QB2"]),
        // a recipient with another filter takes the general query, alone the recipient index
        ("recipient=two.example&verdict=reject", &["QA1"]),
        (
            "recipient=two.example&sort=queue_id",
            &["QA1", "QB2", "QC3"],
        ),
        (
            "recipient=erin%40two.example&ip=198.51.100.0%2F24",
            &["QB2"],
        ),
        ("ip=192.0.2.10", &["QA1"]),
        ("ip=192.0.2.0%2F24", &["QA1"]),
        ("ip=198.51.0.0%2F16", &["QB2"]),
        ("ip=2001%3Adb8%3A%3A%2F32", &["QC3"]),
        ("ip=0.0.0.0%2F0", &["QA1", "QB2"]),
        ("sasl=alice", &["QA1"]),
        ("country=us", &["QB2"]),
        ("country=US&ip=198.51.100.7", &["QB2"]),
        ("country=CN", &[]),
        ("queue_id=QB2", &["QB2"]),
        ("message_id=%3Cb2%40three.example%3E", &["QB2"]),
        ("message_id=b2%40three.example", &["QB2"]),
        ("subject=50%25+off_", &["QA1"]),
        ("subject=lunch", &["QB2"]),
        ("verdict=reject", &["QA1"]),
        ("verdict=tempfail", &["QC3"]),
        ("module=rspamd", &["QA1"]),
        ("module=clamav", &[]),
        ("instance=default", &["QA1", "QB2", "QC3"]),
        ("instance=other", &[]),
        ("sender=alice%40one.example&verdict=permit", &[]),
    ];
    for (query, expected) in cases {
        let json = env.api_json(&format!("/api/v1/messages?{query}")).await;
        assert_eq!(queue_ids(&json), *expected, "{query}");
    }
    // the country is shown with the session, linked to the search
    let json = env.api_json("/api/v1/messages?country=US").await;
    let id = json["messages"][0]["id"].as_str().unwrap().to_owned();
    let message = env.api_json(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(message["session"]["country"], "US");
    assert_eq!(message["session"]["asn"], 64497);
    let session = env.login().await;
    let (status, html) = env.page(&session, &format!("/messages/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<a href=\"/messages?country=US\">US</a> (AS64497)"),
        "{html}"
    );
    let (status, _) = env.page(&session, "/messages?country=USA").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // the date range: the last 30 minutes leave out the older one
    let from = (chrono::Utc::now() - chrono::Duration::minutes(30))
        .format("%Y-%m-%dT%H:%M")
        .to_string();
    let json = env.api_json(&format!("/api/v1/messages?from={from}")).await;
    assert_eq!(queue_ids(&json), ["QA1", "QB2"]);
    let json = env
        .api_json("/api/v1/messages?from=2000-01-01&to=2000-01-02")
        .await;
    assert_eq!(queue_ids(&json), Vec::<String>::new());
    // paging and sorting
    let json = env
        .api_json("/api/v1/messages?per_page=2&sort=queue_id&dir=asc")
        .await;
    assert_eq!(json["has_more"], true);
    let first: Vec<&str> = json["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["queue_id"].as_str().unwrap())
        .collect();
    assert_eq!(first, ["QA1", "QB2"]);
    let json = env
        .api_json("/api/v1/messages?per_page=2&page=2&sort=queue_id&dir=asc")
        .await;
    assert_eq!(queue_ids(&json), ["QC3"]);
    assert_eq!(json["has_more"], false);
    // the page: the same search, with the filters kept in its links
    let session = env.login().await;
    let (status, html) = env
        .page(&session, "/messages?recipient=two.example&per_page=1")
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("recipient=two.example"),
        "filters kept in links"
    );
    assert!(html.contains("rel=\"next\""));
}

/// "Decided by module" finds the messages a module's result made the verdict of; "module
/// suggested" finds every message it suggested a refusal for, whatever the verdict: rspamd's
/// reject score on a permitted message is the second, not the first, and a quota tempfail is
/// found by the first.
#[tokio::test]
async fn decided_by_module_and_module_suggested_are_separate_filters() {
    let env = WebEnv::new().await;
    // rspamd's 12.5 (weighted 6.25 ≥ 5) rejected it
    let mut rejected = support::event();
    rejected.message.queue_id = "QD1".into();
    // rspamd suggested reject with 2 (weighted 1), and the message was permitted
    let mut permitted = support::event();
    permitted.message.queue_id = "QD2".into();
    permitted.verdict.verdict = wire::Action::Permit;
    permitted.verdict.reject_score = 1.0;
    permitted.results[0].result.score = 2.0;
    permitted.results[0].weighted_score = 1.0;
    // the quotas module tempfailed it
    let mut over_quota = support::event();
    over_quota.message.queue_id = "QD3".into();
    over_quota.verdict.verdict = wire::Action::Tempfail;
    over_quota.verdict.reject_score = 0.0;
    over_quota.verdict.tempfail_score = 50.0;
    over_quota.results = vec![support::result(
        over_quota.message_id,
        "quotas",
        wire::Action::Tempfail,
        100.0,
        serde_json::json!({}),
        false,
    )];
    env.store(&[rejected, permitted, over_quota]).await;
    let cases: &[(&str, &[&str])] = &[
        ("module=rspamd", &["QD1"]),
        ("suggested=rspamd", &["QD1", "QD2"]),
        ("module=quotas", &["QD3"]),
        ("suggested=quotas", &["QD3"]),
        ("module=spamassassin", &[]),
        ("module=rspamd&suggested=rspamd", &["QD1"]),
    ];
    for (query, expected) in cases {
        let json = env.api_json(&format!("/api/v1/messages?{query}")).await;
        assert_eq!(queue_ids(&json), *expected, "{query}");
    }
}

#[tokio::test]
async fn sql_metacharacters_in_every_filter_match_nothing_and_break_nothing() {
    let env = WebEnv::new().await;
    env.store(&three_events()).await;
    let hostile = [
        "' OR '1'='1",
        "\" OR \"\"=\"",
        "%",
        "_",
        "\\",
        "'; DROP TABLE message; --",
        "a%' OR 1=1 #",
        "\u{0}",
        ")) UNION SELECT 1,2,3 --",
        // non-ASCII against the ASCII columns (queue id, module): found by the proptest
        "ଵ😀",
    ];
    let free = [
        "sender",
        "recipient",
        "sasl",
        "queue_id",
        "message_id",
        "subject",
        "module",
        "instance",
    ];
    for value in hostile {
        for field in free {
            let query = serde_urlencoded::to_string([(field, value)]).unwrap();
            if value.contains('\0') {
                // control characters are refused (the collation would ignore a NUL)
                let (status, _) = env.api(&format!("/api/v1/messages?{query}")).await;
                assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value:?}");
                continue;
            }
            let json = env.api_json(&format!("/api/v1/messages?{query}")).await;
            // "Invoice 50% off_now" does contain a literal % and _: LIKE takes them literally
            let expected: &[&str] = if field == "subject" && (value == "%" || value == "_") {
                &["QA1"]
            } else {
                &[]
            };
            assert_eq!(queue_ids(&json), expected, "{field}={value:?}");
        }
        for field in [
            "ip", "verdict", "from", "to", "sort", "dir", "page", "per_page",
        ] {
            let query = serde_urlencoded::to_string([(field, value)]).unwrap();
            let (status, body) = env.api(&format!("/api/v1/messages?{query}")).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value:?}: {body}");
        }
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message")
        .fetch_one(&env.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 3, "the archive is intact");
}

#[tokio::test]
async fn hostile_headers_and_determinants_render_inert() {
    let env = WebEnv::new().await;
    let event = hostile_event();
    env.store(std::slice::from_ref(&event)).await;
    let session = env.login().await;
    let id = event.message_id.0.hyphenated().to_string();
    let (status, html) = env.page(&session, &format!("/messages/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&html);
    // askama escapes with numeric entities
    assert!(html.contains("&#60;script&#62;alert(&#39;xss&#39;)&#60;/script&#62;"));
    assert!(html.contains("&#34;&#62;&#60;img src=x onerror=alert(1)&#62;"));
    let (status, html) = env.page(&session, "/messages?subject=hi").await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&html);
    assert!(html.contains(&format!("/messages/{id}")));
    // a hostile search value is echoed escaped in the form
    let query =
        serde_urlencoded::to_string([("sender", XSS_IMG), ("subject", XSS_SCRIPT)]).unwrap();
    let (status, html) = env.page(&session, &format!("/messages?{query}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&html);
    let (status, html) = env
        .page(
            &session,
            &format!("/messages?verdict={}", urlencode(XSS_SCRIPT)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_inert(&html);
    // the JSON API keeps the values as data
    let json = env.api_json(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(json["results"][0]["determinants"]["note"], XSS_SCRIPT);
}

fn urlencode(text: &str) -> String {
    serde_urlencoded::to_string([("x", text)]).unwrap()[2..].to_owned()
}

#[tokio::test]
async fn the_message_page_explains_the_verdict_and_shows_every_part() {
    let env = WebEnv::new().await;
    let event = support::event();
    env.store(std::slice::from_ref(&event)).await;
    let session = env.login().await;
    let id = event.message_id.0.hyphenated().to_string();
    let (status, html) = env.page(&session, &format!("/messages/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "helo.example.org",
        "TLSv1.3",
        "alice",
        "alice@example.org",
        "bob@example.net",
        "carol@example.net",
        "x@example.net",
        "User unknown",
        "Grüße aus Köln",
        "rspamd",
        "spamassassin",
        "GTUBE",
        "x, y",
        "late",
        "rspamd 6.25 = 6.25",
        "noop was on: the verdict would have been reject; Postfix was told permit.",
        "Reject score 6.25 ≥ reject threshold 5.00.",
        "125.0 ms",
        "hello world",
        "second hop",
    ] {
        assert!(html.contains(expected), "message page lacks {expected:?}");
    }
    let json = env.api_json(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(json["verdict"]["verdict"], "reject");
    assert_eq!(json["verdict"]["applied"], "permit");
    assert_eq!(json["results"].as_array().unwrap().len(), 2);
    assert_eq!(json["session"]["helo"], "helo.example.org");
    // unknown and malformed ids
    let (status, _) = env
        .api("/api/v1/messages/0190a5c8-0000-7000-8000-000000000000")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = env.api("/api/v1/messages/'%20OR%201=1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_message_page_shows_the_srs_envelope_changes() {
    let env = WebEnv::new().await;
    let mut event = support::event();
    event.results.push(support::result(
        event.message_id,
        "srs",
        wire::Action::Permit,
        0.0,
        serde_json::json!({
            "sender": {
                "original": "alice@sender.test",
                "rewritten": "SRS0=ZNCJ=J2=sender.test=alice@virtual.test",
                "domain": "virtual.test"
            },
            "recipients": [{
                "address": "SRS0=AbCd=J2=orig.test=carol@virtual.test",
                "reversed": "carol@orig.test",
                "kind": "SRS0"
            }]
        }),
        false,
    ));
    env.store(std::slice::from_ref(&event)).await;
    let session = env.login().await;
    let id = event.message_id.0.hyphenated().to_string();
    let (status, html) = env.page(&session, &format!("/messages/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    for expected in [
        "<tr><th>Sender rewritten (SRS)</th><td>alice@sender.test → \
         SRS0=ZNCJ=J2=sender.test=alice@virtual.test</td></tr>",
        "<tr><th>Recipient reversed (SRS)</th><td>\
         SRS0=AbCd=J2=orig.test=carol@virtual.test → carol@orig.test</td></tr>",
    ] {
        assert!(html.contains(expected), "message page lacks {expected:?}");
    }
    let json = env.api_json(&format!("/api/v1/messages/{id}")).await;
    assert_eq!(
        json["envelope_changes"][0]["to"],
        "SRS0=ZNCJ=J2=sender.test=alice@virtual.test"
    );
    assert_eq!(json["envelope_changes"][1]["to"], "carol@orig.test");
}

#[tokio::test]
async fn bounces_list_filter_and_link_to_their_messages() {
    let env = WebEnv::new().await;
    let mut message = support::event();
    message.message.queue_id = "4jLinkedQ1".into();
    env.store(std::slice::from_ref(&message)).await;
    let store = auditor::store::bounce::BounceStore::new(env.db.pool.clone());
    let date = support::now();
    let mut linked = crate::bounces::bounce(date);
    linked.report.per_message.queue_id = "4jLinkedQ1".into();
    let mut unlinked = crate::bounces::bounce(date - chrono::Duration::minutes(5));
    unlinked.report.returned.subject = XSS_SCRIPT.into();
    unlinked.report.recipients[0].final_recipient = Some(wire::contract::TypedValue::new(
        "rfc822",
        "zed@other.example",
    ));
    for event in [&linked, &unlinked] {
        store.write(event).await.unwrap();
    }
    let recipients = |json: &serde_json::Value| -> Vec<String> {
        json["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                format!(
                    "{} {}",
                    r["recipient"].as_str().unwrap(),
                    r["status"].as_str().unwrap()
                )
            })
            .collect()
    };
    let all = env.api_json("/api/v1/bounces").await;
    assert_eq!(all["reports"].as_array().unwrap().len(), 4);
    let json = env
        .api_json("/api/v1/bounces?recipient=bob%40example.net")
        .await;
    assert_eq!(recipients(&json), ["bob@example.net 5.1.1"]);
    let message_id = message.message_id.0.hyphenated().to_string();
    assert_eq!(json["reports"][0]["message"], message_id.as_str());
    assert_eq!(json["reports"][0]["link"], "queue_id");
    let json = env
        .api_json("/api/v1/bounces?recipient=other.example")
        .await;
    assert_eq!(recipients(&json), ["zed@other.example 5.1.1"]);
    let json = env.api_json("/api/v1/bounces?status=4").await;
    assert_eq!(recipients(&json).len(), 2);
    let json = env.api_json("/api/v1/bounces?status=5.1&unlinked=1").await;
    assert_eq!(recipients(&json), ["zed@other.example 5.1.1"]);
    assert!(json["reports"][0]["message"].is_null());
    let json = env
        .api_json("/api/v1/bounces?from=2000-01-01&to=2000-01-02")
        .await;
    assert_eq!(recipients(&json), Vec::<String>::new());
    for (field, value) in [
        ("status", "5' OR 1=1"),
        ("unlinked", "maybe"),
        ("from", "x"),
    ] {
        let query = serde_urlencoded::to_string([(field, value)]).unwrap();
        assert_eq!(
            env.api(&format!("/api/v1/bounces?{query}")).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    let query = serde_urlencoded::to_string([("recipient", "' OR '1'='1")]).unwrap();
    let json = env.api_json(&format!("/api/v1/bounces?{query}")).await;
    assert_eq!(recipients(&json), Vec::<String>::new());

    // the pages: list, detail, and the message page links the bounce
    let session = env.login().await;
    let (status, html) = env.page(&session, "/bounces").await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&html);
    assert!(html.contains("unlinked"));
    let bounce_id = all["reports"][0]["bounce"].as_u64().unwrap();
    let (status, html) = env.page(&session, &format!("/bounces/{bounce_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("the raw report"), "raw report shown");
    let (status, html) = env.page(&session, &format!("/messages/{message_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("5.1.1 bob@example.net"),
        "message page lists its bounce"
    );
    assert_eq!(
        env.api("/api/v1/bounces/999999").await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(env.api("/api/v1/bounces/x'").await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn quotas_show_usage_against_curbs_profiles_and_regex_rows() {
    let env = WebEnv::new().await;
    let pool = &env.db.pool;
    for sql in [
        "INSERT INTO quota_class (id, cluegetter_instance, name) VALUES (1, 1, 'outbound')",
        "INSERT INTO quota_profile (id, class, name) VALUES (1, 1, 'customers')",
        "INSERT INTO quota_profile_period (profile, period, curb) VALUES (1, 3600, 5), (1, 86400, 100)",
        "INSERT INTO quota (id, selector, value, is_regex, profile) VALUES (10, 'sender', '^.*@one\\\\.example$', 1, 1)",
        "INSERT INTO quota (id, selector, value, is_regex, profile, instigator) VALUES (11, 'sender', 'alice@one.example', 0, 1, 10)",
        "INSERT INTO quota_message (quota, message, units, date, status) VALUES \
         (11, UNHEX('01'), 2, UTC_TIMESTAMP(6) - INTERVAL 10 MINUTE, 'kept'), \
         (11, UNHEX('02'), 3, UTC_TIMESTAMP(6) - INTERVAL 5 MINUTE, 'reserved'), \
         (11, UNHEX('03'), 7, UTC_TIMESTAMP(6) - INTERVAL 4 MINUTE, 'released'), \
         (11, UNHEX('04'), 4, UTC_TIMESTAMP(6) - INTERVAL 3 HOUR, 'kept')",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    let json = env
        .api_json("/api/v1/quotas?selector=sender&value=Alice%40one.example")
        .await;
    let quota = &json["quotas"][0];
    assert_eq!(quota["id"], 11);
    assert_eq!(quota["instigator"], 10);
    assert_eq!(quota["periods"][0]["period"], "1h");
    assert_eq!(quota["periods"][0]["used"], 5);
    assert_eq!(quota["periods"][0]["over"], true);
    assert_eq!(quota["periods"][1]["used"], 9);
    assert_eq!(quota["periods"][1]["over"], false);
    assert_eq!(
        json["classes"][0]["profiles"][0]["summary"],
        "5 per 1h, 100 per 1d"
    );
    assert_eq!(json["regexes"][0]["instigated"], 1);
    let json = env.api_json("/api/v1/quotas?instigator=10").await;
    assert_eq!(json["instigated"][0]["value"], "alice@one.example");
    assert_eq!(
        env.api("/api/v1/quotas?selector=evil'").await.0,
        StatusCode::BAD_REQUEST
    );
    let json = env
        .api_json("/api/v1/quotas?selector=sender&value=%27%20OR%201%3D1%20--")
        .await;
    assert_eq!(json["quotas"].as_array().unwrap().len(), 0);

    let session = env.login().await;
    let (status, html) = env
        .page(
            &session,
            "/quotas?selector=sender&value=alice%40one.example",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("<svg class=\"chart\""), "usage chart drawn");
    assert!(html.contains("at or over its curb"));
    assert!(html.contains("customers"));
    assert!(html.contains("^.*@one\\.example$"));
}

#[tokio::test]
async fn statistics_count_by_verdict_and_draw_svg_charts() {
    let env = WebEnv::new().await;
    let mut events = three_events();
    let mut hostile = hostile_event();
    hostile.message.sender = format!("{XSS_IMG}@evil.example");
    events.push(hostile);
    env.store(&events).await;
    let json = env.api_json("/api/v1/stats").await;
    assert_eq!(json["bucket"], "hour");
    let total: i64 = json["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| b["counts"].as_object().unwrap().values())
        .map(|n| n.as_i64().unwrap())
        .sum();
    assert_eq!(total, 4);
    let senders: Vec<&str> = json["top_rejected_senders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(senders.len(), 2, "{senders:?}");
    assert!(senders.contains(&"alice@one.example"));
    assert_eq!(json["top_rejected_sasl_users"][0]["label"], "alice");
    assert_eq!(json["top_rejected_client_ips"][0]["count"], 2);
    let modules: Vec<&str> = json["module_latency"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.get("module").and_then(|m| m.as_str()).unwrap())
        .collect();
    assert_eq!(modules, ["clamav", "geoip", "rspamd", "spamassassin"]);
    assert_eq!(json["module_latency"][2]["avg_ms"], 125.0);
    let json = env
        .api_json("/api/v1/stats?from=2026-01-01&to=2026-02-01")
        .await;
    assert_eq!(json["bucket"], "day");
    assert_eq!(
        env.api("/api/v1/stats?from=1990-01-01").await.0,
        StatusCode::BAD_REQUEST
    );

    let session = env.login().await;
    let (status, html) = env.page(&session, "/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_inert(&html);
    assert_eq!(html.matches("<svg class=\"chart\"").count(), 5);
    assert!(html.contains("class=\"reject\""), "reject bars drawn");
}

/// A typo in a parameter name (`Sender=` for `sender=`) is a 400 that names it, never the
/// whole unfiltered list.
#[tokio::test]
async fn an_unknown_query_parameter_is_a_400_that_names_it() {
    let env = WebEnv::new().await;
    env.store(&three_events()).await;
    for path in [
        "/api/v1/messages?Sender=alice%40one.example",
        "/api/v1/messages?sender=alice%40one.example&verdikt=reject",
        "/api/v1/bounces?recipeint=bob%40example.net",
        "/api/v1/quotas?selector=sender&valeu=a",
        "/api/v1/stats?form=2026-01-01",
    ] {
        let (status, body) = env.api(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        let name = path
            .rsplit(['?', '&'])
            .next()
            .unwrap()
            .split('=')
            .next()
            .unwrap();
        assert!(body.contains(&format!("`{name}`")), "{path}: {body}");
    }
    // the same search spelled right finds its one message
    let json = env
        .api_json("/api/v1/messages?sender=alice%40one.example")
        .await;
    assert_eq!(queue_ids(&json), ["QA1"]);

    // the page: the form again, with why, and no results
    let session = env.login().await;
    let (status, html) = env
        .page(&session, "/messages?Sender=alice%40one.example")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("unknown field `Sender`"), "{html}");
    assert!(html.contains("id=\"search-form\""), "the form is shown");
    assert!(!html.contains("QA1"), "no results listed");
    let (status, html) = env.page(&session, "/bounces?recipeint=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(html.contains("unknown field `recipeint`"), "{html}");
    let (status, _) = env.page(&session, "/quotas?selectr=sender").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = env.page(&session, "/stats?too=x").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn openapi_lists_every_api_route() {
    let env = WebEnv::new().await;
    let spec = env.api_json("/api/openapi.json").await;
    assert_eq!(spec["openapi"], "3.1.0");
    let paths = spec["paths"].as_object().unwrap();
    for route in APIS {
        let path = route.split('?').next().unwrap();
        let templated = if path.starts_with("/api/v1/messages/") {
            "/api/v1/messages/{id}"
        } else if path.starts_with("/api/v1/bounces/") {
            "/api/v1/bounces/{id}"
        } else {
            path
        };
        assert!(paths.contains_key(templated), "{templated} documented");
    }
    assert_eq!(paths.len(), APIS.len());
    // every documented search parameter is one the API takes
    for parameter in spec["paths"]["/api/v1/messages"]["get"]["parameters"]
        .as_array()
        .unwrap()
    {
        let name = parameter["name"].as_str().unwrap();
        let (status, body) = env.api(&format!("/api/v1/messages?{name}=")).await;
        assert_eq!(status, StatusCode::OK, "{name}: {body}");
    }
}

mod no_5xx {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};

    use super::*;

    const KEYS: &[&str] = &[
        "sender",
        "recipient",
        "ip",
        "sasl",
        "queue_id",
        "message_id",
        "subject",
        "verdict",
        "module",
        "instance",
        "from",
        "to",
        "sort",
        "dir",
        "page",
        "per_page",
        "status",
        "unlinked",
        "selector",
        "value",
        "instigator",
        "x",
    ];

    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            "[ -~]{0,40}",
            Just("' OR 1=1 --".to_owned()),
            Just("%".to_owned()),
            Just("192.0.2.0/24".to_owned()),
            Just("::ffff:0.0.0.0/0".to_owned()),
            Just("2026-01-01T00:00".to_owned()),
            Just("4294967296".to_owned()),
            Just("-1".to_owned()),
            Just("reject".to_owned()),
            Just("sender".to_owned()),
        ]
    }

    fn query() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(
            (prop::sample::select(KEYS).prop_map(str::to_owned), value()),
            0..6,
        )
    }

    /// Random query strings (also raw, not url-encoded) against every list endpoint: a 4xx is
    /// fine, a 5xx or a dropped connection is a bug.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn random_query_parameters_never_get_a_5xx() {
        let env = WebEnv::new().await;
        env.store(&three_events()).await;
        let handle = tokio::runtime::Handle::current();
        let mut runner = TestRunner::new(Config {
            cases: 256,
            failure_persistence: None,
            ..Config::default()
        });
        const ENDPOINTS: &[&str] = &[
            "/api/v1/messages",
            "/api/v1/bounces",
            "/api/v1/quotas",
            "/api/v1/stats",
            "/messages",
            "/bounces",
            "/quotas",
            "/stats",
        ];
        tokio::task::block_in_place(|| {
            runner
                .run(
                    &(prop::sample::select(ENDPOINTS), query(), any::<bool>()),
                    |(endpoint, pairs, raw)| {
                        let query = if raw {
                            pairs
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join("&")
                        } else {
                            serde_urlencoded::to_string(&pairs).unwrap()
                        };
                        let url = format!("{}?{}", env.url(endpoint), query);
                        let Ok(url) = reqwest::Url::parse(&url) else {
                            return Ok(());
                        };
                        let status = handle.block_on(async {
                            env.client
                                .get(url.clone())
                                .bearer_auth(TOKEN)
                                .send()
                                .await
                                .map(|r| r.status())
                        });
                        let status = status.map_err(|e| {
                            TestCaseError::fail(format!("{url}: request failed: {e}"))
                        })?;
                        prop_assert!(!status.is_server_error(), "{} for {}", status, url);
                        Ok(())
                    },
                )
                .unwrap();
        });
    }
}

#[test]
fn hash_password_reads_stdin_and_prints_a_hash_the_login_accepts() {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auditor"))
        .args(["web", "hash-password"])
        .env_remove("CLUEGETTER_CONFIG")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{PASSWORD}\n").as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success());
    let hash = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    let mut config = AuditorConfig::default();
    config.web_users.push(WebUser {
        name: USER.into(),
        password_hash: hash,
    });
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let env = WebEnv::with_config(config).await;
        env.login().await;
    });
}
