//! Secrets never leak: an agent run with a PostgreSQL password in its metadata URL and an S3
//! secret key in its environment, requiring a bearer token of its clients, at the most
//! verbose log level, through token issue and listing, produce, consume, a wrong token,
//! `cairn status`, `cairn cluster` and /metrics, and agents that fail to start on a wrong
//! metadata store or object store: none of their logs, outputs, metrics or error messages
//! holds any of the secrets.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};

use anyhow::Context;
use cairn_metadata::conformance::TempPostgres;
use cairn_tests::{cairn_bin, s3_env, s3_url, temp_dir};

const PG_SECRET: &str = "pg-Secret-7f3a91";
const S3_SECRET: &str = "s3-Secret-b20c44";

/// `url` with `password` as the password of its user.
fn with_password(url: &str, password: &str) -> anyhow::Result<String> {
    let rest = url
        .strip_prefix("postgres://")
        .context("a postgres:// URL")?;
    let (user, host) = rest.split_once('@').context("a user in the URL")?;
    let user = user.split(':').next().unwrap_or(user);
    Ok(format!("postgres://{user}:{password}@{host}"))
}

/// The S3 environment of the tests with `secret` as the secret key.
fn s3_env_with(secret: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = s3_env()?
        .into_iter()
        .filter(|(k, _)| k != "AWS_SECRET_ACCESS_KEY")
        .collect();
    env.push(("AWS_SECRET_ACCESS_KEY".into(), secret.into()));
    Ok(env)
}

/// A child process killed (and reaped) when dropped, so a failed test leaves none behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(addr)?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// `cairn agent` on a free loopback port over these stores.
fn agent_args<'a>(objects: &'a str, metadata: &'a str) -> [&'a str; 7] {
    [
        "agent",
        "--listen",
        "127.0.0.1:0",
        "--object-store",
        objects,
        "--metadata",
        metadata,
    ]
}

/// Runs `cairn` with `args` and `env`; returns its stdout and stderr together.
fn cairn(args: &[&str], env: &[(String, String)]) -> anyhow::Result<String> {
    let mut cmd = Command::new(cairn_bin()?);
    cmd.args(args).env("CAIRN_LOG", "trace");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output()?;
    Ok(format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    ))
}

/// The token issued in the test (its secret part, and the whole token), once known.
static TOKEN_SECRETS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();

