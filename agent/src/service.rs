//! The gRPC services (Admin, Producer, Consumer): request validation, topic lookup through a
//! short-lived cache, and translation between the wire types and the agent's internals.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use cairn_metadata::{
    BatchOutcome, Codec, MetaError, Metadata, ProducerStamp, Rejection, Topic, TopicSpec,
};
use cairn_proto::v1::{self, Compression, RecordBatch};
use prost::Message;
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::AgentSettings;
use crate::batcher::{Batcher, PendingBatch};
use crate::faults::Faults;
use crate::fetch::Reader;

/// Most batches in one produce request.
pub(crate) const MAX_BATCHES_PER_REQUEST: usize = 10_000;
/// Default and largest `max_bytes` of a fetch.
const DEFAULT_FETCH_BYTES: usize = 1 << 20;
const MAX_FETCH_BYTES: usize = 64 << 20;

/// State shared by the three services.
pub(crate) struct Shared {
    pub(crate) settings: AgentSettings,
    pub(crate) metadata: Metadata,
    pub(crate) batcher: Batcher,
    pub(crate) reader: Reader,
    pub(crate) topics: moka::future::Cache<String, Arc<Topic>>,
    pub(crate) gauges: Arc<AgentGauges>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) metrics: Arc<crate::metrics::AgentMetrics>,
    pub(crate) store_url: String,
    pub(crate) started_ms: i64,
}

/// Live counts of what an agent is doing, for tests and (later) metrics.
#[derive(Debug, Default)]
pub struct AgentGauges {
    produce_waiting: AtomicU64,
    duplicates: AtomicU64,
}

impl AgentGauges {
    /// Produce requests validated and waiting for their segment's PUT and commit.
    pub fn produce_waiting(&self) -> u64 {
        self.produce_waiting.load(Ordering::SeqCst)
    }

    /// Batches recognised as retries of committed ones and answered with their original
    /// offsets instead of being stored again.
    pub fn duplicates_answered(&self) -> u64 {
        self.duplicates.load(Ordering::SeqCst)
    }
}

/// Counts a produce request as waiting while it is alive.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// A topic by name, cached for `topic_cache_ttl`.
    pub(crate) async fn topic(&self, name: &str) -> Result<Arc<Topic>, AgentError> {
        if name.is_empty() {
            return Err(AgentError::Invalid("topic name is empty".into()));
        }
        let metadata = self.metadata.clone();
        let owned = name.to_string();
        self.topics
            .try_get_with(owned.clone(), async move {
                metadata.topic(&owned).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<MetaError>| match e.as_ref() {
                MetaError::TopicNotFound(n) => AgentError::TopicNotFound(n.clone()),
                other => AgentError::Shared {
                    kind: other.kind(),
                    message: other.to_string(),
                },
            })
    }

    /// A topic whose partition count covers `partition`, re-reading a cached topic once in
    /// case partitions were added since.
    pub(crate) async fn topic_with_partition(
        &self,
        name: &str,
        partition: u32,
    ) -> Result<Arc<Topic>, AgentError> {
        let topic = self.topic(name).await?;
        if partition < topic.partitions {
            return Ok(topic);
        }
        self.topics.invalidate(name).await;
        let topic = self.topic(name).await?;
        topic.check_partition(partition)?;
        Ok(topic)
    }

    /// Validates one produce batch and prepares it for a segment: decodes the records,
    /// checks sizes, stamps missing timestamps, compresses with the topic's codec.
    pub(crate) fn prepare(
        &self,
        index: usize,
        topic: &Topic,
        batch: v1::PartitionBatch,
        now_ms: i64,
    ) -> Result<PendingBatch, AgentError> {
        let at = || format!("batch {index} ({}/{})", batch.topic, batch.partition);
        let mut records = RecordBatch::decode(batch.records.clone()).map_err(|e| {
            AgentError::Invalid(format!(
                "{}: `records` is not an encoded RecordBatch: {e}",
                at()
            ))
        })?;
        if records.records.is_empty() {
            return Err(AgentError::Invalid(format!("{}: holds no records", at())));
        }
        let producer = if batch.producer_id == 0 {
            if batch.producer_epoch != 0 || batch.base_sequence != 0 {
                return Err(AgentError::Invalid(format!(
                    "{}: producer_epoch and base_sequence need a producer_id (0 means none)",
                    at()
                )));
            }
            None
        } else {
            if batch.base_sequence < 0 {
                return Err(AgentError::Invalid(format!(
                    "{}: base_sequence must be 0 or more, got {}",
                    at(),
                    batch.base_sequence
                )));
            }
            Some(ProducerStamp {
                producer_id: batch.producer_id,
                epoch: batch.producer_epoch,
                base_sequence: batch.base_sequence,
            })
        };
        if let Some(e) = batch.expected_offset
            && e < 0
        {
            return Err(AgentError::Invalid(format!(
                "{}: expected_offset must be 0 or more, got {e}",
                at()
            )));
        }
        let record_count = u32::try_from(records.records.len())
            .map_err(|_| AgentError::TooLarge(format!("{}: too many records", at())))?;
        let mut stamped = false;
        let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
        for (j, r) in records.records.iter_mut().enumerate() {
            let size = r.key.len()
                + r.value.len()
                + r.headers
                    .iter()
                    .map(|h| h.key.len() + h.value.len())
                    .sum::<usize>();
            if size > self.settings.max_record_bytes {
                return Err(AgentError::TooLarge(format!(
                    "{}: record {j} is {size} bytes, over the {}-byte record limit",
                    at(),
                    self.settings.max_record_bytes
                )));
            }
            if r.timestamp_ms < 0 {
                return Err(AgentError::Invalid(format!(
                    "{}: record {j} has a negative timestamp {}",
                    at(),
                    r.timestamp_ms
                )));
            }
            if r.timestamp_ms == 0 {
                r.timestamp_ms = now_ms;
                stamped = true;
            }
            min_ts = min_ts.min(r.timestamp_ms);
            max_ts = max_ts.max(r.timestamp_ms);
        }
        let raw: Bytes = if stamped {
            Bytes::from(records.encode_to_vec())
        } else {
            batch.records
        };
        let compression = codec_to_proto(topic.codec);
        let payload = cairn_proto::compress(compression, &raw)
            .map_err(|e| AgentError::Internal(format!("{}: {e}", at())))?;
        Ok(PendingBatch {
            topic_id: topic.id,
            partition: batch.partition,
            record_count,
            compression,
            payload,
            min_ts,
            max_ts,
            producer,
            expected_offset: batch.expected_offset,
        })
    }
}

