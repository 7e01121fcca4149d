//! Object lifecycle and retention: which objects no index entry references any more (dead,
//! deleted after a grace period), how retention and `delete_records` move a partition's
//! start offset, and the bookkeeping removed once an object is gone.
//!
//! Each index entry has a reverse key `(oi, object, topic, partition, end)`. An object whose
//! reverse keys all point at index entries that no longer exist (removed by retention, by
//! `delete_records`, or with their topic) is dead; the first scan that sees it so records the
//! time, and a scan after the grace period hands it out for deletion. The grace period must
//! be longer than any fetch, so a fetch that looked an entry up just before it was removed
//! can still read the object.

use std::time::Duration;

use crate::keys::{self, decode, value};
use crate::metadata::{
    Memo, Tx, add_counters, decode_index, read_counters, read_position, read_topic, write_position,
};
use crate::{MetaError, Metadata, Topic};

/// Index entries removed per retention transaction.
const RETENTION_CHUNK: usize = 500;
/// Object records examined per collection transaction.
const GC_CHUNK: usize = 200;

/// What a retention pass removed from one topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionReport {
    /// Index entries removed.
    pub entries_removed: u64,
    /// Stored bytes those entries covered.
    pub bytes_removed: u64,
    /// New start offset per partition that moved: `(partition, start_offset)`.
    pub moved: Vec<(u32, i64)>,
}

/// One page of a collection scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPage {
    /// Objects dead for longer than the grace period: delete them, then `forget_object`.
    pub deletable: Vec<String>,
    /// Objects seen unreferenced for the first time in this page.
    pub newly_dead: u64,
    /// Where the next page starts; `None` at the end.
    pub next: Option<String>,
}

impl Metadata {
    /// Applies `topic`'s time and size retention: removes whole index entries older than
    /// `retention_ms` (by their newest record) or beyond `retention_bytes` per partition
    /// (oldest first), and moves each partition's start offset past them.
    pub async fn apply_retention(&self, topic: &str) -> Result<RetentionReport, MetaError> {
        let t = self.topic(topic).await?;
        let now = self.clock().now_ms();
        let mut report = RetentionReport::default();
        if t.retention_ms == -1 && t.retention_bytes == -1 {
            return Ok(report);
        }
        for p in 0..t.partitions {
            loop {
                let planned: &Memo<Step> = &Memo::new();
                let Step {
                    removed,
                    bytes,
                    start,
                    more,
                    ..
                } = self
                    .run("apply_retention", |tx, maybe| {
                        let t = t.clone();
                        async move {
                            // After a lost reply: if every entry the earlier attempt removed
                            // is gone, the step happened (ours, or an identical one by
                            // another compactor); report it rather than find nothing to do.
                            if maybe.get()
                                && let Some(step) = planned.get()
                                && all_absent(&tx, &step.keys).await?
                            {
                                return Ok(step);
                            }
                            let step = retention_step(&tx, &t, p, now).await?;
                            planned.set(step.clone());
                            Ok(step)
                        }
                    })
                    .await?;
                report.entries_removed += removed;
                report.bytes_removed += bytes;
                if removed > 0 {
                    report.moved.retain(|(q, _)| *q != p);
                    report.moved.push((p, start));
                }
                if !more {
                    break;
                }
            }
        }
        Ok(report)
    }

