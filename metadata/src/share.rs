//! Share groups (queue mode, after Kafka's KIP-932): any number of consumers read the same
//! partitions; each record is acquired under a lease by one consumer at a time and settled
//! only by that consumer's acknowledgement.
//!
//! Per share-partition the store keeps a start offset (everything before it is settled), an
//! end offset (the next offset never yet acquired), and for every offset in between a state,
//! a delivery count, a lease deadline and the holder. The window `end - start` is bounded
//! ([`MAX_IN_FLIGHT`]). Acquiring compares lease deadlines with the injected clock, so a
//! crashed consumer needs no cleanup: its leases just expire and its records become
//! available again, their delivery count one higher when next acquired. A record delivered
//! `max_deliveries` times without being acknowledged is handed to the caller to move to the
//! dead-letter topic instead of being delivered again.

use crate::keys::{self, decode, value};
use crate::metadata::{Tx, read_state, read_topic};
use crate::{MetaError, Metadata, validate_topic_name};

/// Most in-flight (acquired or not yet settled) records per share-partition.
pub const MAX_IN_FLIGHT: i64 = 2_000;

/// How long a record being moved to the dead-letter topic is reserved for the mover.
const ARCHIVING_LEASE_MS: i64 = 30_000;

/// State of one in-flight record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Available = 0,
    Acquired = 1,
    Acked = 2,
    /// Dead-lettered (or rejected and dead-lettered): settled.
    Archived = 3,
    /// Being moved to the dead-letter topic by `holder` until `deadline`.
    Archiving = 4,
}

impl State {
    fn from_u8(v: u8) -> Option<State> {
        Some(match v {
            0 => State::Available,
            1 => State::Acquired,
            2 => State::Acked,
            3 => State::Archived,
            4 => State::Archiving,
            _ => return None,
        })
    }

