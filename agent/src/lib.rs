//! The Cairn agent: a stateless gRPC server. It batches produced records from every
//! partition into shared segment objects, writes each with one PUT, commits offsets in the
//! metadata store, and serves fetches from object storage through a cache. Any number of
//! agents may serve the same topics; they share nothing but the object store and the
//! metadata store.
//!
//! Build one with [`AgentBuilder`] and run it with [`Agent::serve`].

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

mod admin;
pub mod auth;
mod batcher;
mod consume;
mod convert;
mod error;
mod faults;
mod fetch;
mod groups;
mod kafka;
mod metrics;
mod produce;
mod quota;
mod registry;
mod sequencer;
mod service;
mod settings;
mod share;
pub mod tls;
mod zone;

use std::future::Future;
use std::sync::Arc;

use cairn_metadata::{Clock, KvStore, Metadata, SystemClock};
use cairn_proto::v2::{
    admin_service_server::AdminServiceServer, consumer_service_server::ConsumerServiceServer,
    group_service_server::GroupServiceServer, peer_service_server::PeerServiceServer,
    producer_service_server::ProducerServiceServer, share_service_server::ShareServiceServer,
};
use futures::StreamExt;
use object_store::ObjectStore;
use tokio::net::TcpListener;

pub use cairn_storage::{
    FaultyStore, InstrumentedStore, StoreCounters, StoreStats, open_object_store,
};
pub use error::AgentError;
pub use faults::{FaultReport, FaultSpec};
pub use metrics::AgentMetrics;
pub use registry::ClusterSettings;
pub use settings::AgentSettings;

use admin::AdminService;
use batcher::Batcher;
use consume::ConsumerService;
use faults::Faults;
use fetch::{FetchMemory, Reader};
use produce::ProducerService;
pub use service::AgentGauges;
use service::Shared;

/// Assembles an [`Agent`] from settings and injected components.
#[derive(Debug)]
pub struct AgentBuilder {
    settings: AgentSettings,
    store: Option<Arc<dyn ObjectStore>>,
    kv: Option<Arc<dyn KvStore>>,
    clock: Arc<dyn Clock>,
    faults: FaultSpec,
    store_url: String,
    cluster: ClusterSettings,
    tls: Option<tls::AgentTls>,
    auth: auth::AuthSettings,
}

impl AgentBuilder {
    /// A builder with these settings, the system clock and no stores yet.
    pub fn new(settings: AgentSettings) -> Self {
        AgentBuilder {
            settings,
            store: None,
            kv: None,
            clock: Arc::new(SystemClock),
            faults: FaultSpec::default(),
            store_url: "(given in code)".into(),
            cluster: ClusterSettings::default(),
            tls: None,
            auth: auth::AuthSettings::default(),
        }
    }

    /// How calls are authenticated; see [`auth::AuthSettings`].
    pub fn auth(mut self, auth: auth::AuthSettings) -> Self {
        self.auth = auth;
        self
    }

