//! The write path batches: many small produce requests become few segment PUTs.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Instant;

use cairn_agent::AgentSettings;
use cairn_client::{Admin, TopicOptions};
use cairn_proto::v2::{self, Codec, producer_service_client::ProducerServiceClient};
use cairn_tests::{InProcessAgent, raw_batch, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_small_requests_share_segments() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store =
        cairn_agent::open_object_store(&dir.path().join("objects").display().to_string(), &[])?;
    let settings = AgentSettings::default();
    let linger = settings.linger;
    let segment_max = settings.segment_max_bytes as u64;
    let agent = InProcessAgent::start(store, &dir.path().join("meta.sqlite"), settings).await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("small", 4, TopicOptions::default())
        .await?;
    let before = agent.counters.snapshot();

    const REQUESTS: usize = 10_000;
    const CONCURRENCY: usize = 200;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..CONCURRENCY {
        let mut client = ProducerServiceClient::new(channel.clone());
        tasks.push(tokio::spawn(async move {
            for i in (t..REQUESTS).step_by(CONCURRENCY) {
                let batch = raw_batch(
                    "small",
                    (i % 4) as u32,
                    [format!("request {i}")],
                    Codec::Zstd,
                    None,
                )?;
                client
                    .produce(v2::ProduceRequest {
                        batches: vec![batch],
                        atomic: false,
                    })
                    .await?;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let elapsed = started.elapsed();
    let stats = agent.counters.snapshot();
    let puts = stats.puts - before.puts;
    let bytes = stats.put_bytes - before.put_bytes;
    let bound =
        (elapsed.as_secs_f64() / linger.as_secs_f64()).ceil() as u64 + bytes / segment_max + 3;
    eprintln!("{REQUESTS} requests in {elapsed:?}: {puts} PUTs, {bytes} bytes (bound {bound})");
    assert!(puts >= 1, "nothing was written");
    assert!(
        puts <= bound,
        "{puts} PUTs for {REQUESTS} requests in {elapsed:?}: over the bound {bound}"
    );
    assert!(puts * 10 < REQUESTS as u64, "PUTs are not batched: {puts}");

    let described = Admin::new(channel).describe_topic("small").await?;
    let total: i64 = described.partitions.iter().map(|p| p.high_watermark).sum();
    assert_eq!(total, REQUESTS as i64);
    agent.stop().await?;
    Ok(())
}
