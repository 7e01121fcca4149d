//! The values the metadata layer speaks in: topics, partition states, index entries and the
//! description of a segment to commit.

use serde::{Deserialize, Serialize};

use crate::MetaError;

/// How a topic's stored batches are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// Uncompressed.
    None,
    /// Zstandard (the default).
    #[default]
    Zstd,
    /// LZ4.
    Lz4,
}

/// What a caller asks for when creating a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    /// Topic name (see [`validate_topic_name`]).
    pub name: String,
    /// Partition count, 1 to [`TopicSpec::MAX_PARTITIONS`].
    pub partitions: u32,
    /// Compression of stored batches.
    pub codec: Codec,
    /// Time retention in ms, -1 for forever.
    pub retention_ms: i64,
    /// Size retention in bytes per partition, -1 for unlimited.
    pub retention_bytes: i64,
    /// A value schema declared with the topic, if any.
    pub value_schema: Option<ValueSchema>,
}

/// A typed column of a topic's table, as a value schema declared it (the compactor adds it
/// next to the raw value in every Parquet file it writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicColumn {
    /// The column (and JSON property) name.
    pub name: String,
    /// Its type's name (`string`, `integer`, `number`, `boolean`, `json`).
    pub kind: String,
}

/// A declared value schema: the document as given and the columns it declares (parsed and
/// checked by the caller, which knows the schema language).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueSchema {
    /// The document.
    pub text: String,
    /// Its columns, in order.
    pub columns: Vec<TopicColumn>,
}

impl TopicSpec {
    /// Most partitions one topic may have.
    pub const MAX_PARTITIONS: u32 = 10_000;

    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), MetaError> {
        validate_topic_name(&self.name)?;
        validate_partition_count(&self.name, self.partitions)?;
        validate_retention("retention_ms", self.retention_ms)?;
        validate_retention("retention_bytes", self.retention_bytes)?;
        if let Some(schema) = &self.value_schema {
            validate_value_schema(schema)?;
        }
        Ok(())
    }
}

/// A change to a topic's settings: each field given replaces the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TopicConfigChange {
    /// A new compression for batches stored from now on.
    pub codec: Option<Codec>,
    /// A new time retention in ms, -1 for forever.
    pub retention_ms: Option<i64>,
    /// A new size retention in bytes per partition, -1 for unlimited.
    pub retention_bytes: Option<i64>,
}

impl TopicConfigChange {
    /// Checks every field, naming the first that is wrong.
    pub fn validate(&self) -> Result<(), MetaError> {
        for (what, v) in [
            ("retention_ms", self.retention_ms),
            ("retention_bytes", self.retention_bytes),
        ] {
            if let Some(v) = v {
                validate_retention(what, v)?;
            }
        }
        Ok(())
    }
}

/// A retention setting is positive, or -1 for unlimited.
fn validate_retention(what: &str, v: i64) -> Result<(), MetaError> {
    if v != -1 && v <= 0 {
        return Err(MetaError::InvalidArgument(format!(
            "{what} must be a positive number or -1 (unlimited), got {v}"
        )));
    }
    Ok(())
}

/// Largest value schema document stored with a topic.
pub(crate) const MAX_VALUE_SCHEMA_BYTES: usize = 64 << 10;
/// Most typed columns a topic may accumulate.
pub(crate) const MAX_VALUE_COLUMNS: usize = 256;
/// The column types a value schema may declare.
const COLUMN_KINDS: &[&str] = &["string", "integer", "number", "boolean", "json"];

/// Checks what the metadata relies on in a value schema (the caller parsed the document):
/// its size, its column count, and known column types.
pub(crate) fn validate_value_schema(schema: &ValueSchema) -> Result<(), MetaError> {
    if schema.text.len() > MAX_VALUE_SCHEMA_BYTES {
        return Err(MetaError::InvalidArgument(format!(
            "a value schema is at most {MAX_VALUE_SCHEMA_BYTES} bytes, got {}",
            schema.text.len()
        )));
    }
    if schema.columns.is_empty() || schema.columns.len() > MAX_VALUE_COLUMNS {
        return Err(MetaError::InvalidArgument(format!(
            "a value schema declares 1 to {MAX_VALUE_COLUMNS} columns, got {}",
            schema.columns.len()
        )));
    }
    for c in &schema.columns {
        if c.name.is_empty() || !COLUMN_KINDS.contains(&c.kind.as_str()) {
            return Err(MetaError::InvalidArgument(format!(
                "column `{}` of type `{}`: a column has a name and one of the types {}",
                c.name,
                c.kind,
                COLUMN_KINDS.join(", ")
            )));
        }
    }
    Ok(())
}

