//! Who may see the archive: users from `[auditor] web-users` (argon2 PHC hashes), API tokens
//! from `web-api-tokens` (SHA-256 of the token), and sessions kept in memory (a restart logs
//! everyone out, which is fine for a handful of postmasters).
//!
//! Cookies: the session cookie is `HttpOnly; SameSite=Strict; Path=/` (+ `Secure` with
//! `web-cookie-secure`). Forms that change state carry a CSRF token: the login form a token
//! that must equal its own short-lived cookie (double submit), the logout form the session's
//! token. SameSite=Strict already keeps other sites' forms out; the tokens keep out same-site
//! attackers too.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use super::{AppState, WebError};

pub const SESSION_COOKIE: &str = "cg_session";
pub const LOGIN_CSRF_COOKIE: &str = "cg_login_csrf";

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

struct Session {
    user: String,
    csrf: String,
    expires: Instant,
}

/// Users, tokens and live sessions.
pub struct Auth {
    users: HashMap<String, String>,
    /// (name, SHA-256 of the token)
    tokens: Vec<(String, [u8; 32])>,
    /// by SHA-256 of the session id, so the map never holds a usable cookie value
    sessions: Mutex<HashMap<[u8; 32], Session>>,
    lifetime: Duration,
    cookie_secure: bool,
}

impl Auth {
    pub fn from_config(config: &wire::config::AuditorConfig) -> Self {
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
            sessions: Mutex::new(HashMap::new()),
            lifetime: config.web_session_lifetime.max(Duration::from_secs(60)),
            cookie_secure: config.web_cookie_secure,
        }
    }

    pub fn has_no_users(&self) -> bool {
        self.users.is_empty()
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // a panic while holding the lock leaves a consistent map (inserts and removes only)
        self.sessions
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn session(&self, id: &str) -> Option<Identity> {
        let key = sha256(id.as_bytes());
        let mut sessions = self.sessions();
        let session = sessions.get(&key)?;
        if session.expires <= Instant::now() {
            sessions.remove(&key);
            return None;
        }
        Some(Identity {
            user: session.user.clone(),
            csrf: session.csrf.clone(),
        })
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

    /// A new session for `user`; returns the cookie value.
    fn open(&self, user: &str) -> Result<String, getrandom::Error> {
        let id = random_token()?;
        let csrf = random_token()?;
        let now = Instant::now();
        let mut sessions = self.sessions();
        sessions.retain(|_, session| session.expires > now);
        sessions.insert(
            sha256(id.as_bytes()),
            Session {
                user: user.to_owned(),
                csrf,
                expires: now + self.lifetime,
            },
        );
        Ok(id)
    }

    fn close(&self, id: &str) {
        self.sessions().remove(&sha256(id.as_bytes()));
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

/// Lets a request through with a valid session cookie or bearer token; otherwise API calls get
/// 401 and pages a redirect to the login form.
pub async fn require_login(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = bearer(request.headers())
        .and_then(|token| state.auth.token(token))
        .or_else(|| {
            cookie(request.headers(), SESSION_COOKIE).and_then(|id| state.auth.session(&id))
        });
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
        Some(token) if token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()) => token,
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

pub async fn login(
    State(state): State<AppState>,
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
    let auth = state.auth.clone();
    let (user, password) = (form.user.clone(), form.password);
    let ok = tokio::task::spawn_blocking(move || auth.verify(&user, &password))
        .await
        .unwrap_or(false);
    if !ok {
        tracing::info!(user = %form.user, "web login failed");
        return login_form(
            &state,
            &headers,
            form.next.as_deref(),
            "Wrong user name or password.",
            StatusCode::UNAUTHORIZED,
        );
    }
    let id = state
        .auth
        .open(&form.user)
        .map_err(|_| WebError::Forbidden)?;
    tracing::info!(user = %form.user, "web login");
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
        state.auth.close(&id);
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
        let mut config = wire::config::AuditorConfig::default();
        config.web_users.push(wire::config::WebUser {
            name: "pm".into(),
            password_hash: hash,
        });
        config.web_api_tokens.push(wire::config::WebApiToken {
            name: "script".into(),
            sha256: token_sha256_hex("tok"),
        });
        let auth = Auth::from_config(&config);
        assert!(auth.verify("pm", "s3cret"));
        assert!(!auth.verify("pm", "wrong"));
        assert!(!auth.verify("nobody", "s3cret"));
        assert!(auth.token("tok").is_some());
        assert!(auth.token("tok2").is_none());
        let id = auth.open("pm").unwrap();
        assert_eq!(auth.session(&id).unwrap().user, "pm");
        auth.close(&id);
        assert!(auth.session(&id).is_none());
    }
}
