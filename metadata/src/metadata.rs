//! [`Metadata`]: Cairn's metadata logic (topics, segment commits, the offset index) written
//! once over any [`KvStore`], with the retry loop that makes every operation a serializable
//! transaction.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use tokio::sync::watch;

use crate::keys::{self, decode, value};
use crate::kv::{KvStore, KvTransaction, RetryPolicy};
use crate::types::validate_partition_count;
use crate::{
    BatchOutcome, Clock, IndexEntry, MetaError, PartitionState, SegmentCommit, Topic, TopicSpec,
};

/// A transaction handle shared between the retry loop and the operation's closure.
pub(crate) type Tx = Arc<dyn KvTransaction>;

/// Base offsets per result chunk key (8 bytes each: 64 KiB values, under the 100 kB limit).
const RESULTS_PER_CHUNK: usize = 8192;

/// Bytes a segment commit may write before it is refused as too large (FoundationDB allows
/// 10 MB; the margin covers keys and conflict ranges we do not count exactly).
const MAX_COMMIT_BYTES: usize = 8_000_000;

/// Runs `f` in a transaction and commits it, rerunning both on retryable errors (conflicts,
/// unknown commit results, transient unavailability) with jittered exponential backoff.
/// `f` must be idempotent: it may run several times, and a commit reported as unknown may
/// have been applied.
pub async fn transact<T, F, Fut>(
    kv: &dyn KvStore,
    policy: &RetryPolicy,
    what: &'static str,
    mut f: F,
) -> Result<T, MetaError>
where
    F: FnMut(Tx) -> Fut,
    Fut: Future<Output = Result<T, MetaError>>,
{
    let mut backoff = policy.initial_backoff;
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let result = async {
            let tx: Tx = Arc::from(kv.begin().await?);
            let v = f(tx.clone()).await?;
            tx.commit().await?;
            Ok::<T, MetaError>(v)
        }
        .await;
        match result {
            Err(MetaError::Kv(e)) if e.is_retryable() && attempt < policy.max_attempts => {
                tracing::debug!(what, attempt, error = %e, "retrying metadata transaction");
                let nanos = backoff.as_nanos() as u64;
                // Jitter only spreads retries apart; it never decides an outcome, so it
                // may come from the thread RNG rather than an injected one.
                #[allow(clippy::disallowed_methods)]
                let sleep = rand::rng().random_range(nanos / 2..=nanos.max(1));
                tokio::time::sleep(Duration::from_nanos(sleep)).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
            other => return other,
        }
    }
}

/// Cairn's metadata operations over a transactional KV store.
#[derive(Debug, Clone)]
pub struct Metadata {
    kv: Arc<dyn KvStore>,
    clock: Arc<dyn Clock>,
    retry: RetryPolicy,
    commits: Arc<watch::Sender<u64>>,
}

fn encode_state(s: &PartitionState) -> Vec<u8> {
    value(&(s.start_offset, s.next_offset, s.bytes, s.index_entries))
}

fn decode_state(partition: u32, v: Option<&[u8]>) -> Result<PartitionState, MetaError> {
    let Some(v) = v else {
        return Ok(PartitionState {
            partition,
            ..PartitionState::default()
        });
    };
    let (start_offset, next_offset, bytes, index_entries): (i64, i64, u64, u64) =
        decode("partition state", v)?;
    Ok(PartitionState {
        partition,
        start_offset,
        next_offset,
        bytes,
        index_entries,
    })
}

fn decode_topic(v: &[u8]) -> Result<Topic, MetaError> {
    serde_json::from_slice(v).map_err(|e| MetaError::Corrupt {
        key: "topic".into(),
        reason: e.to_string(),
    })
}

fn encode_topic(t: &Topic) -> Result<Vec<u8>, MetaError> {
    serde_json::to_vec(t).map_err(|e| MetaError::Corrupt {
        key: format!("topic {}", t.name),
        reason: e.to_string(),
    })
}

type IndexValue = (String, u64, u64, i64, u32, i64, i64);

fn decode_index(
    topic_id: u64,
    partition: u32,
    key: &[u8],
    v: &[u8],
) -> Result<IndexEntry, MetaError> {
    let (_, _, _, _, end_offset): (String, String, u64, u32, i64) = decode("index key", key)?;
    let (object_key, position, length, base_offset, batch_count, min_ts, max_ts): IndexValue =
        decode("index entry", v)?;
    Ok(IndexEntry {
        topic_id,
        partition,
        base_offset,
        end_offset,
        object_key,
        position,
        length,
        batch_count,
        min_timestamp_ms: min_ts,
        max_timestamp_ms: max_ts,
    })
}

