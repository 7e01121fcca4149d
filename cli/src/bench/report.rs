//! What a benchmark reports: latency percentiles, the object-store bill at S3 prices, the
//! agent's CPU, memory and latency terms, and the table or JSON they are printed as.

use std::time::Duration;

use cairn_client::GetAgentStatusResponse;
use serde::Serialize;

use super::{Common, Kind};
use crate::codec::codec_name;

/// S3 Standard list prices (us-east-1) used for the bill: $ per 1,000 requests.
pub(super) const S3_PUT_PER_1000: f64 = 0.005;
pub(super) const S3_GET_PER_1000: f64 = 0.0004;
pub(super) const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
pub(super) const MIB: f64 = 1024.0 * 1024.0;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Percentiles {
    pub(super) p50_ms: f64,
    pub(super) p90_ms: f64,
    pub(super) p99_ms: f64,
    pub(super) p999_ms: f64,
    pub(super) max_ms: f64,
}

/// Percentiles of latencies given in microseconds.
pub(super) fn percentiles(mut micros: Vec<u64>) -> Percentiles {
    if micros.is_empty() {
        return Percentiles::default();
    }
    micros.sort_unstable();
    let at = |q: f64| {
        let i = ((micros.len() as f64 * q).ceil() as usize).clamp(1, micros.len()) - 1;
        micros[i] as f64 / 1000.0
    };
    Percentiles {
        p50_ms: at(0.50),
        p90_ms: at(0.90),
        p99_ms: at(0.99),
        p999_ms: at(0.999),
        max_ms: at(1.0),
    }
}

/// The object-store bill of a run.
#[derive(Debug, Clone, Default, Serialize)]
pub(super) struct Bill {
    pub(super) puts: u64,
    pub(super) gets: u64,
    pub(super) put_bytes: u64,
    pub(super) get_bytes: u64,
    pub(super) puts_per_gib_ingested: f64,
    pub(super) gets_per_gib_read: f64,
    pub(super) metadata_commits: u64,
    pub(super) metadata_txns_per_gib: f64,
    pub(super) metadata_retries: u64,
    pub(super) usd_per_tib_ingested: f64,
    pub(super) usd_per_tib_read: f64,
    pub(super) s3_put_usd_per_1000: f64,
    pub(super) s3_get_usd_per_1000: f64,
}

/// One benchmark's result.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    pub(super) bench: String,
    /// The producers' protocol (`grpc` or `kafka`).
    pub(super) protocol: Option<super::args::ProtocolArg>,
    pub(super) object_store: String,
    pub(super) metadata: String,
    pub(super) producers: usize,
    pub(super) partitions: u32,
    pub(super) record_size: usize,
    /// What the values held (`random` or `text`).
    pub(super) values: Option<super::args::ValuesArg>,
    pub(super) codec: Option<String>,
    pub(super) linger_ms: Option<u64>,
    pub(super) segment_max_bytes: Option<usize>,
    pub(super) seconds: f64,
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) records_per_sec: f64,
    pub(super) mib_per_sec: f64,
    pub(super) produce_latency: Option<Percentiles>,
    pub(super) e2e_latency: Option<Percentiles>,
    pub(super) read_records: Option<u64>,
    pub(super) read_mib_per_sec: Option<f64>,
    pub(super) bill: Bill,
    pub(super) agent_cpu_seconds: f64,
    pub(super) agent_cpu_seconds_per_gib: f64,
    pub(super) agent_mib_per_cpu_second: f64,
    /// The agent's peak resident memory since it started; `None` where its platform does
    /// not report it.
    pub(super) agent_peak_rss_bytes: Option<u64>,
    pub(super) raw_put_mib_per_sec: Option<f64>,
    pub(super) ingest_to_raw_put_ratio: Option<f64>,
    /// Where a produce's time goes at the agent during the run, next to the budget the
    /// produce p99 is held to.
    pub(super) latency_terms: Option<LatencyTerms>,
    /// Each agent's share when the run used several.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(super) agents: Vec<super::agents::AgentShare>,
}

