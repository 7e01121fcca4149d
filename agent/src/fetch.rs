//! The read path: index lookup, object byte ranges through a `moka` cache of verified
//! frames, long-poll at the high watermark, and stored batch bytes returned as they are.
//!
//! Segments are laid out grouped by partition, so one index entry is one contiguous byte
//! range: a fetch costs one range GET per entry it touches (none when cached), and
//! concurrent fetches of the same range share one GET.
//!
//! Compacted offsets live in Parquet files: the footer (cached) gives each row group's
//! offset range from the `offset` column statistics, and only the row groups that hold
//! wanted offsets are read (their column chunks' byte ranges) and verified against the
//! checksums the compactor wrote. Their records are re-framed in the topic's codec, so a
//! consumer sees the same response shape whether an offset was compacted or not.

use std::sync::Arc;
use std::time::Duration;

use cairn_metadata::{EntryKind, IndexEntry, MetaError, Metadata, Topic};
use cairn_proto::v2::FetchedFrame;
use cairn_storage::parquet::{self as parquet_file, OpenedFile};
use cairn_storage::segment::parse_frames;
use cairn_storage::{FormatError, StorageError, StoredFrame};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::AgentError;
use crate::convert::codec_to_proto;

/// Index entries read per fetch; more than enough to fill `max_bytes` in practice.
const ENTRIES_PER_FETCH: usize = 64;

/// Bytes read per step while looking for the first record at or after a time.
const TIME_SCAN_BYTES: usize = 1 << 20;

type ChunkKey = (String, u64, u64);
/// A Parquet row group: object key and row group index.
type GroupKey = (String, usize);
/// Records per re-framed frame from Parquet.
const PARQUET_BATCH_RECORDS: usize = 2_000;

/// Reads committed batches.
#[derive(Clone)]
pub(crate) struct Reader {
    /// The read path's store: through the zone read cache when there is one.
    store: Arc<dyn ObjectStore>,
    /// The agent's own store when `store` goes through the zone cache: bytes that fail
    /// their checks after coming through the zone are read again from here.
    direct: Option<Arc<dyn ObjectStore>>,
    metadata: Metadata,
    cache: moka::future::Cache<ChunkKey, Arc<Vec<StoredFrame>>>,
    footers: moka::future::Cache<String, Arc<OpenedFile>>,
    groups: moka::future::Cache<GroupKey, Arc<Vec<FetchedFrame>>>,
    metrics: Arc<crate::metrics::AgentMetrics>,
    memory: FetchMemory,
}

/// The bytes fetches may be reading at once (`fetch_memory_bytes`): a fetch reserves its
/// `max_bytes` once it has something to read and holds the reservation until its response
/// is built, so many large fetches queue instead of taking the agent's memory.
#[derive(Debug, Clone)]
pub(crate) struct FetchMemory {
    permits: Arc<tokio::sync::Semaphore>,
    gauges: Arc<crate::service::AgentGauges>,
}

impl FetchMemory {
    /// Reservations are counted in KiB, so any size fits the semaphore's permits.
    const UNIT: u64 = 1024;

    pub(crate) fn new(bytes: u64, gauges: Arc<crate::service::AgentGauges>) -> Self {
        let units = usize::try_from(bytes / Self::UNIT)
            .unwrap_or(usize::MAX)
            .min(tokio::sync::Semaphore::MAX_PERMITS);
        FetchMemory {
            permits: Arc::new(tokio::sync::Semaphore::new(units)),
            gauges,
        }
    }

    /// Waits until `bytes` may be read.
    async fn reserve(&self, bytes: usize) -> tokio::sync::OwnedSemaphorePermit {
        let units = u32::try_from((bytes as u64).div_ceil(Self::UNIT).max(1)).unwrap_or(u32::MAX);
        if let Ok(p) = self.permits.clone().try_acquire_many_owned(units) {
            return p;
        }
        let waiting = &self.gauges.fetches_waiting_for_memory;
        waiting.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let permit = self.permits.clone().acquire_many_owned(units).await;
        waiting.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        // The semaphore is never closed.
        permit.unwrap_or_else(|_| unreachable!("the fetch memory semaphore is never closed"))
    }
}

