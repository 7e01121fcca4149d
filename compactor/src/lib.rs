//! The compactor role: applies topic retention and collects garbage — segment objects no
//! index entry references any more (after a grace period longer than any fetch) and orphans
//! that no commit ever referenced (a PUT whose commit failed, an agent that died). Any number
//! of compactors may run; every step is idempotent. Parquet compaction and SQL are the next
//! steps of this crate; [`parquet_file`] is the table layout they will write.

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

pub mod parquet_file;

use cairn_metadata::{MetaError, Metadata};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// Where agents write segment objects (see the agent's object keys).
const SEGMENTS_PREFIX: &str = "segments";

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
}

impl Default for CompactorConfig {
    fn default() -> Self {
        CompactorConfig {
            grace: Duration::from_secs(600),
            max_deletes_per_cycle: 1_000,
            interval: Duration::from_secs(30),
        }
    }
}

/// What one cycle did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CycleReport {
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
    /// Orphan objects (never committed) deleted.
    pub orphans_deleted: u64,
    /// Orphan candidates younger than the grace period, left for a later cycle.
    pub orphans_waiting: u64,
}

/// An error of a compaction cycle; every one is retried by the next cycle.
#[derive(Debug, thiserror::Error)]
pub enum CompactorError {
    /// A metadata operation failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The object store failed.
    #[error("object store: {0}")]
    Store(String),
    /// Records could not be laid out or written as Parquet.
    #[error("parquet: {0}")]
    Format(String),
}

/// The compactor over one object store and metadata store.
#[derive(Debug, Clone)]
pub struct Compactor {
    store: Arc<dyn ObjectStore>,
    metadata: Metadata,
    config: CompactorConfig,
}

impl Compactor {
    /// A compactor; time comes from `metadata`'s clock.
    pub fn new(store: Arc<dyn ObjectStore>, metadata: Metadata, config: CompactorConfig) -> Self {
        Compactor {
            store,
            metadata,
            config,
        }
    }

    /// One cycle: retention of every topic, then collection of dead and orphan objects.
    /// `progress` is told what the cycle is doing (for a progress display).
    pub async fn run_once(
        &self,
        progress: &(dyn Fn(&str) + Sync),
    ) -> Result<CycleReport, CompactorError> {
        let mut report = CycleReport::default();
        for t in self.metadata.list_topics().await? {
            progress(&format!("retention of {}", t.name));
            let r = match self.metadata.apply_retention(&t.name).await {
                Ok(r) => r,
                Err(MetaError::TopicNotFound(_)) => continue,
                Err(e) => return Err(e.into()),
            };
            report.topics += 1;
            report.retention_entries_removed += r.entries_removed;
            report.retention_bytes_removed += r.bytes_removed;
        }
        let mut budget = self.config.max_deletes_per_cycle;
        let mut from = String::new();
        loop {
            progress(&format!(
                "collecting unreferenced objects ({} deleted)",
                report.objects_deleted
            ));
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
        progress("looking for orphan objects");
        let now_ms = self.metadata.clock().now_ms();
        let grace_ms = self.config.grace.as_millis() as i64;
        let prefix = Path::from(SEGMENTS_PREFIX);
        let mut listing = self.store.list(Some(&prefix));
        let mut candidates = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = meta.map_err(|e| CompactorError::Store(format!("LIST {prefix}: {e}")))?;
            candidates.push(meta);
        }
        for meta in candidates {
            if budget == 0 {
                break;
            }
            let key = meta.location.to_string();
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
        tracing::info!(?report, "compactor cycle done");
        Ok(report)
    }

    async fn delete(&self, key: &str) -> Result<(), CompactorError> {
        match self.store.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(CompactorError::Store(format!("DELETE {key}: {e}"))),
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
