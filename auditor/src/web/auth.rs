//! Who may see the archive: users from `[auditor] web-users` (argon2 PHC hashes), API tokens
//! from `web-api-tokens` (SHA-256 of the token), and sessions kept in MariaDB
//! (`schema/0007_web_sessions.sql`: the SHA-256 of the session id, the user, created and expiry
//! times by the database's clock), so a restart logs nobody out and several auditors behind one
//! load balancer share them. A session whose user is no longer configured is refused. Expired
//! rows are deleted when a lookup meets them and every [`SESSION_SWEEP`] by [`sweep`]. A database
//! error while checking a session is a 503, never a login.
//!
//! Failed logins are throttled per user name and per client address ([`super::throttle`]).
//!
//! Cookies: the session cookie is `HttpOnly; SameSite=Strict; Path=/` (+ `Secure` with
//! `web-cookie-secure`). Forms that change state carry a CSRF token: the login form a token
//! that must equal its own short-lived cookie (double submit), the logout form the session's
//! token. SameSite=Strict already keeps other sites' forms out; the tokens keep out same-site
//! attackers too.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use sqlx::MySqlPool;

use super::throttle::LoginThrottle;
use super::{AppState, WebError};

pub const SESSION_COOKIE: &str = "cg_session";
pub const LOGIN_CSRF_COOKIE: &str = "cg_login_csrf";
/// How often expired sessions (and stale login failure counts) are swept.
pub const SESSION_SWEEP: Duration = Duration::from_secs(600);
/// Expired session rows deleted by one statement at most.
const SWEEP_BATCH: u32 = 1000;

/// A hash of a password nobody knows, checked when the user name is unknown so that a wrong
/// name costs as long as a wrong password.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$2xU7E0Kk5Ai7nDTlXbJ3G6P0YbJq7b6w4Yv2uKq3r2M";

/// The logged-in user of a request (request extension set by [`require_login`]).
#[derive(Clone, Debug)]
pub struct Identity {
    pub user: String,
    /// The session's CSRF token for the logout form; empty for API tokens.
    pub csrf: String,
}

/// Users, tokens, the session settings and the login throttle.
pub struct Auth {
    users: HashMap<String, String>,
    /// (name, SHA-256 of the token)
    tokens: Vec<(String, [u8; 32])>,
    lifetime: Duration,
    cookie_secure: bool,
    throttle: LoginThrottle,
}

impl Auth {
    pub fn from_config(config: &platform::config::AuditorConfig) -> Self {
        let tokens = config
            .web_api_tokens
            .iter()
            .filter_map(|token| {
                let digest = decode_hex32(&token.sha256);
                if digest.is_none() {
                    tracing::warn!(name = %token.name, "ignoring an API token whose sha256 is not 64 hex digits");
                }
                Some((token.name.clone(), digest?))
            })
            .collect();
        Self {
            users: config
                .web_users
                .iter()
                .map(|user| (user.name.clone(), user.password_hash.clone()))
                .collect(),
            tokens,
            lifetime: config.web_session_lifetime.max(Duration::from_secs(60)),
            cookie_secure: config.web_cookie_secure,
            throttle: LoginThrottle::new(
                config.web_login_max_failures,
                config.web_login_failure_window,
            ),
        }
    }

    pub fn has_no_users(&self) -> bool {
        self.users.is_empty()
    }

    /// The session with cookie value `id`, if it exists, has not expired and its user is still
    /// configured; an expired or orphaned row met here is deleted.
    ///
    /// # Errors
    /// The database failed: the caller must refuse the request (503), not log anyone in.
    pub async fn session(
        &self,
        pool: &MySqlPool,
        id: &str,
    ) -> Result<Option<Identity>, sqlx::Error> {
        if !is_token(id) {
            // not one of ours: no need to ask the database
            return Ok(None);
        }
        let key = sha256(id.as_bytes());
        let row: Option<(String, bool)> =
            sqlx::query_as("SELECT user, expires > UTC_TIMESTAMP(6) FROM web_session WHERE id = ?")
                .bind(key.as_slice())
                .fetch_optional(pool)
                .await?;
        let Some((user, live)) = row else {
            return Ok(None);
        };
        if !live || !self.users.contains_key(&user) {
            sqlx::query("DELETE FROM web_session WHERE id = ?")
                .bind(key.as_slice())
                .execute(pool)
                .await?;
            if live {
                tracing::info!(user = ?user, "web session refused: the user is no longer configured");
            }
            return Ok(None);
        }
        Ok(Some(Identity {
            user,
            csrf: session_csrf(id),
        }))
    }

