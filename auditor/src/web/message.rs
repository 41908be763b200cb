//! One message: `/messages/{id}` and `/api/v1/messages/{id}`. Session, envelope, recipients,
//! headers, each module's result with its determinants as readable rows, the verdict with the
//! thresholds and the sums that made it, the linked bounces, the body if it was stored.

use askama::Template;
use askama_web::WebTemplate;
use axum::Json;
use axum::extract::{Path, State};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;
use wire::Action;

use super::auth::Identity;
use super::error::WebError;
use super::format::{address, decode_header, decode_subject, fmt_date, lossy};
use super::nav::Nav;
use super::params::parse_uuid;
use super::state::AppState;
use crate::store::read::Scope;
use crate::store::read::message::{self as read, MessageRow};

/// Most body bytes shown on the page (the API gives the same).
const BODY_SHOWN: usize = 1 << 20;
/// Most determinant rows shown per result; deeper levels are cut at [`MAX_DEPTH`].
const MAX_ROWS: usize = 400;
const MAX_DEPTH: usize = 8;

#[derive(Debug, Serialize, ToSchema)]
pub struct Session {
    pub id: String,
    pub connected: String,
    pub client_ip: String,
    pub client_port: Option<u16>,
    pub reverse_dns: String,
    pub helo: String,
    pub sasl_username: String,
    pub sasl_method: String,
    pub sasl_sender: String,
    pub tls_version: String,
    pub cipher: String,
    pub cipher_bits: Option<u16>,
    pub cert_subject: String,
    pub cert_issuer: String,
    /// The client's country (ISO 3166-1 alpha-2) as the geoip module looked it up.
    pub country: Option<String>,
    /// The client's autonomous system, when the geoip module has an ASN database.
    pub asn: Option<u32>,
    pub mta_hostname: String,
    pub daemon_name: String,
    pub instance: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Recipient {
    pub address: String,
    pub status: String,
    pub count: u32,
    pub reason: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderLine {
    pub name: String,
    /// As received.
    pub value: String,
    /// With its RFC 2047 encoded words decoded (Subject, From, To, …); `None` when that changes
    /// nothing.
    pub decoded: Option<String>,
}

/// The envelope changes in the srs module's determinants (`sender.rewritten`,
/// `recipients[].reversed`), in that order.
pub fn envelope_changes(results: &[ModuleResult]) -> Vec<EnvelopeChange> {
    let mut changes = Vec::new();
    let text = |value: &serde_json::Value| value.as_str().map(str::to_owned);
    for result in results.iter().filter(|r| r.module == "srs") {
        let sender = &result.determinants["sender"];
        if let (Some(from), Some(to)) = (text(&sender["original"]), text(&sender["rewritten"])) {
            changes.push(EnvelopeChange {
                what: "Sender rewritten (SRS)".to_owned(),
                from,
                to,
            });
        }
        let recipients = result.determinants["recipients"].as_array();
        for recipient in recipients.into_iter().flatten() {
            if let (Some(from), Some(to)) =
                (text(&recipient["address"]), text(&recipient["reversed"]))
            {
                changes.push(EnvelopeChange {
                    what: "Recipient reversed (SRS)".to_owned(),
                    from,
                    to,
                });
            }
        }
    }
    changes
}

/// One line of a result's determinants: a key at a depth, and its value if it is a scalar.
#[derive(Clone, Debug)]
pub struct DetRow {
    pub depth: usize,
    pub key: String,
    pub value: String,
}

#[derive(Clone, Debug, Serialize, ToSchema)]
pub struct ModuleResult {
    pub module: String,
    /// What the module suggested, as it sent it.
    pub suggested: String,
    /// What the result counted as in the verdict (`wire::Action::counted_as`: a zero score
    /// counts as permit, a non-finite one as error); `None` for a late result, which did not
    /// count.
    pub counted_as: Option<String>,
    /// Whether this result's message is the verdict's reason, the text Postfix was given.
    pub gave_reason: bool,
    pub score: f64,
    pub weighted_score: f64,
    pub duration_ms: f64,
    pub message: String,
    pub late: bool,
    /// Why, as the module explained it (JSON, as the module sent it).
    #[schema(value_type = Object)]
    pub determinants: serde_json::Value,
    #[serde(skip)]
    pub rows: Vec<DetRow>,
    /// The badge's style: the counted action when it is the verdict's, else `muted`.
    #[serde(skip)]
    pub badge: &'static str,
}

/// What a stored result counted as, whether it gave the verdict's reason and its badge's
/// style: what counted, not what the module suggested. A result that counted toward an action
/// the verdict was not (rspamd's reject score on a permitted message) is shown muted.
fn counted(
    suggested: &str,
    score: f64,
    late: bool,
    message: &str,
    verdict: &str,
    reason: &str,
) -> (Option<String>, bool, &'static str) {
    if late {
        return (None, false, "muted");
    }
    let Ok(action) = suggested.parse::<Action>() else {
        // an action this build does not know: shown as it came
        return (Some(suggested.to_owned()), false, "muted");
    };
    let counted = action.counted_as(score);
    let for_the_verdict = counted.as_str() == verdict;
    let gave_reason =
        for_the_verdict && counted != Action::Permit && !message.is_empty() && message == reason;
    let badge = if for_the_verdict {
        counted.as_str()
    } else {
        "muted"
    };
    (Some(counted.as_str().to_owned()), gave_reason, badge)
}

/// One factor value of the reputation module's determinants (`factors[]`), as its table shows
/// it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReputationRow {
    pub factor: String,
    pub value: String,
    pub messages: String,
    pub rejected: String,
    pub tempfailed: String,
    pub permitted: String,
    pub ratio: String,
    pub mean_reject_score: String,
    /// `—` when the value had too few judged messages to be scored.
    pub score: String,
}

impl ModuleResult {
    /// The reputation module's counts per factor value (empty for other modules).
    pub fn reputation_rows(&self) -> Vec<ReputationRow> {
        if self.module != "reputation" {
            return Vec::new();
        }
        let number = |v: &serde_json::Value| match v.as_f64() {
            Some(x) if v.is_u64() || v.is_i64() => format!("{x}"),
            Some(x) => format!("{x:.2}"),
            None => "—".to_owned(),
        };
        let factors = self.determinants["factors"].as_array();
        factors
            .into_iter()
            .flatten()
            .map(|f| ReputationRow {
                factor: f["factor"].as_str().unwrap_or_default().to_owned(),
                value: f["value"].as_str().unwrap_or_default().to_owned(),
                messages: number(&f["messages"]),
                rejected: number(&f["rejected"]),
                tempfailed: number(&f["tempfailed"]),
                permitted: number(&f["permitted"]),
                ratio: number(&f["refused_ratio"]),
                mean_reject_score: number(&f["mean_reject_score"]),
                score: number(&f["score"]),
            })
            .collect()
    }
}

/// One rspamd symbol or spamassassin rule that scored, as the compact table shows it.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleRow {
    pub name: String,
    pub score: f64,
    pub description: String,
    /// rspamd's options, comma-separated (what the symbol matched).
    pub options: String,
}

