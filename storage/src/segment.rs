//! The segment-object layout (v2): frames from many partitions, as producers built them, in
//! one immutable object, closed by a footer that makes the object self-describing for
//! `cairn inspect`, recovery and the compactor.
//!
//! ```text
//! "CAIRNSEG" | u16 version=2 | stored frame* | footer | u32 footer crc32c | u32 footer length | "CAIRNSEG"
//! stored frame = u32 header length | u32 payload length | u32 header crc32c | header | payload
//! ```
//!
//! The header is the protobuf encoding of `cairn.v2.FrameHeader` (with the agent's
//! `append_time_ms`), and the payload is the producer's bytes, untouched: the payload's
//! CRC32C is in the header, the header's own CRC32C precedes it. All integers are
//! little-endian. Offsets are not stored in the object: they are assigned when the metadata
//! commit runs.
//!
//! A segment is built as a list of [`Bytes`] chunks — the payloads are the request's own
//! buffers, never copied — and uploaded as one `PutPayload`.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_proto::v2::FrameHeader;
use prost::Message;

use crate::FormatError;

/// The 8 magic bytes at both ends of a segment object.
pub const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNSEG";
/// The layout version this build writes and reads.
pub const SEGMENT_VERSION: u16 = 2;
/// Bytes before the first frame.
const PREAMBLE_LEN: usize = SEGMENT_MAGIC.len() + 2;
/// Bytes after the footer.
const TRAILER_LEN: usize = 4 + 4 + SEGMENT_MAGIC.len();
/// Bytes of a stored frame before its header.
pub const FRAME_PREFIX_LEN: usize = 12;
/// Largest encoded frame header accepted when reading (a real one is under 100 bytes).
const MAX_HEADER_LEN: usize = 4096;

/// The self-description of a segment object: one entry per stored frame, in object order.
#[derive(Clone, PartialEq, Message)]
pub struct SegmentFooter {
    /// The frames.
    #[prost(message, repeated, tag = "1")]
    pub frames: Vec<FooterEntry>,
    /// Milliseconds since the Unix epoch when the agent sealed the segment.
    #[prost(int64, tag = "2")]
    pub sealed_at_ms: i64,
}

/// Where one stored frame lies in a segment object and what it holds.
#[derive(Clone, Copy, PartialEq, Message)]
pub struct FooterEntry {
    /// The topic's internal id.
    #[prost(uint64, tag = "1")]
    pub topic_id: u64,
    /// The partition.
    #[prost(uint32, tag = "2")]
    pub partition: u32,
    /// Byte position of the stored frame (its length prefix) from the start of the object.
    #[prost(uint64, tag = "3")]
    pub position: u64,
    /// Length of the whole stored frame, prefix and header included.
    #[prost(uint32, tag = "4")]
    pub length: u32,
    /// Records in the frame.
    #[prost(uint32, tag = "5")]
    pub record_count: u32,
    /// CRC32C of the frame's payload (as in its header).
    #[prost(fixed32, tag = "6")]
    pub payload_crc32c: u32,
}

/// One frame read back from an object: the header as stored and the payload, shared (not
/// copied) with the bytes read. Both CRCs were verified.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredFrame {
    /// The decoded header.
    pub header: FrameHeader,
    /// The payload exactly as the producer sent it.
    pub payload: Bytes,
}

/// Accumulates frames into one segment object without copying their payloads.
#[derive(Debug)]
pub struct SegmentBuilder {
    chunks: Vec<Bytes>,
    /// Small pieces (preamble, frame prefixes and headers) gathered until the next payload.
    head: BytesMut,
    len: usize,
    footer: SegmentFooter,
}

impl Default for SegmentBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl SegmentBuilder {
    /// Starts an empty segment.
    pub fn new() -> Self {
        let mut head = BytesMut::with_capacity(4096);
        head.put_slice(SEGMENT_MAGIC);
        head.put_u16_le(SEGMENT_VERSION);
        SegmentBuilder {
            chunks: Vec::new(),
            len: head.len(),
            head,
            footer: SegmentFooter::default(),
        }
    }

