//! The Parquet form of a partition's records: the table every SQL engine can read. Columns
//! `offset`, `timestamp`, `key`, `value`, `headers` (list of key/value structs),
//! `producer_id` and `sequence`; zstd; row groups sized for range reads; page-level
//! statistics (so row groups and pages can be chosen by `offset` and `timestamp`) and a
//! bloom filter on `key`. Files live at `topics/<topic>/partition=<p>/<first>-<last>.parquet`
//! (Hive style), so engines see the partition as a column.

use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, Int64Builder, TimestampMillisecondBuilder, UInt64Builder,
};
use arrow_array::{ArrayRef, BinaryArray, ListArray, RecordBatch, StringArray, StructArray};
use arrow_buffer::OffsetBuffer;
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use object_store::ObjectStore;
use object_store::buffered::BufWriter;
use object_store::path::Path;
use parquet::arrow::AsyncArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};

use crate::CompactorError;

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
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, false),
    ])
}

/// The table schema of a topic.
pub fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
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
        Field::new("producer_id", DataType::UInt64, true),
        Field::new("sequence", DataType::Int64, true),
    ]))
}

/// Where a partition's file covering `first..=last` lives.
pub fn file_path(topic: &str, partition: u32, first: i64, last: i64) -> Path {
    Path::from(format!(
        "topics/{topic}/partition={partition}/{first:020}-{last:020}.parquet"
    ))
}

fn to_batch(records: &[StoredRecord]) -> Result<RecordBatch, CompactorError> {
    let n = records.len();
    let mut offset = Int64Builder::with_capacity(n);
    let mut ts = TimestampMillisecondBuilder::with_capacity(n).with_timezone("UTC");
    let mut key = BinaryBuilder::new();
    let mut value = BinaryBuilder::new();
    let mut producer = UInt64Builder::with_capacity(n);
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
    .map_err(|e| CompactorError::Format(e.to_string()))?;
    let headers = ListArray::try_new(
        Arc::new(Field::new("item", DataType::Struct(header_fields()), false)),
        OffsetBuffer::from_lengths(header_counts),
        Arc::new(entries),
        None,
    )
    .map_err(|e| CompactorError::Format(e.to_string()))?;
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(offset.finish()),
            Arc::new(ts.finish()),
            Arc::new(key.finish()),
            Arc::new(value.finish()),
            Arc::new(headers),
            Arc::new(producer.finish()),
            Arc::new(sequence.finish()),
        ],
    )
    .map_err(|e| CompactorError::Format(e.to_string()))
}

/// Writes `records` (one partition, ascending dense offsets) as one Parquet file.
pub async fn write(
    store: Arc<dyn ObjectStore>,
    topic: &str,
    partition: u32,
    records: &[StoredRecord],
) -> Result<ParquetFile, CompactorError> {
    let (Some(first), Some(last)) = (records.first(), records.last()) else {
        return Err(CompactorError::Format("no records to write".into()));
    };
    let path = file_path(topic, partition, first.offset, last.offset);
    let avg = records
        .iter()
        .map(|r| r.key.len() + r.value.len() + 32)
        .sum::<usize>()
        / records.len();
    let rows_per_group = (ROW_GROUP_BYTES / avg.max(1)).max(1);
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_max_row_group_row_count(Some(rows_per_group))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_column_bloom_filter_enabled("key".into(), true)
        .build();
    let format = |e: parquet::errors::ParquetError| CompactorError::Format(e.to_string());
    let mut writer =
        AsyncArrowWriter::try_new(BufWriter::new(store, path.clone()), schema(), Some(props))
            .map_err(format)?;
    for chunk in records.chunks(rows_per_group) {
        writer.write(&to_batch(chunk)?).await.map_err(format)?;
    }
    writer.close().await.map_err(format)?;
    Ok(ParquetFile {
        path: path.to_string(),
        first_offset: first.offset,
        last_offset: last.offset,
        rows: records.len() as u64,
    })
}

#[cfg(test)]
mod tests {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Int64Type, TimestampMillisecondType, UInt64Type};
    use object_store::ObjectStoreExt;
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
    async fn round_trips_with_stats_and_bloom_filter() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let input = records(100_000);
        let file = write(store.clone(), "orders", 3, &input).await.unwrap();
        assert_eq!(
            file.path,
            "topics/orders/partition=3/00000000000000000100-00000000000000100099.parquet"
        );
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
            let producers = batch.column(5).as_primitive::<UInt64Type>();
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
                        assert_eq!((producers.value(i), sequences.value(i)), (id, seq));
                    }
                    None => assert!(producers.is_null(i) && sequences.is_null(i)),
                }
            }
            rows += batch.num_rows();
        }
        assert_eq!(rows, input.len());
    }

    #[tokio::test]
    async fn refuses_to_write_nothing() {
        let store: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        assert!(write(store, "t", 0, &[]).await.is_err());
    }
}
