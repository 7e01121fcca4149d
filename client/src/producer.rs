//! The batching producer.
//!
//! `send` puts a record into the batch of its partition and returns a [`Delivery`] at once.
//! A background task sends all pending batches in one `Produce` request as soon as a batch is
//! full, the oldest batch has lingered long enough, or `flush` is called. One request is in
//! flight at a time, so records of one partition keep their order, retries included; records
//! arriving meanwhile gather into the next, larger request.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use cairn_proto::v1::{
    self, PartitionBatch, admin_client::AdminClient, producer_client::ProducerClient,
};
use prost::Message;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tonic::transport::Channel;

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

enum Msg {
    Record(ProducerRecord, Ack, OwnedSemaphorePermit),
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
    /// A producer over `channel`; its background task starts at once.
    pub fn new(channel: Channel, config: ProducerConfig) -> Self {
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
        };
        let task = tokio::spawn(worker.run(rx));
        Producer {
            tx,
            buffer: Arc::new(Semaphore::new(buffer_max)),
            buffer_max,
            task,
        }
    }

    /// Queues a record; waits only while the producer's buffer is full. Await the returned
    /// [`Delivery`] for the record's offset.
    pub async fn send(&self, record: ProducerRecord) -> Result<Delivery, ClientError> {
        if record.topic.is_empty() {
            return Err(ClientError::Invalid(
                "record has an empty topic name".into(),
            ));
        }
        let want = u32::try_from(record.size().min(self.buffer_max)).unwrap_or(u32::MAX);
        let permit = self
            .buffer
            .clone()
            .acquire_many_owned(want)
            .await
            .map_err(|_| ClientError::Closed)?;
        let (ack, rx) = oneshot::channel();
        self.tx
            .send(Msg::Record(record, ack, permit))
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(Delivery { rx })
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

struct Pending {
    records: Vec<v1::Record>,
    acks: Vec<(Ack, OwnedSemaphorePermit)>,
    bytes: usize,
    since: Instant,
}

struct Worker {
    producer: ProducerClient<Channel>,
    admin: AdminClient<Channel>,
    config: ProducerConfig,
    topics: HashMap<String, (u32, Instant)>,
    sticky: HashMap<String, u32>,
    pending: BTreeMap<(String, u32), Pending>,
    pending_bytes: usize,
}

/// One request's batches with the acks of their records.
type Outgoing = Vec<(PartitionBatch, Vec<(Ack, OwnedSemaphorePermit)>)>;

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut inflight: Option<JoinHandle<()>> = None;
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut open = true;
        loop {
            let due = self.due(!flushes.is_empty() || !open);
            if inflight.is_none() && due {
                let out = self.drain();
                if !out.is_empty() {
                    let client = self.producer.clone();
                    let config = self.config.clone();
                    inflight = Some(tokio::spawn(send_request(client, config, out)));
                    continue;
                }
            }
            if inflight.is_none() && self.pending.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if !open {
                    return;
                }
            }
            let deadline = self
                .pending
                .values()
                .map(|p| p.since + self.config.linger)
                .min();
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Record(record, ack, permit)) => self.add(record, ack, permit).await,
                    Some(Msg::Flush(done)) => flushes.push(done),
                    None => open = false,
                },
                _ = async { if let Some(t) = inflight.as_mut() { let _ = t.await; } }, if inflight.is_some() => {
                    inflight = None;
                }
                _ = sleep_until(deadline), if inflight.is_none() && deadline.is_some() => {}
            }
        }
    }

    /// Whether a request should go out now.
    fn due(&self, flushing: bool) -> bool {
        if self.pending.is_empty() {
            return false;
        }
        if flushing || self.pending_bytes >= self.config.request_max_bytes {
            return true;
        }
        let now = Instant::now();
        self.pending
            .values()
            .any(|p| p.bytes >= self.config.batch_max_bytes || p.since + self.config.linger <= now)
    }

    /// Takes pending batches, oldest partitions first, up to the request size limit.
    fn drain(&mut self) -> Outgoing {
        let mut keys: Vec<(Instant, (String, u32))> = self
            .pending
            .iter()
            .map(|(k, p)| (p.since, k.clone()))
            .collect();
        keys.sort();
        let mut out = Vec::new();
        let mut bytes = 0;
        for (_, key) in keys {
            let Some(p) = self.pending.get(&key) else {
                continue;
            };
            if !out.is_empty() && bytes + p.bytes > self.config.request_max_bytes {
                break;
            }
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            bytes += p.bytes;
            self.pending_bytes -= p.bytes;
            // Unkeyed records stick to one partition until its batch is sent.
            if let Some(next) = self.sticky.get_mut(&key.0) {
                *next = next.wrapping_add(1);
            }
            let records = v1::RecordBatch { records: p.records }.encode_to_vec();
            out.push((
                PartitionBatch {
                    topic: key.0,
                    partition: key.1,
                    records: records.into(),
                },
                p.acks,
            ));
        }
        out
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
            .entry((record.topic, partition))
            .or_insert_with(|| Pending {
                records: Vec::new(),
                acks: Vec::new(),
                bytes: 0,
                since: Instant::now(),
            });
        entry.records.push(v1::Record {
            timestamp_ms: record.timestamp_ms,
            key: record.key.unwrap_or_default(),
            value: record.value,
            headers: record
                .headers
                .into_iter()
                .map(|(key, value)| v1::Header { key, value })
                .collect(),
        });
        entry.acks.push((ack, permit));
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

/// Sends one request, retrying retryable failures with backoff until the delivery timeout;
/// if the agent rejects a multi-batch request, each batch is retried alone so one bad batch
/// does not fail the others.
async fn send_request(mut client: ProducerClient<Channel>, config: ProducerConfig, out: Outgoing) {
    let started = Instant::now();
    let mut backoff = config.retry_backoff;
    let request = v1::ProduceRequest {
        batches: out.iter().map(|(b, _)| b.clone()).collect(),
    };
    loop {
        match client.produce(request.clone()).await {
            Ok(response) => {
                resolve(out, response.into_inner().results);
                return;
            }
            Err(status) => {
                let err = ClientError::Status(status);
                if err.is_retryable() && started.elapsed() + backoff < config.delivery_timeout {
                    tracing::debug!(error = %err, ?backoff, "produce failed; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(config.retry_backoff_max);
                    continue;
                }
                if out.len() > 1 && !err.is_retryable() {
                    for one in out {
                        Box::pin(send_request(client.clone(), config.clone(), vec![one])).await;
                    }
                } else {
                    fail(out, &err);
                }
                return;
            }
        }
    }
}

fn resolve(out: Outgoing, results: Vec<v1::BatchResult>) {
    if results.len() != out.len() {
        let err = ClientError::Invalid(format!(
            "agent answered {} results for {} batches",
            results.len(),
            out.len()
        ));
        fail(out, &err);
        return;
    }
    for ((batch, acks), result) in out.into_iter().zip(results) {
        for (i, (ack, _permit)) in acks.into_iter().enumerate() {
            let _ = ack.send(Ok(RecordMetadata {
                topic: batch.topic.clone(),
                partition: batch.partition,
                offset: result.base_offset + i as i64,
            }));
        }
    }
}

fn fail(out: Outgoing, err: &ClientError) {
    for (_, acks) in out {
        for (ack, _permit) in acks {
            let _ = ack.send(Err(copy_error(err)));
        }
    }
}

/// A copy of an error for each record of a failed batch.
fn copy_error(err: &ClientError) -> ClientError {
    match err {
        ClientError::Status(s) => ClientError::Status(s.clone()),
        other => ClientError::Status(tonic::Status::unavailable(other.to_string())),
    }
}
