//! The per-connection state machine: which command may come when, and what we keep.
//!
//! [`Session::on_command`] takes one decoded [`Command`] and says what to do ([`Step`]); it
//! never awaits and does no I/O (that is `connection.rs`). Not pure in two ways, both
//! stamps: it reads the wall clock (`connected_at` at CONNECT, `received_at` at end of
//! message) and mints UUID v7 ids (the session id when the session starts and again at
//! QUIT_NC, the message id at MAIL). Everything else is a function of the commands.
//!
//! It accepts exactly the orders Postfix sends (several messages per connection, ABORT at any
//! point, HELO again after STARTTLS or RSET) and answers anything else with
//! [`ProtocolError::OutOfOrder`].
//!
//! Memory is bounded: the body is kept up to `body_limit` bytes (the largest of the enabled
//! content modules' `max-size` and the audit event's `audit-body-max-size`), headers up to `max_headers` and `max_header_bytes`; beyond that the
//! message is still counted, hashed and judged, and marked truncated.

use std::collections::HashMap;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use md5::{Digest, Md5};
use uuid::Uuid;
use wire::{CheckStage, Header, MessageId, RejectedRecipient, SessionInfo, TlsInfo};

use crate::milter::optneg::{self, Negotiated};
use crate::milter::{Command, Family, ProtocolError, Response};

/// What the connection must do after a command.
#[derive(Debug)]
pub enum Step {
    /// Send this reply.
    Reply(Response),
    /// The MTA expects no reply (macros, ABORT, and stages negotiated as NR_*).
    NoReply,
    /// End of message: judge it, send the modifications and the final reply, then call
    /// [`Session::finish_message`].
    Judge(Box<FinishedMessage>),
    /// A stage listed in `[stage-checks]` (CONNECT, HELO, RCPT): ask its modules and answer
    /// (continue, or a reply code); a refused recipient is then handed to
    /// [`Session::refuse_recipient`].
    Check(Box<EarlyCheck>),
    /// QUIT: close the connection.
    Close,
}

/// Where in the conversation we are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Before OPTNEG.
    Negotiate,
    /// After OPTNEG (or QUIT_NC), before CONNECT.
    AwaitConnect,
    /// Connected, no transaction (HELO may come again; MAIL starts one).
    Idle,
    /// After MAIL: recipients.
    Envelope,
    /// After DATA: headers.
    Headers,
    /// After EOH: body.
    Body,
    /// BODYEOB received; waiting for the connection to finish the message.
    Judging,
}

/// Limits from the configuration.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub body_limit: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub early_checks: EarlyChecks,
}

/// The stages before end of message at which modules are asked (`[stage-checks]`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EarlyChecks {
    pub connect: bool,
    pub helo: bool,
    pub rcpt: bool,
}

/// What a check before end of message is about.
#[derive(Debug, Clone)]
pub struct EarlyCheck {
    pub stage: CheckStage,
    pub session: SessionInfo,
    /// At RCPT: the transaction's sender and the recipient asked about; empty before.
    pub sender: String,
    pub recipient: String,
}

/// A message that reached end of data, with everything the verdict and the audit need.
#[derive(Debug, Clone)]
pub struct FinishedMessage {
    pub id: MessageId,
    pub session: SessionInfo,
    pub queue_id: String,
    pub sender: String,
    pub recipients: Vec<String>,
    pub rejected_recipients: Vec<RejectedRecipient>,
    pub headers: Vec<Header>,
    pub headers_truncated: bool,
    /// The body as kept (at most `body_limit` bytes).
    pub body: Vec<u8>,
    pub body_truncated: bool,
    /// The whole body's size and MD5, even when not all of it was kept.
    pub body_size: u64,
    pub body_hash: String,
    pub received_at: DateTime<Utc>,
}

/// The transaction in progress.
#[derive(Debug)]
struct Transaction {
    id: MessageId,
    sender: String,
    recipients: Vec<String>,
    rejected_recipients: Vec<RejectedRecipient>,
    headers: Vec<Header>,
    header_bytes: usize,
    headers_truncated: bool,
    body: Vec<u8>,
    body_truncated: bool,
    body_size: u64,
    hasher: Md5,
}

/// One milter connection's state.
#[derive(Debug)]
pub struct Session {
    stage: Stage,
    limits: Limits,
    negotiated: Option<Negotiated>,
    /// Macros by the stage letter they came with; replaced each time that stage sends them.
    macros: HashMap<u8, Vec<(String, String)>>,
    info: SessionInfo,
    transaction: Option<Transaction>,
}

/// Macro stages searched for a name, most specific first (libmilter's order).
const MACRO_SEARCH: [u8; 7] = [b'E', b'N', b'T', b'R', b'M', b'H', b'C'];
/// Stages whose macros belong to one transaction and are forgotten with it.
const TRANSACTION_STAGES: [u8; 6] = [b'M', b'R', b'T', b'L', b'N', b'E'];

fn new_info() -> SessionInfo {
    SessionInfo {
        session_id: Uuid::now_v7(),
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
    }
}

