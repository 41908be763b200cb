//! The session's fuzz oracle and the checker it shares with the property tests: a
//! [`Session`] driven command by command and checked against the protocol's rules, written
//! here as a table apart from the session's own code. Compiled only for tests and fuzzing
//! (`--cfg fuzzing`, which cargo-fuzz sets), never into the gateway.

use wire::CheckStage;

use super::{EarlyChecks, FinishedMessage, Limits, Session, Stage, Step};
use crate::milter::optneg;
use crate::milter::{Command, ProtocolError, Response};

/// The limits the session oracle runs with: small, so that truncation is reached.
pub const FUZZ_LIMITS: Limits = Limits {
    body_limit: 64,
    max_headers: 4,
    max_header_bytes: 256,
    // asked everywhere, so the oracle sees CONNECT and HELO answered too
    early_checks: EarlyChecks {
        connect: true,
        helo: true,
        rcpt: true,
    },
};

/// The session's fuzz oracle, called by `fuzz/fuzz_targets/milter_session.rs`: reads `data`
/// as the MTA's side of a connection and drives a [`Session`] with it as `connection.rs`
/// does (until QUIT, the first undecodable packet or the first out-of-order command), checking
/// every step against the protocol's rules ([`Checker`]).
///
/// # Panics
/// When the session breaks a rule; that is how the fuzzer learns of it.
pub fn fuzz_session(data: &[u8]) {
    use tokio_util::codec::Decoder;

    let mut codec = crate::milter::FilterCodec::new(crate::milter::fuzz::FUZZ_MAX_PACKET);
    let mut src = bytes::BytesMut::from(data);
    let mut checker = Checker::new(FUZZ_LIMITS);
    while let Ok(Some(command)) = codec.decode(&mut src) {
        match checker.feed(command) {
            Ok(Step::Close) | Err(_) => break,
            Ok(_) => {}
        }
    }
}

/// Drives a [`Session`] and checks each step against the rules, written here as a table
/// apart from the session's own code:
/// - a command is refused exactly when the stage does not allow it, and a refusal changes
///   nothing;
/// - replies come only where the MTA waits for one: OPTNEG gets the negotiation (never more
///   than offered), stages negotiated as NR_* get none, MACRO/ABORT/QUIT_NC never get one,
///   BODYEOB is judged; no reply is ever a modification;
/// - each stage leads where it should, and a judged message holds what was sent, within the
///   limits.
///
/// It panics on a violation. The fuzz target and the property tests share it.
pub(crate) struct Checker {
    session: Session,
    limits: Limits,
    /// The protocol flags agreed at OPTNEG, once it happened.
    protocol: Option<u32>,
    /// What the open transaction was sent so far.
    n_recipients: usize,
    n_headers: usize,
    body_bytes: u64,
    /// Messages judged so far.
    pub(crate) judged: usize,
}

/// Whether Postfix may send `code` at `stage` (libmilter's state table, as far as Postfix
/// uses it).
fn allowed(stage: Stage, code: u8) -> bool {
    use Stage::*;
    match code {
        b'O' => stage == Negotiate,
        b'D' | b'K' => stage != Negotiate,
        b'C' => stage == AwaitConnect,
        b'H' | b'M' => stage == Idle,
        b'R' | b'T' => stage == Envelope,
        b'L' | b'N' => matches!(stage, Envelope | Headers),
        b'B' => matches!(stage, Headers | Body),
        b'E' => matches!(stage, Envelope | Headers | Body),
        b'U' => matches!(stage, Idle | Envelope | Headers | Body),
        b'A' | b'Q' => true,
        _ => false,
    }
}

impl Checker {
    pub(crate) fn new(limits: Limits) -> Self {
        Self {
            session: Session::new(limits),
            limits,
            protocol: None,
            n_recipients: 0,
            n_headers: 0,
            body_bytes: 0,
            judged: 0,
        }
    }