    fn token(&self, token: &str) -> Option<Identity> {
        let digest = sha256(token.as_bytes());
        self.tokens
            .iter()
            .find(|(_, known)| constant_time_eq(known, &digest))
            .map(|(name, _)| Identity {
                user: format!("token:{name}"),
                csrf: String::new(),
            })
    }

    /// A new session for `user`, stored; returns the cookie value.
    async fn open(&self, pool: &MySqlPool, user: &str) -> Result<String, WebError> {
        let id = random_token().map_err(|_| WebError::Forbidden)?;
        sqlx::query(
            "INSERT INTO web_session (id, user, created, expires) \
             VALUES (?, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6) + INTERVAL ? SECOND)",
        )
        .bind(sha256(id.as_bytes()).as_slice())
        .bind(user)
        .bind(self.lifetime.as_secs())
        .execute(pool)
        .await
        .map_err(WebError::Unavailable)?;
        Ok(id)
    }

    async fn close(&self, pool: &MySqlPool, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM web_session WHERE id = ?")
            .bind(sha256(id.as_bytes()).as_slice())
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Whether `password` is `user`'s. Slow on purpose (argon2): call off the async threads.
    fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(hash) => (hash.as_str(), true),
            None => (DUMMY_HASH, false),
        };
        let Ok(parsed) = PasswordHash::new(hash) else {
            tracing::error!(user, "the password-hash of this web user cannot be parsed");
            return false;
        };
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok();
        known && matches
    }

    fn cookie(&self, name: &str, value: &str, path: &str, max_age: Duration) -> HeaderValue {
        let secure = if self.cookie_secure { "; Secure" } else { "" };
        let text = format!(
            "{name}={value}; Path={path}; Max-Age={}; HttpOnly; SameSite=Strict{secure}",
            max_age.as_secs()
        );
        // values are our own hex tokens: always a valid header value
        HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// An argon2id PHC string for `password` (argon2's default parameters, a random salt), for
/// `[[auditor.web-users]] password-hash`.
///
/// # Errors
/// No randomness from the OS, or argon2 refuses the input.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0_u8; 16];
    getrandom::fill(&mut salt).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    let salt = SaltString::encode_b64(&salt).map_err(|error| anyhow::anyhow!("{error}"))?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| anyhow::anyhow!("cannot hash the password: {error}"))?;
    Ok(hash.to_string())
}

/// Deletes expired sessions, a batch at a time, and forgets login failures older than the
/// window; returns the session rows deleted.
///
/// # Errors
/// The database failed (the next sweep tries again).
pub async fn sweep(state: &AppState) -> Result<u64, sqlx::Error> {
    state.auth.throttle.prune(Instant::now());
    let mut deleted = 0;
    loop {
        let done = sqlx::query(
            "DELETE FROM web_session WHERE expires <= UTC_TIMESTAMP(6) ORDER BY expires LIMIT ?",
        )
        .bind(SWEEP_BATCH)
        .execute(&state.pool)
        .await?
        .rows_affected();
        deleted += done;
        if done < u64::from(SWEEP_BATCH) {
            return Ok(deleted);
        }
    }
}

/// Lets a request through with a valid session cookie or bearer token; otherwise API calls get
/// 401 and pages a redirect to the login form. When the session cannot be checked (database
/// down), 503.
pub async fn require_login(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let mut identity = bearer(request.headers()).and_then(|token| state.auth.token(token));
    if identity.is_none()
        && let Some(id) = cookie(request.headers(), SESSION_COOKIE)
    {
        match state.auth.session(&state.pool, &id).await {
            Ok(found) => identity = found,
            Err(error) => {
                let api = request.uri().path().starts_with("/api/");
                return session_store_unavailable(&error, api);
            }
        }
    }
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity);
        return next.run(request).await;
    }
    let path = request.uri().path();
    if path.starts_with("/api/") || bearer(request.headers()).is_some() {
        return (
            StatusCode::UNAUTHORIZED,
            [
                (header::WWW_AUTHENTICATE, "Bearer"),
                (header::CONTENT_TYPE, "application/json"),
            ],
            r#"{"error":"authentication required"}"#,
        )
            .into_response();
    }
    if request.method() != axum::http::Method::GET {
        return (StatusCode::UNAUTHORIZED, "authentication required").into_response();
    }
    let wanted = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let target = serde_urlencoded::to_string([("next", wanted.as_str())]).unwrap_or_default();
    Redirect::to(&format!("/login?{target}")).into_response()
}

