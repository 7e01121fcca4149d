//! Idempotent producers: ids and epochs, the per-partition window of a producer's last
//! batches that makes retries return the original offsets, and the expiry that bounds how
//! much of this the metadata store holds.
//!
//! Per `(producer, topic, partition)` the store keeps the epoch, the last time the producer
//! wrote there, and its last [`WINDOW`] batches as `(base sequence, record count, outcome)`.
//! A batch whose stamp matches one of them is a retry and gets that outcome back; otherwise
//! its base sequence must be the one after the newest, or it is out of order.

use std::time::Duration;

use crate::keys::{self, decode, value};
use crate::lifecycle::all_absent;
use crate::metadata::{Memo, Tx};
use crate::{BatchOutcome, MetaError, Metadata, ProducerId, validate_topic_name};

/// Batches remembered per producer and partition: a client may have this many requests in
/// flight and still have each retry recognised.
pub const WINDOW: usize = 5;

/// Producer records or states looked at per expiry transaction.
const EXPIRY_CHUNK: usize = 500;

/// One remembered batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SeqEntry {
    pub(crate) base_sequence: i64,
    pub(crate) record_count: u32,
    pub(crate) outcome: BatchOutcome,
}

/// A producer's state in one partition.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ProducerPartition {
    pub(crate) epoch: u32,
    pub(crate) last_used_ms: i64,
    /// Oldest first; at most [`WINDOW`].
    pub(crate) entries: Vec<SeqEntry>,
}

const ENTRY_BYTES: usize = 8 + 4 + 1 + 8;

impl ProducerPartition {
    /// The sequence expected next.
    pub(crate) fn next_sequence(&self) -> i64 {
        self.entries
            .last()
            .map_or(0, |e| e.base_sequence + i64::from(e.record_count))
    }

    /// Remembers a batch, forgetting the oldest beyond the window.
    pub(crate) fn push(&mut self, entry: SeqEntry, now_ms: i64) {
        self.entries.push(entry);
        if self.entries.len() > WINDOW {
            self.entries.remove(0);
        }
        self.last_used_ms = now_ms;
    }

    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(13 + self.entries.len() * ENTRY_BYTES);
        out.extend_from_slice(&self.epoch.to_le_bytes());
        out.extend_from_slice(&self.last_used_ms.to_le_bytes());
        out.push(self.entries.len() as u8);
        for e in &self.entries {
            let (code, detail) = e.outcome.encode();
            out.extend_from_slice(&e.base_sequence.to_le_bytes());
            out.extend_from_slice(&e.record_count.to_le_bytes());
            out.push(code);
            out.extend_from_slice(&detail.to_le_bytes());
        }
        out
    }

    pub(crate) fn decode(v: &[u8]) -> Result<Self, MetaError> {
        let bad = |reason: &str| MetaError::malformed("producer partition state", reason);
        let take = |at: usize, n: usize| v.get(at..at + n).ok_or_else(|| bad("truncated"));
        let u32_at = |at| take(at, 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
        let i64_at = |at| take(at, 8).map(keys::decode_i64_le);
        let epoch = u32_at(0)?;
        let last_used_ms = i64_at(4)?;
        let n = usize::from(*take(12, 1)?.first().ok_or_else(|| bad("truncated"))?);
        if n > WINDOW || v.len() != 13 + n * ENTRY_BYTES {
            return Err(bad("wrong length"));
        }
        let mut entries = Vec::with_capacity(n);
        for i in 0..n {
            let at = 13 + i * ENTRY_BYTES;
            let code = take(at + 12, 1)?[0];
            let outcome = BatchOutcome::decode(code, i64_at(at + 13)?)
                .ok_or_else(|| bad("unknown outcome code"))?;
            entries.push(SeqEntry {
                base_sequence: i64_at(at)?,
                record_count: u32_at(at + 8)?,
                outcome,
            });
        }
        Ok(ProducerPartition {
            epoch,
            last_used_ms,
            entries,
        })
    }
}

/// A producer's record: its current epoch, optional stable name, last init time, and the
/// token of the `init_producer` call that last wrote it (so that call's rerun after a lost
/// reply recognises its own epoch step instead of taking another).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ProducerRecord {
    pub(crate) epoch: u32,
    pub(crate) name: String,
    pub(crate) init_ms: i64,
    pub(crate) token: u64,
}

impl ProducerRecord {
    /// Decodes a stored record (records written before tokens existed have none: 0).
    fn decode(v: &[u8]) -> Result<Self, MetaError> {
        let (epoch, name, init_ms, token) = match decode::<(u32, String, i64, u64)>("producer", v) {
            Ok(r) => r,
            Err(e) => match decode::<(u32, String, i64)>("producer", v) {
                Ok((epoch, name, init_ms)) => (epoch, name, init_ms, 0),
                Err(_) => return Err(e),
            },
        };
        Ok(ProducerRecord {
            epoch,
            name,
            init_ms,
            token,
        })
    }
}

