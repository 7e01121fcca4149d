//! The consumer: reads assigned partitions from chosen offsets, optionally waiting for new
//! records at the end of the log. Fetches return whole frames; each is verified and decoded
//! here with [`cairn_proto::open_frame`], and records before the position are skipped.

use std::collections::HashMap;
use std::time::Duration;

use crate::Cluster;
use crate::cluster::{Route, route};
use bytes::Bytes;
use cairn_proto::FrameError;
use cairn_proto::v2::{
    self, admin_service_client::AdminServiceClient, consumer_service_client::ConsumerServiceClient,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;

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
    /// Payload bytes asked for per partition per fetch (a soft limit: at least one frame
    /// comes back when one is ready): 1 to 64 MiB, or 0 for the agent's default (1 MiB).
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
    /// Milliseconds since the Unix epoch: the producer's time (CREATE_TIME), or the time
    /// the agent stored the record when its frame is LOG_APPEND_TIME.
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
    /// The topic's partition count when assigned (0: not known), for routing.
    partitions: u32,
    position: i64,
    high_watermark: i64,
}

/// Reads assigned topic-partitions in offset order.
#[derive(Debug)]
pub struct Consumer {
    client: ConsumerServiceClient<Cluster>,
    admin: AdminServiceClient<Cluster>,
    config: ConsumerConfig,
    assigned: Vec<Assignment>,
    /// Each assigned topic's partition count, as last described.
    partition_counts: HashMap<String, u32>,
}

impl Consumer {
    /// A consumer over `cluster` (a [`Cluster`] or one agent's
    /// [`Channel`](crate::Channel)) with nothing assigned. Each partition is fetched from
    /// its owner among the cluster's agents.
    pub fn new(cluster: impl Into<Cluster>, config: ConsumerConfig) -> Self {
        let channel = cluster.into();
        Consumer {
            client: ConsumerServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
            admin: AdminServiceClient::new(channel),
            config,
            assigned: Vec::new(),
            partition_counts: HashMap::new(),
        }
    }

    /// Starts reading `topic`/`partition` at `from`. Reassigning moves the position.
    pub async fn assign(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
    ) -> Result<(), ClientError> {
        if let Offset::At(n) = from
            && n < 0
        {
            return Err(ClientError::Invalid(format!(
                "offset must be 0 or more, got {n}"
            )));
        }
        // The offsets of Beginning and End, and the topic's partition count (for routing:
        // the cluster splits a topic's partitions evenly over the zone's agents) once.
        let described = match from {
            Offset::At(_) if self.partition_counts.contains_key(topic) => None,
            _ => Some(self.describe(topic).await?),
        };
        self.assign_described(topic, partition, from, described.as_ref())
    }

    async fn describe(&mut self, topic: &str) -> Result<v2::DescribeTopicResponse, ClientError> {
        Ok(self
            .admin
            .describe_topic(v2::DescribeTopicRequest {
                name: topic.to_string(),
            })
            .await?
            .into_inner())
    }