/// Where a scanner keeps its scored rules in its determinants, and the key of a rule's name:
/// rspamd's `symbols[].name`, spamassassin's `report[].symbol`.
fn rules_of<'d>(
    module: &str,
    determinants: &'d serde_json::Value,
) -> Option<(&'static str, (&'d Vec<serde_json::Value>, &'static str))> {
    let (key, name) = match module {
        "rspamd" => ("symbols", "name"),
        "spamassassin" => ("report", "symbol"),
        _ => return None,
    };
    determinants
        .get(key)
        .and_then(serde_json::Value::as_array)
        .map(|rules| (key, (rules, name)))
}

impl ModuleResult {
    /// The scanner's rules (rspamd symbols, spamassassin rules), highest score first (ties by
    /// name); empty for other modules.
    pub fn rule_rows(&self) -> Vec<RuleRow> {
        let Some((_, (rules, name))) = rules_of(&self.module, &self.determinants) else {
            return Vec::new();
        };
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let mut rows: Vec<RuleRow> = rules
            .iter()
            .map(|rule| RuleRow {
                name: text(&rule[name]),
                score: rule["score"].as_f64().unwrap_or(0.0),
                description: text(&rule["description"]),
                options: rule["options"]
                    .as_array()
                    .map(|o| o.iter().map(scalar_text).collect::<Vec<_>>().join(", "))
                    .unwrap_or_default(),
            })
            .collect();
        rows.sort_by(|a, b| {
            b.score
                .total_cmp(&a.score)
                .then_with(|| a.name.cmp(&b.name))
        });
        rows
    }
}

