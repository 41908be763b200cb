//! The rows of a batch of audit events, written with a few multi-row statements per table
//! rather than a dozen statements per event: which messages exist already, instance and client
//! ids, the session upserts, the messages, recipient ids, recipient links, headers, body chunks,
//! module results (with whether each decided the verdict) and the reputation counters.
//!
//! Runs inside the caller's transaction (or savepoint) and never commits. The caller writes a
//! whole batch at once, and an event at a time only to find out which event the database
//! refuses (see the parent module). Only placeholders are pushed as SQL text; every value is a
//! bind. A statement holds at most [`MAX_ROWS`] rows and about [`MAX_BYTES`] of values, far
//! below the server's `max_allowed_packet` (16 MiB by default).
//!
//! Every statement stays prepared on its connection, and there are few of them: a multi-row
//! statement is always a power of two rows long (a batch of 200 is written as 128 + 64 + 8),
//! and an `IN` list is padded to a power of two by repeating its last value. This matters
//! more than it seems: sqlx 0.9.0 does not set `TCP_NODELAY` (sqlx issue #4335), and closing a
//! prepared statement sends a packet the server does not answer, so the next statement's
//! packet waits in Nagle's algorithm for the server's delayed ACK, about 40 ms. Statements
//! prepared for one execution only made the auditor four times slower over TCP.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::NaiveDate;
use platform::reputation;
use sqlx::{MySql, MySqlConnection, QueryBuilder};
use uuid::Uuid;
use wire::decision::decided_by;
use wire::{AuditEvent, Header};

use super::values::{
    self, HEADER_BODY_BYTES, HEADER_LINE_CHARS, HEADER_NAME_BYTES, RecipientRow, SASL_METHOD_CHARS,
    SESSION_TEXT_CHARS, TEXT_BYTES, TLS_VERSION_CHARS, datetime, truncate_chars,
    truncate_utf8_bytes,
};
use super::{Ids, Kinds, is_duplicate_key};

/// Rows per statement at most (a power of two).
const MAX_ROWS: usize = 1024;
/// Values per `IN` list at most (a power of two).
const MAX_LIST: usize = 256;
/// Bytes of values per statement, about; a single larger row gets a statement of its own.
const MAX_BYTES: usize = 4 * 1024 * 1024;
/// What each bound parameter costs in an execute packet beside its value (type, length).
const PARAM: usize = 2;
/// Prepared statements a connection keeps: the shapes of every statement here (about 90)
/// and the few others, so none is ever closed (see the module's documentation).
pub(super) const STATEMENT_CACHE: usize = 256;

/// What became of one event of the slice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Written {
    Stored,
    /// Its message UUID has a row already (or comes earlier in the same slice).
    Duplicate,
}

/// Writes every row of the events whose message does not exist yet.
///
/// `known` holds committed ids; ids found or created here go to `learned`, which the caller
/// keeps only once the transaction is committed.
///
/// # Errors
/// Any database error; the caller rolls back. For a single event whose message row was inserted
/// by another auditor meanwhile, the answer is `Duplicate` instead.
pub(super) async fn write(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
    kinds: Kinds,
    known: &Ids,
    learned: &mut Ids,
) -> Result<Vec<Written>, sqlx::Error> {
    let existing = existing_messages(conn, events).await?;
    let mut seen = HashSet::with_capacity(events.len());
    let written: Vec<Written> = events
        .iter()
        .map(|event| {
            let id = event.message_id.0;
            if existing.contains(&id) || !seen.insert(id) {
                Written::Duplicate
            } else {
                Written::Stored
            }
        })
        .collect();
    let fresh: Vec<&AuditEvent> = events
        .iter()
        .zip(&written)
        .filter(|(_, w)| **w == Written::Stored)
        .map(|(event, _)| *event)
        .collect();
    if fresh.is_empty() {
        return Ok(written);
    }

    let mut ids = Ids::default();
    for event in &fresh {
        let instance = instance_id(conn, &event.instance, known, learned).await?;
        ids.instances.insert(event.instance.clone(), instance);
        let session = &event.session;
        let key = (session.mta_hostname.clone(), session.daemon_name.clone());
        if let std::collections::hash_map::Entry::Vacant(slot) = ids.clients.entry(key) {
            let client = client_id(conn, slot.key(), known, learned).await?;
            slot.insert(client);
        }
    }
    upsert_sessions(conn, &fresh, &ids).await?;
    match insert_messages(conn, &fresh).await {
        Ok(()) => {}
        // another auditor stored it between our look and our insert
        Err(error) if fresh.len() == 1 && is_duplicate_key(&error) => {
            return Ok(vec![Written::Duplicate; events.len()]);
        }
        Err(error) => return Err(error),
    }
    insert_recipients(conn, &fresh, known, learned).await?;
    if kinds.headers {
        insert_headers(conn, &fresh).await?;
    }
    if kinds.bodies {
        insert_bodies(conn, &fresh).await?;
    }
    if kinds.results {
        insert_results(conn, &fresh).await?;
    }
    if let Some(prefixes) = kinds.reputation {
        count_reputation(conn, &fresh, prefixes).await?;
    }
    Ok(written)
}

