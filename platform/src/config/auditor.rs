//! `[auditor]`: batching, retention, and the web interface's keys (users, tokens, login limits).

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct AuditorConfig {
    pub metrics_listen: SocketAddr,
    /// Events written in one transaction at most.
    pub batch_size: u16,
    /// Longest an event waits for its batch to fill before the batch is committed anyway.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
    /// Time between two prune runs of the archive (this instance's rows only); 0s: never.
    #[serde(with = "humantime_serde")]
    pub archive_prune_interval: Duration,
    /// How long `message` rows are kept, with their recipient links and quota tally rows; then
    /// sessions left without messages and recipients no message refers to. At least as long
    /// as the three below (ClueGetter's rule).
    #[serde(with = "humantime_serde")]
    pub archive_retention_message: Duration,
    /// How long `message_result` rows are kept; 0s: module results are not stored.
    #[serde(with = "humantime_serde")]
    pub archive_retention_message_result: Duration,
    /// How long `message_header` rows are kept; 0s: headers are not stored.
    #[serde(with = "humantime_serde")]
    pub archive_retention_header: Duration,
    /// How long `message_body` rows are kept; 0s: bodies are not stored.
    #[serde(with = "humantime_serde")]
    pub archive_retention_body: Duration,
    /// A retention shorter than this is never pruned (a typo must not empty the archive; so 0s
    /// also means "kept for ever" where storing is concerned). ClueGetter's 1.01 weeks.
    #[serde(with = "humantime_serde")]
    pub archive_retention_safeguard: Duration,
    /// The web interface and JSON API (plain HTTP: keep it on loopback or behind a TLS proxy).
    pub web_listen: SocketAddr,
    /// Connections the web listener serves at once; further clients wait in the kernel's
    /// accept queue, so a flood cannot take the auditor's file descriptors.
    pub web_max_connections: u32,
    /// How long a client has to send a whole request head once the server waits for one: on a
    /// new connection, and between requests on a kept-alive one (so also how long an idle
    /// connection is kept).
    #[serde(with = "humantime_serde")]
    pub web_header_read_timeout: Duration,
    /// A connection on which nothing moves either way for this long while the server waits
    /// on it (a response the client does not read, a request body that stalls) is closed.
    #[serde(with = "humantime_serde")]
    pub web_idle_timeout: Duration,
    /// Longest a request is worked on; then it is answered 503. Shorter than the idle timeout.
    #[serde(with = "humantime_serde")]
    pub web_request_timeout: Duration,
    /// Give the session cookie the `Secure` flag (set it when a TLS proxy serves the UI).
    pub web_cookie_secure: bool,
    /// How long a login lasts.
    #[serde(with = "humantime_serde")]
    pub web_session_lifetime: Duration,
    /// Failed logins for one user name, or from one client address (an IPv6 client's /64),
    /// within `web-login-failure-window` after which further attempts are refused (HTTP 429)
    /// until the window has passed.
    pub web_login_max_failures: u32,
    /// The sliding window over which failed logins are counted.
    #[serde(with = "humantime_serde")]
    pub web_login_failure_window: Duration,
    /// Who may log in: name and argon2 PHC hash (`auditor web hash-password`).
    pub web_users: Vec<WebUser>,
    /// Tokens for scripts (`Authorization: Bearer <token>`), stored as SHA-256 hex digests.
    pub web_api_tokens: Vec<WebApiToken>,
    /// Most rows one CSV export of a search writes (`/messages.csv`, `/api/v1/messages.csv`).
    pub web_csv_max_rows: u32,
}

/// What a web user or API token may see (`role = "..."`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum WebRole {
    /// Everything (the default).
    #[default]
    Admin,
    /// Only the messages, bounces and quotas of `domains`: a message by a recipient's domain,
    /// or by its sender's domain when the sender logged in with SASL.
    DomainAdmin,
    /// Everything but message headers and bodies (and raw bounce reports).
    Auditor,
}

impl WebRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::DomainAdmin => "domain-admin",
            Self::Auditor => "auditor",
        }
    }
}

/// Why a role and its domains do not go together: `domain-admin` needs domains, the other
/// roles take none; a domain must be a plain domain name.
fn check_role(what: &str, name: &str, role: WebRole, domains: &[String]) -> Result<(), String> {
    match role {
        WebRole::DomainAdmin if domains.is_empty() => Err(format!(
            "[auditor] {what}: {name:?} has role \"domain-admin\" but no domains \
             (domains = [\"example.org\"])"
        )),
        WebRole::Admin | WebRole::Auditor if !domains.is_empty() => Err(format!(
            "[auditor] {what}: {name:?} has domains but role {:?} takes none \
             (only \"domain-admin\" is limited to domains)",
            role.as_str()
        )),
        _ => {
            for domain in domains {
                let plain = !domain.is_empty()
                    && domain.len() <= 253
                    && domain
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
                    && !domain.starts_with('.')
                    && !domain.ends_with('.');
                if !plain {
                    return Err(format!(
                        "[auditor] {what}: {name:?} has domain {domain:?}, which is not a \
                         plain domain name (no @, no wildcard, ASCII or punycode)"
                    ));
                }
            }
            Ok(())
        }
    }
}

/// A user of the auditor's web interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebUser {
    pub name: String,
    /// Argon2 PHC string (`$argon2id$v=19$...`); never the password itself.
    pub password_hash: String,
    /// What the user may see; `admin` when left out.
    #[serde(default)]
    pub role: WebRole,
    /// The domains of a `domain-admin` (and only of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

