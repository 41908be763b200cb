//! The JSON API's OpenAPI 3.1 document, served at `/api/openapi.json` (behind the login like
//! everything else). Written by hand: the API is small, and this keeps the build lean; the
//! test `openapi_lists_every_api_route` keeps it in step with the router.

use axum::Json;
use serde_json::{Value, json};

fn query(name: &str, description: &str) -> Value {
    json!({ "name": name, "in": "query", "required": false,
            "description": description, "schema": { "type": "string" } })
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({ "name": name, "in": "path", "required": true,
            "description": description, "schema": schema })
}

fn responses(ok: &str, schema: &str) -> Value {
    json!({
        "200": { "description": ok,
                 "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } } },
        "400": { "description": "A parameter cannot be understood (the text says which)." },
        "401": { "description": "No valid session cookie or bearer token." },
        "404": { "description": "No such object." }
    })
}

fn range_and_paging() -> Vec<Value> {
    vec![
        query(
            "from",
            "Start, UTC: YYYY-MM-DDTHH:MM[:SS], YYYY-MM-DD or RFC 3339 (default: 24 h before `to`).",
        ),
        query("to", "End (exclusive), same forms (default: now)."),
        query("page", "Page number from 1 (at most 2000)."),
        query("per_page", "Rows per page, 1 to 500 (default 50)."),
    ]
}

/// The document.
pub fn spec() -> Value {
    let mut search = vec![
        query(
            "sender",
            "Sender: an address (exact, case-insensitive), `@domain` or `domain`, or `<>` for the null sender.",
        ),
        query("recipient", "Recipient: an address, `@domain` or `domain`."),
        query(
            "ip",
            "Client address or network (`192.0.2.1`, `192.0.2.0/24`, `2001:db8::/32`).",
        ),
        query("sasl", "SASL user name (exact)."),
        query("queue_id", "Postfix queue id (exact)."),
        query(
            "message_id",
            "Message-ID, with or without angle brackets (exact).",
        ),
        query(
            "subject",
            "Subject contains this text (case-insensitive; % and _ are literal).",
        ),
        json!({ "name": "verdict", "in": "query", "required": false, "description": "The verdict the rules gave.",
                "schema": { "type": "string", "enum": wire::Action::ALL.map(wire::Action::as_str) } }),
        query("module", "A module whose result suggested reject."),
        query("instance", "Instance name."),
        json!({ "name": "sort", "in": "query", "required": false,
                "schema": { "type": "string", "enum": ["date", "sender", "subject", "verdict", "size", "queue_id"] } }),
        json!({ "name": "dir", "in": "query", "required": false,
                "schema": { "type": "string", "enum": ["asc", "desc"] } }),
    ];
    search.extend(range_and_paging());
    let mut bounces = vec![
        query(
            "recipient",
            "Reported recipient: an address, `@domain` or `domain`.",
        ),
        query("status", "Status code or its start (`5`, `5.1`, `4.7.1`)."),
        query("unlinked", "`1`: only reports not linked to a message."),
    ];
    bounces.extend(range_and_paging());
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "cluegetter auditor API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Read-only access to the audit archive. Authenticate with `Authorization: Bearer <token>` (a token from `[[auditor.web-api-tokens]]`) or a session cookie from the login form. Times are UTC."
        },
        "security": [ { "bearer": [] }, { "session": [] } ],
        "paths": {
            "/api/v1/messages": { "get": {
                "summary": "Search messages (newest first by default).",
                "operationId": "searchMessages",
                "parameters": search,
                "responses": responses("One page of messages.", "SearchResult")
            }},
            "/api/v1/messages/{id}": { "get": {
                "summary": "One message with its session, recipients, headers, module results, verdict arithmetic, bounces and body.",
                "operationId": "getMessage",
                "parameters": [ path_param("id", "The message UUID.", json!({ "type": "string", "format": "uuid" })) ],
                "responses": responses("The message.", "MessageDetail")
            }},
            "/api/v1/bounces": { "get": {
                "summary": "Delivery reports, one row per reported recipient.",
                "operationId": "listBounces",
                "parameters": bounces,
                "responses": responses("One page of report rows.", "BounceList")
            }},
            "/api/v1/bounces/{id}": { "get": {
                "summary": "One delivery report with its recipients and the raw report.",
                "operationId": "getBounce",
                "parameters": [ path_param("id", "The bounce id.", json!({ "type": "integer", "minimum": 1 })) ],
                "responses": responses("The bounce.", "BounceDetail")
            }},
            "/api/v1/quotas": { "get": {
                "summary": "Quota usage for a selector and value; classes, profiles and regex rows.",
                "operationId": "quotas",
                "parameters": [
                    json!({ "name": "selector", "in": "query", "required": false,
                            "schema": { "type": "string", "enum": platform::quotas::Selector::ALL.map(platform::quotas::Selector::as_str) } }),
                    query("value", "The factor's value (case-insensitive)."),
                    query("instigator", "A regex row's id: list the rows it created.")
                ],
                "responses": responses("The overview.", "QuotaOverview")
            }},
            "/api/v1/stats": { "get": {
                "summary": "Messages per hour (or day) by verdict, top rejected senders, SASL users and client addresses, module latencies.",
                "operationId": "stats",
                "parameters": [
                    query("from", "Start, UTC (default: 24 h before `to`); the range spans at most 366 days."),
                    query("to", "End, UTC (default: now).")
                ],
                "responses": responses("The figures.", "Stats")
            }},
            "/api/openapi.json": { "get": {
                "summary": "This document.",
                "operationId": "openapi",
                "responses": { "200": { "description": "OpenAPI 3.1." } }
            }}
        },
        "components": {
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer" },
                "session": { "type": "apiKey", "in": "cookie", "name": super::auth::SESSION_COOKIE }
            },
            "schemas": {
                "MessageSummary": { "type": "object", "properties": {
                    "id": { "type": "string", "format": "uuid" }, "date": { "type": "string" },
                    "queue_id": { "type": "string" }, "mta_hostname": { "type": "string" },
                    "sender": { "type": "string" }, "subject": { "type": "string" },
                    "verdict": { "type": "string" }, "applied": { "type": "string" },
                    "rcpt_count": { "type": "integer" }, "body_size": { "type": "integer" },
                    "reject_score": { "type": "number" }, "client_ip": { "type": "string" },
                    "sasl_username": { "type": "string" }, "instance": { "type": "string" } } },
                "SearchResult": { "type": "object", "properties": {
                    "messages": { "type": "array", "items": { "$ref": "#/components/schemas/MessageSummary" } },
                    "page": { "type": "integer" }, "per_page": { "type": "integer" },
                    "has_more": { "type": "boolean" }, "from": { "type": "string" }, "to": { "type": "string" } } },
                "MessageDetail": { "type": "object", "properties": {
                    "id": { "type": "string" }, "date": { "type": "string" }, "queue_id": { "type": "string" },
                    "sender": { "type": "string" }, "message_id": { "type": "string" }, "subject": { "type": "string" },
                    "session": { "type": "object" },
                    "recipients": { "type": "array", "items": { "type": "object" } },
                    "headers": { "type": "array", "items": { "type": "object", "properties": {
                        "name": { "type": "string" }, "value": { "type": "string" } } } },
                    "results": { "type": "array", "items": { "type": "object", "properties": {
                        "module": { "type": "string" }, "suggested": { "type": "string" },
                        "score": { "type": "number" }, "weighted_score": { "type": "number" },
                        "duration_ms": { "type": "number" }, "message": { "type": "string" },
                        "late": { "type": "boolean" }, "determinants": {} } } },
                    "verdict": { "type": "object", "properties": {
                        "verdict": { "type": "string" }, "applied": { "type": "string" },
                        "reject_score": { "type": "number" }, "reject_threshold": { "type": "number" },
                        "tempfail_score": { "type": "number" }, "tempfail_threshold": { "type": "number" },
                        "noop": { "type": "boolean" }, "whitelisted": { "type": "boolean" },
                        "reject_sum": { "type": "string" }, "tempfail_sum": { "type": "string" },
                        "explanation": { "type": "array", "items": { "type": "string" } } } },
                    "bounces": { "type": "array", "items": { "type": "object" } },
                    "body": { "type": ["string", "null"] } } },
                "BounceList": { "type": "object", "properties": {
                    "reports": { "type": "array", "items": { "type": "object", "properties": {
                        "bounce": { "type": "integer" }, "date": { "type": "string" },
                        "message": { "type": ["string", "null"] }, "link": { "type": "string" },
                        "status": { "type": "string" }, "action": { "type": "string" },
                        "recipient": { "type": "string" }, "diag_code": { "type": "string" } } } },
                    "page": { "type": "integer" }, "per_page": { "type": "integer" }, "has_more": { "type": "boolean" } } },
                "BounceDetail": { "type": "object" },
                "QuotaOverview": { "type": "object", "properties": {
                    "quotas": { "type": "array", "items": { "type": "object", "properties": {
                        "id": { "type": "integer" }, "periods": { "type": "array", "items": { "type": "object", "properties": {
                            "period_secs": { "type": "integer" }, "curb": { "type": "integer" },
                            "used": { "type": "integer" }, "over": { "type": "boolean" } } } } } } },
                    "classes": { "type": "array", "items": { "type": "object" } },
                    "regexes": { "type": "array", "items": { "type": "object" } },
                    "instigated": { "type": "array", "items": { "type": "object" } } } },
                "Stats": { "type": "object", "properties": {
                    "bucket": { "type": "string", "enum": ["hour", "day"] },
                    "buckets": { "type": "array", "items": { "type": "object", "properties": {
                        "start": { "type": "string" }, "counts": { "type": "object", "additionalProperties": { "type": "integer" } } } } },
                    "top_rejected_senders": { "type": "array", "items": { "type": "object" } },
                    "top_rejected_sasl_users": { "type": "array", "items": { "type": "object" } },
                    "top_rejected_client_ips": { "type": "array", "items": { "type": "object" } },
                    "module_latency": { "type": "array", "items": { "type": "object" } } } }
            }
        }
    })
}

/// `GET /api/openapi.json`
pub async fn document() -> Json<Value> {
    Json(spec())
}
