//! Kafka's admin APIs over Cairn's topics: CreateTopics, DeleteTopics, CreatePartitions,
//! DeleteRecords, DescribeConfigs, IncrementalAlterConfigs and AlterConfigs (retention.ms,
//! retention.bytes, compression.type) and DescribeCluster. Each checks the same ACL as its gRPC counterpart.

use cairn_metadata::acls::{Operation, ResourceType};
use cairn_metadata::{Codec, MetaError, TopicConfigChange, TopicSpec};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::CreatableTopicResult;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, BrokerId, CreatePartitionsRequest,
    CreatePartitionsResponse, CreateTopicsRequest, CreateTopicsResponse, DeleteRecordsRequest,
    DeleteRecordsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeClusterRequest,
    DescribeClusterResponse, DescribeConfigsRequest, DescribeConfigsResponse,
    IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::{kind_code, node_id};
use crate::service::Shared;

/// Kafka's resource type of a topic in DescribeConfigs.
const TOPIC_RESOURCE: i8 = 2;
/// Kafka's resource type of a broker in DescribeConfigs.
const BROKER_RESOURCE: i8 = 4;

/// A failure as (error code, message).
pub(super) type Failure = (i16, String);

/// Why `principal` may not do `op` on the resource, as a Kafka error (cluster or topic
/// authorization failed), if it may not.
pub(super) fn denied(
    s: &Shared,
    principal: Option<&str>,
    op: Operation,
    rt: ResourceType,
    name: &str,
) -> Option<Failure> {
    s.authz.check(principal, op, rt, name).err().map(|why| {
        let code = match rt {
            ResourceType::Cluster => ResponseError::ClusterAuthorizationFailed,
            _ => ResponseError::TopicAuthorizationFailed,
        };
        (code.code(), why)
    })
}

/// The Kafka error of a failed topic operation.
fn topic_error(e: &MetaError, invalid: ResponseError) -> Failure {
    let code = match e {
        MetaError::TopicNotFound(_) => ResponseError::UnknownTopicOrPartition.code(),
        MetaError::InvalidArgument(_) => invalid.code(),
        other if other.kind() == cairn_metadata::ErrorKind::AlreadyExists => {
            ResponseError::TopicAlreadyExists.code()
        }
        other => kind_code(other.kind()),
    };
    (code, e.to_string())
}

fn message(m: String) -> Option<StrBytes> {
    Some(StrBytes::from_string(m))
}

/// A topic spec from a CreateTopics entry, or why it cannot be one.
fn topic_spec(
    t: &kafka_protocol::messages::create_topics_request::CreatableTopic,
) -> Result<TopicSpec, Failure> {
    let name = t.name.0.as_str().to_string();
    if !t.assignments.is_empty() {
        return Err((
            ResponseError::InvalidReplicaAssignment.code(),
            format!(
                "{name}: Cairn places no replicas (the object store keeps the copies); leave the assignment out"
            ),
        ));
    }
    let partitions = match t.num_partitions {
        -1 => 1,
        n => u32::try_from(n).map_err(|_| {
            (
                ResponseError::InvalidPartitions.code(),
                format!("{name}: {n} partitions"),
            )
        })?,
    };
    let mut change = TopicConfigChange::default();
    for c in &t.configs {
        set_config(
            &mut change,
            &name,
            c.name.as_str(),
            Some(value_of(&c.value)),
        )?;
    }
    Ok(TopicSpec {
        name,
        partitions,
        codec: change.codec.unwrap_or_default(),
        retention_ms: change.retention_ms.unwrap_or(-1),
        retention_bytes: change.retention_bytes.unwrap_or(-1),
        value_schema: None,
    })
}