/// `<a@b>` → `a@b`; ESMTP arguments are not part of the address.
pub fn strip_angle(address: &str) -> String {
    let trimmed = address.trim();
    trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed)
        .to_owned()
}

impl Session {
    pub fn new(limits: Limits) -> Self {
        Self {
            stage: Stage::Negotiate,
            limits,
            negotiated: None,
            macros: HashMap::new(),
            info: new_info(),
            transaction: None,
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// The current transaction's message id, if one is open.
    pub fn message_id(&self) -> Option<MessageId> {
        self.transaction.as_ref().map(|t| t.id)
    }

    /// The queue id, once Postfix has given it (from DATA on).
    pub fn queue_id(&self) -> String {
        self.macro_value("i").unwrap_or_default().to_owned()
    }

    /// A macro's value as last sent, searching the current stage first.
    pub fn macro_value(&self, name: &str) -> Option<&str> {
        MACRO_SEARCH.iter().find_map(|stage| {
            self.macros.get(stage).and_then(|list| {
                list.iter()
                    .find(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
            })
        })
    }

    fn out_of_order(&self, command: &Command) -> ProtocolError {
        ProtocolError::OutOfOrder {
            command: command.name(),
            when: match self.stage {
                Stage::Negotiate => "before option negotiation",
                Stage::AwaitConnect => "before CONNECT",
                Stage::Idle => "outside a transaction",
                Stage::Envelope => "before DATA",
                Stage::Headers => "among the headers",
                Stage::Body => "in the body",
                Stage::Judging => "while the message is being judged",
            },
        }
    }

    /// The reply for a stage the MTA may have told us not to answer.
    fn continue_unless_nr(&self, code: u8) -> Step {
        match self.negotiated {
            Some(n) if n.no_reply(code) => Step::NoReply,
            _ => Step::Reply(Response::Continue),
        }
    }

    /// Applies one command.
    ///
    /// # Errors
    /// [`ProtocolError::OutOfOrder`] for a command Postfix would not send at this point.
    pub fn on_command(&mut self, command: Command) -> Result<Step, ProtocolError> {
        let code = command.code();
        match command {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                if self.stage != Stage::Negotiate {
                    return Err(self.out_of_order(&Command::OptNeg {
                        version,
                        actions,
                        protocol,
                    }));
                }
                if version < 2 {
                    return Err(ProtocolError::OutOfOrder {
                        command: "OPTNEG",
                        when: "with a protocol version below 2",
                    });
                }
                let early = self.limits.early_checks;
                let negotiated = Negotiated::from_offer_wanting(
                    version,
                    actions,
                    protocol,
                    optneg::wanted_protocol(early.connect, early.helo),
                );
                self.negotiated = Some(negotiated);
                self.stage = Stage::AwaitConnect;
                let macros = if negotiated.macros_allowed() {
                    optneg::MACROS
                        .iter()
                        .map(|(stage, list)| (*stage, (*list).to_owned()))
                        .collect()
                } else {
                    Vec::new()
                };
                Ok(Step::Reply(Response::OptNeg {
                    version: negotiated.version,
                    actions: negotiated.actions,
                    protocol: negotiated.protocol,
                    macros,
                }))
            }
            Command::Macro { stage, macros } => {
                if self.stage == Stage::Negotiate {
                    return Err(self.out_of_order(&Command::Macro { stage, macros }));
                }
                self.macros.insert(stage, macros);
                Ok(Step::NoReply)
            }
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                if self.stage != Stage::AwaitConnect {
                    return Err(self.out_of_order(&Command::Connect {
                        hostname,
                        family,
                        port,
                        address,
                    }));
                }
                self.info.connected_at = Utc::now();
                self.info.client_name = hostname;
                self.info.client_addr = match family {
                    Family::Inet | Family::Inet6 => {
                        address.trim_start_matches("IPv6:").parse::<IpAddr>().ok()
                    }
                    Family::Unix | Family::Unknown => None,
                };
                self.info.client_port = port.filter(|_| self.info.client_addr.is_some());
                self.info.mta_hostname = self.macro_value("j").unwrap_or_default().to_owned();
                self.info.daemon_name = self
                    .macro_value("{daemon_name}")
                    .unwrap_or_default()
                    .to_owned();
                self.stage = Stage::Idle;
                Ok(self.check_or_continue(code, CheckStage::Connect, String::new()))
            }
            Command::Helo(name) => {
                if self.stage != Stage::Idle {
                    return Err(self.out_of_order(&Command::Helo(name)));
                }
                self.info.helo = name;
                self.read_tls_macros();
                Ok(self.check_or_continue(code, CheckStage::Helo, String::new()))
            }
            Command::Mail(args) => {
                if self.stage != Stage::Idle {
                    return Err(self.out_of_order(&Command::Mail(args)));
                }
                let sender = args.first().map(|a| strip_angle(a)).unwrap_or_default();
                self.read_sasl_macros();
                self.transaction = Some(Transaction {
                    id: MessageId::new(),
                    sender,
                    recipients: Vec::new(),
                    rejected_recipients: Vec::new(),
                    headers: Vec::new(),
                    header_bytes: 0,
                    headers_truncated: false,
                    body: Vec::new(),
                    body_truncated: false,
                    body_size: 0,
                    hasher: Md5::new(),
                });
                self.stage = Stage::Envelope;
                Ok(self.continue_unless_nr(code))
            }
            Command::Rcpt(args) => {
                if self.stage != Stage::Envelope {
                    return Err(self.out_of_order(&Command::Rcpt(args)));
                }
                let address = args.first().map(|a| strip_angle(a)).unwrap_or_default();
                // With RCPT_REJ Postfix also shows us recipients it refused itself: then
                // {rcpt_mailer} is "error", {rcpt_host} the status and {rcpt_addr} the text.
                let rejected = refused_by_postfix(
                    self.macro_value("{rcpt_mailer}"),
                    self.macro_value("{rcpt_host}"),
                );
                let reason = if rejected {
                    let status = self.macro_value("{rcpt_host}").unwrap_or_default();
                    let text = self.macro_value("{rcpt_addr}").unwrap_or_default();
                    format!("{status} {text}").trim().to_owned()
                } else {
                    String::new()
                };
                if rejected {
                    if let Some(t) = self.transaction.as_mut() {
                        t.rejected_recipients
                            .push(RejectedRecipient { address, reason });
                    }
                    // Postfix has answered the client already; nothing for modules to judge.
                    return Ok(self.continue_unless_nr(code));
                }
                if let Some(t) = self.transaction.as_mut() {
                    t.recipients.push(address.clone());
                }
                Ok(self.check_or_continue(code, CheckStage::Rcpt, address))
            }
            Command::Data => {
                if self.stage != Stage::Envelope {
                    return Err(self.out_of_order(&Command::Data));
                }
                self.stage = Stage::Headers;
                Ok(self.continue_unless_nr(code))
            }
            Command::Header { name, value } => {
                // Some MTAs skip DATA (protocol < 4): headers may follow the envelope directly.
                if !matches!(self.stage, Stage::Headers | Stage::Envelope) {
                    return Err(self.out_of_order(&Command::Header { name, value }));
                }
                self.stage = Stage::Headers;
                let limits = self.limits;
                if let Some(t) = self.transaction.as_mut() {
                    let size = name.len() + value.len();
                    if t.headers.len() >= limits.max_headers
                        || t.header_bytes.saturating_add(size) > limits.max_header_bytes
                    {
                        t.headers_truncated = true;
                    } else {
                        t.header_bytes += size;
                        t.headers.push(Header {
                            name,
                            value: String::from_utf8_lossy(&value).into_owned(),
                        });
                    }
                }
                Ok(self.continue_unless_nr(code))
            }
            Command::EndOfHeaders => {
                if !matches!(self.stage, Stage::Headers | Stage::Envelope) {
                    return Err(self.out_of_order(&Command::EndOfHeaders));
                }
                self.read_sasl_macros();
                self.stage = Stage::Body;
                Ok(self.continue_unless_nr(code))
            }
            Command::Body(chunk) => {
                if !matches!(self.stage, Stage::Body | Stage::Headers) {
                    return Err(self.out_of_order(&Command::Body(chunk)));
                }
                self.stage = Stage::Body;
                self.append_body(&chunk);
                Ok(self.continue_unless_nr(code))
            }
            Command::EndOfMessage(chunk) => {
                if !matches!(self.stage, Stage::Body | Stage::Headers | Stage::Envelope) {
                    return Err(self.out_of_order(&Command::EndOfMessage(chunk)));
                }
                self.append_body(&chunk);
                self.read_sasl_macros();
                let queue_id = self.queue_id();
                let Some(t) = self.transaction.take() else {
                    return Err(self.out_of_order(&Command::EndOfMessage(chunk)));
                };
                self.stage = Stage::Judging;
                Ok(Step::Judge(Box::new(FinishedMessage {
                    id: t.id,
                    session: self.info.clone(),
                    queue_id,
                    sender: t.sender,
                    recipients: t.recipients,
                    rejected_recipients: t.rejected_recipients,
                    headers: t.headers,
                    headers_truncated: t.headers_truncated,
                    body: t.body,
                    body_truncated: t.body_truncated,
                    body_size: t.body_size,
                    body_hash: hex(&t.hasher.finalize()),
                    received_at: Utc::now(),
                })))
            }
            Command::Abort => {
                if matches!(self.stage, Stage::Negotiate | Stage::AwaitConnect) {
                    // nothing to abort; Postfix may still send it
                    return Ok(Step::NoReply);
                }
                self.end_transaction();
                Ok(Step::NoReply)
            }
            Command::Quit => Ok(Step::Close),
            Command::QuitNewConnection => {
                // The MTA reuses this connection for a new SMTP session (CONNECT follows). The
                // negotiation carries over, so there must have been one: before OPTNEG this
                // would skip it.
                if self.stage == Stage::Negotiate {
                    return Err(self.out_of_order(&Command::QuitNewConnection));
                }
                self.end_transaction();
                self.macros.clear();
                self.info = new_info();
                self.stage = Stage::AwaitConnect;
                Ok(Step::NoReply)
            }
            Command::Unknown(text) => {
                if matches!(
                    self.stage,
                    Stage::Negotiate | Stage::AwaitConnect | Stage::Judging
                ) {
                    return Err(self.out_of_order(&Command::Unknown(text)));
                }
                Ok(self.continue_unless_nr(code))
            }
        }
    }

    /// A [`Step::Check`] if modules are asked at `stage` and the MTA waits for our answer,
    /// else what [`Self::continue_unless_nr`] says.
    fn check_or_continue(&self, code: u8, stage: CheckStage, recipient: String) -> Step {
        let early = self.limits.early_checks;
        let asked = match stage {
            CheckStage::Connect => early.connect,
            CheckStage::Helo => early.helo,
            CheckStage::Rcpt => early.rcpt,
            CheckStage::Eom => false,
        };
        if !asked || self.negotiated.is_some_and(|n| n.no_reply(code)) {
            return self.continue_unless_nr(code);
        }
        Step::Check(Box::new(EarlyCheck {
            stage,
            session: self.info.clone(),
            sender: self
                .transaction
                .as_ref()
                .map(|t| t.sender.clone())
                .unwrap_or_default(),
            recipient,
        }))
    }

    /// The last RCPT was refused by a stage check: it leaves the recipients and is kept
    /// among the refused ones with our reply, as Postfix's own refusals are (RCPT_REJ).
    pub fn refuse_recipient(&mut self, reply: &str) {
        if let Some(t) = self.transaction.as_mut()
            && let Some(address) = t.recipients.pop()
        {
            t.rejected_recipients.push(RejectedRecipient {
                address,
                reason: reply.to_owned(),
            });
        }
    }

    /// Back to [`Stage::Idle`] after the connection answered the end of message.
    pub fn finish_message(&mut self) {
        self.end_transaction();
    }

    fn end_transaction(&mut self) {
        self.transaction = None;
        for stage in TRANSACTION_STAGES {
            self.macros.remove(&stage);
        }
        self.stage = Stage::Idle;
    }

    fn append_body(&mut self, chunk: &[u8]) {
        let limit = self.limits.body_limit;
        if let Some(t) = self.transaction.as_mut() {
            t.hasher.update(chunk);
            t.body_size += chunk.len() as u64;
            let room = limit.saturating_sub(t.body.len());
            if chunk.len() > room {
                t.body_truncated = true;
            }
            t.body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        }
    }

    fn read_tls_macros(&mut self) {
        let get = |name| self.macro_value(name).unwrap_or_default().to_owned();
        let version = get("{tls_version}");
        if version.is_empty() {
            self.info.tls = None;
            return;
        }
        self.info.tls = Some(TlsInfo {
            version,
            cipher: get("{cipher}"),
            cipher_bits: self
                .macro_value("{cipher_bits}")
                .and_then(|b| b.parse().ok()),
            cert_subject: get("{cert_subject}"),
            cert_issuer: get("{cert_issuer}"),
        });
    }

    fn read_sasl_macros(&mut self) {
        if let Some(login) = self.macro_value("{auth_authen}") {
            self.info.sasl_username = login.to_owned();
        }
        if let Some(method) = self.macro_value("{auth_type}") {
            self.info.sasl_method = method.to_owned();
        }
        if let Some(author) = self.macro_value("{auth_author}") {
            self.info.sasl_sender = author.to_owned();
        }
    }
}

/// Whether the RCPT macros say Postfix refused the recipient itself (SMFIP_RCPT_REJ): the
/// mailer `error` with a bare status code (`5.1.1`) as the host. An accepted recipient of a
/// virtual alias domain has the mailer `error` too (trivial-rewrite resolves such domains to
/// it; cleanup aliases the address later), but its host is the error text (`5.1.1 User unknown
/// in virtual alias table`): it is a recipient like any other (an SRS bounce address, an alias).
fn refused_by_postfix(mailer: Option<&str>, host: Option<&str>) -> bool {
    let bare_status = host.is_some_and(|host| {
        let mut parts = host.split('.');
        matches!(parts.next(), Some("4" | "5"))
            && parts
                .by_ref()
                .take(2)
                .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                .count()
                == 2
            && parts.next().is_none()
    });
    mailer == Some("error") && bare_status
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(any(test, fuzzing))]
mod fuzz;
#[cfg(test)]
use fuzz::Checker;
#[cfg(any(test, fuzzing))]
pub use fuzz::{FUZZ_LIMITS, fuzz_session};

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use bytes::Bytes;

