//! The agent's Prometheus metrics (one registry per agent, `prometheus-client`) and the
//! HTTP endpoint that serves them with `/healthz` and `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use cairn_metadata::Metadata;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use cairn_storage::{Latency, StoreCounters};

/// Latency buckets in seconds: 0.5 ms to ~33 s, doubling.
pub(crate) use cairn_storage::store::latency_buckets;

/// Everything an agent counts.
#[derive(Debug)]
pub struct AgentMetrics {
    registry: Registry,
    started: Instant,
    pub(crate) produce_requests: Counter,
    pub(crate) produce_records: Counter,
    pub(crate) produce_bytes: Counter,
    pub(crate) produce_seconds: Histogram,
    pub(crate) produce_reordered: Counter,
    pub(crate) fetch_requests: Counter,
    pub(crate) fetch_bytes: Counter,
    pub(crate) fetch_seconds: Histogram,
    pub(crate) segment_bytes: Histogram,
    pub(crate) segment_fill_seconds: Latency,
    pub(crate) segment_put_seconds: Latency,
    pub(crate) segments_inflight: Gauge,
    pub(crate) commit_seconds: Latency,
    pub(crate) commits: Counter,
    metadata_retries: Counter,
    metadata_retries_seen: AtomicU64,
    pub(crate) cache_hits: Counter,
    pub(crate) cache_misses: Counter,
    zone: String,
    zone_reads: Family<Vec<(String, String)>, Counter>,
    pub(crate) peer_served_bytes: Counter,
    /// Calls held back by a quota or a per-connection limit, by `limit`.
    pub(crate) throttled: crate::quota::Throttles,
    pub(crate) store: StoreCounters,
}

impl AgentMetrics {
    /// The counter of zone-cache reads from `source`.
    pub(crate) fn zone_reads(&self, source: crate::zone::Source) -> Counter {
        self.zone_reads
            .get_or_create(&vec![
                ("source".to_string(), source.label().to_string()),
                ("zone".to_string(), self.zone.clone()),
            ])
            .clone()
    }

