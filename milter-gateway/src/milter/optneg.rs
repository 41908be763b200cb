//! Option negotiation (SMFIC_OPTNEG): the version, actions and protocol flags we ask for, and
//! the macros we want at each stage (SETSYMLIST).

/// The milter protocol version we speak.
pub const VERSION: u32 = 6;

/// SMFIF_* action bits.
pub mod action {
    pub const ADDHDRS: u32 = 0x01;
    pub const CHGBODY: u32 = 0x02;
    pub const ADDRCPT: u32 = 0x04;
    pub const DELRCPT: u32 = 0x08;
    pub const CHGHDRS: u32 = 0x10;
    pub const QUARANTINE: u32 = 0x20;
    pub const CHGFROM: u32 = 0x40;
    pub const ADDRCPT_PAR: u32 = 0x80;
    pub const SETSYMLIST: u32 = 0x100;
}

/// SMFIP_* protocol bits.
pub mod protocol {
    pub const NOCONNECT: u32 = 0x1;
    pub const NOHELO: u32 = 0x2;
    pub const NOMAIL: u32 = 0x4;
    pub const NORCPT: u32 = 0x8;
    pub const NOBODY: u32 = 0x10;
    pub const NOHDRS: u32 = 0x20;
    pub const NOEOH: u32 = 0x40;
    pub const NR_HDR: u32 = 0x80;
    pub const NOUNKNOWN: u32 = 0x100;
    pub const NODATA: u32 = 0x200;
    pub const SKIP: u32 = 0x400;
    pub const RCPT_REJ: u32 = 0x800;
    pub const NR_CONN: u32 = 0x1000;
    pub const NR_HELO: u32 = 0x2000;
    pub const NR_MAIL: u32 = 0x4000;
    pub const NR_RCPT: u32 = 0x8000;
    pub const NR_DATA: u32 = 0x10000;
    pub const NR_UNKN: u32 = 0x20000;
    pub const NR_EOH: u32 = 0x40000;
    pub const NR_BODY: u32 = 0x80000;
    pub const HDR_LEADSPC: u32 = 0x100000;
}

/// SMFIM_* macro stages for SETSYMLIST.
pub mod stage {
    pub const CONNECT: u32 = 0;
    pub const HELO: u32 = 1;
    pub const ENVFROM: u32 = 2;
    pub const ENVRCPT: u32 = 3;
    pub const DATA: u32 = 4;
    pub const EOM: u32 = 5;
    pub const EOH: u32 = 6;
}

/// The actions we use: headers, recipients, sender (SRS), quarantine, and our macro lists.
/// (ClueGetter forgot DELRCPT, spec gap C.20.)
pub const WANTED_ACTIONS: u32 = action::ADDHDRS
    | action::CHGHDRS
    | action::ADDRCPT
    | action::DELRCPT
    | action::CHGFROM
    | action::QUARANTINE
    | action::SETSYMLIST;

/// Stages where we always continue, so the MTA need not wait for our reply (every stage but
/// RCPT, where per-recipient decisions are made, and BODYEOB, where the verdict is); plus
/// RCPT_REJ, so that recipients Postfix refused itself reach us for the audit. We keep
/// hashing and counting the whole body, so we never ask Postfix to SKIP it.
pub const WANTED_PROTOCOL: u32 = protocol::NR_CONN
    | protocol::NR_HELO
    | protocol::NR_MAIL
    | protocol::NR_DATA
    | protocol::NR_UNKN
    | protocol::NR_EOH
    | protocol::NR_HDR
    | protocol::NR_BODY
    | protocol::RCPT_REJ;

/// [`WANTED_PROTOCOL`] less the no-reply flags of the stages where modules are asked
/// (`[stage-checks]`): there the MTA must wait for our answer. RCPT is always answered.
pub fn wanted_protocol(connect_checks: bool, helo_checks: bool) -> u32 {
    let mut wanted = WANTED_PROTOCOL;
    if connect_checks {
        wanted &= !protocol::NR_CONN;
    }
    if helo_checks {
        wanted &= !protocol::NR_HELO;
    }
    wanted
}

/// The macros we ask for, per stage (Postfix sends only what a stage can know; see MILTER.md).
pub const MACROS: &[(u32, &str)] = &[
    (
        stage::CONNECT,
        "j {daemon_name} {client_addr} {client_name} {client_port} _",
    ),
    (
        stage::HELO,
        "{tls_version} {cipher} {cipher_bits} {cert_subject} {cert_issuer}",
    ),
    (
        stage::ENVFROM,
        "i {auth_type} {auth_authen} {auth_author} {mail_addr}",
    ),
    (stage::ENVRCPT, "i {rcpt_addr} {rcpt_host} {rcpt_mailer}"),
    (stage::DATA, "i"),
    (stage::EOH, "i {auth_type} {auth_authen} {auth_author}"),
    (stage::EOM, "i"),
];

/// What we answer to the MTA's offer: always a subset of what it offered (Postfix drops the
/// connection otherwise: "request mask … conflict").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub version: u32,
    pub actions: u32,
    pub protocol: u32,
}

