//! The rspamd module (spec/modules.md §4): scans the message text the gateway built with rspamd's
//! HTTP API (`POST /checkv2` through the `rspamd-client` crate) and suggests **reject** with
//! rspamd's score × `multiplier`, as ClueGetter did; ClueGetter's thresholds decide, not
//! rspamd's own action.
//!
//! Departures from ClueGetter, on purpose:
//! - `POST /checkv2` instead of the legacy `GET /check` (rspamd-client speaks only the v2
//!   protocol); determinants carry the same facts (score, required score, action, symbols).
//! - a bounded wait: the worker bounds the scan by the module `timeout` (the client's own HTTP
//!   timeout is a backstop just after it); ClueGetter had none.
//! - the HTTP status is checked (the client refuses non-2xx), and `Hostname` (Postfix's verified
//!   client name) is sent besides the spec's headers, so rspamd need not guess it.
//! - rspamd's `milter.add_headers` / `remove_headers` become milter changes for the gateway.
//!
//! Nothing here talks to RabbitMQ or measures time; see [`crate::worker`].

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use platform::config::RspamdConfig;
use rspamd_client::error::RspamdError;
use rspamd_client::protocol::scan::{MailHeader, Symbol};
use rspamd_client::{EnvelopeData, RspamdAsyncClient, RspamdScanReply};
use serde_json::{Value, json};
use wire::{Action, CheckRequest, CheckResult, Header, HeaderAt, MilterChanges, WIRE_VERSION};

use crate::module::{Module, ModuleError};

pub const NAME: &str = "rspamd";

/// ClueGetter's generic spam text, shared with the SpamAssassin module in the original.
pub const SPAM_MESSAGE: &str = "Our system has detected that this message is likely unsolicited mail (SPAM). \
     To reduce the amount of spam, this message has been blocked.";

/// How much longer than the module timeout the HTTP client itself waits.
const CLIENT_TIMEOUT_SLACK: Duration = Duration::from_secs(1);

/// The rspamd check: an HTTP client (rspamd 3.4 closes the connection after each reply, so
/// the client's pooling does not save a connect) and the multiplier.
pub struct Rspamd {
    client: RspamdAsyncClient,
    multiplier: f64,
}

impl Rspamd {
    /// A client for `http://{host}:{port}`.
    ///
    /// # Errors
    /// The HTTP client cannot be set up (its TLS backend failed to initialise).
    pub fn new(config: &RspamdConfig) -> Result<Self, ModuleError> {
        let client_config = rspamd_client::Config::builder()
            .base_url(base_url(&config.host, config.port))
            // The worker drops the scan at the module timeout and says so; the client's own
            // timeout is only a backstop, a little later, since its error would read like a
            // refused connection ("error sending request for url (…)").
            .timeout(config.timeout + CLIENT_TIMEOUT_SLACK)
            // The client's retry sleeps a whole `timeout` before trying again, which would
            // spend the module's entire budget waiting; one attempt it is. (0 underflows in
            // rspamd-client 0.7, 1 means "no retry".)
            .retries(1)
            // rspamd answers a zstd request with a zstd body flagged by its own `Compression`
            // header, which rspamd-client 0.7 decompresses only on its encrypted path: every
            // plain reply would fail to parse (seen with rspamd 3.4).
            .zstd(false)
            .build();
        let client = RspamdAsyncClient::new(client_config).map_err(|e| ModuleError::Request {
            service: NAME,
            source: Box::new(e),
        })?;
        Ok(Self {
            client,
            multiplier: config.multiplier,
        })
    }
}

#[async_trait]
impl Module for Rspamd {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let content = request.content.as_deref().ok_or(ModuleError::NoContent)?;
        let reply = self
            .client
            .scan(content, envelope(request))
            .await
            .map_err(classify)?;
        tracing::debug!(
            score = reply.score,
            action = %reply.action,
            symbols = reply.symbols.len(),
            "rspamd scanned the message"
        );
        Ok(to_result(request, reply, self.multiplier))
    }
}

