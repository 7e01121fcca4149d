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
    let (first, last) = records.iter().fold((i64::MAX, i64::MIN), |(lo, hi), r| {
        (lo.min(r.timestamp_ms), hi.max(r.timestamp_ms))
    });
    let count = records.len();
    let raw = RecordBatch { records }.encode_to_vec();
    frame_of(
        count,
        raw.len(),
        (first, last),
        codec,
        producer,
        || match codec {
            Codec::None => Ok(Bytes::from(raw)),
            _ => compress(codec, &raw),
        },
    )
}

/// How [`BatchEncoder::finish`] packs a payload in its codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    /// Run the codec's compressor.
    Compress,
    /// For bytes known not to shrink (e.g. values that compressed by under 10% where they
    /// were last stored): a zstd payload is a valid zstd frame of raw blocks, which every
    /// zstd decoder reads, written at the cost of one copy instead of a search for matches
    /// that cannot pay. Other codecs compress as with [`Packing::Compress`].
    Store,
}

/// A zstd frame (RFC 8878) holding `data` in raw blocks: a single-segment frame with its
/// content size, no checksum (the frame header's CRC32C covers the payload).
pub fn zstd_stored(data: &[u8]) -> Result<Bytes, FrameError> {
    let mut sink = Sink::new(data.len(), true);
    sink.put(data);
    sink.finish_stored()
}

/// Largest block of a zstd frame whose window is at least this size (RFC 8878 3.1.1.2.3).
const ZSTD_BLOCK: usize = 128 << 10;

/// Where [`BatchEncoder`] writes: a plain buffer, or the raw blocks of a zstd frame being
/// built in place (so a stored payload costs no copy after encoding).
#[derive(Debug)]
struct Sink {
    out: Vec<u8>,
    /// The zstd frame's current block: where its 3-byte header sits, and its bytes so far.
    block: Option<(usize, usize)>,
    /// Content bytes written.
    written: usize,
}

impl Sink {
    fn new(capacity: usize, stored: bool) -> Self {
        if !stored {
            return Sink {
                out: Vec::with_capacity(capacity),
                block: None,
                written: 0,
            };
        }
        let blocks = capacity.div_ceil(ZSTD_BLOCK).max(1);
        let mut out = Vec::with_capacity(9 + 3 * blocks + capacity);
        // Magic; Frame_Header_Descriptor: a 4-byte Frame_Content_Size (set at the end),
        // Single_Segment, no checksum, no dictionary; then the first block's header.
        out.extend_from_slice(&[0x28, 0xb5, 0x2f, 0xfd, 0b1010_0000, 0, 0, 0, 0, 0, 0, 0]);
        Sink {
            out,
            block: Some((9, 0)),
            written: 0,
        }
    }

    fn put(&mut self, mut bytes: &[u8]) {
        self.written += bytes.len();
        let Some((mut at, mut filled)) = self.block else {
            self.out.extend_from_slice(bytes);
            return;
        };
        while !bytes.is_empty() {
            if filled == ZSTD_BLOCK {
                // A full block, not the last: Block_Type 0 (raw), Block_Size.
                let header = (ZSTD_BLOCK as u32) << 3;
                self.out[at..at + 3].copy_from_slice(&header.to_le_bytes()[..3]);
                at = self.out.len();
                self.out.extend_from_slice(&[0, 0, 0]);
                filled = 0;
            }
            let n = bytes.len().min(ZSTD_BLOCK - filled);
            self.out.extend_from_slice(&bytes[..n]);
            filled += n;
            bytes = &bytes[n..];
        }
        self.block = Some((at, filled));
    }

    fn put_varint(&mut self, v: u64) {
        let mut buf = [0u8; 10];
        let mut rest = &mut buf[..];
        prost::encoding::encode_varint(v, &mut rest);
        let n = 10 - rest.len();
        self.put(&buf[..n]);
    }

    /// The zstd frame, its last block closed and its content size set.
    fn finish_stored(mut self) -> Result<Bytes, FrameError> {
        let size = u32::try_from(self.written).map_err(|_| FrameError::Compress {
            codec: "zstd",
            source: std::io::Error::other(format!("{} bytes do not fit one frame", self.written)),
        })?;
        if let Some((at, filled)) = self.block {
            let header = 1 | ((filled as u32) << 3);
            self.out[at..at + 3].copy_from_slice(&header.to_le_bytes()[..3]);
            self.out[5..9].copy_from_slice(&size.to_le_bytes());
        }
        Ok(Bytes::from(self.out))
    }
}

