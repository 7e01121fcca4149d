//! One Delta Lake table per topic, over the compacted Parquet files, so any engine (Spark,
//! DuckDB, polars, pyarrow through `deltalake`, Trino) reads exactly the live records.
//!
//! The table lives at the topic's Parquet directory, `topics/<topic>/`, with its log in
//! `topics/<topic>/_delta_log/`; the partition is the table's partition column (the
//! `partition=<p>/` directories, not stored in the files). The index in metadata stays the
//! truth: after each cycle's compaction the compactor *reconciles* the table with it — reads
//! the latest snapshot, then every partition's Parquet entries, and commits one version that
//! removes the files the index no longer lists (merged, trimmed, removed by retention or
//! `delete-records`, or of a deleted topic) and adds the ones it lists that the table lacks.
//! A snapshot therefore never lists a record twice or one that is gone; it may trail the
//! index by a cycle. Reconciling is idempotent, so a compactor that dies between its index
//! swap and its table commit leaves nothing to repair, and concurrent compactors race only
//! for the log's next version (a put-if-absent): the loser reloads and recomputes, so no file
//! is lost either way.
//!
//! Old versions stay readable for the grace period: their files are deleted only that long
//! after the index dropped them, and the log's retention is set to the grace period, so
//! expired log entries are cleaned up with each checkpoint (every [`CHECKPOINT_INTERVAL`]
//! versions).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use cairn_metadata::{EntryKind, IndexEntry, Topic};
use cairn_storage::PrefixedStore;
use cairn_storage::value_schema::{ValueColumn, ValueType};
use deltalake_core::kernel::MetadataExt;
use deltalake_core::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake_core::kernel::{Action, Add, ArrayType, DataType, Remove, StructField, StructType};
use deltalake_core::logstore::{LogStoreRef, StorageConfig, default_logstore};
use deltalake_core::operations::create::CreateBuilder;
use deltalake_core::protocol::{DeltaOperation, SaveMode};
use deltalake_core::{DeltaTable, DeltaTableError, TableProperty};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

use crate::{Compactor, CompactorError, CycleReport};

/// Versions between checkpoints (each checkpoint also cleans up expired log entries).
pub const CHECKPOINT_INTERVAL: u64 = 10;
/// Index entries read per metadata call while listing a partition's files.
const INDEX_PAGE: usize = 1_000;
/// Attempts at a commit that keeps losing the race for the next version.
const COMMIT_ATTEMPTS: usize = 8;
/// The table's partition column.
pub const PARTITION_COLUMN: &str = "partition";

/// An error of a table operation.
#[derive(Debug, thiserror::Error)]
#[error("table of topic {topic}: {source}")]
pub struct TableError {
    /// The topic.
    pub topic: String,
    /// What the Delta library said.
    #[source]
    pub source: Box<DeltaTableError>,
}

impl TableError {
    fn new(topic: &str, source: DeltaTableError) -> Self {
        TableError {
            topic: topic.to_string(),
            source: Box::new(source),
        }
    }
}

/// The object key of `topic`'s table root (its Parquet directory), without a trailing `/`.
pub fn table_root(topic: &str) -> String {
    format!("{}/{topic}", cairn_storage::keys::TOPICS)
}

/// Whether `key` is part of a table's log rather than a data object (the collector leaves
/// those alone: no index entry ever references them).
pub fn is_table_log(key: &str) -> bool {
    key.split('/').any(|part| part == "_delta_log")
}

/// The Delta log store of `topic`'s table over `store` (Cairn's object store, keys as
/// Cairn writes them). The URL only names the table to the Delta library: every read and
/// write goes through `store`, so its scheme is Cairn's own.
fn log_store(store: &Arc<dyn ObjectStore>, topic: &str) -> Result<LogStoreRef, TableError> {
    let root = table_root(topic);
    let url = url::Url::parse(&format!("cairn://objects/{root}/")).map_err(|e| {
        TableError::new(
            topic,
            DeltaTableError::InvalidTableLocation(format!("{root}: {e}")),
        )
    })?;
    let store: Arc<dyn ObjectStore> = Arc::new(SortedListing(store.clone()));
    let prefixed: Arc<dyn ObjectStore> = Arc::new(PrefixedStore::new(store.clone(), &root));
    Ok(default_logstore(
        prefixed,
        store,
        &url,
        &StorageConfig::default(),
    ))
}