    /// Applies one command and checks what came of it. A [`Step::Judge`] is finished at once
    /// (as the connection does after answering).
    pub(crate) fn feed(&mut self, command: Command) -> Result<Step, ProtocolError> {
        let before = self.session.stage();
        let code = command.code();
        let offer = match &command {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => Some((*version, *actions, *protocol)),
            _ => None,
        };
        let chunk_len = match &command {
            Command::Body(chunk) | Command::EndOfMessage(chunk) => chunk.len() as u64,
            _ => 0,
        };
        let may = allowed(before, code) && offer.is_none_or(|(version, _, _)| version >= 2);

        let step = match self.session.on_command(command) {
            Ok(step) => step,
            Err(error) => {
                assert!(!may, "{} refused at {before:?}: {error}", code as char);
                assert!(matches!(error, ProtocolError::OutOfOrder { .. }), "{error}");
                assert_eq!(
                    self.session.stage(),
                    before,
                    "a refused command changed the stage"
                );
                return Err(error);
            }
        };
        assert!(may, "{} accepted at {before:?}", code as char);

        let no_reply = |protocol: Option<u32>, bit: u32| protocol.is_some_and(|p| p & bit != 0);
        use crate::milter::optneg::{action, protocol as p};
        let nr_bit = match code {
            b'C' => Some(p::NR_CONN),
            b'H' => Some(p::NR_HELO),
            b'M' => Some(p::NR_MAIL),
            b'R' => Some(p::NR_RCPT),
            b'T' => Some(p::NR_DATA),
            b'L' => Some(p::NR_HDR),
            b'N' => Some(p::NR_EOH),
            b'B' => Some(p::NR_BODY),
            b'U' => Some(p::NR_UNKN),
            _ => None,
        };
        match (&step, code) {
            (
                Step::Reply(Response::OptNeg {
                    version,
                    actions,
                    protocol,
                    macros,
                }),
                b'O',
            ) => {
                let Some((offered_version, offered_actions, offered_protocol)) = offer else {
                    panic!("OPTNEG without an offer");
                };
                assert_eq!(*version, offered_version.min(optneg::VERSION));
                assert_eq!(actions & !offered_actions, 0, "actions beyond the offer");
                assert_eq!(
                    protocol & !offered_protocol,
                    0,
                    "protocol flags beyond the offer"
                );
                assert_eq!(!macros.is_empty(), actions & action::SETSYMLIST != 0);
                self.protocol = Some(*protocol);
            }
            (Step::NoReply, b'D' | b'A' | b'K') | (Step::Close, b'Q') => {}
            (Step::Judge(message), b'E') => {
                self.body_bytes += chunk_len;
                self.check_judged(message);
                self.session.finish_message();
                self.judged += 1;
            }
            (Step::Check(check), b'C' | b'H' | b'R')
                if nr_bit.is_some_and(|bit| !no_reply(self.protocol, bit)) =>
            {
                let early = self.limits.early_checks;
                let expected = match code {
                    b'C' => (early.connect, CheckStage::Connect),
                    b'H' => (early.helo, CheckStage::Helo),
                    _ => (early.rcpt, CheckStage::Rcpt),
                };
                assert!(expected.0, "asked at a stage nobody listed");
                assert_eq!(check.stage, expected.1);
                // As a module might: refuse every other recipient.
                if code == b'R' && self.n_recipients % 2 == 1 {
                    self.session
                        .refuse_recipient("550 5.7.1 refused by the oracle");
                }
            }
            (Step::NoReply, _) if nr_bit.is_some_and(|bit| no_reply(self.protocol, bit)) => {}
            (Step::Reply(Response::Continue), _)
                if nr_bit.is_some_and(|bit| !no_reply(self.protocol, bit)) => {}
            (other, _) => panic!("{other:?} for {} at {before:?}", code as char),
        }
        if let Step::Reply(response) = &step {
            assert!(!response.is_modification());
        }

        let after = self.session.stage();
        let expected = match code {
            b'O' | b'K' => Stage::AwaitConnect,
            b'C' | b'H' | b'E' => Stage::Idle,
            b'M' | b'R' => Stage::Envelope,
            b'T' | b'L' => Stage::Headers,
            b'N' | b'B' => Stage::Body,
            b'A' if matches!(before, Stage::Negotiate | Stage::AwaitConnect) => before,
            b'A' => Stage::Idle,
            _ => before, // D, U, Q
        };
        assert_eq!(after, expected, "{} at {before:?}", code as char);
        assert_eq!(
            self.session.message_id().is_some(),
            matches!(after, Stage::Envelope | Stage::Headers | Stage::Body),
            "a transaction is open exactly between MAIL and the end of the message"
        );

        match code {
            b'M' => {
                self.n_recipients = 0;
                self.n_headers = 0;
                self.body_bytes = 0;
            }
            b'R' => self.n_recipients += 1,
            b'L' => self.n_headers += 1,
            b'B' => self.body_bytes += chunk_len,
            _ => {}
        }
        Ok(step)
    }

    fn check_judged(&self, message: &FinishedMessage) {
        let limits = self.limits;
        assert_eq!(
            message.recipients.len() + message.rejected_recipients.len(),
            self.n_recipients
        );
        assert_eq!(message.body_size, self.body_bytes);
        let kept = usize::try_from(self.body_bytes)
            .unwrap_or(usize::MAX)
            .min(limits.body_limit);
        assert_eq!(message.body.len(), kept);
        assert_eq!(
            message.body_truncated,
            self.body_bytes > limits.body_limit as u64
        );
        assert!(message.headers.len() <= limits.max_headers);
        assert!(message.headers.len() <= self.n_headers);
        assert_eq!(
            message.headers_truncated,
            message.headers.len() < self.n_headers
        );
        let header_bytes: usize = message.headers.iter().map(|h| h.name.len()).sum();
        assert!(header_bytes <= limits.max_header_bytes);
        assert_eq!(message.body_hash.len(), 32);
    }
}
