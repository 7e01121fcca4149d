//! The framed record-batch encoding: how one producer batch is stored inside a segment object
//! and shipped to consumers, plus the per-topic compression codecs.
//!
//! A frame is `u32 payload length | u32 record count | u8 compression | u32 crc32c | payload`
//! (little-endian). The CRC32C covers the record count, the compression byte and the payload,
//! so a consumer can verify a batch it received on its own, without the segment around it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

use crate::FormatError;
use crate::v1::{Compression, RecordBatch};

/// Bytes in a frame header.
pub const FRAME_HEADER_LEN: usize = 13;

/// The decoded header of one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    /// Payload length in bytes (header excluded).
    pub payload_len: u32,
    /// Number of records in the batch.
    pub record_count: u32,
    /// How the payload is compressed.
    pub compression: Compression,
    /// CRC32C over record count, compression byte and payload.
    pub crc32c: u32,
}

/// One frame cut out of a byte range, its payload shared (not copied) with the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The decoded header.
    pub header: FrameHeader,
    /// The (compressed) payload.
    pub payload: Bytes,
}

/// CRC32C of a frame as stored in its header.
pub fn frame_crc(record_count: u32, compression: Compression, payload: &[u8]) -> u32 {
    let mut head = [0u8; 5];
    head[..4].copy_from_slice(&record_count.to_le_bytes());
    head[4] = compression as i32 as u8;
    let crc = crc32c::crc32c(&head);
    crc32c::crc32c_append(crc, payload)
}

/// Writes one frame (header and payload) to `out` and returns its header.
pub fn encode_frame(
    out: &mut BytesMut,
    record_count: u32,
    compression: Compression,
    payload: &[u8],
) -> Result<FrameHeader, FormatError> {
    let payload_len = u32::try_from(payload.len()).map_err(|_| FormatError::Invalid {
        what: "frame",
        reason: format!("payload of {} bytes exceeds 4 GiB", payload.len()),
    })?;
    let header = FrameHeader {
        payload_len,
        record_count,
        compression,
        crc32c: frame_crc(record_count, compression, payload),
    };
    out.reserve(FRAME_HEADER_LEN + payload.len());
    out.put_u32_le(header.payload_len);
    out.put_u32_le(header.record_count);
    out.put_u8(compression as i32 as u8);
    out.put_u32_le(header.crc32c);
    out.put_slice(payload);
    Ok(header)
}

/// Splits a byte range made of whole frames into frames, verifying each CRC.
pub fn parse_frames(mut bytes: Bytes) -> Result<Vec<Frame>, FormatError> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < FRAME_HEADER_LEN {
            return Err(FormatError::Truncated {
                what: "frame header",
                need: FRAME_HEADER_LEN,
                have: bytes.len(),
            });
        }
        let payload_len = bytes.get_u32_le();
        let record_count = bytes.get_u32_le();
        let code = bytes.get_u8();
        let crc = bytes.get_u32_le();
        let compression = compression_from_code(i32::from(code))?;
        let len = payload_len as usize;
        if bytes.len() < len {
            return Err(FormatError::Truncated {
                what: "frame payload",
                need: len,
                have: bytes.len(),
            });
        }
        let payload = bytes.split_to(len);
        let computed = frame_crc(record_count, compression, &payload);
        if computed != crc {
            return Err(FormatError::Checksum {
                what: "frame",
                stored: crc,
                computed,
            });
        }
        frames.push(Frame {
            header: FrameHeader {
                payload_len,
                record_count,
                compression,
                crc32c: crc,
            },
            payload,
        });
    }
    Ok(frames)
}

/// Maps a wire compression code to the enum, rejecting unknown codes.
pub(crate) fn compression_from_code(code: i32) -> Result<Compression, FormatError> {
    match Compression::try_from(code) {
        Ok(Compression::Unspecified) | Err(_) => Err(FormatError::UnknownCompression(code)),
        Ok(c) => Ok(c),
    }
}

/// Compresses a payload with a topic's codec (`Unspecified` is rejected).
pub fn compress(compression: Compression, data: &[u8]) -> Result<Bytes, FormatError> {
    match compression {
        Compression::None => Ok(Bytes::copy_from_slice(data)),
        Compression::Zstd => {
            zstd::bulk::compress(data, 1)
                .map(Bytes::from)
                .map_err(|e| FormatError::Invalid {
                    what: "zstd compression",
                    reason: e.to_string(),
                })
        }
        Compression::Lz4 => Ok(Bytes::from(lz4_flex::compress_prepend_size(data))),
        Compression::Unspecified => Err(FormatError::UnknownCompression(0)),
    }
}

