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
use crate::metadata::{Tx, read_position, read_state, read_topic};
use crate::{FenceReason, MetaError, Metadata, validate_topic_name};

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
    /// The token of the `share_acquire` call that last leased or reserved the record, so
    /// that call's rerun after a lost reply hands back the same records instead of leasing
    /// others (and counting a delivery nobody received).
    tag: u64,
}

/// What a `share_settle` call answered, kept so its rerun after a lost reply answers the
/// same (the records it settled may be gone from the window by then).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Receipt {
    token: u64,
    counts: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct SharePartition {
    start: i64,
    /// The latest settle receipts, oldest first, within [`MAX_RECEIPTS`] and
    /// [`RECEIPT_BYTES`].
    receipts: Vec<Receipt>,
    /// Records `start..start + records.len()`.
    records: Vec<InFlight>,
}

/// Settle receipts kept per share-partition, newest first kept.
const MAX_RECEIPTS: usize = 16;
/// Bytes of settle receipts kept per share-partition (the newest is kept whatever its size,
/// at most 10 + [`MAX_IN_FLIGHT`] bytes).
const RECEIPT_BYTES: usize = 8 * 1024;

/// The layout written since tokens exist. Its eighth byte has the top bit set, which the
/// first layout (a non-negative start offset, little-endian, first) never has.
const MAGIC_V1: [u8; 8] = *b"cairnsp\x81";
/// Bytes per record in the first layout: state, deliveries, deadline, holder.
const REC_BYTES_V0: usize = 1 + 1 + 8 + 8;
/// Bytes per record now: the first layout's, then the acquisition tag.
const REC_BYTES: usize = REC_BYTES_V0 + 8;

impl SharePartition {
    fn end(&self) -> i64 {
        self.start + self.records.len() as i64
    }

    /// `magic | start | receipt count | receipts (token, n: u16, n counts) | records`.
    /// At most 17 + 8 KiB + 2,000 × 26 bytes, about 61 kB: within FoundationDB's 100 kB.
    fn encode(&self) -> Vec<u8> {
        let receipt_bytes: usize = self.receipts.iter().map(|r| 10 + r.counts.len()).sum();
        let mut out = Vec::with_capacity(17 + receipt_bytes + self.records.len() * REC_BYTES);
        out.extend_from_slice(&MAGIC_V1);
        out.extend_from_slice(&self.start.to_le_bytes());
        out.push(self.receipts.len() as u8);
        for r in &self.receipts {
            out.extend_from_slice(&r.token.to_le_bytes());
            out.extend_from_slice(&(r.counts.len() as u16).to_le_bytes());
            out.extend_from_slice(&r.counts);
        }
        for r in &self.records {
            out.push(r.state as u8);
            out.push(r.deliveries);
            out.extend_from_slice(&r.deadline.to_le_bytes());
            out.extend_from_slice(&r.holder.to_le_bytes());
            out.extend_from_slice(&r.tag.to_le_bytes());
        }
        out
    }