/// A store whose listings come in key order. The Delta library reads a log by listing its
/// directory and expects the versions in order, as S3 lists them; a local directory lists
/// in no order (the library sorts only for `file://` URLs, and the table's URL is Cairn's
/// own). Logs are listed from their last checkpoint, so the sort is over a few keys.
#[derive(Debug)]
struct SortedListing(Arc<dyn ObjectStore>);

impl std::fmt::Display for SortedListing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SortedListing({})", self.0)
    }
}

fn sorted(
    listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
    futures::stream::once(async move {
        match listing.try_collect::<Vec<_>>().await {
            Ok(mut all) => {
                all.sort_by(|a, b| a.location.cmp(&b.location));
                futures::stream::iter(all.into_iter().map(Ok)).boxed()
            }
            Err(e) => futures::stream::iter([Err(e)]).boxed(),
        }
    })
    .flatten()
    .boxed()
}

#[async_trait::async_trait]
impl ObjectStore for SortedListing {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        sorted(self.0.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        sorted(self.0.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// The table's columns: the partition, then the columns of Cairn's Parquet files.
fn columns() -> Result<Vec<StructField>, DeltaTableError> {
    let header = StructType::try_new([
        StructField::new("key", DataType::STRING, false),
        StructField::new("value", DataType::BINARY, false),
    ])
    .map_err(|e| DeltaTableError::Generic(format!("the headers column: {e}")))?;
    Ok(vec![
        StructField::new(PARTITION_COLUMN, DataType::INTEGER, false),
        StructField::new("offset", DataType::LONG, false),
        StructField::new("timestamp", DataType::TIMESTAMP, false),
        StructField::new("key", DataType::BINARY, false),
        StructField::new("value", DataType::BINARY, false),
        StructField::new(
            "headers",
            DataType::Array(Box::new(ArrayType::new(
                DataType::Struct(Box::new(header)),
                false,
            ))),
            false,
        ),
        StructField::new("producer_id", DataType::LONG, true),
        StructField::new("sequence", DataType::LONG, true),
    ])
}

/// One data file of a table, as the index describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableFile {
    /// Path relative to the table root (`partition=<p>/<name>.parquet`).
    pub path: String,
    /// Topic partition.
    pub partition: u32,
    /// Bytes.
    pub size: u64,
    /// First offset.
    pub base_offset: i64,
    /// One past the last offset.
    pub end_offset: i64,
    /// Smallest record timestamp.
    pub min_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
}

impl TableFile {
    fn from_entry(topic: &str, e: &IndexEntry) -> Option<Self> {
        let root = table_root(topic);
        let path = e.object_key.strip_prefix(&root)?.strip_prefix('/')?;
        Some(TableFile {
            path: path.to_string(),
            partition: e.partition,
            size: e.length,
            base_offset: e.base_offset,
            end_offset: e.end_offset,
            min_timestamp_ms: e.min_timestamp_ms,
            max_timestamp_ms: e.max_timestamp_ms,
        })
    }

    /// Delta file statistics: rows, and the bounds of `offset` and `timestamp` (so engines
    /// skip files by either).
    fn stats(&self) -> String {
        let ts = |ms: i64| {
            let t = UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
            humantime::format_rfc3339_millis(t).to_string()
        };
        serde_json::json!({
            "numRecords": self.end_offset - self.base_offset,
            "minValues": {"offset": self.base_offset, "timestamp": ts(self.min_timestamp_ms)},
            "maxValues": {"offset": self.end_offset - 1, "timestamp": ts(self.max_timestamp_ms)},
            "nullCount": {"offset": 0, "timestamp": 0},
        })
        .to_string()
    }
}

fn partition_values(partition: u32) -> HashMap<String, Option<String>> {
    HashMap::from([(PARTITION_COLUMN.to_string(), Some(partition.to_string()))])
}

/// The partition a table path names (`partition=<p>/...`).
fn partition_of(path: &str) -> Option<u32> {
    path.strip_prefix("partition=")?
        .split_once('/')?
        .0
        .parse()
        .ok()
}

/// What reconciling one table did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableSync {
    /// The version committed, if anything changed.
    pub version: Option<u64>,
    /// Files added.
    pub added: u64,
    /// Files removed.
    pub removed: u64,
    /// Commits lost to another compactor and redone.
    pub retries: u64,
    /// Set when the table was left as it was because a partition still has a Parquet file
    /// holding records below its start offset (trimmed by a later compaction run).
    pub waiting_for_trim: bool,
    /// Set when the commit added typed columns to the table's schema.
    pub schema_changed: bool,
}

/// A table's current snapshot, for `cairn table describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableDescription {
    /// Object key of the table root.
    pub root: String,
    /// The snapshot's version.
    pub version: u64,
    /// When it was committed (ms since the epoch), if the log says.
    pub timestamp_ms: Option<i64>,
    /// Its files: `(path relative to the root, partition, bytes, rows)`.
    pub files: Vec<(String, Option<u32>, u64, Option<u64>)>,
    /// Its typed columns (those after the base ones): `(name, Delta type)`.
    pub typed_columns: Vec<(String, String)>,
}

