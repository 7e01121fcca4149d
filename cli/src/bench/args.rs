//! The flags of the benchmarks.

use std::time::Duration;

use crate::ConnectArgs;
use crate::codec::CodecArg;
use crate::size::parse_size;

/// Flags shared by the agent benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Start an agent for the run (a child `cairn agent` process) instead of using --endpoint.
    #[arg(long)]
    pub(super) embedded: bool,
    /// With --embedded: where the agent stores segments (default: a temporary directory).
    #[arg(long, value_name = "URL")]
    pub(super) object_store: Option<String>,
    /// With --embedded: the agent's metadata store, e.g. postgres://USER@HOST:PORT/DB
    /// (default: a SQLite file in a temporary directory).
    #[arg(long, value_name = "SPEC", requires = "embedded")]
    pub(super) metadata: Option<String>,
    /// With --embedded: the agent's linger.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    pub(super) linger: Duration,
    /// With --embedded: the agent's segment size.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub(super) segment_max_bytes: usize,
    /// How long to produce.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub(super) duration: Duration,
    /// Value size of each record.
    #[arg(long, value_parser = parse_size, default_value = "1KiB")]
    pub(super) record_size: usize,
    /// What the values hold: `random` bytes (incompressible, like encrypted or already
    /// compressed payloads) or `text` (words, as in logs and JSON events).
    #[arg(long, value_enum, default_value = "random", conflicts_with = "topic")]
    pub(super) values: ValuesArg,
    /// How the producers compress each batch (random values do not shrink, so zstd and
    /// lz4 only cost CPU on them).
    #[arg(long, value_enum, default_value = "zstd", conflicts_with = "topic")]
    pub(super) codec: CodecArg,
    /// Concurrent producers (each with its own connection).
    #[arg(long, default_value_t = 4)]
    pub(super) producers: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 8)]
    pub(super) partitions: u32,
    /// Target records/s over all producers; 0 sends as fast as the producers can.
    #[arg(long, default_value_t = 0)]
    pub(super) rate: u64,
    /// Also measure the raw PUT baseline of the same store first, and report the ratio
    /// (needs --embedded).
    #[arg(long)]
    pub(super) baseline: bool,
    /// Print the result as JSON (for scripts) instead of a table.
    #[arg(long)]
    pub(super) json: bool,
    /// `consume` only: read this existing topic instead of producing one first.
    #[arg(long)]
    pub(super) topic: Option<String>,
    /// `consume --topic` only: the offset to start at in every partition.
    #[arg(long, default_value_t = 0, requires = "topic")]
    pub(super) from: i64,
    /// Keep the benchmark topic (it is printed) instead of deleting it, e.g. to compact it
    /// and read it again with `cairn bench consume --topic`.
    #[arg(long, conflicts_with = "topic")]
    pub(super) keep: bool,
    /// The protocol the producers speak: Cairn's gRPC API, or Kafka's (a minimal
    /// idempotent Kafka producer, one connection each) to compare the two in one setup.
    #[arg(long, value_enum, default_value = "grpc")]
    pub(super) protocol: ProtocolArg,
    /// With --protocol kafka and without --embedded: an agent's Kafka listener (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    pub(super) kafka_bootstrap: Option<String>,
    #[command(flatten)]
    pub(super) connect: ConnectArgs,
}

/// The protocol of the bench's producers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProtocolArg {
    /// Cairn's gRPC API (the Rust client).
    Grpc,
    /// Kafka's wire protocol (the agent's Kafka listener).
    Kafka,
}

/// The content of benchmark values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ValuesArg {
    /// Random bytes: nothing compresses them.
    Random,
    /// English-like words separated by spaces: compresses about four times.
    Text,
}

/// Flags of `cairn bench compact`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct CompactArgs {
    /// Compact with each topic's table kept (`on`), without (`off`), or both (the default):
    /// four compactions, off, on, on, off, each of its own copy of the same produced data,
    /// and the ratio of their throughputs is what table commits cost.
    #[arg(long, value_enum, default_value = "both")]
    pub(super) tables: TablesArg,
    #[command(flatten)]
    pub(super) common: Common,
}

/// Which compactions `cairn bench compact` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum TablesArg {
    /// With table commits.
    On,
    /// Without.
    Off,
    /// Both, twice each, on copies of the same data.
    Both,
}

/// Flags of `cairn bench raw-put`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RawPutArgs {
    /// The store (default: a temporary directory). S3 settings come from AWS_*.
    #[arg(long, value_name = "URL")]
    pub(super) object_store: Option<String>,
    /// Object size (the agent's segment size).
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    pub(super) object_size: usize,
    /// PUTs in flight (the agent's max_inflight_segments).
    #[arg(long, default_value_t = 8)]
    pub(super) concurrency: usize,
    /// How long to run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub(super) duration: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub(super) json: bool,
}
