//! The auditor's web interface and JSON API (issue 9), served on `[auditor] web-listen`.
//!
//! Layout, in layers. This file wires the pages into the router. The **pages** (one module
//! each, a page and its JSON twin) depend only on the shared modules below them, never on each
//! other (`test-support/tests/tidy.rs` checks it):
//! - [`search`]: the message search (`params`: the query string; `filter`: validation);
//! - [`message`]: one message with its session, recipients, headers, results, verdict
//!   arithmetic, bounces and body;
//! - [`bounces`], [`quotas`], [`stats`]: the other pages; [`login`]: the login and logout
//!   forms; [`openapi`]: the JSON API's OpenAPI document.
//!
//! The **shared** modules:
//! - [`error`]: [`WebError`], the one way a request fails, and [`error::render`], which writes
//!   every failure as JSON under `/api/` and as a page elsewhere (503 while the database is
//!   away);
//! - [`server`]: the HTTP server: connection cap, header read and stall timeouts, its own
//!   runtime;
//! - [`state`]: [`AppState`], what every handler shares;
//! - [`auth`]: users (argon2) and API tokens (SHA-256) from the config, sessions in MariaDB
//!   (`web_session`), the middleware that guards every route but the login; [`throttle`]:
//!   failed logins per user name and client address (HTTP 429);
//! - [`params`]: reading query parameters (free text, times, paging, networks, ids);
//! - [`format`]: times, periods, addresses, bytes as shown; [`nav`]: the navigation bar;
//! - [`svg`]: the charts; [`terminal`]: the password prompt of `auditor web add-user`.
//!
//! What the pages read is `crate::store::read`'s: typed rows from SQL built with bind
//! parameters only; the pages validate the query string and render.
//!
//! Security: every route but `/login`, `/style.css` and the favicon needs a session cookie or a bearer
//! token; every response carries a CSP without inline scripts or styles; templates are askama
//! (autoescaped); no debug endpoints. `/metrics` stays on `metrics-listen`, outside this server.

// the shared modules
pub mod auth;
pub mod error;
pub mod format;
pub mod nav;
pub mod params;
pub mod server;
pub mod state;
pub mod svg;
pub mod terminal;
pub mod throttle;

// the pages
pub mod bounces;
pub mod login;
pub mod message;
pub mod openapi;
pub mod quotas;
pub mod search;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use auth::hash_password;
pub use error::WebError;
pub use state::AppState;

/// The JSON API's routes with their OpenAPI description (from each handler's
/// `#[utoipa::path]`).
fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(search::api))
        .routes(routes!(message::api))
        .routes(routes!(bounces::list_api))
        .routes(routes!(bounces::detail_api))
        .routes(routes!(quotas::api))
        .routes(routes!(stats::api))
        .routes(routes!(openapi::document))
}

/// The OpenAPI document of the JSON API, as `/api/openapi.json` serves it.
pub fn openapi_document() -> utoipa::openapi::OpenApi {
    api_routes().into_openapi()
}

/// The whole application: public routes, guarded routes, security headers.
pub fn router(state: AppState) -> Router {
    let (api, document) = api_routes().split_for_parts();
    let guarded = Router::new()
        .route("/", get(|| async { Redirect::to("/messages") }))
        .route("/logout", post(login::logout))
        .route("/messages", get(search::page))
        .route("/messages/{id}", get(message::page))
        .route("/bounces", get(bounces::list_page))
        .route("/bounces/{id}", get(bounces::detail_page))
        .route("/quotas", get(quotas::page))
        .route("/stats", get(stats::page))
        .merge(api)
        .fallback(|| async { WebError::NotFound })
        .layer(Extension(Arc::new(document)))
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_login,
        ));
    Router::new()
        .route("/login", get(login::login_page).post(login::login))
        .route("/style.css", get(style))
        .route("/favicon.svg", get(favicon))
        .route("/favicon.ico", get(favicon))
        .merge(guarded)
        .layer(middleware::from_fn_with_state(
            state.clone(),
            request_timeout,
        ))
        .layer(middleware::from_fn(error::render))
        .layer(middleware::from_fn(security_headers))
        .with_state(state)
}

/// A request worked on longer than `web-request-timeout` is answered 503 (and its work
/// dropped: a slow query cannot hold a connection for ever).
async fn request_timeout(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.limits.request_timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            metrics::counter!(crate::metrics::WEB_REQUEST_TIMEOUTS).increment(1);
            tracing::warn!(
                timeout = ?state.limits.request_timeout,
                "web request answered 503: it took longer than web-request-timeout"
            );
            WebError::Timeout.into_response()
        }
    }
}