/// The agent-side terms of produce latency over the run (p99s interpolated from the
/// agent's histograms, as Prometheus's `histogram_quantile` does) and the budget they add
/// up to: linger + segment PUT p99 + commit p99 + 15 ms.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyTerms {
    pub(super) linger_ms: f64,
    pub(super) segment_fill_p99_ms: Option<f64>,
    pub(super) segment_put_p99_ms: Option<f64>,
    pub(super) commit_p99_ms: Option<f64>,
    pub(super) budget_p99_ms: Option<f64>,
    /// The median commit, next to its p99 (the metadata store's own latency).
    pub(super) commit_p50_ms: Option<f64>,
}

/// The p99 in ms of a histogram's observations between two agent status readings.
fn run_p99_ms(
    before: Option<&cairn_client::LatencyHistogram>,
    after: Option<&cairn_client::LatencyHistogram>,
) -> Option<f64> {
    run_quantile_ms(before, after, 0.99)
}

/// The `q` quantile in ms of a histogram's observations between two status readings.
fn run_quantile_ms(
    before: Option<&cairn_client::LatencyHistogram>,
    after: Option<&cairn_client::LatencyHistogram>,
    q: f64,
) -> Option<f64> {
    let snap = |h: &cairn_client::LatencyHistogram| cairn_storage::LatencySnapshot {
        bounds_seconds: h.bounds_seconds.clone(),
        counts: h.counts.clone(),
    };
    let after = snap(after?);
    let run = match before {
        Some(b) => after.since(&snap(b)),
        None => after,
    };
    run.quantile(q).map(|s| s * 1000.0)
}

fn latency_terms(
    linger: Duration,
    before: &GetAgentStatusResponse,
    after: &GetAgentStatusResponse,
) -> LatencyTerms {
    let linger_ms = linger.as_secs_f64() * 1000.0;
    let segment_put_p99_ms = run_p99_ms(
        before.segment_put_latency.as_ref(),
        after.segment_put_latency.as_ref(),
    );
    let commit_p99_ms = run_p99_ms(
        before.commit_latency.as_ref(),
        after.commit_latency.as_ref(),
    );
    LatencyTerms {
        linger_ms,
        segment_fill_p99_ms: run_p99_ms(
            before.segment_fill_latency.as_ref(),
            after.segment_fill_latency.as_ref(),
        ),
        segment_put_p99_ms,
        commit_p99_ms,
        budget_p99_ms: segment_put_p99_ms
            .zip(commit_p99_ms)
            .map(|(put, commit)| linger_ms + put + commit + 15.0),
        commit_p50_ms: run_quantile_ms(
            before.commit_latency.as_ref(),
            after.commit_latency.as_ref(),
            0.5,
        ),
    }
}

/// The raw PUT baseline's result.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RawReport {
    pub(super) object_store: String,
    pub(super) object_size: usize,
    pub(super) concurrency: usize,
    pub(super) seconds: f64,
    pub(super) puts: u64,
    pub(super) puts_per_sec: f64,
    pub(super) mib_per_sec: f64,
    pub(super) put_latency: Percentiles,
}

