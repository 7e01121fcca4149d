//! `cairn agent`: configuration (defaults < TOML file < environment < flags) and the
//! process lifecycle (listen, serve, stop gracefully on SIGINT/SIGTERM).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_agent::{AgentBuilder, AgentSettings};
use serde::Deserialize;

use crate::size::parse_size;

const DEFAULT_LISTEN: &str = "127.0.0.1:7170";
const DEFAULT_OBJECTS: &str = "./cairn-data/objects";
const DEFAULT_METADATA: &str = "sqlite:./cairn-data/meta.sqlite";

/// Flags of `cairn agent`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  cairn agent                                   # ./cairn-data, 127.0.0.1:7170
  cairn agent --object-store s3://my-bucket/cairn --metadata sqlite:/var/lib/cairn/meta.sqlite
  cairn agent --object-store s3://my-bucket/cairn --metadata postgres://cairn:PASSWORD@db:5432/cairn
  AWS_ENDPOINT_URL=http://127.0.0.1:4566 cairn agent --object-store s3://cairn
  cairn agent --listen 0.0.0.0:7170 --tls-cert agent.crt --tls-key agent.key --tls-peer-ca ca.crt

A TOML file (--config) may set: listen, metrics_listen, kafka_listen, object_store, metadata, agent_id,
advertise, zone, peer_listen, peer_advertise, insecure, a [tls] table (cert, key, client_ca,
peer_ca, metrics), an [auth] table (required, tls_principal, super_users, service_principal), an [s3] table
of object_store S3 options (endpoint, region, ...) and a [tuning] table (segment_max_bytes,
linger, max_inflight_segments, multipart_threshold, segment_max_batches, max_request_bytes,
max_batch_uncompressed_bytes, cache_bytes, chunk_cache_bytes, chunk_bytes,
peer_read_timeout, max_fetch_wait, topic_cache_ttl, producer_idle_expiry,
share_max_deliveries, agent_lease, shutdown_timeout, max_long_polls_per_connection,
max_connection_bytes, max_streams_per_connection, kafka_auto_create_partitions,
kafka_zone_cidrs, kafka_group_session_timeout).

