//! The segment-object layout (v1): many frames, from many partitions, in one immutable object,
//! closed by a footer that makes the object self-describing for `cairn inspect`, recovery and
//! the compactor.
//!
//! `"CAIRNSEG" | u16 version | frame* | footer | u32 footer crc32c | u32 footer length | "CAIRNSEG"`
//!
//! Offsets are not stored in the object: they are assigned when the metadata commit runs.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::batch::{FRAME_HEADER_LEN, encode_frame, parse_frames};
use crate::v1::{Compression, SegmentBatch, SegmentFooter};
use crate::{FormatError, Frame};

/// The 8 magic bytes at both ends of a segment object.
pub const SEGMENT_MAGIC: &[u8; 8] = b"CAIRNSEG";
/// The layout version this build writes and reads.
pub const SEGMENT_VERSION: u16 = 1;
/// Bytes before the first frame.
const PREAMBLE_LEN: usize = SEGMENT_MAGIC.len() + 2;
/// Bytes after the footer.
const TRAILER_LEN: usize = 4 + 4 + SEGMENT_MAGIC.len();

/// Accumulates frames into one segment object.
#[derive(Debug)]
pub struct SegmentBuilder {
    buf: BytesMut,
    footer: SegmentFooter,
}

impl SegmentBuilder {
    /// Starts an empty segment with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> Self {
        let mut buf = BytesMut::with_capacity(capacity + PREAMBLE_LEN + 1024);
        buf.put_slice(SEGMENT_MAGIC);
        buf.put_u16_le(SEGMENT_VERSION);
        SegmentBuilder {
            buf,
            footer: SegmentFooter::default(),
        }
    }

    /// Appends one batch as a frame and returns where it lies in the object.
    #[allow(clippy::too_many_arguments)]
    pub fn push(
        &mut self,
        topic_id: u64,
        partition: u32,
        record_count: u32,
        compression: Compression,
        payload: &[u8],
        min_timestamp_ms: i64,
        max_timestamp_ms: i64,
    ) -> Result<SegmentBatch, FormatError> {
        let position = self.buf.len() as u64;
        let header = encode_frame(&mut self.buf, record_count, compression, payload)?;
        let entry = SegmentBatch {
            topic_id,
            partition,
            position,
            length: (FRAME_HEADER_LEN + payload.len()) as u32,
            record_count,
            min_timestamp_ms,
            max_timestamp_ms,
            crc32c: header.crc32c,
            compression: compression as i32,
            producer_id: 0,
            producer_epoch: 0,
            base_sequence: 0,
        };
        self.footer.batches.push(entry);
        Ok(entry)
    }

    /// Records the idempotent producer's stamp on the batch pushed last.
    pub fn stamp_last(&mut self, producer_id: u64, producer_epoch: u32, base_sequence: i64) {
        if let Some(last) = self.footer.batches.last_mut() {
            last.producer_id = producer_id;
            last.producer_epoch = producer_epoch;
            last.base_sequence = base_sequence;
        }
    }

    /// Bytes written so far (frames and preamble).
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// True when no frame was pushed.
    pub fn is_empty(&self) -> bool {
        self.footer.batches.is_empty()
    }

    /// Closes the segment: appends footer and trailer and returns the object bytes and footer.
    pub fn finish(mut self, sealed_at_ms: i64) -> (Bytes, SegmentFooter) {
        self.footer.sealed_at_ms = sealed_at_ms;
        let footer = self.footer.encode_to_vec();
        self.buf.put_slice(&footer);
        self.buf.put_u32_le(crc32c::crc32c(&footer));
        self.buf.put_u32_le(footer.len() as u32);
        self.buf.put_slice(SEGMENT_MAGIC);
        (self.buf.freeze(), self.footer)
    }
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

    /// Parses a whole object, verifying the footer and every frame's CRC, and checks that
    /// the footer agrees with the frames.
    pub fn read_all(object: Bytes) -> Result<(SegmentFooter, Vec<Frame>), FormatError> {
        let footer = Self::footer(&object)?;
        let mut frames = Vec::with_capacity(footer.batches.len());
        for b in &footer.batches {
            let start = b.position as usize;
            let end = start + b.length as usize;
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
            if frame.header.crc32c != b.crc32c || frame.header.record_count != b.record_count {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn build() -> Result<(Bytes, SegmentFooter), FormatError> {
        let mut b = SegmentBuilder::with_capacity(128);
        b.push(7, 0, 1, Compression::None, b"first", 10, 10)?;
        b.push(7, 3, 2, Compression::None, b"second!", 11, 12)?;
        Ok(b.finish(1_700_000_000_000))
    }

    #[test]
    fn segment_round_trips() -> Result<(), FormatError> {
        let (bytes, footer) = build()?;
        let (read, frames) = SegmentReader::read_all(bytes.clone())?;
        assert_eq!(read, footer);
        assert_eq!(frames.len(), 2);
        assert_eq!(&frames[1].payload[..], b"second!");
        assert_eq!(
            SegmentReader::footer_len(&bytes[bytes.len() - SegmentReader::TRAILER_LEN..])?,
            footer.encode_to_vec().len()
        );
        let tail =
            &bytes[bytes.len() - footer.encode_to_vec().len() - SegmentReader::TRAILER_LEN..];
        assert_eq!(SegmentReader::footer_from_tail(tail)?, footer);
        assert!(SegmentReader::footer_from_tail(&tail[1..]).is_err());
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

    #[test]
    fn producer_stamps_travel_in_the_footer() -> Result<(), FormatError> {
        let mut b = SegmentBuilder::with_capacity(64);
        b.push(1, 0, 2, Compression::None, b"ab", 1, 2)?;
        b.stamp_last(42, 3, 100);
        b.push(1, 1, 1, Compression::None, b"c", 1, 2)?;
        let (bytes, _) = b.finish(5);
        let footer = SegmentReader::footer(&bytes)?;
        let stamps: Vec<(u64, u32, i64)> = footer
            .batches
            .iter()
            .map(|e| (e.producer_id, e.producer_epoch, e.base_sequence))
            .collect();
        assert_eq!(stamps, [(42, 3, 100), (0, 0, 0)]);
        Ok(())
    }

    /// Pins segment layout v1: a change here breaks every stored object.
    #[test]
    fn segment_bytes_snapshot() -> Result<(), FormatError> {
        let (bytes, _) = build()?;
        insta::assert_snapshot!(crate::batch::tests::hex(&bytes));
        Ok(())
    }
}