/// The base URL; an IPv6 literal gets its brackets.
fn base_url(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("http://[{host}]:{port}")
    } else {
        format!("http://{host}:{port}")
    }
}

/// rspamd's request headers (spec: `IP`, `Helo`, `From`, one `Rcpt` each, `Queue-Id`, `User`).
fn envelope(request: &CheckRequest) -> EnvelopeData {
    let session = &request.session;
    let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let mut additional_headers = HashMap::new();
    if !request.queue_id.is_empty() {
        additional_headers.insert("Queue-Id".to_owned(), request.queue_id.clone());
    }
    EnvelopeData {
        // The null sender is `<>` in SMTP; an empty header would not parse as an address.
        from: Some(if request.envelope.sender.is_empty() {
            "<>".to_owned()
        } else {
            request.envelope.sender.clone()
        }),
        rcpt: request.envelope.recipients.clone(),
        ip: session.client_addr.map(|ip| ip.to_string()),
        user: non_empty(&session.sasl_username),
        helo: non_empty(&session.helo),
        hostname: non_empty(&session.client_name),
        additional_headers,
        ..EnvelopeData::default()
    }
}

/// Sorts rspamd-client's error kinds into ours. The client flattens transport errors to text
/// (`HttpError(String)`), so the cause below "error sending request for url (…)" is lost.
fn classify(error: RspamdError) -> ModuleError {
    let source = Box::new(error);
    match *source {
        RspamdError::SerdeError(_) | RspamdError::UTF8Error(_) => ModuleError::BadReply {
            service: NAME,
            source,
        },
        RspamdError::ConfigError(_)
        | RspamdError::ParseError(_)
        | RspamdError::InvalidHeaderName(_)
        | RspamdError::InvalidHeaderValue(_)
        | RspamdError::EncryptionError(_) => ModuleError::Request {
            service: NAME,
            source,
        },
        RspamdError::HttpError(_)
        | RspamdError::HTTPError(_)
        | RspamdError::IOError(_)
        | RspamdError::Unknown => ModuleError::Unavailable {
            service: NAME,
            source,
        },
    }
}

/// The module's answer to rspamd's reply: reject with the scaled score, why in determinants.
fn to_result(request: &CheckRequest, reply: RspamdScanReply, multiplier: f64) -> CheckResult {
    let changes = milter_changes(reply.milter.as_ref());
    let mut symbols: Vec<Symbol> = reply.symbols.into_values().collect();
    symbols.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.name.cmp(&b.name))
    });
    let symbols: Vec<Value> = symbols
        .into_iter()
        .map(|symbol| {
            json!({
                "name": symbol.name,
                "score": symbol.score,
                "description": symbol.description,
                "options": symbol.options.unwrap_or_default(),
            })
        })
        .collect();
    let mut determinants = json!({
        "score": reply.score,
        "required_score": reply.required_score,
        "action": reply.action,
        "multiplier": multiplier,
        "symbols": symbols,
    });
    if let Some(smtp_message) = reply.messages.get("smtp_message")
        && let Some(object) = determinants.as_object_mut()
    {
        object.insert(
            "smtp_message".to_owned(),
            Value::from(smtp_message.as_str()),
        );
    }
    CheckResult {
        version: WIRE_VERSION,
        message_id: request.message_id,
        module: NAME.to_owned(),
        action: Action::Reject,
        score: reply.score * multiplier,
        message: SPAM_MESSAGE.to_owned(),
        determinants,
        duration: 0.0,
        changes,
        enhanced_status: None,
    }
}