pub(crate) fn validate_partition_count(topic: &str, n: u32) -> Result<(), MetaError> {
    if n == 0 {
        return Err(MetaError::InvalidArgument(format!(
            "topic `{topic}` needs at least 1 partition, got 0"
        )));
    }
    if n > TopicSpec::MAX_PARTITIONS {
        return Err(MetaError::InvalidArgument(format!(
            "topic `{topic}` may have at most {} partitions, got {n}",
            TopicSpec::MAX_PARTITIONS
        )));
    }
    Ok(())
}

/// Checks a topic name: 1 to 249 characters of `[A-Za-z0-9._-]`, not `.` or `..`
/// (Kafka's rules, so names move between the two systems).
pub fn validate_topic_name(name: &str) -> Result<(), MetaError> {
    let bad = |reason: &str| {
        Err(MetaError::InvalidTopicName {
            name: shown_name(name),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.len() > 249 {
        return bad("it is longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("`.` and `..` are reserved");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return bad(&format!(
            "character {c:?} is not allowed (use letters, digits, `.`, `_`, `-`)"
        ));
    }
    Ok(())
}

/// A name as errors show it: escaped, and cut to 64 characters (a refusal must not echo
/// 10,000 of them).
pub(crate) fn shown_name(name: &str) -> String {
    let s: String = name.escape_debug().take(64).collect();
    if name.chars().count() > 64 {
        format!("{s}…")
    } else {
        s
    }
}

/// A topic as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topic {
    /// Internal id, never reused.
    pub id: u64,
    /// Name.
    pub name: String,
    /// Partition count.
    pub partitions: u32,
    /// Compression of stored batches.
    pub codec: Codec,
    /// Time retention in ms, -1 for forever.
    pub retention_ms: i64,
    /// Size retention in bytes per partition, -1 for unlimited.
    pub retention_bytes: i64,
    /// Creation time, ms since the Unix epoch.
    pub created_at_ms: i64,
    /// The value schema in force (a JSON Schema document), if one is declared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_schema: Option<String>,
    /// Every typed column any value schema of this topic declared, in declaration order:
    /// the table and every file written for it keep a column once declared, so a schema
    /// change never rewrites history (and a merge of old files types them as before).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub value_columns: Vec<TopicColumn>,
}

impl Topic {
    /// The columns after declaring `columns`: the known ones, then those that are new. A
    /// column declared again with another type is refused, as the table's files already
    /// hold it typed.
    pub fn merged_columns(&self, columns: &[TopicColumn]) -> Result<Vec<TopicColumn>, MetaError> {
        let mut merged = self.value_columns.clone();
        let new = columns
            .iter()
            .filter(|c| !merged.iter().any(|m| m.name.eq_ignore_ascii_case(&c.name)))
            .count();
        if merged.len() + new > MAX_VALUE_COLUMNS {
            return Err(MetaError::InvalidArgument(format!(
                "topic `{}` has {} typed columns and the schema adds {new}: a topic keeps at \
                 most {MAX_VALUE_COLUMNS}",
                self.name,
                merged.len()
            )));
        }
        for c in columns {
            match merged.iter().find(|m| m.name.eq_ignore_ascii_case(&c.name)) {
                Some(m) if m.kind != c.kind || m.name != c.name => {
                    return Err(MetaError::InvalidArgument(format!(
                        "topic `{}` already has column `{}` of type {}; a column keeps its name and \
                         type once declared (its files hold it), so declare `{}` as {} or use a \
                         new property name",
                        self.name, m.name, m.kind, c.name, m.kind
                    )));
                }
                Some(_) => {}
                None => merged.push(c.clone()),
            }
        }
        Ok(merged)
    }

    /// Fails unless `partition` exists in this topic.
    pub fn check_partition(&self, partition: u32) -> Result<(), MetaError> {
        if partition >= self.partitions {
            return Err(MetaError::PartitionOutOfRange {
                topic: self.name.clone(),
                partition,
                count: self.partitions,
            });
        }
        Ok(())
    }
}

/// The state of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PartitionState {
    /// Partition number.
    pub partition: u32,
    /// First readable offset.
    pub start_offset: i64,
    /// The high watermark: the next offset to assign.
    pub next_offset: i64,
    /// Stored bytes committed.
    pub bytes: u64,
    /// Index entries.
    pub index_entries: u64,
}