async fn read_topic(tx: &Tx, name: &str) -> Result<Option<Topic>, MetaError> {
    let Some(id) = tx.get(&keys::topic_name(name)).await? else {
        return Ok(None);
    };
    let (id,): (u64,) = decode("topic name", &id)?;
    read_topic_by_id(tx, id).await
}

async fn read_topic_by_id(tx: &Tx, id: u64) -> Result<Option<Topic>, MetaError> {
    match tx.get(&keys::topic(id)).await? {
        Some(v) => Ok(Some(decode_topic(&v)?)),
        None => Ok(None),
    }
}

async fn read_state(tx: &Tx, topic_id: u64, partition: u32) -> Result<PartitionState, MetaError> {
    let v = tx.get(&keys::partition(topic_id, partition)).await?;
    decode_state(partition, v.as_deref())
}

/// An index entry under construction during a commit.
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

impl Metadata {
    /// Metadata over `kv`, reading time from `clock`.
    pub fn new(kv: Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Self {
        Metadata {
            kv,
            clock,
            retry: RetryPolicy::default(),
            commits: Arc::new(watch::channel(0).0),
        }
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The underlying store.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    /// The injected clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, MetaError>
    where
        F: FnMut(Tx) -> Fut,
        Fut: Future<Output = Result<T, MetaError>>,
    {
        transact(self.kv.as_ref(), &self.retry, what, f).await
    }

    /// Creates a topic with a fresh id.
    pub async fn create_topic(&self, spec: &TopicSpec) -> Result<Topic, MetaError> {
        spec.validate()?;
        let now = self.clock.now_ms();
        self.run("create_topic", |tx| async move {
            if tx.get(&keys::topic_name(&spec.name)).await?.is_some() {
                return Err(MetaError::TopicExists(spec.name.clone()));
            }
            let id = match tx.get(&keys::next_topic_id()).await? {
                Some(v) => decode::<(u64,)>("next topic id", &v)?.0,
                None => 1,
            };
            tx.set(&keys::next_topic_id(), &value(&(id + 1,))).await?;
            let topic = Topic {
                id,
                name: spec.name.clone(),
                partitions: spec.partitions,
                codec: spec.codec,
                retention_ms: spec.retention_ms,
                retention_bytes: spec.retention_bytes,
                created_at_ms: now,
            };
            tx.set(&keys::topic(id), &encode_topic(&topic)?).await?;
            tx.set(&keys::topic_name(&spec.name), &value(&(id,)))
                .await?;
            Ok(topic)
        })
        .await
    }

    /// The topic of that name.
    pub async fn topic(&self, name: &str) -> Result<Topic, MetaError> {
        self.run("topic", |tx| async move {
            read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))
        })
        .await
    }

    /// The topic with that id, if it still exists.
    pub async fn topic_by_id(&self, id: u64) -> Result<Option<Topic>, MetaError> {
        self.run("topic_by_id", |tx| async move {
            read_topic_by_id(&tx, id).await
        })
        .await
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<Topic>, MetaError> {
        self.run("list_topics", |tx| async move {
            let (b, e) = keys::topic_names();
            let mut topics = Vec::new();
            for (_, id) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let (id,): (u64,) = decode("topic name", &id)?;
                if let Some(t) = read_topic_by_id(&tx, id).await? {
                    topics.push(t);
                }
            }
            Ok(topics)
        })
        .await
    }

