//! Topic administration.

use cairn_proto::v1::{self, Compression, admin_client::AdminClient};
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

/// Creates, lists, describes and deletes topics.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminClient<Channel>,
}

impl Admin {
    /// An admin client over `channel`.
    pub fn new(channel: Channel) -> Self {
        Admin {
            client: AdminClient::new(channel),
        }
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
