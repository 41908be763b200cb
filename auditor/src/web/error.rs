//! The one mapping of a web request's failures to HTTP statuses ([`WebError`]). Database
//! errors are logged and become a bare 500 (or 503 where a login is decided), never their text.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

/// Errors of a web request; each names the status it becomes.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// 400: a query parameter that cannot be understood, or one the route does not take; the
    /// text says which.
    #[error("{0}")]
    BadRequest(String),
    /// 404
    #[error("not found")]
    NotFound,
    /// 403: a form without its CSRF token.
    #[error("forbidden")]
    Forbidden,
    /// 503: the session store (the database) failed where a login is decided.
    #[error("the archive database is unavailable; try again shortly")]
    Unavailable(#[source] sqlx::Error),
    /// 500, detail in the log.
    #[error("database error")]
    Database(#[from] sqlx::Error),
}

impl WebError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        match &self {
            Self::Unavailable(error) => {
                tracing::error!(error = %error, "web sessions: the database failed");
            }
            Self::Database(error) => {
                tracing::error!(error = %error, "web request failed on the database");
            }
            Self::BadRequest(_) | Self::NotFound | Self::Forbidden => {}
        }
        // plain text: nothing of the request is reflected as HTML
        (
            self.status(),
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            self.to_string(),
        )
            .into_response()
    }
}