pub(crate) async fn read_producer(tx: &Tx, id: u64) -> Result<Option<ProducerRecord>, MetaError> {
    match tx.get(&keys::producer(id)).await? {
        Some(v) => ProducerRecord::decode(&v).map(Some),
        None => Ok(None),
    }
}

async fn write_producer(tx: &Tx, id: u64, r: &ProducerRecord) -> Result<(), MetaError> {
    tx.set(
        &keys::producer(id),
        &value(&(r.epoch, r.name.as_str(), r.init_ms, r.token)),
    )
    .await?;
    Ok(())
}

/// One expiry step as planned: the keys it cleared, then (how many it removed, where the
/// next step starts).
type Sweep<K> = (Vec<Vec<u8>>, (u64, Option<K>));

/// What one expiry sweep removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExpiryReport {
    /// Per-partition producer states removed.
    pub partition_states: u64,
    /// Producer ids removed.
    pub producers: u64,
}

/// How much producer state the store holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProducerStats {
    /// Producer ids.
    pub producers: u64,
    /// Per-partition producer states.
    pub partition_states: u64,
    /// Bytes of keys and values of both.
    pub bytes: u64,
}

impl Metadata {
    /// Issues a producer id and epoch. With a `name` (a stable producer identity, like
    /// Kafka's transactional id) the same id is returned with the epoch raised by one, which
    /// fences every older instance of that producer; without one, a fresh id at epoch 0.
    pub async fn init_producer(&self, name: Option<&str>) -> Result<ProducerId, MetaError> {
        if let Some(n) = name {
            validate_topic_name(n).map_err(|_| {
                MetaError::InvalidArgument(format!(
                    "invalid producer name `{}`: use 1 to 249 characters of letters, digits, `.`, `_`, `-`",
                    crate::types::shown_name(n)
                ))
            })?;
        }
        let now = self.clock().now_ms();
        let token = self.token();
        // The id a fresh-id attempt allocated: after a lost reply, the record under it holds
        // this call's token if that attempt committed.
        let allocated = &Memo::new();
        self.run("init_producer", |tx, maybe| async move {
            if maybe.get()
                && let Some(id) = allocated.get()
                && let Some(r) = read_producer(&tx, id).await?
                && r.token == token
            {
                return Ok(ProducerId { id, epoch: r.epoch });
            }
            if let Some(n) = name
                && let Some(v) = tx.get(&keys::producer_name(n)).await?
            {
                let (id,): (u64,) = decode("producer name", &v)?;
                if let Some(mut r) = read_producer(&tx, id).await? {
                    // This call's own epoch step, committed by an attempt whose reply was
                    // lost: answer it rather than fence our own instance with another step.
                    if maybe.get() && r.token == token {
                        return Ok(ProducerId { id, epoch: r.epoch });
                    }
                    if r.epoch < u32::MAX {
                        r.epoch += 1;
                        r.init_ms = now;
                        r.token = token;
                        write_producer(&tx, id, &r).await?;
                        return Ok(ProducerId { id, epoch: r.epoch });
                    }
                }
            }
            // Producer ids come from a counter the transaction must read to choose the id,
            // so it stays a read-modify-write (an atomic add could not return the value).
            let id = match tx.get(&keys::next_producer_id()).await? {
                Some(v) => decode::<(u64,)>("next producer id", &v)?.0,
                None => 1,
            };
            allocated.set(id);
            tx.set(&keys::next_producer_id(), &value(&(id + 1,)))
                .await?;
            let r = ProducerRecord {
                epoch: 0,
                name: name.unwrap_or_default().to_string(),
                init_ms: now,
                token,
            };
            write_producer(&tx, id, &r).await?;
            if let Some(n) = name {
                tx.set(&keys::producer_name(n), &value(&(id,))).await?;
            }
            Ok(ProducerId { id, epoch: 0 })
        })
        .await
    }

