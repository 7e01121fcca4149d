//! Corrupt stored bytes are never served as records. For a compacted Parquet file and for
//! a segment object, every byte in turn is flipped (written back to the `file://` store
//! under the same key) and the object read again the way the agent reads it: each read
//! either returns exactly the original records or fails with a storage error of kind
//! `DataLoss` — never other records, never another kind of error, never a panic. Then,
//! through an agent with cold caches, a corrupted (or missing) object makes Fetch answer
//! DATA_LOSS.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fmt::Debug;
use std::future::Future;
use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_agent::AgentSettings;
use cairn_client::{Admin, ErrorReason, TopicOptions};
use cairn_compactor::{Compactor, CompactorConfig};
use cairn_metadata::{EntryKind, IndexEntry, Metadata, SystemClock};
use cairn_proto::v2::{
    self, Codec, Record, RecordHeader, consumer_service_client::ConsumerServiceClient,
    producer_service_client::ProducerServiceClient,
};
use cairn_proto::{build_frame, open_frame};
use cairn_storage::parquet::{self as parquet_file, StoredRecord};
use cairn_storage::segment::{SegmentReader, parse_frames};
use cairn_storage::{FormatError, StorageError, StorageErrorKind};
use cairn_tests::{InProcessAgent, produce_workload, read_all, temp_dir};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tonic_types::StatusExt;

fn settings() -> AgentSettings {
    AgentSettings {
        linger: Duration::from_millis(5),
        ..AgentSettings::default()
    }
}

async fn metadata(dir: &FsPath) -> anyhow::Result<Metadata> {
    let kv =
        cairn_metadata::open_kv(&format!("sqlite:{}", dir.join("meta.sqlite").display())).await?;
    Ok(Metadata::new(kv, Arc::new(SystemClock)))
}

/// The index entries of one partition.
async fn index(m: &Metadata, topic: &str, partition: u32) -> anyhow::Result<Vec<IndexEntry>> {
    let t = m.topic(topic).await?;
    Ok(m.read_index(t.id, partition, 0, 10_000).await?.1)
}

async fn get(store: &dyn ObjectStore, key: &str) -> anyhow::Result<Bytes> {
    Ok(store.get(&Path::from(key)).await?.bytes().await?)
}

async fn put(store: &dyn ObjectStore, key: &str, bytes: Bytes) -> anyhow::Result<()> {
    store
        .put(&Path::from(key), PutPayload::from_bytes(bytes))
        .await?;
    Ok(())
}

/// `bytes` with every bit of the byte at `at` flipped.
fn flipped(bytes: &Bytes, at: usize) -> Bytes {
    let mut v = bytes.to_vec();
    v[at] ^= 0xff;
    Bytes::from(v)
}

/// What reading an object with one flipped byte gave.
#[derive(Default)]
struct Tally {
    /// The original records (the byte is not read, or not significant).
    same: usize,
    /// A storage error of kind `DataLoss`.
    caught: Vec<usize>,
    /// Other records than the original ones: the failure this test exists to catch.
    different: Vec<(usize, String)>,
    /// A storage error of another kind (a retry would not help, so it must say data loss).
    wrong_kind: Vec<(usize, String)>,
    /// The reader panicked.
    panicked: Vec<(usize, String)>,
}

impl Tally {
    /// Runs `read` (a reader over the object with byte `at` flipped) on its own task, so a
    /// panic is recorded rather than ending the test, and files the outcome.
    async fn read<T, F>(&mut self, at: usize, original: &T, read: F)
    where
        T: PartialEq + Debug + Send + 'static,
        F: Future<Output = Result<T, StorageError>> + Send + 'static,
    {
        match tokio::spawn(read).await {
            Ok(Ok(got)) if &got == original => self.same += 1,
            Ok(Ok(got)) => {
                let got = format!("{got:?}");
                self.different
                    .push((at, got.chars().take(300).collect::<String>()));
            }
            Ok(Err(e)) if e.kind() == StorageErrorKind::DataLoss => self.caught.push(at),
            Ok(Err(e)) => self.wrong_kind.push((at, format!("{:?}: {e}", e.kind()))),
            Err(join) => self.panicked.push((at, join.to_string())),
        }
    }

