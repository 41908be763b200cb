//! The ClamAV module (spec/modules.md §5): streams the message text the gateway built (cut at
//! `max-size`) to clamd with INSTREAM ([`clamd`]). Something found → **reject** with
//! `default-score` and ClueGetter's text, the signature name in the determinants; clean →
//! **permit** (ClueGetter said "reject, score 0", which its verdict showed as permit); clamd's
//! `ERROR` (e.g. `INSTREAM size limit exceeded`), an unreadable reply or no clamd → error result.
//!
//! At start the module PINGs clamd once in the background. If clamd does not answer, that is
//! logged as an error naming the address and the cause, and the PING is retried (backing off up
//! to a minute) until clamd answers, which is logged too: a worker never exits because clamd is
//! down, its scans simply fail until clamd is back. ClueGetter refused to start instead, and
//! logged `STATS` every minute, which is left out.
//!
//! A connection per message; clamd closes it after the reply.

pub mod clamd;

use std::time::Duration;

use async_trait::async_trait;
use platform::backoff::Backoff;
use platform::config::{ClamavConfig, ClamdAddress};
use serde_json::json;
use tokio_util::sync::{CancellationToken, DropGuard};
use wire::{Action, CheckRequest, CheckResult};

use self::clamd::{ClamdError, Verdict};
use crate::module::{Module, ModuleError, error_chain};

pub const NAME: &str = "clamav";

/// ClueGetter's reason for an infected message.
pub const MALWARE_MESSAGE: &str = "Our system has detected that this message appears to contain malicious or \
     otherwise harmful content. Therefore, this message has been blocked.";

/// How long the start-up PING may take.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// First and longest pause between start-up PINGs while clamd does not answer.
const PING_RETRY_FIRST: Duration = Duration::from_secs(1);
const PING_RETRY_MAX: Duration = Duration::from_secs(60);

/// The clamd client.
pub struct Clamav {
    address: ClamdAddress,
    default_score: f64,
    max_size: usize,
    timeout: Duration,
    /// Stops the start-up PING task when the module is dropped (at shutdown, or in a test).
    /// `None` when built outside a runtime, where there is nothing to ping with.
    _pinger: Option<DropGuard>,
}

impl Clamav {
    /// The module; within a tokio runtime it also starts the background PING (see the module
    /// documentation).
    pub fn new(config: &ClamavConfig) -> Self {
        let pinger = tokio::runtime::Handle::try_current().ok().map(|runtime| {
            let stop = CancellationToken::new();
            runtime.spawn(ping_until_up(config.address.clone(), stop.clone()));
            stop.drop_guard()
        });
        Self {
            address: config.address.clone(),
            default_score: config.default_score,
            max_size: config.max_size,
            timeout: config.timeout,
            _pinger: pinger,
        }
    }
}

/// PINGs clamd until it answers PONG (then logs its version) or `stop` fires.
async fn ping_until_up(address: ClamdAddress, stop: CancellationToken) {
    let mut backoff = Backoff::starting_at(PING_RETRY_FIRST, PING_RETRY_MAX);
    let mut failures = 0u32;
    loop {
        let attempt = tokio::select! {
            () = stop.cancelled() => return,
            attempt = clamd::ping(&address, PING_TIMEOUT) => attempt,
        };
        match attempt {
            Ok(()) => {
                let version = clamd::version(&address, PING_TIMEOUT)
                    .await
                    .unwrap_or_else(|e| format!("unknown ({})", error_chain(&e)));
                if failures == 0 {
                    tracing::info!(%address, %version, "clamd answers PING");
                } else {
                    tracing::info!(%address, %version, failures, "clamd answers PING again");
                }
                return;
            }
            Err(error) => {
                failures += 1;
                let error = error_chain(&error);
                let pause = backoff.next_delay();
                if failures == 1 {
                    tracing::error!(
                        %address,
                        %error,
                        "clamd does not answer PING: scans give error results until it does; \
                         retrying in the background"
                    );
                } else {
                    tracing::warn!(%address, %error, failures, retry_in = ?pause, "clamd still does not answer PING");
                }
                if !backoff.sleep_for(pause, &stop).await {
                    return;
                }
            }
        }
    }
}

#[async_trait]
impl Module for Clamav {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn check(&self, request: &CheckRequest) -> Result<CheckResult, ModuleError> {
        let content = request.content.as_deref().ok_or(ModuleError::NoContent)?;
        let sent = &content[..content.len().min(self.max_size)];
        let truncated = request.content_truncated || sent.len() < content.len();
        let (verdict, reply) = clamd::instream(&self.address, sent, self.timeout)
            .await
            .map_err(classify)?;
        tracing::debug!(?verdict, bytes = sent.len(), "clamd scanned the message");
        Ok(to_result(
            request,
            verdict,
            &reply,
            self.default_score,
            sent.len(),
            truncated,
        ))
    }
}

