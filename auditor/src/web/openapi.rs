//! The JSON API's OpenAPI 3.1 document, served at `/api/openapi.json` (behind the login like
//! everything else). Generated from the types: each API handler's `#[utoipa::path]` (its
//! parameter struct, its response type), the routes as `mod.rs` registers them
//! (`utoipa-axum`), and here the parts that belong to no route (title, authentication). No
//! swagger-ui: it downloads its bundle at build time. The test `openapi_lists_every_api_route`
//! checks the document against the routes and the parameters the API takes.

use std::sync::Arc;

use axum::{Extension, Json};
use utoipa::openapi::OpenApi as Document;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::auth::SESSION_COOKIE;

/// The document's parts that belong to no route; `mod.rs` adds the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "cluegetter auditor API",
        description = "Read-only access to the audit archive. Authenticate with `Authorization: Bearer <token>` (a token from `[[auditor.web-api-tokens]]`) or a session cookie from the login form. Times are UTC. A query parameter a route does not take is refused (400)."
    ),
    modifiers(&Authentication),
    security(("bearer" = []), ("session" = []))
)]
pub struct ApiDoc;

/// The two ways in: a bearer token, or the session cookie.
struct Authentication;

impl Modify for Authentication {
    fn modify(&self, openapi: &mut Document) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::new(SESSION_COOKIE))),
        );
    }
}

/// `GET /api/openapi.json`: the document `mod.rs` built (a request extension).
#[utoipa::path(
    get,
    path = "/api/openapi.json",
    operation_id = "openapi",
    summary = "This document.",
    responses(
        (status = 200, description = "OpenAPI 3.1."),
        (status = 401, description = "No valid session cookie or bearer token."),
    ),
)]
pub async fn document(Extension(document): Extension<Arc<Document>>) -> Json<Document> {
    Json(Document::clone(&document))
}
