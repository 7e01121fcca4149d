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
//! reaches the agent before an earlier one of the same partition, the agent refuses it as
//! out of order and the producer resends it once the earlier one is in, so per-partition
//! order holds.
//! A batch that fails for good leaves a gap in its partition's sequence; the producer then
//! waits for its requests in flight, takes a new producer id and carries on.
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::v2::{
    self, Codec, ProduceBatch, ProducerStamp, admin_service_client::AdminServiceClient,
    producer_service_client::ProducerServiceClient,
};
use cairn_proto::{FrameError, MAX_FRAME_RECORDS, build_frame, partition_for_key};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::{RejectReason, Rejected, batch_error_status};
use crate::{ClientError, MAX_MESSAGE_BYTES};

/// How long a topic's partition count is trusted before it is read again.
const TOPIC_TTL: Duration = Duration::from_secs(30);

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
    /// Requests in flight at once (1 to 5 with idempotence; 1 without, to keep order).
    pub max_in_flight: usize,
    /// How long one request may take before it is treated as lost and retried.
    pub request_timeout: Duration,
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

    fn size(&self) -> usize {
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
    /// A producer over `channel`; its background task starts at once (the producer id is
    /// fetched with the first request).
    pub fn new(channel: Channel, config: ProducerConfig) -> Self {
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

type PartitionKey = (String, u32);

struct Pending {
    records: Vec<v2::Record>,
    /// Each record's size, to split a batch that outgrew a request.
    sizes: Vec<usize>,
    acks: Vec<Ack>,
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
    since: Instant,
}

/// One batch on its way, with the acks of its records (in order).
struct OutBatch {
    key: PartitionKey,
    /// The batch's position among its partition's stamped batches under this producer id.
    ordinal: u64,
    /// The records, until [`OutBatch::build`] moves them into the frame.
    records: Vec<v2::Record>,
    /// Commit only at this next offset of the partition.
    expected_offset: Option<i64>,
    /// The idempotent producer's stamp, set when the batch is stamped for sending.
    stamp: Option<ProducerStamp>,
    acks: Vec<Ack>,
    _permits: Vec<OwnedSemaphorePermit>,
}

impl OutBatch {
    /// Builds the batch's frame, with its stamp (if any) in the header. Done once, after
    /// stamping: every attempt of the request sends this same frame, so a retry carries the
    /// same stamp. On failure the batch comes back with the error (boxed: it is rare).
    fn build(mut self, codec: Codec) -> Result<Built, Box<(OutBatch, FrameError)>> {
        match build_frame(std::mem::take(&mut self.records), codec, self.stamp) {
            Ok(frame) => Ok(Built {
                wire: ProduceBatch {
                    topic: self.key.0.clone(),
                    partition: self.key.1,
                    frame: Some(frame),
                    expected_offset: self.expected_offset,
                },
                batch: self,
            }),
            Err(e) => Err(Box::new((self, e))),
        }
    }
}

/// A batch with its frame built: what each attempt of its request sends.
struct Built {
    wire: ProduceBatch,
    batch: OutBatch,
}

/// The request carrying `batches`, the same for every attempt.
fn produce_request(batches: &[Built], atomic: bool) -> v2::ProduceRequest {
    v2::ProduceRequest {
        batches: batches.iter().map(|b| b.wire.clone()).collect(),
        atomic,
    }
}

/// One request's batches.
struct Outgoing {
    batches: Vec<OutBatch>,
    atomic: bool,
}

/// What the request tasks share with the worker.
#[derive(Default)]
struct SendState {
    /// Ordinals of stamped batches not yet answered, per partition.
    unanswered: Mutex<HashMap<PartitionKey, BTreeSet<u64>>>,
    /// A batch failed for good and left a gap: take a new producer id before sending more.
    reset: AtomicBool,
    /// A newer instance of this named producer exists: nothing more can be sent.
    fenced: Mutex<Option<Rejected>>,
}

impl SendState {
    fn sent(&self, b: &OutBatch) {
        if b.stamp.is_some() {
            let mut u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            u.entry(b.key.clone()).or_default().insert(b.ordinal);
        }
    }

    fn answered(&self, b: &OutBatch) {
        if b.stamp.is_some() {
            let mut u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(set) = u.get_mut(&b.key) {
                set.remove(&b.ordinal);
                if set.is_empty() {
                    u.remove(&b.key);
                }
            }
        }
    }

    /// The oldest unanswered batch ordinal of a partition.
    fn oldest(&self, key: &PartitionKey) -> Option<u64> {
        let u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        u.get(key).and_then(|set| set.first().copied())
    }

    /// Whether an out-of-order refusal of `b` only means that an earlier batch of its
    /// partition was not in yet when `b` arrived (the agent expected a lower sequence), so
    /// resending `b` will succeed — unless an earlier batch failed for good.
    fn behind_earlier(&self, b: &OutBatch, r: &Rejected) -> bool {
        r.reason == RejectReason::OutOfOrderSequence
            && b.stamp
                .zip(r.expected_sequence)
                .is_some_and(|(stamp, expected)| expected < stamp.base_sequence)
            && !self.reset.load(Ordering::SeqCst)
    }
}

struct Worker {
    producer: ProducerServiceClient<Channel>,
    admin: AdminServiceClient<Channel>,
    config: ProducerConfig,
    topics: HashMap<String, (u32, Instant)>,
    sticky: HashMap<String, u32>,
    pending: BTreeMap<PartitionKey, Pending>,
    pending_bytes: usize,
    /// Requests formed and waiting for a slot, in order.
    ready: VecDeque<Outgoing>,
    /// The producer id and epoch, once fetched.
    id: Option<(u64, u32)>,
    /// The next sequence per partition under the current id.
    next_seq: HashMap<PartitionKey, i64>,
    /// Stamped batches sent per partition under the current id.
    sent: HashMap<PartitionKey, u64>,
    shared: Arc<SendState>,
}

impl Worker {
    fn new(channel: Channel, mut config: ProducerConfig) -> Self {
        config.max_in_flight = if config.idempotence {
            config.max_in_flight.clamp(1, crate::MAX_IN_FLIGHT)
        } else {
            1
        };
        if config.codec == Codec::Unspecified {
            config.codec = Codec::Zstd;
        }
        Worker {
            producer: ProducerServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminServiceClient::new(channel),
            config,
            topics: HashMap::new(),
            sticky: HashMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
            ready: VecDeque::new(),
            id: None,
            next_seq: HashMap::new(),
            sent: HashMap::new(),
            shared: Arc::new(SendState::default()),
        }
    }

    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut open = true;
        loop {
            if self.ready.is_empty() && self.due(!flushes.is_empty() || !open, !inflight.is_empty())
            {
                let out = self.drain();
                if !out.batches.is_empty() {
                    self.ready.push_back(out);
                }
            }
            if self.shared.reset.load(Ordering::SeqCst) && inflight.is_empty() {
                tracing::info!("a batch failed for good; starting over with a new producer id");
                self.id = None;
                self.next_seq.clear();
                self.sent.clear();
                self.shared.reset.store(false, Ordering::SeqCst);
            }
            while inflight.len() < self.config.max_in_flight
                && !self.shared.reset.load(Ordering::SeqCst)
                && self
                    .ready
                    .front()
                    .is_some_and(|out| self.within_window(out))
            {
                let Some(out) = self.ready.pop_front() else {
                    break;
                };
                match self.stamp(out).await {
                    Ok(out) => {
                        for b in &out.batches {
                            self.shared.sent(b);
                        }
                        inflight.spawn(send_request(
                            self.producer.clone(),
                            self.config.clone(),
                            out,
                            self.shared.clone(),
                        ));
                    }
                    Err((out, e)) => fail_all(out.batches, &e, &self.shared),
                }
            }
            if inflight.is_empty() && self.pending.is_empty() && self.ready.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if !open {
                    return;
                }
            }
            let deadline = if self.ready.is_empty() && inflight.is_empty() {
                self.pending
                    .values()
                    .map(|p| p.since + self.config.linger)
                    .min()
            } else {
                None
            };
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Record(record, ack, permit)) => self.add(record, ack, permit).await,
                    Some(Msg::Request(batches, atomic)) => {
                        // Everything sent before goes first, so partition order holds.
                        let before = self.drain_all();
                        self.ready.extend(before);
                        self.ready.push_back(Outgoing { batches, atomic });
                    }
                    Some(Msg::Flush(done)) => flushes.push(done),
                    None => open = false,
                },
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }

    /// Whether sending `out` keeps every partition's unanswered batches within the agent's
    /// window of remembered batches: a batch whose reply was lost must still be recognised
    /// when it is retried after every later batch of its partition committed.
    fn within_window(&self, out: &Outgoing) -> bool {
        if !self.config.idempotence {
            return true;
        }
        out.batches.iter().all(|b| {
            let next = self.sent.get(&b.key).copied().unwrap_or(0);
            self.shared
                .oldest(&b.key)
                .is_none_or(|oldest| next - oldest < crate::MAX_IN_FLIGHT as u64)
        })
    }

    /// Stamps a request's batches with the producer id, epoch and the next sequences.
    async fn stamp(&mut self, mut out: Outgoing) -> Result<Outgoing, (Outgoing, ClientError)> {
        if !self.config.idempotence {
            return Ok(out);
        }
        let fenced = self
            .shared
            .fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if let Some(r) = fenced {
            return Err((out, ClientError::Rejected(r)));
        }
        let (id, epoch) = match self.id {
            Some(id) => id,
            None => match self.init().await {
                Ok(id) => {
                    self.id = Some(id);
                    id
                }
                Err(e) => return Err((out, e)),
            },
        };
        for b in &mut out.batches {
            let seq = self.next_seq.entry(b.key.clone()).or_insert(0);
            b.stamp = Some(ProducerStamp {
                producer_id: id,
                epoch,
                base_sequence: *seq,
            });
            *seq += b.records.len() as i64;
            let sent = self.sent.entry(b.key.clone()).or_insert(0);
            b.ordinal = *sent;
            *sent += 1;
        }
        Ok(out)
    }

    /// Gets a producer id, retrying while the agent is unavailable.
    async fn init(&mut self) -> Result<(u64, u32), ClientError> {
        let started = Instant::now();
        let mut backoff = self.config.retry_backoff;
        loop {
            let request = v2::InitProducerRequest {
                name: self.config.name.clone().unwrap_or_default(),
            };
            match self.producer.init_producer(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    tracing::debug!(producer_id = r.producer_id, epoch = r.epoch, "producer id");
                    return Ok((r.producer_id, r.epoch));
                }
                Err(status) => {
                    let err = ClientError::from(status);
                    if !err.is_retryable()
                        || started.elapsed() + backoff >= self.config.delivery_timeout
                    {
                        return Err(err);
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        }
    }

    /// Whether a request should be formed now: a batch is full, or a flush asks for it, or
    /// (with nothing in flight) the oldest batch has lingered long enough. While requests
    /// are in flight only full batches go out, so records gather into large requests
    /// instead of many small ones that would all wait for the same segment anyway.
    fn due(&self, flushing: bool, busy: bool) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        if flushing || self.pending_bytes >= self.config.request_max_bytes {
            return true;
        }
        let now = Instant::now();
        self.pending.values().any(|p| {
            p.bytes >= self.config.batch_max_bytes || (!busy && p.since + self.config.linger <= now)
        })
    }

    /// Every pending batch, as requests of at most the request size limit.
    fn drain_all(&mut self) -> Vec<Outgoing> {
        let mut all = Vec::new();
        while !self.pending.is_empty() {
            all.push(self.drain());
        }
        all
    }

    /// Takes pending batches, oldest partitions first, up to the request size limit.
    fn drain(&mut self) -> Outgoing {
        let mut keys: Vec<(Instant, PartitionKey)> = self
            .pending
            .iter()
            .map(|(k, p)| (p.since, k.clone()))
            .collect();
        keys.sort();
        let mut batches = Vec::new();
        let mut bytes = 0;
        for (_, key) in keys {
            let Some(p) = self.pending.get(&key) else {
                continue;
            };
            let room = self.config.request_max_bytes.saturating_sub(bytes);
            if !batches.is_empty() && p.sizes.first().is_some_and(|&s| s > room) {
                break;
            }
            let Some(mut p) = self.pending.remove(&key) else {
                continue;
            };
            let mut full = false;
            let max_records = MAX_FRAME_RECORDS as usize;
            if p.bytes > room || p.records.len() > max_records {
                // The batch outgrew a request or a frame (it kept filling while requests
                // were in flight): send its oldest records now, keep the rest pending.
                let mut take = 0;
                let mut taken = 0;
                while take < p.sizes.len()
                    && take < max_records
                    && (take == 0 || taken + p.sizes[take] <= room)
                {
                    taken += p.sizes[take];
                    take += 1;
                }
                let rest = Pending {
                    records: p.records.split_off(take),
                    sizes: p.sizes.split_off(take),
                    acks: p.acks.split_off(take),
                    permits: p.permits.split_off(take),
                    bytes: p.bytes - taken,
                    since: p.since,
                };
                p.bytes = taken;
                self.pending.insert(key.clone(), rest);
                full = true;
            }
            bytes += p.bytes;
            self.pending_bytes -= p.bytes;
            // Unkeyed records stick to one partition until its batch is sent.
            if let Some(next) = self.sticky.get_mut(&key.0) {
                *next = next.wrapping_add(1);
            }
            batches.push(OutBatch {
                key,
                ordinal: 0,
                records: p.records,
                expected_offset: None,
                stamp: None,
                acks: p.acks,
                _permits: p.permits,
            });
            if full {
                break;
            }
        }
        Outgoing {
            batches,
            atomic: false,
        }
    }

    async fn add(&mut self, record: ProducerRecord, ack: Ack, permit: OwnedSemaphorePermit) {
        let partition = match record.partition {
            Some(p) => p,
            None => match self.partitions(&record.topic).await {
                Ok(n) => match &record.key {
                    Some(key) => partition_for_key(key, n),
                    None => {
                        self.sticky
                            .entry(record.topic.clone())
                            .or_insert(0)
                            .to_owned()
                            % n
                    }
                },
                Err(e) => {
                    let _ = ack.send(Err(e));
                    return;
                }
            },
        };
        let size = record.size();
        let entry = self
            .pending
            .entry((record.topic.clone(), partition))
            .or_insert_with(|| Pending {
                records: Vec::new(),
                sizes: Vec::new(),
                acks: Vec::new(),
                permits: Vec::new(),
                bytes: 0,
                since: Instant::now(),
            });
        entry.records.push(to_wire(record));
        entry.sizes.push(size);
        entry.acks.push(ack);
        entry.permits.push(permit);
        entry.bytes += size;
        self.pending_bytes += size;
    }

    /// The partition count of `topic`, from a cache refreshed every [`TOPIC_TTL`].
    async fn partitions(&mut self, topic: &str) -> Result<u32, ClientError> {
        if let Some(&(n, at)) = self.topics.get(topic)
            && at.elapsed() < TOPIC_TTL
        {
            return Ok(n);
        }
        let described = self
            .admin
            .describe_topic(v2::DescribeTopicRequest {
                name: topic.to_string(),
            })
            .await?
            .into_inner();
        let n = described.topic.map_or(0, |t| t.partitions);
        if n == 0 {
            return Err(ClientError::Invalid(format!(
                "topic `{topic}` has no partitions"
            )));
        }
        self.topics.insert(topic.to_string(), (n, Instant::now()));
        Ok(n)
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Builds the frames of one request's batches (a batch whose frame cannot be built fails;
/// in an atomic request, every batch does), then sends the request and retries it.
async fn send_request(
    client: ProducerServiceClient<Channel>,
    config: ProducerConfig,
    out: Outgoing,
    shared: Arc<SendState>,
) {
    let atomic = out.atomic;
    let mut built = Vec::with_capacity(out.batches.len());
    let mut failure = None;
    for b in out.batches {
        match b.build(config.codec) {
            Ok(b) => built.push(b),
            Err(failed) => {
                let (b, source) = *failed;
                let err = ClientError::Encode {
                    topic: b.key.0.clone(),
                    partition: b.key.1,
                    source: Arc::new(source),
                };
                fail_batch(b, copy_error(&err), &shared);
                failure.get_or_insert(err);
            }
        }
    }
    if let Some(err) = failure
        && atomic
    {
        fail_all(built.into_iter().map(|b| b.batch).collect(), &err, &shared);
        return;
    }
    if !built.is_empty() {
        send_built(client, config, built, atomic, shared).await;
    }
}

/// Sends one request and retries what may still succeed — the whole request after
/// UNAVAILABLE, a timeout or a lost connection; single batches refused only because an
/// earlier batch of their partition is not in yet — with backoff, until the delivery
/// timeout. Retries send the same frames with the same stamps, so the agent never stores a
/// second copy.
async fn send_built(
    mut client: ProducerServiceClient<Channel>,
    config: ProducerConfig,
    batches: Vec<Built>,
    atomic: bool,
    shared: Arc<SendState>,
) {
    let started = Instant::now();
    let mut backoff = config.retry_backoff;
    let mut remaining = batches;
    loop {
        let request = produce_request(&remaining, atomic);
        let answer =
            match tokio::time::timeout(config.request_timeout, client.produce(request)).await {
                Ok(Ok(r)) => Ok(r.into_inner().results),
                Ok(Err(status)) => Err(ClientError::from(status)),
                Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
                    "no answer within the producer's request timeout",
                ))),
            };
        let time_left = started.elapsed() + backoff < config.delivery_timeout;
        let mut retry = Vec::new();
        match answer {
            Ok(results) if results.len() == remaining.len() => {
                for (b, r) in remaining.into_iter().zip(results) {
                    let Some(error) = r.error.as_ref() else {
                        match r.base_offset {
                            Some(base) => resolve(b.batch, base, &shared),
                            None => {
                                let err = ClientError::Invalid(format!(
                                    "the agent committed {}/{} without a base offset",
                                    b.wire.topic, b.wire.partition
                                ));
                                fail_batch(b.batch, err, &shared);
                            }
                        }
                        continue;
                    };
                    match Rejected::from_batch_error(error) {
                        Some(rej) if time_left && shared.behind_earlier(&b.batch, &rej) => {
                            retry.push(b)
                        }
                        Some(rej) => fail_batch(b.batch, ClientError::Rejected(rej), &shared),
                        None => fail_batch(b.batch, batch_error_status(error), &shared),
                    }
                }
            }
            Ok(results) => {
                let err = ClientError::Invalid(format!(
                    "agent answered {} results for {} batches",
                    results.len(),
                    remaining.len()
                ));
                fail_all(unbuilt(remaining), &err, &shared);
            }
            Err(err) if err.is_retryable() && time_left => {
                tracing::debug!(error = %err, ?backoff, "produce failed; retrying");
                retry = remaining;
            }
            Err(ClientError::Rejected(rej))
                if time_left
                    && remaining
                        .iter()
                        .any(|b| shared.behind_earlier(&b.batch, &rej)) =>
            {
                retry = remaining;
            }
            Err(err) if remaining.len() > 1 && !atomic && !err.is_retryable() => {
                // One bad batch must not fail the others: resend each alone, in order.
                for one in remaining {
                    Box::pin(send_built(
                        client.clone(),
                        config.clone(),
                        vec![one],
                        false,
                        shared.clone(),
                    ))
                    .await;
                }
                return;
            }
            Err(err) => fail_all(unbuilt(remaining), &err, &shared),
        }
        if retry.is_empty() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.retry_backoff_max);
        remaining = retry;
    }
}

