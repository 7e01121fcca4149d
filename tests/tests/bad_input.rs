//! Every kind of bad input gets its exact gRPC code, a `cairn.v2.ErrorReason` in its
//! ErrorInfo, and a message naming the problem. (Frames that fail their checks are in
//! `bad_frames.rs`.)

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_agent::AgentSettings;
use cairn_proto::v2::{
    self, Codec, ErrorReason, admin_service_client::AdminServiceClient,
    consumer_service_client::ConsumerServiceClient, producer_service_client::ProducerServiceClient,
};
use cairn_tests::{InProcessAgent, raw_batch, temp_dir, value_records};
use tonic::Code;
use tonic_types::StatusExt;

/// The ErrorInfo reason of a status, as the enum.
fn reason_of(s: &tonic::Status) -> Option<ErrorReason> {
    s.get_error_details()
        .error_info()
        .and_then(|i| ErrorReason::from_str_name(&i.reason))
}

#[track_caller]
fn expect<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    reason: ErrorReason,
    needle: &str,
) -> tonic::Status {
    match result {
        Ok(r) => panic!("expected {code:?} ({needle}), got {r:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong code for `{}`", s.message());
            assert_eq!(
                reason_of(&s),
                Some(reason),
                "wrong reason for `{}`",
                s.message()
            );
            assert!(
                s.message().contains(needle),
                "message `{}` does not mention `{needle}`",
                s.message()
            );
            s
        }
    }
}

fn fetch(topic: &str, partition: u32, offset: i64) -> v2::FetchRequest {
    v2::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: None,
        max_wait_ms: 0,
    }
}