/// Splits rows into statements of at most [`MAX_ROWS`] rows and about [`MAX_BYTES`] bytes,
/// each a power of two rows long.
fn statements<T>(rows: &[T], size: impl Fn(&T) -> usize) -> Vec<&[T]> {
    let mut bounded = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, row) in rows.iter().enumerate() {
        let row_bytes = size(row);
        if i > start && (i - start >= MAX_ROWS || bytes + row_bytes > MAX_BYTES) {
            bounded.push(&rows[start..i]);
            start = i;
            bytes = 0;
        }
        bytes += row_bytes;
    }
    if start < rows.len() {
        bounded.push(&rows[start..]);
    }
    let mut chunks = Vec::new();
    for mut rest in bounded {
        while !rest.is_empty() {
            let (head, tail) = rest.split_at(1 << rest.len().ilog2());
            chunks.push(head);
            rest = tail;
        }
    }
    chunks
}

/// Values for `IN` lists: chunks of at most [`MAX_LIST`], each padded to a power of two.
fn lists<T: Clone>(values: &[T]) -> Vec<Vec<T>> {
    values
        .chunks(MAX_LIST)
        .map(|chunk| {
            let mut list = chunk.to_vec();
            values::pad_list(&mut list);
            list
        })
        .collect()
}

/// Runs a built statement (prepared once per connection and shape, and kept).
async fn execute(
    conn: &mut MySqlConnection,
    mut query: QueryBuilder<MySql>,
) -> Result<u64, sqlx::Error> {
    Ok(query
        .build()
        .persistent(true)
        .execute(&mut *conn)
        .await?
        .rows_affected())
}

/// The message UUIDs of `events` that have a row already.
async fn existing_messages(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
) -> Result<HashSet<Uuid>, sqlx::Error> {
    let mut existing = HashSet::new();
    let ids: Vec<Uuid> = events.iter().map(|event| event.message_id.0).collect();
    for list in lists(&ids) {
        let mut query = QueryBuilder::<MySql>::new("SELECT id FROM message WHERE id IN (");
        let mut separated = query.separated(", ");
        for id in list {
            separated.push_bind(id);
        }
        query.push(")");
        let found: Vec<Uuid> = query
            .build_query_scalar()
            .persistent(true)
            .fetch_all(&mut *conn)
            .await?;
        existing.extend(found);
    }
    Ok(existing)
}

/// The id of the instance called `name`, adding the row if the name is new.
async fn instance_id(
    conn: &mut MySqlConnection,
    name: &str,
    known: &Ids,
    learned: &mut Ids,
) -> Result<u64, sqlx::Error> {
    if let Some(id) = known.instances.get(name).or(learned.instances.get(name)) {
        return Ok(*id);
    }
    let found: Option<u64> = sqlx::query_scalar("SELECT id FROM instance WHERE name = ?")
        .bind(name)
        .fetch_optional(&mut *conn)
        .await?;
    let id = match found {
        Some(id) => id,
        None => {
            // LAST_INSERT_ID(id) makes a concurrent insert of the same name return its id.
            let id = sqlx::query(
                "INSERT INTO instance (name) VALUES (?) \
                 ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
            )
            .bind(name)
            .execute(&mut *conn)
            .await?
            .last_insert_id();
            tracing::info!(
                instance = name,
                instance_id = id,
                "first event of a new instance: added it"
            );
            id
        }
    };
    learned.instances.insert(name.to_owned(), id);
    Ok(id)
}

