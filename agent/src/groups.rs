//! The Groups service: consumer-group membership, offsets and administration, translated
//! to metadata operations.

use std::sync::Arc;

use cairn_metadata::{MemberAssignment, OffsetReset};
use cairn_proto::v1;
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::service::{Shared, need, status};

/// Session timeout when a member asks for none.
const DEFAULT_SESSION_TIMEOUT_MS: i64 = 10_000;

/// The Groups service.
pub(crate) struct GroupsService(pub(crate) Arc<Shared>);

fn to_proto(a: MemberAssignment) -> v1::GroupAssignment {
    let session_timeout_ms = a.session_timeout_ms;
    v1::GroupAssignment {
        member_id: a.member_id,
        generation: a.generation,
        partitions: a
            .partitions
            .into_iter()
            .map(|(topic, partition)| v1::TopicPartition { topic, partition })
            .collect(),
        heartbeat_interval_ms: (session_timeout_ms / 3).max(1),
    }
}

fn offsets(list: Vec<(String, u32, i64)>) -> Vec<v1::PartitionOffset> {
    list.into_iter()
        .map(|(topic, partition, offset)| v1::PartitionOffset {
            topic,
            partition,
            offset,
        })
        .collect()
}

#[tonic::async_trait]
impl v1::groups_server::Groups for GroupsService {
    async fn join_group(
        &self,
        request: Request<v1::JoinGroupRequest>,
    ) -> Result<Response<v1::GroupAssignment>, Status> {
        let r = request.into_inner();
        need("group", &r.group)?;
        let timeout = match r.session_timeout_ms {
            0 => DEFAULT_SESSION_TIMEOUT_MS,
            n => n,
        };
        let member = (!r.member_id.is_empty()).then_some(r.member_id.as_str());
        let a = self
            .0
            .metadata
            .join_group(&r.group, member, &r.topics, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(a)))
    }

    async fn heartbeat(
        &self,
        request: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::GroupAssignment>, Status> {
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        let a = self
            .0
            .metadata
            .heartbeat(&r.group, &r.member_id)
            .await
            .map_err(status)?;
        Ok(Response::new(to_proto(a)))
    }

    async fn leave_group(
        &self,
        request: Request<v1::LeaveGroupRequest>,
    ) -> Result<Response<v1::LeaveGroupResponse>, Status> {
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        self.0
            .metadata
            .leave_group(&r.group, &r.member_id)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<v1::CommitOffsetsRequest>,
    ) -> Result<Response<v1::CommitOffsetsResponse>, Status> {
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        if r.offsets.is_empty() {
            return Err(status(AgentError::Invalid(
                "a commit needs at least one offset".into(),
            )));
        }
        let list: Vec<(String, u32, i64)> = r
            .offsets
            .into_iter()
            .map(|o| (o.topic, o.partition, o.offset))
            .collect();
        self.0
            .metadata
            .commit_offsets(&r.group, &r.member_id, r.generation, &list)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::CommitOffsetsResponse {}))
    }

    async fn fetch_committed_offsets(
        &self,
        request: Request<v1::FetchCommittedOffsetsRequest>,
    ) -> Result<Response<v1::FetchCommittedOffsetsResponse>, Status> {
        let r = request.into_inner();
        need("group", &r.group)?;
        let list = self
            .0
            .metadata
            .committed_offsets(&r.group)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::FetchCommittedOffsetsResponse {
            offsets: offsets(list),
        }))
    }

    async fn describe_group(
        &self,
        request: Request<v1::DescribeGroupRequest>,
    ) -> Result<Response<v1::DescribeGroupResponse>, Status> {
        let r = request.into_inner();
        need("group", &r.group)?;
        let d = self
            .0
            .metadata
            .describe_group(&r.group)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::DescribeGroupResponse {
            group: d.group,
            generation: d.generation,
            members: d
                .members
                .into_iter()
                .map(|m| v1::GroupMemberInfo {
                    member_id: m.member_id,
                    topics: m.topics,
                    session_timeout_ms: m.session_timeout_ms,
                    last_heartbeat_ms: m.last_heartbeat_ms,
                    partitions: m
                        .partitions
                        .into_iter()
                        .map(|(topic, partition)| v1::TopicPartition { topic, partition })
                        .collect(),
                })
                .collect(),
            partitions: d
                .partitions
                .into_iter()
                .map(|p| v1::PartitionLagInfo {
                    topic: p.topic,
                    partition: p.partition,
                    committed: p.committed.unwrap_or(-1),
                    high_watermark: p.high_watermark,
                    lag: p.lag,
                })
                .collect(),
        }))
    }

    async fn list_groups(
        &self,
        _request: Request<v1::ListGroupsRequest>,
    ) -> Result<Response<v1::ListGroupsResponse>, Status> {
        let groups = self.0.metadata.list_groups().await.map_err(status)?;
        let share_groups = self.0.metadata.list_share_groups().await.map_err(status)?;
        Ok(Response::new(v1::ListGroupsResponse {
            groups,
            share_groups,
        }))
    }

    async fn reset_offsets(
        &self,
        request: Request<v1::ResetOffsetsRequest>,
    ) -> Result<Response<v1::ResetOffsetsResponse>, Status> {
        use v1::reset_offsets_request::To;
        let r = request.into_inner();
        need("group", &r.group)?;
        need("topic", &r.topic)?;
        let to = match r.to {
            Some(To::Earliest(true)) => OffsetReset::Earliest,
            Some(To::Latest(true)) => OffsetReset::Latest,
            Some(To::Offset(n)) if n >= 0 => OffsetReset::To(n),
            Some(To::TimestampMs(ms)) if ms >= 0 => OffsetReset::Timestamp(ms),
            Some(To::Offset(n)) | Some(To::TimestampMs(n)) => {
                return Err(status(AgentError::Invalid(format!(
                    "reset target must be 0 or more, got {n}"
                ))));
            }
            _ => {
                return Err(status(AgentError::Invalid(
                    "say where to reset: earliest, latest, offset or timestamp_ms".into(),
                )));
            }
        };
        let list = self
            .0
            .metadata
            .reset_offsets(&r.group, &r.topic, to)
            .await
            .map_err(status)?;
        Ok(Response::new(v1::ResetOffsetsResponse {
            offsets: offsets(list),
        }))
    }
}
