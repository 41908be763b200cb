//! Who may see the archive: users from `[auditor] web-users` (argon2 PHC hashes), API tokens
//! from `web-api-tokens` (SHA-256 of the token), and sessions kept in MariaDB
//! (`schema/0007_web_sessions.sql`: the SHA-256 of the session id, the user, created and expiry
//! times by the database's clock), so a restart logs nobody out and several auditors behind one
//! load balancer share them. A session whose user is no longer configured is refused. Expired
//! rows are deleted when a lookup meets them and every [`SESSION_SWEEP`] by [`sweep`]. A database
//! error while checking a session is a 503, never a login.
//!
//! Roles: each user and token has a `role` (`admin`, `domain-admin` with `domains`, `auditor`);
//! [`scope_of`] turns it into the [`Scope`] every read of the archive takes
//! (`crate::store::read`), so the role is enforced in the SQL. The session row holds only the
//! user name: a role changed in the configuration applies at the next request.
//!
//! Failed logins are throttled per user name and per client address ([`super::throttle`]);
//! the login and logout forms themselves are [`super::login`]'s.
//!
//! Cookies: the session cookie is `HttpOnly; SameSite=Strict; Path=/` (+ `Secure` with
//! `web-cookie-secure`). Forms that change state carry a CSRF token: the login form a token
//! that must equal its own short-lived cookie (double submit), the logout form the session's
//! token. SameSite=Strict already keeps other sites' forms out; the tokens keep out same-site
//! attackers too.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use platform::database::Database;
use sha2::{Digest as _, Sha256};

use super::error::WebError;
use super::state::AppState;
use super::throttle::LoginThrottle;
use crate::store::read::Scope;
use platform::config::WebRole;

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
    /// What the user or token may see, from its role: every read takes it.
    pub scope: Scope,
}

/// The scope of a role: `admin` everything, `domain-admin` its domains, `auditor` everything
/// but contents.
pub fn scope_of(role: WebRole, domains: &[String]) -> Scope {
    match role {
        WebRole::Admin => Scope::all(),
        WebRole::DomainAdmin => Scope::domains(domains),
        WebRole::Auditor => Scope::without_contents(),
    }
}

/// A configured user: the password hash and what the user may see.
struct User {
    hash: String,
    scope: Scope,
}

/// Users, tokens, the session settings and the login throttle.
pub struct Auth {
    users: HashMap<String, User>,
    /// (name, SHA-256 of the token, scope)
    tokens: Vec<(String, [u8; 32], Scope)>,
    pub(super) lifetime: Duration,
    cookie_secure: bool,
    pub(super) throttle: LoginThrottle,
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
                Some((
                    token.name.clone(),
                    digest?,
                    scope_of(token.role, &token.domains),
                ))
            })
            .collect();
        Self {
            users: config
                .web_users
                .iter()
                .map(|user| {
                    let entry = User {
                        hash: user.password_hash.clone(),
                        scope: scope_of(user.role, &user.domains),
                    };
                    (user.name.clone(), entry)
                })
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
        pool: &Database,
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
        let scope = self.users.get(&user).map(|known| known.scope.clone());
        if !live || scope.is_none() {
            sqlx::query("DELETE FROM web_session WHERE id = ?")
                .bind(key.as_slice())
                .execute(pool)
                .await?;
            if live {
                tracing::info!(user = ?user, "web session refused: the user is no longer configured");
            }
            return Ok(None);
        }
        Ok(scope.map(|scope| Identity {
            user,
            csrf: session_csrf(id),
            scope,
        }))
    }

    fn token(&self, token: &str) -> Option<Identity> {
        let digest = sha256(token.as_bytes());
        self.tokens
            .iter()
            .find(|(_, known, _)| constant_time_eq(known, &digest))
            .map(|(name, _, scope)| Identity {
                user: format!("token:{name}"),
                csrf: String::new(),
                scope: scope.clone(),
            })
    }

    /// A new session for `user`, stored; returns the cookie value.
    pub(super) async fn open(&self, pool: &Database, user: &str) -> Result<String, WebError> {
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

    pub(super) async fn close(&self, pool: &Database, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query("DELETE FROM web_session WHERE id = ?")
            .bind(sha256(id.as_bytes()).as_slice())
            .execute(pool)
            .await?;
        Ok(())
    }

    /// Whether `password` is `user`'s. Slow on purpose (argon2): call off the async threads.
    pub(super) fn verify(&self, user: &str, password: &str) -> bool {
        let (hash, known) = match self.users.get(user) {
            Some(known) => (known.hash.as_str(), true),
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

    pub(super) fn cookie(
        &self,
        name: &str,
        value: &str,
        path: &str,
        max_age: Duration,
    ) -> HeaderValue {
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

/// A web user's role, as `auditor web add-user --role` takes it (the configuration's
/// [`WebRole`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// Sees everything.
    #[default]
    Admin,
    /// Sees only the messages, bounces and quotas of its `--domain`s.
    DomainAdmin,
    /// Sees everything but message headers and bodies.
    Auditor,
}

impl From<Role> for WebRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Admin => Self::Admin,
            Role::DomainAdmin => Self::DomainAdmin,
            Role::Auditor => Self::Auditor,
        }
    }
}

