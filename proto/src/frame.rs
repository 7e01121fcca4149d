//! The frame a client builds and a consumer opens: a [`FrameHeader`] plus one payload, the
//! protobuf-encoded [`RecordBatch`] compressed with a standard codec (zstd frame, LZ4 frame,
//! or none), with a CRC32C over the payload bytes.
//!
//! Three parties use this module: producers ([`build_frame`]), the agent ([`check_frame`],
//! which never decompresses), and consumers and the compactor ([`open_frame`], which
//! verifies the CRC, decompresses within the declared size and decodes).

use std::io::{Read, Write};

use bytes::Bytes;
use prost::Message;

use crate::FrameError;
use crate::v2::{
    Codec, Frame, FrameHeader, PayloadFormat, ProducerStamp, Record, RecordBatch, TimestampType,
};

/// Most records in one frame.
pub const MAX_FRAME_RECORDS: u32 = 1_000_000;
/// Largest decompressed payload a frame may declare (256 MiB), so a hostile header cannot
/// make a reader allocate without bound.
pub const MAX_UNCOMPRESSED_BYTES: u32 = 256 << 20;

/// CRC32C (Castagnoli) of a payload, as a frame header carries it.
pub fn payload_crc(payload: &[u8]) -> u32 {
    crc32c::crc32c(payload)
}

/// Compresses `data` with `codec` (`Unspecified` is refused).
pub fn compress(codec: Codec, data: &[u8]) -> Result<Bytes, FrameError> {
    match codec {
        Codec::None => Ok(Bytes::copy_from_slice(data)),
        Codec::Zstd => zstd::bulk::compress(data, 1)
            .map(Bytes::from)
            .map_err(|source| FrameError::Compress {
                codec: "zstd",
                source,
            }),
        Codec::Lz4Frame => {
            let mut enc = lz4_flex::frame::FrameEncoder::new(Vec::with_capacity(data.len() / 2));
            enc.write_all(data).map_err(|source| FrameError::Compress {
                codec: "lz4",
                source,
            })?;
            enc.finish()
                .map(Bytes::from)
                .map_err(|e| FrameError::Compress {
                    codec: "lz4",
                    source: std::io::Error::other(e),
                })
        }
        Codec::Unspecified => Err(FrameError::Header {
            field: "codec",
            reason: "CODEC_UNSPECIFIED: choose NONE, ZSTD or LZ4_FRAME".into(),
        }),
    }
}

/// Decompresses a payload that must decompress to exactly `size` bytes.
pub fn decompress(codec: Codec, payload: Bytes, size: u32) -> Result<Bytes, FrameError> {
    if size > MAX_UNCOMPRESSED_BYTES {
        return Err(FrameError::Header {
            field: "uncompressed_size",
            reason: format!("{size} is over the {MAX_UNCOMPRESSED_BYTES}-byte limit"),
        });
    }
    let size = size as usize;
    let out = match codec {
        Codec::None => payload,
        Codec::Zstd => {
            let mut d =
                zstd::bulk::Decompressor::new().map_err(|source| FrameError::Decompress {
                    codec: "zstd",
                    source,
                })?;
            // One byte of room beyond the declared size, so a payload that is larger is
            // caught as a size mismatch rather than truncated.
            let mut out = Vec::with_capacity(size + 1);
            d.decompress_to_buffer(&payload[..], &mut out)
                .map_err(|source| FrameError::Decompress {
                    codec: "zstd",
                    source,
                })?;
            Bytes::from(out)
        }
        Codec::Lz4Frame => {
            let mut out = Vec::with_capacity(size + 1);
            lz4_flex::frame::FrameDecoder::new(&payload[..])
                .take(size as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|source| FrameError::Decompress {
                    codec: "lz4",
                    source,
                })?;
            Bytes::from(out)
        }
        Codec::Unspecified => {
            return Err(FrameError::Header {
                field: "codec",
                reason: "CODEC_UNSPECIFIED".into(),
            });
        }
    };
    if out.len() != size {
        return Err(FrameError::Header {
            field: "uncompressed_size",
            reason: format!(
                "the header declares {size} bytes, the payload decompresses to {}{}",
                out.len(),
                if out.len() > size { " or more" } else { "" }
            ),
        });
    }
    Ok(out)
}

