//! The Groups service: consumer-group membership, offsets and administration, translated
//! to metadata operations.

use std::sync::Arc;

use cairn_metadata::{MemberAssignment, OffsetReset};
use cairn_proto::v2;
use futures::{StreamExt, TryStreamExt};
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::convert::page;
use crate::service::{Shared, allow, need, status};
use cairn_metadata::acls::{Operation, ResourceType};

/// Session timeout when a member asks for none.
const DEFAULT_SESSION_TIMEOUT_MS: i64 = 10_000;

/// The Groups service.
pub(crate) struct GroupsService(pub(crate) Arc<Shared>);

fn to_proto(a: MemberAssignment) -> Option<v2::GroupAssignment> {
    let session_timeout_ms = a.session_timeout_ms;
    Some(v2::GroupAssignment {
        member_id: a.member_id,
        generation: a.generation,
        partitions: a
            .partitions
            .into_iter()
            .map(|(topic, partition)| v2::TopicPartition { topic, partition })
            .collect(),
        heartbeat_interval_ms: u32::try_from((session_timeout_ms / 3).max(1)).unwrap_or(u32::MAX),
    })
}

fn offsets(list: Vec<(String, u32, i64)>) -> Vec<v2::PartitionOffset> {
    list.into_iter()
        .map(|(topic, partition, offset)| v2::PartitionOffset {
            topic,
            partition,
            offset,
        })
        .collect()
}

