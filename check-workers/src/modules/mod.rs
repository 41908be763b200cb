//! The check modules, one file each. This is the only place that knows the whole set: it maps
//! a module name from the configuration to a ready [`Module`].

use std::sync::Arc;

use platform::config::Config;
use wire::ModuleName;

use crate::module::{BoxError, Module, ModuleError};

pub mod clamav;
pub mod geoip;
pub mod greylisting;
pub mod quotas;
pub mod reputation;
pub mod rspamd;
pub mod spamassassin;
pub mod spf;
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
        ModuleName::Srs => Ok(Arc::new(srs::SrsModule::new(&config.srs).map_err(
            |source| BuildError::Setup {
                module: srs::NAME,
                source: Box::new(source),
            },
        )?)),
        ModuleName::Geoip => Ok(Arc::new(geoip::Geoip::new(config).map_err(|source| {
            BuildError::Client {
                module: geoip::NAME,
                source,
            }
        })?)),
        ModuleName::Reputation => Ok(Arc::new(reputation::Reputation::new(config).map_err(
            |source| BuildError::Client {
                module: reputation::NAME,
                source,
            },
        )?)),
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
    /// The module's own files or settings cannot be used (the SRS secrets file).
    #[error("cannot set up module `{module}`")]
    Setup {
        module: &'static str,
        #[source]
        source: BoxError,
    },
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::module::error_chain;
    use platform::config::KNOWN_MODULES;

    #[test]
    fn every_known_module_can_be_built() {
        let mut config = Config::default();
        // srs reads its secrets file when it is built
        let dir = std::env::temp_dir().join(format!("cluegetter-build-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        config.srs.secrets_file = dir.join("srs.secret");
        std::fs::write(&config.srs.secrets_file, "s3cret\n").unwrap();
        for name in KNOWN_MODULES {
            match build(name, &config) {
                Ok(module) => assert_eq!(module.name(), *name),
                Err(e) => panic!("{name}: {e}"),
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn srs_without_its_secrets_file_is_a_clear_error() {
        let mut config = Config::default();
        config.srs.secrets_file = "/nonexistent/cluegetter-srs.secret".into();
        let error = build("srs", &config).err().unwrap();
        assert_eq!(
            error_chain(&error),
            "cannot set up module `srs`: cannot read the SRS secrets file \
             /nonexistent/cluegetter-srs.secret: No such file or directory (os error 2)"
        );
    }
}