    /// Appends one frame and returns where it lies in the object. The payload is kept by
    /// reference; the header is encoded as given.
    pub fn push(
        &mut self,
        topic_id: u64,
        partition: u32,
        header: &FrameHeader,
        payload: Bytes,
    ) -> Result<FooterEntry, FormatError> {
        let position = self.len as u64;
        let encoded_len = header.encoded_len();
        let too_large = || FormatError::Invalid {
            what: "frame",
            reason: format!("a {}-byte payload does not fit a segment", payload.len()),
        };
        let payload_len = u32::try_from(payload.len()).map_err(|_| too_large())?;
        let stored = FRAME_PREFIX_LEN + encoded_len + payload.len();
        let length = u32::try_from(stored).map_err(|_| too_large())?;
        self.head.reserve(FRAME_PREFIX_LEN + encoded_len);
        self.head.put_u32_le(encoded_len as u32);
        self.head.put_u32_le(payload_len);
        let crc_at = self.head.len();
        self.head.put_u32_le(0);
        let header_at = self.head.len();
        header
            .encode(&mut self.head)
            .map_err(|e| FormatError::Invalid {
                what: "frame header",
                reason: e.to_string(),
            })?;
        let crc = crc32c::crc32c(&self.head[header_at..]);
        self.head[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        let head = self.head.split().freeze();
        self.chunks.push(head);
        if !payload.is_empty() {
            self.chunks.push(payload);
        }
        self.len += stored;
        let entry = FooterEntry {
            topic_id,
            partition,
            position,
            length,
            record_count: header.record_count,
            payload_crc32c: header.payload_crc32c,
        };
        self.footer.frames.push(entry);
        Ok(entry)
    }

    /// Bytes written so far (frames and preamble).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.footer.frames.is_empty()
    }

    /// Closes the segment: appends footer and trailer and returns the object as chunks (to
    /// upload as one `PutPayload`), its total size and the footer.
    pub fn finish(mut self, sealed_at_ms: i64) -> (Vec<Bytes>, usize, SegmentFooter) {
        self.footer.sealed_at_ms = sealed_at_ms;
        let footer = self.footer.encode_to_vec();
        self.head.put_slice(&footer);
        self.head.put_u32_le(crc32c::crc32c(&footer));
        self.head.put_u32_le(footer.len() as u32);
        self.head.put_slice(SEGMENT_MAGIC);
        self.len += footer.len() + TRAILER_LEN;
        self.chunks.push(self.head.split().freeze());
        (self.chunks, self.len, self.footer)
    }
}

/// Splits a byte range made of whole stored frames into frames, verifying both CRCs of
/// each.
pub fn parse_frames(mut bytes: Bytes) -> Result<Vec<StoredFrame>, FormatError> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < FRAME_PREFIX_LEN {
            return Err(FormatError::Truncated {
                what: "frame prefix",
                need: FRAME_PREFIX_LEN,
                have: bytes.len(),
            });
        }
        let header_len = bytes.get_u32_le() as usize;
        let payload_len = bytes.get_u32_le() as usize;
        let stored_crc = bytes.get_u32_le();
        if header_len > MAX_HEADER_LEN {
            return Err(FormatError::Invalid {
                what: "frame prefix",
                reason: format!("header length {header_len} is over {MAX_HEADER_LEN}"),
            });
        }
        if bytes.len() < header_len + payload_len {
            return Err(FormatError::Truncated {
                what: "frame",
                need: header_len + payload_len,
                have: bytes.len(),
            });
        }
        let header_bytes = bytes.split_to(header_len);
        let computed = crc32c::crc32c(&header_bytes);
        if computed != stored_crc {
            return Err(FormatError::Checksum {
                what: "frame header",
                stored: stored_crc,
                computed,
            });
        }
        let header = FrameHeader::decode(header_bytes).map_err(|source| FormatError::Decode {
            what: "FrameHeader",
            source,
        })?;
        let payload = bytes.split_to(payload_len);
        let computed = cairn_proto::payload_crc(&payload);
        if computed != header.payload_crc32c {
            return Err(FormatError::Checksum {
                what: "frame payload",
                stored: header.payload_crc32c,
                computed,
            });
        }
        frames.push(StoredFrame { header, payload });
    }
    Ok(frames)
}

/// Reads segment objects: the footer from the tail, or everything with verification.
#[derive(Debug)]
pub struct SegmentReader;

