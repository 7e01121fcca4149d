//! The client's error type.

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint could not be parsed or reached.
    #[error("cannot connect to {endpoint}: {source}")]
    Connect {
        /// The endpoint that was dialled.
        endpoint: String,
        /// Why it failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent answered with an error status.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(tonic::Status),
    /// An argument the agent would reject anyway, caught before sending.
    #[error("{0}")]
    Invalid(String),
    /// A fetched batch failed verification.
    #[error("corrupt batch from {topic}/{partition} at offset {offset}: {reason}")]
    Corrupt {
        /// Topic of the batch.
        topic: String,
        /// Partition of the batch.
        partition: u32,
        /// Base offset of the batch.
        offset: i64,
        /// What failed.
        reason: String,
    },
    /// The producer was closed before the record was sent.
    #[error("the producer is closed")]
    Closed,
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        ClientError::Status(status)
    }
}

impl ClientError {
    /// The gRPC code, if the agent answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded)
        ) || matches!(self, ClientError::Connect { .. })
    }
}

/// A short, human name for a gRPC code ("not found", "invalid argument").
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "too large",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}
