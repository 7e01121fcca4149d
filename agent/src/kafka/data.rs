//! Produce, Fetch and ListOffsets over Kafka's wire protocol.
//!
//! A produced record batch is checked (length, magic 2, CRC, count) without decompressing
//! and stored as it came, as a `PAYLOAD_FORMAT_KAFKA_RECORDS` frame, through the same
//! segment writer, sequencer and producer state as a gRPC produce. A fetch serves stored
//! Kafka batches as they are (their base offset set to where the commit put them) and
//! encodes the records of Cairn frames (gRPC producers, Parquet) as batches.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use cairn_metadata::acls::{Operation, ResourceType};
use cairn_metadata::{BatchOutcome, MetaError, ProducerStamp, Rejection, Topic};
use cairn_proto::kafka::{
    check_kafka_batch, encode_kafka_batch, kafka_frame_header, put_at_offset,
};
use cairn_proto::v2::{FetchedFrame, PayloadFormat};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use super::{Connection, KafkaError, Reply, encode, error_code};
use crate::AgentError;
use crate::batcher::PendingBatch;
use crate::quota::Kind;
use crate::service::Shared;

/// Largest response a fetch builds, whatever the client asks.
const MAX_FETCH_BYTES: usize = 64 << 20;

/// One partition of a produce request and what became of it.
struct Slot {
    partition: i32,
    /// Set when the partition failed before its batch reached the segment writer.
    error: Option<(i16, String)>,
    /// Its batch's index among those submitted.
    batch: Option<usize>,
    records: u32,
}

