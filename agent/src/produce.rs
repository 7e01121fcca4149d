//! The Producer service: producer ids, and produce — each frame checked without
//! decompressing (CRC, header sanity), handed to the batcher, and answered once its segment
//! is durable and committed, with per-batch results or, for a single or atomic batch, one
//! status with an ErrorInfo.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use cairn_metadata::{BatchOutcome, ProducerStamp, Rejection, Topic};
use cairn_proto::v2::{self, TimestampType};
use cairn_proto::{FrameError, FrameLimits, check_frame};
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::batcher::{PendingBatch, Ticket};
use crate::error::status_with_reason;
use crate::quota::Kind;
use crate::sequencer::Stamped;
use crate::service::{Shared, Waiting, allow, status, within_quota};
use cairn_metadata::acls::{Operation, ResourceType};

/// Most batches in one produce request.
pub(crate) const MAX_BATCHES_PER_REQUEST: usize = 10_000;

impl Shared {
    /// Validates one produce batch and prepares it for a segment, without decompressing:
    /// checks the frame's CRC and header, and stamps the header with the append time.
    pub(crate) fn prepare(
        &self,
        index: usize,
        topic: &Topic,
        batch: v2::ProduceBatch,
        now_ms: i64,
    ) -> Result<PendingBatch, AgentError> {
        let invalid = |source: FrameError| AgentError::InvalidFrame {
            index,
            topic: batch.topic.clone(),
            partition: batch.partition,
            source,
        };
        let Some(frame) = batch.frame.as_ref() else {
            return Err(invalid(FrameError::Header {
                field: "frame",
                reason: "missing".into(),
            }));
        };
        let limits = FrameLimits {
            max_payload_bytes: self.settings.max_request_bytes,
            max_uncompressed_bytes: u32::try_from(self.settings.max_batch_uncompressed_bytes)
                .unwrap_or(u32::MAX),
        };
        let checked =
            check_frame(frame.header.as_ref(), &frame.payload, &limits).map_err(invalid)?;
        if let Some(e) = batch.expected_offset
            && e < 0
        {
            return Err(AgentError::Invalid(format!(
                "batch {index} ({}/{}): expected_offset must be 0 or more, got {e}",
                batch.topic, batch.partition
            )));
        }
        let mut header = *checked;
        header.append_time_ms = now_ms;
        let (min_ts, max_ts) = if header.timestamp_type == TimestampType::LogAppendTime as i32 {
            (now_ms, now_ms)
        } else {
            (header.first_timestamp_ms, header.last_timestamp_ms)
        };
        let producer = header.producer.map(|p| ProducerStamp {
            producer_id: p.producer_id,
            epoch: p.epoch,
            base_sequence: p.base_sequence,
        });
        let payload = batch.frame.map(|f| f.payload).unwrap_or_default();
        Ok(PendingBatch {
            topic_id: topic.id,
            partition: batch.partition,
            header,
            payload,
            min_ts,
            max_ts,
            producer,
            expected_offset: batch.expected_offset,
        })
    }
}

impl Shared {
    /// Hands `pending` to the segment writer (gRPC and Kafka produces alike), pipelined
    /// batches of one producer in sequence order: a batch whose predecessor has not entered
    /// yet waits its turn (a while) first.
    pub(crate) async fn submit_in_order(
        &self,
        pending: Vec<PendingBatch>,
        atomic: bool,
    ) -> Result<Ticket, AgentError> {
        let stamped: Vec<Stamped> = pending
            .iter()
            .filter_map(|p| {
                p.producer.map(|stamp| Stamped {
                    topic_id: p.topic_id,
                    partition: p.partition,
                    stamp,
                    records: p.header.record_count,
                })
            })
            .collect();
        if self.sequencer.wait_turn(&stamped).await {
            self.metrics.produce_reordered.inc();
        }
        let ticket = self.batcher.submit(pending, atomic).await?;
        self.sequencer.entered(&stamped);
        Ok(ticket)
    }
}

