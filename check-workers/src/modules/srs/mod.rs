//! The SRS module's foundation (issue 19): the Sender Rewriting Scheme, byte-compatible with
//! PostSRSd 1.x, and its secrets file. Not yet a [`Module`](crate::module::Module): the gateway's
//! RCPT check and envelope changes come on top of this.
//!
//! - [`scheme`]: pure forward and reverse rewriting ([`Srs`]), the address parser
//!   ([`SrsAddress`]), their errors; time is an argument.
//! - [`secrets`]: PostSRSd's secrets file ([`Secrets`]): one secret per line, the first signs,
//!   all verify.
//!
//! Nothing here talks to RabbitMQ or reads the clock.

pub mod scheme;
pub mod secrets;

pub use scheme::{
    ForwardError, Kind, Malformed, ReverseError, Reversed, Separator, Settings, SettingsError, Srs,
    SrsAddress, is_srs_address,
};
pub use secrets::{Secrets, SecretsError, SecretsFileError};

/// The module's name, as `[srs]` and `check.srs` spell it.
pub const NAME: &str = "srs";
