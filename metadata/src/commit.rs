//! The segment commit: one transaction that decides, for every batch of a written segment
//! object, whether it joins the log and at which offsets.
//!
//! It runs in three steps. **Load** reads everything the decision depends on (topics,
//! partition states, producer records and their per-partition windows). **Plan** is a pure
//! function of what was loaded: it checks idempotence stamps, expected offsets and atomic
//! groups, and assigns dense offsets. **Write** stores index entries, states, producer
//! windows and the outcomes (so a rerun of the same commit returns them unchanged).
//!
//! An atomic group commits whole or not at all: if any of its batches is rejected, the plan
//! is made again with the whole group set aside, until every group left succeeds entirely.

use std::collections::{HashMap, HashSet};

use futures::future::try_join_all;

use crate::keys::{self, value};
use crate::metadata::{
    Tx, add_counters, delta, encode_index, read_position, read_topic_by_id, write_position,
};
use crate::producer::{ProducerPartition, ProducerRecord, SeqEntry, read_producer};
use crate::{
    BatchOutcome, CommitBatch, EntryKind, IndexEntry, MetaError, PartitionState, Rejection,
    SegmentCommit, Topic,
};

/// Outcomes per result chunk key (9 bytes each: 63 kB values, under the 100 kB limit).
const RESULTS_PER_CHUNK: usize = 7000;

/// Bytes a segment commit may write before it is refused as too large (FoundationDB allows
/// 10 MB; the margin covers keys and conflict ranges we do not count exactly).
pub(crate) const MAX_COMMIT_BYTES: usize = 8_000_000;

type PartKey = (u64, u32);
type ProdKey = (u64, u64, u32);

fn prod_key(b: &CommitBatch) -> Option<ProdKey> {
    b.producer.map(|s| (s.producer_id, b.topic_id, b.partition))
}

/// Bytes a segment commit writes at most, counted the way [`write_segment`] writes them:
/// one index entry per run of adjacent batches of a partition, one state per partition and
/// per producer and partition, 9 bytes of outcome per batch, plus keys.
pub(crate) fn commit_size_estimate(seg: &SegmentCommit) -> usize {
    let mut partitions = HashSet::new();
    let mut producers = HashSet::new();
    let mut runs = 0usize;
    let mut prev: Option<&CommitBatch> = None;
    for b in &seg.batches {
        partitions.insert((b.topic_id, b.partition));
        if let Some(k) = prod_key(b) {
            producers.insert(k);
        }
        let extends = prev.is_some_and(|p| {
            p.topic_id == b.topic_id
                && p.partition == b.partition
                && p.position + u64::from(p.length) == b.position
        });
        if !extends {
            runs += 1;
        }
        prev = Some(b);
    }
    let key = 32 + seg.object_key.len();
    runs * (2 * (32 + seg.object_key.len()) + 48)
        + partitions.len() * (32 + 40)
        + producers.len() * (40 + 13 + crate::producer::WINDOW * 21)
        + seg.batches.len() * 9
        + (seg.batches.len() / RESULTS_PER_CHUNK + 2) * key
}

/// The outcomes stored by the first successful run of this commit.
pub(crate) async fn read_outcomes(
    tx: &Tx,
    seg: &SegmentCommit,
) -> Result<Vec<BatchOutcome>, MetaError> {
    let (b, e) = keys::object_results(&seg.object_key);
    let corrupt =
        |reason: String| MetaError::malformed(format!("object {}", seg.object_key), reason);
    let mut out = Vec::with_capacity(seg.batches.len());
    for (_, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
        for chunk in v.chunks(9) {
            let [code, detail @ ..] = chunk else {
                return Err(corrupt("empty outcome".into()));
            };
            if detail.len() != 8 {
                return Err(corrupt("truncated outcome".into()));
            }
            let outcome = BatchOutcome::decode(*code, keys::decode_i64_le(detail))
                .ok_or_else(|| corrupt(format!("unknown outcome code {code}")))?;
            out.push(outcome);
        }
    }
    if out.len() != seg.batches.len() {
        return Err(corrupt(format!(
            "committed with {} batches, asked again with {}",
            out.len(),
            seg.batches.len()
        )));
    }
    Ok(out)
}