/// The report of a run, from the agent's status before and after it.
#[allow(clippy::too_many_arguments)]
pub(super) fn report(
    c: &Common,
    kind: Kind,
    before: &GetAgentStatusResponse,
    after: &GetAgentStatusResponse,
    secs: f64,
    records: u64,
    bytes: u64,
    produce_latency: Percentiles,
    e2e_latency: Option<Percentiles>,
    read_records: Option<u64>,
    read_mib_per_sec: Option<f64>,
    raw: Option<RawReport>,
) -> Report {
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let gib_in = (bytes as f64 / GIB).max(1e-12);
    let get_bytes = d(before.object_get_bytes, after.object_get_bytes);
    let gib_read = read_records
        .map(|n| n as f64 * c.record_size as f64 / GIB)
        .unwrap_or(0.0);
    let puts = d(before.object_puts, after.object_puts);
    let gets = d(before.object_gets, after.object_gets);
    let commits = d(before.metadata_commits, after.metadata_commits);
    let puts_per_gib = puts as f64 / gib_in;
    let gets_per_gib = if gib_read > 0.0 {
        gets as f64 / gib_read
    } else {
        0.0
    };
    let cpu = (after.cpu_seconds - before.cpu_seconds).max(0.0);
    let mib_per_sec = bytes as f64 / MIB / secs;
    Report {
        bench: match kind {
            Kind::Produce => "produce",
            Kind::E2e => "e2e",
            Kind::Consume => "consume",
        }
        .into(),
        protocol: Some(c.protocol),
        object_store: after.object_store.clone(),
        metadata: after.metadata_backend.clone(),
        producers: c.producers,
        partitions: c.partitions,
        record_size: c.record_size,
        values: Some(c.values),
        codec: Some(codec_name(cairn_client::Codec::from(c.codec) as i32).to_string()),
        linger_ms: c.embedded.then_some(c.linger.as_millis() as u64),
        segment_max_bytes: c.embedded.then_some(c.segment_max_bytes),
        seconds: secs,
        records,
        bytes,
        records_per_sec: records as f64 / secs,
        mib_per_sec,
        produce_latency: Some(produce_latency),
        e2e_latency,
        read_records,
        read_mib_per_sec,
        bill: Bill {
            puts,
            gets,
            put_bytes: d(before.object_put_bytes, after.object_put_bytes),
            get_bytes,
            puts_per_gib_ingested: puts_per_gib,
            gets_per_gib_read: gets_per_gib,
            metadata_commits: commits,
            metadata_txns_per_gib: commits as f64 / gib_in,
            metadata_retries: d(before.metadata_retries, after.metadata_retries),
            usd_per_tib_ingested: puts_per_gib * 1024.0 * S3_PUT_PER_1000 / 1000.0,
            usd_per_tib_read: gets_per_gib * 1024.0 * S3_GET_PER_1000 / 1000.0,
            s3_put_usd_per_1000: S3_PUT_PER_1000,
            s3_get_usd_per_1000: S3_GET_PER_1000,
        },
        agent_cpu_seconds: cpu,
        agent_cpu_seconds_per_gib: cpu / gib_in,
        agent_mib_per_cpu_second: if cpu > 0.0 {
            bytes as f64 / MIB / cpu
        } else {
            0.0
        },
        agent_peak_rss_bytes: peak_rss(after),
        raw_put_mib_per_sec: raw.as_ref().map(|r| r.mib_per_sec),
        ingest_to_raw_put_ratio: raw.as_ref().map(|r| mib_per_sec / r.mib_per_sec.max(1e-9)),
        latency_terms: c.embedded.then(|| latency_terms(c.linger, before, after)),
        agents: Vec::new(),
    }
}

/// The agent's peak resident memory, `None` when its platform does not report it (0).
pub(super) fn peak_rss(status: &GetAgentStatusResponse) -> Option<u64> {
    (status.peak_rss_bytes > 0).then_some(status.peak_rss_bytes)
}

