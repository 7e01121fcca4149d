//! Errors of the metadata layer and the one small [`ErrorKind`] that callers (the agent's
//! gRPC layer) use to pick a status code.

use std::path::PathBuf;
use std::sync::Arc;

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

/// The underlying cause of a metadata-store error (a `rusqlite` or FoundationDB error, an
/// I/O error, an injected fault), shared so that [`KvError`] stays `Clone`.
pub type ErrorSource = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// A cause that is a statement rather than another library's error: an injected fault, a
/// setting the backend refused.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct Cause(pub(crate) String);

/// An error of the transactional KV layer. Backend failures keep their cause as
/// [`source`](std::error::Error::source) (and show its message too, so a one-line status
/// names it); `backend` names the store (`sqlite`, `memory`, `fdb`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    /// Another transaction changed what this one read; rerun it.
    #[error("{backend}: transaction conflict: {source}")]
    Conflict {
        /// The store.
        backend: &'static str,
        /// What the store reported.
        #[source]
        source: ErrorSource,
    },
    /// The commit may or may not have been applied; rerun it idempotently.
    #[error("{backend}: commit outcome unknown: {source}")]
    CommitUnknown {
        /// The store.
        backend: &'static str,
        /// What the store reported.
        #[source]
        source: ErrorSource,
    },
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
    #[error("{backend} metadata store unavailable: {source}")]
    Unavailable {
        /// The store.
        backend: &'static str,
        /// What failed.
        #[source]
        source: ErrorSource,
    },
    /// A backend failure that retrying will not fix.
    #[error("{backend} metadata store error: {source}")]
    Backend {
        /// The store.
        backend: &'static str,
        /// What failed.
        #[source]
        source: ErrorSource,
    },
    /// The store reports its own bytes damaged (SQLite: a malformed database image, or a
    /// file that is not a database). Not retryable: nothing more is read or written through
    /// this store until it is restored.
    #[error(
        "{backend} metadata store is damaged: {source}; stop every agent and compactor using it and restore it from a backup"
    )]
    Damaged {
        /// The store.
        backend: &'static str,
        /// What the store reported.
        #[source]
        source: ErrorSource,
    },
    /// A transaction used after it committed or failed (a bug in the caller).
    #[error("{backend}: the transaction was used after it had finished")]
    Finished {
        /// The store.
        backend: &'static str,
    },
    /// A lock guarding a transaction was poisoned by a panic elsewhere.
    #[error("{backend}: a transaction's lock was poisoned by an earlier panic")]
    Poisoned {
        /// The store.
        backend: &'static str,
    },
}

impl KvError {
    /// True when rerunning the whole transaction may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            KvError::Conflict { .. }
                | KvError::CommitUnknown { .. }
                | KvError::TooOld { .. }
                | KvError::Unavailable { .. }
        )
    }

    pub(crate) fn conflict(
        backend: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        KvError::Conflict {
            backend,
            source: Arc::new(e),
        }
    }

    pub(crate) fn commit_unknown(
        backend: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        KvError::CommitUnknown {
            backend,
            source: Arc::new(e),
        }
    }

    pub(crate) fn unavailable(
        backend: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        KvError::Unavailable {
            backend,
            source: Arc::new(e),
        }
    }

    pub(crate) fn damaged(
        backend: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        KvError::Damaged {
            backend,
            source: Arc::new(e),
        }
    }

    pub(crate) fn backend(
        backend: &'static str,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        KvError::Backend {
            backend,
            source: Arc::new(e),
        }
    }
}

/// Why a caller's standing is gone ([`MetaError::Fenced`]); each is an `ErrorReason` of
/// the API with the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FenceReason {
    /// The group member expired or left.
    UnknownMember,
    /// The member's generation is older than the group's.
    StaleGeneration,
    /// The partition is not assigned to the member.
    NotAssigned,
    /// The group has live members, so it cannot be changed that way.
    GroupActive,
    /// The share-group record is not leased to the caller.
    NotHeld,
    /// The share-group lease ran out before the settle.
    LeaseExpired,
    /// Another compaction changed the index entries first.
    CompactionConflict,
    /// The compactor's claim on the partition was taken over.
    ClaimLost,
}

impl FenceReason {
    /// The reason's name, as in the API's `ErrorReason` without its prefix.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceReason::UnknownMember => "UNKNOWN_MEMBER",
            FenceReason::StaleGeneration => "STALE_GENERATION",
            FenceReason::NotAssigned => "NOT_ASSIGNED",
            FenceReason::GroupActive => "GROUP_ACTIVE",
            FenceReason::NotHeld => "NOT_HELD",
            FenceReason::LeaseExpired => "LEASE_EXPIRED",
            FenceReason::CompactionConflict => "COMPACTION_CONFLICT",
            FenceReason::ClaimLost => "CLAIM_LOST",
        }
    }
}

impl std::fmt::Display for FenceReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
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
        /// Why, for machines.
        reason: FenceReason,
        /// What happened, for people.
        message: String,
    },
    /// Another live agent is registered under this id (two agents were given the same
    /// `--agent-id`, or an old process of this id still renews its lease).
    #[error(
        "agent id `{id}` is already registered by a live agent at {address} (its lease runs {lease_left_ms} ms more); give each agent its own id"
    )]
    AgentIdInUse {
        /// The id.
        id: String,
        /// The address the other agent advertises.
        address: String,
        /// How long its lease still runs.
        lease_left_ms: i64,
    },
    /// Any other invalid argument, with a message that names it.
    #[error("{0}")]
    InvalidArgument(String),
    /// A request that would exceed a limit.
    #[error("{0}")]
    TooLarge(String),
    /// Stored metadata that cannot be decoded.
    #[error("corrupt metadata at {key}: {source}")]
    Corrupt {
        /// Which value, for people.
        key: String,
        /// What was wrong: the decoder's error, or a statement of the inconsistency.
        #[source]
        source: ErrorSource,
    },
    /// The directory for a metadata file cannot be created.
    #[error("cannot create directory {} for the metadata file: {source}", .path.display())]
    CreateDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The KV layer failed (after retries where retrying made sense).
    #[error(transparent)]
    Kv(#[from] KvError),
}

impl MetaError {
    /// Stored bytes at `key` that a decoder refused.
    pub(crate) fn corrupt(
        key: impl Into<String>,
        e: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        MetaError::Corrupt {
            key: key.into(),
            source: Arc::new(e),
        }
    }

    /// Stored bytes at `key` that decode but make no sense, for `reason`.
    pub(crate) fn malformed(key: impl Into<String>, reason: impl Into<String>) -> Self {
        MetaError::corrupt(key, Cause(reason.into()))
    }

    /// What a caller should do about this error.
    pub fn kind(&self) -> ErrorKind {
        match self {
            MetaError::TopicNotFound(_) | MetaError::GroupNotFound(_) => ErrorKind::NotFound,
            MetaError::Fenced { .. } => ErrorKind::Conflict,
            MetaError::TopicExists(_) | MetaError::AgentIdInUse { .. } => ErrorKind::AlreadyExists,
            MetaError::InvalidTopicName { .. }
            | MetaError::InvalidArgument(_)
            | MetaError::CreateDir { .. }
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
            MetaError::Kv(KvError::Damaged { .. }) => ErrorKind::Data,
            MetaError::Kv(_) => ErrorKind::Internal,
        }
    }
}