    use super::*;

    const LIMITS: Limits = Limits {
        body_limit: 10,
        max_headers: 2,
        max_header_bytes: 1000,
        early_checks: EarlyChecks {
            connect: false,
            helo: false,
            rcpt: false,
        },
    };

    fn negotiated() -> Session {
        let mut s = Session::new(LIMITS);
        s.on_command(Command::OptNeg {
            version: 6,
            actions: 0x1ff,
            protocol: 0x1f_ffff,
        })
        .unwrap();
        s
    }

    fn connected() -> Session {
        let mut s = negotiated();
        s.on_command(Command::Macro {
            stage: b'C',
            macros: vec![
                ("j".into(), "mx.test".into()),
                ("{daemon_name}".into(), "smtpd".into()),
            ],
        })
        .unwrap();
        s.on_command(Command::Connect {
            hostname: "client.test".into(),
            family: Family::Inet,
            port: Some(4000),
            address: "192.0.2.1".into(),
        })
        .unwrap();
        s
    }

    fn judge(step: Step) -> FinishedMessage {
        match step {
            Step::Judge(m) => *m,
            other => panic!("expected Judge, got {other:?}"),
        }
    }

    #[test]
    fn optneg_answers_a_subset_of_the_offer_with_our_macros() {
        let mut s = Session::new(LIMITS);
        let step = s
            .on_command(Command::OptNeg {
                version: 6,
                actions: 0x01 | 0x10,
                protocol: 0x1f_ffff,
            })
            .unwrap();
        let Step::Reply(Response::OptNeg {
            version,
            actions,
            protocol,
            macros,
        }) = step
        else {
            panic!("{step:?}")
        };
        assert_eq!(version, 6);
        assert_eq!(actions, 0x01 | 0x10);
        assert_eq!(protocol & !0x1f_ffff, 0);
        assert!(macros.is_empty(), "SETSYMLIST was not offered");
    }