/// What the plan depends on, read in the commit's transaction.
#[derive(Default)]
struct Loaded {
    topics: HashMap<u64, Option<Topic>>,
    states: HashMap<PartKey, PartitionState>,
    producers: HashMap<u64, Option<ProducerRecord>>,
    windows: HashMap<ProdKey, Option<ProducerPartition>>,
}

async fn load(tx: &Tx, seg: &SegmentCommit) -> Result<Loaded, MetaError> {
    let mut topic_ids: Vec<u64> = seg.batches.iter().map(|b| b.topic_id).collect();
    topic_ids.sort_unstable();
    topic_ids.dedup();
    let topics = try_join_all(topic_ids.iter().map(|&id| read_topic_by_id(tx, id))).await?;
    let topics: HashMap<u64, Option<Topic>> = topic_ids.into_iter().zip(topics).collect();

    let mut parts: Vec<PartKey> = seg
        .batches
        .iter()
        .filter(|b| alive(&topics, b))
        .map(|b| (b.topic_id, b.partition))
        .collect();
    parts.sort_unstable();
    parts.dedup();
    // Positions only: a commit decides on the next offset, never on the byte or entry
    // counters, so it does not read them (and concurrent atomic adds do not conflict).
    let states = try_join_all(parts.iter().map(|&(t, p)| read_position(tx, t, p))).await?;

    let mut producer_ids: Vec<u64> = seg
        .batches
        .iter()
        .filter_map(|b| b.producer.map(|s| s.producer_id))
        .collect();
    producer_ids.sort_unstable();
    producer_ids.dedup();
    let producers = try_join_all(producer_ids.iter().map(|&id| read_producer(tx, id))).await?;

    let mut windows: Vec<ProdKey> = seg.batches.iter().filter_map(prod_key).collect();
    windows.sort_unstable();
    windows.dedup();
    let values = try_join_all(windows.iter().map(|&(id, t, p)| async move {
        match tx.get(&keys::producer_partition(id, t, p)).await? {
            Some(v) => ProducerPartition::decode(&v).map(Some),
            None => Ok(None),
        }
    }))
    .await?;

    Ok(Loaded {
        topics,
        states: parts.into_iter().zip(states).collect(),
        producers: producer_ids.into_iter().zip(producers).collect(),
        windows: windows.into_iter().zip(values).collect(),
    })
}

fn alive(topics: &HashMap<u64, Option<Topic>>, b: &CommitBatch) -> bool {
    matches!(topics.get(&b.topic_id), Some(Some(t)) if b.partition < t.partitions)
}

/// The decision for every batch, with the states it leaves behind.
struct Plan {
    outcomes: Vec<BatchOutcome>,
    states: HashMap<PartKey, PartitionState>,
    windows: HashMap<ProdKey, ProducerPartition>,
}

fn plan(seg: &SegmentCommit, loaded: &Loaded, now_ms: i64) -> Plan {
    let mut aborted: HashSet<u32> = HashSet::new();
    loop {
        let p = plan_pass(seg, loaded, &aborted, now_ms);
        let failed: HashSet<u32> = seg
            .batches
            .iter()
            .zip(&p.outcomes)
            .filter(|(_, o)| o.base_offset().is_none())
            .filter_map(|(b, _)| b.atomic_group)
            .filter(|g| !aborted.contains(g))
            .collect();
        if failed.is_empty() {
            return p;
        }
        aborted.extend(failed);
    }
}

