//! `cairn bench`: produce, end-to-end, consume and raw-PUT benchmarks with the object-store
//! bill, in the manner of Kafka's perf tools and the OpenMessaging Benchmark.

use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{
    Admin, Consumer, ConsumerConfig, GetAgentStatusResponse, Offset, Producer, ProducerConfig,
    ProducerRecord, TopicOptions,
};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};
use object_store::{ObjectStoreExt, PutPayload};
use serde::Serialize;
use tokio::io::AsyncBufReadExt;

use crate::ConnectArgs;
use crate::codec::{CodecArg, codec_name};
use crate::size::parse_size;

/// S3 Standard list prices (us-east-1) used for the bill: $ per 1,000 requests.
const S3_PUT_PER_1000: f64 = 0.005;
const S3_GET_PER_1000: f64 = 0.0004;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const MIB: f64 = 1024.0 * 1024.0;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Producers at full speed (or a target rate): records/s, MiB/s, produce latency, bill.
    #[command(after_help = "\
Examples:
  cairn bench produce --embedded --duration 30s --record-size 1KiB --baseline
  AWS_ENDPOINT_URL=http://127.0.0.1:4566 cairn bench produce --embedded --object-store s3://cairn/bench
  cairn bench produce --embedded --codec lz4 --record-size 4KiB
  cairn bench produce --endpoint http://agent:7170 --producers 8 --rate 50000 --json")]
    Produce(Common),
    /// Producers and a consumer together: end-to-end latency from send to receipt.
    E2e(Common),
    /// Catch-up reads: produce for --duration, then read it all back from offset 0; or, with
    /// --topic, read an existing topic from --from.
    Consume(Common),
    /// The object store's own PUT throughput and latency for segment-sized objects: the
    /// baseline an agent is compared against.
    RawPut(RawPutArgs),
}

/// Flags shared by the agent benchmarks.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Common {
    /// Start an agent for the run (a child `cairn agent` process) instead of using --endpoint.
    #[arg(long)]
    embedded: bool,
    /// With --embedded: where the agent stores segments (default: a temporary directory).
    #[arg(long, value_name = "URL")]
    object_store: Option<String>,
    /// With --embedded: the agent's linger.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "100ms")]
    linger: Duration,
    /// With --embedded: the agent's segment size.
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    segment_max_bytes: usize,
    /// How long to produce.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Value size of each record.
    #[arg(long, value_parser = parse_size, default_value = "1KiB")]
    record_size: usize,
    /// How the producers compress each batch (values are random bytes, so zstd and lz4
    /// cost CPU without shrinking them).
    #[arg(long, value_enum, default_value = "zstd", conflicts_with = "topic")]
    codec: CodecArg,
    /// Concurrent producers (each with its own connection).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 8)]
    partitions: u32,
    /// Target records/s over all producers; 0 sends as fast as the producers can.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Also measure the raw PUT baseline of the same store first, and report the ratio
    /// (needs --embedded).
    #[arg(long)]
    baseline: bool,
    /// Print the result as JSON (for scripts) instead of a table.
    #[arg(long)]
    json: bool,
    /// `consume` only: read this existing topic instead of producing one first.
    #[arg(long)]
    topic: Option<String>,
    /// `consume --topic` only: the offset to start at in every partition.
    #[arg(long, default_value_t = 0, requires = "topic")]
    from: i64,
    /// Keep the benchmark topic (it is printed) instead of deleting it, e.g. to compact it
    /// and read it again with `cairn bench consume --topic`.
    #[arg(long, conflicts_with = "topic")]
    keep: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// Flags of `cairn bench raw-put`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct RawPutArgs {
    /// The store (default: a temporary directory). S3 settings come from AWS_*.
    #[arg(long, value_name = "URL")]
    object_store: Option<String>,
    /// Object size (the agent's segment size).
    #[arg(long, value_parser = parse_size, default_value = "4MiB")]
    object_size: usize,
    /// PUTs in flight (the agent's max_inflight_segments).
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// How long to run.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    duration: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Percentiles {
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

