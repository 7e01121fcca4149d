//! Consumer groups (stream mode, Kafka-like): membership with session timeouts, server-side
//! sticky assignment, generation fencing and committed offsets, all in metadata
//! transactions so any agent can serve any member.
//!
//! A group's state — generation and members with their subscriptions and partitions — is one
//! value; each member's last heartbeat is a key of its own, so heartbeats of different
//! members do not rewrite the group. Every join, heartbeat and leave first removes members
//! whose session expired (by the injected clock), then recomputes the assignment; the
//! generation rises whenever membership or assignment changes. A commit is accepted only from
//! a live member, at the current generation, for partitions assigned to it: anything else is
//! `FENCED`, so a member that stalled past its session cannot overwrite its successor's
//! progress.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::keys::{self, decode, value};
use crate::metadata::{Tx, read_position, read_state, read_topic_by_id};
use crate::{FenceReason, MetaError, Metadata, validate_topic_name};

/// Shortest and longest session timeout a member may ask for.
pub const SESSION_TIMEOUT_RANGE_MS: (i64, i64) = (1_000, 600_000);

/// A topic-partition by name.
pub type TopicPartition = (String, u32);

/// What a member is told after joining or heartbeating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberAssignment {
    /// The member's id (issued at its first join).
    pub member_id: String,
    /// The group's generation; commits must carry it.
    pub generation: u64,
    /// The partitions this member owns now.
    pub partitions: Vec<TopicPartition>,
    /// The member's session timeout.
    pub session_timeout_ms: i64,
}

/// One member as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupMember {
    /// Member id.
    pub member_id: String,
    /// Subscribed topics.
    pub topics: Vec<String>,
    /// Session timeout.
    pub session_timeout_ms: i64,
    /// Last heartbeat, ms since the epoch.
    pub last_heartbeat_ms: i64,
    /// Assigned partitions.
    pub partitions: Vec<TopicPartition>,
}

/// A partition's committed offset and lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: u32,
    /// Committed offset (the next to read), if any.
    pub committed: Option<i64>,
    /// High watermark.
    pub high_watermark: i64,
    /// `high_watermark - committed` (the whole partition when nothing is committed).
    pub lag: i64,
}

/// A group, as `DescribeGroup` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    /// Group name.
    pub group: String,
    /// Current generation.
    pub generation: u64,
    /// Live members.
    pub members: Vec<GroupMember>,
    /// Per partition of the subscribed or committed topics: committed offset and lag.
    pub partitions: Vec<PartitionLag>,
}

/// Where `reset_offsets` moves a group's committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OffsetReset {
    /// The partition's first readable offset.
    Earliest,
    /// The high watermark (skip everything present).
    Latest,
    /// This offset, clamped into the readable range.
    To(i64),
    /// One offset per partition (index = partition, one for each), each clamped into the
    /// readable range: e.g. the first records at or after a time, which only a reader of
    /// the records can find ([`Metadata::entry_for_time`] says which entry to read).
    PerPartition(Vec<i64>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct MemberState {
    topics: Vec<String>,
    session_timeout_ms: i64,
    partitions: Vec<TopicPartition>,
    /// The token of the `join_group` call that last wrote this member, so that call's rerun
    /// after a lost reply finds the member it created instead of creating another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    join: Option<u64>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct GroupState {
    generation: u64,
    members: BTreeMap<String, MemberState>,
}

fn fenced(reason: FenceReason, message: String) -> MetaError {
    MetaError::Fenced { reason, message }
}

/// Most bytes of a member id: the agent issues short ones, so a longer id is no member
/// (refused before any key is built from it).
const MAX_MEMBER_ID_BYTES: usize = 255;

fn check_member_id(group: &str, member_id: &str) -> Result<(), MetaError> {
    if member_id.len() > MAX_MEMBER_ID_BYTES {
        return Err(fenced(
            FenceReason::UnknownMember,
            format!(
                "member {} is not in group `{group}`: a member id has at most {MAX_MEMBER_ID_BYTES} bytes, this one {}; join with an empty member id to get one",
                crate::types::shown_name(member_id),
                member_id.len()
            ),
        ));
    }
    Ok(())
}

fn validate_group(group: &str) -> Result<(), MetaError> {
    validate_topic_name(group).map_err(|_| {
        MetaError::InvalidArgument(format!(
            "invalid group name `{}`: use 1 to 249 characters of letters, digits, `.`, `_`, `-`",
            crate::types::shown_name(group)
        ))
    })
}

async fn read_group(tx: &Tx, group: &str) -> Result<Option<GroupState>, MetaError> {
    match tx.get(&keys::group(group)).await? {
        Some(v) => serde_json::from_slice(&v)
            .map(Some)
            .map_err(|e| MetaError::corrupt(format!("group {group}"), e)),
        None => Ok(None),
    }
}

async fn write_group(tx: &Tx, group: &str, g: &GroupState) -> Result<(), MetaError> {
    let v = serde_json::to_vec(g).map_err(|e| MetaError::corrupt(format!("group {group}"), e))?;
    tx.set(&keys::group(group), &v).await?;
    Ok(())
}

async fn heartbeats(tx: &Tx, group: &str) -> Result<BTreeMap<String, i64>, MetaError> {
    let (b, e) = keys::group_heartbeats(group);
    let mut out = BTreeMap::new();
    for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
        let (_, _, _, member): (String, String, String, String) = decode("heartbeat key", &k)?;
        out.insert(member, keys::decode_i64_le(&v));
    }
    Ok(out)
}

