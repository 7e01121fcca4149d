//! The agent registry: every agent writes a record of itself (id, advertised address,
//! zone, version, load) under a lease it renews; clients learn the cluster from the live
//! records. A record whose lease ran out is ignored by readers and removed by the next
//! registration after a grace period.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::{MetaError, Metadata};

/// Records whose lease ran out this many lease periods ago are removed.
const SWEEP_AFTER_LEASES: i64 = 10;

/// What an agent is doing, refreshed with each lease renewal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentLoad {
    /// Produced payload bytes per second over the last renewal period.
    pub produce_bytes_per_sec: u64,
    /// Fetched payload bytes per second over the last renewal period.
    pub fetch_bytes_per_sec: u64,
    /// Segments written or committing right now.
    pub inflight_segments: u64,
}

/// One registered agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// The agent's id, unique among live agents.
    pub id: String,
    /// Where clients reach it (`http://host:port`).
    pub address: String,
    /// Where the agents of its zone reach its peer port, the zone read cache
    /// (`http://host:port`); empty when it serves none.
    #[serde(default)]
    pub peer_address: String,
    /// Where Kafka clients reach its Kafka listener (`host:port`); empty when it has none.
    #[serde(default)]
    pub kafka_address: String,
    /// Its zone (availability zone, rack); empty when it has none.
    pub zone: String,
    /// Its software version.
    pub version: String,
    /// When this process started (ms since the epoch).
    pub started_ms: i64,
    /// Random per process: tells this process's record from an earlier one of the same id.
    pub incarnation: u64,
    /// The lease runs until this time (ms); set by [`Metadata::register_agent`].
    #[serde(default)]
    pub lease_expires_ms: i64,
    /// Its load at the last renewal.
    #[serde(default)]
    pub load: AgentLoad,
}

fn decode_agent(k: &[u8], v: &[u8]) -> Result<AgentRecord, MetaError> {
    serde_json::from_slice(v)
        .map_err(|e| MetaError::corrupt(format!("agent record {}", String::from_utf8_lossy(k)), e))
}

impl Metadata {
    /// Registers `agent`, or renews its lease (the same call: the record is rewritten with
    /// a lease of `lease` from now). Refused with [`MetaError::AgentIdInUse`] while another
    /// process (another incarnation) holds a live lease on the same id. Idempotent, so a
    /// rerun after a lost commit reply is harmless. Also removes records whose lease ran
    /// out long ago.
    pub async fn register_agent(
        &self,
        agent: &AgentRecord,
        lease: Duration,
    ) -> Result<AgentRecord, MetaError> {
        if agent.id.is_empty() || agent.id.len() > 200 {
            return Err(MetaError::InvalidArgument(format!(
                "agent id must be 1 to 200 bytes, got {} bytes",
                agent.id.len()
            )));
        }
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        if lease_ms < 100 {
            return Err(MetaError::InvalidArgument(format!(
                "agent lease must be at least 100ms, got {lease:?}"
            )));
        }
        self.run("register_agent", |tx, _| async move {
            let now = self.clock().now_ms();
            let key = keys::agent(&agent.id);
            if let Some(v) = tx.get(&key).await? {
                let old = decode_agent(&key, &v)?;
                if old.incarnation != agent.incarnation && old.lease_expires_ms > now {
                    return Err(MetaError::AgentIdInUse {
                        id: old.id,
                        address: old.address,
                        lease_left_ms: old.lease_expires_ms - now,
                    });
                }
            }
            let mut rec = agent.clone();
            rec.lease_expires_ms = now.saturating_add(lease_ms);
            let value = serde_json::to_vec(&rec)
                .map_err(|e| MetaError::corrupt(format!("agent record {}", rec.id), e))?;
            tx.set(&key, &value).await?;
            // Sweep records long dead (an agent that crashed and never came back).
            let (b, e) = keys::agents();
            for (k, v) in tx.get_range(&b, &e, 1000, false).await? {
                if k == key {
                    continue;
                }
                let stale = match decode_agent(&k, &v) {
                    Ok(r) => r.lease_expires_ms < now - SWEEP_AFTER_LEASES * lease_ms,
                    Err(_) => true,
                };
                if stale {
                    tx.clear(&k).await?;
                }
            }
            Ok(rec)
        })
        .await
    }

    /// Removes an agent's record if it is still this incarnation's (a clean shutdown:
    /// clients stop routing to it at their next refresh, not after its lease).
    pub async fn deregister_agent(&self, id: &str, incarnation: u64) -> Result<(), MetaError> {
        self.run("deregister_agent", |tx, _| async move {
            let key = keys::agent(id);
            if let Some(v) = tx.get(&key).await?
                && decode_agent(&key, &v)?.incarnation == incarnation
            {
                tx.clear(&key).await?;
            }
            Ok(())
        })
        .await
    }

    /// The agents whose lease has not run out, by id.
    pub async fn live_agents(&self) -> Result<Vec<AgentRecord>, MetaError> {
        let now = self.clock().now_ms();
        self.run("live_agents", |tx, _| async move {
            let (b, e) = keys::agents();
            let mut out = Vec::new();
            for (k, v) in tx.get_range(&b, &e, usize::MAX, false).await? {
                let r = decode_agent(&k, &v)?;
                if r.lease_expires_ms > now {
                    out.push(r);
                }
            }
            Ok(out)
        })
        .await
    }
}
