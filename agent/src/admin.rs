//! The Admin service: topics (create, list, describe, delete, add partitions, value
//! schema, delete records) and the agent's status.

use std::sync::Arc;

use cairn_metadata::{TopicColumn, TopicSpec, ValueSchema};
use cairn_proto::v2;
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::convert::{codec_from_proto, page, topic_info};
use crate::service::{Shared, allow, need, peer_of, status};
use cairn_metadata::acls::{Operation, ResourceType};

/// The Admin service.
pub(crate) struct AdminService(pub(crate) Arc<Shared>);

#[tonic::async_trait]
impl v2::admin_service_server::AdminService for AdminService {
    async fn create_topic(
        &self,
        request: Request<v2::CreateTopicRequest>,
    ) -> Result<Response<v2::CreateTopicResponse>, Status> {
        // Create on the topic's name, or on the cluster (any topic).
        let name = &request.get_ref().name;
        if allow(
            &self.0,
            &request,
            Operation::Create,
            ResourceType::Cluster,
            "*",
        )
        .is_err()
        {
            allow(
                &self.0,
                &request,
                Operation::Create,
                ResourceType::Topic,
                name,
            )?;
        }
        let r = request.into_inner();
        let retention = |what: &str, v: Option<i64>| match v {
            None => Ok(-1),
            Some(n) if n > 0 => Ok(n),
            Some(n) => Err(status(AgentError::Invalid(format!(
                "{what} must be positive (leave it out to keep everything), got {n}"
            )))),
        };
        let spec = TopicSpec {
            name: r.name,
            partitions: r.partitions,
            codec: codec_from_proto(r.codec).map_err(status)?,
            retention_ms: retention("retention_ms", r.retention_ms)?,
            retention_bytes: retention("retention_bytes", r.retention_bytes)?,
            value_schema: r
                .value_schema
                .as_deref()
                .map(declared_schema)
                .transpose()
                .map_err(status)?,
        };
        let topic = self.0.metadata.create_topic(&spec).await.map_err(status)?;
        self.0.topics.invalidate(&topic.name).await;
        Ok(Response::new(v2::CreateTopicResponse {
            topic: Some(topic_info(&topic)),
        }))
    }

    async fn list_topics(
        &self,
        request: Request<v2::ListTopicsRequest>,
    ) -> Result<Response<v2::ListTopicsResponse>, Status> {
        let principal = crate::auth::principal_of(&request).map(str::to_string);
        let r = request.into_inner();
        let mut topics = self.0.metadata.list_topics().await.map_err(status)?;
        // Only the topics the caller may see.
        topics.retain(|t| {
            self.0.authz.may(
                principal.as_deref(),
                Operation::Describe,
                ResourceType::Topic,
                &t.name,
            )
        });
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let (topics, next_page_token) =
            page(topics, |t| t.name.clone(), r.page_size, &r.page_token).map_err(status)?;
        Ok(Response::new(v2::ListTopicsResponse {
            topics: topics.iter().map(topic_info).collect(),
            next_page_token,
        }))
    }

