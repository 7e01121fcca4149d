//! The compactor role: turns each partition's run of small segment batches into Parquet
//! (and merges small Parquet files into larger ones), applies topic retention, and collects
//! garbage — objects no index entry references any more (after a grace period longer than
//! any fetch) and orphans no commit ever referenced (a PUT whose commit failed, an agent
//! that died, a compaction that lost a race). Any number of compactors may run: a partition's
//! compaction is claimed in metadata with a lease, and every step is idempotent.
//! The byte layouts (segments, the Parquet table) belong to `cairn-storage`.

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

mod compact;
mod metrics;
#[cfg(feature = "sql")]
pub mod sql;
pub mod table;

pub use metrics::CompactorMetrics;

use cairn_metadata::{MetaError, Metadata};
use cairn_storage::StorageError;
use cairn_storage::keys::OBJECT_PREFIXES;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// What a cycle is doing, for a progress display.
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A step starts.
    Step(&'a str),
    /// Compaction runs were planned: this many input bytes will be read.
    Planned {
        /// Runs planned.
        runs: u64,
        /// Input bytes of all of them.
        bytes: u64,
    },
    /// Input bytes read.
    BytesRead(u64),
}

/// Runs one partition may compact in one cycle.
const MAX_RUNS_PER_PARTITION: usize = 16;

/// Compactor tunables.
#[derive(Debug, Clone)]
pub struct CompactorConfig {
    /// How long an unreferenced or orphan object is kept before it is deleted; longer than
    /// any fetch or produce takes.
    pub grace: Duration,
    /// Most objects deleted per cycle (the rest wait for the next).
    pub max_deletes_per_cycle: usize,
    /// Pause between cycles when running continuously.
    pub interval: Duration,
    /// A partition's uncompacted batches are compacted once they hold this many bytes...
    pub min_bytes: u64,
    /// ...or their oldest record is this old.
    pub max_age: Duration,
    /// Input bytes per Parquet file (fresh runs and merges stop there).
    pub target_bytes: u64,
    /// Consecutive small Parquet files (under half the target) merged at once.
    pub merge_fan_in: usize,
    /// How long a partition's compaction claim lasts.
    pub lease: Duration,
    /// This compactor's name in claims (unique per running compactor).
    pub owner: String,
    /// Keep each topic's Delta Lake table (see [`table`]) in step with its Parquet files.
    pub tables: bool,
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            grace: Duration::from_secs(600),
            max_deletes_per_cycle: 1_000,
            interval: Duration::from_secs(30),
            min_bytes: 8 << 20,
            max_age: Duration::from_secs(600),
            target_bytes: 128 << 20,
            merge_fan_in: 8,
            lease: Duration::from_secs(300),
            owner: default_owner(),
            tables: true,
        }
    }
}

/// A claim owner name unique to this process: host, pid and start time.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "compactor".into());
    #[allow(clippy::disallowed_methods)] // a name, not a clock reading that logic depends on
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{host}-{}-{started:x}", std::process::id())
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
    /// Runs compacted into Parquet files that were swapped in.
    pub runs: u64,
    /// Of which merges of smaller Parquet files.
    pub merges: u64,
    /// Runs whose swap lost a race (their file is left for collection).
    pub conflicts: u64,
    /// Partitions skipped because another compactor holds them.
    pub claimed_elsewhere: u64,
    /// Bytes read (segment frames or Parquet files) by swapped runs.
    pub bytes_in: u64,
    /// Parquet bytes written by swapped runs.
    pub bytes_out: u64,
    /// Records written to Parquet by swapped runs.
    pub records_compacted: u64,
    /// Index entries replaced.
    pub entries_replaced: u64,
    /// Topics whose retention was applied.
    pub topics: u64,
    /// Index entries removed by retention.
    pub retention_entries_removed: u64,
    /// Bytes those entries covered.
    pub retention_bytes_removed: u64,
    /// Objects found unreferenced for the first time (deleted after the grace period).
    pub objects_marked_dead: u64,
    /// Unreferenced objects deleted.
    pub objects_deleted: u64,
    /// Runs that failed (storage or format errors; retried next cycle).
    pub failed_runs: u64,
    /// Orphan objects (never committed) deleted.
    pub orphans_deleted: u64,
    /// Orphan candidates younger than the grace period, left for a later cycle.
    pub orphans_waiting: u64,
    /// Versions committed to topics' tables.
    pub table_commits: u64,
    /// Files those versions added to tables.
    pub table_files_added: u64,
    /// Files those versions removed from tables.
    pub table_files_removed: u64,
    /// Tables whose commit failed (retried next cycle).
    pub failed_table_commits: u64,
}

