//! Roles (`[[auditor.web-users]] role`, and the same for API tokens): every route, HTML and
//! JSON, for each role against the real MariaDB over real HTTP. `admin` sees everything;
//! `domain-admin` only its domains' messages, bounces and quotas (a message of another domain
//! is a 404 exactly like a message that does not exist); `auditor` everything but headers,
//! bodies and raw bounce reports. Also the CSV export of a search, per role.

use platform::config::{WebApiToken, WebRole, WebUser};
use reqwest::StatusCode;

use crate::support;
use crate::web::{Session, WebEnv, set_cookie, three_events, web_config};

const PASSWORD: &str = "role test password";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Admin,
    DomainAdmin,
    Auditor,
}

const ROLES: [Role; 3] = [Role::Admin, Role::DomainAdmin, Role::Auditor];

impl Role {
    fn user(self) -> &'static str {
        match self {
            Role::Admin => "role-admin",
            Role::DomainAdmin => "role-domain-admin",
            Role::Auditor => "role-auditor",
        }
    }

    fn token(self) -> &'static str {
        match self {
            Role::Admin => "token-of-the-admin-0123",
            Role::DomainAdmin => "token-of-the-domain-admin-0123",
            Role::Auditor => "token-of-the-auditor-0123",
        }
    }

    fn config(self) -> (WebRole, Vec<String>) {
        match self {
            Role::Admin => (WebRole::Admin, Vec::new()),
            // written in another case: domains compare case-insensitively
            Role::DomainAdmin => (WebRole::DomainAdmin, vec!["One.Example".to_owned()]),
            Role::Auditor => (WebRole::Auditor, Vec::new()),
        }
    }
}

/// The archive every test here reads, with what each role may see of it.
struct Fixture {
    env: WebEnv,
    /// queue id → message UUID
    ids: Vec<(String, String)>,
    /// bounce ids: linked to QA1 (visible to the domain-admin through the message), unlinked
    /// to another domain (not visible), unlinked to the domain (visible by its recipient).
    bounce_linked: u64,
    bounce_other: u64,
    bounce_ours: u64,
}

impl Fixture {
    fn id(&self, queue_id: &str) -> &str {
        &self.ids.iter().find(|(q, _)| q == queue_id).unwrap().1
    }
}