/// Produce: the part that must keep the connection's order (validation, the sequencer,
/// entry into the segment writer) runs now; the wait for the commit is the returned reply.
pub(super) async fn produce(
    conn: &Connection,
    req: ProduceRequest,
    version: i16,
    correlation: i32,
) -> Result<Reply, KafkaError> {
    let s = conn.shared.clone();
    let started = Instant::now();
    let principal = conn.principal.as_deref();
    let acks = req.acks;
    let refuse_all = if !matches!(acks, -1..=1) {
        Some((
            ResponseError::InvalidRequiredAcks.code(),
            format!("acks must be -1, 0 or 1, not {acks}"),
        ))
    } else if req.transactional_id.is_some() {
        Some((
            ResponseError::TransactionalIdAuthorizationFailed.code(),
            "Cairn does not serve Kafka transactions".to_string(),
        ))
    } else {
        None
    };
    let now = s.metadata.clock().now_ms();
    let mut topics: Vec<(TopicName, Vec<Slot>)> = Vec::with_capacity(req.topic_data.len());
    let mut pending: Vec<PendingBatch> = Vec::new();
    let mut bytes = 0u64;
    for t in req.topic_data {
        let name = t.name.0.as_str().to_string();
        let allowed = s
            .authz
            .check(principal, Operation::Write, ResourceType::Topic, &name);
        let mut slots = Vec::with_capacity(t.partition_data.len());
        for p in t.partition_data {
            let mut slot = Slot {
                partition: p.index,
                error: refuse_all.clone(),
                batch: None,
                records: 0,
            };
            if slot.error.is_none() {
                if let Err(why) = &allowed {
                    slot.error =
                        Some((ResponseError::TopicAuthorizationFailed.code(), why.clone()));
                } else {
                    match prepare(&s, &name, p.index, p.records, now).await {
                        Ok(batch) => {
                            bytes += batch.payload.len() as u64;
                            slot.records = batch.header.record_count;
                            slot.batch = Some(pending.len());
                            pending.push(batch);
                        }
                        Err(e) => slot.error = Some(e),
                    }
                }
            }
            slots.push(slot);
        }
        topics.push((t.name, slots));
    }
    let mut throttle_ms = 0;
    if !pending.is_empty() {
        match s
            .quotas
            .take(principal, Kind::ProduceBytes, bytes, crate::quota::MAX_HOLD)
        {
            Ok(hold) if !hold.is_zero() => tokio::time::sleep(hold).await,
            Ok(_) => {}
            Err(t) => {
                // Over quota: nothing is stored; the client is told to wait and retry.
                throttle_ms = i32::try_from(t.retry_after.as_millis()).unwrap_or(i32::MAX);
                for (_, slots) in &mut topics {
                    for slot in slots.iter_mut().filter(|s| s.batch.is_some()) {
                        slot.batch = None;
                        slot.error = Some((
                            ResponseError::RequestTimedOut.code(),
                            format!("over the produce quota; retry in {throttle_ms} ms"),
                        ));
                    }
                }
                pending.clear();
            }
        }
    }
    let ticket = if pending.is_empty() {
        None
    } else {
        Some(s.submit_in_order(pending, false).await)
    };
    Ok(Box::pin(async move {
        let outcomes: Result<Vec<BatchOutcome>, AgentError> = match ticket {
            None => Ok(Vec::new()),
            Some(Err(e)) => Err(e),
            Some(Ok(t)) => t.outcomes().await,
        };
        let mut acked = 0u64;
        let responses = topics
            .into_iter()
            .map(|(name, slots)| {
                let partition_responses = slots
                    .into_iter()
                    .map(|slot| {
                        let (code, message, base) = match (&slot.error, slot.batch) {
                            (Some((code, why)), _) => (*code, Some(why.clone()), -1),
                            (None, Some(i)) => match &outcomes {
                                Ok(o) => match o.get(i) {
                                    Some(outcome) => {
                                        let (code, why) = outcome_code(*outcome);
                                        if matches!(outcome, BatchOutcome::Committed { .. }) {
                                            acked += u64::from(slot.records);
                                        }
                                        (code, why, outcome.base_offset().unwrap_or(-1))
                                    }
                                    None => (
                                        ResponseError::UnknownServerError.code(),
                                        Some("the segment writer lost a batch".into()),
                                        -1,
                                    ),
                                },
                                Err(e) => (error_code(e), Some(e.to_string()), -1),
                            },
                            (None, None) => (0, None, -1),
                        };
                        let mut r = PartitionProduceResponse::default()
                            .with_index(slot.partition)
                            .with_error_code(code)
                            .with_base_offset(base)
                            .with_log_append_time_ms(-1);
                        if version >= 8 {
                            r.error_message = message.map(StrBytes::from_string);
                        }
                        r
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(name)
                    .with_partition_responses(partition_responses)
            })
            .collect();
        s.metrics.produce_requests.inc();
        s.metrics.produce_records.inc_by(acked);
        if acked > 0 {
            s.metrics.produce_bytes.inc_by(bytes);
        }
        s.metrics
            .produce_seconds
            .observe(started.elapsed().as_secs_f64());
        if acks == 0 {
            return Ok(None);
        }
        let resp = ProduceResponse::default()
            .with_responses(responses)
            .with_throttle_time_ms(throttle_ms);
        encode(ApiKey::Produce, version, correlation, &resp).map(Some)
    }))
}

/// One partition's records as a batch for the segment writer: exactly one record batch
/// (magic 2), checked and stored as it came.
async fn prepare(
    s: &Shared,
    topic: &str,
    partition: i32,
    records: Option<Bytes>,
    now: i64,
) -> Result<PendingBatch, (i16, String)> {
    let at = format!("{topic}/{partition}");
    let p = u32::try_from(partition).map_err(|_| {
        (
            ResponseError::UnknownTopicOrPartition.code(),
            format!("{at}: no such partition"),
        )
    })?;
    let t = s
        .topic_with_partition(topic, p)
        .await
        .map_err(|e| (error_code(&e), format!("{at}: {e}")))?;
    let batch = records.unwrap_or_default();
    let corrupt = |why: String| (ResponseError::CorruptMessage.code(), format!("{at}: {why}"));
    if batch.len() > s.settings.max_request_bytes {
        return Err((
            ResponseError::MessageTooLarge.code(),
            format!(
                "{at}: a {}-byte batch is over the {}-byte limit",
                batch.len(),
                s.settings.max_request_bytes
            ),
        ));
    }
    if batch.len() < 12 {
        return Err(corrupt("no record batch".into()));
    }
    let declared = i32::from_be_bytes([batch[8], batch[9], batch[10], batch[11]]);
    if usize::try_from(declared).ok().map(|l| l + 12) != Some(batch.len()) {
        return Err((
            ResponseError::InvalidRecord.code(),
            format!("{at}: a produce request carries exactly one record batch per partition"),
        ));
    }
    let info = check_kafka_batch(&batch).map_err(|e| corrupt(e.to_string()))?;
    if info.transactional || info.control {
        return Err((
            ResponseError::InvalidRecord.code(),
            format!("{at}: transactional and control batches are not served"),
        ));
    }
    let mut header = kafka_frame_header(&info, &batch)
        .map_err(|e| (ResponseError::MessageTooLarge.code(), format!("{at}: {e}")))?;
    header.append_time_ms = now;
    Ok(PendingBatch {
        topic_id: t.id,
        partition: p,
        min_ts: header.first_timestamp_ms,
        max_ts: header.last_timestamp_ms,
        producer: info.producer().map(|p| ProducerStamp {
            producer_id: p.producer_id,
            epoch: p.epoch,
            base_sequence: p.base_sequence,
        }),
        header,
        payload: batch,
        expected_offset: None,
    })
}

/// The Kafka error of a batch that was not stored (0 for one that is in the log).
fn outcome_code(outcome: BatchOutcome) -> (i16, Option<String>) {
    let code = match outcome {
        BatchOutcome::Committed { .. } | BatchOutcome::Duplicate { .. } => return (0, None),
        BatchOutcome::TopicGone => ResponseError::UnknownTopicOrPartition,
        BatchOutcome::Rejected(r) => match r {
            Rejection::OutOfOrderSequence { .. } => ResponseError::OutOfOrderSequenceNumber,
            Rejection::Fenced { .. } => ResponseError::InvalidProducerEpoch,
            Rejection::UnknownProducer => ResponseError::UnknownProducerId,
            Rejection::OffsetMismatch { .. } | Rejection::AtomicAborted => {
                ResponseError::InvalidRequest
            }
        },
    };
    let why = match outcome {
        BatchOutcome::Rejected(r) => r.to_string(),
        _ => "the topic was deleted while the batch was in flight".into(),
    };
    (code.code(), Some(why))
}

/// One partition a fetch asks for.
struct Wanted {
    topic: Option<Arc<Topic>>,
    partition: i32,
    offset: i64,
    max_bytes: usize,
    error: i16,
}

/// Fetch: each partition from its offset, waiting up to `max_wait_ms` (within the agent's
/// limit) until the partitions hold `min_bytes` together.
pub(super) async fn fetch(
    s: &Arc<Shared>,
    principal: Option<&str>,
    req: FetchRequest,
    version: i16,
) -> FetchResponse {
    let started = Instant::now();
    let max_wait = Duration::from_millis(u64::try_from(req.max_wait_ms).unwrap_or(0))
        .min(s.settings.max_fetch_wait);
    let deadline = started + max_wait;
    let min_bytes = usize::try_from(req.min_bytes).unwrap_or(0).max(1);
    let max_bytes = usize::try_from(req.max_bytes)
        .ok()
        .filter(|n| *n > 0)
        .unwrap_or(MAX_FETCH_BYTES)
        .min(MAX_FETCH_BYTES);
    let mut wanted: Vec<(TopicName, Vec<Wanted>)> = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.topic.0.as_str().to_string();
        let allowed = s
            .authz
            .check(principal, Operation::Read, ResourceType::Topic, &name);
        let mut parts = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let mut w = Wanted {
                topic: None,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: usize::try_from(p.partition_max_bytes)
                    .unwrap_or(0)
                    .clamp(1, MAX_FETCH_BYTES),
                error: 0,
            };
            if allowed.is_err() {
                w.error = ResponseError::TopicAuthorizationFailed.code();
            } else {
                match u32::try_from(p.partition) {
                    Err(_) => w.error = ResponseError::UnknownTopicOrPartition.code(),
                    Ok(pn) => match s.topic_with_partition(&name, pn).await {
                        Ok(topic) => w.topic = Some(topic),
                        Err(e) => w.error = error_code(&e),
                    },
                }
            }
            parts.push(w);
        }
        wanted.push((t.topic, parts));
    }
    loop {
        let mut total = 0usize;
        let mut responses = Vec::with_capacity(wanted.len());
        let mut watch: Vec<(u64, u32, i64)> = Vec::new();
        for (name, parts) in &wanted {
            let mut partitions = Vec::with_capacity(parts.len());
            for w in parts {
                let budget = max_bytes.saturating_sub(total);
                let (data, bytes, hwm) = partition_data(s, w, budget, version).await;
                total += bytes;
                if let (Some(t), Some(hwm)) = (&w.topic, hwm) {
                    watch.push((t.id, w.partition as u32, hwm));
                }
                partitions.push(data);
            }
            responses.push(
                FetchableTopicResponse::default()
                    .with_topic(name.clone())
                    .with_partitions(partitions),
            );
        }
        let now = Instant::now();
        if total >= min_bytes || now >= deadline || watch.is_empty() {
            if total > 0 {
                s.quotas.charge(principal, Kind::FetchBytes, total as u64);
            }
            s.metrics.fetch_requests.inc();
            s.metrics.fetch_bytes.inc_by(total as u64);
            s.metrics
                .fetch_seconds
                .observe(started.elapsed().as_secs_f64());
            return FetchResponse::default().with_responses(responses);
        }
        // Not enough yet: wait until any partition's high watermark moves past what was seen.
        let left = deadline - now;
        let waits = watch.into_iter().map(|(topic, partition, hwm)| {
            let m = s.metadata.clone();
            Box::pin(async move { m.wait_for_offset(topic, partition, hwm, left).await })
        });
        let _ = futures::future::select_all(waits).await;
    }
}

