//! SQL over live topics with DataFusion (feature `sql`, used by `cairn sql`; the agent never
//! builds it).
//!
//! Every topic is a table with the columns `partition`, `offset`, `timestamp`, `key`,
//! `value`, `headers`, `producer_id` and `sequence`, then the typed columns of its value
//! schema (see `cairn_storage::value_schema`). Its rows are the union of the
//! partition's live Parquet files (the ones the index references — never files replaced
//! and waiting for collection, never orphans), read by DataFusion's Parquet scan with
//! projection and statistics pruning, and of its uncompacted tail, read from segment
//! frames into memory. Offsets before a partition's start offset are filtered out, so the
//! table shows exactly what a consumer could read.
//!
//! DataFusion's scan does not know Cairn's per-row-group checksums, so every file is first
//! read once through the verified reader (`cairn_storage::parquet::verify`): a corrupt file
//! fails the query with a data-loss error instead of returning wrong rows.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int32Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::Column;
use datafusion::datasource::MemTable;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{DataFrame, Expr, SessionContext, lit};
use url::Url;

use crate::{Compactor, CompactorError};
use cairn_metadata::{EntryKind, IndexEntry, PartitionState};
use cairn_storage::StorageError;
use cairn_storage::parquet::{self as parquet_file, StoredRecord};
use cairn_storage::value_schema::ValueColumn;

/// Index entries read per metadata transaction.
#[cfg(not(test))]
const INDEX_PAGE: usize = 10_000;
/// Small pages in unit tests, so that paging is exercised.
#[cfg(test)]
const INDEX_PAGE: usize = 3;

/// The URL our object store is registered under in the session.
const STORE_URL: &str = "cairn://objects/";

/// How `cairn sql` prints results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per row, one per line.
    Json,
}

fn query_error(e: impl std::fmt::Display) -> CompactorError {
    CompactorError::Query(e.to_string())
}

