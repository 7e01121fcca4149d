//! Every kind of bad input gets its exact gRPC code, a `cairn.v2.ErrorReason` in its
//! ErrorInfo, and a message naming the problem, and the agent serves on. (Frames that fail
//! their checks are in `bad_frames.rs`, corrupt stored bytes in `data_loss.rs`; the
//! command line and configuration in `cli/tests/bad_config.rs`. docs/BAD_INPUT.md is the
//! table of every case.)

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use bytes::{Buf, BufMut};
use cairn_agent::AgentSettings;
use cairn_proto::v2::{
    self, Codec, ErrorReason, admin_service_client::AdminServiceClient,
    consumer_service_client::ConsumerServiceClient, group_service_client::GroupServiceClient,
    producer_service_client::ProducerServiceClient, reset_offsets_request::To,
    share_service_client::ShareServiceClient,
};
use cairn_tests::{InProcessAgent, raw_batch, read_all, temp_dir, value_records};
use tonic::Code;
use tonic::transport::Channel;
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

// ---------------------------------------------------------------------------------------
// The catalogue of bad input (issue 14, item 5): each group of cases below runs against a
// fresh agent, checks every answer (code, ErrorInfo reason, message), and ends with a
// good produce and fetch: the agent still serves, and nothing bad was written.
// docs/BAD_INPUT.md lists every case with the test that checks it. The tests at the end
// are inputs this catalogue found answered wrongly, fixed with it.

/// The raw clients of every service, over one channel.
struct Clients {
    admin: AdminServiceClient<Channel>,
    producer: ProducerServiceClient<Channel>,
    consumer: ConsumerServiceClient<Channel>,
    groups: GroupServiceClient<Channel>,
    share: ShareServiceClient<Channel>,
}

impl Clients {
    async fn connect(endpoint: &str) -> anyhow::Result<Clients> {
        let channel = cairn_client::connect(endpoint).await?;
        Ok(Clients {
            admin: AdminServiceClient::new(channel.clone()),
            producer: ProducerServiceClient::new(channel.clone())
                .max_encoding_message_size(usize::MAX),
            consumer: ConsumerServiceClient::new(channel.clone())
                .max_decoding_message_size(256 << 20),
            groups: GroupServiceClient::new(channel.clone()),
            share: ShareServiceClient::new(channel),
        })
    }

    /// The high watermarks of `orders`.
    async fn hwms(&mut self) -> anyhow::Result<Vec<i64>> {
        let d = self
            .admin
            .describe_topic(v2::DescribeTopicRequest {
                name: "orders".into(),
            })
            .await?
            .into_inner();
        Ok(d.partitions.iter().map(|p| p.high_watermark).collect())
    }

    /// The proof that closes every group of cases: `orders` still holds exactly what it
    /// held before (`before`), and a good produce is acknowledged and readable.
    async fn still_serves(&mut self, before: &[i64]) -> anyhow::Result<()> {
        assert_eq!(self.hwms().await?, before, "bad input changed `orders`");
        let r = self
            .producer
            .produce(one(raw_batch(
                "orders",
                1,
                ["still here"],
                Codec::Zstd,
                None,
            )?))
            .await?
            .into_inner();
        assert_eq!(r.results[0].base_offset, Some(before[1]), "{r:?}");
        let fetched = self
            .consumer
            .fetch(fetch("orders", 1, before[1]))
            .await?
            .into_inner();
        assert_eq!(fetched.high_watermark, before[1] + 1);
        assert_eq!(fetched.frames.len(), 1, "{fetched:?}");
        Ok(())
    }
}

/// Agent settings with small request limits, so size limits are cheap to reach.
fn small_limits() -> AgentSettings {
    AgentSettings {
        max_batch_uncompressed_bytes: 20_000,
        max_request_bytes: 10_000,
        linger: Duration::from_millis(5),
        ..AgentSettings::default()
    }
}

/// An agent (`settings`) over a `file://` store in a fresh directory, with topic `orders`
/// of two partitions holding one record in partition 0.
async fn agent_with_orders(
    settings: AgentSettings,
) -> anyhow::Result<(tempfile::TempDir, InProcessAgent, Clients)> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        cairn_tests::file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        settings,
    )
    .await?;
    let mut c = Clients::connect(&agent.endpoint).await?;
    c.admin
        .create_topic(v2::CreateTopicRequest {
            name: "orders".into(),
            partitions: 2,
            ..Default::default()
        })
        .await?;
    c.producer
        .produce(one(raw_batch("orders", 0, ["one"], Codec::Zstd, None)?))
        .await?;
    Ok((dir, agent, c))
}

fn create(name: &str, partitions: u32) -> v2::CreateTopicRequest {
    v2::CreateTopicRequest {
        name: name.into(),
        partitions,
        ..Default::default()
    }
}

fn join(
    group: &str,
    member: &str,
    topics: &[&str],
    session_ms: Option<u32>,
) -> v2::JoinGroupRequest {
    v2::JoinGroupRequest {
        group: group.into(),
        member_id: member.into(),
        topics: topics.iter().map(|t| t.to_string()).collect(),
        session_timeout_ms: session_ms,
    }
}

fn commit(
    group: &str,
    member: &str,
    generation: u64,
    offsets: &[(&str, u32, i64)],
) -> v2::CommitOffsetsRequest {
    v2::CommitOffsetsRequest {
        group: group.into(),
        member_id: member.into(),
        generation,
        offsets: offsets
            .iter()
            .map(|(topic, partition, offset)| v2::PartitionOffset {
                topic: topic.to_string(),
                partition: *partition,
                offset: *offset,
            })
            .collect(),
    }
}

fn acquire(group: &str, member: &str, topic: &str) -> v2::AcquireRequest {
    v2::AcquireRequest {
        group: group.into(),
        member_id: member.into(),
        topic: topic.into(),
        max_records: None,
        lease_ms: None,
        max_wait_ms: 0,
    }
}

fn settle(member: &str, partition: u32, offsets: &[i64], action: i32) -> v2::SettleRequest {
    v2::SettleRequest {
        group: "q".into(),
        member_id: member.into(),
        topic: "orders".into(),
        partition,
        offsets: offsets.to_vec(),
        action,
        lease_ms: None,
    }
}

fn reset(group: &str, topic: &str, to: Option<To>) -> v2::ResetOffsetsRequest {
    v2::ResetOffsetsRequest {
        group: group.into(),
        topic: topic.into(),
        to,
    }
}

