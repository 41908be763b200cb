//! The search as CSV: `/messages.csv` and `/api/v1/messages.csv`, the same query string and
//! the same scope as the JSON, every matching message (not a page) up to `web-csv-max-rows`,
//! streamed as the rows come from MariaDB.
//!
//! Cells are RFC 4180 (quoted when they hold a comma, quote or line break) and neutralised
//! for spreadsheets: a text cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage
//! return gets a leading `'`, so a sender or subject cannot become a formula.

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use futures::{SinkExt as _, StreamExt as _};
use platform::database::Database;

use super::filter;
use super::params::SearchParams;
use crate::store::read::Scope;
use crate::store::read::search::{self as read, MessageQuery, MessageRow};
use crate::web::auth::Identity;
use crate::web::error::WebError;
use crate::web::format::{address, decode_subject, fmt_date};
use crate::web::params::Params;
use crate::web::state::AppState;

/// Recipients written per message at most (within the scope).
const CSV_RECIPIENTS: i64 = 1000;

/// The columns, in order.
pub const COLUMNS: [&str; 15] = [
    "id",
    "date",
    "queue_id",
    "mta_hostname",
    "sender",
    "subject",
    "verdict",
    "applied",
    "rcpt_count",
    "body_size",
    "reject_score",
    "client_ip",
    "sasl_username",
    "instance",
    "recipients",
];

/// Rows written to the response in one chunk.
const ROWS_PER_CHUNK: usize = 200;

/// Appends `value` as one CSV cell: quoted when needed, neutralised when a spreadsheet could
/// read it as a formula.
pub fn push_cell(out: &mut String, value: &str) {
    let formula = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
    let quoted = formula || value.contains([',', '"', '\n', '\r']);
    if quoted {
        out.push('"');
    }
    if formula {
        out.push('\'');
    }
    for c in value.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    if quoted {
        out.push('"');
    }
}

/// One message as a CSV line (CRLF-terminated), with its recipients (space-separated).
/// Numbers are ours, written as they are.
fn push_row(out: &mut String, row: &MessageRow, recipients: &str) {
    let text = [
        row.id.hyphenated().to_string(),
        fmt_date(row.date),
        row.queue_id.clone(),
        row.mta_hostname.clone(),
        address(&row.sender_local, &row.sender_domain),
        decode_subject(&row.subject),
        row.verdict.clone(),
        row.applied.clone(),
    ];
    for cell in &text {
        push_cell(out, cell);
        out.push(',');
    }
    out.push_str(&format!(
        "{},{},{},",
        row.rcpt_count, row.body_size, row.reject_score
    ));
    push_cell(out, &row.ip);
    out.push(',');
    push_cell(out, &row.sasl_username);
    out.push(',');
    push_cell(out, &row.instance);
    out.push(',');
    push_cell(out, recipients);
    out.push_str("\r\n");
}

/// `GET /messages.csv`
pub async fn page(
    state: State<AppState>,
    identity: axum::Extension<Identity>,
    params: Params<SearchParams>,
) -> Result<Response, WebError> {
    api(state, identity, params).await
}

/// `GET /api/v1/messages.csv`
#[utoipa::path(
    get,
    path = "/api/v1/messages.csv",
    operation_id = "exportMessages",
    summary = "The search as CSV: every matching message (up to web-csv-max-rows), streamed; text cells that could be spreadsheet formulas begin with '.",
    params(SearchParams),
    responses(
        (status = 200, description = "The messages, one per line after a header line.", content_type = "text/csv"),
        (status = 400, description = "A parameter cannot be understood, or the route has no such parameter (the text says which)."),
        (status = 401, description = "No valid session cookie or bearer token."),
    ),
)]
pub async fn api(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Params(params): Params<SearchParams>,
) -> Result<Response, WebError> {
    let mut query = filter::parse(&params)?;
    query.page = 1;
    query.per_page = state.csv_max_rows;
    let (tx, mut rx) = futures::channel::mpsc::channel::<Result<Bytes, sqlx::Error>>(4);
    tokio::spawn(export(
        state.pool.clone(),
        identity.scope,
        query,
        state.csv_max_rows as usize,
        tx,
    ));
    // the first chunk comes after the first row (or the end): a database that fails at once
    // is a 503 like anywhere else, not a truncated file
    let first = match rx.next().await {
        Some(Err(error)) => return Err(error.into()),
        Some(Ok(chunk)) => chunk,
        None => Bytes::new(),
    };
    let body = Body::from_stream(futures::stream::once(async { Ok(first) }).chain(rx));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"messages.csv\"",
            ),
        ],
        body,
    )
        .into_response())
}