/// The id of the (MTA host name, Postfix service) row, adding it if new.
async fn client_id(
    conn: &mut MySqlConnection,
    key: &(String, String),
    known: &Ids,
    learned: &mut Ids,
) -> Result<u64, sqlx::Error> {
    if let Some(id) = known.clients.get(key).or(learned.clients.get(key)) {
        return Ok(*id);
    }
    let (hostname, daemon_name) = key;
    let found: Option<u64> = sqlx::query_scalar(
        "SELECT id FROM cluegetter_client WHERE hostname = ? AND daemon_name = ?",
    )
    .bind(hostname)
    .bind(daemon_name)
    .fetch_optional(&mut *conn)
    .await?;
    let id = match found {
        Some(id) => id,
        None => sqlx::query(
            "INSERT INTO cluegetter_client (hostname, daemon_name) VALUES (?, ?) \
             ON DUPLICATE KEY UPDATE id = LAST_INSERT_ID(id)",
        )
        .bind(hostname)
        .bind(daemon_name)
        .execute(&mut *conn)
        .await?
        .last_insert_id(),
    };
    learned.clients.insert(key.clone(), id);
    Ok(id)
}

/// Inserts the sessions, or fills in what an earlier event of one left empty (a later HELO,
/// AUTH or STARTTLS), so the result does not depend on the order in which events arrive. Two
/// events of one session in the slice work the same way: the second row updates the first.
async fn upsert_sessions(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
    ids: &Ids,
) -> Result<(), sqlx::Error> {
    let size = |event: &&AuditEvent| {
        let session = &event.session;
        let tls = session.tls.as_ref();
        17 * PARAM
            + 17
            + 3 * 8
            + 27
            + 46
            + 17
            + [
                &session.client_name,
                &session.helo,
                &session.sasl_username,
                &session.sasl_method,
                &session.sasl_sender,
            ]
            .iter()
            .map(|text| 3 + text.len())
            .sum::<usize>()
            + tls.map_or(0, |tls| {
                tls.cert_issuer.len()
                    + tls.cert_subject.len()
                    + tls.cipher.len()
                    + tls.version.len()
            })
            + 4 * 3
            + 2 * PARAM
            + 2
            + 4
    };
    for chunk in statements(events, size) {
        let mut query = QueryBuilder::<MySql>::new(
            "INSERT INTO session (id, cluegetter_instance, cluegetter_client, date_connect, ip, \
                 ip_bin, port, reverse_dns, helo, sasl_username, sasl_method, sasl_sender, \
                 cert_issuer, cert_subject, cipher_bits, cipher, tls_version, country, asn) ",
        );
        query.push_values(chunk, |mut row, event| {
            let session = &event.session;
            let ip = session.client_addr.map(values::canonical_ip);
            let tls = session.tls.clone().unwrap_or_default();
            let text = |value: &str| truncate_chars(value, SESSION_TEXT_CHARS).to_owned();
            let instance = ids.instances.get(&event.instance).copied().unwrap_or(0);
            let client = ids
                .clients
                .get(&(session.mta_hostname.clone(), session.daemon_name.clone()))
                .copied()
                .unwrap_or(0);
            row.push_bind(session.session_id)
                .push_bind(instance)
                .push_bind(client)
                .push_bind(datetime(session.connected_at))
                .push_bind(ip.map(|ip| ip.to_string()).unwrap_or_default())
                .push_bind(ip.map(values::ip_bin))
                .push_bind(session.client_port)
                .push_bind(text(&session.client_name))
                .push_bind(text(&session.helo))
                .push_bind(text(&session.sasl_username))
                .push_bind(truncate_chars(&session.sasl_method, SASL_METHOD_CHARS).to_owned())
                .push_bind(text(&session.sasl_sender))
                .push_bind(text(&tls.cert_issuer))
                .push_bind(text(&tls.cert_subject))
                .push_bind(tls.cipher_bits)
                .push_bind(text(&tls.cipher))
                .push_bind(truncate_chars(&tls.version, TLS_VERSION_CHARS).to_owned());
            let (country, asn) = values::geoip_of(&event.results);
            row.push_bind(country).push_bind(asn);
        });
        query.push(
            " ON DUPLICATE KEY UPDATE \
                 helo = IF(helo = '', VALUES(helo), helo), \
                 sasl_username = IF(sasl_username = '', VALUES(sasl_username), sasl_username), \
                 sasl_method = IF(sasl_method = '', VALUES(sasl_method), sasl_method), \
                 sasl_sender = IF(sasl_sender = '', VALUES(sasl_sender), sasl_sender), \
                 cert_issuer = IF(cert_issuer = '', VALUES(cert_issuer), cert_issuer), \
                 cert_subject = IF(cert_subject = '', VALUES(cert_subject), cert_subject), \
                 cipher_bits = COALESCE(cipher_bits, VALUES(cipher_bits)), \
                 cipher = IF(cipher = '', VALUES(cipher), cipher), \
                 tls_version = IF(tls_version = '', VALUES(tls_version), tls_version), \
                 country = COALESCE(country, VALUES(country)), \
                 asn = COALESCE(asn, VALUES(asn))",
        );
        execute(conn, query).await?;
    }
    Ok(())
}