/// Reads `topic`'s table's latest snapshot; `None` when the topic has no table yet.
pub async fn describe(
    store: Arc<dyn ObjectStore>,
    topic: &str,
) -> Result<Option<TableDescription>, TableError> {
    let Some(table) = load(&store, topic).await? else {
        return Ok(None);
    };
    let snapshot = table.snapshot().map_err(|e| TableError::new(topic, e))?;
    let version = snapshot.version();
    let mut files: Vec<_> = snapshot
        .log_data()
        .iter()
        .map(|f| {
            let path = f.path().to_string();
            let rows = f.stats().and_then(|s| {
                serde_json::from_str::<serde_json::Value>(&s)
                    .ok()?
                    .get("numRecords")?
                    .as_u64()
            });
            let partition = partition_of(&path);
            (path, partition, u64::try_from(f.size()).unwrap_or(0), rows)
        })
        .collect();
    files.sort_by(|a, b| (a.1, &a.0).cmp(&(b.1, &b.0)));
    let base = columns().map_err(|e| TableError::new(topic, e))?;
    let typed_columns = snapshot
        .schema()
        .fields()
        .filter(|f| !base.iter().any(|b| b.name() == f.name()))
        .map(|f| (f.name().to_string(), f.data_type().to_string()))
        .collect();
    Ok(Some(TableDescription {
        root: table_root(topic),
        version,
        timestamp_ms: snapshot.version_timestamp(snapshot.version()),
        files,
        typed_columns,
    }))
}

/// The latest snapshot of `topic`'s table, or `None` if it has none.
async fn load(store: &Arc<dyn ObjectStore>, topic: &str) -> Result<Option<DeltaTable>, TableError> {
    let mut table = DeltaTable::new(log_store(store, topic)?);
    match table.load().await {
        Ok(()) => Ok(Some(table)),
        Err(DeltaTableError::NotATable(_)) => Ok(None),
        Err(e) => Err(TableError::new(topic, e)),
    }
}

/// Whether `e` means another writer committed the version first.
fn lost_race(e: &DeltaTableError) -> bool {
    matches!(
        e,
        DeltaTableError::VersionAlreadyExists(_)
            | DeltaTableError::Transaction {
                source: deltalake_core::kernel::transaction::TransactionError::VersionAlreadyExists(
                    _
                )
                    | deltalake_core::kernel::transaction::TransactionError::MaxCommitAttempts(_)
            }
    )
}

/// Whether the ranges `covers` (one partition's, any order) cover `base..end` wholly.
fn covered(covers: &[(i64, i64)], base: i64, end: i64) -> bool {
    let mut sorted = covers.to_vec();
    sorted.sort_unstable();
    let mut at = base;
    for (b, e) in sorted {
        if b > at {
            break;
        }
        at = at.max(e);
    }
    at >= end
}