    /// Deletes a topic and its index. Its objects stay until garbage collection.
    pub async fn delete_topic(&self, name: &str) -> Result<Topic, MetaError> {
        self.run("delete_topic", |tx| async move {
            let topic = read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))?;
            tx.clear(&keys::topic_name(name)).await?;
            tx.clear(&keys::topic(topic.id)).await?;
            let (b, e) = keys::partitions(topic.id);
            tx.clear_range(&b, &e).await?;
            let (b, e) = keys::indexes_of_topic(topic.id);
            tx.clear_range(&b, &e).await?;
            Ok(topic)
        })
        .await
    }

    /// Raises a topic's partition count to `total`.
    pub async fn add_partitions(&self, name: &str, total: u32) -> Result<Topic, MetaError> {
        validate_partition_count(name, total)?;
        self.run("add_partitions", |tx| async move {
            let mut topic = read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))?;
            if total <= topic.partitions {
                return Err(MetaError::InvalidArgument(format!(
                    "topic `{name}` has {} partitions; the new count {total} must be larger",
                    topic.partitions
                )));
            }
            topic.partitions = total;
            tx.set(&keys::topic(topic.id), &encode_topic(&topic)?)
                .await?;
            Ok(topic)
        })
        .await
    }

    /// The state of every partition of a topic.
    pub async fn partition_states(&self, topic: &Topic) -> Result<Vec<PartitionState>, MetaError> {
        self.run("partition_states", |tx| async move {
            let (b, e) = keys::partitions(topic.id);
            let mut states: Vec<PartitionState> = (0..topic.partitions)
                .map(|partition| PartitionState {
                    partition,
                    ..PartitionState::default()
                })
                .collect();
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let (_, _, _, p): (String, String, u64, u32) = decode("partition key", &k)?;
                if let Some(slot) = states.get_mut(p as usize) {
                    *slot = decode_state(p, Some(&v))?;
                }
            }
            Ok(states)
        })
        .await
    }

    /// The state of one partition.
    pub async fn partition_state(
        &self,
        topic_id: u64,
        partition: u32,
    ) -> Result<PartitionState, MetaError> {
        self.run("partition_state", |tx| async move {
            read_state(&tx, topic_id, partition).await
        })
        .await
    }

    /// Commits a written segment object: assigns each batch the next dense offsets of its
    /// partition, writes one index entry per run of adjacent batches of a partition, and
    /// advances high watermarks — all in one transaction.
    ///
    /// Idempotent by object key: rerunning the commit of an object that is already committed
    /// (after an unknown commit result, say) returns the first run's outcomes and changes
    /// nothing.
    pub async fn commit_segment(
        &self,
        seg: &SegmentCommit,
    ) -> Result<Vec<BatchOutcome>, MetaError> {
        if seg.batches.is_empty() {
            return Err(MetaError::InvalidArgument(
                "a segment commit needs at least one batch".into(),
            ));
        }
        let estimate = commit_size_estimate(seg);
        if estimate > MAX_COMMIT_BYTES {
            return Err(MetaError::TooLarge(format!(
                "committing segment {} ({} batches) would write about {estimate} bytes of \
                 metadata, over the {MAX_COMMIT_BYTES}-byte transaction budget; seal segments \
                 with fewer batches",
                seg.object_key,
                seg.batches.len()
            )));
        }
        let now = self.clock.now_ms();
        let outcomes = self
            .run("commit_segment", |tx| async move {
                if tx.get(&keys::object(&seg.object_key)).await?.is_some() {
                    return read_outcomes(&tx, seg).await;
                }
                write_segment(&tx, seg, now).await
            })
            .await?;
        self.commits.send_modify(|n| *n += 1);
        Ok(outcomes)
    }

    /// Reads a partition's state and up to `limit` index entries covering `offset` onwards,
    /// in one snapshot.
    pub async fn read_index(
        &self,
        topic_id: u64,
        partition: u32,
        offset: i64,
        limit: usize,
    ) -> Result<(PartitionState, Vec<IndexEntry>), MetaError> {
        self.run("read_index", |tx| async move {
            let state = read_state(&tx, topic_id, partition).await?;
            let (b, e) = keys::index_from(topic_id, partition, offset.saturating_add(1));
            let rows = tx.get_range(&b, &e, limit, false).await?;
            let entries = rows
                .iter()
                .map(|(k, v)| decode_index(topic_id, partition, k, v))
                .collect::<Result<Vec<_>, _>>()?;
            Ok((state, entries))
        })
        .await
    }

    /// Waits until the partition's high watermark passes `offset` or `max_wait` elapses, and
    /// returns the state last read. Commits through this `Metadata` wake waiters at once;
    /// commits by other processes are seen through [`KvStore::watch`].
    pub async fn wait_for_offset(
        &self,
        topic_id: u64,
        partition: u32,
        offset: i64,
        max_wait: Duration,
    ) -> Result<PartitionState, MetaError> {
        let deadline = Instant::now() + max_wait;
        let mut rx = self.commits.subscribe();
        let key = keys::partition(topic_id, partition);
        loop {
            rx.borrow_and_update();
            let state = self.partition_state(topic_id, partition).await?;
            let now = Instant::now();
            if state.next_offset > offset || now >= deadline {
                return Ok(state);
            }
            let remaining = deadline - now;
            tokio::select! {
                _ = rx.changed() => {}
                r = self.kv.watch(&key, remaining) => r?,
            }
        }
    }
}

