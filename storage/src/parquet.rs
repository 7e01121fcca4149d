//! The Parquet form of a partition's records: the table every SQL engine can read. Columns
//! `offset`, `timestamp`, `key`, `value`, `headers` (list of key/value structs),
//! `producer_id` and `sequence`; zstd; row groups sized for range reads; page-level
//! statistics (so row groups and pages can be chosen by `offset` and `timestamp`) and a
//! bloom filter on `key`. Files live at [`crate::keys::parquet_key`] (Hive style), so
//! engines see the partition as a column.
//!
//! Integrity: parquet-rs writes no page checksums, so each file carries, in its key-value
//! metadata (`cairn.row_group_crc32c`), one CRC32C per row group over its records in a
//! canonical encoding ([`record_digest`]). A reader decodes a row group, recomputes the CRC
//! and checks that the offsets are dense and agree with the footer's statistics: a flipped
//! byte anywhere is either caught (data loss) or harmless, never a wrong record.

use std::sync::Arc;

use arrow_array::Array;
use arrow_array::builder::{BinaryBuilder, Int64Builder, TimestampMillisecondBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{Int64Type, TimestampMillisecondType, UInt64Type};
use arrow_array::{ArrayRef, BinaryArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use futures::FutureExt;
use futures::StreamExt;
use futures::future::BoxFuture;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ArrowReaderMetadata, ArrowReaderOptions};
use parquet::arrow::async_reader::AsyncFileReader;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::metadata::ParquetMetaData;
use parquet::file::metadata::ParquetMetaDataReader;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::file::statistics::Statistics;

use parquet::file::metadata::KeyValue;

use cairn_proto::v2::{Codec, FetchedFrame};
use cairn_proto::{BatchEncoder, Packing};

use crate::value_schema::{ValueColumn, typed_arrays};
use crate::{FormatError, StorageError};

/// The key-value metadata key holding the row groups' checksums.
pub const ROW_GROUP_CRC_KEY: &str = "cairn.row_group_crc32c";

/// Target bytes of record data per row group: small enough for range reads, large enough to
/// compress well.
const ROW_GROUP_BYTES: usize = 4 << 20;

/// One record as stored in Parquet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Offset in its partition.
    pub offset: i64,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Key (empty for none).
    pub key: Bytes,
    /// Value.
    pub value: Bytes,
    /// Headers, in order.
    pub headers: Vec<(String, Bytes)>,
    /// The idempotent producer's id and this record's sequence, when it had a stamp.
    pub producer: Option<(u64, i64)>,
}

/// What a written file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParquetFile {
    /// Object key.
    pub path: String,
    /// First offset.
    pub first_offset: i64,
    /// Last offset.
    pub last_offset: i64,
    /// Rows.
    pub rows: u64,
    /// Bytes of the object.
    pub size: u64,
    /// Row groups.
    pub row_groups: u32,
    /// Smallest record timestamp.
    pub min_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, false),
    ])
}

/// The columns every file has, in order, before any typed column.
pub const BASE_COLUMNS: usize = 7;

/// The table schema of a topic without a value schema.
pub fn schema() -> SchemaRef {
    schema_with(&[])
}

/// The table schema of a topic whose value schema declares `columns`: the base columns,
/// then one nullable column per declared property.
pub fn schema_with(columns: &[ValueColumn]) -> SchemaRef {
    let mut fields = base_fields();
    fields.extend(
        columns
            .iter()
            .map(|c| Field::new(c.name.clone(), c.kind.data_type(), true)),
    );
    Arc::new(Schema::new(fields))
}

fn base_fields() -> Vec<Field> {
    vec![
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
            false,
        ),
        Field::new("key", DataType::Binary, false),
        Field::new("value", DataType::Binary, false),
        Field::new(
            "headers",
            DataType::List(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                false,
            ))),
            false,
        ),
        // Signed, as Delta Lake, Iceberg and most engines have no unsigned 64-bit type (ids
        // are allocated from 1 up). Files written before were UInt64; readers take both.
        Field::new("producer_id", DataType::Int64, true),
        Field::new("sequence", DataType::Int64, true),
    ]
}

/// Whether a file's schema is Cairn's: the base columns (with `producer_id` UInt64 in files
/// written before the tables), then any typed columns, nullable and of a typed column's
/// type.
fn is_table_schema(file: &Schema) -> bool {
    let base = base_fields();
    let fields = file.fields();
    if fields.len() < base.len() {
        return false;
    }
    let base_ok = fields.iter().zip(&base).all(|(f, b)| {
        f.as_ref() == b
            || (b.name() == "producer_id"
                && f.name() == "producer_id"
                && f.data_type() == &DataType::UInt64)
    });
    let typed_ok = fields.iter().skip(base.len()).all(|f| {
        f.is_nullable()
            && matches!(
                f.data_type(),
                DataType::Utf8 | DataType::Int64 | DataType::Float64 | DataType::Boolean
            )
    });
    base_ok && typed_ok
}

/// Folds one record into a row group's CRC32C, in a canonical encoding of every column.
pub fn record_digest(crc: u32, r: &StoredRecord) -> u32 {
    digest_parts(
        crc,
        r.offset,
        r.timestamp_ms,
        &r.key,
        &r.value,
        r.headers.iter().map(|(k, v)| (k.as_str(), &v[..])),
        r.producer,
    )
}

/// [`record_digest`] of a record given by its parts.
fn digest_parts<'a>(
    crc: u32,
    offset: i64,
    timestamp_ms: i64,
    key: &[u8],
    value: &[u8],
    headers: impl ExactSizeIterator<Item = (&'a str, &'a [u8])>,
    producer: Option<(u64, i64)>,
) -> u32 {
    let mut crc = crc32c::crc32c_append(crc, &offset.to_le_bytes());
    crc = crc32c::crc32c_append(crc, &timestamp_ms.to_le_bytes());
    for part in [key, value] {
        crc = crc32c::crc32c_append(crc, &(part.len() as u64).to_le_bytes());
        crc = crc32c::crc32c_append(crc, part);
    }
    crc = crc32c::crc32c_append(crc, &(headers.len() as u64).to_le_bytes());
    for (k, v) in headers {
        crc = crc32c::crc32c_append(crc, &(k.len() as u64).to_le_bytes());
        crc = crc32c::crc32c_append(crc, k.as_bytes());
        crc = crc32c::crc32c_append(crc, &(v.len() as u64).to_le_bytes());
        crc = crc32c::crc32c_append(crc, v);
    }
    match producer {
        Some((id, seq)) => {
            crc = crc32c::crc32c_append(crc, &[1]);
            crc = crc32c::crc32c_append(crc, &id.to_le_bytes());
            crc32c::crc32c_append(crc, &seq.to_le_bytes())
        }
        None => crc32c::crc32c_append(crc, &[0]),
    }
}

