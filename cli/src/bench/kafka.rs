//! `--protocol kafka`: a minimal idempotent Kafka producer for the benchmarks, so the Kafka
//! listener's ingest is measured against the gRPC path in the same run.
//!
//! One connection per producer to one agent (every agent takes produce for every
//! partition). Records fill one partition's batch at a time (librdkafka's sticky
//! partitioner); a batch is sent when it holds `batch_max_bytes` or has waited `linger`,
//! as the gRPC producer's; up to five produce requests are in flight on the connection
//! (Kafka's limit for an idempotent producer), `acks=all`. A record's latency runs from
//! the moment it is added to a batch to its batch's answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_proto::kafka::{KafkaBatchOptions, KafkaCompression, encode_kafka_batch_with};
use cairn_proto::v2::Record;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse,
    ProducerId, RequestHeader, ResponseHeader, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::codec::CodecArg;

/// Produce requests in flight on one connection.
const MAX_IN_FLIGHT: usize = 5;
/// Bytes of sealed batches waiting for a request slot before the producer waits (the Rust
/// client's `buffer_max_bytes`).
const BUFFER_MAX_BYTES: usize = 64 << 20;
/// The Produce version sent (flexible, topic names).
const PRODUCE_VERSION: i16 = 9;
/// The InitProducerId version sent.
const INIT_VERSION: i16 = 4;

/// What one Kafka producer of the bench does.
pub(super) struct KafkaLoad {
    /// The agent's Kafka listener.
    pub(super) address: String,
    pub(super) topic: String,
    pub(super) partitions: u32,
    pub(super) codec: CodecArg,
    pub(super) linger: Duration,
    pub(super) batch_max_bytes: usize,
    /// The first partition this producer fills.
    pub(super) first_partition: u32,
}

/// The next record value to send, or `None` when the run is over (it may wait, for a
/// target rate).
pub(super) type NextValue =
    Box<dyn FnMut() -> futures::future::BoxFuture<'static, Option<Vec<u8>>> + Send>;

/// A batch being filled or in flight: its partition, records, and when each was added.
struct Batch {
    partition: u32,
    records: Vec<Record>,
    added: Vec<Instant>,
    bytes: usize,
}

impl Batch {
    fn new(partition: u32) -> Batch {
        Batch {
            partition,
            records: Vec::new(),
            added: Vec::new(),
            bytes: 0,
        }
    }
}

/// A connection's frames, read by a task of their own.
struct Conn {
    write: tokio::net::tcp::OwnedWriteHalf,
    responses: tokio::sync::mpsc::Receiver<anyhow::Result<Bytes>>,
    reader: tokio::task::JoinHandle<()>,
    correlation: i32,
}

impl Conn {
    async fn open(address: &str) -> anyhow::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(address)
            .await
            .with_context(|| format!("cannot connect to the Kafka listener at {address}"))?;
        stream.set_nodelay(true)?;
        let (mut read, write) = stream.into_split();
        let (tx, responses) = tokio::sync::mpsc::channel(MAX_IN_FLIGHT + 1);
        let reader = tokio::spawn(async move {
            loop {
                let frame = async {
                    let len = read.read_i32().await?;
                    let len = usize::try_from(len)
                        .ok()
                        .filter(|n| *n <= 64 << 20)
                        .with_context(|| format!("a response of {len} bytes"))?;
                    let mut buf = BytesMut::zeroed(len);
                    read.read_exact(&mut buf).await?;
                    anyhow::Ok(buf.freeze())
                }
                .await;
                let failed = frame.is_err();
                if tx.send(frame).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Conn {
            write,
            responses,
            reader,
            correlation: 0,
        })
    }

    /// Sends a request; its correlation id.
    async fn send<T: Encodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        body: &T,
    ) -> anyhow::Result<i32> {
        self.correlation += 1;
        let header = RequestHeader::default()
            .with_request_api_key(api as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.correlation)
            .with_client_id(Some(StrBytes::from_static_str("cairn-bench")));
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(0);
        header.encode(&mut buf, api.request_header_version(version))?;
        body.encode(&mut buf, version)?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        self.write.write_all(&buf).await?;
        Ok(self.correlation)
    }

    /// The next response, checked to answer request `correlation`.
    async fn receive<T: Decodable>(
        &mut self,
        api: ApiKey,
        version: i16,
        correlation: i32,
    ) -> anyhow::Result<T> {
        let mut frame = self
            .responses
            .recv()
            .await
            .context("the agent closed the Kafka connection")??;
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))?;
        if header.correlation_id != correlation {
            bail!(
                "the answer to request {} came for request {correlation}",
                header.correlation_id
            );
        }
        let body = T::decode(&mut frame, version)?;
        if frame.has_remaining() {
            bail!("{} bytes follow a {api:?} response", frame.remaining());
        }
        Ok(body)
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