/// Partition counts of the topics any member subscribes to (deleted topics are absent).
async fn partition_counts(tx: &Tx, g: &GroupState) -> Result<BTreeMap<String, u32>, MetaError> {
    let topics: BTreeSet<&String> = g.members.values().flat_map(|m| &m.topics).collect();
    let mut out = BTreeMap::new();
    for t in topics {
        if let Some(topic) = crate::metadata::read_topic(tx, t).await? {
            out.insert(t.clone(), topic.partitions);
        }
    }
    Ok(out)
}

/// Sticky assignment: for each topic, its partitions are split among the members subscribed
/// to it as evenly as possible (counts differ by at most one), and a partition stays with
/// its current owner whenever that owner is still within its share. Pure, deterministic.
fn assign(
    members: &BTreeMap<String, MemberState>,
    counts: &BTreeMap<String, u32>,
) -> BTreeMap<String, Vec<TopicPartition>> {
    let mut out: BTreeMap<String, Vec<TopicPartition>> =
        members.keys().map(|m| (m.clone(), Vec::new())).collect();
    for (topic, &n) in counts {
        let subs: Vec<&String> = members
            .iter()
            .filter(|(_, m)| m.topics.contains(topic))
            .map(|(id, _)| id)
            .collect();
        if subs.is_empty() {
            continue;
        }
        let owner: BTreeMap<u32, &String> = members
            .iter()
            .filter(|(id, _)| subs.contains(id))
            .flat_map(|(id, m)| {
                m.partitions
                    .iter()
                    .filter(|(t, p)| t == topic && *p < n)
                    .map(move |(_, p)| (*p, id))
            })
            .collect();
        // Members that own more now get the larger shares, so fewer partitions move.
        let mut order = subs.clone();
        order.sort_by_key(|id| {
            let owned = owner.values().filter(|o| **o == *id).count();
            (std::cmp::Reverse(owned), (*id).clone())
        });
        let k = subs.len() as u32;
        let quota: BTreeMap<&String, u32> = order
            .iter()
            .enumerate()
            .map(|(i, id)| (*id, n / k + u32::from((i as u32) < n % k)))
            .collect();
        let mut taken: BTreeMap<&String, u32> = BTreeMap::new();
        let mut free = Vec::new();
        for p in 0..n {
            match owner.get(&p) {
                Some(id) if taken.get(id).copied().unwrap_or(0) < quota[id] => {
                    *taken.entry(id).or_insert(0) += 1;
                    out.entry((*id).clone())
                        .or_default()
                        .push((topic.clone(), p));
                }
                _ => free.push(p),
            }
        }
        for p in free {
            if let Some(id) = order
                .iter()
                .find(|id| taken.get(*id).copied().unwrap_or(0) < quota[*id])
            {
                *taken.entry(id).or_insert(0) += 1;
                out.entry((*id).clone())
                    .or_default()
                    .push((topic.clone(), p));
            }
        }
    }
    for parts in out.values_mut() {
        parts.sort();
    }
    out
}

