//! Writes the seed corpus of the fuzz targets, with Cairn's own builders so every seed is
//! a valid input that the fuzzer then mutates:
//!
//! - `frame/`: encoded `cairn.v2.Frame` messages from `build_frame`, for each codec, with
//!   and without a producer stamp, keys and headers, and a LOG_APPEND_TIME one;
//! - `segment/`: segment objects from `SegmentBuilder` (empty, one frame, frames of several
//!   partitions and codecs);
//! - `parquet/`: small files from `cairn_storage::parquet::write`;
//! - `config/`: fault specs and TOML settings.
//!
//! Usage, from `fuzz/`: `cargo run -p cairn-fuzz-seeds -- corpus` (writes into
//! `corpus/<target>/`, replacing files of the same name).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use cairn_proto::build_frame;
use cairn_proto::v2::{Codec, Frame, ProducerStamp, Record, RecordHeader, TimestampType};
use cairn_storage::SegmentBuilder;
use cairn_storage::parquet::StoredRecord;
use object_store::memory::InMemory;
use object_store::{ObjectStore, ObjectStoreExt};
use prost::Message;

type Error = Box<dyn std::error::Error>;

const CODECS: [(Codec, &str); 3] = [
    (Codec::None, "none"),
    (Codec::Zstd, "zstd"),
    (Codec::Lz4Frame, "lz4"),
];

fn write(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), Error> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join(name), bytes)?;
    println!("{:>6} bytes  {}", bytes.len(), dir.join(name).display());
    Ok(())
}

fn record(ts: i64, key: &str, value: &str, headers: &[(&str, &str)]) -> Record {
    Record {
        timestamp_ms: ts,
        key: Bytes::copy_from_slice(key.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: (*k).into(),
                value: Bytes::copy_from_slice(v.as_bytes()),
            })
            .collect(),
    }
}

/// Record sets: one bare record; several with keys, headers and a repeated value (so the
/// codecs have something to compress).
fn record_sets() -> Vec<(&'static str, Vec<Record>)> {
    vec![
        ("one", vec![record(1_700_000_000_000, "", "v", &[])]),
        (
            "many",
            (0..8)
                .map(|i| {
                    record(
                        1_700_000_000_000 + i,
                        &format!("key-{}", i % 3),
                        &format!("value {i} {}", "x".repeat(i as usize * 4)),
                        if i % 2 == 0 {
                            &[("trace", "abc"), ("h", "")]
                        } else {
                            &[]
                        },
                    )
                })
                .collect(),
        ),
    ]
}

fn frames() -> Result<Vec<(String, Frame)>, Error> {
    let stamp = ProducerStamp {
        producer_id: 42,
        epoch: 3,
        base_sequence: 100,
    };
    let mut out = Vec::new();
    for (codec, cname) in CODECS {
        for (rname, records) in record_sets() {
            out.push((
                format!("{cname}-{rname}"),
                build_frame(records, codec, None)?,
            ));
        }
        let mut stamped = build_frame(record_sets()[1].1.clone(), codec, Some(stamp))?;
        out.push((format!("{cname}-idempotent"), stamped.clone()));
        if let Some(h) = stamped.header.as_mut() {
            h.timestamp_type = TimestampType::LogAppendTime as i32;
            h.append_time_ms = 1_700_000_000_500;
        }
        out.push((format!("{cname}-log-append-time"), stamped));
    }
    Ok(out)
}

fn segments() -> Result<Vec<(&'static str, Bytes)>, Error> {
    let sealed = 1_700_000_001_000;
    let mut out = Vec::new();
    let (chunks, _, _) = SegmentBuilder::new().finish(sealed);
    out.push(("empty", cairn_storage::segment::concat(&chunks)));

    let one = build_frame(record_sets()[0].1.clone(), Codec::None, None)?;
    let mut b = SegmentBuilder::new();
    b.push(7, 0, &one.header.unwrap_or_default(), one.payload)?;
    let (chunks, _, _) = b.finish(sealed);
    out.push(("one-frame", cairn_storage::segment::concat(&chunks)));

    let mut b = SegmentBuilder::new();
    let mut entries = Vec::new();
    for (i, (codec, _)) in CODECS.into_iter().enumerate() {
        let f = build_frame(record_sets()[1].1.clone(), codec, None)?;
        entries.push(b.push(
            7 + i as u64,
            i as u32,
            &f.header.unwrap_or_default(),
            f.payload,
        )?);
    }
    let (chunks, _, _) = b.finish(sealed);
    let object = cairn_storage::segment::concat(&chunks);
    out.push(("three-codecs", object.clone()));
    // An index entry's byte range (the last two frames), as the agent reads it.
    let start = entries[1].position as usize;
    let end = (entries[2].position + u64::from(entries[2].length)) as usize;
    out.push(("range-two-frames", object.slice(start..end)));
    Ok(out)
}

