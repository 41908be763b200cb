//! The one configuration file per host, shared by every process (DESIGN.md "Configuration").
//!
//! `cluegetter.example.toml` at the repository root documents every key and equals
//! [`Config::default()`] (a test below checks both ways). ClueGetter's `[cluegetter]` keys stand
//! at the top level; each process reads the sections it needs. Environment overrides:
//! `CLUEGETTER_NOOP=true`, `CLUEGETTER_MESSAGE_REJECT_SCORE=6`, `CLUEGETTER_RSPAMD__ENABLED=true`
//! (`__` separates a section from its key; `_` inside a name stands for `-`).
//!
//! Unknown keys are an error, as in ClueGetter: a typo must not silently fall back to a default.
//!
//! Layout: this file holds the top-level keys, loading and the checks that relate sections;
//! each section is a file of its own (`gateway.rs`, `auditor.rs`, …; the check modules' under
//! `modules/`). Every type is re-exported here, so callers write `platform::config::X`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};
use wire::CheckStage;

mod auditor;
mod bounce_ingest;
mod check_workers;
mod connections;
mod gateway;
mod modules;
#[cfg(test)]
mod tests;

pub use auditor::{AuditorConfig, WebApiToken, WebUser};
pub use bounce_ingest::BounceIngestConfig;
pub use check_workers::CheckWorkersConfig;
pub use connections::{BrokerConfig, DatabaseConfig, Urls, redact};
pub use gateway::{FailAction, GatewayConfig};
pub use modules::{
    ClamavConfig, ClamdAddress, GeoipAction, GeoipConfig, GreylistingConfig, ModuleSettings,
    OnError, QuotasConfig, ReputationConfig, RspamdConfig, SpamAssassinConfig, SrsConfig,
    SrsRewrite, StageChecksConfig, UnknownCountry, VerdictMsg,
};

/// The modules a check worker can serve and the gateway can ask. Group membership and
/// `--modules` are checked against this list.
pub const KNOWN_MODULES: &[&str] = &wire::ModuleName::KNOWN_NAMES;

/// Everything in the file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct Config {
    /// Instance name: one per MTA role (mx, submission, outbound); many hosts may share one.
    pub instance: String,
    /// Never tempfail, reject or discard; the would-be verdict is still stored.
    pub noop: bool,
    pub message_reject_score: f64,
    pub message_tempfail_score: f64,
    pub message_spamflag_score: f64,
    pub breaker_score: f64,
    /// Client networks whose messages are permitted at end of message (still checked and audited).
    #[serde(deserialize_with = "deserialize_networks")]
    pub whitelist: Vec<IpNet>,
    /// Headers added to every message: `[U] Name: value` (`[U]`: delete existing headers of
    /// that name first), with `%{clientIp}`, `%{hostname}`, `%{rejectScore}`, `%{spamFlag}`,
    /// `%{recipient}` (one header per recipient). An empty value only deletes.
    #[serde(deserialize_with = "deserialize_add_headers")]
    pub add_header: Vec<AddHeader>,
    /// Add `Message-ID: <unixtime.queueid.cluegetter@host>` to a message that has none.
    pub insert_missing_message_id: bool,
    /// Header carrying the message's UUID, so bounce reports can be joined to it; empty: none.
    pub id_header: String,
    /// Monitoring hosts: their connections that carry no message are logged at debug level
    /// only. Bare addresses mean /32 or /128.
    #[serde(deserialize_with = "deserialize_networks")]
    pub monitor_host: Vec<IpNet>,
    pub broker: BrokerConfig,
    pub database: DatabaseConfig,
    pub gateway: GatewayConfig,
    pub check_workers: CheckWorkersConfig,
    pub auditor: AuditorConfig,
    pub bounce_ingest: BounceIngestConfig,
    /// `[module-groups.<name>]` with `<module> = <weight>` lines (ClueGetter's `[moduleGroup]`).
    pub module_groups: BTreeMap<String, BTreeMap<String, f64>>,
    pub stage_checks: StageChecksConfig,
    pub quotas: QuotasConfig,
    pub rspamd: RspamdConfig,
    pub spamassassin: SpamAssassinConfig,
    pub clamav: ClamavConfig,
    pub greylisting: GreylistingConfig,
    pub srs: SrsConfig,
    pub geoip: GeoipConfig,
    pub reputation: ReputationConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            instance: "default".to_owned(),
            noop: false,
            message_reject_score: 5.0,
            message_tempfail_score: 8.0,
            message_spamflag_score: 4.5,
            breaker_score: 100.0,
            whitelist: Vec::new(),
            add_header: Vec::new(),
            insert_missing_message_id: true,
            id_header: "X-Cluegetter-Id".to_owned(),
            monitor_host: Vec::new(),
            broker: BrokerConfig::default(),
            database: DatabaseConfig::default(),
            gateway: GatewayConfig::default(),
            check_workers: CheckWorkersConfig::default(),
            auditor: AuditorConfig::default(),
            bounce_ingest: BounceIngestConfig::default(),
            module_groups: BTreeMap::new(),
            stage_checks: StageChecksConfig::default(),
            quotas: QuotasConfig::default(),
            rspamd: RspamdConfig::default(),
            spamassassin: SpamAssassinConfig::default(),
            clamav: ClamavConfig::default(),
            greylisting: GreylistingConfig::default(),
            srs: SrsConfig::default(),
            geoip: GeoipConfig::default(),
            reputation: ReputationConfig::default(),
        }
    }
}

