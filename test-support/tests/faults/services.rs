//! The private RabbitMQ node and MariaDB server the fault tests break: each its own process
//! (a child of this test, so it can be stopped, killed and reaped), its own ports on
//! 127.0.0.1 and its own directory, so the shared services on 5672 and 3306 and the tests that
//! use them are never touched.
//!
//! RabbitMQ runs in the foreground under its `rabbitmq-server` script, which stops the node
//! cleanly on SIGTERM; no plugins, a node name of its own, registered with the machine's epmd.
//! MariaDB runs with `--skip-grant-tables` (any login is root), so no accounts are needed.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

/// A port nobody listens on now (the OS's pick; it could be taken again before we bind it,
/// which on loopback with the ports the OS hands out is unlikely enough).
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(listener.local_addr()?.port())
}

/// Whether something accepts connections on the port (liveness by port, never by pid: PID 1
/// of this machine does not reap, PEERS.md pitfall 2).
pub fn listening(port: u16) -> bool {
    TcpStream::connect_timeout(
        &SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// Waits until `port` is (or is no longer, with `up = false`) listening.
pub async fn wait_port(port: u16, up: bool, deadline: Duration, what: &str) -> Result<()> {
    let end = Instant::now() + deadline;
    while listening(port) != up {
        if Instant::now() >= end {
            bail!(
                "{what}: port {port} still {} after {deadline:?}",
                if up { "closed" } else { "open" }
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends a signal to a process group we started (`kill -<SIG> -- -<pgid>`).
pub fn signal_group(child: &Child, signal: &str) {
    let _ = Command::new("kill")
        .args([
            format!("-{signal}"),
            "--".into(),
            format!("-{}", child.id()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Waits for a child to exit, SIGKILLing its process group after `grace`.
pub async fn reap(child: &mut Child, grace: Duration) {
    let end = Instant::now() + grace;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        if Instant::now() >= end {
            signal_group(child, "KILL");
            let _ = child.wait();
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn log_file(path: &Path) -> Result<Stdio> {
    Ok(Stdio::from(
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .with_context(|| format!("open {}", path.display()))?,
    ))
}

/// A RabbitMQ node of our own.
pub struct PrivateBroker {
    dir: PathBuf,
    pub port: u16,
    dist_port: u16,
    node: String,
    child: Option<Child>,
}

impl PrivateBroker {
    /// Prepares the node's directory and starts it.
    pub async fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir.join("mnesia"))?;
        std::fs::create_dir_all(dir.join("log"))?;
        let port = free_port()?;
        let mut dist_port = free_port()?;
        while dist_port == port {
            dist_port = free_port()?;
        }
        std::fs::write(dir.join("enabled_plugins"), "[].\n")?;
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.default = 127.0.0.1:{port}\nloopback_users.guest = true\n\
                 log.file.level = info\n"
            ),
        )?;
        // an empty environment file instead of /etc/rabbitmq/rabbitmq-env.conf
        std::fs::write(dir.join("rabbitmq-env.conf"), "")?;
        let mut broker = Self {
            dir: dir.to_path_buf(),
            port,
            dist_port,
            node: format!("cgfault{}@localhost", std::process::id()),
            child: None,
        };
        broker.start_node().await?;
        Ok(broker)
    }

    pub fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    async fn start_node(&mut self) -> Result<()> {
        let dir = &self.dir;
        let child = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server")
            .env("HOME", dir)
            .env("RABBITMQ_NODENAME", &self.node)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_ADVANCED_CONFIG_FILE", dir.join("advanced.config"))
            .env("RABBITMQ_CONF_ENV_FILE", dir.join("rabbitmq-env.conf"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("server.out"))?)
            .stderr(log_file(&dir.join("server.out"))?)
            .process_group(0)
            .spawn()
            .context("start /usr/lib/rabbitmq/bin/rabbitmq-server (scripts/start-peers.sh rabbitmq installs it)")?;
        self.child = Some(child);
        wait_port(
            self.port,
            true,
            Duration::from_secs(120),
            "private RabbitMQ start",
        )
        .await?;
        // the listener opens last, but give the node a moment to accept logins
        let url = self.url();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            match platform::broker::connect(&url, "faults-probe").await {
                Ok(connection) => {
                    let _ = connection.close(200, "probe".into()).await;
                    return Ok(());
                }
                Err(error) if Instant::now() >= end => {
                    bail!("private RabbitMQ does not accept logins: {error}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Stops the node cleanly (SIGTERM to its start script, which runs `stop`) and waits.
    pub async fn stop(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            reap(&mut child, Duration::from_secs(60)).await;
        }
        wait_port(
            self.port,
            false,
            Duration::from_secs(30),
            "private RabbitMQ stop",
        )
        .await
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.start_node().await
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.wait();
        }
    }
}

/// A MariaDB server of our own.
pub struct PrivateDb {
    dir: PathBuf,
    pub port: u16,
    child: Option<Child>,
}

impl PrivateDb {
    /// Initialises a data directory and starts the server.
    pub async fn start(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let status = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .stdin(Stdio::null())
            .stdout(log_file(&dir.join("install.out"))?)
            .stderr(log_file(&dir.join("install.out"))?)
            .status()
            .context("run mariadb-install-db (scripts/start-peers.sh mariadb installs it)")?;
        if !status.success() {
            bail!(
                "mariadb-install-db failed: see {}",
                dir.join("install.out").display()
            );
        }
        let mut db = Self {
            dir: dir.to_path_buf(),
            port: free_port()?,
            child: None,
        };
        db.start_server().await?;
        Ok(db)
    }

    /// The URL of database `name` on this server.
    pub fn url(&self, name: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{name}", self.port)
    }

    async fn start_server(&mut self) -> Result<()> {
        let dir = &self.dir;
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--socket={}", dir.join("sock").display()))
            .arg(format!("--pid-file={}", dir.join("pid").display()))
            .arg(format!("--log-error={}", dir.join("error.log").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-name-resolve",
                "--skip-grant-tables",
                "--user=root",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=128M",
                "--max-connections=200",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&dir.join("server.out"))?)
            .process_group(0)
            .spawn()
            .context("start mariadbd")?;
        self.child = Some(child);
        wait_port(
            self.port,
            true,
            Duration::from_secs(60),
            "private MariaDB start",
        )
        .await
    }

    /// `kill -9` of the server: every connection breaks at once; committed work survives
    /// (InnoDB redo log, `innodb_flush_log_at_trx_commit = 1`).
    pub async fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.wait();
        }
        wait_port(
            self.port,
            false,
            Duration::from_secs(30),
            "private MariaDB kill",
        )
        .await
    }

    pub async fn restart(&mut self) -> Result<()> {
        self.start_server().await
    }
}

impl Drop for PrivateDb {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal_group(&child, "KILL");
            let _ = child.wait();
        }
    }
}
