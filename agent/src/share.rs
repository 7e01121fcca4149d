//! The Share service: queue-mode consumption with per-record leases, acknowledgements and a
//! dead-letter topic. Lease bookkeeping is in metadata (`cairn_metadata::share`); this
//! module reads the leased records' bytes and writes dead letters through the normal
//! produce path, so they are as durable as any record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_metadata::{MetaError, ShareAction, TopicSpec};
use cairn_proto::v2;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::quota::Kind;
use crate::service::{Shared, allow, long_poll, need, status, within_quota};
use cairn_metadata::acls::{Operation, ResourceType};

const DEFAULT_LEASE_MS: u32 = 30_000;
const LEASE_RANGE_MS: (u32, u32) = (1_000, 600_000);
const DEFAULT_MAX_RECORDS: u32 = 500;
const MAX_RECORDS: u32 = 10_000;

/// The Share service.
pub(crate) struct ShareService(pub(crate) Arc<Shared>);

fn lease(ms: Option<u32>) -> Result<i64, Status> {
    let (lo, hi) = LEASE_RANGE_MS;
    match ms {
        None => Ok(i64::from(DEFAULT_LEASE_MS)),
        Some(n) if (lo..=hi).contains(&n) => Ok(i64::from(n)),
        Some(n) => Err(status(AgentError::Invalid(format!(
            "lease_ms must be between {lo} and {hi} (1 s to 10 min), got {n}"
        )))),
    }
}

/// The name of a topic's dead-letter topic.
pub(crate) fn dlq_name(topic: &str) -> String {
    format!("{topic}.dlq")
}

impl ShareService {
    /// The stored frames of one partition that hold `offsets`, in offset order.
    async fn read_frames(
        &self,
        topic: &cairn_metadata::Topic,
        partition: u32,
        offsets: &BTreeSet<i64>,
    ) -> Result<Vec<v2::FetchedFrame>, AgentError> {
        let mut out = Vec::new();
        let (Some(&first), Some(&last)) = (offsets.first(), offsets.last()) else {
            return Ok(out);
        };
        let mut pos = first;
        while pos <= last {
            let fetched = self
                .0
                .reader
                .fetch(topic, partition, pos, 4 << 20, Duration::ZERO)
                .await?;
            if fetched.frames.is_empty() {
                break;
            }
            for f in fetched.frames {
                let end =
                    f.base_offset + i64::from(f.header.as_ref().map_or(0, |h| h.record_count));
                if end <= pos {
                    continue;
                }
                pos = pos.max(end);
                if offsets.range(f.base_offset..end).next().is_some() {
                    out.push(f);
                }
            }
        }
        crate::fetch::cairn_frames(topic, out)
    }

    /// The records at `offsets` of one partition, decoded, by offset.
    async fn read_records(
        &self,
        topic: &cairn_metadata::Topic,
        partition: u32,
        offsets: &BTreeSet<i64>,
    ) -> Result<BTreeMap<i64, v2::Record>, AgentError> {
        let mut out = BTreeMap::new();
        for f in self.read_frames(topic, partition, offsets).await? {
            let header = f.header.unwrap_or_default();
            let records = cairn_proto::open_frame(&header, f.payload).map_err(|source| {
                cairn_storage::StorageError::corrupt(
                    format!("{}/{partition}@{}", topic.name, f.base_offset),
                    source,
                )
            })?;
            for (i, r) in records.into_iter().enumerate() {
                let offset = f.base_offset + i as i64;
                if offsets.contains(&offset) {
                    out.insert(offset, r);
                }
            }
        }
        Ok(out)
    }

