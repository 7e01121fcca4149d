//! Micro-benchmarks of the byte formats, so a format change shows its cost: record-batch
//! encode/compress and decode/decompress per codec, and segment build and parse.

// Benchmarks panic on setup errors, like tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use cairn_proto::v1::{Compression, Record, RecordBatch};
use cairn_proto::{
    SegmentBuilder, SegmentReader, compress, decode_records, encode_frame, parse_frames,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use prost::Message;

/// 1,000 records of 1 KiB with half-compressible values (a counter and random-ish bytes).
fn batch() -> RecordBatch {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let records = (0..1000)
        .map(|i| {
            let mut value = format!("event {i} ").into_bytes();
            while value.len() < 1024 {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                value.push(if value.len() % 2 == 0 {
                    b'a'
                } else {
                    (seed & 0xff) as u8
                });
            }
            Record {
                timestamp_ms: 1_700_000_000_000 + i,
                key: format!("key-{}", i % 64).into(),
                value: value.into(),
                headers: Vec::new(),
            }
        })
        .collect();
    RecordBatch { records }
}

fn codecs(c: &mut Criterion) {
    let raw = Bytes::from(batch().encode_to_vec());
    let mut g = c.benchmark_group("batch");
    g.throughput(Throughput::Bytes(raw.len() as u64));
    for codec in [Compression::None, Compression::Zstd, Compression::Lz4] {
        let name = codec.as_str_name().to_lowercase();
        g.bench_function(format!("encode+{name}"), |b| {
            b.iter(|| {
                let payload = compress(codec, &raw).unwrap();
                let mut out = BytesMut::new();
                encode_frame(&mut out, 1000, codec, &payload).unwrap();
                black_box(out)
            })
        });
        let payload = compress(codec, &raw).unwrap();
        let mut framed = BytesMut::new();
        encode_frame(&mut framed, 1000, codec, &payload).unwrap();
        let framed = framed.freeze();
        g.bench_function(format!("parse+decode+{name}"), |b| {
            b.iter(|| {
                let frames = parse_frames(framed.clone()).unwrap();
                let f = &frames[0];
                black_box(decode_records(codec, 1000, f.payload.clone()).unwrap())
            })
        });
    }
    g.finish();
}

fn segments(c: &mut Criterion) {
    let raw = Bytes::from(batch().encode_to_vec());
    let payload = compress(Compression::Zstd, &raw).unwrap();
    // A segment of the default size class (~4.6 MiB): 4 partitions x 2 batches of ~590 KiB.
    let build = || {
        let mut b = SegmentBuilder::with_capacity(payload.len() * 8 + 4096);
        for p in 0..4u32 {
            for _ in 0..2 {
                b.push(1, p, 1000, Compression::Zstd, &payload, 1, 2)
                    .unwrap();
            }
        }
        b.finish(1_700_000_000_000).0
    };
    let object = build();
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Bytes(object.len() as u64));
    g.bench_function("build-8-batches", |b| b.iter(|| black_box(build())));
    g.bench_function("footer", |b| {
        b.iter(|| black_box(SegmentReader::footer(&object).unwrap()))
    });
    g.bench_function("read-all-verify", |b| {
        b.iter(|| black_box(SegmentReader::read_all(object.clone()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, codecs, segments);
criterion_main!(benches);
