//! Helpers shared by the CLI's integration tests: running `cairn` in a clean environment
//! with a deadline, and starting an agent process.

// Each test file uses a part of these.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `cairn` binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_cairn");

/// Every environment variable the commands read, so the caller's environment cannot change
/// what a case sees.
pub(crate) const CAIRN_ENV: &[&str] = &[
    "CAIRN_CONFIG",
    "CAIRN_LISTEN",
    "CAIRN_METRICS_LISTEN",
    "CAIRN_OBJECT_STORE",
    "CAIRN_METADATA",
    "CAIRN_LINGER",
    "CAIRN_SEGMENT_MAX_BYTES",
    "CAIRN_AGENT_ID",
    "CAIRN_ADVERTISE",
    "CAIRN_ZONE",
    "CAIRN_AGENT_LEASE",
    "CAIRN_SHUTDOWN_TIMEOUT",
    "CAIRN_ENDPOINT",
    "CAIRN_TEST_FAULTS",
    "RUST_LOG",
];

/// `cairn` with `args` in `dir`, warnings-only logging, a clean environment plus `env`.
pub(crate) fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).current_dir(dir).env("CAIRN_LOG", "warn");
    for var in CAIRN_ENV {
        cmd.env_remove(var);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// Runs a command that must end by itself (a refusal, a client command), feeding it
/// `stdin`; kills it and fails if it runs past a minute (a refused start that listens
/// instead would never end).
pub(crate) fn run_with(mut cmd: Command, stdin: &str) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not exit within a minute");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_end(&mut stdout)
        .unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_end(&mut stderr)
        .unwrap();
    Output {
        status,
        stdout,
        stderr,
    }
}

/// An agent started by a test; killed when dropped.
pub(crate) struct Agent {
    child: Child,
    /// The agent's gRPC endpoint.
    pub(crate) endpoint: String,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `cairn agent --listen 127.0.0.1:0 args` in `dir`, once it says it listens.
pub(crate) fn start_agent(dir: &Path, args: &[&str]) -> Agent {
    start_agent_with_env(dir, args, &[])
}

/// [`start_agent`] with extra environment variables.
pub(crate) fn start_agent_with_env(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Agent {
    let mut all = vec!["agent", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let mut child = command(dir, &all, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let endpoint = line
        .trim()
        .strip_prefix("cairn agent listening on ")
        .unwrap_or_else(|| panic!("the agent did not start: `{line}`"))
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Agent { child, endpoint }
}

/// A client command against `agent`, with `stdin`.
pub(crate) fn client(agent: &Agent, args: &[&str], stdin: &str) -> Output {
    let dir = std::env::temp_dir();
    run_with(
        command(&dir, args, &[("CAIRN_ENDPOINT", agent.endpoint.as_str())]),
        stdin,
    )
}