/// Records in `change` the topic config `key` set to `value`, or reset to its default
/// when `value` is `None`; or says why it cannot be.
fn set_config(
    change: &mut TopicConfigChange,
    topic: &str,
    key: &str,
    value: Option<&str>,
) -> Result<(), Failure> {
    let invalid_config = |m: String| Err((ResponseError::InvalidConfig.code(), m));
    let long = |what: &str| -> Result<i64, Failure> {
        match value.map(str::parse::<i64>) {
            None | Some(Ok(-1)) => Ok(-1),
            Some(Ok(n)) if n > 0 => Ok(n),
            _ => Err((
                ResponseError::InvalidConfig.code(),
                format!(
                    "{topic}: {what} must be -1 (no limit) or positive, got `{}`",
                    value.unwrap_or_default()
                ),
            )),
        }
    };
    match key {
        "retention.ms" => change.retention_ms = Some(long(key)?),
        "retention.bytes" => change.retention_bytes = Some(long(key)?),
        "compression.type" => {
            change.codec = Some(match value {
                None | Some("zstd" | "producer") => Codec::Zstd,
                Some("lz4") => Codec::Lz4,
                Some("uncompressed" | "none") => Codec::None,
                Some(other) => {
                    return invalid_config(format!(
                        "{topic}: compression.type `{other}` is not served: Cairn frames \
                         records it serves itself with zstd, lz4 or uncompressed (producers \
                         keep their own codec)"
                    ));
                }
            })
        }
        "cleanup.policy" if value.is_none_or(|v| v == "delete") => {}
        // Durability is the object store's: there are no replicas to count.
        "min.insync.replicas" => {}
        other => {
            return invalid_config(format!(
                "{topic}: config `{other}` is not served (Cairn topics take retention.ms, \
                 retention.bytes, compression.type and cleanup.policy=delete)"
            ));
        }
    }
    Ok(())
}

/// Applies a change to a topic's configs: checks the ACL (alter-configs is Kafka's; Cairn's
/// is `alter` on the topic), then writes it unless `validate_only`.
async fn alter_topic(
    s: &Shared,
    principal: Option<&str>,
    name: &str,
    change: Result<TopicConfigChange, Failure>,
    validate_only: bool,
) -> Result<(), Failure> {
    if let Some(f) = denied(s, principal, Operation::Alter, ResourceType::Topic, name) {
        return Err(f);
    }
    let change = change?;
    change
        .validate()
        .map_err(|e| topic_error(&e, ResponseError::InvalidConfig))?;
    if validate_only {
        return s
            .metadata
            .topic(name)
            .await
            .map(|_| ())
            .map_err(|e| topic_error(&e, ResponseError::InvalidRequest));
    }
    s.metadata
        .alter_topic_config(name, &change)
        .await
        .map_err(|e| topic_error(&e, ResponseError::InvalidConfig))?;
    s.topics.invalidate(name).await;
    tracing::info!(
        topic = name,
        ?change,
        principal = principal.unwrap_or(""),
        "topic configs altered through Kafka"
    );
    Ok(())
}

/// One resource of an AlterConfigs or IncrementalAlterConfigs request: a topic's change
/// as `parse` makes it from the topic's name, applied; as the response's error fields.
async fn alter_resource(
    s: &Shared,
    principal: Option<&str>,
    resource_type: i8,
    name: &str,
    validate_only: bool,
    parse: impl FnOnce(&str) -> Result<TopicConfigChange, Failure>,
) -> (i16, Option<StrBytes>) {
    let outcome = if resource_type == TOPIC_RESOURCE {
        alter_topic(s, principal, name, parse(name), validate_only).await
    } else {
        Err(not_a_topic(resource_type))
    };
    match outcome {
        Ok(()) => (0, None),
        Err((code, why)) => (code, message(why)),
    }
}

/// A config entry's value (`""` for a null one).
fn value_of(value: &Option<StrBytes>) -> &str {
    value.as_ref().map_or("", |v| v.as_str())
}