Several agents form one cluster when they share the object store and a PostgreSQL (or
FoundationDB) metadata store; each registers itself there. `cairn cluster` lists them.
The agents of one zone share one read cache: each object chunk (4 MiB) is read from the
store by one agent of the zone, which serves it to the others on its peer port.")]
pub(crate) struct AgentArgs {
    /// TOML configuration file; flags and environment variables override it.
    #[arg(long, env = "CAIRN_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to serve gRPC on (port 0 picks a free port).
    #[arg(long, env = "CAIRN_LISTEN", value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address of the HTTP endpoint with /metrics (Prometheus), /healthz and /readyz.
    /// Default: the gRPC address with the port plus one (port 0 when gRPC's is 0).
    #[arg(long, env = "CAIRN_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// Address to serve Kafka's wire protocol on (kcat, librdkafka, Java clients), or `off`.
    /// Default: the gRPC address's IP, port 9092 beside the default gRPC port 7170, the
    /// gRPC port plus two for another port, a free port when gRPC's is 0. With --tls-cert
    /// it serves TLS (Kafka's SSL and SASL_SSL) with the same certificate; clients
    /// authenticate with SASL PLAIN or OAUTHBEARER, a Cairn token as the secret, or a
    /// client certificate (--tls-client-ca).
    #[arg(long, env = "CAIRN_KAFKA_LISTEN", value_name = "ADDR|off")]
    kafka_listen: Option<String>,
    /// Create a topic a Kafka client's Metadata request names that does not exist, with
    /// this many partitions (Kafka's auto.create.topics.enable). Default 0: none is created.
    #[arg(long, env = "CAIRN_KAFKA_AUTO_CREATE_PARTITIONS", value_name = "N")]
    kafka_auto_create_partitions: Option<u32>,
    /// Kafka clients' zones by address, comma-separated ZONE=CIDR (e.g.
    /// eu-1a=10.1.0.0/16,eu-1b=10.2.0.0/16): a client whose client.id names no cairn_az=ZONE
    /// gets leaders among the agents of its address's zone.
    #[arg(
        long,
        env = "CAIRN_KAFKA_ZONE_CIDRS",
        value_name = "ZONE=CIDR,...",
        value_delimiter = ','
    )]
    kafka_zone_cidrs: Vec<String>,
    /// Where segments are stored: a directory, file:///dir, s3://bucket/prefix or memory://.
    /// S3 endpoint and credentials come from the AWS_* environment variables.
    #[arg(long, env = "CAIRN_OBJECT_STORE", value_name = "URL")]
    object_store: Option<String>,
    /// Metadata store: sqlite:PATH (one host), postgres://USER:PASSWORD@HOST:PORT/DB (agents on
    /// many hosts share it) or fdb:CLUSTER_FILE (builds with the fdb feature).
    #[arg(long, env = "CAIRN_METADATA", value_name = "SPEC")]
    metadata: Option<String>,
    /// How long a segment stays open for more records before it is written.
    #[arg(long, env = "CAIRN_LINGER", value_parser = humantime::parse_duration, value_name = "DURATION")]
    linger: Option<Duration>,
    /// Size at which a segment is written without waiting for the linger time.
    #[arg(long, env = "CAIRN_SEGMENT_MAX_BYTES", value_parser = parse_size, value_name = "SIZE")]
    segment_max_bytes: Option<usize>,
    /// This agent's id in the cluster, unique among live agents (default: its advertised
    /// HOST:PORT). Starting a second agent with the id of a live one fails.
    #[arg(long, env = "CAIRN_AGENT_ID", value_name = "ID")]
    agent_id: Option<String>,
    /// The HOST:PORT clients reach this agent at (default: --listen; with 0.0.0.0, the
    /// address this host's name resolves to, as in a container or a Kubernetes pod).
    /// Checked at start: an address the agent cannot reach itself is refused.
    #[arg(long, env = "CAIRN_ADVERTISE", value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// This agent's zone (availability zone, rack): clients of the same zone produce to
    /// and fetch from it rather than from other zones. On AWS use the AZ id (use1-az1)
    /// from the instance metadata; on Kubernetes the node's
    /// topology.kubernetes.io/zone label.
    #[arg(long, env = "CAIRN_ZONE", value_name = "ZONE")]
    zone: Option<String>,
    /// Address the agents of this zone read cached object chunks from (the zone read
    /// cache's peer port). Default: the --listen IP with a free port. Only agents should
    /// reach it.
    #[arg(long, env = "CAIRN_PEER_LISTEN", value_name = "ADDR")]
    peer_listen: Option<SocketAddr>,
    /// The HOST:PORT other agents reach the peer port at (default: the advertised host
    /// with the peer port).
    #[arg(long, env = "CAIRN_PEER_ADVERTISE", value_name = "HOST:PORT")]
    peer_advertise: Option<String>,
    /// How long the agent's cluster registration lives without renewal: a dead agent
    /// leaves clients' views within this time (default 10s).
    #[arg(long, env = "CAIRN_AGENT_LEASE", value_parser = humantime::parse_duration, value_name = "DURATION")]
    agent_lease: Option<Duration>,
    /// On SIGTERM/SIGINT the agent answers every waiting produce, then gives other open
    /// calls (long-polls, streams, health watches) this long before closing them (default
    /// 10s, at most 10m).
    #[arg(long, env = "CAIRN_SHUTDOWN_TIMEOUT", value_parser = humantime::parse_duration, value_name = "DURATION")]
    shutdown_timeout: Option<Duration>,
    /// Take an existing metadata store that holds nothing (a 0-byte SQLite file, an empty
    /// table made by hand) as a new, empty one. Without it such a store is refused, since a
    /// truncated or replaced file looks the same. A store the agent creates needs no flag.
    #[arg(long)]
    init: bool,
    /// Certificate chain (PEM, the agent's own first) to serve TLS with, on the gRPC port
    /// and the peer port. The files are read again every 5s: replacing them rotates the
    /// certificate without a restart. Needs --tls-key.
    #[arg(
        long,
        env = "CAIRN_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(
        long,
        env = "CAIRN_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM): clients must present a certificate it signed (mTLS). Also the
    /// default --tls-peer-ca.
    #[arg(
        long,
        env = "CAIRN_TLS_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,
    /// CA bundle (PEM) that signed the agents' own certificates: the peer port (the zone
    /// read cache) admits only agents with a certificate it signed. Default: --tls-client-ca.
    #[arg(
        long,
        env = "CAIRN_TLS_PEER_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_peer_ca: Option<PathBuf>,
    /// Serve /metrics, /healthz and /readyz over TLS too (https://, HTTP/1.1), with the
    /// --tls-cert certificate; no client certificate is asked (probes present none).
    #[arg(long, env = "CAIRN_METRICS_TLS", requires = "tls_cert")]
    metrics_tls: bool,
    /// Serve a non-loopback address without TLS or authentication. Without this flag such
    /// an agent refuses to start: anyone who reaches the port could read, write and delete
    /// every topic. Only for a network where every host is trusted.
    #[arg(long, env = "CAIRN_INSECURE")]
    insecure: bool,
    /// Refuse calls that present no credential: a bearer token (`cairn token create`) or
    /// a client certificate (with --tls-client-ca). Health checks stay open.
    #[arg(long, env = "CAIRN_REQUIRE_AUTH")]
    require_auth: bool,
    /// Which name of a client certificate is its principal: cn (the subject's common name)
    /// or san (its first DNS name, else URI, e.g. a SPIFFE id).
    #[arg(long, env = "CAIRN_TLS_PRINCIPAL", value_name = "cn|san")]
    tls_principal: Option<cairn_agent::auth::CertName>,
    /// A principal that may do anything whatever the ACLs say (repeat the flag, or
    /// comma-separate in CAIRN_SUPER_USERS): who administers a new secure cluster.
    #[arg(
        long = "super-user",
        env = "CAIRN_SUPER_USERS",
        value_name = "PRINCIPAL",
        value_delimiter = ','
    )]
    super_users: Vec<String>,
    /// The principal the agents' own certificates name (by --tls-principal): the peer port
    /// then admits only certificates naming it (without it, any certificate of the peer CA
    /// may read stored bytes there), and it may do anything on the gRPC port, as Kafka's
    /// broker principal does. Writes the agent makes on its own (dead letters) are
    /// audit-logged as it.
    #[arg(long, env = "CAIRN_SERVICE_PRINCIPAL", value_name = "PRINCIPAL")]
    service_principal: Option<String>,
}

