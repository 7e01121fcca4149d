//! The agent's error type and the one place where an error becomes a gRPC status: the code
//! from the error's kind, and always a `google.rpc.ErrorInfo` whose reason is a
//! `cairn.v2.ErrorReason` name, with the numbers a client acts on in its metadata.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_metadata::{ErrorKind, FenceReason, MetaError};
use cairn_proto::FrameError;
use cairn_proto::v2::ErrorReason;
use cairn_storage::{StorageError, StorageErrorKind};

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A metadata operation failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// A metadata failure shared by several callers (a cache load).
    #[error(transparent)]
    MetaShared(Arc<MetaError>),
    /// An object-store operation failed, or stored bytes are corrupt or missing.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A segment's metadata commit failed in a way a retry may fix: nothing was committed.
    #[error("metadata commit of {object} failed: {source}")]
    CommitFailed {
        /// The segment's object key.
        object: String,
        /// The metadata error.
        #[source]
        source: MetaError,
    },
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A produced frame failed its checks.
    #[error("batch {index} ({topic}/{partition}): {source}")]
    InvalidFrame {
        /// The batch's position in the request.
        index: usize,
        /// Its topic.
        topic: String,
        /// Its partition.
        partition: u32,
        /// What is wrong with it.
        #[source]
        source: FrameError,
    },
    /// A request or record over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A topic that does not exist.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// The agent is shutting down or a worker task is gone.
    #[error("agent is shutting down: {0}")]
    ShuttingDown(String),
    /// An unexpected failure inside the agent.
    #[error("internal error: {0}")]
    Internal(String),
    /// One error that several requests share (a failed segment, a failed cache load).
    #[error(transparent)]
    Shared(Arc<AgentError>),
    /// Settings that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl AgentError {
    /// What a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Meta(e) => e.kind(),
            AgentError::MetaShared(e) => e.kind(),
            AgentError::CommitFailed { .. } => ErrorKind::Unavailable,
            AgentError::Storage(e) => match e.kind() {
                StorageErrorKind::Unavailable => ErrorKind::Unavailable,
                StorageErrorKind::DataLoss => ErrorKind::Data,
                StorageErrorKind::Internal => ErrorKind::Internal,
            },
            AgentError::Invalid(_) | AgentError::Config(_) => ErrorKind::Invalid,
            AgentError::InvalidFrame { source, .. } => match source {
                FrameError::TooLarge(_) => ErrorKind::TooLarge,
                _ => ErrorKind::Invalid,
            },
            AgentError::TooLarge(_) => ErrorKind::TooLarge,
            AgentError::TopicNotFound(_) => ErrorKind::NotFound,
            AgentError::ShuttingDown(_) => ErrorKind::Unavailable,
            AgentError::Internal(_) => ErrorKind::Internal,
            AgentError::Shared(e) => e.kind(),
        }
    }

    /// The reason a program acts on, and the numbers that go with it.
    pub fn reason(&self) -> (ErrorReason, HashMap<String, String>) {
        let mut numbers = HashMap::new();
        let reason = match self {
            AgentError::Shared(e) => return e.reason(),
            AgentError::Meta(e) => return meta_reason(e),
            AgentError::MetaShared(e) => return meta_reason(e),
            AgentError::CommitFailed { .. } => ErrorReason::MetadataUnavailable,
            AgentError::Storage(e) => match e.kind() {
                StorageErrorKind::Unavailable => ErrorReason::StorageUnavailable,
                StorageErrorKind::DataLoss => ErrorReason::DataLoss,
                StorageErrorKind::Internal => ErrorReason::Internal,
            },
            AgentError::Invalid(_) | AgentError::Config(_) => ErrorReason::InvalidArgument,
            AgentError::InvalidFrame { index, source, .. } => {
                numbers.insert("batch".into(), index.to_string());
                let field = match source {
                    FrameError::Header { field, .. } => Some(*field),
                    FrameError::Checksum { .. } => Some("payload_crc32c"),
                    FrameError::TooLarge(_) => Some("payload"),
                    _ => None,
                };
                if let Some(field) = field {
                    numbers.insert("field".into(), field.to_string());
                }
                match source {
                    FrameError::TooLarge(_) => ErrorReason::TooLarge,
                    _ => ErrorReason::InvalidFrame,
                }
            }
            AgentError::TooLarge(_) => ErrorReason::TooLarge,
            AgentError::TopicNotFound(_) => ErrorReason::TopicNotFound,
            AgentError::ShuttingDown(_) => ErrorReason::ShuttingDown,
            AgentError::Internal(_) => ErrorReason::Internal,
        };
        (reason, numbers)
    }

    /// One error for several waiters on the same failed operation.
    pub(crate) fn shared(self) -> Arc<AgentError> {
        match self {
            AgentError::Shared(e) => e,
            e => Arc::new(e),
        }
    }
}

