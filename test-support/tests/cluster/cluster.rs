//! `scripts/cluster.sh` from the test: start (fresh) in a directory of the test's own, stop
//! when dropped (also when the test fails or panics), kill and restart RabbitMQ and Galera
//! nodes, cut a RabbitMQ node off with iptables and heal it, and ask the cluster which node
//! leads a quorum queue and how many nodes it sees running.
//!
//! Every call blocks until the script is done (start takes ~45 s, restart until the node is
//! back in the cluster): call them from `spawn_blocking`, so the load keeps going meanwhile.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context as _, Result, bail};

/// Which of the two clusters a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Node {
    Rabbit,
    Galera,
}

impl Node {
    fn as_str(self) -> &'static str {
        match self {
            Node::Rabbit => "rabbit",
            Node::Galera => "galera",
        }
    }
}

pub struct Cluster {
    dir: PathBuf,
    broker_urls: Vec<String>,
    /// `[database] url` of the Galera nodes, node 1 first (database `cluegetter`).
    database_urls: Vec<String>,
    /// Erlang node names (`cgN@127.0.0.(N+1)`), node 1 first.
    nodes: Vec<String>,
}

impl Cluster {
    /// `cluster.sh start DIR`; stops what it started if it fails.
    pub fn start(dir: PathBuf) -> Result<Self> {
        let mut cluster = Self {
            dir,
            broker_urls: Vec::new(),
            database_urls: Vec::new(),
            nodes: Vec::new(),
        };
        cluster.script(&["start"], &[])?;
        cluster.broker_urls = cluster.env_list("BROKER_URLS")?;
        cluster.database_urls = cluster.env_list("DATABASE_URLS")?;
        cluster.nodes = cluster.env_list("RABBIT_NODES")?;
        if cluster.broker_urls.len() != 3
            || cluster.nodes.len() != 3
            || cluster.database_urls.len() != 3
        {
            bail!(
                "cluster.env lists {:?}, {:?} and {:?}, not three nodes each",
                cluster.broker_urls,
                cluster.nodes,
                cluster.database_urls
            );
        }
        Ok(cluster)
    }

    /// `[broker] url` of the cluster, node 1 first.
    pub fn broker_urls(&self) -> &[String] {
        &self.broker_urls
    }

    /// `[database] url` of the Galera nodes for database `name`, node 1 first.
    pub fn database_urls(&self, name: &str) -> Vec<String> {
        self.database_urls
            .iter()
            .map(|url| match url.rsplit_once('/') {
                Some((server, _)) => format!("{server}/{name}"),
                None => url.clone(),
            })
            .collect()
    }

    /// `cluster.sh kill9 DIR KIND N` (`kind`: `rabbit` or `galera`).
    pub fn kill9(&self, kind: Node, node: usize) -> Result<()> {
        self.script(&["kill9"], &[kind.as_str(), &node.to_string()])
            .map(drop)
    }

    /// `cluster.sh restart DIR KIND N`: back once the node has rejoined.
    pub fn restart(&self, kind: Node, node: usize) -> Result<()> {
        self.script(&["restart"], &[kind.as_str(), &node.to_string()])
            .map(drop)
    }

    /// `cluster.sh isolate DIR N rabbit`: iptables drops node N's broker traffic, both ways,
    /// with the other nodes and with every client.
    pub fn isolate_rabbit(&self, node: usize) -> Result<()> {
        self.script(&["isolate"], &[&node.to_string(), "rabbit"])
            .map(drop)
    }

    /// `cluster.sh heal DIR N`.
    pub fn heal(&self, node: usize) -> Result<()> {
        self.script(&["heal"], &[&node.to_string()]).map(drop)
    }

    /// How many RabbitMQ nodes node `ask` sees running (itself included).
    pub fn running_seen_by(&self, ask: usize) -> Result<usize> {
        let out = self.script(
            &["rabbitmqctl"],
            &[
                &ask.to_string(),
                "-q",
                "-t",
                "10",
                "cluster_status",
                "--formatter",
                "json",
            ],
        )?;
        let status: serde_json::Value =
            serde_json::from_str(out.trim()).context("rabbitmqctl cluster_status as JSON")?;
        status["running_nodes"]
            .as_array()
            .map(Vec::len)
            .with_context(|| format!("no running_nodes in {out}"))
    }

    /// The node (1..3) that leads quorum queue `queue` (on vhost `/`), asked of node `ask`'s
    /// Ra member of the queue. Not `list_queues name leader`: after a node was killed and
    /// restarted it sometimes times out (60 s, "Some queue(s) are unresponsive") on a queue
    /// that works.
    pub fn leader(&self, ask: usize, queue: &str) -> Result<usize> {
        // the Ra cluster of a quorum queue is named `<vhost, percent-encoded>_<queue>`
        let expression = format!(
            "case ra:members({{'%2F_{queue}', node()}}) of \
             {{ok, _, {{_, Leader}}}} -> Leader; Other -> Other end."
        );
        let out = self.script(&["rabbitmqctl"], &[&ask.to_string(), "eval", &expression])?;
        let leader = out.trim().trim_matches('\'');
        self.nodes
            .iter()
            .position(|node| node == leader)
            .map(|i| i + 1)
            .with_context(|| {
                format!(
                    "the leader of {queue} is {out:?}, not one of {:?}",
                    self.nodes
                )
            })
    }

    /// `cluster.sh COMMAND DIR ARGS...`; its output goes to `DIR/../cluster.log` too.
    fn script(&self, command: &[&str], args: &[&str]) -> Result<String> {
        let script = test_support::repo_root().join("scripts/cluster.sh");
        let output = Command::new(&script)
            .args(command)
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("run {}", script.display()))?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&output.stderr);
        if let Some(parent) = self.dir.parent() {
            use std::io::Write as _;
            if let Ok(mut log) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(parent.join("cluster.log"))
            {
                let _ = writeln!(
                    log,
                    "$ cluster.sh {} DIR {}\n{stdout}{stderr}",
                    command.join(" "),
                    args.join(" ")
                );
            }
        }
        if !output.status.success() {
            bail!(
                "cluster.sh {} {} failed ({}):\n{stdout}{stderr}",
                command.join(" "),
                args.join(" "),
                output.status
            );
        }
        Ok(stdout)
    }

    /// A space-separated list from `DIR/cluster.env` (sh syntax: sourced by bash).
    fn env_list(&self, name: &str) -> Result<Vec<String>> {
        let output = Command::new("bash")
            .arg("-c")
            .arg(format!(". \"$1/cluster.env\" && printf '%s' \"${name}\""))
            .arg("bash")
            .arg(&self.dir)
            .output()
            .context("read cluster.env")?;
        if !output.status.success() {
            bail!("cannot read {name} from {}/cluster.env", self.dir.display());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(error) = self.script(&["stop"], &[]) {
            eprintln!("cluster.sh stop: {error:#}");
        }
    }
}