/// Why `name` cannot be a web user's name: empty, too long, or with control characters or
/// surrounding spaces (it is typed at the login form and shown in logs).
///
/// # Errors
/// The reason, for the command line.
pub fn check_user_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.chars().count() > 100 {
        return Err("the user name must have 1 to 100 characters".to_owned());
    }
    if name.chars().any(char::is_control) || name.trim() != name {
        return Err(
            "the user name must not hold control characters or begin or end with spaces".to_owned(),
        );
    }
    Ok(())
}

/// The `[[auditor.web-users]]` block for a user with this argon2 `hash`, role and domains, to
/// paste at the end of the configuration's `[auditor]` section.
///
/// # Errors
/// The role and domains do not go together (`domain-admin` needs domains, the others take
/// none), as the configuration would refuse them.
pub fn user_toml(name: &str, hash: &str, role: Role, domains: &[String]) -> Result<String, String> {
    // a JSON string is a TOML basic string (same escapes)
    let quoted = |text: &str| serde_json::to_string(text).unwrap_or_default();
    let domains: Vec<String> = domains.iter().map(|d| d.trim().to_lowercase()).collect();
    let user = platform::config::WebUser {
        name: name.to_owned(),
        password_hash: hash.to_owned(),
        role: role.into(),
        domains: domains.clone(),
    };
    user.check_role()?;
    let role = WebRole::from(role).as_str();
    let mut block = format!(
        "# paste after the last plain key of [auditor]\n\
         [[auditor.web-users]]\nname = {}\npassword-hash = {}\nrole = {}\n",
        quoted(name),
        quoted(hash),
        quoted(role)
    );
    if !domains.is_empty() {
        let list: Vec<String> = domains.iter().map(|d| quoted(d)).collect();
        block.push_str(&format!("domains = [{}]\n", list.join(", ")));
    }
    Ok(block)
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
/// down), 503: never a login.
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
                tracing::error!(error = %error, "cannot check a web session: the database failed");
                return WebError::Unavailable(error).into_response();
            }
        }
    }
    if let Some(identity) = identity {
        request.extensions_mut().insert(identity);
        return next.run(request).await;
    }
    let path = request.uri().path();
    if path.starts_with("/api/")
        || bearer(request.headers()).is_some()
        || request.method() != axum::http::Method::GET
    {
        return WebError::Unauthenticated.into_response();
    }
    let wanted = request
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();
    let target = serde_urlencoded::to_string([("next", wanted.as_str())]).unwrap_or_default();
    Redirect::to(&format!("/login?{target}")).into_response()
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The value of cookie `name` from the request's `Cookie` headers.
pub(super) fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.to_owned())
}

/// Whether `text` looks like one of our tokens (64 hex digits).
pub(super) fn is_token(text: &str) -> bool {
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
pub(super) fn random_token() -> Result<String, getrandom::Error> {
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

pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn hashes_verify_and_tokens_round_trip() {
        let hash = hash_password("s3cret").unwrap();
        let mut config = platform::config::AuditorConfig::default();
        config.web_users.push(platform::config::WebUser {
            name: "pm".into(),
            password_hash: hash,
            ..Default::default()
        });
        config.web_api_tokens.push(platform::config::WebApiToken {
            name: "script".into(),
            sha256: token_sha256_hex("tok"),
            role: WebRole::DomainAdmin,
            domains: vec!["One.Example".into()],
        });
        let auth = Auth::from_config(&config);
        assert!(auth.verify("pm", "s3cret"));
        assert!(!auth.verify("pm", "wrong"));
        assert!(!auth.verify("nobody", "s3cret"));
        assert_eq!(
            auth.token("tok").unwrap().scope,
            Scope::domains(["one.example"])
        );
        assert_eq!(auth.users["pm"].scope, Scope::all());
        assert!(auth.token("tok2").is_none());
    }

    /// The block `add-user` prints is a configuration the loader takes, with the role.
    #[test]
    fn add_user_prints_a_block_with_the_role_and_refuses_a_domain_admin_without_domains() {
        let hash = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA";
        let block = user_toml(
            "d\"a",
            hash,
            Role::DomainAdmin,
            &["One.Example".into(), "two.example".into()],
        )
        .unwrap();
        assert!(block.contains("role = \"domain-admin\""), "{block}");
        assert!(
            block.contains("domains = [\"one.example\", \"two.example\"]"),
            "{block}"
        );
        let path = std::env::temp_dir().join(format!("add-user-{}.toml", std::process::id()));
        std::fs::write(&path, format!("[auditor]\n{block}")).unwrap();
        let config = platform::config::load(Some(&path), Default::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(config.auditor.web_users[0].name, "d\"a");
        assert_eq!(config.auditor.web_users[0].role, WebRole::DomainAdmin);
        let block = user_toml("aud", hash, Role::Auditor, &[]).unwrap();
        assert!(block.contains("role = \"auditor\""), "{block}");
        assert!(!block.contains("domains"), "{block}");
        let err = user_toml("d", hash, Role::DomainAdmin, &[]).unwrap_err();
        assert!(err.contains("no domains"), "{err}");
        let err = user_toml("a", hash, Role::Admin, &["x.example".into()]).unwrap_err();
        assert!(err.contains("takes none"), "{err}");
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
    }
}