/// 503: the session could not be checked. JSON for the API, plain text for pages.
fn session_store_unavailable(error: &sqlx::Error, api: bool) -> Response {
    tracing::error!(error = %error, "cannot check a web session: the database failed");
    let retry = [(header::RETRY_AFTER, "5")];
    if api {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            retry,
            [(header::CONTENT_TYPE, "application/json")],
            r#"{"error":"the session store (database) is unavailable; try again shortly"}"#,
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            retry,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            "503 Service Unavailable: the login cannot be checked because the archive database \
             is unavailable; try again shortly.",
        )
            .into_response()
    }
}

#[derive(Debug, Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginTemplate {
    csrf: String,
    next: String,
    error: String,
    no_users: bool,
}

pub async fn login_page(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<LoginQuery>,
) -> Result<Response, WebError> {
    login_form(&state, &headers, query.next.as_deref(), "", StatusCode::OK)
}

fn login_form(
    state: &AppState,
    headers: &HeaderMap,
    next: Option<&str>,
    error: &str,
    status: StatusCode,
) -> Result<Response, WebError> {
    // Keep a token the browser already has: another tab, or a request the browser makes on
    // its own (a favicon redirected here), must not invalidate the form on screen.
    let csrf = match cookie(headers, LOGIN_CSRF_COOKIE) {
        Some(token) if is_token(&token) => token,
        _ => random_token().map_err(|_| WebError::Forbidden)?,
    };
    let cookie = state.auth.cookie(
        LOGIN_CSRF_COOKIE,
        &csrf,
        "/login",
        Duration::from_secs(3600),
    );
    let page = LoginTemplate {
        csrf,
        next: safe_next(next).to_owned(),
        error: error.to_owned(),
        no_users: state.auth.has_no_users(),
    };
    Ok((status, [(header::SET_COOKIE, cookie)], page).into_response())
}

#[derive(Debug, Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    user: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    csrf: String,
    next: Option<String>,
}

/// `POST /login`. Needs the connection's peer address (the server is run with
/// `into_make_service_with_connect_info`), which the throttle counts failures by.
pub async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, WebError> {
    let expected = cookie(&headers, LOGIN_CSRF_COOKIE).unwrap_or_default();
    if expected.is_empty() || !constant_time_eq(expected.as_bytes(), form.csrf.as_bytes()) {
        return Err(WebError::Forbidden);
    }
    if state.auth.has_no_users() {
        tracing::warn!(user = %form.user, "web login refused: no [[auditor.web-users]] configured");
        return login_form(
            &state,
            &headers,
            form.next.as_deref(),
            "No users are configured; see the auditor's log.",
            StatusCode::UNAUTHORIZED,
        );
    }
    let client = peer.ip();
    let attempt = match state
        .auth
        .throttle
        .begin(&form.user, client, Instant::now())
    {
        Ok(attempt) => attempt,
        Err(refused) => {
            // whole seconds, rounded up: a client that waits that long is let in
            let wait = (refused.retry_after.as_secs()
                + u64::from(refused.retry_after.subsec_nanos() > 0))
            .max(1);
            tracing::warn!(
                user = ?shorten(&form.user),
                %client,
                by = if refused.by_user { "user" } else { "client" },
                retry_after_secs = wait,
                "web login refused: too many failed logins"
            );
            let mut response = login_form(
                &state,
                &headers,
                form.next.as_deref(),
                &format!(
                    "Too many failed logins; try again in {}.",
                    super::quotas::fmt_period(u32::try_from(wait).unwrap_or(u32::MAX))
                ),
                StatusCode::TOO_MANY_REQUESTS,
            )?;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(wait));
            return Ok(response);
        }
    };
    let auth = state.auth.clone();
    let (user, password) = (form.user.clone(), form.password);
    let ok = tokio::task::spawn_blocking(move || auth.verify(&user, &password))
        .await
        .unwrap_or(false);
    if !ok {
        attempt.failed();
        tracing::info!(user = ?shorten(&form.user), %client, "web login failed");
        return login_form(
            &state,
            &headers,
            form.next.as_deref(),
            "Wrong user name or password.",
            StatusCode::UNAUTHORIZED,
        );
    }
    attempt.succeeded();
    let id = state.auth.open(&state.pool, &form.user).await?;
    tracing::info!(user = %form.user, %client, "web login");
    let session = state
        .auth
        .cookie(SESSION_COOKIE, &id, "/", state.auth.lifetime);
    let clear = state
        .auth
        .cookie(LOGIN_CSRF_COOKIE, "", "/login", Duration::ZERO);
    let mut response = Redirect::to(safe_next(form.next.as_deref())).into_response();
    response.headers_mut().append(header::SET_COOKIE, session);
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