fn percentiles(mut micros: Vec<u64>) -> Percentiles {
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
pub(crate) struct Bill {
    puts: u64,
    gets: u64,
    put_bytes: u64,
    get_bytes: u64,
    puts_per_gib_ingested: f64,
    gets_per_gib_read: f64,
    metadata_commits: u64,
    metadata_txns_per_gib: f64,
    metadata_retries: u64,
    usd_per_tib_ingested: f64,
    usd_per_tib_read: f64,
    s3_put_usd_per_1000: f64,
    s3_get_usd_per_1000: f64,
}

/// One benchmark's result.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Report {
    bench: String,
    object_store: String,
    metadata: String,
    producers: usize,
    partitions: u32,
    record_size: usize,
    codec: Option<String>,
    linger_ms: Option<u64>,
    segment_max_bytes: Option<usize>,
    seconds: f64,
    records: u64,
    bytes: u64,
    records_per_sec: f64,
    mib_per_sec: f64,
    produce_latency: Option<Percentiles>,
    e2e_latency: Option<Percentiles>,
    read_records: Option<u64>,
    read_mib_per_sec: Option<f64>,
    bill: Bill,
    agent_cpu_seconds: f64,
    agent_cpu_seconds_per_gib: f64,
    agent_mib_per_cpu_second: f64,
    /// The agent's peak resident memory since it started; `None` where its platform does
    /// not report it.
    agent_peak_rss_bytes: Option<u64>,
    raw_put_mib_per_sec: Option<f64>,
    ingest_to_raw_put_ratio: Option<f64>,
    /// Where a produce's time goes at the agent during the run, next to the budget the
    /// produce p99 is held to.
    latency_terms: Option<LatencyTerms>,
}

/// The agent-side terms of produce latency over the run (p99s interpolated from the
/// agent's histograms, as Prometheus's `histogram_quantile` does) and the budget they add
/// up to: linger + segment PUT p99 + commit p99 + 15 ms.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LatencyTerms {
    linger_ms: f64,
    segment_fill_p99_ms: Option<f64>,
    segment_put_p99_ms: Option<f64>,
    commit_p99_ms: Option<f64>,
    budget_p99_ms: Option<f64>,
}

/// The p99 in ms of a histogram's observations between two agent status readings.
fn run_p99_ms(
    before: Option<&cairn_client::LatencyHistogram>,
    after: Option<&cairn_client::LatencyHistogram>,
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
    run.quantile(0.99).map(|s| s * 1000.0)
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
    }
}

/// A `cairn agent` child process for the run.
struct Embedded {
    child: tokio::process::Child,
    endpoint: String,
    store_url: String,
    _dir: tempfile::TempDir,
}

impl Embedded {
    async fn start(c: &Common) -> anyhow::Result<Embedded> {
        let dir = tempfile::Builder::new()
            .prefix("cairn-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let store_url = match &c.object_store {
            Some(u) => u.clone(),
            None => format!("file://{}", dir.path().join("objects").display()),
        };
        let exe = std::env::current_exe().context("cannot find the cairn binary")?;
        let mut child = tokio::process::Command::new(exe)
            .args([
                "agent",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ])
            .args(["--object-store", &store_url])
            .arg("--metadata")
            .arg(format!(
                "sqlite:{}",
                dir.path().join("meta.sqlite").display()
            ))
            .args([
                "--linger",
                &humantime::format_duration(c.linger).to_string(),
            ])
            .args(["--segment-max-bytes", &c.segment_max_bytes.to_string()])
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the embedded agent")?;
        let stdout = child.stdout.take().context("agent has no stdout")?;
        let mut line = String::new();
        tokio::io::BufReader::new(stdout)
            .read_line(&mut line)
            .await
            .context("reading the agent's first line")?;
        let Some(endpoint) = line.trim().strip_prefix("cairn agent listening on ") else {
            bail!(
                "the embedded agent did not start (it printed `{}`)",
                line.trim()
            );
        };
        Ok(Embedded {
            child,
            endpoint: endpoint.to_string(),
            store_url,
            _dir: dir,
        })
    }

