//! Many producers against real agent processes, read back exactly; restart; two agents
//! sharing one SQLite file and one bucket.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_client::{
    Admin, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord, TopicOptions,
};
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

/// A consumer reading several partitions, one of which fails (here: its position was
/// deleted under it), still returns what the others read: their positions moved past those
/// records, so an error in their place would skip them for good (and a group member would
/// commit past them). The failure comes with the next poll that reads nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_partition_does_not_swallow_the_others_records() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = AgentProcess::on_files(dir.path())?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin
        .create_topic("mixed", 2, TopicOptions::default())
        .await?;
    let producer = Producer::new(channel.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for partition in 0..2 {
        for i in 0..5 {
            let record = ProducerRecord::new("mixed", format!("p{partition}-{i}"));
            deliveries.push(producer.send(record.partition(partition)).await?);
        }
    }
    for d in deliveries {
        d.await?;
    }
    let mut consumer = Consumer::new(channel, ConsumerConfig::default());
    consumer.assign_all("mixed", Offset::Beginning).await?;
    // Partition 1 now starts at 3: reading it from 0 is out of range.
    assert_eq!(admin.delete_records("mixed", 1, 3).await?, 3);
    let got = consumer.poll(Duration::ZERO).await?;
    assert_eq!(
        got.iter()
            .map(|r| (r.partition, r.offset))
            .collect::<Vec<_>>(),
        (0..5).map(|o| (0, o)).collect::<Vec<_>>(),
        "partition 0's records come back although partition 1 failed"
    );
    let err = consumer
        .poll(Duration::ZERO)
        .await
        .expect_err("partition 1 still fails, and now nothing hides it");
    assert_eq!(err.code(), Some(tonic::Code::OutOfRange), "{err}");
    assert_eq!(
        consumer.positions(),
        [("mixed".to_string(), 0, 5), ("mixed".to_string(), 1, 0)]
    );
    agent.stop()?;
    Ok(())
}