/// Five messages: QA1 from alice@one.example logged in with SASL (the domain-admin's by its
/// sender), QB2 and QC3 of other domains, QD4 from mallory@one.example *without* SASL (a
/// forgeable sender: not the domain-admin's), QE5 to ann@one.example and other@four.example
/// (the domain-admin's by a recipient; it sees only that recipient).
async fn fixture() -> Fixture {
    let mut config = web_config(false);
    for role in ROLES {
        let (web_role, domains) = role.config();
        config.web_users.push(WebUser {
            name: role.user().into(),
            password_hash: auditor::web::hash_password(PASSWORD).unwrap(),
            role: web_role,
            domains: domains.clone(),
        });
        config.web_api_tokens.push(WebApiToken {
            name: role.user().into(),
            sha256: auditor::web::auth::token_sha256_hex(role.token()),
            role: web_role,
            domains,
        });
    }
    let env = WebEnv::with_config(config).await;
    let mut events = three_events();
    let mut d = support::event();
    d.message.sender = "mallory@one.example".into();
    d.message.recipients = vec!["x@four.example".into()];
    d.message.queue_id = "QD4".into();
    d.session.sasl_username = String::new();
    let mut e = support::event();
    e.message.sender = "zed@five.example".into();
    e.message.recipients = vec!["ann@one.example".into(), "other@four.example".into()];
    e.message.queue_id = "QE5".into();
    e.message.subject = "=HYPERLINK(\"http://evil.example\",\"x\")".into();
    e.session.sasl_username = String::new();
    events.push(d);
    events.push(e);
    env.store(&events).await;
    let ids = events
        .iter()
        .map(|e| {
            (
                e.message.queue_id.clone(),
                e.message_id.0.hyphenated().to_string(),
            )
        })
        .collect();

    let store = auditor::store::bounce::BounceStore::new(env.db.pool.clone());
    let date = support::now();
    let mut linked = crate::bounces::bounce(date);
    linked.report.per_message.queue_id = "QA1".into();
    let mut other = crate::bounces::bounce(date - chrono::Duration::minutes(5));
    other.report.per_message.queue_id = "NOMATCH1".into();
    other.report.recipients[0].final_recipient = Some(wire::contract::TypedValue::new(
        "rfc822",
        "zed@other.example",
    ));
    let mut ours = crate::bounces::bounce(date - chrono::Duration::minutes(6));
    ours.report.per_message.queue_id = "NOMATCH2".into();
    ours.report.recipients[0].final_recipient =
        Some(wire::contract::TypedValue::new("rfc822", "ann@one.example"));
    let mut bounce_ids = Vec::new();
    for event in [&linked, &other, &ours] {
        store.write(event).await.unwrap();
        let id: u64 = sqlx::query_scalar("SELECT id FROM bounce WHERE bounce_id = ?")
            .bind(event.bounce_id.0)
            .fetch_one(&env.db.pool)
            .await
            .unwrap();
        bounce_ids.push(id);
    }

    for sql in [
        "INSERT INTO quota_class (id, cluegetter_instance, name) VALUES (1, 1, 'outbound')",
        "INSERT INTO quota_profile (id, class, name) VALUES (1, 1, 'customers')",
        "INSERT INTO quota_profile_period (profile, period, curb) VALUES (1, 3600, 5)",
        "INSERT INTO quota (id, selector, value, is_regex, profile) VALUES (10, 'sender', '^.*@one\\\\.example$', 1, 1)",
        "INSERT INTO quota (id, selector, value, is_regex, profile, instigator) VALUES \
         (11, 'sender', 'alice@one.example', 0, 1, 10), \
         (12, 'sender', 'bob@two.example', 0, 1, 10), \
         (13, 'sender_domain', 'one.example', 0, 1, NULL), \
         (14, 'sender', 'alice@evilone.example', 0, 1, 10)",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&env.db.pool)
            .await
            .unwrap();
    }
    Fixture {
        env,
        ids,
        bounce_linked: bounce_ids[0],
        bounce_other: bounce_ids[1],
        bounce_ours: bounce_ids[2],
    }
}

/// Logs `role`'s user in through the form.
async fn login(env: &WebEnv, role: Role) -> Session {
    let (csrf_cookie, csrf) = env.login_form().await;
    let response = env
        .post_form(
            "/login",
            Some(&csrf_cookie),
            &[
                ("user", role.user()),
                ("password", PASSWORD),
                ("csrf", &csrf),
                ("next", "/messages"),
            ],
        )
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER, "{role:?}");
    Session {
        cookie: set_cookie(response.headers(), "cg_session").unwrap(),
    }
}

/// GET with `role`'s token: (status, body).
async fn api(env: &WebEnv, role: Role, path: &str) -> (StatusCode, String) {
    let response = env
        .client
        .get(env.url(path))
        .bearer_auth(role.token())
        .send()
        .await
        .unwrap();
    (response.status(), response.text().await.unwrap())
}

