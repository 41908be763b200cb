//! Throwaway Postfix instances (`scripts/postfix-instance.sh`) and swaks, for end-to-end tests.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::repo_root;

/// A Postfix instance in its own directory, smtpd on `127.0.0.1:port`, destroyed on drop
/// (kept when the test fails, for its log).
pub struct PostfixInstance {
    pub dir: PathBuf,
    pub port: u16,
}

/// What to put in the instance's main.cf and aliases beyond the script's defaults.
#[derive(Default, Clone)]
pub struct PostfixOptions {
    /// `milter_default_action` (default `tempfail`).
    pub milter_default_action: Option<String>,
    /// Extra main.cf lines.
    pub main_cf_extra: Vec<String>,
    /// Local aliases (`name: value`).
    pub aliases: Vec<String>,
}

/// A TCP port nobody listens on right now (bind to port 0, read it, release it).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

impl PostfixInstance {
    /// Starts an instance whose smtpd uses the milter at `milter` (e.g. `127.0.0.1:10033`).
    pub fn start(milter: std::net::SocketAddr, options: &PostfixOptions) -> Result<Self> {
        let script = repo_root().join("scripts/postfix-instance.sh");
        let mut last_error = String::new();
        // A free port can be taken between our probe and Postfix's bind: try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let dir = PathBuf::from(format!(
                "/tmp/cgt-pfx-{}",
                &uuid::Uuid::now_v7().simple().to_string()[20..]
            ));
            let output = Command::new(&script)
                .arg("start")
                .arg(&dir)
                .arg(port.to_string())
                .arg(format!("inet:{milter}"))
                .arg(options.milter_default_action.as_deref().unwrap_or("tempfail"))
                .env("PFX_MAIN_CF_EXTRA", options.main_cf_extra.join("\n"))
                .env("PFX_ALIASES", options.aliases.join("\n"))
                .output()
                .context("run scripts/postfix-instance.sh (is postfix installed? scripts/start-peers.sh postfix)")?;
            if output.status.success() {
                return Ok(Self { dir, port });
            }
            last_error = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            let _ = Command::new(&script).arg("destroy").arg(&dir).output();
        }
        bail!("cannot start a Postfix instance: {last_error}")
    }

    /// The instance's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default()
    }

    /// The mbox that mail to `*@mailbox.test` is delivered to.
    pub fn mailbox(&self) -> String {
        std::fs::read_to_string(self.dir.join("mail/mbox")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for PostfixInstance {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "postfix instance kept for inspection: {}",
                self.dir.display()
            );
            let _ = Command::new(repo_root().join("scripts/postfix-instance.sh"))
                .arg("stop")
                .arg(&self.dir)
                .output();
            return;
        }
        let _ = Command::new(repo_root().join("scripts/postfix-instance.sh"))
            .arg("destroy")
            .arg(&self.dir)
            .output();
    }
}

/// What swaks said.
#[derive(Debug)]
pub struct SwaksOutcome {
    pub success: bool,
    pub transcript: String,
}

impl SwaksOutcome {
    /// The server's final answer to the DATA dot (`<~ 250 …` / `<** 550 …`), if any.
    pub fn data_reply(&self) -> Option<&str> {
        let lines: Vec<&str> = self.transcript.lines().collect();
        let dot = lines
            .iter()
            .position(|l| l.trim_start().starts_with(" -> .") || l.trim() == "-> .")?;
        lines[dot + 1..]
            .iter()
            .find(|l| l.starts_with("<~ ") || l.starts_with("<** ") || l.starts_with("<- "))
            .map(|l| l[3..].trim())
    }
}

/// Runs swaks against `127.0.0.1:port` with the given extra arguments
/// (e.g. `["--from", "a@example.org", "--to", "b@mailbox.test"]`).
pub fn swaks(port: u16, args: &[&str]) -> Result<SwaksOutcome> {
    let output = Command::new("swaks")
        .arg("--server")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--timeout")
        .arg("60")
        .args(args)
        .output()
        .context("run swaks (scripts/start-peers.sh tools installs it)")?;
    Ok(SwaksOutcome {
        success: output.status.success(),
        transcript: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    })
}
