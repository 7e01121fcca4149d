//! Topic and consumer-group administration, over the agent's `AdminService` and
//! `GroupService`. Listings are paged on the wire; the methods here follow the pages and
//! return everything.

use crate::Cluster;
use cairn_proto::v2::{
    self, Codec, GroupKind, admin_service_client::AdminServiceClient,
    group_service_client::GroupServiceClient,
};

use crate::ClientError;

/// Most pages a listing follows before it gives up on an agent that keeps answering
/// with a next page (10,000 pages of up to 1,000 entries).
const MAX_PAGES: usize = 10_000;

/// Optional settings of a new topic; `None` leaves a setting to the agent.
#[derive(Debug, Clone, Default)]
pub struct TopicOptions {
    /// The codec the agent uses for frames it builds itself (records read back from
    /// Parquet); `None` picks the agent's default (zstd). Producers choose their own codec
    /// per frame ([`crate::ProducerConfig::codec`]).
    pub codec: Option<Codec>,
    /// How long records are kept, in ms (positive); `None` keeps them forever.
    pub retention_ms: Option<i64>,
    /// Bytes kept per partition (positive); `None` for no limit.
    pub retention_bytes: Option<i64>,
    /// A JSON Schema document whose top-level properties become typed columns of the
    /// topic's table (see [`Admin::set_value_schema`]); `None` declares none.
    pub value_schema: Option<String>,
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
    /// Per partition, the first record stamped at or after this time (ms since the Unix
    /// epoch); the high watermark where none is.
    Timestamp(i64),
}

/// Creates, lists, describes and deletes topics; lists, describes and resets consumer
/// groups.
#[derive(Debug, Clone)]
pub struct Admin {
    client: AdminServiceClient<Cluster>,
    groups: GroupServiceClient<Cluster>,
}

