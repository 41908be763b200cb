//! What every milter connection shares ([`Context`]: configuration, verdict policy, session
//! limits, the module plans, the dispatcher and the audit publisher), and the transport a
//! connection runs over. Both `connection.rs` (end of message) and `early.rs` (stage checks)
//! use it; neither owns it. No I/O happens here.

use std::time::Duration;

use platform::config::Config;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use tokio_util::task::TaskTracker;
use wire::CheckStage;

use crate::audit::AuditPublisher;
use crate::dispatch::Dispatcher;
use crate::milter::FilterCodec;
use crate::session::{EarlyChecks, Limits};
use crate::verdict::Policy;

/// What a milter connection can run over: a TCP stream in production, an in-memory pipe
/// (`tokio::io::duplex`) in tests.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One milter connection, framed.
pub type Transport<T> = Framed<T, FilterCodec>;

/// What every connection shares.
pub struct Context {
    pub config: Config,
    pub policy: Policy,
    pub limits: Limits,
    /// The enabled modules, in the order results are listed when they tie.
    pub modules: Vec<ModulePlan>,
    pub dispatcher: Dispatcher,
    pub audit: AuditPublisher,
    /// Bytes of the body the audit event carries (0: none); see
    /// [`platform::config::GatewayConfig::audit_body_limit`].
    pub audit_body_limit: usize,
    /// The audit events held back for late results; the server waits for them at shutdown.
    pub late: TaskTracker,
}

/// How one module is asked.
#[derive(Clone, Debug)]
pub struct ModulePlan {
    pub name: String,
    pub timeout: Duration,
    /// Bytes of content the module gets; `None` for metadata modules.
    pub max_size: Option<usize>,
}

impl Context {
    pub fn new(config: Config, dispatcher: Dispatcher, audit: AuditPublisher) -> Self {
        let modules: Vec<ModulePlan> = config
            .enabled_modules()
            .into_iter()
            .filter_map(|name| {
                config.module(name).map(|settings| ModulePlan {
                    name: name.to_owned(),
                    timeout: settings.timeout(),
                    max_size: settings.max_size(),
                })
            })
            .collect();
        let audit_body_limit = platform::config::GatewayConfig::audit_body_limit(&config);
        // The body is kept only as far as someone needs it: the largest module max-size, or
        // the archive's share.
        let body_limit = modules
            .iter()
            .filter_map(|m| m.max_size)
            .max()
            .unwrap_or(0)
            .max(audit_body_limit);
        let limits = Limits {
            body_limit,
            max_headers: config.gateway.max_headers,
            max_header_bytes: config.gateway.max_header_bytes,
            early_checks: EarlyChecks {
                connect: config.checks_early_at(CheckStage::Connect),
                helo: config.checks_early_at(CheckStage::Helo),
                // `[stage-checks]` rcpt, or srs enabled (it checks SRS recipients there)
                rcpt: config.checks_early_at(CheckStage::Rcpt),
            },
        };
        Self {
            policy: Policy::from_config(&config),
            limits,
            modules,
            dispatcher,
            audit,
            audit_body_limit,
            late: TaskTracker::new(),
            config,
        }
    }
}
