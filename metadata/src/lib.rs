//! Cairn's metadata layer: the only source of order.
//!
//! Topics, partition high watermarks and the offset→object index live in one tuple-encoded
//! keyspace behind a small transactional-KV trait shaped like FoundationDB's API
//! ([`KvStore`]/[`KvTransaction`]). One logic ([`Metadata`]) runs over every backend:
//! SQLite (the embedded default), in-memory (unit tests) and FoundationDB (feature `fdb`).
//! Every backend enforces FoundationDB's transaction limits, so a violation fails in tests.

pub mod acls;
mod clock;
mod cluster;
mod commit;
mod compaction;
#[cfg(feature = "test-util")]
pub mod conformance;
mod error;
#[cfg(feature = "fdb")]
mod fdb;
mod groups;
mod keys;
mod kv;
mod lifecycle;
mod limits;
mod memory;
mod metadata;
mod postgres;
mod producer;
pub mod quotas;
mod share;
mod sqlite;
pub mod tokens;
mod types;
mod watermarks;

pub use clock::{
    Clock, ManualClock, RandomSource, SeededRandom, SkewedClock, SyncedClock, SystemClock,
    SystemRandom,
};
pub use cluster::{AgentLoad, AgentRecord};
pub use compaction::{CompactedFile, CompactionClaim, MAX_SWAP_ENTRIES};
pub use error::{ErrorKind, ErrorSource, FenceReason, KvError, MetaError};
#[cfg(feature = "fdb")]
pub use fdb::FdbKv;
pub use groups::{
    GroupDescription, GroupMember, MemberAssignment, OffsetReset, PartitionLag,
    SESSION_TIMEOUT_RANGE_MS, TopicPartition,
};
pub use kv::{FaultyKv, KeyValue, KvStore, KvTransaction, RetryPolicy};
pub use lifecycle::{GcPage, RetentionReport};
pub use limits::Limits;
pub use memory::MemoryKv;
pub use metadata::{MAX_CLOCK_SYNC_RTT_MS, MaybeCommitted, Metadata, transact};
pub use postgres::PostgresKv;
pub use producer::{ExpiryReport, ProducerStats, WINDOW as PRODUCER_WINDOW};
pub use share::{Acquired, MAX_IN_FLIGHT as SHARE_MAX_IN_FLIGHT, ShareAction, SharePartitionInfo};
pub use sqlite::SqliteKv;
pub use types::{
    BatchOutcome, Codec, CommitBatch, EntryKind, IndexEntry, PartitionState, ProducerId,
    ProducerStamp, Rejection, SegmentCommit, Topic, TopicColumn, TopicConfigChange, TopicSpec,
    ValueSchema, validate_topic_name,
};

use std::sync::Arc;

/// A metadata spec fit for logs and errors: a URL's password replaced by `***`; any other
/// spec as it is.
pub fn redact_spec(spec: &str) -> String {
    match url::Url::parse(spec) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => spec.to_string(),
        // A URL that does not parse (a bad port or host) may still hold a password.
        Err(_) => redact_by_hand(spec),
    }
}

/// Hides the password of `scheme://user:password@rest` and of a libpq `password=…` pair
/// without parsing the rest.
fn redact_by_hand(spec: &str) -> String {
    if let Some((scheme, rest)) = spec.split_once("://")
        && let Some(at) = rest.rfind('@')
        && let Some((user, _)) = rest[..at].split_once(':')
    {
        return format!("{scheme}://{user}:***@{}", &rest[at + 1..]);
    }
    spec.split(' ')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}=***"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Opens a metadata backend from a URL-like spec: `sqlite:PATH`,
/// `postgres://USER:PASSWORD@HOST:PORT/DB`, `memory:` or `fdb:CLUSTER_FILE` (the last only
/// in builds with the `fdb` feature).
pub async fn open_kv(spec: &str) -> Result<Arc<dyn KvStore>, MetaError> {
    open_kv_with(spec, OpenOptions::default()).await
}

/// How [`open_kv_with`] treats the store it opens.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenOptions {
    /// Take an existing store that holds nothing, not even Cairn's format marker (a 0-byte
    /// SQLite file, a PostgreSQL table created by hand), as a new one. Without it such a
    /// store is refused: it is what a truncated or replaced metadata file looks like, and
    /// starting over it would hide every topic (and let the compactor collect their
    /// objects as orphans). A store Cairn creates itself is marked and needs no option.
    pub init: bool,
}

