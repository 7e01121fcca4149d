//! The read path: index lookup, object byte ranges through a `moka` cache of verified
//! frames, long-poll at the high watermark, and stored batch bytes returned as they are.
//!
//! Segments are laid out grouped by partition, so one index entry is one contiguous byte
//! range: a fetch costs one range GET per entry it touches (none when cached), and
//! concurrent fetches of the same range share one GET.
//!
//! Compacted offsets live in Parquet files: the footer (cached) gives each row group's
//! offset range from the `offset` column statistics, and only the row groups that hold
//! wanted offsets are read (their column chunks' byte ranges). Their records are re-framed
//! as lz4 batches with the same CRC, so a consumer sees the same response shape whether an
//! offset was compacted or not.

use std::sync::Arc;
use std::time::Duration;

use cairn_compactor::parquet_file::{self, StoredRecord};
use cairn_metadata::{EntryKind, IndexEntry, MetaError, Metadata, Topic};
use cairn_proto::v1::{Compression, FetchedBatch, Header, Record, RecordBatch};
use cairn_proto::{Frame, compress, frame_crc, parse_frames};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::ArrowReaderMetadata;
use prost::Message;

use crate::AgentError;

/// Index entries read per fetch; more than enough to fill `max_bytes` in practice.
const ENTRIES_PER_FETCH: usize = 64;

type ChunkKey = (String, u64, u64);
/// A Parquet row group: object key and row group index.
type GroupKey = (String, usize);
/// Records per re-framed batch from Parquet.
const PARQUET_BATCH_RECORDS: usize = 2_000;

/// Reads committed batches.
#[derive(Clone)]
pub(crate) struct Reader {
    store: Arc<dyn ObjectStore>,
    metadata: Metadata,
    cache: moka::future::Cache<ChunkKey, Arc<Vec<Frame>>>,
    footers: moka::future::Cache<String, ArrowReaderMetadata>,
    groups: moka::future::Cache<GroupKey, Arc<Vec<FetchedBatch>>>,
    metrics: Arc<crate::metrics::AgentMetrics>,
}

/// What a fetch returns.
pub(crate) struct Fetched {
    pub(crate) batches: Vec<FetchedBatch>,
    pub(crate) high_watermark: i64,
    pub(crate) start_offset: i64,
}