    /// Fails the test unless every read was the original records or data loss.
    fn check(&self, what: &str, len: usize) {
        eprintln!(
            "{what}: {len} bytes flipped one at a time: {} caught as data loss, {} harmless, \
             {} other records, {} other errors, {} panics",
            self.caught.len(),
            self.same,
            self.different.len(),
            self.wrong_kind.len(),
            self.panicked.len()
        );
        assert!(
            self.different.is_empty() && self.wrong_kind.is_empty() && self.panicked.is_empty(),
            "{what}: a flipped byte must give the original records or DataLoss.\n\
             other records at (position, records) {:?}\n\
             other error kinds at {:?}\n\
             panics at {:?}",
            &self.different[..self.different.len().min(5)],
            &self.wrong_kind[..self.wrong_kind.len().min(10)],
            &self.panicked[..self.panicked.len().min(10)],
        );
        assert_eq!(self.same + self.caught.len(), len);
        assert!(
            self.caught.len() * 2 > len,
            "{what}: most bytes of the object matter, but only {} of {len} flips were caught",
            self.caught.len()
        );
    }
}

/// Checks a Fetch of `partition` at offset 0 through a fresh agent: DATA_LOSS with its
/// reason, naming the object.
async fn expect_data_loss(
    endpoint: &str,
    topic: &str,
    partition: u32,
    object: &str,
) -> anyhow::Result<()> {
    let mut consumer = ConsumerServiceClient::new(cairn_client::connect(endpoint).await?);
    let status = consumer
        .fetch(v2::FetchRequest {
            topic: topic.into(),
            partition,
            offset: 0,
            max_bytes: None,
            max_wait_ms: 0,
        })
        .await
        .expect_err("a fetch of corrupt bytes fails");
    assert_eq!(status.code(), tonic::Code::DataLoss, "{}", status.message());
    assert_eq!(
        status
            .get_error_details()
            .error_info()
            .map(|i| i.reason.clone()),
        Some(ErrorReason::DataLoss.as_str_name().to_string()),
        "{}",
        status.message()
    );
    assert!(
        status.message().contains(object),
        "the message names the object: {}",
        status.message()
    );
    Ok(())
}

/// Every record of a Parquet file through the agent's verified reader: the footer, then
/// each row group.
async fn read_parquet(
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
) -> Result<Vec<StoredRecord>, StorageError> {
    let file = parquet_file::open(store.clone(), &key, size).await?;
    let mut out = Vec::new();
    for group in 0..file.row_groups.len() {
        out.extend(parquet_file::read_row_group(store.clone(), &key, size, &file, group).await?);
    }
    Ok(out)
}

