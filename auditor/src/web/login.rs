//! The login and logout forms: `GET /login` (the form, with its CSRF cookie), `POST /login`
//! (throttled per user name and client address, argon2 off the async threads, then a session
//! cookie) and `POST /logout` (the session's CSRF token, then the session deleted). Who may log
//! in and how sessions are kept is [`super::auth`]'s.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use askama::Template;
use askama_web::WebTemplate;
use axum::Form;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::auth::{
    Identity, LOGIN_CSRF_COOKIE, SESSION_COOKIE, constant_time_eq, cookie, is_token, random_token,
};
use super::error::WebError;
use super::format::fmt_period;
use super::params::Params;
use super::state::AppState;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
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
    Params(query): Params<LoginQuery>,
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
                    fmt_period(u32::try_from(wait).unwrap_or(u32::MAX))
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

/// At most 100 characters of a user name, for the log.
fn shorten(user: &str) -> &str {
    user.char_indices()
        .nth(100)
        .map_or(user, |(end, _)| &user[..end])
}

#[cfg(test)]
mod tests {
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
    fn user_names_are_shortened_for_the_log() {
        assert_eq!(shorten(&"é".repeat(300)).chars().count(), 100);
        assert_eq!(shorten("pm"), "pm");
    }
}
