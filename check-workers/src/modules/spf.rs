//! SPF evaluation for the modules that need it (greylisting's SPF whitelist, reputation's
//! sender-domain check): `mail-auth`'s RFC 7208 `check_host` over a hickory resolver pointed at
//! a configured server or the system's resolv.conf, made on first use. One place for the
//! resolver's setup and for how a result is written.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use mail_auth::hickory_resolver::config::{NameServerConfig, ResolverConfig, ResolverOpts};
use mail_auth::hickory_resolver::system_conf::read_system_conf;
use mail_auth::spf::verify::SpfParameters;
use mail_auth::{MessageAuthenticator, SpfResult};

/// A resolver made on first use, and the budget of one evaluation.
pub struct Spf {
    resolver_address: Option<SocketAddr>,
    timeout: Duration,
    /// The resolver, or why it could not be made (then every evaluation reports that error).
    authenticator: OnceLock<Result<MessageAuthenticator, String>>,
}

impl Spf {
    /// `timeout` bounds each DNS query (at most 2 s, one attempt), not a whole evaluation.
    pub fn new(resolver_address: Option<SocketAddr>, timeout: Duration) -> Self {
        Self {
            resolver_address,
            timeout,
            authenticator: OnceLock::new(),
        }
    }

    /// The resolver, made on the first call.
    ///
    /// # Errors
    /// The system's DNS configuration cannot be read, or the resolver cannot be set up.
    pub fn authenticator(&self) -> Result<&MessageAuthenticator, String> {
        self.authenticator
            .get_or_init(|| self.make_authenticator())
            .as_ref()
            .map_err(Clone::clone)
    }

    /// `check_host` for MAIL FROM `sender` of `domain` from `ip`; `host_domain` is our host
    /// name (`%{r}` in SPF macros).
    ///
    /// # Errors
    /// The resolver cannot be set up.
    pub async fn verify_mail_from(
        &self,
        ip: IpAddr,
        domain: &str,
        host_domain: &str,
        sender: &str,
    ) -> Result<SpfResult, String> {
        let authenticator = self.authenticator()?;
        let output = authenticator
            .verify_spf(SpfParameters::verify_mail_from(
                ip,
                domain,
                host_domain,
                sender,
            ))
            .await;
        Ok(output.result())
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
        // One try per server within the budget: a dead resolver must not eat it all.
        options.timeout = self.timeout.min(Duration::from_secs(2));
        options.attempts = 1;
        MessageAuthenticator::new(config, options)
            .map_err(|e| format!("cannot set up the DNS resolver: {e}"))
    }
}

/// An SPF result as the determinants and logs write it.
pub fn describe(result: SpfResult) -> &'static str {
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
