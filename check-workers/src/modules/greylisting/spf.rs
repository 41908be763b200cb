//! The SPF whitelist: for each `whitelist-spf` domain in order, evaluate that domain's SPF
//! policy for the client address (RFC 7208 `check_host` with MAIL FROM `postmaster@<domain>`,
//! as ClueGetter did with libspf2); the first `pass` whitelists the client. Evaluation is
//! `mail-auth`'s, over a hickory resolver pointed at `dns-resolver` or the system's resolv.conf.
//!
//! A domain whose evaluation fails (DNS error, bad record) is logged and the next one tried;
//! the whole walk is bounded by `spf-timeout`, after which the remaining domains are skipped.
//! Neither makes the check fail: the triplet decides instead.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use mail_auth::SpfResult;

use crate::modules::spf::{Spf, describe};

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
    timeout: Duration,
    spf: Spf,
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
            timeout,
            spf: Spf::new(resolver_address, timeout),
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
        if let Err(error) = self.spf.authenticator() {
            return SpfOutcome {
                passed: None,
                error: Some(error),
            };
        }
        let mut outcome = SpfOutcome::default();
        let walk = async {
            for domain in &self.domains {
                let sender = format!("postmaster@{domain}");
                let result = self
                    .spf
                    .verify_mail_from(ip, domain, host_domain, &sender)
                    .await
                    .unwrap_or(SpfResult::TempError);
                match result {
                    SpfResult::Pass => {
                        outcome.passed = Some(domain.clone());
                        return;
                    }
                    SpfResult::TempError | SpfResult::PermError => {
                        let error = format!("{domain}: {}", describe(result));
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
}
