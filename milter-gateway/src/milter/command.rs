//! MTA → filter commands (SMFIC_*): their meaning and their payloads, without framing.
//!
//! [`Command::parse`] turns one packet's command byte and payload into a [`Command`];
//! [`Command::encode_payload`] is its inverse (used by the MTA side in tests and benches).
//! Strings are NUL-terminated on the wire; text that is not UTF-8 is replaced (U+FFFD),
//! except header values and body chunks, which stay bytes.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// The address family of a CONNECT (`C`) command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// `U`: unknown; no port or address follow.
    Unknown,
    /// `L`: a Unix-domain socket; the address is a path.
    Unix,
    /// `4`
    Inet,
    /// `6`
    Inet6,
}

impl Family {
    fn from_byte(b: u8) -> Result<Self, ProtocolError> {
        match b {
            b'U' => Ok(Family::Unknown),
            b'L' => Ok(Family::Unix),
            b'4' => Ok(Family::Inet),
            b'6' => Ok(Family::Inet6),
            other => Err(ProtocolError::BadFamily(other)),
        }
    }

    fn to_byte(self) -> u8 {
        match self {
            Family::Unknown => b'U',
            Family::Unix => b'L',
            Family::Inet => b'4',
            Family::Inet6 => b'6',
        }
    }
}

/// One MTA → filter command. Variants are named as in the protocol; the wire letter is in
/// each doc comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// `O` SMFIC_OPTNEG: what the MTA offers.
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
    },
    /// `D` SMFIC_MACRO: macros for the command whose letter is `stage`; no reply.
    Macro {
        stage: u8,
        macros: Vec<(String, String)>,
    },
    /// `C` SMFIC_CONNECT
    Connect {
        hostname: String,
        family: Family,
        port: Option<u16>,
        address: String,
    },
    /// `H` SMFIC_HELO
    Helo(String),
    /// `M` SMFIC_MAIL: `<sender>` first, then ESMTP arguments.
    Mail(Vec<String>),
    /// `R` SMFIC_RCPT: `<recipient>` first, then ESMTP arguments.
    Rcpt(Vec<String>),
    /// `T` SMFIC_DATA
    Data,
    /// `L` SMFIC_HEADER
    Header { name: String, value: Bytes },
    /// `N` SMFIC_EOH
    EndOfHeaders,
    /// `B` SMFIC_BODY: one chunk (≤ 65535 bytes from Postfix).
    Body(Bytes),
    /// `E` SMFIC_BODYEOB: end of message; may carry a last body chunk.
    EndOfMessage(Bytes),
    /// `A` SMFIC_ABORT: back to before MAIL; no reply.
    Abort,
    /// `Q` SMFIC_QUIT
    Quit,
    /// `K` SMFIC_QUIT_NC: quit, but a new connection follows (Postfix does not send it).
    QuitNewConnection,
    /// `U` SMFIC_UNKNOWN: an SMTP command the MTA did not know.
    Unknown(String),
}

