//! Kafka record batches (magic 2) as Cairn stores and serves them.
//!
//! A batch produced through the agent's Kafka listener is stored as it came, as the payload
//! of a frame whose format is `PAYLOAD_FORMAT_KAFKA_RECORDS` and whose codec is `NONE` (the
//! batch compresses its own records, by its attributes). Kafka's CRC covers the batch from
//! its attributes on, so the base offset (assigned at commit) and the partition leader epoch
//! can be rewritten when the batch is served without touching the rest.
//!
//! ```text
//! baseOffset i64 | batchLength i32 | partitionLeaderEpoch i32 | magic i8 = 2 | crc u32
//! | attributes i16 | lastOffsetDelta i32 | baseTimestamp i64 | maxTimestamp i64
//! | producerId i64 | producerEpoch i16 | baseSequence i32 | recordCount i32 | records
//! ```
//!
//! Everything is big-endian. This module checks a batch without decompressing it
//! ([`check_kafka_batch`]), decodes its records into Cairn's ([`open_kafka_batch`], within a
//! bound on the decompressed size), and encodes Cairn's records as a batch for Kafka
//! fetchers ([`encode_kafka_batch`]).

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

use crate::FrameError;
use crate::v2::{Codec, FrameHeader, PayloadFormat, ProducerStamp, Record, RecordHeader};

/// Bytes of a batch before its first record.
pub const KAFKA_BATCH_HEADER_LEN: usize = 61;
/// Where the part Kafka's CRC covers begins (the attributes).
const CRC_START: usize = 21;
/// The batch attribute bits that name the compression codec.
const COMPRESSION_MASK: i16 = 0x07;
/// The attribute bit of a transactional batch.
const TRANSACTIONAL: i16 = 0x10;
/// The attribute bit of a control batch (transaction markers).
const CONTROL: i16 = 0x20;

/// What the header of a Kafka record batch says, read without decompressing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KafkaBatchInfo {
    /// Records in the batch.
    pub record_count: u32,
    /// The compression codec: 0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd.
    pub compression: u8,
    /// The first record's timestamp (ms since the epoch).
    pub base_timestamp: i64,
    /// The largest record timestamp (ms since the epoch).
    pub max_timestamp: i64,
    /// The idempotent producer's id, or -1.
    pub producer_id: i64,
    /// The idempotent producer's epoch, or -1.
    pub producer_epoch: i16,
    /// The sequence of the first record, or -1.
    pub base_sequence: i32,
    /// Whether the batch belongs to a transaction.
    pub transactional: bool,
    /// Whether the batch holds control records (transaction markers).
    pub control: bool,
}

impl KafkaBatchInfo {
    /// The producer stamp a frame of this batch carries: `None` unless the batch names a
    /// producer (id and epoch at least 0) and a sequence.
    pub fn producer(&self) -> Option<ProducerStamp> {
        if self.producer_id < 0 || self.producer_epoch < 0 || self.base_sequence < 0 {
            return None;
        }
        Some(ProducerStamp {
            producer_id: self.producer_id as u64,
            epoch: self.producer_epoch as u32,
            base_sequence: i64::from(self.base_sequence),
        })
    }
}

fn bad(reason: impl Into<String>) -> FrameError {
    FrameError::Kafka(reason.into())
}

fn i16_at(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}