    /// Makes offsets before `before` unreadable (Kafka's DeleteRecords): the start offset
    /// moves to `before` and index entries wholly before it are removed. Returns the new
    /// start offset.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before: i64,
    ) -> Result<i64, MetaError> {
        if before < 0 {
            return Err(MetaError::InvalidArgument(format!(
                "delete-records offset must be 0 or more, got {before}"
            )));
        }
        self.run("delete_records", |tx, maybe| async move {
            let t = read_topic(&tx, topic)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(topic.to_string()))?;
            t.check_partition(partition)?;
            let state = read_position(&tx, t.id, partition).await?;
            // After a lost reply the start offset is already at (or, after retention, past)
            // `before`: what was asked holds, so it is not an out-of-range request.
            if maybe.get() && state.start_offset >= before {
                return Ok(before);
            }
            if before < state.start_offset || before > state.next_offset {
                return Err(MetaError::OffsetOutOfRange {
                    topic: topic.to_string(),
                    partition,
                    offset: before,
                    start: state.start_offset,
                    hwm: state.next_offset,
                });
            }
            let (b, e) = keys::index_from(t.id, partition, 0);
            let (mut bytes, mut entries) = (0i64, 0i64);
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let entry = decode_index(t.id, partition, &k, &v)?;
                if entry.end_offset > before {
                    break;
                }
                remove_entry(
                    &tx,
                    &k,
                    &entry.object_key,
                    t.id,
                    partition,
                    entry.end_offset,
                )
                .await?;
                bytes -= entry.length as i64;
                entries -= 1;
            }
            write_position(&tx, t.id, &state, before, state.next_offset).await?;
            add_counters(&tx, t.id, partition, bytes, entries).await?;
            Ok(before)
        })
        .await
    }

    /// Scans object records from `from` (one bounded transaction): marks objects no index
    /// entry references as dead, and returns those dead for longer than `grace`.
    pub async fn gc_scan(&self, from: &str, grace: Duration) -> Result<GcPage, MetaError> {
        let now = self.clock().now_ms();
        let grace_ms = grace.as_millis() as i64;
        let token = self.token();
        self.run("gc_scan", |tx, maybe| async move {
            let (b, e) = keys::objects_from(from);
            let rows = tx.get_range(&b, &e, GC_CHUNK, false).await?;
            let mut page = GcPage::default();
            let mut last = None;
            for (k, _) in &rows {
                let (_, _, object): (String, String, String) = decode("object key", k)?;
                last = Some(object.clone());
                if referenced(&tx, &object).await? {
                    continue;
                }
                match tx.get(&keys::object_dead(&object)).await? {
                    None => {
                        tx.set(&keys::object_dead(&object), &value(&(now, token)))
                            .await?;
                        page.newly_dead += 1;
                    }
                    Some(v) => {
                        let (since, by) = decode_dead(&v)?;
                        // After a lost reply, this scan's own first attempt marked it: it
                        // is newly dead, exactly as that attempt would have answered.
                        if maybe.get() && by == token {
                            page.newly_dead += 1;
                        } else if now - since >= grace_ms {
                            page.deletable.push(object);
                        }
                    }
                }
            }
            page.next = match last {
                Some(l) if rows.len() == GC_CHUNK => Some(format!("{l}\u{0}")),
                _ => None,
            };
            Ok(page)
        })
        .await
    }

    /// Removes what metadata knows of an object deleted from the store. Idempotent.
    pub async fn forget_object(&self, object_key: &str) -> Result<(), MetaError> {
        self.run("forget_object", |tx, _| async move {
            if referenced(&tx, object_key).await? {
                return Err(MetaError::InvalidArgument(format!(
                    "object {object_key} is still referenced by the index; not forgetting it"
                )));
            }
            tx.clear(&keys::object(object_key)).await?;
            tx.clear(&keys::object_dead(object_key)).await?;
            let (b, e) = keys::object_results(object_key);
            tx.clear_range(&b, &e).await?;
            let (b, e) = keys::object_refs(object_key);
            tx.clear_range(&b, &e).await?;
            Ok(())
        })
        .await
    }
}

/// Decodes `(od, object)`: when the object was first seen unreferenced, and the token of the
/// scan that saw it (0 in values written before tokens existed).
fn decode_dead(v: &[u8]) -> Result<(i64, u64), MetaError> {
    match decode::<(i64, u64)>("object dead since", v) {
        Ok(x) => Ok(x),
        Err(e) => match decode::<(i64,)>("object dead since", v) {
            Ok((since,)) => Ok((since, 0)),
            Err(_) => Err(e),
        },
    }
}

