//! The SPF whitelist: for each `whitelist-spf` domain in order, evaluate that domain's SPF
//! policy for the client address (RFC 7208 `check_host` with MAIL FROM `postmaster@<domain>`,
//! as ClueGetter did with libspf2); the first `pass` whitelists the client. Evaluation is
//! `mail-auth`'s, over a hickory resolver pointed at `dns-resolver` or the system's resolv.conf.
//!
//! A domain whose evaluation fails (DNS error, bad record) is logged and the next one tried;
//! the whole walk is bounded by `spf-timeout`, after which the remaining domains are skipped.
//! Neither makes the check fail: the triplet decides instead.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

/// What the walk over the domains found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpfOutcome {
    /// The domain whose policy the client passed.
    pub passed: Option<String>,
    /// The last failure met (an evaluation error, or the walk's timeout), for the determinants.
    pub error: Option<String>,
}

/// The domains and the resolver, made on first use.
pub struct SpfWhitelist {
    domains: Vec<String>,
    resolver_address: Option<SocketAddr>,
    timeout: Duration,
    /// The resolver, or why it could not be made (then every walk reports that error).
    authenticator: OnceLock<Result<MessageAuthenticator, String>>,
}

impl SpfWhitelist {
    pub fn new(
        domains: &[String],
        resolver_address: Option<SocketAddr>,
        timeout: Duration,
    ) -> Self {
        Self {
            domains: domains
                .iter()
                .map(|d| d.trim().to_ascii_lowercase())
                .collect(),
            resolver_address,
            timeout,
            authenticator: OnceLock::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// Walks the domains for `ip`; `host_domain` is our host name (`%{r}` in SPF macros).
    pub async fn check(&self, ip: IpAddr, host_domain: &str) -> SpfOutcome {
        if self.domains.is_empty() {
            return SpfOutcome::default();
        }
        let authenticator = match self.authenticator.get_or_init(|| self.make_authenticator()) {
            Ok(authenticator) => authenticator,
            Err(error) => {
                return SpfOutcome {
                    passed: None,
                    error: Some(error.clone()),
                };
            }
        };
        let mut outcome = SpfOutcome::default();
        let walk = async {
            for domain in &self.domains {
                let sender = format!("postmaster@{domain}");
                let output = authenticator
                    .verify_spf(SpfParameters::verify_mail_from(
                        ip,
                        domain,
                        host_domain,
                        &sender,
                    ))
                    .await;
                match output.result() {
                    SpfResult::Pass => {
                        outcome.passed = Some(domain.clone());
                        return;
                    }
                    SpfResult::TempError | SpfResult::PermError => {
                        let error = format!("{domain}: {}", describe(output.result()));
                        tracing::info!(%ip, %error, "SPF whitelist: cannot evaluate a domain's policy; trying the next");
                        outcome.error = Some(error);
                    }
                    other => {
                        tracing::debug!(%ip, %domain, result = describe(other), "SPF whitelist: no pass");
                    }
                }
            }
        };
        if tokio::time::timeout(self.timeout, walk).await.is_err() {
            let error = format!(
                "SPF whitelist not finished within {}",
                humantime::format_duration(self.timeout)
            );
            tracing::info!(%ip, %error, "SPF whitelist: skipping the remaining domains");
            outcome.error = Some(error);
        }
        outcome
    }

    fn make_authenticator(&self) -> Result<MessageAuthenticator, String> {
        let (config, mut options) = match self.resolver_address {
            Some(address) => {
                let mut server = NameServerConfig::udp_and_tcp(address.ip());
                for connection in &mut server.connections {
                    connection.port = address.port();
                }
                (
                    ResolverConfig::from_name_servers(vec![server]),
                    ResolverOpts::default(),
                )
            }
            None => read_system_conf()
                .map_err(|e| format!("cannot read the system's DNS configuration: {e}"))?,
        };
        // One try per server within the walk's budget: a dead resolver must not eat it all.
        options.timeout = self.timeout.min(Duration::from_secs(2));
        options.attempts = 1;
        MessageAuthenticator::new(config, options)
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
    }
}

fn describe(result: SpfResult) -> &'static str {
    match result {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror (DNS lookup failed)",
        SpfResult::PermError => "permerror (the policy is invalid)",
        SpfResult::None => "none (no policy)",
    }
}