    /// Copies records to `<topic>.dlq` (created on first use) with headers naming the
    /// group, the origin and the delivery count, then settles them as dead-lettered.
    async fn dead_letter(
        &self,
        group: &str,
        member: &str,
        topic: &cairn_metadata::Topic,
        partition: u32,
        records: &[(i64, u32)],
        reason: &str,
    ) -> Result<(), AgentError> {
        if records.is_empty() {
            return Ok(());
        }
        let s = &self.0;
        let dlq = dlq_name(&topic.name);
        match s
            .metadata
            .create_topic(&TopicSpec {
                name: dlq.clone(),
                partitions: 1,
                codec: topic.codec,
                retention_ms: -1,
                retention_bytes: -1,
                value_schema: None,
            })
            .await
        {
            Ok(_) | Err(MetaError::TopicExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let offsets: BTreeSet<i64> = records.iter().map(|r| r.0).collect();
        let originals = self.read_records(topic, partition, &offsets).await?;
        let mut batch = Vec::with_capacity(records.len());
        for (offset, deliveries) in records {
            let Some(mut r) = originals.get(offset).cloned() else {
                continue; // removed by retention meanwhile: nothing left to keep
            };
            for (k, v) in [
                ("cairn.dlq.group", group.to_string()),
                ("cairn.dlq.topic", topic.name.clone()),
                ("cairn.dlq.partition", partition.to_string()),
                ("cairn.dlq.offset", offset.to_string()),
                ("cairn.dlq.delivery_count", deliveries.to_string()),
                ("cairn.dlq.reason", reason.to_string()),
            ] {
                r.headers.push(v2::RecordHeader {
                    key: k.to_string(),
                    value: v.into(),
                });
            }
            batch.push(r);
        }
        if !batch.is_empty() {
            let dlq_topic = s.topic_with_partition(&dlq, 0).await?;
            let frame = cairn_proto::build_frame(
                batch,
                crate::convert::codec_to_proto(dlq_topic.codec),
                None,
            )
            .map_err(|e| AgentError::Internal(format!("building a dead-letter frame: {e}")))?;
            let pb = v2::ProduceBatch {
                topic: dlq.clone(),
                partition: 0,
                frame: Some(frame),
                expected_offset: None,
            };
            let now = s.metadata.clock().now_ms();
            let pending = s.prepare(0, &dlq_topic, pb, now)?;
            let outcome = s.batcher.append(vec![pending], false).await?;
            if outcome.first().and_then(|o| o.base_offset()).is_none() {
                return Err(AgentError::Internal(format!(
                    "dead-letter topic {dlq} refused the records: {outcome:?}"
                )));
            }
        }
        let offsets: Vec<i64> = offsets.into_iter().collect();
        s.metadata
            .share_settle(
                group,
                member,
                &topic.name,
                partition,
                &offsets,
                ShareAction::DeadLettered,
            )
            .await?;
        tracing::info!(group, topic = %topic.name, partition, records = offsets.len(), reason, "dead-lettered");
        // The agent's own write, on no client's behalf: audited as the service principal.
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %s.authz.service_principal().unwrap_or("agent"),
            operation = "DeadLetter",
            resource = %format!("topic:{dlq}"),
            group,
            from = %format!("{}/{partition}", topic.name),
            records = offsets.len(),
            "records dead-lettered"
        );
        Ok(())
    }
}

#[tonic::async_trait]
impl v2::share_service_server::ShareService for ShareService {
    async fn acquire(
        &self,
        request: Request<v2::AcquireRequest>,
    ) -> Result<Response<v2::AcquireResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::ShareGroup,
            &request.get_ref().group,
        )?;
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let s = &self.0;
        within_quota(s, &request, Kind::FetchBytes, 0).await?;
        let _waiting = long_poll(&request, request.get_ref().max_wait_ms > 0)?;
        let principal = crate::auth::principal_of(&request).map(str::to_string);
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        need("topic", &r.topic)?;
        let lease_ms = lease(r.lease_ms)?;
        let max_records = match r.max_records {
            None => DEFAULT_MAX_RECORDS,
            Some(n @ 1..=MAX_RECORDS) => n,
            Some(n) => {
                return Err(status(AgentError::Invalid(format!(
                    "max_records must be between 1 and {MAX_RECORDS}, got {n}"
                ))));
            }
        };
        let max_wait = Duration::from_millis(u64::from(r.max_wait_ms));
        if max_wait > s.settings.max_fetch_wait {
            return Err(status(AgentError::Invalid(format!(
                "max_wait_ms {} is over this agent's limit of {} ms",
                r.max_wait_ms,
                s.settings.max_fetch_wait.as_millis()
            ))));
        }
        let topic = s.topic(&r.topic).await.map_err(status)?;
        let deadline = Instant::now() + max_wait;
        let mut dead_lettered = 0u32;
        loop {
            let got = s
                .metadata
                .share_acquire(
                    &r.group,
                    &r.member_id,
                    &r.topic,
                    max_records,
                    lease_ms,
                    s.settings.share_max_deliveries,
                )
                .await
                .map_err(status)?;
            let mut dead: BTreeMap<u32, Vec<(i64, u32)>> = BTreeMap::new();
            for (p, o, n) in &got.dead_letter {
                dead.entry(*p).or_default().push((*o, *n));
            }
            for (p, recs) in dead {
                dead_lettered += recs.len() as u32;
                self.dead_letter(&r.group, &r.member_id, &topic, p, &recs, "max_deliveries")
                    .await
                    .map_err(status)?;
            }
            if !got.records.is_empty() {
                let mut by_partition: BTreeMap<u32, BTreeMap<i64, u32>> = BTreeMap::new();
                for (p, o, n) in &got.records {
                    by_partition.entry(*p).or_default().insert(*o, *n);
                }
                let mut frames = Vec::new();
                for (p, leased) in &by_partition {
                    let offsets: BTreeSet<i64> = leased.keys().copied().collect();
                    for f in self
                        .read_frames(&topic, *p, &offsets)
                        .await
                        .map_err(status)?
                    {
                        let end = f.base_offset
                            + i64::from(f.header.as_ref().map_or(0, |h| h.record_count));
                        let (offsets, delivery_counts) = leased
                            .range(f.base_offset..end)
                            .map(|(o, n)| (*o, *n))
                            .unzip();
                        frames.push(v2::LeasedFrame {
                            partition: *p,
                            frame: Some(f),
                            offsets,
                            delivery_counts,
                        });
                    }
                }
                let bytes = frames
                    .iter()
                    .filter_map(|f| f.frame.as_ref())
                    .map(|f| f.payload.len() as u64)
                    .sum();
                s.quotas
                    .charge(principal.as_deref(), Kind::FetchBytes, bytes);
                return Ok(Response::new(v2::AcquireResponse {
                    frames,
                    lease_deadline_ms: got.lease_deadline_ms,
                    dead_lettered,
                }));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(Response::new(v2::AcquireResponse {
                    frames: Vec::new(),
                    lease_deadline_ms: got.lease_deadline_ms,
                    dead_lettered,
                }));
            }
            // Nothing available: wait for a commit to any partition, but look again at
            // least every 200 ms, since expiring leases free records without a commit.
            let step = (deadline - now).min(Duration::from_millis(200));
            let waits = (0..topic.partitions).map(|p| {
                let state = s.metadata.clone();
                let id = topic.id;
                Box::pin(async move {
                    let hwm = state.partition_state(id, p).await?.next_offset;
                    state.wait_for_offset(id, p, hwm, step).await
                })
            });
            let _ = futures::future::select_all(waits).await;
        }
    }

    async fn settle(
        &self,
        request: Request<v2::SettleRequest>,
    ) -> Result<Response<v2::SettleResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::ShareGroup,
            &request.get_ref().group,
        )?;
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let s = &self.0;
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        need("topic", &r.topic)?;
        if r.offsets.is_empty() {
            return Err(status(AgentError::Invalid(
                "settling needs at least one offset".into(),
            )));
        }
        if let Some(o) = r.offsets.iter().find(|o| **o < 0) {
            return Err(status(AgentError::Invalid(format!(
                "offsets must be 0 or more, got {o}"
            ))));
        }
        let action = match v2::SettleAction::try_from(r.action) {
            Ok(v2::SettleAction::Ack) => ShareAction::Ack,
            Ok(v2::SettleAction::Release) => ShareAction::Release,
            Ok(v2::SettleAction::Reject) => ShareAction::Reject,
            Ok(v2::SettleAction::Renew) => ShareAction::Renew(lease(r.lease_ms)?),
            _ => {
                return Err(status(AgentError::Invalid(format!(
                    "unknown action {}: use ACK (1), RELEASE (2), REJECT (3) or RENEW (4)",
                    r.action
                ))));
            }
        };
        let topic = s
            .topic_with_partition(&r.topic, r.partition)
            .await
            .map_err(status)?;
        let counts = s
            .metadata
            .share_settle(
                &r.group,
                &r.member_id,
                &r.topic,
                r.partition,
                &r.offsets,
                action,
            )
            .await
            .map_err(status)?;
        if action == ShareAction::Reject {
            let recs: Vec<(i64, u32)> = r.offsets.iter().copied().zip(counts).collect();
            self.dead_letter(
                &r.group,
                &r.member_id,
                &topic,
                r.partition,
                &recs,
                "rejected",
            )
            .await
            .map_err(status)?;
        }
        Ok(Response::new(v2::SettleResponse {}))
    }

    async fn describe_share_group(
        &self,
        request: Request<v2::DescribeShareGroupRequest>,
    ) -> Result<Response<v2::DescribeShareGroupResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::ShareGroup,
            &request.get_ref().group,
        )?;
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        let r = request.into_inner();
        need("group", &r.group)?;
        need("topic", &r.topic)?;
        let parts = self
            .0
            .metadata
            .describe_share_group(&r.group, &r.topic)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::DescribeShareGroupResponse {
            partitions: parts
                .into_iter()
                .map(|p| v2::SharePartitionState {
                    partition: p.partition,
                    start_offset: p.start_offset,
                    end_offset: p.end_offset,
                    acquired: p.acquired,
                    available: p.available,
                    settled: p.settled,
                    high_watermark: p.high_watermark,
                })
                .collect(),
        }))
    }
}
