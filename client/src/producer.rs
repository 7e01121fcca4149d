//! The batching, idempotent producer.
//!
//! `send` puts a record into the batch of its partition and returns a [`Delivery`] at once.
//! A background task sends pending batches in `Produce` requests as soon as a batch is full,
//! the oldest batch has lingered long enough, or `flush` is called. Up to `max_in_flight`
//! requests are in flight at once.
//!
//! With idempotence (the default) the producer first gets a producer id from the agent and
//! stamps every batch with `(producer id, epoch, sequence)` per partition. A retry (after
//! UNAVAILABLE, a timeout or a lost response) resends the same stamp, and the agent answers
//! with the original offsets instead of writing a second copy. If a later batch reaches the
//! agent before an earlier one of the same partition, the agent refuses it as out of order
//! and the producer resends it once the earlier one is in, so per-partition order holds.
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
use cairn_proto::v1::{
    self, PartitionBatch, admin_client::AdminClient, producer_client::ProducerClient,
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;
use tonic::transport::Channel;

use crate::error::{RejectReason, Rejected};
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
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProducerRecord {
    /// Destination topic.
    pub topic: String,
    /// Destination partition; `None` picks one from the key's hash, or any partition for a
    /// record without key.
    pub partition: Option<u32>,
    /// Optional key.
    pub key: Option<Bytes>,
    /// The payload.
    pub value: Bytes,
    /// Ordered headers.
    pub headers: Vec<(String, Bytes)>,
    /// Milliseconds since the Unix epoch; 0 lets the agent stamp its time.
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

    /// Sets the timestamp (ms since the Unix epoch).
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
    pub fn new(channel: Channel, mut config: ProducerConfig) -> Self {
        config.max_in_flight = if config.idempotence {
            config.max_in_flight.clamp(1, crate::MAX_IN_FLIGHT)
        } else {
            1
        };
        let (tx, rx) = mpsc::channel(4096);
        let buffer_max = config.buffer_max_bytes.clamp(1, Semaphore::MAX_PERMITS);
        let worker = Worker {
            producer: ProducerClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminClient::new(channel),
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
        };
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
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        if record.topic.is_empty() {
            return Err(ClientError::Invalid(
                "record has an empty topic name".into(),
            ));
        }
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
        let mut out = Vec::with_capacity(batches.len());
        let mut waits = Vec::with_capacity(batches.len());
        for b in batches {
            if b.topic.is_empty() {
                return Err(ClientError::Invalid("batch has an empty topic name".into()));
            }
            if b.records.is_empty() {
                return Err(ClientError::Invalid(format!(
                    "the batch for {}/{} has no records",
                    b.topic, b.partition
                )));
            }
            let size: usize = b.records.iter().map(ProducerRecord::size).sum();
            let permit = self.permit(size).await?;
            let count = b.records.len();
            let (acks, rxs): (Vec<Ack>, Vec<_>) = (0..count).map(|_| oneshot::channel()).unzip();
            let records = v1::RecordBatch {
                records: b.records.into_iter().map(to_wire).collect(),
            };
            waits.push((b.topic.clone(), b.partition, rxs));
            out.push(OutBatch {
                key: (b.topic.clone(), b.partition),
                ordinal: 0,
                batch: PartitionBatch {
                    topic: b.topic,
                    partition: b.partition,
                    records: records.encode_to_vec().into(),
                    expected_offset: b.expected_offset,
                    ..PartitionBatch::default()
                },
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

fn to_wire(record: ProducerRecord) -> v1::Record {
    v1::Record {
        timestamp_ms: record.timestamp_ms,
        key: record.key.unwrap_or_default(),
        value: record.value,
        headers: record
            .headers
            .into_iter()
            .map(|(key, value)| v1::Header { key, value })
            .collect(),
    }
}

type PartitionKey = (String, u32);

struct Pending {
    records: Vec<v1::Record>,
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
    batch: PartitionBatch,
    acks: Vec<Ack>,
    _permits: Vec<OwnedSemaphorePermit>,
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
        if b.batch.producer_id != 0 {
            let mut u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            u.entry(b.key.clone()).or_default().insert(b.ordinal);
        }
    }

    fn answered(&self, b: &OutBatch) {
        if b.batch.producer_id != 0 {
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
            && b.batch.producer_id != 0
            && r.expected_sequence
                .is_some_and(|e| e < b.batch.base_sequence)
            && !self.reset.load(Ordering::SeqCst)
    }
}

struct Worker {
    producer: ProducerClient<Channel>,
    admin: AdminClient<Channel>,
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
            b.batch.producer_id = id;
            b.batch.producer_epoch = epoch;
            b.batch.base_sequence = *seq;
            *seq += b.acks.len() as i64;
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
            let request = v1::InitProducerRequest {
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
            if p.bytes > room {
                // The batch outgrew a request (it kept filling while requests were in
                // flight): send its oldest records now, keep the rest pending.
                let mut take = 0;
                let mut taken = 0;
                while take < p.sizes.len() && (take == 0 || taken + p.sizes[take] <= room) {
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
            let records = v1::RecordBatch { records: p.records }.encode_to_vec();
            batches.push(OutBatch {
                batch: PartitionBatch {
                    topic: key.0.clone(),
                    partition: key.1,
                    records: records.into(),
                    ..PartitionBatch::default()
                },
                key,
                ordinal: 0,
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
                    Some(key) => crc32c::crc32c(key) % n,
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
            .describe_topic(v1::DescribeTopicRequest {
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

/// Sends one request and retries what may still succeed — the whole request after
/// UNAVAILABLE, a timeout or a lost connection; single batches refused only because an
/// earlier batch of their partition is not in yet — with backoff, until the delivery
/// timeout. Retries carry the same stamps, so the agent never stores a second copy.
async fn send_request(
    mut client: ProducerClient<Channel>,
    config: ProducerConfig,
    out: Outgoing,
    shared: Arc<SendState>,
) {
    let started = Instant::now();
    let mut backoff = config.retry_backoff;
    let atomic = out.atomic;
    let mut remaining = out.batches;
    loop {
        let request = v1::ProduceRequest {
            batches: remaining.iter().map(|b| b.batch.clone()).collect(),
            atomic,
        };
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
                        resolve(b, r.base_offset, &shared);
                        continue;
                    };
                    match Rejected::from_batch_error(error) {
                        Some(rej) if time_left && shared.behind_earlier(&b, &rej) => retry.push(b),
                        Some(rej) => fail_batch(b, ClientError::Rejected(rej), &shared),
                        None => fail_batch(
                            b,
                            ClientError::Invalid(format!("batch refused: {}", error.message)),
                            &shared,
                        ),
                    }
                }
            }
            Ok(results) => {
                let err = ClientError::Invalid(format!(
                    "agent answered {} results for {} batches",
                    results.len(),
                    remaining.len()
                ));
                fail_all(remaining, &err, &shared);
            }
            Err(err) if err.is_retryable() && time_left => {
                tracing::debug!(error = %err, ?backoff, "produce failed; retrying");
                retry = remaining;
            }
            Err(ClientError::Rejected(rej))
                if time_left && remaining.iter().any(|b| shared.behind_earlier(b, &rej)) =>
            {
                retry = remaining;
            }
            Err(err) if remaining.len() > 1 && !atomic && !err.is_retryable() => {
                // One bad batch must not fail the others: resend each alone, in order.
                for one in remaining {
                    let single = Outgoing {
                        batches: vec![one],
                        atomic: false,
                    };
                    Box::pin(send_request(
                        client.clone(),
                        config.clone(),
                        single,
                        shared.clone(),
                    ))
                    .await;
                }
                return;
            }
            Err(err) => fail_all(remaining, &err, &shared),
        }
        if retry.is_empty() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(config.retry_backoff_max);
        remaining = retry;
    }
}

fn resolve(b: OutBatch, base_offset: i64, shared: &SendState) {
    shared.answered(&b);
    for (i, ack) in b.acks.into_iter().enumerate() {
        let _ = ack.send(Ok(RecordMetadata {
            topic: b.batch.topic.clone(),
            partition: b.batch.partition,
            offset: base_offset + i as i64,
        }));
    }
}

/// Fails a batch for good. Unless the agent settled its sequence (a refused condition), the
/// partition's sequence now has a gap, so the producer must start over with a new id.
fn fail_batch(b: OutBatch, err: ClientError, shared: &SendState) {
    shared.answered(&b);
    if b.batch.producer_id != 0 {
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
        ClientError::Closed => ClientError::Closed,
        other => ClientError::Status(tonic::Status::unavailable(other.to_string())),
    }
}
