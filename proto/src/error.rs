//! The one error type of the format layer: every way bytes can fail to be what they claim.

/// A byte sequence that is not a valid Cairn batch, frame or segment.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// Fewer bytes than the layout needs.
    #[error("{what} is truncated: need {need} bytes, have {have}")]
    Truncated {
        /// Which structure was being read.
        what: &'static str,
        /// Bytes required.
        need: usize,
        /// Bytes available.
        have: usize,
    },
    /// A checksum did not match: the bytes were corrupted in storage or transit.
    #[error("{what} checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum {
        /// Which structure was checked.
        what: &'static str,
        /// CRC32C recorded with the bytes.
        stored: u32,
        /// CRC32C of the bytes as read.
        computed: u32,
    },
    /// Magic bytes or version are not ours.
    #[error("not a Cairn segment: {0}")]
    BadMagic(String),
    /// A compression code that this build does not know.
    #[error("unknown compression code {0}")]
    UnknownCompression(i32),
    /// Compressed data that does not decompress.
    #[error("cannot decompress {codec} payload: {reason}")]
    Decompress {
        /// The codec name.
        codec: &'static str,
        /// What the decompressor said.
        reason: String,
    },
    /// Protobuf bytes that do not decode as the expected message.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// The message type expected.
        what: &'static str,
        /// The protobuf decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A frame or batch that decodes but breaks a rule (e.g. count mismatch).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being checked.
        what: &'static str,
        /// Which rule it broke.
        reason: String,
    },
}
