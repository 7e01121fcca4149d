//! A produced frame that fails its checks is refused whole: INVALID_ARGUMENT with an
//! ErrorInfo whose reason is ERROR_REASON_INVALID_FRAME and whose metadata names the batch
//! and the header field; nothing of the request is written, whatever batch carried it.
//!
//! The agent never decompresses, so it catches what the header and the CRC alone can
//! show: a flipped payload byte, and a header whose count, sizes, codec, format or
//! timestamps cannot be true.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use cairn_agent::AgentSettings;
use cairn_client::{Admin, TopicOptions};
use cairn_proto::v2::{
    self, Codec, ErrorReason, Frame, FrameHeader, PayloadFormat, ProduceBatch, TimestampType,
    producer_service_client::ProducerServiceClient,
};
use cairn_proto::{MAX_FRAME_RECORDS, build_frame};
use cairn_tests::{InProcessAgent, read_all, temp_dir, value_records};
use tonic::Code;
use tonic_types::StatusExt;

const TOPIC: &str = "frames";

/// An agent with a two-partition topic holding two records in each partition.
async fn agent_with_topic() -> anyhow::Result<(tempfile::TempDir, InProcessAgent)> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        cairn_tests::file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        AgentSettings::default(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic(TOPIC, 2, TopicOptions::default())
        .await?;
    let mut producer = ProducerServiceClient::new(channel);
    for p in 0..2 {
        producer
            .produce(request(vec![batch(p, good(Codec::Zstd))]))
            .await?;
    }
    Ok((dir, agent))
}

/// A valid frame of two records.
fn good(codec: Codec) -> Frame {
    build_frame(
        value_records(["first record", "second record"]),
        codec,
        None,
    )
    .unwrap()
}

fn batch(partition: u32, frame: Frame) -> ProduceBatch {
    ProduceBatch {
        topic: TOPIC.into(),
        partition,
        frame: Some(frame),
        expected_offset: None,
    }
}

fn request(batches: Vec<ProduceBatch>) -> v2::ProduceRequest {
    v2::ProduceRequest {
        batches,
        atomic: false,
    }
}

/// `frame` with its header changed by `f`.
fn lying(frame: &Frame, f: impl FnOnce(&mut FrameHeader)) -> Frame {
    let mut frame = frame.clone();
    f(frame.header.as_mut().unwrap());
    frame
}

async fn high_watermarks(endpoint: &str) -> anyhow::Result<Vec<i64>> {
    let d = Admin::new(cairn_client::connect(endpoint).await?)
        .describe_topic(TOPIC)
        .await?;
    Ok(d.partitions.iter().map(|p| p.high_watermark).collect())
}

/// The code, ErrorInfo reason and metadata of a refused produce.
fn refusal(
    result: Result<tonic::Response<v2::ProduceResponse>, tonic::Status>,
    case: &str,
) -> (Code, String, HashMap<String, String>, String) {
    let status = match result {
        Ok(r) => panic!("{case}: accepted: {:?}", r.into_inner()),
        Err(s) => s,
    };
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("{case}: no ErrorInfo in `{}`", status.message()));
    (
        status.code(),
        info.reason,
        info.metadata,
        status.message().to_string(),
    )
}