impl Command {
    /// The command's wire letter.
    pub fn code(&self) -> u8 {
        match self {
            Command::OptNeg { .. } => b'O',
            Command::Macro { .. } => b'D',
            Command::Connect { .. } => b'C',
            Command::Helo(_) => b'H',
            Command::Mail(_) => b'M',
            Command::Rcpt(_) => b'R',
            Command::Data => b'T',
            Command::Header { .. } => b'L',
            Command::EndOfHeaders => b'N',
            Command::Body(_) => b'B',
            Command::EndOfMessage(_) => b'E',
            Command::Abort => b'A',
            Command::Quit => b'Q',
            Command::QuitNewConnection => b'K',
            Command::Unknown(_) => b'U',
        }
    }

    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Command::OptNeg { .. } => "OPTNEG",
            Command::Macro { .. } => "MACRO",
            Command::Connect { .. } => "CONNECT",
            Command::Helo(_) => "HELO",
            Command::Mail(_) => "MAIL",
            Command::Rcpt(_) => "RCPT",
            Command::Data => "DATA",
            Command::Header { .. } => "HEADER",
            Command::EndOfHeaders => "EOH",
            Command::Body(_) => "BODY",
            Command::EndOfMessage(_) => "BODYEOB",
            Command::Abort => "ABORT",
            Command::Quit => "QUIT",
            Command::QuitNewConnection => "QUIT_NC",
            Command::Unknown(_) => "UNKNOWN",
        }
    }

    /// Parses one packet's payload.
    ///
    /// # Errors
    /// An unknown command letter, a payload too short for its fields, a string without its
    /// NUL, or an unknown address family.
    pub fn parse(code: u8, payload: Bytes) -> Result<Command, ProtocolError> {
        let mut reader = Reader::new(payload);
        let command = match code {
            b'O' => Command::OptNeg {
                version: reader.u32("OPTNEG version")?,
                actions: reader.u32("OPTNEG actions")?,
                protocol: reader.u32("OPTNEG protocol")?,
                // trailing bytes (future fields) are ignored, as libmilter does
            },
            b'D' => {
                let stage = reader.u8("MACRO stage")?;
                let mut macros = Vec::new();
                while !reader.is_empty() {
                    let name = reader.string("MACRO name")?;
                    // Some MTAs end the list with a name and no value; tolerate that.
                    let value = if reader.is_empty() {
                        String::new()
                    } else {
                        reader.string("MACRO value")?
                    };
                    macros.push((name, value));
                }
                Command::Macro { stage, macros }
            }
            b'C' => {
                let hostname = reader.string("CONNECT hostname")?;
                let family = Family::from_byte(reader.u8("CONNECT family")?)?;
                let (port, address) = if family == Family::Unknown {
                    (None, String::new())
                } else {
                    let port = reader.u16("CONNECT port")?;
                    (Some(port), reader.string("CONNECT address")?)
                };
                Command::Connect {
                    hostname,
                    family,
                    port,
                    address,
                }
            }
            b'H' => Command::Helo(reader.string("HELO name")?),
            b'M' => Command::Mail(reader.strings("MAIL arguments")?),
            b'R' => Command::Rcpt(reader.strings("RCPT arguments")?),
            b'T' => Command::Data,
            b'L' => {
                let name = reader.string("HEADER name")?;
                let value = reader.bytes_nul("HEADER value")?;
                Command::Header { name, value }
            }
            b'N' => Command::EndOfHeaders,
            b'B' => Command::Body(reader.rest()),
            b'E' => Command::EndOfMessage(reader.rest()),
            b'A' => Command::Abort,
            b'Q' => Command::Quit,
            b'K' => Command::QuitNewConnection,
            b'U' => Command::Unknown(reader.string("UNKNOWN command")?),
            other => return Err(ProtocolError::UnknownCommand(other)),
        };
        Ok(command)
    }

    /// The payload that [`Command::parse`] reads back into `self`.
    pub fn encode_payload(&self, out: &mut BytesMut) {
        fn put_str(out: &mut BytesMut, s: &str) {
            out.put_slice(s.as_bytes());
            out.put_u8(0);
        }
        match self {
            Command::OptNeg {
                version,
                actions,
                protocol,
            } => {
                out.put_u32(*version);
                out.put_u32(*actions);
                out.put_u32(*protocol);
            }
            Command::Macro { stage, macros } => {
                out.put_u8(*stage);
                for (name, value) in macros {
                    put_str(out, name);
                    put_str(out, value);
                }
            }
            Command::Connect {
                hostname,
                family,
                port,
                address,
            } => {
                put_str(out, hostname);
                out.put_u8(family.to_byte());
                if *family != Family::Unknown {
                    out.put_u16(port.unwrap_or(0));
                    put_str(out, address);
                }
            }
            Command::Helo(name) | Command::Unknown(name) => put_str(out, name),
            Command::Mail(args) | Command::Rcpt(args) => {
                for arg in args {
                    put_str(out, arg);
                }
            }
            Command::Header { name, value } => {
                put_str(out, name);
                out.put_slice(value);
                out.put_u8(0);
            }
            Command::Body(chunk) | Command::EndOfMessage(chunk) => out.put_slice(chunk),
            Command::Data
            | Command::EndOfHeaders
            | Command::Abort
            | Command::Quit
            | Command::QuitNewConnection => {}
        }
    }
}