/// An envelope change a module made, as the srs module's determinants tell it: the sender
/// rewritten (SRS), a recipient reversed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct EnvelopeChange {
    /// `Sender rewritten (SRS)` or `Recipient reversed (SRS)`.
    pub what: String,
    pub from: String,
    pub to: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct LinkedBounce {
    pub id: u64,
    pub date: String,
    pub link: String,
    pub kind: String,
    pub reports: String,
}

/// How the verdict was reached, in words and numbers.
#[derive(Debug, Serialize, ToSchema)]
pub struct Verdict {
    pub verdict: String,
    pub applied: String,
    pub reason: String,
    pub reject_score: f64,
    pub reject_threshold: f64,
    pub tempfail_score: f64,
    pub tempfail_threshold: f64,
    pub noop: bool,
    pub whitelisted: bool,
    pub failure: Option<String>,
    /// e.g. `rspamd 6.25 + spamassassin 0.50 = 6.75`
    pub reject_sum: String,
    pub tempfail_sum: String,
    pub explanation: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct MessageDetail {
    pub id: String,
    pub date: String,
    pub queue_id: String,
    pub sender: String,
    pub message_id: String,
    pub subject: String,
    pub rcpt_count: u32,
    pub body_size: u64,
    pub body_hash: String,
    pub answered: bool,
    pub headers_truncated: bool,
    pub session: Session,
    pub recipients: Vec<Recipient>,
    /// The envelope as it left: the srs module's rewritten sender and reversed recipients.
    pub envelope_changes: Vec<EnvelopeChange>,
    pub headers: Vec<HeaderLine>,
    pub results: Vec<ModuleResult>,
    pub verdict: Verdict,
    pub bounces: Vec<LinkedBounce>,
    /// What Postfix's log says became of each recipient (`bounce-ingest maillog`), by
    /// recipient, oldest first.
    pub deliveries: Vec<DeliveryLine>,
    /// The stored body as text (lossy UTF-8, at most 1 MiB); None when none was stored.
    pub body: Option<String>,
    /// Headers and body are withheld from this user's role (`auditor`): `headers` is empty
    /// and `body` null whatever was stored.
    pub contents_withheld: bool,
}

/// The message `id` as `scope` may see it; not found when it is outside the scope (so a
/// `domain-admin` cannot tell another domain's message from none).
pub async fn load(state: &AppState, scope: &Scope, id: Uuid) -> Result<MessageDetail, WebError> {
    let read::MessageRecord {
        message: row,
        recipients,
        headers,
        results,
        bounces,
        body,
    } = read::message(&state.pool, scope, id)
        .await?
        .ok_or(WebError::NotFound)?;
    let deliveries = delivery_lines(state, id).await?;
    let recipients = recipients
        .into_iter()
        .map(|r| Recipient {
            address: address(&r.local, &r.domain),
            status: r.status,
            count: r.count,
            reason: r.reason,
        })
        .collect();
    let body = (!body.is_empty()).then(|| {
        let mut bytes: Vec<u8> = body.concat();
        bytes.truncate(BODY_SHOWN);
        lossy(&bytes)
    });

    let results: Vec<ModuleResult> = results
        .into_iter()
        .map(|r| {
            let determinants = serde_json::from_str(&r.determinants)
                .unwrap_or(serde_json::Value::String(r.determinants.clone()));
            // the scanners' rules show as their own table (`rule_rows`), not once more here
            let rows = match rules_of(&r.module, &determinants) {
                Some((key, _)) => {
                    let mut rest = determinants.clone();
                    if let Some(object) = rest.as_object_mut() {
                        object.remove(key);
                    }
                    flatten(&rest)
                }
                None => flatten(&determinants),
            };
            let (counted_as, gave_reason, badge) = counted(
                &r.verdict,
                r.score,
                r.late,
                &r.verdict_msg,
                &row.verdict,
                &row.verdict_msg,
            );
            ModuleResult {
                module: r.module,
                suggested: r.verdict,
                counted_as,
                gave_reason,
                badge,
                score: r.score,
                weighted_score: r.weighted_score,
                duration_ms: r.duration * 1000.0,
                message: r.verdict_msg,
                late: r.late,
                determinants,
                rows,
            }
        })
        .collect();
    let verdict = explain(&row, &results);
    let envelope_changes = envelope_changes(&results);
    Ok(MessageDetail {
        id: id.hyphenated().to_string(),
        date: fmt_date(row.date),
        queue_id: row.queue_id,
        sender: address(&row.sender_local, &row.sender_domain),
        message_id: row.message_id,
        subject: decode_subject(&row.subject),
        rcpt_count: row.rcpt_count,
        body_size: row.body_size,
        body_hash: row.body_hash,
        answered: row.answered,
        headers_truncated: row.headers_truncated,
        session: Session {
            id: row.session.hyphenated().to_string(),
            connected: fmt_date(row.date_connect),
            client_ip: row.ip,
            client_port: row.port,
            reverse_dns: row.reverse_dns,
            helo: row.helo,
            sasl_username: row.sasl_username,
            sasl_method: row.sasl_method,
            sasl_sender: row.sasl_sender,
            tls_version: row.tls_version,
            cipher: row.cipher,
            cipher_bits: row.cipher_bits,
            cert_subject: row.cert_subject,
            cert_issuer: row.cert_issuer,
            country: row.country,
            asn: row.asn,
            mta_hostname: if row.mta_hostname.is_empty() {
                row.client_hostname
            } else {
                row.mta_hostname
            },
            daemon_name: row.daemon_name,
            instance: row.instance,
        },
        recipients,
        envelope_changes,
        headers: headers
            .into_iter()
            .map(|(name, value)| {
                let (name, value) = (lossy(&name), lossy(&value));
                HeaderLine {
                    decoded: decode_header(&name, &value),
                    name,
                    value,
                }
            })
            .collect(),
        results,
        verdict,
        bounces: bounces
            .into_iter()
            .map(|b| LinkedBounce {
                id: b.id,
                date: fmt_date(b.date),
                link: b.link.unwrap_or_default(),
                kind: b.kind,
                reports: b.reports.unwrap_or_default(),
            })
            .collect(),
        deliveries,
        body,
        contents_withheld: !scope.contents,
    })
}

/// One delivery line of the message (Postfix's log, `message_delivery`).
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryLine {
    pub recipient: String,
    /// The address before aliasing or rewriting, when Postfix logged one.
    pub orig_to: String,
    /// `sent`, `deferred`, `bounced` or `expired`.
    pub status: String,
    pub time: String,
    pub relay: String,
    pub dsn: String,
    /// Seconds from arrival to this attempt.
    pub delay: Option<f64>,
    pub reason: String,
    /// The delivery agent (`smtp`, `local`, ...).
    pub service: String,
    #[serde(skip)]
    pub badge: &'static str,
}

async fn delivery_lines(state: &AppState, id: Uuid) -> Result<Vec<DeliveryLine>, WebError> {
    let rows = crate::store::read::delivery::of_message(&state.pool, id).await?;
    Ok(rows
        .into_iter()
        .map(|d| DeliveryLine {
            badge: match d.status.as_str() {
                "sent" => "permit",
                "deferred" => "tempfail",
                _ => "reject",
            },
            recipient: d.recipient,
            orig_to: d.orig_to,
            status: d.status,
            time: fmt_date(d.log_time),
            relay: d.relay,
            dsn: d.dsn,
            delay: d.delay,
            reason: d.reason,
            service: d.service,
        })
        .collect())
}

/// The gateway's rule, told back: reject when the weighted scores of the results that
/// suggested reject reach the reject threshold; tempfail when tempfail and reject scores
/// together reach the tempfail threshold (or a module erred); else permit.
fn explain(row: &MessageRow, results: &[ModuleResult]) -> Verdict {
    let sum = |action: Action| -> String {
        let terms: Vec<String> = results
            .iter()
            .filter(|r| r.counted_as.as_deref() == Some(action.as_str()))
            .map(|r| format!("{} {:.2}", r.module, r.weighted_score))
            .collect();
        if terms.is_empty() {
            "no module suggested it: 0.00".to_owned()
        } else {
            let total: f64 = results
                .iter()
                .filter(|r| r.counted_as.as_deref() == Some(action.as_str()))
                .map(|r| r.weighted_score)
                .sum();
            format!("{} = {total:.2}", terms.join(" + "))
        }
    };
    let mut explanation = Vec::new();
    let reject_reached = row.reject_score >= row.reject_threshold;
    explanation.push(format!(
        "Reject score {:.2} {} reject threshold {:.2}.",
        row.reject_score,
        if reject_reached { "≥" } else { "<" },
        row.reject_threshold
    ));
    if !reject_reached {
        let combined = row.tempfail_score + row.reject_score;
        explanation.push(format!(
            "Tempfail score {:.2} + reject score {:.2} = {combined:.2} {} tempfail threshold {:.2}.",
            row.tempfail_score,
            row.reject_score,
            if combined >= row.tempfail_threshold { "≥" } else { "<" },
            row.tempfail_threshold
        ));
    }
    if results
        .iter()
        .any(|r| r.counted_as.as_deref() == Some(Action::Error.as_str()))
    {
        explanation.push(
            "A module answered with an error: unless excused by its group or on-error = ignore, \
             that tempfails the message."
                .to_owned(),
        );
    }
    if let Some(failure) = &row.failure {
        explanation.push(format!("No verdict from the modules: {failure}."));
    }
    explanation.push(format!("Verdict: {}.", row.verdict));
    if row.noop {
        explanation.push(format!(
            "noop was on: the verdict would have been {}; Postfix was told {}.",
            row.verdict, row.applied
        ));
    } else if row.whitelisted {
        explanation.push(format!(
            "The client is whitelisted: Postfix was told {} (the rules said {}).",
            row.applied, row.verdict
        ));
    } else if row.verdict != row.applied {
        explanation.push(format!("Postfix was told {}.", row.applied));
    }
    if results.iter().any(|r| r.late) {
        explanation.push("Late results arrived after the verdict and did not count.".to_owned());
    }
    Verdict {
        verdict: row.verdict.clone(),
        applied: row.applied.clone(),
        reason: row.verdict_msg.clone(),
        reject_score: row.reject_score,
        reject_threshold: row.reject_threshold,
        tempfail_score: row.tempfail_score,
        tempfail_threshold: row.tempfail_threshold,
        noop: row.noop,
        whitelisted: row.whitelisted,
        failure: row.failure.clone(),
        reject_sum: sum(Action::Reject),
        tempfail_sum: sum(Action::Tempfail),
        explanation,
    }
}

/// Determinants as rows of key, depth and scalar value: readable, and rendered as text by the
/// template (escaped), never as HTML.
pub fn flatten(value: &serde_json::Value) -> Vec<DetRow> {
    let mut rows = Vec::new();
    match value {
        serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
            walk(value, 0, &mut rows);
        }
        scalar => rows.push(DetRow {
            depth: 0,
            key: String::new(),
            value: scalar_text(scalar),
        }),
    }
    if rows.len() > MAX_ROWS {
        rows.truncate(MAX_ROWS);
        rows.push(DetRow {
            depth: 0,
            key: "…".into(),
            value: "more rows not shown (see the JSON API)".into(),
        });
    }
    rows
}