    #[test]
    fn whole_conversation_with_two_messages() {
        let mut s = connected();
        assert_eq!(s.info().client_addr, Some("192.0.2.1".parse().unwrap()));
        assert_eq!(s.info().mta_hostname, "mx.test");
        for round in 0..2 {
            assert!(matches!(
                s.on_command(Command::Helo("h".into())).unwrap(),
                Step::NoReply
            ));
            s.on_command(Command::Mail(vec![
                "<A@example.org>".into(),
                "SIZE=10".into(),
            ]))
            .unwrap();
            assert!(matches!(
                s.on_command(Command::Rcpt(vec!["<b@example.net>".into()]))
                    .unwrap(),
                Step::Reply(Response::Continue)
            ));
            s.on_command(Command::Macro {
                stage: b'T',
                macros: vec![("i".into(), format!("QID{round}"))],
            })
            .unwrap();
            s.on_command(Command::Data).unwrap();
            s.on_command(Command::Header {
                name: "Subject".into(),
                value: Bytes::from_static(b"hi"),
            })
            .unwrap();
            s.on_command(Command::EndOfHeaders).unwrap();
            s.on_command(Command::Body(Bytes::from_static(b"hello\r\n")))
                .unwrap();
            let m = judge(s.on_command(Command::EndOfMessage(Bytes::new())).unwrap());
            assert_eq!(m.sender, "A@example.org");
            assert_eq!(m.recipients, vec!["b@example.net"]);
            assert_eq!(m.queue_id, format!("QID{round}"));
            assert_eq!(m.body, b"hello\r\n");
            assert_eq!(m.body_hash.len(), 32);
            s.finish_message();
            assert!(matches!(
                s.on_command(Command::Abort).unwrap(),
                Step::NoReply
            ));
            assert_eq!(s.queue_id(), "", "transaction macros are forgotten");
        }
        assert!(matches!(s.on_command(Command::Quit).unwrap(), Step::Close));
    }

