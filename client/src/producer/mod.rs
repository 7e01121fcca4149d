//! The batching, idempotent producer.
//!
//! `send` puts a record into the batch of its partition and returns a [`Delivery`] at once.
//! A background task sends pending batches in `Produce` requests as soon as a batch is full,
//! the oldest batch has lingered long enough, or `flush` is called. Up to `max_in_flight`
//! requests are in flight at once.
//!
//! Each batch goes out as one frame (`cairn.v2.Frame`): its records encoded, compressed with
//! [`ProducerConfig::codec`] and checksummed, as CREATE_TIME — a record without a timestamp
//! of its own takes the producer's clock when it is sent. Keyed records without a partition
//! go to Kafka's partition for the key ([`cairn_proto::partition_for_key`]).
//!
//! With idempotence (the default) the producer first gets a producer id from the agent and
//! stamps every batch's frame header with `(producer id, epoch, base sequence)` per
//! partition. The frame is built once, after stamping, and a retry (after UNAVAILABLE, a
//! timeout or a lost response) resends that same frame with the same stamp, so the agent
//! answers with the original offsets instead of writing a second copy. If a later batch
//! reaches the agent before an earlier one of the same partition, the agent holds it back
//! briefly until the earlier one is in (or refuses it as out of order, and the producer
//! resends it once the earlier one is in), so per-partition order holds with up to five
//! requests in flight. A batch that fails for good leaves a gap in its partition's
//! sequence; the producer then waits for its requests in flight, takes a new producer id
//! and carries on.
//!
//! The parts: `accumulator` (per-partition batches and when they are due), `sequencer`
//! (producer id, sequences, the in-flight window, what a failure means), `sender`
//! (frames, the request and its retries, settling deliveries) and `worker` (the background
//! task tying them together).
mod accumulator;
mod sender;
mod sequencer;
mod worker;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::Cluster;
use bytes::Bytes;
use cairn_proto::MAX_FRAME_RECORDS;
use cairn_proto::v2::{self, Codec};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::ClientError;
#[cfg(doc)]
use crate::error::RejectReason;
use sender::OutBatch;
use worker::Worker;

