//! Graceful shutdown: a produce waiting for its segment is flushed, committed and answered
//! before the agent exits, and the record survives into the next agent.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_agent::AgentSettings;
use cairn_client::{Admin, TopicOptions};
use cairn_proto::v2::{self, Codec, producer_service_client::ProducerServiceClient};
use cairn_tests::{InProcessAgent, raw_batch, read_all, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_commits_and_answers_waiting_producers() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let objects = dir.path().join("objects").display().to_string();
    let sqlite = dir.path().join("meta.sqlite");
    // A linger far longer than the test: only shutdown can seal this segment.
    let settings = AgentSettings {
        linger: Duration::from_secs(60),
        ..AgentSettings::default()
    };
    let agent = InProcessAgent::start(
        cairn_agent::open_object_store(&objects, &[])?,
        &sqlite,
        settings,
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("t", 1, TopicOptions::default())
        .await?;
    let mut client = ProducerServiceClient::new(channel);
    let request = v2::ProduceRequest {
        batches: vec![raw_batch(
            "t",
            0,
            ["in flight at shutdown"],
            Codec::Zstd,
            None,
        )?],
        atomic: false,
    };
    let produce = tokio::spawn(async move { client.produce(request).await });
    // Wait until the request sits in the open segment.
    while agent.gauges.produce_waiting() == 0 {
        assert!(
            !produce.is_finished(),
            "produce ended early: {:?}",
            produce.await
        );
        tokio::task::yield_now().await;
    }
    agent.stop().await?;
    let answer = produce.await??.into_inner();
    assert_eq!(answer.results[0].base_offset, Some(0));

    let next = InProcessAgent::start(
        cairn_agent::open_object_store(&objects, &[])?,
        &sqlite,
        AgentSettings::default(),
    )
    .await?;
    let records = read_all(&next.endpoint, "t").await?;
    assert_eq!(records.len(), 1);
    assert_eq!(
        records[0].value,
        bytes::Bytes::from("in flight at shutdown")
    );
    next.stop().await?;
    Ok(())
}
