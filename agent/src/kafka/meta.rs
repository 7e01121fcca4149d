//! ApiVersions, Metadata and InitProducerId: what a Kafka client asks before it produces or
//! fetches.

use kafka_protocol::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiVersionsResponse, BrokerId, InitProducerIdRequest, InitProducerIdResponse, MetadataRequest,
    MetadataResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use cairn_metadata::acls::{Operation, ResourceType};

use super::{SUPPORTED, error_code, node_id};
use crate::AgentError;
use crate::service::Shared;

/// The ApiVersions answer: every API served with its exact version range.
pub(super) fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|&(api, min, max)| {
                    ApiVersion::default()
                        .with_api_key(api as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}

/// An agent as Kafka clients see it: a broker.
#[derive(Debug, Clone)]
pub(super) struct Node {
    pub(super) id: String,
    pub(super) node: i32,
    pub(super) host: String,
    pub(super) port: i32,
    pub(super) zone: String,
}

/// The live agents that serve Kafka, this one always among them, in id order.
pub(super) async fn nodes(s: &Shared) -> Vec<Node> {
    let mut records = match s.metadata.live_agents().await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the agent registry; answering Kafka clients with this agent alone");
            Vec::new()
        }
    };
    if let Some(me) = s.identity.get()
        && !records.iter().any(|r| r.id == me.id)
    {
        records.push(cairn_metadata::AgentRecord {
            id: me.id.clone(),
            address: me.address.clone(),
            peer_address: String::new(),
            kafka_address: me.kafka_address.clone(),
            zone: me.zone.clone(),
            version: String::new(),
            started_ms: 0,
            incarnation: me.incarnation,
            lease_expires_ms: 0,
            load: Default::default(),
        });
    }
    let mut out: Vec<Node> = records
        .into_iter()
        .filter_map(|r| {
            let (host, port) = r.kafka_address.rsplit_once(':')?;
            Some(Node {
                node: node_id(&r.id),
                host: host
                    .trim_start_matches('[')
                    .trim_end_matches(']')
                    .to_string(),
                port: port.parse().ok()?,
                zone: r.zone,
                id: r.id,
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out
}

/// The agents a client of `zone` is sent to: those of its zone, or all when it names none
/// or its zone has none.
pub(super) fn zone_nodes<'a>(nodes: &'a [Node], zone: Option<&str>) -> Vec<&'a Node> {
    let mine: Vec<&Node> = match zone {
        Some(z) => nodes.iter().filter(|n| n.zone == z).collect(),
        None => Vec::new(),
    };
    if mine.is_empty() {
        nodes.iter().collect()
    } else {
        mine
    }
}

/// The leader of each partition of `topic`: the agent the cluster's fetch routing picks
/// among `candidates` (rendezvous hashing, balanced). Any agent takes produce.
pub(super) fn leaders(candidates: &[&Node], topic: &str, partitions: u32) -> Vec<i32> {
    let ids: Vec<&str> = candidates.iter().map(|n| n.id.as_str()).collect();
    cairn_proto::balanced_owners(&ids, topic, partitions)
        .into_iter()
        .map(|i| candidates.get(i).map_or(-1, |n| n.node))
        .collect()
}

/// The high half of every Cairn topic's Kafka topic id ("cairn" in ASCII); the low half is
/// the Cairn topic id, fresh for each topic created, as Kafka's are.
const TOPIC_ID_HIGH: u64 = 0x6361_6972_6e00_0000;

/// The Kafka topic id of the Cairn topic with id `id`.
pub(super) fn topic_uuid(id: u64) -> uuid::Uuid {
    uuid::Uuid::from_u64_pair(TOPIC_ID_HIGH, id)
}

/// The Cairn topic id in a Kafka topic id, if it is one of Cairn's.
pub(super) fn topic_of_uuid(uuid: uuid::Uuid) -> Option<u64> {
    let (high, low) = uuid.as_u64_pair();
    (high == TOPIC_ID_HIGH).then_some(low)
}

/// The Metadata answer: the agents as brokers and the topics asked for (all, for a null
/// list; by name, or by topic id from v10), each partition led by an agent of the client's
/// zone.
pub(super) async fn metadata(
    s: &Shared,
    principal: Option<&str>,
    req: MetadataRequest,
    version: i16,
    zone: Option<&str>,
) -> MetadataResponse {
    let nodes = nodes(s).await;
    let candidates = zone_nodes(&nodes, zone);
    let me = s.identity.get().map_or(-1, |i| node_id(&i.id));
    let mut resp = MetadataResponse::default()
        .with_controller_id(BrokerId(me))
        .with_brokers(
            nodes
                .iter()
                .map(|n| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(n.node))
                        .with_host(StrBytes::from_string(n.host.clone()))
                        .with_port(n.port)
                        .with_rack(
                            (!n.zone.is_empty()).then(|| StrBytes::from_string(n.zone.clone())),
                        )
                })
                .collect(),
        );
    if version >= 2 {
        resp.cluster_id = Some(StrBytes::from_static_str("cairn"));
    }
    let mut names: Vec<String> = Vec::new();
    let listed = match req.topics {
        Some(topics) => {
            for t in topics {
                match t.name {
                    Some(n) => names.push(n.0.as_str().to_string()),
                    None => {
                        // By id (KIP-848 consumers resolve their assignment's ids so).
                        let found = match topic_of_uuid(t.topic_id) {
                            Some(id) => s.metadata.topic_by_id(id).await.ok().flatten(),
                            None => None,
                        };
                        match found {
                            Some(topic) => names.push(topic.name),
                            None => resp.topics.push(
                                MetadataResponseTopic::default()
                                    .with_topic_id(t.topic_id)
                                    .with_error_code(ResponseError::UnknownTopicId.code()),
                            ),
                        }
                    }
                }
            }
            Vec::new()
        }
        None => match s.metadata.list_topics().await {
            // All topics: those the principal may describe.
            Ok(all) => all
                .into_iter()
                .map(|t| t.name)
                .filter(|n| {
                    s.authz
                        .check(principal, Operation::Describe, ResourceType::Topic, n)
                        .is_ok()
                })
                .collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot list topics for a Kafka client");
                Vec::new()
            }
        },
    };
    names.extend(listed);
    for name in names {
        let mut topic = MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_string(name.clone()))));
        if s.authz
            .check(principal, Operation::Describe, ResourceType::Topic, &name)
            .is_err()
        {
            topic.error_code = ResponseError::TopicAuthorizationFailed.code();
            resp.topics.push(topic);
            continue;
        }
        let found = match s.topic(&name).await {
            Err(e)
                if e.kind() == cairn_metadata::ErrorKind::NotFound
                    && req.allow_auto_topic_creation
                    && s.settings.kafka_auto_create_partitions > 0 =>
            {
                auto_create(s, principal, &name).await
            }
            other => other.map_err(|e| error_code(&e)),
        };
        match found {
            Ok(t) => {
                if version >= 10 {
                    topic.topic_id = topic_uuid(t.id);
                }
                let leaders = leaders(&candidates, &t.name, t.partitions);
                topic.partitions = leaders
                    .into_iter()
                    .enumerate()
                    .map(|(p, leader)| {
                        MetadataResponsePartition::default()
                            .with_partition_index(p as i32)
                            .with_leader_id(BrokerId(leader))
                            .with_leader_epoch(0)
                            .with_replica_nodes(vec![BrokerId(leader)])
                            .with_isr_nodes(vec![BrokerId(leader)])
                    })
                    .collect();
            }
            Err(code) => topic.error_code = code,
        }
        resp.topics.push(topic);
    }
    resp
}