    pub(crate) fn new(store: StoreCounters, zone: &str) -> Self {
        let mut registry = Registry::with_prefix("cairn");
        let m = AgentMetrics {
            registry: Registry::default(),
            started: Instant::now(),
            produce_requests: Counter::default(),
            produce_records: Counter::default(),
            produce_bytes: Counter::default(),
            produce_seconds: Histogram::new(latency_buckets()),
            produce_reordered: Counter::default(),
            fetch_requests: Counter::default(),
            fetch_bytes: Counter::default(),
            fetch_seconds: Histogram::new(latency_buckets()),
            segment_bytes: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(1024.0, 2.0, 18),
            ),
            segment_fill_seconds: Latency::default(),
            segment_put_seconds: Latency::default(),
            segments_inflight: Gauge::default(),
            commit_seconds: Latency::default(),
            commits: Counter::default(),
            metadata_retries: Counter::default(),
            metadata_retries_seen: AtomicU64::new(0),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            zone: zone.to_string(),
            zone_reads: Family::default(),
            peer_served_bytes: Counter::default(),
            throttled: Default::default(),
            store,
        };
        registry.register(
            "throttled",
            "Calls held back (RESOURCE_EXHAUSTED, THROTTLED) by a quota or a per-connection limit, by limit",
            m.throttled.clone(),
        );
        let r = &mut registry;
        r.register(
            "produce_requests",
            "Produce requests answered",
            m.produce_requests.clone(),
        );
        r.register(
            "produce_records",
            "Records acknowledged",
            m.produce_records.clone(),
        );
        r.register_with_unit(
            "produce",
            "Record bytes acknowledged",
            Unit::Bytes,
            m.produce_bytes.clone(),
        );
        r.register_with_unit(
            "produce_latency",
            "Produce request latency",
            Unit::Seconds,
            m.produce_seconds.clone(),
        );
        r.register(
            "produce_reordered",
            "Produce requests that overtook an earlier request of their producer and waited for it",
            m.produce_reordered.clone(),
        );
        r.register(
            "fetch_requests",
            "Fetch requests answered",
            m.fetch_requests.clone(),
        );
        r.register_with_unit(
            "fetch",
            "Stored bytes returned by fetches",
            Unit::Bytes,
            m.fetch_bytes.clone(),
        );
        r.register_with_unit(
            "fetch_latency",
            "Fetch latency (long-polls included)",
            Unit::Seconds,
            m.fetch_seconds.clone(),
        );
        r.register_with_unit(
            "segment_size",
            "Size of sealed segment objects",
            Unit::Bytes,
            m.segment_bytes.clone(),
        );
        r.register_with_unit(
            "segment_fill",
            "Time from a segment's first batch to its seal",
            Unit::Seconds,
            m.segment_fill_seconds.histogram(),
        );
        r.register_with_unit(
            "segment_put",
            "Time to upload a sealed segment (one PUT or a whole multipart upload)",
            Unit::Seconds,
            m.segment_put_seconds.histogram(),
        );
        r.register(
            "segments_inflight",
            "Sealed segments uploading or committing",
            m.segments_inflight.clone(),
        );
        r.register_with_unit(
            "metadata_commit",
            "Segment commit transaction latency",
            Unit::Seconds,
            m.commit_seconds.histogram(),
        );
        r.register("metadata_commits", "Segment commits", m.commits.clone());
        r.register(
            "metadata_retries",
            "Metadata transactions retried after conflicts or faults",
            m.metadata_retries.clone(),
        );
        r.register("cache_hits", "Fetch cache hits", m.cache_hits.clone());
        r.register(
            "cache_misses",
            "Fetch cache misses (object GETs)",
            m.cache_misses.clone(),
        );
        r.register(
            "zone_cache_reads",
            "Chunk pieces read through the zone read cache, by where they came from: \
             local_hit (this agent's chunk cache), local_miss (a GET by this agent, the \
             chunk's owner), peer (the owning agent answered), peer_failed (the owner did not \
             answer in time or answered badly; read here instead)",
            m.zone_reads.clone(),
        );
        r.register_with_unit(
            "zone_cache_served",
            "Bytes this agent served to other agents of its zone from its chunk cache",
            Unit::Bytes,
            m.peer_served_bytes.clone(),
        );
        r.register(
            "object_puts",
            "Object store PUT requests (multipart parts count)",
            m.store.puts.clone(),
        );
        r.register(
            "object_gets",
            "Object store GET requests",
            m.store.gets.clone(),
        );
        r.register(
            "object_deletes",
            "Object store DELETE requests",
            m.store.deletes.clone(),
        );
        r.register(
            "object_lists",
            "Object store LIST requests",
            m.store.lists.clone(),
        );
        r.register_with_unit(
            "object_put",
            "Bytes uploaded",
            Unit::Bytes,
            m.store.put_bytes.clone(),
        );
        r.register_with_unit(
            "object_get",
            "Bytes downloaded",
            Unit::Bytes,
            m.store.get_bytes.clone(),
        );
        r.register_with_unit(
            "object_put_latency",
            "Object PUT latency",
            Unit::Seconds,
            m.store.put_seconds.histogram(),
        );
        r.register_with_unit(
            "object_get_latency",
            "Object GET latency",
            Unit::Seconds,
            m.store.get_seconds.histogram(),
        );
        AgentMetrics { registry, ..m }
    }

    /// Brings mirrored counters up to date (the metadata layer counts its own retries).
    pub(crate) fn sync(&self, metadata: &Metadata) {
        let now = metadata.retries();
        let seen = self.metadata_retries_seen.swap(now, Ordering::Relaxed);
        if now > seen {
            self.metadata_retries.inc_by(now - seen);
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Seconds since the agent started.
    pub fn uptime_secs(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Metadata transactions retried so far.
    pub fn metadata_retries(&self) -> u64 {
        self.metadata_retries.get()
    }
}

/// User + system CPU seconds of this process, from `/proc/self/stat` (0 elsewhere).
pub(crate) fn process_cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which may contain spaces) start after ") ".
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Linux reports in clock ticks of USER_HZ, which is 100 on every mainstream platform.
    (ticks(11) + ticks(12)) / 100.0
}

