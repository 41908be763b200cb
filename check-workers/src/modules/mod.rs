//! The check modules, one file each. This is the only place that knows the whole set: it maps
//! a module name from the configuration to a ready [`Module`].

use std::sync::Arc;

use platform::config::Config;
use wire::ModuleName;

use crate::module::{Module, ModuleError};

pub mod clamav;
pub mod geoip;
pub mod greylisting;
pub mod quotas;
pub mod rspamd;
pub mod spamassassin;
pub mod srs;

/// Builds the module `name` from its configuration section.
///
/// # Errors
/// `name` is not a module this build has, or its client cannot be set up.
pub fn build(name: &str, config: &Config) -> Result<Arc<dyn Module>, BuildError> {
    match ModuleName::parse(name) {
        ModuleName::Quotas => Ok(Arc::new(quotas::Quotas::new(config).map_err(|source| {
            BuildError::Client {
                module: quotas::NAME,
                source,
            }
        })?)),
        ModuleName::Rspamd => Ok(Arc::new(rspamd::Rspamd::new(&config.rspamd).map_err(
            |source| BuildError::Client {
                module: rspamd::NAME,
                source,
            },
        )?)),
        ModuleName::SpamAssassin => Ok(Arc::new(spamassassin::SpamAssassin::new(
            &config.spamassassin,
        ))),
        ModuleName::Clamav => Ok(Arc::new(clamav::Clamav::new(&config.clamav))),
        ModuleName::Greylisting => Ok(Arc::new(greylisting::Greylisting::new(config).map_err(
            |source| BuildError::Client {
                module: greylisting::NAME,
                source,
            },
        )?)),
        ModuleName::Geoip => Ok(Arc::new(geoip::Geoip::new(config).map_err(|source| {
            BuildError::Client {
                module: geoip::NAME,
                source,
            }
        })?)),
        ModuleName::Unknown(other) => Err(BuildError::Unknown(other)),
    }
}

/// A module that cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("check-workers has no module `{0}`")]
    Unknown(String),
    #[error("cannot set up module `{module}`")]
    Client {
        module: &'static str,
        #[source]
        source: ModuleError,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use platform::config::KNOWN_MODULES;

    #[test]
    fn every_known_module_can_be_built() {
        let config = Config::default();
        for name in KNOWN_MODULES {
            match build(name, &config) {
                Ok(module) => assert_eq!(module.name(), *name),
                Err(e) => panic!("{name}: {e}"),
            }
        }
    }
}