    #[test]
    fn abort_mid_body_then_a_second_message() {
        let mut s = connected();
        s.on_command(Command::Mail(vec!["<a@x>".into()])).unwrap();
        s.on_command(Command::Rcpt(vec!["<b@y>".into()])).unwrap();
        s.on_command(Command::Data).unwrap();
        s.on_command(Command::EndOfHeaders).unwrap();
        s.on_command(Command::Body(Bytes::from_static(b"part")))
            .unwrap();
        s.on_command(Command::Abort).unwrap();
        assert_eq!(s.stage(), Stage::Idle);
        s.on_command(Command::Mail(vec!["<c@x>".into()])).unwrap();
        s.on_command(Command::Rcpt(vec!["<d@y>".into()])).unwrap();
        let m = judge(s.on_command(Command::EndOfMessage(Bytes::new())).unwrap());
        assert_eq!(m.sender, "c@x");
        assert!(m.body.is_empty());
    }

    #[test]
    fn rejected_recipients_are_kept_apart_with_the_reason() {
        let mut s = connected();
        s.on_command(Command::Mail(vec!["<a@x>".into()])).unwrap();
        s.on_command(Command::Macro {
            stage: b'R',
            macros: vec![
                ("{rcpt_mailer}".into(), "error".into()),
                ("{rcpt_host}".into(), "5.1.1".into()),
                ("{rcpt_addr}".into(), "User unknown".into()),
            ],
        })
        .unwrap();
        s.on_command(Command::Rcpt(vec!["<nobody@y>".into()]))
            .unwrap();
        s.on_command(Command::Macro {
            stage: b'R',
            macros: vec![("{rcpt_mailer}".into(), "virtual".into())],
        })
        .unwrap();
        s.on_command(Command::Rcpt(vec!["<ok@y>".into()])).unwrap();
        let m = judge(s.on_command(Command::EndOfMessage(Bytes::new())).unwrap());
        assert_eq!(m.recipients, vec!["ok@y"]);
        assert_eq!(m.rejected_recipients[0].address, "nobody@y");
        assert_eq!(m.rejected_recipients[0].reason, "5.1.1 User unknown");
    }