fn plan_pass(seg: &SegmentCommit, loaded: &Loaded, aborted: &HashSet<u32>, now_ms: i64) -> Plan {
    let mut states: HashMap<PartKey, PartitionState> = HashMap::new();
    let mut windows: HashMap<ProdKey, ProducerPartition> = HashMap::new();
    let mut outcomes = Vec::with_capacity(seg.batches.len());
    for b in &seg.batches {
        if !alive(&loaded.topics, b) {
            outcomes.push(BatchOutcome::TopicGone);
            continue;
        }
        let part = (b.topic_id, b.partition);
        let state = states.entry(part).or_insert_with(|| {
            loaded.states.get(&part).copied().unwrap_or(PartitionState {
                partition: b.partition,
                ..PartitionState::default()
            })
        });

        // Idempotence: who sent it, and is it the next batch, a retry, or out of order?
        let mut window_key = None;
        if let (Some(stamp), Some(key)) = (b.producer, prod_key(b)) {
            let current = loaded
                .producers
                .get(&stamp.producer_id)
                .and_then(Option::as_ref);
            let stamp_error = match current {
                None => Some(Rejection::UnknownProducer),
                Some(r) if stamp.epoch < r.epoch => Some(Rejection::Fenced {
                    current_epoch: r.epoch,
                }),
                Some(r) if stamp.epoch > r.epoch => Some(Rejection::UnknownProducer),
                Some(_) => None,
            };
            if let Some(r) = stamp_error {
                outcomes.push(BatchOutcome::Rejected(r));
                continue;
            }
            let window = windows.entry(key).or_insert_with(|| {
                loaded
                    .windows
                    .get(&key)
                    .cloned()
                    .flatten()
                    .unwrap_or_default()
            });
            if window.epoch != stamp.epoch {
                // A new epoch starts its sequences again from 0.
                *window = ProducerPartition {
                    epoch: stamp.epoch,
                    last_used_ms: now_ms,
                    entries: Vec::new(),
                };
            }
            if let Some(seen) = window
                .entries
                .iter()
                .find(|e| e.base_sequence == stamp.base_sequence)
            {
                let replay = if seen.record_count == b.record_count {
                    match seen.outcome {
                        BatchOutcome::Committed { base_offset } => {
                            BatchOutcome::Duplicate { base_offset }
                        }
                        other => other,
                    }
                } else {
                    BatchOutcome::Rejected(Rejection::OutOfOrderSequence {
                        expected: window.next_sequence(),
                    })
                };
                outcomes.push(replay);
                continue;
            }
            let expected = window.next_sequence();
            if stamp.base_sequence != expected {
                outcomes.push(BatchOutcome::Rejected(Rejection::OutOfOrderSequence {
                    expected,
                }));
                continue;
            }
            window_key = Some(key);
        }

        // The batch's own condition, then its group's fate.
        let own = match b.expected_offset {
            Some(e) if e != state.next_offset => Some(Rejection::OffsetMismatch {
                next_offset: state.next_offset,
            }),
            _ => None,
        };
        let group_aborted = b.atomic_group.is_some_and(|g| aborted.contains(&g));
        let outcome = match (own, group_aborted) {
            (Some(r), _) => BatchOutcome::Rejected(r),
            (None, true) => BatchOutcome::Rejected(Rejection::AtomicAborted),
            (None, false) => {
                let base_offset = state.next_offset;
                state.next_offset += i64::from(b.record_count);
                state.bytes += u64::from(b.length);
                BatchOutcome::Committed { base_offset }
            }
        };
        if let (Some(key), Some(stamp)) = (window_key, b.producer)
            && let Some(window) = windows.get_mut(&key)
        {
            window.push(
                SeqEntry {
                    base_sequence: stamp.base_sequence,
                    record_count: b.record_count,
                    outcome,
                },
                now_ms,
            );
        }
        outcomes.push(outcome);
    }
    Plan {
        outcomes,
        states,
        windows,
    }
}

/// An index entry under construction.
struct Run {
    topic_id: u64,
    partition: u32,
    base_offset: i64,
    end_offset: i64,
    position: u64,
    length: u64,
    batch_count: u32,
    min_ts: i64,
    max_ts: i64,
}

