//! Filter → MTA replies (SMFIR_*) and modifications, without framing.
//!
//! Modifications (`h i m e + 2 - b q`) are only valid after BODYEOB; that rule belongs to the
//! session, not here. [`Response::parse`] is the inverse of [`Response::encode_payload`] and
//! serves the MTA side in tests and benches.

use bytes::{BufMut, Bytes, BytesMut};

use super::ProtocolError;
use super::command::Reader;

/// One filter → MTA packet. Variants are named as in the protocol; the wire letter is in each
/// doc comment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// `O` SMFIC_OPTNEG reply: version, actions, protocol flags, and (with SETSYMLIST) the
    /// macros wanted per stage.
    OptNeg {
        version: u32,
        actions: u32,
        protocol: u32,
        macros: Vec<(u32, String)>,
    },
    /// `c` SMFIR_CONTINUE
    Continue,
    /// `a` SMFIR_ACCEPT
    Accept,
    /// `r` SMFIR_REJECT
    Reject,
    /// `t` SMFIR_TEMPFAIL
    Tempfail,
    /// `d` SMFIR_DISCARD
    Discard,
    /// `y` SMFIR_REPLYCODE: `ddd x.y.z text` (the text already `%`-escaped; may be several
    /// lines joined by CRLF, each line starting with the code).
    ReplyCode(String),
    /// `p` SMFIR_PROGRESS: resets the MTA's timer; any number may precede the real answer.
    Progress,
    /// `s` SMFIR_SKIP: send no more body chunks.
    Skip,
    /// `h` SMFIR_ADDHEADER
    AddHeader { name: String, value: String },
    /// `i` SMFIR_INSHEADER: insert at a 0-based position among all headers.
    InsertHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// `m` SMFIR_CHGHEADER: change the `index`-th (1-based) header of that name; an empty
    /// value deletes it.
    ChangeHeader {
        index: u32,
        name: String,
        value: String,
    },
    /// `e` SMFIR_CHGFROM: new envelope sender, with optional ESMTP arguments.
    ChangeFrom {
        sender: String,
        args: Option<String>,
    },
    /// `+` SMFIR_ADDRCPT
    AddRecipient(String),
    /// `2` SMFIR_ADDRCPT_PAR: recipient with ESMTP arguments.
    AddRecipientWithArgs { recipient: String, args: String },
    /// `-` SMFIR_DELRCPT
    DeleteRecipient(String),
    /// `b` SMFIR_REPLBODY: one chunk of the replacement body.
    ReplaceBody(Bytes),
    /// `q` SMFIR_QUARANTINE: hold the message, with a reason.
    Quarantine(String),
}

impl Response {
    pub fn code(&self) -> u8 {
        match self {
            Response::OptNeg { .. } => b'O',
            Response::Continue => b'c',
            Response::Accept => b'a',
            Response::Reject => b'r',
            Response::Tempfail => b't',
            Response::Discard => b'd',
            Response::ReplyCode(_) => b'y',
            Response::Progress => b'p',
            Response::Skip => b's',
            Response::AddHeader { .. } => b'h',
            Response::InsertHeader { .. } => b'i',
            Response::ChangeHeader { .. } => b'm',
            Response::ChangeFrom { .. } => b'e',
            Response::AddRecipient(_) => b'+',
            Response::AddRecipientWithArgs { .. } => b'2',
            Response::DeleteRecipient(_) => b'-',
            Response::ReplaceBody(_) => b'b',
            Response::Quarantine(_) => b'q',
        }
    }

    /// Whether this is a modification (only allowed after BODYEOB, before the final answer).
    pub fn is_modification(&self) -> bool {
        matches!(
            self.code(),
            b'h' | b'i' | b'm' | b'e' | b'+' | b'2' | b'-' | b'b' | b'q'
        )
    }