/// Whether the auditor has to cut a header to fit its columns.
fn header_cut(header: &Header) -> bool {
    header.name.len() > HEADER_NAME_BYTES || header.value.len() > HEADER_BODY_BYTES
}

async fn insert_messages(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
) -> Result<(), sqlx::Error> {
    let size = |event: &&AuditEvent| {
        let message = &event.message;
        let verdict = &event.verdict;
        25 * PARAM
            + 2 * 17
            + 10 * 8
            + 28
            + [
                &message.queue_id,
                &event.session.mta_hostname,
                &message.body_hash,
                &message.message_id_header,
                &message.subject,
                &message.sender,
                &verdict.reason,
            ]
            .iter()
            .map(|text| 3 + text.len())
            .sum::<usize>()
            + verdict.failure.as_ref().map_or(0, |f| 3 + f.len())
    };
    for chunk in statements(events, size) {
        let mut query = QueryBuilder::<MySql>::new(
            "INSERT INTO message (id, session, queue_id, mta_hostname, date, body_size, \
                 body_hash, messageId, subject, sender_local, sender_domain, rcpt_count, verdict, \
                 applied, verdict_msg, rejectScore, rejectScoreThreshold, tempfailScore, \
                 tempfailScoreThreshold, noop, whitelisted, failure, answered, \
                 headers_truncated, body_truncated) ",
        );
        query.push_values(chunk, |mut row, event| {
            let message = &event.message;
            let verdict = &event.verdict;
            let (sender_local, sender_domain) = values::split_address(&message.sender);
            let rcpt_count = u32::try_from(message.recipients.len()).unwrap_or(u32::MAX);
            let headers_truncated =
                message.headers_truncated || message.headers.iter().any(header_cut);
            row.push_bind(event.message_id.0)
                .push_bind(event.session.session_id)
                .push_bind(message.queue_id.clone())
                .push_bind(event.session.mta_hostname.clone())
                .push_bind(datetime(message.received_at))
                .push_bind(message.body_size)
                .push_bind(message.body_hash.clone())
                .push_bind(truncate_chars(&message.message_id_header, HEADER_LINE_CHARS).to_owned())
                .push_bind(truncate_chars(&message.subject, HEADER_LINE_CHARS).to_owned())
                .push_bind(sender_local)
                .push_bind(sender_domain)
                .push_bind(rcpt_count)
                .push_bind(verdict.verdict.as_str())
                .push_bind(verdict.applied.as_str())
                .push_bind(truncate_utf8_bytes(&verdict.reason, TEXT_BYTES).to_owned())
                .push_bind(verdict.reject_score)
                .push_bind(verdict.reject_threshold)
                .push_bind(verdict.tempfail_score)
                .push_bind(verdict.tempfail_threshold)
                .push_bind(verdict.noop)
                .push_bind(verdict.whitelisted)
                .push_bind(
                    verdict
                        .failure
                        .as_deref()
                        .map(|f| truncate_utf8_bytes(f, TEXT_BYTES).to_owned()),
                )
                .push_bind(event.answered)
                .push_bind(headers_truncated)
                .push_bind(message.body_truncated());
        });
        execute(conn, query).await?;
    }
    Ok(())
}

/// A recipient address as the unique key `recipient_address` compares it: `utf8mb4_bin` is a
/// PAD SPACE collation, so trailing spaces do not count.
fn address_key(domain: &str, local: &str) -> (String, String) {
    (
        domain.trim_end_matches(' ').to_owned(),
        local.trim_end_matches(' ').to_owned(),
    )
}

/// One `message_recipient` row with its message.
struct LinkRow<'a> {
    event: &'a AuditEvent,
    row: RecipientRow,
}