/// The ErrorInfo metadata value `key` of a status.
fn info_value(s: &tonic::Status, key: &str) -> Option<String> {
    s.get_error_details()
        .error_info()
        .and_then(|i| i.metadata.get(key).cloned())
}

/// Names that break the naming rules (1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or
/// `..`), each with the part of the refusal that names the rule it breaks.
fn bad_names() -> Vec<(String, &'static str)> {
    vec![
        (".".into(), "`.` and `..` are reserved"),
        ("..".into(), "`.` and `..` are reserved"),
        ("a/b".into(), "character '/' is not allowed"),
        ("../etc".into(), "character '/' is not allowed"),
        ("a\nb".into(), r"character '\n' is not allowed"),
        ("a\0b".into(), r"character '\0' is not allowed"),
        ("a\u{7f}b".into(), r"character '\u{7f}' is not allowed"),
        ("a\u{202e}b".into(), r"character '\u{202e}' is not allowed"),
        ("tést".into(), "character 'é' is not allowed"),
        ("日本語".into(), "character '日' is not allowed"),
        ("a".repeat(250), "longer than 249 characters"),
    ]
}

/// Names: the empty name and names that break the rules are refused wherever a name is
/// chosen (topics, groups, share groups, producer identities, subscriptions), each naming
/// the rule; a name of exactly 249 characters is taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_names_are_refused_naming_the_rule() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    for (name, rule) in bad_names() {
        let s = expect(
            c.admin.create_topic(create(&name, 1)).await,
            Code::InvalidArgument,
            invalid,
            "invalid topic name",
        );
        assert!(s.message().contains(rule), "{name:?}: {}", s.message());
        let s = expect(
            c.groups
                .join_group(join("g", "", &[name.as_str()], None))
                .await,
            Code::InvalidArgument,
            invalid,
            "invalid topic name",
        );
        assert!(s.message().contains(rule), "{name:?}: {}", s.message());
        expect(
            c.groups
                .join_group(join(&name, "", &["orders"], None))
                .await,
            Code::InvalidArgument,
            invalid,
            "invalid group name",
        );
        expect(
            c.share.acquire(acquire(&name, "m", "orders")).await,
            Code::InvalidArgument,
            invalid,
            "invalid group name",
        );
        expect(
            c.producer
                .init_producer(v2::InitProducerRequest { name: name.clone() })
                .await,
            Code::InvalidArgument,
            invalid,
            "invalid producer name",
        );
    }
    // Empty names, where a name is looked up or chosen.
    expect(
        c.admin
            .describe_topic(v2::DescribeTopicRequest { name: "".into() })
            .await,
        Code::InvalidArgument,
        invalid,
        "topic name is empty",
    );
    expect(
        c.admin
            .delete_topic(v2::DeleteTopicRequest { name: "".into() })
            .await,
        Code::InvalidArgument,
        invalid,
        "topic name is empty",
    );
    expect(
        c.groups.join_group(join("", "", &["orders"], None)).await,
        Code::InvalidArgument,
        invalid,
        "group is empty",
    );
    expect(
        c.share.acquire(acquire("", "m", "orders")).await,
        Code::InvalidArgument,
        invalid,
        "group is empty",
    );
    expect(
        c.share.acquire(acquire("q", "", "orders")).await,
        Code::InvalidArgument,
        invalid,
        "member_id is empty",
    );
    expect(
        c.share.acquire(acquire("q", "m", "")).await,
        Code::InvalidArgument,
        invalid,
        "topic is empty",
    );
    // The longest name the rules allow is a name like any other.
    let longest = "a".repeat(249);
    c.admin.create_topic(create(&longest, 1)).await?;
    c.admin
        .delete_topic(v2::DeleteTopicRequest { name: longest })
        .await?;
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Counts: zero, past the limit, 2^31 and 2^32 - 1 where a field is unsigned, negative
/// where it is signed, 2^64 - 1 for the one u64 a caller sends (a group generation).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_out_of_range_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    for n in [10_001, 1 << 31, u32::MAX] {
        expect(
            c.admin.create_topic(create("many", n)).await,
            Code::InvalidArgument,
            invalid,
            &format!("may have at most 10000 partitions, got {n}"),
        );
    }
    expect(
        c.admin
            .create_topic(v2::CreateTopicRequest {
                retention_ms: Some(i64::MIN),
                ..create("keep", 1)
            })
            .await,
        Code::InvalidArgument,
        invalid,
        "retention_ms must be positive",
    );
    expect(
        c.admin
            .create_topic(v2::CreateTopicRequest {
                retention_bytes: Some(-5),
                ..create("keep", 1)
            })
            .await,
        Code::InvalidArgument,
        invalid,
        "retention_bytes must be positive (leave it out to keep everything), got -5",
    );
    // AddPartitions: only ever up, within the limit, on a topic that exists.
    let add = |name: &str, partitions: u32| v2::AddPartitionsRequest {
        name: name.into(),
        partitions,
    };
    for n in [1, 2] {
        expect(
            c.admin.add_partitions(add("orders", n)).await,
            Code::InvalidArgument,
            invalid,
            &format!("topic `orders` has 2 partitions; the new count {n} must be larger"),
        );
    }
    expect(
        c.admin.add_partitions(add("orders", 0)).await,
        Code::InvalidArgument,
        invalid,
        "needs at least 1 partition, got 0",
    );
    expect(
        c.admin.add_partitions(add("orders", 1 << 31)).await,
        Code::InvalidArgument,
        invalid,
        "may have at most 10000 partitions, got 2147483648",
    );
    expect(
        c.admin.add_partitions(add("nope", 3)).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    // Page sizes.
    for n in [0, 1_001, u32::MAX] {
        let needle = format!("page_size must be between 1 and 1000, got {n}");
        expect(
            c.admin
                .list_topics(v2::ListTopicsRequest {
                    page_size: Some(n),
                    page_token: String::new(),
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &needle,
        );
        expect(
            c.groups
                .list_groups(v2::ListGroupsRequest {
                    page_size: Some(n),
                    page_token: String::new(),
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &needle,
        );
    }
    // A partition number of 2^31.
    expect(
        c.consumer.fetch(fetch("orders", 1 << 31, 0)).await,
        Code::InvalidArgument,
        ErrorReason::PartitionNotFound,
        "partition 2147483648 is out of range: topic `orders` has 2 partitions",
    );
    // 10,001 batches in one request (the limit is 10,000, checked before anything else).
    let batches = (0..10_001)
        .map(|_| raw_batch("orders", 1, ["x"], Codec::None, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    expect(
        c.producer
            .produce(v2::ProduceRequest {
                batches,
                atomic: false,
            })
            .await,
        Code::ResourceExhausted,
        ErrorReason::TooLarge,
        "a produce request may carry at most 10000 batches, got 10001",
    );
    // Share groups: records per acquire, offsets per settle.
    for n in [0, 10_001, 100_000] {
        expect(
            c.share
                .acquire(v2::AcquireRequest {
                    max_records: Some(n),
                    ..acquire("q", "m", "orders")
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &format!("max_records must be between 1 and 10000, got {n}"),
        );
    }
    let many: Vec<i64> = (0..100_000).collect();
    expect(
        c.share.settle(settle("m", 0, &many, 1)).await,
        Code::InvalidArgument,
        invalid,
        "settling 100000 offsets at once",
    );
    // A generation of 2^64 - 1 is simply not the group's.
    let a = c
        .groups
        .join_group(join("counting", "", &["orders"], None))
        .await?
        .into_inner()
        .assignment
        .unwrap();
    expect(
        c.groups
            .commit_offsets(commit(
                "counting",
                &a.member_id,
                u64::MAX,
                &[("orders", 0, 1)],
            ))
            .await,
        Code::FailedPrecondition,
        ErrorReason::StaleGeneration,
        "commit from generation 18446744073709551615 refused",
    );
    c.groups
        .leave_group(v2::LeaveGroupRequest {
            group: "counting".into(),
            member_id: a.member_id,
        })
        .await?;
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Sizes against small limits: 100,000 records or 100,000 headers in one frame declare
/// more uncompressed bytes than the agent takes, and are refused without decompressing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_over_the_limits_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let records: Vec<String> = (0..100_000).map(|i| (i % 10).to_string()).collect();
    expect(
        c.producer
            .produce(one(raw_batch("orders", 0, records, Codec::Zstd, None)?))
            .await,
        Code::ResourceExhausted,
        ErrorReason::TooLarge,
        "uncompressed_size 1200000 is over the 20000-byte limit",
    );
    expect(
        c.producer.produce(one(headers_batch("orders", 0)?)).await,
        Code::ResourceExhausted,
        ErrorReason::TooLarge,
        "is over the 20000-byte limit",
    );
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// One record with 100,000 headers (keys `h0` to `h9`, repeating), as one zstd frame for
/// `topic`/`partition`.
fn headers_batch(topic: &str, partition: u32) -> anyhow::Result<v2::ProduceBatch> {
    let mut records = value_records(["with headers"]);
    records[0].headers = (0..100_000)
        .map(|i| v2::RecordHeader {
            key: format!("h{}", i % 10),
            value: bytes::Bytes::new(),
        })
        .collect();
    Ok(v2::ProduceBatch {
        topic: topic.into(),
        partition,
        frame: Some(cairn_proto::build_frame(records, Codec::Zstd, None)?),
        expected_offset: None,
    })
}

/// Sizes against the default limits: a 100 MiB record is refused before the agent decodes
/// the request; 100,000 records, or one record with 100,000 headers, are within the limits
/// and come back whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sizes_at_the_default_limits() -> anyhow::Result<()> {
    let settings = AgentSettings {
        linger: Duration::from_millis(5),
        ..AgentSettings::default()
    };
    let (_dir, agent, mut c) = agent_with_orders(settings).await?;
    let before = c.hwms().await?;
    c.admin.create_topic(create("big", 2)).await?;
    let huge = raw_batch("big", 0, [vec![b'x'; 100 << 20]], Codec::None, None)?;
    match c.producer.produce(one(huge)).await {
        Ok(r) => panic!(
            "a 100 MiB request was accepted: {:?}",
            r.into_inner().results
        ),
        Err(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{}", s.message());
            assert!(
                s.message().contains("too large") && s.message().contains("17825792"),
                "names the limit (16 MiB + 1 MiB): {}",
                s.message()
            );
        }
    }
    let records: Vec<String> = (0..100_000).map(|i| format!("r{i}")).collect();
    let r = c
        .producer
        .produce(one(raw_batch("big", 0, records, Codec::Zstd, None)?))
        .await?
        .into_inner();
    assert_eq!(
        (r.results[0].base_offset, r.results[0].record_count),
        (Some(0), 100_000)
    );
    let r = c
        .producer
        .produce(one(headers_batch("big", 1)?))
        .await?
        .into_inner();
    assert_eq!(r.results[0].base_offset, Some(0), "{r:?}");
    let read = read_all(&agent.endpoint, "big").await?;
    assert_eq!(read.len(), 100_001);
    let p0: Vec<&[u8]> = read
        .iter()
        .filter(|r| r.partition == 0)
        .map(|r| &r.value[..])
        .collect();
    assert_eq!((p0[0], p0[99_999]), (&b"r0"[..], &b"r99999"[..]));
    let with_headers = read.iter().find(|r| r.partition == 1).unwrap();
    assert_eq!(with_headers.headers.len(), 100_000);
    assert_eq!(with_headers.headers[99_999].0, "h9");
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Offsets: -5 and past the high watermark in Fetch, CommitOffsets, DeleteRecords,
/// ResetOffsets, Settle and a conditional produce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_out_of_range_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    assert_eq!(before, [1, 0]);
    let invalid = ErrorReason::InvalidArgument;
    // Fetch.
    for offset in [-5, i64::MIN] {
        expect(
            c.consumer.fetch(fetch("orders", 0, offset)).await,
            Code::InvalidArgument,
            invalid,
            &format!("offset must be 0 or more, got {offset}"),
        );
    }
    for offset in [5, i64::MAX] {
        let s = expect(
            c.consumer.fetch(fetch("orders", 0, offset)).await,
            Code::OutOfRange,
            ErrorReason::OffsetOutOfRange,
            &format!("offset {offset} is out of range for orders/0: readable offsets are 0..1"),
        );
        assert_eq!(info_value(&s, "high_watermark").as_deref(), Some("1"));
    }
    // At the high watermark with no wait: an empty answer, not an error.
    let at_end = c.consumer.fetch(fetch("orders", 0, 1)).await?.into_inner();
    assert_eq!((at_end.frames.len(), at_end.high_watermark), (0, 1));
    // DeleteRecords.
    let delete = |topic: &str, partition: u32, before_offset: i64| v2::DeleteRecordsRequest {
        topic: topic.into(),
        partition,
        before_offset,
    };
    expect(
        c.admin.delete_records(delete("orders", 0, -5)).await,
        Code::InvalidArgument,
        invalid,
        "delete-records offset must be 0 or more, got -5",
    );
    for offset in [5, i64::MAX] {
        expect(
            c.admin.delete_records(delete("orders", 0, offset)).await,
            Code::OutOfRange,
            ErrorReason::OffsetOutOfRange,
            &format!("offset {offset} is out of range for orders/0"),
        );
    }
    expect(
        c.admin.delete_records(delete("orders", 9, 0)).await,
        Code::InvalidArgument,
        ErrorReason::PartitionNotFound,
        "partition 9 is out of range",
    );
    expect(
        c.admin.delete_records(delete("nope", 0, 0)).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    expect(
        c.admin.delete_records(delete("", 0, 0)).await,
        Code::InvalidArgument,
        invalid,
        "topic name is empty",
    );
    // CommitOffsets, by a live member that owns the partition.
    let a = c
        .groups
        .join_group(join("offsets", "", &["orders"], None))
        .await?
        .into_inner()
        .assignment
        .unwrap();
    let member = a.member_id.as_str();
    expect(
        c.groups
            .commit_offsets(commit(
                "offsets",
                member,
                a.generation,
                &[("orders", 0, -5)],
            ))
            .await,
        Code::InvalidArgument,
        invalid,
        "offset must be 0 or more, got -5 for orders/0",
    );
    let s = expect(
        c.groups
            .commit_offsets(commit("offsets", member, a.generation, &[("orders", 0, 5)]))
            .await,
        Code::OutOfRange,
        ErrorReason::OffsetOutOfRange,
        "offset 5 is out of range for orders/0: readable offsets are 0..1",
    );
    assert_eq!(info_value(&s, "high_watermark").as_deref(), Some("1"));
    c.groups
        .leave_group(v2::LeaveGroupRequest {
            group: "offsets".into(),
            member_id: member.into(),
        })
        .await?;
    // ResetOffsets (of a group with no live member).
    for to in [To::Offset(-5), To::TimestampMs(-5)] {
        expect(
            c.groups
                .reset_offsets(reset("idle", "orders", Some(to)))
                .await,
            Code::InvalidArgument,
            invalid,
            "reset target must be 0 or more, got -5",
        );
    }
    // Past the high watermark is clamped into the readable range, as the API says.
    for to in [To::Offset(1_000), To::Offset(i64::MAX)] {
        let r = c
            .groups
            .reset_offsets(reset("idle", "orders", Some(to)))
            .await?
            .into_inner();
        let got: Vec<(u32, i64)> = r.offsets.iter().map(|o| (o.partition, o.offset)).collect();
        assert_eq!(got, [(0, 1), (1, 0)]);
    }
    // A conditional produce at an offset past the high watermark.
    let mut conditional = raw_batch("orders", 0, ["x"], Codec::Zstd, None)?;
    conditional.expected_offset = Some(5);
    let s = expect(
        c.producer.produce(one(conditional)).await,
        Code::FailedPrecondition,
        ErrorReason::OffsetMismatch,
        "the partition's next offset is 1",
    );
    assert_eq!(info_value(&s, "next_offset").as_deref(), Some("1"));
    // Settle.
    expect(
        c.share.settle(settle("m", 0, &[-5], 1)).await,
        Code::InvalidArgument,
        invalid,
        "offsets must be 0 or more, got -5",
    );
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Durations: waits, leases and session timeouts outside what the API allows; the bounds
/// themselves are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durations_out_of_range_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    for ms in [30_001, u32::MAX] {
        let needle = format!("max_wait_ms {ms} is over this agent's limit of 30000 ms");
        expect(
            c.consumer
                .fetch(v2::FetchRequest {
                    max_wait_ms: ms,
                    ..fetch("orders", 0, 0)
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &needle,
        );
        expect(
            c.share
                .acquire(v2::AcquireRequest {
                    max_wait_ms: ms,
                    ..acquire("q", "m", "orders")
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &needle,
        );
    }
    for ms in [0, 999, 600_001, u32::MAX] {
        expect(
            c.groups
                .join_group(join("timeouts", "", &["orders"], Some(ms)))
                .await,
            Code::InvalidArgument,
            invalid,
            &format!("session timeout must be between 1000 and 600000 ms, got {ms}"),
        );
    }
    for ms in [0, 999, 600_001, u32::MAX] {
        let needle = format!("lease_ms must be between 1000 and 600000 (1 s to 10 min), got {ms}");
        expect(
            c.share
                .acquire(v2::AcquireRequest {
                    lease_ms: Some(ms),
                    ..acquire("q", "m", "orders")
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &needle,
        );
        expect(
            c.share
                .settle(v2::SettleRequest {
                    lease_ms: Some(ms),
                    ..settle("m", 0, &[0], v2::SettleAction::Renew as i32)
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &needle,
        );
    }
    // The bounds are inside the range.
    for (group, ms) in [("shortest", 1_000), ("longest", 600_000)] {
        let a = c
            .groups
            .join_group(join(group, "", &["orders"], Some(ms)))
            .await?
            .into_inner()
            .assignment
            .unwrap();
        assert_eq!(a.heartbeat_interval_ms, ms / 3);
        c.groups
            .leave_group(v2::LeaveGroupRequest {
                group: group.into(),
                member_id: a.member_id,
            })
            .await?;
    }
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Enum values the API does not define: codecs, settle actions, and a reset with no target
/// (the oneof unset, or set to `false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_enum_values_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    for codec in [-1, 4] {
        expect(
            c.admin
                .create_topic(v2::CreateTopicRequest {
                    codec,
                    ..create("codec", 1)
                })
                .await,
            Code::InvalidArgument,
            invalid,
            &format!("unknown codec {codec}: use NONE (1), ZSTD (2) or LZ4_FRAME (3)"),
        );
    }
    for action in [0, 5, 99, -1] {
        expect(
            c.share.settle(settle("m", 0, &[0], action)).await,
            Code::InvalidArgument,
            invalid,
            &format!("unknown action {action}: use ACK (1), RELEASE (2), REJECT (3) or RENEW (4)"),
        );
    }
    for to in [None, Some(To::Earliest(false)), Some(To::Latest(false))] {
        expect(
            c.groups.reset_offsets(reset("idle", "orders", to)).await,
            Code::InvalidArgument,
            invalid,
            "say where to reset: earliest, latest, offset or timestamp_ms",
        );
    }
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Consumer groups: what a member cannot do, and what a group that does not exist answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_calls_that_cannot_work_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    let unknown_member = ErrorReason::UnknownMember;
    expect(
        c.groups.join_group(join("g", "", &[], None)).await,
        Code::InvalidArgument,
        invalid,
        "joining a group needs at least one topic",
    );
    expect(
        c.groups.join_group(join("g", "", &["nope"], None)).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    expect(
        c.groups
            .join_group(join("g", "member-999", &["orders"], None))
            .await,
        Code::FailedPrecondition,
        unknown_member,
        "member member-999 is not in group `g`",
    );
    let a = c
        .groups
        .join_group(join("g", "", &["orders"], None))
        .await?
        .into_inner()
        .assignment
        .unwrap();
    let (member, generation) = (a.member_id.as_str(), a.generation);
    let heartbeat = |group: &str, member: &str| v2::HeartbeatRequest {
        group: group.into(),
        member_id: member.into(),
    };
    expect(
        c.groups.heartbeat(heartbeat("g", "member-999")).await,
        Code::FailedPrecondition,
        unknown_member,
        "member member-999 is not in group `g`",
    );
    expect(
        c.groups.heartbeat(heartbeat("g", "")).await,
        Code::InvalidArgument,
        invalid,
        "member_id is empty",
    );
    expect(
        c.groups.heartbeat(heartbeat("nogroup", member)).await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `nogroup` does not exist",
    );
    expect(
        c.groups
            .commit_offsets(commit("g", "member-999", generation, &[("orders", 0, 1)]))
            .await,
        Code::FailedPrecondition,
        unknown_member,
        "member member-999 is not in group `g`",
    );
    expect(
        c.groups
            .commit_offsets(commit("g", member, generation, &[]))
            .await,
        Code::InvalidArgument,
        invalid,
        "a commit needs at least one offset",
    );
    expect(
        c.groups
            .commit_offsets(commit("g", member, generation + 1, &[("orders", 0, 1)]))
            .await,
        Code::FailedPrecondition,
        ErrorReason::StaleGeneration,
        &format!("commit from generation {} refused", generation + 1),
    );
    for (topic, partition) in [("orders", 9), ("nope", 0)] {
        expect(
            c.groups
                .commit_offsets(commit("g", member, generation, &[(topic, partition, 0)]))
                .await,
            Code::FailedPrecondition,
            ErrorReason::NotAssigned,
            &format!("{topic}/{partition} is not assigned to member {member}"),
        );
    }
    expect(
        c.groups
            .commit_offsets(commit("nogroup", member, generation, &[("orders", 0, 1)]))
            .await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `nogroup` does not exist",
    );
    expect(
        c.groups
            .leave_group(v2::LeaveGroupRequest {
                group: "nogroup".into(),
                member_id: member.into(),
            })
            .await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `nogroup` does not exist",
    );
    expect(
        c.groups
            .describe_group(v2::DescribeGroupRequest {
                group: "nogroup".into(),
            })
            .await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `nogroup` does not exist",
    );
    expect(
        c.groups
            .reset_offsets(reset("g", "orders", Some(To::Earliest(true))))
            .await,
        Code::FailedPrecondition,
        ErrorReason::GroupActive,
        "group `g` has 1 live member(s)",
    );
    expect(
        c.groups
            .reset_offsets(reset("idle", "nope", Some(To::Earliest(true))))
            .await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    // Leaving as a member the group does not have is a no-op, as a retried leave must be.
    c.groups
        .leave_group(v2::LeaveGroupRequest {
            group: "g".into(),
            member_id: "member-999".into(),
        })
        .await?;
    // The member is untouched by all of it: it heartbeats, commits and reads its commit.
    let now = c
        .groups
        .heartbeat(heartbeat("g", member))
        .await?
        .into_inner()
        .assignment
        .unwrap();
    assert_eq!(now.generation, generation);
    c.groups
        .commit_offsets(commit("g", member, generation, &[("orders", 0, 1)]))
        .await?;
    let committed = c
        .groups
        .fetch_committed_offsets(v2::FetchCommittedOffsetsRequest { group: "g".into() })
        .await?
        .into_inner();
    let got: Vec<(&str, u32, i64)> = committed
        .offsets
        .iter()
        .map(|o| (o.topic.as_str(), o.partition, o.offset))
        .collect();
    assert_eq!(got, [("orders", 0, 1)]);
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Share groups: settles of records the caller does not hold, and groups, topics and
/// partitions that do not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn share_calls_that_cannot_work_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    let ack = v2::SettleAction::Ack as i32;
    expect(
        c.share.acquire(acquire("q", "m1", "nope")).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    // Before the group's first acquire, it does not exist.
    expect(
        c.share.settle(settle("m1", 0, &[0], ack)).await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `q` does not exist",
    );
    let got = c
        .share
        .acquire(v2::AcquireRequest {
            max_records: Some(1),
            ..acquire("q", "m1", "orders")
        })
        .await?
        .into_inner();
    let leased: Vec<(u32, Vec<i64>)> = got
        .frames
        .iter()
        .map(|f| (f.partition, f.offsets.clone()))
        .collect();
    assert_eq!(leased, [(0, vec![0])]);
    expect(
        c.share.settle(settle("m1", 0, &[], ack)).await,
        Code::InvalidArgument,
        invalid,
        "settling needs at least one offset",
    );
    for offset in [50, i64::MAX] {
        expect(
            c.share.settle(settle("m1", 0, &[offset], ack)).await,
            Code::FailedPrecondition,
            ErrorReason::NotHeld,
            &format!("orders/0 offset {offset}: was never delivered"),
        );
    }
    expect(
        c.share.settle(settle("m2", 0, &[0], ack)).await,
        Code::FailedPrecondition,
        ErrorReason::NotHeld,
        "orders/0 offset 0: not held by this consumer",
    );
    expect(
        c.share.settle(settle("m1", 9, &[0], ack)).await,
        Code::InvalidArgument,
        ErrorReason::PartitionNotFound,
        "partition 9 is out of range",
    );
    expect(
        c.share
            .settle(v2::SettleRequest {
                topic: "nope".into(),
                ..settle("m1", 0, &[0], ack)
            })
            .await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    expect(
        c.share
            .settle(v2::SettleRequest {
                group: "noq".into(),
                ..settle("m1", 0, &[0], ack)
            })
            .await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `noq` does not exist",
    );
    let describe = |group: &str, topic: &str| v2::DescribeShareGroupRequest {
        group: group.into(),
        topic: topic.into(),
    };
    expect(
        c.share
            .describe_share_group(describe("noq", "orders"))
            .await,
        Code::NotFound,
        ErrorReason::Unspecified,
        "group `noq` does not exist",
    );
    expect(
        c.share.describe_share_group(describe("q", "nope")).await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    // The holder's lease survived all of it: its ack settles the record, once.
    c.share.settle(settle("m1", 0, &[0], ack)).await?;
    expect(
        c.share.settle(settle("m1", 0, &[0], ack)).await,
        Code::FailedPrecondition,
        ErrorReason::NotHeld,
        "orders/0 offset 0: already settled",
    );
    let state = c
        .share
        .describe_share_group(describe("q", "orders"))
        .await?
        .into_inner();
    assert_eq!(state.partitions[0].start_offset, 1, "{state:?}");
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Producers and topics: stamps the agent never issued, a sequence gap, a fenced epoch, an
/// atomic request with one impossible batch, and deletes of what does not exist.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_and_topic_calls_that_cannot_work_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let stamped = |id: u64, epoch: u32, sequence: i64| {
        let stamp = v2::ProducerStamp {
            producer_id: id,
            epoch,
            base_sequence: sequence,
        };
        raw_batch("orders", 0, ["x"], Codec::Zstd, Some(stamp)).unwrap()
    };
    expect(
        c.producer.produce(one(stamped(987_654, 0, 0))).await,
        Code::FailedPrecondition,
        ErrorReason::UnknownProducer,
        "unknown producer id",
    );
    let first = c
        .producer
        .init_producer(v2::InitProducerRequest {
            name: "ledger-writer".into(),
        })
        .await?
        .into_inner();
    let s = expect(
        c.producer
            .produce(one(stamped(first.producer_id, first.epoch, 5)))
            .await,
        Code::FailedPrecondition,
        ErrorReason::OutOfOrderSequence,
        "the partition expects sequence 0 next",
    );
    assert_eq!(info_value(&s, "expected_sequence").as_deref(), Some("0"));
    let second = c
        .producer
        .init_producer(v2::InitProducerRequest {
            name: "ledger-writer".into(),
        })
        .await?
        .into_inner();
    assert_eq!(
        (second.producer_id, second.epoch),
        (first.producer_id, first.epoch + 1)
    );
    let s = expect(
        c.producer
            .produce(one(stamped(first.producer_id, first.epoch, 0)))
            .await,
        Code::FailedPrecondition,
        ErrorReason::Fenced,
        "orders/0",
    );
    assert_eq!(
        info_value(&s, "current_epoch"),
        Some(second.epoch.to_string())
    );
    // An atomic request whose second batch names a partition that does not exist: nothing
    // of it is written.
    let batches = vec![
        raw_batch("orders", 0, ["a"], Codec::Zstd, None)?,
        raw_batch("orders", 9, ["b"], Codec::Zstd, None)?,
    ];
    expect(
        c.producer
            .produce(v2::ProduceRequest {
                batches,
                atomic: true,
            })
            .await,
        Code::InvalidArgument,
        ErrorReason::PartitionNotFound,
        "partition 9 is out of range: topic `orders` has 2 partitions",
    );
    expect(
        c.admin
            .delete_topic(v2::DeleteTopicRequest {
                name: "nope".into(),
            })
            .await,
        Code::NotFound,
        ErrorReason::TopicNotFound,
        "topic `nope` does not exist",
    );
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// A gRPC codec that sends and receives bytes as they are, to put garbage on the wire
/// where a request message is expected.
#[derive(Debug, Clone, Copy, Default)]
struct RawBytes;

impl tonic::codec::Encoder for RawBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: bytes::Bytes,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<bytes::Bytes>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n)))
    }
}

impl tonic::codec::Codec for RawBytes {
    type Encode = bytes::Bytes;
    type Decode = bytes::Bytes;
    type Encoder = RawBytes;
    type Decoder = RawBytes;
    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }
    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

/// Sends `body` as the request message of `path`.
async fn raw_call(
    channel: &Channel,
    path: &'static str,
    body: &'static [u8],
) -> Result<tonic::Response<bytes::Bytes>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(
        tonic::Request::new(bytes::Bytes::from_static(body)),
        path,
        RawBytes,
    )
    .await
}

/// Garbage bytes where a request message is expected: tonic answers INTERNAL (gRPC's
/// status-code guide for parse errors), naming the field it could not decode; a method that
/// does not exist is UNIMPLEMENTED; an empty body is the empty message, refused as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_requests_are_refused() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    const PRODUCE: &str = "/cairn.v2.ProducerService/Produce";
    const CREATE: &str = "/cairn.v2.AdminService/CreateTopic";
    for (path, body, needle) in [
        (
            PRODUCE,
            &[0xff_u8; 32][..],
            "failed to decode Protobuf message: invalid varint",
        ),
        (
            PRODUCE,
            &[0x0a, 0x80][..],
            "failed to decode Protobuf message: ProduceRequest.batches",
        ),
        (
            CREATE,
            &[0x0a, 0x80][..],
            "failed to decode Protobuf message: CreateTopicRequest.name",
        ),
    ] {
        match raw_call(&channel, path, body).await {
            Ok(r) => panic!("{path} {body:?} was answered: {:?}", r.into_inner()),
            Err(s) => {
                assert_eq!(s.code(), Code::Internal, "{path} {body:?}: {}", s.message());
                assert!(s.message().contains(needle), "{path}: {}", s.message());
            }
        }
    }
    expect(
        raw_call(&channel, PRODUCE, b"").await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
        "a produce request needs at least one batch",
    );
    match raw_call(&channel, "/cairn.v2.AdminService/NoSuchMethod", b"").await {
        Ok(r) => panic!("an unknown method was answered: {:?}", r.into_inner()),
        Err(s) => assert_eq!(s.code(), Code::Unimplemented, "{}", s.message()),
    }
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// Index entries of `topic`/`partition` as the agent's metadata holds them.
async fn entries(
    m: &cairn_metadata::Metadata,
    topic: &str,
    partition: u32,
) -> anyhow::Result<Vec<cairn_metadata::IndexEntry>> {
    let t = m.topic(topic).await?;
    Ok(m.read_index(t.id, partition, 0, 10_000).await?.1)
}

/// One segment holding a frame of 100 records for each of the two partitions of `seg`, and
/// the index entries of both (in partition order). Leaves the agent stopped.
async fn one_segment_two_partitions(
    dir: &std::path::Path,
) -> anyhow::Result<Vec<cairn_metadata::IndexEntry>> {
    let agent = InProcessAgent::start(
        cairn_tests::file_store(dir)?,
        &dir.join("meta.sqlite"),
        small_limits(),
    )
    .await?;
    let mut c = Clients::connect(&agent.endpoint).await?;
    c.admin.create_topic(create("seg", 2)).await?;
    let values = |p: u32| (0..100).map(move |i| format!("p{p} record {i}"));
    let batches = vec![
        raw_batch("seg", 0, values(0), Codec::Zstd, None)?,
        raw_batch("seg", 1, values(1), Codec::Zstd, None)?,
    ];
    c.producer
        .produce(v2::ProduceRequest {
            batches,
            atomic: false,
        })
        .await?;
    let mut out = entries(&agent.metadata, "seg", 0).await?;
    out.extend(entries(&agent.metadata, "seg", 1).await?);
    agent.stop().await?;
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].object_key, out[1].object_key, "one segment: {out:?}");
    Ok(out)
}

/// A compacted Parquet file of 150 records in topic `pq`: its path in the `file://` store
/// under `dir`. Leaves the agent stopped.
async fn one_parquet_file(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    use cairn_compactor::{Compactor, CompactorConfig};
    let store = cairn_tests::file_store(dir)?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.join("meta.sqlite"), small_limits()).await?;
    let mut c = Clients::connect(&agent.endpoint).await?;
    c.admin.create_topic(create("pq", 1)).await?;
    for i in 0..3 {
        let values = (0..50).map(|j| format!("value {i} {j}"));
        c.producer
            .produce(one(raw_batch("pq", 0, values, Codec::Zstd, None)?))
            .await?;
    }
    let metadata = agent.metadata.clone();
    agent.stop().await?;
    let compactor = Compactor::new(
        store,
        metadata.clone(),
        CompactorConfig {
            min_bytes: 0,
            max_age: Duration::ZERO,
            owner: "bad-input".into(),
            ..CompactorConfig::default()
        },
    );
    let report = compactor.run_once(&|_| {}).await?;
    assert_eq!(report.records_compacted, 150, "{report:?}");
    let e = entries(&metadata, "pq", 0).await?;
    assert_eq!(e.len(), 1, "{e:?}");
    assert_eq!(e[0].kind, cairn_metadata::EntryKind::Parquet);
    Ok(dir.join("objects").join(&e[0].object_key))
}

/// A fetch of `topic`/`partition` from offset 0 through a fresh agent (cold caches).
async fn fetch_fresh(
    dir: &std::path::Path,
    topic: &str,
    partition: u32,
) -> anyhow::Result<Result<tonic::Response<v2::FetchResponse>, tonic::Status>> {
    let agent = InProcessAgent::start(
        cairn_tests::file_store(dir)?,
        &dir.join("meta.sqlite"),
        small_limits(),
    )
    .await?;
    let mut c = Clients::connect(&agent.endpoint).await?;
    let result = c.consumer.fetch(fetch(topic, partition, 0)).await;
    agent.stop().await?;
    Ok(result)
}

/// Truncated objects: a segment cut inside one partition's frame and a Parquet file cut
/// anywhere are DATA_LOSS naming the object, never other records; what the cut spares still
/// serves, and the repaired object serves everything again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_objects_are_data_loss() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let e = one_segment_two_partitions(dir.path()).await?;
    let path = dir.path().join("objects").join(&e[0].object_key);
    let original = std::fs::read(&path)?;
    // Cut in the middle of the later frame: its partition is data loss, the other serves.
    let (cut, spared) = if e[0].position > e[1].position {
        (&e[0], &e[1])
    } else {
        (&e[1], &e[0])
    };
    std::fs::write(&path, &original[..(cut.position + cut.length / 2) as usize])?;
    expect(
        fetch_fresh(dir.path(), "seg", cut.partition).await?,
        Code::DataLoss,
        ErrorReason::DataLoss,
        &cut.object_key,
    );
    let ok = fetch_fresh(dir.path(), "seg", spared.partition)
        .await??
        .into_inner();
    assert_eq!(ok.frames.len(), 1, "{ok:?}");

    let dir = temp_dir()?;
    let file = one_parquet_file(dir.path()).await?;
    let original = std::fs::read(&file)?;
    for keep in [original.len() / 2, original.len() - 1, 8] {
        std::fs::write(&file, &original[..keep])?;
        let s = expect(
            fetch_fresh(dir.path(), "pq", 0).await?,
            Code::DataLoss,
            ErrorReason::DataLoss,
            "is corrupt",
        );
        assert!(
            s.message().contains(".parquet"),
            "{keep} bytes kept: names the object: {}",
            s.message()
        );
    }
    std::fs::write(&file, &original)?;
    let agent = InProcessAgent::start(
        cairn_tests::file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        small_limits(),
    )
    .await?;
    assert_eq!(read_all(&agent.endpoint, "pq").await?.len(), 150);
    agent.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Found answered wrongly by this catalogue and fixed (docs/BAD_INPUT.md says what the agent
// answered before).

/// A 10,000-character name breaks the 249-character rule wherever it is given: expected
/// INVALID_ARGUMENT naming the rule. Before the fix, a call that echoes the name in its refusal fails
/// as INTERNAL "h2 protocol error" (the status headers outgrow HTTP/2's header list), and a
/// lookup answers RESOURCE_EXHAUSTED "key of 10013 bytes exceeds the 10000-byte key limit".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_character_name_is_invalid_argument() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let long = "a".repeat(10_000);
    let invalid = ErrorReason::InvalidArgument;
    let check = |what: &str, s: tonic::Status| {
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {}", s.message());
        assert_eq!(reason_of(&s), Some(invalid), "{what}: {}", s.message());
        assert!(s.message().contains("249"), "{what}: {}", s.message());
        assert!(
            s.message().len() < 1_000,
            "{what}: the refusal does not echo 10,000 characters"
        );
    };
    let results = [
        (
            "CreateTopic",
            c.admin.create_topic(create(&long, 1)).await.err(),
        ),
        (
            "DescribeTopic",
            c.admin
                .describe_topic(v2::DescribeTopicRequest { name: long.clone() })
                .await
                .err(),
        ),
        (
            "DeleteTopic",
            c.admin
                .delete_topic(v2::DeleteTopicRequest { name: long.clone() })
                .await
                .err(),
        ),
        ("Fetch", c.consumer.fetch(fetch(&long, 0, 0)).await.err()),
        (
            "Produce",
            c.producer
                .produce(one(raw_batch(&long, 0, ["x"], Codec::Zstd, None)?))
                .await
                .err(),
        ),
        (
            "JoinGroup group",
            c.groups
                .join_group(join(&long, "", &["orders"], None))
                .await
                .err(),
        ),
        (
            "JoinGroup topic",
            c.groups
                .join_group(join("g", "", &[long.as_str()], None))
                .await
                .err(),
        ),
        (
            "Acquire group",
            c.share.acquire(acquire(&long, "m", "orders")).await.err(),
        ),
        (
            "InitProducer",
            c.producer
                .init_producer(v2::InitProducerRequest { name: long.clone() })
                .await
                .err(),
        ),
    ];
    for (what, s) in results {
        check(what, s.unwrap_or_else(|| panic!("{what}: accepted")));
    }
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// A member id of 10,000 characters is a member the group does not have: expected
/// FAILED_PRECONDITION with ERROR_REASON_UNKNOWN_MEMBER. Before the fix, Heartbeat fails as INTERNAL
/// "h2 protocol error" and CommitOffsets as RESOURCE_EXHAUSTED "key of 10017 bytes exceeds
/// the 10000-byte key limit".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_10000_character_member_id_is_an_unknown_member() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let a = c
        .groups
        .join_group(join("g", "", &["orders"], None))
        .await?
        .into_inner()
        .assignment
        .unwrap();
    let long = "m".repeat(10_000);
    expect(
        c.groups
            .heartbeat(v2::HeartbeatRequest {
                group: "g".into(),
                member_id: long.clone(),
            })
            .await,
        Code::FailedPrecondition,
        ErrorReason::UnknownMember,
        "is not in group `g`",
    );
    expect(
        c.groups
            .commit_offsets(commit("g", &long, a.generation, &[("orders", 0, 1)]))
            .await,
        Code::FailedPrecondition,
        ErrorReason::UnknownMember,
        "is not in group `g`",
    );
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// A lookup by a name that breaks the naming rules: the error table says an invalid topic
/// name is INVALID_ARGUMENT (as DescribeTopic already answers for the empty name, and as
/// Kafka answers INVALID_TOPIC_EXCEPTION); before the fix DescribeTopic, DeleteTopic, Fetch and
/// Produce answer NOT_FOUND "topic `a/b` does not exist". (If NOT_FOUND is preferred, the
/// table should say so instead.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lookup_by_an_invalid_topic_name_is_invalid_argument() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let invalid = ErrorReason::InvalidArgument;
    for (name, _) in bad_names() {
        expect(
            c.admin
                .describe_topic(v2::DescribeTopicRequest { name: name.clone() })
                .await,
            Code::InvalidArgument,
            invalid,
            "invalid topic name",
        );
        expect(
            c.admin
                .delete_topic(v2::DeleteTopicRequest { name: name.clone() })
                .await,
            Code::InvalidArgument,
            invalid,
            "invalid topic name",
        );
        expect(
            c.consumer.fetch(fetch(&name, 0, 0)).await,
            Code::InvalidArgument,
            invalid,
            "invalid topic name",
        );
        expect(
            c.producer
                .produce(one(raw_batch(&name, 0, ["x"], Codec::Zstd, None)?))
                .await,
            Code::InvalidArgument,
            invalid,
            "invalid topic name",
        );
    }
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// AddPartitions with an empty name: expected INVALID_ARGUMENT "topic name is empty" like
/// every other topic call; before the fix NOT_FOUND "topic `` does not exist".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_partitions_with_an_empty_name_is_invalid_argument() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    expect(
        c.admin
            .add_partitions(v2::AddPartitionsRequest {
                name: String::new(),
                partitions: 3,
            })
            .await,
        Code::InvalidArgument,
        ErrorReason::InvalidArgument,
        "invalid topic name ``: it is empty",
    );
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// FetchCommittedOffsets of a group that does not exist answers no offsets, as Kafka's
/// OffsetFetch does (a consumer asks before its group's first commit): not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_of_an_unknown_group_are_none() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let answer = c
        .groups
        .fetch_committed_offsets(v2::FetchCommittedOffsetsRequest {
            group: "nogroup".into(),
        })
        .await?
        .into_inner();
    assert!(answer.offsets.is_empty(), "{answer:?}");
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}

/// An object truncated to nothing (0 bytes) is corrupt stored bytes: expected DATA_LOSS.
/// Before the fix, a range read past its end answers UNAVAILABLE with ERROR_REASON_STORAGE_UNAVAILABLE
/// ("Requested range was invalid"), which tells clients to retry what no retry can fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_truncated_to_nothing_is_data_loss() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let e = one_segment_two_partitions(dir.path()).await?;
    std::fs::write(dir.path().join("objects").join(&e[0].object_key), b"")?;
    for p in 0..2 {
        expect(
            fetch_fresh(dir.path(), "seg", p).await?,
            Code::DataLoss,
            ErrorReason::DataLoss,
            &e[0].object_key,
        );
    }
    let dir = temp_dir()?;
    let file = one_parquet_file(dir.path()).await?;
    std::fs::write(&file, b"")?;
    expect(
        fetch_fresh(dir.path(), "pq", 0).await?,
        Code::DataLoss,
        ErrorReason::DataLoss,
        ".parquet",
    );
    Ok(())
}

/// A request past the decoding limit: the code is RESOURCE_EXHAUSTED as the table says, but
/// the status carries no ErrorInfo, while the error model promises one on every failed call
/// (expected ERROR_REASON_TOO_LARGE).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_the_decoding_limit_carries_its_reason() -> anyhow::Result<()> {
    let (_dir, agent, mut c) = agent_with_orders(small_limits()).await?;
    let before = c.hwms().await?;
    let huge = raw_batch("orders", 0, vec![vec![b'x'; 1 << 20]; 2], Codec::None, None)?;
    expect(
        c.producer.produce(one(huge)).await,
        Code::ResourceExhausted,
        ErrorReason::TooLarge,
        "too large",
    );
    c.still_serves(&before).await?;
    agent.stop().await?;
    Ok(())
}