impl Config {
    /// The settings of a module by name, for the code that treats modules alike.
    pub fn module(&self, name: &str) -> Option<&dyn ModuleSettings> {
        match name {
            "quotas" => Some(&self.quotas),
            "rspamd" => Some(&self.rspamd),
            "spamassassin" => Some(&self.spamassassin),
            "clamav" => Some(&self.clamav),
            "greylisting" => Some(&self.greylisting),
            "srs" => Some(&self.srs),
            "geoip" => Some(&self.geoip),
            "reputation" => Some(&self.reputation),
            _ => None,
        }
    }

    /// Names of the enabled modules, in [`KNOWN_MODULES`] order.
    pub fn enabled_modules(&self) -> Vec<&'static str> {
        KNOWN_MODULES
            .iter()
            .copied()
            .filter(|m| self.module(m).is_some_and(|s| s.enabled()))
            .collect()
    }

    /// Whether the gateway asks `module` at `stage` before end of message about `recipient`
    /// (empty before RCPT): the modules `[stage-checks]` lists there, and at RCPT the srs
    /// module, when enabled, about recipients that look like SRS addresses (it refuses forged
    /// ones there without a `[stage-checks]` entry).
    pub fn asks_early(&self, module: &str, stage: CheckStage, recipient: &str) -> bool {
        self.stage_checks.modules(stage).iter().any(|m| m == module)
            || (stage == CheckStage::Rcpt && module == "srs" && self.srs.asks_at_rcpt(recipient))
    }

    /// Whether any module may be asked at `stage` before end of message.
    pub fn checks_early_at(&self, stage: CheckStage) -> bool {
        !self.stage_checks.modules(stage).is_empty()
            || (stage == CheckStage::Rcpt && self.srs.enabled)
    }

    /// Whether the client address is in `monitor-host`.
    pub fn is_monitor_host(&self, addr: IpAddr) -> bool {
        self.monitor_host.iter().any(|net| net.contains(&addr))
    }

    /// Whether the client address is in `whitelist`.
    pub fn is_whitelisted(&self, addr: IpAddr) -> bool {
        self.whitelist.iter().any(|net| net.contains(&addr))
    }

    /// Checks what serde cannot: relations between keys.
    fn validate(&self) -> Result<(), String> {
        if self.instance.is_empty() || self.instance.len() > 20 {
            return Err("`instance` must be 1 to 20 characters".into());
        }
        for (key, value) in [
            ("message-reject-score", self.message_reject_score),
            ("message-tempfail-score", self.message_tempfail_score),
            ("message-spamflag-score", self.message_spamflag_score),
            ("breaker-score", self.breaker_score),
        ] {
            // 0 or less would reject (or stop waiting for) every message, results or not
            if !value.is_finite() || value <= 0.0 {
                return Err(format!("`{key}` must be a number above 0 (is {value})"));
            }
        }
        let mut seen: HashMap<&str, &str> = HashMap::new();
        for (group, members) in &self.module_groups {
            if members.is_empty() {
                return Err(format!("module group `{group}` has no members"));
            }
            for (module, weight) in members {
                if !KNOWN_MODULES.contains(&module.as_str()) {
                    return Err(format!(
                        "module group `{group}`: unknown module `{module}` (known: {})",
                        KNOWN_MODULES.join(", ")
                    ));
                }
                if !weight.is_finite() || *weight < 0.0 {
                    return Err(format!(
                        "module group `{group}`: weight of `{module}` must be a number ≥ 0"
                    ));
                }
                if let Some(other) = seen.insert(module, group) {
                    return Err(format!(
                        "module `{module}` is in two module groups (`{other}` and `{group}`)"
                    ));
                }
            }
        }
        for module in KNOWN_MODULES {
            if let Some(settings) = self.module(module)
                && settings.timeout().is_zero()
            {
                return Err(format!("[{module}] timeout must be longer than 0s"));
            }
        }
        for stage in [CheckStage::Connect, CheckStage::Helo, CheckStage::Rcpt] {
            for module in self.stage_checks.modules(stage) {
                if !self.module(module).is_some_and(|s| s.enabled()) {
                    return Err(format!(
                        "[stage-checks] {stage}: `{module}` is not an enabled module (enabled: {})",
                        self.enabled_modules().join(", ")
                    ));
                }
            }
        }
        self.validate_content_scanners()?;
        self.greylisting.validate()?;
        self.srs.validate()?;
        self.geoip.validate()?;
        self.reputation.validate()?;
        self.quotas.validate(self.gateway.message_deadline)?;
        self.auditor.validate()?;
        self.bounce_ingest.validate()?;
        if self.gateway.message_deadline.is_zero() || self.gateway.progress_interval.is_zero() {
            return Err(
                "[gateway] message-deadline and progress-interval must be longer than 0s".into(),
            );
        }
        if self.gateway.max_packet_size < 65_536 + 16 {
            return Err(
                "[gateway] max-packet-size must be at least 65552 (a full body chunk)".into(),
            );
        }
        if self.gateway.audit_body_max_size > GatewayConfig::AUDIT_BODY_MAX_SIZE_LIMIT {
            return Err(format!(
                "[gateway] audit-body-max-size must be at most {} bytes (is {})",
                GatewayConfig::AUDIT_BODY_MAX_SIZE_LIMIT,
                self.gateway.audit_body_max_size
            ));
        }
        Ok(())
    }
}