/// The `[auth]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default)]
    required: bool,
    tls_principal: Option<cairn_agent::auth::CertName>,
    #[serde(default)]
    super_users: Vec<String>,
    service_principal: Option<String>,
}

/// The `[tls]` table of the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsConfig {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    client_ca: Option<PathBuf>,
    peer_ca: Option<PathBuf>,
    #[serde(default)]
    metrics: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    agent_id: Option<String>,
    advertise: Option<String>,
    zone: Option<String>,
    peer_listen: Option<SocketAddr>,
    peer_advertise: Option<String>,
    metrics_listen: Option<SocketAddr>,
    kafka_listen: Option<String>,
    object_store: Option<String>,
    metadata: Option<String>,
    #[serde(default)]
    s3: BTreeMap<String, String>,
    #[serde(default)]
    tuning: AgentSettings,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default)]
    insecure: bool,
    #[serde(default)]
    auth: AuthConfig,
}

pub(crate) async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let file = match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| {
                anyhow::anyhow!(
                    "invalid config file {}: {}",
                    path.display(),
                    toml_error_line(&text, &e)
                )
            })?
        }
        None => FileConfig::default(),
    };
    let mut settings = file.tuning;
    if let Some(linger) = args.linger {
        settings.linger = linger;
    }
    if let Some(size) = args.segment_max_bytes {
        settings.segment_max_bytes = size;
    }
    if let Some(lease) = args.agent_lease {
        settings.agent_lease = lease;
    }
    if let Some(timeout) = args.shutdown_timeout {
        settings.shutdown_timeout = timeout;
    }
    if let Some(n) = args.kafka_auto_create_partitions {
        settings.kafka_auto_create_partitions = n;
    }
    if !args.kafka_zone_cidrs.is_empty() {
        settings.kafka_zone_cidrs = args.kafka_zone_cidrs.clone();
    }
    let listen = match args.listen.or(file.listen) {
        Some(a) => a,
        None => DEFAULT_LISTEN.parse().context("default listen address")?,
    };
    let objects = args
        .object_store
        .or(file.object_store)
        .unwrap_or_else(|| DEFAULT_OBJECTS.to_string());
    let metadata = args
        .metadata
        .or(file.metadata)
        .unwrap_or_else(|| DEFAULT_METADATA.to_string());
    if !["sqlite:", "fdb:", "postgres://", "postgresql://"]
        .iter()
        .any(|p| metadata.starts_with(p))
    {
        bail!(
            "unsupported metadata store `{metadata}`: use sqlite:PATH, postgres://USER@HOST:PORT/DB or fdb:CLUSTER_FILE"
        );
    }
    // Refuse bad settings before anything is opened: a refused start creates no directory
    // and no metadata file.
    settings.validate()?;
    let tls = match (
        args.tls_cert.or(file.tls.cert),
        args.tls_key.or(file.tls.key),
    ) {
        (Some(cert), Some(key)) => Some(cairn_agent::tls::AgentTls {
            files: cairn_agent::tls::TlsFiles {
                cert,
                key,
                client_ca: args.tls_client_ca.or(file.tls.client_ca),
            },
            peer_ca: args.tls_peer_ca.or(file.tls.peer_ca),
            metrics: args.metrics_tls || file.tls.metrics,
        }),
        (None, None) => {
            if file.tls.metrics {
                bail!("tls.metrics needs the agent's own certificate: set tls.cert and tls.key");
            }
            if args.tls_client_ca.is_some() || file.tls.client_ca.is_some() {
                bail!(
                    "a client CA (tls.client_ca) needs the agent's own certificate: set tls.cert and tls.key"
                );
            }
            None
        }
        (Some(_), None) => bail!("tls.cert is set but not tls.key: give both"),
        (None, Some(_)) => bail!("tls.key is set but not tls.cert: give both"),
    };
    let auth = cairn_agent::auth::AuthSettings {
        required: args.require_auth || file.auth.required,
        cert_name: args
            .tls_principal
            .or(file.auth.tls_principal)
            .unwrap_or_default(),
        super_users: if args.super_users.is_empty() {
            file.auth.super_users
        } else {
            args.super_users
        },
        service_principal: args.service_principal.or(file.auth.service_principal),
    };
    for p in &auth.super_users {
        cairn_metadata::tokens::check_principal(p).context("invalid --super-user")?;
    }
    if let Some(p) = &auth.service_principal {
        cairn_metadata::tokens::check_principal(p).context("invalid --service-principal")?;
    }
    if !listen.ip().is_loopback() && tls.is_none() {
        let insecure = args.insecure || file.insecure;
        if !auth.required && !insecure {
            bail!(
                "refusing to serve {listen} without TLS or authentication: anyone who \
                 reaches it could read, write and delete every topic; give --tls-cert and \
                 --tls-key, listen on 127.0.0.1, or pass --insecure if every host of this \
                 network is trusted"
            );
        }
        if auth.required {
            tracing::warn!(
                "serving {listen} without TLS: tokens and records cross the network in plain text"
            );
        }
    }
    let kafka_listen = kafka_address(listen, args.kafka_listen.or(file.kafka_listen))?;
    // With TLS the Kafka listener serves TLS too, as the gRPC port does.
    if let Some(k) = kafka_listen
        && !k.ip().is_loopback()
        && tls.is_none()
        && !auth.required
        && !(args.insecure || file.insecure)
    {
        bail!(
            "refusing to serve Kafka clients on {k} without TLS or authentication: anyone \
             who reaches it could read and write every topic; listen on 127.0.0.1 \
             (--kafka-listen), turn it off (--kafka-listen off), give --tls-cert and \
             --tls-key, require authentication, or pass --insecure if every host of this \
             network is trusted"
        );
    }
    if let Some(k) = kafka_listen
        && !k.ip().is_loopback()
        && tls.is_none()
        && auth.required
    {
        tracing::warn!(
            "serving Kafka clients on {k} without TLS: their SASL tokens and records cross \
             the network in plain text"
        );
    }
    let probe_name = args.agent_id.clone().or(file.agent_id.clone());
    let cluster = cairn_agent::ClusterSettings {
        agent_id: args.agent_id.or(file.agent_id),
        advertise: args.advertise.or(file.advertise),
        zone: args.zone.or(file.zone).unwrap_or_default(),
        peer_listen: args.peer_listen.or(file.peer_listen),
        peer_advertise: args.peer_advertise.or(file.peer_advertise),
    };
    cluster.validate()?;
    let options: Vec<(String, String)> = file.s3.into_iter().collect();
    let store = cairn_storage::open_object_store(&objects, &options)?;
    let open = cairn_metadata::OpenOptions { init: args.init };
    let kv = cairn_metadata::open_kv_with(&metadata, open)
        .await
        .with_context(|| {
            format!(
                "cannot open metadata store {}",
                cairn_metadata::redact_spec(&metadata)
            )
        })?;
    let mut builder = AgentBuilder::new(settings)
        .object_store(store)
        .metadata_store(kv)
        .store_url(objects.clone())
        .cluster(cluster);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let metrics_scheme = if tls.as_ref().is_some_and(|t| t.metrics) {
        "https"
    } else {
        "http"
    };
    builder = builder.auth(auth);
    if let Some(tls) = tls {
        builder = builder.tls(tls);
    }
    // Fault injection for the delivery-guarantee tests; never set in production.
    if let Ok(spec) = std::env::var("CAIRN_TEST_FAULTS") {
        let faults: cairn_agent::FaultSpec = spec.parse().context("invalid CAIRN_TEST_FAULTS")?;
        if faults.is_active() {
            tracing::warn!(?faults, "CAIRN_TEST_FAULTS is set: injecting faults");
            builder = builder.faults(faults);
        }
    }
    let mut agent = builder.build()?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener
        .local_addr()
        .context("listening socket has no address")?;
    let mut kafka_line = String::new();
    if let Some(k) = kafka_listen {
        let l = tokio::net::TcpListener::bind(k)
            .await
            .with_context(|| format!("cannot listen on {k} for Kafka clients (--kafka-listen)"))?;
        let bound = l.local_addr().context("Kafka socket has no address")?;
        kafka_line = format!(" (kafka {bound})");
        agent = agent.with_kafka(l);
    }
    // A missing bucket, refused credentials or a full disk stop the start here, not as
    // failed produces later; a passing hiccup is retried.
    let probe_name = probe_name.unwrap_or_else(|| addr.to_string());
    let mut attempt = 0;
    while let Err(e) = agent.probe_object_store(&probe_name).await {
        attempt += 1;
        if attempt == 10 {
            return Err(e.into());
        }
        tracing::warn!(error = %e, "object store probe failed; retrying");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    tracing::info!(objects = %objects, metadata = %cairn_metadata::redact_spec(&metadata), "agent started");
    let metrics_addr = args
        .metrics_listen
        .or(file.metrics_listen)
        .unwrap_or_else(|| {
            // From the port asked for, not the one bound: with `--listen HOST:0` the gRPC
            // port is picked at random, and so must the metrics port be (port + 1 of a
            // random port may be taken).
            let port = if listen.port() == 0 {
                0
            } else {
                listen.port().wrapping_add(1)
            };
            SocketAddr::new(addr.ip(), port)
        });
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr)
        .await
        .with_context(|| {
            format!("cannot listen on {metrics_addr} for metrics (--metrics-listen)")
        })?;
    let metrics_addr = metrics_listener
        .local_addr()
        .context("metrics socket has no address")?;
    tracing::info!("metrics on {metrics_scheme}://{metrics_addr}/metrics (also /healthz, /readyz)");
    // Registering is one metadata transaction; a passing fault of the metadata store (a
    // restart, a storm of serialization conflicts that outlasts the transaction's own
    // retries) is waited out for a while rather than ending the start.
    let patience = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let id = loop {
        match agent.join_cluster(addr).await {
            Ok(id) => break id,
            Err(e)
                if matches!(
                    e.kind(),
                    cairn_metadata::ErrorKind::Unavailable | cairn_metadata::ErrorKind::Internal
                ) =>
            {
                if std::time::Instant::now() >= patience {
                    return Err(anyhow::Error::new(e)
                        .context("cannot register in the cluster (retried for 30s)"));
                }
                tracing::warn!(error = %e, "registering in the cluster failed; retrying");
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
            // A refusal (bad address, id in use) is final and says what to fix.
            Err(e) => return Err(e.into()),
        }
    };
    tracing::info!(id = %id, "joined the cluster");
    // The one line on stdout: scripts and tests wait for it.
    println!("cairn agent listening on {scheme}://{addr}{kafka_line}");
    agent
        .serve_with_metrics(listener, Some(metrics_listener), shutdown_signal())
        .await?;
    tracing::info!("agent stopped");
    Ok(())
}