/// Removes expired members and recomputes the assignment; raises the generation when
/// anything changed. Returns whether it did.
async fn rebalance(
    tx: &Tx,
    group: &str,
    g: &mut GroupState,
    beats: &BTreeMap<String, i64>,
    now: i64,
    force: bool,
) -> Result<bool, MetaError> {
    let before = g.clone();
    let expired: Vec<String> = g
        .members
        .iter()
        .filter(|(id, m)| {
            beats
                .get(*id)
                .is_none_or(|hb| hb + m.session_timeout_ms < now)
        })
        .map(|(id, _)| id.clone())
        .collect();
    for id in &expired {
        g.members.remove(id);
        tx.clear(&keys::group_heartbeat(group, id)).await?;
        tracing::info!(group, member = %id, "member's session expired; rebalancing");
    }
    let counts = partition_counts(tx, g).await?;
    for (id, parts) in assign(&g.members, &counts) {
        if let Some(m) = g.members.get_mut(&id) {
            m.partitions = parts;
        }
    }
    let changed = force || *g != before;
    if changed {
        g.generation += 1;
    }
    Ok(changed)
}

fn assignment_of(g: &GroupState, member: &str) -> MemberAssignment {
    MemberAssignment {
        member_id: member.to_string(),
        generation: g.generation,
        partitions: g
            .members
            .get(member)
            .map(|m| m.partitions.clone())
            .unwrap_or_default(),
        session_timeout_ms: g.members.get(member).map_or(0, |m| m.session_timeout_ms),
    }
}

impl Metadata {
    /// Joins `group` (created on first join) subscribed to `topics`; with the id of a live
    /// member, updates that member instead. Returns the member's id and assignment.
    pub async fn join_group(
        &self,
        group: &str,
        member_id: Option<&str>,
        topics: &[String],
        session_timeout_ms: i64,
    ) -> Result<MemberAssignment, MetaError> {
        self.join(group, member_id, topics, session_timeout_ms, false)
            .await
    }

    /// [`Metadata::join_group`] for a client that names its members itself (Kafka's
    /// KIP-848 consumers send a fresh UUID): an id the group does not have joins as a new
    /// member of that id.
    pub async fn join_group_as(
        &self,
        group: &str,
        member_id: &str,
        topics: &[String],
        session_timeout_ms: i64,
    ) -> Result<MemberAssignment, MetaError> {
        check_member_id(group, member_id)?;
        if member_id.is_empty() || member_id.chars().any(|c| c.is_control()) {
            return Err(MetaError::InvalidArgument(format!(
                "member id {}: a member id is 1 or more printable characters",
                crate::types::shown_name(member_id)
            )));
        }
        self.join(group, Some(member_id), topics, session_timeout_ms, true)
            .await
    }