fn unbuilt(batches: Vec<Built>) -> Vec<OutBatch> {
    batches.into_iter().map(|b| b.batch).collect()
}

fn resolve(b: OutBatch, base_offset: i64, shared: &SendState) {
    shared.answered(&b);
    for (i, ack) in b.acks.into_iter().enumerate() {
        let _ = ack.send(Ok(RecordMetadata {
            topic: b.key.0.clone(),
            partition: b.key.1,
            offset: base_offset + i as i64,
        }));
    }
}

/// Fails a batch for good. Unless the agent settled its sequence (a refused condition), the
/// partition's sequence now has a gap, so the producer must start over with a new id.
fn fail_batch(b: OutBatch, err: ClientError, shared: &SendState) {
    shared.answered(&b);
    if b.stamp.is_some() {
        match err.rejected().map(|r| r.reason) {
            Some(RejectReason::OffsetMismatch | RejectReason::AtomicAborted) => {}
            Some(RejectReason::Fenced) => {
                let mut f = shared.fenced.lock().unwrap_or_else(|p| p.into_inner());
                if let ClientError::Rejected(r) = &err {
                    *f = Some(r.clone());
                }
            }
            _ => shared.reset.store(true, Ordering::SeqCst),
        }
    }
    for ack in b.acks {
        let _ = ack.send(Err(copy_error(&err)));
    }
}