/// Serves the UI until `shutdown` fires, and sweeps expired sessions meanwhile, within
/// `state.limits` ([`server::serve`]). The router is served with the peers' addresses
/// (`ConnectInfo<SocketAddr>`), which the login needs. The database need not be up: requests
/// that need it are answered 503 until it is.
///
/// # Errors
/// The listener fails.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    if state.auth.has_no_users() {
        tracing::warn!(
            "the web interface has no users and refuses every login: make a password hash with \
             `auditor web add-user NAME` and paste what it prints into the configuration"
        );
    }
    tracing::info!(listen = ?listener.local_addr().ok(), "web interface listening");
    let sweeping = tokio::spawn(sweep_every(
        state.clone(),
        auth::SESSION_SWEEP,
        shutdown.child_token(),
    ));
    let limits = state.limits;
    let served = server::serve(listener, router(state), limits, shutdown).await;
    sweeping.abort();
    served
}

/// Binds `web-listen` and serves the UI on a runtime of its own ([`server::spawn`]) until
/// `shutdown` fires, with a pool of its own made there (lazily: the database need not be up).
/// Returns the address bound (port 0: a free one) and the thread; join it after `shutdown`.
///
/// # Errors
/// `web-listen` cannot be bound, `database.url` is invalid, or the runtime cannot be made.
pub fn spawn(
    config: &platform::config::Config,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    std::net::SocketAddr,
    std::thread::JoinHandle<std::io::Result<()>>,
)> {
    use anyhow::Context as _;
    let listen = config.auditor.web_listen;
    let listener = std::net::TcpListener::bind(listen)
        .with_context(|| format!("cannot listen on web-listen {listen}"))?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let config = config.clone();
    // checked here, used there: a bad URL stops the auditor at start
    crate::store::connect_lazy(&config.database.url, 1).context("invalid database.url")?;
    let thread = server::spawn(move || async move {
        let pool =
            crate::store::connect_lazy(&config.database.url, config.database.max_connections)
                .map_err(std::io::Error::other)?;
        let listener = TcpListener::from_std(listener)?;
        serve(listener, AppState::new(&config, pool), shutdown).await
    })?;
    Ok((bound, thread))
}

/// [`auth::sweep`] at start and every `interval` until `shutdown` fires.
async fn sweep_every(state: AppState, interval: Duration, shutdown: CancellationToken) {
    loop {
        match auth::sweep(&state).await {
            Ok(0) => {}
            Ok(deleted) => tracing::debug!(deleted, "expired web sessions deleted"),
            Err(error) => {
                tracing::warn!(error = %error, "cannot delete expired web sessions; trying again later");
            }
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

const CSS: &str = include_str!("../../templates/style.css");
const FAVICON: &str = include_str!("../../templates/favicon.svg");

/// The icon, as SVG for `/favicon.ico` too (browsers take an SVG there).
async fn favicon() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "image/svg+xml"),
            (header::CACHE_CONTROL, "max-age=86400"),
        ],
        FAVICON,
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        CSS,
    )
}

/// Security headers on every response, the login page and errors included.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (
            header::HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        // archive contents must not linger in shared caches
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The closed sets in the document are the types' own: a new verdict or selector shows up
    /// without anyone editing the document.
    #[test]
    fn the_openapi_document_takes_its_closed_sets_from_the_types() {
        let document = serde_json::to_value(openapi_document()).unwrap();
        assert_eq!(document["openapi"], "3.1.0");
        let enum_of = |path: &str, name: &str| -> Vec<String> {
            document["paths"][path]["get"]["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["name"] == name)
                .unwrap_or_else(|| panic!("{path} has no parameter {name}"))["schema"]["enum"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_owned())
                .collect()
        };
        let verdicts: Vec<String> = wire::Action::ALL
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect();
        assert_eq!(enum_of("/api/v1/messages", "verdict"), verdicts);
        let selectors: Vec<String> = platform::quotas::Selector::ALL
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        assert_eq!(enum_of("/api/v1/quotas", "selector"), selectors);
        // the response types are described, nested ones included
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for name in [
            "SearchResult",
            "MessageSummary",
            "MessageDetail",
            "ModuleResult",
            "BounceList",
            "BounceDetail",
            "QuotaOverview",
            "Stats",
        ] {
            assert!(schemas.contains_key(name), "{name} in {:?}", schemas.keys());
        }
        let security = document["components"]["securitySchemes"]
            .as_object()
            .unwrap();
        assert_eq!(security["session"]["name"], auth::SESSION_COOKIE);
        assert_eq!(security["bearer"]["scheme"], "bearer");
    }
}
