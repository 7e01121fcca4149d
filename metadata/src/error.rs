//! Errors of the metadata layer and the one small [`ErrorKind`] that callers (the agent's
//! gRPC layer) use to pick a status code.

/// What a caller should do about an error; the agent maps each kind to one gRPC status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request is malformed or out of bounds (INVALID_ARGUMENT).
    Invalid,
    /// The named thing does not exist (NOT_FOUND).
    NotFound,
    /// The named thing exists already (ALREADY_EXISTS).
    AlreadyExists,
    /// The request conflicts with current state (FAILED_PRECONDITION).
    Conflict,
    /// An offset outside the readable range (OUT_OF_RANGE).
    OutOfRange,
    /// A size or count limit (RESOURCE_EXHAUSTED).
    TooLarge,
    /// A transient storage fault: retry (UNAVAILABLE).
    Unavailable,
    /// Stored bytes are corrupt (DATA_LOSS).
    Data,
    /// A bug or an unexpected backend failure (INTERNAL).
    Internal,
}

/// An error of the transactional KV layer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    /// Another transaction changed what this one read; rerun it.
    #[error("transaction conflict: {0}")]
    Conflict(String),
    /// The commit may or may not have been applied; rerun it idempotently.
    #[error("commit outcome unknown: {0}")]
    CommitUnknown(String),
    /// The transaction ran longer than the backend allows.
    #[error("transaction ran {elapsed_ms} ms, over the {limit_ms} ms limit")]
    TooOld {
        /// How long it ran.
        elapsed_ms: u64,
        /// The limit.
        limit_ms: u64,
    },
    /// A key over the size limit.
    #[error("key of {size} bytes exceeds the {limit}-byte key limit")]
    KeyTooLarge {
        /// Key size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A value over the size limit.
    #[error("value of {size} bytes exceeds the {limit}-byte value limit")]
    ValueTooLarge {
        /// Value size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A transaction that writes more than the backend allows.
    #[error("transaction of {size} bytes exceeds the {limit}-byte limit")]
    TransactionTooLarge {
        /// Bytes written so far.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The backend cannot be reached or is overloaded; retry later.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// A backend failure that retrying will not fix.
    #[error("metadata store error: {0}")]
    Backend(String),
}

impl KvError {
    /// True when rerunning the whole transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::Conflict(_)
                | KvError::CommitUnknown(_)
                | KvError::TooOld { .. }
                | KvError::Unavailable(_)
        )
    }
}

/// An error of a metadata operation.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// No topic of that name.
    #[error("topic `{0}` does not exist")]
    TopicNotFound(String),
    /// The name is taken.
    #[error("topic `{0}` already exists")]
    TopicExists(String),
    /// A topic name that breaks the naming rules.
    #[error("invalid topic name `{name}`: {reason}")]
    InvalidTopicName {
        /// The name given.
        name: String,
        /// Which rule it broke.
        reason: String,
    },
    /// A partition number at or past the topic's count.
    #[error("partition {partition} is out of range: topic `{topic}` has {count} partitions")]
    PartitionOutOfRange {
        /// Topic name.
        topic: String,
        /// The partition asked for.
        partition: u32,
        /// How many there are.
        count: u32,
    },
    /// An offset outside `[start, high watermark]`.
    #[error(
        "offset {offset} is out of range for {topic}/{partition}: readable offsets are {start}..{hwm}"
    )]
    OffsetOutOfRange {
        /// Topic name.
        topic: String,
        /// Partition.
        partition: u32,
        /// The offset asked for.
        offset: i64,
        /// First readable offset.
        start: i64,
        /// High watermark.
        hwm: i64,
    },
    /// No consumer group of that name.
    #[error("group `{0}` does not exist")]
    GroupNotFound(String),
    /// A caller whose standing is gone (an expired member, a stale generation).
    #[error("{message}")]
    Fenced {
        /// A machine-readable reason (`UNKNOWN_MEMBER`, `STALE_GENERATION`, ...).
        reason: &'static str,
        /// What happened, for people.
        message: String,
    },
    /// Any other invalid argument, with a message that names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// A request that would exceed a limit.
    #[error("{0}")]
    TooLarge(String),
    /// Stored metadata that cannot be decoded.
    #[error("corrupt metadata at {key}: {reason}")]
    Corrupt {
        /// The key, printed.
        key: String,
        /// What was wrong.
        reason: String,
    },
    /// The KV layer failed (after retries where retrying made sense).
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl MetaError {
    /// What a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MetaError::TopicNotFound(_) | MetaError::GroupNotFound(_) => ErrorKind::NotFound,
            MetaError::Fenced { .. } => ErrorKind::Conflict,
            MetaError::TopicExists(_) => ErrorKind::AlreadyExists,
            MetaError::InvalidTopicName { .. }
            | MetaError::InvalidArgument(_)
            | MetaError::PartitionOutOfRange { .. } => ErrorKind::Invalid,
            MetaError::OffsetOutOfRange { .. } => ErrorKind::OutOfRange,
            MetaError::TooLarge(_) => ErrorKind::TooLarge,
            MetaError::Corrupt { .. } => ErrorKind::Data,
            MetaError::Kv(e) if e.is_retryable() => ErrorKind::Unavailable,
            MetaError::Kv(
                KvError::KeyTooLarge { .. }
                | KvError::ValueTooLarge { .. }
                | KvError::TransactionTooLarge { .. },
            ) => ErrorKind::TooLarge,
            MetaError::Kv(_) => ErrorKind::Internal,
        }
    }
}