    #[test]
    fn accepted_recipients_of_a_virtual_alias_domain_are_not_taken_for_refused_ones() {
        // what Postfix 3.7 sends for an address of a virtual_alias_domains domain it accepted
        let mut s = connected();
        s.on_command(Command::Mail(vec!["<>".into()])).unwrap();
        s.on_command(Command::Macro {
            stage: b'R',
            macros: vec![
                ("{rcpt_mailer}".into(), "error".into()),
                (
                    "{rcpt_host}".into(),
                    "5.1.1 User unknown in virtual alias table".into(),
                ),
                (
                    "{rcpt_addr}".into(),
                    "srs0=hhhh=tt=d.test=u@virtual.test".into(),
                ),
            ],
        })
        .unwrap();
        s.on_command(Command::Rcpt(vec![
            "<SRS0=HHHH=TT=d.test=u@virtual.test>".into(),
        ]))
        .unwrap();
        let m = judge(s.on_command(Command::EndOfMessage(Bytes::new())).unwrap());
        assert_eq!(m.recipients, ["SRS0=HHHH=TT=d.test=u@virtual.test"]);
        assert!(m.rejected_recipients.is_empty());
        for (mailer, host, refused) in [
            (Some("error"), Some("5.7.1"), true),
            (Some("error"), Some("4.2.0"), true),
            (Some("error"), Some("5.1.1 User unknown"), false),
            (Some("error"), Some("5.1"), false),
            (Some("error"), None, false),
            (Some("smtp"), Some("5.1.1"), false),
            (None, Some("5.1.1"), false),
        ] {
            assert_eq!(
                refused_by_postfix(mailer, host),
                refused,
                "{mailer:?} {host:?}"
            );
        }
    }

    #[test]
    fn body_and_headers_are_bounded_but_counted() {
        let mut s = connected();
        s.on_command(Command::Mail(vec!["<a@x>".into()])).unwrap();
        for i in 0..5 {
            s.on_command(Command::Header {
                name: format!("X-{i}"),
                value: Bytes::from_static(b"v"),
            })
            .unwrap();
        }
        s.on_command(Command::Body(Bytes::from(vec![b'a'; 8])))
            .unwrap();
        s.on_command(Command::Body(Bytes::from(vec![b'b'; 8])))
            .unwrap();
        let m = judge(s.on_command(Command::EndOfMessage(Bytes::new())).unwrap());
        assert_eq!(m.headers.len(), 2);
        assert!(m.headers_truncated);
        assert_eq!(m.body.len(), 10);
        assert!(m.body_truncated);
        assert_eq!(m.body_size, 16);
    }

    #[test]
    fn commands_out_of_order_are_protocol_errors() {
        let mut s = Session::new(LIMITS);
        assert!(s.on_command(Command::Helo("x".into())).is_err());
        let mut s = connected();
        assert!(s.on_command(Command::Rcpt(vec!["<b@y>".into()])).is_err());
        let mut s = connected();
        assert!(
            s.on_command(Command::OptNeg {
                version: 6,
                actions: 0,
                protocol: 0
            })
            .is_err()
        );
    }

    #[test]
    fn quit_nc_before_optneg_is_out_of_order() {
        // it would let CONNECT in without a negotiation
        let mut s = Session::new(LIMITS);
        assert!(s.on_command(Command::QuitNewConnection).is_err());
        assert_eq!(s.stage(), Stage::Negotiate);
        assert!(
            s.on_command(Command::Connect {
                hostname: "h".into(),
                family: Family::Unknown,
                port: None,
                address: String::new(),
            })
            .is_err()
        );
    }

    #[test]
    fn quit_nc_starts_a_new_smtp_session_with_the_same_negotiation() {
        let mut s = connected();
        s.on_command(Command::Mail(vec!["<a@x>".into()])).unwrap();
        let first_session = s.info().session_id;
        assert!(matches!(
            s.on_command(Command::QuitNewConnection).unwrap(),
            Step::NoReply
        ));
        assert_eq!(s.stage(), Stage::AwaitConnect);
        assert_eq!(s.message_id(), None);
        assert_eq!(
            s.macro_value("j"),
            None,
            "macros belong to the old SMTP session"
        );
        let step = s
            .on_command(Command::Connect {
                hostname: "other.test".into(),
                family: Family::Inet6,
                port: Some(25),
                address: "IPv6:2001:db8::1".into(),
            })
            .unwrap();
        assert!(matches!(step, Step::NoReply), "NR_CONN still holds");
        assert_ne!(s.info().session_id, first_session);
        assert_eq!(s.info().client_addr, Some("2001:db8::1".parse().unwrap()));
    }