    fn settled(self) -> bool {
        matches!(self, State::Acked | State::Archived)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InFlight {
    state: State,
    deliveries: u8,
    deadline: i64,
    holder: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct SharePartition {
    start: i64,
    /// Records `start..start + records.len()`.
    records: Vec<InFlight>,
}

const REC_BYTES: usize = 1 + 1 + 8 + 8;

impl SharePartition {
    fn end(&self) -> i64 {
        self.start + self.records.len() as i64
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.records.len() * REC_BYTES);
        out.extend_from_slice(&self.start.to_le_bytes());
        for r in &self.records {
            out.push(r.state as u8);
            out.push(r.deliveries);
            out.extend_from_slice(&r.deadline.to_le_bytes());
            out.extend_from_slice(&r.holder.to_le_bytes());
        }
        out
    }

    fn decode(v: &[u8]) -> Result<Self, MetaError> {
        let bad = |reason: &str| MetaError::Corrupt {
            key: "share partition".into(),
            reason: reason.into(),
        };
        if v.len() < 8 || !(v.len() - 8).is_multiple_of(REC_BYTES) {
            return Err(bad("wrong length"));
        }
        let start = keys::decode_i64_le(&v[..8]);
        let mut records = Vec::with_capacity((v.len() - 8) / REC_BYTES);
        for c in v[8..].chunks_exact(REC_BYTES) {
            records.push(InFlight {
                state: State::from_u8(c[0]).ok_or_else(|| bad("unknown record state"))?,
                deliveries: c[1],
                deadline: keys::decode_i64_le(&c[2..10]),
                holder: u64::from_le_bytes([
                    c[10], c[11], c[12], c[13], c[14], c[15], c[16], c[17],
                ]),
            });
        }
        Ok(SharePartition { start, records })
    }

    /// Drops the settled prefix.
    fn advance(&mut self) {
        let n = self
            .records
            .iter()
            .take_while(|r| r.state.settled())
            .count();
        self.records.drain(..n);
        self.start += n as i64;
    }
}

/// A consumer's identity inside share partitions (a hash of its member id).
fn holder_of(member: &str) -> u64 {
    // FNV-1a: stable across processes and versions, unlike std's hasher.
    member.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What one acquisition handed out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acquired {
    /// Records now leased to the caller: `(partition, offset, delivery count)`.
    pub records: Vec<(u32, i64, u32)>,
    /// Records that reached `max_deliveries`: the caller must copy them to the dead-letter
    /// topic and then settle them with [`ShareAction::DeadLettered`]:
    /// `(partition, offset, delivery count)`.
    pub dead_letter: Vec<(u32, i64, u32)>,
    /// When the leases end, ms since the epoch.
    pub lease_deadline_ms: i64,
}

/// How a consumer settles records it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareAction {
    /// Done: never delivered again.
    Ack,
    /// Give it back now, for anyone (the delivery still counts).
    Release,
    /// Poison: the holder moves it to the dead-letter topic, then settles it with
    /// `DeadLettered`.
    Reject,
    /// Extend the lease by this many ms from now.
    Renew(i64),
    /// The record was copied to the dead-letter topic: settled.
    DeadLettered,
}

/// One share-partition as described.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharePartitionInfo {
    /// Partition.
    pub partition: u32,
    /// Everything before this offset is settled.
    pub start_offset: i64,
    /// The next offset never acquired.
    pub end_offset: i64,
    /// Records acquired now (lease not yet checked for expiry).
    pub acquired: u64,
    /// Records available for (re)delivery.
    pub available: u64,
    /// Records settled but not yet below the start offset.
    pub settled: u64,
    /// The partition's high watermark.
    pub high_watermark: i64,
}

/// Validates a share-group name.
fn validate_share_group(group: &str) -> Result<(), MetaError> {
    validate_topic_name(group).map_err(|_| {
        MetaError::InvalidArgument(format!(
            "invalid group name `{group}`: use 1 to 249 characters of letters, digits, `.`, `_`, `-`"
        ))
    })
}

async fn read_share(
    tx: &Tx,
    group: &str,
    topic_id: u64,
    partition: u32,
) -> Result<Option<SharePartition>, MetaError> {
    match tx
        .get(&keys::share_partition(group, topic_id, partition))
        .await?
    {
        Some(v) => SharePartition::decode(&v).map(Some),
        None => Ok(None),
    }
}

impl Metadata {
    /// Acquires up to `max_records` records of `topic` for `member`, leased for `lease_ms`:
    /// expired leases first make their records available again; records past
    /// `max_deliveries` are handed back for dead-lettering instead. Partitions are visited
    /// from one that depends on the member, so consumers spread out; each is one transaction.
    pub async fn share_acquire(
        &self,
        group: &str,
        member: &str,
        topic: &str,
        max_records: u32,
        lease_ms: i64,
        max_deliveries: u32,
    ) -> Result<Acquired, MetaError> {
        validate_share_group(group)?;
        let now = self.clock().now_ms();
        let t = self.topic(topic).await?;
        self.run("share_group", |tx| async move {
            if tx.get(&keys::share_group(group)).await?.is_none() {
                tx.set(&keys::share_group(group), &value(&(now,))).await?;
            }
            Ok(())
        })
        .await?;
        let holder = holder_of(member);
        let first = (holder % u64::from(t.partitions)) as u32;
        let mut out = Acquired {
            lease_deadline_ms: now + lease_ms,
            ..Acquired::default()
        };
        for i in 0..t.partitions {
            let p = (first + i) % t.partitions;
            let want = max_records as usize - out.records.len();
            if want == 0 {
                break;
            }
            let (got, dead) = self
                .run("share_acquire", |tx| async move {
                    let hwm = read_state(&tx, t.id, p).await?;
                    let mut sp = match read_share(&tx, group, t.id, p).await? {
                        Some(sp) => sp,
                        None => SharePartition {
                            start: hwm.start_offset,
                            records: Vec::new(),
                        },
                    };
                    if sp.start < hwm.start_offset {
                        // Retention removed records nobody settled: they are gone.
                        let skip = ((hwm.start_offset - sp.start) as usize).min(sp.records.len());
                        sp.records.drain(..skip);
                        sp.start = hwm.start_offset;
                    }
                    let mut got = Vec::new();
                    let mut dead = Vec::new();
                    for (i, r) in sp.records.iter_mut().enumerate() {
                        let offset = sp.start + i as i64;
                        let expired = r.deadline < now;
                        match r.state {
                            State::Acquired if expired => r.state = State::Available,
                            State::Archiving if expired => {
                                r.holder = holder;
                                r.deadline = now + ARCHIVING_LEASE_MS;
                                dead.push((p, offset, u32::from(r.deliveries)));
                                continue;
                            }
                            _ => {}
                        }
                        if r.state != State::Available {
                            continue;
                        }
                        if u32::from(r.deliveries) >= max_deliveries {
                            r.state = State::Archiving;
                            r.holder = holder;
                            r.deadline = now + ARCHIVING_LEASE_MS;
                            dead.push((p, offset, u32::from(r.deliveries)));
                        } else if got.len() < want {
                            r.state = State::Acquired;
                            r.deliveries = r.deliveries.saturating_add(1);
                            r.holder = holder;
                            r.deadline = now + lease_ms;
                            got.push((p, offset, u32::from(r.deliveries)));
                        }
                    }
                    while got.len() < want
                        && sp.end() < hwm.next_offset
                        && sp.end() - sp.start < MAX_IN_FLIGHT
                    {
                        got.push((p, sp.end(), 1));
                        sp.records.push(InFlight {
                            state: State::Acquired,
                            deliveries: 1,
                            deadline: now + lease_ms,
                            holder,
                        });
                    }
                    sp.advance();
                    tx.set(&keys::share_partition(group, t.id, p), &sp.encode())
                        .await?;
                    Ok((got, dead))
                })
                .await?;
            out.records.extend(got);
            out.dead_letter.extend(dead);
        }
        Ok(out)
    }

