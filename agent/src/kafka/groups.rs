//! Kafka's classic consumer-group protocol over Cairn's groups, whose assignment is made by
//! the agents (as KIP-848 makes it by the broker), so committed offsets and members are one
//! state for both protocols.
//!
//! - JoinGroup joins (or rejoins) the Cairn group with the topics of the member's
//!   subscription and answers with the Cairn generation. The leader named is never a member,
//!   so no client runs an assignor: every member is a follower.
//! - SyncGroup answers the member's Cairn assignment as a `ConsumerProtocolAssignment`.
//! - Heartbeat answers REBALANCE_IN_PROGRESS once the Cairn generation moved past the
//!   member's, and the member joins again to learn its new assignment.
//! - OffsetCommit commits through the same fencing as the gRPC API (live member, current
//!   generation, partitions assigned to it); OffsetFetch reads the same offsets.
//! - ConsumerGroupHeartbeat (KIP-848) joins with epoch 0, heartbeats, and leaves with -1
//!   over the same groups: the member epoch is the Cairn generation, and every answer
//!   carries the member's whole assignment, by topic id.

use bytes::{BufMut, Bytes, BytesMut};
use cairn_metadata::acls::{Operation, ResourceType};
use cairn_metadata::{FenceReason, MemberAssignment, MetaError};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition as AssignedPartitions;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    BrokerId, ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse,
    ConsumerProtocolAssignment, ConsumerProtocolSubscription, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, OffsetForLeaderEpochRequest,
    OffsetForLeaderEpochResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

use super::node_id;
use crate::AgentError;
use crate::service::Shared;

/// The leader every JoinGroup names: no member has this id, so no client assigns.
const NO_LEADER: &str = "cairn-assigns-on-the-agents";

/// The Kafka error of a group operation that failed.
fn group_error(e: &MetaError) -> i16 {
    let code = match e {
        MetaError::Fenced { reason, .. } => match reason {
            FenceReason::UnknownMember => ResponseError::UnknownMemberId,
            FenceReason::StaleGeneration | FenceReason::NotAssigned => {
                ResponseError::IllegalGeneration
            }
            FenceReason::GroupActive => ResponseError::NonEmptyGroup,
            _ => ResponseError::RebalanceInProgress,
        },
        MetaError::GroupNotFound(_) => ResponseError::UnknownMemberId,
        MetaError::InvalidArgument(_) => ResponseError::InvalidRequest,
        other => return super::kind_code(other.kind()),
    };
    code.code()
}

fn denied(
    s: &Shared,
    principal: Option<&str>,
    op: Operation,
    rt: ResourceType,
    name: &str,
) -> bool {
    s.authz.check(principal, op, rt, name).is_err()
}

/// A generation as Kafka's 32-bit field holds it.
fn generation(g: u64) -> i32 {
    i32::try_from(g).unwrap_or(i32::MAX)
}

/// FindCoordinator: this agent coordinates every group (group state is in the metadata
/// store, which every agent shares). Transaction coordinators are not served.
pub(super) fn find_coordinator(
    s: &Shared,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let me = s.identity.get();
    let (node, host, port) = me
        .and_then(|i| {
            let (h, p) = i.kafka_address.rsplit_once(':')?;
            Some((node_id(&i.id), h.to_string(), p.parse::<i32>().ok()?))
        })
        .unwrap_or((-1, String::new(), -1));
    let answer = |key: StrBytes| {
        let mut c = Coordinator::default()
            .with_key(key)
            .with_node_id(BrokerId(node))
            .with_host(StrBytes::from_string(host.clone()))
            .with_port(port);
        if req.key_type != 0 {
            c = c
                .with_node_id(BrokerId(-1))
                .with_host(StrBytes::default())
                .with_port(-1)
                .with_error_code(ResponseError::CoordinatorNotAvailable.code())
                .with_error_message(Some(StrBytes::from_static_str(
                    "Cairn does not serve Kafka transactions",
                )));
        }
        c
    };
    if version >= 4 {
        return FindCoordinatorResponse::default()
            .with_coordinators(req.coordinator_keys.into_iter().map(answer).collect());
    }
    let c = answer(req.key);
    let mut resp = FindCoordinatorResponse::default()
        .with_error_code(c.error_code)
        .with_node_id(c.node_id)
        .with_host(c.host)
        .with_port(c.port);
    if version >= 1 {
        resp.error_message = c.error_message;
    }
    resp
}