/// The wire form of a batch that was not committed.
fn batch_error(topic: &str, partition: u32, outcome: BatchOutcome) -> Option<v2::BatchError> {
    use v2::ErrorReason as R;
    let mut e = v2::BatchError::default();
    match outcome {
        BatchOutcome::Committed { .. } | BatchOutcome::Duplicate { .. } => return None,
        BatchOutcome::TopicGone => {
            e.set_reason(R::TopicDeleted);
            e.message =
                format!("{topic}/{partition}: the topic was deleted while the batch was in flight");
        }
        BatchOutcome::Rejected(r) => {
            let reason = match r {
                Rejection::OutOfOrderSequence { expected } => {
                    e.expected_sequence = Some(expected);
                    R::OutOfOrderSequence
                }
                Rejection::Fenced { current_epoch } => {
                    e.current_epoch = Some(current_epoch);
                    R::Fenced
                }
                Rejection::UnknownProducer => R::UnknownProducer,
                Rejection::OffsetMismatch { next_offset } => {
                    e.next_offset = Some(next_offset);
                    R::OffsetMismatch
                }
                Rejection::AtomicAborted => R::AtomicAborted,
            };
            e.set_reason(reason);
            e.message = format!("{topic}/{partition}: {r}");
        }
    }
    Some(e)
}

/// A batch failure as the status of a whole call, with a machine-readable ErrorInfo.
fn batch_error_status(e: &v2::BatchError) -> Status {
    use v2::ErrorReason as R;
    let reason = e.reason();
    let mut numbers = std::collections::HashMap::new();
    if let Some(n) = e.next_offset {
        numbers.insert("next_offset".to_string(), n.to_string());
    }
    if let Some(n) = e.expected_sequence {
        numbers.insert("expected_sequence".to_string(), n.to_string());
    }
    if let Some(n) = e.current_epoch {
        numbers.insert("current_epoch".to_string(), n.to_string());
    }
    let code = match reason {
        R::TopicDeleted => tonic::Code::NotFound,
        _ => tonic::Code::FailedPrecondition,
    };
    status_with_reason(code, e.message.clone(), reason, numbers)
}

/// The Producer service.
pub(crate) struct ProducerService(pub(crate) Arc<Shared>);

#[tonic::async_trait]
impl v2::producer_service_server::ProducerService for ProducerService {
    async fn init_producer(
        &self,
        request: Request<v2::InitProducerRequest>,
    ) -> Result<Response<v2::InitProducerResponse>, Status> {
        // A named producer is a resource of its own; an anonymous one is any client's.
        let name = &request.get_ref().name;
        if !name.is_empty() {
            allow(
                &self.0,
                &request,
                Operation::Write,
                ResourceType::Producer,
                name,
            )?;
        }
        let name = request.into_inner().name;
        let id = self
            .0
            .metadata
            .init_producer((!name.is_empty()).then_some(name.as_str()))
            .await
            .map_err(status)?;
        Ok(Response::new(v2::InitProducerResponse {
            producer_id: id.id,
            epoch: id.epoch,
        }))
    }