async fn insert_recipients(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
    known: &Ids,
    learned: &mut Ids,
) -> Result<(), sqlx::Error> {
    let links: Vec<LinkRow<'_>> = events
        .iter()
        .flat_map(|event| {
            values::recipient_rows(
                &event.message.recipients,
                &event.message.rejected_recipients,
            )
            .into_iter()
            .map(move |row| LinkRow { event, row })
        })
        .collect();
    if links.is_empty() {
        return Ok(());
    }
    let ids = recipient_ids(conn, &links, known, learned).await?;
    let rows: Vec<(&LinkRow<'_>, u64)> = links
        .iter()
        .map(|link| {
            let key = address_key(&link.row.domain, &link.row.local);
            (link, ids.get(&key).copied().unwrap_or(0))
        })
        .collect();
    let size = |(link, _): &(&LinkRow<'_>, u64)| {
        7 * PARAM
            + 17
            + 8
            + 9
            + 4
            + 27
            + 3
            + link.row.domain.len()
            + link.row.reason.as_ref().map_or(0, |r| 3 + r.len())
    };
    for chunk in statements(&rows, size) {
        let mut query = QueryBuilder::<MySql>::new(
            "INSERT INTO message_recipient (message, recipient, status, count, reason, domain, \
                 date) ",
        );
        query.push_values(chunk, |mut row, (link, recipient)| {
            row.push_bind(link.event.message_id.0)
                .push_bind(*recipient)
                .push_bind(link.row.status.as_str())
                .push_bind(link.row.count)
                .push_bind(link.row.reason.clone())
                .push_bind(link.row.domain.clone())
                .push_bind(datetime(link.event.message.received_at));
        });
        // Two spellings the database holds equal (trailing spaces) add up instead of colliding.
        query.push(" ON DUPLICATE KEY UPDATE count = count + VALUES(count)");
        execute(conn, query).await?;
    }
    Ok(())
}

/// The ids of the (lower-cased) recipient addresses of `links`, from the cache of committed
/// ids or the table, adding the new ones. Looked up first so that known addresses (nearly all
/// of them) do not use up auto-increment values.
async fn recipient_ids(
    conn: &mut MySqlConnection,
    links: &[LinkRow<'_>],
    known: &Ids,
    learned: &mut Ids,
) -> Result<HashMap<(String, String), u64>, sqlx::Error> {
    let mut ids = HashMap::new();
    let mut asked = HashSet::new();
    let mut wanted: Vec<(String, String)> = Vec::new();
    for link in links {
        let key = address_key(&link.row.domain, &link.row.local);
        if ids.contains_key(&key) || asked.contains(&key) {
            continue;
        }
        if let Some(id) = known.recipients.get(&key).or(learned.recipients.get(&key)) {
            ids.insert(key, *id);
        } else {
            asked.insert(key);
            wanted.push((link.row.domain.clone(), link.row.local.clone()));
        }
    }
    if wanted.is_empty() {
        return Ok(ids);
    }
    let found = look_up_recipients(conn, &wanted).await?;
    let missing: Vec<(String, String)> = wanted
        .into_iter()
        .filter(|(domain, local)| !found.contains_key(&address_key(domain, local)))
        .collect();
    learned.recipients.extend(found.clone());
    ids.extend(found);
    if missing.is_empty() {
        return Ok(ids);
    }
    let size = |(domain, local): &(String, String)| 2 * PARAM + 6 + domain.len() + local.len();
    for chunk in statements(&missing, size) {
        let mut query = QueryBuilder::<MySql>::new("INSERT INTO recipient (local, domain) ");
        query.push_values(chunk, |mut row, (domain, local)| {
            row.push_bind(local.clone()).push_bind(domain.clone());
        });
        // a concurrent auditor added it meanwhile: fine, it is looked up below
        query.push(" ON DUPLICATE KEY UPDATE id = id");
        execute(conn, query).await?;
    }
    let added = look_up_recipients(conn, &missing).await?;
    learned.recipients.extend(added.clone());
    ids.extend(added);
    Ok(ids)
}

async fn look_up_recipients(
    conn: &mut MySqlConnection,
    addresses: &[(String, String)],
) -> Result<HashMap<(String, String), u64>, sqlx::Error> {
    let mut ids = HashMap::with_capacity(addresses.len());
    for list in lists(addresses) {
        // OR of equalities on the unique key's columns: one index range per address
        let mut query =
            QueryBuilder::<MySql>::new("SELECT id, domain, local FROM recipient WHERE ");
        for (i, (domain, local)) in list.into_iter().enumerate() {
            if i > 0 {
                query.push(" OR ");
            }
            query.push("(domain = ");
            query.push_bind(domain);
            query.push(" AND local = ");
            query.push_bind(local);
            query.push(")");
        }
        let found: Vec<(u64, String, String)> = query
            .build_query_as()
            .persistent(true)
            .fetch_all(&mut *conn)
            .await?;
        for (id, domain, local) in found {
            ids.insert(address_key(&domain, &local), id);
        }
    }
    Ok(ids)
}

async fn insert_headers(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
) -> Result<(), sqlx::Error> {
    let rows: Vec<(&AuditEvent, u32, &Header)> = events
        .iter()
        .flat_map(|event| {
            event
                .message
                .headers
                .iter()
                .enumerate()
                .map(move |(i, header)| (*event, u32::try_from(i).unwrap_or(u32::MAX), header))
        })
        .collect();
    let size = |(_, _, header): &(&AuditEvent, u32, &Header)| {
        4 * PARAM
            + 17
            + 4
            + 6
            + header.name.len().min(HEADER_NAME_BYTES)
            + header.value.len().min(HEADER_BODY_BYTES)
    };
    for chunk in statements(&rows, size) {
        let mut query = QueryBuilder::<MySql>::new(
            "INSERT INTO message_header (message, sequence, name, body) ",
        );
        query.push_values(chunk, |mut row, (event, sequence, header)| {
            let (name, _) = values::truncate_bytes(header.name.as_bytes(), HEADER_NAME_BYTES);
            let (body, _) = values::truncate_bytes(header.value.as_bytes(), HEADER_BODY_BYTES);
            row.push_bind(event.message_id.0)
                .push_bind(*sequence)
                .push_bind(name.to_vec())
                .push_bind(body.to_vec());
        });
        execute(conn, query).await?;
    }
    Ok(())
}

async fn insert_bodies(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
) -> Result<(), sqlx::Error> {
    let rows: Vec<(&AuditEvent, u32, &[u8])> = events
        .iter()
        .filter_map(|event| event.message.body.as_deref().map(|body| (*event, body)))
        .flat_map(|(event, body)| {
            body.chunks(values::BODY_CHUNK_BYTES)
                .enumerate()
                .map(move |(i, chunk)| (event, u32::try_from(i).unwrap_or(u32::MAX), chunk))
        })
        .collect();
    for chunk in statements(&rows, |(_, _, bytes)| 3 * PARAM + 17 + 4 + 4 + bytes.len()) {
        let mut query =
            QueryBuilder::<MySql>::new("INSERT INTO message_body (message, sequence, body) ");
        query.push_values(chunk, |mut row, (event, sequence, bytes)| {
            row.push_bind(event.message_id.0)
                .push_bind(*sequence)
                .push_bind(bytes.to_vec());
        });
        execute(conn, query).await?;
    }
    Ok(())
}

async fn insert_results(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
) -> Result<(), sqlx::Error> {
    // the determinants' JSON text is made once, for its size and its bind; whether the result
    // decided the verdict once per message
    let rows: Vec<(&AuditEvent, &wire::AuditResult, String, bool)> = events
        .iter()
        .flat_map(|event| {
            let decided = decided_by(&event.verdict, &event.results);
            event.results.iter().map(move |result| {
                (
                    *event,
                    result,
                    values::determinants_json(&result.result.determinants),
                    decided.includes(&result.result.module),
                )
            })
        })
        .collect();
    type Row<'a> = (&'a AuditEvent, &'a wire::AuditResult, String, bool);
    let size = |(_, result, determinants, _): &Row<'_>| {
        10 * PARAM
            + 17
            + 3 * 8
            + 2
            + 12
            + result.result.module.len()
            + 8
            + result.result.message.len().min(TEXT_BYTES)
            + determinants.len()
    };
    for chunk in statements(&rows, size) {
        let mut query = QueryBuilder::<MySql>::new(
            "INSERT INTO message_result (message, module, verdict, score, weighted_score, \
                 duration, verdict_msg, determinants, late, decisive) ",
        );
        query.push_values(chunk, |mut row, (event, audit, determinants, decisive)| {
            let result = &audit.result;
            row.push_bind(event.message_id.0)
                .push_bind(result.module.clone())
                .push_bind(result.action.as_str())
                .push_bind(result.score)
                .push_bind(audit.weighted_score)
                .push_bind(result.duration)
                .push_bind(truncate_utf8_bytes(&result.message, TEXT_BYTES).to_owned())
                .push_bind(determinants.clone())
                .push_bind(audit.late)
                .push_bind(*decisive);
        });
        execute(conn, query).await?;
    }
    Ok(())
}

/// Adds the events' messages to the reputation counters (`reputation_count`), as
/// [`platform::reputation::tally`] counts them: the rows of the whole slice summed per (factor,
/// value, day) first, then upserted in key order, so that two auditors writing the same rows
/// lock them in the same order and never deadlock each other.
async fn count_reputation(
    conn: &mut MySqlConnection,
    events: &[&AuditEvent],
    prefixes: reputation::Prefixes,
) -> Result<(), sqlx::Error> {
    let mut sums: BTreeMap<(&'static str, String, NaiveDate), reputation::Tally> = BTreeMap::new();
    for event in events {
        for (factor, value, day, tally) in reputation::tally(event, prefixes) {
            sums.entry((factor.as_str(), value, day))
                .or_default()
                .add(&tally);
        }
    }
    let rows: Vec<_> = sums.into_iter().collect();
    let size = |((_, value, _), _): &((&str, String, NaiveDate), reputation::Tally)| {
        8 * PARAM + 16 + 3 + value.len() + 5 + 5 * 8
    };
    for chunk in statements(&rows, size) {
        let mut query = QueryBuilder::<MySql>::new(
            "INSERT INTO reputation_count (factor, value, day, messages, rejected, tempfailed, \
                 permitted, reject_score) ",
        );
        query.push_values(chunk, |mut row, ((factor, value, day), tally)| {
            row.push_bind(*factor)
                .push_bind(value.clone())
                .push_bind(*day)
                .push_bind(tally.messages)
                .push_bind(tally.rejected)
                .push_bind(tally.tempfailed)
                .push_bind(tally.permitted)
                .push_bind(tally.reject_score);
        });
        query.push(
            " ON DUPLICATE KEY UPDATE messages = messages + VALUES(messages), \
                 rejected = rejected + VALUES(rejected), \
                 tempfailed = tempfailed + VALUES(tempfailed), \
                 permitted = permitted + VALUES(permitted), \
                 reject_score = reject_score + VALUES(reject_score)",
        );
        execute(conn, query).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_bounded_by_rows_and_bytes_and_powers_of_two() {
        let rows: Vec<usize> = vec![10; 2500];
        let sizes: Vec<usize> = statements(&rows, |r| *r).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![1024, 1024, 256, 128, 64, 4]);
        let rows: Vec<usize> = vec![10; 200];
        let sizes: Vec<usize> = statements(&rows, |r| *r).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![128, 64, 8]);

        let big = MAX_BYTES / 2 + 1;
        let rows = vec![big, big, 1, MAX_BYTES * 2, 1];
        let sizes: Vec<usize> = statements(&rows, |r| *r).iter().map(|c| c.len()).collect();
        // a row larger than the budget still gets a statement of its own
        assert_eq!(sizes, vec![1, 2, 1, 1]);
        assert!(statements(&Vec::<usize>::new(), |r| *r).is_empty());
    }

    #[test]
    fn lists_are_padded_to_a_power_of_two_with_their_last_value() {
        assert_eq!(lists(&[1, 2, 3]), vec![vec![1, 2, 3, 3]]);
        assert_eq!(lists(&[7]), vec![vec![7]]);
        let many: Vec<usize> = (0..MAX_LIST + 3).collect();
        let got = lists(&many);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].len(), MAX_LIST);
        assert_eq!(
            got[1],
            vec![MAX_LIST, MAX_LIST + 1, MAX_LIST + 2, MAX_LIST + 2]
        );
        assert!(lists::<usize>(&[]).is_empty());
    }

    #[test]
    fn addresses_compare_as_the_pad_space_collation_does() {
        assert_eq!(
            address_key("example.net ", "bob  "),
            address_key("example.net", "bob")
        );
        assert_ne!(
            address_key("example.net", " bob"),
            address_key("example.net", "bob")
        );
    }
}