    pub fn encode_payload(&self, out: &mut BytesMut) {
        fn put_str(out: &mut BytesMut, s: &str) {
            // A NUL inside would end the string early on the MTA side; callers strip them,
            // this makes sure.
            out.extend(s.bytes().filter(|&b| b != 0));
            out.put_u8(0);
        }
        match self {
            Response::OptNeg {
                version,
                actions,
                protocol,
                macros,
            } => {
                out.put_u32(*version);
                out.put_u32(*actions);
                out.put_u32(*protocol);
                for (stage, list) in macros {
                    out.put_u32(*stage);
                    put_str(out, list);
                }
            }
            Response::Continue
            | Response::Accept
            | Response::Reject
            | Response::Tempfail
            | Response::Discard
            | Response::Progress
            | Response::Skip => {}
            Response::ReplyCode(text) | Response::Quarantine(text) => put_str(out, text),
            Response::AddHeader { name, value } => {
                put_str(out, name);
                put_str(out, value);
            }
            Response::InsertHeader { index, name, value }
            | Response::ChangeHeader { index, name, value } => {
                out.put_u32(*index);
                put_str(out, name);
                put_str(out, value);
            }
            Response::ChangeFrom { sender, args } => {
                put_str(out, sender);
                if let Some(args) = args {
                    put_str(out, args);
                }
            }
            Response::AddRecipient(rcpt) | Response::DeleteRecipient(rcpt) => put_str(out, rcpt),
            Response::AddRecipientWithArgs { recipient, args } => {
                put_str(out, recipient);
                put_str(out, args);
            }
            Response::ReplaceBody(chunk) => out.put_slice(chunk),
        }
    }

