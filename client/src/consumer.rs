//! The consumer: reads assigned partitions from chosen offsets, optionally waiting for new
//! records at the end of the log.

use std::time::Duration;

use bytes::Bytes;
use cairn_proto::v1::{
    self, Compression, admin_client::AdminClient, consumer_client::ConsumerClient,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tonic::transport::Channel;

use crate::{ClientError, MAX_MESSAGE_BYTES};

/// Where a newly assigned partition starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offset {
    /// The oldest retained record.
    Beginning,
    /// The next record to be written (only new records are read).
    End,
    /// This exact offset.
    At(i64),
}

/// Consumer tunables.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Bytes asked for per partition per fetch.
    pub max_bytes_per_partition: u32,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            max_bytes_per_partition: 4 << 20,
        }
    }
}

/// A record as read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumedRecord {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: u32,
    /// The record's offset.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The key (empty when the record had none).
    pub key: Bytes,
    /// The payload.
    pub value: Bytes,
    /// Headers in the order they were sent.
    pub headers: Vec<(String, Bytes)>,
}

#[derive(Debug, Clone)]
struct Assignment {
    topic: String,
    partition: u32,
    position: i64,
    high_watermark: i64,
}

/// Reads assigned topic-partitions in offset order.
#[derive(Debug)]
pub struct Consumer {
    client: ConsumerClient<Channel>,
    admin: AdminClient<Channel>,
    config: ConsumerConfig,
    assigned: Vec<Assignment>,
}

impl Consumer {
    /// A consumer over `channel` with nothing assigned.
    pub fn new(channel: Channel, config: ConsumerConfig) -> Self {
        Consumer {
            client: ConsumerClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminClient::new(channel),
            config,
            assigned: Vec::new(),
        }
    }

    /// Starts reading `topic`/`partition` at `from`. Reassigning moves the position.
    pub async fn assign(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
    ) -> Result<(), ClientError> {
        let position = match from {
            Offset::At(n) if n < 0 => {
                return Err(ClientError::Invalid(format!(
                    "offset must be 0 or more, got {n}"
                )));
            }
            Offset::At(n) => n,
            Offset::Beginning | Offset::End => {
                let described = self
                    .admin
                    .describe_topic(v1::DescribeTopicRequest {
                        name: topic.to_string(),
                    })
                    .await?
                    .into_inner();
                let info = described
                    .partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .ok_or_else(|| {
                        ClientError::Invalid(format!(
                            "topic `{topic}` has no partition {partition} ({} partitions)",
                            described.partitions.len()
                        ))
                    })?;
                if from == Offset::Beginning {
                    info.start_offset
                } else {
                    info.high_watermark
                }
            }
        };
        self.assigned
            .retain(|a| !(a.topic == topic && a.partition == partition));
        self.assigned.push(Assignment {
            topic: topic.to_string(),
            partition,
            position,
            high_watermark: 0,
        });
        Ok(())
    }

    /// Stops reading `topic`/`partition`.
    pub fn unassign(&mut self, topic: &str, partition: u32) {
        self.assigned
            .retain(|a| !(a.topic == topic && a.partition == partition));
    }

    /// Assigns every partition of `topic`, each starting at `from`.
    pub async fn assign_all(&mut self, topic: &str, from: Offset) -> Result<u32, ClientError> {
        let described = self
            .admin
            .describe_topic(v1::DescribeTopicRequest {
                name: topic.to_string(),
            })
            .await?
            .into_inner();
        let n = described.topic.map_or(0, |t| t.partitions);
        for p in 0..n {
            self.assign(topic, p, from).await?;
        }
        Ok(n)
    }

    /// The next offset to be read of each assignment: `(topic, partition, position)`.
    pub fn positions(&self) -> Vec<(String, u32, i64)> {
        self.assigned
            .iter()
            .map(|a| (a.topic.clone(), a.partition, a.position))
            .collect()
    }

    /// Whether every assigned partition has been read up to the high watermark seen by the
    /// last fetch.
    pub fn caught_up(&self) -> bool {
        self.assigned.iter().all(|a| a.position >= a.high_watermark)
    }

    /// Reads what is available; if nothing is, waits up to `wait` for the first partition
    /// to get new records. Returns an empty list if none arrived in time.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.assigned.is_empty() {
            return Err(ClientError::Invalid("no partition is assigned".into()));
        }
        let records = self.fetch_all(Duration::ZERO).await?;
        if !records.is_empty() || wait.is_zero() {
            return Ok(records);
        }
        self.fetch_all(wait).await
    }

    /// Fetches every assignment at once; with a wait, returns as soon as one partition
    /// yields records.
    async fn fetch_all(&mut self, wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        let wait_ms = u32::try_from(wait.as_millis()).unwrap_or(u32::MAX);
        let mut calls: FuturesUnordered<_> = self
            .assigned
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut client = self.client.clone();
                let request = v1::FetchRequest {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset: a.position,
                    max_bytes: self.config.max_bytes_per_partition,
                    max_wait_ms: wait_ms,
                };
                async move { (i, client.fetch(request).await) }
            })
            .collect();
        let mut out = Vec::new();
        while let Some((i, result)) = calls.next().await {
            let response = result?.into_inner();
            let a = &mut self.assigned[i];
            a.high_watermark = response.high_watermark;
            decode_into(a, response.batches, &mut out)?;
            if !out.is_empty() && !wait.is_zero() {
                break;
            }
        }
        Ok(out)
    }
}

/// Verifies and decodes fetched batches, skipping records before the position.
fn decode_into(
    a: &mut Assignment,
    batches: Vec<v1::FetchedBatch>,
    out: &mut Vec<ConsumedRecord>,
) -> Result<(), ClientError> {
    for b in batches {
        let corrupt = |reason: String| ClientError::Corrupt {
            topic: a.topic.clone(),
            partition: a.partition,
            offset: b.base_offset,
            reason,
        };
        let compression = Compression::try_from(b.compression)
            .map_err(|_| corrupt(format!("unknown compression code {}", b.compression)))?;
        let crc = cairn_proto::frame_crc(b.record_count, compression, &b.data);
        if crc != b.crc32c {
            return Err(corrupt(format!(
                "CRC32C is {crc:#010x}, the batch says {:#010x}",
                b.crc32c
            )));
        }
        let batch = cairn_proto::decode_records(compression, b.record_count, b.data.clone())
            .map_err(|e| corrupt(e.to_string()))?;
        for (i, r) in batch.records.into_iter().enumerate() {
            let offset = b.base_offset + i as i64;
            if offset < a.position {
                continue;
            }
            if offset > a.position {
                return Err(corrupt(format!(
                    "expected offset {} next, got {offset}",
                    a.position
                )));
            }
            a.position = offset + 1;
            out.push(ConsumedRecord {
                topic: a.topic.clone(),
                partition: a.partition,
                offset,
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
            });
        }
    }
    Ok(())
}