    async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = tokio::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// A progress bar over the run's duration (drawn only on a terminal).
fn progress(duration: Duration, json: bool, what: &str) -> ProgressBar {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(duration.as_millis() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Incompressible bytes to slice record values from (zstd would shrink repeated values).
fn random_pool() -> Bytes {
    use rand::{RngCore, SeedableRng};
    let mut buf = vec![0u8; 8 << 20];
    rand::rngs::StdRng::seed_from_u64(42).fill_bytes(&mut buf);
    Bytes::from(buf)
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::RawPut(a) => {
            let dir = tempfile::tempdir()?;
            let url = a
                .object_store
                .clone()
                .unwrap_or_else(|| format!("file://{}", dir.path().join("raw").display()));
            let (report, lat) =
                raw_put(&url, a.object_size, a.concurrency, a.duration, a.json).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("raw PUT    {url}");
                println!(
                    "objects    {} x {} bytes, {} in flight",
                    report.puts, a.object_size, a.concurrency
                );
                println!(
                    "throughput {:.1} MiB/s, {:.1} PUT/s",
                    report.mib_per_sec, report.puts_per_sec
                );
                print_latency("PUT latency", &lat);
            }
            Ok(())
        }
        BenchCommand::Produce(c) => agent_bench(c, Kind::Produce).await,
        BenchCommand::E2e(c) => agent_bench(c, Kind::E2e).await,
        BenchCommand::Consume(c) => agent_bench(c, Kind::Consume).await,
    }
}

/// The raw PUT baseline's result.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct RawReport {
    object_store: String,
    object_size: usize,
    concurrency: usize,
    seconds: f64,
    puts: u64,
    puts_per_sec: f64,
    mib_per_sec: f64,
    put_latency: Percentiles,
}

