//! The real `milter-gateway` and `auditor` binaries as child processes, so that `kill -9` is a
//! real `kill -9`: one configuration file per scenario (the private broker and database, ports
//! of their own), logs in the scenario's directory, `/metrics` scraped over HTTP.
//!
//! The binaries are the ones `cargo build --bins` put beside this test binary
//! (`scripts/test.sh` builds them first); a binary older than the sources it is built from is
//! refused rather than tested.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, bail};

use crate::services::{reap, signal_group};

/// The directory of the binaries of this build (`target/<profile>`): this test runs from
/// `target/<profile>/deps/`.
fn bin_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .context("cannot tell where the build's binaries are")
}

/// The newest modification time of the files under `dir`.
fn newest(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let Ok(entries) = std::fs::read_dir(dir) else {
        return newest;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let time = if path.is_dir() {
            self::newest(&path)
        } else {
            entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH)
        };
        newest = newest.max(time);
    }
    newest
}

/// The path of a binary of this workspace, checked to be newer than its sources (`sources`:
/// directories under the repository root besides `wire/src`).
pub fn binary(name: &str, sources: &[&str]) -> Result<PathBuf> {
    let path = bin_dir()?.join(name);
    let built = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .with_context(|| {
            format!(
                "{} is missing: run `cargo build --bins` first (scripts/test.sh does)",
                path.display()
            )
        })?;
    let root = test_support::repo_root();
    for sources in sources.iter().chain(&["wire/src"]) {
        if newest(&root.join(sources)) > built {
            bail!(
                "{} is older than {sources}: run `cargo build --bins` first (scripts/test.sh does)",
                path.display()
            );
        }
    }
    Ok(path)
}

/// Where one scenario's processes live and talk.
#[derive(Clone, Debug)]
pub struct Setup {
    pub dir: PathBuf,
    /// `[broker] url`: one URL, or the nodes of a cluster in the order they are tried.
    pub broker_urls: Vec<String>,
    /// `[database] url`: one URL, or the nodes of a Galera cluster in the order they are tried.
    pub database_urls: Vec<String>,
    pub milter_port: u16,
    pub gateway_metrics: u16,
    pub auditor_metrics: u16,
    /// `[auditor] web-listen`: a port of its own, so that auditors of tests running side by
    /// side do not fight over the default one.
    pub auditor_web: u16,
    /// `[check-workers] metrics-listen` (each worker process gets a setup of its own).
    pub worker_metrics: u16,
    /// More configuration, appended as it is (module sections).
    pub extra: String,
}

impl Setup {
    /// The first broker URL (the only one of a single node).
    pub fn broker_url(&self) -> &str {
        self.broker_urls.first().map_or("", String::as_str)
    }

    pub fn spool_dir(&self) -> PathBuf {
        self.dir.join("spool")
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("cluegetter.toml")
    }

    /// The first database URL (the only one of a single server).
    pub fn database_url(&self) -> &str {
        self.database_urls.first().map_or("", String::as_str)
    }