    /// Settles records `member` holds in one partition, all or none: every offset must be
    /// held by `member` under a live lease (or, for `DeadLettered`, reserved to it for
    /// dead-lettering); otherwise nothing changes and the error names the first offset
    /// that is not, and why. Returns each record's delivery count.
    pub async fn share_settle(
        &self,
        group: &str,
        member: &str,
        topic: &str,
        partition: u32,
        offsets: &[i64],
        action: ShareAction,
    ) -> Result<Vec<u32>, MetaError> {
        validate_share_group(group)?;
        if offsets.is_empty() {
            return Err(MetaError::InvalidArgument(
                "settling needs at least one offset".into(),
            ));
        }
        let now = self.clock().now_ms();
        let holder = holder_of(member);
        self.run("share_settle", |tx| async move {
            if tx.get(&keys::share_group(group)).await?.is_none() {
                return Err(MetaError::GroupNotFound(group.to_string()));
            }
            let t = read_topic(&tx, topic)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(topic.to_string()))?;
            t.check_partition(partition)?;
            let mut sp = read_share(&tx, group, t.id, partition)
                .await?
                .unwrap_or_default();
            let mut counts = Vec::with_capacity(offsets.len());
            for &offset in offsets {
                let not_held = |why: String| {
                    Err(MetaError::Fenced {
                        reason: "NOT_HELD",
                        message: format!("{topic}/{partition} offset {offset}: {why}"),
                    })
                };
                let idx = offset - sp.start;
                if offset < sp.start {
                    return not_held("already settled".into());
                }
                let Some(r) = sp.records.get_mut(idx as usize) else {
                    return not_held("was never delivered".into());
                };
                let wanted = if action == ShareAction::DeadLettered {
                    State::Archiving
                } else {
                    State::Acquired
                };
                if r.state.settled() {
                    return not_held("already settled".into());
                }
                if r.state != wanted || r.holder != holder {
                    return not_held("not held by this consumer".into());
                }
                if wanted == State::Acquired && r.deadline < now {
                    return Err(MetaError::Fenced {
                        reason: "LEASE_EXPIRED",
                        message: format!(
                            "{topic}/{partition} offset {offset}: the lease expired {} ms ago; the record may be delivered to another consumer",
                            now - r.deadline
                        ),
                    });
                }
                counts.push(u32::from(r.deliveries));
                match action {
                    ShareAction::Ack => r.state = State::Acked,
                    ShareAction::Release => {
                        r.state = State::Available;
                        r.deadline = 0;
                    }
                    ShareAction::Reject => {
                        r.state = State::Archiving;
                        r.deadline = now + ARCHIVING_LEASE_MS;
                    }
                    ShareAction::Renew(ms) => r.deadline = now + ms,
                    ShareAction::DeadLettered => r.state = State::Archived,
                }
            }
            sp.advance();
            tx.set(&keys::share_partition(group, t.id, partition), &sp.encode())
                .await?;
            Ok(counts)
        })
        .await
    }

    /// The share-partitions of `group` over `topic`.
    pub async fn describe_share_group(
        &self,
        group: &str,
        topic: &str,
    ) -> Result<Vec<SharePartitionInfo>, MetaError> {
        validate_share_group(group)?;
        self.run("describe_share_group", |tx| async move {
            if tx.get(&keys::share_group(group)).await?.is_none() {
                return Err(MetaError::GroupNotFound(group.to_string()));
            }
            let t = read_topic(&tx, topic)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(topic.to_string()))?;
            let mut out = Vec::new();
            for p in 0..t.partitions {
                let state = read_state(&tx, t.id, p).await?;
                let sp = read_share(&tx, group, t.id, p)
                    .await?
                    .unwrap_or(SharePartition {
                        start: state.start_offset,
                        records: Vec::new(),
                    });
                let count =
                    |f: fn(State) -> bool| sp.records.iter().filter(|r| f(r.state)).count() as u64;
                out.push(SharePartitionInfo {
                    partition: p,
                    start_offset: sp.start,
                    end_offset: sp.end(),
                    acquired: count(|s| matches!(s, State::Acquired | State::Archiving)),
                    available: count(|s| s == State::Available),
                    settled: count(State::settled),
                    high_watermark: state.next_offset,
                });
            }
            Ok(out)
        })
        .await
    }

    /// Every share group's name.
    pub async fn list_share_groups(&self) -> Result<Vec<String>, MetaError> {
        self.run("list_share_groups", |tx| async move {
            let (b, e) = keys::share_groups();
            let mut out = Vec::new();
            for (k, _) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let (_, _, name): (String, String, String) = decode("share group key", &k)?;
                out.push(name);
            }
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn share_partition_round_trips_and_fits_a_value() {
        let mut sp = SharePartition {
            start: 42,
            records: Vec::new(),
        };
        for i in 0..MAX_IN_FLIGHT {
            sp.records.push(InFlight {
                state: State::from_u8((i % 5) as u8).unwrap(),
                deliveries: (i % 7) as u8,
                deadline: i * 1000,
                holder: i as u64 * 31,
            });
        }
        let v = sp.encode();
        assert!(v.len() < 100_000, "{} bytes", v.len());
        assert_eq!(SharePartition::decode(&v).unwrap(), sp);
        assert!(SharePartition::decode(&v[..9]).is_err());
    }
}