/// IncrementalAlterConfigs: SET or DELETE (back to the default) of each topic config
/// Cairn has; APPEND and SUBTRACT apply to list configs, of which Cairn has none.
pub(super) async fn incremental_alter_configs(
    s: &Shared,
    principal: Option<&str>,
    req: IncrementalAlterConfigsRequest,
) -> IncrementalAlterConfigsResponse {
    use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let (code, why) = alter_resource(
            s,
            principal,
            r.resource_type,
            r.resource_name.as_str(),
            req.validate_only,
            |name| {
                let mut change = TopicConfigChange::default();
                for c in &r.configs {
                    let key = c.name.as_str();
                    match c.config_operation {
                        0 => set_config(&mut change, name, key, Some(value_of(&c.value)))?,
                        1 => set_config(&mut change, name, key, None)?,
                        op => {
                            return Err((
                                ResponseError::InvalidConfig.code(),
                                format!(
                                    "{name}: operation {op} on `{key}`: Cairn's topic configs \
                                     are single values, set (0) or deleted (1)"
                                ),
                            ));
                        }
                    }
                }
                Ok(change)
            },
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(why)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// AlterConfigs (the older, whole-set form): the configs given, every other one back to
/// its default.
pub(super) async fn alter_configs(
    s: &Shared,
    principal: Option<&str>,
    req: AlterConfigsRequest,
) -> AlterConfigsResponse {
    use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse;
    let mut responses = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let (code, why) = alter_resource(
            s,
            principal,
            r.resource_type,
            r.resource_name.as_str(),
            req.validate_only,
            |name| {
                let mut change = TopicConfigChange {
                    codec: Some(Codec::default()),
                    retention_ms: Some(-1),
                    retention_bytes: Some(-1),
                };
                for c in &r.configs {
                    set_config(&mut change, name, c.name.as_str(), Some(value_of(&c.value)))?;
                }
                Ok(change)
            },
        )
        .await;
        responses.push(
            AlterConfigsResourceResponse::default()
                .with_error_code(code)
                .with_error_message(why)
                .with_resource_type(r.resource_type)
                .with_resource_name(r.resource_name),
        );
    }
    AlterConfigsResponse::default().with_responses(responses)
}

/// The failure of a config change on a resource other than a topic.
fn not_a_topic(resource_type: i8) -> Failure {
    (
        ResponseError::InvalidRequest.code(),
        format!(
            "resource type {resource_type}: only topics (2) have configs to alter; the agents' \
             settings are their flags and config file"
        ),
    )
}

/// CreateTopics: each topic created (or, with `validate_only`, checked) with the configs
/// Cairn has.
pub(super) async fn create_topics(
    s: &Shared,
    principal: Option<&str>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let cluster_ok = denied(s, principal, Operation::Create, ResourceType::Cluster, "*").is_none();
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let outcome: Result<u32, Failure> = async {
            if !cluster_ok
                && let Some(f) = denied(s, principal, Operation::Create, ResourceType::Topic, &name)
            {
                return Err(f);
            }
            let spec = topic_spec(&t)?;
            spec.validate()
                .map_err(|e| topic_error(&e, ResponseError::InvalidTopicException))?;
            if req.validate_only {
                if s.metadata.topic(&name).await.is_ok() {
                    return Err((
                        ResponseError::TopicAlreadyExists.code(),
                        format!("topic `{name}` exists"),
                    ));
                }
                return Ok(spec.partitions);
            }
            let topic = s
                .metadata
                .create_topic(&spec)
                .await
                .map_err(|e| topic_error(&e, ResponseError::InvalidTopicException))?;
            s.topics.invalidate(&topic.name).await;
            Ok(topic.partitions)
        }
        .await;
        let mut r = CreatableTopicResult::default().with_name(t.name);
        match outcome {
            Ok(partitions) => {
                if version >= 5 {
                    r.num_partitions = partitions as i32;
                    r.replication_factor = 1;
                }
            }
            Err((code, why)) => {
                r.error_code = code;
                r.error_message = message(why);
            }
        }
        topics.push(r);
    }
    CreateTopicsResponse::default().with_topics(topics)
}