/// Every record of a Parquet file as the agent serves it: the footer, then each row group
/// read as zstd frames straight from its columns, each frame opened as a consumer opens it.
async fn read_parquet_frames(
    store: Arc<dyn ObjectStore>,
    key: String,
    size: u64,
) -> Result<Vec<(i64, Record)>, StorageError> {
    let file = parquet_file::open(store.clone(), &key, size).await?;
    let mut out = Vec::new();
    for group in 0..file.row_groups.len() {
        let frames = parquet_file::read_row_group_frames(
            store.clone(),
            &key,
            size,
            &file,
            group,
            Codec::Zstd,
            64,
        )
        .await?;
        for f in frames {
            let header = f.header.unwrap_or_default();
            // Frames built from verified rows always open: a failure here is a bug, and the
            // tally counts it as a panic, not as caught data loss.
            let records = open_frame(&header, f.payload)
                .unwrap_or_else(|e| panic!("a frame built from verified rows does not open: {e}"));
            out.extend((f.base_offset..).zip(records));
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_byte_of_a_parquet_file_is_caught_or_harmless() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store = cairn_tests::file_store(dir.path())?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.path().join("meta.sqlite"), settings()).await?;
    Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .create_topic("ledger", 1, TopicOptions::default())
        .await?;
    // Keys, headers and idempotent stamps: every column has data.
    let mut sent =
        produce_workload(std::slice::from_ref(&agent.endpoint), "ledger", 3, 100).await?;
    sent.sort_by_key(|s| s.offset);
    assert_eq!(sent.len(), 300);
    agent.stop().await?;

    let m = metadata(dir.path()).await?;
    let compactor = Compactor::new(
        store.clone(),
        m.clone(),
        CompactorConfig {
            min_bytes: 0,
            max_age: Duration::ZERO,
            owner: "data-loss".into(),
            ..CompactorConfig::default()
        },
    );
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(
        (r.runs, r.records_compacted, r.failed_runs),
        (1, 300, 0),
        "{r:?}"
    );
    let entries = index(&m, "ledger", 0).await?;
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(entries[0].kind, EntryKind::Parquet);
    let (key, size) = (entries[0].object_key.clone(), entries[0].length);
    let original = get(store.as_ref(), &key).await?;
    assert_eq!(original.len() as u64, size);

    // The intact file holds exactly what was produced.
    let records = read_parquet(store.clone(), key.clone(), size).await?;
    assert_eq!(records.len(), 300);
    for (r, s) in records.iter().zip(&sent) {
        assert_eq!(
            (r.offset, &r.key, &r.value, &r.headers),
            (s.offset, &s.key, &s.value, &s.headers)
        );
        assert!(r.producer.is_some(), "stamped records keep their producer");
    }

    // What the agent serves from the intact file: the same records, in frames.
    let served = read_parquet_frames(store.clone(), key.clone(), size).await?;
    let expected: Vec<(i64, Record)> = records
        .iter()
        .map(|r| {
            let headers = r.headers.iter().map(|(k, v)| RecordHeader {
                key: k.clone(),
                value: v.clone(),
            });
            let record = Record {
                timestamp_ms: r.timestamp_ms,
                key: r.key.clone(),
                value: r.value.clone(),
                headers: headers.collect(),
            };
            (r.offset, record)
        })
        .collect();
    assert!(served == expected, "the frames hold the file's records");

    let started = std::time::Instant::now();
    let (mut tally, mut served_tally) = (Tally::default(), Tally::default());
    for at in 0..original.len() {
        put(store.as_ref(), &key, flipped(&original, at)).await?;
        tally
            .read(at, &records, read_parquet(store.clone(), key.clone(), size))
            .await;
        served_tally
            .read(
                at,
                &expected,
                read_parquet_frames(store.clone(), key.clone(), size),
            )
            .await;
    }
    eprintln!("parquet flips read in {:?}", started.elapsed());

    // Through an agent with cold caches: a flipped byte in the column data (before the
    // footer) that the reader catches makes Fetch answer DATA_LOSS, and the SDK consumer
    // reports it as such.
    let footer_len =
        u32::from_le_bytes(original[original.len() - 8..original.len() - 4].try_into()?);
    let data_end = original.len() - 8 - footer_len as usize;
    let in_data: Vec<usize> = tally
        .caught
        .iter()
        .copied()
        .filter(|at| (4..data_end).contains(at))
        .collect();
    assert!(!in_data.is_empty(), "flips in the column data are caught");
    let at = in_data[in_data.len() / 2];
    put(store.as_ref(), &key, flipped(&original, at)).await?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.path().join("meta.sqlite"), settings()).await?;
    expect_data_loss(&agent.endpoint, "ledger", 0, &key).await?;
    let err = read_all(&agent.endpoint, "ledger")
        .await
        .expect_err("the consumer cannot read past corrupt bytes");
    let client = err
        .downcast_ref::<cairn_client::ClientError>()
        .expect("a client error");
    assert_eq!(client.code(), Some(tonic::Code::DataLoss), "{client}");
    assert_eq!(client.reason(), Some(ErrorReason::DataLoss), "{client}");
    agent.stop().await?;

    // Repaired, the same agent setup serves every record again.
    put(store.as_ref(), &key, original.clone()).await?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.path().join("meta.sqlite"), settings()).await?;
    let consumed = read_all(&agent.endpoint, "ledger").await?;
    assert_eq!(consumed.len(), 300);
    agent.stop().await?;

    // Last, so the agent's answer above is checked even when this fails.
    tally.check(&format!("parquet file {key}"), original.len());
    served_tally.check(&format!("parquet file {key} as frames"), original.len());
    Ok(())
}