/// One partition's fetch result: its data, the record bytes in it, and the high watermark
/// (when it was read).
async fn partition_data(
    s: &Shared,
    w: &Wanted,
    budget: usize,
    version: i16,
) -> (PartitionData, usize, Option<i64>) {
    let mut data = PartitionData::default()
        .with_partition_index(w.partition)
        .with_error_code(w.error)
        .with_aborted_transactions(Some(Vec::new()));
    let Some(topic) = &w.topic else {
        return (data, 0, None);
    };
    let partition = w.partition as u32;
    let limit = w.max_bytes.min(budget);
    let result = if limit == 0 {
        // The response is full: report the partition's state without records.
        s.metadata
            .partition_state(topic.id, partition)
            .await
            .map(|st| (Vec::new(), st.next_offset, st.start_offset))
            .map_err(AgentError::from)
    } else {
        s.reader
            .fetch(topic, partition, w.offset, limit, Duration::ZERO)
            .await
            .map(|f| (f.frames, f.high_watermark, f.start_offset))
    };
    match result.and_then(|(frames, hwm, start)| Ok((kafka_records(topic, frames)?, hwm, start))) {
        Ok((records, hwm, start)) => {
            let bytes = records.len();
            data = data
                .with_high_watermark(hwm)
                .with_last_stable_offset(hwm)
                .with_records(Some(records));
            if version >= 5 {
                data.log_start_offset = start;
            }
            (data, bytes, Some(hwm))
        }
        Err(e) => {
            data.error_code = error_code(&e);
            if let AgentError::Meta(MetaError::OffsetOutOfRange { start, hwm, .. }) = &e {
                data.high_watermark = *hwm;
                data.last_stable_offset = *hwm;
                if version >= 5 {
                    data.log_start_offset = *start;
                }
            } else {
                tracing::warn!(topic = %topic.name, partition, error = %e, "a Kafka fetch failed");
            }
            (data, 0, None)
        }
    }
}

