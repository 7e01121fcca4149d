//! Kafka record batches as a Kafka producer sends them and as an agent stores them: the
//! agent's check (`check_kafka_batch`: length, magic, CRC, counts, no decompression) and
//! the decoding every reader does (`open_kafka_batch`: decompression within a bound, the
//! varint records), first as received and then with the length field and CRC made right,
//! so the fuzzer reaches the codecs and the record decoder behind them.
#![no_main]

use cairn_proto::kafka::{check_kafka_batch, kafka_frame_header, open_kafka_batch};
use libfuzzer_sys::fuzz_target;

/// Decompressed records allowed per batch here: small, so a bomb is cut off quickly.
const LIMIT: u32 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = check_kafka_batch(data) {
        let _ = kafka_frame_header(&info, data);
    }
    let _ = open_kafka_batch(data, LIMIT);
    if data.len() < 61 {
        return;
    }
    let mut fixed = data.to_vec();
    let len = (fixed.len() - 12) as i32;
    fixed[8..12].copy_from_slice(&len.to_be_bytes());
    fixed[16] = 2;
    let crc = crc32c::crc32c(&fixed[21..]);
    fixed[17..21].copy_from_slice(&crc.to_be_bytes());
    if let Ok(info) = check_kafka_batch(&fixed) {
        let _ = kafka_frame_header(&info, &fixed);
    }
    let _ = open_kafka_batch(&fixed, LIMIT);
});