    async fn join(
        &self,
        group: &str,
        member_id: Option<&str>,
        topics: &[String],
        session_timeout_ms: i64,
        named_by_client: bool,
    ) -> Result<MemberAssignment, MetaError> {
        validate_group(group)?;
        if topics.is_empty() {
            return Err(MetaError::InvalidArgument(
                "joining a group needs at least one topic".into(),
            ));
        }
        for t in topics {
            validate_topic_name(t)?;
        }
        let (lo, hi) = SESSION_TIMEOUT_RANGE_MS;
        if !(lo..=hi).contains(&session_timeout_ms) {
            return Err(MetaError::InvalidArgument(format!(
                "session timeout must be between {lo} and {hi} ms, got {session_timeout_ms}"
            )));
        }
        let now = self.clock().now_ms();
        let mut topics = topics.to_vec();
        topics.sort();
        topics.dedup();
        let topics = &topics;
        let token = self.token();
        self.run("join_group", |tx, maybe| async move {
            for t in topics {
                if crate::metadata::read_topic(&tx, t).await?.is_none() {
                    return Err(MetaError::TopicNotFound(t.clone()));
                }
            }
            let mut g = read_group(&tx, group).await?.unwrap_or_default();
            let mut beats = heartbeats(&tx, group).await?;
            // After a lost reply, the member this call's first attempt added carries its
            // token: rejoin as that member rather than leave it behind as a ghost.
            let mine = maybe
                .get()
                .then(|| g.members.iter().find(|(_, m)| m.join == Some(token)))
                .flatten()
                .map(|(id, _)| id.clone());
            let id = match (member_id, mine) {
                (Some(id), _) if g.members.contains_key(id) || named_by_client => id.to_string(),
                (_, Some(id)) => id,
                // As Kafka answers UNKNOWN_MEMBER_ID: an id this group never issued (or one
                // already removed) is a client bug or a stale member, not a new member.
                (Some(id), None) => {
                    return Err(fenced(
                        FenceReason::UnknownMember,
                        format!(
                            "member {id} is not in group `{group}` (it left or its session expired): join with an empty member id to get a new one"
                        ),
                    ));
                }
                (None, None) => {
                    // Member numbers come from a counter the transaction must read to name
                    // the member, so it stays a read-modify-write.
                    let n = match tx.get(&keys::next_member_id()).await? {
                        Some(v) => decode::<(u64,)>("next member id", &v)?.0,
                        None => 1,
                    };
                    tx.set(&keys::next_member_id(), &value(&(n + 1,))).await?;
                    format!("member-{n}")
                }
            };
            let m = g.members.entry(id.clone()).or_default();
            m.join = Some(token);
            m.topics = topics.clone();
            m.session_timeout_ms = session_timeout_ms;
            beats.insert(id.clone(), now);
            tx.set(&keys::group_heartbeat(group, &id), &now.to_le_bytes())
                .await?;
            rebalance(&tx, group, &mut g, &beats, now, false).await?;
            write_group(&tx, group, &g).await?;
            Ok(assignment_of(&g, &id))
        })
        .await
    }