/// Sends `frame` as batch 1 of a request whose batch 0 (the other partition) is valid, and
/// checks the refusal: INVALID_FRAME naming batch 1 and one of `fields`; nothing written.
async fn expect_invalid_frame(
    producer: &mut ProducerServiceClient<tonic::transport::Channel>,
    endpoint: &str,
    case: &str,
    frame: Option<Frame>,
    fields: &[&str],
) -> anyhow::Result<()> {
    let before = high_watermarks(endpoint).await?;
    let mut bad = batch(0, good(Codec::Zstd));
    bad.frame = frame;
    let result = producer
        .produce(request(vec![batch(1, good(Codec::Lz4Frame)), bad]))
        .await;
    let (code, reason, meta, message) = refusal(result, case);
    assert_eq!(code, Code::InvalidArgument, "{case}: {message}");
    assert_eq!(
        reason,
        ErrorReason::InvalidFrame.as_str_name(),
        "{case}: {message}"
    );
    assert_eq!(
        meta.get("batch").map(String::as_str),
        Some("1"),
        "{case}: {meta:?} {message}"
    );
    let field = meta.get("field").map(String::as_str).unwrap_or_default();
    assert!(
        fields.contains(&field),
        "{case}: field `{field}` is not one of {fields:?}: {meta:?} {message}"
    );
    assert!(
        message.contains(&format!("{TOPIC}/0")),
        "{case}: the message names the batch's partition: {message}"
    );
    assert_eq!(
        high_watermarks(endpoint).await?,
        before,
        "{case}: nothing of the request was written"
    );
    Ok(())
}

/// A flipped payload byte (at the start, in the middle, at the end), and a wrong CRC in
/// the header: the CRC check catches both, and the refusal names `payload_crc32c`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payload_that_fails_its_crc_is_refused() -> anyhow::Result<()> {
    let (_dir, agent) = agent_with_topic().await?;
    let mut producer = ProducerServiceClient::new(cairn_client::connect(&agent.endpoint).await?);
    let ep = agent.endpoint.clone();
    let zstd = good(Codec::Zstd);
    for at in [0, zstd.payload.len() / 2, zstd.payload.len() - 1] {
        let mut flipped = zstd.clone();
        let mut payload = flipped.payload.to_vec();
        payload[at] ^= 0x10;
        flipped.payload = payload.into();
        expect_invalid_frame(
            &mut producer,
            &ep,
            &format!("payload byte {at} flipped"),
            Some(flipped),
            &["payload_crc32c"],
        )
        .await?;
    }
    let crc = lying(&zstd, |h| h.payload_crc32c ^= 1);
    expect_invalid_frame(&mut producer, &ep, "CRC", Some(crc), &["payload_crc32c"]).await?;
    assert_eq!(high_watermarks(&ep).await?, [2, 2]);
    agent.stop().await?;
    Ok(())
}