fn i32_at(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn i64_at(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// Checks one whole record batch as a producer sent it, without decompressing: its length
/// field, magic, CRC, record count and codec. `batch` must be exactly one batch.
pub fn check_kafka_batch(batch: &[u8]) -> Result<KafkaBatchInfo, FrameError> {
    if batch.len() < KAFKA_BATCH_HEADER_LEN {
        return Err(bad(format!(
            "{} bytes is shorter than a batch header ({KAFKA_BATCH_HEADER_LEN})",
            batch.len()
        )));
    }
    let length = i32_at(batch, 8);
    if usize::try_from(length).ok().map(|l| l + 12) != Some(batch.len()) {
        return Err(bad(format!(
            "the batch length field says {length}, but {} bytes follow it",
            batch.len() - 12
        )));
    }
    let magic = batch[16] as i8;
    if magic != 2 {
        return Err(bad(format!(
            "message format v{magic} is not supported (only record batches, magic 2)"
        )));
    }
    let stored = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    let computed = crc32c::crc32c(&batch[CRC_START..]);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    let attributes = i16_at(batch, 21);
    let compression = (attributes & COMPRESSION_MASK) as u8;
    if compression > 4 {
        return Err(bad(format!("unknown compression codec {compression}")));
    }
    let count = i32_at(batch, 57);
    let last_delta = i32_at(batch, 23);
    let record_count = u32::try_from(count)
        .ok()
        .filter(|c| (1..=crate::MAX_FRAME_RECORDS).contains(c))
        .ok_or_else(|| {
            bad(format!(
                "record count {count} is not within 1..={}",
                crate::MAX_FRAME_RECORDS
            ))
        })?;
    if i64::from(last_delta) != i64::from(count) - 1 {
        return Err(bad(format!(
            "lastOffsetDelta {last_delta} does not match {count} records (offsets must be dense)"
        )));
    }
    Ok(KafkaBatchInfo {
        record_count,
        compression,
        base_timestamp: i64_at(batch, 27),
        max_timestamp: i64_at(batch, 35),
        producer_id: i64_at(batch, 43),
        producer_epoch: i16_at(batch, 51),
        base_sequence: i32_at(batch, 53),
        transactional: attributes & TRANSACTIONAL != 0,
        control: attributes & CONTROL != 0,
    })
}

/// The header of the frame that stores `batch` (checked by [`check_kafka_batch`], which gave
/// `info`) as it came. The payload CRC32C is derived from Kafka's own CRC, without another
/// pass over the records.
pub fn kafka_frame_header(info: &KafkaBatchInfo, batch: &[u8]) -> Result<FrameHeader, FrameError> {
    let size = u32::try_from(batch.len())
        .ok()
        .filter(|n| *n <= crate::MAX_UNCOMPRESSED_BYTES)
        .ok_or_else(|| {
            FrameError::TooLarge(format!(
                "a {}-byte batch is over the {}-byte frame limit",
                batch.len(),
                crate::MAX_UNCOMPRESSED_BYTES
            ))
        })?;
    let kafka_crc = u32::from_be_bytes([batch[17], batch[18], batch[19], batch[20]]);
    let crc = crc32c::crc32c_combine(
        crc32c::crc32c(&batch[..CRC_START]),
        kafka_crc,
        batch.len() - CRC_START,
    );
    Ok(FrameHeader {
        record_count: info.record_count,
        codec: Codec::None as i32,
        format: PayloadFormat::KafkaRecords as i32,
        uncompressed_size: size,
        payload_crc32c: crc,
        timestamp_type: crate::v2::TimestampType::CreateTime as i32,
        first_timestamp_ms: info.base_timestamp.min(info.max_timestamp),
        last_timestamp_ms: info.max_timestamp.max(info.base_timestamp),
        append_time_ms: 0,
        producer: info.producer(),
    })
}

/// A stored batch as a Kafka fetcher gets it: its base offset set to where the commit put
/// it and its partition leader epoch to 0 (neither is under the CRC).
pub fn with_base_offset(batch: &[u8], base_offset: i64) -> Bytes {
    let mut out = BytesMut::with_capacity(batch.len());
    put_at_offset(&mut out, batch, base_offset);
    out.freeze()
}

/// Appends [`with_base_offset`]'s bytes to `out`. `batch` is at least a batch header long
/// (checked when it was produced); a shorter one is appended as it is.
pub fn put_at_offset(out: &mut BytesMut, batch: &[u8], base_offset: i64) {
    if batch.len() < KAFKA_BATCH_HEADER_LEN {
        out.put_slice(batch);
        return;
    }
    out.put_i64(base_offset);
    out.put_slice(&batch[8..12]);
    out.put_i32(0);
    out.put_slice(&batch[16..]);
}

/// The records of a stored batch (checked when it was produced; the CRC is checked again
/// here), decompressed within `max_uncompressed` bytes.
pub fn open_kafka_batch(batch: &[u8], max_uncompressed: u32) -> Result<Vec<Record>, FrameError> {
    let info = check_kafka_batch(batch)?;
    let body = &batch[KAFKA_BATCH_HEADER_LEN..];
    let limit = max_uncompressed as usize;
    let raw: std::borrow::Cow<'_, [u8]> = match info.compression {
        0 => body.into(),
        1 => bounded("gzip", flate2::read::MultiGzDecoder::new(body), limit)?.into(),
        2 => snappy(body, limit)?.into(),
        3 => bounded("lz4", lz4_flex::frame::FrameDecoder::new(body), limit)?.into(),
        _ => {
            let d = zstd::stream::read::Decoder::new(body).map_err(|source| {
                FrameError::Decompress {
                    codec: "zstd",
                    source,
                }
            })?;
            bounded("zstd", d, limit)?.into()
        }
    };
    let base_timestamp = info.base_timestamp;
    let mut r = Cursor { b: &raw, at: 0 };
    // A record takes at least 7 bytes: a hostile count cannot size the allocation.
    let mut records = Vec::with_capacity((info.record_count as usize).min(raw.len() / 7));
    for i in 0..info.record_count {
        let len = r.varint()?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| r.at.checked_add(l))
            .filter(|e| *e <= r.b.len())
            .ok_or_else(|| {
                bad(format!(
                    "record {i} claims {len} bytes past the batch's end"
                ))
            })?;
        let _attributes = r.take(1)?;
        let ts_delta = r.varlong()?;
        let offset_delta = r.varint()?;
        if i64::from(offset_delta) != i64::from(i) {
            return Err(bad(format!(
                "record {i} has offset delta {offset_delta} (offsets must be dense)"
            )));
        }
        let key = r.bytes()?.unwrap_or_default();
        let value = r.bytes()?.unwrap_or_default();
        let count = r.varint()?;
        // Fields may have run past the record's own length (caught below); a header takes
        // at least two bytes of what is left of it.
        let count = usize::try_from(count)
            .ok()
            .filter(|c| *c <= end.saturating_sub(r.at))
            .ok_or_else(|| bad(format!("record {i} claims {count} headers")))?;
        let mut headers = Vec::with_capacity(count);
        for _ in 0..count {
            let name = r.bytes()?.unwrap_or_default();
            let key = String::from_utf8(name.to_vec())
                .map_err(|_| bad(format!("a header name of record {i} is not UTF-8")))?;
            let value = r.bytes()?.unwrap_or_default();
            headers.push(RecordHeader { key, value });
        }
        if r.at != end {
            return Err(bad(format!(
                "record {i} is {len} bytes long, but its fields end {} bytes from there",
                r.at as i64 - end as i64
            )));
        }
        records.push(Record {
            timestamp_ms: base_timestamp.wrapping_add(ts_delta),
            key,
            value,
            headers,
        });
    }
    if r.at != r.b.len() {
        return Err(bad(format!(
            "{} bytes follow the batch's {} records",
            r.b.len() - r.at,
            info.record_count
        )));
    }
    Ok(records)
}