async fn raw_put(
    url: &str,
    size: usize,
    concurrency: usize,
    duration: Duration,
    quiet: bool,
) -> anyhow::Result<(RawReport, Percentiles)> {
    if size == 0 || concurrency == 0 {
        bail!("object size and concurrency must be at least 1");
    }
    let store = cairn_storage::open_object_store(url, &[])?;
    let pool = random_pool();
    let payload = pool.slice(0..size.min(pool.len()));
    let bar = progress(duration, quiet, "raw-put");
    let started = Instant::now();
    let deadline = started + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (store, payload, next) = (store.clone(), payload.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut keys = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = object_store::path::Path::from(format!("bench-raw/{n:08}"));
                let t = Instant::now();
                store
                    .put(&key, PutPayload::from_bytes(payload.clone()))
                    .await
                    .with_context(|| format!("PUT {key}"))?;
                lat.push(t.elapsed().as_micros() as u64);
                keys.push(key);
            }
            Ok::<_, anyhow::Error>((lat, keys))
        }));
    }
    let ticker = {
        let bar = bar.clone();
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!("{} PUTs", next.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut all = Vec::new();
    let mut keys = Vec::new();
    for t in tasks {
        let (lat, k) = t.await??;
        all.extend(lat);
        keys.extend(k);
    }
    let secs = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    for k in &keys {
        let _ = store.delete(k).await;
    }
    let puts = all.len() as u64;
    let lat = percentiles(all);
    Ok((
        RawReport {
            object_store: url.to_string(),
            object_size: size,
            concurrency,
            seconds: secs,
            puts,
            puts_per_sec: puts as f64 / secs,
            mib_per_sec: puts as f64 * size as f64 / MIB / secs,
            put_latency: lat.clone(),
        },
        lat,
    ))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Produce,
    E2e,
    Consume,
}

async fn agent_bench(c: Common, kind: Kind) -> anyhow::Result<()> {
    if c.producers == 0 || c.partitions == 0 || c.record_size < 8 {
        bail!("--producers and --partitions must be at least 1, --record-size at least 8 bytes");
    }
    if c.baseline && !c.embedded {
        bail!("--baseline needs --embedded (it measures the embedded agent's store)");
    }
    let embedded = if c.embedded {
        Some(Embedded::start(&c).await?)
    } else {
        None
    };
    let endpoint = match &embedded {
        Some(e) => e.endpoint.clone(),
        None if c.connect.endpoint.contains("://") => c.connect.endpoint.clone(),
        None => format!("http://{}", c.connect.endpoint),
    };
    let result = run_against(
        &c,
        kind,
        &endpoint,
        embedded.as_ref().map(|e| e.store_url.clone()),
    )
    .await;
    if let Some(e) = embedded {
        e.stop().await;
    }
    let report = result?;
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(())
}

async fn run_against(
    c: &Common,
    kind: Kind,
    endpoint: &str,
    store_url: Option<String>,
) -> anyhow::Result<Report> {
    let raw = match (&store_url, c.baseline) {
        (Some(url), true) => Some(
            raw_put(
                url,
                c.segment_max_bytes,
                8,
                c.duration.min(Duration::from_secs(5)),
                c.json,
            )
            .await?
            .0,
        ),
        _ => None,
    };
    let channel = cairn_client::connect(endpoint).await?;
    let admin = Admin::new(channel.clone());
    if let Some(existing) = &c.topic {
        if kind != Kind::Consume {
            bail!("--topic is for `cairn bench consume` (produce benches make their own topic)");
        }
        return read_existing(c, &admin, channel, existing).await;
    }
    let topic = format!("bench-{}", std::process::id());
    admin
        .create_topic(&topic, c.partitions, TopicOptions::default())
        .await?;
    let before = admin.agent_status().await?;
    let pool = random_pool();
    let epoch = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));

    // e2e: a consumer of every partition from the end, started before the producers.
    let consumer = if kind == Kind::E2e {
        let mut consumer = Consumer::new(channel.clone(), ConsumerConfig::default());
        consumer.assign_all(&topic, Offset::End).await?;
        Some(consumer)
    } else {
        None
    };
    let deadline = epoch + c.duration;
    let e2e = consumer.map(|mut consumer| {
        tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let records = consumer.poll(Duration::from_millis(200)).await?;
                let now = epoch.elapsed().as_micros() as u64;
                for r in &records {
                    if let Some(head) = r.value.get(..8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(head);
                        lat.push(now.saturating_sub(u64::from_le_bytes(b)));
                    }
                }
                if records.is_empty() && Instant::now() > deadline + Duration::from_secs(2) {
                    return Ok::<_, anyhow::Error>(lat);
                }
            }
        })
    });

    let bar = progress(
        c.duration,
        c.json,
        match kind {
            Kind::Produce => "produce",
            Kind::E2e => "e2e",
            Kind::Consume => "produce (then read)",
        },
    );
    let ticker = {
        let (bar, acked) = (bar.clone(), acked.clone());
        tokio::spawn(async move {
            loop {
                let secs = epoch.elapsed().as_secs_f64().max(1e-3);
                bar.set_position(epoch.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{:.0} records/s",
                    acked.load(Ordering::Relaxed) as f64 / secs
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for p in 0..c.producers {
        let (topic, pool, acked) = (topic.clone(), pool.clone(), acked.clone());
        let channel = cairn_client::connect(endpoint).await?;
        let size = c.record_size;
        let per_producer_rate = c.rate as f64 / c.producers as f64;
        let config = ProducerConfig {
            codec: c.codec.into(),
            ..ProducerConfig::default()
        };
        tasks.push(tokio::spawn(async move {
            let producer = Producer::new(channel, config);
            // Deliveries are awaited in send order by a collector task: a producer settles
            // them nearly in that order, and a large FuturesUnordered would cost the bench
            // more CPU than the producer itself. A delivery that settles before an earlier
            // one is counted when the earlier one settles (latency over-, never
            // under-stated).
            let (settle_tx, mut settle_rx) =
                tokio::sync::mpsc::unbounded_channel::<(Instant, cairn_client::Delivery)>();
            let collector = {
                let acked = acked.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while let Some((start, delivery)) = settle_rx.recv().await {
                        delivery.await?;
                        lat.push(start.elapsed().as_micros() as u64);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, anyhow::Error>(lat)
                })
            };
            let mut sent = 0u64;
            let mut offset = (p * 7919) % (pool.len() - size);
            while Instant::now() < deadline {
                if per_producer_rate > 0.0 {
                    let due = epoch + Duration::from_secs_f64(sent as f64 / per_producer_rate);
                    tokio::time::sleep_until(due.into()).await;
                }
                let mut value = pool.slice(offset..offset + size).to_vec();
                offset = (offset + 4099) % (pool.len() - size);
                let t = epoch.elapsed().as_micros() as u64;
                value[..8].copy_from_slice(&t.to_le_bytes());
                let delivery = producer
                    .send(ProducerRecord::new(topic.clone(), value))
                    .await?;
                // No cap of our own on records in flight: `send` waits while the
                // producer's buffer is full, as an application's would.
                if settle_tx.send((Instant::now(), delivery)).is_err() {
                    break; // the collector stopped on a failed delivery
                }
                sent += 1;
            }
            drop(settle_tx);
            let lat = collector.await??;
            producer.close().await?;
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let produce_secs = epoch.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    let records = lat.len() as u64;
    let bytes = records * c.record_size as u64;
    let e2e_lat = match e2e {
        Some(t) => Some(percentiles(t.await??)),
        None => None,
    };

    let (read_records, read_mib) = if kind == Kind::Consume {
        let bar = progress(Duration::from_secs(records.max(1)), c.json, "read");
        let mut consumer = Consumer::new(channel.clone(), ConsumerConfig::default());
        consumer.assign_all(&topic, Offset::Beginning).await?;
        let started = Instant::now();
        let mut n = 0u64;
        loop {
            let got = consumer.poll(Duration::ZERO).await?;
            n += got.len() as u64;
            bar.set_position(n);
            if got.is_empty() && consumer.caught_up() {
                break;
            }
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        (Some(n), Some(n as f64 * c.record_size as f64 / MIB / secs))
    } else {
        (None, None)
    };
    let after = admin.agent_status().await?;
    if c.keep {
        eprintln!("kept topic {topic}");
    } else {
        admin.delete_topic(&topic).await?;
    }
    Ok(report(
        c,
        kind,
        &before,
        &after,
        produce_secs,
        records,
        bytes,
        percentiles(lat),
        e2e_lat,
        read_records,
        read_mib,
        raw,
    ))
}

/// `bench consume --topic T --from N`: catch-up read throughput of stored data.
async fn read_existing(
    c: &Common,
    admin: &Admin,
    channel: cairn_client::Channel,
    topic: &str,
) -> anyhow::Result<Report> {
    if c.from < 0 {
        bail!("--from must be 0 or more, got {}", c.from);
    }
    let before = admin.agent_status().await?;
    let described = admin.describe_topic(topic).await?;
    let partitions = described.partitions.len() as u32;
    let mut consumer = Consumer::new(channel, ConsumerConfig::default());
    for p in &described.partitions {
        let from = c.from.clamp(p.start_offset, p.high_watermark);
        consumer
            .assign(topic, p.partition, Offset::At(from))
            .await?;
    }
    let total: i64 = described
        .partitions
        .iter()
        .map(|p| p.high_watermark - c.from.clamp(p.start_offset, p.high_watermark))
        .sum();
    let bar = progress(Duration::from_millis(total.max(1) as u64), c.json, "read");
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        let got = consumer.poll(Duration::ZERO).await?;
        n += got.len() as u64;
        bytes += got
            .iter()
            .map(|r| (r.key.len() + r.value.len()) as u64)
            .sum::<u64>();
        bar.set_position(n);
        if got.is_empty() && consumer.caught_up() {
            break;
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let after = admin.agent_status().await?;
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let gets = d(before.object_gets, after.object_gets);
    let gib = (bytes as f64 / GIB).max(1e-12);
    Ok(Report {
        bench: "consume".into(),
        object_store: after.object_store.clone(),
        metadata: after.metadata_backend.clone(),
        partitions,
        seconds: secs,
        read_records: Some(n),
        read_mib_per_sec: Some(bytes as f64 / MIB / secs),
        bill: Bill {
            gets,
            get_bytes: d(before.object_get_bytes, after.object_get_bytes),
            gets_per_gib_read: gets as f64 / gib,
            usd_per_tib_read: gets as f64 / gib * 1024.0 * S3_GET_PER_1000 / 1000.0,
            s3_put_usd_per_1000: S3_PUT_PER_1000,
            s3_get_usd_per_1000: S3_GET_PER_1000,
            ..Bill::default()
        },
        agent_cpu_seconds: (after.cpu_seconds - before.cpu_seconds).max(0.0),
        agent_peak_rss_bytes: peak_rss(&after),
        ..Report::default()
    })
}

#[allow(clippy::too_many_arguments)]
fn report(
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
        object_store: after.object_store.clone(),
        metadata: after.metadata_backend.clone(),
        producers: c.producers,
        partitions: c.partitions,
        record_size: c.record_size,
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
    }
}

/// The agent's peak resident memory, `None` when its platform does not report it (0).
fn peak_rss(status: &GetAgentStatusResponse) -> Option<u64> {
    (status.peak_rss_bytes > 0).then_some(status.peak_rss_bytes)
}

fn print_latency(what: &str, p: &Percentiles) {
    println!(
        "{what:<18} p50 {:.1} ms  p90 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms
    );
}

fn print_report(r: &Report) {
    println!("bench              {}", r.bench);
    println!(
        "object store       {} (metadata {})",
        r.object_store, r.metadata
    );
    println!(
        "workload           {} producers, {} partitions, {} B records{}{}",
        r.producers,
        r.partitions,
        r.record_size,
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
            "agent terms        linger {:.0} ms (segments open p99 {}), segment PUT p99 {}, commit p99 {}",
            t.linger_ms,
            ms(t.segment_fill_p99_ms),
            ms(t.segment_put_p99_ms),
            ms(t.commit_p99_ms)
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
}
