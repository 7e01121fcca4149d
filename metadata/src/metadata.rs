//! [`Metadata`]: Cairn's metadata logic (topics, segment commits, the offset index) written
//! once over any [`KvStore`], with the retry loop that makes every operation a serializable
//! transaction.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::watch;

use crate::clock::{RandomSource, SyncedClock, SystemRandom};
use crate::commit::{MAX_COMMIT_BYTES, commit_size_estimate, read_outcomes, write_segment};
use crate::keys::{self, decode, value};
use crate::kv::{KvStore, KvTransaction, RetryPolicy};
use crate::types::{
    ValueSchema, validate_partition_count, validate_topic_name, validate_value_schema,
};
use crate::watermarks::Hub;
use crate::{
    BatchOutcome, Clock, EntryKind, IndexEntry, KvError, MetaError, PartitionState, SegmentCommit,
    Topic, TopicConfigChange, TopicSpec,
};

/// Index entries read per transaction while looking for a time.
const ENTRIES_PER_TIME_SCAN: usize = 1000;

/// A transaction handle shared between the retry loop and the operation's closure.
pub(crate) type Tx = Arc<dyn KvTransaction>;

/// Whether an earlier attempt of a transaction may have committed: true once any earlier
/// attempt ended with [`KvError::CommitUnknown`] (a lost commit reply), as FoundationDB's
/// `db.run(|trx, maybe_committed| …)` says. An operation that is not naturally idempotent
/// checks, when it is true, whether its own earlier write is already there (by a token it
/// recorded in what it wrote, or an id it chose before the loop) and answers from it instead
/// of applying itself twice.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaybeCommitted(
    /// True once an earlier attempt's commit result was unknown.
    pub bool,
);

impl MaybeCommitted {
    /// True when an earlier attempt may have committed.
    pub fn get(self) -> bool {
        self.0
    }
}

/// Runs `f` in a transaction and commits it, rerunning both on retryable errors (conflicts,
/// unknown commit results, transient unavailability) with jittered exponential backoff.
/// `f` may run several times; its second argument says whether an earlier attempt may have
/// committed (its commit result was unknown), in which case `f` must recognise its own
/// earlier write rather than apply itself again.
pub async fn transact<T, F, Fut>(
    kv: &dyn KvStore,
    policy: &RetryPolicy,
    what: &'static str,
    f: F,
) -> Result<T, MetaError>
where
    F: FnMut(Tx, MaybeCommitted) -> Fut,
    Fut: Future<Output = Result<T, MetaError>>,
{
    transact_counted(kv, policy, what, None, f).await
}