    /// Records a member's heartbeat, removes expired members, and returns the member's
    /// current assignment (which changes when the generation does). A member that is not in
    /// the group (it left, or its session expired) is `FENCED` and must join again.
    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
    ) -> Result<MemberAssignment, MetaError> {
        validate_group(group)?;
        check_member_id(group, member_id)?;
        let now = self.clock().now_ms();
        self.run("heartbeat", |tx, _| async move {
            let Some(mut g) = read_group(&tx, group).await? else {
                return Err(MetaError::GroupNotFound(group.to_string()));
            };
            let mut beats = heartbeats(&tx, group).await?;
            let alive = match (g.members.get(member_id), beats.get(member_id)) {
                (Some(m), Some(hb)) => hb + m.session_timeout_ms >= now,
                _ => false,
            };
            if !alive {
                return Err(fenced(
                    FenceReason::UnknownMember,
                    format!(
                        "member {member_id} is not in group `{group}` (it left or its session expired): join again"
                    ),
                ));
            }
            beats.insert(member_id.to_string(), now);
            tx.set(&keys::group_heartbeat(group, member_id), &now.to_le_bytes())
                .await?;
            if rebalance(&tx, group, &mut g, &beats, now, false).await? {
                write_group(&tx, group, &g).await?;
            }
            Ok(assignment_of(&g, member_id))
        })
        .await
    }

    /// Leaves a group; its partitions go to the remaining members.
    pub async fn leave_group(&self, group: &str, member_id: &str) -> Result<(), MetaError> {
        validate_group(group)?;
        check_member_id(group, member_id)?;
        let now = self.clock().now_ms();
        self.run("leave_group", |tx, _| async move {
            let Some(mut g) = read_group(&tx, group).await? else {
                return Err(MetaError::GroupNotFound(group.to_string()));
            };
            if g.members.remove(member_id).is_none() {
                return Ok(());
            }
            tx.clear(&keys::group_heartbeat(group, member_id)).await?;
            let beats = heartbeats(&tx, group).await?;
            rebalance(&tx, group, &mut g, &beats, now, true).await?;
            write_group(&tx, group, &g).await?;
            Ok(())
        })
        .await
    }

    /// Commits offsets (the next offset to read, per partition) for a live member at the
    /// current generation, for partitions assigned to it; anything else is `FENCED`.
    pub async fn commit_offsets(
        &self,
        group: &str,
        member_id: &str,
        generation: u64,
        offsets: &[(String, u32, i64)],
    ) -> Result<(), MetaError> {
        validate_group(group)?;
        check_member_id(group, member_id)?;
        if let Some((topic, partition, offset)) = offsets.iter().find(|(_, _, o)| *o < 0) {
            return Err(MetaError::InvalidArgument(format!(
                "offset must be 0 or more, got {offset} for {topic}/{partition}"
            )));
        }
        let now = self.clock().now_ms();
        let token = self.token();
        self.run("commit_offsets", |tx, maybe| async move {
            // After a lost reply: if every offset holds this call's token, the commit went
            // through, even if the group has rebalanced since (which would fence a rerun).
            if maybe.get() && holds_token(&tx, group, offsets, token).await? {
                return Ok(());
            }
            let Some(g) = read_group(&tx, group).await? else {
                return Err(MetaError::GroupNotFound(group.to_string()));
            };
            let hb = tx.get(&keys::group_heartbeat(group, member_id)).await?;
            let member = match (g.members.get(member_id), hb) {
                (Some(m), Some(hb)) if keys::decode_i64_le(&hb) + m.session_timeout_ms >= now => m,
                _ => {
                    return Err(fenced(
                        FenceReason::UnknownMember,
                        format!(
                            "member {member_id} is not in group `{group}` (it left or its session expired); its commit is refused"
                        ),
                    ));
                }
            };
            if generation != g.generation {
                return Err(fenced(
                    FenceReason::StaleGeneration,
                    format!(
                        "commit from generation {generation} refused: group `{group}` is at generation {}; heartbeat for the new assignment",
                        g.generation
                    ),
                ));
            }
            for (topic, partition, offset) in offsets {
                if !member
                    .partitions
                    .iter()
                    .any(|(t, p)| t == topic && p == partition)
                {
                    return Err(fenced(
                        FenceReason::NotAssigned,
                        format!("{topic}/{partition} is not assigned to member {member_id}"),
                    ));
                }
                let t = crate::metadata::read_topic(&tx, topic)
                    .await?
                    .ok_or_else(|| MetaError::TopicNotFound(topic.clone()))?;
                let state = read_position(&tx, t.id, *partition).await?;
                if *offset < 0 || *offset > state.next_offset {
                    return Err(MetaError::OffsetOutOfRange {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: *offset,
                        start: state.start_offset,
                        hwm: state.next_offset,
                    });
                }
                tx.set(
                    &keys::group_offset(group, t.id, *partition),
                    &value(&(*offset, now, token)),
                )
                .await?;
            }
            Ok(())
        })
        .await
    }

    /// The committed offsets of a group: `(topic, partition, offset)`.
    pub async fn committed_offsets(
        &self,
        group: &str,
    ) -> Result<Vec<(String, u32, i64)>, MetaError> {
        validate_group(group)?;
        self.run("committed_offsets", |tx, _| async move {
            read_committed(&tx, group).await
        })
        .await
    }

    /// Every group name (consumer groups).
    pub async fn list_groups(&self) -> Result<Vec<String>, MetaError> {
        self.run("list_groups", |tx, _| async move {
            let (b, e) = keys::groups();
            let mut out = Vec::new();
            for (k, _) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let (_, _, name): (String, String, String) = decode("group key", &k)?;
                out.push(name);
            }
            Ok(out)
        })
        .await
    }

    /// A group's generation, members and per-partition lag.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, MetaError> {
        validate_group(group)?;
        let now = self.clock().now_ms();
        self.run("describe_group", |tx, _| async move {
            let Some(g) = read_group(&tx, group).await? else {
                return Err(MetaError::GroupNotFound(group.to_string()));
            };
            let beats = heartbeats(&tx, group).await?;
            let members = g
                .members
                .iter()
                .filter_map(|(id, m)| {
                    let hb = *beats.get(id)?;
                    (hb + m.session_timeout_ms >= now).then(|| GroupMember {
                        member_id: id.clone(),
                        topics: m.topics.clone(),
                        session_timeout_ms: m.session_timeout_ms,
                        last_heartbeat_ms: hb,
                        partitions: m.partitions.clone(),
                    })
                })
                .collect();
            let committed = read_committed(&tx, group).await?;
            let mut topics: BTreeSet<String> =
                g.members.values().flat_map(|m| m.topics.clone()).collect();
            topics.extend(committed.iter().map(|(t, _, _)| t.clone()));
            let mut partitions = Vec::new();
            for t in topics {
                let Some(topic) = crate::metadata::read_topic(&tx, &t).await? else {
                    continue;
                };
                for p in 0..topic.partitions {
                    let state = read_state(&tx, topic.id, p).await?;
                    let c = committed
                        .iter()
                        .find(|(ct, cp, _)| *ct == t && *cp == p)
                        .map(|(_, _, o)| *o);
                    partitions.push(PartitionLag {
                        topic: t.clone(),
                        partition: p,
                        committed: c,
                        high_watermark: state.next_offset,
                        lag: state.next_offset - c.unwrap_or(state.start_offset),
                    });
                }
            }
            Ok(GroupDescription {
                group: group.to_string(),
                generation: g.generation,
                members,
                partitions,
            })
        })
        .await
    }

    /// Moves a group's committed offsets for every partition of `topic`. Only while the
    /// group has no live member (as in Kafka), so no consumer overwrites the reset.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: OffsetReset,
    ) -> Result<Vec<(String, u32, i64)>, MetaError> {
        validate_group(group)?;
        let now = self.clock().now_ms();
        let token = self.token();
        let to = &to;
        self.run("reset_offsets", |tx, maybe| async move {
            let t = crate::metadata::read_topic(&tx, topic)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(topic.to_string()))?;
            // After a lost reply: offsets that all hold this call's token are the reset's
            // own; answer them rather than recompute (`Latest` may have moved meanwhile).
            if maybe.get() {
                let mut mine = Vec::new();
                for p in 0..t.partitions {
                    match read_offset(&tx, group, t.id, p).await? {
                        Some(o) if o.token == token => mine.push((topic.to_string(), p, o.offset)),
                        _ => break,
                    }
                }
                if mine.len() == t.partitions as usize {
                    return Ok(mine);
                }
            }
            let g = read_group(&tx, group).await?.unwrap_or_default();
            let beats = heartbeats(&tx, group).await?;
            let live: Vec<&String> = g
                .members
                .iter()
                .filter(|(id, m)| beats.get(*id).is_some_and(|hb| hb + m.session_timeout_ms >= now))
                .map(|(id, _)| id)
                .collect();
            if !live.is_empty() {
                return Err(MetaError::Fenced {
                    reason: FenceReason::GroupActive,
                    message: format!(
                        "group `{group}` has {} live member(s); stop its consumers before resetting offsets",
                        live.len()
                    ),
                });
            }
            if read_group(&tx, group).await?.is_none() {
                write_group(&tx, group, &g).await?;
            }
            if let OffsetReset::PerPartition(list) = to
                && list.len() != t.partitions as usize
            {
                return Err(MetaError::InvalidArgument(format!(
                    "topic `{topic}` has {} partitions, got {} offsets (partitions were added meanwhile?)",
                    t.partitions,
                    list.len()
                )));
            }
            let mut out = Vec::new();
            for p in 0..t.partitions {
                let state = read_position(&tx, t.id, p).await?;
                let offset = match to {
                    OffsetReset::Earliest => state.start_offset,
                    OffsetReset::Latest => state.next_offset,
                    OffsetReset::To(n) => (*n).clamp(state.start_offset, state.next_offset),
                    OffsetReset::PerPartition(list) => {
                        list[p as usize].clamp(state.start_offset, state.next_offset)
                    }
                };
                tx.set(
                    &keys::group_offset(group, t.id, p),
                    &value(&(offset, now, token)),
                )
                .await?;
                out.push((topic.to_string(), p, offset));
            }
            Ok(out)
        })
        .await
    }
}