impl Admin {
    /// An admin client over `cluster` (a [`Cluster`] or one agent's
    /// [`Channel`](crate::Channel)).
    pub fn new(cluster: impl Into<Cluster>) -> Self {
        let channel = cluster.into();
        Admin {
            client: AdminServiceClient::new(channel.clone())
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES),
            groups: GroupServiceClient::new(channel)
                .max_decoding_message_size(crate::MAX_MESSAGE_BYTES),
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
            .delete_records(v2::DeleteRecordsRequest {
                topic: topic.to_string(),
                partition,
                before_offset: before,
            })
            .await?
            .into_inner()
            .start_offset)
    }

    /// The answering agent's version, uptime, stores and counters.
    pub async fn agent_status(&self) -> Result<v2::GetAgentStatusResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .get_agent_status(v2::GetAgentStatusRequest {})
            .await?
            .into_inner())
    }

    /// The cluster's live agents as the answering agent reads them from the registry,
    /// with that agent's id and clock.
    pub async fn describe_cluster(&self) -> Result<v2::DescribeClusterResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .describe_cluster(v2::DescribeClusterRequest {})
            .await?
            .into_inner())
    }

    /// Issues a bearer token for `principal`, working for `expires_in` (for ever when
    /// `None`). The answer holds the token itself, which cannot be read again.
    pub async fn create_token(
        &self,
        principal: &str,
        expires_in: Option<std::time::Duration>,
    ) -> Result<v2::CreateTokenResponse, ClientError> {
        let expires_in_ms = expires_in.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Ok(self
            .client
            .clone()
            .create_token(v2::CreateTokenRequest {
                principal: principal.to_string(),
                expires_in_ms,
            })
            .await?
            .into_inner())
    }

    /// Every token's record (never a secret), by id.
    pub async fn list_tokens(&self) -> Result<Vec<v2::TokenInfo>, ClientError> {
        Ok(self
            .client
            .clone()
            .list_tokens(v2::ListTokensRequest {})
            .await?
            .into_inner()
            .tokens)
    }

    /// Revokes the token `id` (or the whole token); false when there was none.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, ClientError> {
        Ok(self
            .client
            .clone()
            .revoke_token(v2::RevokeTokenRequest { id: id.to_string() })
            .await?
            .into_inner()
            .revoked)
    }

    /// Adds an ACL.
    pub async fn create_acl(&self, acl: v2::AclBinding) -> Result<(), ClientError> {
        self.client
            .clone()
            .create_acl(v2::CreateAclRequest { acl: Some(acl) })
            .await?;
        Ok(())
    }

    /// Every ACL.
    pub async fn list_acls(&self) -> Result<Vec<v2::AclBinding>, ClientError> {
        Ok(self
            .client
            .clone()
            .list_acls(v2::ListAclsRequest {})
            .await?
            .into_inner()
            .acls)
    }

    /// Removes an ACL; false when there was none.
    pub async fn delete_acl(&self, acl: v2::AclBinding) -> Result<bool, ClientError> {
        Ok(self
            .client
            .clone()
            .delete_acl(v2::DeleteAclRequest { acl: Some(acl) })
            .await?
            .into_inner()
            .deleted)
    }

    /// Sets a principal's quotas (principal `*`: the default), replacing its earlier ones.
    pub async fn set_quota(&self, quota: v2::QuotaBinding) -> Result<(), ClientError> {
        self.client
            .clone()
            .set_quota(v2::SetQuotaRequest { quota: Some(quota) })
            .await?;
        Ok(())
    }

    /// Every principal's quotas, the default (`*`) first.
    pub async fn list_quotas(&self) -> Result<Vec<v2::QuotaBinding>, ClientError> {
        Ok(self
            .client
            .clone()
            .list_quotas(v2::ListQuotasRequest {})
            .await?
            .into_inner()
            .quotas)
    }

    /// Removes a principal's quotas; false when it had none.
    pub async fn delete_quota(&self, principal: &str) -> Result<bool, ClientError> {
        Ok(self
            .client
            .clone()
            .delete_quota(v2::DeleteQuotaRequest {
                principal: principal.to_string(),
            })
            .await?
            .into_inner()
            .deleted)
    }

    /// Every group's name, each list in name order: `(consumer groups, share groups)`.
    pub async fn list_groups(&self) -> Result<(Vec<String>, Vec<String>), ClientError> {
        let mut consumer = Vec::new();
        let mut share = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .groups
                .clone()
                .list_groups(v2::ListGroupsRequest {
                    page_size: None,
                    page_token: token.clone(),
                })
                .await?
                .into_inner();
            for g in page.groups {
                match g.kind() {
                    GroupKind::Consumer => consumer.push(g.name),
                    GroupKind::Share => share.push(g.name),
                    GroupKind::Unspecified => {
                        tracing::debug!(group = %g.name, "skipping a group of unknown kind");
                    }
                }
            }
            match next_page(token, page.next_page_token)? {
                Some(next) => token = next,
                None => return Ok((consumer, share)),
            }
        }
        Err(too_many_pages("groups"))
    }

    /// A group's generation, live members and per-partition committed offset and lag.
    pub async fn describe_group(
        &self,
        group: &str,
    ) -> Result<v2::DescribeGroupResponse, ClientError> {
        Ok(self
            .groups
            .clone()
            .describe_group(v2::DescribeGroupRequest {
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
    ) -> Result<Vec<v2::PartitionOffset>, ClientError> {
        use v2::reset_offsets_request::To;
        let to = match to {
            ResetTo::Earliest => To::Earliest(true),
            ResetTo::Latest => To::Latest(true),
            ResetTo::Offset(n) => To::Offset(n),
            ResetTo::Timestamp(ms) => To::TimestampMs(ms),
        };
        Ok(self
            .groups
            .clone()
            .reset_offsets(v2::ResetOffsetsRequest {
                group: group.to_string(),
                topic: topic.to_string(),
                to: Some(to),
            })
            .await?
            .into_inner()
            .offsets)
    }

    /// Creates a topic with `partitions` partitions. Fails with
    /// [`v2::ErrorReason::TopicExists`] (see [`ClientError::reason`]) if the name is taken.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: u32,
        options: TopicOptions,
    ) -> Result<v2::TopicInfo, ClientError> {
        for (field, value) in [
            ("retention_ms", options.retention_ms),
            ("retention_bytes", options.retention_bytes),
        ] {
            if let Some(n) = value
                && n <= 0
            {
                return Err(ClientError::Invalid(format!(
                    "{field} must be positive, got {n} (leave it unset to keep everything)"
                )));
            }
        }
        let response = self
            .client
            .clone()
            .create_topic(v2::CreateTopicRequest {
                name: name.to_string(),
                partitions,
                codec: options.codec.unwrap_or(Codec::Unspecified) as i32,
                retention_ms: options.retention_ms,
                retention_bytes: options.retention_bytes,
                value_schema: options.value_schema,
            })
            .await?
            .into_inner();
        response
            .topic
            .ok_or_else(|| ClientError::Invalid("agent answered without a topic".into()))
    }

    /// Every topic, in name order.
    pub async fn list_topics(&self) -> Result<Vec<v2::TopicInfo>, ClientError> {
        let mut topics = Vec::new();
        let mut token = String::new();
        for _ in 0..MAX_PAGES {
            let page = self
                .client
                .clone()
                .list_topics(v2::ListTopicsRequest {
                    page_size: None,
                    page_token: token.clone(),
                })
                .await?
                .into_inner();
            topics.extend(page.topics);
            match next_page(token, page.next_page_token)? {
                Some(next) => token = next,
                None => return Ok(topics),
            }
        }
        Err(too_many_pages("topics"))
    }

    /// A topic and the state of each of its partitions.
    pub async fn describe_topic(
        &self,
        name: &str,
    ) -> Result<v2::DescribeTopicResponse, ClientError> {
        Ok(self
            .client
            .clone()
            .describe_topic(v2::DescribeTopicRequest {
                name: name.to_string(),
            })
            .await?
            .into_inner())
    }

    /// Deletes a topic and, logically, its records.
    pub async fn delete_topic(&self, name: &str) -> Result<(), ClientError> {
        self.client
            .clone()
            .delete_topic(v2::DeleteTopicRequest {
                name: name.to_string(),
            })
            .await?;
        Ok(())
    }

    /// Declares a topic's value schema (a JSON Schema document of `"type": "object"` whose
    /// top-level properties become typed columns of its table). A property already declared
    /// keeps its type; new ones add columns, and the table keeps the columns of every
    /// earlier schema.
    pub async fn set_value_schema(
        &self,
        topic: &str,
        value_schema: String,
    ) -> Result<v2::TopicInfo, ClientError> {
        let response = self
            .client
            .clone()
            .set_value_schema(v2::SetValueSchemaRequest {
                topic: topic.to_string(),
                value_schema,
            })
            .await?
            .into_inner();
        response
            .topic
            .ok_or_else(|| ClientError::Invalid("agent answered without a topic".into()))
    }

    /// Raises a topic's partition count to `partitions`.
    pub async fn add_partitions(
        &self,
        name: &str,
        partitions: u32,
    ) -> Result<v2::TopicInfo, ClientError> {
        let response = self
            .client
            .clone()
            .add_partitions(v2::AddPartitionsRequest {
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

/// The token of the page after the one asked for with `asked`, or `None` after the last
/// page. An agent that answers with the token it was asked for would loop forever.
fn next_page(asked: String, next: String) -> Result<Option<String>, ClientError> {
    if next.is_empty() {
        Ok(None)
    } else if next == asked {
        Err(ClientError::Invalid(format!(
            "the agent answered page token `{next}` with the same token as the next page"
        )))
    } else {
        Ok(Some(next))
    }
}

fn too_many_pages(what: &str) -> ClientError {
    ClientError::Invalid(format!(
        "listing {what} took more than {MAX_PAGES} pages; the agent keeps answering a next page"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_stops_on_the_last_page_and_on_a_repeated_token() {
        assert!(matches!(next_page(String::new(), String::new()), Ok(None)));
        assert!(matches!(
            next_page(String::new(), "b".into()),
            Ok(Some(t)) if t == "b"
        ));
        assert!(next_page("b".into(), "b".into()).is_err());
    }
}