async fn json(env: &WebEnv, role: Role, path: &str) -> serde_json::Value {
    let (status, body) = api(env, role, path).await;
    assert_eq!(status, StatusCode::OK, "{role:?} {path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn sorted_queue_ids(json: &serde_json::Value) -> Vec<String> {
    crate::web::queue_ids(json)
}

fn strings(values: &[&str]) -> Vec<String> {
    values.iter().map(|v| (*v).to_owned()).collect()
}

/// The search, its CSV, one message, bounces, quotas and statistics: what each role gets from
/// the API (with its token) and from the pages (with its session).
#[tokio::test]
async fn every_route_gives_each_role_what_it_may_see() {
    let f = fixture().await;
    let env = &f.env;
    let all = ["QA1", "QB2", "QC3", "QD4", "QE5"];
    let ours = ["QA1", "QE5"];
    for role in ROLES {
        let session = login(env, role).await;
        let visible: &[&str] = if role == Role::DomainAdmin {
            &ours
        } else {
            &all
        };

        // the search, by the API and the page
        let found = json(env, role, "/api/v1/messages").await;
        assert_eq!(sorted_queue_ids(&found), strings(visible), "{role:?}");
        // a filter cannot widen the scope
        let found = json(env, role, "/api/v1/messages?recipient=four.example").await;
        let expected: &[&str] = if role == Role::DomainAdmin {
            // QE5 went to four.example too, which is not the domain-admin's to search by
            &[]
        } else {
            &["QB2", "QD4", "QE5"]
        };
        assert_eq!(sorted_queue_ids(&found), strings(expected), "{role:?}");
        // the list's recipients: a domain-admin sees its domain's only, unless the message
        // is its by the sender
        let found = json(env, role, "/api/v1/messages?queue_id=QE5").await;
        let listed = &found["messages"][0]["recipients"];
        if role == Role::DomainAdmin {
            assert_eq!(*listed, serde_json::json!(["ann@one.example"]));
        } else {
            assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");
        }
        let found = json(env, role, "/api/v1/messages?queue_id=QA1").await;
        assert_eq!(
            found["messages"][0]["recipients"].as_array().unwrap().len(),
            2,
            "{role:?}: all of a message that is its by the sender"
        );
        // nor tell who else received a message it sees by a recipient
        for query in ["recipient=other%40four.example", "q=other%40four.example"] {
            let found = json(env, role, &format!("/api/v1/messages?{query}")).await;
            let expected: &[&str] = if role == Role::DomainAdmin {
                &[]
            } else {
                &["QE5"]
            };
            assert_eq!(
                sorted_queue_ids(&found),
                strings(expected),
                "{role:?} {query}"
            );
        }
        // but everyone of a message it has by the sender
        let found = json(env, role, "/api/v1/messages?recipient=bob%40two.example").await;
        assert_eq!(sorted_queue_ids(&found), strings(&["QA1"]), "{role:?}");
        // the free text cannot widen the scope either
        let found = json(env, role, "/api/v1/messages?q=four.example").await;
        assert_eq!(sorted_queue_ids(&found), strings(expected), "{role:?}");
        assert_eq!(found["count"], expected.len());
        let (status, html) = env.page(&session, "/messages").await;
        assert_eq!(status, StatusCode::OK);
        let shown = match role {
            Role::Admin => None,
            Role::DomainAdmin => Some("(domain-admin: one.example)"),
            Role::Auditor => Some("(auditor)"),
        };
        assert_eq!(html.contains("id=\"role\""), shown.is_some(), "{role:?}");
        if let Some(shown) = shown {
            assert!(html.contains(shown), "{role:?} named in the navigation bar");
        }
        for queue_id in all {
            assert_eq!(
                html.contains(queue_id),
                visible.contains(&queue_id),
                "{role:?} page lists {queue_id}?"
            );
        }

        // the CSV export, by the API and the page's link
        for path in ["/api/v1/messages.csv", "/messages.csv"] {
            let response = env
                .client
                .get(env.url(path))
                .bearer_auth(role.token())
                .header("cookie", &session.cookie)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{role:?} {path}");
            assert!(
                response.headers()["content-type"]
                    .to_str()
                    .unwrap()
                    .starts_with("text/csv")
            );
            let csv = response.text().await.unwrap();
            let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
            assert!(lines[0].starts_with("id,date,queue_id,"), "{csv}");
            assert_eq!(lines.len(), visible.len() + 1, "{role:?} {path}: {csv}");
            for queue_id in all {
                assert_eq!(csv.contains(queue_id), visible.contains(&queue_id));
            }
            // recipients as the list shows them: a domain-admin its domain's only
            let qe5 = lines.iter().find(|l| l.contains("QE5")).unwrap();
            if role == Role::DomainAdmin {
                assert!(qe5.ends_with(",ann@one.example"), "{qe5}");
            } else {
                // by domain: the rejected one of support::event() too
                assert!(
                    qe5.ends_with(",x@example.net other@four.example ann@one.example"),
                    "{qe5}"
                );
            }
            // the subject of QE5 would be a formula in a spreadsheet: neutralised
            assert!(
                csv.contains("\"'=HYPERLINK(\"\"http://evil.example\"\",\"\"x\"\")\""),
                "{csv}"
            );
        }

        // one message: visible ones whole (but contents for the auditor), others not found
        for queue_id in all {
            let id = f.id(queue_id);
            let (status, body) = api(env, role, &format!("/api/v1/messages/{id}")).await;
            let (page_status, html) = env.page(&session, &format!("/messages/{id}")).await;
            if !visible.contains(&queue_id) {
                assert_eq!(status, StatusCode::NOT_FOUND, "{role:?} {queue_id}");
                assert_eq!(page_status, StatusCode::NOT_FOUND, "{role:?} {queue_id}");
                // exactly what a message that does not exist gets
                let (_, missing) = api(
                    env,
                    role,
                    "/api/v1/messages/0190a5c8-0000-7000-8000-000000000000",
                )
                .await;
                assert_eq!(body, missing);
                continue;
            }
            assert_eq!(status, StatusCode::OK, "{role:?} {queue_id}: {body}");
            assert_eq!(page_status, StatusCode::OK, "{role:?} {queue_id}");
            let message: serde_json::Value = serde_json::from_str(&body).unwrap();
            let headers = message["headers"].as_array().unwrap();
            if role == Role::Auditor {
                assert!(headers.is_empty(), "{body}");
                assert!(message["body"].is_null(), "{body}");
                assert_eq!(message["contents_withheld"], true);
                assert!(html.contains("Withheld"));
                assert!(!html.contains("from client.example.org by mx.example.net"));
            } else {
                assert!(!headers.is_empty(), "{role:?} {queue_id}: headers");
                assert!(message["body"].is_string(), "{role:?} {queue_id}: body");
                assert_eq!(message["contents_withheld"], false);
                assert!(html.contains("from client.example.org by mx.example.net"));
            }
            let recipients: Vec<&str> = message["recipients"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| r["address"].as_str().unwrap())
                .collect();
            if role == Role::DomainAdmin && queue_id == "QE5" {
                // seen by a recipient: only its domain's recipients
                assert_eq!(recipients, ["ann@one.example"], "{body}");
                assert!(!html.contains("other@four.example"));
            } else if queue_id == "QE5" {
                // both, and the rejected one of support::event()
                assert_eq!(recipients.len(), 3, "{body}");
            }
        }

        // bounces: the list and one by one
        let list = json(env, role, "/api/v1/bounces").await;
        let mut listed: Vec<u64> = list["reports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["bounce"].as_u64().unwrap())
            .collect();
        listed.dedup();
        listed.sort_unstable();
        let mut expected = if role == Role::DomainAdmin {
            vec![f.bounce_linked, f.bounce_ours]
        } else {
            vec![f.bounce_linked, f.bounce_other, f.bounce_ours]
        };
        expected.sort_unstable();
        assert_eq!(listed, expected, "{role:?}");
        let (status, html) = env.page(&session, "/bounces").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            html.contains("zed@other.example")
                || html.contains(&format!("/bounces/{}\"", f.bounce_other)),
            role != Role::DomainAdmin,
            "{role:?}"
        );
        for id in [f.bounce_linked, f.bounce_other, f.bounce_ours] {
            let (status, body) = api(env, role, &format!("/api/v1/bounces/{id}")).await;
            let (page_status, html) = env.page(&session, &format!("/bounces/{id}")).await;
            if role == Role::DomainAdmin && id == f.bounce_other {
                assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
                assert_eq!(page_status, StatusCode::NOT_FOUND);
                assert_eq!(body, api(env, role, "/api/v1/bounces/999999").await.1);
                continue;
            }
            assert_eq!(status, StatusCode::OK, "{role:?} bounce {id}: {body}");
            assert_eq!(page_status, StatusCode::OK);
            let bounce: serde_json::Value = serde_json::from_str(&body).unwrap();
            if role == Role::Auditor {
                assert_eq!(bounce["raw"], "", "{body}");
                assert_eq!(bounce["raw_withheld"], true);
                assert!(!html.contains("the raw report"));
            } else {
                assert!(bounce["raw"].as_str().unwrap().contains("the raw report"));
                assert_eq!(bounce["raw_withheld"], false);
                assert!(html.contains("the raw report"));
            }
        }

        // quotas: rows of the domain only, no regex rows
        for (selector, value, mine) in [
            ("sender", "alice%40one.example", true),
            ("sender", "bob%40two.example", false),
            ("sender", "alice%40evilone.example", false),
            ("sender_domain", "one.example", true),
        ] {
            let path = format!("/api/v1/quotas?selector={selector}&value={value}");
            let overview = json(env, role, &path).await;
            let rows = overview["quotas"].as_array().unwrap().len();
            let expected = usize::from(mine || role != Role::DomainAdmin);
            assert_eq!(rows, expected, "{role:?} {path}");
            let (status, html) = env.page(&session, &path.replacen("/api/v1", "", 1)).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(
                html.contains("<svg class=\"chart\""),
                expected == 1,
                "{role:?} {path}"
            );
        }
        let overview = json(env, role, "/api/v1/quotas?instigator=10").await;
        let instigated: Vec<&str> = overview["instigated"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_str().unwrap())
            .collect();
        let regexes = overview["regexes"].as_array().unwrap().len();
        if role == Role::DomainAdmin {
            assert_eq!(instigated, ["alice@one.example"]);
            assert_eq!(regexes, 0);
        } else {
            assert_eq!(instigated.len(), 3);
            assert_eq!(regexes, 1);
        }
        let (status, html) = env.page(&session, "/quotas").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            html.contains("^.*@one\\.example$"),
            role != Role::DomainAdmin
        );

        // statistics count the messages the role sees
        let stats = json(env, role, "/api/v1/stats").await;
        let counted: i64 = stats["buckets"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|b| b["counts"].as_object().unwrap().values())
            .map(|n| n.as_i64().unwrap())
            .sum();
        assert_eq!(counted, visible.len() as i64, "{role:?}");
        let (status, _) = env.page(&session, "/stats").await;
        assert_eq!(status, StatusCode::OK);

        // the OpenAPI document and the root for everyone
        assert_eq!(api(env, role, "/api/openapi.json").await.0, StatusCode::OK);
        assert_eq!(env.page(&session, "/").await.0, StatusCode::SEE_OTHER);
    }
}

