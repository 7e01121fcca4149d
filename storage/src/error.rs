//! The storage layer's errors: bytes that are not what they claim ([`FormatError`], always
//! data loss when they were read back from the store), and failures of the store itself
//! ([`StorageError`]), which keep their sources.

use std::sync::Arc;

/// Stored bytes that are not a valid Cairn segment, frame or Parquet file.
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
    /// Protobuf bytes that do not decode as the expected message.
    #[error("cannot decode {what}: {source}")]
    Decode {
        /// The message type expected.
        what: &'static str,
        /// The protobuf decoder's error.
        #[source]
        source: prost::DecodeError,
    },
    /// A frame's payload that fails to open (CRC, codec, count).
    #[error(transparent)]
    Frame(#[from] cairn_proto::FrameError),
    /// A Parquet file that does not read (footer, pages, checksums).
    #[error("parquet: {0}")]
    Parquet(#[source] Arc<parquet::errors::ParquetError>),
    /// Arrow data that is not laid out as the table format says.
    #[error("arrow: {0}")]
    Arrow(#[source] Arc<arrow_schema::ArrowError>),
    /// Bytes that decode but break a rule (e.g. offsets that are not the entry's).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// What was being checked.
        what: &'static str,
        /// Which rule it broke.
        reason: String,
    },
}

/// Why a storage operation failed; [`StorageError::kind`] says what a caller may do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The object store failed or timed out: retryable.
    #[error("{op} {key} failed: {source}")]
    Store {
        /// The request (`GET`, `PUT`, `LIST`, ...).
        op: &'static str,
        /// The object key or prefix.
        key: String,
        /// The store's error.
        #[source]
        source: Arc<object_store::Error>,
    },
    /// An object the metadata references does not exist: data loss.
    #[error("object {key} is missing from the store")]
    Missing {
        /// The object key.
        key: String,
    },
    /// Bytes read from an object are corrupt: data loss.
    #[error("object {key} is corrupt: {source}")]
    Corrupt {
        /// The object key.
        key: String,
        /// What is wrong with the bytes.
        #[source]
        source: Arc<FormatError>,
    },
    /// Data could not be encoded into the format (a bug or an impossible input).
    #[error("cannot write {key}: {source}")]
    Encode {
        /// The object key.
        key: String,
        /// What went wrong.
        #[source]
        source: Arc<FormatError>,
    },
    /// The store is misconfigured (URL, credentials, directory).
    #[error("{0}")]
    Config(String),
}

/// What a [`StorageError`] means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// Retry: the store failed or timed out.
    Unavailable,
    /// Stored bytes are corrupt or missing; retrying does not help.
    DataLoss,
    /// A bug or bad configuration.
    Internal,
}

impl StorageError {
    /// Wraps an object-store error: a missing object becomes [`StorageError::Missing`].
    /// A read of a range the object does not have (the object is shorter than the index or
    /// footer that gave the range: truncated) is [`StorageError::Corrupt`]: DATA_LOSS, never
    /// a retry.
    pub fn store(op: &'static str, key: impl Into<String>, e: object_store::Error) -> Self {
        let key = key.into();
        if let Some(why) = range_not_satisfiable(&e) {
            return StorageError::corrupt(
                key,
                FormatError::Invalid {
                    what: "object length",
                    reason: format!("{op} of a range past the object's end: {why}"),
                },
            );
        }
        match e {
            object_store::Error::NotFound { .. } => StorageError::Missing { key },
            e => StorageError::Store {
                op,
                key,
                source: Arc::new(e),
            },
        }
    }

    /// Corrupt bytes in `key`.
    pub fn corrupt(key: impl Into<String>, source: impl Into<FormatError>) -> Self {
        StorageError::Corrupt {
            key: key.into(),
            source: Arc::new(source.into()),
        }
    }

    /// What the caller may do about it.
    pub fn kind(&self) -> StorageErrorKind {
        match self {
            StorageError::Store { .. } => StorageErrorKind::Unavailable,
            StorageError::Missing { .. } | StorageError::Corrupt { .. } => {
                StorageErrorKind::DataLoss
            }
            StorageError::Encode { .. } | StorageError::Config(_) => StorageErrorKind::Internal,
        }
    }
}

/// Whether `e` says the requested range lies outside the object, and how. object_store
/// does not export these errors' types, so their messages are matched: the local store's
/// "Requested range was invalid" / "Wanted range starting at …" and "Out of range of file"
/// (a short read), and S3's 416 `InvalidRange`.
/// Whether `e` says a read started at or past the object's end (the wording differs per
/// store), and that message.
pub fn range_not_satisfiable(e: &object_store::Error) -> Option<String> {
    const SIGNS: [&str; 5] = [
        "Requested range was invalid",
        "Wanted range starting at",
        "Out of range of file",
        "416 Range Not Satisfiable",
        "InvalidRange",
    ];
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        let text = err.to_string();
        if SIGNS.iter().any(|s| text.contains(s)) {
            return Some(text);
        }
        source = err.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_past_the_end_is_data_loss_other_failures_are_retryable() {
        let past = object_store::Error::Generic {
            store: "LocalFileSystem",
            source: "Requested range was invalid".into(),
        };
        let e = StorageError::store("GET", "segments/x.seg", past);
        assert_eq!(e.kind(), StorageErrorKind::DataLoss, "{e}");
        assert!(e.to_string().contains("past the object's end"), "{e}");
        let failed = object_store::Error::Generic {
            store: "S3",
            source: "HTTP 503 Slow Down".into(),
        };
        assert_eq!(
            StorageError::store("GET", "k", failed).kind(),
            StorageErrorKind::Unavailable
        );
    }
}