#[tonic::async_trait]
impl v2::group_service_server::GroupService for GroupsService {
    async fn join_group(
        &self,
        request: Request<v2::JoinGroupRequest>,
    ) -> Result<Response<v2::JoinGroupResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        for topic in &request.get_ref().topics {
            allow(
                &self.0,
                &request,
                Operation::Read,
                ResourceType::Topic,
                topic,
            )?;
        }
        let r = request.into_inner();
        need("group", &r.group)?;
        let timeout = r
            .session_timeout_ms
            .map_or(DEFAULT_SESSION_TIMEOUT_MS, i64::from);
        let member = (!r.member_id.is_empty()).then_some(r.member_id.as_str());
        let a = self
            .0
            .metadata
            .join_group(&r.group, member, &r.topics, timeout)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::JoinGroupResponse {
            assignment: to_proto(a),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<v2::HeartbeatRequest>,
    ) -> Result<Response<v2::HeartbeatResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        let a = self
            .0
            .metadata
            .heartbeat(&r.group, &r.member_id)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::HeartbeatResponse {
            assignment: to_proto(a),
        }))
    }

    async fn leave_group(
        &self,
        request: Request<v2::LeaveGroupRequest>,
    ) -> Result<Response<v2::LeaveGroupResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        let r = request.into_inner();
        need("group", &r.group)?;
        need("member_id", &r.member_id)?;
        self.0
            .metadata
            .leave_group(&r.group, &r.member_id)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::LeaveGroupResponse {}))
    }

    async fn commit_offsets(
        &self,
        request: Request<v2::CommitOffsetsRequest>,
    ) -> Result<Response<v2::CommitOffsetsResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Read,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        let topics: std::collections::BTreeSet<&str> = request
            .get_ref()
            .offsets
            .iter()
            .map(|o| o.topic.as_str())
            .collect();
        for topic in topics {
            allow(
                &self.0,
                &request,
                Operation::Read,
                ResourceType::Topic,
                topic,
            )?;
        }
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
        Ok(Response::new(v2::CommitOffsetsResponse {}))
    }

    async fn fetch_committed_offsets(
        &self,
        request: Request<v2::FetchCommittedOffsetsRequest>,
    ) -> Result<Response<v2::FetchCommittedOffsetsResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        let r = request.into_inner();
        need("group", &r.group)?;
        let list = self
            .0
            .metadata
            .committed_offsets(&r.group)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::FetchCommittedOffsetsResponse {
            offsets: offsets(list),
        }))
    }

    async fn describe_group(
        &self,
        request: Request<v2::DescribeGroupRequest>,
    ) -> Result<Response<v2::DescribeGroupResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        let r = request.into_inner();
        need("group", &r.group)?;
        let d = self
            .0
            .metadata
            .describe_group(&r.group)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::DescribeGroupResponse {
            group: d.group,
            generation: d.generation,
            members: d
                .members
                .into_iter()
                .map(|m| v2::GroupMemberInfo {
                    member_id: m.member_id,
                    topics: m.topics,
                    session_timeout_ms: u32::try_from(m.session_timeout_ms).unwrap_or(u32::MAX),
                    last_heartbeat_at_ms: m.last_heartbeat_ms,
                    partitions: m
                        .partitions
                        .into_iter()
                        .map(|(topic, partition)| v2::TopicPartition { topic, partition })
                        .collect(),
                })
                .collect(),
            partitions: d
                .partitions
                .into_iter()
                .map(|p| v2::PartitionLagInfo {
                    topic: p.topic,
                    partition: p.partition,
                    committed: p.committed,
                    high_watermark: p.high_watermark,
                    lag: p.lag,
                })
                .collect(),
        }))
    }

    async fn list_groups(
        &self,
        request: Request<v2::ListGroupsRequest>,
    ) -> Result<Response<v2::ListGroupsResponse>, Status> {
        let principal = crate::auth::principal_of(&request).map(str::to_string);
        let r = request.into_inner();
        let mut all: Vec<v2::GroupListing> = Vec::new();
        for (names, kind) in [
            (
                self.0.metadata.list_groups().await.map_err(status)?,
                v2::GroupKind::Consumer,
            ),
            (
                self.0.metadata.list_share_groups().await.map_err(status)?,
                v2::GroupKind::Share,
            ),
        ] {
            // Only the groups the caller may see.
            let resource = match kind {
                v2::GroupKind::Share => ResourceType::ShareGroup,
                _ => ResourceType::Group,
            };
            all.extend(
                names
                    .into_iter()
                    .filter(|name| {
                        self.0
                            .authz
                            .may(principal.as_deref(), Operation::Describe, resource, name)
                    })
                    .map(|name| v2::GroupListing {
                        name,
                        kind: kind as i32,
                    }),
            );
        }
        // The page key orders consumer groups before share groups, each by name.
        let key = |g: &v2::GroupListing| format!("{}/{}", g.kind, g.name);
        all.sort_by_key(key);
        let (groups, next_page_token) =
            page(all, key, r.page_size, &r.page_token).map_err(status)?;
        Ok(Response::new(v2::ListGroupsResponse {
            groups,
            next_page_token,
        }))
    }

    async fn reset_offsets(
        &self,
        request: Request<v2::ResetOffsetsRequest>,
    ) -> Result<Response<v2::ResetOffsetsResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Group,
            &request.get_ref().group,
        )?;
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        use v2::reset_offsets_request::To;
        let r = request.into_inner();
        need("group", &r.group)?;
        need("topic", &r.topic)?;
        let to = match r.to {
            Some(To::Earliest(true)) => OffsetReset::Earliest,
            Some(To::Latest(true)) => OffsetReset::Latest,
            Some(To::Offset(n)) if n >= 0 => OffsetReset::To(n),
            Some(To::TimestampMs(ms)) if ms >= 0 => {
                // Found here, where the records can be read: metadata knows entries only.
                let s = &self.0;
                let topic = s.metadata.topic(&r.topic).await.map_err(status)?;
                let offsets = futures::stream::iter(0..topic.partitions)
                    .map(|p| {
                        let topic = &topic;
                        async move { s.reader.offset_for_time(topic, p, ms).await }
                    })
                    .buffered(8)
                    .try_collect::<Vec<i64>>()
                    .await
                    .map_err(status)?;
                OffsetReset::PerPartition(offsets)
            }
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
        Ok(Response::new(v2::ResetOffsetsResponse {
            offsets: offsets(list),
        }))
    }
}