/// Every guarded route answers each role (no 500, no route forgotten): the page and API
/// lists of `web.rs`, with a session and with a token.
#[tokio::test]
async fn every_guarded_route_answers_every_role() {
    let f = fixture().await;
    let env = &f.env;
    for role in ROLES {
        let session = login(env, role).await;
        for path in crate::web::PAGES {
            let (status, _) = env.page(&session, path).await;
            assert!(
                [StatusCode::OK, StatusCode::SEE_OTHER, StatusCode::NOT_FOUND].contains(&status),
                "{role:?} {path}: {status}"
            );
        }
        for path in crate::web::APIS {
            let (status, body) = api(env, role, path).await;
            assert!(
                [StatusCode::OK, StatusCode::NOT_FOUND].contains(&status),
                "{role:?} {path}: {status} {body}"
            );
        }
    }
}

/// The CSV export stops at `web-csv-max-rows`; a bad parameter is a 400 like the JSON's.
#[tokio::test]
async fn the_csv_export_is_bounded_and_refuses_what_the_search_refuses() {
    let mut config = web_config(true);
    config.web_csv_max_rows = 2;
    let env = WebEnv::with_config(config).await;
    env.store(&three_events()).await;
    let (status, csv) = env.api("/api/v1/messages.csv").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(csv.split_terminator("\r\n").count(), 3, "{csv}");
    let (status, body) = env.api("/api/v1/messages.csv?verdict=evil").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _) = env.api("/api/v1/messages.csv?nope=1").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let response = env
        .client
        .get(env.url("/api/v1/messages.csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // more rows than one chunk (200), cut at the cap
    let mut config = web_config(true);
    config.web_csv_max_rows = 230;
    let env = WebEnv::with_config(config).await;
    let events: Vec<wire::AuditEvent> = (0..250)
        .map(|n| {
            let mut e = support::event();
            e.message.queue_id = format!("QM{n:03}");
            e
        })
        .collect();
    env.store(&events).await;
    let (status, csv) = env.api("/api/v1/messages.csv?per_page=10&page=3").await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = csv.split_terminator("\r\n").collect();
    assert_eq!(lines.len(), 231, "header and 230 rows, whatever the page");
    let mut ids: Vec<&str> = lines[1..].iter().map(|l| &l[..36]).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 230, "each message once");
}