/// 100 records of partition `p`, with keys and headers.
fn partition_records(p: u32) -> Vec<Record> {
    (0..100i64)
        .map(|i| Record {
            timestamp_ms: 1_700_000_000_000 + i,
            key: Bytes::from(format!("key-{p}-{}", i % 7)),
            value: Bytes::from(format!(
                "partition {p} record {i} {}",
                "y".repeat((i % 40) as usize)
            )),
            headers: vec![RecordHeader {
                key: "i".into(),
                value: Bytes::from(i.to_string()),
            }],
        })
        .collect()
}

/// The records of one index entry's byte range of `object`, read as the agent reads it:
/// the stored frames with both CRCs checked, their count against the entry, then each
/// frame opened (as a consumer does).
fn read_entry(object: &Bytes, entry: &IndexEntry) -> Result<Vec<Record>, StorageError> {
    let key = entry.object_key.as_str();
    let range = entry.position as usize..(entry.position + entry.length) as usize;
    let frames = parse_frames(object.slice(range)).map_err(|e| StorageError::corrupt(key, e))?;
    let count: i64 = frames
        .iter()
        .map(|f| i64::from(f.header.record_count))
        .sum();
    if count != entry.end_offset - entry.base_offset || frames.len() != entry.batch_count as usize {
        return Err(StorageError::corrupt(
            key,
            FormatError::Invalid {
                what: "index entry",
                reason: format!("{count} records in {} frames", frames.len()),
            },
        ));
    }
    let mut out = Vec::new();
    for f in frames {
        out.extend(open_frame(&f.header, f.payload).map_err(|e| StorageError::corrupt(key, e))?);
    }
    Ok(out)
}