/// The reason of a metadata error, and its numbers.
fn meta_reason(e: &MetaError) -> (ErrorReason, HashMap<String, String>) {
    let mut numbers = HashMap::new();
    let reason = match e {
        MetaError::TopicNotFound(_) => ErrorReason::TopicNotFound,
        MetaError::TopicExists(_) => ErrorReason::TopicExists,
        MetaError::PartitionOutOfRange { .. } => ErrorReason::PartitionNotFound,
        MetaError::OffsetOutOfRange { start, hwm, .. } => {
            numbers.insert("start_offset".into(), start.to_string());
            numbers.insert("high_watermark".into(), hwm.to_string());
            ErrorReason::OffsetOutOfRange
        }
        MetaError::Fenced { reason, .. } => match reason {
            FenceReason::UnknownMember => ErrorReason::UnknownMember,
            FenceReason::StaleGeneration => ErrorReason::StaleGeneration,
            FenceReason::NotAssigned => ErrorReason::NotAssigned,
            FenceReason::GroupActive => ErrorReason::GroupActive,
            FenceReason::NotHeld => ErrorReason::NotHeld,
            FenceReason::LeaseExpired => ErrorReason::LeaseExpired,
            FenceReason::CompactionConflict => ErrorReason::CompactionConflict,
            FenceReason::ClaimLost => ErrorReason::ClaimLost,
        },
        MetaError::Corrupt { .. } => ErrorReason::DataLoss,
        _ => match e.kind() {
            ErrorKind::Invalid => ErrorReason::InvalidArgument,
            ErrorKind::TooLarge => ErrorReason::TooLarge,
            ErrorKind::Unavailable => ErrorReason::MetadataUnavailable,
            ErrorKind::NotFound => ErrorReason::Unspecified,
            _ => ErrorReason::Internal,
        },
    };
    (reason, numbers)
}

/// The gRPC status of an error with an ErrorInfo (domain `cairn`) carrying `reason`.
pub(crate) fn status_with_reason(
    code: tonic::Code,
    message: String,
    reason: ErrorReason,
    numbers: HashMap<String, String>,
) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    tonic::Status::with_error_details(
        code,
        bounded(message),
        ErrorDetails::with_error_info(reason.as_str_name(), "cairn", numbers),
    )
}

/// Most bytes of a status message: it travels in an HTTP/2 header, and a message echoing
/// a 10,000-character name would outgrow the peer's header list (the call then fails as an
/// h2 protocol error instead of with its status).
const MAX_MESSAGE_BYTES: usize = 1024;

/// `message` cut to [`MAX_MESSAGE_BYTES`] at a character boundary, marked when cut.
fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE_BYTES {
        return message;
    }
    let mut end = MAX_MESSAGE_BYTES;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &message[..end], message.len())
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let code = match e.kind() {
            ErrorKind::Invalid => tonic::Code::InvalidArgument,
            ErrorKind::NotFound => tonic::Code::NotFound,
            ErrorKind::AlreadyExists => tonic::Code::AlreadyExists,
            ErrorKind::Conflict => tonic::Code::FailedPrecondition,
            ErrorKind::OutOfRange => tonic::Code::OutOfRange,
            ErrorKind::TooLarge => tonic::Code::ResourceExhausted,
            ErrorKind::Unavailable => tonic::Code::Unavailable,
            ErrorKind::Data => tonic::Code::DataLoss,
            ErrorKind::Internal => tonic::Code::Internal,
        };
        let (reason, numbers) = e.reason();
        status_with_reason(code, e.to_string(), reason, numbers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_to_fit_a_header() {
        assert_eq!(bounded("short".into()), "short");
        let long = format!("topic name `{}` is too long", "é".repeat(5_000));
        let cut = bounded(long.clone());
        assert!(cut.len() < MAX_MESSAGE_BYTES + 32, "{}", cut.len());
        assert!(
            cut.ends_with(&format!("… ({} bytes in all)", long.len())),
            "{cut}"
        );
    }

    #[test]
    fn corrupt_and_missing_bytes_are_data_loss_and_store_faults_retryable() {
        let corrupt = AgentError::from(StorageError::corrupt(
            "segments/00/x.seg",
            cairn_storage::FormatError::BadMagic("x".into()),
        ));
        assert_eq!(tonic::Status::from(corrupt).code(), tonic::Code::DataLoss);
        let missing = AgentError::from(StorageError::Missing { key: "k".into() });
        assert_eq!(tonic::Status::from(missing).code(), tonic::Code::DataLoss);
        let down = AgentError::from(StorageError::store(
            "GET",
            "k",
            object_store::Error::Generic {
                store: "test",
                source: "connection reset".into(),
            },
        ));
        let shared = AgentError::Shared(down.shared());
        let status = tonic::Status::from(shared);
        assert_eq!(status.code(), tonic::Code::Unavailable);
        use tonic_types::StatusExt;
        let info = status.get_error_details().error_info().cloned();
        assert_eq!(
            info.map(|i| i.reason),
            Some("ERROR_REASON_STORAGE_UNAVAILABLE".to_string())
        );
    }
}
