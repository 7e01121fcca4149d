//! The agent's place in the cluster: who it is ([`ClusterSettings`]), its registration in
//! the metadata store's agent registry under a lease it renews with its load, and the
//! DescribeCluster answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_metadata::{AgentLoad, AgentRecord, MetaError, Metadata};
use cairn_proto::v2;
use rand::Rng;

use crate::AgentError;
use crate::metrics::AgentMetrics;

/// Longest agent id and zone name.
const MAX_ID_BYTES: usize = 200;
const MAX_ZONE_BYTES: usize = 64;

/// Who the agent is in the cluster. Every field has a default, so a lone agent needs none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The agent's id, unique among live agents. Default: its advertised address
    /// (`host:port`), which no other live agent can have.
    pub agent_id: Option<String>,
    /// The address clients reach this agent at (`host:port`, or with the scheme the agent
    /// serves: `http://host:port`, `https://host:port` with TLS).
    /// Default: the address it listens on; for a wildcard (0.0.0.0), the address this
    /// host's name resolves to, unless that is a loopback address (then it is refused).
    pub advertise: Option<String>,
    /// The agent's zone (availability zone, rack); clients of the same zone prefer it.
    /// Empty: no zone.
    pub zone: String,
    /// Where the agent listens for the agents of its zone (the zone read cache's peer
    /// port). Default: the IP it serves clients on, with a port the system picks.
    pub peer_listen: Option<std::net::SocketAddr>,
    /// The address the agents of its zone reach the peer port at (`host:port`). Default:
    /// the advertised host with the peer port.
    pub peer_advertise: Option<String>,
}

/// A zone or agent id: letters, digits, `.`, `_`, `-`, `:`, within `max` bytes.
fn check_name(what: &str, v: &str, max: usize) -> Result<(), AgentError> {
    // Shown escaped and cut short, so the error stays one readable line.
    let shown = || {
        let s: String = v.escape_debug().take(64).collect();
        if v.chars().count() > 64 {
            format!("{s}…")
        } else {
            s
        }
    };
    if v.len() > max {
        return Err(AgentError::Config(format!(
            "{what} `{}` is {} bytes; at most {max}",
            shown(),
            v.len()
        )));
    }
    if let Some(c) = v
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
    {
        return Err(AgentError::Config(format!(
            "{what} `{}` contains {c:?}; use letters, digits, '.', '_', '-' or ':'",
            shown()
        )));
    }
    Ok(())
}

/// The agent's resolved identity once its listening address is known.
#[derive(Debug, Clone)]
pub(crate) struct Identity {
    pub(crate) id: String,
    /// `http://host:port` (`https://` with TLS).
    pub(crate) address: String,
    pub(crate) zone: String,
    pub(crate) incarnation: u64,
    /// `http://host:port` (`https://` with TLS) of the peer port; empty without a zone
    /// cache.
    pub(crate) peer_address: String,
    /// `host:port` of the Kafka listener; empty without one.
    pub(crate) kafka_address: String,
}

impl ClusterSettings {
    /// Checks the names; the address is checked by [`ClusterSettings::resolve`].
    pub fn validate(&self) -> Result<(), AgentError> {
        check_name("zone", &self.zone, MAX_ZONE_BYTES)?;
        if let Some(id) = &self.agent_id {
            if id.is_empty() {
                return Err(AgentError::Config("agent id is empty".into()));
            }
            check_name("agent id", id, MAX_ID_BYTES)?;
        }
        if let Some(a) = &self.peer_advertise {
            let scheme = if a.starts_with("https://") {
                "https"
            } else {
                "http"
            };
            normalize_address(a, scheme)?;
        }
        Ok(())
    }

    /// The identity of an agent listening on `listen`, with its peer port on `peer_port`
    /// when it serves one.
    /// `scheme` is `https` when the agent serves TLS, else `http`.
    pub(crate) fn resolve(
        &self,
        listen: std::net::SocketAddr,
        peer_port: Option<u16>,
        scheme: &str,
    ) -> Result<Identity, AgentError> {
        let address = match &self.advertise {
            Some(a) => normalize_address(a, scheme)?,
            None if listen.ip().is_unspecified() => match host_address() {
                // In a container or a Kubernetes pod the host name resolves to the address
                // others reach it at.
                Some(ip) => format!(
                    "{scheme}://{}",
                    std::net::SocketAddr::new(ip, listen.port())
                ),
                None => {
                    return Err(AgentError::Config(format!(
                        "the agent listens on {listen}, which clients cannot dial, and this \
                         host's name resolves to no other address: give the address they \
                         reach it at with --advertise HOST:PORT"
                    )));
                }
            },
            None => format!("{scheme}://{listen}"),
        };
        let id = match &self.agent_id {
            Some(id) => id.clone(),
            None => host_port(&address).to_string(),
        };
        check_name("agent id", &id, MAX_ID_BYTES)?;
        // Tells this process's registration from an earlier process of the same id; not a
        // decision, so the thread RNG is fine.
        #[allow(clippy::disallowed_methods)]
        let incarnation = rand::rng().random::<u64>().max(1);
        let peer_address = match (peer_port, &self.peer_advertise) {
            (None, _) => String::new(),
            (Some(_), Some(a)) => normalize_address(a, scheme)?,
            (Some(port), None) => {
                let host = url::Url::parse(&address)
                    .ok()
                    .and_then(|u| u.host_str().map(str::to_string))
                    .ok_or_else(|| AgentError::Config(format!("no host in {address}")))?;
                format!("{scheme}://{host}:{port}")
            }
        };
        Ok(Identity {
            id,
            address,
            zone: self.zone.clone(),
            incarnation,
            peer_address,
            kafka_address: String::new(),
        })
    }
}