    /// Writes the configuration both processes read.
    pub fn write_config(&self) -> Result<()> {
        let list = |urls: &[String]| match urls {
            [one] => format!("\"{one}\""),
            urls => format!(
                "[{}]",
                urls.iter()
                    .map(|url| format!("\"{url}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let broker = list(&self.broker_urls);
        let database = list(&self.database_urls);
        let text = format!(
            "instance = \"faults\"\n\
             [broker]\n\
             url = {broker}\n\
             reconnect-max-backoff = \"500ms\"\n\
             [database]\n\
             url = {database}\n\
             max-connections = 4\n\
             [gateway]\n\
             listen = \"127.0.0.1:{milter}\"\n\
             metrics-listen = \"127.0.0.1:{gateway_metrics}\"\n\
             spool-dir = \"{spool}\"\n\
             [auditor]\n\
             metrics-listen = \"127.0.0.1:{auditor_metrics}\"\n\
             web-listen = \"127.0.0.1:{auditor_web}\"\n\
             archive-prune-interval = \"0s\"\n\
             [check-workers]\n\
             metrics-listen = \"127.0.0.1:{worker_metrics}\"\n\
             {extra}",
            milter = self.milter_port,
            gateway_metrics = self.gateway_metrics,
            auditor_metrics = self.auditor_metrics,
            auditor_web = self.auditor_web,
            worker_metrics = self.worker_metrics,
            extra = self.extra,
            spool = self.spool_dir().display(),
        );
        std::fs::create_dir_all(&self.dir)?;
        std::fs::write(self.config_path(), text)?;
        Ok(())
    }

    fn spawn(&self, binary: &Path, args: &[&str], log: &str) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(log))?;
        let mut command = Command::new(binary);
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("CLUEGETTER_")) {
            command.env_remove(key);
        }
        command
            .arg("--config")
            .arg(self.config_path())
            .args(args)
            .env("CLUEGETTER_LOG_LEVEL", "info,lapin=warn,sqlx=warn")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start {}", binary.display()))
    }
}

/// Which of the processes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gateway,
    Auditor,
    /// `check-workers` (its log is `worker.log` in its setup's directory); the cluster
    /// test's quota race runs them.
    #[allow(dead_code)]
    Worker,
}

/// A running `milter-gateway`, `auditor` or `check-workers`; SIGKILLed when dropped.
pub struct Process {
    kind: Kind,
    child: Option<Child>,
    metrics_port: u16,
}

impl Process {
    pub async fn start(kind: Kind, setup: &Setup) -> Result<Self> {
        let (child, metrics_port) = match kind {
            Kind::Gateway => {
                let binary = binary("milter-gateway", &["milter-gateway/src"])?;
                let child = setup.spawn(&binary, &[], "gateway.log")?;
                crate::services::wait_port(
                    setup.milter_port,
                    true,
                    Duration::from_secs(30),
                    "milter-gateway start",
                )
                .await?;
                (child, setup.gateway_metrics)
            }
            Kind::Auditor => {
                let binary = binary("auditor", &["auditor/src", "schema"])?;
                if setup.database_urls.len() > 1 {
                    // with a list of nodes an auditor never changes the schema: `auditor
                    // migrate` first, as the operator does
                    let mut migrate = setup.spawn(&binary, &["migrate"], "migrate.log")?;
                    let end = std::time::Instant::now() + Duration::from_secs(120);
                    let status = loop {
                        if let Some(status) = migrate.try_wait()? {
                            break status;
                        }
                        if std::time::Instant::now() >= end {
                            let _ = migrate.kill();
                            bail!("auditor migrate did not finish within 120 s");
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    };
                    if !status.success() {
                        bail!(
                            "auditor migrate failed ({status}): see {}",
                            setup.dir.join("migrate.log").display()
                        );
                    }
                }
                (
                    setup.spawn(&binary, &["run"], "auditor.log")?,
                    setup.auditor_metrics,
                )
            }
            Kind::Worker => {
                let binary = binary("check-workers", &["check-workers/src"])?;
                (
                    setup.spawn(&binary, &[], "worker.log")?,
                    setup.worker_metrics,
                )
            }
        };
        Ok(Self {
            kind,
            child: Some(child),
            metrics_port,
        })
    }

    /// `kill -9`.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.wait();
        }
    }

    /// SIGTERM, and wait for the process to finish what it has (at most 60 s).
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "TERM");
            reap(&mut child, Duration::from_secs(60)).await;
        }
    }

    /// The value of a counter or gauge on the process's `/metrics` (labels included in
    /// `name`, e.g. `x_total{reason="refused"}`); 0 when absent.
    pub fn metric(&self, name: &str) -> Result<f64> {
        let text = scrape(self.metrics_port)
            .with_context(|| format!("scrape the {:?}'s /metrics", self.kind))?;
        Ok(text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.rsplit_once(' '))
            .find(|(key, _)| *key == name)
            .and_then(|(_, value)| value.parse().ok())
            .unwrap_or(0.0))
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn scrape(port: u16) -> Result<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default())
}