impl WebUser {
    /// Whether the role and domains go together, as the configuration's validation checks them
    /// (for `auditor web add-user`).
    ///
    /// # Errors
    /// Why not, for the command line.
    pub fn check_role(&self) -> Result<(), String> {
        check_role("web-users", &self.name, self.role, &self.domains)
    }
}

/// An API token of the auditor's web interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct WebApiToken {
    /// Who or what uses it (shown in the log).
    pub name: String,
    /// Lower-case hex SHA-256 of the token (`printf %s TOKEN | sha256sum`).
    pub sha256: String,
    /// What the token may see; `admin` when left out.
    #[serde(default)]
    pub role: WebRole,
    /// The domains of a `domain-admin` token (and only of one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
}

/// One week, the unit of ClueGetter's `archive-retention-*` keys.
const WEEK: Duration = Duration::from_secs(7 * 24 * 3600);

/// `26w` for whole weeks, humantime's form otherwise.
fn in_weeks(duration: Duration) -> String {
    if duration.as_secs().is_multiple_of(WEEK.as_secs()) && duration.subsec_nanos() == 0 {
        format!("{}w", duration.as_secs() / WEEK.as_secs())
    } else {
        humantime_serde::re::humantime::format_duration(duration).to_string()
    }
}

impl Default for AuditorConfig {
    fn default() -> Self {
        Self {
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9135)),
            batch_size: 200,
            batch_wait: Duration::from_millis(50),
            archive_prune_interval: Duration::from_secs(6 * 3600),
            archive_retention_message: WEEK * 52,
            archive_retention_message_result: WEEK * 2,
            archive_retention_header: WEEK * 26,
            archive_retention_body: WEEK * 2,
            // 1.01 weeks: 7 days, 1 h 40 min 48 s
            archive_retention_safeguard: Duration::from_secs(610_848),
            web_listen: SocketAddr::from(([127, 0, 0, 1], 1937)),
            web_max_connections: 256,
            web_header_read_timeout: Duration::from_secs(10),
            web_idle_timeout: Duration::from_secs(60),
            web_request_timeout: Duration::from_secs(30),
            web_cookie_secure: false,
            web_session_lifetime: Duration::from_secs(8 * 3600),
            web_login_max_failures: 5,
            web_login_failure_window: Duration::from_secs(15 * 60),
            web_users: Vec::new(),
            web_api_tokens: Vec::new(),
            web_csv_max_rows: 100_000,
        }
    }
}

impl AuditorConfig {
    /// ClueGetter's rule: messages are kept at least as long as any of their parts.
    pub(super) fn validate(&self) -> Result<(), String> {
        if !(1..=1000).contains(&self.web_login_max_failures) {
            return Err(format!(
                "[auditor] web-login-max-failures ({}) must be between 1 and 1000",
                self.web_login_max_failures
            ));
        }
        if self.web_login_failure_window < Duration::from_secs(1) {
            return Err(format!(
                "[auditor] web-login-failure-window ({:?}) must be at least 1s",
                self.web_login_failure_window
            ));
        }
        if !(1..=65_536).contains(&self.web_max_connections) {
            return Err(format!(
                "[auditor] web-max-connections ({}) must be between 1 and 65536",
                self.web_max_connections
            ));
        }
        for (key, value) in [
            ("web-header-read-timeout", self.web_header_read_timeout),
            ("web-idle-timeout", self.web_idle_timeout),
            ("web-request-timeout", self.web_request_timeout),
        ] {
            if value < Duration::from_millis(100) {
                return Err(format!(
                    "[auditor] {key} ({value:?}) must be at least 100ms"
                ));
            }
        }
        if self.web_request_timeout >= self.web_idle_timeout {
            return Err(format!(
                "[auditor] web-request-timeout ({:?}) must be shorter than web-idle-timeout ({:?}): \
                 a request being worked on would otherwise count as an idle connection",
                self.web_request_timeout, self.web_idle_timeout
            ));
        }
        for user in &self.web_users {
            if !user.password_hash.starts_with("$argon2") {
                return Err(format!(
                    "[auditor] web-users: the password-hash of {:?} is not an argon2 PHC string \
                     (make one with `auditor web hash-password`)",
                    user.name
                ));
            }
            check_role("web-users", &user.name, user.role, &user.domains)?;
        }
        for token in &self.web_api_tokens {
            if token.sha256.len() != 64 || !token.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!(
                    "[auditor] web-api-tokens: the sha256 of {:?} is not 64 hex digits",
                    token.name
                ));
            }
            check_role("web-api-tokens", &token.name, token.role, &token.domains)?;
        }
        if !(1..=10_000_000).contains(&self.web_csv_max_rows) {
            return Err(format!(
                "[auditor] web-csv-max-rows ({}) must be between 1 and 10000000",
                self.web_csv_max_rows
            ));
        }
        for (key, value) in [
            (
                "archive-retention-message-result",
                self.archive_retention_message_result,
            ),
            ("archive-retention-header", self.archive_retention_header),
            ("archive-retention-body", self.archive_retention_body),
        ] {
            if value > self.archive_retention_message {
                return Err(format!(
                    "[auditor] archive-retention-message ({}) must be at least as long as {key} ({})",
                    in_weeks(self.archive_retention_message),
                    in_weeks(value)
                ));
            }
        }
        Ok(())
    }
}