/// Builds a CREATE_TIME frame of `records` (each with its own timestamp) compressed with
/// `codec`, stamped with `producer` when the producer is idempotent.
pub fn build_frame(
    records: Vec<Record>,
    codec: Codec,
    producer: Option<ProducerStamp>,
) -> Result<Frame, FrameError> {
    let record_count = u32::try_from(records.len())
        .ok()
        .filter(|n| (1..=MAX_FRAME_RECORDS).contains(n))
        .ok_or_else(|| FrameError::Header {
            field: "record_count",
            reason: format!(
                "a frame holds 1 to {MAX_FRAME_RECORDS} records, not {}",
                records.len()
            ),
        })?;
    let (first, last) = records.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
        (lo.min(r.timestamp_ms), hi.max(r.timestamp_ms))
    });
    let raw = RecordBatch { records }.encode_to_vec();
    let uncompressed_size = u32::try_from(raw.len())
        .ok()
        .filter(|n| *n <= MAX_UNCOMPRESSED_BYTES)
        .ok_or_else(|| FrameError::Header {
            field: "uncompressed_size",
            reason: format!(
                "{} bytes of records are over the {MAX_UNCOMPRESSED_BYTES}-byte frame limit",
                raw.len()
            ),
        })?;
    let payload = compress(codec, &raw)?;
    Ok(Frame {
        header: Some(FrameHeader {
            record_count,
            codec: codec as i32,
            format: PayloadFormat::CairnRecords as i32,
            uncompressed_size,
            payload_crc32c: payload_crc(&payload),
            timestamp_type: TimestampType::CreateTime as i32,
            first_timestamp_ms: first,
            last_timestamp_ms: last,
            append_time_ms: 0,
            producer,
        }),
        payload,
    })
}

/// The limits [`check_frame`] applies.
#[derive(Debug, Clone, Copy)]
pub struct FrameLimits {
    /// Largest compressed payload.
    pub max_payload_bytes: usize,
    /// Largest declared uncompressed size.
    pub max_uncompressed_bytes: u32,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            max_payload_bytes: 64 << 20,
            max_uncompressed_bytes: MAX_UNCOMPRESSED_BYTES,
        }
    }
}

/// The agent's check of a produced frame, without decompressing: the CRC over the payload,
/// and the header's sizes, count, codec, format and timestamps. Returns the header.
pub fn check_frame<'a>(
    header: Option<&'a FrameHeader>,
    payload: &[u8],
    limits: &FrameLimits,
) -> Result<&'a FrameHeader, FrameError> {
    let h = header.ok_or(FrameError::Header {
        field: "header",
        reason: "missing".into(),
    })?;
    let bad = |field: &'static str, reason: String| FrameError::Header { field, reason };
    if h.record_count == 0 || h.record_count > MAX_FRAME_RECORDS {
        return Err(bad(
            "record_count",
            format!("{} is not within 1..={MAX_FRAME_RECORDS}", h.record_count),
        ));
    }
    match Codec::try_from(h.codec) {
        Ok(Codec::None | Codec::Zstd | Codec::Lz4Frame) => {}
        _ => {
            return Err(bad(
                "codec",
                format!("{} is not NONE (1), ZSTD (2) or LZ4_FRAME (3)", h.codec),
            ));
        }
    }
    if PayloadFormat::try_from(h.format) != Ok(PayloadFormat::CairnRecords) {
        return Err(bad(
            "format",
            format!("{} is not PAYLOAD_FORMAT_CAIRN_RECORDS (1)", h.format),
        ));
    }
    if payload.len() > limits.max_payload_bytes {
        return Err(FrameError::TooLarge(format!(
            "the payload is {} bytes, over the {}-byte limit",
            payload.len(),
            limits.max_payload_bytes
        )));
    }
    if h.uncompressed_size > limits.max_uncompressed_bytes {
        return Err(FrameError::TooLarge(format!(
            "uncompressed_size {} is over the {}-byte limit",
            h.uncompressed_size, limits.max_uncompressed_bytes
        )));
    }
    // Each record takes at least 2 bytes once encoded (its length-delimited tag and length).
    if u64::from(h.uncompressed_size) < 2 * u64::from(h.record_count) {
        return Err(bad(
            "uncompressed_size",
            format!(
                "{} bytes cannot hold {} records",
                h.uncompressed_size, h.record_count
            ),
        ));
    }
    if Codec::try_from(h.codec) == Ok(Codec::None) && payload.len() != h.uncompressed_size as usize
    {
        return Err(bad(
            "uncompressed_size",
            format!(
                "{} but the uncompressed payload is {} bytes",
                h.uncompressed_size,
                payload.len()
            ),
        ));
    }
    match TimestampType::try_from(h.timestamp_type) {
        Ok(TimestampType::CreateTime) => {
            if h.first_timestamp_ms < 0 || h.last_timestamp_ms < h.first_timestamp_ms {
                return Err(bad(
                    "first_timestamp_ms",
                    format!(
                        "CREATE_TIME needs 0 <= first <= last, got {}..{}",
                        h.first_timestamp_ms, h.last_timestamp_ms
                    ),
                ));
            }
        }
        Ok(TimestampType::LogAppendTime) => {}
        _ => {
            return Err(bad(
                "timestamp_type",
                format!(
                    "{} is not CREATE_TIME (1) or LOG_APPEND_TIME (2)",
                    h.timestamp_type
                ),
            ));
        }
    }
    if let Some(p) = &h.producer {
        if p.producer_id == 0 {
            return Err(bad("producer.producer_id", "0 is not an id".into()));
        }
        if p.base_sequence < 0 {
            return Err(bad(
                "producer.base_sequence",
                format!("must be 0 or more, got {}", p.base_sequence),
            ));
        }
    }
    let computed = payload_crc(payload);
    if computed != h.payload_crc32c {
        return Err(FrameError::Checksum {
            stored: h.payload_crc32c,
            computed,
        });
    }
    // Cheap checks that the payload is what the codec says, so a lying header is refused
    // here rather than stored as a frame no consumer can open.
    match Codec::try_from(h.codec) {
        Ok(Codec::Zstd) => {
            if !payload.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                return Err(bad(
                    "codec",
                    "ZSTD, but the payload is not a zstd frame".into(),
                ));
            }
            match zstd::zstd_safe::get_frame_content_size(payload) {
                Ok(Some(n)) if n == u64::from(h.uncompressed_size) => {}
                Ok(Some(n)) => {
                    return Err(bad(
                        "uncompressed_size",
                        format!("{} but the zstd frame says {n}", h.uncompressed_size),
                    ));
                }
                _ => {
                    return Err(bad(
                        "codec",
                        "a ZSTD payload must carry its content size in the frame header".into(),
                    ));
                }
            }
        }
        Ok(Codec::Lz4Frame) if !payload.starts_with(&[0x04, 0x22, 0x4d, 0x18]) => {
            return Err(bad(
                "codec",
                "LZ4_FRAME, but the payload is not an LZ4 frame".into(),
            ));
        }
        _ => {}
    }
    Ok(h)
}