/// The Kafka listener's address: `flag` (`off` for none), or the default beside `listen`.
fn kafka_address(listen: SocketAddr, flag: Option<String>) -> anyhow::Result<Option<SocketAddr>> {
    match flag.as_deref().map(str::trim) {
        Some("off") => Ok(None),
        Some(a) => a
            .parse()
            .map(Some)
            .with_context(|| format!("--kafka-listen `{a}` is neither IP:PORT nor `off`")),
        None => {
            let port = match listen.port() {
                0 => 0,
                7170 => 9092,
                p => p.checked_add(2).with_context(|| {
                    format!("no default Kafka port beside gRPC port {p}: give --kafka-listen")
                })?,
            };
            Ok(Some(SocketAddr::new(listen.ip(), port)))
        }
    }
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops the agent");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// A TOML error in one line: where it is and what is wrong (the toml crate's own Display
/// spreads a snippet with a caret over several lines).
fn toml_error_line(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The configuration example in the README is a valid file.
    #[test]
    fn readme_config_example_parses() {
        let readme = include_str!("../../README.md");
        let start = readme.find("```toml").expect("README has a TOML example") + "```toml".len();
        let len = readme[start..].find("```").expect("the TOML example ends");
        let config: FileConfig = toml::from_str(&readme[start..start + len]).unwrap();
        config.tuning.validate().unwrap();
        assert_eq!(
            config.tuning.producer_idle_expiry,
            Duration::from_secs(7 * 24 * 3600)
        );
    }
}
