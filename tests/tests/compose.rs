//! README "Running a cluster" as written: `deploy/smoke.sh` builds the images (the cairn
//! image from this build's binary; PostgreSQL and LocalStack from a registry or, where none
//! answers, from this host's packages), starts `deploy/docker-compose.yml`, and checks that
//! the three agents register, records produced through the CLI service are all read back,
//! the compactor completes a cycle, and a killed agent's zone keeps working. The cluster is
//! removed at the end.
//!
//! Without a Docker daemon or docker-compose the test says so loudly and does not run;
//! `CAIRN_REQUIRE_DOCKER=1` (set by .ci/run) makes their absence a failure.

use std::process::Command;

use cairn_tests::{cairn_bin, workspace_root};

/// Why the compose cluster cannot run here, if it cannot.
fn missing_docker() -> Option<String> {
    let ok = |cmd: &mut Command| cmd.output().is_ok_and(|o| o.status.success());
    if !ok(Command::new("docker").arg("info")) {
        return Some("no Docker daemon answers `docker info`".into());
    }
    if !ok(Command::new("docker").args(["compose", "version"]))
        && !ok(Command::new("docker-compose").arg("version"))
    {
        return Some("neither `docker compose` nor docker-compose is installed".into());
    }
    None
}

#[test]
fn the_readme_compose_cluster_runs_and_survives_an_agent_kill() -> anyhow::Result<()> {
    if let Some(why) = missing_docker() {
        anyhow::ensure!(
            !std::env::var("CAIRN_REQUIRE_DOCKER").is_ok_and(|v| v == "1"),
            "CAIRN_REQUIRE_DOCKER=1 but {why}"
        );
        eprintln!("\n!!! NOT RUN: the compose cluster of README \"Running a cluster\": {why}.\n");
        return Ok(());
    }
    let out = Command::new("bash")
        .arg(workspace_root().join("deploy/smoke.sh"))
        .arg(cairn_bin()?)
        .output()?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stderr}");
    anyhow::ensure!(
        out.status.success(),
        "deploy/smoke.sh failed (its output is above)"
    );
    anyhow::ensure!(
        stderr.contains("all 1500 read back"),
        "deploy/smoke.sh passed without its last check"
    );
    Ok(())
}