    fn decode(v: &[u8]) -> Result<Self, MetaError> {
        let bad = |reason: &str| MetaError::malformed("share partition", reason);
        let u64_at = |c: &[u8]| {
            c.get(..8)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_le_bytes)
                .ok_or_else(|| bad("truncated"))
        };
        let (start, receipts, body, rec_bytes) = if v.starts_with(&MAGIC_V1) {
            let start = u64_at(&v[8..])? as i64;
            let n = *v.get(16).ok_or_else(|| bad("truncated"))?;
            let mut at = 17;
            let mut receipts = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                let token = u64_at(v.get(at..).unwrap_or_default())?;
                let len = v
                    .get(at + 8..at + 10)
                    .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
                    .ok_or_else(|| bad("truncated receipt"))?;
                let counts = v
                    .get(at + 10..at + 10 + len)
                    .ok_or_else(|| bad("truncated receipt"))?
                    .to_vec();
                receipts.push(Receipt { token, counts });
                at += 10 + len;
            }
            (start, receipts, &v[at..], REC_BYTES)
        } else {
            if v.len() < 8 {
                return Err(bad("wrong length"));
            }
            (
                keys::decode_i64_le(&v[..8]),
                Vec::new(),
                &v[8..],
                REC_BYTES_V0,
            )
        };
        if !body.len().is_multiple_of(rec_bytes) {
            return Err(bad("wrong length"));
        }
        let mut records = Vec::with_capacity(body.len() / rec_bytes);
        for c in body.chunks_exact(rec_bytes) {
            records.push(InFlight {
                state: State::from_u8(c[0]).ok_or_else(|| bad("unknown record state"))?,
                deliveries: c[1],
                deadline: keys::decode_i64_le(&c[2..10]),
                holder: u64_at(&c[10..])?,
                tag: if rec_bytes == REC_BYTES {
                    u64_at(&c[18..])?
                } else {
                    0
                },
            });
        }
        Ok(SharePartition {
            start,
            receipts,
            records,
        })
    }

    /// Keeps a settle receipt, forgetting the oldest beyond the bounds.
    fn remember(&mut self, receipt: Receipt) {
        self.receipts.push(receipt);
        let mut bytes: usize = self.receipts.iter().map(|r| 10 + r.counts.len()).sum();
        while self.receipts.len() > 1
            && (self.receipts.len() > MAX_RECEIPTS || bytes > RECEIPT_BYTES)
        {
            let old = self.receipts.remove(0);
            bytes -= 10 + old.counts.len();
        }
    }

    /// The records `token`'s acquisition holds for `holder`: `(leased, reserved for
    /// dead-lettering)`, as `(partition, offset, delivery count)` in offset order.
    #[allow(clippy::type_complexity)]
    fn tagged(
        &self,
        partition: u32,
        token: u64,
        holder: u64,
    ) -> (Vec<(u32, i64, u32)>, Vec<(u32, i64, u32)>) {
        let mut got = Vec::new();
        let mut dead = Vec::new();
        for (i, r) in self.records.iter().enumerate() {
            if r.tag != token || r.holder != holder {
                continue;
            }
            let rec = (partition, self.start + i as i64, u32::from(r.deliveries));
            match r.state {
                State::Acquired => got.push(rec),
                State::Archiving => dead.push(rec),
                _ => {}
            }
        }
        (got, dead)
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
            "invalid group name `{}`: use 1 to 249 characters of letters, digits, `.`, `_`, `-`",
            crate::types::shown_name(group)
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
        let token = self.token();
        let t = self.topic(topic).await?;
        // Creating the group is naturally idempotent: a rerun finds it and writes nothing.
        self.run("share_group", |tx, _| async move {
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
                .run("share_acquire", |tx, maybe| async move {
                    let hwm = read_position(&tx, t.id, p).await?;
                    let mut sp = match read_share(&tx, group, t.id, p).await? {
                        Some(sp) => sp,
                        None => SharePartition {
                            start: hwm.start_offset,
                            ..SharePartition::default()
                        },
                    };
                    // After a lost reply: records tagged with this call's token were leased
                    // (or reserved) by its first attempt. Hand back exactly those, with the
                    // delivery counts that attempt gave them, and lease nothing more.
                    if maybe.get() {
                        let (got, dead) = sp.tagged(p, token, holder);
                        if !got.is_empty() || !dead.is_empty() {
                            return Ok((got, dead));
                        }
                    }
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
                                r.tag = token;
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
                            r.tag = token;
                            dead.push((p, offset, u32::from(r.deliveries)));
                        } else if got.len() < want {
                            r.state = State::Acquired;
                            r.deliveries = r.deliveries.saturating_add(1);
                            r.holder = holder;
                            r.deadline = now + lease_ms;
                            r.tag = token;
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
                            tag: token,
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
        if offsets.len() as i64 > MAX_IN_FLIGHT {
            return Err(MetaError::InvalidArgument(format!(
                "settling {} offsets at once: a consumer holds at most {MAX_IN_FLIGHT} records of a partition",
                offsets.len()
            )));
        }
        let now = self.clock().now_ms();
        let holder = holder_of(member);
        let token = self.token();
        self.run("share_settle", |tx, maybe| async move {
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
            // After a lost reply the records may be settled and gone from the window, which
            // would read as "already settled": the receipt this call's first attempt left
            // holds its answer.
            if maybe.get()
                && let Some(r) = sp.receipts.iter().find(|r| r.token == token)
            {
                return Ok(r.counts.iter().map(|&c| u32::from(c)).collect());
            }
            let mut counts = Vec::with_capacity(offsets.len());
            for &offset in offsets {
                let not_held = |why: String| {
                    Err(MetaError::Fenced {
                        reason: FenceReason::NotHeld,
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
                        reason: FenceReason::LeaseExpired,
                        message: format!(
                            "{topic}/{partition} offset {offset}: the lease expired {} ms ago; the record may be delivered to another consumer",
                            now - r.deadline
                        ),
                    });
                }
                counts.push(r.deliveries);
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
            let answer = counts.iter().map(|&c| u32::from(c)).collect();
            sp.remember(Receipt { token, counts });
            sp.advance();
            tx.set(&keys::share_partition(group, t.id, partition), &sp.encode())
                .await?;
            Ok(answer)
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
        self.run("describe_share_group", |tx, _| async move {
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
                        ..SharePartition::default()
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
        self.run("list_share_groups", |tx, _| async move {
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

    fn full() -> SharePartition {
        let mut sp = SharePartition {
            start: 42,
            ..SharePartition::default()
        };
        for i in 0..MAX_IN_FLIGHT {
            sp.records.push(InFlight {
                state: State::from_u8((i % 5) as u8).unwrap(),
                deliveries: (i % 7) as u8,
                deadline: i * 1000,
                holder: i as u64 * 31,
                tag: i as u64 * 17,
            });
        }
        sp
    }

    #[test]
    fn share_partition_round_trips_and_fits_a_value() {
        let mut sp = full();
        // The largest receipts a settle can leave, many times over: the ring stays bounded.
        for token in 1..=40 {
            sp.remember(Receipt {
                token,
                counts: vec![3; MAX_IN_FLIGHT as usize],
            });
        }
        assert!(sp.receipts.len() <= MAX_RECEIPTS);
        assert_eq!(sp.receipts.last().map(|r| r.token), Some(40), "newest kept");
        let v = sp.encode();
        assert!(v.len() < 100_000, "{} bytes", v.len());
        assert_eq!(SharePartition::decode(&v).unwrap(), sp);
        assert!(SharePartition::decode(&v[..20]).is_err());
        // Many small receipts: at most MAX_RECEIPTS, newest kept.
        for token in 100..200 {
            sp.remember(Receipt {
                token,
                counts: vec![1],
            });
        }
        assert_eq!(sp.receipts.len(), MAX_RECEIPTS);
        assert_eq!(sp.receipts[0].token, 200 - MAX_RECEIPTS as u64);
    }

    #[test]
    fn values_of_the_first_layout_still_decode() {
        let sp = full();
        let mut v0 = sp.start.to_le_bytes().to_vec();
        for r in &sp.records {
            v0.push(r.state as u8);
            v0.push(r.deliveries);
            v0.extend_from_slice(&r.deadline.to_le_bytes());
            v0.extend_from_slice(&r.holder.to_le_bytes());
        }
        let old = SharePartition::decode(&v0).unwrap();
        assert_eq!(old.start, 42);
        assert!(old.receipts.is_empty());
        assert_eq!(old.records.len(), sp.records.len());
        assert!(old.records.iter().all(|r| r.tag == 0));
        assert_eq!(old.records[9].holder, sp.records[9].holder);
        assert!(SharePartition::decode(&v0[..9]).is_err());
    }
}