/// [`transact`], counting retries in `retries`.
async fn transact_counted<T, F, Fut>(
    kv: &dyn KvStore,
    policy: &RetryPolicy,
    what: &'static str,
    retries: Option<&AtomicU64>,
    mut f: F,
) -> Result<T, MetaError>
where
    F: FnMut(Tx, MaybeCommitted) -> Fut,
    Fut: Future<Output = Result<T, MetaError>>,
{
    let mut backoff = policy.initial_backoff;
    let mut attempt = 0u32;
    let mut maybe_committed = MaybeCommitted(false);
    loop {
        attempt += 1;
        let result = async {
            let tx: Tx = Arc::from(kv.begin().await?);
            let v = f(tx.clone(), maybe_committed).await?;
            tx.commit().await?;
            Ok::<T, MetaError>(v)
        }
        .await;
        match result {
            Err(MetaError::Kv(e)) if e.is_retryable() && attempt < policy.max_attempts => {
                // Once an attempt may have committed, every later one must assume so: the
                // flag never goes back to false, even if a later attempt merely conflicts.
                if matches!(e, KvError::CommitUnknown { .. }) {
                    maybe_committed = MaybeCommitted(true);
                }
                tracing::debug!(what, attempt, error = %e, "retrying metadata transaction");
                if let Some(r) = retries {
                    r.fetch_add(1, Ordering::Relaxed);
                }
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

/// What an earlier attempt of the same operation saw or chose, kept across the retry loop's
/// attempts (the closure runs once per attempt), so that a rerun after a lost commit reply
/// can tell its own earlier write from someone else's.
#[derive(Debug)]
pub(crate) struct Memo<T>(std::sync::Mutex<Option<T>>);

impl<T: Clone> Memo<T> {
    pub(crate) fn new() -> Self {
        Memo(std::sync::Mutex::new(None))
    }

    /// Remembers `v` (replacing what an earlier attempt remembered).
    pub(crate) fn set(&self, v: T) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
    }

    /// What the latest earlier attempt remembered.
    pub(crate) fn get(&self) -> Option<T> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A clock measurement against the store whose round trip took longer than this (ms) is
/// discarded: the store's reading could be anywhere in it.
pub const MAX_CLOCK_SYNC_RTT_MS: i64 = 1_000;

/// Cairn's metadata operations over a transactional KV store.
#[derive(Debug, Clone)]
pub struct Metadata {
    kv: Arc<dyn KvStore>,
    /// `synced`, as the clock every operation reads.
    clock: Arc<dyn Clock>,
    synced: Arc<SyncedClock>,
    random: Arc<dyn RandomSource>,
    retry: RetryPolicy,
    commits: Arc<watch::Sender<u64>>,
    retries: Arc<AtomicU64>,
    /// Fetches waiting at a high watermark, and the one poller that wakes them.
    hub: Arc<Hub>,
    /// Set once the store reported its bytes damaged: every later operation is refused.
    damaged: Arc<std::sync::OnceLock<KvError>>,
}

/// Decodes `(p, topic, partition)`: start and next offset, and the byte and entry counts as
/// they stood before they moved to atomic counters (0 once a writer folded them in). The
/// result's `bytes`/`index_entries` are those legacy counts only, not the totals.
fn decode_position(partition: u32, v: Option<&[u8]>) -> Result<PartitionState, MetaError> {
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
    serde_json::from_slice(v).map_err(|e| MetaError::corrupt("topic", e))
}

fn encode_topic(t: &Topic) -> Result<Vec<u8>, MetaError> {
    serde_json::to_vec(t).map_err(|e| MetaError::corrupt(format!("topic {}", t.name), e))
}

/// An index entry as stored: object, position, length, base offset, batch count, min and
/// max timestamp, kind code. (Entries written before kinds existed lack the last field and
/// are segment entries.)
pub(crate) type IndexValue = (String, u64, u64, i64, u32, i64, i64, u32);
type IndexValueV0 = (String, u64, u64, i64, u32, i64, i64);

pub(crate) fn encode_index(e: &IndexEntry) -> Vec<u8> {
    let v: IndexValue = (
        e.object_key.clone(),
        e.position,
        e.length,
        e.base_offset,
        e.batch_count,
        e.min_timestamp_ms,
        e.max_timestamp_ms,
        e.kind.code(),
    );
    value(&v)
}

/// Decodes a stored index value (either layout).
pub(crate) fn decode_index_value(v: &[u8]) -> Result<IndexValue, MetaError> {
    match decode::<IndexValue>("index entry", v) {
        Ok(x) => Ok(x),
        Err(e) => match decode::<IndexValueV0>("index entry", v) {
            Ok((o, p, l, b, n, lo, hi)) => Ok((o, p, l, b, n, lo, hi, 0)),
            Err(_) => Err(e),
        },
    }
}

pub(crate) fn decode_index(
    topic_id: u64,
    partition: u32,
    key: &[u8],
    v: &[u8],
) -> Result<IndexEntry, MetaError> {
    let (_, _, _, _, end_offset): (String, String, u64, u32, i64) = decode("index key", key)?;
    let (object_key, position, length, base_offset, batch_count, min_ts, max_ts, kind) =
        decode_index_value(v)?;
    let kind = EntryKind::from_code(kind).ok_or_else(|| {
        MetaError::malformed(
            format!("index entry {topic_id}/{partition}/{end_offset}"),
            format!("unknown entry kind {kind}"),
        )
    })?;
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
        kind,
    })
}

/// Decodes `(tn, name)`: the topic id and the token of the `create_topic` call that wrote it
/// (0 in values written before tokens existed, which held the id alone).
fn decode_topic_name(v: &[u8]) -> Result<(u64, u64), MetaError> {
    match decode::<(u64, u64)>("topic name", v) {
        Ok(x) => Ok(x),
        Err(e) => match decode::<(u64,)>("topic name", v) {
            Ok((id,)) => Ok((id, 0)),
            Err(_) => Err(e),
        },
    }
}

/// The topic of that name; a name the rules refuse is INVALID_ARGUMENT (no topic can have
/// it), not "not found".
pub(crate) async fn read_topic(tx: &Tx, name: &str) -> Result<Option<Topic>, MetaError> {
    validate_topic_name(name)?;
    let Some(v) = tx.get(&keys::topic_name(name)).await? else {
        return Ok(None);
    };
    let (id, _) = decode_topic_name(&v)?;
    read_topic_by_id(tx, id).await
}

pub(crate) async fn read_topic_by_id(tx: &Tx, id: u64) -> Result<Option<Topic>, MetaError> {
    match tx.get(&keys::topic(id)).await? {
        Some(v) => Ok(Some(decode_topic(&v)?)),
        None => Ok(None),
    }
}

// A partition's stored bytes and index-entry count are statistics that every commit, swap,
// retention step and `delete_records` changes but that none of them (except size retention)
// decides anything on. They live in counters of their own, changed only by `atomic_add`:
// on FoundationDB an atomic add takes no read conflict, so a compaction swap, which only
// adjusts them, no longer conflicts with the commits racing it on a hot partition, and
// commits no longer rewrite them. The position (start and next offset) stays one value that
// commits read and write: the next offset decides where a batch lands, so it must be
// read-modify-write. Size retention reads the byte counter because it decides on it.

/// A partition's position: start and next offset (`bytes`/`index_entries` hold only the
/// legacy counts, see [`decode_position`]). What commits and offset checks decide on; reads
/// no counter, so concurrent atomic adds do not conflict with the reader.
pub(crate) async fn read_position(
    tx: &Tx,
    topic_id: u64,
    partition: u32,
) -> Result<PartitionState, MetaError> {
    let v = tx.get(&keys::partition(topic_id, partition)).await?;
    decode_position(partition, v.as_deref())
}

/// A partition's byte and entry counters (without the legacy counts).
pub(crate) async fn read_counters(
    tx: &Tx,
    topic_id: u64,
    partition: u32,
) -> Result<(i64, i64), MetaError> {
    let (bk, ek) = (
        keys::partition_bytes(topic_id, partition),
        keys::partition_entries(topic_id, partition),
    );
    let (bytes, entries) = futures::try_join!(tx.get(&bk), tx.get(&ek))?;
    let n = |v: Option<Vec<u8>>| v.as_deref().map_or(0, keys::decode_i64_le);
    Ok((n(bytes), n(entries)))
}

/// Adds the counters to a position read by [`read_position`]: the partition's totals.
fn with_counters(mut position: PartitionState, (bytes, entries): (i64, i64)) -> PartitionState {
    position.bytes = position.bytes.saturating_add_signed(bytes);
    position.index_entries = position.index_entries.saturating_add_signed(entries);
    position
}

/// A partition's full state: position and totals.
pub(crate) async fn read_state(
    tx: &Tx,
    topic_id: u64,
    partition: u32,
) -> Result<PartitionState, MetaError> {
    let (position, counters) = futures::try_join!(
        read_position(tx, topic_id, partition),
        read_counters(tx, topic_id, partition),
    )?;
    Ok(with_counters(position, counters))
}

/// Writes a partition's start and next offset. `loaded` is the position as read by
/// [`read_position`] in this transaction: its legacy counts, if any, are folded into the
/// counters here, once, as the value is rewritten without them.
pub(crate) async fn write_position(
    tx: &Tx,
    topic_id: u64,
    loaded: &PartitionState,
    start_offset: i64,
    next_offset: i64,
) -> Result<(), MetaError> {
    let p = loaded.partition;
    tx.set(
        &keys::partition(topic_id, p),
        &value(&(start_offset, next_offset, 0u64, 0u64)),
    )
    .await?;
    add_counters(
        tx,
        topic_id,
        p,
        delta(loaded.bytes, 0),
        delta(loaded.index_entries, 0),
    )
    .await
}

/// Changes a partition's byte and entry counters by atomic adds (a zero change writes
/// nothing).
pub(crate) async fn add_counters(
    tx: &Tx,
    topic_id: u64,
    partition: u32,
    bytes: i64,
    entries: i64,
) -> Result<(), MetaError> {
    if bytes != 0 {
        tx.atomic_add(&keys::partition_bytes(topic_id, partition), bytes)
            .await?;
    }
    if entries != 0 {
        tx.atomic_add(&keys::partition_entries(topic_id, partition), entries)
            .await?;
    }
    Ok(())
}

/// `after - before` as a signed change.
pub(crate) fn delta(after: u64, before: u64) -> i64 {
    after.wrapping_sub(before) as i64
}

impl Metadata {
    /// Metadata over `kv`, reading time from `clock` moved onto the store's clock by
    /// [`Metadata::sync_clock`].
    pub fn new(kv: Arc<dyn KvStore>, clock: Arc<dyn Clock>) -> Self {
        let synced = Arc::new(SyncedClock::new(clock));
        Metadata {
            kv,
            clock: synced.clone(),
            synced,
            random: Arc::new(SystemRandom),
            retry: RetryPolicy::default(),
            commits: Arc::new(watch::channel(0).0),
            retries: Arc::default(),
            hub: Arc::default(),
            damaged: Arc::default(),
        }
    }

    /// Replaces the random source (operating-system entropy by default), e.g. with a
    /// [`SeededRandom`](crate::SeededRandom) so a test draws the same tokens every run.
    pub fn with_random(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.random = random;
        self
    }

    /// Replaces the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Transactions retried so far (conflicts, unknown results, transient faults).
    pub fn retries(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// The underlying store.
    pub fn kv(&self) -> &Arc<dyn KvStore> {
        &self.kv
    }

    /// The clock every lease, deadline and timestamp is taken from: the injected clock
    /// plus the offset [`Metadata::sync_clock`] measured against the store.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// How far the store's clock is ahead of the injected one (ms), once measured.
    pub fn clock_offset_ms(&self) -> Option<i64> {
        self.synced.offset_ms()
    }

    /// Measures the offset between the injected clock and the store's own clock (for a
    /// store that has one, see [`KvStore::store_time_ms`]) and moves [`Metadata::clock`]
    /// by it. Processes sharing a store call this at start and then every few seconds
    /// (agents with each lease renewal, the compactor each cycle), so they judge each
    /// other's leases on one clock. A measurement whose round trip took longer than
    /// [`MAX_CLOCK_SYNC_RTT_MS`] is discarded as too imprecise. Returns the offset in use.
    pub async fn sync_clock(&self) -> Result<Option<i64>, MetaError> {
        let before = self.synced.local_ms();
        // A reading slower than the limit would be discarded anyway: do not wait for it.
        let limit = std::time::Duration::from_millis(MAX_CLOCK_SYNC_RTT_MS as u64);
        let Ok(reading) = tokio::time::timeout(limit, self.kv.store_time_ms()).await else {
            return Ok(self.synced.offset_ms());
        };
        let Some(store_ms) = reading? else {
            return Ok(None);
        };
        let after = self.synced.local_ms();
        let rtt = after.saturating_sub(before);
        if !(0..=MAX_CLOCK_SYNC_RTT_MS).contains(&rtt) {
            return Ok(self.synced.offset_ms());
        }
        let offset = store_ms.saturating_sub(before + rtt / 2);
        if self.synced.observe(offset) && offset.abs() > 1_000 {
            tracing::warn!(
                offset_ms = offset,
                backend = self.kv.name(),
                "this host's clock is off the metadata store's; leases and deadlines use the store's clock"
            );
        }
        Ok(self.synced.offset_ms())
    }

    /// A fresh operation token: drawn once per call, before the retry loop, and recorded in
    /// what the operation writes, so a rerun after a lost commit reply recognises its own
    /// write. Never 0, which marks values written before tokens existed.
    pub(crate) fn token(&self) -> u64 {
        self.random.next_u64().max(1)
    }

    pub(crate) async fn run<T, F, Fut>(&self, what: &'static str, f: F) -> Result<T, MetaError>
    where
        F: FnMut(Tx, MaybeCommitted) -> Fut,
        Fut: Future<Output = Result<T, MetaError>>,
    {
        if let Some(e) = self.damaged.get() {
            return Err(MetaError::Kv(e.clone()));
        }
        let result =
            transact_counted(self.kv.as_ref(), &self.retry, what, Some(&self.retries), f).await;
        if let Err(MetaError::Kv(e @ KvError::Damaged { .. })) = &result
            && self.damaged.set(e.clone()).is_ok()
        {
            tracing::error!(error = %e, "the metadata store is damaged: refusing every operation from now on");
        }
        result
    }

    /// Writes `value` at `key` in one transaction (the small tables: tokens, ACLs, quotas).
    pub(crate) async fn put_record(
        &self,
        what: &'static str,
        key: Vec<u8>,
        value: Vec<u8>,
    ) -> Result<(), MetaError> {
        self.run(what, |tx, _| {
            let (key, value) = (key.clone(), value.clone());
            async move {
                tx.set(&key, &value).await?;
                Ok(())
            }
        })
        .await
    }

    /// Deletes the record at `key`; false when there was none.
    pub(crate) async fn remove_record(
        &self,
        what: &'static str,
        key: Vec<u8>,
    ) -> Result<bool, MetaError> {
        self.run(what, |tx, _| {
            let key = key.clone();
            async move {
                let existed = tx.get(&key).await?.is_some();
                if existed {
                    tx.clear(&key).await?;
                }
                Ok(existed)
            }
        })
        .await
    }

    /// Every record in `range`, in key order, each decoded by `decode`.
    pub(crate) async fn list_records<T>(
        &self,
        what: &'static str,
        (begin, end): (Vec<u8>, Vec<u8>),
        decode: fn(&[u8], &[u8]) -> Result<T, MetaError>,
    ) -> Result<Vec<T>, MetaError> {
        self.run(what, |tx, _| {
            let (begin, end) = (begin.clone(), end.clone());
            async move {
                tx.get_range(&begin, &end, usize::MAX, false)
                    .await?
                    .iter()
                    .map(|(k, v)| decode(k, v))
                    .collect()
            }
        })
        .await
    }

    /// The damage the metadata store reported, if it did: from then on every operation is
    /// refused with it (no write may land on a damaged store), and readiness fails.
    pub fn damaged(&self) -> Option<KvError> {
        self.damaged.get().cloned()
    }

    /// Creates a topic with a fresh id.
    pub async fn create_topic(&self, spec: &TopicSpec) -> Result<Topic, MetaError> {
        spec.validate()?;
        let now = self.clock.now_ms();
        let token = self.token();
        self.run("create_topic", |tx, maybe| async move {
            if let Some(v) = tx.get(&keys::topic_name(&spec.name)).await? {
                // After a lost reply the name may be taken by this very call's first
                // attempt: its token says so, and the answer is that topic, not a refusal.
                let (id, by) = decode_topic_name(&v)?;
                if maybe.get()
                    && by == token
                    && let Some(topic) = read_topic_by_id(&tx, id).await?
                {
                    return Ok(topic);
                }
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
                value_schema: spec.value_schema.as_ref().map(|s| s.text.clone()),
                value_columns: spec
                    .value_schema
                    .as_ref()
                    .map(|s| s.columns.clone())
                    .unwrap_or_default(),
            };
            tx.set(&keys::topic(id), &encode_topic(&topic)?).await?;
            tx.set(&keys::topic_name(&spec.name), &value(&(id, token)))
                .await?;
            Ok(topic)
        })
        .await
    }

    /// The topic of that name.
    pub async fn topic(&self, name: &str) -> Result<Topic, MetaError> {
        self.run("topic", |tx, _| async move {
            read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))
        })
        .await
    }

    /// The topic with that id, if it still exists.
    pub async fn topic_by_id(&self, id: u64) -> Result<Option<Topic>, MetaError> {
        self.run("topic_by_id", |tx, _| async move {
            read_topic_by_id(&tx, id).await
        })
        .await
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<Topic>, MetaError> {
        self.run("list_topics", |tx, _| async move {
            let (b, e) = keys::topic_names();
            let mut topics = Vec::new();
            for (_, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let (id, _) = decode_topic_name(&v)?;
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
        let deleting: &Memo<Topic> = &Memo::new();
        self.run("delete_topic", |tx, maybe| async move {
            // After a lost reply: if the topic an earlier attempt was deleting is gone, the
            // delete happened. Answer with it, and leave alone a topic of the same name
            // created since (it has another id).
            if maybe.get()
                && let Some(earlier) = deleting.get()
                && read_topic_by_id(&tx, earlier.id).await?.is_none()
            {
                return Ok(earlier);
            }
            let topic = read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))?;
            deleting.set(topic.clone());
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

    /// Declares a topic's value schema. Its new columns are added to the topic's columns; a
    /// column of the same name must keep its type; columns it no longer declares stay, as
    /// the table's files hold them.
    pub async fn set_value_schema(
        &self,
        name: &str,
        schema: &ValueSchema,
    ) -> Result<Topic, MetaError> {
        validate_topic_name(name)?;
        validate_value_schema(schema)?;
        self.run("set_value_schema", |tx, _| async move {
            let mut topic = read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))?;
            // Idempotent: a retry after a lost reply sets the same schema again.
            topic.value_columns = topic.merged_columns(&schema.columns)?;
            topic.value_schema = Some(schema.text.clone());
            tx.set(&keys::topic(topic.id), &encode_topic(&topic)?)
                .await?;
            Ok(topic)
        })
        .await
    }

    /// Changes a topic's compression or retention (idempotent: a retry after a lost reply
    /// sets the same values again). Agents and the compactor apply it when they next read
    /// the topic: within their topic cache's lifetime.
    pub async fn alter_topic_config(
        &self,
        name: &str,
        change: &TopicConfigChange,
    ) -> Result<Topic, MetaError> {
        validate_topic_name(name)?;
        change.validate()?;
        self.run("alter_topic_config", |tx, _| async move {
            let mut topic = read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))?;
            if let Some(c) = change.codec {
                topic.codec = c;
            }
            if let Some(r) = change.retention_ms {
                topic.retention_ms = r;
            }
            if let Some(r) = change.retention_bytes {
                topic.retention_bytes = r;
            }
            tx.set(&keys::topic(topic.id), &encode_topic(&topic)?)
                .await?;
            Ok(topic)
        })
        .await
    }

    /// Raises a topic's partition count to `total`.
    pub async fn add_partitions(&self, name: &str, total: u32) -> Result<Topic, MetaError> {
        validate_partition_count(name, total)?;
        let grown = &Memo::new();
        self.run("add_partitions", |tx, maybe| async move {
            let mut topic = read_topic(&tx, name)
                .await?
                .ok_or_else(|| MetaError::TopicNotFound(name.to_string()))?;
            // After a lost reply: the topic an earlier attempt grew, now at the count asked
            // for, was grown by that attempt (or by an identical request): done.
            if maybe.get() && grown.get() == Some(topic.id) && topic.partitions == total {
                return Ok(topic);
            }
            if total <= topic.partitions {
                return Err(MetaError::InvalidArgument(format!(
                    "topic `{name}` has {} partitions; the new count {total} must be larger",
                    topic.partitions
                )));
            }
            grown.set(topic.id);
            topic.partitions = total;
            tx.set(&keys::topic(topic.id), &encode_topic(&topic)?)
                .await?;
            Ok(topic)
        })
        .await
    }

    /// The state of every partition of a topic.
    pub async fn partition_states(&self, topic: &Topic) -> Result<Vec<PartitionState>, MetaError> {
        self.run("partition_states", |tx, _| async move {
            let (b, e) = keys::partitions(topic.id);
            let mut states: Vec<PartitionState> = (0..topic.partitions)
                .map(|partition| PartitionState {
                    partition,
                    ..PartitionState::default()
                })
                .collect();
            let mut counters = vec![(0i64, 0i64); states.len()];
            // Positions `(.., p)` and their counters `(.., p, bytes|entries)`, in key order.
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                if let Ok((_, _, _, p)) = decode::<(String, String, u64, u32)>("partition key", &k)
                {
                    if let Some(slot) = states.get_mut(p as usize) {
                        *slot = decode_position(p, Some(&v))?;
                    }
                    continue;
                }
                let (_, _, _, p, which): (String, String, u64, u32, String) =
                    decode("partition counter key", &k)?;
                if let Some(c) = counters.get_mut(p as usize) {
                    match which.as_str() {
                        "bytes" => c.0 = keys::decode_i64_le(&v),
                        "entries" => c.1 = keys::decode_i64_le(&v),
                        _ => {}
                    }
                }
            }
            Ok(states
                .into_iter()
                .zip(counters)
                .map(|(s, c)| with_counters(s, c))
                .collect())
        })
        .await
    }

    /// The state of one partition.
    pub async fn partition_state(
        &self,
        topic_id: u64,
        partition: u32,
    ) -> Result<PartitionState, MetaError> {
        self.run("partition_state", |tx, _| async move {
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
            .run("commit_segment", |tx, _maybe| async move {
                // The object key is the commit's token. It is checked on every attempt, not
                // only after an unknown result: the agent may also resubmit an object whose
                // first commit it never heard back from.
                if tx.get(&keys::object(&seg.object_key)).await?.is_some() {
                    return read_outcomes(&tx, seg).await;
                }
                write_segment(&tx, seg, now).await
            })
            .await?;
        self.commits.send_modify(|n| *n += 1);
        Ok(outcomes)
    }

    /// Whether a segment object's commit went through (objects written but never committed
    /// are orphans for the garbage collector).
    pub async fn is_object_committed(&self, object_key: &str) -> Result<bool, MetaError> {
        self.run("is_object_committed", |tx, _| async move {
            Ok(tx.get(&keys::object(object_key)).await?.is_some())
        })
        .await
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
        self.run("read_index", |tx, _| async move {
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

    /// The first index entry of `topic_id`/`partition` ending after `from` that holds a
    /// record at or after `ts_ms` (its newest timestamp is at or past it), with the
    /// partition's state; `None` when no readable entry is that recent. Entries are read a
    /// bounded number per transaction. The record itself is found by reading the entry.
    pub async fn entry_for_time(
        &self,
        topic_id: u64,
        partition: u32,
        from: i64,
        ts_ms: i64,
    ) -> Result<(PartitionState, Option<IndexEntry>), MetaError> {
        let mut from = from;
        loop {
            let (state, entries) = self
                .read_index(topic_id, partition, from, ENTRIES_PER_TIME_SCAN)
                .await?;
            let Some(last) = entries.last() else {
                return Ok((state, None));
            };
            from = last.end_offset;
            if let Some(e) = entries
                .into_iter()
                .find(|e| e.end_offset > state.start_offset && e.max_timestamp_ms >= ts_ms)
            {
                return Ok((state, Some(e)));
            }
        }
    }

    /// Waits until the partition's high watermark passes `offset` or `max_wait` elapses, and
    /// returns the state last read. The wait costs no transaction: one poller per handle
    /// reads every waited-on position each tick (see `watermarks.rs`), so commits through
    /// this handle wake waiters at once and commits by other agents within a tick.
    pub async fn wait_for_offset(
        &self,
        topic_id: u64,
        partition: u32,
        offset: i64,
        max_wait: Duration,
    ) -> Result<PartitionState, MetaError> {
        let state = self.partition_state(topic_id, partition).await?;
        if state.next_offset > offset || max_wait.is_zero() {
            return Ok(state);
        }
        let mut waiter = self.hub.wait(
            &self.kv,
            &self.commits,
            topic_id,
            partition,
            state.next_offset,
        );
        let woke = tokio::time::timeout(max_wait, waiter.next_offset.wait_for(|n| *n > offset))
            .await
            .is_ok_and(|r| r.is_ok());
        drop(waiter);
        if !woke {
            return Ok(state);
        }
        self.partition_state(topic_id, partition).await
    }

    /// Fetches waiting at a high watermark through this handle right now.
    pub fn waiting_fetches(&self) -> usize {
        self.hub.waiting()
    }
}