    async fn describe_topic(
        &self,
        request: Request<v2::DescribeTopicRequest>,
    ) -> Result<Response<v2::DescribeTopicResponse>, Status> {
        let name = &request.get_ref().name;
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Topic,
            name,
        )?;
        let name = request.into_inner().name;
        need("topic name", &name)?;
        let topic = self.0.metadata.topic(&name).await.map_err(status)?;
        let states = self
            .0
            .metadata
            .partition_states(&topic)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::DescribeTopicResponse {
            topic: Some(topic_info(&topic)),
            partitions: states
                .iter()
                .map(|s| v2::PartitionInfo {
                    partition: s.partition,
                    start_offset: s.start_offset,
                    high_watermark: s.next_offset,
                    bytes: s.bytes,
                    records: (s.next_offset - s.start_offset).max(0) as u64,
                    index_entries: s.index_entries,
                })
                .collect(),
        }))
    }

    async fn delete_topic(
        &self,
        request: Request<v2::DeleteTopicRequest>,
    ) -> Result<Response<v2::DeleteTopicResponse>, Status> {
        let name = &request.get_ref().name;
        allow(
            &self.0,
            &request,
            Operation::Delete,
            ResourceType::Topic,
            name,
        )?;
        let name = request.into_inner().name;
        need("topic name", &name)?;
        self.0.metadata.delete_topic(&name).await.map_err(status)?;
        self.0.topics.invalidate(&name).await;
        Ok(Response::new(v2::DeleteTopicResponse {}))
    }

    async fn delete_records(
        &self,
        request: Request<v2::DeleteRecordsRequest>,
    ) -> Result<Response<v2::DeleteRecordsResponse>, Status> {
        let topic = &request.get_ref().topic;
        allow(
            &self.0,
            &request,
            Operation::Delete,
            ResourceType::Topic,
            topic,
        )?;
        let r = request.into_inner();
        need("topic name", &r.topic)?;
        let start_offset = self
            .0
            .metadata
            .delete_records(&r.topic, r.partition, r.before_offset)
            .await
            .map_err(status)?;
        Ok(Response::new(v2::DeleteRecordsResponse { start_offset }))
    }

    async fn get_agent_status(
        &self,
        request: Request<v2::GetAgentStatusRequest>,
    ) -> Result<Response<v2::GetAgentStatusResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            "*",
        )?;
        let caller = crate::auth::principal_of(&request).map(str::to_string);
        let s = &self.0;
        s.metrics.sync(&s.metadata);
        let m = &s.metrics;
        let topics = s.metadata.list_topics().await.map_err(status)?.len() as u32;
        let store = m.store.snapshot();
        Ok(Response::new(v2::GetAgentStatusResponse {
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at_ms: s.started_ms,
            uptime_seconds: m.uptime_secs(),
            object_store: s.store_url.clone(),
            metadata_backend: s.metadata.kv().name().to_string(),
            topics,
            produce_requests: m.produce_requests.get(),
            produce_records: m.produce_records.get(),
            produce_bytes: m.produce_bytes.get(),
            fetch_requests: m.fetch_requests.get(),
            fetch_bytes: m.fetch_bytes.get(),
            cache_hits: m.cache_hits.get(),
            cache_misses: m.cache_misses.get(),
            object_puts: store.puts,
            object_gets: store.gets,
            object_put_bytes: store.put_bytes,
            object_get_bytes: store.get_bytes,
            metadata_commits: m.commits.get(),
            metadata_retries: m.metadata_retries(),
            cpu_seconds: crate::metrics::process_cpu_seconds(),
            peak_rss_bytes: crate::metrics::process_peak_rss_bytes(),
            segment_fill_latency: Some(histogram(&m.segment_fill_seconds)),
            segment_put_latency: Some(histogram(&m.segment_put_seconds)),
            commit_latency: Some(histogram(&m.commit_seconds)),
            agent_id: s.identity.get().map(|i| i.id.clone()).unwrap_or_default(),
            zone: s.identity.get().map(|i| i.zone.clone()).unwrap_or_default(),
            advertised_address: s
                .identity
                .get()
                .map(|i| i.address.clone())
                .unwrap_or_default(),
            waiting_fetches: s.metadata.waiting_fetches() as u64,
            zone_cache_local_hits: m.zone_reads(crate::zone::Source::LocalHit).get(),
            zone_cache_local_misses: m.zone_reads(crate::zone::Source::LocalMiss).get(),
            zone_cache_peer_reads: m.zone_reads(crate::zone::Source::Peer).get(),
            zone_cache_peer_failures: m.zone_reads(crate::zone::Source::PeerFailed).get(),
            zone_cache_members: s.zone.as_ref().map_or(0, |z| z.member_count()),
            clock_offset_ms: s.metadata.clock_offset_ms(),
            caller_principal: caller.unwrap_or_default(),
        }))
    }

    async fn create_token(
        &self,
        request: Request<v2::CreateTokenRequest>,
    ) -> Result<Response<v2::CreateTokenResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let by = caller(&request);
        let peer = peer_of(&request);
        let r = request.into_inner();
        let (record, token) = self
            .0
            .metadata
            .create_token(&r.principal, r.expires_in_ms, &by)
            .await
            .map_err(status)?;
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %by,
            operation = "CreateToken",
            resource = %format!("token:{} for {}", record.id, record.principal),
            peer = %peer,
            "token created"
        );
        Ok(Response::new(v2::CreateTokenResponse {
            info: Some(token_info(record)),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v2::ListTokensRequest>,
    ) -> Result<Response<v2::ListTokensResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let tokens = self.0.metadata.list_tokens().await.map_err(status)?;
        Ok(Response::new(v2::ListTokensResponse {
            tokens: tokens.into_iter().map(token_info).collect(),
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v2::RevokeTokenRequest>,
    ) -> Result<Response<v2::RevokeTokenResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let by = caller(&request);
        let peer = peer_of(&request);
        let r = request.into_inner();
        let revoked = self.0.metadata.revoke_token(&r.id).await.map_err(status)?;
        let id = cairn_metadata::tokens::parse_token(&r.id).map_or(r.id.as_str(), |t| t.id);
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %by,
            operation = "RevokeToken",
            resource = %format!("token:{id}"),
            peer = %peer,
            revoked,
            "token revoked"
        );
        Ok(Response::new(v2::RevokeTokenResponse { revoked }))
    }

    async fn create_acl(
        &self,
        request: Request<v2::CreateAclRequest>,
    ) -> Result<Response<v2::CreateAclResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let (by, peer) = (caller(&request), peer_of(&request));
        let acl = acl_from_proto(request.into_inner().acl)?;
        self.0.metadata.add_acl(&acl).await.map_err(status)?;
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %by,
            operation = "CreateAcl",
            resource = %acl.describe(),
            peer = %peer,
            "ACL added"
        );
        Ok(Response::new(v2::CreateAclResponse {}))
    }

    async fn list_acls(
        &self,
        request: Request<v2::ListAclsRequest>,
    ) -> Result<Response<v2::ListAclsResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Describe,
            ResourceType::Cluster,
            "*",
        )?;
        let acls = self.0.metadata.list_acls().await.map_err(status)?;
        Ok(Response::new(v2::ListAclsResponse {
            acls: acls.iter().map(acl_to_proto).collect(),
        }))
    }

    async fn delete_acl(
        &self,
        request: Request<v2::DeleteAclRequest>,
    ) -> Result<Response<v2::DeleteAclResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let (by, peer) = (caller(&request), peer_of(&request));
        let acl = acl_from_proto(request.into_inner().acl)?;
        let deleted = self.0.metadata.remove_acl(&acl).await.map_err(status)?;
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %by,
            operation = "DeleteAcl",
            resource = %acl.describe(),
            peer = %peer,
            deleted,
            "ACL removed"
        );
        Ok(Response::new(v2::DeleteAclResponse { deleted }))
    }

    async fn set_quota(
        &self,
        request: Request<v2::SetQuotaRequest>,
    ) -> Result<Response<v2::SetQuotaResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let (by, peer) = (caller(&request), peer_of(&request));
        let quota = quota_from_proto(request.into_inner().quota)?;
        self.0.metadata.set_quota(&quota).await.map_err(status)?;
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %by,
            operation = "SetQuota",
            resource = %format!("quota:{}", quota.principal),
            peer = %peer,
            produce_bytes_per_second = ?quota.produce_bytes_per_sec,
            fetch_bytes_per_second = ?quota.fetch_bytes_per_sec,
            requests_per_second = ?quota.requests_per_sec,
            "quota set"
        );
        Ok(Response::new(v2::SetQuotaResponse {}))
    }

    async fn list_quotas(
        &self,
        request: Request<v2::ListQuotasRequest>,
    ) -> Result<Response<v2::ListQuotasResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::DescribeConfigs,
            ResourceType::Cluster,
            "*",
        )?;
        let quotas = self.0.metadata.list_quotas().await.map_err(status)?;
        Ok(Response::new(v2::ListQuotasResponse {
            quotas: quotas
                .into_iter()
                .map(|q| v2::QuotaBinding {
                    principal: q.principal,
                    produce_bytes_per_second: q.produce_bytes_per_sec,
                    fetch_bytes_per_second: q.fetch_bytes_per_sec,
                    requests_per_second: q.requests_per_sec,
                })
                .collect(),
        }))
    }

    async fn delete_quota(
        &self,
        request: Request<v2::DeleteQuotaRequest>,
    ) -> Result<Response<v2::DeleteQuotaResponse>, Status> {
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Cluster,
            "*",
        )?;
        let (by, peer) = (caller(&request), peer_of(&request));
        let principal = request.into_inner().principal;
        need("principal", &principal)?;
        let deleted = self
            .0
            .metadata
            .remove_quota(&principal)
            .await
            .map_err(status)?;
        tracing::info!(
            target: crate::auth::AUDIT,
            principal = %by,
            operation = "DeleteQuota",
            resource = %format!("quota:{principal}"),
            peer = %peer,
            deleted,
            "quota removed"
        );
        Ok(Response::new(v2::DeleteQuotaResponse { deleted }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<v2::DescribeClusterRequest>,
    ) -> Result<Response<v2::DescribeClusterResponse>, Status> {
        let s = &self.0;
        let mut agents: Vec<v2::AgentInfo> = s
            .metadata
            .live_agents()
            .await
            .map_err(status)?
            .into_iter()
            .map(crate::registry::agent_info)
            .collect();
        // The answering agent is alive even when its lease lapsed (the metadata store was
        // down longer than the lease and it has not renewed yet): list it, so a client
        // never learns an empty cluster from a live agent.
        if let Some(me) = s.identity.get()
            && !agents.iter().any(|a| a.id == me.id)
        {
            agents.push(crate::registry::self_info(me, s.started_ms));
            agents.sort_by(|a, b| a.id.cmp(&b.id));
        }
        Ok(Response::new(v2::DescribeClusterResponse {
            agents,
            answered_by: s.identity.get().map(|i| i.id.clone()).unwrap_or_default(),
            answered_at_ms: s.metadata.clock().now_ms(),
        }))
    }

    async fn add_partitions(
        &self,
        request: Request<v2::AddPartitionsRequest>,
    ) -> Result<Response<v2::AddPartitionsResponse>, Status> {
        let name = &request.get_ref().name;
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Topic,
            name,
        )?;
        let r = request.into_inner();
        let topic = self
            .0
            .metadata
            .add_partitions(&r.name, r.partitions)
            .await
            .map_err(status)?;
        self.0.topics.invalidate(&r.name).await;
        Ok(Response::new(v2::AddPartitionsResponse {
            topic: Some(topic_info(&topic)),
        }))
    }

    async fn set_value_schema(
        &self,
        request: Request<v2::SetValueSchemaRequest>,
    ) -> Result<Response<v2::SetValueSchemaResponse>, Status> {
        let name = &request.get_ref().topic;
        allow(
            &self.0,
            &request,
            Operation::Alter,
            ResourceType::Topic,
            name,
        )?;
        let r = request.into_inner();
        let schema = declared_schema(&r.value_schema).map_err(status)?;
        let topic = self
            .0
            .metadata
            .set_value_schema(&r.topic, &schema)
            .await
            .map_err(status)?;
        self.0.topics.invalidate(&r.topic).await;
        Ok(Response::new(v2::SetValueSchemaResponse {
            topic: Some(topic_info(&topic)),
        }))
    }
}