/// Largest decompressed payload accepted, so a corrupt or hostile size prefix cannot make a
/// reader allocate without bound.
const MAX_DECOMPRESSED: usize = 256 << 20;

/// Decompresses a payload.
pub fn decompress(compression: Compression, data: Bytes) -> Result<Bytes, FormatError> {
    match compression {
        Compression::None => Ok(data),
        Compression::Zstd => {
            let size = zstd::bulk::Decompressor::upper_bound(&data)
                .unwrap_or(MAX_DECOMPRESSED)
                .min(MAX_DECOMPRESSED);
            zstd::bulk::decompress(&data, size)
                .map(Bytes::from)
                .map_err(|e| FormatError::Decompress {
                    codec: "zstd",
                    reason: e.to_string(),
                })
        }
        Compression::Lz4 => {
            if data.len() >= 4 {
                let declared = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                if declared > MAX_DECOMPRESSED {
                    return Err(FormatError::Decompress {
                        codec: "lz4",
                        reason: format!("declared size {declared} exceeds {MAX_DECOMPRESSED}"),
                    });
                }
            }
            lz4_flex::decompress_size_prepended(&data)
                .map(Bytes::from)
                .map_err(|e| FormatError::Decompress {
                    codec: "lz4",
                    reason: e.to_string(),
                })
        }
        Compression::Unspecified => Err(FormatError::UnknownCompression(0)),
    }
}

/// Decompresses and decodes a frame's payload, checking its record count.
pub fn decode_records(
    compression: Compression,
    record_count: u32,
    payload: Bytes,
) -> Result<RecordBatch, FormatError> {
    let raw = decompress(compression, payload)?;
    let batch = RecordBatch::decode(raw).map_err(|source| FormatError::Decode {
        what: "RecordBatch",
        source,
    })?;
    if batch.records.len() != record_count as usize {
        return Err(FormatError::Invalid {
            what: "frame",
            reason: format!(
                "header says {record_count} records, payload holds {}",
                batch.records.len()
            ),
        });
    }
    Ok(batch)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::v1::{Header, Record};

    fn sample() -> RecordBatch {
        RecordBatch {
            records: vec![
                Record {
                    timestamp_ms: 1_700_000_000_000,
                    key: Bytes::from_static(b"k1"),
                    value: Bytes::from_static(b"hello"),
                    headers: vec![Header {
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
            ],
        }
    }

    #[test]
    fn frames_round_trip_with_every_codec() -> Result<(), FormatError> {
        let raw = sample().encode_to_vec();
        let mut out = BytesMut::new();
        for c in [Compression::None, Compression::Zstd, Compression::Lz4] {
            let payload = compress(c, &raw)?;
            encode_frame(&mut out, 2, c, &payload)?;
        }
        let frames = parse_frames(out.freeze())?;
        assert_eq!(frames.len(), 3);
        for f in frames {
            let batch = decode_records(f.header.compression, f.header.record_count, f.payload)?;
            assert_eq!(batch, sample());
        }
        Ok(())
    }

    #[test]
    fn a_flipped_bit_fails_the_crc() -> Result<(), FormatError> {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 2, Compression::None, &sample().encode_to_vec())?;
        let mut bytes = out.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        match parse_frames(Bytes::from(bytes)) {
            Err(FormatError::Checksum { .. }) => Ok(()),
            other => panic!("expected checksum error, got {other:?}"),
        }
    }

    #[test]
    fn truncated_frames_are_rejected() -> Result<(), FormatError> {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 2, Compression::None, &sample().encode_to_vec())?;
        let bytes = out.freeze();
        assert!(matches!(
            parse_frames(bytes.slice(..5)),
            Err(FormatError::Truncated { .. })
        ));
        assert!(matches!(
            parse_frames(bytes.slice(..bytes.len() - 1)),
            Err(FormatError::Truncated { .. })
        ));
        Ok(())
    }

    #[test]
    fn record_count_must_match() -> Result<(), FormatError> {
        let payload = Bytes::from(sample().encode_to_vec());
        assert!(matches!(
            decode_records(Compression::None, 3, payload),
            Err(FormatError::Invalid { .. })
        ));
        Ok(())
    }

    /// Pins the frame encoding: a change here breaks every stored segment.
    #[test]
    fn frame_bytes_snapshot() -> Result<(), FormatError> {
        let mut out = BytesMut::new();
        encode_frame(&mut out, 2, Compression::None, &sample().encode_to_vec())?;
        insta::assert_snapshot!(hex(&out));
        Ok(())
    }

    pub(crate) fn hex(bytes: &[u8]) -> String {
        bytes
            .chunks(32)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }
}
