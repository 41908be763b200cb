//! The milter protocol, version 6 (../shared/MILTER.md), as bytes and values.
//!
//! - [`codec`]: framing (`len + cmd + payload`) with strict bounds; knows no meanings.
//! - [`command`]: MTA → filter commands.
//! - [`response`]: filter → MTA replies and modifications.
//! - [`optneg`]: negotiation constants and the subset we answer with.
//! - `fuzz`: the codec's fuzz oracle (`fuzz/fuzz_targets/milter_codec.rs` calls it); only
//!   in tests and fuzzing builds (`--cfg fuzzing`).
//!
//! Nothing here knows about session stages; that is `crate::session`.

pub mod codec;
pub mod command;
#[cfg(any(test, fuzzing))]
pub mod fuzz;
pub mod optneg;
pub mod response;
#[cfg(test)]
pub(crate) mod strategies;

pub use codec::{FilterCodec, MtaCodec};
pub use command::{Command, Family};
pub use response::Response;

/// A violation of the protocol by the peer. The connection ends; Postfix applies
/// `milter_default_action`.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("packet of {len} bytes is longer than the maximum of {max}")]
    TooLong { len: u32, max: u32 },
    #[error("packet of length 0 (no command byte)")]
    EmptyPacket,
    #[error("truncated packet: {0} missing")]
    Truncated(&'static str),
    #[error("{0} is not NUL-terminated")]
    MissingNul(&'static str),
    #[error("unknown command byte 0x{0:02x}")]
    UnknownCommand(u8),
    #[error("unknown address family byte 0x{0:02x} in CONNECT")]
    BadFamily(u8),
    #[error("{command} is not allowed {when}")]
    OutOfOrder {
        command: &'static str,
        when: &'static str,
    },
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}