/// A cursor over a payload that never reads past its end.
pub(crate) struct Reader {
    data: Bytes,
}

impl Reader {
    pub(crate) fn new(data: Bytes) -> Self {
        Self { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        let first = *self.data.first().ok_or(ProtocolError::Truncated(what))?;
        self.data = self.data.slice(1..);
        Ok(first)
    }

    pub(crate) fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        let bytes = self.take(2, what)?;
        Ok(u16::from_be_bytes([bytes[0], bytes[1]]))
    }

    pub(crate) fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        let bytes = self.take(4, what)?;
        Ok(u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<Bytes, ProtocolError> {
        if self.data.len() < n {
            return Err(ProtocolError::Truncated(what));
        }
        let head = self.data.slice(..n);
        self.data = self.data.slice(n..);
        Ok(head)
    }

    /// Bytes up to (not including) the next NUL, which is consumed.
    pub(crate) fn bytes_nul(&mut self, what: &'static str) -> Result<Bytes, ProtocolError> {
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .ok_or(ProtocolError::MissingNul(what))?;
        let value = self.data.slice(..end);
        self.data = self.data.slice(end + 1..);
        Ok(value)
    }

    pub(crate) fn string(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let bytes = self.bytes_nul(what)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// NUL-terminated strings filling the rest of the payload.
    pub(crate) fn strings(&mut self, what: &'static str) -> Result<Vec<String>, ProtocolError> {
        let mut all = Vec::new();
        while !self.is_empty() {
            all.push(self.string(what)?);
        }
        Ok(all)
    }

    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.data)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn parse(code: u8, payload: &[u8]) -> Result<Command, ProtocolError> {
        Command::parse(code, Bytes::copy_from_slice(payload))
    }

    #[test]
    fn reads_postfix_connect() {
        // CONNECT as captured from Postfix 3.7: hostname, family '4', port, address
        let command = parse(b'C', b"localhost\x004\xd4\x31127.0.0.1\x00").unwrap();
        assert_eq!(
            command,
            Command::Connect {
                hostname: "localhost".into(),
                family: Family::Inet,
                port: Some(0xd431),
                address: "127.0.0.1".into(),
            }
        );
    }

    #[test]
    fn connect_of_unknown_family_has_no_port_or_address() {
        let command = parse(b'C', b"unknown\x00U").unwrap();
        assert_eq!(
            command,
            Command::Connect {
                hostname: "unknown".into(),
                family: Family::Unknown,
                port: None,
                address: String::new(),
            }
        );
    }

    #[test]
    fn connect_errors_say_what_is_missing() {
        assert!(matches!(
            parse(b'C', b""),
            Err(ProtocolError::MissingNul("CONNECT hostname"))
        ));
        assert!(matches!(
            parse(b'C', b"h\x00"),
            Err(ProtocolError::Truncated("CONNECT family"))
        ));
        assert!(matches!(
            parse(b'C', b"h\x00X"),
            Err(ProtocolError::BadFamily(b'X'))
        ));
        assert!(matches!(
            parse(b'C', b"h\x004\x01"),
            Err(ProtocolError::Truncated("CONNECT port"))
        ));
        assert!(matches!(
            parse(b'C', b"h\x004\x01\x02127.0.0.1"),
            Err(ProtocolError::MissingNul("CONNECT address"))
        ));
    }

    #[test]
    fn optneg_needs_three_words_and_ignores_more() {
        assert!(matches!(
            parse(b'O', &[0; 11]),
            Err(ProtocolError::Truncated(_))
        ));
        let command = parse(
            b'O',
            &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0x1f, 0xff, 0xff, 9, 9],
        )
        .unwrap();
        assert_eq!(
            command,
            Command::OptNeg {
                version: 6,
                actions: 0x1ff,
                protocol: 0x1f_ffff
            }
        );
    }