async fn flush_run(tx: &Tx, run: Run, object_key: &str) -> Result<(), MetaError> {
    let entry = IndexEntry {
        topic_id: run.topic_id,
        partition: run.partition,
        base_offset: run.base_offset,
        end_offset: run.end_offset,
        object_key: object_key.to_string(),
        position: run.position,
        length: run.length,
        batch_count: run.batch_count,
        min_timestamp_ms: run.min_ts,
        max_timestamp_ms: run.max_ts,
        kind: EntryKind::Segment,
    };
    tx.set(
        &keys::index(run.topic_id, run.partition, run.end_offset),
        &encode_index(&entry),
    )
    .await?;
    tx.set(
        &keys::object_ref(object_key, run.topic_id, run.partition, run.end_offset),
        b"",
    )
    .await?;
    Ok(())
}

/// Loads, plans and writes a segment commit that has not run before.
pub(crate) async fn write_segment(
    tx: &Tx,
    seg: &SegmentCommit,
    now_ms: i64,
) -> Result<Vec<BatchOutcome>, MetaError> {
    for b in &seg.batches {
        if b.record_count == 0 || b.length == 0 {
            return Err(MetaError::InvalidArgument(format!(
                "segment {} holds an empty batch at byte {}",
                seg.object_key, b.position
            )));
        }
    }
    let loaded = load(tx, seg).await?;
    let Plan {
        outcomes,
        mut states,
        windows,
    } = plan(seg, &loaded, now_ms);

    // Index entries: one per run of byte-adjacent, offset-adjacent committed batches.
    let mut run: Option<Run> = None;
    for (b, outcome) in seg.batches.iter().zip(&outcomes) {
        let BatchOutcome::Committed { base_offset } = *outcome else {
            continue;
        };
        let end = base_offset + i64::from(b.record_count);
        let extends = matches!(&run, Some(r) if r.topic_id == b.topic_id
            && r.partition == b.partition
            && r.position + r.length == b.position
            && r.end_offset == base_offset);
        if extends {
            if let Some(r) = run.as_mut() {
                r.end_offset = end;
                r.length += u64::from(b.length);
                r.batch_count += 1;
                r.min_ts = r.min_ts.min(b.min_timestamp_ms);
                r.max_ts = r.max_ts.max(b.max_timestamp_ms);
            }
            continue;
        }
        if let Some(r) = run.take() {
            flush_run(tx, r, &seg.object_key).await?;
        }
        if let Some(state) = states.get_mut(&(b.topic_id, b.partition)) {
            state.index_entries += 1;
        }
        run = Some(Run {
            topic_id: b.topic_id,
            partition: b.partition,
            base_offset,
            end_offset: end,
            position: b.position,
            length: u64::from(b.length),
            batch_count: 1,
            min_ts: b.min_timestamp_ms,
            max_ts: b.max_timestamp_ms,
        });
    }
    if let Some(r) = run.take() {
        flush_run(tx, r, &seg.object_key).await?;
    }

    for ((topic_id, partition), state) in &states {
        let Some(before) = loaded.states.get(&(*topic_id, *partition)) else {
            continue;
        };
        if before != state {
            write_position(tx, *topic_id, before, state.start_offset, state.next_offset).await?;
            add_counters(
                tx,
                *topic_id,
                *partition,
                delta(state.bytes, before.bytes),
                delta(state.index_entries, before.index_entries),
            )
            .await?;
        }
    }
    for ((id, topic_id, partition), window) in &windows {
        let before = loaded
            .windows
            .get(&(*id, *topic_id, *partition))
            .and_then(Option::as_ref);
        if before != Some(window) {
            tx.set(
                &keys::producer_partition(*id, *topic_id, *partition),
                &window.encode(),
            )
            .await?;
        }
    }
    tx.set(
        &keys::object(&seg.object_key),
        &value(&("live", now_ms, seg.object_size, seg.batches.len() as u64)),
    )
    .await?;
    for (i, chunk) in outcomes.chunks(RESULTS_PER_CHUNK).enumerate() {
        let mut bytes = Vec::with_capacity(chunk.len() * 9);
        for o in chunk {
            let (code, detail) = o.encode();
            bytes.push(code);
            bytes.extend_from_slice(&detail.to_le_bytes());
        }
        tx.set(&keys::object_result(&seg.object_key, i as u32), &bytes)
            .await?;
    }
    Ok(outcomes)
}
