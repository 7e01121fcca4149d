//! [`ShareConsumer`]: queue-mode consumption. Records are leased one consumer at a time;
//! each must be acknowledged ([`ShareConsumer::ack`]), or it comes back — to any consumer of
//! the group — when its lease ends. Release, reject (to the dead-letter topic) and renew
//! are explicit too.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_proto::v1::{self, share_client::ShareClient};
use tonic::transport::Channel;

use crate::{ClientError, ConsumedRecord, MAX_MESSAGE_BYTES};

/// Settings of a share consumer.
#[derive(Debug, Clone)]
pub struct ShareConfig {
    /// How long a record is held before it becomes available to others again (1 s – 10 min).
    pub lease: Duration,
    /// Most records per poll.
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
    client: ShareClient<Channel>,
    group: String,
    topic: String,
    member_id: String,
    config: ShareConfig,
}

impl ShareConsumer {
    /// A consumer of `topic` in share group `group` (created on first use, reading from
    /// the earliest offset).
    pub fn new(channel: Channel, group: &str, topic: &str, config: ShareConfig) -> Self {
        let member_id = config.member_id.clone().unwrap_or_else(|| {
            // Only needs to be unique among the group's consumers; no outcome depends on it.
            #[allow(clippy::disallowed_methods)]
            let n: u64 = rand::Rng::random(&mut rand::rng());
            format!("share-{n:016x}")
        });
        ShareConsumer {
            client: ShareClient::new(channel)
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
        let response = self
            .client
            .acquire(v1::ShareAcquireRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                topic: self.topic.clone(),
                max_records: self.config.max_records,
                lease_ms: i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX),
                max_wait_ms: u32::try_from(wait.as_millis()).unwrap_or(u32::MAX),
            })
            .await?
            .into_inner();
        Ok(response
            .records
            .into_iter()
            .map(|r| {
                let rec = r.record.unwrap_or_default();
                ShareRecord {
                    delivery_count: r.delivery_count,
                    record: ConsumedRecord {
                        topic: self.topic.clone(),
                        partition: r.partition,
                        offset: r.offset,
                        timestamp_ms: rec.timestamp_ms,
                        key: rec.key,
                        value: rec.value,
                        headers: rec.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                    },
                }
            })
            .collect())
    }

    async fn settle(&mut self, records: &[ShareRecord], action: Action) -> Result<(), ClientError> {
        let mut by_partition: BTreeMap<u32, Vec<i64>> = BTreeMap::new();
        for r in records {
            by_partition
                .entry(r.record.partition)
                .or_default()
                .push(r.record.offset);
        }
        let action = match action {
            Action::Ack => v1::ShareAction::Ack,
            Action::Release => v1::ShareAction::Release,
            Action::Reject => v1::ShareAction::Reject,
            Action::Renew => v1::ShareAction::Renew,
        };
        for (partition, offsets) in by_partition {
            self.client
                .settle(v1::ShareSettleRequest {
                    group: self.group.clone(),
                    member_id: self.member_id.clone(),
                    topic: self.topic.clone(),
                    partition,
                    offsets,
                    action: action as i32,
                    lease_ms: i64::try_from(self.config.lease.as_millis()).unwrap_or(i64::MAX),
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