    #[test]
    fn unknown_smtp_commands_get_continue_unless_negotiated_away() {
        let mut s = Session::new(LIMITS);
        s.on_command(Command::OptNeg {
            version: 6,
            actions: 0x1ff,
            protocol: 0,
        })
        .unwrap();
        assert!(
            s.on_command(Command::Unknown("XYZZY".into())).is_err(),
            "before CONNECT"
        );
        s.on_command(Command::Connect {
            hostname: "h".into(),
            family: Family::Unix,
            port: Some(0),
            address: "/run/sock".into(),
        })
        .unwrap();
        assert_eq!(s.info().client_addr, None);
        assert_eq!(s.info().client_port, None);
        assert!(matches!(
            s.on_command(Command::Unknown("XYZZY".into())).unwrap(),
            Step::Reply(Response::Continue)
        ));
        let mut s = connected();
        assert!(matches!(
            s.on_command(Command::Unknown("XYZZY".into())).unwrap(),
            Step::NoReply
        ));
    }

    #[test]
    fn optneg_below_version_2_is_refused() {
        let mut s = Session::new(LIMITS);
        assert!(
            s.on_command(Command::OptNeg {
                version: 1,
                actions: 0x1ff,
                protocol: 0
            })
            .is_err()
        );
        assert_eq!(s.stage(), Stage::Negotiate);
    }

    #[test]
    fn sasl_and_tls_macros_reach_the_session() {
        let mut s = connected();
        s.on_command(Command::Macro {
            stage: b'H',
            macros: vec![
                ("{tls_version}".into(), "TLSv1.3".into()),
                ("{cipher_bits}".into(), "256".into()),
            ],
        })
        .unwrap();
        s.on_command(Command::Helo("h".into())).unwrap();
        s.on_command(Command::Macro {
            stage: b'M',
            macros: vec![
                ("{auth_authen}".into(), "john@doe.com".into()),
                ("{auth_type}".into(), "PLAIN".into()),
            ],
        })
        .unwrap();
        s.on_command(Command::Mail(vec!["<a@x>".into()])).unwrap();
        let m = judge(s.on_command(Command::EndOfMessage(Bytes::new())).unwrap());
        assert_eq!(m.session.sasl_username, "john@doe.com");
        assert_eq!(m.session.tls.as_ref().unwrap().cipher_bits, Some(256));
    }
}

#[cfg(test)]
mod proptests {
    #![allow(clippy::unwrap_used)]

    use bytes::Bytes;
    use proptest::collection::vec;
    use proptest::prelude::*;

    use super::*;
    use crate::milter::strategies;

    /// How one message of a Postfix conversation goes.
    #[derive(Clone, Debug)]
    struct MessagePlan {
        recipients: Vec<(String, bool)>,
        headers: Vec<(String, Bytes)>,
        body: Vec<Bytes>,
        /// Where the client gives up (RSET, QUIT, a lost connection): Postfix sends ABORT.
        abort_after: Option<usize>,
    }

    fn message_plan() -> impl Strategy<Value = MessagePlan> {
        (
            vec((strategies::text(), any::<bool>()), 1..4),
            vec((strategies::text(), strategies::bytes_without_nul()), 0..7),
            vec(strategies::any_bytes(), 0..4),
            proptest::option::weighted(0.3, 0usize..20),
        )
            .prop_map(|(recipients, headers, body, abort_after)| MessagePlan {
                recipients,
                headers,
                body,
                abort_after,
            })
    }

