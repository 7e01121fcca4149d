//! [`GroupConsumer`]: a consumer-group member (stream mode). The agent assigns partitions
//! (sticky); the member reads them from the group's committed offsets and commits its
//! progress after processing. Heartbeats ride on `poll`, like Kafka's poll loop: poll at
//! least every heartbeat interval (a third of the session timeout), or the member is
//! considered dead and its partitions move to others.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::Cluster;
use cairn_proto::v2::{self, ErrorReason, group_service_client::GroupServiceClient};
use tokio::time::Instant;

use crate::{ClientError, ConsumedRecord, Consumer, ConsumerConfig, Offset};

/// Settings of a group member.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Without a heartbeat for this long the member is removed and its partitions move.
    pub session_timeout: Duration,
    /// Where to start a partition the group has committed nothing for.
    pub start: Offset,
    /// The underlying consumer's settings.
    pub consumer: ConsumerConfig,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout: Duration::from_secs(10),
            start: Offset::End,
            consumer: ConsumerConfig::default(),
        }
    }
}

/// A member of a consumer group. Auto-commit is off: call [`GroupConsumer::commit`] after
/// processing what [`GroupConsumer::poll`] returned, so a crash re-delivers (to whoever
/// owns the partition next) only what was not yet processed.
#[derive(Debug)]
pub struct GroupConsumer {
    groups: GroupServiceClient<Cluster>,
    admin: crate::Admin,
    consumer: Consumer,
    group: String,
    topics: Vec<String>,
    config: GroupConfig,
    member_id: String,
    generation: u64,
    heartbeat_interval: Duration,
    next_heartbeat: Instant,
    owned: BTreeSet<(String, u32)>,
}

impl GroupConsumer {
    /// Joins `group`, subscribed to `topics`, and takes the assigned partitions.
    pub async fn join(
        cluster: impl Into<Cluster>,
        group: &str,
        topics: &[&str],
        config: GroupConfig,
    ) -> Result<Self, ClientError> {
        if topics.is_empty() {
            return Err(ClientError::Invalid(
                "a group member needs at least one topic".into(),
            ));
        }
        let channel = cluster.into();
        let mut me = GroupConsumer {
            groups: GroupServiceClient::new(channel.clone()),
            admin: crate::Admin::new(channel.clone()),
            consumer: Consumer::new(channel, config.consumer.clone()),
            group: group.to_string(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            config,
            member_id: String::new(),
            generation: 0,
            heartbeat_interval: Duration::from_secs(1),
            next_heartbeat: Instant::now(),
            owned: BTreeSet::new(),
        };
        me.rejoin().await?;
        Ok(me)
    }

    async fn rejoin(&mut self) -> Result<(), ClientError> {
        let timeout_ms = u32::try_from(self.config.session_timeout.as_millis()).unwrap_or(u32::MAX);
        let a = crate::error::patiently(|| {
            let mut c = self.groups.clone();
            let request = v2::JoinGroupRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
                topics: self.topics.clone(),
                session_timeout_ms: Some(timeout_ms),
            };
            async move { c.join_group(request).await }
        })
        .await?
        .into_inner()
        .assignment
        .ok_or_else(no_assignment)?;
        // A new membership: nothing read under the old one may be committed.
        for (t, p) in std::mem::take(&mut self.owned) {
            self.consumer.unassign(&t, p);
        }
        self.apply(a).await
    }

    /// Takes a new assignment: drops partitions that moved away, starts new ones at the
    /// group's committed offsets.
    async fn apply(&mut self, a: v2::GroupAssignment) -> Result<(), ClientError> {
        // A partition is kept (read on from this member's position) only if the member saw
        // every generation in between: after a skipped one it may have been someone else's,
        // who read and committed past this member's stale position. Then every partition
        // starts again from the group's committed offsets.
        if a.generation > self.generation.saturating_add(1) && !self.owned.is_empty() {
            for (t, p) in std::mem::take(&mut self.owned) {
                self.consumer.unassign(&t, p);
            }
        }
        self.member_id = a.member_id;
        self.generation = a.generation;
        self.heartbeat_interval = Duration::from_millis(u64::from(a.heartbeat_interval_ms.max(1)));
        self.next_heartbeat = Instant::now() + self.heartbeat_interval;
        let now: BTreeSet<(String, u32)> = a
            .partitions
            .into_iter()
            .map(|tp| (tp.topic, tp.partition))
            .collect();
        for (t, p) in self.owned.difference(&now) {
            self.consumer.unassign(t, *p);
        }
        let added: Vec<(String, u32)> = now.difference(&self.owned).cloned().collect();
        if !added.is_empty() {
            let committed: BTreeMap<(String, u32), i64> = crate::error::patiently(|| {
                let mut c = self.groups.clone();
                let request = v2::FetchCommittedOffsetsRequest {
                    group: self.group.clone(),
                };
                async move { c.fetch_committed_offsets(request).await }
            })
            .await?
            .into_inner()
            .offsets
            .into_iter()
            .map(|o| ((o.topic, o.partition), o.offset))
            .collect();
            let mut starts: BTreeMap<(String, u32), i64> = BTreeMap::new();
            for (t, p) in &added {
                let from = match committed.get(&(t.clone(), *p)) {
                    None => self.config.start,
                    Some(&o) => {
                        // Retention or DeleteRecords may have removed records the group never
                        // read: resume at the partition's first readable offset then.
                        if !starts.keys().any(|(st, _)| st == t) {
                            let d = self.admin.describe_topic(t).await?;
                            for info in d.partitions {
                                starts.insert((t.clone(), info.partition), info.start_offset);
                            }
                        }
                        let start = starts.get(&(t.clone(), *p)).copied().unwrap_or(0);
                        if o < start {
                            tracing::warn!(topic = %t, partition = p, committed = o, start, "committed offset is before the partition's start; resuming at the start");
                        }
                        Offset::At(o.max(start))
                    }
                };
                self.consumer.assign(t, *p, from).await?;
            }
        }
        self.owned = now;
        Ok(())
    }

