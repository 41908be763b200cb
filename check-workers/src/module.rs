//! What a check module is: something that turns one [`CheckRequest`] into one [`CheckResult`].
//!
//! A module knows nothing of RabbitMQ, acks, timeouts or metrics: [`crate::worker`] does all of
//! that, once, for every module. A module that cannot judge returns a [`ModuleError`]; the
//! worker turns it into ClueGetter's error result (score 25) with the error chain as the reason.

use std::error::Error as StdError;

use async_trait::async_trait;
use wire::{CheckRequest, CheckResult, CheckStage};

/// A boxed error from a client library, kept as the `source` of a [`ModuleError`].
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// One check module (ClueGetter's `MessageCheck` hook).
#[async_trait]
pub trait Module: Send + Sync {
    /// The module's name: its config section, its queue's routing key, its metrics label.
    fn name(&self) -> &'static str;

    /// The SMTP stages the module can judge at. End of message only, unless it judges from
    /// the session or the envelope alone and says so; `[stage-checks]` may only list a module
    /// at a stage it names here (checked when check-workers starts).
    fn stages(&self) -> &'static [CheckStage] {
        &[CheckStage::Eom]
    }

    /// Judges one message. The worker bounds the call by the module's `timeout` and drops the
    /// future when the time is up, so an implementation needs no deadline of its own.
    ///
    /// # Errors
    /// The module could not judge the message: the scanner is unreachable, its reply cannot be
    /// read, or the request lacks what the module needs.
    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError>;
}

/// Why a module could not judge a message. Every variant becomes an error result; they differ
/// in what an operator should look at.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// A content module got a request without the message text (the gateway sends none to
    /// metadata modules, so this is a misrouted or malformed request).
    #[error("no message content")]
    NoContent,
    /// The scanner could not be reached or did not answer in time (connect, send, HTTP status).
    #[error("cannot reach {service}")]
    Unavailable {
        service: &'static str,
        #[source]
        source: BoxError,
    },
    /// The scanner answered something we cannot read.
    #[error("unreadable reply from {service}")]
    BadReply {
        service: &'static str,
        #[source]
        source: BoxError,
    },
    /// The request to the scanner could not be built from this message (e.g. a header value
    /// that HTTP cannot carry).
    #[error("cannot build the request to {service}")]
    Request {
        service: &'static str,
        #[source]
        source: BoxError,
    },
}

// One place for it in every process: the logs and the `error` determinant say it alike.
pub use platform::error_chain;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_chain_names_every_cause_once() {
        let error = ModuleError::Unavailable {
            service: "rspamd",
            source: Box::new(std::io::Error::other("connection refused")),
        };
        assert_eq!(
            error_chain(&error),
            "cannot reach rspamd: connection refused"
        );
        assert_eq!(error_chain(&ModuleError::NoContent), "no message content");
    }
}