fn assert_clean(what: &str, text: &str) {
    let tokens = TOKEN_SECRETS.get().cloned().unwrap_or_default();
    let all = [PG_SECRET, S3_SECRET]
        .into_iter()
        .chain(tokens.iter().map(String::as_str).filter(|t| !t.is_empty()));
    for secret in all {
        assert!(
            !text.contains(secret),
            "{what} shows a secret:\n{}",
            text.lines()
                .filter(|l| l.contains(secret))
                .take(5)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_logs_status_metrics_or_errors() -> anyhow::Result<()> {
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let url = pg
        .create_database("secrets")
        .await
        .map_err(anyhow::Error::msg)?;
    let metadata = with_password(&url, PG_SECRET)?;
    let env = s3_env_with(S3_SECRET)?;
    let dir = temp_dir()?;
    let log_path = dir.path().join("agent.log");
    let metrics = format!("127.0.0.1:{}", free_port()?);

    // An agent logging everything it can.
    let mut cmd = Command::new(cairn_bin()?);
    cmd.args(agent_args(&s3_url("secrets"), &metadata))
        .args(["--metrics-listen", &metrics])
        .args(["--require-auth", "--super-user", "admin"])
        .env("CAIRN_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log_path)?);
    for (k, v) in &env {
        cmd.env(k, v);
    }
    let mut agent = Killed(cmd.spawn()?);
    let mut first = String::new();
    BufReader::new(agent.0.stdout.take().context("stdout")?).read_line(&mut first)?;
    let endpoint = first
        .trim()
        .strip_prefix("cairn agent listening on ")
        .with_context(|| format!("the agent did not start: {first}"))?
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();

    // The first token, issued straight into the metadata store (as a new secure cluster's
    // administrator does), and used by every command below through CAIRN_TOKEN.
    let mut seen = String::new();
    let issued = Command::new(cairn_bin()?)
        .args([
            "token",
            "create",
            "--principal",
            "admin",
            "--metadata",
            &metadata,
        ])
        .env("CAIRN_LOG", "trace")
        .output()?;
    anyhow::ensure!(issued.status.success(), "token create failed");
    let token = String::from_utf8(issued.stdout)?.trim().to_string();
    // `cairn_<id>_<secret>`: the id is hex, the secret base64url (which may hold `_`).
    let secret = token.splitn(3, '_').nth(2).unwrap_or_default().to_string();
    anyhow::ensure!(secret.len() > 20, "no token secret in `{token}`");
    TOKEN_SECRETS.get_or_init(|| [secret, token.clone()]);
    seen += &String::from_utf8_lossy(&issued.stderr);
    let mut env = env;
    env.push(("CAIRN_TOKEN".into(), token.clone()));
    let e = ["--endpoint", endpoint.as_str()];
    let run = |args: &[&str]| cairn(&[args, &e[..]].concat(), &env);
    let listed = run(&["token", "list"])?;
    assert!(listed.contains("admin"), "{listed}");
    seen += &listed;
    // A wrong secret for the same id is refused without echoing what was sent.
    let wrong = format!("{}{}", &token[..token.len() - 4], "AAAA");
    let mut wrong_env = env.clone();
    wrong_env.retain(|(k, _)| k != "CAIRN_TOKEN");
    wrong_env.push(("CAIRN_TOKEN".into(), wrong.clone()));
    let refused = cairn(&["status", "--endpoint", &endpoint], &wrong_env)?;
    assert!(refused.contains("unknown or revoked"), "{refused}");
    assert!(!refused.contains(&wrong[wrong.len() - 20..]), "{refused}");
    seen += &refused;
    seen += &run(&["topic", "create", "s", "--partitions", "2"])?;
    let mut produce = Command::new(cairn_bin()?)
        .args(["produce", "s", "--endpoint", &endpoint])
        .env("CAIRN_LOG", "trace")
        .env("CAIRN_TOKEN", &token)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    produce
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"one\ntwo\nthree\n")?;
    let out = produce.wait_with_output()?;
    anyhow::ensure!(out.status.success(), "produce failed");
    seen += &String::from_utf8_lossy(&out.stderr);
    let consumed = run(&["consume", "s", "--from-beginning"])?;
    assert!(consumed.contains("three"), "{consumed}");
    seen += &consumed;
    let status = run(&["status"])?;
    assert!(status.contains("object store"), "{status}");
    seen += &status;
    seen += &run(&["cluster"])?;
    let scraped = http_get(&metrics, "/metrics")?;
    assert!(scraped.contains("cairn_"), "{scraped}");
    assert_clean("/metrics", &scraped);
    assert_clean("the CLI's output", &seen);

    // Agents that cannot start: a metadata store that refuses, an object store that does not
    // answer. Their errors name the store, not its secrets.
    let unreachable_pg = format!("postgres://nobody:{PG_SECRET}@127.0.0.1:1/nothing");
    let bad_pg = cairn(&agent_args(&s3_url("secrets"), &unreachable_pg), &env)?;
    assert!(bad_pg.contains("127.0.0.1:1"), "{bad_pg}");
    assert_clean("an agent on an unreachable PostgreSQL", &bad_pg);
    let mut unreachable_s3 = env.clone();
    unreachable_s3.retain(|(k, _)| k != "AWS_ENDPOINT_URL");
    unreachable_s3.push(("AWS_ENDPOINT_URL".into(), "http://127.0.0.1:1".into()));
    // The object store is probed at start (ten tries), so this agent exits with an error.
    let bad_s3 = cairn(&agent_args("s3://nowhere/x", &metadata), &unreachable_s3)?;
    assert!(bad_s3.contains("nowhere"), "{bad_s3}");
    assert_clean("an agent on an unreachable S3", &bad_s3);

    drop(agent);
    let log = std::fs::read_to_string(&log_path)?;
    assert!(
        log.contains("registered in the cluster") && log.lines().count() > 100,
        "the agent's trace log was not captured ({} lines)",
        log.lines().count()
    );
    // The metadata URL is logged (so the check above had something to miss), redacted.
    assert!(
        log.contains(":***@127.0.0.1"),
        "the metadata URL is not in the log"
    );
    assert_clean("the agent's trace log", &log);
    eprintln!(
        "secrets: {} log lines, {} bytes of CLI output and {} of metrics checked",
        log.lines().count(),
        seen.len(),
        scraped.len()
    );
    Ok(())
}
