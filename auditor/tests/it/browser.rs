//! A real browser against the web interface: headless Chromium driven over WebDriver
//! (chromedriver, Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/start-peers.sh chromium`) with a tiny client of our own over reqwest. An event goes
//! through the real auditor consumer (RabbitMQ → MariaDB), then the browser logs in, searches,
//! opens the message and sees its module results. Screenshots of the search, message and
//! statistics pages go to `target/screenshots/`.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use test_support::eventually;

use crate::support::{self, Env};
use crate::web::{PASSWORD, USER, XSS_SCRIPT, start_server, web_config};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    base: String,
    http: reqwest::Client,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Driver {
    async fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver runs (scripts/start-peers.sh chromium installs it)");
        let driver = Self {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: crate::web::client(),
        };
        let http = driver.http.clone();
        let status = format!("{}/status", driver.base);
        eventually(Duration::from_secs(30), "chromedriver ready", || {
            let http = http.clone();
            let status = status.clone();
            async move {
                let body = http.get(&status).send().await.ok()?.text().await.ok()?;
                let json: Value = serde_json::from_str(&body).ok()?;
                json["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await
        .unwrap();
        driver
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body.to_string());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "WebDriver {path}: {status} {text}");
        serde_json::from_str::<Value>(&text).unwrap()["value"].take()
    }

    async fn session(&self) -> Browser<'_> {
        let value = self
            .call(
                reqwest::Method::POST,
                "/session",
                Some(json!({ "capabilities": { "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": "/usr/bin/chromium",
                        "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                                 "--disable-dev-shm-usage", "--window-size=1400,1100"]
                    }
                }}})),
            )
            .await;
        Browser {
            driver: self,
            id: value["sessionId"].as_str().unwrap().to_owned(),
        }
    }
}

/// One WebDriver session.
struct Browser<'a> {
    driver: &'a Driver,
    id: String,
}

impl Browser<'_> {
    async fn post(&self, path: &str, body: Value) -> Value {
        self.driver
            .call(
                reqwest::Method::POST,
                &format!("/session/{}{path}", self.id),
                Some(body),
            )
            .await
    }

    async fn get(&self, path: &str) -> Value {
        self.driver
            .call(
                reqwest::Method::GET,
                &format!("/session/{}{path}", self.id),
                None,
            )
            .await
    }

    async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    async fn url(&self) -> String {
        let value = self.get("/url").await;
        value
            .as_str()
            .unwrap_or_else(|| panic!("WebDriver url: {value}"))
            .to_owned()
    }

    async fn source(&self) -> String {
        self.get("/source").await.as_str().unwrap().to_owned()
    }

    async fn find(&self, css: &str) -> String {
        let value = self
            .post("/element", json!({ "using": "css selector", "value": css }))
            .await;
        value[ELEMENT]
            .as_str()
            .unwrap_or_else(|| panic!("WebDriver element {css}: {value}"))
            .to_owned()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.find(css).await;
        self.post(
            &format!("/element/{element}/value"),
            json!({ "text": text }),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.find(css).await;
        self.post(&format!("/element/{element}/click"), json!({}))
            .await;
    }

    async fn wait_url(&self, what: &str, check: impl Fn(&str) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let url = self.url().await;
            if check(&url) {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                let source = self.source().await;
                panic!("waiting for {what}; at {url}: {source}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.get("/screenshot").await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    async fn quit(self) {
        self.driver
            .call(
                reqwest::Method::DELETE,
                &format!("/session/{}", self.id),
                None,
            )
            .await;
    }
}

#[tokio::test]
async fn a_browser_logs_in_searches_opens_the_message_and_sees_its_results() {
    // the event goes through the real consumer
    let env = Env::new().await;
    let auditor = env.start_auditor();
    let publisher = env.publisher().await;
    let mut event = support::event();
    event.message.subject = "Browser test message".into();
    event.message.sender = "browser@example.org".into();
    event
        .message
        .headers
        .push(wire::Header::new("X-Evil", XSS_SCRIPT));
    publisher.publish_event(&event).await;
    env.wait_stored(event.message_id).await;

    let (addr, web) = start_server(&env.db.url, &web_config(true)).await;
    let base = format!("http://{addr}");
    let driver = Driver::start().await;
    let browser = driver.session().await;

    // not logged in: the search lands on the login form
    browser.goto(&format!("{base}/messages")).await;
    browser
        .wait_url("the login page", |url| url.contains("/login"))
        .await;
    browser.type_into("#user", USER).await;
    browser.type_into("#password", PASSWORD).await;
    browser.click("#login-submit").await;
    browser
        .wait_url("the search page", |url| url.contains("/messages"))
        .await;

    // search through the form
    browser
        .type_into("input[name=subject]", "Browser test")
        .await;
    browser
        .type_into("input[name=sender]", "browser@example.org")
        .await;
    browser.click("#search-submit").await;
    browser
        .wait_url("the search results", |url| url.contains("subject=Browser"))
        .await;
    let html = browser.source().await;
    assert!(
        html.contains("Browser test message"),
        "the message is listed"
    );
    let search_shot = browser.screenshot("search").await;

    browser.click("a.msg-link").await;
    let id = event.message_id.0.hyphenated().to_string();
    browser
        .wait_url("the message page", |url| url.ends_with(&id))
        .await;
    let html = browser.source().await;
    for expected in [
        "Module results",
        "rspamd",
        "spamassassin",
        "GTUBE",
        "noop was on",
    ] {
        assert!(html.contains(expected), "message page shows {expected:?}");
    }
    // the hostile header is text, not a script (an alert would also fail the next command)
    assert!(!html.contains(XSS_SCRIPT));
    let message_shot = browser.screenshot("message").await;
    let message_url = browser.url().await;

    browser.goto(&format!("{base}/stats")).await;
    let html = browser.source().await;
    assert!(html.contains("<svg"), "charts drawn");
    let stats_shot = browser.screenshot("stats").await;

    // a laptop's 1,366 px and a phone's 390 px: no page scrolls sideways
    let mut narrow_shots = Vec::new();
    for (width, height, name) in [(1366, 768, "laptop"), (390, 844, "phone")] {
        browser
            .post("/window/rect", json!({ "width": width, "height": height }))
            .await;
        for (page, url) in [
            ("search", format!("{base}/messages")),
            ("message", message_url.clone()),
            ("stats", format!("{base}/stats")),
        ] {
            browser.goto(&url).await;
            let sizes = browser
                .post(
                    "/execute/sync",
                    json!({
                        "script": "return [document.documentElement.scrollWidth, window.innerWidth];",
                        "args": []
                    }),
                )
                .await;
            let (scroll, inner) = (sizes[0].as_u64().unwrap(), sizes[1].as_u64().unwrap());
            assert!(
                scroll <= inner,
                "the {page} page is {scroll} px wide in a {inner} px window ({name})"
            );
            narrow_shots.push(browser.screenshot(&format!("{page}-{name}")).await);
        }
    }

    browser.quit().await;
    web.cancel();
    auditor.stop().await;
    for shot in [search_shot, message_shot, stats_shot]
        .into_iter()
        .chain(narrow_shots)
    {
        assert!(std::fs::metadata(&shot).unwrap().len() > 5_000, "{shot:?}");
    }
}