/// Stored frames as Kafka record batches: Kafka batches as they are (base offset set),
/// Cairn frames decoded and encoded as uncompressed batches.
fn kafka_records(topic: &Topic, frames: Vec<FetchedFrame>) -> Result<Bytes, AgentError> {
    let size: usize = frames.iter().map(|f| f.payload.len() + 64).sum();
    let mut out = BytesMut::with_capacity(size);
    for f in frames {
        let header = f.header.unwrap_or_default();
        if header.format == PayloadFormat::KafkaRecords as i32 {
            put_at_offset(&mut out, &f.payload, f.base_offset);
        } else {
            let at = format!("{}/{} at offset {}", topic.name, topic.id, f.base_offset);
            let records = cairn_proto::open_frame(&header, f.payload)
                .map_err(|e| cairn_storage::StorageError::corrupt(at, e))?;
            out.extend_from_slice(&encode_kafka_batch(f.base_offset, &records));
        }
    }
    Ok(out.freeze())
}

/// ListOffsets: earliest (-2), latest (-1), or the first record at or after a time.
pub(super) async fn list_offsets(
    s: &Shared,
    principal: Option<&str>,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let allowed = s
            .authz
            .check(principal, Operation::Describe, ResourceType::Topic, &name)
            .is_ok();
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let mut r = ListOffsetsPartitionResponse::default()
                .with_partition_index(p.partition_index)
                .with_timestamp(-1)
                .with_offset(-1);
            if !allowed {
                r.error_code = ResponseError::TopicAuthorizationFailed.code();
            } else {
                match list_offset(s, &name, p.partition_index, p.timestamp).await {
                    Ok((offset, ts)) => {
                        r.offset = offset;
                        r.timestamp = ts;
                    }
                    Err(e) => r.error_code = error_code(&e),
                }
            }
            partitions.push(r);
        }
        topics.push(
            ListOffsetsTopicResponse::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    ListOffsetsResponse::default().with_topics(topics)
}

/// The offset (and record timestamp, or -1) a ListOffsets partition asks for.
async fn list_offset(
    s: &Shared,
    topic: &str,
    partition: i32,
    timestamp: i64,
) -> Result<(i64, i64), AgentError> {
    let p = u32::try_from(partition)
        .map_err(|_| AgentError::TopicNotFound(format!("{topic}/{partition}")))?;
    let t = s.topic_with_partition(topic, p).await?;
    match timestamp {
        -1 | -2 => {
            let st = s.metadata.partition_state(t.id, p).await?;
            let offset = if timestamp == -1 {
                st.next_offset
            } else {
                st.start_offset
            };
            Ok((offset, -1))
        }
        ts if ts >= 0 => Ok(s
            .reader
            .record_for_time(&t, p, ts)
            .await?
            .0
            .unwrap_or((-1, -1))),
        other => Err(AgentError::Invalid(format!(
            "ListOffsets timestamp {other} is not served (-1 latest, -2 earliest, or a time)"
        ))),
    }
}