    /// [`Consumer::assign`] with the topic's description when it was read.
    fn assign_described(
        &mut self,
        topic: &str,
        partition: u32,
        from: Offset,
        described: Option<&v2::DescribeTopicResponse>,
    ) -> Result<(), ClientError> {
        if let Some(d) = described {
            let count = d
                .topic
                .as_ref()
                .map_or(d.partitions.len() as u32, |t| t.partitions);
            self.partition_counts.insert(topic.to_string(), count);
            if partition >= count {
                return Err(ClientError::Invalid(format!(
                    "topic `{topic}` has no partition {partition} ({count} partitions)"
                )));
            }
        }
        let position = match (from, described) {
            (Offset::At(n), _) => n,
            (Offset::Beginning | Offset::End, Some(d)) => {
                let info = d
                    .partitions
                    .iter()
                    .find(|p| p.partition == partition)
                    .ok_or_else(|| {
                        ClientError::Invalid(format!(
                            "topic `{topic}` has no partition {partition} ({} partitions)",
                            d.partitions.len()
                        ))
                    })?;
                if from == Offset::Beginning {
                    info.start_offset
                } else {
                    info.high_watermark
                }
            }
            (_, None) => {
                return Err(ClientError::Invalid(format!(
                    "the offsets of `{topic}` were not read"
                )));
            }
        };
        self.assigned
            .retain(|a| !(a.topic == topic && a.partition == partition));
        self.assigned.push(Assignment {
            topic: topic.to_string(),
            partition,
            partitions: self.partition_counts.get(topic).copied().unwrap_or(0),
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
        if let Offset::At(n) = from
            && n < 0
        {
            return Err(ClientError::Invalid(format!(
                "offset must be 0 or more, got {n}"
            )));
        }
        let described = self.describe(topic).await?;
        let n = described.topic.as_ref().map_or(0, |t| t.partitions);
        for p in 0..n {
            self.assign_described(topic, p, from, Some(&described))?;
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
                let client = self.client.clone();
                let max_bytes = self.config.max_bytes_per_partition;
                let request = v2::FetchRequest {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset: a.position,
                    max_bytes: (max_bytes > 0).then_some(max_bytes),
                    max_wait_ms: wait_ms,
                };
                let to = Route::Partition {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    partitions: a.partitions,
                };
                // A throttled fetch is sent again when the agent says (the wait may then
                // outlast `wait`: the quota decides, as in Kafka).
                let fetched = crate::error::patiently(move || {
                    let request = route(tonic::Request::new(request.clone()), to.clone());
                    let mut client = client.clone();
                    async move { client.fetch(request).await }
                });
                async move { (i, fetched.await) }
            })
            .collect();
        let mut out = Vec::new();
        let mut failed = None;
        while let Some((i, result)) = calls.next().await {
            let decoded = match result {
                Ok(response) => {
                    let response = response.into_inner();
                    let a = &mut self.assigned[i];
                    a.high_watermark = response.high_watermark;
                    decode_into(a, response.frames, &mut out)
                }
                Err(status) => Err(ClientError::from(status)),
            };
            match decoded {
                // Waiting, nothing read: say so at once rather than after the wait.
                Err(e) if !wait.is_zero() && out.is_empty() => return Err(e),
                // The positions of the partitions already decoded have moved past the
                // records in `out`: those records must reach the caller even though this
                // partition failed, or they would be skipped (and a group would commit past
                // them). As in Kafka's consumer, the failure is reported by a poll that
                // reads nothing else; the failed partition's position did not move past the
                // failure, so the next fetch meets it again.
                Err(e) => {
                    tracing::debug!(error = %e, "a partition failed; returning the others' records first");
                    failed.get_or_insert(e);
                }
                Ok(()) => {}
            }
            if !out.is_empty() && !wait.is_zero() {
                break;
            }
        }
        match failed {
            Some(e) if out.is_empty() => Err(e),
            _ => Ok(out),
        }
    }
}

/// Verifies and decodes fetched frames, skipping records before the position.
fn decode_into(
    a: &mut Assignment,
    frames: Vec<v2::FetchedFrame>,
    out: &mut Vec<ConsumedRecord>,
) -> Result<(), ClientError> {
    for f in frames {
        let count = f.header.as_ref().map_or(0, |h| i64::from(h.record_count));
        if f.header.is_some() && f.base_offset + count <= a.position {
            // Wholly before the position (frames are returned whole): nothing to decode.
            continue;
        }
        let records = open_fetched(&a.topic, a.partition, f.base_offset, f.header, f.payload)?;
        for (i, r) in records.into_iter().enumerate() {
            let offset = f.base_offset + i as i64;
            if offset < a.position {
                continue;
            }
            if offset > a.position {
                return Err(ClientError::Unexpected {
                    topic: a.topic.clone(),
                    partition: a.partition,
                    offset,
                    reason: format!("expected offset {} next", a.position),
                });
            }
            a.position = offset + 1;
            out.push(consumed(&a.topic, a.partition, offset, r));
        }
    }
    Ok(())
}

/// Verifies, decompresses and decodes one stored frame of `topic`/`partition` starting at
/// `base_offset`; a frame that fails is [`ClientError::Corrupt`].
pub(crate) fn open_fetched(
    topic: &str,
    partition: u32,
    base_offset: i64,
    header: Option<v2::FrameHeader>,
    payload: Bytes,
) -> Result<Vec<v2::Record>, ClientError> {
    let corrupt = |source| ClientError::Corrupt {
        topic: topic.to_string(),
        partition,
        offset: base_offset,
        source,
    };
    let header = header.ok_or_else(|| {
        corrupt(FrameError::Header {
            field: "header",
            reason: "missing".into(),
        })
    })?;
    cairn_proto::open_frame(&header, payload).map_err(corrupt)
}

/// A decoded record as the application sees it.
pub(crate) fn consumed(topic: &str, partition: u32, offset: i64, r: v2::Record) -> ConsumedRecord {
    ConsumedRecord {
        topic: topic.to_string(),
        partition,
        offset,
        timestamp_ms: r.timestamp_ms,
        key: r.key,
        value: r.value,
        headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::v2::Codec;

    fn record(value: &'static str, ts: i64) -> v2::Record {
        v2::Record {
            timestamp_ms: ts,
            key: Bytes::new(),
            value: Bytes::from_static(value.as_bytes()),
            headers: vec![v2::RecordHeader {
                key: "h".into(),
                value: Bytes::from_static(b"v"),
            }],
        }
    }

    fn fetched(base_offset: i64, values: &[&'static str]) -> v2::FetchedFrame {
        let records = values.iter().map(|v| record(v, 7)).collect();
        let frame =
            cairn_proto::build_frame(records, Codec::Zstd, None).expect("a small frame builds");
        v2::FetchedFrame {
            base_offset,
            header: frame.header,
            payload: frame.payload,
        }
    }

    fn assignment(position: i64) -> Assignment {
        Assignment {
            topic: "t".into(),
            partition: 3,
            partitions: 4,
            position,
            high_watermark: 0,
        }
    }

    #[test]
    fn records_before_the_position_are_skipped() {
        let mut a = assignment(11);
        let mut out = Vec::new();
        let frames = vec![
            fetched(5, &["a", "b"]),
            fetched(7, &["c", "d", "e", "f", "g"]),
        ];
        decode_into(&mut a, frames, &mut out).expect("frames decode");
        let got: Vec<(i64, &[u8])> = out.iter().map(|r| (r.offset, &r.value[..])).collect();
        assert_eq!(got, vec![(11, &b"g"[..])]);
        assert_eq!(a.position, 12);
        assert_eq!(
            out[0].headers,
            vec![("h".to_string(), Bytes::from_static(b"v"))]
        );
        assert_eq!(
            (out[0].topic.as_str(), out[0].partition, out[0].timestamp_ms),
            ("t", 3, 7)
        );
    }

    #[test]
    fn a_corrupt_frame_names_where_it_is() {
        let mut frame = fetched(20, &["a", "b"]);
        let mut payload = frame.payload.to_vec();
        payload[0] ^= 0xff;
        frame.payload = payload.into();
        let mut out = Vec::new();
        match decode_into(&mut assignment(20), vec![frame], &mut out) {
            Err(ClientError::Corrupt {
                topic,
                partition,
                offset,
                source: FrameError::Checksum { .. },
            }) => assert_eq!((topic.as_str(), partition, offset), ("t", 3, 20)),
            other => panic!("expected a corrupt frame, got {other:?}"),
        }
        let missing = v2::FetchedFrame {
            base_offset: 20,
            header: None,
            payload: Bytes::new(),
        };
        let err = decode_into(&mut assignment(20), vec![missing], &mut out);
        assert!(matches!(err, Err(ClientError::Corrupt { .. })), "{err:?}");
    }

    #[test]
    fn a_gap_in_offsets_is_refused() {
        let mut out = Vec::new();
        let err = decode_into(&mut assignment(3), vec![fetched(5, &["a"])], &mut out);
        assert!(
            matches!(err, Err(ClientError::Unexpected { offset: 5, .. })),
            "{err:?}"
        );
    }
}
