//! Micro-benchmarks of the byte formats, so a format change shows its cost: building and
//! opening a frame per codec (the producer's and consumer's work), the agent's check of a
//! frame (a CRC, no decompression), and segment build and parse.

// Benchmarks panic on setup errors, like tests.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;

use cairn_proto::v2::{Codec, Record};
use cairn_proto::{FrameLimits, build_frame, check_frame, open_frame};
use cairn_storage::segment::{SegmentBuilder, SegmentReader, concat};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// 1,000 records of 1 KiB with half-compressible values (a counter and random-ish bytes).
fn records() -> Vec<Record> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    (0..1000)
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
        .collect()
}

fn frames(c: &mut Criterion) {
    let recs = records();
    let raw: usize = recs.iter().map(|r| r.key.len() + r.value.len()).sum();
    let mut g = c.benchmark_group("frame");
    g.throughput(Throughput::Bytes(raw as u64));
    for codec in [Codec::None, Codec::Zstd, Codec::Lz4Frame] {
        let name = codec.as_str_name().to_lowercase();
        g.bench_function(format!("build+{name}"), |b| {
            b.iter(|| black_box(build_frame(recs.clone(), codec, None).unwrap()))
        });
        let frame = build_frame(recs.clone(), codec, None).unwrap();
        let header = frame.header.unwrap();
        g.bench_function(format!("agent-check+{name}"), |b| {
            b.iter(|| {
                black_box(
                    check_frame(Some(&header), &frame.payload, &FrameLimits::default()).unwrap(),
                )
            })
        });
        g.bench_function(format!("open+{name}"), |b| {
            b.iter(|| black_box(open_frame(&header, frame.payload.clone()).unwrap()))
        });
    }
    g.finish();
}

fn segments(c: &mut Criterion) {
    let frame = build_frame(records(), Codec::Zstd, None).unwrap();
    let header = frame.header.unwrap();
    // A segment of the default size class: 4 partitions x 2 frames.
    let build = || {
        let mut b = SegmentBuilder::new();
        for p in 0..4u32 {
            for _ in 0..2 {
                b.push(1, p, &header, frame.payload.clone()).unwrap();
            }
        }
        b.finish(1_700_000_000_000)
    };
    let object = concat(&build().0);
    let mut g = c.benchmark_group("segment");
    g.throughput(Throughput::Bytes(object.len() as u64));
    g.bench_function("build-8-frames", |b| b.iter(|| black_box(build())));
    g.bench_function("footer", |b| {
        b.iter(|| black_box(SegmentReader::footer(&object).unwrap()))
    });
    g.bench_function("read-all-verify", |b| {
        b.iter(|| black_box(SegmentReader::read_all(object.clone()).unwrap()))
    });
    g.finish();
}

criterion_group!(benches, frames, segments);
criterion_main!(benches);