/// Headers that cannot be true: the count, sizes, codec, format or timestamps.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_headers_are_refused_naming_the_field_and_nothing_is_written() -> anyhow::Result<()> {
    let (_dir, agent) = agent_with_topic().await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let mut producer = ProducerServiceClient::new(channel);
    let zstd = good(Codec::Zstd);
    let plain = good(Codec::None);
    let h = zstd.header.unwrap();
    let ep = agent.endpoint.clone();

    // record_count: none, too many for any frame, too many for the declared size.
    for (case, count, fields) in [
        ("no records", 0, &["record_count"][..]),
        (
            "over the frame limit",
            MAX_FRAME_RECORDS + 1,
            &["record_count"][..],
        ),
        (
            "more records than the bytes can hold",
            h.uncompressed_size,
            &["record_count", "uncompressed_size"][..],
        ),
    ] {
        let frame = lying(&zstd, |h| h.record_count = count);
        expect_invalid_frame(&mut producer, &ep, case, Some(frame), fields).await?;
    }

    // uncompressed_size: an uncompressed payload of another size, and a size that cannot
    // hold the records.
    let ph = plain.header.unwrap();
    for size in [ph.uncompressed_size + 1, ph.uncompressed_size - 1] {
        let frame = lying(&plain, |h| h.uncompressed_size = size);
        expect_invalid_frame(
            &mut producer,
            &ep,
            &format!(
                "CODEC_NONE payload of {} bytes said to be {size}",
                plain.payload.len()
            ),
            Some(frame),
            &["uncompressed_size"],
        )
        .await?;
    }
    let frame = lying(&zstd, |h| h.uncompressed_size = 3);
    expect_invalid_frame(
        &mut producer,
        &ep,
        "3 bytes for 2 records",
        Some(frame),
        &["uncompressed_size"],
    )
    .await?;

    // codec: unset, unknown, and NONE on a compressed payload (its size then disagrees).
    for (case, codec, fields) in [
        (
            "CODEC_UNSPECIFIED",
            Codec::Unspecified as i32,
            &["codec"][..],
        ),
        ("unknown codec 9", 9, &["codec"][..]),
        (
            "CODEC_NONE on a zstd payload",
            Codec::None as i32,
            &["codec", "uncompressed_size"][..],
        ),
    ] {
        let frame = lying(&zstd, |h| h.codec = codec);
        expect_invalid_frame(&mut producer, &ep, case, Some(frame), fields).await?;
    }

    // format: unset, and Kafka records (not accepted over gRPC).
    for format in [
        PayloadFormat::Unspecified as i32,
        PayloadFormat::KafkaRecords as i32,
    ] {
        let frame = lying(&zstd, |h| h.format = format);
        expect_invalid_frame(
            &mut producer,
            &ep,
            &format!("format {format}"),
            Some(frame),
            &["format"],
        )
        .await?;
    }

    // Timestamps: first after last, before the epoch, and an unknown timestamp type.
    let after = lying(&zstd, |h| h.first_timestamp_ms = h.last_timestamp_ms + 1);
    expect_invalid_frame(
        &mut producer,
        &ep,
        "first after last",
        Some(after),
        &["first_timestamp_ms", "last_timestamp_ms"],
    )
    .await?;
    let negative = lying(&zstd, |h| h.first_timestamp_ms = -1);
    expect_invalid_frame(
        &mut producer,
        &ep,
        "negative first",
        Some(negative),
        &["first_timestamp_ms"],
    )
    .await?;
    for t in [TimestampType::Unspecified as i32, 7] {
        let frame = lying(&zstd, |h| h.timestamp_type = t);
        expect_invalid_frame(
            &mut producer,
            &ep,
            &format!("timestamp_type {t}"),
            Some(frame),
            &["timestamp_type"],
        )
        .await?;
    }

    // A frame without a header.
    let headless = Frame {
        header: None,
        payload: zstd.payload.clone(),
    };
    expect_invalid_frame(&mut producer, &ep, "no header", Some(headless), &["header"]).await?;

    // Alone (batch 0 of a one-batch request) the refusal is the same, naming batch 0.
    let mut alone = batch(0, lying(&zstd, |h| h.record_count = 0));
    alone.expected_offset = Some(1);
    let (code, reason, meta, message) =
        refusal(producer.produce(request(vec![alone])).await, "alone");
    assert_eq!(code, Code::InvalidArgument, "{message}");
    assert_eq!(reason, ErrorReason::InvalidFrame.as_str_name(), "{message}");
    assert_eq!(
        (
            meta.get("batch").map(String::as_str),
            meta.get("field").map(String::as_str)
        ),
        (Some("0"), Some("record_count")),
        "{message}"
    );

    // After all that, each partition still holds just its one good record, and the good
    // frames that shared a request with a bad one were never written.
    assert_eq!(high_watermarks(&ep).await?, [2, 2]);
    let records = read_all(&ep, TOPIC).await?;
    let values: Vec<&[u8]> = records.iter().map(|r| &r.value[..]).collect();
    assert_eq!(
        values,
        [&b"first record"[..], &b"second record"[..]].repeat(2),
        "{records:?}"
    );
    agent.stop().await?;
    Ok(())
}

/// A batch whose `frame` is missing altogether is an invalid frame like any other,
/// naming the batch and the field `frame`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_frame_is_an_invalid_frame() -> anyhow::Result<()> {
    let (_dir, agent) = agent_with_topic().await?;
    let mut producer = ProducerServiceClient::new(cairn_client::connect(&agent.endpoint).await?);
    expect_invalid_frame(&mut producer, &agent.endpoint, "no frame", None, &["frame"]).await?;
    agent.stop().await?;
    Ok(())
}
