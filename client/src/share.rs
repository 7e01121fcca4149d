//! [`ShareConsumer`]: queue-mode consumption. Records are leased one consumer at a time;
//! each must be acknowledged ([`ShareConsumer::ack`]), or it comes back — to any consumer of
//! the group — when its lease ends. Release, reject (to the dead-letter topic) and renew
//! are explicit too.
//!
//! An acquire answers whole stored frames, each with the offsets leased from it; the
//! consumer opens each frame and hands out only the leased records.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::Cluster;
use cairn_proto::v2::{self, SettleAction, share_service_client::ShareServiceClient};

use crate::consumer::{consumed, open_fetched};
use crate::{ClientError, ConsumedRecord, MAX_MESSAGE_BYTES};

/// Settings of a share consumer.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// How long a record is held before it becomes available to others again (1 s – 10 min).
    pub lease: Duration,
    /// Most records per poll (1 to 10,000), or 0 for the agent's default (500).
    pub max_records: u32,
    /// The consumer's identity in the group; `None` picks a random one. Two consumers must
    /// not share one.
    pub member_id: Option<String>,
}

impl Default for ShareConfig {
    fn default() -> Self {
        ShareConfig {
            lease: Duration::from_secs(30),
            max_records: 500,
            member_id: None,
        }
    }
}

/// A record leased to this consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareRecord {
    /// The record.
    pub record: ConsumedRecord,
    /// 1 on first delivery, more when it was delivered before without an acknowledgement.
    pub delivery_count: u32,
}

/// How to settle held records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Ack,
    Release,
    Reject,
    Renew,
}

/// A member of a share group reading one topic.
#[derive(Debug, Clone)]
pub struct ShareConsumer {
    client: ShareServiceClient<Cluster>,
    group: String,
    topic: String,
    member_id: String,
    config: ShareConfig,
}

impl ShareConsumer {
    /// A consumer of `topic` in share group `group` (created on first use, reading from
    /// the earliest offset).
    pub fn new(cluster: impl Into<Cluster>, group: &str, topic: &str, config: ShareConfig) -> Self {
        let channel = cluster.into();
        let member_id = config.member_id.clone().unwrap_or_else(|| {
            // Only needs to be unique among the group's consumers; no outcome depends on it.
            #[allow(clippy::disallowed_methods)]
            let n: u64 = rand::Rng::random(&mut rand::rng());
            format!("share-{n:016x}")
        });
        ShareConsumer {
            client: ShareServiceClient::new(channel)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            group: group.to_string(),
            topic: topic.to_string(),
            member_id,
            config,
        }
    }

    /// This consumer's member id.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// Leases available records, waiting up to `wait` if there are none.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<ShareRecord>, ClientError> {
        let max_records = self.config.max_records;
        let response = crate::error::patiently(|| {
            let mut c = self.client.clone();
            let request = v2::AcquireRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                topic: self.topic.clone(),
                max_records: (max_records > 0).then_some(max_records),
                lease_ms: Some(self.lease_ms()),
                max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            };
            async move { c.acquire(request).await }
        })
        .await?
        .into_inner();
        let mut out = Vec::new();
        for leased in response.frames {
            leased_records(&self.topic, leased, &mut out)?;
        }
        Ok(out)
    }

    /// The configured lease in ms, as the agent takes it.
    fn lease_ms(&self) -> u32 {
        u32::try_from(self.config.lease.as_millis()).unwrap_or(u32::MAX)
    }

    async fn settle(&mut self, records: &[ShareRecord], action: Action) -> Result<(), ClientError> {
        let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for r in records {
            by_partition
                .entry(r.record.partition)
                .or_default()
                .push(r.record.offset);
        }
        let lease_ms = (action == Action::Renew).then(|| self.lease_ms());
        let action = match action {
            Action::Ack => SettleAction::Ack,
            Action::Release => SettleAction::Release,
            Action::Reject => SettleAction::Reject,
            Action::Renew => SettleAction::Renew,
        };
        for (partition, offsets) in by_partition {
            crate::error::patiently(|| {
                let mut c = self.client.clone();
                let request = v2::SettleRequest {
                    group: self.group.clone(),
                    member_id: self.member_id.clone(),
                    topic: self.topic.clone(),
                    partition,
                    offsets: offsets.clone(),
                    action: action as i32,
                    lease_ms,
                };
                async move { c.settle(request).await }
            })
            .await?;
        }
        Ok(())
    }

    /// Acknowledges records: they are done and never delivered again. Fails (for all
    /// records of a partition, none settled) if one is not held under a live lease.
    pub async fn ack(&mut self, records: &[ShareRecord]) -> Result<(), ClientError> {
        self.settle(records, Action::Ack).await
    }

    /// Gives records back at once, for any consumer (the delivery still counts).
    pub async fn release(&mut self, records: &[ShareRecord]) -> Result<(), ClientError> {
        self.settle(records, Action::Release).await
    }

    /// Rejects poison records: they go to the dead-letter topic `<topic>.dlq` and are
    /// never delivered again.
    pub async fn reject(&mut self, records: &[ShareRecord]) -> Result<(), ClientError> {
        self.settle(records, Action::Reject).await
    }

    /// Extends the leases of held records by the configured lease from now.
    pub async fn renew(&mut self, records: &[ShareRecord]) -> Result<(), ClientError> {
        self.settle(records, Action::Renew).await
    }
}