impl Reader {
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        metadata: Metadata,
        cache_bytes: u64,
        metrics: Arc<crate::metrics::AgentMetrics>,
    ) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &ChunkKey, v: &Arc<Vec<Frame>>| {
                let bytes: usize = v.iter().map(|f| f.payload.len() + 64).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        let footers = moka::future::Cache::builder().max_capacity(4_096).build();
        let groups = moka::future::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &GroupKey, v: &Arc<Vec<FetchedBatch>>| {
                let bytes: usize = v.iter().map(|b| b.data.len() + 64).sum();
                u32::try_from(bytes).unwrap_or(u32::MAX)
            })
            .build();
        Reader {
            store,
            metadata,
            cache,
            footers,
            groups,
            metrics,
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
        // Parquet entries come first (the compacted prefix): serve only from the first one,
        // and only its row groups that hold wanted offsets.
        if let Some(first) = chosen.first()
            && first.kind == EntryKind::Parquet
        {
            let batches = self.parquet_batches(first, offset, max_bytes).await?;
            return Ok(Fetched {
                batches,
                high_watermark: state.next_offset,
                start_offset: state.start_offset,
            });
        }
        let chunks = futures::future::try_join_all(chosen.iter().map(|e| self.chunk(e))).await?;
        let mut batches = Vec::new();
        let mut bytes = 0usize;
        'entries: for (entry, frames) in chosen.iter().zip(chunks) {
            let mut base = entry.base_offset;
            for f in frames.iter() {
                let end = base + i64::from(f.header.record_count);
                if end > offset {
                    if !batches.is_empty() && bytes + f.payload.len() > max_bytes {
                        break 'entries;
                    }
                    bytes += f.payload.len();
                    batches.push(FetchedBatch {
                        base_offset: base,
                        record_count: f.header.record_count,
                        compression: f.header.compression as i32,
                        crc32c: f.header.crc32c,
                        data: f.payload.clone(),
                    });
                }
                base = end;
            }
        }
        Ok(Fetched {
            batches,
            high_watermark: state.next_offset,
            start_offset: state.start_offset,
        })
    }

    /// Batches from a Parquet entry, from the first row group holding `offset` on, up to
    /// about `max_bytes` (at least one row group).
    async fn parquet_batches(
        &self,
        e: &IndexEntry,
        offset: i64,
        max_bytes: usize,
    ) -> Result<Vec<FetchedBatch>, AgentError> {
        let store = self.store.clone();
        let entry = e.clone();
        let meta = self
            .footers
            .try_get_with(e.object_key.clone(), async move {
                parquet_file::open(store, &entry.object_key, entry.length)
                    .await
                    .map_err(|err| AgentError::Storage(err.to_string()))
            })
            .await
            .map_err(|err: Arc<AgentError>| err.share())?;
        let ranges = parquet_file::row_group_offsets(meta.metadata())
            .map_err(|err| AgentError::Storage(format!("{}: {err}", e.object_key)))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for (i, &(_, last)) in ranges.iter().enumerate() {
            if last < offset {
                continue;
            }
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            let batches = self.row_group(e, &meta, i).await?;
            for b in batches.iter() {
                if b.base_offset + i64::from(b.record_count) <= offset {
                    continue;
                }
                bytes += b.data.len();
                out.push(b.clone());
            }
        }
        Ok(out)
    }

    /// One row group re-framed as batches, from the cache or its byte ranges.
    async fn row_group(
        &self,
        e: &IndexEntry,
        meta: &ArrowReaderMetadata,
        group: usize,
    ) -> Result<Arc<Vec<FetchedBatch>>, AgentError> {
        let key = (e.object_key.clone(), group);
        if let Some(hit) = self.groups.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let store = self.store.clone();
        let (object, size, meta) = (e.object_key.clone(), e.length, meta.clone());
        self.groups
            .try_get_with(key, async move {
                let records =
                    parquet_file::read_row_groups(store, &object, size, &meta, vec![group])
                        .await
                        .map_err(|err| AgentError::Storage(err.to_string()))?;
                let mut records = records.into_iter();
                let mut batches = Vec::new();
                loop {
                    let chunk: Vec<StoredRecord> =
                        records.by_ref().take(PARQUET_BATCH_RECORDS).collect();
                    if chunk.is_empty() {
                        return Ok(Arc::new(batches));
                    }
                    batches.push(reframe(&object, chunk)?);
                }
            })
            .await
            .map_err(|err: Arc<AgentError>| err.share())
    }

    /// The verified frames of one index entry, from the cache or one range GET.
    async fn chunk(&self, e: &IndexEntry) -> Result<Arc<Vec<Frame>>, AgentError> {
        let key = (e.object_key.clone(), e.position, e.length);
        if let Some(hit) = self.cache.get(&key).await {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let store = self.store.clone();
        let entry = e.clone();
        self.cache
            .try_get_with(key, async move {
                let path = Path::from(entry.object_key.as_str());
                let range = entry.position..entry.position + entry.length;
                let bytes = store.get_range(&path, range).await.map_err(|err| {
                    AgentError::Storage(format!(
                        "GET {} bytes {}..{} failed: {err}",
                        entry.object_key,
                        entry.position,
                        entry.position + entry.length
                    ))
                })?;
                let frames = parse_frames(bytes).map_err(|source| AgentError::Corrupt {
                    object: entry.object_key.clone(),
                    source,
                })?;
                let records: i64 = frames
                    .iter()
                    .map(|f| i64::from(f.header.record_count))
                    .sum();
                if records != entry.end_offset - entry.base_offset
                    || frames.len() != entry.batch_count as usize
                {
                    return Err(AgentError::Corrupt {
                        object: entry.object_key.clone(),
                        source: cairn_proto::FormatError::Invalid {
                            what: "index entry",
                            reason: format!(
                                "offsets {}..{} ({} batches) but the bytes hold {records} records in {} batches",
                                entry.base_offset,
                                entry.end_offset,
                                entry.batch_count,
                                frames.len()
                            ),
                        },
                    });
                }
                Ok(Arc::new(frames))
            })
            .await
            .map_err(|e: Arc<AgentError>| e.share())
    }
}

/// Records read from Parquet as one lz4 batch, framed and checksummed like a stored batch.
fn reframe(object: &str, records: Vec<StoredRecord>) -> Result<FetchedBatch, AgentError> {
    let corrupt = |source| AgentError::Corrupt {
        object: object.to_string(),
        source,
    };
    let first = records.first().map_or(0, |r| r.offset);
    let count = records.len();
    let batch = RecordBatch {
        records: records
            .into_iter()
            .map(|r| Record {
                timestamp_ms: r.timestamp_ms,
                key: r.key,
                value: r.value,
                headers: r
                    .headers
                    .into_iter()
                    .map(|(key, value)| Header { key, value })
                    .collect(),
            })
            .collect(),
    };
    let data = compress(Compression::Lz4, &batch.encode_to_vec()).map_err(corrupt)?;
    let record_count = u32::try_from(count).map_err(|_| {
        corrupt(cairn_proto::FormatError::Invalid {
            what: "row group",
            reason: "too many records".into(),
        })
    })?;
    Ok(FetchedBatch {
        base_offset: first,
        record_count,
        compression: Compression::Lz4 as i32,
        crc32c: frame_crc(record_count, Compression::Lz4, &data),
        data,
    })
}