    #[tracing::instrument(level = "debug", name = "produce", skip_all)]
    async fn produce(
        &self,
        request: Request<v2::ProduceRequest>,
    ) -> Result<Response<v2::ProduceResponse>, Status> {
        let s = &self.0;
        let started = std::time::Instant::now();
        if let Some(e) = s.metadata.damaged() {
            // No segment is written for a commit that would be refused.
            return Err(status(AgentError::Meta(cairn_metadata::MetaError::Kv(e))));
        }
        // Write on every topic of the request, each checked once.
        let topics: std::collections::BTreeSet<&str> = request
            .get_ref()
            .batches
            .iter()
            .map(|b| b.topic.as_str())
            .collect();
        for topic in topics {
            allow(s, &request, Operation::Write, ResourceType::Topic, topic)?;
        }
        // Checked before the request's own limits only for the bytes it carries: a request
        // refused below is charged, as its bytes did arrive.
        let carried: u64 = request
            .get_ref()
            .batches
            .iter()
            .map(|b| b.frame.as_ref().map_or(0, |f| f.payload.len() as u64))
            .sum();
        within_quota(s, &request, Kind::ProduceBytes, carried).await?;
        let v2::ProduceRequest { batches, atomic } = request.into_inner();
        if batches.is_empty() {
            return Err(status(AgentError::Invalid(
                "a produce request needs at least one batch".into(),
            )));
        }
        if batches.len() > MAX_BATCHES_PER_REQUEST {
            return Err(status(AgentError::TooLarge(format!(
                "a produce request may carry at most {MAX_BATCHES_PER_REQUEST} batches, got {}",
                batches.len()
            ))));
        }
        let total: usize = batches
            .iter()
            .map(|b| b.frame.as_ref().map_or(0, |f| f.payload.len()))
            .sum();
        if total > s.settings.max_request_bytes {
            return Err(status(AgentError::TooLarge(format!(
                "the produce request holds {total} payload bytes, over the {}-byte request limit",
                s.settings.max_request_bytes
            ))));
        }
        let now = s.metadata.clock().now_ms();
        let mut pending = Vec::with_capacity(batches.len());
        let mut names = Vec::with_capacity(batches.len());
        for (i, b) in batches.into_iter().enumerate() {
            let topic = s
                .topic_with_partition(&b.topic, b.partition)
                .await
                .map_err(status)?;
            names.push((b.topic.clone(), b.partition));
            pending.push(s.prepare(i, &topic, b, now).map_err(status)?);
        }
        let counts: Vec<u32> = pending.iter().map(|p| p.header.record_count).collect();
        let record_bytes = total as u64;
        let waiting = Waiting::new(&s.gauges.produce_waiting);
        let ticket = s.submit_in_order(pending, atomic).await.map_err(status)?;
        let outcomes = ticket.outcomes().await.map_err(status)?;
        drop(waiting);
        if s.faults.drop_reply() {
            return Err(Status::unavailable(
                "injected fault: the reply was lost after the commit (CAIRN_TEST_FAULTS)",
            ));
        }
        let single = outcomes.len() == 1;
        let mut results = Vec::with_capacity(outcomes.len());
        for ((outcome, (topic, partition)), record_count) in
            outcomes.into_iter().zip(names).zip(counts)
        {
            if outcome == BatchOutcome::TopicGone {
                s.topics.invalidate(&topic).await;
            }
            if matches!(outcome, BatchOutcome::Duplicate { .. }) {
                s.gauges.duplicates.fetch_add(1, Ordering::SeqCst);
            }
            let error = batch_error(&topic, partition, outcome);
            results.push(v2::BatchResult {
                base_offset: outcome.base_offset(),
                duplicate: matches!(outcome, BatchOutcome::Duplicate { .. }),
                topic,
                partition,
                record_count,
                error,
            });
        }
        // One batch, or an atomic request: one fate, so a failure is the call's status
        // (for an atomic request, the batch that caused the abort).
        if single || atomic {
            let errors = || results.iter().filter_map(|r| r.error.as_ref());
            let cause = errors()
                .find(|e| e.reason() != v2::ErrorReason::AtomicAborted)
                .or_else(|| errors().next());
            if let Some(e) = cause {
                return Err(batch_error_status(e));
            }
        }
        let acked: u64 = results
            .iter()
            .filter(|r| r.error.is_none() && !r.duplicate)
            .map(|r| u64::from(r.record_count))
            .sum();
        s.metrics.produce_requests.inc();
        s.metrics.produce_records.inc_by(acked);
        if acked > 0 {
            s.metrics.produce_bytes.inc_by(record_bytes);
        }
        s.metrics
            .produce_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(v2::ProduceResponse { results }))
    }
}