/// Bytes a segment commit writes, counted the way [`write_segment`] writes them: one index
/// entry per run of adjacent batches of a partition, one state per partition, 8 bytes of
/// outcome per batch, plus keys.
fn commit_size_estimate(seg: &SegmentCommit) -> usize {
    let mut partitions = std::collections::HashSet::new();
    let mut runs = 0usize;
    let mut prev: Option<&crate::CommitBatch> = None;
    for b in &seg.batches {
        partitions.insert((b.topic_id, b.partition));
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
    runs * (32 + 48 + seg.object_key.len())
        + partitions.len() * (32 + 40)
        + seg.batches.len() * 8
        + (seg.batches.len() / RESULTS_PER_CHUNK + 2) * key
}

async fn read_outcomes(tx: &Tx, seg: &SegmentCommit) -> Result<Vec<BatchOutcome>, MetaError> {
    let (b, e) = keys::object_results(&seg.object_key);
    let mut out = Vec::with_capacity(seg.batches.len());
    for (_, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
        for chunk in v.chunks_exact(8) {
            out.push(BatchOutcome::decode(keys::decode_i64_le(chunk)));
        }
    }
    if out.len() != seg.batches.len() {
        return Err(MetaError::Corrupt {
            key: format!("object {}", seg.object_key),
            reason: format!(
                "committed with {} batches, asked again with {}",
                out.len(),
                seg.batches.len()
            ),
        });
    }
    Ok(out)
}

async fn flush_run(tx: &Tx, run: Run, object_key: &str) -> Result<(), MetaError> {
    let v: IndexValue = (
        object_key.to_string(),
        run.position,
        run.length,
        run.base_offset,
        run.batch_count,
        run.min_ts,
        run.max_ts,
    );
    tx.set(
        &keys::index(run.topic_id, run.partition, run.end_offset),
        &value(&v),
    )
    .await?;
    Ok(())
}

async fn write_segment(
    tx: &Tx,
    seg: &SegmentCommit,
    now: i64,
) -> Result<Vec<BatchOutcome>, MetaError> {
    let mut topics: HashMap<u64, Option<Topic>> = HashMap::new();
    let mut states: HashMap<(u64, u32), PartitionState> = HashMap::new();
    let mut outcomes = Vec::with_capacity(seg.batches.len());
    let mut run: Option<Run> = None;
    for b in &seg.batches {
        if b.record_count == 0 || b.length == 0 {
            return Err(MetaError::InvalidArgument(format!(
                "segment {} holds an empty batch at byte {}",
                seg.object_key, b.position
            )));
        }
        if let std::collections::hash_map::Entry::Vacant(e) = topics.entry(b.topic_id) {
            e.insert(read_topic_by_id(tx, b.topic_id).await?);
        }
        let alive = matches!(topics.get(&b.topic_id), Some(Some(t)) if b.partition < t.partitions);
        if !alive {
            if let Some(r) = run.take() {
                flush_run(tx, r, &seg.object_key).await?;
            }
            outcomes.push(BatchOutcome::TopicGone);
            continue;
        }
        let key = (b.topic_id, b.partition);
        if let std::collections::hash_map::Entry::Vacant(e) = states.entry(key) {
            e.insert(read_state(tx, b.topic_id, b.partition).await?);
        }
        let Some(state) = states.get_mut(&key) else {
            continue;
        };
        let base = state.next_offset;
        state.next_offset += i64::from(b.record_count);
        state.bytes += u64::from(b.length);
        outcomes.push(BatchOutcome::Committed { base_offset: base });
        let extends = matches!(&run, Some(r) if r.topic_id == b.topic_id
            && r.partition == b.partition
            && r.position + r.length == b.position
            && r.end_offset == base);
        if extends {
            if let Some(r) = run.as_mut() {
                r.end_offset = state.next_offset;
                r.length += u64::from(b.length);
                r.batch_count += 1;
                r.min_ts = r.min_ts.min(b.min_timestamp_ms);
                r.max_ts = r.max_ts.max(b.max_timestamp_ms);
            }
        } else {
            if let Some(r) = run.take() {
                flush_run(tx, r, &seg.object_key).await?;
            }
            state.index_entries += 1;
            run = Some(Run {
                topic_id: b.topic_id,
                partition: b.partition,
                base_offset: base,
                end_offset: state.next_offset,
                position: b.position,
                length: u64::from(b.length),
                batch_count: 1,
                min_ts: b.min_timestamp_ms,
                max_ts: b.max_timestamp_ms,
            });
        }
    }
    if let Some(r) = run.take() {
        flush_run(tx, r, &seg.object_key).await?;
    }
    for ((topic_id, partition), state) in &states {
        tx.set(
            &keys::partition(*topic_id, *partition),
            &encode_state(state),
        )
        .await?;
    }
    tx.set(
        &keys::object(&seg.object_key),
        &value(&("live", now, seg.object_size, seg.batches.len() as u64)),
    )
    .await?;
    for (i, chunk) in outcomes.chunks(RESULTS_PER_CHUNK).enumerate() {
        let bytes: Vec<u8> = chunk
            .iter()
            .flat_map(|o| o.encode().to_le_bytes())
            .collect();
        tx.set(&keys::object_result(&seg.object_key, i as u32), &bytes)
            .await?;
    }
    Ok(outcomes)
}