/// A value schema document as the metadata keeps it, or why it cannot be one.
fn declared_schema(text: &str) -> Result<ValueSchema, AgentError> {
    let columns = cairn_storage::value_schema::parse_json_schema(text)
        .map_err(|e| AgentError::Invalid(e.to_string()))?;
    Ok(ValueSchema {
        text: text.to_string(),
        columns: columns
            .into_iter()
            .map(|c| TopicColumn {
                name: c.name,
                kind: c.kind.name().to_string(),
            })
            .collect(),
    })
}

/// Who made a call, as recorded with what it changed: its principal, or `(anonymous)`.
fn caller<T>(request: &Request<T>) -> String {
    crate::auth::principal_of(request).map_or_else(|| "(anonymous)".to_string(), str::to_string)
}

/// An ACL from the wire, each field checked.
fn quota_from_proto(q: Option<v2::QuotaBinding>) -> Result<cairn_metadata::quotas::Quota, Status> {
    let q = q.ok_or_else(|| status(AgentError::Invalid("quota is missing".into())))?;
    let quota = cairn_metadata::quotas::Quota {
        principal: q.principal,
        produce_bytes_per_sec: q.produce_bytes_per_second,
        fetch_bytes_per_sec: q.fetch_bytes_per_second,
        requests_per_sec: q.requests_per_second,
    };
    quota.validate().map_err(status)?;
    Ok(quota)
}

