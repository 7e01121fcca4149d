//! Agent settings: plain data that comes from a TOML file, `CAIRN_` environment variables or
//! flags (the CLI merges them). Components (object store, metadata store, clock) are
//! injected separately through [`crate::AgentBuilder`].

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::AgentError;

/// Tunables of one agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// A segment is sealed once it holds this many bytes.
    pub segment_max_bytes: usize,
    /// A segment is sealed this long after its first batch, if not full before.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// Sealed segments whose PUT or commit is still running; more make producers wait.
    pub max_inflight_segments: usize,
    /// Segments above this size are uploaded in parts.
    pub multipart_threshold: usize,
    /// Most batches in one segment (bounds the commit transaction).
    pub segment_max_batches: usize,
    /// Largest produce request, in payload bytes (as sent: compressed).
    pub max_request_bytes: usize,
    /// Largest uncompressed size a frame may declare: the bound on a batch of records once a
    /// consumer decompresses it (the agent itself never decompresses).
    pub max_batch_uncompressed_bytes: usize,
    /// Bytes of decoded object data (verified frames, re-framed Parquet row groups) cached
    /// for fetches.
    pub cache_bytes: u64,
    /// The zone read cache (see `peer.proto`): bytes of object chunks this agent caches for
    /// its zone. 0 turns the zone cache off: every agent then reads the store for itself.
    pub chunk_cache_bytes: u64,
    /// Size of the zone read cache's chunks: objects are read in aligned ranges of this
    /// size, one GET per chunk per zone. Every agent of a zone must use the same size.
    pub chunk_bytes: u64,
    /// How long an agent waits for the owner of a chunk before it reads the store itself.
    #[serde(with = "humantime_serde")]
    pub peer_read_timeout: Duration,
    /// Bytes that fetches may be reading at once: each fetch reserves its `max_bytes` (at
    /// most 64 MiB) once it has something to read, and waits while the reservations would
    /// pass this. Waiting at the high watermark reserves nothing.
    pub fetch_memory_bytes: u64,
    /// Longest a fetch may wait at the high watermark.
    #[serde(with = "humantime_serde")]
    pub max_fetch_wait: Duration,
    /// How long topic metadata is cached before it is read again.
    #[serde(with = "humantime_serde")]
    pub topic_cache_ttl: Duration,
    /// Idempotent-producer state unused for this long is removed (its retries are then no
    /// longer recognised). Kafka's default is 7 days too.
    #[serde(with = "humantime_serde")]
    pub producer_idle_expiry: Duration,
    /// Share groups: a record delivered this many times without an acknowledgement goes
    /// to the dead-letter topic `<topic>.dlq` instead of being delivered again.
    pub share_max_deliveries: u32,
    /// How long the agent's registration in the cluster registry lives unless renewed (it
    /// renews every third of it). An agent that dies drops out of clients' views within
    /// this time.
    #[serde(with = "humantime_serde")]
    pub agent_lease: Duration,
    /// On shutdown, after every waiting produce has been answered, how long other open
    /// calls (long-polls, streams, gRPC health watches) may go on before they are closed.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Long-polls (fetches and share acquires that may wait) one connection may have open
    /// at once; more are answered RESOURCE_EXHAUSTED (THROTTLED) at once.
    pub max_long_polls_per_connection: usize,
    /// Request bytes one connection may have in flight (received, not yet answered); a
    /// call that would pass it is answered RESOURCE_EXHAUSTED (THROTTLED). At least
    /// `max_request_bytes` plus 1 MiB, so that one request of the largest size fits.
    pub max_connection_bytes: u64,
    /// Calls (HTTP/2 streams) one connection may have open at once; the client waits for
    /// one to end before it starts another.
    pub max_streams_per_connection: u32,
    /// Kafka clients' Metadata requests create a topic they name that does not exist,
    /// with this many partitions, when the client allows it and its principal may create
    /// it (Kafka's `auto.create.topics.enable`). 0, the default, creates none: the client
    /// is answered UNKNOWN_TOPIC_OR_PARTITION.
    pub kafka_auto_create_partitions: u32,
    /// The zones of Kafka clients by address, as `ZONE=CIDR` (e.g. `eu-1a=10.1.0.0/16`):
    /// a client whose `client.id` names no `cairn_az` is of the zone of the most specific
    /// range holding its address, and Metadata names leaders among that zone's agents.
    pub kafka_zone_cidrs: Vec<String>,
    /// The session timeout of Kafka consumers of the KIP-848 protocol
    /// (`group.protocol=consumer`), which the broker sets rather than the client: a member
    /// silent this long loses its partitions. Kafka's default, 45 s.
    #[serde(with = "humantime_serde")]
    pub kafka_group_session_timeout: Duration,
}

impl Default for AgentSettings {
    fn default() -> Self {
        AgentSettings {
            segment_max_bytes: 4 << 20,
            linger: Duration::from_millis(100),
            max_inflight_segments: 8,
            multipart_threshold: 16 << 20,
            segment_max_batches: 50_000,
            max_request_bytes: 16 << 20,
            max_batch_uncompressed_bytes: 64 << 20,
            cache_bytes: 256 << 20,
            chunk_cache_bytes: 256 << 20,
            chunk_bytes: 4 << 20,
            peer_read_timeout: Duration::from_secs(2),
            fetch_memory_bytes: 512 << 20,
            max_fetch_wait: Duration::from_secs(30),
            topic_cache_ttl: Duration::from_secs(1),
            producer_idle_expiry: Duration::from_secs(7 * 24 * 3600),
            share_max_deliveries: 5,
            agent_lease: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(10),
            max_long_polls_per_connection: 256,
            max_connection_bytes: 64 << 20,
            max_streams_per_connection: 1024,
            kafka_auto_create_partitions: 0,
            kafka_zone_cidrs: Vec::new(),
            kafka_group_session_timeout: Duration::from_secs(45),
        }
    }
}