fn arrow(e: arrow_schema::ArrowError) -> FormatError {
    FormatError::Arrow(Arc::new(e))
}

/// Lays records out as one Arrow batch of the table schema.
pub fn to_batch(records: &[StoredRecord]) -> Result<RecordBatch, FormatError> {
    to_batch_with(records, &[])
}

/// Lays records out as one Arrow batch of [`schema_with`]`(columns)`: the typed columns are
/// read from each value (see [`crate::value_schema`]).
pub fn to_batch_with(
    records: &[StoredRecord],
    columns: &[ValueColumn],
) -> Result<RecordBatch, FormatError> {
    let n = records.len();
    let mut offset = Int64Builder::with_capacity(n);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let mut producer = Int64Builder::with_capacity(n);
    let mut sequence = Int64Builder::with_capacity(n);
    let mut header_keys = Vec::new();
    let mut header_values: Vec<&[u8]> = Vec::new();
    let mut header_counts = Vec::with_capacity(n);
    for r in records {
        offset.append_value(r.offset);
        ts.append_value(r.timestamp_ms);
        key.append_value(&r.key);
        value.append_value(&r.value);
        match r.producer {
            Some((id, seq)) => {
                let id = i64::try_from(id).map_err(|_| FormatError::Invalid {
                    what: "producer id",
                    reason: format!("{id} does not fit the signed producer_id column"),
                })?;
                producer.append_value(id);
                sequence.append_value(seq);
            }
            None => {
                producer.append_null();
                sequence.append_null();
            }
        }
        header_counts.push(r.headers.len());
        for (k, v) in &r.headers {
            header_keys.push(k.as_str());
            header_values.push(v);
        }
    }
    let entries = StructArray::try_new(
        header_fields(),
        vec![
            Arc::new(StringArray::from(header_keys)) as ArrayRef,
            Arc::new(BinaryArray::from(header_values)) as ArrayRef,
        ],
        None,
    )
    .map_err(arrow)?;
    let headers = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(header_fields()), false)),
        OffsetBuffer::from_lengths(header_counts),
        Arc::new(entries),
        None,
    )
    .map_err(arrow)?;
    let mut arrays: Vec<ArrayRef> = vec![
        Arc::new(offset.finish()),
        Arc::new(ts.finish()),
        Arc::new(key.finish()),
        Arc::new(value.finish()),
        Arc::new(headers),
        Arc::new(producer.finish()),
        Arc::new(sequence.finish()),
    ];
    arrays.extend(typed_arrays(records.iter().map(|r| &r.value[..]), columns));
    RecordBatch::try_new(schema_with(columns), arrays).map_err(arrow)
}

/// Bytes of values sampled to judge whether they compress.
const COMPRESSIBILITY_SAMPLE: usize = 256 << 10;

/// zstd level of the `value` and `key` columns when a sample shows they compress: level 3
/// takes a tenth off 100-byte text against level 1 for a few percent more writer time.
const ZSTD_LEVEL_COMPRESSIBLE: i32 = 3;

/// Whether zstd shrinks `sample` by more than a few percent: incompressible values (already
/// compressed or encrypted payloads) get zstd's fastest level, which still finds the odd
/// repeat (a timestamp prefix) without spending CPU on a search that cannot pay.
fn compresses(sample: &[u8]) -> bool {
    if sample.is_empty() {
        return false;
    }
    match zstd::bulk::compress(sample, 1) {
        Ok(out) => out.len() * 100 < sample.len() * 97,
        // Cannot tell: compress, as the writer would by default.
        Err(_) => true,
    }
}

/// The codec for a binary column whose first values are `values`.
fn binary_codec<'a>(values: impl Iterator<Item = &'a [u8]>) -> Compression {
    let mut sample = Vec::new();
    for v in values {
        if sample.len() >= COMPRESSIBILITY_SAMPLE {
            break;
        }
        sample.extend_from_slice(&v[..v.len().min(COMPRESSIBILITY_SAMPLE - sample.len())]);
    }
    let level = if compresses(&sample) {
        ZSTD_LEVEL_COMPRESSIBLE
    } else {
        1
    };
    Compression::ZSTD(ZstdLevel::try_new(level).unwrap_or_default())
}

/// Parquet's default limit on a dictionary page: past it a column chunk falls back to its
/// plain encoding, having paid for the dictionary and its indices.
const DICTIONARY_PAGE_BYTES: usize = 1 << 20;

/// Whether a dictionary pays for a binary column whose first row group holds `values`:
/// each value repeats four times on average and the distinct ones fit a dictionary page.
/// Otherwise (ids, random or unique payloads) a dictionary is overhead: Parquet fills it,
/// writes indices, then falls back anyway.
fn dictionary_pays<'a>(values: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut distinct = std::collections::HashSet::new();
    let (mut rows, mut dictionary_bytes) = (0usize, 0usize);
    for v in values {
        rows += 1;
        if distinct.insert(v) {
            dictionary_bytes += v.len() + 4;
            if dictionary_bytes > DICTIONARY_PAGE_BYTES {
                return false;
            }
        }
    }
    distinct.len() * 4 <= rows
}