/// The wire form of a batch that was not committed.
fn batch_error(topic: &str, partition: u32, outcome: BatchOutcome) -> Option<v1::BatchError> {
    use v1::ProduceErrorReason as R;
    let mut e = v1::BatchError::default();
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
                    e.expected_sequence = expected;
                    R::OutOfOrderSequence
                }
                Rejection::Fenced { current_epoch } => {
                    e.current_epoch = current_epoch;
                    R::Fenced
                }
                Rejection::UnknownProducer => R::UnknownProducer,
                Rejection::OffsetMismatch { next_offset } => {
                    e.next_offset = next_offset;
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
fn batch_error_status(e: &v1::BatchError) -> Status {
    use tonic_types::{ErrorDetails, StatusExt};
    use v1::ProduceErrorReason as R;
    let reason = e.reason();
    let mut metadata = std::collections::HashMap::new();
    match reason {
        R::OffsetMismatch => {
            metadata.insert("next_offset".to_string(), e.next_offset.to_string());
        }
        R::OutOfOrderSequence => {
            metadata.insert(
                "expected_sequence".to_string(),
                e.expected_sequence.to_string(),
            );
        }
        R::Fenced => {
            metadata.insert("current_epoch".to_string(), e.current_epoch.to_string());
        }
        _ => {}
    }
    let code = match reason {
        R::TopicDeleted => tonic::Code::NotFound,
        _ => tonic::Code::FailedPrecondition,
    };
    Status::with_error_details(
        code,
        e.message.clone(),
        ErrorDetails::with_error_info(reason.as_str_name(), "cairn", metadata),
    )
}

pub(crate) fn codec_to_proto(c: Codec) -> Compression {
    match c {
        Codec::None => Compression::None,
        Codec::Zstd => Compression::Zstd,
        Codec::Lz4 => Compression::Lz4,
    }
}

fn codec_from_proto(code: i32) -> Result<Codec, AgentError> {
    match Compression::try_from(code) {
        Ok(Compression::Unspecified | Compression::Zstd) => Ok(Codec::Zstd),
        Ok(Compression::None) => Ok(Codec::None),
        Ok(Compression::Lz4) => Ok(Codec::Lz4),
        Err(_) => Err(AgentError::Invalid(format!(
            "unknown compression code {code}: use NONE (1), ZSTD (2) or LZ4 (3)"
        ))),
    }
}

fn topic_info(t: &Topic) -> v1::TopicInfo {
    v1::TopicInfo {
        name: t.name.clone(),
        topic_id: t.id,
        partitions: t.partitions,
        compression: codec_to_proto(t.codec) as i32,
        retention_ms: t.retention_ms,
        retention_bytes: t.retention_bytes,
        created_at_ms: t.created_at_ms,
    }
}

/// An error as the gRPC status its kind maps to.
pub(crate) fn status(e: impl Into<AgentError>) -> Status {
    let e: AgentError = e.into();
    Status::from(e)
}

/// INVALID_ARGUMENT unless the named field is set.
pub(crate) fn need(what: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(status(AgentError::Invalid(format!("{what} is empty"))));
    }
    Ok(())
}