/// Reads all of `reader`, refusing more than `limit` bytes.
fn bounded(codec: &'static str, reader: impl Read, limit: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = Vec::new();
    reader
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| FrameError::Decompress { codec, source })?;
    if out.len() > limit {
        return Err(FrameError::TooLarge(format!(
            "the {codec} records decompress to more than {limit} bytes"
        )));
    }
    Ok(out)
}

/// Kafka's snappy: the xerial framing Java clients write (a magic header, then blocks each
/// with a 4-byte length), or one raw snappy block as librdkafka may write.
fn snappy(body: &[u8], limit: usize) -> Result<Vec<u8>, FrameError> {
    const XERIAL: &[u8; 8] = b"\x82SNAPPY\x00";
    let fail = |e: snap::Error| FrameError::Decompress {
        codec: "snappy",
        source: std::io::Error::other(e),
    };
    let mut out = Vec::new();
    let block = |data: &[u8], out: &mut Vec<u8>| -> Result<(), FrameError> {
        let n = snap::raw::decompress_len(data).map_err(fail)?;
        if out.len() + n > limit {
            return Err(FrameError::TooLarge(format!(
                "the snappy records decompress to more than {limit} bytes"
            )));
        }
        let start = out.len();
        out.resize(start + n, 0);
        snap::raw::Decoder::new()
            .decompress(data, &mut out[start..])
            .map_err(fail)?;
        Ok(())
    };
    if body.len() >= 16 && &body[..8] == XERIAL {
        let mut at = 16;
        while at < body.len() {
            let len = body
                .get(at..at + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or_else(|| bad("a snappy block length is cut short"))?;
            let data = body
                .get(at + 4..at + 4 + len)
                .ok_or_else(|| bad("a snappy block is cut short"))?;
            block(data, &mut out)?;
            at += 4 + len;
        }
    } else {
        block(body, &mut out)?;
    }
    Ok(out)
}

/// Reads Kafka's varints and length-prefixed byte strings.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], FrameError> {
        let s = self
            .at
            .checked_add(n)
            .and_then(|end| self.b.get(self.at..end))
            .ok_or_else(|| bad("a record is cut short"))?;
        self.at += n;
        Ok(s)
    }

    fn varlong(&mut self) -> Result<i64, FrameError> {
        let mut v: u64 = 0;
        for shift in (0..70).step_by(7) {
            let byte = *self.take(1)?.first().unwrap_or(&0);
            if shift == 63 && byte > 1 {
                return Err(bad("a varint is longer than 64 bits"));
            }
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                // Zigzag.
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err(bad("a varint is longer than 10 bytes"))
    }

    fn varint(&mut self) -> Result<i32, FrameError> {
        let v = self.varlong()?;
        i32::try_from(v).map_err(|_| bad(format!("{v} does not fit a 32-bit varint")))
    }

    /// A varint length then that many bytes; `None` for length -1.
    fn bytes(&mut self) -> Result<Option<Bytes>, FrameError> {
        let len = self.varint()?;
        if len == -1 {
            return Ok(None);
        }
        let len = usize::try_from(len).map_err(|_| bad(format!("length {len} is negative")))?;
        Ok(Some(Bytes::copy_from_slice(self.take(len)?)))
    }
}

