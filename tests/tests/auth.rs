//! Authentication with bearer tokens, end to end on two agent processes sharing one
//! metadata store: the first token is issued directly in the store, the others through an
//! agent; a call without a credential, with a malformed, tampered, revoked or expired
//! token is refused UNAUTHENTICATED on every agent; every refusal and every token change
//! is in the audit log; no token's secret is in any log or listing.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use cairn_client::{Admin, Cluster, Security};
use cairn_tests::{AgentProcess, cairn_bin, file_agent_args, temp_dir};

/// Runs `cairn` with `args`, `CAIRN_TOKEN` = `token` when given; (success, stdout, stderr).
fn cairn(args: &[&str], token: Option<&str>) -> anyhow::Result<(bool, String, String)> {
    let mut cmd = Command::new(cairn_bin()?);
    cmd.args(args).env_remove("CAIRN_TOKEN");
    if let Some(t) = token {
        cmd.env("CAIRN_TOKEN", t);
    }
    let out = cmd.output()?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// The principal `token` is taken for by the agent at `endpoint`, or the refusal.
async fn whoami(endpoint: &str, token: Option<&str>) -> Result<String, tonic::Status> {
    let mut security = Security::default();
    if let Some(t) = token {
        security = security
            .with_token(t)
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
    }
    let agent = Cluster::single(endpoint, &security)
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    match Admin::new(agent).agent_status().await {
        Ok(s) => Ok(s.caller_principal),
        Err(cairn_client::ClientError::Status(s)) => Err(s),
        Err(e) => Err(tonic::Status::unknown(e.to_string())),
    }
}

/// Waits up to 30 s until `token` is refused by the agent at `endpoint`; how long it took.
async fn until_refused(endpoint: &str, token: &str, why: &str) -> Duration {
    let start = Instant::now();
    loop {
        match whoami(endpoint, Some(token)).await {
            Err(s) if s.code() == tonic::Code::Unauthenticated => {
                assert!(s.message().contains(why), "{}", s.message());
                return start.elapsed();
            }
            other => {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "still {other:?} after 30s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// The secret of `cairn_<id>_<secret>` (the id is hex; the secret is base64url and may hold
/// `_` itself).
fn secret(token: &str) -> &str {
    token.splitn(3, '_').nth(2).unwrap_or(token)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn tokens_authenticate_and_revocation_reaches_every_agent() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let d = dir.path();
    let mut agents = Vec::new();
    for (i, id) in ["a1", "a2"].iter().enumerate() {
        let mut args = file_agent_args(d);
        // Super-users, so that authentication is what is tested here (acl.rs tests ACLs).
        args.extend(
            [
                "--require-auth",
                "--super-user",
                "admin,alice,bob",
                "--agent-id",
                id,
            ]
            .map(String::from),
        );
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = d.join(format!("{id}.log"));
        agents.push((
            AgentProcess::start_logging(&format!("127.0.0.{}:0", i + 1), &args, &[], &log)?,
            log,
        ));
    }
    let e1 = agents[0].0.endpoint.clone();
    let e2 = agents[1].0.endpoint.clone();
    let metadata = format!("sqlite:{}", d.join("meta.sqlite").display());

    // No credential: refused, saying what to give.
    let (ok, _, err) = cairn(&["topic", "list", "--endpoint", &e1], None)?;
    assert!(!ok);
    assert!(err.contains("requires authentication"), "{err}");
    let refused = whoami(&e2, None).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    // The first token, written in the metadata store directly.
    let (ok, admin, err) = cairn(
        &[
            "token",
            "create",
            "--principal",
            "admin",
            "--metadata",
            &metadata,
        ],
        None,
    )?;
    assert!(ok, "{err}");
    let admin = admin.trim().to_string();
    assert!(admin.starts_with("cairn_"), "{admin}");
    assert!(err.contains("cannot be shown again"), "{err}");
    // A token an agent does not know yet makes it read the table again: it works at once.
    assert_eq!(whoami(&e2, Some(&admin)).await.unwrap(), "admin");
    assert_eq!(whoami(&e1, Some(&admin)).await.unwrap(), "admin");

    // Through an agent, with the admin's token: a token for alice.
    let (ok, alice, err) = cairn(
        &[
            "token",
            "create",
            "--principal",
            "alice",
            "--expires",
            "1h",
            "--endpoint",
            &e1,
        ],
        Some(&admin),
    )?;
    assert!(ok, "{err}");
    let alice = alice.trim().to_string();
    let (ok, _, err) = cairn(
        &["topic", "create", "orders", "--endpoint", &e1],
        Some(&admin),
    )?;
    assert!(ok, "{err}");
    // Issued through a1, good at once on a2.
    assert_eq!(whoami(&e2, Some(&alice)).await.unwrap(), "alice");
    // The listing names both, and holds no secret.
    let (ok, list, err) = cairn(&["token", "list", "--endpoint", &e2], Some(&alice))?;
    assert!(ok, "{err}");
    assert!(list.contains("alice") && list.contains("admin"), "{list}");
    assert!(!list.contains(secret(&alice)) && !list.contains(secret(&admin)));

    // Malformed and tampered tokens.
    let malformed = whoami(&e1, Some("not-a-token")).await.unwrap_err();
    assert_eq!(malformed.code(), tonic::Code::Unauthenticated);
    assert!(malformed.message().contains("malformed"), "{malformed:?}");
    let mut tampered = alice.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == 'A' { 'B' } else { 'A' });
    let wrong = whoami(&e1, Some(&tampered)).await.unwrap_err();
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("unknown or revoked"), "{wrong:?}");

    // Revoked through one agent: refused by both.
    let id = alice
        .strip_prefix("cairn_")
        .and_then(|r| r.split('_').next())
        .unwrap()
        .to_string();
    let (ok, _, err) = cairn(&["token", "revoke", &id, "--endpoint", &e1], Some(&admin))?;
    assert!(ok, "{err}");
    let on_a1 = until_refused(&e1, &alice, "unknown or revoked").await;
    let on_a2 = until_refused(&e2, &alice, "unknown or revoked").await;
    eprintln!("revoked token refused on a1 after {on_a1:?}, on a2 after {on_a2:?} more");
    let (ok, _, err) = cairn(&["token", "revoke", &id, "--endpoint", &e1], Some(&admin))?;
    assert!(
        !ok && err.contains(&format!("no token has id {id}")),
        "{err}"
    );

    // Expiry, judged on the store's clock.
    let (ok, brief, err) = cairn(
        &[
            "token",
            "create",
            "--principal",
            "bob",
            "--expires",
            "6s",
            "--endpoint",
            &e2,
        ],
        Some(&admin),
    )?;
    assert!(ok, "{err}");
    let brief = brief.trim().to_string();
    // Good at once on the other agent, and refused when it expires.
    assert_eq!(whoami(&e1, Some(&brief)).await.unwrap(), "bob");
    let expired = until_refused(&e1, &brief, "expired").await;
    eprintln!("a 6s token was refused as expired {expired:?} after it first worked there");

    // The audit log: refusals with the peer's address, and the token changes by whom.
    let mut logs = String::new();
    for (a, log) in agents {
        a.stop()?;
        logs += &read(&log);
    }
    for line in logs.lines().filter(|l| l.contains("audit")).take(6) {
        eprintln!("audit: {line}");
    }
    for needle in [
        "cairn::audit",
        "refused: not authenticated",
        "peer=127.0.0.1:",
        "token created",
        "principal=admin",
        "token revoked",
    ] {
        assert!(logs.contains(needle), "the agents' logs lack {needle:?}");
    }
    for t in [&admin, &alice, &brief] {
        assert!(!logs.contains(secret(t)), "a token's secret is in a log");
    }
    Ok(())
}