impl Negotiated {
    pub fn from_offer(version: u32, offered_actions: u32, offered_protocol: u32) -> Self {
        Self::from_offer_wanting(version, offered_actions, offered_protocol, WANTED_PROTOCOL)
    }

    /// As [`Self::from_offer`], asking for `wanted` protocol flags ([`wanted_protocol`]).
    pub fn from_offer_wanting(
        version: u32,
        offered_actions: u32,
        offered_protocol: u32,
        wanted: u32,
    ) -> Self {
        Self {
            version: version.min(VERSION),
            actions: offered_actions & WANTED_ACTIONS,
            protocol: offered_protocol & wanted,
        }
    }

    /// Whether the MTA expects no reply to this command letter.
    pub fn no_reply(&self, command: u8) -> bool {
        let bit = match command {
            b'C' => protocol::NR_CONN,
            b'H' => protocol::NR_HELO,
            b'M' => protocol::NR_MAIL,
            b'R' => protocol::NR_RCPT,
            b'T' => protocol::NR_DATA,
            b'U' => protocol::NR_UNKN,
            b'N' => protocol::NR_EOH,
            b'L' => protocol::NR_HDR,
            b'B' => protocol::NR_BODY,
            // these never get a reply
            b'D' | b'A' | b'Q' | b'K' => return true,
            _ => return false,
        };
        self.protocol & bit != 0
    }

    pub fn can(&self, action_bit: u32) -> bool {
        self.actions & action_bit != 0
    }

    pub fn macros_allowed(&self) -> bool {
        self.can(action::SETSYMLIST)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// Postfix 3.7's offer (PEERS.md §4).
    const POSTFIX: (u32, u32, u32) = (6, 0x1ff, 0x1f_ffff);

    #[test]
    fn stage_checks_make_the_mta_wait_for_our_answer() {
        let wanted = wanted_protocol(true, false);
        let n = Negotiated::from_offer_wanting(POSTFIX.0, POSTFIX.1, POSTFIX.2, wanted);
        assert!(!n.no_reply(b'C'));
        assert!(n.no_reply(b'H'));
        assert!(!n.no_reply(b'R'));
        let n = Negotiated::from_offer_wanting(
            POSTFIX.0,
            POSTFIX.1,
            POSTFIX.2,
            wanted_protocol(false, true),
        );
        assert!(n.no_reply(b'C'));
        assert!(!n.no_reply(b'H'));
        assert_eq!(wanted_protocol(false, false), WANTED_PROTOCOL);
    }

    #[test]
    fn against_postfix_we_get_what_we_want() {
        let n = Negotiated::from_offer(POSTFIX.0, POSTFIX.1, POSTFIX.2);
        assert_eq!(n.version, 6);
        assert_eq!(n.actions, WANTED_ACTIONS);
        assert_eq!(n.protocol, WANTED_PROTOCOL);
        assert!(n.macros_allowed());
        assert!(n.no_reply(b'C') && n.no_reply(b'H') && n.no_reply(b'M'));
        assert!(
            !n.no_reply(b'R'),
            "RCPT is where per-recipient answers are given"
        );
        assert!(!n.no_reply(b'E'), "the verdict is the answer to BODYEOB");
        assert!(!n.no_reply(b'O'));
    }

    #[test]
    fn against_an_old_mta_we_reply_to_everything() {
        let n = Negotiated::from_offer(2, 0x1f, 0x7f);
        assert_eq!(n.version, 2);
        assert!(!n.macros_allowed());
        for code in *b"CHMRTULNB" {
            assert!(!n.no_reply(code), "{}", code as char);
        }
        for code in *b"DAQK" {
            assert!(n.no_reply(code), "{} never gets a reply", code as char);
        }
    }

    #[test]
    fn never_more_than_offered() {
        for offer in [0u32, 1, 0x55, 0x1ff, u32::MAX] {
            let n = Negotiated::from_offer(u32::MAX, offer, offer);
            assert_eq!(n.version, VERSION);
            assert_eq!(n.actions & !offer, 0);
            assert_eq!(n.protocol & !offer, 0);
        }
    }

    #[test]
    fn we_never_ask_to_skip_events_we_judge_on() {
        let skipping = protocol::NOCONNECT
            | protocol::NOHELO
            | protocol::NOMAIL
            | protocol::NORCPT
            | protocol::NOBODY
            | protocol::NOHDRS
            | protocol::NOEOH
            | protocol::NODATA
            | protocol::SKIP;
        assert_eq!(WANTED_PROTOCOL & skipping, 0);
        assert_eq!(WANTED_PROTOCOL & protocol::NR_RCPT, 0);
    }

    #[test]
    fn macro_lists_are_one_per_stage_and_wire_safe() {
        let mut stages = HashSet::new();
        for (stage_code, list) in MACROS {
            assert!(*stage_code <= stage::EOH);
            assert!(
                stages.insert(*stage_code),
                "stage {stage_code} listed twice"
            );
            assert!(!list.contains('\0'));
            assert!(!list.is_empty());
        }
        // the queue id is what every log line from DATA on carries
        for s in [stage::DATA, stage::EOH, stage::EOM] {
            assert!(
                MACROS
                    .iter()
                    .any(|(st, l)| *st == s && l.split(' ').any(|m| m == "i"))
            );
        }
    }
}