/// The topics a member subscribes to, from its JoinGroup protocol metadata (a versioned
/// `ConsumerProtocolSubscription`).
fn subscription(metadata: &Bytes) -> Option<Vec<String>> {
    let mut b = metadata.clone();
    if b.len() < 2 {
        return None;
    }
    let version = i16::from_be_bytes([b[0], b[1]]);
    bytes::Buf::advance(&mut b, 2);
    let sub = ConsumerProtocolSubscription::decode(&mut b, version.clamp(0, 3)).ok()?;
    Some(sub.topics.iter().map(|t| t.as_str().to_string()).collect())
}

/// A member's assignment as a versioned `ConsumerProtocolAssignment` (version 0).
fn assignment_bytes(a: &MemberAssignment) -> Bytes {
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (t, p) in &a.partitions {
        by_topic.entry(t).or_default().push(*p as i32);
    }
    let body = ConsumerProtocolAssignment::default().with_assigned_partitions(
        by_topic
            .into_iter()
            .map(|(t, ps)| {
                AssignedPartitions::default()
                    .with_topic(TopicName(StrBytes::from_string(t.to_string())))
                    .with_partitions(ps)
            })
            .collect(),
    );
    let mut out = BytesMut::new();
    out.put_i16(0);
    if body.encode(&mut out, 0).is_err() {
        return Bytes::new();
    }
    out.freeze()
}

/// JoinGroup: joins the Cairn group with the member's subscription.
pub(super) async fn join_group(
    s: &Shared,
    principal: Option<&str>,
    req: JoinGroupRequest,
    version: i16,
) -> JoinGroupResponse {
    let group = req.group_id.0.as_str().to_string();
    let fail = |code: i16| {
        let mut r = JoinGroupResponse::default()
            .with_error_code(code)
            .with_generation_id(-1)
            .with_member_id(req.member_id.clone())
            .with_leader(StrBytes::default());
        if version >= 7 {
            r.protocol_name = None;
        }
        r
    };
    if req.protocol_type.as_str() != "consumer" {
        return fail(ResponseError::InconsistentGroupProtocol.code());
    }
    if denied(s, principal, Operation::Read, ResourceType::Group, &group) {
        return fail(ResponseError::GroupAuthorizationFailed.code());
    }
    // Eager protocols first: the assignment is the agents', and an eager client gives up
    // its partitions at each new generation, as Cairn's own consumers do.
    let chosen = ["range", "roundrobin"]
        .iter()
        .find_map(|name| req.protocols.iter().find(|p| p.name.as_str() == *name))
        .or_else(|| req.protocols.first());
    let Some(protocol) = chosen else {
        return fail(ResponseError::InconsistentGroupProtocol.code());
    };
    let Some(topics) = subscription(&protocol.metadata) else {
        return fail(ResponseError::InconsistentGroupProtocol.code());
    };
    if topics
        .iter()
        .any(|t| denied(s, principal, Operation::Read, ResourceType::Topic, t))
    {
        return fail(ResponseError::TopicAuthorizationFailed.code());
    }
    let member = (!req.member_id.is_empty()).then(|| req.member_id.as_str().to_string());
    let timeout = i64::from(req.session_timeout_ms);
    match s
        .metadata
        .join_group(&group, member.as_deref(), &topics, timeout)
        .await
    {
        Ok(a) => {
            let mut r = JoinGroupResponse::default()
                .with_generation_id(generation(a.generation))
                .with_protocol_name(Some(protocol.name.clone()))
                .with_leader(StrBytes::from_static_str(NO_LEADER))
                .with_member_id(StrBytes::from_string(a.member_id));
            if version >= 7 {
                r.protocol_type = Some(StrBytes::from_static_str("consumer"));
            }
            r
        }
        Err(e) => fail(group_error(&e)),
    }
}