/// Peak resident memory of this process in bytes (`VmHWM`), 0 where the platform does not
/// say.
pub(crate) fn process_peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}

/// What the HTTP endpoint needs.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) metrics: Arc<AgentMetrics>,
    pub(crate) metadata: Metadata,
    pub(crate) stopping: Arc<AtomicBool>,
    /// The instrumented object store, for the readiness probe.
    pub(crate) store: Arc<dyn object_store::ObjectStore>,
    /// This agent's probe object.
    pub(crate) probe: object_store::path::Path,
    /// When readiness last wrote the probe (`StoreHealth::now_ms`).
    pub(crate) last_probe_ms: Arc<AtomicU64>,
}

/// Readiness writes the probe when no request succeeded for this long (an idle agent), or
/// the latest one failed.
const PROBE_WHEN_IDLE_MS: u64 = 30_000;
/// At most one probe this often.
const PROBE_EVERY_MS: u64 = 5_000;
/// A probe slower than this counts as failed.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Writes the probe object (a few bytes, overwritten each time).
pub(crate) async fn probe(
    store: &dyn object_store::ObjectStore,
    key: &object_store::path::Path,
) -> Result<(), String> {
    use object_store::ObjectStoreExt;
    let put = store.put(key, object_store::PutPayload::from_static(b"cairn probe\n"));
    match tokio::time::timeout(PROBE_TIMEOUT, put).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
    }
}

fn now_ms() -> u64 {
    cairn_storage::StoreHealth::now_ms()
}

async fn metrics(State(h): State<Http>) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    h.metrics.sync(&h.metadata);
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
        h.metrics.render(),
    )
}

async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready when not shutting down, the metadata store answers and has not reported damage,
/// and the object store's latest request succeeded; an agent idle for 30 s (or whose latest
/// request failed) writes its probe object first, at most every 5 s, so an outage or a full
/// disk shows here even without traffic.
async fn readyz(State(h): State<Http>) -> (StatusCode, String) {
    let unavailable = |m: String| (StatusCode::SERVICE_UNAVAILABLE, m);
    if h.stopping.load(Ordering::SeqCst) {
        return unavailable("shutting down\n".into());
    }
    if let Some(e) = h.metadata.damaged() {
        return unavailable(format!("metadata store damaged, taking no writes: {e}\n"));
    }
    if let Err(e) = h.metadata.topic_by_id(0).await {
        return unavailable(format!("metadata store unavailable: {e}\n"));
    }
    let health = &h.metrics.store.health;
    let now = now_ms();
    let idle = now.saturating_sub(health.last_ok_ms()) > PROBE_WHEN_IDLE_MS;
    let last_probe = h.last_probe_ms.load(Ordering::Relaxed);
    if (idle || health.failing().is_some())
        && (last_probe == 0 || now.saturating_sub(last_probe) >= PROBE_EVERY_MS)
    {
        h.last_probe_ms.store(now, Ordering::Relaxed);
        // The instrumented store records an answer in `health`; no answer in time is a
        // failure of its own.
        if let Err(e) = probe(h.store.as_ref(), &h.probe).await
            && health.failing().is_none()
        {
            return unavailable(format!("object store failing: PUT {}: {e}\n", h.probe));
        }
    }
    match health.failing() {
        Some(e) => unavailable(format!("object store failing: {e}\n")),
        None => (StatusCode::OK, "ready\n".into()),
    }
}

/// Serves `/metrics`, `/healthz` and `/readyz` on `listener` (over TLS with `tls`) until
/// `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<crate::tls::Reloading>,
    state: Http,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) {
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state);
    let served = match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(tls) => match tls.http_listener(listener) {
            Ok(l) => axum::serve(l, app).with_graceful_shutdown(shutdown).await,
            Err(e) => Err(e),
        },
    };
    if let Err(e) = served {
        tracing::warn!(?addr, error = %e, "metrics endpoint stopped");
    }
}