impl Config {
    /// `[spamassassin]` and `[clamav]` values serde accepts but that make no sense.
    fn validate_content_scanners(&self) -> Result<(), String> {
        if self.spamassassin.connect_timeout.is_zero() {
            return Err("[spamassassin] connect-timeout must be longer than 0s".into());
        }
        if !self.clamav.default_score.is_finite() {
            return Err("[clamav] default-score must be a number".into());
        }
        Ok(())
    }
}

/// A configuration that could not be loaded; the message names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration {path}: {source}")]
    Load {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("invalid configuration {path}: {reason}")]
    Invalid { path: String, reason: String },
}

/// The environment variables that are overrides (`CLUEGETTER_*`), less the ones that name
/// where the configuration is rather than what is in it.
pub fn env_overrides() -> HashMap<String, String> {
    const NOT_KEYS: &[&str] = &["CLUEGETTER_CONFIG", "CLUEGETTER_LOG_LEVEL"];
    std::env::vars()
        .filter(|(k, _)| k.starts_with("CLUEGETTER_") && !NOT_KEYS.contains(&k.as_str()))
        .collect()
}

/// Loads the file (if any) over the defaults, then the environment overrides over both.
///
/// # Errors
/// A file that cannot be read or parsed, an unknown key, a value of the wrong type, or keys
/// that contradict each other; the error is one line naming the file.
pub fn load(path: Option<&Path>, env: HashMap<String, String>) -> Result<Config, ConfigError> {
    let shown = path.map_or_else(|| "(defaults)".to_owned(), |p| p.display().to_string());
    let mut builder = config::Config::builder();
    if let Some(path) = path {
        builder = builder.add_source(
            config::File::from(PathBuf::from(path))
                .format(config::FileFormat::Toml)
                .required(true),
        );
    }
    builder = builder.add_source(
        config::Environment::with_prefix("CLUEGETTER")
            .prefix_separator("_")
            .separator("__")
            .convert_case(config::Case::Kebab)
            .try_parsing(true)
            .list_separator(",")
            .with_list_parse_key("whitelist")
            .with_list_parse_key("monitor-host")
            .with_list_parse_key("add-header")
            .with_list_parse_key("bounce-ingest.allow")
            .with_list_parse_key("srs.local-domains")
            .source(Some(env)),
    );
    let load_err = |source| ConfigError::Load {
        path: shown.clone(),
        source,
    };
    let config: Config = builder
        .build()
        .map_err(load_err)?
        .try_deserialize()
        .map_err(load_err)?;
    config.validate().map_err(|reason| ConfigError::Invalid {
        path: shown.clone(),
        reason,
    })?;
    Ok(config)
}