/// The Admin service.
pub(crate) struct AdminService(pub(crate) Arc<Shared>);
/// The Producer service.
pub(crate) struct ProducerService(pub(crate) Arc<Shared>);
/// The Consumer service.
pub(crate) struct ConsumerService(pub(crate) Arc<Shared>);

#[tonic::async_trait]
impl v1::admin_server::Admin for AdminService {
    async fn create_topic(
        &self,
        request: Request<v1::CreateTopicRequest>,
    ) -> Result<Response<v1::CreateTopicResponse>, Status> {
        let r = request.into_inner();
        let default = |v: i64| if v == 0 { -1 } else { v };
        let spec = TopicSpec {
            name: r.name,
            partitions: r.partitions,
            codec: codec_from_proto(r.compression).map_err(status)?,
            retention_ms: default(r.retention_ms),
            retention_bytes: default(r.retention_bytes),
        };
        let topic = self.0.metadata.create_topic(&spec).await.map_err(status)?;
        self.0.topics.invalidate(&topic.name).await;
        Ok(Response::new(v1::CreateTopicResponse {
            topic: Some(topic_info(&topic)),
        }))
    }

    async fn list_topics(
        &self,
        _request: Request<v1::ListTopicsRequest>,
    ) -> Result<Response<v1::ListTopicsResponse>, Status> {
        let topics = self.0.metadata.list_topics().await.map_err(status)?;
        Ok(Response::new(v1::ListTopicsResponse {
            topics: topics.iter().map(topic_info).collect(),
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v1::DescribeTopicRequest>,
    ) -> Result<Response<v1::DescribeTopicResponse>, Status> {
        let name = request.into_inner().name;
        need("topic name", &name)?;
        let topic = self.0.metadata.topic(&name).await.map_err(status)?;
        let states = self
            .0
            .metadata
            .partition_states(&topic)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::DescribeTopicResponse {
            topic: Some(topic_info(&topic)),
            partitions: states
                .iter()
                .map(|s| v1::PartitionInfo {
                    partition: s.partition,
                    start_offset: s.start_offset,
                    high_watermark: s.next_offset,
                    bytes: s.bytes,
                    records: (s.next_offset - s.start_offset).max(0) as u64,
                    index_entries: s.index_entries,
                })
                .collect(),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<v1::DeleteTopicRequest>,
    ) -> Result<Response<v1::DeleteTopicResponse>, Status> {
        let name = request.into_inner().name;
        need("topic name", &name)?;
        self.0.metadata.delete_topic(&name).await.map_err(status)?;
        self.0.topics.invalidate(&name).await;
        Ok(Response::new(v1::DeleteTopicResponse {}))
    }

    async fn delete_records(
        &self,
        request: Request<v1::DeleteRecordsRequest>,
    ) -> Result<Response<v1::DeleteRecordsResponse>, Status> {
        let r = request.into_inner();
        need("topic name", &r.topic)?;
        let start_offset = self
            .0
            .metadata
            .delete_records(&r.topic, r.partition, r.before_offset)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::DeleteRecordsResponse { start_offset }))
    }

    async fn agent_status(
        &self,
        _request: Request<v1::AgentStatusRequest>,
    ) -> Result<Response<v1::AgentStatusResponse>, Status> {
        let s = &self.0;
        s.metrics.sync(&s.metadata);
        let m = &s.metrics;
        let topics = s.metadata.list_topics().await.map_err(status)?.len() as u32;
        let store = m.store.snapshot();
        Ok(Response::new(v1::AgentStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: s.started_ms,
            uptime_seconds: m.uptime_secs(),
            object_store: s.store_url.clone(),
            metadata_backend: s.metadata.kv().name().to_string(),
            topics,
            produce_requests: m.produce_requests.get(),
            produce_records: m.produce_records.get(),
            produce_bytes: m.produce_bytes.get(),
            fetch_requests: m.fetch_requests.get(),
            fetch_bytes: m.fetch_bytes.get(),
            cache_hits: m.cache_hits.get(),
            cache_misses: m.cache_misses.get(),
            object_puts: store.puts,
            object_gets: store.gets,
            object_put_bytes: store.put_bytes,
            object_get_bytes: store.get_bytes,
            metadata_commits: m.commits.get(),
            metadata_retries: m.metadata_retries(),
            cpu_seconds: crate::metrics::process_cpu_seconds(),
        }))
    }

    async fn add_partitions(
        &self,
        request: Request<v1::AddPartitionsRequest>,
    ) -> Result<Response<v1::AddPartitionsResponse>, Status> {
        let r = request.into_inner();
        let topic = self
            .0
            .metadata
            .add_partitions(&r.name, r.partitions)
            .await
            .map_err(status)?;
        self.0.topics.invalidate(&r.name).await;
        Ok(Response::new(v1::AddPartitionsResponse {
            topic: Some(topic_info(&topic)),
        }))
    }
}

#[tonic::async_trait]
impl v1::producer_server::Producer for ProducerService {
    async fn init_producer(
        &self,
        request: Request<v1::InitProducerRequest>,
    ) -> Result<Response<v1::InitProducerResponse>, Status> {
        let name = request.into_inner().name;
        let id = self
            .0
            .metadata
            .init_producer((!name.is_empty()).then_some(name.as_str()))
            .await
            .map_err(status)?;
        Ok(Response::new(v1::InitProducerResponse {
            producer_id: id.id,
            epoch: id.epoch,
        }))
    }