/// DeleteTopics (by name).
pub(super) async fn delete_topics(
    s: &Shared,
    principal: Option<&str>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let mut responses = Vec::with_capacity(req.topic_names.len());
    for n in req.topic_names {
        let name = n.0.as_str().to_string();
        let outcome = match denied(s, principal, Operation::Delete, ResourceType::Topic, &name) {
            Some(f) => Err(f),
            None => {
                let r = s.metadata.delete_topic(&name).await;
                s.topics.invalidate(&name).await;
                r.map(|_| ())
                    .map_err(|e| topic_error(&e, ResponseError::InvalidRequest))
            }
        };
        let mut r = DeletableTopicResult::default().with_name(Some(n));
        if let Err((code, why)) = outcome {
            r.error_code = code;
            if version >= 5 {
                r.error_message = message(why);
            }
        }
        responses.push(r);
    }
    DeleteTopicsResponse::default().with_responses(responses)
}

/// CreatePartitions: grows topics to `count` partitions, online.
pub(super) async fn create_partitions(
    s: &Shared,
    principal: Option<&str>,
    req: CreatePartitionsRequest,
) -> CreatePartitionsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let outcome: Result<(), Failure> = async {
            if let Some(f) = denied(s, principal, Operation::Alter, ResourceType::Topic, &name) {
                return Err(f);
            }
            if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
                return Err((
                    ResponseError::InvalidReplicaAssignment.code(),
                    "Cairn places no replicas; leave the assignment out".into(),
                ));
            }
            let count = u32::try_from(t.count).map_err(|_| {
                (
                    ResponseError::InvalidPartitions.code(),
                    format!("{} partitions", t.count),
                )
            })?;
            if req.validate_only {
                let topic = s
                    .metadata
                    .topic(&name)
                    .await
                    .map_err(|e| topic_error(&e, ResponseError::InvalidPartitions))?;
                if count <= topic.partitions {
                    return Err((
                        ResponseError::InvalidPartitions.code(),
                        format!(
                            "topic `{name}` has {} partitions; ask for more",
                            topic.partitions
                        ),
                    ));
                }
                return Ok(());
            }
            let r = s.metadata.add_partitions(&name, count).await;
            s.topics.invalidate(&name).await;
            r.map(|_| ())
                .map_err(|e| topic_error(&e, ResponseError::InvalidPartitions))
        }
        .await;
        let mut r = CreatePartitionsTopicResult::default().with_name(t.name);
        if let Err((code, why)) = outcome {
            r.error_code = code;
            r.error_message = message(why);
        }
        results.push(r);
    }
    CreatePartitionsResponse::default().with_results(results)
}

