//! The agents of a benchmarked cluster: each one's status read directly (not through the
//! cluster's routing), summed into one cluster-wide reading for the report, and each
//! agent's share of the work for the per-agent table.

use cairn_client::{Admin, Cluster, GetAgentStatusResponse, LatencyHistogram};
use serde::Serialize;

use super::report::MIB;

/// One agent, reached at its own address.
pub(super) struct Member {
    id: String,
    zone: String,
    admin: Admin,
}

/// Every agent of the cluster as it was when the bench started.
pub(super) struct Agents(Vec<Member>);

/// One agent's share of a run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct AgentShare {
    pub(super) id: String,
    pub(super) zone: String,
    pub(super) produce_mib_per_sec: f64,
    pub(super) fetch_mib_per_sec: f64,
    pub(super) cpu_seconds: f64,
}

impl Agents {
    /// Connects to every agent the cluster knows (the one bootstrap agent when the view is
    /// empty).
    pub(super) async fn connect(
        cluster: &Cluster,
        fallback: &str,
        security: &cairn_client::Security,
    ) -> anyhow::Result<Agents> {
        let mut members = Vec::new();
        let known = cluster.agents();
        let list = if known.is_empty() {
            vec![(fallback.to_string(), fallback.to_string(), String::new())]
        } else {
            known
        };
        for (id, address, zone) in list {
            let agent = Cluster::single(&address, security).await?;
            members.push(Member {
                id,
                zone,
                admin: Admin::new(agent),
            });
        }
        Ok(Agents(members))
    }

    /// How many agents.
    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    /// Every agent's status, in the same order each time.
    pub(super) async fn statuses(&self) -> anyhow::Result<Vec<GetAgentStatusResponse>> {
        let mut out = Vec::with_capacity(self.0.len());
        for m in &self.0 {
            out.push(m.admin.agent_status().await?);
        }
        Ok(out)
    }

    /// Each agent's share of the work between two readings `secs` apart.
    pub(super) fn shares(
        &self,
        before: &[GetAgentStatusResponse],
        after: &[GetAgentStatusResponse],
        secs: f64,
    ) -> Vec<AgentShare> {
        let secs = secs.max(1e-9);
        self.0
            .iter()
            .zip(before.iter().zip(after))
            .map(|(m, (b, a))| AgentShare {
                id: m.id.clone(),
                zone: m.zone.clone(),
                produce_mib_per_sec: a.produce_bytes.saturating_sub(b.produce_bytes) as f64
                    / MIB
                    / secs,
                fetch_mib_per_sec: a.fetch_bytes.saturating_sub(b.fetch_bytes) as f64 / MIB / secs,
                cpu_seconds: (a.cpu_seconds - b.cpu_seconds).max(0.0),
            })
            .collect()
    }
}

/// Bucket counts of two histograms with the same bounds added (`a` alone otherwise).
fn add_histograms(
    a: &Option<LatencyHistogram>,
    b: &Option<LatencyHistogram>,
) -> Option<LatencyHistogram> {
    match (a, b) {
        (Some(a), Some(b)) if a.bounds_seconds == b.bounds_seconds => Some(LatencyHistogram {
            bounds_seconds: a.bounds_seconds.clone(),
            counts: a.counts.iter().zip(&b.counts).map(|(x, y)| x + y).collect(),
        }),
        (Some(a), _) => Some(a.clone()),
        (None, b) => b.clone(),
    }
}

/// The agents' statuses as one: counters, CPU and histograms summed, peak memory the
/// largest, names from the first.
pub(super) fn merged(statuses: &[GetAgentStatusResponse]) -> GetAgentStatusResponse {
    let mut it = statuses.iter();
    let Some(first) = it.next() else {
        return GetAgentStatusResponse::default();
    };
    let mut m = first.clone();
    for s in it {
        m.topics = m.topics.max(s.topics);
        m.produce_requests += s.produce_requests;
        m.produce_records += s.produce_records;
        m.produce_bytes += s.produce_bytes;
        m.fetch_requests += s.fetch_requests;
        m.fetch_bytes += s.fetch_bytes;
        m.waiting_fetches += s.waiting_fetches;
        m.cache_hits += s.cache_hits;
        m.cache_misses += s.cache_misses;
        m.object_puts += s.object_puts;
        m.object_gets += s.object_gets;
        m.object_put_bytes += s.object_put_bytes;
        m.object_get_bytes += s.object_get_bytes;
        m.metadata_commits += s.metadata_commits;
        m.metadata_retries += s.metadata_retries;
        m.cpu_seconds += s.cpu_seconds;
        m.peak_rss_bytes = m.peak_rss_bytes.max(s.peak_rss_bytes);
        m.segment_fill_latency = add_histograms(&m.segment_fill_latency, &s.segment_fill_latency);
        m.segment_put_latency = add_histograms(&m.segment_put_latency, &s.segment_put_latency);
        m.commit_latency = add_histograms(&m.commit_latency, &s.commit_latency);
    }
    m
}
