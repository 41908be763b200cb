//! check-workers: runs cluegetter's check modules as competing consumers of their RabbitMQ
//! queues. The milter-gateway publishes one request per enabled module and message; any
//! number of these processes, on any host, answer them.
//!
//! Layout:
//! - [`run`] (here): picks the modules to serve from the configuration and `--modules`, builds
//!   them and hands them to the worker loop. The binary (`main.rs`) only parses flags, loads the
//!   configuration, sets up logging and metrics, and turns signals into the shutdown token.
//! - [`worker`]: the one consume → check → reply → ack loop for every module: prefetch,
//!   timeouts, error results, reconnecting, draining on shutdown, metrics.
//! - [`module`]: the [`Module`](module::Module) trait a check implements, and
//!   [`ModuleError`](module::ModuleError).
//! - [`modules`]: one file or folder per check module (`rspamd`, `quotas`, `greylisting`,
//!   `spamassassin` with its spamd client, `clamav` with its clamd client, `srs` with the
//!   scheme, PostSRSd's secrets file and `[srs]`'s rules, `geoip` with its MaxMind reader,
//!   `reputation` reading the auditor's counters; `spf.rs` the SPF resolver greylisting and
//!   reputation share); `modules/mod.rs` alone knows the whole set.
//! - [`settle`]: when the quotas module is served, the consumer of `cluegetter.quotas.settle`
//!   that keeps or releases its reservations from the audit events.
//! - [`quota_cli`]: `check-workers quota show|import`, the operator's view of the quota tables.
//! - [`geoip_cli`]: `check-workers geoip show|forget`, the geoip module's history of a login.
//! - [`reputation_cli`]: `check-workers reputation show`, a factor value's counts and score.
//!
//! **Architecture invariant:** modules know nothing of RabbitMQ, acks or timeouts, and the
//! worker knows no module; no verdict is made here (the gateway decides). Only `wire` defines
//! what crosses the broker.

pub mod geoip_cli;
pub mod module;
pub mod modules;
pub mod quota_cli;
pub mod reputation_cli;
pub mod settle;
pub mod worker;

use std::time::Duration;

use anyhow::{Context as _, bail};
use platform::config::{Config, KNOWN_MODULES};
use tokio_util::sync::CancellationToken;

use crate::worker::{ModuleWorker, WorkerSettings};

/// Extra time a check in flight gets at shutdown beyond its module timeout, to publish its
/// result and ack.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Serves the enabled modules (narrowed to `modules` when given) until `shutdown` fires, then
/// finishes the checks in flight (bounded by the longest module timeout plus a little) and
/// returns. With no module to serve it logs so and waits for `shutdown`. The broker may be
/// down at start or go away at any time: the loop keeps reconnecting.
///
/// # Errors
/// A name in `modules` that is unknown or not enabled in the configuration, a `prefetch` of
/// 0, or a module whose client cannot be set up.
pub async fn run(
    config: Config,
    modules: Option<Vec<String>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let names = select_modules(&config, modules.as_deref())?;
    if names.is_empty() {
        tracing::info!("no modules enabled; nothing to serve");
        shutdown.cancelled().await;
        return Ok(());
    }
    if config.check_workers.prefetch == 0 {
        // AMQP reads 0 as "no limit", which is never what a scanner pool wants.
        bail!("[check-workers] prefetch must be at least 1");
    }

    let mut workers = Vec::with_capacity(names.len());
    for name in &names {
        let module = modules::build(name, &config)?;
        // `[stage-checks]` is read by the gateway; refusing here keeps a module from being
        // asked where it cannot judge (it would answer every such request with an error).
        for stage in config.stage_checks.stages_of(name) {
            if !module.stages().contains(&stage) {
                let can: Vec<&str> = module.stages().iter().map(|s| s.as_str()).collect();
                bail!(
                    "[stage-checks] {stage} lists `{name}`, which checks at {} only",
                    can.join(", ")
                );
            }
        }
        let timeout = config
            .module(name)
            .map(|settings| settings.timeout())
            .with_context(|| format!("module `{name}` has no configuration section"))?;
        workers.push(ModuleWorker { module, timeout });
    }
    let longest_timeout = workers.iter().map(|w| w.timeout).max().unwrap_or_default();
    let settings = WorkerSettings {
        broker_urls: config.broker.url.clone(),
        connection_name: format!("check-workers ({}) {}", config.instance, names.join(",")),
        reconnect_max_backoff: config.broker.reconnect_max_backoff,
        prefetch: config.check_workers.prefetch,
        drain_timeout: longest_timeout + DRAIN_GRACE,
    };
    // The quotas' reservations are settled by the audit events, by every process that serves
    // the module (the queue is declared before the first check can reserve anything).
    let settler = if names.contains(&modules::quotas::NAME) {
        let settler = modules::quotas::Settler::new(&config)
            .context("[database] url cannot be used for the quotas")?;
        Some((
            settle::SettleSettings {
                broker_urls: config.broker.url.clone(),
                connection_name: format!("check-workers ({}) quotas settle", config.instance),
                reconnect_max_backoff: config.broker.reconnect_max_backoff,
            },
            settler,
        ))
    } else {
        None
    };
    worker::describe_metrics();
    tracing::info!(
        modules = %names.join(","),
        broker = %settings.broker_urls,
        "check-workers starting"
    );
    // Fired by the settle consumer once its queue is declared: no check reserves before the
    // events that settle it have somewhere to go.
    let settle_ready = CancellationToken::new();
    let settling = async {
        if let Some((settings, settler)) = &settler {
            settle::serve(settings, settler, &settle_ready, &shutdown).await;
        }
    };
    let checking = async {
        if settler.is_some() {
            tokio::select! {
                () = settle_ready.cancelled() => {}
                () = shutdown.cancelled() => return,
            }
        }
        worker::serve(&settings, &workers, &shutdown).await;
    };
    tokio::join!(checking, settling);
    Ok(())
}

