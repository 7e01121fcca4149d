//! Topic and consumer-group administration.

use cairn_proto::v1::{self, Compression, admin_client::AdminClient, groups_client::GroupsClient};
use tonic::transport::Channel;

use crate::ClientError;

/// Optional settings of a new topic.
#[derive(Debug, Clone, Default)]
pub struct TopicOptions {
    /// Codec of stored batches; `None` picks the agent's default (zstd).
    pub compression: Option<Compression>,
    /// How long records are kept, in ms; `None` keeps them forever.
    pub retention_ms: Option<i64>,
    /// Bytes kept per partition; `None` for no limit.
    pub retention_bytes: Option<i64>,
}

/// Where [`Admin::reset_offsets`] moves a group's committed offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetTo {
    /// Each partition's first readable offset.
    Earliest,
    /// Each partition's high watermark.
    Latest,
    /// This offset (clamped into each partition's readable range).
    Offset(i64),
    /// The first records at or after this time, ms since the Unix epoch.
    Timestamp(i64),
}

/// Creates, lists, describes and deletes topics; lists, describes and resets consumer
/// groups.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
    groups: GroupsClient<Channel>,
}

impl Admin {
    /// An admin client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Admin {
            client: AdminClient::new(channel.clone()),
            groups: GroupsClient::new(channel),
        }
    }

    /// Makes `topic`/`partition`'s offsets before `before` unreadable; returns the new
    /// start offset.
    pub async fn delete_records(
        &self,
        topic: &str,
        partition: u32,
        before: i64,
    ) -> Result<i64, ClientError> {
        Ok(self
            .client
            .clone()
            .delete_records(v1::DeleteRecordsRequest {
                topic: topic.to_string(),
                partition,
                before_offset: before,
            })
            .await?
            .into_inner()
            .start_offset)
    }

    /// The agent's version, uptime, stores and counters.
    pub async fn agent_status(&self) -> Result<v1::AgentStatusResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .agent_status(v1::AgentStatusRequest {})
            .await?
            .into_inner())
    }

    /// Every group's name: `(consumer groups, share groups)`.
    pub async fn list_groups(&self) -> Result<(Vec<String>, Vec<String>), ClientError> {
        let r = self
            .groups
            .clone()
            .list_groups(v1::ListGroupsRequest {})
            .await?
            .into_inner();
        Ok((r.groups, r.share_groups))
    }

    /// A group's generation, live members and per-partition committed offset and lag.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<v1::DescribeGroupResponse, ClientError> {
        Ok(self
            .groups
            .clone()
            .describe_group(v1::DescribeGroupRequest {
                group: group.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Moves `group`'s committed offsets for every partition of `topic`; the group must
    /// have no live member. Returns the new offsets.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: ResetTo,
    ) -> Result<Vec<v1::PartitionOffset>, ClientError> {
        use v1::reset_offsets_request::To;
        let to = match to {
            ResetTo::Earliest => To::Earliest(true),
            ResetTo::Latest => To::Latest(true),
            ResetTo::Offset(n) => To::Offset(n),
            ResetTo::Timestamp(ms) => To::TimestampMs(ms),
        };
        Ok(self
            .groups
            .clone()
            .reset_offsets(v1::ResetOffsetsRequest {
                group: group.to_string(),
                topic: topic.to_string(),
                to: Some(to),
            })
            .await?
            .into_inner()
            .offsets)
    }

    /// Creates a topic with `partitions` partitions.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        options: TopicOptions,
    ) -> Result<v1::TopicInfo, ClientError> {
        let response = self
            .client
            .clone()
            .create_topic(v1::CreateTopicRequest {
                name: name.to_string(),
                partitions,
                compression: options.compression.unwrap_or(Compression::Unspecified) as i32,
                retention_ms: options.retention_ms.unwrap_or(-1),
                retention_bytes: options.retention_bytes.unwrap_or(-1),
            })
            .await?
            .into_inner();
        response
            .topic
            .ok_or_else(|| ClientError::Invalid("agent answered without a topic".into()))
    }

    /// Every topic, by name.
    pub async fn list_topics(&self) -> Result<Vec<v1::TopicInfo>, ClientError> {
        Ok(self
            .client
            .clone()
            .list_topics(v1::ListTopicsRequest {})
            .await?
            .into_inner()
            .topics)
    }

    /// A topic and the state of each of its partitions.
    pub async fn describe_topic(
        &self,
        name: &str,
    ) -> Result<v1::DescribeTopicResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .describe_topic(v1::DescribeTopicRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Deletes a topic and, logically, its records.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.client
            .clone()
            .delete_topic(v1::DeleteTopicRequest {
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Raises a topic's partition count to `partitions`.
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<v1::TopicInfo, ClientError> {
        let response = self
            .client
            .clone()
            .add_partitions(v1::AddPartitionsRequest {
                name: name.to_string(),
                partitions,
            })
            .await?
            .into_inner();
        response
            .topic
            .ok_or_else(|| ClientError::Invalid("agent answered without a topic".into()))
    }
}