/// rspamd's milter block as changes: headers to add in rspamd's `order`, the names whose every
/// occurrence is to go (`0`), and single occurrences to remove (`n > 0` the n-th, `n < 0` the
/// n-th from the end, which is what [`wire::HeaderAt`]'s index means too).
fn milter_changes(milter: Option<&rspamd_client::protocol::scan::Milter>) -> MilterChanges {
    let mut changes = MilterChanges::default();
    let Some(milter) = milter else {
        return changes;
    };
    let mut add: Vec<(&String, &MailHeader)> = milter.add_headers.iter().collect();
    add.sort_by(|(a_name, a), (b_name, b)| a.order.cmp(&b.order).then_with(|| a_name.cmp(b_name)));
    changes.add_headers = add
        .into_iter()
        .map(|(name, header)| Header::new(name.as_str(), header.value.as_str()))
        .collect();
    let mut remove: Vec<&String> = Vec::new();
    let mut remove_one: Vec<HeaderAt> = Vec::new();
    for (name, occurrence) in &milter.remove_headers {
        if *occurrence == 0 {
            remove.push(name);
        } else {
            remove_one.push(HeaderAt {
                name: name.clone(),
                index: i64::from(*occurrence),
                value: String::new(),
            });
        }
    }
    remove.sort();
    remove_one.sort_by(|a, b| a.name.cmp(&b.name).then(a.index.cmp(&b.index)));
    changes.remove_headers = remove.into_iter().cloned().collect();
    changes.change_headers = remove_one;
    changes
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use chrono::Utc;
    use wire::{Envelope, MessageId, SessionInfo};

    fn request() -> CheckRequest {
        CheckRequest {
            version: WIRE_VERSION,
            instance: "default".into(),
            message_id: MessageId::new(),
            queue_id: "4jZB211qk4z6XPl".into(),
            module: NAME.into(),
            session: SessionInfo {
                session_id: MessageId::new().0,
                connected_at: Utc::now(),
                client_addr: Some("192.0.2.10".parse().unwrap()),
                client_port: Some(40000),
                client_name: "mail.example.org".into(),
                helo: "mail.example.org".into(),
                sasl_username: String::new(),
                sasl_method: String::new(),
                sasl_sender: String::new(),
                tls: None,
                mta_hostname: "mx.example.net".into(),
                daemon_name: "smtpd".into(),
            },
            envelope: Envelope {
                sender: String::new(),
                recipients: vec!["b@example.net".into(), "c@example.net".into()],
            },
            headers: vec![],
            content: Some(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
            content_truncated: false,
            sent_at: Utc::now(),
            stage: wire::CheckStage::Eom,
        }
    }

    /// A `/checkv2` reply as rspamd 3.4 writes it (trimmed), with a milter block.
    const REPLY: &str = r#"{
        "is_skipped": false, "score": 6.0, "required_score": 15.0, "action": "add header",
        "symbols": {
            "MIME_GOOD": {"name": "MIME_GOOD", "score": -0.1, "metric_score": -0.1,
                          "description": "Known content-type", "options": ["text/plain"]},
            "RDNS_NONE": {"name": "RDNS_NONE", "score": 1.0, "metric_score": 1.0,
                          "description": "Cannot resolve reverse DNS for sender's IP"},
            "HFILTER_HOSTNAME_UNKNOWN": {"name": "HFILTER_HOSTNAME_UNKNOWN", "score": 2.5,
                          "metric_score": 2.5},
            "AUTH_NA": {"name": "AUTH_NA", "score": 1.0, "metric_score": 1.0,
                          "description": "Authenticating message via SPF/DKIM/DMARC/ARC not available"}
        },
        "messages": {"smtp_message": "Try again later"},
        "message-id": "x@example.org",
        "milter": {
            "add_headers": {"X-Spamd-Bar": {"value": "++++++", "order": 1},
                            "X-Spam-Status": {"value": "No, score=6.0", "order": 0}},
            "remove_headers": {"X-Spam": 0, "X-Spamd-Bar": 1}
        }
    }"#;

    #[test]
    fn reply_becomes_a_reject_with_the_scaled_score_and_sorted_symbols() {
        let request = request();
        let reply: RspamdScanReply = serde_json::from_str(REPLY).unwrap();
        let result = to_result(&request, reply, 0.5);
        assert_eq!(result.action, Action::Reject);
        assert_eq!(result.score, 3.0);
        assert_eq!(result.message_id, request.message_id);
        assert_eq!(result.module, "rspamd");
        assert_eq!(result.message, SPAM_MESSAGE);
        let d = &result.determinants;
        assert_eq!(d["score"], 6.0);
        assert_eq!(d["required_score"], 15.0);
        assert_eq!(d["action"], "add header");
        assert_eq!(d["multiplier"], 0.5);
        assert_eq!(d["smtp_message"], "Try again later");
        let names: Vec<&str> = d["symbols"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        // by score, highest first; equal scores by name
        assert_eq!(
            names,
            [
                "HFILTER_HOSTNAME_UNKNOWN",
                "AUTH_NA",
                "RDNS_NONE",
                "MIME_GOOD"
            ]
        );
        assert_eq!(d["symbols"][3]["options"], json!(["text/plain"]));
        assert_eq!(d["symbols"][0]["description"], Value::Null);
        assert_eq!(d["symbols"][0]["options"], json!([]));
    }

    #[test]
    fn milter_block_becomes_changes_in_rspamd_order() {
        let reply: RspamdScanReply = serde_json::from_str(REPLY).unwrap();
        let result = to_result(&request(), reply, 1.0);
        assert_eq!(
            result.changes.add_headers,
            [
                Header::new("X-Spam-Status", "No, score=6.0"),
                Header::new("X-Spamd-Bar", "++++++")
            ]
        );
        // 0: every occurrence; 1: the first one only
        assert_eq!(result.changes.remove_headers, ["X-Spam"]);
        assert_eq!(
            result.changes.change_headers,
            [HeaderAt {
                name: "X-Spamd-Bar".into(),
                index: 1,
                value: String::new()
            }]
        );
    }

    #[test]
    fn a_reply_without_smtp_message_or_milter_block_has_neither() {
        let reply: RspamdScanReply = serde_json::from_str(
            r#"{"score": 0.0, "required_score": 15.0, "action": "no action"}"#,
        )
        .unwrap();
        let result = to_result(&request(), reply, 0.67);
        assert_eq!(result.score, 0.0);
        assert!(result.determinants.get("smtp_message").is_none());
        assert_eq!(result.determinants["symbols"], json!([]));
        assert!(result.changes.is_empty());
    }

    #[test]
    fn envelope_carries_the_spec_headers() {
        let mut request = request();
        request.session.sasl_username = "alice".into();
        let headers: Vec<(String, String)> = envelope(&request).into_iter().collect();
        let get = |name: &str| -> Vec<&str> {
            headers
                .iter()
                .filter(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("From"), ["<>"]);
        assert_eq!(get("IP"), ["192.0.2.10"]);
        assert_eq!(get("Helo"), ["mail.example.org"]);
        assert_eq!(get("Hostname"), ["mail.example.org"]);
        assert_eq!(get("User"), ["alice"]);
        assert_eq!(get("Queue-Id"), ["4jZB211qk4z6XPl"]);
        assert_eq!(get("Rcpt"), ["b@example.net", "c@example.net"]);
    }

    #[test]
    fn empty_session_fields_are_not_sent() {
        let mut request = request();
        request.session.helo.clear();
        request.session.client_addr = None;
        request.session.client_name.clear();
        request.queue_id.clear();
        request.envelope.sender = "a@example.org".into();
        let names: Vec<String> = envelope(&request).into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, ["From", "Rcpt", "Rcpt"]);
    }

    #[test]
    fn ipv6_hosts_get_brackets() {
        assert_eq!(base_url("::1", 11333), "http://[::1]:11333");
        assert_eq!(base_url("[::1]", 11333), "http://[::1]:11333");
        assert_eq!(base_url("rspamd.local", 1), "http://rspamd.local:1");
    }
}
