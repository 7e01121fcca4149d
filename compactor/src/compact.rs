//! Compaction of one partition: plan a run of index entries, claim the partition, read the
//! run's records (range GETs of segment frames, or row groups of smaller Parquet files),
//! write one Parquet file and swap it in with one metadata transaction.
//!
//! Two kinds of run: *fresh* (the segment entries after the compacted prefix, once they
//! hold `min_bytes` or their oldest record is `max_age` old) and *merge* (at least
//! `merge_fan_in` consecutive Parquet files each under half the target size, merged into
//! one up to the target: levels, like an LSM tree).

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_metadata::{
    CompactedFile, CompactionClaim, EntryKind, IndexEntry, MAX_SWAP_ENTRIES, MetaError, Topic,
};
use cairn_proto::v1::SegmentFooter;
use cairn_proto::{FRAME_HEADER_LEN, SegmentReader, decode_records, parse_frames};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

use crate::parquet_file::{self, StoredRecord};
use crate::{Compactor, CompactorError, Progress};

/// Range GETs in flight while reading a run.
const READ_CONCURRENCY: usize = 16;
/// Bytes of a segment's tail fetched to find its footer.
const FOOTER_GUESS: u64 = 64 << 10;

/// A planned run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) entries: Vec<IndexEntry>,
    pub(crate) merge: bool,
}

impl Run {
    pub(crate) fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.length).sum()
    }
}

/// The outcome of trying to compact a partition.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// Another compactor holds the partition.
    Busy,
    /// Nothing is due.
    NothingDue,
    /// A run was compacted (or lost its race: see the report).
    Done { merge: bool, report: RunReport },
}

/// What compacting one run did.
#[derive(Debug, Clone, Default)]
pub(crate) struct RunReport {
    pub(crate) bytes_in: u64,
    pub(crate) bytes_out: u64,
    pub(crate) records: u64,
    pub(crate) entries_replaced: u64,
    pub(crate) conflict: bool,
}

/// Producer stamps of a segment's batches by frame position: (producer id, base sequence).
pub(crate) type Stamps = HashMap<u64, (u64, i64)>;

impl Compactor {
    /// The next run of `topic`/`partition` that is due, if any.
    pub(crate) async fn plan(
        &self,
        topic: &Topic,
        partition: u32,
    ) -> Result<Option<Run>, CompactorError> {
        let c = &self.config;
        let (_, entries) = self
            .metadata
            .read_index(topic.id, partition, 0, MAX_SWAP_ENTRIES * 2)
            .await?;
        // Merge: consecutive small Parquet files.
        let small = |e: &IndexEntry| e.kind == EntryKind::Parquet && e.length < c.target_bytes / 2;
        let mut i = 0;
        while i < entries.len() {
            if !small(&entries[i]) {
                i += 1;
                continue;
            }
            let mut run = Vec::new();
            let mut bytes = 0;
            while i < entries.len()
                && small(&entries[i])
                && bytes + entries[i].length <= c.target_bytes
                && run.len() < MAX_SWAP_ENTRIES
            {
                bytes += entries[i].length;
                run.push(entries[i].clone());
                i += 1;
            }
            if run.len() >= c.merge_fan_in.max(2) {
                return Ok(Some(Run {
                    entries: run,
                    merge: true,
                }));
            }
        }
        // Fresh: the segment entries after the last Parquet file.
        let first_segment = entries
            .iter()
            .rposition(|e| e.kind == EntryKind::Parquet)
            .map_or(0, |p| p + 1);
        let mut run = Vec::new();
        let mut bytes = 0;
        for e in &entries[first_segment..] {
            if run.len() == MAX_SWAP_ENTRIES
                || (!run.is_empty() && bytes + e.length > c.target_bytes)
            {
                break;
            }
            bytes += e.length;
            run.push(e.clone());
        }
        let Some(oldest) = run.iter().map(|e| e.max_timestamp_ms).min() else {
            return Ok(None);
        };
        let now = self.metadata.clock().now_ms();
        let age_ms = i64::try_from(c.max_age.as_millis()).unwrap_or(i64::MAX);
        let full = bytes >= c.min_bytes || run.len() == MAX_SWAP_ENTRIES;
        if full || now.saturating_sub(oldest) >= age_ms {
            Ok(Some(Run {
                entries: run,
                merge: false,
            }))
        } else {
            Ok(None)
        }
    }

