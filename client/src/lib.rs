//! The Rust SDK for Cairn.
//!
//! - [`Admin`] creates, lists, describes and deletes topics.
//! - [`Producer`] batches records per partition in memory, sends each batch as one frame
//!   compressed with [`ProducerConfig::codec`] when a batch is full or its linger time is
//!   up, and retries `UNAVAILABLE` answers with backoff; each
//!   [`Producer::send`] resolves to the record's offset once it is durable. It is
//!   idempotent by default: a retry never stores a second copy. [`Producer::append`] makes
//!   conditional appends (expected offset) and [`Producer::append_atomic`] appends to
//!   several partitions all-or-nothing.
//! - [`Consumer`] reads assigned partitions from an offset and can follow them.
//! - [`GroupConsumer`] is a consumer-group member: the agent assigns partitions, the member
//!   commits its progress after processing.
//! - [`ShareConsumer`] is a share-group (queue) member: records are leased one consumer at a
//!   time and settled by acknowledgement; unacknowledged ones come back to anyone.
//!
//! Failed calls carry the agent's reason as a [`ErrorReason`] ([`ClientError::reason`]), so
//! programs compare enum values, never message text.
//!
//! ```no_run
//! # async fn demo() -> Result<(), cairn_client::ClientError> {
//! use cairn_client::{
//!     Admin, Codec, Consumer, ErrorReason, Offset, Producer, ProducerConfig, ProducerRecord,
//!     TopicOptions, connect,
//! };
//! let channel = connect("http://127.0.0.1:7170").await?;
//! let admin = Admin::new(channel.clone());
//! match admin.create_topic("events", 4, TopicOptions::default()).await {
//!     Err(e) if e.reason() == Some(ErrorReason::TopicExists) => {}
//!     other => {
//!         other?;
//!     }
//! }
//! let config = ProducerConfig {
//!     codec: Codec::Lz4Frame,
//!     ..ProducerConfig::default()
//! };
//! let producer = Producer::new(channel.clone(), config);
//! let ack = producer.send(ProducerRecord::new("events", "hello").key("k")).await?;
//! let stored = ack.await?;
//! println!("stored at {}/{}", stored.partition, stored.offset);
//! let mut consumer = Consumer::new(channel, Default::default());
//! consumer.assign("events", stored.partition, Offset::Beginning).await?;
//! for record in consumer.poll(std::time::Duration::from_secs(1)).await? {
//!     println!("{} at {}: {:?}", record.offset, record.timestamp_ms, record.value);
//! }
//! producer.close().await?;
//! # Ok(()) }
//! ```

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

mod admin;
mod cluster;
mod consumer;
mod error;
mod group;
mod producer;
mod security;
mod share;

use std::time::Duration;

pub use admin::{Admin, ResetTo, TopicOptions};
/// The error of a frame that fails to build or to open (see [`ClientError::Corrupt`]).
pub use cairn_proto::FrameError;
pub use cairn_proto::v2::{
    AclBinding, AgentInfo, Codec, DescribeClusterResponse, DescribeGroupResponse,
    DescribeTopicResponse, ErrorReason, GetAgentStatusResponse, LatencyHistogram, PartitionInfo,
    PartitionOffset, QuotaBinding, TokenInfo, TopicInfo,
};
pub use cluster::{Cluster, ClusterConfig};
pub use consumer::{ConsumedRecord, Consumer, ConsumerConfig, Offset};
pub use error::{
    ClientError, MAX_THROTTLE_WAIT, RejectReason, Rejected, patiently, throttle_delay,
};
pub use group::{GroupConfig, GroupConsumer};
pub use producer::{
    AppendBatch, AppendResult, Delivery, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
};
pub use security::Security;
pub use share::{ShareConfig, ShareConsumer, ShareRecord};
/// The gRPC channel to an agent, as returned by [`connect`].
pub use tonic::transport::Channel;

/// Most requests an idempotent producer keeps in flight: the agent remembers a producer's
/// last 5 batches per partition, so a retry of any of them is recognised.
pub(crate) const MAX_IN_FLIGHT: usize = 5;

/// Largest gRPC message the client accepts or sends (fetches may carry many MiB).
pub(crate) const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Opens a channel to an agent, e.g. `http://127.0.0.1:7170` (plain text, no
/// credentials; [`Cluster::single`] takes TLS settings and a token). The channel is cheap
/// to clone and shared by [`Admin`], [`Producer`] and [`Consumer`].
pub async fn connect(endpoint: &str) -> Result<Channel, ClientError> {
    Security::default()
        .endpoint(endpoint, Duration::from_secs(5))?
        .connect()
        .await
        .map_err(|source| ClientError::Connect {
            endpoint: endpoint.to_string(),
            source,
        })
}

/// A channel that connects on first use (and reconnects after failures), so building a
/// client never fails because an agent is briefly down.
pub fn connect_lazy(endpoint: &str) -> Result<Channel, ClientError> {
    Ok(Security::default()
        .endpoint(endpoint, Duration::from_secs(5))?
        .connect_lazy())
}