/// Verifies, decompresses and decodes a frame's records, checking the count, and resolves
/// every record's timestamp (a LOG_APPEND_TIME frame's records all take its append time).
pub fn open_frame(header: &FrameHeader, payload: Bytes) -> Result<Vec<Record>, FrameError> {
    let computed = payload_crc(&payload);
    if computed != header.payload_crc32c {
        return Err(FrameError::Checksum {
            stored: header.payload_crc32c,
            computed,
        });
    }
    let codec = Codec::try_from(header.codec).map_err(|_| FrameError::Header {
        field: "codec",
        reason: format!("unknown codec {}", header.codec),
    })?;
    let mut batch = match PayloadFormat::try_from(header.format) {
        Ok(PayloadFormat::CairnRecords) => {
            let raw = decompress(codec, payload, header.uncompressed_size)?;
            RecordBatch::decode(raw).map_err(FrameError::Decode)?
        }
        // A Kafka batch stored as it came: it compresses its own records.
        Ok(PayloadFormat::KafkaRecords) if codec == Codec::None => RecordBatch {
            records: crate::kafka::open_kafka_batch(&payload, MAX_UNCOMPRESSED_BYTES)?,
        },
        _ => {
            return Err(FrameError::Header {
                field: "format",
                reason: format!(
                    "payload format {} with codec {} is neither CAIRN_RECORDS nor KAFKA_RECORDS \
                     with codec NONE",
                    header.format, header.codec
                ),
            });
        }
    };
    if batch.records.len() != header.record_count as usize {
        return Err(FrameError::Header {
            field: "record_count",
            reason: format!(
                "the header says {}, the payload holds {}",
                header.record_count,
                batch.records.len()
            ),
        });
    }
    if header.timestamp_type == TimestampType::LogAppendTime as i32 {
        for r in &mut batch.records {
            r.timestamp_ms = header.append_time_ms;
        }
    }
    Ok(batch.records)
}

/// The partition Cairn's clients put a keyed record in: Kafka's default partitioner,
/// `(murmur2(key) & 0x7fffffff) % partitions`, so keys co-partition across clients and with
/// Kafka. `partitions` must be at least 1.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    (murmur2(key) & 0x7fff_ffff) % partitions.max(1)
}