/// An error of a compaction cycle; every one is retried by the next cycle.
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    /// A metadata operation failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The object store failed, or stored bytes are corrupt or missing.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A SQL query failed (parse, plan or execution).
    #[error("sql: {0}")]
    Query(String),
    /// A topic's table could not be read or committed.
    #[error(transparent)]
    Table(#[from] table::TableError),
}

/// The compactor over one object store and metadata store.
#[derive(Debug, Clone)]
pub struct Compactor {
    store: Arc<dyn ObjectStore>,
    metadata: Metadata,
    config: CompactorConfig,
    metrics: Arc<CompactorMetrics>,
    /// Per table, a fingerprint of the file set it was last seen to list (see
    /// [`table`]): an unchanged index then costs no request to the object store.
    tables_seen: Arc<std::sync::Mutex<std::collections::HashMap<String, u64>>>,
}

impl Compactor {
    /// A compactor; time comes from `metadata`'s clock.
    pub fn new(store: Arc<dyn ObjectStore>, metadata: Metadata, config: CompactorConfig) -> Self {
        Compactor {
            store,
            metadata,
            config,
            metrics: Arc::new(CompactorMetrics::new()),
            tables_seen: Arc::default(),
        }
    }

    /// The counters of every cycle so far.
    pub fn metrics(&self) -> &Arc<CompactorMetrics> {
        &self.metrics
    }

