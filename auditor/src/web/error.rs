//! The one way a web request fails ([`WebError`]): each failure names its HTTP status, and
//! [`render`] (a middleware around the whole router) writes every failure the same way: JSON
//! (`{"error": …, "status": …}`) under `/api/`, an HTML page elsewhere. Handlers, extractors
//! and the login guard return `WebError`s; what axum itself refuses (an unknown method, a form
//! it cannot read) is caught by [`render`] too, so its own text never reaches a client.
//!
//! Database errors are logged, never shown. A database that cannot be reached (down, not
//! migrated yet, a Galera node not ready) is a 503 with `Retry-After`, for pages, API calls and
//! sessions alike; any other database error a bare 500.

use askama::Template;
use askama_web::WebTemplate;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_SECS: &str = "5";
/// MariaDB's "Unknown database" and "Table doesn't exist": the archive is not migrated yet.
const ER_BAD_DB: u16 = 1049;
const ER_NO_SUCH_TABLE: u16 = 1146;

/// Errors of a web request; each names the status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// 400: a query parameter that cannot be understood, or one the route does not take; the
    /// text says which.
    #[error("{0}")]
    BadRequest(String),
    /// 401: no valid session cookie or bearer token.
    #[error("authentication required")]
    Unauthenticated,
    /// 403: a form without its CSRF token.
    #[error("forbidden")]
    Forbidden,
    /// 404
    #[error("not found")]
    NotFound,
    /// 503: the archive database cannot be reached (or is not migrated yet).
    #[error("the archive database is unavailable; try again shortly")]
    Unavailable(#[source] sqlx::Error),
    /// 503: the request took longer than `web-request-timeout`.
    #[error("the request took too long; try again shortly, or narrow the search")]
    Timeout,
    /// 500, detail in the log.
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// Another status axum or hyper chose (405, 413, 415…): its standard reason only.
    #[error("{}", .0.canonical_reason().unwrap_or("error"))]
    Status(StatusCode),
}

impl From<sqlx::Error> for WebError {
    /// A database that cannot be reached is [`WebError::Unavailable`], anything else
    /// [`WebError::Database`].
    fn from(error: sqlx::Error) -> Self {
        if is_unavailable(&error) {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

/// Whether `error` means the archive cannot serve now (worth a 503 and a retry): the server
/// away or not ready (`platform::database::is_connection_error`), or the schema not there yet.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    if platform::database::is_connection_error(error) {
        return true;
    }
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .is_some_and(|e| matches!(e.number(), ER_BAD_DB | ER_NO_SUCH_TABLE)),
        _ => false,
    }
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable(_) | Self::Timeout => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Status(status) => *status,
        }
    }
}

/// What [`render`] writes: the status and the text a client may see.
#[derive(Clone, Debug)]
struct Failure {
    status: StatusCode,
    text: String,
}

impl IntoResponse for WebError {
    /// A bare response carrying the failure; [`render`] turns it into JSON or a page.
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(error) => {
                tracing::warn!(error = %error, "web request: the archive database is unavailable");
            }
            Self::Database(error) => {
                tracing::error!(error = %error, "web request failed on the database");
            }
            _ => {}
        }
        let failure = Failure {
            status: self.status(),
            text: self.to_string(),
        };
        let mut response = failure.status.into_response();
        response.extensions_mut().insert(failure);
        response
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    reason: &'static str,
    text: String,
}

/// Writes every failure one way: JSON under `/api/`, an HTML page elsewhere, with
/// `Retry-After` on a 503 and `WWW-Authenticate` on a 401 for the API. A failure response that
/// did not come from a [`WebError`] (axum's rejections, its 405) is replaced by its status's
/// standard reason, so nothing of axum's own text leaks.
pub async fn render(request: Request, next: Next) -> Response {
    let api = request.uri().path().starts_with("/api/");
    let response = next.run(request).await;
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return response;
    }
    let failure = match response.extensions().get::<Failure>() {
        Some(failure) => failure.clone(),
        None if is_ours(&response) => return response,
        None => Failure {
            status,
            text: WebError::Status(status).to_string(),
        },
    };
    let mut rendered = if api {
        let body = serde_json::json!({ "error": failure.text, "status": failure.status.as_u16() });
        (failure.status, axum::Json(body)).into_response()
    } else {
        let page = ErrorPage {
            status: failure.status.as_u16(),
            reason: failure.status.canonical_reason().unwrap_or("Error"),
            text: failure.text,
        };
        (failure.status, page).into_response()
    };
    // keep what the handler set (cookies, Retry-After of a 429), but not its body's type
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().append(name, value.clone());
        }
    }
    let headers = rendered.headers_mut();
    if failure.status == StatusCode::SERVICE_UNAVAILABLE {
        headers.insert(
            header::RETRY_AFTER,
            HeaderValue::from_static(RETRY_AFTER_SECS),
        );
    }
    if failure.status == StatusCode::UNAUTHORIZED && api {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    rendered
}

/// A failure status the pages rendered themselves (a search form refused with a 400, a login
/// form with a 401 or 429): HTML or JSON of ours, kept as it is.
fn is_ours(response: &Response) -> bool {
    response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("text/html") || value.starts_with("application/json")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unreachable_database_is_503_anything_else_500() {
        assert_eq!(
            WebError::from(sqlx::Error::PoolTimedOut).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            WebError::from(sqlx::Error::Io(std::io::Error::from(
                std::io::ErrorKind::ConnectionRefused
            )))
            .status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            WebError::from(sqlx::Error::RowNotFound).status(),
            StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(
            WebError::Status(StatusCode::METHOD_NOT_ALLOWED).to_string(),
            "Method Not Allowed"
        );
    }
}
