//! The agent's error type and the one place where an error becomes a gRPC status.

use cairn_metadata::{ErrorKind, MetaError};
use cairn_proto::FormatError;

/// Everything that can go wrong while serving a request.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// A metadata operation failed.
    #[error(transparent)]
    Meta(#[from] MetaError),
    /// The request is malformed; the message names the field.
    #[error("{0}")]
    Invalid(String),
    /// A request or record over a configured limit.
    #[error("{0}")]
    TooLarge(String),
    /// A topic that does not exist.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// The object store failed; the request may be retried.
    #[error("object store unavailable: {0}")]
    Storage(String),
    /// Stored bytes failed verification.
    #[error("stored data is corrupt in {object}: {source}")]
    Corrupt {
        /// The object key.
        object: String,
        /// What failed.
        #[source]
        source: FormatError,
    },
    /// The agent is shutting down or a worker task is gone.
    #[error("agent is shutting down: {0}")]
    ShuttingDown(String),
    /// An unexpected failure inside the agent.
    #[error("internal error: {0}")]
    Internal(String),
    /// A copy of an error that several requests share (see `share`).
    #[error("{message}")]
    Shared {
        /// The original error's kind.
        kind: ErrorKind,
        /// The original error's message.
        message: String,
    },
    /// Settings that cannot work.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl AgentError {
    /// What a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            AgentError::Meta(e) => e.kind(),
            AgentError::Invalid(_) | AgentError::Config(_) => ErrorKind::Invalid,
            AgentError::TooLarge(_) => ErrorKind::TooLarge,
            AgentError::TopicNotFound(_) => ErrorKind::NotFound,
            AgentError::Storage(_) | AgentError::ShuttingDown(_) => ErrorKind::Unavailable,
            AgentError::Corrupt { .. } => ErrorKind::Data,
            AgentError::Internal(_) => ErrorKind::Internal,
            AgentError::Shared { kind, .. } => *kind,
        }
    }
}

impl From<AgentError> for tonic::Status {
    fn from(e: AgentError) -> Self {
        let msg = e.to_string();
        if let AgentError::Meta(MetaError::Fenced { reason, .. }) = &e {
            use tonic_types::{ErrorDetails, StatusExt};
            return tonic::Status::with_error_details(
                tonic::Code::FailedPrecondition,
                msg,
                ErrorDetails::with_error_info(*reason, "cairn", std::collections::HashMap::new()),
            );
        }
        match e.kind() {
            ErrorKind::Invalid => tonic::Status::invalid_argument(msg),
            ErrorKind::NotFound => tonic::Status::not_found(msg),
            ErrorKind::AlreadyExists => tonic::Status::already_exists(msg),
            ErrorKind::Conflict => tonic::Status::failed_precondition(msg),
            ErrorKind::OutOfRange => tonic::Status::out_of_range(msg),
            ErrorKind::TooLarge => tonic::Status::resource_exhausted(msg),
            ErrorKind::Unavailable => tonic::Status::unavailable(msg),
            ErrorKind::Data => tonic::Status::data_loss(msg),
            ErrorKind::Internal => tonic::Status::internal(msg),
        }
    }
}

impl AgentError {
    /// A copy of this error for one of several waiters on the same failed operation
    /// (errors are not `Clone`; the kind and message are what a waiter needs).
    pub(crate) fn share(&self) -> AgentError {
        AgentError::Shared {
            kind: self.kind(),
            message: self.to_string(),
        }
    }
}