/// Kafka's 32-bit MurmurHash2 (seed 0x9747b28c), as `org.apache.kafka.common.utils.Utils`
/// computes it.
pub fn murmur2(data: &[u8]) -> u32 {
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    let len = data.len();
    let mut h: u32 = 0x9747_b28c ^ (len as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= u32::from(rest[2]) << 16;
    }
    if rest.len() >= 2 {
        h ^= u32::from(rest[1]) << 8;
    }
    if !rest.is_empty() {
        h ^= u32::from(rest[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v2::RecordHeader;

    fn records() -> Vec<Record> {
        vec![
            Record {
                timestamp_ms: 1_700_000_000_000,
                key: Bytes::from_static(b"k1"),
                value: Bytes::from_static(b"hello"),
                headers: vec![RecordHeader {
                    key: "h".into(),
                    value: Bytes::from_static(b"v"),
                }],
            },
            Record {
                timestamp_ms: 1_700_000_000_001,
                key: Bytes::new(),
                value: Bytes::from_static(b"world"),
                headers: vec![],
            },
        ]
    }

    #[test]
    fn frames_round_trip_with_every_codec() -> Result<(), FrameError> {
        for codec in [Codec::None, Codec::Zstd, Codec::Lz4Frame] {
            let frame = build_frame(records(), codec, None)?;
            let h = check_frame(
                frame.header.as_ref(),
                &frame.payload,
                &FrameLimits::default(),
            )?;
            assert_eq!(h.first_timestamp_ms, 1_700_000_000_000);
            assert_eq!(h.last_timestamp_ms, 1_700_000_000_001);
            assert_eq!(open_frame(h, frame.payload.clone())?, records());
        }
        Ok(())
    }

    #[test]
    fn lz4_is_the_standard_frame_format() -> Result<(), FrameError> {
        let frame = build_frame(records(), Codec::Lz4Frame, None)?;
        assert_eq!(&frame.payload[..4], &[0x04, 0x22, 0x4d, 0x18]);
        let zstd = build_frame(records(), Codec::Zstd, None)?;
        assert_eq!(&zstd.payload[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        Ok(())
    }

    #[test]
    fn log_append_time_frames_take_the_append_time() -> Result<(), FrameError> {
        let frame = build_frame(records(), Codec::None, None)?;
        let mut h = frame.header.unwrap_or_default();
        h.timestamp_type = TimestampType::LogAppendTime as i32;
        h.append_time_ms = 42;
        let opened = open_frame(&h, frame.payload)?;
        assert!(opened.iter().all(|r| r.timestamp_ms == 42));
        Ok(())
    }

    #[test]
    fn the_agent_check_names_the_field() -> Result<(), FrameError> {
        let frame = build_frame(records(), Codec::Zstd, None)?;
        let good = frame.header.unwrap_or_default();
        let limits = FrameLimits::default();
        let field = |h: FrameHeader, payload: &[u8]| match check_frame(Some(&h), payload, &limits) {
            Err(FrameError::Header { field, .. }) => field,
            Err(FrameError::Checksum { .. }) => "crc",
            Err(FrameError::TooLarge(_)) => "too large",
            other => panic!("expected a refusal, got {other:?}"),
        };
        let mut payload = frame.payload.to_vec();
        payload[5] ^= 1;
        assert_eq!(field(good, &payload), "crc");
        let p = &frame.payload[..];
        assert_eq!(
            field(
                FrameHeader {
                    record_count: 0,
                    ..good
                },
                p
            ),
            "record_count"
        );
        assert_eq!(field(FrameHeader { codec: 9, ..good }, p), "codec");
        assert_eq!(field(FrameHeader { format: 2, ..good }, p), "format");
        assert_eq!(
            field(
                FrameHeader {
                    uncompressed_size: 3,
                    ..good
                },
                p
            ),
            "uncompressed_size"
        );
        assert_eq!(
            field(
                FrameHeader {
                    uncompressed_size: u32::MAX,
                    ..good
                },
                p
            ),
            "too large"
        );
        assert_eq!(
            field(
                FrameHeader {
                    first_timestamp_ms: good.last_timestamp_ms + 1,
                    ..good
                },
                p
            ),
            "first_timestamp_ms"
        );
        assert_eq!(
            field(
                FrameHeader {
                    timestamp_type: 0,
                    ..good
                },
                p
            ),
            "timestamp_type"
        );
        Ok(())
    }

    #[test]
    fn lying_headers_fail_on_open() -> Result<(), FrameError> {
        let frame = build_frame(records(), Codec::Zstd, None)?;
        let good = frame.header.unwrap_or_default();
        for h in [
            FrameHeader {
                record_count: 3,
                ..good
            },
            FrameHeader {
                uncompressed_size: good.uncompressed_size - 1,
                ..good
            },
            FrameHeader {
                uncompressed_size: good.uncompressed_size + 1,
                ..good
            },
            FrameHeader {
                payload_crc32c: good.payload_crc32c ^ 1,
                ..good
            },
        ] {
            assert!(open_frame(&h, frame.payload.clone()).is_err(), "{h:?}");
        }
        Ok(())
    }

    /// Kafka's own test vectors for murmur2 (`UtilsTest.testMurmur2`).
    #[test]
    fn murmur2_matches_kafka() {
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (
                b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
            ),
            (b"abc", 479_470_107),
        ];
        for (key, want) in cases {
            assert_eq!(
                murmur2(key) as i32,
                want,
                "{}",
                String::from_utf8_lossy(key)
            );
        }
        assert!(partition_for_key(b"foobar", 7) < 7);
    }
}