/// SyncGroup: the member's assignment at its generation (REBALANCE_IN_PROGRESS when the
/// group moved on meanwhile).
pub(super) async fn sync_group(
    s: &Shared,
    principal: Option<&str>,
    req: SyncGroupRequest,
    version: i16,
) -> SyncGroupResponse {
    let group = req.group_id.0.as_str();
    let mut r = SyncGroupResponse::default();
    if version >= 5 {
        r.protocol_type = req.protocol_type.clone();
        r.protocol_name = req.protocol_name.clone();
    }
    if denied(s, principal, Operation::Read, ResourceType::Group, group) {
        return r.with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    match s.metadata.heartbeat(group, req.member_id.as_str()).await {
        Ok(a) if generation(a.generation) == req.generation_id => {
            r.with_assignment(assignment_bytes(&a))
        }
        Ok(_) => r.with_error_code(ResponseError::RebalanceInProgress.code()),
        Err(e) => r.with_error_code(group_error(&e)),
    }
}

/// Heartbeat: keeps the member alive; REBALANCE_IN_PROGRESS once its assignment changed.
pub(super) async fn heartbeat(
    s: &Shared,
    principal: Option<&str>,
    req: HeartbeatRequest,
) -> HeartbeatResponse {
    let group = req.group_id.0.as_str();
    if denied(s, principal, Operation::Read, ResourceType::Group, group) {
        return HeartbeatResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    let code = match s.metadata.heartbeat(group, req.member_id.as_str()).await {
        Ok(a) if generation(a.generation) == req.generation_id => 0,
        Ok(_) => ResponseError::RebalanceInProgress.code(),
        Err(e) => group_error(&e),
    };
    HeartbeatResponse::default().with_error_code(code)
}

/// ConsumerGroupHeartbeat (KIP-848): epoch 0 joins (as the member id the client chose, or
/// a new one), a positive epoch heartbeats (and updates the subscription when one is
/// sent), -1 and -2 leave. The answer's epoch is the group's Cairn generation and its
/// assignment the member's whole current one: partitions move between members at a new
/// generation, and commits from the old one are refused (STALE_MEMBER_EPOCH), so an
/// offset never goes back.
pub(super) async fn consumer_group_heartbeat(
    s: &Shared,
    principal: Option<&str>,
    req: ConsumerGroupHeartbeatRequest,
) -> ConsumerGroupHeartbeatResponse {
    use kafka_protocol::messages::consumer_group_heartbeat_response::{
        Assignment, TopicPartitions,
    };
    let group = req.group_id.0.as_str();
    let session = s.settings.kafka_group_session_timeout;
    let interval = (session / 10).clamp(
        std::time::Duration::from_millis(500),
        std::time::Duration::from_secs(5),
    );
    let resp = ConsumerGroupHeartbeatResponse::default()
        .with_member_id(Some(req.member_id.clone()))
        .with_member_epoch(req.member_epoch)
        .with_heartbeat_interval_ms(interval.as_millis() as i32);
    let fail = |code: ResponseError, why: String| {
        resp.clone()
            .with_error_code(code.code())
            .with_error_message(Some(StrBytes::from_string(why)))
    };
    if denied(s, principal, Operation::Read, ResourceType::Group, group) {
        return fail(
            ResponseError::GroupAuthorizationFailed,
            format!("no ACL lets this principal read group `{group}`"),
        );
    }
    // librdkafka sends an empty regex when it subscribes by name.
    if req
        .subscribed_topic_regex
        .as_ref()
        .is_some_and(|r| !r.is_empty())
    {
        return fail(
            ResponseError::InvalidRequest,
            "regular-expression subscriptions are not served: subscribe to topic names".into(),
        );
    }
    let topics: Option<Vec<String>> = req
        .subscribed_topic_names
        .as_ref()
        .map(|ts| ts.iter().map(|t| t.0.as_str().to_string()).collect());
    if let Some(t) = topics
        .iter()
        .flatten()
        .find(|t| denied(s, principal, Operation::Read, ResourceType::Topic, t))
    {
        return fail(
            ResponseError::TopicAuthorizationFailed,
            format!("no ACL lets this principal read topic `{t}`"),
        );
    }
    let member = req.member_id.as_str();
    let session_ms = session.as_millis() as i64;
    let outcome = match req.member_epoch {
        -1 | -2 => {
            return match s.metadata.leave_group(group, member).await {
                Ok(()) | Err(MetaError::GroupNotFound(_)) => resp.with_member_epoch(-1),
                Err(e) => fail(code_of(group_error(&e)), e.to_string()),
            };
        }
        0 => match &topics {
            Some(t) if !t.is_empty() => {
                if member.is_empty() {
                    s.metadata.join_group(group, None, t, session_ms).await
                } else {
                    s.metadata.join_group_as(group, member, t, session_ms).await
                }
            }
            _ => {
                return fail(
                    ResponseError::InvalidRequest,
                    "joining (epoch 0) needs the subscribed topic names".into(),
                );
            }
        },
        epoch if epoch > 0 => match &topics {
            // A changed subscription: join again as the same member.
            Some(t) if !t.is_empty() => {
                s.metadata
                    .join_group(group, Some(member), t, session_ms)
                    .await
            }
            _ => s.metadata.heartbeat(group, member).await,
        }
        .and_then(|a| {
            if generation(a.generation) < epoch {
                Err(MetaError::Fenced {
                    reason: FenceReason::StaleGeneration,
                    message: format!(
                        "epoch {epoch} is ahead of group `{group}`'s {}",
                        a.generation
                    ),
                })
            } else {
                Ok(a)
            }
        }),
        other => {
            return fail(
                ResponseError::InvalidRequest,
                format!("member epoch {other}: 0 joins, -1 or -2 leaves, a positive one beats"),
            );
        }
    };
    let a = match outcome {
        Ok(a) => a,
        Err(MetaError::Fenced {
            reason: FenceReason::StaleGeneration,
            message,
        }) => return fail(ResponseError::FencedMemberEpoch, message),
        Err(e) => return fail(code_of(group_error(&e)), e.to_string()),
    };
    let mut by_topic: std::collections::BTreeMap<&str, Vec<i32>> = Default::default();
    for (t, p) in &a.partitions {
        by_topic.entry(t).or_default().push(*p as i32);
    }
    let mut assigned = Vec::with_capacity(by_topic.len());
    for (t, partitions) in by_topic {
        match s.topic(t).await {
            Ok(topic) => assigned.push(
                TopicPartitions::default()
                    .with_topic_id(super::meta::topic_uuid(topic.id))
                    .with_partitions(partitions),
            ),
            // Deleted meanwhile: the next generation drops it.
            Err(e) => tracing::debug!(topic = t, error = %e, "an assigned topic is gone"),
        }
    }
    resp.with_member_id(Some(StrBytes::from_string(a.member_id)))
        .with_member_epoch(generation(a.generation))
        .with_assignment(Some(Assignment::default().with_topic_partitions(assigned)))
}

/// The error of a Kafka error code (for messages carried with it).
fn code_of(code: i16) -> ResponseError {
    ResponseError::try_from_code(code).unwrap_or(ResponseError::UnknownServerError)
}

/// LeaveGroup: one member (v0–v2) or several (v3+) leave; their partitions move.
pub(super) async fn leave_group(
    s: &Shared,
    principal: Option<&str>,
    req: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let group = req.group_id.0.as_str();
    if denied(s, principal, Operation::Read, ResourceType::Group, group) {
        return LeaveGroupResponse::default()
            .with_error_code(ResponseError::GroupAuthorizationFailed.code());
    }
    if version < 3 {
        let code = match s.metadata.leave_group(group, req.member_id.as_str()).await {
            Ok(()) => 0,
            Err(e) => group_error(&e),
        };
        return LeaveGroupResponse::default().with_error_code(code);
    }
    let mut members = Vec::with_capacity(req.members.len());
    for m in req.members {
        let code = match s.metadata.leave_group(group, m.member_id.as_str()).await {
            Ok(()) => 0,
            Err(e) => group_error(&e),
        };
        members.push(
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(code),
        );
    }
    LeaveGroupResponse::default().with_members(members)
}

/// OffsetCommit: through Cairn's fencing (live member, current generation, partitions
/// assigned to it). Commits from outside the group (generation -1) are refused.
pub(super) async fn offset_commit(
    s: &Shared,
    principal: Option<&str>,
    req: OffsetCommitRequest,
    version: i16,
) -> OffsetCommitResponse {
    let group = req.group_id.0.as_str();
    let mut offsets = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            offsets.push((
                t.name.0.as_str().to_string(),
                u32::try_from(p.partition_index).unwrap_or(u32::MAX),
                p.committed_offset,
            ));
        }
    }
    let code = if denied(s, principal, Operation::Read, ResourceType::Group, group) {
        ResponseError::GroupAuthorizationFailed.code()
    } else if let Some((t, _, _)) = offsets
        .iter()
        .find(|(t, _, _)| denied(s, principal, Operation::Read, ResourceType::Topic, t))
    {
        tracing::debug!(topic = %t, "offset commit refused");
        ResponseError::TopicAuthorizationFailed.code()
    } else if req.generation_id_or_member_epoch < 0 || req.member_id.is_empty() {
        // Kafka lets a consumer outside the group commit while the group is empty; Cairn
        // commits only for members (`cairn group reset` moves an idle group's offsets).
        ResponseError::IllegalGeneration.code()
    } else {
        let generation = u64::try_from(req.generation_id_or_member_epoch).unwrap_or(0);
        match s
            .metadata
            .commit_offsets(group, req.member_id.as_str(), generation, &offsets)
            .await
        {
            Ok(()) => 0,
            Err(MetaError::OffsetOutOfRange { .. }) => ResponseError::OffsetOutOfRange.code(),
            // v9 is KIP-848's: the member's epoch is behind the group's.
            Err(
                e @ MetaError::Fenced {
                    reason: FenceReason::StaleGeneration | FenceReason::NotAssigned,
                    ..
                },
            ) if version >= 9 => {
                tracing::debug!(error = %e, "a KIP-848 member's commit is stale");
                ResponseError::StaleMemberEpoch.code()
            }
            Err(e) => group_error(&e),
        }
    };
    OffsetCommitResponse::default().with_topics(
        req.topics
            .into_iter()
            .map(|t| {
                OffsetCommitResponseTopic::default()
                    .with_name(t.name)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// The committed offsets of `group` for `wanted` (topic, partitions; all committed ones for
/// `None`): offset -1 where none is committed.
async fn committed(
    s: &Shared,
    group: &str,
    wanted: Option<Vec<(String, Vec<i32>)>>,
) -> Result<Vec<(String, Vec<(i32, i64)>)>, MetaError> {
    let all = match s.metadata.committed_offsets(group).await {
        Ok(all) => all,
        Err(MetaError::GroupNotFound(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let wanted = wanted.unwrap_or_else(|| {
        let mut by_topic: std::collections::BTreeMap<String, Vec<i32>> = Default::default();
        for (t, p, _) in &all {
            by_topic.entry(t.clone()).or_default().push(*p as i32);
        }
        by_topic.into_iter().collect()
    });
    Ok(wanted
        .into_iter()
        .map(|(t, ps)| {
            let offsets = ps
                .into_iter()
                .map(|p| {
                    let o = all
                        .iter()
                        .find(|(ct, cp, _)| *ct == t && i64::from(*cp) == i64::from(p))
                        .map_or(-1, |(_, _, o)| *o);
                    (p, o)
                })
                .collect();
            (t, offsets)
        })
        .collect())
}

/// OffsetFetch: one group (v1–v7) or several (v8+).
pub(super) async fn offset_fetch(
    s: &Shared,
    principal: Option<&str>,
    req: OffsetFetchRequest,
    version: i16,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::with_capacity(req.groups.len());
        for g in req.groups {
            let name = g.group_id.0.as_str().to_string();
            let mut out = OffsetFetchResponseGroup::default().with_group_id(g.group_id);
            if denied(
                s,
                principal,
                Operation::Describe,
                ResourceType::Group,
                &name,
            ) {
                groups.push(out.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
                continue;
            }
            let wanted = g.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                    .collect()
            });
            match committed(s, &name, wanted).await {
                Ok(list) => {
                    out.topics = list
                        .into_iter()
                        .map(|(t, ps)| {
                            OffsetFetchResponseTopics::default()
                                .with_name(TopicName(StrBytes::from_string(t)))
                                .with_partitions(
                                    ps.into_iter()
                                        .map(|(p, o)| {
                                            OffsetFetchResponsePartitions::default()
                                                .with_partition_index(p)
                                                .with_committed_offset(o)
                                                .with_metadata(Some(StrBytes::default()))
                                        })
                                        .collect(),
                                )
                        })
                        .collect();
                }
                Err(e) => out.error_code = group_error(&e),
            }
            groups.push(out);
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let name = req.group_id.0.as_str().to_string();
    let mut resp = OffsetFetchResponse::default();
    let error = if denied(
        s,
        principal,
        Operation::Describe,
        ResourceType::Group,
        &name,
    ) {
        ResponseError::GroupAuthorizationFailed.code()
    } else {
        let wanted = req.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name.0.as_str().to_string(), t.partition_indexes))
                .collect()
        });
        match committed(s, &name, wanted).await {
            Ok(list) => {
                resp.topics = list
                    .into_iter()
                    .map(|(t, ps)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(TopicName(StrBytes::from_string(t)))
                            .with_partitions(
                                ps.into_iter()
                                    .map(|(p, o)| {
                                        OffsetFetchResponsePartition::default()
                                            .with_partition_index(p)
                                            .with_committed_offset(o)
                                            .with_metadata(Some(StrBytes::default()))
                                    })
                                    .collect(),
                            )
                    })
                    .collect();
                0
            }
            Err(e) => group_error(&e),
        }
    };
    if version >= 2 {
        resp.error_code = error;
    }
    resp
}

/// DescribeGroups: members and their assignments, from Cairn's view of each group.
pub(super) async fn describe_groups(
    s: &Shared,
    principal: Option<&str>,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut groups = Vec::with_capacity(req.groups.len());
    for g in req.groups {
        let name = g.0.as_str().to_string();
        let mut out = DescribedGroup::default()
            .with_group_id(g)
            .with_protocol_type(StrBytes::from_static_str("consumer"));
        if denied(
            s,
            principal,
            Operation::Describe,
            ResourceType::Group,
            &name,
        ) {
            groups.push(out.with_error_code(ResponseError::GroupAuthorizationFailed.code()));
            continue;
        }
        match s.metadata.describe_group(&name).await {
            Ok(d) => {
                let state = if d.members.is_empty() {
                    "Empty"
                } else {
                    "Stable"
                };
                out = out
                    .with_group_state(StrBytes::from_static_str(state))
                    .with_protocol_data(StrBytes::from_static_str("range"));
                out.members = d
                    .members
                    .into_iter()
                    .map(|m| {
                        let a = MemberAssignment {
                            member_id: m.member_id.clone(),
                            generation: d.generation,
                            partitions: m.partitions,
                            session_timeout_ms: m.session_timeout_ms,
                        };
                        DescribedGroupMember::default()
                            .with_member_id(StrBytes::from_string(m.member_id))
                            .with_member_assignment(assignment_bytes(&a))
                    })
                    .collect();
            }
            Err(MetaError::GroupNotFound(_)) => {
                out = out.with_group_state(StrBytes::from_static_str("Dead"));
            }
            Err(e) => out.error_code = group_error(&e),
        }
        groups.push(out);
    }
    DescribeGroupsResponse::default().with_groups(groups)
}

/// ListGroups: every group the principal may describe.
pub(super) async fn list_groups(s: &Shared, principal: Option<&str>) -> ListGroupsResponse {
    match s.metadata.list_groups().await {
        Ok(names) => ListGroupsResponse::default().with_groups(
            names
                .into_iter()
                .filter(|n| !denied(s, principal, Operation::Describe, ResourceType::Group, n))
                .map(|n| {
                    ListedGroup::default()
                        .with_group_id(GroupId(StrBytes::from_string(n)))
                        .with_protocol_type(StrBytes::from_static_str("consumer"))
                })
                .collect(),
        ),
        Err(e) => ListGroupsResponse::default().with_error_code(super::kind_code(e.kind())),
    }
}

/// OffsetForLeaderEpoch: Cairn has one leader epoch, 0, whose end is the high watermark.
pub(super) async fn offset_for_leader_epoch(
    s: &Shared,
    principal: Option<&str>,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.topic.0.as_str().to_string();
        let allowed = !denied(
            s,
            principal,
            Operation::Describe,
            ResourceType::Topic,
            &name,
        );
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let mut r = EpochEndOffset::default()
                .with_partition(p.partition)
                .with_leader_epoch(0)
                .with_end_offset(-1);
            if !allowed {
                r.error_code = ResponseError::TopicAuthorizationFailed.code();
            } else {
                let end = async {
                    let pn = u32::try_from(p.partition)
                        .map_err(|_| AgentError::TopicNotFound(name.clone()))?;
                    let topic = s.topic_with_partition(&name, pn).await?;
                    let st = s.metadata.partition_state(topic.id, pn).await?;
                    Ok::<i64, AgentError>(st.next_offset)
                };
                match end.await {
                    Ok(o) => r.end_offset = o,
                    Err(e) => r.error_code = super::error_code(&e),
                }
            }
            partitions.push(r);
        }
        topics.push(
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(partitions),
        );
    }
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}