/// The first address, not a loopback one, that this host's name resolves to (IPv4
/// preferred): what a container or a pod is reached at. `None` when there is none.
fn host_address() -> Option<std::net::IpAddr> {
    use std::net::ToSocketAddrs;
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())?;
    let name = name.trim();
    if name.is_empty() {
        return None;
    }
    let addrs: Vec<std::net::IpAddr> = (name, 0u16)
        .to_socket_addrs()
        .ok()?
        .map(|a| a.ip())
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified())
        .collect();
    addrs
        .iter()
        .find(|ip| ip.is_ipv4())
        .or(addrs.first())
        .copied()
}

/// `host:port` or `SCHEME://host:port` as `SCHEME://host:port`, where the scheme is the
/// one the agent serves (`http`, or `https` with TLS).
fn normalize_address(a: &str, scheme: &str) -> Result<String, AgentError> {
    let with_scheme = if a.contains("://") {
        a.to_string()
    } else {
        format!("{scheme}://{a}")
    };
    let bad = |why: &str| {
        Err(AgentError::Config(format!(
            "advertised address `{a}` {why}; give HOST:PORT, e.g. 10.0.0.5:7170"
        )))
    };
    let url = match url::Url::parse(&with_scheme) {
        Ok(u) => u,
        Err(e) => return bad(&format!("is not an address ({e})")),
    };
    if url.scheme() != scheme {
        return bad(&if scheme == "https" {
            "must use https: the agent serves TLS".to_string()
        } else {
            "must use http: the agent serves no TLS (give --tls-cert and --tls-key)".to_string()
        });
    }
    let Some(host) = url.host_str() else {
        return bad("has no host");
    };
    let Some(port) = url.port() else {
        return bad("has no port");
    };
    if url.path() != "/" && !url.path().is_empty() {
        return bad("must not have a path");
    }
    Ok(format!("{scheme}://{host}:{port}"))
}

/// `scheme://host:port` as `host:port`.
fn host_port(address: &str) -> &str {
    address.split_once("://").map_or(address, |(_, hp)| hp)
}

/// Checks that the advertised address accepts TCP connections from here (the agent's
/// listener is bound, so it answers even before serving): an address no one can reach is
/// refused at start, not discovered by clients one by one.
pub(crate) async fn probe(identity: &Identity) -> Result<(), AgentError> {
    let hostport = host_port(&identity.address).to_string();
    let err = |why: String| {
        AgentError::Config(format!(
            "advertised address {} is not reachable from this agent ({why}); clients could \
             not reach it either: fix --advertise",
            identity.address
        ))
    };
    match tokio::time::timeout(
        Duration::from_secs(3),
        tokio::net::TcpStream::connect(&hostport),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err("no answer within 3s".into())),
    }
}

