//! Long-polling at the high watermark: 10,000 fetches wait on one agent without a thread,
//! a transaction or a file handle each, other calls are answered meanwhile, and one commit
//! per partition wakes them all; a commit through agent A wakes a fetch waiting on agent B
//! (two agents over one throwaway PostgreSQL), and the wake-up latency is printed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_agent::{AgentSettings, FaultSpec};
use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicOptions};
use cairn_metadata::conformance::TempPostgres;
use cairn_metadata::{Limits, PostgresKv};
use cairn_proto::v2::{self, consumer_service_client::ConsumerServiceClient};
use cairn_tests::{InProcessAgent, file_store, temp_dir};

const WAITERS: usize = 10_000;
const PARTITIONS: u32 = 10;
/// gRPC connections the waiters spread over (an HTTP/2 connection carries at most a few
/// hundred concurrent streams).
const CONNECTIONS: usize = 64;

/// Open file descriptors of this process (the agent runs inside it).
fn open_files() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_waiting_fetches_cost_no_thread_or_handle_each() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        AgentSettings {
            linger: Duration::from_millis(5),
            ..AgentSettings::default()
        },
    )
    .await?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("waits", PARTITIONS, TopicOptions::default())
        .await?;
    let mut channels = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(ConsumerServiceClient::new(
            cairn_client::connect(&agent.endpoint).await?,
        ));
    }
    let files_before = open_files();
    let mut waiters = Vec::with_capacity(WAITERS);
    for i in 0..WAITERS {
        let mut client = channels[i % CONNECTIONS].clone();
        waiters.push(tokio::spawn(async move {
            client
                .fetch(v2::FetchRequest {
                    topic: "waits".into(),
                    partition: (i as u32) % PARTITIONS,
                    offset: 0,
                    max_bytes: None,
                    max_wait_ms: 30_000,
                })
                .await
                .map(|r| r.into_inner())
        }));
    }
    // Every fetch is parked at the high watermark (a gauge the test can only read).
    let deadline = Instant::now() + Duration::from_secs(60);
    while agent.metadata.waiting_fetches() < WAITERS {
        assert!(
            Instant::now() < deadline,
            "only {} of {WAITERS} fetches are waiting after 60s",
            agent.metadata.waiting_fetches()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let files_waiting = open_files();
    eprintln!(
        "{WAITERS} fetches waiting; open files {files_before} before, {files_waiting} while waiting"
    );
    assert!(
        files_waiting < files_before + 100,
        "waiting fetches hold file handles: {files_before} -> {files_waiting}"
    );

    // Other calls are answered while they wait.
    let described = admin.describe_topic("waits").await?;
    assert_eq!(described.partitions.len(), PARTITIONS as usize);
    let producer = Producer::new(
        cairn_client::connect(&agent.endpoint).await?,
        ProducerConfig::default(),
    );
    let mut acks = Vec::new();
    for p in 0..PARTITIONS {
        acks.push(
            producer
                .send(ProducerRecord::new("waits", format!("wake {p}")).partition(p))
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    producer.close().await?;

    // One commit per partition wakes every waiter of that partition, with the record.
    for w in waiters {
        let r = w.await??;
        assert_eq!(r.high_watermark, 1);
        assert_eq!(r.frames.len(), 1, "the waiter got the record it waited for");
    }
    assert_eq!(agent.metadata.waiting_fetches(), 0);
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_through_one_agent_wakes_a_fetch_waiting_on_another() -> anyhow::Result<()> {
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let url = pg
        .create_database("wake")
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = temp_dir()?;
    let mut agents = Vec::new();
    for _ in 0..2 {
        let kv = Arc::new(PostgresKv::open(&url, Limits::default()).await?);
        agents.push(
            InProcessAgent::start_with(
                file_store(dir.path())?,
                kv,
                AgentSettings {
                    linger: Duration::from_millis(5),
                    ..AgentSettings::default()
                },
                FaultSpec::default(),
            )
            .await?,
        );
    }
    let (a, b) = (&agents[0], &agents[1]);
    Admin::new(cairn_client::connect(&a.endpoint).await?)
        .create_topic("wake", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(
        cairn_client::connect(&a.endpoint).await?,
        ProducerConfig {
            linger: Duration::from_millis(1),
            ..ProducerConfig::default()
        },
    );
    let reader = ConsumerServiceClient::new(cairn_client::connect(&b.endpoint).await?);
    let mut wake_ms = Vec::new();
    for round in 0..50i64 {
        let mut reader = reader.clone();
        let waiting = tokio::spawn(async move {
            let r = reader
                .fetch(v2::FetchRequest {
                    topic: "wake".into(),
                    partition: 0,
                    offset: round,
                    max_bytes: None,
                    max_wait_ms: 10_000,
                })
                .await;
            (r.map(|r| r.into_inner()), Instant::now())
        });
        // The fetch must be parked on B before the commit.
        let deadline = Instant::now() + Duration::from_secs(30);
        while b.metadata.waiting_fetches() == 0 {
            assert!(Instant::now() < deadline, "the fetch never waited on B");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        producer
            .send(ProducerRecord::new("wake", format!("r{round}")).partition(0))
            .await?
            .await?;
        let acked = Instant::now();
        let (r, woke) = waiting.await?;
        let r = r?;
        assert_eq!(r.high_watermark, round + 1, "B saw A's commit");
        assert_eq!(r.frames.len(), 1);
        // From A's acknowledgement (the commit is done by then) to B's answer; 0 when B
        // answered first.
        wake_ms.push(woke.saturating_duration_since(acked).as_secs_f64() * 1000.0);
    }
    producer.close().await?;
    wake_ms.sort_by(|x, y| x.total_cmp(y));
    eprintln!(
        "cross-agent wake after commit (PostgreSQL): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} rounds",
        wake_ms[wake_ms.len() / 2],
        wake_ms[(wake_ms.len() * 99 / 100).min(wake_ms.len() - 1)],
        wake_ms[wake_ms.len() - 1],
        wake_ms.len()
    );
    for a in agents {
        a.stop().await?;
    }
    Ok(())
}

/// Fetches with something to read share the agent's fetch memory (`fetch_memory_bytes`):
/// with 64 MiB of it, three fetches asking for 64 MiB each are served one at a time (the
/// others wait, counted by `fetches_waiting_for_memory`), and all three get their records.
/// The object store answers every request after 1.5 s, so the first fetch holds its
/// reservation long enough for the others to be seen waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_queue_for_the_agents_fetch_memory() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let kv = cairn_metadata::open_kv(&format!(
        "sqlite:{}",
        dir.path().join("meta.sqlite").display()
    ))
    .await?;
    let agent = InProcessAgent::start_with(
        file_store(dir.path())?,
        kv,
        AgentSettings {
            fetch_memory_bytes: 64 << 20,
            linger: Duration::from_millis(5),
            ..AgentSettings::default()
        },
        "slow_rate=1,slow_ms=1500".parse::<FaultSpec>()?,
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("big", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(channel.clone(), ProducerConfig::default());
    producer
        .send(ProducerRecord::new("big", "the only record"))
        .await?
        .await?;
    let fetch = || {
        let mut c = ConsumerServiceClient::new(channel.clone());
        tokio::spawn(async move {
            c.fetch(v2::FetchRequest {
                topic: "big".into(),
                partition: 0,
                offset: 0,
                max_bytes: Some(64 << 20),
                max_wait_ms: 0,
            })
            .await
        })
    };
    let fetches = [fetch(), fetch(), fetch()];
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.gauges.fetches_waiting_for_memory() == 0 {
        assert!(
            Instant::now() < deadline,
            "no fetch ever waited for memory: three 64 MiB fetches ran at once"
        );
        assert!(
            !fetches.iter().all(|f| f.is_finished()),
            "all fetches finished without one waiting"
        );
        // A gauge has no change notification: look again shortly.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for f in fetches {
        let answer = f.await??.into_inner();
        assert_eq!(answer.frames.len(), 1, "{answer:?}");
        assert_eq!(answer.high_watermark, 1);
    }
    assert_eq!(agent.gauges.fetches_waiting_for_memory(), 0);
    agent.stop().await?;
    Ok(())
}
