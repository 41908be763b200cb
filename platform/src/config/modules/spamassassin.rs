//! `[spamassassin]` and its `verdict-msg` lines.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ModuleSettings, OnError};
use crate::module_settings;

/// `[spamassassin]`: spamd over TCP (spec/modules.md §3). ClueGetter's `delay` is gone: the
/// breaker lives in the gateway, which simply stops waiting.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct SpamAssassinConfig {
    pub enabled: bool,
    pub host: String,
    pub port: u16,
    /// Longest wait for the TCP connection to spamd (ClueGetter truncated its 0.1 s to 0 = no
    /// limit; spec gap B.9).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Longest the whole exchange with spamd may take; also the request's lifetime on RabbitMQ.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub max_size: usize,
    /// `RULE_NAME: message`: the reason given when that rule is the highest-scoring matched
    /// rule that has one. Rule names are upper-cased; a rule listed twice is an error.
    #[serde(deserialize_with = "deserialize_verdict_msgs")]
    pub verdict_msg: Vec<VerdictMsg>,
    pub on_error: OnError,
}

impl Default for SpamAssassinConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            host: "127.0.0.1".to_owned(),
            port: 783,
            connect_timeout: Duration::from_millis(100),
            timeout: Duration::from_secs(10),
            max_size: 500_000,
            verdict_msg: Vec::new(),
            on_error: OnError::Tempfail,
        }
    }
}

module_settings!(SpamAssassinConfig, content);

/// One `verdict-msg` line, parsed: `RULE_NAME: message`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictMsg {
    /// Upper-cased SpamAssassin rule name.
    pub rule: String,
    /// Whitespace collapsed; may use the gateway's `%{...}` variables.
    pub message: String,
}

impl VerdictMsg {
    /// Parses `RULE_NAME: message`.
    ///
    /// # Errors
    /// No `:`, a rule name that is not `[A-Za-z0-9_]+`, or an empty message.
    pub fn parse(line: &str) -> Result<Self, String> {
        let (rule, message) = line
            .split_once(':')
            .ok_or_else(|| format!("verdict-msg `{line}`: expected `RULE_NAME: message`"))?;
        let rule = rule.trim().to_ascii_uppercase();
        if rule.is_empty() || !rule.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!(
                "verdict-msg `{line}`: `{rule}` is not a SpamAssassin rule name"
            ));
        }
        let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
        if message.is_empty() {
            return Err(format!("verdict-msg `{line}`: the message is empty"));
        }
        Ok(Self { rule, message })
    }
}

impl Serialize for VerdictMsg {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{}: {}", self.rule, self.message))
    }
}

/// `verdict-msg` lines; a rule named twice (in any case) is refused (spec gap D.33).
fn deserialize_verdict_msgs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<VerdictMsg>, D::Error> {
    let lines: Vec<String> = Vec::deserialize(d)?;
    let mut parsed: Vec<VerdictMsg> = Vec::with_capacity(lines.len());
    for line in &lines {
        let entry = VerdictMsg::parse(line).map_err(serde::de::Error::custom)?;
        if parsed.iter().any(|seen| seen.rule == entry.rule) {
            return Err(serde::de::Error::custom(format!(
                "verdict-msg: rule `{}` is listed twice",
                entry.rule
            )));
        }
        parsed.push(entry);
    }
    Ok(parsed)
}
