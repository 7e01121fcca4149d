//! The metadata conformance suite: generic async checks that every backend must pass. The
//! crate's tests run them against SQLite and memory, and against FoundationDB when
//! `CAIRN_FDB_CLUSTER_FILE` names a cluster. Each function takes a fresh, empty store and
//! panics (it is test code) on the first violation.
//!
//! The suite is test code, compiled only with the `test-util` cargo feature (other crates'
//! tests enable it for the helpers [`spec`] and [`segment`]). One file per area; this file
//! holds the shared helpers and [`run_all`].

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod cluster;
mod commit;
mod compaction;
mod groups;
mod kv;
mod lifecycle;
mod lost_reply;
mod postgres_server;
mod producers;
mod share;
mod topics;

pub use cluster::agent_registry;
pub use commit::{
    atomic_groups, commit_and_index, commit_faults, commit_too_large, concurrent_commits,
    conditional_appends, legacy_partition_counts, wait_for_offset,
};
pub use compaction::compaction;
pub use groups::consumer_groups;
pub use kv::{kv_atomic_add, kv_basics, kv_limits, kv_serializable};
pub use lifecycle::lifecycle;
pub use lost_reply::{lost_replies, lost_reply_races, maybe_committed_flag};
pub use postgres_server::TempPostgres;
pub use producers::{idempotent_producers, producer_expiry};
pub use share::share_groups;
pub use topics::{error_kinds, topics};

use std::sync::Arc;
use std::time::Duration;

use crate::{
    BatchOutcome, Codec, CommitBatch, ErrorKind, FaultyKv, FenceReason, KvError, KvStore,
    ManualClock, MetaError, Metadata, OffsetReset, PRODUCER_WINDOW, ProducerId, ProducerStamp,
    Rejection, RetryPolicy, SegmentCommit, ShareAction, TopicColumn, TopicConfigChange, TopicSpec,
    ValueSchema, transact,
};

/// Fails unless `err` is a fence for `reason`.
#[track_caller]
fn assert_fenced(err: &MetaError, reason: FenceReason) {
    assert!(
        matches!(err, MetaError::Fenced { reason: r, .. } if *r == reason),
        "expected a {reason:?} fence, got {err}"
    );
}

fn metadata(kv: Arc<dyn KvStore>) -> Metadata {
    Metadata::new(kv, Arc::new(ManualClock::new(1_700_000_000_000)))
}

/// A topic spec with defaults.
pub fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        codec: Codec::Zstd,
        retention_ms: -1,
        retention_bytes: -1,
        value_schema: None,
    }
}

/// A segment whose batches are laid out back to back, `(topic_id, partition, records)` each.
pub fn segment(object_key: &str, batches: &[(u64, u32, u32)]) -> SegmentCommit {
    let mut position = 10;
    let batches = batches
        .iter()
        .map(|&(topic_id, partition, record_count)| {
            let b = CommitBatch {
                min_timestamp_ms: 1,
                max_timestamp_ms: 2,
                ..CommitBatch::plain(topic_id, partition, position, 100, record_count)
            };
            position += 100;
            b
        })
        .collect();
    SegmentCommit {
        object_key: object_key.into(),
        object_size: position + 100,
        batches,
    }
}

fn offsets(outcomes: &[BatchOutcome]) -> Vec<i64> {
    outcomes
        .iter()
        .map(|o| match o {
            BatchOutcome::Committed { base_offset } => *base_offset,
            _ => -1,
        })
        .collect()
}

/// A batch of `records` records for `(topic_id, partition)` with optional stamp, expected
/// offset and atomic group.
#[derive(Debug, Clone, Copy)]
pub struct B {
    /// Topic id.
    pub topic_id: u64,
    /// Partition.
    pub partition: u32,
    /// Record count.
    pub records: u32,
    /// Idempotence stamp: producer, epoch, base sequence.
    pub stamp: Option<(ProducerId, i64)>,
    /// Expected offset.
    pub expected: Option<i64>,
    /// Atomic group.
    pub group: Option<u32>,
}

impl B {
    /// A plain batch.
    pub fn new(topic_id: u64, partition: u32, records: u32) -> Self {
        B {
            topic_id,
            partition,
            records,
            stamp: None,
            expected: None,
            group: None,
        }
    }
    /// With an idempotence stamp.
    pub fn seq(mut self, p: ProducerId, base_sequence: i64) -> Self {
        self.stamp = Some((p, base_sequence));
        self
    }
    /// With an expected offset.
    pub fn expect(mut self, offset: i64) -> Self {
        self.expected = Some(offset);
        self
    }
    /// In an atomic group.
    pub fn group(mut self, g: u32) -> Self {
        self.group = Some(g);
        self
    }
}

/// A segment of stamped batches laid out back to back.
pub fn stamped_segment(object_key: &str, batches: &[B]) -> SegmentCommit {
    let mut seg = segment(
        object_key,
        &batches
            .iter()
            .map(|b| (b.topic_id, b.partition, b.records))
            .collect::<Vec<_>>(),
    );
    for (c, b) in seg.batches.iter_mut().zip(batches) {
        c.producer = b.stamp.map(|(p, base_sequence)| ProducerStamp {
            producer_id: p.id,
            epoch: p.epoch,
            base_sequence,
        });
        c.expected_offset = b.expected;
        c.atomic_group = b.group;
    }
    seg
}

/// Runs every check, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn KvStore>>,
{
    kv_basics(fresh().await).await;
    kv_atomic_add(fresh().await).await;
    kv_limits(fresh().await).await;
    kv_serializable(fresh().await).await;
    topics(fresh().await).await;
    commit_and_index(fresh().await).await;
    commit_faults(fresh().await).await;
    commit_too_large(fresh().await).await;
    legacy_partition_counts(fresh().await).await;
    concurrent_commits(fresh().await).await;
    wait_for_offset(fresh().await).await;
    error_kinds(fresh().await).await;
    idempotent_producers(fresh().await).await;
    conditional_appends(fresh().await).await;
    atomic_groups(fresh().await).await;
    producer_expiry(fresh().await).await;
    consumer_groups(fresh().await).await;
    share_groups(fresh().await).await;
    lifecycle(fresh().await).await;
    compaction(fresh().await).await;
    maybe_committed_flag(fresh().await).await;
    lost_replies(&mut fresh).await;
    lost_reply_races(&mut fresh).await;
    agent_registry(fresh().await).await;
}