/// DeleteRecords: moves each partition's start offset to `offset` (-1: the high watermark).
pub(super) async fn delete_records(
    s: &Shared,
    principal: Option<&str>,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.0.as_str().to_string();
        let refused = denied(s, principal, Operation::Delete, ResourceType::Topic, &name);
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            let mut r = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            let outcome: Result<i64, i16> = async {
                if let Some((code, _)) = &refused {
                    return Err(*code);
                }
                let pn = u32::try_from(p.partition_index)
                    .map_err(|_| ResponseError::UnknownTopicOrPartition.code())?;
                let before = if p.offset == -1 {
                    let topic = s
                        .topic_with_partition(&name, pn)
                        .await
                        .map_err(|e| super::error_code(&e))?;
                    s.metadata
                        .partition_state(topic.id, pn)
                        .await
                        .map_err(|e| kind_code(e.kind()))?
                        .next_offset
                } else {
                    p.offset
                };
                s.metadata
                    .delete_records(&name, pn, before)
                    .await
                    .map_err(|e| match e {
                        MetaError::OffsetOutOfRange { .. } => {
                            ResponseError::OffsetOutOfRange.code()
                        }
                        other => topic_error(&other, ResponseError::InvalidRequest).0,
                    })
            }
            .await;
            match outcome {
                Ok(low) => r.low_watermark = low,
                Err(code) => r.error_code = code,
            }
            partitions.push(r);
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(partitions),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// DescribeConfigs: a topic's retention.ms, retention.bytes, compression.type and
/// cleanup.policy; a broker has none Cairn exposes this way.
pub(super) async fn describe_configs(
    s: &Shared,
    principal: Option<&str>,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let mut results = Vec::with_capacity(req.resources.len());
    for r in req.resources {
        let name = r.resource_name.as_str().to_string();
        let mut out = DescribeConfigsResult::default()
            .with_resource_type(r.resource_type)
            .with_resource_name(r.resource_name.clone());
        match r.resource_type {
            TOPIC_RESOURCE => {
                if let Some((code, why)) = denied(
                    s,
                    principal,
                    Operation::DescribeConfigs,
                    ResourceType::Topic,
                    &name,
                ) {
                    out.error_code = code;
                    out.error_message = message(why);
                } else {
                    match s.metadata.topic(&name).await {
                        Ok(t) => {
                            let codec = match t.codec {
                                Codec::Zstd => "zstd",
                                Codec::Lz4 => "lz4",
                                Codec::None => "uncompressed",
                            };
                            let entries = [
                                (
                                    "retention.ms",
                                    t.retention_ms.to_string(),
                                    5,
                                    t.retention_ms != -1,
                                ),
                                (
                                    "retention.bytes",
                                    t.retention_bytes.to_string(),
                                    5,
                                    t.retention_bytes != -1,
                                ),
                                ("compression.type", codec.to_string(), 2, true),
                                ("cleanup.policy", "delete".to_string(), 7, false),
                            ];
                            out.configs = entries
                                .into_iter()
                                .filter(|(k, ..)| {
                                    r.configuration_keys
                                        .as_ref()
                                        .is_none_or(|keys| keys.iter().any(|x| x.as_str() == *k))
                                })
                                .map(|(k, v, kind, set)| {
                                    let mut c = DescribeConfigsResourceResult::default()
                                        .with_name(StrBytes::from_static_str(k))
                                        .with_value(Some(StrBytes::from_string(v)))
                                        .with_read_only(k == "cleanup.policy")
                                        // DYNAMIC_TOPIC_CONFIG or DEFAULT_CONFIG.
                                        .with_config_source(if set { 1 } else { 5 });
                                    if version >= 3 {
                                        c.config_type = kind;
                                    }
                                    c
                                })
                                .collect();
                        }
                        Err(e) => {
                            let (code, why) = topic_error(&e, ResponseError::InvalidRequest);
                            out.error_code = code;
                            out.error_message = message(why);
                        }
                    }
                }
            }
            BROKER_RESOURCE => {}
            other => {
                out.error_code = ResponseError::InvalidRequest.code();
                out.error_message = message(format!(
                    "resource type {other} is not served (2 topic, 4 broker)"
                ));
            }
        }
        results.push(out);
    }
    DescribeConfigsResponse::default().with_results(results)
}

/// DescribeCluster: the agents that serve Kafka.
pub(super) async fn describe_cluster(
    s: &Shared,
    principal: Option<&str>,
    req: DescribeClusterRequest,
    version: i16,
) -> DescribeClusterResponse {
    let mut resp = DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_static_str("cairn"))
        .with_controller_id(BrokerId(s.identity.get().map_or(-1, |i| node_id(&i.id))));
    if version >= 1 {
        resp.endpoint_type = req.endpoint_type;
        if req.endpoint_type != 1 {
            return resp
                .with_error_code(ResponseError::UnsupportedEndpointType.code())
                .with_error_message(message("only broker endpoints (1) are served".into()));
        }
    }
    if let Some((code, why)) = denied(
        s,
        principal,
        Operation::Describe,
        ResourceType::Cluster,
        "*",
    ) {
        return resp.with_error_code(code).with_error_message(message(why));
    }
    resp.brokers = super::meta::nodes(s)
        .await
        .into_iter()
        .map(|n| {
            DescribeClusterBroker::default()
                .with_broker_id(BrokerId(n.node))
                .with_host(StrBytes::from_string(n.host))
                .with_port(n.port)
                .with_rack((!n.zone.is_empty()).then(|| StrBytes::from_string(n.zone)))
        })
        .collect();
    resp
}