/// One `add-header` line, parsed: `[U] Name: value template`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AddHeader {
    /// `[U]`: delete every existing header of this name first.
    pub unique: bool,
    pub name: String,
    pub template: String,
}

impl AddHeader {
    /// Parses `[FLAGS] Name: value`; the only flag is `U`.
    ///
    /// # Errors
    /// No `:`, an empty or invalid header name, or an unknown flag.
    pub fn parse(line: &str) -> Result<Self, String> {
        let mut rest = line.trim();
        let mut unique = false;
        if let Some(after) = rest.strip_prefix('[') {
            let (flags, tail) = after
                .split_once(']')
                .ok_or_else(|| format!("add-header `{line}`: `[` without `]`"))?;
            for flag in flags.chars().filter(|c| !c.is_whitespace()) {
                match flag {
                    'U' | 'u' => unique = true,
                    other => {
                        return Err(format!(
                            "add-header `{line}`: unknown flag `{other}` (only U exists)"
                        ));
                    }
                }
            }
            rest = tail.trim_start();
        }
        let (name, template) = rest
            .split_once(':')
            .ok_or_else(|| format!("add-header `{line}`: expected `Name: value`"))?;
        let name = name.trim();
        // RFC 5322 field names: printable ASCII except ':' and space
        if name.is_empty() || !name.bytes().all(|b| (33..=126).contains(&b) && b != b':') {
            return Err(format!(
                "add-header `{line}`: `{name}` is not a header name"
            ));
        }
        Ok(Self {
            unique,
            name: name.to_owned(),
            template: template.trim().to_owned(),
        })
    }
}

impl Serialize for AddHeader {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let flag = if self.unique { "[U] " } else { "" };
        s.serialize_str(&format!("{flag}{}: {}", self.name, self.template))
    }
}

fn deserialize_add_headers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<AddHeader>, D::Error> {
    let lines: Vec<String> = Vec::deserialize(d)?;
    lines
        .iter()
        .map(|line| AddHeader::parse(line).map_err(serde::de::Error::custom))
        .collect()
}

/// Whitelist entries: CIDRs, or bare addresses meaning /32 and /128.
pub(crate) fn deserialize_networks<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Vec<IpNet>, D::Error> {
    let entries: Vec<String> = Vec::deserialize(d)?;
    entries
        .iter()
        .map(|entry| {
            let entry = entry.trim();
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    serde::de::Error::custom(format!(
                        "`{entry}` is not an IP address or network (e.g. 192.0.2.0/24, 2001:db8::/32)"
                    ))
                })
        })
        .collect()
}