/// Column by column settings that keep a file of small records no larger than the segments
/// it replaces (measured in docs/BENCHMARKS.md, "Parquet size").
fn writer_properties(records: &[StoredRecord], rows_per_group: usize) -> WriterProperties {
    let first_group = &records[..records.len().min(rows_per_group)];
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_statistics_enabled(EnabledStatistics::Page)
        // Offsets are dense and sequences and timestamps nearly so: delta encoding stores
        // them in a few bits each, where a dictionary fails and plain costs 8 bytes.
        .set_column_dictionary_enabled("offset".into(), false)
        .set_column_encoding("offset".into(), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled("sequence".into(), false)
        .set_column_encoding("sequence".into(), Encoding::DELTA_BINARY_PACKED)
        .set_column_dictionary_enabled("timestamp".into(), false)
        .set_column_encoding("timestamp".into(), Encoding::DELTA_BINARY_PACKED);
    for (column, values) in [
        (
            "key",
            first_group.iter().map(|r| &r.key[..]).collect::<Vec<_>>(),
        ),
        ("value", first_group.iter().map(|r| &r.value[..]).collect()),
    ] {
        // A dictionary where values repeat; otherwise all the lengths delta-packed ahead of
        // the bytes, instead of a 4-byte length before each value that breaks the
        // compressor's matches.
        props = props
            .set_column_dictionary_enabled(column.into(), dictionary_pays(values.iter().copied()))
            .set_column_encoding(column.into(), Encoding::DELTA_LENGTH_BYTE_ARRAY)
            .set_column_compression(column.into(), binary_codec(values.into_iter()));
    }
    if let Some(distinct) = distinct_keys(first_group) {
        // Sized for the distinct keys of a row group, not a fixed maximum that would cost
        // every file a large filter.
        props = props
            .set_column_bloom_filter_enabled("key".into(), true)
            .set_column_bloom_filter_max_ndv("key".into(), distinct);
    }
    props.build()
}

/// The distinct keys among `records`, or `None` when none has a key (no bloom filter).
fn distinct_keys(records: &[StoredRecord]) -> Option<u64> {
    if records.iter().all(|r| r.key.is_empty()) {
        return None;
    }
    let keys: std::collections::HashSet<&[u8]> = records.iter().map(|r| &r.key[..]).collect();
    Some(keys.len() as u64)
}

/// Writes `records` (one partition, ascending dense offsets) as one Parquet file with the
/// typed `columns` of the topic's value schema; `writer` names the writer (see
/// [`crate::keys::parquet_key`]).
pub async fn write(
    store: Arc<dyn ObjectStore>,
    topic: &str,
    partition: u32,
    writer: u64,
    records: &[StoredRecord],
    columns: &[ValueColumn],
) -> Result<ParquetFile, StorageError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(StorageError::Encode {
            key: format!("{topic}/{partition}"),
            source: Arc::new(FormatError::Invalid {
                what: "parquet file",
                reason: "no records to write".into(),
            }),
        });
    };
    let path = crate::keys::parquet_key(topic, partition, first.offset, last.offset, writer);
    let avg = records
        .iter()
        .map(|r| r.key.len() + r.value.len() + 32)
        .sum::<usize>()
        / records.len();
    let rows_per_group = (ROW_GROUP_BYTES / avg.max(1)).max(1);
    let props = writer_properties(records, rows_per_group);
    let key = path.to_string();
    let write_err = |e: parquet::errors::ParquetError| parquet_error(&key, e, false);
    let encode = |e: FormatError| StorageError::Encode {
        key: key.clone(),
        source: Arc::new(e),
    };
    let mut writer = AsyncArrowWriter::try_new(
        BufWriter::new(store, path.clone()),
        schema_with(columns),
        Some(props),
    )
    .map_err(write_err)?;
    let written = async {
        let mut crcs = Vec::new();
        for chunk in records.chunks(rows_per_group) {
            crcs.push(chunk.iter().fold(0, record_digest));
            writer
                .write(&to_batch_with(chunk, columns).map_err(encode)?)
                .await
                .map_err(write_err)?;
            // One chunk, one row group: the checksums line up with the row groups.
            writer.flush().await.map_err(write_err)?;
        }
        Ok::<_, StorageError>(crcs)
    }
    .await;
    let crcs = match written {
        Ok(crcs) => crcs,
        Err(e) => {
            // A file larger than the writer's buffer is going up as a multipart upload: its
            // parts stay stored (and billed) until the upload is aborted.
            if let Err(abort) = writer.into_inner().abort().await {
                tracing::warn!(%key, error = %abort, "aborting a failed Parquet upload failed");
            }
            return Err(e);
        }
    };
    writer.append_key_value_metadata(KeyValue::new(
        ROW_GROUP_CRC_KEY.to_string(),
        crcs.iter()
            .map(|c| format!("{c:08x}"))
            .collect::<Vec<_>>()
            .join(","),
    ));
    // A failure from here on may come from the upload's completion, after which the writer
    // can no longer abort it (object_store's BufWriter panics if asked to): its parts are
    // left to the bucket's lifecycle rule for incomplete uploads.
    let meta = writer.finish().await.map_err(write_err)?;
    let size = writer.bytes_written() as u64;
    Ok(ParquetFile {
        path: path.to_string(),
        first_offset: first.offset,
        last_offset: last.offset,
        rows: records.len() as u64,
        size,
        row_groups: u32::try_from(meta.num_row_groups()).unwrap_or(u32::MAX),
        min_timestamp_ms: records.iter().map(|r| r.timestamp_ms).min().unwrap_or(0),
        max_timestamp_ms: records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0),
    })
}

/// Bytes of the file tail fetched first: the footer usually fits, so opening a file costs
/// one GET.
const FOOTER_PREFETCH: usize = 64 << 10;

/// Reads one Parquet object of known size with bounded range GETs.
struct StoreReader {
    store: Arc<dyn ObjectStore>,
    path: Path,
    size: u64,
}

fn store_error(e: object_store::Error) -> parquet::errors::ParquetError {
    parquet::errors::ParquetError::External(Box::new(e))
}

/// A Parquet error as a storage error: the store's own failures (wrapped by
/// [`StoreReader`]) stay retryable, anything else read back is corruption.
fn parquet_error(key: &str, e: parquet::errors::ParquetError, reading: bool) -> StorageError {
    match e {
        parquet::errors::ParquetError::External(inner) => {
            match inner.downcast::<object_store::Error>() {
                Ok(store) => StorageError::store(if reading { "GET" } else { "PUT" }, key, *store),
                Err(other) => wrap(key, parquet::errors::ParquetError::External(other), reading),
            }
        }
        e => wrap(key, e, reading),
    }
}

fn wrap(key: &str, e: parquet::errors::ParquetError, reading: bool) -> StorageError {
    let source = Arc::new(FormatError::Parquet(Arc::new(e)));
    if reading {
        StorageError::Corrupt {
            key: key.to_string(),
            source,
        }
    } else {
        StorageError::Encode {
            key: key.to_string(),
            source,
        }
    }
}

/// A range outside the object can only come from a corrupt footer: refuse it as corruption
/// (not a store error, which would be retried forever).
fn check_range(range: &std::ops::Range<u64>, size: u64) -> parquet::errors::Result<()> {
    if range.start > range.end || range.end > size {
        return Err(parquet::errors::ParquetError::General(format!(
            "the footer points at bytes {}..{} of a {size}-byte file",
            range.start, range.end
        )));
    }
    Ok(())
}

/// Runs a decoding step, turning a panic inside the Parquet or Arrow decoders (which some
/// corrupt pages provoke) into a corruption error instead of a dead request.
async fn guarded<T>(
    path: &str,
    step: impl std::future::Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    match std::panic::AssertUnwindSafe(step).catch_unwind().await {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "a panic".into());
            Err(StorageError::corrupt(
                path,
                FormatError::Invalid {
                    what: "parquet data",
                    reason: format!("the decoder failed: {what}"),
                },
            ))
        }
    }
}