impl SegmentReader {
    /// Bytes of the trailer, which a reader fetches first to learn the footer length.
    pub const TRAILER_LEN: usize = TRAILER_LEN;

    /// Parses the trailer and returns the footer length.
    pub fn footer_len(trailer: &[u8]) -> Result<usize, FormatError> {
        if trailer.len() < TRAILER_LEN {
            return Err(FormatError::Truncated {
                what: "segment trailer",
                need: TRAILER_LEN,
                have: trailer.len(),
            });
        }
        let t = &trailer[trailer.len() - TRAILER_LEN..];
        if &t[8..] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic("trailer magic missing".into()));
        }
        Ok(u32::from_le_bytes([t[4], t[5], t[6], t[7]]) as usize)
    }

    /// Parses and verifies the footer of a whole object.
    pub fn footer(object: &[u8]) -> Result<SegmentFooter, FormatError> {
        if object.len() < PREAMBLE_LEN + TRAILER_LEN {
            return Err(FormatError::Truncated {
                what: "segment",
                need: PREAMBLE_LEN + TRAILER_LEN,
                have: object.len(),
            });
        }
        if &object[..8] != SEGMENT_MAGIC {
            return Err(FormatError::BadMagic("preamble magic missing".into()));
        }
        let version = u16::from_le_bytes([object[8], object[9]]);
        if version != SEGMENT_VERSION {
            return Err(FormatError::BadMagic(format!(
                "layout version {version}, this build reads {SEGMENT_VERSION}"
            )));
        }
        let footer_len = Self::footer_len(object)?;
        if footer_len > object.len() - TRAILER_LEN - PREAMBLE_LEN {
            return Err(FormatError::Truncated {
                what: "segment footer",
                need: footer_len,
                have: object.len() - TRAILER_LEN - PREAMBLE_LEN,
            });
        }
        Self::footer_from_tail(object)
    }

    /// Parses and verifies the footer from the tail of an object (at least the footer and
    /// trailer: [`SegmentReader::footer_len`] + [`SegmentReader::TRAILER_LEN`] bytes), as a
    /// reader gets it with one suffix range GET.
    pub fn footer_from_tail(tail: &[u8]) -> Result<SegmentFooter, FormatError> {
        let footer_len = Self::footer_len(tail)?;
        let end = tail.len() - TRAILER_LEN;
        if footer_len > end {
            return Err(FormatError::Truncated {
                what: "segment footer",
                need: footer_len,
                have: end,
            });
        }
        let footer = &tail[end - footer_len..end];
        let stored = u32::from_le_bytes([tail[end], tail[end + 1], tail[end + 2], tail[end + 3]]);
        let computed = crc32c::crc32c(footer);
        if stored != computed {
            return Err(FormatError::Checksum {
                what: "segment footer",
                stored,
                computed,
            });
        }
        SegmentFooter::decode(footer).map_err(|source| FormatError::Decode {
            what: "SegmentFooter",
            source,
        })
    }

    /// Parses a whole object, verifying the footer and every frame's CRCs, and checks that
    /// the footer agrees with the frames.
    pub fn read_all(object: Bytes) -> Result<(SegmentFooter, Vec<StoredFrame>), FormatError> {
        let footer = Self::footer(&object)?;
        let mut frames = Vec::with_capacity(footer.frames.len());
        for e in &footer.frames {
            // A footer (CRC-valid, so written so) may still name any position: no overflow.
            let end = e.position.saturating_add(u64::from(e.length));
            let (Ok(start), Ok(end)) = (usize::try_from(e.position), usize::try_from(end)) else {
                return Err(FormatError::Truncated {
                    what: "segment frame",
                    need: usize::MAX,
                    have: object.len(),
                });
            };
            if end > object.len() {
                return Err(FormatError::Truncated {
                    what: "segment frame",
                    need: end,
                    have: object.len(),
                });
            }
            let mut parsed = parse_frames(object.slice(start..end))?;
            let frame = match (parsed.pop(), parsed.is_empty()) {
                (Some(f), true) => f,
                _ => {
                    return Err(FormatError::Invalid {
                        what: "segment",
                        reason: format!("footer range at {start} is not exactly one frame"),
                    });
                }
            };
            if frame.header.payload_crc32c != e.payload_crc32c
                || frame.header.record_count != e.record_count
            {
                return Err(FormatError::Invalid {
                    what: "segment",
                    reason: format!("footer entry at {start} disagrees with its frame"),
                });
            }
            frames.push(frame);
        }
        Ok((footer, frames))
    }
}

