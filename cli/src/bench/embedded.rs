//! The agent of `--embedded`: a child `cairn agent` process with its own SQLite metadata in
//! a temporary directory, stopped with SIGTERM after the run.

use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::io::AsyncBufReadExt;

use super::Common;

/// A `cairn agent` child process for the run.
pub(super) struct Embedded {
    pub(super) child: tokio::process::Child,
    pub(super) endpoint: String,
    /// Its Kafka listener.
    pub(super) kafka: Option<String>,
    pub(super) store_url: String,
    pub(super) dir: tempfile::TempDir,
}

impl Embedded {
    /// Starts the agent and waits for the line that says where it listens.
    pub(super) async fn start(c: &Common) -> anyhow::Result<Embedded> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let store_url = match &c.object_store {
            Some(u) => u.clone(),
            None => format!("file://{}", dir.path().join("objects").display()),
        };
        let exe = std::env::current_exe().context("cannot find the cairn binary")?;
        let mut child =
            tokio::process::Command::new(exe)
                .args([
                    "agent",
                    "--listen",
                    "127.0.0.1:0",
                    "--metrics-listen",
                    "127.0.0.1:0",
                ])
                .args(["--object-store", &store_url])
                .arg("--metadata")
                .arg(c.metadata.clone().unwrap_or_else(|| {
                    format!("sqlite:{}", dir.path().join("meta.sqlite").display())
                }))
                .args([
                    "--linger",
                    &humantime::format_duration(c.linger).to_string(),
                ])
                .args(["--segment-max-bytes", &c.segment_max_bytes.to_string()])
                .env("CAIRN_LOG", "warn")
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start the embedded agent")?;
        let stdout = child.stdout.take().context("agent has no stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .context("reading the agent's first line")?;
        let Some(endpoint) = line.trim().strip_prefix("cairn agent listening on ") else {
            bail!(
                "the embedded agent did not start (it printed `{}`)",
                line.trim()
            );
        };
        // `http://HOST:PORT`, then `(kafka HOST:PORT)` when it serves Kafka.
        let mut words = endpoint.split_whitespace();
        let endpoint = words.next().unwrap_or_default();
        let kafka = match (words.next(), words.next()) {
            (Some("(kafka"), Some(a)) => Some(a.trim_end_matches(')').to_string()),
            _ => None,
        };
        Ok(Embedded {
            child,
            kafka,
            endpoint: endpoint.to_string(),
            store_url,
            dir,
        })
    }

    /// Stops the agent (SIGTERM, then waits up to 10 s) and hands back its directory, which
    /// is deleted when dropped.
    pub(super) async fn stop(mut self) -> tempfile::TempDir {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        self.dir
    }
}