/// The registry record of this agent with `load`.
fn record(identity: &Identity, started_ms: i64, load: AgentLoad) -> AgentRecord {
    AgentRecord {
        id: identity.id.clone(),
        address: identity.address.clone(),
        peer_address: identity.peer_address.clone(),
        kafka_address: identity.kafka_address.clone(),
        zone: identity.zone.clone(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        started_ms,
        incarnation: identity.incarnation,
        lease_expires_ms: 0,
        load,
    }
}

/// `local_ms`, a time the agent read before its clock was synchronised with the store's,
/// on the store's clock.
fn on_store_clock(metadata: &Metadata, local_ms: i64) -> i64 {
    local_ms.saturating_add(metadata.clock_offset_ms().unwrap_or(0))
}

/// Registers the agent (refusing to start on a duplicate live id).
pub(crate) async fn register(
    metadata: &Metadata,
    identity: &Identity,
    started_ms: i64,
    lease: Duration,
) -> Result<(), AgentError> {
    // On the store's clock before the first lease is written (see `Metadata::sync_clock`).
    metadata.sync_clock().await?;
    metadata
        .register_agent(
            &record(
                identity,
                on_store_clock(metadata, started_ms),
                AgentLoad::default(),
            ),
            lease,
        )
        .await
        .map_err(|e| match e {
            e @ MetaError::AgentIdInUse { .. } => AgentError::Config(e.to_string()),
            e => AgentError::from(e),
        })?;
    tracing::info!(id = %identity.id, address = %identity.address, zone = %identity.zone, "registered in the cluster");
    Ok(())
}

/// Renews the lease every third of it, with the load since the last renewal, until
/// cancelled. A failed renewal is retried at the next tick (the lease has two more).
pub(crate) async fn renew_forever(
    metadata: Metadata,
    identity: Identity,
    started_ms: i64,
    lease: Duration,
    metrics: Arc<AgentMetrics>,
) {
    let every = lease / 3;
    let mut last = (
        Instant::now(),
        metrics.produce_bytes.get(),
        metrics.fetch_bytes.get(),
    );
    loop {
        tokio::time::sleep(every).await;
        let now = Instant::now();
        let (produced, fetched) = (metrics.produce_bytes.get(), metrics.fetch_bytes.get());
        let secs = now.duration_since(last.0).as_secs_f64().max(0.001);
        let load = AgentLoad {
            produce_bytes_per_sec: (produced.saturating_sub(last.1) as f64 / secs) as u64,
            fetch_bytes_per_sec: (fetched.saturating_sub(last.2) as f64 / secs) as u64,
            inflight_segments: metrics.segments_inflight.get().max(0) as u64,
        };
        last = (now, produced, fetched);
        match metadata
            .register_agent(
                &record(&identity, on_store_clock(&metadata, started_ms), load),
                lease,
            )
            .await
        {
            Ok(_) => {}
            Err(e @ MetaError::AgentIdInUse { .. }) => tracing::error!(
                error = %e,
                "another process took this agent's id while its lease had run out; clients may route to either"
            ),
            Err(e) => tracing::warn!(error = %e, "agent lease renewal failed; will retry"),
        }
        // After the renewal, so a slow measurement never delays the lease.
        if let Err(e) = metadata.sync_clock().await {
            tracing::warn!(error = %e, "could not read the metadata store's clock; keeping the last offset");
        }
    }
}

/// This agent as the API shows it when its registration lapsed (no lease, no load).
pub(crate) fn self_info(identity: &Identity, started_ms: i64) -> v2::AgentInfo {
    agent_info(record(identity, started_ms, AgentLoad::default()))
}

/// The live agents as the API shows them.
pub(crate) fn agent_info(r: AgentRecord) -> v2::AgentInfo {
    v2::AgentInfo {
        id: r.id,
        address: r.address,
        zone: r.zone,
        version: r.version,
        started_at_ms: r.started_ms,
        lease_expires_at_ms: r.lease_expires_ms,
        produce_bytes_per_second: r.load.produce_bytes_per_sec,
        fetch_bytes_per_second: r.load.fetch_bytes_per_sec,
        inflight_segments: r.load.inflight_segments,
        peer_address: r.peer_address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_names_are_checked() {
        assert_eq!(
            normalize_address("10.0.0.5:7170", "http").ok().as_deref(),
            Some("http://10.0.0.5:7170")
        );
        assert_eq!(
            normalize_address("http://a.example:1", "http")
                .ok()
                .as_deref(),
            Some("http://a.example:1")
        );
        assert_eq!(
            normalize_address("a.example:1", "https").ok().as_deref(),
            Some("https://a.example:1")
        );
        for bad in ["10.0.0.5", "https://a:1", "http://a:1/x", "::::"] {
            assert!(normalize_address(bad, "http").is_err(), "{bad}");
        }
        let plain = normalize_address("http://a:1", "https").unwrap_err();
        assert!(plain.to_string().contains("must use https"), "{plain}");
        let s = ClusterSettings {
            zone: "eu west".into(),
            ..Default::default()
        };
        assert!(s.validate().is_err());
        let s = ClusterSettings::default();
        let wildcard = "0.0.0.0:7170".parse().ok();
        // A wildcard is refused, unless the host's name resolves to an address to use.
        let resolved = wildcard.map(|w| s.resolve(w, None, "http").map(|i| i.address));
        match host_address() {
            None => assert!(resolved.is_some_and(|r| r.is_err())),
            Some(ip) => assert_eq!(
                resolved.and_then(|r| r.ok()),
                Some(format!("http://{}", std::net::SocketAddr::new(ip, 7170)))
            ),
        }
        let local = "127.0.0.1:7170".parse().ok();
        let id = local
            .and_then(|l| s.resolve(l, None, "http").ok())
            .map(|i| (i.id, i.address));
        assert_eq!(
            id,
            Some((
                "127.0.0.1:7170".to_string(),
                "http://127.0.0.1:7170".to_string()
            ))
        );
    }
}