fn column(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The table schema: `partition` and then the Parquet columns, typed ones included.
pub fn table_schema(columns: &[ValueColumn]) -> SchemaRef {
    let mut fields = vec![Arc::new(Field::new("partition", DataType::Int32, false))];
    fields.extend(parquet_file::schema_with(columns).fields().iter().cloned());
    Arc::new(Schema::new(fields))
}

impl Compactor {
    /// A DataFusion session with every topic registered as a table over its live Parquet
    /// files and its uncompacted tail.
    pub async fn sql_context(&self) -> Result<SessionContext, CompactorError> {
        let ctx = SessionContext::new();
        let url = Url::parse(STORE_URL).map_err(query_error)?;
        ctx.register_object_store(&url, self.store.clone());
        for topic in self.metadata.list_topics().await? {
            // Every typed column the topic's table has; files written before one was
            // declared read it as NULL.
            let columns = crate::table::value_columns(Some(&topic));
            let mut union: Option<DataFrame> = None;
            let mut tail: Vec<StoredRecord> = Vec::new();
            let mut tail_partitions: Vec<i32> = Vec::new();
            for p in 0..topic.partitions {
                let (state, entries) = self.whole_index(topic.id, p).await?;
                let (files, segments): (Vec<IndexEntry>, Vec<IndexEntry>) = entries
                    .into_iter()
                    .partition(|e| e.kind == EntryKind::Parquet);
                let partition = i32::try_from(p).map_err(query_error)?;
                if !files.is_empty() {
                    let df = self
                        .parquet_frame(&ctx, &files, partition, state.start_offset, &columns)
                        .await?;
                    union = Some(match union {
                        Some(u) => u.union(df).map_err(query_error)?,
                        None => df,
                    });
                }
                let records = self.read_entries(&segments, &|_| {}).await?;
                for r in records {
                    if r.offset >= state.start_offset {
                        tail.push(r);
                        tail_partitions.push(partition);
                    }
                }
            }
            let tail = tail_table(&tail, &tail_partitions, &columns)?;
            let tail = ctx.read_table(Arc::new(tail)).map_err(query_error)?;
            let all = match union {
                Some(u) => u.union(tail).map_err(query_error)?,
                None => tail,
            };
            ctx.register_table(
                datafusion::common::TableReference::bare(topic.name.as_str()),
                all.into_view(),
            )
            .map_err(query_error)?;
        }
        Ok(ctx)
    }

    /// Every index entry of a partition, a page per transaction. A page that does not start
    /// where the previous one ended (a compaction swapped entries in between) restarts the
    /// read, so the entries returned are contiguous and cover each offset once.
    async fn whole_index(
        &self,
        topic_id: u64,
        partition: u32,
    ) -> Result<(PartitionState, Vec<IndexEntry>), CompactorError> {
        const ATTEMPTS: usize = 5;
        'attempt: for _ in 0..ATTEMPTS {
            let (mut state, mut entries) = self
                .metadata
                .read_index(topic_id, partition, 0, INDEX_PAGE)
                .await?;
            let mut full = entries.len() == INDEX_PAGE;
            while full {
                let Some(from) = entries.last().map(|e| e.end_offset) else {
                    break;
                };
                let (s, page) = self
                    .metadata
                    .read_index(topic_id, partition, from, INDEX_PAGE)
                    .await?;
                if page.first().is_some_and(|e| e.base_offset != from) {
                    continue 'attempt;
                }
                full = page.len() == INDEX_PAGE;
                state = s;
                entries.extend(page);
            }
            return Ok((state, entries));
        }
        Err(CompactorError::Query(format!(
            "the index of {topic_id}/{partition} kept changing while it was read; run the query again"
        )))
    }

    /// One partition's Parquet files as a frame with the `partition` column first.
    async fn parquet_frame(
        &self,
        ctx: &SessionContext,
        files: &[IndexEntry],
        partition: i32,
        start_offset: i64,
        columns: &[ValueColumn],
    ) -> Result<DataFrame, CompactorError> {
        for f in files {
            parquet_file::verify(self.store.clone(), &f.object_key, f.length).await?;
        }
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(format!("{STORE_URL}{}", f.object_key)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(query_error)?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .with_schema(parquet_file::schema_with(columns));
        let table = ListingTable::try_new(config).map_err(query_error)?;
        let mut select = vec![lit(partition).alias("partition")];
        select.extend(
            parquet_file::schema_with(columns)
                .fields()
                .iter()
                .map(|f| column(f.name())),
        );
        ctx.read_table(Arc::new(table))
            .and_then(|df| df.filter(column("offset").gt_eq(lit(start_offset))))
            .and_then(|df| df.select(select))
            .map_err(query_error)
    }
}

/// The uncompacted records of a topic as an in-memory table, typed as the compactor will
/// type them.
fn tail_table(
    records: &[StoredRecord],
    partitions: &[i32],
    columns: &[ValueColumn],
) -> Result<MemTable, CompactorError> {
    let schema = table_schema(columns);
    let mut batches = Vec::new();
    if !records.is_empty() {
        let batch =
            parquet_file::to_batch_with(records, columns).map_err(|e| StorageError::Encode {
                key: "the uncompacted tail".into(),
                source: Arc::new(e),
            })?;
        let mut arrays: Vec<ArrayRef> = vec![Arc::new(Int32Array::from(partitions.to_vec()))];
        arrays.extend(batch.columns().iter().cloned());
        batches.push(RecordBatch::try_new(schema.clone(), arrays).map_err(query_error)?);
    }
    MemTable::try_new(schema, vec![batches]).map_err(query_error)
}

/// Runs one SQL statement and returns its rows.
pub async fn query(ctx: &SessionContext, sql: &str) -> Result<Vec<RecordBatch>, CompactorError> {
    ctx.sql(sql)
        .await
        .map_err(query_error)?
        .collect()
        .await
        .map_err(query_error)
}

/// Formats rows as `format`.
pub fn render(batches: &[RecordBatch], format: OutputFormat) -> Result<String, CompactorError> {
    match format {
        OutputFormat::Table => datafusion::arrow::util::pretty::pretty_format_batches(batches)
            .map(|t| t.to_string())
            .map_err(query_error),
        OutputFormat::Csv => {
            let mut out = Vec::new();
            {
                let mut w = datafusion::arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(&mut out);
                for b in batches {
                    w.write(b).map_err(query_error)?;
                }
            }
            String::from_utf8(out).map_err(query_error)
        }
        OutputFormat::Json => {
            let mut out = Vec::new();
            {
                let mut w = datafusion::arrow::json::LineDelimitedWriter::new(&mut out);
                for b in batches {
                    w.write(b).map_err(query_error)?;
                }
                w.finish().map_err(query_error)?;
            }
            String::from_utf8(out).map_err(query_error)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Arc;

    use cairn_metadata::conformance::{segment, spec};
    use cairn_metadata::{Limits, ManualClock, MemoryKv, Metadata};

    use crate::{Compactor, CompactorConfig};

    #[tokio::test]
    async fn whole_index_pages_through_every_entry() {
        let m = Metadata::new(
            Arc::new(MemoryKv::new(Limits::default())),
            Arc::new(ManualClock::new(1_000)),
        );
        let t = m.create_topic(&spec("paged", 1)).await.unwrap();
        for i in 0..10 {
            m.commit_segment(&segment(&format!("s{i}"), &[(t.id, 0, 4)]))
                .await
                .unwrap();
        }
        let c = Compactor::new(
            Arc::new(object_store::memory::InMemory::new()),
            m,
            CompactorConfig::default(),
        );
        let (state, entries) = c.whole_index(t.id, 0).await.unwrap();
        assert_eq!(state.next_offset, 40);
        assert_eq!(
            entries.iter().map(|e| e.base_offset).collect::<Vec<_>>(),
            (0..10).map(|i| i * 4).collect::<Vec<_>>()
        );
    }
}
