//! The SpamAssassin module (spec/modules.md §3): sends the message text the gateway built (a
//! synthetic `Received` header, the headers, the body; cut at `max-size`) to spamd with
//! `REPORT`, and suggests **reject** with spamd's score, as ClueGetter did; cluegetter's
//! thresholds decide, not spamd's own. The protocol is [`spamd`].
//!
//! The reason is the `verdict-msg` of the highest-scoring matched rule that has one, else the
//! generic spam text. Determinants: spamd's score and threshold and the report's rules,
//! highest score first (`{score, symbol, description}`).
//!
//! Departures from ClueGetter, on purpose:
//! - `connect-timeout` and `timeout` are real durations and both apply (spec gap B.9: ClueGetter
//!   truncated them to whole seconds, so its 0.1 s connect timeout meant "no limit");
//! - no `delay`: the breaker is the gateway's, which stops waiting; the worker has no way (and no
//!   need) to be told;
//! - `Content-length` is the exact length of what is sent (ClueGetter declared two bytes more
//!   than the message and sent four).
//!
//! A connection per message: spamd serves one request per connection.

pub mod spamd;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use platform::config::SpamAssassinConfig;
use serde_json::json;
use tokio::net::TcpStream;
use wire::{Action, CheckRequest, CheckResult};

use self::spamd::{ExchangeError, Reply};
use crate::module::{Module, ModuleError};
use crate::modules::rspamd::SPAM_MESSAGE;

pub const NAME: &str = "spamassassin";

/// The spamd client and how the result is made.
pub struct SpamAssassin {
    /// `host:port`, as given (a name is resolved at each connect).
    address: String,
    connect_timeout: Duration,
    timeout: Duration,
    max_size: usize,
    /// Upper-cased rule name → reason.
    verdict_msgs: HashMap<String, String>,
}

impl SpamAssassin {
    pub fn new(config: &SpamAssassinConfig) -> Self {
        let address = if config.host.contains(':') && !config.host.starts_with('[') {
            format!("[{}]:{}", config.host, config.port)
        } else {
            format!("{}:{}", config.host, config.port)
        };
        Self {
            address,
            connect_timeout: config.connect_timeout,
            timeout: config.timeout,
            max_size: config.max_size,
            verdict_msgs: config
                .verdict_msg
                .iter()
                .map(|v| (v.rule.clone(), v.message.clone()))
                .collect(),
        }
    }

    /// One exchange: connect (within `connect-timeout`), send, read the reply, all within
    /// `timeout`. The worker's own timeout is the same length and started first; this one
    /// keeps the client honest on its own.
    async fn scan(&self, request: &[u8]) -> Result<Vec<u8>, ExchangeError> {
        let exchange = async {
            let mut stream =
                tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.address))
                    .await
                    .map_err(|_| ExchangeError::ConnectTimeout {
                        address: self.address.clone(),
                        timeout: self.connect_timeout,
                    })?
                    .map_err(|source| ExchangeError::Connect {
                        address: self.address.clone(),
                        source,
                    })?;
            // One request, one small reply: no point in Nagle's delay.
            let _ = stream.set_nodelay(true);
            spamd::exchange(&mut stream, request).await
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ExchangeError::Timeout {
                address: self.address.clone(),
                timeout: self.timeout,
            })?
    }
}

#[async_trait]
impl Module for SpamAssassin {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let content = request.content.as_deref().ok_or(ModuleError::NoContent)?;
        // The gateway already cut the text at max-size; a request from a gateway with another
        // configuration is cut here, so spamd never gets more than we promised it.
        let sent = &content[..content.len().min(self.max_size)];
        let truncated = request.content_truncated || sent.len() < content.len();
        let user = request.envelope.recipients.first().map(String::as_str);
        let reply = self
            .scan(&spamd::encode_request(user, sent))
            .await
            .map_err(classify)?;
        let reply = spamd::parse_reply(&reply).map_err(|e| classify(e.into()))?;
        tracing::debug!(
            score = reply.score,
            rules = %reply
                .report
                .iter()
                .map(|f| format!("{}={}", f.symbol, f.score))
                .collect::<Vec<_>>()
                .join(" "),
            "spamd scanned the message"
        );
        Ok(to_result(request, reply, &self.verdict_msgs, truncated))
    }
}

/// Transport troubles are "cannot reach"; what spamd said, or failed to say clearly, is a bad
/// reply.
fn classify(error: ExchangeError) -> ModuleError {
    let source = Box::new(error);
    match *source {
        ExchangeError::Reply(_) | ExchangeError::TooLong => ModuleError::BadReply {
            service: NAME,
            source,
        },
        ExchangeError::Connect { .. }
        | ExchangeError::ConnectTimeout { .. }
        | ExchangeError::Timeout { .. }
        | ExchangeError::Io(_) => ModuleError::Unavailable {
            service: NAME,
            source,
        },
    }
}