impl AsyncFileReader for StoreReader {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> BoxFuture<'_, parquet::errors::Result<Bytes>> {
        async move {
            check_range(&range, self.size)?;
            self.store
                .get_range(&self.path, range)
                .await
                .map_err(store_error)
        }
        .boxed()
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        async move {
            for r in &ranges {
                check_range(r, self.size)?;
            }
            self.store
                .get_ranges(&self.path, &ranges)
                .await
                .map_err(store_error)
        }
        .boxed()
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        async move {
            let bad = parquet::errors::ParquetError::General;
            let size = self.size;
            if size < 12 {
                return Err(bad(format!("a {size}-byte file is too short for Parquet")));
            }
            let tail_len = size.min(FOOTER_PREFETCH as u64);
            let tail = self.get_bytes(size - tail_len..size).await?;
            let n = tail.len();
            if n as u64 != tail_len {
                return Err(bad(format!(
                    "read {n} bytes of the file's last {tail_len}: the object is shorter than the index says"
                )));
            }
            if &tail[n - 4..] != b"PAR1" {
                return Err(bad("the file does not end with the PAR1 magic".into()));
            }
            let footer_len = u64::from(u32::from_le_bytes([
                tail[n - 8],
                tail[n - 7],
                tail[n - 6],
                tail[n - 5],
            ]));
            if footer_len + 12 > size {
                return Err(bad(format!(
                    "a {footer_len}-byte footer does not fit in a {size}-byte file"
                )));
            }
            let footer = if footer_len + 8 <= tail_len {
                tail.slice(n - 8 - footer_len as usize..n - 8)
            } else {
                self.get_bytes(size - 8 - footer_len..size - 8).await?
            };
            // The Thrift decoder runs on a blocking thread, not a runtime worker: a corrupt
            // footer can keep it busy for long (the parquet crate skips a list of booleans
            // of unknown field id element by element, each consuming no byte, so a 2 KB
            // footer can declare billions; see fuzz/README.md, "Slow inputs").
            let decoded =
                tokio::task::spawn_blocking(move || ParquetMetaDataReader::decode_metadata(&footer))
                    .await
                    .map_err(|e| bad(format!("the footer decoder failed: {e}")))?;
            Ok(Arc::new(decoded?))
        }
        .boxed()
    }
}

/// A file opened for reading: its footer and what Cairn needs from it, checked.
#[derive(Debug, Clone)]
pub struct OpenedFile {
    /// The footer, for the Arrow reader.
    pub meta: ArrowReaderMetadata,
    /// Offsets `first..=last` of each row group, from the `offset` column's statistics.
    pub row_groups: Vec<(i64, i64)>,
    /// The CRC32C of each row group's records (see [`record_digest`]).
    pub crcs: Vec<u32>,
}

/// Opens a file: reads its footer with bounded range GETs and checks that it carries
/// offset statistics and one checksum per row group. Anything unreadable is corruption.
pub async fn open(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
) -> Result<OpenedFile, StorageError> {
    guarded(path, open_unguarded(store, path, size)).await
}

async fn open_unguarded(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
) -> Result<OpenedFile, StorageError> {
    let mut reader = StoreReader {
        store,
        path: Path::from(path),
        size,
    };
    let meta = ArrowReaderMetadata::load_async(&mut reader, ArrowReaderOptions::new())
        .await
        .map_err(|e| parquet_error(path, e, true))?;
    let corrupt = |reason: String| {
        StorageError::corrupt(
            path,
            FormatError::Invalid {
                what: "parquet footer",
                reason,
            },
        )
    };
    if !is_table_schema(meta.schema()) {
        return Err(corrupt("the schema is not Cairn's table schema".into()));
    }
    let row_groups =
        row_group_offsets(meta.metadata()).map_err(|e| StorageError::corrupt(path, e))?;
    let crcs: Vec<u32> = meta
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == ROW_GROUP_CRC_KEY))
        .and_then(|k| k.value.as_deref())
        .ok_or_else(|| corrupt(format!("no `{ROW_GROUP_CRC_KEY}` metadata")))?
        .split(',')
        .map(|c| u32::from_str_radix(c, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| corrupt(format!("`{ROW_GROUP_CRC_KEY}`: {e}")))?;
    if crcs.len() != row_groups.len() {
        return Err(corrupt(format!(
            "{} checksums for {} row groups",
            crcs.len(),
            row_groups.len()
        )));
    }
    Ok(OpenedFile {
        meta,
        row_groups,
        crcs,
    })
}

/// The offsets `first..=last` each row group of `meta` holds (from the `offset` column's
/// statistics), in file order.
pub fn row_group_offsets(meta: &ParquetMetaData) -> Result<Vec<(i64, i64)>, FormatError> {
    let invalid = |reason: String| FormatError::Invalid {
        what: "parquet statistics",
        reason,
    };
    meta.row_groups()
        .iter()
        .enumerate()
        .map(|(i, rg)| match rg.column(0).statistics() {
            Some(Statistics::Int64(s)) => match (s.min_opt(), s.max_opt()) {
                (Some(lo), Some(hi)) if lo <= hi => Ok((*lo, *hi)),
                _ => Err(invalid(format!("row group {i} has no offset bounds"))),
            },
            _ => Err(invalid(format!(
                "row group {i} has no int64 statistics on `offset`"
            ))),
        })
        .collect()
}

/// Reads the records of one row group of a file opened with [`open`], and verifies them:
/// dense offsets that match the footer's statistics, and the row group's checksum.
pub async fn read_row_group(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
    file: &OpenedFile,
    group: usize,
) -> Result<Vec<StoredRecord>, StorageError> {
    guarded(
        path,
        read_row_group_unguarded(store, path, size, file, group),
    )
    .await
}

async fn read_row_group_unguarded(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
    file: &OpenedFile,
    group: usize,
) -> Result<Vec<StoredRecord>, StorageError> {
    let mut out = Vec::new();
    let mut check = RowCheck::new(path, file, group)?;
    scan_row_group(store, path, size, file, group, |cols| {
        out.reserve(cols.rows());
        for i in 0..cols.rows() {
            let r = cols.record(i).map_err(|e| StorageError::corrupt(path, e))?;
            check.row(|crc| Ok(record_digest(crc, &r)), r.offset)?;
            out.push(r);
        }
        Ok(())
    })
    .await?;
    check.finish()?;
    Ok(out)
}