/// [`open_kv`] with options; a persistent store is checked for Cairn's format marker.
pub async fn open_kv_with(spec: &str, options: OpenOptions) -> Result<Arc<dyn KvStore>, MetaError> {
    let kv = open_backend(spec).await?;
    if kv.name() != "memory" {
        // A FoundationDB cluster is not a file that can be truncated or swapped, and its
        // creation cannot be told apart from an empty keyspace: an empty one is new.
        let options = OpenOptions {
            init: options.init || spec.starts_with("fdb:"),
        };
        check_format(kv.as_ref(), spec, options).await?;
    }
    Ok(kv)
}

/// Checks (or, for a store known to be new, writes) the format marker.
async fn check_format(kv: &dyn KvStore, spec: &str, options: OpenOptions) -> Result<(), MetaError> {
    let shown = redact_spec(spec);
    let policy = kv::RetryPolicy::default();
    metadata::transact(kv, &policy, "check_format", |tx, _| {
        let shown = shown.clone();
        async move {
            match tx.get(&keys::format_marker()).await? {
                Some(v) if v == keys::FORMAT => Ok(()),
                Some(v) => Err(MetaError::InvalidArgument(format!(
                    "metadata store {shown} is in format `{}`, which this cairn ({}) does not read",
                    String::from_utf8_lossy(&v),
                    env!("CARGO_PKG_VERSION")
                ))),
                None => {
                    let any = tx.get_range(b"", b"\xff\xff", 1, false).await?;
                    if any.is_empty() && !options.init {
                        return Err(MetaError::InvalidArgument(format!(
                            "metadata store {shown} exists but holds no Cairn metadata (not even its format marker): \
                             it may have been truncated or replaced, and starting over it would hide every topic. \
                             Restore it, or pass --init if a new, empty store is intended"
                        )));
                    }
                    // Written by a Cairn from before the marker (it holds keys), or new by
                    // intent: mark it.
                    tx.set(&keys::format_marker(), keys::FORMAT).await?;
                    Ok(())
                }
            }
        }
    })
    .await
}

async fn open_backend(spec: &str) -> Result<Arc<dyn KvStore>, MetaError> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let path = path.strip_prefix("//").unwrap_or(path);
        if path.is_empty() {
            return Err(MetaError::InvalidArgument(
                "metadata spec `sqlite:` needs a file path, e.g. sqlite:./cairn-data/meta.sqlite"
                    .into(),
            ));
        }
        return Ok(Arc::new(SqliteKv::open(path, Limits::default())?));
    }
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresKv::open(spec, Limits::default()).await?));
    }
    if spec == "memory:" || spec == "memory" {
        return Ok(Arc::new(MemoryKv::new(Limits::default())));
    }
    if let Some(_cluster_file) = spec.strip_prefix("fdb:") {
        #[cfg(feature = "fdb")]
        {
            return Ok(Arc::new(FdbKv::open(_cluster_file)?));
        }
        #[cfg(not(feature = "fdb"))]
        return Err(MetaError::InvalidArgument(
            "this build has no FoundationDB support: rebuild with `--features fdb`".into(),
        ));
    }
    Err(MetaError::InvalidArgument(format!(
        "unknown metadata spec `{spec}`: use sqlite:PATH, postgres://USER@HOST:PORT/DB, memory: or fdb:CLUSTER_FILE"
    )))
}

#[cfg(test)]
mod redact_tests {
    #[test]
    fn metadata_passwords_stay_out_of_logs() {
        assert_eq!(
            super::redact_spec("postgres://cairn:s3cret@db:5432/cairn"),
            "postgres://cairn:***@db:5432/cairn"
        );
        assert_eq!(super::redact_spec("sqlite:./m.sqlite"), "sqlite:./m.sqlite");
        // URLs that do not parse, and libpq strings, keep their passwords hidden too.
        assert_eq!(
            super::redact_spec("postgres://cairn:s3cret@127.0.0.1:99999/cairn"),
            "postgres://cairn:***@127.0.0.1:99999/cairn"
        );
        assert_eq!(
            super::redact_spec("postgres://cairn:s3cret@[bad/cairn"),
            "postgres://cairn:***@[bad/cairn"
        );
        assert_eq!(
            super::redact_spec("host=db password=s3cret user=cairn"),
            "host=db password=*** user=cairn"
        );
    }
}
