//! Compaction of one partition: plan a run of index entries, claim the partition, read the
//! run's records (range GETs of segment frames, or row groups of smaller Parquet files),
//! write one Parquet file and swap it in with one metadata transaction.
//!
//! Two kinds of run: *fresh* (the segment entries after the compacted prefix, once they
//! hold `min_bytes` or their oldest record is `max_age` old) and *merge* (at least
//! `merge_fan_in` consecutive Parquet files each under half the target size, merged into
//! one up to the target: levels, like an LSM tree). Every run drops the records below the
//! partition's start offset (moved by `delete-records`), and a Parquet file that still holds
//! some is rewritten without them (a *trim*), so the files, and the topic's table, hold only
//! readable records.

use cairn_metadata::{
    CompactedFile, CompactionClaim, EntryKind, IndexEntry, MAX_SWAP_ENTRIES, MetaError, Topic,
};
use cairn_storage::parquet::{self as parquet_file, StoredRecord};
use cairn_storage::segment::parse_frames;
use cairn_storage::{FormatError, StorageError};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::{Compactor, CompactorError, Progress};

/// Range GETs in flight while reading a run.
const READ_CONCURRENCY: usize = 16;

/// A planned run.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) entries: Vec<IndexEntry>,
    pub(crate) merge: bool,
    /// The partition's start offset when the run was planned: records below it are dropped.
    pub(crate) start_offset: i64,
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

impl Compactor {
    /// The next run of `topic`/`partition` that is due, if any.
    pub(crate) async fn plan(
        &self,
        topic: &Topic,
        partition: u32,
    ) -> Result<Option<Run>, CompactorError> {
        Ok(self.plan_with_backlog(topic, partition).await?.0)
    }

    /// [`Compactor::plan`], with the partition's backlog: the bytes of its segment entries
    /// after its last Parquet file (among the first index entries read for planning).
    pub(crate) async fn plan_with_backlog(
        &self,
        topic: &Topic,
        partition: u32,
    ) -> Result<(Option<Run>, u64), CompactorError> {
        let c = &self.config;
        let (state, entries) = self
            .metadata
            .read_index(topic.id, partition, 0, MAX_SWAP_ENTRIES * 2)
            .await?;
        let start_offset = state.start_offset;
        // The segment entries after the last Parquet file: the backlog, and the fresh run.
        let first_segment = entries
            .iter()
            .rposition(|e| e.kind == EntryKind::Parquet)
            .map_or(0, |p| p + 1);
        let backlog: u64 = entries[first_segment..].iter().map(|e| e.length).sum();
        // Trim: a Parquet file still holding records below the start offset.
        if let Some(first) = entries.first()
            && first.kind == EntryKind::Parquet
            && first.base_offset < start_offset
        {
            let run = Run {
                entries: vec![first.clone()],
                merge: false,
                start_offset,
            };
            return Ok((Some(run), backlog));
        }
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
                return Ok((
                    Some(Run {
                        entries: run,
                        merge: true,
                        start_offset,
                    }),
                    backlog,
                ));
            }
        }
        // Fresh: the segment entries after the last Parquet file.
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
            return Ok((None, backlog));
        };
        let now = self.metadata.clock().now_ms();
        let age_ms = i64::try_from(c.max_age.as_millis()).unwrap_or(i64::MAX);
        let full = bytes >= c.min_bytes || run.len() == MAX_SWAP_ENTRIES;
        if full || now.saturating_sub(oldest) >= age_ms {
            Ok((
                Some(Run {
                    entries: run,
                    merge: false,
                    start_offset,
                }),
                backlog,
            ))
        } else {
            Ok((None, backlog))
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
        let mut records = self.read_entries(&run.entries, progress).await?;
        records.retain(|r| r.offset >= run.start_offset);
        let Some(first_offset) = records.first().map(|r| r.offset) else {
            // Every covered entry ends after the start offset (entries wholly before it are
            // removed with the move), so this is a stale plan: try again next cycle.
            report.conflict = true;
            return Ok(report);
        };
        report.records = records.len() as u64;
        let file = parquet_file::write(
            self.store.clone(),
            &topic.name,
            partition,
            claim.token,
            &records,
            &crate::table::value_columns(Some(topic)),
        )
        .await?;
        drop(records);
        report.bytes_out = file.size;
        let compacted = CompactedFile {
            object_key: file.path.clone(),
            first_offset,
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
        let chunks: Vec<Vec<StoredRecord>> = futures::stream::iter(entries.iter())
            .map(|e| async move {
                let r = match e.kind {
                    EntryKind::Segment => self.read_segment_entry(e).await?,
                    EntryKind::Parquet => self.read_parquet_entry(e).await?,
                };
                progress(Progress::BytesRead(e.length));
                Ok::<_, CompactorError>(r)
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
        let file = parquet_file::open(self.store.clone(), &e.object_key, e.length).await?;
        let mut out = Vec::new();
        for group in 0..file.row_groups.len() {
            out.extend(
                parquet_file::read_row_group(
                    self.store.clone(),
                    &e.object_key,
                    e.length,
                    &file,
                    group,
                )
                .await?,
            );
        }
        check_offsets(e, &out)?;
        Ok(out)
    }

    /// The records of one segment entry: one range GET, every frame verified and opened;
    /// producer stamps come from the frame headers.
    async fn read_segment_entry(
        &self,
        e: &IndexEntry,
    ) -> Result<Vec<StoredRecord>, CompactorError> {
        let range = e.position..e.position + e.length;
        let key = e.object_key.as_str();
        let bytes = self
            .store
            .get_range(&Path::from(key), range)
            .await
            .map_err(|err| StorageError::store("GET", key, err))?;
        let mut out = Vec::new();
        let mut offset = e.base_offset;
        for f in parse_frames(bytes).map_err(|err| StorageError::corrupt(key, err))? {
            let stamp = f.header.producer;
            let records = cairn_proto::open_frame(&f.header, f.payload)
                .map_err(|err| StorageError::corrupt(key, err))?;
            for (i, r) in records.into_iter().enumerate() {
                out.push(StoredRecord {
                    offset,
                    timestamp_ms: r.timestamp_ms,
                    key: r.key,
                    value: r.value,
                    headers: r.headers.into_iter().map(|h| (h.key, h.value)).collect(),
                    producer: stamp.map(|p| (p.producer_id, p.base_sequence + i as i64)),
                });
                offset += 1;
            }
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
        return Err(StorageError::corrupt(
            e.object_key.as_str(),
            FormatError::Invalid {
                what: "index entry",
                reason: format!(
                    "the object holds {} records ({first:?}..={last:?}) but its index entry says {}..{}",
                    records.len(),
                    e.base_offset,
                    e.end_offset
                ),
            },
        )
        .into());
    }
    Ok(())
}