fn walk(value: &serde_json::Value, depth: usize, rows: &mut Vec<DetRow>) {
    if rows.len() > MAX_ROWS {
        return;
    }
    let entries: Vec<(String, &serde_json::Value)> = match value {
        serde_json::Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (format!("[{i}]"), v))
            .collect(),
        _ => return,
    };
    for (key, value) in entries {
        match value {
            serde_json::Value::Array(items) if items.iter().all(is_scalar) => rows.push(DetRow {
                depth,
                key,
                value: items.iter().map(scalar_text).collect::<Vec<_>>().join(", "),
            }),
            serde_json::Value::Object(map) if map.is_empty() => rows.push(DetRow {
                depth,
                key,
                value: "(empty)".into(),
            }),
            serde_json::Value::Object(_) | serde_json::Value::Array(_) => {
                if depth >= MAX_DEPTH {
                    rows.push(DetRow {
                        depth,
                        key,
                        value: value.to_string(),
                    });
                } else {
                    rows.push(DetRow {
                        depth,
                        key,
                        value: String::new(),
                    });
                    walk(value, depth + 1, rows);
                }
            }
            scalar => rows.push(DetRow {
                depth,
                key,
                value: scalar_text(scalar),
            }),
        }
    }
}

fn is_scalar(value: &serde_json::Value) -> bool {
    !matches!(
        value,
        serde_json::Value::Object(_) | serde_json::Value::Array(_)
    )
}

