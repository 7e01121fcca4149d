//! Segments above the multipart threshold are uploaded in parts to S3 and read back.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_agent::AgentSettings;
use cairn_client::{Admin, Codec, TopicOptions};
use cairn_proto::v2::{self, producer_service_client::ProducerServiceClient};
use cairn_tests::{InProcessAgent, raw_batch, read_all, s3_store, s3_url, temp_dir};
use rand::{RngCore, SeedableRng};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_segment_uses_multipart_upload() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store = s3_store(&s3_url("multipart"))?;
    let settings = AgentSettings {
        multipart_threshold: 5 << 20,
        segment_max_bytes: 64 << 20,
        linger: Duration::from_millis(100),
        ..AgentSettings::default()
    };
    let agent = InProcessAgent::start(store, &dir.path().join("meta.sqlite"), settings).await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let options = TopicOptions {
        codec: Some(Codec::None),
        ..TopicOptions::default()
    };
    Admin::new(channel.clone())
        .create_topic("big", 2, options)
        .await?;

    // Ten batches of ~900 KiB of random bytes: one ~9 MiB segment.
    let mut values = Vec::new();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..10 {
        let mut v = vec![0u8; 900 << 10];
        rng.fill_bytes(&mut v);
        values.push(bytes::Bytes::from(v));
    }
    let before = agent.counters.snapshot();
    // One request, so all ten batches are in one segment.
    let batches = values
        .iter()
        .enumerate()
        .map(|(i, v)| raw_batch("big", (i % 2) as u32, [v.clone()], Codec::None, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    ProducerServiceClient::new(channel.clone())
        .max_encoding_message_size(64 << 20)
        .produce(v2::ProduceRequest {
            batches,
            atomic: false,
        })
        .await?;
    let stats = agent.counters.snapshot();
    let puts = stats.puts - before.puts;
    let bytes = stats.put_bytes - before.put_bytes;
    eprintln!("{puts} PUT requests, {bytes} bytes");
    assert!(bytes >= 10 * (900 << 10), "only {bytes} bytes uploaded");
    assert!(
        puts >= 2,
        "a ~9 MiB segment should go up in parts, saw {puts} PUT requests"
    );

    let mut read: Vec<bytes::Bytes> = read_all(&agent.endpoint, "big")
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    let mut expected = values.clone();
    read.sort();
    expected.sort();
    assert!(
        read == expected,
        "the records read back differ from those sent"
    );
    agent.stop().await?;
    Ok(())
}