/// A CREATE_TIME frame of `count` records whose encoded [`RecordBatch`] takes `raw_len`
/// bytes and whose payload `pack` makes, once the count and size are checked.
fn frame_of(
    count: usize,
    raw_len: usize,
    (first, last): (i64, i64),
    codec: Codec,
    producer: Option<ProducerStamp>,
    pack: impl FnOnce() -> Result<Bytes, FrameError>,
) -> Result<Frame, FrameError> {
    let record_count = u32::try_from(count)
        .ok()
        .filter(|n| (1..=MAX_FRAME_RECORDS).contains(n))
        .ok_or_else(|| FrameError::Header {
            field: "record_count",
            reason: format!("a frame holds 1 to {MAX_FRAME_RECORDS} records, not {count}"),
        })?;
    let uncompressed_size = u32::try_from(raw_len)
        .ok()
        .filter(|n| *n <= MAX_UNCOMPRESSED_BYTES)
        .ok_or_else(|| FrameError::Header {
            field: "uncompressed_size",
            reason: format!(
                "{raw_len} bytes of records are over the {MAX_UNCOMPRESSED_BYTES}-byte frame limit"
            ),
        })?;
    let payload = pack()?;
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

/// Encodes records straight into a CAIRN_RECORDS payload (the protobuf encoding of a
/// [`RecordBatch`], byte for byte what prost writes), for readers that hold records in
/// columns rather than as [`Record`] values: no record is built, and each key, value and
/// header is copied once, into the payload (a stored zstd payload's blocks included).
#[derive(Debug)]
pub struct BatchEncoder {
    sink: Sink,
    codec: Codec,
    count: usize,
    first: i64,
    last: i64,
}

/// The encoded length of a `bytes`/`string` field holding `n` bytes (proto3 leaves an empty
/// one out).
fn bytes_field_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        1 + prost::encoding::encoded_len_varint(n as u64) + n
    }
}

impl BatchEncoder {
    /// An encoder of a frame in `codec`, packed as `packing` says, whose buffer starts with
    /// room for `bytes` (the records' keys, values and headers, plus a few bytes each, make
    /// a buffer that never grows).
    pub fn new(bytes: usize, codec: Codec, packing: Packing) -> Self {
        BatchEncoder {
            sink: Sink::new(bytes, codec == Codec::Zstd && packing == Packing::Store),
            codec,
            count: 0,
            first: i64::MAX,
            last: i64::MIN,
        }
    }