/// Reject with spamd's score; the reason from `verdict-msg`; the rules, highest first.
fn to_result(
    request: &CheckRequest,
    reply: Reply,
    verdict_msgs: &HashMap<String, String>,
    truncated: bool,
) -> CheckResult {
    let mut report = reply.report;
    report.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| a.symbol.cmp(&b.symbol))
    });
    let message = report
        .iter()
        .find_map(|fact| verdict_msgs.get(&fact.symbol.to_ascii_uppercase()))
        .cloned()
        .unwrap_or_else(|| SPAM_MESSAGE.to_owned());
    CheckResult::new(
        request.message_id,
        NAME,
        Action::Reject,
        reply.score,
        message,
        json!({
            "score": reply.score,
            "threshold": reply.threshold,
            "spam": reply.spam,
            "report": report,
            "content_truncated": truncated,
        }),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Utc;
    use platform::config::VerdictMsg;
    use wire::WIRE_VERSION;
    use wire::{Envelope, MessageId, SessionInfo};

    use self::spamd::Fact;

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
                client_name: "unknown".into(),
                helo: "mail.example.org".into(),
                sasl_username: String::new(),
                sasl_method: String::new(),
                sasl_sender: String::new(),
                tls: None,
                mta_hostname: "mx.example.net".into(),
                daemon_name: "smtpd".into(),
            },
            envelope: Envelope {
                sender: "a@example.org".into(),
                recipients: vec!["b@example.net".into()],
            },
            headers: vec![],
            content: Some(b"Subject: x\r\n\r\nbody\r\n".to_vec()),
            content_truncated: false,
            sent_at: Utc::now(),
            stage: wire::CheckStage::Eom,
        }
    }

    fn fact(score: f64, symbol: &str) -> Fact {
        Fact {
            score,
            symbol: symbol.into(),
            description: format!("about {symbol}"),
        }
    }

    fn reply(report: Vec<Fact>) -> Reply {
        Reply {
            version: "1.1".into(),
            spam: true,
            score: 6.5,
            threshold: 5.0,
            report,
        }
    }

    fn msgs(lines: &[&str]) -> HashMap<String, String> {
        lines
            .iter()
            .map(|l| VerdictMsg::parse(l).unwrap())
            .map(|v| (v.rule, v.message))
            .collect()
    }

    #[test]
    fn reply_becomes_a_reject_with_spamds_score_and_sorted_report() {
        let request = request();
        let result = to_result(
            &request,
            reply(vec![
                fact(1.0, "B_RULE"),
                fact(2.5, "RDNS_NONE"),
                fact(-0.5, "GOOD"),
                fact(1.0, "A_RULE"),
            ]),
            &HashMap::new(),
            false,
        );
        assert_eq!(result.action, Action::Reject);
        assert_eq!(result.score, 6.5);
        assert_eq!(result.module, NAME);
        assert_eq!(result.message_id, request.message_id);
        assert_eq!(result.message, SPAM_MESSAGE);
        let d = &result.determinants;
        assert_eq!(d["threshold"], 5.0);
        assert_eq!(d["spam"], true);
        assert_eq!(d["content_truncated"], false);
        let symbols: Vec<&str> = d["report"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["symbol"].as_str().unwrap())
            .collect();
        assert_eq!(symbols, ["RDNS_NONE", "A_RULE", "B_RULE", "GOOD"]);
        assert_eq!(
            d["report"][0],
            json!({"score": 2.5, "symbol": "RDNS_NONE", "description": "about RDNS_NONE"})
        );
    }

    #[test]
    fn the_highest_scoring_rule_with_a_verdict_msg_gives_the_reason() {
        let verdict_msgs = msgs(&["rdns_none: No reverse DNS for %{clientIp}", "LOW: low"]);
        let result = to_result(
            &request(),
            reply(vec![
                fact(0.5, "LOW"),
                fact(3.0, "NO_MSG"),
                fact(2.0, "RDNS_NONE"),
            ]),
            &verdict_msgs,
            true,
        );
        assert_eq!(result.message, "No reverse DNS for %{clientIp}");
        assert_eq!(result.determinants["content_truncated"], true);
    }

    #[test]
    fn an_ipv6_host_gets_brackets() {
        let config = SpamAssassinConfig {
            host: "::1".into(),
            ..SpamAssassinConfig::default()
        };
        assert_eq!(SpamAssassin::new(&config).address, "[::1]:783");
        assert_eq!(
            SpamAssassin::new(&SpamAssassinConfig::default()).address,
            "127.0.0.1:783"
        );
    }
}