/// Reads one row group of a file opened with [`open`] as frames of at most
/// `records_per_frame` records in `codec`, verified as [`read_row_group`] verifies, and
/// encoded straight from the columns (no record is built). Values that compressed by under
/// 10% in this row group are packed as stored zstd blocks ([`cairn_proto::Packing::Store`]):
/// a compressor would search them for nothing.
pub async fn read_row_group_frames(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
    file: &OpenedFile,
    group: usize,
    codec: Codec,
    records_per_frame: usize,
) -> Result<Vec<FetchedFrame>, StorageError> {
    guarded(path, async {
        let packing = packing(file, group);
        let encode = |e: cairn_proto::FrameError| StorageError::Encode {
            key: path.to_string(),
            source: Arc::new(FormatError::Frame(e)),
        };
        let per_frame = records_per_frame.max(1);
        let mut check = RowCheck::new(path, file, group)?;
        let mut frames = Vec::new();
        let mut pending: Option<(i64, BatchEncoder)> = None;
        scan_row_group(store, path, size, file, group, |cols| {
            for i in 0..cols.rows() {
                let offset = cols.offset(i);
                check.row(|crc| cols.digest(crc, i), offset)?;
                let (_, enc) = pending.get_or_insert_with(|| {
                    let n = per_frame.min(cols.rows() - i);
                    (
                        offset,
                        BatchEncoder::new(cols.bytes(i..i + n), codec, packing),
                    )
                });
                enc.push(
                    cols.timestamp(i),
                    cols.key(i),
                    cols.value(i),
                    cols.headers(i),
                );
                if enc.len() >= per_frame
                    && let Some((base, enc)) = pending.take()
                {
                    frames.push(fetched(base, enc.finish().map_err(encode)?));
                }
            }
            Ok(())
        })
        .await?;
        if let Some((base, enc)) = pending.take() {
            frames.push(fetched(base, enc.finish().map_err(encode)?));
        }
        check.finish()?;
        Ok(frames)
    })
    .await
}

fn fetched(base_offset: i64, frame: cairn_proto::v2::Frame) -> FetchedFrame {
    FetchedFrame {
        base_offset,
        header: frame.header,
        payload: frame.payload,
    }
}

/// How to pack a row group's frames: stored when its keys and values compressed by under
/// 10% in this file (Parquet's own zstd measured them against their unencoded bytes),
/// compressed otherwise. Re-compressing costs a reader ~1.5 CPU-seconds per GiB of
/// incompressible values, which a few percent of bytes on the wire do not repay. A hint
/// only: a wrong one costs CPU or bytes on the wire, never a record.
fn packing(file: &OpenedFile, group: usize) -> Packing {
    let Some(rg) = file.meta.metadata().row_groups().get(group) else {
        return Packing::Compress;
    };
    let (mut packed, mut plain) = (0i64, 0i64);
    for c in rg.columns().iter().skip(2).take(2) {
        packed += c.compressed_size();
        plain += match c.unencoded_byte_array_data_bytes() {
            Some(n) => n,
            // A dictionary's encoded size says nothing of its values' (they repeat).
            None if c.dictionary_page_offset().is_some() => return Packing::Compress,
            None => c.uncompressed_size(),
        };
    }
    if plain > 0 && packed * 10 >= plain * 9 {
        Packing::Store
    } else {
        Packing::Compress
    }
}

/// Decodes the base columns of one row group, handing each Arrow batch to `each`.
async fn scan_row_group(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
    file: &OpenedFile,
    group: usize,
    mut each: impl FnMut(&Columns<'_>) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let reader = StoreReader {
        store,
        path: Path::from(path),
        size,
    };
    let read = |e: parquet::errors::ParquetError| parquet_error(path, e, true);
    // The base columns only: typed columns are derived from `value`.
    let base = ProjectionMask::roots(file.meta.parquet_schema(), 0..BASE_COLUMNS);
    let mut stream = ParquetRecordBatchStreamBuilder::new_with_metadata(reader, file.meta.clone())
        .with_row_groups(vec![group])
        .with_projection(base)
        .with_batch_size(8_192)
        .build()
        .map_err(read)?;
    while let Some(batch) = stream.next().await {
        let batch = batch.map_err(read)?;
        let cols = Columns::of(&batch).map_err(|e| StorageError::corrupt(path, e))?;
        each(&cols)?;
    }
    Ok(())
}

/// The checks of one row group's rows as they are read: offsets dense from the footer's
/// first, then (at the end) the count against the footer and the checksum.
struct RowCheck<'a> {
    path: &'a str,
    group: usize,
    first: i64,
    last: i64,
    rows: i64,
    stored: u32,
    crc: u32,
}

impl<'a> RowCheck<'a> {
    fn new(path: &'a str, file: &OpenedFile, group: usize) -> Result<Self, StorageError> {
        let (Some(&(first, last)), Some(&stored)) =
            (file.row_groups.get(group), file.crcs.get(group))
        else {
            return Err(StorageError::corrupt(
                path,
                FormatError::Invalid {
                    what: "parquet row group",
                    reason: format!("row group {group} does not exist"),
                },
            ));
        };
        Ok(RowCheck {
            path,
            group,
            first,
            last,
            rows: 0,
            stored,
            crc: 0,
        })
    }

    fn wrong_rows(&self, what: String) -> StorageError {
        StorageError::corrupt(
            self.path,
            FormatError::Invalid {
                what: "parquet row group",
                reason: format!(
                    "row group {} should hold offsets {}..={}, {what}",
                    self.group, self.first, self.last
                ),
            },
        )
    }

    /// One more row, at `offset`, folded into the checksum by `digest`.
    fn row(
        &mut self,
        digest: impl FnOnce(u32) -> Result<u32, FormatError>,
        offset: i64,
    ) -> Result<(), StorageError> {
        let expected = self.first + self.rows;
        if offset != expected || expected > self.last {
            return Err(self.wrong_rows(format!("row {} holds offset {offset}", self.rows)));
        }
        self.crc = digest(self.crc).map_err(|e| StorageError::corrupt(self.path, e))?;
        self.rows += 1;
        Ok(())
    }

    fn finish(self) -> Result<(), StorageError> {
        if self.rows != self.last - self.first + 1 {
            return Err(self.wrong_rows(format!("holds {} rows", self.rows)));
        }
        if self.crc != self.stored {
            return Err(StorageError::corrupt(
                self.path,
                FormatError::Checksum {
                    what: "parquet row group",
                    stored: self.stored,
                    computed: self.crc,
                },
            ));
        }
        Ok(())
    }
}