    /// Claims the partition, re-plans under the claim and compacts the run.
    pub(crate) async fn compact_partition(
        &self,
        topic: &Topic,
        partition: u32,
        progress: &(dyn Fn(Progress<'_>) + Sync),
    ) -> Result<Attempt, CompactorError> {
        let Some(claim) = self
            .metadata
            .claim_compaction(topic.id, partition, &self.config.owner, self.config.lease)
            .await?
        else {
            return Ok(Attempt::Busy);
        };
        let result = async {
            let Some(run) = self.plan(topic, partition).await? else {
                return Ok(Attempt::NothingDue);
            };
            let r = self
                .compact_run(topic, partition, claim, &run, progress)
                .await?;
            Ok(Attempt::Done {
                merge: run.merge,
                report: r,
            })
        }
        .await;
        if let Err(e) = self.metadata.release_compaction(claim).await {
            tracing::warn!(error = %e, "could not release a compaction claim; it expires");
        }
        result
    }

    async fn compact_run(
        &self,
        topic: &Topic,
        partition: u32,
        claim: CompactionClaim,
        run: &Run,
        progress: &(dyn Fn(Progress<'_>) + Sync),
    ) -> Result<RunReport, CompactorError> {
        let mut report = RunReport {
            bytes_in: run.bytes(),
            ..RunReport::default()
        };
        let records = self.read_entries(&run.entries, progress).await?;
        report.records = records.len() as u64;
        let file = parquet_file::write(
            self.store.clone(),
            &topic.name,
            partition,
            claim.token,
            &records,
        )
        .await?;
        drop(records);
        report.bytes_out = file.size;
        let compacted = CompactedFile {
            object_key: file.path.clone(),
            size: file.size,
            row_groups: file.row_groups,
            min_timestamp_ms: file.min_timestamp_ms,
            max_timestamp_ms: file.max_timestamp_ms,
        };
        match self
            .metadata
            .swap_compacted(claim, &run.entries, &compacted)
            .await
        {
            Ok(()) => report.entries_replaced = run.entries.len() as u64,
            // The run changed under us (retention, another compactor after our lease ran
            // out, a deleted topic): the file is an orphan the collector removes later.
            Err(MetaError::Fenced { message, .. }) => {
                tracing::info!(%message, file = %file.path, "compaction lost a race; file left for collection");
                report.conflict = true;
            }
            Err(e) => return Err(e.into()),
        }
        Ok(report)
    }

    /// The records of `entries` (segment frames or Parquet files), in offset order.
    pub(crate) async fn read_entries(
        &self,
        entries: &[IndexEntry],
        progress: &(dyn Fn(Progress<'_>) + Sync),
    ) -> Result<Vec<StoredRecord>, CompactorError> {
        let segments: Vec<IndexEntry> = entries
            .iter()
            .filter(|e| e.kind == EntryKind::Segment)
            .cloned()
            .collect();
        let stamps = self.footers(&segments).await?;
        let chunks: Vec<Vec<StoredRecord>> = futures::stream::iter(entries.iter())
            .map(|e| {
                let stamps = stamps.get(&e.object_key).cloned().unwrap_or_default();
                async move {
                    let r = match e.kind {
                        EntryKind::Segment => self.read_segment_entry(e, &stamps).await?,
                        EntryKind::Parquet => self.read_parquet_entry(e).await?,
                    };
                    progress(Progress::BytesRead(e.length));
                    Ok::<_, CompactorError>(r)
                }
            })
            .buffered(READ_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(chunks.into_iter().flatten().collect())
    }

    async fn read_parquet_entry(
        &self,
        e: &IndexEntry,
    ) -> Result<Vec<StoredRecord>, CompactorError> {
        let meta = parquet_file::open(self.store.clone(), &e.object_key, e.length).await?;
        let groups = (0..meta.metadata().num_row_groups()).collect();
        let r = parquet_file::read_row_groups(
            self.store.clone(),
            &e.object_key,
            e.length,
            &meta,
            groups,
        )
        .await?;
        check_offsets(e, &r)?;
        Ok(r)
    }

    /// The producer stamps of every segment the entries point into: one suffix GET per
    /// segment, cached, since a segment holds many partitions and each partition's run
    /// (and each `cairn sql` partition) would otherwise fetch the same footer again.
    async fn footers(
        &self,
        entries: &[IndexEntry],
    ) -> Result<HashMap<String, Arc<Stamps>>, CompactorError> {
        let mut objects: Vec<&str> = entries.iter().map(|e| e.object_key.as_str()).collect();
        objects.sort_unstable();
        objects.dedup();
        futures::stream::iter(objects)
            .map(|o| async move {
                if let Some(stamps) = self.stamps.get(o).await {
                    return Ok((o.to_string(), stamps));
                }
                let footer = self.footer(o).await?;
                let stamps: Arc<Stamps> = Arc::new(
                    footer
                        .batches
                        .iter()
                        .filter(|b| b.producer_id != 0)
                        .map(|b| (b.position, (b.producer_id, b.base_sequence)))
                        .collect(),
                );
                self.stamps.insert(o.to_string(), stamps.clone()).await;
                Ok::<_, CompactorError>((o.to_string(), stamps))
            })
            .buffer_unordered(READ_CONCURRENCY)
            .try_collect()
            .await
    }

    async fn footer(&self, object: &str) -> Result<SegmentFooter, CompactorError> {
        let path = Path::from(object);
        let suffix = |n: u64| GetOptions {
            range: Some(GetRange::Suffix(n)),
            ..GetOptions::default()
        };
        let get = |n: u64| {
            let path = path.clone();
            async move {
                let r = self
                    .store
                    .get_opts(&path, suffix(n))
                    .await
                    .map_err(|e| CompactorError::Store(format!("GET tail of {object}: {e}")))?;
                r.bytes()
                    .await
                    .map_err(|e| CompactorError::Store(format!("GET tail of {object}: {e}")))
            }
        };
        let corrupt =
            |e: cairn_proto::FormatError| CompactorError::Format(format!("{object}: {e}"));
        let mut tail: Bytes = get(FOOTER_GUESS).await?;
        let need = SegmentReader::footer_len(&tail).map_err(corrupt)? + SegmentReader::TRAILER_LEN;
        if need > tail.len() {
            tail = get(need as u64).await?;
        }
        SegmentReader::footer_from_tail(&tail).map_err(corrupt)
    }

    async fn read_segment_entry(
        &self,
        e: &IndexEntry,
        stamps: &Stamps,
    ) -> Result<Vec<StoredRecord>, CompactorError> {
        let range = e.position..e.position + e.length;
        let bytes = self
            .store
            .get_range(&Path::from(e.object_key.as_str()), range.clone())
            .await
            .map_err(|err| {
                CompactorError::Store(format!("GET {} bytes {range:?}: {err}", e.object_key))
            })?;
        let corrupt = |err: cairn_proto::FormatError| {
            CompactorError::Format(format!("{} bytes {range:?}: {err}", e.object_key))
        };
        let mut out = Vec::new();
        let mut offset = e.base_offset;
        let mut position = e.position;
        for f in parse_frames(bytes).map_err(corrupt)? {
            let frame_len = FRAME_HEADER_LEN as u64 + u64::from(f.header.payload_len);
            let stamp = stamps.get(&position).copied();
            let batch = decode_records(f.header.compression, f.header.record_count, f.payload)
                .map_err(corrupt)?;
            for (i, r) in batch.records.into_iter().enumerate() {
                out.push(StoredRecord {
                    offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                    headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                    producer: stamp.map(|(id, seq)| (id, seq + i as i64)),
                });
                offset += 1;
            }
            position += frame_len;
        }
        check_offsets(e, &out)?;
        Ok(out)
    }
}

/// The records read for an entry must be exactly its offsets.
fn check_offsets(e: &IndexEntry, records: &[StoredRecord]) -> Result<(), CompactorError> {
    let first = records.first().map(|r| r.offset);
    let last = records.last().map(|r| r.offset);
    if records.len() as i64 != e.end_offset - e.base_offset
        || first != Some(e.base_offset)
        || last != Some(e.end_offset - 1)
    {
        return Err(CompactorError::Format(format!(
            "{} holds {} records ({first:?}..={last:?}) but its index entry says {}..{}",
            e.object_key,
            records.len(),
            e.base_offset,
            e.end_offset
        )));
    }
    Ok(())
}