/// Whether none of `keys` exists.
pub(crate) async fn all_absent(tx: &Tx, keys: &[Vec<u8>]) -> Result<bool, MetaError> {
    for k in keys {
        if tx.get(k).await?.is_some() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Whether any index entry still points into `object` (clearing dangling reverse keys).
async fn referenced(tx: &Tx, object: &str) -> Result<bool, MetaError> {
    let (b, e) = keys::object_refs(object);
    for (k, _) in tx.get_range(&b, &e, usize::MAX, false).await? {
        let (_, _, _, topic_id, partition, end): (String, String, String, u64, u32, i64) =
            decode("object ref", &k)?;
        match tx.get(&keys::index(topic_id, partition, end)).await? {
            Some(v) => {
                let (entry_object, ..) = crate::metadata::decode_index_value(&v)?;
                if entry_object == object {
                    return Ok(true);
                }
                tx.clear(&k).await?;
            }
            None => tx.clear(&k).await?,
        }
    }
    Ok(false)
}

async fn remove_entry(
    tx: &Tx,
    index_key: &[u8],
    object: &str,
    topic_id: u64,
    partition: u32,
    end: i64,
) -> Result<(), MetaError> {
    tx.clear(index_key).await?;
    tx.clear(&keys::object_ref(object, topic_id, partition, end))
        .await?;
    Ok(())
}

/// What one retention transaction did to one partition.
#[derive(Debug, Clone)]
struct Step {
    /// Index entries removed.
    removed: u64,
    /// Bytes they covered.
    bytes: u64,
    /// The partition's start offset after the step.
    start: i64,
    /// Whether another step may find more to remove.
    more: bool,
    /// The index keys removed (so a rerun after a lost reply can see they are gone).
    keys: Vec<Vec<u8>>,
}

/// One bounded retention transaction for one partition.
async fn retention_step(tx: &Tx, t: &Topic, p: u32, now: i64) -> Result<Step, MetaError> {
    let position = read_position(tx, t.id, p).await?;
    let mut start = position.start_offset;
    // Size retention decides on the stored bytes, so this step reads the counter (and on
    // FoundationDB conflicts with a concurrent change to it, as it should).
    let (counted, _) = read_counters(tx, t.id, p).await?;
    let (b, e) = keys::index_from(t.id, p, 0);
    let rows = tx.get_range(&b, &e, RETENTION_CHUNK + 1, false).await?;
    let mut removed = 0u64;
    let mut bytes = 0u64;
    let mut keys = Vec::new();
    let mut live = position.bytes.saturating_add_signed(counted);
    let total = rows.len();
    for (i, (k, v)) in rows.iter().enumerate() {
        if i == RETENTION_CHUNK {
            break;
        }
        let entry = decode_index(t.id, p, k, v)?;
        let too_old = t.retention_ms != -1 && entry.max_timestamp_ms < now - t.retention_ms;
        let too_big = t.retention_bytes != -1 && live > t.retention_bytes as u64;
        // Entries go whole and oldest first, while either rule still asks for it.
        if !(too_old || too_big) {
            break;
        }
        remove_entry(tx, k, &entry.object_key, t.id, p, entry.end_offset).await?;
        keys.push(k.clone());
        removed += 1;
        bytes += entry.length;
        live = live.saturating_sub(entry.length);
        start = start.max(entry.end_offset);
    }
    if removed > 0 {
        write_position(tx, t.id, &position, start, position.next_offset).await?;
        add_counters(tx, t.id, p, -(bytes as i64), -(removed as i64)).await?;
    }
    let more = removed as usize == RETENTION_CHUNK && total > RETENTION_CHUNK;
    Ok(Step {
        removed,
        bytes,
        start,
        more,
        keys,
    })
}
