//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! - CRC repair: every decoder checks a CRC32C before it looks further, and a fuzzer seldom
//!   guesses one, so the frame and segment targets run each input twice — as it is, and
//!   with its checksums recomputed — to reach the code behind the checks (a hostile peer
//!   or a buggy writer computes correct CRCs over bad content).
//! - Panic accounting: libfuzzer-sys aborts on every panic, even one that the code under
//!   test catches on purpose (the Parquet reader turns decoder panics into a corruption
//!   error). [`count_caught_panics`] replaces that hook, and [`run_or_abort`] aborts only
//!   when a panic escapes the decoder.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_proto::v2::FrameHeader;
use cairn_storage::SegmentFooter;
use prost::Message;

/// Length of the segment preamble (`"CAIRNSEG"` and a u16 version).
const SEGMENT_PREAMBLE: usize = 10;
/// Length of the segment trailer (footer CRC, footer length, `"CAIRNSEG"`).
const SEGMENT_TRAILER: usize = 16;
/// Length of a stored frame's prefix (header length, payload length, header CRC).
const FRAME_PREFIX: usize = 12;

static CAUGHT: AtomicU64 = AtomicU64::new(0);
static LAST_PANIC: Mutex<String> = Mutex::new(String::new());

/// Installs a panic hook that records the message instead of aborting, so a panic the
/// library catches itself counts as the error it returns. Every power-of-two count prints
/// one line, so a run's log shows that they happen and what they say. With
/// `CAIRN_FUZZ_STRICT=1` the hook aborts on any panic, caught or not.
pub fn count_caught_panics() {
    let strict = std::env::var_os("CAIRN_FUZZ_STRICT").is_some_and(|v| v == "1");
    std::panic::set_hook(Box::new(move |info| {
        let msg = info.to_string();
        if strict {
            eprintln!("panic (CAIRN_FUZZ_STRICT=1): {msg}");
            std::process::abort();
        }
        let n = CAUGHT.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_power_of_two() {
            eprintln!("cairn-fuzz: panic #{n} (caught unless the run aborts next): {msg}");
        }
        if let Ok(mut last) = LAST_PANIC.lock() {
            *last = msg;
        }
    }));
}

/// Runs `f`; a panic that reaches here escaped the decoder: print it and abort, which
/// libFuzzer reports as a crash and saves the input.
pub fn run_or_abort(f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        let msg = LAST_PANIC.lock().map(|m| m.clone()).unwrap_or_default();
        eprintln!("cairn-fuzz: a panic escaped the decoder: {msg}");
        std::process::abort();
    }
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Recomputes the CRCs of the stored frame at `pos` (the header's CRC in the prefix, and
/// the payload's CRC inside the header when re-encoding keeps the header's length).
/// Returns where the next stored frame would start.
pub fn repair_stored_frame(bytes: &mut [u8], pos: usize) -> Option<usize> {
    let header_len = u32_at(bytes, pos)? as usize;
    let payload_len = u32_at(bytes, pos.checked_add(4)?)? as usize;
    let header_at = pos.checked_add(FRAME_PREFIX)?;
    let payload_at = header_at.checked_add(header_len)?;
    let end = payload_at.checked_add(payload_len)?;
    if end > bytes.len() {
        // Still fix the header CRC when the header itself is there.
        if payload_at <= bytes.len() {
            let crc = crc32c::crc32c(&bytes[header_at..payload_at]);
            bytes[pos + 8..pos + 12].copy_from_slice(&crc.to_le_bytes());
        }
        return None;
    }
    if let Ok(mut header) = FrameHeader::decode(&bytes[header_at..payload_at]) {
        header.payload_crc32c = crc32c::crc32c(&bytes[payload_at..end]);
        let encoded = header.encode_to_vec();
        if encoded.len() == header_len {
            bytes[header_at..payload_at].copy_from_slice(&encoded);
        }
    }
    let crc = crc32c::crc32c(&bytes[header_at..payload_at]);
    bytes[pos + 8..pos + 12].copy_from_slice(&crc.to_le_bytes());
    Some(end)
}

/// Recomputes every CRC of a segment object that its layout lets us find: the frames the
/// footer points at (or, without a readable footer, the frames laid one after another from
/// the preamble on), then the footer's own CRC. Bytes that are no segment are left as
/// they are, save where a CRC would be.
pub fn repair_segment(bytes: &mut [u8]) {
    let n = bytes.len();
    if n < SEGMENT_PREAMBLE + SEGMENT_TRAILER {
        return;
    }
    let end = n - SEGMENT_TRAILER;
    let Some(footer_len) = u32_at(bytes, end + 4).map(|l| l as usize) else {
        return;
    };
    let footer_at = end.checked_sub(footer_len);
    let footer = footer_at.and_then(|at| SegmentFooter::decode(&bytes[at..end]).ok());
    match &footer {
        Some(f) if !f.frames.is_empty() => {
            for e in &f.frames {
                if let Ok(pos) = usize::try_from(e.position) {
                    repair_stored_frame(bytes, pos);
                }
            }
        }
        _ => {
            let mut pos = SEGMENT_PREAMBLE;
            let stop = footer_at.unwrap_or(end);
            let mut frames = 0;
            while pos < stop && frames < 64 {
                match repair_stored_frame(&mut bytes[..stop], pos) {
                    Some(next) => pos = next,
                    None => break,
                }
                frames += 1;
            }
        }
    }
    if let Some(at) = footer_at {
        let crc = crc32c::crc32c(&bytes[at..end]);
        bytes[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    }
}

/// Recomputes the CRCs of a run of stored frames laid one after another (an index entry's
/// byte range, as the agent and the compactor read it).
pub fn repair_frames(bytes: &mut [u8]) {
    let mut pos = 0;
    let mut frames = 0;
    while pos < bytes.len() && frames < 64 {
        match repair_stored_frame(bytes, pos) {
            Some(next) => pos = next,
            None => break,
        }
        frames += 1;
    }
}
