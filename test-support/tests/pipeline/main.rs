//! Whole-pipeline tests: a real Postfix → milter-gateway → RabbitMQ → check-workers (rspamd)
//! → verdict → audit event → auditor → MariaDB. Every part is real; each test has its own
//! vhost, database and Postfix instance, so tests run in parallel.

#![allow(clippy::unwrap_used)]

mod archive_body;
mod bounces;
mod clamav;
mod delivery;
mod gateway_behaviour;
mod geoip;
mod greylisting;
mod late_results;
mod quotas;
mod reputation;
mod spine;
mod srs;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Result;
use platform::config::Config;
use test_support::postfix::{PostfixInstance, PostfixOptions, SwaksOutcome, swaks};
use test_support::{TestBroker, TestDb, init_test_logging};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The GTUBE string, in two halves so that this file is not itself spam.
pub const GTUBE: &str = concat!(
    "XJS*C4JDBQADN1.NSBN3*2IDNEN*",
    "GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
);

/// One running pipeline: the three processes in this test's runtime, on their own vhost and
/// database, with a Postfix instance in front.
pub struct Pipeline {
    pub broker: TestBroker,
    pub db: TestDb,
    pub postfix: PostfixInstance,
    pub gateway_addr: SocketAddr,
    /// bounce-ingest's listener, when [`Extras::bounce_ingest`] asked for it.
    pub bounce_ingest_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    tasks: Vec<JoinHandle<Result<()>>>,
}

/// Builds a test's Postfix additions from its configuration and bounce-ingest's address.
pub type PostfixFor = Box<dyn FnOnce(&Config, Option<SocketAddr>) -> PostfixOptions + Send>;

/// What a test adds to the pipeline.
#[derive(Default)]
pub struct Extras {
    /// Also run bounce-ingest's listener, in-process like the others.
    pub bounce_ingest: bool,
    /// More main.cf lines and local aliases for the Postfix instance.
    pub postfix: Option<PostfixFor>,
}

impl Pipeline {
    /// Starts everything; `adjust` edits the configuration first (the broker and database
    /// URLs are already this test's own).
    pub async fn start(adjust: impl FnOnce(&mut Config)) -> Result<Self> {
        Self::start_with(adjust, true, Extras::default()).await
    }

    /// As [`Pipeline::start`], with bounce-ingest and Postfix additions.
    pub async fn start_with_extras(
        adjust: impl FnOnce(&mut Config),
        extras: Extras,
    ) -> Result<Self> {
        Self::start_with(adjust, true, extras).await
    }

    /// As [`Pipeline::start`], but without check-workers: requests are published and nobody
    /// answers them (a module whose workers are all stopped).
    pub async fn start_without_workers(adjust: impl FnOnce(&mut Config)) -> Result<Self> {
        Self::start_with(adjust, false, Extras::default()).await
    }

    async fn start_with(
        adjust: impl FnOnce(&mut Config),
        with_workers: bool,
        extras: Extras,
    ) -> Result<Self> {
        init_test_logging();
        let broker = TestBroker::new()?;
        let db = TestDb::empty().await?;
        let mut config = Config::default();
        config.broker.url = broker.url.as_str().into();
        config.broker.reconnect_max_backoff = Duration::from_millis(500);
        config.database.url = db.url.as_str().into();
        config.gateway.spool_dir = std::env::temp_dir().join(format!("cgt-spool-{}", broker.vhost));
        config.rspamd.enabled = true;
        config.bounce_ingest.spool_dir =
            std::env::temp_dir().join(format!("cgt-bounce-spool-{}", broker.vhost));
        adjust(&mut config);

        auditor::migrate(config.database.url.clone()).await?;
        let shutdown = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let gateway_addr = listener.local_addr()?;
        let mut tasks = vec![
            tokio::spawn(milter_gateway::run(
                config.clone(),
                listener,
                shutdown.clone(),
            )),
            tokio::spawn(auditor::run(config.clone(), shutdown.clone())),
        ];
        if with_workers {
            tasks.push(tokio::spawn(check_workers::run(
                config.clone(),
                None,
                shutdown.clone(),
            )));
        }
        let mut bounce_ingest_addr = None;
        if extras.bounce_ingest {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            bounce_ingest_addr = Some(listener.local_addr()?);
            tasks.push(tokio::spawn(bounce_ingest::run(
                config.clone(),
                listener,
                shutdown.clone(),
            )));
        }
        let added = extras
            .postfix
            .map(|postfix| postfix(&config, bounce_ingest_addr))
            .unwrap_or_default();
        let postfix = tokio::task::spawn_blocking(move || {
            // Postfix would add a missing Message-ID itself for local clients; the gateway's
            // insert-missing-message-id is what is under test.
            let mut main_cf_extra = vec!["local_header_rewrite_clients =".to_owned()];
            main_cf_extra.extend(added.main_cf_extra);
            let options = PostfixOptions {
                main_cf_extra,
                aliases: added.aliases,
                milter_default_action: added.milter_default_action,
            };
            PostfixInstance::start(gateway_addr, &options)
        })
        .await??;
        Ok(Self {
            broker,
            db,
            postfix,
            gateway_addr,
            bounce_ingest_addr,
            shutdown,
            tasks,
        })
    }

    /// Sends one message with swaks through this pipeline's Postfix.
    pub async fn send(&self, args: &[&str]) -> Result<SwaksOutcome> {
        let port = self.postfix.port;
        let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            swaks(port, &args)
        })
        .await?
    }

    /// The archive row of the message whose Subject is `subject`, once the auditor stored it:
    /// (verdict, applied, noop, whitelisted).
    pub async fn archived(&self, subject: &str) -> Result<(String, String, bool, bool)> {
        let pool = &self.db.pool;
        test_support::eventually(Duration::from_secs(20), "the archive row", || async {
            sqlx::query_as::<_, (String, String, bool, bool)>(
                "SELECT verdict, applied, noop, whitelisted FROM message WHERE subject = ?",
            )
            .bind(subject)
            .fetch_optional(pool)
            .await
            .ok()
            .flatten()
        })
        .await
    }

    /// Stops the processes and checks none of them failed.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        for task in self.tasks {
            tokio::time::timeout(Duration::from_secs(60), task).await???;
        }
        Ok(())
    }
}