/// Reads every row group of a file through the verified reader, so a query engine that
/// scans the file on its own is given only a file whose every record checks out.
pub async fn verify(
    store: Arc<dyn ObjectStore>,
    path: &str,
    size: u64,
) -> Result<u64, StorageError> {
    let file = open(store.clone(), path, size).await?;
    let mut rows = 0;
    for group in 0..file.row_groups.len() {
        rows += read_row_group(store.clone(), path, size, &file, group)
            .await?
            .len() as u64;
    }
    Ok(rows)
}

/// The base columns of one Arrow batch of a Cairn file, typed, with each row's parts read
/// in place.
struct Columns<'a> {
    offsets: &'a arrow_array::PrimitiveArray<Int64Type>,
    timestamps: &'a arrow_array::PrimitiveArray<TimestampMillisecondType>,
    keys: &'a BinaryArray,
    values: &'a BinaryArray,
    /// Each row's range of `header_keys`/`header_values`.
    header_offsets: &'a [i32],
    header_keys: &'a StringArray,
    header_values: &'a BinaryArray,
    /// Int64 since the tables; UInt64 in files written before.
    producers: Producers<'a>,
    sequences: &'a arrow_array::PrimitiveArray<Int64Type>,
}

enum Producers<'a> {
    Signed(&'a arrow_array::PrimitiveArray<Int64Type>),
    Unsigned(&'a arrow_array::PrimitiveArray<UInt64Type>),
}

impl<'a> Columns<'a> {
    fn of(batch: &'a RecordBatch) -> Result<Self, FormatError> {
        let wrong = |what: &str| FormatError::Invalid {
            what: "parquet column",
            reason: format!("column `{what}` has the wrong type"),
        };
        if batch.num_columns() < BASE_COLUMNS {
            return Err(FormatError::Invalid {
                what: "parquet file",
                reason: format!(
                    "{} columns where a Cairn file has at least {BASE_COLUMNS}",
                    batch.num_columns()
                ),
            });
        }
        let col = |i: usize| batch.column(i).as_ref();
        let headers = col(4)
            .as_list_opt::<i32>()
            .ok_or_else(|| wrong("headers"))?;
        let entries = headers
            .values()
            .as_struct_opt()
            .ok_or_else(|| wrong("headers"))?;
        if entries.num_columns() < 2 {
            return Err(wrong("headers"));
        }
        let producers = match (
            col(5).as_primitive_opt::<Int64Type>(),
            col(5).as_primitive_opt::<UInt64Type>(),
        ) {
            (Some(a), _) => Producers::Signed(a),
            (_, Some(a)) => Producers::Unsigned(a),
            (None, None) => return Err(wrong("producer_id")),
        };
        let cols = Columns {
            offsets: col(0)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong("offset"))?,
            timestamps: col(1)
                .as_primitive_opt::<TimestampMillisecondType>()
                .ok_or_else(|| wrong("timestamp"))?,
            keys: col(2).as_binary_opt::<i32>().ok_or_else(|| wrong("key"))?,
            values: col(3)
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("value"))?,
            header_offsets: headers.value_offsets(),
            header_keys: entries
                .column(0)
                .as_string_opt::<i32>()
                .ok_or_else(|| wrong("headers.key"))?,
            header_values: entries
                .column(1)
                .as_binary_opt::<i32>()
                .ok_or_else(|| wrong("headers.value"))?,
            producers,
            sequences: col(6)
                .as_primitive_opt::<Int64Type>()
                .ok_or_else(|| wrong("sequence"))?,
        };
        // Every header range must lie within the entries, so reading one cannot panic.
        let n = cols.header_keys.len().min(cols.header_values.len());
        let ok = cols.header_offsets.len() == batch.num_rows() + 1
            && cols
                .header_offsets
                .windows(2)
                .all(|w| 0 <= w[0] && w[0] <= w[1] && w[1] as usize <= n);
        if !ok {
            return Err(wrong("headers"));
        }
        Ok(cols)
    }

    fn rows(&self) -> usize {
        self.offsets.len()
    }

    fn offset(&self, i: usize) -> i64 {
        self.offsets.value(i)
    }

    fn timestamp(&self, i: usize) -> i64 {
        self.timestamps.value(i)
    }

    fn key(&self, i: usize) -> &'a [u8] {
        self.keys.value(i)
    }

    fn value(&self, i: usize) -> &'a [u8] {
        self.values.value(i)
    }

    fn headers(
        &self,
        i: usize,
    ) -> impl ExactSizeIterator<Item = (&'a str, &'a [u8])> + Clone + use<'a> {
        let (keys, values) = (self.header_keys, self.header_values);
        let range = self.header_offsets[i] as usize..self.header_offsets[i + 1] as usize;
        range.map(move |j| (keys.value(j), values.value(j)))
    }

    /// Bytes of keys, values and headers in `rows`, plus 16 per row: an encoder's capacity.
    fn bytes(&self, rows: std::ops::Range<usize>) -> usize {
        let span = |o: &[i32], r: &std::ops::Range<usize>| (o[r.end] - o[r.start]).max(0) as usize;
        let h = self.header_offsets[rows.start] as usize..self.header_offsets[rows.end] as usize;
        span(self.keys.value_offsets(), &rows)
            + span(self.values.value_offsets(), &rows)
            + span(self.header_keys.value_offsets(), &h)
            + span(self.header_values.value_offsets(), &h)
            + 16 * (rows.len() + h.len())
    }

    fn producer(&self, i: usize) -> Result<Option<(u64, i64)>, FormatError> {
        let id = match self.producers {
            Producers::Signed(a) if a.is_null(i) => return Ok(None),
            Producers::Unsigned(a) if a.is_null(i) => return Ok(None),
            Producers::Signed(a) => {
                u64::try_from(a.value(i)).map_err(|_| FormatError::Invalid {
                    what: "parquet column",
                    reason: format!("producer_id {} is negative", a.value(i)),
                })?
            }
            Producers::Unsigned(a) => a.value(i),
        };
        Ok(Some((id, self.sequences.value(i))))
    }

    /// Folds row `i` into a row group's CRC32C as [`record_digest`] does.
    fn digest(&self, crc: u32, i: usize) -> Result<u32, FormatError> {
        Ok(digest_parts(
            crc,
            self.offset(i),
            self.timestamp(i),
            self.key(i),
            self.value(i),
            self.headers(i),
            self.producer(i)?,
        ))
    }

    /// Row `i` as a record (keys, values and headers copied out).
    fn record(&self, i: usize) -> Result<StoredRecord, FormatError> {
        Ok(StoredRecord {
            offset: self.offset(i),
            timestamp_ms: self.timestamp(i),
            key: Bytes::copy_from_slice(self.key(i)),
            value: Bytes::copy_from_slice(self.value(i)),
            headers: self
                .headers(i)
                .map(|(k, v)| (k.to_string(), Bytes::copy_from_slice(v)))
                .collect(),
            producer: self.producer(i)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::file::reader::{FileReader, SerializedFileReader};

    use super::*;

    fn records(n: i64) -> Vec<StoredRecord> {
        (0..n)
            .map(|i| StoredRecord {
                offset: 100 + i,
                timestamp_ms: 1_700_000_000_000 + i,
                key: if i % 3 == 0 {
                    Bytes::new()
                } else {
                    Bytes::from(format!("key-{}", i % 10))
                },
                value: Bytes::from(format!("value {i} {}", "x".repeat((i % 50) as usize))),
                headers: (0..(i % 3))
                    .map(|h| (format!("h{h}"), Bytes::from(vec![h as u8; 2])))
                    .collect(),
                producer: (i % 2 == 0).then_some((7, i)),
            })
            .collect()
    }

    #[tokio::test]
    async fn typed_columns_sit_after_the_base_ones_and_readers_skip_them() {
        use crate::value_schema::parse_json_schema;
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let columns = parse_json_schema(
            r#"{"type":"object","properties":{"amount":{"type":"number"},"who":{"type":"string"}}}"#,
        )
        .unwrap();
        let input: Vec<StoredRecord> = (0..50)
            .map(|i| StoredRecord {
                offset: i,
                timestamp_ms: 1_700_000_000_000,
                key: Bytes::new(),
                value: if i % 5 == 0 {
                    Bytes::from_static(b"not json")
                } else {
                    Bytes::from(format!(r#"{{"amount": {i}.5, "who": "u{i}"}}"#))
                },
                headers: vec![],
                producer: None,
            })
            .collect();
        let file = write(store.clone(), "orders", 0, 1, &input, &columns)
            .await
            .unwrap();
        // Cairn's own reader: the records as written, whatever columns follow.
        let opened = open(store.clone(), &file.path, file.size).await.unwrap();
        let back = read_row_group(store.clone(), &file.path, file.size, &opened, 0)
            .await
            .unwrap();
        assert_eq!(back, input);
        // Any other reader: the typed columns, NULL where the value does not follow.
        let bytes = store
            .get(&Path::from(file.path.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        let batch = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(batch.schema().field(BASE_COLUMNS).name(), "amount");
        let amount = batch
            .column_by_name("amount")
            .unwrap()
            .as_primitive::<arrow_array::types::Float64Type>();
        assert!(amount.is_null(0));
        assert_eq!(amount.value(3), 3.5);
        let who = batch.column_by_name("who").unwrap().as_string::<i32>();
        assert_eq!(who.value(7), "u7");
    }

    /// Value bytes as a producer would send them: incompressible, or words.
    fn workload(n: usize, size: usize, text: bool) -> Vec<StoredRecord> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let words = [
            "order", "paid", "shipped", "EUR", "customer", "berlin", "ok", "the",
        ];
        (0..n)
            .map(|i| {
                let value: Vec<u8> = if text {
                    let mut v = String::new();
                    while v.len() < size {
                        v.push_str(words[rng.random_range(0..words.len())]);
                        v.push(' ');
                    }
                    v.truncate(size);
                    v.into_bytes()
                } else {
                    (0..size).map(|_| rng.random()).collect()
                };
                StoredRecord {
                    offset: i as i64,
                    timestamp_ms: 1_790_000_000_000 + (i / 50) as i64,
                    key: Bytes::new(),
                    value: Bytes::from(value),
                    headers: vec![],
                    producer: Some((3, i as i64)),
                }
            })
            .collect()
    }

    /// A row group read as frames holds exactly the records [`read_row_group`] returns, in
    /// frames of the asked size, and random values are packed as stored zstd blocks while
    /// text is compressed.
    #[tokio::test]
    async fn row_groups_come_back_as_frames_packed_by_what_compresses() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let cases = [
            ("mixed", records(5_000), None),
            ("random", workload(5_000, 1024, false), Some(Packing::Store)),
            ("text", workload(5_000, 1024, true), Some(Packing::Compress)),
        ];
        for (i, (name, input, expected)) in cases.into_iter().enumerate() {
            let file = write(store.clone(), name, 0, i as u64, &input, &[])
                .await
                .unwrap();
            let opened = open(store.clone(), &file.path, file.size).await.unwrap();
            let mut seen = Vec::new();
            for group in 0..opened.row_groups.len() {
                if let Some(expected) = expected {
                    assert_eq!(packing(&opened, group), expected, "{name} group {group}");
                }
                let records = read_row_group(store.clone(), &file.path, file.size, &opened, group)
                    .await
                    .unwrap();
                for codec in [Codec::Zstd, Codec::Lz4Frame, Codec::None] {
                    let frames = read_row_group_frames(
                        store.clone(),
                        &file.path,
                        file.size,
                        &opened,
                        group,
                        codec,
                        700,
                    )
                    .await
                    .unwrap();
                    let mut next = records.first().map_or(0, |r| r.offset);
                    let mut opened_records = Vec::new();
                    for f in frames {
                        assert_eq!(f.base_offset, next, "{name}: frames are dense");
                        let header = f.header.unwrap();
                        assert!(header.record_count <= 700);
                        next += i64::from(header.record_count);
                        opened_records.extend(cairn_proto::open_frame(&header, f.payload).unwrap());
                    }
                    assert_eq!(opened_records.len(), records.len());
                    for (r, o) in records.iter().zip(&opened_records) {
                        assert_eq!(
                            (r.timestamp_ms, &r.key, &r.value),
                            (o.timestamp_ms, &o.key, &o.value)
                        );
                        let headers: Vec<_> = o
                            .headers
                            .iter()
                            .map(|h| (h.key.clone(), h.value.clone()))
                            .collect();
                        assert_eq!(r.headers, headers);
                    }
                }
                seen.extend(records);
            }
            assert_eq!(seen, input, "{name}");
        }
    }

    /// Parquet of small records is no larger than their zstd-compressed frames (the
    /// segments it replaces): lengths apart from the bytes, no dictionary where values do
    /// not repeat, zstd's level by what a sample gains.
    #[tokio::test]
    async fn small_records_are_no_larger_than_their_frames() {
        for (size, text) in [(16, false), (100, true), (1024, false)] {
            let records = workload(200_000 / size.min(100) * 10, size, text);
            let frames: usize = records
                .chunks((1 << 20) / (size + 10))
                .map(|c| {
                    let batch: Vec<cairn_proto::v2::Record> = c
                        .iter()
                        .map(|r| cairn_proto::v2::Record {
                            timestamp_ms: r.timestamp_ms,
                            key: r.key.clone(),
                            value: r.value.clone(),
                            headers: vec![],
                        })
                        .collect();
                    let frame = cairn_proto::build_frame(batch, cairn_proto::v2::Codec::Zstd, None)
                        .unwrap();
                    frame.payload.len() + crate::segment::FRAME_PREFIX_LEN + 60
                })
                .sum();
            let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
            let file = write(store, "t", 0, 1, &records, &[]).await.unwrap();
            let ratio = file.size as f64 / frames as f64;
            assert!(
                ratio < 1.0,
                "{size}-byte {} values: Parquet {} bytes against {frames} bytes of frames ({ratio:.3})",
                if text { "text" } else { "random" },
                file.size
            );
        }
    }

    #[tokio::test]
    async fn round_trips_with_stats_and_bloom_filter() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let input = records(100_000);
        let file = write(store.clone(), "orders", 3, 0x2a, &input, &[])
            .await
            .unwrap();
        assert_eq!(
            file.path,
            "topics/orders/partition=3/00000000000000000100-00000000000000100099-2a.parquet"
        );
        let head = store.head(&Path::from(file.path.as_str())).await.unwrap();
        assert_eq!(head.size, file.size, "the writer counts every byte");
        let opened = open(store.clone(), &file.path, head.size).await.unwrap();
        let groups = opened.row_groups.clone();
        assert_eq!(groups.len() as u32, file.row_groups);
        assert_eq!(groups.first().map(|g| g.0), Some(100));
        assert_eq!(groups.last().map(|g| g.1), Some(100_099));
        let last = groups.len() - 1;
        let tail = read_row_group(store.clone(), &file.path, head.size, &opened, last)
            .await
            .unwrap();
        assert_eq!(tail.first().map(|r| r.offset), Some(groups[last].0));
        assert_eq!(tail.last(), input.last());
        assert_eq!(
            (file.first_offset, file.last_offset, file.rows),
            (100, 100_099, 100_000)
        );
        let bytes = store
            .get(&Path::from(file.path.as_str()))
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();

        // Metadata: several row groups, offset statistics, a bloom filter on `key`.
        let reader = SerializedFileReader::new(bytes.clone()).unwrap();
        let meta = reader.metadata();
        assert!(
            meta.num_row_groups() > 1,
            "{} row groups",
            meta.num_row_groups()
        );
        let rg = meta.row_group(0);
        let offset_stats = rg.column(0).statistics().expect("offset statistics");
        assert_eq!(offset_stats.min_bytes_opt().map(|b| b.len()), Some(8));
        assert!(
            rg.column(2).bloom_filter_offset().is_some(),
            "bloom filter on key"
        );
        assert!(
            rg.column(0).column_index_offset().is_some(),
            "page index written for offset"
        );
        assert!(
            rg.column(0)
                .encodings()
                .any(|e| e == parquet::basic::Encoding::DELTA_BINARY_PACKED),
            "dense offsets are delta-encoded"
        );

        // Rows: identical to the input.
        let mut rows = 0usize;
        for batch in ParquetRecordBatchReaderBuilder::try_new(bytes)
            .unwrap()
            .build()
            .unwrap()
        {
            let batch = batch.unwrap();
            let offsets = batch.column(0).as_primitive::<Int64Type>();
            let ts = batch.column(1).as_primitive::<TimestampMillisecondType>();
            let keys = batch.column(2).as_binary::<i32>();
            let values = batch.column(3).as_binary::<i32>();
            let headers = batch.column(4).as_list::<i32>();
            let producers = batch.column(5).as_primitive::<Int64Type>();
            let sequences = batch.column(6).as_primitive::<Int64Type>();
            for i in 0..batch.num_rows() {
                let want = &input[rows + i];
                assert_eq!(offsets.value(i), want.offset);
                assert_eq!(ts.value(i), want.timestamp_ms);
                assert_eq!(keys.value(i), &want.key[..]);
                assert_eq!(values.value(i), &want.value[..]);
                let h = headers.value(i);
                let h = h.as_struct();
                assert_eq!(h.len(), want.headers.len());
                for (j, (k, v)) in want.headers.iter().enumerate() {
                    assert_eq!(h.column(0).as_string::<i32>().value(j), k);
                    assert_eq!(h.column(1).as_binary::<i32>().value(j), &v[..]);
                }
                match want.producer {
                    Some((id, seq)) => {
                        assert_eq!((producers.value(i) as u64, sequences.value(i)), (id, seq));
                    }
                    None => assert!(producers.is_null(i) && sequences.is_null(i)),
                }
            }
            rows += batch.num_rows();
        }
        assert_eq!(rows, input.len());
    }

    /// A file larger than the writer's 10 MiB buffer goes up in parts; when the upload
    /// fails half way the write fails cleanly (it once panicked: object_store's BufWriter
    /// cannot abort an upload whose completion failed) and leaves no object.
    #[tokio::test]
    async fn a_multipart_upload_failing_half_way_fails_the_write_cleanly() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let rates = crate::StoreFaultRates {
            part_fail: 1.0,
            ..Default::default()
        };
        let faulty = Arc::new(crate::FaultyStore::with_rates(inner.clone(), rates, 3));
        // 12 values of 1 MiB that do not compress (xorshift).
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let input: Vec<StoredRecord> = (0..12)
            .map(|i| {
                let value: Vec<u8> = (0..1 << 20)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                StoredRecord {
                    offset: i,
                    timestamp_ms: 1_700_000_000_000,
                    key: Bytes::new(),
                    value: Bytes::from(value),
                    headers: Vec::new(),
                    producer: None,
                }
            })
            .collect();
        let failed = write(faulty.clone(), "big", 0, 1, &input, &[]).await;
        assert!(failed.is_err(), "the upload failed half way: {failed:?}");
        assert_eq!(faulty.counts().failed_uploads, 1);
        let listed = inner.list(None).collect::<Vec<_>>().await;
        assert!(listed.is_empty(), "{listed:?}");
        // The same write through a healthy store is whole.
        let file = write(inner.clone(), "big", 0, 1, &input, &[]).await;
        assert!(file.is_ok(), "{file:?}");
    }

    #[tokio::test]
    async fn refuses_to_write_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        assert!(write(store, "t", 0, 1, &[], &[]).await.is_err());
    }
}