fn one(b: v2::ProduceBatch) -> v2::ProduceRequest {
    v2::ProduceRequest {
        batches: vec![b],
        atomic: false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store =
        cairn_agent::open_object_store(&dir.path().join("objects").display().to_string(), &[])?;
    let settings = AgentSettings {
        max_batch_uncompressed_bytes: 20_000,
        max_request_bytes: 10_000,
        ..AgentSettings::default()
    };
    let agent = InProcessAgent::start(store, &dir.path().join("meta.sqlite"), settings).await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let mut admin = AdminServiceClient::new(channel.clone());
    let mut producer = ProducerServiceClient::new(channel.clone());
    let mut consumer = ConsumerServiceClient::new(channel);
    let create = |name: &str, partitions: u32| v2::CreateTopicRequest {
        name: name.into(),
        partitions,
        ..Default::default()
    };
    let batch = |topic: &str, partition: u32, values: &[&str]| {
        let values: Vec<String> = values.iter().map(|v| v.to_string()).collect();
        raw_batch(topic, partition, values, Codec::Zstd, None).unwrap()
    };

    admin.create_topic(create("orders", 2)).await?;
    producer.produce(one(batch("orders", 0, &["one"]))).await?;

    // Topics.
    let invalid = ErrorReason::InvalidArgument;
    expect(
        admin.create_topic(create("", 1)).await,
        Code::InvalidArgument,
        invalid,
        "empty",
    );
    expect(
        admin.create_topic(create("bad name!", 1)).await,
        Code::InvalidArgument,
        invalid,
        "bad name!",
    );
    expect(
        admin.create_topic(create("zero", 0)).await,
        Code::InvalidArgument,
        invalid,
        "partition",
    );
    expect(
        admin
            .create_topic(v2::CreateTopicRequest {
                codec: 9,
                ..create("codec", 1)
            })
            .await,
        Code::InvalidArgument,
        invalid,
        "unknown codec 9",
    );
    expect(
        admin
            .create_topic(v2::CreateTopicRequest {
                retention_ms: Some(0),
                ..create("keep", 1)
            })
            .await,
        Code::InvalidArgument,
        invalid,
        "retention_ms must be positive",
    );
    expect(
        admin.create_topic(create("orders", 1)).await,
        Code::AlreadyExists,
        ErrorReason::TopicExists,
        "orders",
    );
    expect(
        admin
            .describe_topic(v2::DescribeTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "nope",
    );

    // Produce.
    expect(
        producer.produce(one(batch("nope", 0, &["x"]))).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "nope",
    );
    expect(
        producer.produce(one(batch("orders", 2, &["x"]))).await,
        Code::InvalidArgument,
        ErrorReason::PartitionNotFound,
        "partition 2",
    );
    // Over the request limit in payload bytes as sent (uncompressed here).
    let big = raw_batch("orders", 0, vec![vec![b'x'; 900]; 12], Codec::None, None)?;
    expect(
        producer.produce(one(big)).await,
        Code::ResourceExhausted,
        ErrorReason::TooLarge,
        "request limit",
    );
    // Far over it (past the decoding limit, request limit + 1 MiB): tonic refuses it before
    // the agent sees it, and the agent answers RESOURCE_EXHAUSTED, not tonic's OUT_OF_RANGE.
    let huge = raw_batch("orders", 0, vec![vec![b'x'; 1 << 20]; 2], Codec::None, None)?;
    match producer.produce(one(huge)).await {
        Ok(r) => panic!("a 2 MiB request was accepted: {r:?}"),
        Err(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
            assert!(s.message().contains("too large"), "{}", s.message());
        }
    }
    // The agent never decompresses: a frame is too large when it declares more
    // uncompressed bytes than the limit, however small its payload.
    let compressible = raw_batch("orders", 0, ["x".repeat(25_000)], Codec::Zstd, None)?;
    let payload = compressible.frame.as_ref().unwrap().payload.len();
    assert!(payload < 1_000, "25,000 x's compress to {payload} bytes");
    let s = expect(
        producer.produce(one(compressible)).await,
        Code::ResourceExhausted,
        ErrorReason::TooLarge,
        "uncompressed_size",
    );
    assert!(s.message().contains("20000"), "{}", s.message());
    // A batch without a topic.
    expect(
        producer.produce(one(batch("", 0, &["x"]))).await,
        Code::InvalidArgument,
        invalid,
        "empty",
    );
    expect(
        producer
            .produce(v2::ProduceRequest {
                batches: vec![],
                atomic: false,
            })
            .await,
        Code::InvalidArgument,
        invalid,
        "at least one batch",
    );
    let mut negative = batch("orders", 0, &["x"]);
    negative.expected_offset = Some(-2);
    expect(
        producer.produce(one(negative)).await,
        Code::InvalidArgument,
        invalid,
        "expected_offset must be 0 or more",
    );
    // The frame is built by the client from whole records: a record list the client
    // cannot frame never reaches the agent.
    assert!(
        cairn_proto::build_frame(value_records(Vec::<&str>::new()), Codec::Zstd, None).is_err()
    );

    // Fetch.
    expect(
        consumer.fetch(fetch("nope", 0, 0)).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "nope",
    );
    expect(
        consumer.fetch(fetch("orders", 5, 0)).await,
        Code::InvalidArgument,
        ErrorReason::PartitionNotFound,
        "partition 5",
    );
    expect(
        consumer.fetch(fetch("orders", 0, -1)).await,
        Code::InvalidArgument,
        invalid,
        "-1",
    );
    let s = expect(
        consumer.fetch(fetch("orders", 0, 2)).await,
        Code::OutOfRange,
        ErrorReason::OffsetOutOfRange,
        "2",
    );
    let info = s.get_error_details().error_info().cloned().unwrap();
    assert_eq!(
        (
            info.metadata.get("start_offset").map(String::as_str),
            info.metadata.get("high_watermark").map(String::as_str)
        ),
        (Some("0"), Some("1")),
        "{info:?}"
    );
    expect(
        consumer.fetch(fetch("", 0, 0)).await,
        Code::InvalidArgument,
        invalid,
        "empty",
    );
    for max_bytes in [0, (64 << 20) + 1] {
        expect(
            consumer
                .fetch(v2::FetchRequest {
                    max_bytes: Some(max_bytes),
                    ..fetch("orders", 0, 0)
                })
                .await,
            Code::InvalidArgument,
            invalid,
            "max_bytes must be between 1 and",
        );
    }
    expect(
        consumer
            .fetch(v2::FetchRequest {
                max_wait_ms: 3_600_000,
                ..fetch("orders", 0, 0)
            })
            .await,
        Code::InvalidArgument,
        invalid,
        "max_wait_ms 3600000",
    );

    // Nothing bad became visible: only the one good record is stored.
    let d = admin
        .describe_topic(v2::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await?
        .into_inner();
    let hwms: Vec<i64> = d.partitions.iter().map(|p| p.high_watermark).collect();
    assert_eq!(hwms, vec![1, 0]);
    agent.stop().await?;
    Ok(())
}
