//! Graceful shutdown: a produce waiting for its segment is flushed, committed and answered
//! before the agent exits, and the record survives into the next agent; calls that would
//! outlive it (a gRPC health watch, a long-poll) do not keep it from exiting.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_agent::AgentSettings;
use cairn_client::{Admin, TopicOptions};
use cairn_proto::v2::consumer_service_client::ConsumerServiceClient;
use cairn_proto::v2::{self, Codec, producer_service_client::ProducerServiceClient};
use cairn_tests::{AgentProcess, InProcessAgent, file_agent_args, raw_batch, read_all, temp_dir};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

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

/// A health watch never ends by itself and a long-poll may wait 30 s: on SIGTERM the
/// watcher is told NOT_SERVING and its stream ends, the long-poll is cut off after
/// `--shutdown-timeout`, and the process exits cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_health_watches_and_long_polls() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let mut args = file_agent_args(dir.path());
    args.extend(["--shutdown-timeout".to_string(), "1s".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut agent = AgentProcess::start(&args, &[])?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("quiet", 1, TopicOptions::default())
        .await?;
    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    let first = watch.message().await?.expect("a first status");
    assert_eq!(first.status, ServingStatus::Serving as i32);
    // A fetch waiting at the high watermark of an empty partition, up to 30 s.
    let mut consumer = ConsumerServiceClient::new(channel);
    let long_poll = tokio::spawn(async move {
        consumer
            .fetch(v2::FetchRequest {
                topic: "quiet".into(),
                partition: 0,
                offset: 0,
                max_bytes: None,
                max_wait_ms: 30_000,
            })
            .await
    });
    // The fetch is waiting once the agent counts it.
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    while admin.agent_status().await?.waiting_fetches == 0 {
        assert!(!long_poll.is_finished(), "the long-poll ended early");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    agent.terminate()?;
    // Bounded waits, so an agent that keeps the watch open fails the test, not hangs it.
    let bound = Duration::from_secs(20);
    let next = tokio::time::timeout(bound, watch.message())
        .await
        .expect("NOT_SERVING within 20 s of SIGTERM")?
        .expect("a status before the end");
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Then the stream ends (or its connection closes with the process).
    let after = tokio::time::timeout(bound, watch.message())
        .await
        .expect("the watch ends within 20 s of SIGTERM");
    assert!(
        matches!(after, Ok(None) | Err(_)),
        "the watch went on: {after:?}"
    );
    // Well inside the long-poll's 30 s: only the shutdown timeout can end it this early.
    let exit = agent.wait_for_exit(Duration::from_secs(20)).await?;
    assert!(exit.success(), "agent exited with {exit}");
    let _ = long_poll.await?;
    Ok(())
}