/// The modules to serve: the enabled ones, or exactly those named (each must be known and
/// enabled), in [`KNOWN_MODULES`] order without repeats.
fn select_modules(config: &Config, wanted: Option<&[String]>) -> anyhow::Result<Vec<&'static str>> {
    let enabled = config.enabled_modules();
    let Some(wanted) = wanted else {
        return Ok(enabled);
    };
    for name in wanted {
        let name = name.trim();
        if !KNOWN_MODULES.contains(&name) {
            bail!(
                "--modules: unknown module `{name}` (known: {})",
                KNOWN_MODULES.join(", ")
            );
        }
        if !enabled.contains(&name) {
            bail!(
                "--modules: module `{name}` is not enabled in the configuration ([{name}] enabled = true)"
            );
        }
    }
    Ok(enabled
        .into_iter()
        .filter(|module| wanted.iter().any(|w| w.trim() == *module))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[tokio::test]
    async fn a_module_listed_at_a_stage_it_cannot_check_is_refused() {
        let mut config = Config::default();
        config.rspamd.enabled = true;
        config.stage_checks.connect = names(&["rspamd"]);
        let error = run(config, None, CancellationToken::new())
            .await
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "[stage-checks] connect lists `rspamd`, which checks at eom only"
        );
    }

    #[test]
    fn all_enabled_modules_are_served_by_default() {
        let mut config = Config::default();
        assert!(select_modules(&config, None).unwrap().is_empty());
        config.rspamd.enabled = true;
        assert_eq!(select_modules(&config, None).unwrap(), ["rspamd"]);
    }

    #[test]
    fn modules_flag_narrows_and_deduplicates() {
        let mut config = Config::default();
        config.rspamd.enabled = true;
        let wanted = names(&["rspamd", " rspamd"]);
        assert_eq!(
            select_modules(&config, Some(wanted.as_slice())).unwrap(),
            ["rspamd"]
        );
        assert!(select_modules(&config, Some(&[][..])).unwrap().is_empty());
    }

    #[test]
    fn unknown_module_is_named_with_the_known_ones() {
        let mut config = Config::default();
        config.rspamd.enabled = true;
        let err = select_modules(&config, Some(names(&["rspamd", "spamasassin"]).as_slice()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown module `spamasassin`"), "{err}");
        assert!(err.contains("known: quotas, rspamd"), "{err}");
    }

    #[test]
    fn disabled_module_is_refused() {
        let err = select_modules(&Config::default(), Some(names(&["rspamd"]).as_slice()))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`rspamd` is not enabled"), "{err}");
    }

    #[tokio::test]
    async fn nothing_enabled_waits_for_shutdown_and_succeeds() {
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(Config::default(), None, shutdown.clone()));
        tokio::task::yield_now().await;
        assert!(!task.is_finished());
        shutdown.cancel();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn zero_prefetch_is_refused() {
        let mut config = Config::default();
        config.rspamd.enabled = true;
        config.check_workers.prefetch = 0;
        let err = run(config, None, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(err.to_string().contains("prefetch"), "{err}");
    }
}
