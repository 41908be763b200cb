//! What every check module's section has (`enabled`, `timeout`, `on-error`, `max-size`), the
//! `[stage-checks]` section, and one file per module's own section.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use wire::CheckStage;

mod clamav;
mod geoip;
mod greylisting;
mod quotas;
mod reputation;
mod rspamd;
mod spamassassin;
mod srs;

pub use clamav::{ClamavConfig, ClamdAddress};
pub use geoip::{GeoipAction, GeoipConfig, UnknownCountry};
pub use greylisting::GreylistingConfig;
pub use quotas::QuotasConfig;
pub use reputation::ReputationConfig;
pub use rspamd::RspamdConfig;
pub use spamassassin::{SpamAssassinConfig, VerdictMsg};
pub use srs::{SrsConfig, SrsRewrite};

/// What an error of a module does to the verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// ClueGetter's rule: an error no group member excuses tempfails the message.
    Tempfail,
    /// The module contributes nothing when it fails.
    Ignore,
}

/// The keys every check module has.
/// `[stage-checks]`: modules also asked before end of message, at the stage where the answer
/// is given on the spot (a reject at CONNECT refuses the client, at RCPT that one recipient).
/// Every enabled module is asked at end of message regardless.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct StageChecksConfig {
    pub connect: Vec<String>,
    pub helo: Vec<String>,
    pub rcpt: Vec<String>,
}

impl StageChecksConfig {
    /// The modules asked at `stage` (none at end of message: that is every enabled module).
    pub fn modules(&self, stage: CheckStage) -> &[String] {
        match stage {
            CheckStage::Connect => &self.connect,
            CheckStage::Helo => &self.helo,
            CheckStage::Rcpt => &self.rcpt,
            CheckStage::Eom => &[],
        }
    }

    /// The stages before end of message at which `module` is asked.
    pub fn stages_of(&self, module: &str) -> Vec<CheckStage> {
        [CheckStage::Connect, CheckStage::Helo, CheckStage::Rcpt]
            .into_iter()
            .filter(|stage| self.modules(*stage).iter().any(|m| m == module))
            .collect()
    }
}

pub trait ModuleSettings {
    fn enabled(&self) -> bool;
    fn timeout(&self) -> Duration;
    /// Bytes of the message the module gets; `None` for metadata-only modules.
    fn max_size(&self) -> Option<usize>;
    fn on_error(&self) -> OnError;
}

/// `impl ModuleSettings` for a module section with `enabled`, `timeout` and `on-error` keys;
/// a `content` module also has `max-size` (the bytes of the message it gets).
#[macro_export]
#[doc(hidden)]
macro_rules! module_settings {
    ($section:ty, $kind:ident) => {
        impl ModuleSettings for $section {
            fn enabled(&self) -> bool {
                self.enabled
            }
            fn timeout(&self) -> Duration {
                self.timeout
            }
            fn max_size(&self) -> Option<usize> {
                module_settings!(@max_size self, $kind)
            }
            fn on_error(&self) -> OnError {
                self.on_error
            }
        }
    };
    (@max_size $self:ident, content) => {
        Some($self.max_size)
    };
    (@max_size $self:ident, metadata) => {
        None
    };
}