fn stored_records(n: i64, first: i64) -> Vec<StoredRecord> {
    (0..n)
        .map(|i| StoredRecord {
            offset: first + i,
            timestamp_ms: 1_700_000_000_000 + i,
            key: if i % 3 == 0 {
                Bytes::new()
            } else {
                Bytes::from(format!("key-{}", i % 4))
            },
            value: Bytes::from(format!("value {i}")),
            headers: (0..(i % 3))
                .map(|h| (format!("h{h}"), Bytes::from(vec![h as u8; 2])))
                .collect(),
            producer: (i % 2 == 0).then_some((7, i)),
        })
        .collect()
}

fn parquet_files() -> Result<Vec<(&'static str, Bytes)>, Error> {
    let rt = tokio::runtime::Builder::new_current_thread().build()?;
    rt.block_on(async {
        let mut out = Vec::new();
        for (name, records) in [
            ("one-record", stored_records(1, 0)),
            ("ten-records", stored_records(10, 100)),
        ] {
            let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
            let file =
                cairn_storage::parquet::write(store.clone(), "fuzz", 0, 1, &records, &[]).await?;
            let bytes = store
                .get(&object_store::path::Path::from(file.path.as_str()))
                .await?
                .bytes()
                .await?;
            // The seed must pass the reader the target runs.
            let rows = cairn_storage::parquet::verify(store, &file.path, file.size).await?;
            assert_eq!(rows, records.len() as u64);
            out.push((name, bytes));
        }
        Ok::<_, Error>(out)
    })
}

const CONFIGS: [(&str, &str); 7] = [
    (
        "faults-rates",
        "put_fail_rate=0.05,commit_fail_rate=0.05,reply_drop_rate=0.05,seed=7",
    ),
    ("faults-crash", "crash_after_commits=3"),
    (
        "faults-all",
        "put_fail_rate=0.1, get_fail_rate=0.2, put_reply_lost_rate=0.3, slow_rate=0.5, \
         slow_ms=250, commit_fail_rate=1, commit_unknown_rate=0, reply_drop_rate=0.01, \
         crash_after_commits=18446744073709551615, seed=123",
    ),
    (
        "settings",
        "segment_max_bytes = 4194304\nlinger = \"100ms\"\nmax_inflight_segments = 8\n\
         multipart_threshold = 16777216\nsegment_max_batches = 50000\n\
         max_request_bytes = 16777216\nmax_batch_uncompressed_bytes = 67108864\n\
         cache_bytes = 268435456\nmax_fetch_wait = \"30s\"\ntopic_cache_ttl = \"1s\"\n\
         producer_idle_expiry = \"7days\"\nshare_max_deliveries = 5\nagent_lease = \"10s\"\n\
         shutdown_timeout = \"10s\"\n",
    ),
    (
        "settings-short",
        "linger = \"5ms\"\nagent_lease = \"1m 30s\"\n",
    ),
    (
        "file-config",
        "listen = \"127.0.0.1:7170\"\nobject_store = \"s3://bucket/cairn\"\n\
         metadata = \"sqlite:/var/lib/cairn/meta.sqlite\"\n\n[s3]\nregion = \"us-east-1\"\n\n\
         [tuning]\nlinger = \"20ms\"\nsegment_max_bytes = 1048576\nshutdown_timeout = \"2s\"\n",
    ),
    ("empty", ""),
];

fn main() -> Result<(), Error> {
    let root: PathBuf = std::env::args_os()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("corpus"));
    for (name, frame) in frames()? {
        write(&root.join("frame"), &name, &frame.encode_to_vec())?;
    }
    for (name, bytes) in segments()? {
        write(&root.join("segment"), &name, &bytes)?;
    }
    for (name, bytes) in parquet_files()? {
        write(&root.join("parquet"), &name, &bytes)?;
    }
    for (name, text) in CONFIGS {
        write(&root.join("config"), name, text.as_bytes())?;
    }
    Ok(())
}