impl AgentSettings {
    /// Checks that the settings can work together.
    pub fn validate(&self) -> Result<(), AgentError> {
        let bad = |m: String| Err(AgentError::Config(m));
        if self.segment_max_bytes < 1024 || self.segment_max_bytes > 1 << 30 {
            return bad(format!(
                "segment_max_bytes must be between 1 KiB and 1 GiB, got {}",
                self.segment_max_bytes
            ));
        }
        if self.linger.is_zero() || self.linger > Duration::from_secs(60) {
            return bad(format!(
                "linger must be between 1ms and 60s, got {:?}",
                self.linger
            ));
        }
        if self.max_inflight_segments == 0 {
            return bad("max_inflight_segments must be at least 1".into());
        }
        if self.multipart_threshold < 5 << 20 {
            return bad(format!(
                "multipart_threshold must be at least 5 MiB (S3's smallest part), got {}",
                self.multipart_threshold
            ));
        }
        let (lo, hi) = cairn_metadata::SESSION_TIMEOUT_RANGE_MS;
        let session = self.kafka_group_session_timeout.as_millis();
        if session < lo as u128 || session > hi as u128 {
            return bad(format!(
                "kafka_group_session_timeout must be between {lo} ms and {hi} ms, got {session} ms"
            ));
        }
        if let Err(e) = crate::kafka::ZoneCidrs::parse(&self.kafka_zone_cidrs) {
            return bad(format!("kafka_zone_cidrs: {e}"));
        }
        if self.kafka_auto_create_partitions > cairn_metadata::TopicSpec::MAX_PARTITIONS {
            return bad(format!(
                "kafka_auto_create_partitions must be at most {}, got {}",
                cairn_metadata::TopicSpec::MAX_PARTITIONS,
                self.kafka_auto_create_partitions
            ));
        }
        if self.segment_max_batches == 0 || self.segment_max_batches > 100_000 {
            return bad(format!(
                "segment_max_batches must be between 1 and 100000, got {}",
                self.segment_max_batches
            ));
        }
        if self.max_batch_uncompressed_bytes == 0
            || self.max_batch_uncompressed_bytes > cairn_proto::MAX_UNCOMPRESSED_BYTES as usize
        {
            return bad(format!(
                "max_batch_uncompressed_bytes must be between 1 and {}, got {}",
                cairn_proto::MAX_UNCOMPRESSED_BYTES,
                self.max_batch_uncompressed_bytes
            ));
        }
        if self.fetch_memory_bytes < 64 << 20 || self.fetch_memory_bytes > 1 << 40 {
            return bad(format!(
                "fetch_memory_bytes must be between 64 MiB (one fetch's largest max_bytes) and 1 TiB, got {}",
                self.fetch_memory_bytes
            ));
        }
        if !(64 << 10..=64 << 20).contains(&self.chunk_bytes) {
            return bad(format!(
                "chunk_bytes must be between 64 KiB and 64 MiB, got {}",
                self.chunk_bytes
            ));
        }
        if self.chunk_cache_bytes != 0 && self.chunk_cache_bytes < self.chunk_bytes {
            return bad(format!(
                "chunk_cache_bytes must be 0 (no zone cache) or at least one chunk ({} bytes), got {}",
                self.chunk_bytes, self.chunk_cache_bytes
            ));
        }
        if self.peer_read_timeout < Duration::from_millis(10)
            || self.peer_read_timeout > Duration::from_secs(60)
        {
            return bad(format!(
                "peer_read_timeout must be between 10ms and 60s, got {:?}",
                self.peer_read_timeout
            ));
        }
        if !(1..=100).contains(&self.share_max_deliveries) {
            return bad(format!(
                "share_max_deliveries must be between 1 and 100, got {}",
                self.share_max_deliveries
            ));
        }
        if self.producer_idle_expiry < Duration::from_secs(60) {
            return bad(format!(
                "producer_idle_expiry must be at least 1m, got {:?}",
                self.producer_idle_expiry
            ));
        }
        if self.agent_lease < Duration::from_millis(300)
            || self.agent_lease > Duration::from_secs(600)
        {
            return bad(format!(
                "agent_lease must be between 300ms and 10m, got {:?}",
                self.agent_lease
            ));
        }
        if self.shutdown_timeout > Duration::from_secs(600) {
            return bad(format!(
                "shutdown_timeout must be at most 10m, got {:?}",
                self.shutdown_timeout
            ));
        }
        if self.max_request_bytes > 256 << 20 {
            return bad(format!(
                "max_request_bytes must be at most 256 MiB, got {}",
                self.max_request_bytes
            ));
        }
        if !(1..=100_000).contains(&self.max_long_polls_per_connection) {
            return bad(format!(
                "max_long_polls_per_connection must be between 1 and 100000, got {}",
                self.max_long_polls_per_connection
            ));
        }
        let least = self.max_request_bytes as u64 + (1 << 20);
        if self.max_connection_bytes < least || self.max_connection_bytes > 64 << 30 {
            return bad(format!(
                "max_connection_bytes must be between max_request_bytes + 1 MiB ({least}) and 64 GiB, got {}",
                self.max_connection_bytes
            ));
        }
        if !(16..=100_000).contains(&self.max_streams_per_connection) {
            return bad(format!(
                "max_streams_per_connection must be between 16 and 100000, got {}",
                self.max_streams_per_connection
            ));
        }
        Ok(())
    }
}