    fn macro_for(stage: u8, macros: &[(&str, &str)]) -> Command {
        Command::Macro {
            stage,
            macros: macros
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The commands Postfix sends for these messages on one connection (PEERS.md §4), with
    /// SMFIP_RCPT_REJ recipients it refused itself marked by `{rcpt_mailer}` = `error` and a
    /// bare status as `{rcpt_host}`.
    fn postfix_conversation(offer: (u32, u32, u32), sessions: &[Vec<MessagePlan>]) -> Vec<Command> {
        let mut out = vec![Command::OptNeg {
            version: offer.0,
            actions: offer.1,
            protocol: offer.2,
        }];
        for (n, messages) in sessions.iter().enumerate() {
            if n > 0 {
                out.push(Command::QuitNewConnection);
            }
            out.push(macro_for(
                b'C',
                &[
                    ("j", "mx.test"),
                    ("{daemon_name}", "mx"),
                    ("v", "Postfix 3.7.11"),
                ],
            ));
            out.push(Command::Connect {
                hostname: "client.test".into(),
                family: Family::Inet,
                port: Some(40000),
                address: "192.0.2.1".into(),
            });
            out.push(macro_for(b'H', &[]));
            out.push(Command::Helo("client.test".into()));
            for (i, message) in messages.iter().enumerate() {
                let mut steps = Vec::new();
                steps.push(macro_for(b'M', &[("{mail_addr}", "a@example.org")]));
                steps.push(Command::Mail(vec![
                    "<a@example.org>".into(),
                    "SIZE=100".into(),
                ]));
                for (recipient, refused) in &message.recipients {
                    // refused: Postfix's status and text; accepted: the transport and host
                    let macros: [(&str, &str); 3] = if *refused {
                        [
                            ("{rcpt_addr}", "<x>: Recipient address rejected"),
                            ("{rcpt_host}", "5.1.1"),
                            ("{rcpt_mailer}", "error"),
                        ]
                    } else {
                        [
                            ("{rcpt_addr}", recipient),
                            ("{rcpt_host}", "mailbox.test"),
                            ("{rcpt_mailer}", "virtual"),
                        ]
                    };
                    steps.push(macro_for(b'R', &macros));
                    steps.push(Command::Rcpt(vec![format!("<{recipient}>")]));
                }
                let queue_id = format!("QID{n}x{i}");
                steps.push(macro_for(b'T', &[("i", &queue_id)]));
                steps.push(Command::Data);
                for (name, value) in &message.headers {
                    steps.push(macro_for(b'L', &[("i", &queue_id)]));
                    steps.push(Command::Header {
                        name: name.clone(),
                        value: value.clone(),
                    });
                }
                steps.push(macro_for(b'N', &[("i", &queue_id)]));
                steps.push(Command::EndOfHeaders);
                steps.extend(message.body.iter().cloned().map(Command::Body));
                steps.push(macro_for(b'E', &[("i", &queue_id)]));
                steps.push(Command::EndOfMessage(Bytes::new()));
                match message.abort_after {
                    Some(at) if at < steps.len() - 1 => {
                        steps.truncate(at + 1);
                        steps.push(Command::Abort);
                    }
                    _ => {}
                }
                out.extend(steps);
                // after each transaction, and on RSET, Postfix sends ABORT (no reply)
                out.push(Command::Abort);
            }
        }
        out.push(Command::Quit);
        out
    }

    fn offer() -> impl Strategy<Value = (u32, u32, u32)> {
        prop_oneof![
            Just((6, 0x1ff, 0x1f_ffff)),
            (2u32..=6, any::<u32>(), any::<u32>()),
        ]
    }

    #[test]
    fn captured_postfix_conversations_are_accepted() {
        use tokio_util::codec::Decoder;

        let seeds = crate::milter::fuzz::seeds("milter_session");
        assert!(seeds.len() >= 8, "seed corpus missing");
        for (name, bytes) in &seeds {
            let mut codec = crate::milter::FilterCodec::new(1 << 20);
            let mut src = bytes::BytesMut::from(&bytes[..]);
            let mut checker = Checker::new(FUZZ_LIMITS);
            let mut ends = 0;
            let mut closed = false;
            while let Some(command) = codec.decode_eof(&mut src).unwrap() {
                assert!(!closed, "{name}: commands after QUIT");
                ends += usize::from(matches!(command, Command::EndOfMessage(_)));
                match checker.feed(command) {
                    Ok(Step::Close) => closed = true,
                    Ok(_) => {}
                    Err(error) => panic!("{name}: {error}"),
                }
            }
            assert!(closed, "{name}: Postfix ends with QUIT");
            assert_eq!(checker.judged, ends, "{name}");
            fuzz_session(bytes);
        }
    }

    proptest! {
        /// Any sequence of commands: the session never panics and never breaks a rule.
        #[test]
        fn any_commands_never_break_the_rules(
            commands in vec(strategies::command(), 0..40),
            negotiate_first in any::<bool>(),
            offer in offer(),
        ) {
            let mut checker = Checker::new(FUZZ_LIMITS);
            if negotiate_first {
                checker
                    .feed(Command::OptNeg { version: offer.0, actions: offer.1, protocol: offer.2 })
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
            }
            for command in commands {
                match checker.feed(command) {
                    // as the connection: an error or QUIT ends it
                    Err(_) | Ok(Step::Close) => break,
                    Ok(_) => {}
                }
            }
        }

        /// Whatever Postfix may send is accepted, and every finished message is judged once.
        #[test]
        fn postfix_conversations_are_accepted(
            offer in offer(),
            sessions in vec(vec(message_plan(), 0..4), 1..3),
        ) {
            let commands = postfix_conversation(offer, &sessions);
            let mut checker = Checker::new(FUZZ_LIMITS);
            let mut closed = false;
            for command in commands {
                prop_assert!(!closed, "commands after QUIT");
                let name = command.name();
                match checker.feed(command) {
                    Ok(Step::Close) => closed = true,
                    Ok(_) => {}
                    Err(error) => return Err(TestCaseError::fail(format!("{name}: {error}"))),
                }
            }
            prop_assert!(closed);
            let finished = sessions
                .iter()
                .flatten()
                .filter(|m| m.abort_after.is_none_or(|at| at >= 7 + 2 * m.recipients.len() + 2 * m.headers.len() + m.body.len()))
                .count();
            prop_assert_eq!(checker.judged, finished);
        }
    }
}