    /// The group no longer knows this member (its session expired, e.g. while the metadata
    /// store was down): it owns nothing until it joins again, so a failed join cannot leave
    /// it reading partitions that may now be someone else's.
    fn membership_lost(&mut self) {
        self.member_id.clear();
        for (t, p) in std::mem::take(&mut self.owned) {
            self.consumer.unassign(&t, p);
        }
    }

    async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let answer = crate::error::patiently(|| {
            let mut c = self.groups.clone();
            let request = v2::HeartbeatRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
            };
            async move { c.heartbeat(request).await }
        })
        .await;
        match answer {
            Ok(a) => {
                let a = a.into_inner().assignment.ok_or_else(no_assignment)?;
                self.apply(a).await
            }
            Err(status) => {
                let err = ClientError::from(status);
                if err.reason() == Some(ErrorReason::UnknownMember) {
                    tracing::warn!(group = %self.group, member = %self.member_id, "session expired; joining again");
                    self.membership_lost();
                    self.rejoin().await
                } else {
                    Err(err)
                }
            }
        }
    }

    /// Heartbeats when due and reads what is available from the owned partitions, waiting up
    /// to `wait` (never past the next heartbeat) if nothing is.
    pub async fn poll(&mut self, wait: Duration) -> Result<Vec<ConsumedRecord>, ClientError> {
        if self.member_id.is_empty() {
            // A join after a lost membership failed (e.g. no agent answered): try again.
            self.rejoin().await?;
        } else if Instant::now() >= self.next_heartbeat {
            self.heartbeat().await?;
        }
        let until_beat = self
            .next_heartbeat
            .saturating_duration_since(Instant::now());
        let wait = wait.min(until_beat);
        if self.owned.is_empty() {
            tokio::time::sleep(wait).await;
            return Ok(Vec::new());
        }
        self.consumer.poll(wait).await
    }

    /// Commits the position of every owned partition (everything `poll` returned counts as
    /// processed). If the group moved to a new generation in which this member kept its
    /// partitions, the commit is retried at the new generation; if the member was removed,
    /// it joins again and the error is returned (records since the last commit will be read
    /// again by whoever owns them now). Returns the offsets committed (topic, partition,
    /// next offset to read), which after a rebalance may differ from the positions before
    /// the call.
    pub async fn commit(&mut self) -> Result<Vec<(String, u32, i64)>, ClientError> {
        for attempt in 0..2 {
            let positions = self.positions();
            let offsets: Vec<v2::PartitionOffset> = positions
                .iter()
                .map(|(topic, partition, offset)| v2::PartitionOffset {
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect();
            if offsets.is_empty() {
                return Ok(positions);
            }
            let answer = crate::error::patiently(|| {
                let mut c = self.groups.clone();
                let request = v2::CommitOffsetsRequest {
                    group: self.group.clone(),
                    member_id: self.member_id.clone(),
                    generation: self.generation,
                    offsets: offsets.clone(),
                };
                async move { c.commit_offsets(request).await }
            })
            .await;
            let err = match answer {
                Ok(_) => return Ok(positions),
                Err(status) => ClientError::from(status),
            };
            match err.reason() {
                Some(ErrorReason::StaleGeneration | ErrorReason::NotAssigned) if attempt == 0 => {
                    self.heartbeat().await?;
                }
                Some(ErrorReason::UnknownMember) => {
                    self.membership_lost();
                    self.rejoin().await?;
                    return Err(err);
                }
                _ => return Err(err),
            }
        }
        Err(ClientError::Invalid(
            "the group kept rebalancing during the commit".into(),
        ))
    }

    /// The read position (next offset) of every owned partition: what [`commit`] commits.
    ///
    /// [`commit`]: GroupConsumer::commit
    pub fn positions(&self) -> Vec<(String, u32, i64)> {
        self.consumer
            .positions()
            .into_iter()
            .filter(|(t, p, _)| self.owned.contains(&(t.clone(), *p)))
            .collect()
    }

    /// Whether every owned partition has been read up to the high watermark last seen.
    pub fn caught_up(&self) -> bool {
        self.consumer.caught_up()
    }

    /// Moves the read position of an owned partition (e.g. back to the first record that
    /// was returned but not processed, so the next commit does not cover it).
    pub async fn seek(
        &mut self,
        topic: &str,
        partition: u32,
        offset: i64,
    ) -> Result<(), ClientError> {
        if !self.owned.contains(&(topic.to_string(), partition)) {
            return Err(ClientError::Invalid(format!(
                "{topic}/{partition} is not assigned to this member"
            )));
        }
        self.consumer
            .assign(topic, partition, Offset::At(offset))
            .await
    }

    /// The partitions this member owns now.
    pub fn assignment(&self) -> Vec<(String, u32)> {
        self.owned.iter().cloned().collect()
    }

    /// The member id the agent issued.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The generation of the current assignment.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Leaves the group at once, so its partitions move without waiting for the session
    /// timeout. Commit first to keep the progress.
    pub async fn leave(self) -> Result<(), ClientError> {
        crate::error::patiently(|| {
            let mut c = self.groups.clone();
            let request = v2::LeaveGroupRequest {
                group: self.group.clone(),
                member_id: self.member_id.clone(),
            };
            async move { c.leave_group(request).await }
        })
        .await?;
        Ok(())
    }
}

fn no_assignment() -> ClientError {
    ClientError::Invalid("the agent answered without an assignment".into())
}