    #[tracing::instrument(level = "debug", name = "produce", skip_all)]
    async fn produce(
        &self,
        request: Request<v1::ProduceRequest>,
    ) -> Result<Response<v1::ProduceResponse>, Status> {
        let s = &self.0;
        let started = std::time::Instant::now();
        let v1::ProduceRequest { batches, atomic } = request.into_inner();
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
        let total: usize = batches.iter().map(|b| b.records.len()).sum();
        if total > s.settings.max_request_bytes {
            return Err(status(AgentError::TooLarge(format!(
                "the produce request holds {total} bytes of records, over the {}-byte request limit",
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
        let counts: Vec<u32> = pending.iter().map(|p| p.record_count).collect();
        let record_bytes = total as u64;
        let waiting = Waiting::new(&s.gauges.produce_waiting);
        let outcomes = s.batcher.append(pending, atomic).await.map_err(status)?;
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
            results.push(v1::BatchResult {
                base_offset: outcome.base_offset().unwrap_or(-1),
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
                .find(|e| e.reason() != v1::ProduceErrorReason::AtomicAborted)
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
        Ok(Response::new(v1::ProduceResponse { results }))
    }
}

#[tonic::async_trait]
impl v1::consumer_server::Consumer for ConsumerService {
    #[tracing::instrument(level = "debug", name = "fetch", skip_all)]
    async fn fetch(
        &self,
        request: Request<v1::FetchRequest>,
    ) -> Result<Response<v1::FetchResponse>, Status> {
        let s = &self.0;
        let started = std::time::Instant::now();
        let r = request.into_inner();
        if r.offset < 0 {
            return Err(status(AgentError::Invalid(format!(
                "offset must be 0 or more, got {}",
                r.offset
            ))));
        }
        let max_wait = Duration::from_millis(u64::from(r.max_wait_ms));
        if max_wait > s.settings.max_fetch_wait {
            return Err(status(AgentError::Invalid(format!(
                "max_wait_ms {} is over this agent's limit of {} ms",
                r.max_wait_ms,
                s.settings.max_fetch_wait.as_millis()
            ))));
        }
        let max_bytes = match r.max_bytes as usize {
            0 => DEFAULT_FETCH_BYTES,
            n => n.min(MAX_FETCH_BYTES),
        };
        let topic = s
            .topic_with_partition(&r.topic, r.partition)
            .await
            .map_err(status)?;
        let fetched = s
            .reader
            .fetch(&topic, r.partition, r.offset, max_bytes, max_wait)
            .await
            .map_err(status)?;
        s.metrics.fetch_requests.inc();
        s.metrics
            .fetch_bytes
            .inc_by(fetched.batches.iter().map(|b| b.data.len() as u64).sum());
        s.metrics
            .fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(v1::FetchResponse {
            batches: fetched.batches,
            high_watermark: fetched.high_watermark,
            start_offset: fetched.start_offset,
        }))
    }
}