fn acl_from_proto(acl: Option<v2::AclBinding>) -> Result<cairn_metadata::acls::Acl, Status> {
    let a = acl.ok_or_else(|| status(AgentError::Invalid("acl is missing".into())))?;
    let field = |what: &str, e: String| status(AgentError::Invalid(format!("acl {what} {e}")));
    let acl = cairn_metadata::acls::Acl {
        principal: a.principal,
        resource_type: a
            .resource_type
            .parse()
            .map_err(|e| field("resource_type", e))?,
        pattern_type: a
            .pattern_type
            .parse()
            .map_err(|e| field("pattern_type", e))?,
        pattern: a.pattern,
        operation: a.operation.parse().map_err(|e| field("operation", e))?,
        permission: a.permission.parse().map_err(|e| field("permission", e))?,
    };
    acl.validate().map_err(status)?;
    Ok(acl)
}

/// An ACL on the wire.
fn acl_to_proto(a: &cairn_metadata::acls::Acl) -> v2::AclBinding {
    v2::AclBinding {
        principal: a.principal.clone(),
        resource_type: a.resource_type.to_string(),
        pattern_type: a.pattern_type.to_string(),
        pattern: a.pattern.clone(),
        operation: a.operation.to_string(),
        permission: a.permission.to_string(),
    }
}

/// A token's record on the wire.
fn token_info(t: cairn_metadata::tokens::TokenRecord) -> v2::TokenInfo {
    v2::TokenInfo {
        id: t.id,
        principal: t.principal,
        created_at_ms: t.created_ms,
        expires_at_ms: t.expires_ms,
        created_by: t.created_by,
    }
}

/// A latency histogram on the wire.
fn histogram(latency: &cairn_storage::Latency) -> v2::LatencyHistogram {
    let snapshot = latency.snapshot();
    v2::LatencyHistogram {
        bounds_seconds: snapshot.bounds_seconds,
        counts: snapshot.counts,
    }
}
