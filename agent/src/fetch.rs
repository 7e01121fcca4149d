//! The read path: index lookup, object byte ranges through a `moka` cache of verified
//! frames, long-poll at the high watermark, and stored batch bytes returned as they are.
//!
//! Segments are laid out grouped by partition, so one index entry is one contiguous byte
//! range: a fetch costs one range GET per entry it touches (none when cached), and
//! concurrent fetches of the same range share one GET.

use std::sync::Arc;
use std::time::Duration;

use cairn_metadata::{IndexEntry, MetaError, Metadata, Topic};
use cairn_proto::v1::FetchedBatch;
use cairn_proto::{Frame, parse_frames};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

use crate::AgentError;

/// Index entries read per fetch; more than enough to fill `max_bytes` in practice.
const ENTRIES_PER_FETCH: usize = 64;

type ChunkKey = (String, u64, u64);

/// Reads committed batches.
#[derive(Clone)]
pub(crate) struct Reader {
    store: Arc<dyn ObjectStore>,
    metadata: Metadata,
    cache: moka::future::Cache<ChunkKey, Arc<Vec<Frame>>>,
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
        Reader {
            store,
            metadata,
            cache,
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
            if !chosen.is_empty() && total + e.length > max_bytes as u64 {
                break;
            }
            total += e.length;
            chosen.push(e);
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