#[derive(Debug, Deserialize)]
pub struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

pub async fn logout(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, WebError> {
    if identity.csrf.is_empty() || !constant_time_eq(identity.csrf.as_bytes(), form.csrf.as_bytes())
    {
        return Err(WebError::Forbidden);
    }
    if let Some(id) = cookie(&headers, SESSION_COOKIE) {
        state
            .auth
            .close(&state.pool, &id)
            .await
            .map_err(WebError::Unavailable)?;
    }
    tracing::info!(user = %identity.user, "web logout");
    let clear = state.auth.cookie(SESSION_COOKIE, "", "/", Duration::ZERO);
    let mut response = Redirect::to("/login").into_response();
    response.headers_mut().append(header::SET_COOKIE, clear);
    Ok(response)
}

/// Where to go after the login: a local path only (no `//host`, no scheme), else `/messages`.
fn safe_next(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && !path.contains('\\')
                && !path.chars().any(char::is_control) =>
        {
            path
        }
        _ => "/messages",
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name` from the request's `Cookie` headers.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// At most 100 characters of a user name, for the log.
fn shorten(user: &str) -> &str {
    user.char_indices()
        .nth(100)
        .map_or(user, |(end, _)| &user[..end])
}

/// Whether `text` looks like one of our tokens (64 hex digits).
fn is_token(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The logout form's CSRF token of the session `id`: derived, so it need not be stored, and
/// it does not reveal the id.
fn session_csrf(id: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"cluegetter web session csrf\0");
    hasher.update(id.as_bytes());
    hex(&hasher.finalize())
}

/// 32 random bytes as 64 hex digits.
fn random_token() -> Result<String, getrandom::Error> {
    let mut bytes = [0_u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(hex(&bytes))
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// Lower-case hex of a token's SHA-256, as `web-api-tokens` keeps it.
pub fn token_sha256_hex(token: &str) -> String {
    hex(&sha256(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

fn decode_hex32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0_u8; 32];
    for (i, pair) in bytes.chunks(2).enumerate() {
        let pair = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(out)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn next_stays_on_this_site() {
        assert_eq!(safe_next(Some("/messages?sender=a")), "/messages?sender=a");
        for bad in ["//evil.example", "https://evil.example", "/\\evil", "", "x"] {
            assert_eq!(safe_next(Some(bad)), "/messages", "{bad}");
        }
        assert_eq!(safe_next(None), "/messages");
    }

    #[test]
    fn hashes_verify_and_tokens_round_trip() {
        let hash = hash_password("s3cret").unwrap();
        let mut config = platform::config::AuditorConfig::default();
        config.web_users.push(platform::config::WebUser {
            name: "pm".into(),
            password_hash: hash,
        });
        config.web_api_tokens.push(platform::config::WebApiToken {
            name: "script".into(),
            sha256: token_sha256_hex("tok"),
        });
        let auth = Auth::from_config(&config);
        assert!(auth.verify("pm", "s3cret"));
        assert!(!auth.verify("pm", "wrong"));
        assert!(!auth.verify("nobody", "s3cret"));
        assert!(auth.token("tok").is_some());
        assert!(auth.token("tok2").is_none());
    }

    #[test]
    fn the_logout_token_is_derived_from_the_session_id_and_differs_from_it() {
        let id = random_token().unwrap();
        assert!(is_token(&id));
        let csrf = session_csrf(&id);
        assert!(is_token(&csrf));
        assert_ne!(csrf, id);
        assert_eq!(session_csrf(&id), csrf);
        assert_ne!(session_csrf(&random_token().unwrap()), csrf);
        assert!(!is_token("00ff"));
        assert_eq!(shorten(&"é".repeat(300)).chars().count(), 100);
        assert_eq!(shorten("pm"), "pm");
    }
}
