//! A failed PUT is reported as UNAVAILABLE, leaves nothing visible, and a retry succeeds.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cairn_agent::{AgentSettings, FaultyStore};
use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicOptions};
use cairn_proto::v2::{self, Codec, ErrorReason, producer_service_client::ProducerServiceClient};
use cairn_tests::{InProcessAgent, raw_batch, read_all, temp_dir};
use tonic_types::StatusExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_put_is_unavailable_and_invisible_then_retry_succeeds() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let inner =
        cairn_agent::open_object_store(&dir.path().join("objects").display().to_string(), &[])?;
    let faulty = Arc::new(FaultyStore::new(inner));
    let agent = InProcessAgent::start(
        faulty.clone(),
        &dir.path().join("meta.sqlite"),
        AgentSettings::default(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin.create_topic("t", 1, TopicOptions::default()).await?;

    let request = v2::ProduceRequest {
        batches: vec![raw_batch("t", 0, ["first"], Codec::Zstd, None)?],
        atomic: false,
    };
    let mut raw = ProducerServiceClient::new(channel.clone());
    faulty.fail_next_puts(1);
    let err = raw
        .produce(request.clone())
        .await
        .expect_err("the PUT was made to fail");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert!(
        err.message().contains("injected PUT failure"),
        "{}",
        err.message()
    );
    assert_eq!(
        err.get_error_details()
            .error_info()
            .map(|i| i.reason.as_str()),
        Some(ErrorReason::StorageUnavailable.as_str_name()),
        "{}",
        err.message()
    );

    let d = admin.describe_topic("t").await?;
    assert_eq!(
        d.partitions[0].high_watermark, 0,
        "a failed PUT must commit nothing"
    );
    assert!(read_all(&agent.endpoint, "t").await?.is_empty());

    // The same request again succeeds, at offset 0.
    let ok = raw.produce(request).await?.into_inner();
    assert_eq!(ok.results[0].base_offset, Some(0));

    // The SDK producer retries on its own: two failed PUTs, then success.
    faulty.fail_next_puts(2);
    let producer = Producer::new(channel, ProducerConfig::default());
    let delivery = producer.send(ProducerRecord::new("t", "second")).await?;
    let meta = delivery.await?;
    assert_eq!(meta.offset, 1);
    producer.close().await?;

    let values: Vec<_> = read_all(&agent.endpoint, "t")
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(
        values,
        vec![bytes::Bytes::from("first"), bytes::Bytes::from("second")]
    );
    agent.stop().await?;
    Ok(())
}