/// A committed offset as stored: the offset, when, and the token of the call that wrote it
/// (0 for values written before tokens existed).
struct CommittedOffset {
    offset: i64,
    token: u64,
}

impl CommittedOffset {
    fn decode(v: &[u8]) -> Result<Self, MetaError> {
        let (offset, token) = match decode::<(i64, i64, u64)>("group offset", v) {
            Ok((offset, _at, token)) => (offset, token),
            Err(e) => match decode::<(i64, i64)>("group offset", v) {
                Ok((offset, _at)) => (offset, 0),
                Err(_) => return Err(e),
            },
        };
        Ok(CommittedOffset { offset, token })
    }
}

async fn read_offset(
    tx: &Tx,
    group: &str,
    topic_id: u64,
    partition: u32,
) -> Result<Option<CommittedOffset>, MetaError> {
    match tx
        .get(&keys::group_offset(group, topic_id, partition))
        .await?
    {
        Some(v) => CommittedOffset::decode(&v).map(Some),
        None => Ok(None),
    }
}

/// Whether every `(topic, partition, offset)` is committed with `token` (by one call).
async fn holds_token(
    tx: &Tx,
    group: &str,
    offsets: &[(String, u32, i64)],
    token: u64,
) -> Result<bool, MetaError> {
    for (topic, partition, offset) in offsets {
        let Some(t) = crate::metadata::read_topic(tx, topic).await? else {
            return Ok(false);
        };
        match read_offset(tx, group, t.id, *partition).await? {
            Some(c) if c.token == token && c.offset == *offset => {}
            _ => return Ok(false),
        }
    }
    Ok(true)
}