    /// One cycle: retention of every topic, compaction of every partition that is due, then
    /// collection of dead and orphan objects. `progress` is told what the cycle is doing.
    pub async fn run_once(
        &self,
        progress: &(dyn Fn(Progress<'_>) + Sync),
    ) -> Result<CycleReport, CompactorError> {
        let mut report = CycleReport::default();
        // Claims, grace periods and retention are judged on the store's clock, as the
        // agents judge them (see `Metadata::sync_clock`).
        self.metadata.sync_clock().await?;
        let topics = self.metadata.list_topics().await?;
        for t in &topics {
            progress(Progress::Step(&format!("retention of {}", t.name)));
            let r = match self.metadata.apply_retention(&t.name).await {
                Ok(r) => r,
                Err(MetaError::TopicNotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            report.topics += 1;
            report.retention_entries_removed += r.entries_removed;
            report.retention_bytes_removed += r.bytes_removed;
        }
        self.compact_all(&topics, progress, &mut report).await?;
        if self.config.tables {
            progress(Progress::Step("committing tables"));
            if let Err(e) = self.sync_tables(&topics, &mut report).await {
                tracing::warn!(error = %e, "cannot list the topics' tables; retrying next cycle");
                report.failed_table_commits += 1;
            }
        }
        self.collect(progress, &mut report).await?;
        self.metrics.record(&report);
        if let Err(e) = self.observe_lag(&topics).await {
            tracing::warn!(error = %e, "cannot read the consumer groups' lag; the gauge keeps its last value");
        }
        tracing::info!(?report, "compactor cycle done");
        Ok(report)
    }

    async fn compact_all(
        &self,
        topics: &[cairn_metadata::Topic],
        progress: &(dyn Fn(Progress<'_>) + Sync),
        report: &mut CycleReport,
    ) -> Result<(), CompactorError> {
        progress(Progress::Step("planning compaction"));
        let mut due = Vec::new();
        let (mut runs, mut bytes) = (0u64, 0u64);
        let mut backlogs = Vec::new();
        for t in topics {
            let mut backlog = 0;
            for p in 0..t.partitions {
                let (run, b) = self.plan_with_backlog(t, p).await?;
                backlog += b;
                if let Some(run) = run {
                    runs += 1;
                    bytes += run.bytes();
                    due.push((t, p));
                }
            }
            backlogs.push((t.name.clone(), backlog));
        }
        self.metrics.set_backlogs(backlogs);
        progress(Progress::Planned { runs, bytes });
        for (t, p) in due {
            progress(Progress::Step(&format!("compacting {}/{p}", t.name)));
            // A partition may have several runs due (a long backlog, then merges).
            for _ in 0..MAX_RUNS_PER_PARTITION {
                match self.compact_partition(t, p, progress).await {
                    Ok(compact::Attempt::Busy) => {
                        report.claimed_elsewhere += 1;
                        break;
                    }
                    Ok(compact::Attempt::NothingDue) => break,
                    Ok(compact::Attempt::Done { merge, report: r }) => {
                        if r.conflict {
                            report.conflicts += 1;
                            break;
                        }
                        report.runs += 1;
                        report.merges += u64::from(merge);
                        report.bytes_in += r.bytes_in;
                        report.bytes_out += r.bytes_out;
                        report.records_compacted += r.records;
                        report.entries_replaced += r.entries_replaced;
                    }
                    Err(CompactorError::Meta(MetaError::TopicNotFound(_))) => break,
                    Err(e) => {
                        tracing::warn!(topic = %t.name, partition = p, error = %e, "compaction failed; retrying next cycle");
                        report.failed_runs += 1;
                        break;
                    }
                }
            }
        }
        Ok(())
    }

    /// Sets the consumer-lag gauge: for every consumer group and topic it committed
    /// offsets in, the records between those offsets and the high watermarks.
    async fn observe_lag(&self, topics: &[cairn_metadata::Topic]) -> Result<(), MetaError> {
        let mut states = std::collections::HashMap::new();
        let mut lags = Vec::new();
        for group in self.metadata.list_groups().await? {
            let mut per_topic: std::collections::BTreeMap<String, i64> = Default::default();
            for (topic, partition, offset) in self.metadata.committed_offsets(&group).await? {
                let Some(t) = topics.iter().find(|t| t.name == topic) else {
                    continue;
                };
                if !states.contains_key(&topic) {
                    states.insert(topic.clone(), self.metadata.partition_states(t).await?);
                }
                let end = states
                    .get(&topic)
                    .and_then(|s| s.iter().find(|s| s.partition == partition))
                    .map_or(offset, |s| s.next_offset);
                *per_topic.entry(topic).or_default() += (end - offset).max(0);
            }
            lags.extend(
                per_topic
                    .into_iter()
                    .map(|(t, lag)| (group.clone(), t, lag)),
            );
        }
        self.metrics.set_lags(lags);
        Ok(())
    }

    async fn collect(
        &self,
        progress: &(dyn Fn(Progress<'_>) + Sync),
        report: &mut CycleReport,
    ) -> Result<(), CompactorError> {
        let mut budget = self.config.max_deletes_per_cycle;
        let mut from = String::new();
        loop {
            progress(Progress::Step(&format!(
                "collecting unreferenced objects ({} deleted)",
                report.objects_deleted
            )));
            let page = self.metadata.gc_scan(&from, self.config.grace).await?;
            report.objects_marked_dead += page.newly_dead;
            for object in page.deletable {
                if budget == 0 {
                    break;
                }
                self.delete(&object).await?;
                self.metadata.forget_object(&object).await?;
                report.objects_deleted += 1;
                budget -= 1;
            }
            match page.next {
                Some(next) if budget > 0 => from = next,
                _ => break,
            }
        }
        progress(Progress::Step("looking for orphan objects"));
        let now_ms = self.metadata.clock().now_ms();
        let grace_ms = self.config.grace.as_millis() as i64;
        let mut candidates = Vec::new();
        for prefix in OBJECT_PREFIXES {
            let prefix = Path::from(prefix);
            let mut listing = self.store.list(Some(&prefix));
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| StorageError::store("LIST", prefix.as_ref(), e))?;
                candidates.push(meta);
            }
        }
        for meta in candidates {
            if budget == 0 {
                break;
            }
            let key = meta.location.to_string();
            // Tables' logs are the compactor's own, not objects of the index.
            if table::is_table_log(&key) {
                continue;
            }
            if self.metadata.is_object_committed(&key).await? {
                continue;
            }
            if now_ms - meta.last_modified.timestamp_millis() < grace_ms {
                report.orphans_waiting += 1;
                continue;
            }
            // Checked again right before deleting: a commit may have landed meanwhile.
            if self.metadata.is_object_committed(&key).await? {
                continue;
            }
            self.delete(&key).await?;
            report.orphans_deleted += 1;
            budget -= 1;
        }
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), CompactorError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(StorageError::store("DELETE", key, e).into()),
        }
    }

    /// Runs cycles every `interval` until `shutdown` resolves; a failed cycle is logged and
    /// retried at the next one.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.run_once(&|_| {}).await {
                tracing::warn!(error = %e, "compactor cycle failed; retrying next cycle");
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(self.config.interval) => {}
            }
        }
    }
}
