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
    /// The agent did not commit a batch, for a reason a program can act on.
    #[error("{}: {}", .0.reason.name(), .0.message)]
    Rejected(Rejected),
    /// The producer was closed before the record was sent.
    #[error("the producer is closed")]
    Closed,
}

/// Why the agent did not commit a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The producer's sequence had a gap or a reorder.
    OutOfOrderSequence,
    /// A newer instance of this named producer exists.
    Fenced,
    /// The producer id is unknown or expired.
    UnknownProducer,
    /// A conditional append's expected offset was not the partition's next offset.
    OffsetMismatch,
    /// Another batch of the same atomic append was rejected.
    AtomicAborted,
    /// The topic was deleted while the batch was in flight.
    TopicDeleted,
}

impl RejectReason {
    /// The wire name (`OFFSET_MISMATCH`, ...).
    pub fn name(&self) -> &'static str {
        self.to_proto().as_str_name()
    }

    fn to_proto(self) -> cairn_proto::v1::ProduceErrorReason {
        use cairn_proto::v1::ProduceErrorReason as R;
        match self {
            RejectReason::OutOfOrderSequence => R::OutOfOrderSequence,
            RejectReason::Fenced => R::Fenced,
            RejectReason::UnknownProducer => R::UnknownProducer,
            RejectReason::OffsetMismatch => R::OffsetMismatch,
            RejectReason::AtomicAborted => R::AtomicAborted,
            RejectReason::TopicDeleted => R::TopicDeleted,
        }
    }

    fn from_proto(r: cairn_proto::v1::ProduceErrorReason) -> Option<Self> {
        use cairn_proto::v1::ProduceErrorReason as R;
        Some(match r {
            R::OutOfOrderSequence => RejectReason::OutOfOrderSequence,
            R::Fenced => RejectReason::Fenced,
            R::UnknownProducer => RejectReason::UnknownProducer,
            R::OffsetMismatch => RejectReason::OffsetMismatch,
            R::AtomicAborted => RejectReason::AtomicAborted,
            R::TopicDeleted => RejectReason::TopicDeleted,
            R::Unspecified => return None,
        })
    }
}

/// A batch the agent did not commit, with what the reason says about the log's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// The agent's message, naming the topic-partition.
    pub message: String,
    /// For [`RejectReason::OffsetMismatch`]: the partition's next offset.
    pub next_offset: Option<i64>,
    /// For [`RejectReason::OutOfOrderSequence`]: the sequence the agent expected.
    pub expected_sequence: Option<i64>,
    /// For [`RejectReason::Fenced`]: the current epoch.
    pub current_epoch: Option<u32>,
}

impl Rejected {
    /// From a per-batch error in a produce response.
    pub(crate) fn from_batch_error(e: &cairn_proto::v1::BatchError) -> Option<Self> {
        use cairn_proto::v1::ProduceErrorReason as R;
        let reason = RejectReason::from_proto(e.reason())?;
        Some(Rejected {
            reason,
            message: e.message.clone(),
            next_offset: (e.reason() == R::OffsetMismatch).then_some(e.next_offset),
            expected_sequence: (e.reason() == R::OutOfOrderSequence).then_some(e.expected_sequence),
            current_epoch: (e.reason() == R::Fenced).then_some(e.current_epoch),
        })
    }

    /// From a call's status carrying a google.rpc.ErrorInfo with a produce reason.
    pub(crate) fn from_status(status: &tonic::Status) -> Option<Self> {
        use tonic_types::StatusExt;
        let info = status.get_details_error_info()?;
        let proto = cairn_proto::v1::ProduceErrorReason::from_str_name(&info.reason)?;
        let reason = RejectReason::from_proto(proto)?;
        let num = |k: &str| info.metadata.get(k).and_then(|v| v.parse::<i64>().ok());
        Some(Rejected {
            reason,
            message: status.message().to_string(),
            next_offset: num("next_offset"),
            expected_sequence: num("expected_sequence"),
            current_epoch: num("current_epoch").and_then(|v| u32::try_from(v).ok()),
        })
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        match Rejected::from_status(&status) {
            Some(r) => ClientError::Rejected(r),
            None => ClientError::Status(status),
        }
    }
}

impl ClientError {
    /// The gRPC code, if the agent answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::Rejected(r) if r.reason == RejectReason::TopicDeleted => {
                Some(tonic::Code::NotFound)
            }
            ClientError::Rejected(_) => Some(tonic::Code::FailedPrecondition),
            _ => None,
        }
    }

    /// The machine-readable reason the agent attached to an error status
    /// (google.rpc.ErrorInfo), e.g. `UNKNOWN_MEMBER` or `OFFSET_MISMATCH`.
    pub fn reason(&self) -> Option<String> {
        use tonic_types::StatusExt;
        match self {
            ClientError::Rejected(r) => Some(r.reason.name().to_string()),
            ClientError::Status(s) => s.get_details_error_info().map(|i| i.reason),
            _ => None,
        }
    }

    /// The rejection, if the agent refused a batch for a reason a program can act on.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            ClientError::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed: the agent was unavailable, the
    /// call timed out, or the connection broke before an answer came (the request may or
    /// may not have been applied; idempotent producers make resending it safe).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.code(),
            Some(tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded)
        ) || matches!(self, ClientError::Connect { .. })
            || matches!(self, ClientError::Status(s) if is_transport_failure(s))
    }
}

/// A status the client library made up because the connection failed (tonic reports a
/// connection reset mid-call as `UNKNOWN: transport error`), not one the agent sent.
fn is_transport_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
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
