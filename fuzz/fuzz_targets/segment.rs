//! Segment objects as read back from the object store: `SegmentReader::footer` and
//! `footer_from_tail` (what recovery and the compactor read first), `read_all` (what
//! `cairn inspect` does) with `open_frame` on each frame it returns, and `parse_frames` on
//! the bytes after the preamble (the agent's and compactor's read of an index entry's byte
//! range). Each input runs as it is and again with its CRCs recomputed, so the fuzzer gets
//! past the footer and frame checksums.
#![no_main]

use bytes::Bytes;
use cairn_storage::SegmentReader;
use cairn_storage::segment::parse_frames;
use libfuzzer_sys::fuzz_target;

fn run(object: Bytes) {
    let _ = SegmentReader::footer_len(&object);
    let _ = SegmentReader::footer_from_tail(&object);
    if let Ok((_, frames)) = SegmentReader::read_all(object.clone()) {
        for f in frames {
            let _ = cairn_proto::open_frame(&f.header, f.payload);
        }
    }
    // An index entry's range: whole stored frames, here everything after the preamble.
    if let Ok(frames) = parse_frames(object.slice(object.len().min(10)..)) {
        for f in frames {
            let _ = cairn_proto::open_frame(&f.header, f.payload);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    run(Bytes::copy_from_slice(data));
    let mut repaired = data.to_vec();
    cairn_fuzz::repair_segment(&mut repaired);
    if repaired != data {
        run(Bytes::from(repaired));
    }
    // The same bytes as a bare run of stored frames (no preamble), CRCs recomputed.
    let mut frames = data.to_vec();
    cairn_fuzz::repair_frames(&mut frames);
    if frames != data {
        if let Ok(frames) = parse_frames(Bytes::from(frames)) {
            for f in frames {
                let _ = cairn_proto::open_frame(&f.header, f.payload);
            }
        }
    }
});
