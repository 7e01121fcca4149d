//! The state every gRPC service shares (settings, metadata, batcher, reader, the topic
//! cache, gauges), topic lookup through that cache, and the small helpers every handler
//! uses to turn errors into statuses. The services themselves live in `admin.rs`,
//! `produce.rs`, `consume.rs`, `groups.rs` and `share.rs`; wire conversions in
//! `convert.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cairn_metadata::{MetaError, Metadata, Topic};
use tonic::Status;

use crate::AgentError;
use crate::AgentSettings;
use crate::batcher::Batcher;
use crate::faults::Faults;
use crate::fetch::Reader;
use crate::sequencer::Sequencer;

/// State shared by the three services.
pub(crate) struct Shared {
    pub(crate) settings: AgentSettings,
    pub(crate) metadata: Metadata,
    pub(crate) batcher: Batcher,
    /// Orders pipelined batches of a producer before they enter the batcher.
    pub(crate) sequencer: Sequencer,
    pub(crate) reader: Reader,
    pub(crate) topics: moka::future::Cache<String, Arc<Topic>>,
    pub(crate) gauges: Arc<AgentGauges>,
    pub(crate) faults: Arc<Faults>,
    pub(crate) metrics: Arc<crate::metrics::AgentMetrics>,
    pub(crate) store_url: String,
    /// The object store as the agent uses it (instrumented).
    pub(crate) store: Arc<dyn object_store::ObjectStore>,
    pub(crate) started_ms: i64,
    /// Who the agent is in the cluster, known once it serves.
    pub(crate) identity: std::sync::OnceLock<crate::registry::Identity>,
    /// This agent's part of its zone's read cache; `None` when `chunk_cache_bytes` is 0.
    pub(crate) zone: Option<Arc<crate::zone::ZoneCache>>,
    /// The peer port, bound when the agent joins the cluster and served by `serve`.
    pub(crate) peer_listener: std::sync::Mutex<Option<tokio::net::TcpListener>>,
    /// Decides each call from the ACLs.
    pub(crate) authz: Arc<crate::auth::Authorizer>,
    /// The principals' quotas.
    pub(crate) quotas: Arc<crate::quota::Quotas>,
    /// What each connection has in flight.
    pub(crate) connections: Arc<crate::quota::Connections>,
}

/// Live counts of what an agent is doing, for tests and (later) metrics.
#[derive(Debug, Default)]
pub struct AgentGauges {
    pub(crate) produce_waiting: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) fetches_waiting_for_memory: AtomicU64,
}

impl AgentGauges {
    /// Produce requests validated and waiting for their segment's PUT and commit.
    pub fn produce_waiting(&self) -> u64 {
        self.produce_waiting.load(Ordering::SeqCst)
    }

    /// Fetches with something to read that wait for the agent's fetch memory
    /// (`fetch_memory_bytes`) to be released by others.
    pub fn fetches_waiting_for_memory(&self) -> u64 {
        self.fetches_waiting_for_memory.load(Ordering::SeqCst)
    }

    /// Batches recognised as retries of committed ones and answered with their original
    /// offsets instead of being stored again.
    pub fn duplicates_answered(&self) -> u64 {
        self.duplicates.load(Ordering::SeqCst)
    }
}

/// Counts a produce request as waiting while it is alive.
pub(crate) struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    pub(crate) fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Shared {
    /// A topic by name, cached for `topic_cache_ttl`.
    pub(crate) async fn topic(&self, name: &str) -> Result<Arc<Topic>, AgentError> {
        if name.is_empty() {
            return Err(AgentError::Invalid("topic name is empty".into()));
        }
        let metadata = self.metadata.clone();
        let owned = name.to_string();
        self.topics
            .try_get_with(owned.clone(), async move {
                metadata.topic(&owned).await.map(Arc::new)
            })
            .await
            .map_err(|e: Arc<MetaError>| match e.as_ref() {
                MetaError::TopicNotFound(n) => AgentError::TopicNotFound(n.clone()),
                _ => AgentError::MetaShared(e.clone()),
            })
    }

    /// A topic whose partition count covers `partition`, re-reading a cached topic once in
    /// case partitions were added since.
    pub(crate) async fn topic_with_partition(
        &self,
        name: &str,
        partition: u32,
    ) -> Result<Arc<Topic>, AgentError> {
        let topic = self.topic(name).await?;
        if partition < topic.partitions {
            return Ok(topic);
        }
        self.topics.invalidate(name).await;
        let topic = self.topic(name).await?;
        topic.check_partition(partition)?;
        Ok(topic)
    }
}

/// An error as the gRPC status its kind maps to.
pub(crate) fn status(e: impl Into<AgentError>) -> Status {
    let e: AgentError = e.into();
    Status::from(e)
}

/// PERMISSION_DENIED (logged on the audit target) unless the call's principal may do
/// `operation` on `name` of `resource_type`.
pub(crate) fn allow<T>(
    shared: &Shared,
    request: &tonic::Request<T>,
    operation: cairn_metadata::acls::Operation,
    resource_type: cairn_metadata::acls::ResourceType,
    name: &str,
) -> Result<(), Status> {
    let principal = crate::auth::principal_of(request);
    shared
        .authz
        .check(principal, operation, resource_type, name)
        .map_err(|why| {
            tracing::warn!(
                target: crate::auth::AUDIT,
                principal = %principal.unwrap_or(""),
                operation = %operation,
                resource = %format!("{resource_type}:{name}"),
                peer = %peer_of(request),
                "refused: {why}"
            );
            Status::permission_denied(why)
        })
}

/// Holds the call until its principal's quota of `kind` admits `cost` (at most
/// [`crate::quota::MAX_HOLD`]), or answers RESOURCE_EXHAUSTED (THROTTLED) with the time to
/// wait.
pub(crate) async fn within_quota<T>(
    shared: &Shared,
    request: &tonic::Request<T>,
    kind: crate::quota::Kind,
    cost: u64,
) -> Result<(), Status> {
    let hold = shared
        .quotas
        .take(
            crate::auth::principal_of(request),
            kind,
            cost,
            crate::quota::MAX_HOLD,
        )
        .map_err(|t| t.status())?;
    if !hold.is_zero() {
        tokio::time::sleep(hold).await;
    }
    Ok(())
}

/// A long-poll counted against the call's connection (none for a call that does not wait,
/// or whose connection is unknown); RESOURCE_EXHAUSTED (THROTTLED) when the connection has
/// its most.
pub(crate) fn long_poll<T>(
    request: &tonic::Request<T>,
    waits: bool,
) -> Result<Option<crate::quota::LongPoll>, Status> {
    if !waits {
        return Ok(None);
    }
    match request
        .extensions()
        .get::<Arc<crate::quota::ConnectionUse>>()
    {
        Some(conn) => conn.long_poll().map(Some).map_err(|t| t.status()),
        None => Ok(None),
    }
}

/// The peer's address of a call, for the audit log.
pub(crate) fn peer_of<T>(request: &tonic::Request<T>) -> String {
    request
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.to_string())
}

/// INVALID_ARGUMENT unless the named field is set.
pub(crate) fn need(what: &str, v: &str) -> Result<(), Status> {
    if v.is_empty() {
        return Err(status(AgentError::Invalid(format!("{what} is empty"))));
    }
    Ok(())
}