    #[test]
    fn macros_come_in_pairs_and_a_last_name_may_lack_its_value() {
        let command = parse(b'D', b"Cj\x00mx.test\x00{daemon_name}\x00smtpd\x00v").unwrap_err();
        assert!(matches!(command, ProtocolError::MissingNul("MACRO name")));
        let command = parse(b'D', b"Cj\x00mx.test\x00v\x00").unwrap();
        assert_eq!(
            command,
            Command::Macro {
                stage: b'C',
                macros: vec![("j".into(), "mx.test".into()), ("v".into(), String::new())],
            }
        );
        assert!(matches!(
            parse(b'D', b""),
            Err(ProtocolError::Truncated("MACRO stage"))
        ));
        assert_eq!(
            parse(b'D', b"T").unwrap(),
            Command::Macro {
                stage: b'T',
                macros: vec![]
            }
        );
    }

    #[test]
    fn mail_and_rcpt_are_argument_lists() {
        assert_eq!(
            parse(b'M', b"<a@example.org>\x00SIZE=100\x00BODY=8BITMIME\x00").unwrap(),
            Command::Mail(vec![
                "<a@example.org>".into(),
                "SIZE=100".into(),
                "BODY=8BITMIME".into()
            ])
        );
        assert_eq!(parse(b'R', b"").unwrap(), Command::Rcpt(vec![]));
        assert!(matches!(
            parse(b'R', b"<b@x>"),
            Err(ProtocolError::MissingNul(_))
        ));
    }

    #[test]
    fn header_values_stay_bytes() {
        let command = parse(b'L', b"Subject\x00caf\xe9\x00").unwrap();
        assert_eq!(
            command,
            Command::Header {
                name: "Subject".into(),
                value: Bytes::from_static(b"caf\xe9"),
            }
        );
        assert!(matches!(
            parse(b'L', b"Subject\x00x"),
            Err(ProtocolError::MissingNul("HEADER value"))
        ));
    }

    #[test]
    fn text_that_is_not_utf8_is_replaced() {
        assert_eq!(
            parse(b'H', b"h\xffst\x00").unwrap(),
            Command::Helo("h\u{fffd}st".into())
        );
    }

    #[test]
    fn body_chunks_keep_every_byte() {
        let chunk = b"line\r\n\x00\xff.\r\n";
        assert_eq!(
            parse(b'B', chunk).unwrap(),
            Command::Body(Bytes::from_static(chunk))
        );
        assert_eq!(
            parse(b'E', b"").unwrap(),
            Command::EndOfMessage(Bytes::new())
        );
    }

    #[test]
    fn commands_without_payload() {
        for (code, command) in [
            (b'T', Command::Data),
            (b'N', Command::EndOfHeaders),
            (b'A', Command::Abort),
            (b'Q', Command::Quit),
            (b'K', Command::QuitNewConnection),
        ] {
            assert_eq!(parse(code, b"").unwrap(), command);
            assert_eq!(command.code(), code);
            let mut out = BytesMut::new();
            command.encode_payload(&mut out);
            assert!(out.is_empty());
        }
    }

    #[test]
    fn unknown_letters_are_errors() {
        for code in [0u8, b'a', b'c', b'Z', 0xff] {
            assert!(matches!(parse(code, b""), Err(ProtocolError::UnknownCommand(c)) if c == code));
        }
    }
}