/// One line of latency percentiles.
pub(super) fn print_latency(what: &str, p: &Percentiles) {
    println!(
        "{what:<18} p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    );
}

/// The report as a table.
pub(super) fn print_report(r: &Report) {
    match r.protocol {
        Some(super::args::ProtocolArg::Kafka) => {
            println!("bench              {} (Kafka protocol)", r.bench)
        }
        _ => println!("bench              {}", r.bench),
    }
    println!(
        "object store       {} (metadata {})",
        r.object_store, r.metadata
    );
    println!(
        "workload           {} producers, {} partitions, {} B {} records{}{}",
        r.producers,
        r.partitions,
        r.record_size,
        match r.values {
            Some(super::args::ValuesArg::Text) => "text",
            _ => "random",
        },
        r.codec
            .as_deref()
            .map(|c| format!(", codec {c}"))
            .unwrap_or_default(),
        r.linger_ms
            .map(|l| format!(", linger {l} ms"))
            .unwrap_or_default()
    );
    println!(
        "produced           {} records in {:.1} s: {:.0} records/s, {:.2} MiB/s",
        r.records, r.seconds, r.records_per_sec, r.mib_per_sec
    );
    if let Some(p) = &r.produce_latency {
        print_latency("produce latency", p);
    }
    if let Some(t) = &r.latency_terms {
        let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1} ms"));
        println!(
            "agent terms        linger {:.0} ms (segments open p99 {}), segment PUT p99 {}, commit p99 {} (p50 {})",
            t.linger_ms,
            ms(t.segment_fill_p99_ms),
            ms(t.segment_put_p99_ms),
            ms(t.commit_p99_ms),
            ms(t.commit_p50_ms)
        );
        if let (Some(budget), Some(p)) = (t.budget_p99_ms, &r.produce_latency) {
            println!(
                "p99 budget         linger + PUT p99 + commit p99 + 15 ms = {budget:.1} ms; produce p99 {:.1} ms is {}",
                p.p99_ms,
                if p.p99_ms <= budget {
                    "within it"
                } else {
                    "over it"
                }
            );
        }
    }
    if let Some(p) = &r.e2e_latency {
        print_latency("end-to-end latency", p);
    }
    if let (Some(n), Some(m)) = (r.read_records, r.read_mib_per_sec) {
        println!("read back          {n} records at {m:.2} MiB/s");
    }
    let b = &r.bill;
    println!(
        "object store bill  {} PUTs ({:.1} per GiB in), {} GETs ({:.1} per GiB read)",
        b.puts, b.puts_per_gib_ingested, b.gets, b.gets_per_gib_read
    );
    println!(
        "                   ${:.4}/TiB ingested, ${:.4}/TiB read (S3 Standard: ${}/1000 PUT, ${}/1000 GET)",
        b.usd_per_tib_ingested, b.usd_per_tib_read, b.s3_put_usd_per_1000, b.s3_get_usd_per_1000
    );
    println!(
        "metadata           {} commits ({:.1} per GiB), {} retries",
        b.metadata_commits, b.metadata_txns_per_gib, b.metadata_retries
    );
    println!(
        "agent cpu          {:.2} s ({:.1} s per GiB, {:.1} MiB per CPU-second)",
        r.agent_cpu_seconds, r.agent_cpu_seconds_per_gib, r.agent_mib_per_cpu_second
    );
    match r.agent_peak_rss_bytes {
        Some(b) => println!("agent peak RSS     {:.1} MiB", b as f64 / MIB),
        None => println!("agent peak RSS     - (not reported on this platform)"),
    }
    if let (Some(raw), Some(ratio)) = (r.raw_put_mib_per_sec, r.ingest_to_raw_put_ratio) {
        println!(
            "raw PUT baseline   {raw:.1} MiB/s; agent ingest is {:.0}% of it",
            ratio * 100.0
        );
    }
    if !r.agents.is_empty() {
        println!(
            "per agent          {} agents (cpu and peak RSS above are their sums and maximum)",
            r.agents.len()
        );
        for a in &r.agents {
            println!(
                "  {:<24} zone {:<8} produce {:>8.2} MiB/s  fetch {:>8.2} MiB/s  cpu {:.2} s",
                a.id,
                if a.zone.is_empty() { "-" } else { &a.zone },
                a.produce_mib_per_sec,
                a.fetch_mib_per_sec,
                a.cpu_seconds
            );
        }
    }
}