/// Produces the values `next` gives through the Kafka listener until it gives none; the
/// latency of each record in µs.
pub(super) async fn produce(
    load: KafkaLoad,
    mut next: NextValue,
    acked: Arc<AtomicU64>,
) -> anyhow::Result<Vec<u64>> {
    let mut conn = Conn::open(&load.address).await?;
    let init = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(-1)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let c = conn
        .send(ApiKey::InitProducerId, INIT_VERSION, &init)
        .await?;
    let init: InitProducerIdResponse = conn
        .receive(ApiKey::InitProducerId, INIT_VERSION, c)
        .await?;
    if init.error_code != 0 {
        bail!("InitProducerId failed with Kafka error {}", init.error_code);
    }
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    let compression = match load.codec {
        CodecArg::Zstd => KafkaCompression::Zstd,
        CodecArg::Lz4 => KafkaCompression::Lz4,
        CodecArg::None => KafkaCompression::None,
    };
    let mut sequences = vec![0i32; load.partitions as usize];
    // Requests in flight, each with its batches; sealed batches waiting for a slot.
    let mut in_flight: VecDeque<(i32, Vec<Batch>)> = VecDeque::new();
    let mut ready: VecDeque<Batch> = VecDeque::new();
    let mut latencies = Vec::new();
    let mut partition = load.first_partition % load.partitions;
    let mut batch = Batch::new(partition);
    let topic = TopicName(StrBytes::from_string(load.topic.clone()));

    // Settles the oldest request in flight.
    async fn settle(
        conn: &mut Conn,
        in_flight: &mut VecDeque<(i32, Vec<Batch>)>,
        latencies: &mut Vec<u64>,
        acked: &AtomicU64,
    ) -> anyhow::Result<()> {
        let Some((c, batches)) = in_flight.pop_front() else {
            return Ok(());
        };
        let resp: ProduceResponse = conn.receive(ApiKey::Produce, PRODUCE_VERSION, c).await?;
        for t in &resp.responses {
            for p in &t.partition_responses {
                if p.error_code != 0 {
                    bail!(
                        "partition {} refused a batch: Kafka error {} {}",
                        p.index,
                        p.error_code,
                        p.error_message.as_ref().map_or("", |m| m.as_str())
                    );
                }
            }
        }
        let now = Instant::now();
        for b in &batches {
            latencies.extend(b.added.iter().map(|t| (now - *t).as_micros() as u64));
            acked.fetch_add(b.added.len() as u64, Ordering::Relaxed);
        }
        Ok(())
    }

    let mut done = false;
    loop {
        if !done {
            match next().await {
                Some(value) => {
                    batch.bytes += value.len() + 16;
                    batch.records.push(Record {
                        timestamp_ms: now_ms(),
                        key: Bytes::new(),
                        value: Bytes::from(value),
                        headers: Vec::new(),
                    });
                    batch.added.push(Instant::now());
                }
                None => done = true,
            }
        }
        let full = batch.bytes >= load.batch_max_bytes
            || batch
                .added
                .first()
                .is_some_and(|t| t.elapsed() >= load.linger);
        if !batch.records.is_empty() && (full || done) {
            // Sticky partitioning: the next batch fills the next partition.
            partition = (partition + 1) % load.partitions;
            ready.push_back(std::mem::replace(&mut batch, Batch::new(partition)));
        }
        // Answers that came meanwhile are counted now, not when the window fills.
        while !in_flight.is_empty() && !conn.responses.is_empty() {
            settle(&mut conn, &mut in_flight, &mut latencies, &acked).await?;
        }
        // As librdkafka does: one request carries the oldest ready batch of each
        // partition, up to five requests in flight on the connection.
        while !ready.is_empty() && in_flight.len() < MAX_IN_FLIGHT {
            let mut taken: Vec<Batch> = Vec::new();
            let mut left = VecDeque::with_capacity(ready.len());
            for b in ready.drain(..) {
                if taken.iter().any(|t| t.partition == b.partition) {
                    left.push_back(b);
                } else {
                    taken.push(b);
                }
            }
            ready = left;
            let mut data = Vec::with_capacity(taken.len());
            for b in &mut taken {
                let seq = &mut sequences[b.partition as usize];
                let options = KafkaBatchOptions {
                    producer: Some((pid, epoch, *seq)),
                    compression,
                };
                *seq = seq.wrapping_add(b.records.len() as i32);
                data.push(
                    PartitionProduceData::default()
                        .with_index(b.partition as i32)
                        .with_records(Some(encode_kafka_batch_with(0, &b.records, &options)?)),
                );
                b.records.clear();
            }
            let request = ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(30_000)
                .with_topic_data(vec![
                    TopicProduceData::default()
                        .with_name(topic.clone())
                        .with_partition_data(data),
                ]);
            let c = conn
                .send(ApiKey::Produce, PRODUCE_VERSION, &request)
                .await?;
            in_flight.push_back((c, taken));
        }
        let waiting: usize = ready.iter().map(|b| b.bytes).sum();
        if done && batch.records.is_empty() && ready.is_empty() && in_flight.is_empty() {
            break;
        }
        // At the end, or with the buffer full, wait for an answer (as `send` waits in
        // the Rust client when its buffer is full).
        if (done || waiting >= BUFFER_MAX_BYTES) && !in_flight.is_empty() {
            settle(&mut conn, &mut in_flight, &mut latencies, &acked).await?;
        }
    }
    Ok(latencies)
}

/// The record's CreateTime: the producer's wall clock, by definition.
#[allow(clippy::disallowed_methods)]
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
