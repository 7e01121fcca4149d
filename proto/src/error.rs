//! The one error type of the frame layer: every way a frame can fail to be what it claims.

/// A frame that is not valid: refused by the agent on produce, or found corrupt on read.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A header field breaks a rule.
    #[error("frame header field `{field}`: {reason}")]
    Header {
        /// The field's name in `cairn.v2.FrameHeader`.
        field: &'static str,
        /// Which rule it broke.
        reason: String,
    },
    /// The payload's CRC32C does not match the header's: corrupted in storage or transit.
    #[error("payload checksum mismatch: header says {stored:#010x}, payload has {computed:#010x}")]
    Checksum {
        /// CRC32C recorded in the header.
        stored: u32,
        /// CRC32C of the payload as received.
        computed: u32,
    },
    /// The frame is over a size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The payload does not compress.
    #[error("cannot compress with {codec}: {source}")]
    Compress {
        /// The codec name.
        codec: &'static str,
        /// What the compressor said.
        #[source]
        source: std::io::Error,
    },
    /// The payload does not decompress.
    #[error("cannot decompress the {codec} payload: {source}")]
    Decompress {
        /// The codec name.
        codec: &'static str,
        /// What the decompressor said.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka record batch (a `PAYLOAD_FORMAT_KAFKA_RECORDS` payload) breaks a rule of
    /// Kafka's format.
    #[error("the Kafka record batch is malformed: {0}")]
    Kafka(String),
    /// The decompressed payload is not an encoded `RecordBatch`.
    #[error("the payload is not an encoded cairn.v2.RecordBatch: {0}")]
    Decode(#[source] prost::DecodeError),
}
