//! Every kind of bad input gets its exact gRPC code and a message naming the problem.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_agent::AgentSettings;
use cairn_proto::v1::{
    self, admin_client::AdminClient, consumer_client::ConsumerClient,
    producer_client::ProducerClient,
};
use cairn_tests::{InProcessAgent, temp_dir};
use prost::Message;
use tonic::Code;

fn expect<T: std::fmt::Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    code: Code,
    needle: &str,
) {
    match result {
        Ok(r) => panic!("expected {code:?} ({needle}), got {r:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "wrong code for `{}`", s.message());
            assert!(
                s.message().contains(needle),
                "message `{}` does not mention `{needle}`",
                s.message()
            );
        }
    }
}

fn batch(topic: &str, partition: u32, values: &[Vec<u8>]) -> v1::PartitionBatch {
    let records = v1::RecordBatch {
        records: values
            .iter()
            .map(|v| v1::Record {
                value: v.clone().into(),
                ..Default::default()
            })
            .collect(),
    };
    v1::PartitionBatch {
        topic: topic.into(),
        partition,
        records: records.encode_to_vec().into(),
        ..Default::default()
    }
}

fn fetch(topic: &str, partition: u32, offset: i64) -> v1::FetchRequest {
    v1::FetchRequest {
        topic: topic.into(),
        partition,
        offset,
        max_bytes: 0,
        max_wait_ms: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store =
        cairn_agent::open_object_store(&dir.path().join("objects").display().to_string(), &[])?;
    let settings = AgentSettings {
        max_record_bytes: 1000,
        max_request_bytes: 10_000,
        ..AgentSettings::default()
    };
    let agent = InProcessAgent::start(store, &dir.path().join("meta.sqlite"), settings).await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let mut admin = AdminClient::new(channel.clone());
    let mut producer = ProducerClient::new(channel.clone());
    let mut consumer = ConsumerClient::new(channel);
    let create = |name: &str, partitions: u32| v1::CreateTopicRequest {
        name: name.into(),
        partitions,
        ..Default::default()
    };

    admin.create_topic(create("orders", 2)).await?;
    producer
        .produce(v1::ProduceRequest {
            batches: vec![batch("orders", 0, &[b"one".to_vec()])],
            ..Default::default()
        })
        .await?;

    // Topics.
    expect(
        admin.create_topic(create("", 1)).await,
        Code::InvalidArgument,
        "empty",
    );
    expect(
        admin.create_topic(create("bad name!", 1)).await,
        Code::InvalidArgument,
        "bad name!",
    );
    expect(
        admin.create_topic(create("zero", 0)).await,
        Code::InvalidArgument,
        "partition",
    );
    expect(
        admin.create_topic(create("orders", 1)).await,
        Code::AlreadyExists,
        "orders",
    );
    expect(
        admin
            .describe_topic(v1::DescribeTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        "nope",
    );

    // Produce.
    let produce = |b: v1::PartitionBatch| v1::ProduceRequest {
        batches: vec![b],
        atomic: false,
    };
    expect(
        producer
            .produce(produce(batch("nope", 0, &[b"x".to_vec()])))
            .await,
        Code::NotFound,
        "nope",
    );
    expect(
        producer
            .produce(produce(batch("orders", 2, &[b"x".to_vec()])))
            .await,
        Code::InvalidArgument,
        "partition 2",
    );
    expect(
        producer
            .produce(produce(batch("orders", 0, &[vec![b'x'; 1001]])))
            .await,
        Code::ResourceExhausted,
        "record limit",
    );
    expect(
        producer
            .produce(produce(batch("orders", 0, &vec![vec![b'x'; 900]; 12])))
            .await,
        Code::ResourceExhausted,
        "request limit",
    );
    let garbage = v1::PartitionBatch {
        topic: "orders".into(),
        partition: 0,
        records: vec![0xff, 0xff, 0xff, 0x07].into(),
        ..Default::default()
    };
    expect(
        producer.produce(produce(garbage)).await,
        Code::InvalidArgument,
        "RecordBatch",
    );
    expect(
        producer.produce(produce(batch("orders", 0, &[]))).await,
        Code::InvalidArgument,
        "no records",
    );
    expect(
        producer
            .produce(v1::ProduceRequest {
                batches: vec![],
                atomic: false,
            })
            .await,
        Code::InvalidArgument,
        "at least one batch",
    );

    // Fetch.
    expect(
        consumer.fetch(fetch("nope", 0, 0)).await,
        Code::NotFound,
        "nope",
    );
    expect(
        consumer.fetch(fetch("orders", 5, 0)).await,
        Code::InvalidArgument,
        "partition 5",
    );
    expect(
        consumer.fetch(fetch("orders", 0, -1)).await,
        Code::InvalidArgument,
        "-1",
    );
    expect(
        consumer.fetch(fetch("orders", 0, 2)).await,
        Code::OutOfRange,
        "2",
    );
    expect(
        consumer.fetch(fetch("", 0, 0)).await,
        Code::InvalidArgument,
        "empty",
    );

    // Nothing bad became visible: only the one good record is stored.
    let d = admin
        .describe_topic(v1::DescribeTopicRequest {
            name: "orders".into(),
        })
        .await?
        .into_inner();
    let hwms: Vec<i64> = d.partitions.iter().map(|p| p.high_watermark).collect();
    assert_eq!(hwms, vec![1, 0]);
    agent.stop().await?;
    Ok(())
}