    /// Removes producer state idle for longer than `idle`: per-partition states not written
    /// since, and producer ids neither initialised since nor holding any state. Runs in
    /// bounded transactions; returns what it removed.
    pub async fn expire_producers(&self, idle: Duration) -> Result<ExpiryReport, MetaError> {
        let cutoff = self
            .clock()
            .now_ms()
            .saturating_sub(idle.as_millis() as i64);
        let mut report = ExpiryReport::default();
        // Per-partition states.
        let mut from = (0u64, 0u64, 0u32);
        loop {
            let planned: &Memo<Sweep<(u64, u64, u32)>> = &Memo::new();
            let (removed, next) = self
                .run("expire_producer_states", |tx, maybe| async move {
                    // After a lost reply: if everything the earlier attempt cleared is gone,
                    // the sweep step happened (ours, or the same by another agent's sweep);
                    // report it rather than count nothing.
                    if maybe.get()
                        && let Some((cleared, result)) = planned.get()
                        && all_absent(&tx, &cleared).await?
                    {
                        return Ok(result);
                    }
                    let (b, e) = keys::producer_partitions_from(from.0, from.1, from.2);
                    let rows = tx.get_range(&b, &e, EXPIRY_CHUNK, false).await?;
                    let mut cleared = Vec::new();
                    let mut last = None;
                    for (k, v) in &rows {
                        let (_, _, id, topic_id, partition): (String, String, u64, u64, u32) =
                            decode("producer state key", k)?;
                        last = Some((id, topic_id, partition));
                        if ProducerPartition::decode(v)?.last_used_ms < cutoff {
                            tx.clear(k).await?;
                            cleared.push(k.clone());
                        }
                    }
                    let next = match last {
                        Some(l) if rows.len() == EXPIRY_CHUNK => {
                            Some((l.0, l.1, l.2.saturating_add(1)))
                        }
                        _ => None,
                    };
                    let result = (cleared.len() as u64, next);
                    planned.set((cleared, result));
                    Ok(result)
                })
                .await?;
            report.partition_states += removed;
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        // Producer ids.
        let mut from = 1u64;
        loop {
            let planned: &Memo<Sweep<u64>> = &Memo::new();
            let (removed, next) = self
                .run("expire_producers", |tx, maybe| async move {
                    // As above: a rerun finds its earlier step done by the keys it cleared.
                    if maybe.get()
                        && let Some((cleared, result)) = planned.get()
                        && all_absent(&tx, &cleared).await?
                    {
                        return Ok(result);
                    }
                    let (b, e) = keys::producers_from(from);
                    let rows = tx.get_range(&b, &e, EXPIRY_CHUNK, false).await?;
                    let mut cleared = Vec::new();
                    let mut last = None;
                    for (k, v) in &rows {
                        let (_, _, id): (String, String, u64) = decode("producer key", k)?;
                        last = Some(id);
                        let ProducerRecord { name, init_ms, .. } = ProducerRecord::decode(v)?;
                        if init_ms >= cutoff {
                            continue;
                        }
                        let (sb, se) = keys::producer_partitions(id);
                        if !tx.get_range(&sb, &se, 1, false).await?.is_empty() {
                            continue;
                        }
                        tx.clear(k).await?;
                        if !name.is_empty() {
                            tx.clear(&keys::producer_name(&name)).await?;
                        }
                        cleared.push(k.clone());
                    }
                    let next = match last {
                        Some(l) if rows.len() == EXPIRY_CHUNK => Some(l + 1),
                        _ => None,
                    };
                    let result = (cleared.len() as u64, next);
                    planned.set((cleared, result));
                    Ok(result)
                })
                .await?;
            report.producers += removed;
            match next {
                Some(n) => from = n,
                None => break,
            }
        }
        Ok(report)
    }

    /// Counts the producer state held (for tests and status).
    pub async fn producer_stats(&self) -> Result<ProducerStats, MetaError> {
        self.run("producer_stats", |tx, _| async move {
            let mut stats = ProducerStats::default();
            let (b, e) = keys::producers_from(0);
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                stats.producers += 1;
                stats.bytes += (k.len() + v.len()) as u64;
            }
            let (b, e) = keys::producer_partitions_from(0, 0, 0);
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                stats.partition_states += 1;
                stats.bytes += (k.len() + v.len()) as u64;
            }
            Ok(stats)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Rejection;

    #[test]
    fn partition_state_round_trips_and_stays_bounded() {
        let mut s = ProducerPartition {
            epoch: 3,
            last_used_ms: 0,
            entries: Vec::new(),
        };
        let mut sizes = Vec::new();
        for i in 0..20i64 {
            let outcome = if i % 3 == 0 {
                BatchOutcome::Rejected(Rejection::OffsetMismatch { next_offset: i })
            } else {
                BatchOutcome::Committed {
                    base_offset: i * 10,
                }
            };
            s.push(
                SeqEntry {
                    base_sequence: i * 2,
                    record_count: 2,
                    outcome,
                },
                i,
            );
            let bytes = s.encode();
            assert_eq!(ProducerPartition::decode(&bytes).unwrap(), s);
            sizes.push(bytes.len());
        }
        assert_eq!(s.entries.len(), WINDOW);
        assert_eq!(s.next_sequence(), 40);
        assert_eq!(*sizes.iter().max().unwrap(), 13 + WINDOW * ENTRY_BYTES);
        assert!(ProducerPartition::decode(&[1, 2, 3]).is_err());
    }
}