impl Compactor {
    /// Reconciles every topic's table with the index (see the module docs), and empties
    /// the tables of deleted topics. A table that fails is logged and retried next cycle.
    pub(crate) async fn sync_tables(
        &self,
        topics: &[Topic],
        report: &mut CycleReport,
    ) -> Result<(), CompactorError> {
        for t in topics {
            match self.sync_table(&t.name, Some(t)).await {
                Ok(sync) => {
                    if sync.version.is_some() {
                        tracing::info!(topic = %t.name, ?sync, "table committed");
                        report.table_commits += 1;
                    }
                    report.table_files_added += sync.added;
                    report.table_files_removed += sync.removed;
                }
                Err(e) => {
                    tracing::warn!(topic = %t.name, error = %e, "table commit failed; retrying next cycle");
                    report.failed_table_commits += 1;
                }
            }
        }
        // Tables whose topic is gone: their files are being collected, so their latest
        // snapshot must list none.
        let seen: Vec<String> = match self.tables_seen.lock() {
            Ok(seen) => seen.keys().cloned().collect(),
            Err(_) => Vec::new(),
        };
        let listing = self
            .store
            .list_with_delimiter(Some(&Path::from(cairn_storage::keys::TOPICS)))
            .await
            .map_err(|e| {
                cairn_storage::StorageError::store("LIST", cairn_storage::keys::TOPICS, e)
            })?;
        for dir in listing.common_prefixes {
            let Some(name) = dir.filename() else { continue };
            // Known emptied (their fingerprint is the empty set's) or still a topic.
            if topics.iter().any(|t| t.name == name)
                || (seen.iter().any(|s| s == name)
                    && self.seen(name) == Some(fingerprint(&BTreeMap::new(), &[])))
            {
                continue;
            }
            let log = dir.clone().join("_delta_log");
            let has_log = self
                .store
                .list_with_delimiter(Some(&log))
                .await
                .map(|l| !l.objects.is_empty())
                .unwrap_or(false);
            if !has_log {
                continue;
            }
            match self.sync_table(name, None).await {
                Ok(sync) => {
                    report.table_commits += u64::from(sync.version.is_some());
                    report.table_files_removed += sync.removed;
                }
                Err(e) => {
                    tracing::warn!(topic = %name, error = %e, "emptying a deleted topic's table failed; retrying next cycle");
                    report.failed_table_commits += 1;
                }
            }
        }
        Ok(())
    }

