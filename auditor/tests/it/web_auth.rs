//! Web sessions in MariaDB (`web_session`), login throttling, and the quotas page's use of
//! `[quotas] reservation-ttl`, against the real MariaDB over real HTTP.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::header::{LOCATION, RETRY_AFTER};
use sqlx::MySqlPool;

use crate::web::{
    PASSWORD, Session, USER, WebEnv, full_config, hidden_value, set_cookie, web_config,
};

/// Rows of `web_session`.
async fn sessions(pool: &MySqlPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM web_session")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// The cookie's session id (`cg_session=<id>` → `<id>`).
fn session_id(session: &Session) -> &str {
    session.cookie.split_once('=').unwrap().1
}

/// A client whose connections come from `ip` (any 127.x.y.z reaches the loopback listener).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// One login attempt through the form, from `client`.
async fn attempt(
    env: &WebEnv,
    client: &reqwest::Client,
    user: &str,
    password: &str,
) -> reqwest::Response {
    let (csrf_cookie, csrf) = env.login_form().await;
    client
        .post(env.url("/login"))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("cookie", csrf_cookie)
        .body(
            serde_urlencoded::to_string([
                ("user", user),
                ("password", password),
                ("csrf", &csrf),
                ("next", "/messages"),
            ])
            .unwrap(),
        )
        .send()
        .await
        .unwrap()
}

/// The Retry-After of a 429, in seconds.
fn retry_after(response: &reqwest::Response) -> u64 {
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    response.headers()[RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn a_session_survives_a_restart_of_the_web_server_and_logout_deletes_its_row() {
    let mut env = WebEnv::new().await;
    let session = env.login().await;
    // one row, keyed by the SHA-256 of the id, never the id
    let id = session_id(&session).to_owned();
    let digest = auditor::web::auth::token_sha256_hex(&id);
    let (user, key_hex, valid): (String, String, bool) = sqlx::query_as(
        "SELECT user, LOWER(HEX(id)), expires > UTC_TIMESTAMP(6) \
         AND TIMESTAMPDIFF(SECOND, created, expires) = 8 * 3600 FROM web_session",
    )
    .fetch_one(&env.db.pool)
    .await
    .unwrap();
    assert_eq!(user, USER);
    assert_eq!(key_hex, digest);
    assert_ne!(key_hex, id);
    assert!(valid, "expires = created + web-session-lifetime");

    // a new server over the same database: still logged in
    let old = env.addr;
    env.restart(env.config.clone()).await;
    assert_ne!(env.addr, old);
    let (status, html) = env.page(&session, "/messages").await;
    assert_eq!(status, StatusCode::OK, "the session survived the restart");
    assert!(html.contains(USER));
    // the cookie works for the API too
    let response = env
        .client
        .get(env.url("/api/v1/stats"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    // logout deletes the row; the cookie no longer works, on any server
    let logout_csrf = hidden_value(&html, "csrf").unwrap();
    let response = env
        .post_form("/logout", Some(&session.cookie), &[("csrf", &logout_csrf)])
        .await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(sessions(&env.db.pool).await, 0, "logout deleted the row");
    assert_eq!(
        env.page(&session, "/messages").await.0,
        StatusCode::SEE_OTHER
    );
    env.restart(env.config.clone()).await;
    assert_eq!(
        env.page(&session, "/messages").await.0,
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn a_session_of_a_user_no_longer_configured_is_refused_after_a_restart() {
    let mut env = WebEnv::new().await;
    let session = env.login().await;
    let mut config = env.config.clone();
    config.auditor.web_users.clear();
    env.restart(config).await;
    assert_eq!(
        env.page(&session, "/messages").await.0,
        StatusCode::SEE_OTHER
    );
    assert_eq!(sessions(&env.db.pool).await, 0, "the orphaned row is gone");
}

#[tokio::test]
async fn an_expired_session_is_refused_and_removed_and_sweeping_deletes_expired_rows() {
    let env = WebEnv::new().await;
    let session = env.login().await;
    assert_eq!(env.page(&session, "/messages").await.0, StatusCode::OK);
    sqlx::query("UPDATE web_session SET expires = UTC_TIMESTAMP(6) - INTERVAL 1 SECOND")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let response = env
        .client
        .get(env.url("/messages"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(
        response.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/login")
    );
    assert_eq!(sessions(&env.db.pool).await, 0, "the expired row is gone");
    let response = env
        .client
        .get(env.url("/api/v1/stats"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

    // the periodic sweep: expired rows go, live ones stay
    let live = env.login().await;
    sqlx::query(
        "INSERT INTO web_session (id, user, created, expires) VALUES \
         (UNHEX(SHA2('a', 256)), 'x', UTC_TIMESTAMP(6) - INTERVAL 9 HOUR, \
          UTC_TIMESTAMP(6) - INTERVAL 1 HOUR), \
         (UNHEX(SHA2('b', 256)), 'x', UTC_TIMESTAMP(6) - INTERVAL 9 HOUR, \
          UTC_TIMESTAMP(6) - INTERVAL 1 SECOND)",
    )
    .execute(&env.db.pool)
    .await
    .unwrap();
    let state = auditor::web::AppState::new(&env.config, env.db.pool.clone());
    assert_eq!(auditor::web::auth::sweep(&state).await.unwrap(), 2);
    assert_eq!(sessions(&env.db.pool).await, 1);
    assert_eq!(env.page(&live, "/messages").await.0, StatusCode::OK);
}

#[tokio::test]
async fn a_database_error_while_checking_a_session_is_a_503_never_a_login() {
    let env = WebEnv::new().await;
    let session = env.login().await;
    sqlx::query("DROP TABLE web_session")
        .execute(&env.db.pool)
        .await
        .unwrap();
    let (status, body) = env.page(&session, "/messages").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body.contains("database is unavailable"), "{body}");
    let response = env
        .client
        .get(env.url("/api/v1/stats"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()["content-type"], "application/json");
    let json: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert!(
        json["error"].as_str().unwrap().contains("unavailable"),
        "{json}"
    );
    // a login cannot be stored either: 503, no cookie
    let response = attempt(&env, &env.client, USER, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(set_cookie(response.headers(), "cg_session").is_none());
    // API tokens need no session: still served
    let (status, _) = env.api("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn the_sixth_wrong_password_gets_429_and_even_the_right_one_waits_for_the_window() {
    let window = Duration::from_secs(6);
    let mut config = web_config(true);
    config.web_login_failure_window = window;
    let env = WebEnv::with_full_config(full_config(config)).await;
    let client = client_from("127.0.0.11");
    let started = Instant::now();
    for n in 1..=5 {
        let response = attempt(&env, &client, USER, "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "attempt {n}");
    }
    let response = attempt(&env, &client, USER, "wrong").await;
    let wait = retry_after(&response);
    assert!((1..=6).contains(&wait), "Retry-After: {wait}");
    assert!(
        response
            .text()
            .await
            .unwrap()
            .contains("Too many failed logins")
    );
    // the right password, even from another address: refused, no session
    let mut wait = Duration::ZERO;
    for from in ["127.0.0.11", "127.0.0.12"] {
        let response = attempt(&env, &client_from(from), USER, PASSWORD).await;
        let seconds = retry_after(&response);
        assert!(seconds >= 1, "{from}");
        wait = Duration::from_secs(seconds);
        assert!(set_cookie(response.headers(), "cg_session").is_none());
    }
    assert_eq!(sessions(&env.db.pool).await, 0);
    assert!(
        started.elapsed() < window,
        "the machine is too slow for this window"
    );
    // still refused just before Retry-After… (when there is time to tell)
    let asked = Instant::now();
    if wait >= Duration::from_secs(4) {
        tokio::time::sleep(wait - Duration::from_secs(3)).await;
        let response = attempt(&env, &client, USER, PASSWORD).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    // … and let in once it has passed (counted from the first failure)
    tokio::time::sleep_until((asked + wait + Duration::from_millis(300)).into()).await;
    let response = attempt(&env, &client, USER, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert!(set_cookie(response.headers(), "cg_session").is_some());
}

#[tokio::test]
async fn failures_from_one_address_across_many_names_are_throttled_and_success_clears_a_name() {
    let env = WebEnv::new().await;
    let attacker = client_from("127.0.0.21");
    for n in 0..5 {
        let response = attempt(&env, &attacker, &format!("guess{n}"), "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "guess{n}");
    }
    let response = attempt(&env, &attacker, "guess5", "wrong").await;
    let wait = retry_after(&response);
    // the default window, 15 minutes, from the first failure
    assert!((890..=900).contains(&wait), "Retry-After: {wait}");
    // that address is refused even with the right password
    let response = attempt(&env, &attacker, USER, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    // the user, from elsewhere, is not
    let response = attempt(&env, &client_from("127.0.0.22"), USER, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);

    // a success clears the name's count: 4 failures, a login, 4 more failures, all answered
    let first = client_from("127.0.0.23");
    for _ in 0..4 {
        let response = attempt(&env, &first, USER, "wrong").await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    }
    let response = attempt(&env, &client_from("127.0.0.24"), USER, PASSWORD).await;
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    let second = client_from("127.0.0.25");
    for n in 0..4 {
        let response = attempt(&env, &second, USER, "wrong").await;
        assert_eq!(
            response.status(),
            StatusCode::UNAUTHORIZED,
            "after success, {n}"
        );
    }
    // … but not the address's: 127.0.0.23 has 4, one more failure fills it
    let response = attempt(&env, &first, "someone", "wrong").await;
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let response = attempt(&env, &first, "someone-else", "wrong").await;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn the_quotas_page_does_not_count_an_expired_reservation() {
    let mut config = full_config(web_config(true));
    config.quotas.reservation_ttl = Duration::from_secs(3600);
    let env = WebEnv::with_full_config(config).await;
    let pool = &env.db.pool;
    for sql in [
        "INSERT INTO quota_class (id, cluegetter_instance, name) VALUES (1, 1, 'outbound')",
        "INSERT INTO quota_profile (id, class, name) VALUES (1, 1, 'customers')",
        "INSERT INTO quota_profile_period (profile, period, curb) VALUES (1, 7200, 50), (1, 86400, 100)",
        "INSERT INTO quota (id, selector, value, is_regex, profile) VALUES (11, 'sender', 'alice@one.example', 0, 1)",
        // kept 2 and a live reservation of 3 count; the reservation of 4 is older than the
        // 1 h TTL (but inside both windows) and the released 7 count for nothing
        "INSERT INTO quota_message (quota, message, units, date, status) VALUES \
         (11, UNHEX('01'), 2, UTC_TIMESTAMP(6) - INTERVAL 10 MINUTE, 'kept'), \
         (11, UNHEX('02'), 3, UTC_TIMESTAMP(6) - INTERVAL 30 MINUTE, 'reserved'), \
         (11, UNHEX('03'), 4, UTC_TIMESTAMP(6) - INTERVAL 90 MINUTE, 'reserved'), \
         (11, UNHEX('05'), 1, UTC_TIMESTAMP(6) - INTERVAL 100 MINUTE, 'kept'), \
         (11, UNHEX('04'), 7, UTC_TIMESTAMP(6) - INTERVAL 5 MINUTE, 'released')",
    ] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .unwrap();
    }
    let json = env
        .api_json("/api/v1/quotas?selector=sender&value=alice%40one.example")
        .await;
    let periods = &json["quotas"][0]["periods"];
    assert_eq!(periods[0]["period"], "2h");
    assert_eq!(periods[0]["used"], 6, "{periods}");
    assert_eq!(periods[1]["period"], "1d");
    assert_eq!(periods[1]["used"], 6, "{periods}");
    let session = env.login().await;
    let (status, html) = env
        .page(
            &session,
            "/quotas?selector=sender&value=alice%40one.example",
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        html.contains("<td>2h</td><td class=\"num\">6</td><td class=\"num\">50</td>"),
        "the page shows 6 used in 2h"
    );
    assert!(html.contains("<td>1d</td><td class=\"num\">6</td><td class=\"num\">100</td>"));
}