/// One stored batch of a segment, in object order, as the agent asks to commit it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitBatch {
    /// Topic id (not name: a deleted and re-created topic must not receive old batches).
    pub topic_id: u64,
    /// Partition.
    pub partition: u32,
    /// Byte position of the frame in the object.
    pub position: u64,
    /// Frame length in bytes.
    pub length: u32,
    /// Records in the batch.
    pub record_count: u32,
    /// Smallest record timestamp.
    pub min_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// The producer's idempotence stamp, if it is an idempotent producer.
    pub producer: Option<ProducerStamp>,
    /// Commit only if the partition's next offset equals this (optimistic concurrency).
    pub expected_offset: Option<i64>,
    /// Batches with the same group commit all together or not at all (an atomic request).
    pub atomic_group: Option<u32>,
}

impl CommitBatch {
    /// A plain batch: no producer stamp, no expected offset, not atomic.
    pub fn plain(topic_id: u64, partition: u32, position: u64, length: u32, records: u32) -> Self {
        CommitBatch {
            topic_id,
            partition,
            position,
            length,
            record_count: records,
            min_timestamp_ms: 0,
            max_timestamp_ms: 0,
            producer: None,
            expected_offset: None,
            atomic_group: None,
        }
    }
}

/// Identifies an idempotent producer's batch: who sent it, under which epoch, and the
/// sequence number of its first record in this partition (the rest follow densely).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ProducerStamp {
    /// The producer id from `init_producer`.
    pub producer_id: u64,
    /// The producer's epoch; an older epoch is fenced.
    pub epoch: u32,
    /// Sequence number of the batch's first record, per partition, from 0.
    pub base_sequence: i64,
}

/// A producer id and epoch handed out by `init_producer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerId {
    /// The id (never 0).
    pub id: u64,
    /// The epoch; each `init_producer` for the same name raises it and fences the old one.
    pub epoch: u32,
}

/// Why a batch was not committed although its segment was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// The batch's sequence is not the next one expected for its producer and partition
    /// (a gap or a reorder).
    OutOfOrderSequence {
        /// The sequence the partition expects next from this producer.
        expected: i64,
    },
    /// A newer epoch of the same producer exists: this producer instance is a zombie.
    Fenced {
        /// The current epoch.
        current_epoch: u32,
    },
    /// The producer id is unknown (never issued, or expired after idling).
    UnknownProducer,
    /// A conditional append whose expected offset was not the partition's next offset.
    OffsetMismatch {
        /// The partition's next offset when the batch was evaluated.
        next_offset: i64,
    },
    /// Another batch of the same atomic request was rejected, so none committed.
    AtomicAborted,
}

impl Rejection {
    /// A machine-readable reason, as sent to clients.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::OutOfOrderSequence { .. } => "OUT_OF_ORDER_SEQUENCE",
            Rejection::Fenced { .. } => "FENCED",
            Rejection::UnknownProducer => "UNKNOWN_PRODUCER",
            Rejection::OffsetMismatch { .. } => "OFFSET_MISMATCH",
            Rejection::AtomicAborted => "ATOMIC_ABORTED",
        }
    }
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Rejection::OutOfOrderSequence { expected } => write!(
                f,
                "out-of-order sequence: the partition expects sequence {expected} next from this producer"
            ),
            Rejection::Fenced { current_epoch } => write!(
                f,
                "producer fenced: epoch {current_epoch} of this producer is newer"
            ),
            Rejection::UnknownProducer => write!(
                f,
                "unknown producer id (never issued, or expired while idle): initialise the producer again"
            ),
            Rejection::OffsetMismatch { next_offset } => write!(
                f,
                "expected offset does not match: the partition's next offset is {next_offset}"
            ),
            Rejection::AtomicAborted => write!(
                f,
                "another batch of this atomic request was rejected, so none of it was committed"
            ),
        }
    }
}