fn scalar_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "null".into(),
        other => other.to_string(),
    }
}

#[derive(Template, WebTemplate)]
#[template(path = "message.html")]
pub struct MessageTemplate {
    pub nav: Nav,
    pub m: MessageDetail,
}

/// `GET /messages/{id}`
pub async fn page(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Path(id): Path<String>,
) -> Result<MessageTemplate, WebError> {
    let id = parse_uuid(&id)?;
    Ok(MessageTemplate {
        nav: Nav::new(&identity, "messages"),
        m: load(&state, &identity.scope, id).await?,
    })
}

/// `GET /api/v1/messages/{id}`
#[utoipa::path(
    get,
    path = "/api/v1/messages/{id}",
    operation_id = "getMessage",
    summary = "One message with its session, recipients, headers, module results, verdict arithmetic, bounces and body.",
    params(("id" = String, Path, format = Uuid, description = "The message UUID.")),
    responses(
        (status = 200, description = "The message.", body = MessageDetail),
        (status = 401, description = "No valid session cookie or bearer token."),
        (status = 404, description = "No such message (or not a UUID)."),
    ),
)]
pub async fn api(
    State(state): State<AppState>,
    axum::Extension(identity): axum::Extension<Identity>,
    Path(id): Path<String>,
) -> Result<Json<MessageDetail>, WebError> {
    let id = parse_uuid(&id)?;
    Ok(Json(load(&state, &identity.scope, id).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn determinants_read_as_rows() {
        let rows = flatten(&serde_json::json!({
            "action": "reject",
            "symbols": {"GTUBE": {"score": 0.0, "options": ["x", "y"]}},
            "empty": {}
        }));
        let shown: Vec<(usize, &str, &str)> = rows
            .iter()
            .map(|r| (r.depth, r.key.as_str(), r.value.as_str()))
            .collect();
        assert_eq!(
            shown,
            vec![
                (0, "action", "reject"),
                (0, "empty", "(empty)"),
                (0, "symbols", ""),
                (1, "GTUBE", ""),
                (2, "options", "x, y"),
                (2, "score", "0.0"),
            ]
        );
    }

    /// What counted, not what the module suggested: rspamd suggests reject with every score,
    /// so on a permitted message its result is a muted badge and its "blocked" text is not
    /// shown; a zero score counts as permit; a late result did not count.
    #[test]
    fn badges_show_what_counted() {
        const BLOCKED: &str = "… this message has been blocked.";
        // rspamd's reject 3.0 on a permitted message
        assert_eq!(
            counted("reject", 3.0, false, BLOCKED, "permit", ""),
            (Some("reject".to_owned()), false, "muted")
        );
        // a zero score counts as permit
        assert_eq!(
            counted("reject", 0.0, false, BLOCKED, "permit", ""),
            (Some("permit".to_owned()), false, "permit")
        );
        // the result that rejected the message, with the text Postfix got
        assert_eq!(
            counted("reject", 12.0, false, BLOCKED, "reject", BLOCKED),
            (Some("reject".to_owned()), true, "reject")
        );
        // a late result did not count, whatever it says
        assert_eq!(
            counted("reject", 12.0, true, BLOCKED, "reject", BLOCKED),
            (None, false, "muted")
        );
        // the quotas tempfail with its reason
        let over = "Exceeding quota, max of 150 messages per 86400 seconds for sender 'a@b'";
        assert_eq!(
            counted("tempfail", 100.0, false, over, "tempfail", over),
            (Some("tempfail".to_owned()), true, "tempfail")
        );
    }

    #[test]
    fn the_reputation_module_s_counts_read_as_a_table() {
        let determinants = serde_json::json!({"factors": [
            {"factor": "client_address", "value": "198.51.100.50", "messages": 13,
             "rejected": 12, "tempfailed": 0, "permitted": 0, "judged": 12,
             "refused_ratio": 1.0, "mean_reject_score": 15.5, "score": 8.0},
            {"factor": "sasl_username", "value": "alice", "messages": 1, "rejected": 0,
             "tempfailed": 0, "permitted": 1, "refused_ratio": 0.0, "mean_reject_score": 0.0,
             "score": null},
        ]});
        let result = ModuleResult {
            module: "reputation".to_owned(),
            suggested: "reject".to_owned(),
            counted_as: Some("reject".to_owned()),
            gave_reason: true,
            badge: "reject",
            score: 8.0,
            weighted_score: 8.0,
            duration_ms: 1.0,
            message: String::new(),
            late: false,
            rows: flatten(&determinants),
            determinants,
        };
        let rows = result.reputation_rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (
                rows[0].value.as_str(),
                rows[0].messages.as_str(),
                rows[0].ratio.as_str()
            ),
            ("198.51.100.50", "13", "1.00")
        );
        assert_eq!(rows[0].score, "8.00");
        assert_eq!(rows[1].score, "—");
        let other = ModuleResult {
            module: "rspamd".to_owned(),
            ..result
        };
        assert!(other.reputation_rows().is_empty());
    }

    #[test]
    fn scanner_rules_read_as_a_table_highest_score_first() {
        let determinants = serde_json::json!({
            "score": 6.5,
            "symbols": [
                { "name": "R_SPF_ALLOW", "score": -0.2, "description": "SPF ok", "options": ["+ip4"] },
                { "name": "GTUBE", "score": 0.0, "description": null, "options": [] },
                { "name": "BAYES_SPAM", "score": 5.1, "description": "Bayes", "options": ["97%", 1] },
            ]
        });
        let result = ModuleResult {
            module: "rspamd".to_owned(),
            suggested: "reject".to_owned(),
            counted_as: Some("reject".to_owned()),
            gave_reason: false,
            badge: "reject",
            score: 6.5,
            weighted_score: 6.5,
            duration_ms: 1.0,
            message: String::new(),
            late: false,
            rows: Vec::new(),
            determinants,
        };
        let rows = result.rule_rows();
        let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["BAYES_SPAM", "GTUBE", "R_SPF_ALLOW"]);
        assert_eq!(rows[0].options, "97%, 1");
        assert_eq!(rows[2].score, -0.2);
        let spamassassin = ModuleResult {
            module: "spamassassin".to_owned(),
            determinants: serde_json::json!({ "report": [
                { "score": 0.8, "symbol": "RDNS_NONE", "description": "no rDNS" },
                { "score": 1000.0, "symbol": "GTUBE", "description": "test" },
            ]}),
            ..result.clone()
        };
        let rows = spamassassin.rule_rows();
        assert_eq!((rows[0].name.as_str(), rows[0].score), ("GTUBE", 1000.0));
        let other = ModuleResult {
            module: "quotas".to_owned(),
            ..result
        };
        assert!(other.rule_rows().is_empty());
    }

    #[test]
    fn the_srs_module_s_envelope_changes_are_shown() {
        let result = |module: &str, determinants: serde_json::Value| ModuleResult {
            module: module.to_owned(),
            suggested: "permit".to_owned(),
            counted_as: Some("permit".to_owned()),
            gave_reason: false,
            badge: "muted",
            score: 0.0,
            weighted_score: 0.0,
            duration_ms: 0.1,
            message: String::new(),
            late: false,
            rows: flatten(&determinants),
            determinants,
        };
        let results = [
            result(
                "rspamd",
                serde_json::json!({ "sender": { "original": "x", "rewritten": "y" } }),
            ),
            result(
                "srs",
                serde_json::json!({
                    "sender": { "original": "a@s.test", "rewritten": "SRS0=h=TT=s.test=a@v.test" },
                    "recipients": [
                        { "address": "SRS0=g=TT=o.test=b@v.test", "reversed": "b@o.test" },
                        { "address": "SRS0=bad@v.test", "not_reversed": "forged" }
                    ]
                }),
            ),
            result(
                "srs",
                serde_json::json!({ "sender": { "original": "c@v.test", "unchanged": "ours" } }),
            ),
        ];
        let change = |what: &str, from: &str, to: &str| EnvelopeChange {
            what: what.to_owned(),
            from: from.to_owned(),
            to: to.to_owned(),
        };
        assert_eq!(
            envelope_changes(&results),
            [
                change(
                    "Sender rewritten (SRS)",
                    "a@s.test",
                    "SRS0=h=TT=s.test=a@v.test"
                ),
                change(
                    "Recipient reversed (SRS)",
                    "SRS0=g=TT=o.test=b@v.test",
                    "b@o.test"
                ),
            ]
        );
    }
}