    /// Parses a reply payload (the MTA side).
    ///
    /// # Errors
    /// Unknown letter, truncated fields, missing NUL.
    pub fn parse(code: u8, payload: Bytes) -> Result<Response, ProtocolError> {
        let mut reader = Reader::new(payload);
        let response = match code {
            b'O' => {
                let version = reader.u32("OPTNEG version")?;
                let actions = reader.u32("OPTNEG actions")?;
                let protocol = reader.u32("OPTNEG protocol")?;
                let mut macros = Vec::new();
                while !reader.is_empty() {
                    let stage = reader.u32("OPTNEG macro stage")?;
                    macros.push((stage, reader.string("OPTNEG macro list")?));
                }
                Response::OptNeg {
                    version,
                    actions,
                    protocol,
                    macros,
                }
            }
            b'c' => Response::Continue,
            b'a' => Response::Accept,
            b'r' => Response::Reject,
            b't' => Response::Tempfail,
            b'd' => Response::Discard,
            b'p' => Response::Progress,
            b's' => Response::Skip,
            b'y' => Response::ReplyCode(reader.string("REPLYCODE text")?),
            b'q' => Response::Quarantine(reader.string("QUARANTINE reason")?),
            b'h' => Response::AddHeader {
                name: reader.string("ADDHEADER name")?,
                value: reader.string("ADDHEADER value")?,
            },
            b'i' => Response::InsertHeader {
                index: reader.u32("INSHEADER index")?,
                name: reader.string("INSHEADER name")?,
                value: reader.string("INSHEADER value")?,
            },
            b'm' => Response::ChangeHeader {
                index: reader.u32("CHGHEADER index")?,
                name: reader.string("CHGHEADER name")?,
                value: reader.string("CHGHEADER value")?,
            },
            b'e' => {
                let sender = reader.string("CHGFROM sender")?;
                let args = if reader.is_empty() {
                    None
                } else {
                    Some(reader.string("CHGFROM arguments")?)
                };
                Response::ChangeFrom { sender, args }
            }
            b'+' => Response::AddRecipient(reader.string("ADDRCPT recipient")?),
            b'2' => Response::AddRecipientWithArgs {
                recipient: reader.string("ADDRCPT_PAR recipient")?,
                args: reader.string("ADDRCPT_PAR arguments")?,
            },
            b'-' => Response::DeleteRecipient(reader.string("DELRCPT recipient")?),
            b'b' => Response::ReplaceBody(reader.rest()),
            other => return Err(ProtocolError::UnknownCommand(other)),
        };
        Ok(response)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn encode(response: &Response) -> Vec<u8> {
        let mut out = BytesMut::new();
        response.encode_payload(&mut out);
        out.to_vec()
    }

    #[test]
    fn reply_code_is_nul_terminated_text() {
        let response = Response::ReplyCode("550 5.7.1 Rejected (4jZB211qk4z6XPl)".into());
        assert_eq!(
            encode(&response),
            b"550 5.7.1 Rejected (4jZB211qk4z6XPl)\x00"
        );
        assert_eq!(response.code(), b'y');
    }

    #[test]
    fn a_nul_inside_a_string_is_dropped_not_sent() {
        let response = Response::AddHeader {
            name: "X-A\0B".into(),
            value: "v\0".into(),
        };
        assert_eq!(encode(&response), b"X-AB\x00v\x00");
    }

    #[test]
    fn optneg_reply_carries_the_macro_lists() {
        let response = Response::OptNeg {
            version: 6,
            actions: 0x1,
            protocol: 0x80,
            macros: vec![(5, "i".into())],
        };
        assert_eq!(
            encode(&response),
            [
                &[0, 0, 0, 6, 0, 0, 0, 1, 0, 0, 0, 0x80, 0, 0, 0, 5][..],
                b"i\x00"
            ]
            .concat()
        );
    }

    #[test]
    fn change_from_arguments_are_optional() {
        let without = Response::ChangeFrom {
            sender: "<srs@x>".into(),
            args: None,
        };
        assert_eq!(encode(&without), b"<srs@x>\x00");
        let with = Response::ChangeFrom {
            sender: "<srs@x>".into(),
            args: Some("SIZE=1".into()),
        };
        assert_eq!(encode(&with), b"<srs@x>\x00SIZE=1\x00");
        assert_eq!(
            Response::parse(b'e', Bytes::from(encode(&with))).unwrap(),
            with
        );
    }

    #[test]
    fn only_message_changes_are_modifications() {
        let modifications = [
            Response::AddHeader {
                name: String::new(),
                value: String::new(),
            },
            Response::InsertHeader {
                index: 0,
                name: String::new(),
                value: String::new(),
            },
            Response::ChangeHeader {
                index: 1,
                name: String::new(),
                value: String::new(),
            },
            Response::ChangeFrom {
                sender: String::new(),
                args: None,
            },
            Response::AddRecipient(String::new()),
            Response::AddRecipientWithArgs {
                recipient: String::new(),
                args: String::new(),
            },
            Response::DeleteRecipient(String::new()),
            Response::ReplaceBody(Bytes::new()),
            Response::Quarantine(String::new()),
        ];
        for response in &modifications {
            assert!(response.is_modification(), "{response:?}");
        }
        for response in [
            Response::Continue,
            Response::Accept,
            Response::Reject,
            Response::Tempfail,
            Response::Discard,
            Response::ReplyCode(String::new()),
            Response::Progress,
            Response::Skip,
        ] {
            assert!(!response.is_modification(), "{response:?}");
        }
    }

    #[test]
    fn truncated_replies_are_errors() {
        assert!(matches!(
            Response::parse(b'O', Bytes::from_static(&[0; 8])),
            Err(ProtocolError::Truncated(_))
        ));
        assert!(matches!(
            Response::parse(
                b'O',
                Bytes::from_static(&[0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            ),
            Err(ProtocolError::Truncated("OPTNEG macro stage"))
        ));
        assert!(matches!(
            Response::parse(b'i', Bytes::from_static(b"\x00\x00")),
            Err(ProtocolError::Truncated(_))
        ));
        assert!(matches!(
            Response::parse(b'y', Bytes::from_static(b"550")),
            Err(ProtocolError::MissingNul(_))
        ));
        assert!(matches!(
            Response::parse(b'2', Bytes::from_static(b"<a@b>\x00")),
            Err(ProtocolError::MissingNul(_))
        ));
        assert!(matches!(
            Response::parse(b'x', Bytes::new()),
            Err(ProtocolError::UnknownCommand(b'x'))
        ));
    }
}