    /// Serves TLS with these files (and mTLS on the peer port); see [`tls::AgentTls`].
    pub fn tls(mut self, tls: tls::AgentTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The object store segments are written to (required).
    pub fn object_store(mut self, store: Arc<dyn ObjectStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// The metadata store (required).
    pub fn metadata_store(mut self, kv: Arc<dyn KvStore>) -> Self {
        self.kv = Some(kv);
        self
    }

    /// How the object store is described in `cairn status` (its URL).
    pub fn store_url(mut self, url: impl Into<String>) -> Self {
        self.store_url = url.into();
        self
    }

    /// The agent's id, advertised address and zone in the cluster.
    pub fn cluster(mut self, cluster: ClusterSettings) -> Self {
        self.cluster = cluster;
        self
    }

    /// Replaces the clock (tests).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Injects faults (tests of the delivery guarantees): PUT and commit failures wrap the
    /// stores given; lost replies and crashes happen in the agent.
    pub fn faults(mut self, spec: FaultSpec) -> Self {
        self.faults = spec;
        self
    }

    /// Validates the settings and starts the agent's background tasks (a Tokio runtime
    /// must be running).
    pub fn build(self) -> Result<Agent, AgentError> {
        self.settings.validate()?;
        self.cluster.validate()?;
        let store = self
            .store
            .ok_or_else(|| AgentError::Config("no object store given".into()))?;
        let kv = self
            .kv
            .ok_or_else(|| AgentError::Config("no metadata store given".into()))?;
        // Certificate files are checked now: a start with a bad pair fails before serving.
        let peer_tls = match &self.tls {
            Some(t) => {
                tls::load(&t.files).map_err(|e| AgentError::Config(e.to_string()))?;
                if self.settings.chunk_cache_bytes > 0 {
                    Some(
                        t.peer_client()
                            .map_err(|e| AgentError::Config(e.to_string()))?,
                    )
                } else {
                    None
                }
            }
            None => None,
        };
        let spec = &self.faults;
        let (store, kv, faults) = faults::wrap_stores(spec, store, kv);
        let clock = match spec.clock_skew_ms {
            0 => self.clock,
            skew => Arc::new(cairn_metadata::SkewedClock::new(self.clock, skew)),
        };
        let instrumented = InstrumentedStore::new(store);
        let counters = instrumented.counters();
        let metrics = Arc::new(AgentMetrics::new((*counters).clone(), &self.cluster.zone));
        let store: Arc<dyn ObjectStore> = Arc::new(instrumented);
        let metadata = Metadata::new(kv, clock);
        let started_ms = metadata.clock().now_ms();
        let batcher = Batcher::start(
            self.settings.clone(),
            store.clone(),
            metadata.clone(),
            faults.clone(),
            metrics.clone(),
        );
        let gauges: Arc<AgentGauges> = Arc::default();
        let zone = (self.settings.chunk_cache_bytes > 0).then(|| {
            Arc::new(zone::ZoneCache::new(
                store.clone(),
                self.settings.chunk_bytes,
                self.settings.chunk_cache_bytes,
                self.settings.peer_read_timeout,
                metrics.clone(),
                peer_tls,
            ))
        });
        let read_store: Arc<dyn ObjectStore> = match &zone {
            Some(z) => Arc::new(zone::ZoneStore::new(z.clone(), store.clone())),
            None => store.clone(),
        };
        let reader = Reader::new(
            read_store,
            zone.is_some().then(|| store.clone()),
            metadata.clone(),
            self.settings.cache_bytes,
            metrics.clone(),
            FetchMemory::new(self.settings.fetch_memory_bytes, gauges.clone()),
        );
        let topics = moka::future::Cache::builder()
            .max_capacity(100_000)
            .time_to_live(self.settings.topic_cache_ttl)
            .build();
        let quotas = Arc::new(quota::Quotas::new(metrics.throttled.clone()));
        let connections = Arc::new(quota::Connections::new(
            quota::ConnectionLimits {
                long_polls: self.settings.max_long_polls_per_connection,
                bytes: self.settings.max_connection_bytes,
            },
            quotas.clone(),
        ));
        Ok(Agent {
            shared: Arc::new(Shared {
                settings: self.settings,
                metadata,
                batcher,
                sequencer: Default::default(),
                reader,
                topics,
                gauges,
                faults,
                metrics,
                store_url: self.store_url,
                store,
                started_ms,
                identity: std::sync::OnceLock::new(),
                zone,
                peer_listener: std::sync::Mutex::new(None),
                authz: Arc::new(auth::Authorizer::new(&self.auth)),
                quotas,
                connections,
            }),
            counters,
            cluster: self.cluster,
            tls: self.tls,
            auth: self.auth,
            kafka: None,
        })
    }
}

/// Injects faults into a serving agent (tests of producer retries).
#[derive(Debug, Clone)]
pub struct FaultControl(Arc<Faults>);

/// Wraps the stores of a process other than an agent (the compactor) with the object-store
/// and metadata faults `spec` names, and starts writing its report to `spec.report_file`
/// (while the returned control lives). A Tokio runtime must be running.
pub fn inject_faults(
    spec: &FaultSpec,
    store: Arc<dyn ObjectStore>,
    kv: Arc<dyn KvStore>,
) -> (Arc<dyn ObjectStore>, Arc<dyn KvStore>, FaultControl) {
    let (store, kv, faults) = faults::wrap_stores(spec, store, kv);
    (store, kv, FaultControl(faults))
}

impl FaultControl {
    /// Loses the next `n` produce replies after their segments committed, answering
    /// UNAVAILABLE instead, as if the responses were lost on the way.
    pub fn drop_next_replies(&self, n: u32) {
        self.0.drop_next_replies(n);
    }

    /// How many faults were injected so far.
    pub fn report(&self) -> FaultReport {
        self.0.report()
    }
}

/// A running agent's state; [`Agent::serve`] puts it on the network.
pub struct Agent {
    shared: Arc<Shared>,
    counters: Arc<StoreCounters>,
    cluster: ClusterSettings,
    tls: Option<tls::AgentTls>,
    auth: auth::AuthSettings,
    /// The Kafka listener, served beside gRPC when given.
    kafka: Option<TcpListener>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Writes a small probe object (`probes/<name>`) to check that the object store takes
    /// writes, e.g. before serving: a missing bucket, wrong credentials or a full disk are
    /// reported now rather than as failed produces later.
    pub async fn probe_object_store(&self, name: &str) -> Result<(), AgentError> {
        let key = cairn_storage::keys::probe_key(name);
        metrics::probe(self.shared.store.as_ref(), &key)
            .await
            .map_err(|e| {
                AgentError::Config(format!(
                    "object store {} does not take writes ({key}): {e}",
                    self.shared.store_url
                ))
            })
    }

    /// Object-store request counters of this agent.
    pub fn store_counters(&self) -> Arc<StoreCounters> {
        self.counters.clone()
    }

    /// Live counts of the agent's work.
    pub fn gauges(&self) -> Arc<AgentGauges> {
        self.shared.gauges.clone()
    }

    /// A handle to inject faults into this agent while it serves (tests).
    pub fn fault_control(&self) -> FaultControl {
        FaultControl(self.shared.faults.clone())
    }

    /// The agent's metrics.
    pub fn metrics(&self) -> Arc<AgentMetrics> {
        self.shared.metrics.clone()
    }

    /// The agent's metadata handle.
    pub fn metadata(&self) -> &Metadata {
        &self.shared.metadata
    }

    /// Also serves Kafka's wire protocol on `listener` (advertised to Kafka clients at the
    /// host of the agent's advertised address and the listener's port).
    pub fn with_kafka(mut self, listener: TcpListener) -> Self {
        self.kafka = Some(listener);
        self
    }

    /// Registers the agent in the cluster registry as listening on `listen` (its
    /// advertised address defaults to that): checks the advertised address accepts
    /// connections, refuses an id a live agent holds, and returns the agent's id. Serving
    /// does this itself when it was not done before; call it first to know the agent is
    /// registered before announcing it.
    pub async fn join_cluster(&self, listen: std::net::SocketAddr) -> Result<String, AgentError> {
        if let Some(i) = self.shared.identity.get() {
            return Ok(i.id.clone());
        }
        let peer_port = match &self.shared.zone {
            None => None,
            Some(_) => Some(self.bind_peer_port(listen).await?),
        };
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut identity = self.cluster.resolve(listen, peer_port, scheme)?;
        if let Some(k) = &self.kafka {
            let port = k
                .local_addr()
                .map_err(|e| AgentError::Config(format!("the Kafka listener has no address: {e}")))?
                .port();
            let host = url::Url::parse(&identity.address)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .ok_or_else(|| AgentError::Config(format!("no host in {}", identity.address)))?;
            identity.kafka_address = format!("{host}:{port}");
        }
        registry::probe(&identity).await?;
        registry::register(
            &self.shared.metadata,
            &identity,
            self.shared.started_ms,
            self.shared.settings.agent_lease,
        )
        .await?;
        let id = identity.id.clone();
        if let Some(zone) = &self.shared.zone {
            zone.joined(&id);
        }
        let _ = self.shared.identity.set(identity);
        Ok(id)
    }

    /// Binds the peer port (once) and returns its port number.
    async fn bind_peer_port(&self, listen: std::net::SocketAddr) -> Result<u16, AgentError> {
        let addr = self
            .cluster
            .peer_listen
            .unwrap_or_else(|| std::net::SocketAddr::new(listen.ip(), 0));
        let mut slot = self
            .shared
            .peer_listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(l) = slot.as_ref() {
            return l
                .local_addr()
                .map(|a| a.port())
                .map_err(|e| AgentError::Config(format!("peer port has no address: {e}")));
        }
        let std_listener = std::net::TcpListener::bind(addr).map_err(|e| {
            AgentError::Config(format!(
                "cannot listen on {addr} for the agents of the zone (peer port): {e}; \
                 choose another with --peer-listen"
            ))
        })?;
        std_listener
            .set_nonblocking(true)
            .map_err(|e| AgentError::Config(format!("peer port {addr}: {e}")))?;
        let listener = TcpListener::from_std(std_listener)
            .map_err(|e| AgentError::Config(format!("peer port {addr}: {e}")))?;
        let port = listener
            .local_addr()
            .map(|a| a.port())
            .map_err(|e| AgentError::Config(format!("peer port has no address: {e}")))?;
        *slot = Some(listener);
        Ok(port)
    }

    /// Serves gRPC on `listener` until `shutdown` resolves; then stops accepting, seals
    /// the open segment, lets in-flight requests finish and answers them, and returns.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        self.serve_with_metrics(listener, None, shutdown).await
    }

    /// [`Agent::serve`], also serving `/metrics`, `/healthz` and `/readyz` over HTTP on
    /// `metrics` when given.
    pub async fn serve_with_metrics(
        mut self,
        listener: TcpListener,
        metrics: Option<TcpListener>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), AgentError> {
        // Join the cluster first (unless the caller did): a duplicate id or an address no
        // one can dial stops the start with a clear error.
        let local = listener
            .local_addr()
            .map_err(|e| AgentError::Config(format!("listening socket has no address: {e}")))?;
        self.join_cluster(local).await?;
        let identity = self
            .shared
            .identity
            .get()
            .cloned()
            .ok_or_else(|| AgentError::Internal("the agent joined no cluster".into()))?;
        let lease = self.shared.settings.agent_lease;
        let renewal = tokio::spawn(registry::renew_forever(
            self.shared.metadata.clone(),
            identity.clone(),
            self.shared.started_ms,
            lease,
            self.shared.metrics.clone(),
        ));
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (peer_stop, peer_stopped) = tokio::sync::oneshot::channel::<()>();
        let peer_listener = self
            .shared
            .peer_listener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        let mut zone_tasks = Vec::new();
        if let (Some(zone), Some(listener)) = (&self.shared.zone, peer_listener) {
            zone_tasks.push(tokio::spawn(
                zone.clone()
                    .follow_members(self.shared.metadata.clone(), identity.zone.clone()),
            ));
            let mut peer = zone::PeerServer::new(zone.clone());
            match (&self.auth.service_principal, &self.tls) {
                (Some(p), Some(_)) => peer = peer.admitting(p.clone(), self.auth.cert_name),
                (None, Some(t)) if t.peer_ca.is_none() => tracing::warn!(
                    "the peer port admits every certificate of the client CA, clients' too, and \
                     serves stored bytes without ACLs: give --service-principal (the name in \
                     the agents' certificates) or a CA of agents only with --tls-peer-ca"
                ),
                _ => {}
            }
            let service = PeerServiceServer::new(peer)
                .max_encoding_message_size(zone::MAX_PEER_READ as usize + 4096);
            let router = tonic::transport::Server::builder().add_service(service);
            let stopped = async move {
                let _ = peer_stopped.await;
            };
            let served: futures::future::BoxFuture<'static, Result<(), tonic::transport::Error>> =
                match &self.tls {
                    None => Box::pin(
                        router.serve_with_incoming_shutdown(plain_incoming(listener), stopped),
                    ),
                    Some(t) => {
                        let tls = tls::Reloading::start(t.peer_server_files(), tls::RELOAD_EVERY)
                            .map_err(|e| AgentError::Config(format!("peer port: {e}")))?;
                        Box::pin(
                            router.serve_with_incoming_shutdown(tls.incoming(listener), stopped),
                        )
                    }
                };
            zone_tasks.push(tokio::spawn(async move {
                if let Err(e) = served.await {
                    tracing::error!(error = %e, "the peer port stopped serving");
                }
            }));
        }
        let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
        // Loaded before the endpoint starts: files that fail now stop the start.
        let http_tls = match &self.tls {
            Some(t) if t.metrics => Some(
                tls::Reloading::start_for(t.http_files(), tls::RELOAD_EVERY, tls::Alpn::Http1)
                    .map_err(|e| AgentError::Config(format!("metrics endpoint: {e}")))?,
            ),
            _ => None,
        };
        let http = metrics.map(|l| {
            tokio::spawn(metrics::serve(
                l,
                http_tls,
                metrics::Http {
                    metrics: self.shared.metrics.clone(),
                    metadata: self.shared.metadata.clone(),
                    stopping: stopping.clone(),
                    store: self.shared.store.clone(),
                    probe: cairn_storage::keys::probe_key(&identity.id),
                    last_probe_ms: Arc::default(),
                },
                async move {
                    let _ = http_stopped.await;
                },
            ))
        });
        let settings = &self.shared.settings;
        let max_request = settings.max_request_bytes + (1 << 20);
        let (mut health, health_service) = tonic_health::server::health_reporter();
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(cairn_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_err = |e| AgentError::Internal(format!("gRPC reflection: {e}"));
        let reflection_v1 = reflection().build_v1().map_err(reflection_err)?;
        // Older grpcurl and other tools still ask the v1alpha service.
        let reflection_v1alpha = reflection().build_v1alpha().map_err(reflection_err)?;
        // Loaded before anything else starts: files that fail now stop the start.
        let tls = match &self.tls {
            Some(t) => Some(
                tls::Reloading::start(t.files.clone(), tls::RELOAD_EVERY)
                    .map_err(|e| AgentError::Config(e.to_string()))?,
            ),
            None => None,
        };
        let authenticator = auth::Authenticator::new(
            self.auth.clone(),
            self.shared.metadata.clone(),
            self.shared.authz.clone(),
            self.shared.quotas.clone(),
            self.shared.connections.clone(),
        );
        if let Err(e) = authenticator.refresh().await {
            tracing::warn!(error = %e, "cannot read the token table yet; retrying every 2s");
        }
        if let Err(e) = authenticator.refresh_quotas().await {
            tracing::warn!(error = %e, "cannot read the quotas yet; retrying every 2s");
        }
        let (kafka_stop, kafka_stopped) = tokio::sync::watch::channel(false);
        // Kafka clients get the gRPC port's certificate and client CA, without ALPN.
        let kafka_tls = match (&self.tls, &self.kafka) {
            (Some(t), Some(_)) => Some(
                tls::Reloading::start_for(t.files.clone(), tls::RELOAD_EVERY, tls::Alpn::None)
                    .map_err(|e| AgentError::Config(e.to_string()))?,
            ),
            _ => None,
        };
        let kafka = self.kafka.take().map(|l| {
            tokio::spawn(kafka::serve(
                self.shared.clone(),
                authenticator.clone(),
                l,
                kafka_tls,
                kafka_stopped,
            ))
        });
        let token_follower = tokio::spawn(authenticator.clone().follow_tokens());
        let expiry = tokio::spawn(expire_producers(
            self.shared.metadata.clone(),
            settings.producer_idle_expiry,
        ));
        let batcher = self.shared.batcher.clone();
        let stop_flag = stopping.clone();
        // Set once waiting produces are answered: the drain of other calls is bounded.
        let (drained_tx, drained_rx) = tokio::sync::oneshot::channel::<()>();
        let leaving = self.shared.metadata.clone();
        let signal = async move {
            shutdown.await;
            stop_flag.store(true, std::sync::atomic::Ordering::SeqCst);
            // Leave the registry first so clients stop routing here at their next refresh.
            renewal.abort();
            if let Err(e) = leaving
                .deregister_agent(&identity.id, identity.incarnation)
                .await
            {
                tracing::warn!(error = %e, "could not leave the agent registry; the lease will run out");
            }
            tracing::info!("shutting down: sealing the open segment and draining requests");
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            // Health watches see NOT_SERVING, then their stream ends (its sender is gone):
            // they would otherwise hold the graceful shutdown open for ever.
            health.clear_service_status("").await;
            batcher.flush().await;
            let _ = drained_tx.send(());
        };
        let server = tonic::transport::Server::builder()
            .max_concurrent_streams(settings.max_streams_per_connection)
            // Produce requests arrive in frames of up to 1 MiB rather than 16 KiB.
            .max_frame_size(cairn_proto::MAX_HTTP2_FRAME_SIZE)
            .layer(tower::util::MapResponseLayer::new(
                oversized_is_resource_exhausted,
            ))
            .layer(auth::AuthLayer(authenticator))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(AdminServiceServer::new(AdminService(self.shared.clone())))
            .add_service(GroupServiceServer::new(groups::GroupsService(
                self.shared.clone(),
            )))
            .add_service(
                ShareServiceServer::new(share::ShareService(self.shared.clone()))
                    .max_encoding_message_size(usize::MAX),
            )
            .add_service(
                ProducerServiceServer::new(ProducerService(self.shared.clone()))
                    .max_decoding_message_size(max_request),
            )
            .add_service(
                ConsumerServiceServer::new(ConsumerService(self.shared.clone()))
                    .max_encoding_message_size(usize::MAX),
            );
        let server: futures::future::BoxFuture<'_, Result<(), tonic::transport::Error>> = match tls
        {
            None => Box::pin(server.serve_with_incoming_shutdown(plain_incoming(listener), signal)),
            Some(tls) => {
                Box::pin(server.serve_with_incoming_shutdown(tls.incoming(listener), signal))
            }
        };
        // tonic's graceful shutdown waits for every open call, and some never end on their
        // own (a gRPC health Watch) or end late (a long-poll, a client stream): once
        // produces are answered they get `shutdown_timeout`, then the server is dropped,
        // which closes their connections.
        let timeout = settings.shutdown_timeout;
        let cut_off = async move {
            if drained_rx.await.is_err() {
                // The server ended before the signal completed: nothing to cut off.
                return std::future::pending().await;
            }
            tokio::time::sleep(timeout).await;
        };
        tokio::select! {
            served = server => {
                served.map_err(|e| AgentError::Internal(format!("gRPC server failed: {e}")))?;
            }
            () = cut_off => {
                tracing::warn!(?timeout, "open calls outlived the shutdown timeout; closing them");
            }
        }
        let _ = kafka_stop.send(true);
        if let Some(k) = kafka {
            let _ = k.await;
        }
        expiry.abort();
        token_follower.abort();
        self.shared.batcher.shutdown().await;
        let _ = peer_stop.send(());
        for t in zone_tasks {
            t.abort();
        }
        let _ = http_stop.send(());
        if let Some(h) = http {
            let _ = h.await;
        }
        Ok(())
    }
}

/// The connections `listener` accepts, without TLS.
fn plain_incoming(
    listener: TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener).map(|s| {
        s.inspect(|s| {
            // Small requests must not wait for Nagle's algorithm.
            let _ = s.set_nodelay(true);
        })
    })
}

/// tonic answers a request over the decoding limit with OUT_OF_RANGE; gRPC's status-code
/// guide (and Cairn's error table) say RESOURCE_EXHAUSTED for a request larger than the
/// server takes, and OUT_OF_RANGE means an offset here. Such an answer is trailers-only, so
/// its status is in the response headers.
fn oversized_is_resource_exhausted<B>(mut response: http::Response<B>) -> http::Response<B> {
    let headers = response.headers_mut();
    let oversized = tonic::Status::from_header_map(headers).filter(|s| {
        s.code() == tonic::Code::OutOfRange
            && s.message()
                .starts_with("Error, decoded message length too large")
    });
    if let Some(s) = oversized {
        // The same status every other refusal has: code, reason and message.
        let status = error::status_with_reason(
            tonic::Code::ResourceExhausted,
            format!("the request is too large: {}", s.message()),
            cairn_proto::v2::ErrorReason::TooLarge,
            Default::default(),
        );
        if status.add_header(headers).is_err() {
            headers.insert("grpc-status", http::HeaderValue::from_static("8"));
        }
    }
    response
}

/// Removes idle producer state now and then. Every agent runs it; sweeps are idempotent.
async fn expire_producers(metadata: Metadata, idle: std::time::Duration) {
    let every = (idle / 100).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    );
    loop {
        tokio::time::sleep(every).await;
        match metadata.expire_producers(idle).await {
            Ok(r) if r.producers + r.partition_states > 0 => tracing::info!(
                producers = r.producers,
                partition_states = r.partition_states,
                "expired idle producer state"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "producer expiry failed; will retry"),
        }
    }
}