/// A whole segment object read with its footer verified (as recovery, `cairn inspect` and
/// the compactor read it), every frame opened.
fn read_segment(
    key: &str,
    object: Bytes,
) -> Result<Vec<(v2::FrameHeader, Vec<Record>)>, StorageError> {
    let (_footer, frames) =
        SegmentReader::read_all(object).map_err(|e| StorageError::corrupt(key, e))?;
    frames
        .into_iter()
        .map(|f| {
            let records =
                open_frame(&f.header, f.payload).map_err(|e| StorageError::corrupt(key, e))?;
            Ok((f.header, records))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_flipped_byte_of_a_segment_is_caught_or_harmless() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store = cairn_tests::file_store(dir.path())?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.path().join("meta.sqlite"), settings()).await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("seg", 3, TopicOptions::default())
        .await?;
    // One request, so one segment: a frame per partition, one per codec.
    let codecs = [Codec::Zstd, Codec::Lz4Frame, Codec::None];
    let batches = (0..3u32)
        .map(|p| {
            Ok(v2::ProduceBatch {
                topic: "seg".into(),
                partition: p,
                frame: Some(build_frame(partition_records(p), codecs[p as usize], None)?),
                expected_offset: None,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    ProducerServiceClient::new(channel)
        .produce(v2::ProduceRequest {
            batches,
            atomic: false,
        })
        .await?;
    agent.stop().await?;

    let mut keys = Vec::new();
    let mut list = store.list(Some(&Path::from("segments")));
    while let Some(meta) = list.next().await {
        keys.push(meta?.location.to_string());
    }
    assert_eq!(keys.len(), 1, "one segment: {keys:?}");
    let key = keys.remove(0);
    let m = metadata(dir.path()).await?;
    let mut entries = Vec::new();
    for p in 0..3 {
        let e = index(&m, "seg", p).await?;
        assert_eq!(e.len(), 1, "{e:?}");
        assert_eq!((e[0].kind, &e[0].object_key), (EntryKind::Segment, &key));
        entries.push(e[0].clone());
    }
    let original = get(store.as_ref(), &key).await?;

    // The intact object: every frame opens to what was sent, by either path.
    let whole = read_segment(&key, original.clone())?;
    assert_eq!(whole.len(), 3);
    let mut per_entry = Vec::new();
    for (p, e) in entries.iter().enumerate() {
        let records = read_entry(&original, e)?;
        assert_eq!(records, partition_records(p as u32));
        per_entry.push(records);
    }

    // The readers work on bytes, so the flipped objects need not go through the store.
    let started = std::time::Instant::now();
    let mut full = Tally::default();
    let mut ranged = Tally::default();
    for at in 0..original.len() {
        let object = flipped(&original, at);
        let (k, o) = (key.clone(), object.clone());
        full.read(at, &whole, async move { read_segment(&k, o) })
            .await;
        let entries = entries.clone();
        ranged
            .read(at, &per_entry, async move {
                entries.iter().map(|e| read_entry(&object, e)).collect()
            })
            .await;
    }
    eprintln!("segment flips read in {:?}", started.elapsed());
    full.check(&format!("segment {key}, whole"), original.len());
    ranged.check(&format!("segment {key}, by index entry"), original.len());
    // The whole-object read checks the preamble, footer and trailer too: it catches every
    // flip. The agent's ranged reads skip bytes outside the entries, and only those.
    assert_eq!(full.same, 0, "every byte of a segment is checked");
    for at in 0..original.len() {
        let inside = entries
            .iter()
            .any(|e| (e.position..e.position + e.length).contains(&(at as u64)));
        assert_eq!(
            ranged.caught.binary_search(&at).is_ok(),
            inside,
            "byte {at}: caught by the ranged read exactly when inside an entry"
        );
    }

    // Through an agent with cold caches: a flipped payload byte in partition 0's frame
    // fails its fetch with DATA_LOSS; the other partitions' frames still serve.
    let e0 = &entries[0];
    let at = (e0.position + e0.length - 10) as usize;
    put(store.as_ref(), &key, flipped(&original, at)).await?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.path().join("meta.sqlite"), settings()).await?;
    expect_data_loss(&agent.endpoint, "seg", 0, &key).await?;
    let mut consumer = ConsumerServiceClient::new(cairn_client::connect(&agent.endpoint).await?);
    for p in 1..3u32 {
        let fetched = consumer
            .fetch(v2::FetchRequest {
                topic: "seg".into(),
                partition: p,
                offset: 0,
                max_bytes: None,
                max_wait_ms: 0,
            })
            .await?
            .into_inner();
        let mut records = Vec::new();
        for f in fetched.frames {
            records.extend(open_frame(&f.header.unwrap_or_default(), f.payload)?);
        }
        assert_eq!(records, partition_records(p), "partition {p}");
    }
    agent.stop().await?;

    // An object the index references that is gone altogether is data loss too.
    store.delete(&Path::from(key.as_str())).await?;
    let agent =
        InProcessAgent::start(store.clone(), &dir.path().join("meta.sqlite"), settings()).await?;
    expect_data_loss(&agent.endpoint, "seg", 1, &key).await?;
    agent.stop().await?;
    Ok(())
}