/// Reads the rows of `query` in `scope`, at most `max`, and sends them as CSV chunks; a
/// database error mid-way is sent on (the response is cut off, not completed as if whole).
async fn export(
    pool: Database,
    scope: Scope,
    query: MessageQuery,
    max: usize,
    mut tx: futures::channel::mpsc::Sender<Result<Bytes, sqlx::Error>>,
) {
    let mut out = COLUMNS.join(",");
    out.push_str("\r\n");
    let mut written = 0_usize;
    if !query.matches_nothing {
        let mut sql = query.sql(&scope);
        let mut rows = sql.build_query_as::<MessageRow>().fetch(&pool);
        let mut batch = Vec::with_capacity(ROWS_PER_CHUNK);
        loop {
            let next = if written + batch.len() < max {
                rows.next().await
            } else {
                None
            };
            let done = match next {
                Some(Ok(row)) => {
                    batch.push(row);
                    false
                }
                Some(Err(error)) => {
                    tracing::warn!(error = %error, written, "CSV export cut off: the database failed");
                    let _ = tx.send(Err(error)).await;
                    return;
                }
                None => true,
            };
            if batch.len() == ROWS_PER_CHUNK || (done && !batch.is_empty()) {
                if let Err(error) = push_rows(&pool, &scope, &mut out, &batch).await {
                    tracing::warn!(error = %error, written, "CSV export cut off: the database failed");
                    let _ = tx.send(Err(error)).await;
                    return;
                }
                written += batch.len();
                batch.clear();
                let chunk = Bytes::from(std::mem::take(&mut out));
                if tx.send(Ok(chunk)).await.is_err() {
                    // the client went away
                    return;
                }
            }
            if done {
                break;
            }
        }
    }
    metrics::counter!(crate::metrics::WEB_CSV_ROWS).increment(written as u64);
    if !out.is_empty() {
        let _ = tx.send(Ok(Bytes::from(out))).await;
    }
}

/// `batch` as CSV lines with their recipients (as the list shows them: within the scope).
async fn push_rows(
    pool: &Database,
    scope: &Scope,
    out: &mut String,
    batch: &[MessageRow],
) -> Result<(), sqlx::Error> {
    let ids: Vec<uuid::Uuid> = batch.iter().map(|row| row.id).collect();
    let whole: Vec<uuid::Uuid> = batch
        .iter()
        .filter(|row| scope.covers_sender(&row.sender_domain, &row.sasl_username))
        .map(|row| row.id)
        .collect();
    let mut recipients: std::collections::HashMap<uuid::Uuid, Vec<String>> =
        std::collections::HashMap::new();
    for r in read::recipients_of(pool, scope, &ids, &whole, CSV_RECIPIENTS).await? {
        recipients
            .entry(r.message)
            .or_default()
            .push(address(&r.local, &r.domain));
    }
    for row in batch {
        let listed = recipients.remove(&row.id).unwrap_or_default();
        push_row(out, row, &listed.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    fn cell(value: &str) -> String {
        let mut out = String::new();
        push_cell(&mut out, value);
        out
    }

    #[test]
    fn formulas_are_neutralised_and_specials_quoted() {
        assert_eq!(cell("alice@one.example"), "alice@one.example");
        assert_eq!(cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        assert_eq!(cell("+1"), "\"'+1\"");
        assert_eq!(cell("-2+3"), "\"'-2+3\"");
        assert_eq!(cell("@SUM(A1)"), "\"'@SUM(A1)\"");
        assert_eq!(cell("\t=1"), "\"'\t=1\"");
        assert_eq!(cell("\r=1"), "\"'\r=1\"");
        assert_eq!(cell("a,b"), "\"a,b\"");
        assert_eq!(cell("a\nb"), "\"a\nb\"");
        assert_eq!(cell(""), "");
    }

    /// The value read back by an RFC 4180 reader.
    fn unquote(cell: &str) -> String {
        match cell.strip_prefix('"').and_then(|c| c.strip_suffix('"')) {
            Some(inner) => inner.replace("\"\"", "\""),
            None => cell.to_owned(),
        }
    }

    proptest! {
        /// Read back, a cell is the value, or the value behind a `'` when it could be a
        /// formula; it never begins with a formula character, and it is one cell.
        #[test]
        fn a_cell_reads_back_as_its_value_and_never_as_a_formula(value in any::<String>()) {
            let out = cell(&value);
            let back = unquote(&out);
            let risky = value.starts_with(['=', '+', '-', '@', '\t', '\r']);
            if risky {
                prop_assert_eq!(back, format!("'{value}"));
            } else {
                prop_assert!(!back.starts_with(['=', '+', '-', '@', '\t', '\r']));
                prop_assert_eq!(back, value.clone());
            }
            if !out.starts_with('"') {
                prop_assert!(!out.contains([',', '"', '\n', '\r']));
            }
        }
    }
}
