//! Frames as a peer sends them: the bytes of one `cairn.v2.Frame` message (header and
//! payload), as a producer puts it in a ProduceRequest and an agent returns it in a fetch.
//! Runs the agent's check (`check_frame`, no decompression) and the consumer's and
//! compactor's decoding (`open_frame`: CRC, decompression within the declared size, record
//! decoding), first as received and then with the payload CRC made right, so the fuzzer
//! reaches the codecs and the record decoder behind the checksum.
#![no_main]

use bytes::Bytes;
use cairn_proto::v2::Frame;
use cairn_proto::{FrameLimits, check_frame, open_frame, payload_crc};
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = Frame::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let limits = FrameLimits::default();
    let _ = check_frame(frame.header.as_ref(), &frame.payload, &limits);
    let Some(mut header) = frame.header else {
        return;
    };
    let _ = open_frame(&header, frame.payload.clone());
    let crc = payload_crc(&frame.payload);
    if header.payload_crc32c != crc {
        header.payload_crc32c = crc;
        let _ = check_frame(Some(&header), &frame.payload, &limits);
        let _ = open_frame(&header, frame.payload);
    }
});