/// Producer tunables.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// How long a batch waits for more records before it is sent.
    pub linger: Duration,
    /// A partition's batch is sent once it holds this many bytes.
    pub batch_max_bytes: usize,
    /// Most record bytes in one request (the agent's default limit is 16 MiB).
    pub request_max_bytes: usize,
    /// Record bytes buffered but not yet acknowledged; `send` waits when it is reached.
    pub buffer_max_bytes: usize,
    /// How long a record may take, retries included, before its delivery fails.
    pub delivery_timeout: Duration,
    /// First wait before a retry; doubled after each failure.
    pub retry_backoff: Duration,
    /// Longest wait between retries.
    pub retry_backoff_max: Duration,
    /// Stamp batches so that retries never write a second copy (default on).
    pub idempotence: bool,
    /// A stable identity for an idempotent producer. A new producer with the same name
    /// fences this one: its batches are then refused as `FENCED`. `None`: anonymous.
    pub name: Option<String>,
    /// Batches of one partition in flight at once (1 to 5 with idempotence, the agent's
    /// memory of a producer's recent batches per partition; a producer writing several
    /// partitions keeps that many per partition). Without idempotence one request is in
    /// flight at a time, to keep order.
    pub max_in_flight: usize,
    /// How long one request may take before it is treated as lost and retried.
    pub request_timeout: Duration,
    /// How long a topic's partition count is trusted before it is read again (Kafka's
    /// `metadata.max.age.ms`): partitions added online get records after at most this long.
    /// Keyed records then hash over the new count, so a key's later records may go to
    /// another partition than its earlier ones.
    pub metadata_max_age: Duration,
    /// How each batch's frame is compressed: [`Codec::Zstd`] (the default),
    /// [`Codec::Lz4Frame`] (faster, larger) or [`Codec::None`]; [`Codec::Unspecified`]
    /// selects zstd. Consumers read every codec, whatever the topic's own codec is.
    pub codec: Codec,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            linger: Duration::from_millis(5),
            batch_max_bytes: 1 << 20,
            request_max_bytes: 8 << 20,
            buffer_max_bytes: 64 << 20,
            delivery_timeout: Duration::from_secs(120),
            retry_backoff: Duration::from_millis(50),
            retry_backoff_max: Duration::from_secs(2),
            idempotence: true,
            name: None,
            max_in_flight: 5,
            request_timeout: Duration::from_secs(30),
            metadata_max_age: Duration::from_secs(30),
            codec: Codec::Zstd,
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProducerRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` picks Kafka's partition for the key
    /// ([`cairn_proto::partition_for_key`]), or any partition for a record without key.
    pub partition: Option<u32>,
    /// Optional key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Ordered headers.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch (Kafka's CreateTime); 0 takes the producer's clock
    /// when the record is sent ([`Producer::send`], [`Producer::append`]). Not negative.
    pub timestamp_ms: i64,
}

impl ProducerRecord {
    /// A record for `topic` holding `value`.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> Self {
        ProducerRecord {
            topic: topic.into(),
            value: value.into(),
            ..ProducerRecord::default()
        }
    }

    /// Sets the key (records with equal keys go to the same partition).
    pub fn key(mut self, key: impl Into<Bytes>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Sends to this partition instead of choosing one.
    pub fn partition(mut self, partition: u32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Adds a header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Sets the timestamp (ms since the Unix epoch; by default the time of sending).
    pub fn timestamp_ms(mut self, ms: i64) -> Self {
        self.timestamp_ms = ms;
        self
    }

    pub(crate) fn size(&self) -> usize {
        self.key.as_ref().map_or(0, Bytes::len)
            + self.value.len()
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len() + 4)
                .sum::<usize>()
            + 16
    }
}

/// Where an acknowledged record was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset in the partition.
    pub offset: i64,
}

type Ack = oneshot::Sender<Result<RecordMetadata, ClientError>>;

/// Resolves once the record is durable (or its delivery failed for good).
#[derive(Debug)]
pub struct Delivery {
    rx: oneshot::Receiver<Result<RecordMetadata, ClientError>>,
}

impl Future for Delivery {
    type Output = Result<RecordMetadata, ClientError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// Records for one partition, appended as one batch: all commit together, at dense offsets.
#[derive(Debug, Clone, Default)]
pub struct AppendBatch {
    /// Destination topic.
    pub topic: String,
    /// Destination partition.
    pub partition: u32,
    /// The records; their own `topic` and `partition` fields are ignored.
    pub records: Vec<ProducerRecord>,
    /// Commit only if the partition's next offset is this (optimistic concurrency for event
    /// sourcing); otherwise the append fails with [`RejectReason::OffsetMismatch`] and the
    /// partition's actual next offset.
    pub expected_offset: Option<i64>,
}

impl AppendBatch {
    /// A batch of `records` for `topic`/`partition`.
    pub fn new(topic: impl Into<String>, partition: u32, records: Vec<ProducerRecord>) -> Self {
        AppendBatch {
            topic: topic.into(),
            partition,
            records,
            expected_offset: None,
        }
    }

    /// Makes the append conditional on the partition's next offset.
    pub fn expect_offset(mut self, offset: i64) -> Self {
        self.expected_offset = Some(offset);
        self
    }
}

/// Where an appended batch was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendResult {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The offset of the batch's first record.
    pub base_offset: i64,
    /// Records in the batch (at `base_offset..base_offset + record_count`).
    pub record_count: u32,
}

enum Msg {
    Record(ProducerRecord, Ack, OwnedSemaphorePermit),
    /// Batches sent as a request of their own, after everything queued before them.
    Request(Vec<OutBatch>, bool),
    Flush(oneshot::Sender<()>),
}

/// A batching producer. Share one between tasks behind an `Arc`; `send` takes `&self`.
#[derive(Debug)]
pub struct Producer {
    tx: mpsc::Sender<Msg>,
    buffer: Arc<Semaphore>,
    buffer_max: usize,
    task: JoinHandle<()>,
}

impl Producer {
    /// A producer over `cluster` (a [`Cluster`] or one agent's
    /// [`Channel`](crate::Channel)); its background task starts at once (the producer id
    /// is fetched with the first request).
    pub fn new(cluster: impl Into<Cluster>, config: ProducerConfig) -> Self {
        let channel = cluster.into();
        let (tx, rx) = mpsc::channel(4096);
        let buffer_max = config.buffer_max_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let worker = Worker::new(channel, config);
        let task = tokio::spawn(worker.run(rx));
        Producer {
            tx,
            buffer: Arc::new(Semaphore::new(buffer_max)),
            buffer_max,
            task,
        }
    }

    async fn permit(&self, size: usize) -> Result<OwnedSemaphorePermit, ClientError> {
        let want = u32::try_from(size.min(self.buffer_max)).unwrap_or(u32::MAX);
        self.buffer
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Queues a record; waits only while the producer's buffer is full. Await the returned
    /// [`Delivery`] for the record's offset.
    pub async fn send(&self, mut record: ProducerRecord) -> Result<Delivery, ClientError> {
        if record.topic.is_empty() {
            return Err(ClientError::Invalid(
                "record has an empty topic name".into(),
            ));
        }
        set_timestamp(&mut record, wall_clock_ms())?;
        let permit = self.permit(record.size()).await?;
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(record, ack, permit))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Delivery { rx })
    }

    /// Appends `batch` as one batch, in order after everything sent before, and waits until
    /// it is committed (or refused: see [`AppendBatch::expected_offset`]).
    pub async fn append(&self, batch: AppendBatch) -> Result<AppendResult, ClientError> {
        let mut results = self.append_many(vec![batch], false).await?;
        results
            .pop()
            .ok_or_else(|| ClientError::Invalid("the agent answered no result".into()))
    }

    /// Appends batches for several partitions atomically: all of them commit, in one
    /// metadata transaction, or none does, and readers never see part of them. If one is
    /// refused (say its expected offset is stale) the others fail with
    /// [`RejectReason::AtomicAborted`] and the call fails with the cause.
    pub async fn append_atomic(
        &self,
        batches: Vec<AppendBatch>,
    ) -> Result<Vec<AppendResult>, ClientError> {
        self.append_many(batches, true).await
    }

    async fn append_many(
        &self,
        batches: Vec<AppendBatch>,
        atomic: bool,
    ) -> Result<Vec<AppendResult>, ClientError> {
        if batches.is_empty() {
            return Err(ClientError::Invalid(
                "an append needs at least one batch".into(),
            ));
        }
        let now_ms = wall_clock_ms();
        let mut out = Vec::with_capacity(batches.len());
        let mut waits = Vec::with_capacity(batches.len());
        for mut b in batches {
            if b.topic.is_empty() {
                return Err(ClientError::Invalid("batch has an empty topic name".into()));
            }
            if b.records.is_empty() || b.records.len() > MAX_FRAME_RECORDS as usize {
                return Err(ClientError::Invalid(format!(
                    "the batch for {}/{} has {} records; a batch holds 1 to {MAX_FRAME_RECORDS}",
                    b.topic,
                    b.partition,
                    b.records.len()
                )));
            }
            for r in &mut b.records {
                set_timestamp(r, now_ms)?;
            }
            let size: usize = b.records.iter().map(ProducerRecord::size).sum();
            let permit = self.permit(size).await?;
            let count = b.records.len();
            let (acks, rxs): (Vec<Ack>, Vec<_>) = (0..count).map(|_| oneshot::channel()).unzip();
            waits.push((b.topic.clone(), b.partition, rxs));
            out.push(OutBatch {
                key: (b.topic, b.partition),
                ordinal: 0,
                records: b.records.into_iter().map(to_wire).collect(),
                expected_offset: b.expected_offset,
                stamp: None,
                acks,
                _permits: vec![permit],
            });
        }
        self.tx
            .send(Msg::Request(out, atomic))
            .await
            .map_err(|_| ClientError::Closed)?;
        let mut results = Vec::with_capacity(waits.len());
        for (topic, partition, rxs) in waits {
            let mut base = None;
            let count = rxs.len();
            for rx in rxs {
                let meta = Delivery { rx }.await?;
                base.get_or_insert(meta.offset);
            }
            results.push(AppendResult {
                topic,
                partition,
                base_offset: base.unwrap_or(-1),
                record_count: u32::try_from(count).unwrap_or(u32::MAX),
            });
        }
        Ok(results)
    }

    /// Sends everything buffered now and waits until all of it is answered.
    pub async fn flush(&self) -> Result<(), ClientError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Msg::Flush(done))
            .await
            .map_err(|_| ClientError::Closed)?;
        wait.await.map_err(|_| ClientError::Closed)
    }

    /// Sends everything buffered, waits for the answers and stops the background task.
    /// (Dropping a producer without closing it also sends what is buffered, but nobody
    /// waits for it.)
    pub async fn close(self) -> Result<(), ClientError> {
        drop(self.tx);
        self.task
            .await
            .map_err(|e| ClientError::Invalid(format!("producer task failed: {e}")))
    }
}

/// The producer's clock, read when a record is sent: the one place the client reads wall
/// time.
#[allow(clippy::disallowed_methods)] // CreateTime is the producer's wall clock by definition
fn wall_clock_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Gives a record without a timestamp of its own the time `now_ms` (Kafka's CreateTime);
/// refuses a negative one, which no frame may carry.
fn set_timestamp(record: &mut ProducerRecord, now_ms: i64) -> Result<(), ClientError> {
    match record.timestamp_ms {
        0 => record.timestamp_ms = now_ms,
        t if t < 0 => {
            return Err(ClientError::Invalid(format!(
                "a record's timestamp must be 0 (now) or more ms since the Unix epoch, got {t}"
            )));
        }
        _ => {}
    }
    Ok(())
}

fn to_wire(record: ProducerRecord) -> v2::Record {
    v2::Record {
        timestamp_ms: record.timestamp_ms,
        key: record.key.unwrap_or_default(),
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|(key, value)| v2::RecordHeader { key, value })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_without_a_timestamp_take_the_producers_clock() {
        let mut r = ProducerRecord::new("t", "v");
        set_timestamp(&mut r, 42).expect("valid");
        assert_eq!(r.timestamp_ms, 42);
        let mut r = ProducerRecord::new("t", "v").timestamp_ms(7);
        set_timestamp(&mut r, 42).expect("valid");
        assert_eq!(r.timestamp_ms, 7);
        let mut r = ProducerRecord::new("t", "v").timestamp_ms(-1);
        assert!(matches!(
            set_timestamp(&mut r, 42),
            Err(ClientError::Invalid(_))
        ));
        assert!(wall_clock_ms() > 1_600_000_000_000);
    }

    #[test]
    fn the_default_codec_is_zstd() {
        assert_eq!(ProducerConfig::default().codec, Codec::Zstd);
    }
}

/// Helpers for the parts' unit tests.
#[cfg(test)]
pub(super) mod testing {
    use super::*;

    /// `values` as wire records of `topic`, with keys, a header and timestamps.
    pub(super) fn records(topic: &str, values: &[&str]) -> Vec<v2::Record> {
        values
            .iter()
            .enumerate()
            .map(|(i, v)| {
                to_wire(
                    ProducerRecord::new(topic, v.to_string())
                        .key(format!("k{i}"))
                        .header("h", "v")
                        .timestamp_ms(1_700_000_000_000 + i as i64),
                )
            })
            .collect()
    }

    /// A batch of `values` for `topic`/`partition`, with its deliveries' receivers.
    pub(super) fn out_batch(
        topic: &str,
        partition: u32,
        values: &[&str],
    ) -> (
        OutBatch,
        Vec<oneshot::Receiver<Result<RecordMetadata, ClientError>>>,
    ) {
        let buffer = Arc::new(Semaphore::new(1 << 20));
        let (acks, rxs): (Vec<Ack>, Vec<_>) = values.iter().map(|_| oneshot::channel()).unzip();
        let batch = OutBatch {
            key: (topic.to_string(), partition),
            ordinal: 0,
            records: records(topic, values),
            expected_offset: None,
            stamp: None,
            acks,
            _permits: vec![buffer.try_acquire_owned().expect("a free permit")],
        };
        (batch, rxs)
    }

    /// A channel to nowhere (nothing in these tests connects).
    pub(super) fn channel() -> Cluster {
        Cluster::from(tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy())
    }
}