/// A written segment object and its batches, to be committed in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentCommit {
    /// The object's key in the store: also the commit's idempotence key.
    pub object_key: String,
    /// Object size in bytes.
    pub object_size: u64,
    /// Batches in object order. Consecutive, byte-adjacent batches of one partition share
    /// one index entry.
    pub batches: Vec<CommitBatch>,
}

/// What happened to one batch of a segment commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchOutcome {
    /// Committed; the batch's first record has this offset.
    Committed {
        /// Base offset.
        base_offset: i64,
    },
    /// A retry of a batch this producer already committed: nothing new was written and
    /// this is the original batch's base offset.
    Duplicate {
        /// The original base offset.
        base_offset: i64,
    },
    /// Not committed: its topic was deleted, or re-created with a new id, after the batch
    /// was accepted.
    TopicGone,
    /// Not committed, for the reason given.
    Rejected(Rejection),
}

impl BatchOutcome {
    /// The base offset, if the batch's records are in the log (now or from before).
    pub fn base_offset(&self) -> Option<i64> {
        match self {
            BatchOutcome::Committed { base_offset } | BatchOutcome::Duplicate { base_offset } => {
                Some(*base_offset)
            }
            _ => None,
        }
    }

    /// Encodes as (code, detail) for the stored outcomes of a commit.
    pub(crate) fn encode(self) -> (u8, i64) {
        match self {
            BatchOutcome::Committed { base_offset } => (0, base_offset),
            BatchOutcome::Duplicate { base_offset } => (1, base_offset),
            BatchOutcome::TopicGone => (2, 0),
            BatchOutcome::Rejected(r) => match r {
                Rejection::OutOfOrderSequence { expected } => (3, expected),
                Rejection::Fenced { current_epoch } => (4, i64::from(current_epoch)),
                Rejection::UnknownProducer => (5, 0),
                Rejection::OffsetMismatch { next_offset } => (6, next_offset),
                Rejection::AtomicAborted => (7, 0),
            },
        }
    }

    pub(crate) fn decode(code: u8, detail: i64) -> Option<Self> {
        Some(match code {
            0 => BatchOutcome::Committed {
                base_offset: detail,
            },
            1 => BatchOutcome::Duplicate {
                base_offset: detail,
            },
            2 => BatchOutcome::TopicGone,
            3 => BatchOutcome::Rejected(Rejection::OutOfOrderSequence { expected: detail }),
            4 => BatchOutcome::Rejected(Rejection::Fenced {
                current_epoch: u32::try_from(detail).ok()?,
            }),
            5 => BatchOutcome::Rejected(Rejection::UnknownProducer),
            6 => BatchOutcome::Rejected(Rejection::OffsetMismatch {
                next_offset: detail,
            }),
            7 => BatchOutcome::Rejected(Rejection::AtomicAborted),
            _ => return None,
        })
    }
}

/// What kind of object an index entry points into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// Whole frames at `position..position + length` of a segment object.
    Segment,
    /// A compacted Parquet file of this partition alone (`position` 0, `length` its size,
    /// `batch_count` its row groups).
    Parquet,
}

impl EntryKind {
    pub(crate) fn code(self) -> u32 {
        match self {
            EntryKind::Segment => 0,
            EntryKind::Parquet => 1,
        }
    }

    pub(crate) fn from_code(code: u32) -> Option<Self> {
        match code {
            0 => Some(EntryKind::Segment),
            1 => Some(EntryKind::Parquet),
            _ => None,
        }
    }
}

/// One index entry: a run of records of one partition stored contiguously in one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    /// Topic id.
    pub topic_id: u64,
    /// Partition.
    pub partition: u32,
    /// First offset covered.
    pub base_offset: i64,
    /// One past the last offset covered.
    pub end_offset: i64,
    /// Object key.
    pub object_key: String,
    /// Byte position of the first frame.
    pub position: u64,
    /// Bytes covered (whole frames).
    pub length: u64,
    /// Frames covered.
    pub batch_count: u32,
    /// Smallest record timestamp.
    pub min_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
    /// Segment frames or a Parquet file.
    pub kind: EntryKind,
}