fn put_varlong(out: &mut BytesMut, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    while z >= 0x80 {
        out.put_u8((z as u8) | 0x80);
        z >>= 7;
    }
    out.put_u8(z as u8);
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    put_varlong(out, b.len() as i64);
    out.put_slice(b);
}

/// The compression a Kafka batch is encoded with (its attributes' low three bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KafkaCompression {
    /// None.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// LZ4 frame format.
    Lz4,
    /// zstd (level 3).
    Zstd,
}

/// How [`encode_kafka_batch_with`] stamps and compresses a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KafkaBatchOptions {
    /// The idempotent producer's id, epoch and the batch's first sequence number.
    pub producer: Option<(i64, i16, i32)>,
    /// The compression of the records.
    pub compression: KafkaCompression,
}

/// Cairn records as one uncompressed Kafka record batch at `base_offset` (CreateTime). An
/// empty key is sent as a null key.
pub fn encode_kafka_batch(base_offset: i64, records: &[Record]) -> Bytes {
    let mut out = BytesMut::new();
    // Without compression nothing can fail.
    let _ = put_kafka_batch(
        &mut out,
        base_offset,
        records,
        &KafkaBatchOptions::default(),
    );
    out.freeze()
}

/// [`encode_kafka_batch`] with a producer stamp and compression, as a Kafka producer
/// sends it (a producer's batches have base offset 0).
pub fn encode_kafka_batch_with(
    base_offset: i64,
    records: &[Record],
    options: &KafkaBatchOptions,
) -> Result<Bytes, FrameError> {
    let mut out = BytesMut::new();
    put_kafka_batch(&mut out, base_offset, records, options)?;
    Ok(out.freeze())
}