/// Opens a leased frame and appends its leased records (offset `i` of the frame is
/// `base_offset + i`), each with its delivery count, to `out`.
fn leased_records(
    topic: &str,
    leased: v2::LeasedFrame,
    out: &mut Vec<ShareRecord>,
) -> Result<(), ClientError> {
    let partition = leased.partition;
    let unexpected = |offset: i64, reason: String| ClientError::Unexpected {
        topic: topic.to_string(),
        partition,
        offset,
        reason,
    };
    let first = leased.offsets.first().copied().unwrap_or(0);
    let frame = leased
        .frame
        .ok_or_else(|| unexpected(first, "a leased frame came without its frame".into()))?;
    if leased.offsets.len() != leased.delivery_counts.len() {
        return Err(unexpected(
            frame.base_offset,
            format!(
                "{} leased offsets but {} delivery counts",
                leased.offsets.len(),
                leased.delivery_counts.len()
            ),
        ));
    }
    let base = frame.base_offset;
    let mut records: Vec<Option<v2::Record>> =
        open_fetched(topic, partition, base, frame.header, frame.payload)?
            .into_iter()
            .map(Some)
            .collect();
    let count = records.len();
    for (offset, delivery_count) in leased.offsets.into_iter().zip(leased.delivery_counts) {
        let record = offset
            .checked_sub(base)
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| records.get_mut(i))
            .and_then(Option::take)
            .ok_or_else(|| {
                unexpected(
                    offset,
                    format!(
                        "the leased offset is not a record of the frame at {base} \
                         ({count} records), or is leased twice"
                    ),
                )
            })?;
        out.push(ShareRecord {
            record: consumed(topic, partition, offset, record),
            delivery_count,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use cairn_proto::v2::Codec;

    fn leased(offsets: Vec<i64>, delivery_counts: Vec<u32>) -> v2::LeasedFrame {
        let records = ["a", "b", "c", "d"]
            .iter()
            .map(|v| v2::Record {
                timestamp_ms: 1,
                key: Bytes::new(),
                value: Bytes::from_static(v.as_bytes()),
                headers: vec![],
            })
            .collect();
        let frame =
            cairn_proto::build_frame(records, Codec::Lz4Frame, None).expect("a small frame builds");
        v2::LeasedFrame {
            partition: 2,
            frame: Some(v2::FetchedFrame {
                base_offset: 100,
                header: frame.header,
                payload: frame.payload,
            }),
            offsets,
            delivery_counts,
        }
    }

    #[test]
    fn only_leased_offsets_are_handed_out() {
        let mut out = Vec::new();
        leased_records("t", leased(vec![101, 103], vec![1, 3]), &mut out).expect("leased");
        let got: Vec<(u32, i64, &[u8], u32)> = out
            .iter()
            .map(|r| {
                (
                    r.record.partition,
                    r.record.offset,
                    &r.record.value[..],
                    r.delivery_count,
                )
            })
            .collect();
        assert_eq!(got, vec![(2, 101, &b"b"[..], 1), (2, 103, &b"d"[..], 3)]);
    }

    #[test]
    fn offsets_outside_the_frame_are_refused() {
        for (offsets, counts) in [
            (vec![99], vec![1]),
            (vec![104], vec![1]),
            (vec![101, 101], vec![1, 1]),
            (vec![101], vec![]),
        ] {
            let mut out = Vec::new();
            let err = leased_records("t", leased(offsets.clone(), counts), &mut out);
            assert!(
                matches!(err, Err(ClientError::Unexpected { .. })),
                "{offsets:?}: {err:?}"
            );
        }
    }
}