fn fail_all(batches: Vec<OutBatch>, err: &ClientError, shared: &SendState) {
    for b in batches {
        fail_batch(b, copy_error(err), shared);
    }
}

/// A copy of an error for each record of a failed batch.
fn copy_error(err: &ClientError) -> ClientError {
    match err {
        ClientError::Status(s) => ClientError::Status(s.clone()),
        ClientError::Rejected(r) => ClientError::Rejected(r.clone()),
        ClientError::Invalid(m) => ClientError::Invalid(m.clone()),
        ClientError::Encode {
            topic,
            partition,
            source,
        } => ClientError::Encode {
            topic: topic.clone(),
            partition: *partition,
            source: source.clone(),
        },
        ClientError::Closed => ClientError::Closed,
        other => ClientError::Status(tonic::Status::unavailable(other.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(codec: Codec) -> Worker {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        Worker::new(
            channel,
            ProducerConfig {
                codec,
                ..ProducerConfig::default()
            },
        )
    }

    fn records(topic: &str, values: &[&str]) -> Vec<v2::Record> {
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

    fn out_batch(topic: &str, partition: u32, values: &[&str]) -> OutBatch {
        let buffer = Arc::new(Semaphore::new(1 << 20));
        let (acks, _): (Vec<Ack>, Vec<_>) = values.iter().map(|_| oneshot::channel()).unzip();
        OutBatch {
            key: (topic.to_string(), partition),
            ordinal: 0,
            records: records(topic, values),
            expected_offset: None,
            stamp: None,
            acks,
            _permits: vec![buffer.try_acquire_owned().expect("a free permit")],
        }
    }

    #[tokio::test]
    async fn a_built_request_round_trips_with_the_producers_stamp() {
        let mut w = worker(Codec::Lz4Frame);
        w.id = Some((7, 2));
        let out = Outgoing {
            batches: vec![
                out_batch("t", 0, &["a", "b"]),
                out_batch("t", 1, &["c"]),
                out_batch("t", 0, &["d", "e", "f"]),
            ],
            atomic: false,
        };
        let Ok(out) = w.stamp(out).await else {
            panic!("stamping with a known producer id needs no agent");
        };
        let built: Vec<Built> = out
            .batches
            .into_iter()
            .map(|b| b.build(w.config.codec).map_err(|failed| failed.1))
            .collect::<Result<_, _>>()
            .expect("frames build");
        let request = produce_request(&built, false);
        let expected = [
            (0, 0, records("t", &["a", "b"])),
            (1, 0, records("t", &["c"])),
            (0, 2, records("t", &["d", "e", "f"])),
        ];
        assert_eq!(request.batches.len(), expected.len());
        for (wire, (partition, base_sequence, want)) in request.batches.iter().zip(expected) {
            assert_eq!((wire.topic.as_str(), wire.partition), ("t", partition));
            assert_eq!(wire.expected_offset, None);
            let frame = wire.frame.clone().expect("a frame");
            let header = frame.header.expect("a header");
            assert_eq!(
                header.producer,
                Some(ProducerStamp {
                    producer_id: 7,
                    epoch: 2,
                    base_sequence,
                })
            );
            assert_eq!(header.codec(), Codec::Lz4Frame);
            assert_eq!(header.timestamp_type(), v2::TimestampType::CreateTime);
            assert_eq!(header.first_timestamp_ms, 1_700_000_000_000);
            let opened = cairn_proto::open_frame(&header, frame.payload).expect("the frame opens");
            assert_eq!(opened, want);
        }
        // A retry sends the very same batches: same frames, same stamps.
        assert_eq!(produce_request(&built, false), request);
        assert_eq!(w.next_seq.get(&("t".to_string(), 0)), Some(&5));
        assert_eq!(w.next_seq.get(&("t".to_string(), 1)), Some(&1));
    }

    #[tokio::test]
    async fn without_idempotence_frames_carry_no_stamp() {
        let mut w = worker(Codec::Unspecified);
        w.config.idempotence = false;
        assert_eq!(w.config.codec, Codec::Zstd);
        let out = Outgoing {
            batches: vec![out_batch("t", 0, &["a"])],
            atomic: false,
        };
        let Ok(out) = w.stamp(out).await else {
            panic!("a plain producer stamps nothing");
        };
        let built: Vec<Built> = out
            .batches
            .into_iter()
            .map(|b| b.build(w.config.codec).map_err(|failed| failed.1))
            .collect::<Result<_, _>>()
            .expect("frames build");
        let header = produce_request(&built, false).batches[0]
            .frame
            .clone()
            .and_then(|f| f.header)
            .expect("a header");
        assert_eq!(header.producer, None);
        assert_eq!(header.codec(), Codec::Zstd);
    }

    #[tokio::test]
    async fn keyed_records_go_to_kafkas_partition_for_the_key() {
        let mut w = worker(Codec::Zstd);
        w.topics.insert("t".into(), (7, Instant::now()));
        for (key, partition) in [("foobar", None), ("other", None), ("foobar", Some(6))] {
            let (ack, _rx) = oneshot::channel();
            let permit = Arc::new(Semaphore::new(1 << 10))
                .try_acquire_owned()
                .expect("a free permit");
            let mut record = ProducerRecord::new("t", "v").key(key);
            record.partition = partition;
            w.add(record, ack, permit).await;
        }
        let keys: BTreeSet<u32> = w.pending.keys().map(|(_, p)| *p).collect();
        let want: BTreeSet<u32> = [
            partition_for_key(b"foobar", 7),
            partition_for_key(b"other", 7),
            6,
        ]
        .into();
        assert_eq!(keys, want);
    }

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