    /// Reconciles `name`'s table with the index of `topic` (`None`: the topic is gone, so
    /// the table is emptied); each cycle does this for every topic.
    pub async fn sync_table(
        &self,
        name: &str,
        topic: Option<&Topic>,
    ) -> Result<TableSync, CompactorError> {
        let mut sync = TableSync::default();
        let columns = value_columns(topic);
        // An index listing the files the table was last seen to list needs no look at the
        // table: only compactors write it, and each writes what the index lists.
        if let Some(t) = topic
            && let Some(files) = self.live_files(t).await?
            && self.seen(name) == Some(fingerprint(&files, &columns))
        {
            return Ok(sync);
        }
        for _ in 0..COMMIT_ATTEMPTS {
            // The snapshot first, then the index: the index read is at least as new as
            // the snapshot, so a commit never goes back to an older state of the index.
            let table = match load(&self.store, name).await? {
                Some(t) => t,
                None if topic.is_none() => return Ok(sync),
                None => match self.create_table(name, &columns).await {
                    Ok(t) => t,
                    Err(e) if lost_race(&e.source) => {
                        sync.retries += 1;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                },
            };
            let wanted = match topic {
                Some(t) => match self.live_files(t).await? {
                    Some(files) => files,
                    None => {
                        sync.waiting_for_trim = true;
                        return Ok(sync);
                    }
                },
                None => BTreeMap::new(),
            };
            let snapshot = table.snapshot().map_err(|e| TableError::new(name, e))?;
            let current: BTreeMap<String, i64> = snapshot
                .log_data()
                .iter()
                .map(|f| (f.path().to_string(), f.size()))
                .collect();
            let adds: Vec<&TableFile> = wanted
                .values()
                .filter(|f| !current.contains_key(&f.path))
                .collect();
            let removes: Vec<(&String, i64)> = current
                .iter()
                .filter(|(p, _)| !wanted.contains_key(*p))
                .map(|(p, s)| (p, *s))
                .collect();
            // Typed columns the table lacks join its schema in this commit, before (or with)
            // the first files that hold them: old files read them as NULL.
            let evolved = evolved_schema(name, &snapshot.schema(), &columns, current.is_empty())?;
            if adds.is_empty() && removes.is_empty() && evolved.is_none() {
                self.saw(name, &wanted, &columns);
                return Ok(sync);
            }
            // A file replaced by others covering the same offsets (a merge, a fresh run of
            // files... ) changes no data: streaming readers must not see it twice.
            let removed_ranges: Vec<(u32, i64, i64)> = removes
                .iter()
                .filter_map(|(p, _)| {
                    let part = partition_of(p)?;
                    let (b, e) = offsets_of(p)?;
                    Some((part, b, e))
                })
                .collect();
            let ranges = |list: &[(u32, i64, i64)], part: u32| -> Vec<(i64, i64)> {
                list.iter()
                    .filter(|r| r.0 == part)
                    .map(|r| (r.1, r.2))
                    .collect()
            };
            let added_ranges: Vec<(u32, i64, i64)> = adds
                .iter()
                .map(|f| (f.partition, f.base_offset, f.end_offset))
                .collect();
            let now = self.metadata.clock().now_ms();
            let mut actions = Vec::with_capacity(adds.len() + removes.len() + 1);
            if let Some(schema) = &evolved {
                let metadata = snapshot
                    .metadata()
                    .clone()
                    .with_schema(schema)
                    .map_err(|e| TableError::new(name, e.into()))?;
                actions.push(Action::Metadata(metadata));
            }
            for (path, size) in &removes {
                let data_change = match (partition_of(path), offsets_of(path)) {
                    (Some(part), Some((b, e))) => !covered(&ranges(&added_ranges, part), b, e),
                    _ => true,
                };
                actions.push(Action::Remove(Remove {
                    path: (*path).clone(),
                    data_change,
                    deletion_timestamp: Some(now),
                    extended_file_metadata: Some(true),
                    partition_values: partition_of(path).map(partition_values),
                    size: Some(*size),
                    ..Remove::default()
                }));
            }
            for f in &adds {
                let data_change = !covered(
                    &ranges(&removed_ranges, f.partition),
                    f.base_offset,
                    f.end_offset,
                );
                actions.push(Action::Add(Add {
                    path: f.path.clone(),
                    partition_values: partition_values(f.partition),
                    size: i64::try_from(f.size).unwrap_or(i64::MAX),
                    modification_time: now,
                    data_change,
                    stats: Some(f.stats()),
                    ..Add::default()
                }));
            }
            let operation = DeltaOperation::Write {
                mode: SaveMode::Append,
                partition_by: Some(vec![PARTITION_COLUMN.to_string()]),
                predicate: None,
            };
            let commit = CommitBuilder::from(
                CommitProperties::default()
                    .with_max_retries(0)
                    .with_metadata([(
                        "cairn.compactor".to_string(),
                        serde_json::Value::String(self.config.owner.clone()),
                    )]),
            )
            .with_actions(actions)
            .build(Some(snapshot), table.log_store(), operation)
            .await;
            match commit {
                Ok(done) => {
                    self.saw(name, &wanted, &columns);
                    sync.version = Some(done.version());
                    sync.schema_changed = evolved.is_some();
                    sync.added = adds.len() as u64;
                    sync.removed = removes.len() as u64;
                    return Ok(sync);
                }
                Err(e) if lost_race(&e) => sync.retries += 1,
                Err(e) => return Err(TableError::new(name, e).into()),
            }
        }
        Err(TableError::new(
            name,
            DeltaTableError::Generic(format!(
                "lost the race for the next log version {COMMIT_ATTEMPTS} times"
            )),
        )
        .into())
    }

    /// The fingerprint of the files `name`'s table was last seen to list.
    fn seen(&self, name: &str) -> Option<u64> {
        self.tables_seen.lock().ok()?.get(name).copied()
    }

    /// Records that `name`'s table lists exactly `files`, with `columns`.
    fn saw(&self, name: &str, files: &BTreeMap<String, TableFile>, columns: &[ValueColumn]) {
        if let Ok(mut seen) = self.tables_seen.lock() {
            seen.insert(name.to_string(), fingerprint(files, columns));
        }
    }

    async fn create_table(
        &self,
        topic: &str,
        value_columns: &[ValueColumn],
    ) -> Result<DeltaTable, TableError> {
        let mut fields = columns().map_err(|e| TableError::new(topic, e))?;
        fields.extend(
            value_columns
                .iter()
                .map(|c| StructField::new(c.name.clone(), delta_type(c.kind), true)),
        );
        let grace = format!("interval {} seconds", self.config.grace.as_secs().max(1));
        CreateBuilder::new()
            .with_log_store(log_store(&self.store, topic)?)
            .with_table_name(topic)
            .with_comment(format!(
                "Cairn topic {topic}: the compacted records, kept by Cairn's compactor (read only)"
            ))
            .with_columns(fields)
            .with_partition_columns([PARTITION_COLUMN])
            .with_save_mode(SaveMode::Ignore)
            .with_configuration_property(TableProperty::LogRetentionDuration, Some(grace.clone()))
            .with_configuration_property(TableProperty::DeletedFileRetentionDuration, Some(grace))
            .with_configuration_property(
                TableProperty::CheckpointInterval,
                Some(CHECKPOINT_INTERVAL.to_string()),
            )
            .await
            .map_err(|e| TableError::new(topic, e))
    }

    /// Every Parquet file the index lists for `topic`, keyed by table path; `None` while a
    /// partition's first file still holds records below its start offset.
    async fn live_files(
        &self,
        topic: &Topic,
    ) -> Result<Option<BTreeMap<String, TableFile>>, CompactorError> {
        let mut files = BTreeMap::new();
        for p in 0..topic.partitions {
            let Some(entries) = self.partition_entries(topic, p).await? else {
                return Ok(None);
            };
            for e in entries.iter().filter(|e| e.kind == EntryKind::Parquet) {
                match TableFile::from_entry(&topic.name, e) {
                    Some(f) => {
                        files.insert(f.path.clone(), f);
                    }
                    None => {
                        tracing::warn!(topic = %topic.name, key = %e.object_key, "a Parquet file outside its topic's directory is left out of the table")
                    }
                }
            }
        }
        Ok(Some(files))
    }

    /// A partition's index entries as of one moment: read in pages, and read again if the
    /// pages do not join up (a compaction swapped entries between two pages). `None` while
    /// the first entry is a Parquet file holding records below the start offset.
    async fn partition_entries(
        &self,
        topic: &Topic,
        partition: u32,
    ) -> Result<Option<Vec<IndexEntry>>, CompactorError> {
        loop {
            let mut entries: Vec<IndexEntry> = Vec::new();
            let mut start = None;
            let mut from = 0;
            loop {
                let (state, page) = self
                    .metadata
                    .read_index(topic.id, partition, from, INDEX_PAGE)
                    .await?;
                start.get_or_insert(state.start_offset);
                let full = page.len() == INDEX_PAGE;
                entries.extend(page);
                match entries.last() {
                    Some(last) if full => from = last.end_offset,
                    _ => break,
                }
            }
            if entries
                .windows(2)
                .any(|w| w[0].end_offset != w[1].base_offset)
            {
                continue;
            }
            let start = start.unwrap_or(0);
            if entries
                .first()
                .is_some_and(|e| e.kind == EntryKind::Parquet && e.base_offset < start)
            {
                return Ok(None);
            }
            return Ok(Some(entries));
        }
    }
}

/// A fingerprint of a file set (paths and sizes), to tell an unchanged one.
fn fingerprint(files: &BTreeMap<String, TableFile>, columns: &[ValueColumn]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for (path, f) in files {
        (path, f.size).hash(&mut h);
    }
    columns.hash(&mut h);
    h.finish()
}

/// The typed columns of `topic`'s table and of every file written for it: each column any of
/// its value schemas declared (none for a deleted topic). A column of a type this build does
/// not know is left out, with a warning.
pub fn value_columns(topic: Option<&Topic>) -> Vec<ValueColumn> {
    let Some(topic) = topic else {
        return Vec::new();
    };
    topic
        .value_columns
        .iter()
        .filter_map(|c| match ValueType::from_name(&c.kind) {
            Some(kind) => Some(ValueColumn {
                name: c.name.clone(),
                kind,
            }),
            None => {
                tracing::warn!(topic = %topic.name, column = %c.name, kind = %c.kind, "a typed column of an unknown type is left out");
                None
            }
        })
        .collect()
}

/// The Delta type of a typed column.
fn delta_type(kind: ValueType) -> DataType {
    match kind {
        ValueType::String | ValueType::Json => DataType::STRING,
        ValueType::Integer => DataType::LONG,
        ValueType::Number => DataType::DOUBLE,
        ValueType::Boolean => DataType::BOOLEAN,
    }
}

/// The table's schema after adding the typed `columns` it lacks, or `None` when it has them
/// all. A column the table holds with another type (a topic deleted and made again with a
/// different schema) replaces it only while the table lists no file.
fn evolved_schema(
    topic: &str,
    schema: &StructType,
    columns: &[ValueColumn],
    empty: bool,
) -> Result<Option<StructType>, TableError> {
    let mut fields: Vec<StructField> = schema.fields().cloned().collect();
    let mut changed = false;
    for c in columns {
        let wanted = delta_type(c.kind);
        match fields.iter_mut().find(|f| f.name() == &c.name) {
            Some(f) if f.data_type() == &wanted => {}
            Some(f) if empty => {
                *f = StructField::new(c.name.clone(), wanted, true);
                changed = true;
            }
            Some(f) => {
                return Err(TableError::new(
                    topic,
                    DeltaTableError::Generic(format!(
                        "column `{}` is {:?} in the table and {} in the topic's value schema; \
                         the table keeps its files' type",
                        c.name,
                        f.data_type(),
                        c.kind.name()
                    )),
                ));
            }
            None => {
                fields.push(StructField::new(c.name.clone(), wanted, true));
                changed = true;
            }
        }
    }
    if !changed {
        return Ok(None);
    }
    StructType::try_new(fields)
        .map(Some)
        .map_err(|e| TableError::new(topic, DeltaTableError::Generic(format!("the schema: {e}"))))
}

/// The offsets a Parquet file name gives: `<first>-<last>-<writer>.parquet` holds
/// `first..=last`.
fn offsets_of(path: &str) -> Option<(i64, i64)> {
    let name = path.rsplit('/').next()?;
    let mut parts = name.split('-');
    let first: i64 = parts.next()?.parse().ok()?;
    let last: i64 = parts.next()?.parse().ok()?;
    Some((first, last + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coverage_of_offset_ranges() {
        assert!(covered(&[(0, 50), (50, 100)], 0, 100));
        assert!(covered(&[(50, 100), (0, 60)], 10, 90));
        assert!(!covered(&[(0, 50), (60, 100)], 0, 100));
        assert!(!covered(&[(75, 100)], 0, 100));
        assert!(!covered(&[], 0, 1));
    }

    #[test]
    fn table_paths() {
        assert_eq!(
            partition_of("partition=3/00000000000000000100-00000000000000100099-2a.parquet"),
            Some(3)
        );
        assert_eq!(
            offsets_of("partition=3/00000000000000000100-00000000000000100099-2a.parquet"),
            Some((100, 100_100))
        );
        assert_eq!(partition_of("x/y.parquet"), None);
        assert!(is_table_log(
            "topics/t/_delta_log/00000000000000000000.json"
        ));
        assert!(!is_table_log("topics/t/partition=0/a.parquet"));
    }
}