async fn read_committed(tx: &Tx, group: &str) -> Result<Vec<(String, u32, i64)>, MetaError> {
    let (b, e) = keys::group_offsets(group);
    let mut names: BTreeMap<u64, Option<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
        let (_, _, _, topic_id, partition): (String, String, String, u64, u32) =
            decode("group offset key", &k)?;
        let CommittedOffset { offset, .. } = CommittedOffset::decode(&v)?;
        if let std::collections::btree_map::Entry::Vacant(slot) = names.entry(topic_id) {
            slot.insert(read_topic_by_id(tx, topic_id).await?.map(|t| t.name));
        }
        if let Some(Some(name)) = names.get(&topic_id) {
            out.push((name.clone(), partition, offset));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(topics: &[&str], parts: &[(&str, u32)]) -> MemberState {
        MemberState {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            session_timeout_ms: 10_000,
            partitions: parts.iter().map(|(t, p)| (t.to_string(), *p)).collect(),
            join: None,
        }
    }

    #[test]
    fn assignment_is_even_and_sticky() {
        let counts: BTreeMap<String, u32> = [("t".to_string(), 12)].into();
        let mut members: BTreeMap<String, MemberState> = ["a", "b", "c"]
            .iter()
            .map(|m| (m.to_string(), member(&["t"], &[])))
            .collect();
        let first = assign(&members, &counts);
        assert!(first.values().all(|p| p.len() == 4), "{first:?}");
        for (id, parts) in &first {
            members.get_mut(id).unwrap().partitions = parts.clone();
        }
        // c leaves: a and b keep all their partitions and split c's.
        let gone = members.remove("c").unwrap();
        let second = assign(&members, &counts);
        for id in ["a", "b"] {
            assert_eq!(second[id].len(), 6);
            for p in &first[id] {
                assert!(second[id].contains(p), "{id} lost {p:?}");
            }
        }
        let moved: usize = gone.partitions.len();
        assert_eq!(moved, 4);
        // A new member takes only what it needs.
        for (id, parts) in &second {
            members.get_mut(id).unwrap().partitions = parts.clone();
        }
        members.insert("d".into(), member(&["t"], &[]));
        let third = assign(&members, &counts);
        assert_eq!(third["d"].len(), 4);
        let kept: usize = ["a", "b"]
            .iter()
            .map(|id| {
                third[*id]
                    .iter()
                    .filter(|p| second[*id].contains(p))
                    .count()
            })
            .sum();
        assert_eq!(kept, 8, "only 4 partitions moved");
        // Subscriptions are respected.
        members.insert("e".into(), member(&["other"], &[]));
        let fourth = assign(&members, &counts);
        assert!(fourth["e"].is_empty());
    }
}