/// What a fetch returns.
pub(crate) struct Fetched {
    pub(crate) frames: Vec<FetchedFrame>,
    pub(crate) high_watermark: i64,
    pub(crate) start_offset: i64,
    /// The fetch memory this response holds until it is dropped.
    pub(crate) _memory: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Reader {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        direct: Option<Arc<dyn ObjectStore>>,
        metadata: Metadata,
        cache_bytes: u64,
        metrics: Arc<crate::metrics::AgentMetrics>,
        memory: FetchMemory,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &ChunkKey, v: &Arc<Vec<StoredFrame>>| {
                let bytes: usize = v.iter().map(|f| f.payload.len() + 128).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        let footers = moka::future::Cache::builder().max_capacity(4_096).build();
        let groups = moka::future::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &GroupKey, v: &Arc<Vec<FetchedFrame>>| {
                let bytes: usize = v.iter().map(|f| f.payload.len() + 128).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Reader {
            store,
            direct,
            metadata,
            cache,
            footers,
            groups,
            metrics,
            memory,
        }
    }

    /// Batches of `topic`/`partition` from `offset`, up to about `max_bytes`, waiting up to
    /// `max_wait` at the high watermark.
    pub(crate) async fn fetch(
        &self,
        topic: &Topic,
        partition: u32,
        offset: i64,
        max_bytes: usize,
        max_wait: Duration,
    ) -> Result<Fetched, AgentError> {
        let (mut state, mut entries) = self
            .metadata
            .read_index(topic.id, partition, offset, ENTRIES_PER_FETCH)
            .await?;
        if offset < state.start_offset || offset > state.next_offset {
            return Err(MetaError::OffsetOutOfRange {
                topic: topic.name.clone(),
                partition,
                offset,
                start: state.start_offset,
                hwm: state.next_offset,
            }
            .into());
        }
        if entries.is_empty() && !max_wait.is_zero() {
            state = self
                .metadata
                .wait_for_offset(topic.id, partition, offset, max_wait)
                .await?;
            if state.next_offset > offset {
                (state, entries) = self
                    .metadata
                    .read_index(topic.id, partition, offset, ENTRIES_PER_FETCH)
                    .await?;
            }
        }
        let mut chosen = Vec::new();
        let mut total = 0u64;
        for e in entries {
            // A Parquet entry is served alone (it may be far larger than one response).
            if !chosen.is_empty()
                && (total + e.length > max_bytes as u64 || e.kind == EntryKind::Parquet)
            {
                break;
            }
            total += e.length;
            chosen.push(e);
        }
        // Something to read: reserve this fetch's share of the agent's fetch memory.
        let memory = match chosen.is_empty() {
            true => None,
            false => Some(self.memory.reserve(max_bytes).await),
        };
        // Parquet entries come first (the compacted prefix): serve only from the first one,
        // and only its row groups that hold wanted offsets.
        if let Some(first) = chosen.first()
            && first.kind == EntryKind::Parquet
        {
            let frames = self.parquet_frames(topic, first, offset, max_bytes).await?;
            return Ok(Fetched {
                frames,
                high_watermark: state.next_offset,
                start_offset: state.start_offset,
                _memory: memory,
            });
        }
        let chunks = futures::future::try_join_all(chosen.iter().map(|e| self.chunk(e))).await?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        'entries: for (entry, frames) in chosen.iter().zip(chunks) {
            let mut base = entry.base_offset;
            for f in frames.iter() {
                let end = base + i64::from(f.header.record_count);
                if end > offset {
                    if !out.is_empty() && bytes + f.payload.len() > max_bytes {
                        break 'entries;
                    }
                    bytes += f.payload.len();
                    out.push(FetchedFrame {
                        base_offset: base,
                        header: Some(f.header),
                        payload: f.payload.clone(),
                    });
                }
                base = end;
            }
        }
        Ok(Fetched {
            frames: out,
            high_watermark: state.next_offset,
            start_offset: state.start_offset,
            _memory: memory,
        })
    }

    /// The offset of the first record of `topic`/`partition` whose timestamp is at or after
    /// `ts_ms` (Kafka's offset for a time), or the high watermark when none is: the index
    /// names the first entry whose newest record is that recent, and that entry's records
    /// are read to find the exact one (CreateTime need not grow with offsets, so the entry
    /// may begin with older records).
    pub(crate) async fn offset_for_time(
        &self,
        topic: &Topic,
        partition: u32,
        ts_ms: i64,
    ) -> Result<i64, AgentError> {
        let (found, hwm) = self.record_for_time(topic, partition, ts_ms).await?;
        Ok(found.map_or(hwm, |(offset, _)| offset))
    }

    /// The offset and timestamp of the first record of `topic`/`partition` whose timestamp
    /// is at or after `ts_ms` (`None` when there is none), and the high watermark.
    pub(crate) async fn record_for_time(
        &self,
        topic: &Topic,
        partition: u32,
        ts_ms: i64,
    ) -> Result<(Option<(i64, i64)>, i64), AgentError> {
        let mut from = 0;
        loop {
            let (state, entry) = self
                .metadata
                .entry_for_time(topic.id, partition, from, ts_ms)
                .await?;
            let Some(entry) = entry else {
                return Ok((None, state.next_offset));
            };
            let mut offset = entry.base_offset.max(state.start_offset);
            while offset < entry.end_offset {
                let fetched = self
                    .fetch(topic, partition, offset, TIME_SCAN_BYTES, Duration::ZERO)
                    .await?;
                let before = offset;
                for f in fetched.frames {
                    let header = f.header.ok_or_else(|| {
                        AgentError::Internal(format!(
                            "a frame of {}/{partition} at {} has no header",
                            topic.name, f.base_offset
                        ))
                    })?;
                    let records = cairn_proto::open_frame(&header, f.payload)
                        .map_err(|e| StorageError::corrupt(entry.object_key.clone(), e))?;
                    for (i, r) in records.iter().enumerate() {
                        let at = f.base_offset + i as i64;
                        if at >= offset && r.timestamp_ms >= ts_ms {
                            return Ok((Some((at, r.timestamp_ms)), fetched.high_watermark));
                        }
                    }
                    offset = offset.max(f.base_offset + records.len() as i64);
                }
                if offset == before {
                    // Nothing came back (retention removed it meanwhile): look further on.
                    break;
                }
            }
            // The entry's newest timestamp promised a record; if it is gone, the next one.
            from = entry.end_offset;
        }
    }

    /// Frames from a Parquet entry, from the first row group holding `offset` on, up to
    /// about `max_bytes` (at least one row group).
    async fn parquet_frames(
        &self,
        topic: &Topic,
        e: &IndexEntry,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<FetchedFrame>, AgentError> {
        let (store, direct) = (self.store.clone(), self.direct.clone());
        let entry = e.clone();
        let file = self
            .footers
            .try_get_with(e.object_key.clone(), async move {
                let open = |store| parquet_file::open(store, &entry.object_key, entry.length);
                retry_direct(&entry.object_key, open(store).await, direct.map(open))
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|err: Arc<StorageError>| AgentError::from((*err).clone()))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (i, &(_, last)) in file.row_groups.iter().enumerate() {
            if last < offset {
                continue;
            }
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            let frames = self.row_group(topic, e, &file, i).await?;
            for f in frames.iter() {
                let count = f.header.as_ref().map_or(0, |h| h.record_count);
                if f.base_offset + i64::from(count) <= offset {
                    continue;
                }
                bytes += f.payload.len();
                out.push(f.clone());
            }
        }
        Ok(out)
    }

    /// One row group re-framed in the topic's codec, from the cache or its byte ranges.
    async fn row_group(
        &self,
        topic: &Topic,
        e: &IndexEntry,
        file: &Arc<OpenedFile>,
        group: usize,
    ) -> Result<Arc<Vec<FetchedFrame>>, AgentError> {
        let key = (e.object_key.clone(), group);
        if let Some(hit) = self.groups.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let (store, direct) = (self.store.clone(), self.direct.clone());
        let (object, size, file) = (e.object_key.clone(), e.length, file.clone());
        let codec = codec_to_proto(topic.codec);
        self.groups
            .try_get_with(key, async move {
                let read = |store| {
                    parquet_file::read_row_group_frames(
                        store,
                        &object,
                        size,
                        &file,
                        group,
                        codec,
                        PARQUET_BATCH_RECORDS,
                    )
                };
                retry_direct(&object, read(store).await, direct.map(read))
                    .await
                    .map(Arc::new)
            })
            .await
            .map_err(|err: Arc<StorageError>| AgentError::from((*err).clone()))
    }

    /// The verified frames of one index entry, from the cache or one range GET.
    async fn chunk(&self, e: &IndexEntry) -> Result<Arc<Vec<StoredFrame>>, AgentError> {
        let key = (e.object_key.clone(), e.position, e.length);
        if let Some(hit) = self.cache.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let (store, direct) = (self.store.clone(), self.direct.clone());
        let entry = e.clone();
        self.cache
            .try_get_with(key, async move {
                let read = |store| read_entry(store, &entry);
                retry_direct(&entry.object_key, read(store).await, direct.map(read)).await
            })
            .await
            .map_err(|e: Arc<StorageError>| AgentError::from((*e).clone()))
    }
}

/// The verified frames of one index entry: one range GET from `store`.
async fn read_entry(
    store: Arc<dyn ObjectStore>,
    entry: &IndexEntry,
) -> Result<Arc<Vec<StoredFrame>>, StorageError> {
    let path = Path::from(entry.object_key.as_str());
    let range = entry.position..entry.position + entry.length;
    let bytes = store
        .get_range(&path, range)
        .await
        .map_err(|err| StorageError::store("GET", entry.object_key.as_str(), err))?;
    let frames = parse_frames(bytes)
        .map_err(|source| StorageError::corrupt(entry.object_key.as_str(), source))?;
    let records: i64 = frames
        .iter()
        .map(|f| i64::from(f.header.record_count))
        .sum();
    if records != entry.end_offset - entry.base_offset || frames.len() != entry.batch_count as usize
    {
        return Err(StorageError::corrupt(
            entry.object_key.as_str(),
            FormatError::Invalid {
                what: "index entry",
                reason: format!(
                    "offsets {}..{} ({} frames) but the bytes hold {records} records in {} frames",
                    entry.base_offset,
                    entry.end_offset,
                    entry.batch_count,
                    frames.len()
                ),
            },
        ));
    }
    Ok(Arc::new(frames))
}

/// `first`, read through the zone cache; when its bytes failed their checks and `direct`
/// (the same read from the agent's own store) is given, that read's result instead: bytes
/// from another agent are never the only evidence that an object is corrupt.
pub(crate) async fn retry_direct<T>(
    object: &str,
    first: Result<T, StorageError>,
    direct: Option<impl Future<Output = Result<T, StorageError>>>,
) -> Result<T, StorageError> {
    match (first, direct) {
        (Err(e @ StorageError::Corrupt { .. }), Some(again)) => {
            tracing::warn!(object, error = %e, "bytes read through the zone cache failed their checks; reading the store directly");
            again.await
        }
        (r, _) => r,
    }
}

/// Frames as a gRPC consumer gets them: a Kafka batch (stored as a Kafka producer sent it)
/// is decoded and framed again as Cairn records in the topic's codec, at the same offsets;
/// Cairn frames pass untouched.
pub(crate) fn cairn_frames(
    topic: &Topic,
    frames: Vec<FetchedFrame>,
) -> Result<Vec<FetchedFrame>, AgentError> {
    use cairn_proto::v2::PayloadFormat;
    frames
        .into_iter()
        .map(|f| {
            let Some(header) = f
                .header
                .filter(|h| h.format == PayloadFormat::KafkaRecords as i32)
            else {
                return Ok(f);
            };
            let at = format!("{}/{} at offset {}", topic.name, topic.id, f.base_offset);
            let records = cairn_proto::open_frame(&header, f.payload)
                .map_err(|e| StorageError::corrupt(at.clone(), e))?;
            let frame = cairn_proto::build_frame(records, codec_to_proto(topic.codec), None)
                .map_err(|e| StorageError::Encode {
                    key: at,
                    source: Arc::new(FormatError::Frame(e)),
                })?;
            Ok(FetchedFrame {
                base_offset: f.base_offset,
                header: frame.header,
                payload: frame.payload,
            })
        })
        .collect()
}