    /// Records pushed so far.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no record was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Appends one record.
    pub fn push<'a>(
        &mut self,
        timestamp_ms: i64,
        key: &[u8],
        value: &[u8],
        headers: impl Iterator<Item = (&'a str, &'a [u8])> + Clone,
    ) {
        use prost::encoding::encoded_len_varint;
        fn field(sink: &mut Sink, tag: u8, bytes: &[u8]) {
            if !bytes.is_empty() {
                sink.put(&[tag]);
                sink.put_varint(bytes.len() as u64);
                sink.put(bytes);
            }
        }
        let header_len = |k: &str, v: &[u8]| bytes_field_len(k.len()) + bytes_field_len(v.len());
        let mut len = bytes_field_len(key.len()) + bytes_field_len(value.len());
        if timestamp_ms != 0 {
            len += 1 + encoded_len_varint(timestamp_ms as u64);
        }
        for (k, v) in headers.clone() {
            let h = header_len(k, v);
            len += 1 + encoded_len_varint(h as u64) + h;
        }
        let sink = &mut self.sink;
        // RecordBatch.records = 1, Record.timestamp_ms = 1, key = 2, value = 3, headers = 4;
        // RecordHeader.key = 1, value = 2.
        sink.put(&[0x0a]);
        sink.put_varint(len as u64);
        if timestamp_ms != 0 {
            sink.put(&[0x08]);
            sink.put_varint(timestamp_ms as u64);
        }
        field(sink, 0x12, key);
        field(sink, 0x1a, value);
        for (k, v) in headers {
            sink.put(&[0x22]);
            sink.put_varint(header_len(k, v) as u64);
            field(sink, 0x0a, k.as_bytes());
            field(sink, 0x12, v);
        }
        self.count += 1;
        self.first = self.first.min(timestamp_ms);
        self.last = self.last.max(timestamp_ms);
    }

    /// The frame of the records pushed.
    pub fn finish(self) -> Result<Frame, FrameError> {
        let BatchEncoder {
            sink,
            codec,
            count,
            first,
            last,
        } = self;
        let stored = sink.block.is_some();
        frame_of(count, sink.written, (first, last), codec, None, || {
            if stored {
                return sink.finish_stored();
            }
            match codec {
                Codec::None => Ok(Bytes::from(sink.out)),
                _ => compress(codec, &sink.out),
            }
        })
    }
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

    /// Records with what the encoder must get right: zero and negative timestamps, empty
    /// keys, values and header parts, and lengths whose varints take 1, 2 and 3 bytes.
    fn awkward_records() -> Vec<Record> {
        let bytes =
            |n: usize, seed: u8| Bytes::from((0..n).map(|i| seed ^ i as u8).collect::<Vec<_>>());
        [0usize, 1, 127, 128, 300, 16_384, 70_000]
            .iter()
            .enumerate()
            .map(|(i, &n)| Record {
                timestamp_ms: [0, -1, 1, i64::MIN, i64::MAX, 1_700_000_000_000, 127][i],
                key: bytes(n % 200, 1),
                value: bytes(n, 2),
                headers: (0..i)
                    .map(|j| RecordHeader {
                        key: if j == 0 {
                            String::new()
                        } else {
                            format!("h{j}")
                        },
                        value: bytes(j * 100, 3),
                    })
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn the_batch_encoder_writes_what_prost_writes() -> Result<(), FrameError> {
        // Over 128 KiB, so stored zstd payloads span blocks, with fields split between them.
        let mut records = awkward_records();
        records.extend((0..300).map(|i| Record {
            timestamp_ms: i,
            key: Bytes::from(format!("k{i}")),
            value: Bytes::from(vec![i as u8; 999]),
            headers: vec![],
        }));
        for packing in [Packing::Compress, Packing::Store] {
            for codec in [Codec::None, Codec::Zstd, Codec::Lz4Frame] {
                let mut enc = BatchEncoder::new(0, codec, packing);
                for r in &records {
                    enc.push(
                        r.timestamp_ms,
                        &r.key,
                        &r.value,
                        r.headers.iter().map(|h| (h.key.as_str(), &h.value[..])),
                    );
                }
                assert_eq!(enc.len(), records.len());
                let frame = enc.finish()?;
                let header = frame.header.unwrap_or_default();
                let raw = decompress(codec, frame.payload.clone(), header.uncompressed_size)?;
                assert_eq!(
                    raw,
                    RecordBatch {
                        records: records.clone()
                    }
                    .encode_to_vec()
                );
                assert_eq!(
                    (header.first_timestamp_ms, header.last_timestamp_ms),
                    (i64::MIN, i64::MAX)
                );
                // Frames of negative times are refused by the agent; opening needs no check.
                assert_eq!(open_frame(&header, frame.payload)?, records);
            }
        }
        Ok(())
    }

    #[test]
    fn the_agent_accepts_a_stored_zstd_frame() -> Result<(), FrameError> {
        let mut enc = BatchEncoder::new(64, Codec::Zstd, Packing::Store);
        for r in records() {
            enc.push(
                r.timestamp_ms,
                &r.key,
                &r.value,
                r.headers.iter().map(|h| (h.key.as_str(), &h.value[..])),
            );
        }
        let frame = enc.finish()?;
        let h = check_frame(
            frame.header.as_ref(),
            &frame.payload,
            &FrameLimits::default(),
        )?;
        assert_eq!(open_frame(h, frame.payload)?, records());
        Ok(())
    }

    #[test]
    fn stored_zstd_frames_open_with_zstd_itself() -> Result<(), FrameError> {
        for n in [0usize, 1, 1000, 128 << 10, (128 << 10) + 1, 3 << 20] {
            let data: Vec<u8> = (0..n).map(|i| (i * 7 % 251) as u8).collect();
            let stored = zstd_stored(&data)?;
            assert_eq!(
                zstd::zstd_safe::get_frame_content_size(&stored)
                    .ok()
                    .flatten(),
                Some(n as u64)
            );
            let out =
                zstd::stream::decode_all(&stored[..]).map_err(|source| FrameError::Decompress {
                    codec: "zstd",
                    source,
                })?;
            assert!(out == data, "{n} bytes did not round-trip");
            assert_eq!(stored.len(), 9 + 3 * n.div_ceil(128 << 10).max(1) + n);
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