/// Creates topic `name`, which a Metadata request named, with the agent's
/// `kafka_auto_create_partitions`, if the principal may create it (on the cluster or the
/// topic); a topic created meanwhile by another request is answered as it is. A failure
/// is its Kafka error code.
async fn auto_create(
    s: &Shared,
    principal: Option<&str>,
    name: &str,
) -> Result<std::sync::Arc<cairn_metadata::Topic>, i16> {
    let may = |rt, n| s.authz.check(principal, Operation::Create, rt, n);
    if let Err(why) = may(ResourceType::Cluster, "*").or_else(|_| may(ResourceType::Topic, name)) {
        tracing::debug!(topic = name, "not auto-created: {why}");
        return Err(ResponseError::TopicAuthorizationFailed.code());
    }
    let spec = cairn_metadata::TopicSpec {
        name: name.to_string(),
        partitions: s.settings.kafka_auto_create_partitions,
        codec: cairn_metadata::Codec::default(),
        retention_ms: -1,
        retention_bytes: -1,
        value_schema: None,
    };
    match s.metadata.create_topic(&spec).await {
        Ok(t) => {
            tracing::info!(
                topic = name,
                partitions = t.partitions,
                principal = principal.unwrap_or(""),
                "topic auto-created for a Kafka client"
            );
            s.topics.invalidate(name).await;
        }
        Err(e) if e.kind() == cairn_metadata::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(error_code(&AgentError::from(e))),
    }
    s.topic(name).await.map_err(|e| error_code(&e))
}

/// InitProducerId for an idempotent producer: a new producer id and epoch from the same
/// producer state as the gRPC API's InitProducer. Transactions are not served.
pub(super) async fn init_producer_id(
    s: &Shared,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_some() {
        return resp.with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code());
    }
    match s.metadata.init_producer(None).await {
        Ok(id) => match (i64::try_from(id.id), i16::try_from(id.epoch)) {
            (Ok(pid), Ok(epoch)) => resp
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch),
            _ => resp.with_error_code(ResponseError::UnknownServerError.code()),
        },
        Err(e) => resp.with_error_code(error_code(&AgentError::from(e))),
    }
}
