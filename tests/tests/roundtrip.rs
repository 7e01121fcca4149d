//! Many producers against real agent processes, read back exactly; restart; two agents
//! sharing one SQLite file and one bucket.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_client::{Admin, TopicOptions};
use cairn_tests::{
    AgentProcess, produce_workload, read_all, s3_env, s3_url, temp_dir, verify_exact,
};

const PARTITIONS: u32 = 8;
const PRODUCERS: usize = 4;
const RECORDS: usize = 100_000;

async fn create_topic(endpoint: &str, name: &str) -> anyhow::Result<()> {
    let admin = Admin::new(cairn_client::connect(endpoint).await?);
    admin
        .create_topic(name, PARTITIONS, TopicOptions::default())
        .await?;
    Ok(())
}

/// Produces the workload through one agent, verifies, restarts the agent over the same
/// stores and verifies again.
async fn roundtrip_and_restart(args: &[&str], env: &[(String, String)]) -> anyhow::Result<()> {
    let agent = AgentProcess::start(args, env)?;
    create_topic(&agent.endpoint, "events").await?;
    let started = std::time::Instant::now();
    let sent = produce_workload(
        std::slice::from_ref(&agent.endpoint),
        "events",
        PRODUCERS,
        RECORDS / PRODUCERS,
    )
    .await?;
    let elapsed = started.elapsed();
    eprintln!(
        "produced {} records in {elapsed:?} ({:.0} records/s)",
        sent.len(),
        sent.len() as f64 / elapsed.as_secs_f64()
    );
    // Keyed records sit where Kafka's default partitioner (murmur2) puts them.
    for s in &sent {
        assert_eq!(
            s.partition,
            cairn_proto::partition_for_key(&s.key, PARTITIONS),
            "key {:?}",
            s.key
        );
    }
    let consumed = read_all(&agent.endpoint, "events").await?;
    verify_exact(&sent, &consumed)?;
    // The agent's own account of what it took.
    let status = Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .agent_status()
        .await?;
    assert_eq!(status.topics, 1, "{status:?}");
    assert_eq!(status.produce_records, RECORDS as u64, "{status:?}");
    assert_eq!(status.metadata_backend, "sqlite", "{status:?}");
    assert!(
        status.object_puts >= 1 && status.fetch_requests >= 1,
        "{status:?}"
    );
    agent.stop()?;

    let again = AgentProcess::start(args, env)?;
    let consumed = read_all(&again.endpoint, "events").await?;
    verify_exact(&sent, &consumed)?;
    again.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_store_many_producers_then_restart() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let objects = format!("file://{}", dir.path().join("objects").display());
    let metadata = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    roundtrip_and_restart(&["--object-store", &objects, "--metadata", &metadata], &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_many_producers_then_restart() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let objects = s3_url("roundtrip");
    let metadata = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    roundtrip_and_restart(
        &["--object-store", &objects, "--metadata", &metadata],
        &s3_env()?,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_sqlite_and_bucket() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let objects = s3_url("two-agents");
    let metadata = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    let args = [
        "--object-store",
        objects.as_str(),
        "--metadata",
        metadata.as_str(),
    ];
    let env = s3_env()?;
    let a = AgentProcess::start(&args, &env)?;
    let b = AgentProcess::start(&args, &env)?;
    create_topic(&a.endpoint, "shared").await?;
    // Producers 0 and 2 talk to agent A, 1 and 3 to agent B; all write every partition.
    let endpoints = [a.endpoint.clone(), b.endpoint.clone()];
    let sent = produce_workload(&endpoints, "shared", PRODUCERS, 10_000).await?;
    // Each agent serves everything, whichever agent wrote it.
    verify_exact(&sent, &read_all(&a.endpoint, "shared").await?)?;
    verify_exact(&sent, &read_all(&b.endpoint, "shared").await?)?;
    let through_a = sent.iter().filter(|s| s.producer % 2 == 0).count();
    assert_eq!(through_a, 20_000, "both agents took writes");
    a.stop()?;
    b.stop()?;
    Ok(())
}