/// Concatenates chunks (tests and tools that want the object as one buffer).
pub fn concat(chunks: &[Bytes]) -> Bytes {
    let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
    for c in chunks {
        out.put_slice(c);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {

    /// Found by the fuzz target `segment`: a CRC-valid footer naming a frame at position
    /// 2^64-1 overflowed `position + length` (a panic in debug, a bad slice in release).
    #[test]
    fn a_footer_position_near_the_end_of_u64_is_an_error() {
        let hex = "434149524e53454702000a11080718ffffffffffffffffff01200128019d9f3ce913000000434149524e534547";
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
            .collect();
        assert_eq!(bytes.len(), 45);
        let Err(err) = SegmentReader::read_all(Bytes::from(bytes)) else {
            panic!("a footer position of 2^64-1 was read")
        };
        assert!(matches!(err, FormatError::Truncated { .. }), "{err}");
    }
    use super::*;
    use cairn_proto::v2::{Codec, ProducerStamp, Record};
    use cairn_proto::{build_frame, open_frame};

    fn frame(value: &'static [u8], producer: Option<ProducerStamp>) -> (FrameHeader, Bytes) {
        let f = build_frame(
            vec![Record {
                timestamp_ms: 1_700_000_000_000,
                key: Bytes::new(),
                value: Bytes::from_static(value),
                headers: vec![],
            }],
            Codec::None,
            producer,
        )
        .unwrap_or_default();
        (f.header.unwrap_or_default(), f.payload)
    }

    fn build() -> Result<(Bytes, SegmentFooter), FormatError> {
        let mut b = SegmentBuilder::new();
        let (h, p) = frame(b"first", None);
        b.push(7, 0, &h, p)?;
        let stamp = ProducerStamp {
            producer_id: 42,
            epoch: 3,
            base_sequence: 100,
        };
        let (h, p) = frame(b"second!", Some(stamp));
        b.push(7, 3, &h, p)?;
        let (chunks, len, footer) = b.finish(1_700_000_000_000);
        let bytes = concat(&chunks);
        assert_eq!(bytes.len(), len);
        Ok((bytes, footer))
    }

    #[test]
    fn segment_round_trips() -> Result<(), Box<dyn std::error::Error>> {
        let (bytes, footer) = build()?;
        let (read, frames) = SegmentReader::read_all(bytes.clone())?;
        assert_eq!(read, footer);
        assert_eq!(frames.len(), 2);
        let records = open_frame(&frames[1].header, frames[1].payload.clone())?;
        assert_eq!(&records[0].value[..], b"second!");
        assert_eq!(frames[1].header.producer.map(|p| p.producer_id), Some(42));
        let tail =
            &bytes[bytes.len() - footer.encode_to_vec().len() - SegmentReader::TRAILER_LEN..];
        assert_eq!(SegmentReader::footer_from_tail(tail)?, footer);
        assert!(SegmentReader::footer_from_tail(&tail[1..]).is_err());
        // One footer entry's range is exactly one frame.
        let e = footer.frames[1];
        let one = parse_frames(
            bytes.slice(e.position as usize..(e.position + u64::from(e.length)) as usize),
        )?;
        assert_eq!(one, vec![frames[1].clone()]);
        Ok(())
    }

    #[test]
    fn corruption_anywhere_is_detected() -> Result<(), FormatError> {
        let (bytes, _) = build()?;
        for i in 0..bytes.len() {
            let mut copy = bytes.to_vec();
            copy[i] ^= 0x40;
            assert!(
                SegmentReader::read_all(Bytes::from(copy)).is_err(),
                "flipping byte {i} went unnoticed"
            );
        }
        Ok(())
    }

    /// Pins segment layout v2: a change here breaks every stored object.
    #[test]
    fn segment_bytes_snapshot() -> Result<(), FormatError> {
        let (bytes, _) = build()?;
        let hex = bytes
            .chunks(32)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n");
        insta::assert_snapshot!(hex);
        Ok(())
    }
}