fn put_kafka_batch(
    out: &mut BytesMut,
    base_offset: i64,
    records: &[Record],
    options: &KafkaBatchOptions,
) -> Result<(), FrameError> {
    let base_ts = records.first().map_or(0, |r| r.timestamp_ms);
    let max_ts = records.iter().map(|r| r.timestamp_ms).max().unwrap_or(0);
    let size: usize = records
        .iter()
        .map(|r| {
            r.key.len()
                + r.value.len()
                + r.headers
                    .iter()
                    .map(|h| h.key.len() + h.value.len() + 10)
                    .sum::<usize>()
                + 40
        })
        .sum();
    out.reserve(KAFKA_BATCH_HEADER_LEN + size);
    let (producer_id, epoch, sequence) = options.producer.unwrap_or((-1, -1, -1));
    let attributes: i16 = match options.compression {
        KafkaCompression::None => 0,
        KafkaCompression::Gzip => 1,
        KafkaCompression::Lz4 => 3,
        KafkaCompression::Zstd => 4,
    };
    out.put_i64(base_offset);
    out.put_i32(0); // length, below
    out.put_i32(0); // partition leader epoch
    out.put_i8(2);
    out.put_u32(0); // CRC, below
    out.put_i16(attributes); // the codec; CreateTime
    out.put_i32(records.len().saturating_sub(1) as i32);
    out.put_i64(base_ts);
    out.put_i64(max_ts);
    out.put_i64(producer_id);
    out.put_i16(epoch);
    out.put_i32(sequence);
    out.put_i32(records.len() as i32);
    let mut plain = BytesMut::with_capacity(match options.compression {
        KafkaCompression::None => 0,
        _ => size,
    });
    let target = match options.compression {
        KafkaCompression::None => &mut *out,
        _ => &mut plain,
    };
    let mut body = BytesMut::with_capacity(256);
    for (i, r) in records.iter().enumerate() {
        body.clear();
        body.put_i8(0);
        put_varlong(&mut body, r.timestamp_ms.wrapping_sub(base_ts));
        put_varlong(&mut body, i as i64);
        if r.key.is_empty() {
            put_varlong(&mut body, -1);
        } else {
            put_bytes(&mut body, &r.key);
        }
        put_bytes(&mut body, &r.value);
        put_varlong(&mut body, r.headers.len() as i64);
        for h in &r.headers {
            put_bytes(&mut body, h.key.as_bytes());
            put_bytes(&mut body, &h.value);
        }
        put_varlong(target, body.len() as i64);
        target.put_slice(&body);
    }
    let failed = |codec: &str, e: std::io::Error| FrameError::Kafka(format!("{codec}: {e}"));
    match options.compression {
        KafkaCompression::None => {}
        KafkaCompression::Gzip => {
            use std::io::Write;
            let mut enc =
                flate2::write::GzEncoder::new((&mut *out).writer(), flate2::Compression::fast());
            enc.write_all(&plain).map_err(|e| failed("gzip", e))?;
            enc.finish().map_err(|e| failed("gzip", e))?;
        }
        KafkaCompression::Lz4 => {
            use std::io::Write;
            let mut enc = lz4_flex::frame::FrameEncoder::new((&mut *out).writer());
            enc.write_all(&plain).map_err(|e| failed("lz4", e))?;
            enc.finish()
                .map_err(|e| FrameError::Kafka(format!("lz4: {e}")))?;
        }
        KafkaCompression::Zstd => {
            let packed = zstd::bulk::compress(&plain, 3).map_err(|e| failed("zstd", e))?;
            out.put_slice(&packed);
        }
    }
    let length = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&length.to_be_bytes());
    let crc = crc32c::crc32c(&out[CRC_START..]);
    out[17..21].copy_from_slice(&crc.to_be_bytes());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<Record> {
        (0..5)
            .map(|i| Record {
                timestamp_ms: 1_700_000_000_000 + i * 7,
                key: if i == 2 {
                    Bytes::new()
                } else {
                    Bytes::from(format!("k{i}"))
                },
                value: Bytes::from(vec![b'v'; i as usize * 100]),
                headers: vec![
                    RecordHeader {
                        key: "h".into(),
                        value: Bytes::from_static(b"1"),
                    },
                    RecordHeader {
                        key: "h".into(),
                        value: Bytes::from_static(b"2"),
                    },
                ],
            })
            .collect()
    }

    #[test]
    fn a_batch_round_trips_and_its_frame_crc_is_the_payloads() -> Result<(), FrameError> {
        let batch = encode_kafka_batch(0, &records());
        let info = check_kafka_batch(&batch)?;
        assert_eq!(info.record_count, 5);
        assert_eq!(info.producer(), None);
        let header = kafka_frame_header(&info, &batch)?;
        assert_eq!(header.payload_crc32c, crc32c::crc32c(&batch));
        assert_eq!(header.first_timestamp_ms, 1_700_000_000_000);
        assert_eq!(header.last_timestamp_ms, 1_700_000_000_028);
        assert_eq!(open_kafka_batch(&batch, 1 << 20)?, records());
        // Served at another offset: still valid, same records.
        let moved = with_base_offset(&batch, 1234);
        assert_eq!(i64_at(&moved, 0), 1234);
        assert_eq!(open_kafka_batch(&moved, 1 << 20)?, records());
        Ok(())
    }

    /// A batch compressed as a client would: the records section through `compress`.
    fn compressed(codec: i16, compress: impl Fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let plain = encode_kafka_batch(0, &records());
        let body = compress(&plain[KAFKA_BATCH_HEADER_LEN..]);
        let mut b = plain[..KAFKA_BATCH_HEADER_LEN].to_vec();
        b[21..23].copy_from_slice(&codec.to_be_bytes());
        b.extend_from_slice(&body);
        let len = (b.len() - 12) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn every_codec_decodes() -> Result<(), FrameError> {
        use std::io::Write;
        let gzip = compressed(1, |d| {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(d).ok();
            e.finish().unwrap_or_default()
        });
        let raw_snappy = compressed(2, |d| {
            snap::raw::Encoder::new()
                .compress_vec(d)
                .unwrap_or_default()
        });
        let xerial = compressed(2, |d| {
            let block = snap::raw::Encoder::new()
                .compress_vec(d)
                .unwrap_or_default();
            let mut out = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01".to_vec();
            out.extend_from_slice(&(block.len() as u32).to_be_bytes());
            out.extend_from_slice(&block);
            out
        });
        let lz4 = compressed(3, |d| {
            let mut e = lz4_flex::frame::FrameEncoder::new(Vec::new());
            e.write_all(d).ok();
            e.finish().unwrap_or_default()
        });
        let zstd = compressed(4, |d| zstd::bulk::compress(d, 1).unwrap_or_default());
        for b in [gzip, raw_snappy, xerial, lz4, zstd] {
            assert_eq!(open_kafka_batch(&b, 1 << 20)?, records());
            // A bound below the records' size is refused, never exceeded.
            assert!(matches!(
                open_kafka_batch(&b, 100),
                Err(FrameError::TooLarge(_))
            ));
        }
        Ok(())
    }

    #[test]
    fn a_producers_batch_is_stamped_and_compressed() -> Result<(), FrameError> {
        for compression in [
            KafkaCompression::None,
            KafkaCompression::Gzip,
            KafkaCompression::Lz4,
            KafkaCompression::Zstd,
        ] {
            let options = KafkaBatchOptions {
                producer: Some((7, 2, 40)),
                compression,
            };
            let b = encode_kafka_batch_with(0, &records(), &options)?;
            let info = check_kafka_batch(&b)?;
            assert_eq!(info.record_count, 5);
            assert_eq!(
                (info.producer_id, info.producer_epoch, info.base_sequence),
                (7, 2, 40)
            );
            assert_eq!(open_kafka_batch(&b, 1 << 20)?, records(), "{compression:?}");
        }
        Ok(())
    }

    /// A record whose fields run past its own declared length (but not past the batch) is
    /// refused, not a panic: the header count is checked against what is left of it.
    #[test]
    fn fields_past_a_records_length_are_refused() {
        let mut b = encode_kafka_batch(0, &records()).to_vec();
        // The first record's length varint (one byte here): claim 2 bytes.
        b[KAFKA_BATCH_HEADER_LEN] = 4;
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            open_kafka_batch(&b, 1 << 20),
            Err(FrameError::Kafka(_))
        ));
    }

    #[test]
    fn damaged_batches_are_refused() {
        let batch = encode_kafka_batch(0, &records()).to_vec();
        let mut flipped = batch.clone();
        flipped[70] ^= 1;
        assert!(matches!(
            check_kafka_batch(&flipped),
            Err(FrameError::Checksum { .. })
        ));
        assert!(check_kafka_batch(&batch[..batch.len() - 1]).is_err());
        assert!(check_kafka_batch(&batch[..40]).is_err());
        let mut magic = batch.clone();
        magic[16] = 1;
        assert!(check_kafka_batch(&magic).is_err());
        // Every truncation of the records (CRC fixed up) is an error, never a panic.
        for cut in KAFKA_BATCH_HEADER_LEN..batch.len() {
            let mut b = batch[..cut].to_vec();
            let len = (b.len() - 12) as i32;
            b[8..12].copy_from_slice(&len.to_be_bytes());
            let crc = crc32c::crc32c(&b[CRC_START..]);
            b[17..21].copy_from_slice(&crc.to_be_bytes());
            assert!(open_kafka_batch(&b, 1 << 20).is_err(), "cut at {cut}");
        }
    }
}