fn classify(error: ClamdError) -> ModuleError {
    let source = Box::new(error);
    match *source {
        ClamdError::Connect { .. } | ClamdError::Timeout { .. } | ClamdError::Io(_) => {
            ModuleError::Unavailable {
                service: NAME,
                source,
            }
        }
        ClamdError::TooLong
        | ClamdError::NoPong(_)
        | ClamdError::Unexpected(_)
        | ClamdError::ScanFailed(_) => ModuleError::BadReply {
            service: NAME,
            source,
        },
    }
}

fn to_result(
    request: &CheckRequest,
    verdict: Verdict,
    reply: &str,
    default_score: f64,
    scanned_bytes: usize,
    truncated: bool,
) -> CheckResult {
    let (action, score, message, determinants) = match verdict {
        Verdict::Found { name, hash, size } => (
            Action::Reject,
            default_score,
            MALWARE_MESSAGE.to_owned(),
            json!({
                "status": "FOUND",
                "virus": name,
                "hash": hash,
                "size": size,
                "reply": reply,
                "scanned_bytes": scanned_bytes,
                "content_truncated": truncated,
            }),
        ),
        // `instream` turns ERROR into an error; a clean stream is all that is left.
        Verdict::Clean | Verdict::Error(_) => (
            Action::Permit,
            0.0,
            String::new(),
            json!({
                "status": "OK",
                "reply": reply,
                "scanned_bytes": scanned_bytes,
                "content_truncated": truncated,
            }),
        ),
    };
    CheckResult::new(
        request.message_id,
        NAME,
        action,
        score,
        message,
        determinants,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use chrono::Utc;
    use wire::WIRE_VERSION;
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
                client_addr: None,
                client_port: None,
                client_name: String::new(),
                helo: String::new(),
                sasl_username: String::new(),
                sasl_method: String::new(),
                sasl_sender: String::new(),
                tls: None,
                mta_hostname: String::new(),
                daemon_name: String::new(),
            },
            envelope: Envelope::default(),
            headers: vec![],
            content: None,
            content_truncated: false,
            sent_at: Utc::now(),
            stage: wire::CheckStage::Eom,
        }
    }

    #[test]
    fn found_is_a_reject_with_the_default_score_and_the_name() {
        let request = request();
        let result = to_result(
            &request,
            Verdict::Found {
                name: "Peers.Test.EICAR-HDB.UNOFFICIAL".into(),
                hash: Some("44d88612fea8a8f36de82e1278abb02f".into()),
                size: Some(68),
            },
            "stream: Peers.Test.EICAR-HDB.UNOFFICIAL(44d88612fea8a8f36de82e1278abb02f:68) FOUND",
            10.0,
            1234,
            false,
        );
        assert_eq!(result.action, Action::Reject);
        assert_eq!(result.score, 10.0);
        assert_eq!(result.message, MALWARE_MESSAGE);
        assert_eq!(result.message_id, request.message_id);
        let d = &result.determinants;
        assert_eq!(d["virus"], "Peers.Test.EICAR-HDB.UNOFFICIAL");
        assert_eq!(d["hash"], "44d88612fea8a8f36de82e1278abb02f");
        assert_eq!(d["size"], 68);
        assert_eq!(d["status"], "FOUND");
        assert_eq!(d["scanned_bytes"], 1234);
    }

    #[test]
    fn clean_is_a_permit_with_score_zero() {
        let result = to_result(&request(), Verdict::Clean, "stream: OK", 10.0, 10, true);
        assert_eq!(result.action, Action::Permit);
        assert_eq!(result.score, 0.0);
        assert!(result.message.is_empty());
        assert_eq!(result.determinants["status"], "OK");
        assert_eq!(result.determinants["content_truncated"], true);
    }

    #[test]
    fn a_refused_scan_is_a_bad_reply_and_a_dead_clamd_is_unavailable() {
        let error = classify(ClamdError::ScanFailed(
            "INSTREAM size limit exceeded.".into(),
        ));
        assert_eq!(
            error_chain(&error),
            "unreadable reply from clamav: clamd could not scan the message: INSTREAM size limit exceeded."
        );
        let error = classify(ClamdError::Connect {
            address: "tcp://127.0.0.1:1".into(),
            source: std::io::ErrorKind::ConnectionRefused.into(),
        });
        assert!(matches!(error, ModuleError::Unavailable { .. }));
    }
}
