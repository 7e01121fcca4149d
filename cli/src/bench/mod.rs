//! `cairn bench`: produce, end-to-end, consume and raw-PUT benchmarks with the object-store
//! bill, in the manner of Kafka's perf tools and the OpenMessaging Benchmark.
//!
//! The parts: `args` (the flags), `embedded` (the child agent of `--embedded`),
//! `workload` (the producers, consumers and raw PUTs that make the load) and `report`
//! (percentiles, the bill, the agent's latency terms, and printing).

mod agents;
mod args;
mod compact;
mod embedded;
mod kafka;
mod report;
mod workload;

use anyhow::bail;
use clap::Subcommand;

pub(crate) use args::{Common, CompactArgs, RawPutArgs};
use embedded::Embedded;
use report::{print_latency, print_report};
use workload::{raw_put, run_against};

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Producers at full speed (or a target rate): records/s, MiB/s, produce latency, bill.
    #[command(after_help = "\
Examples:
  cairn bench produce --embedded --duration 30s --record-size 1KiB --baseline
  AWS_ENDPOINT_URL=http://127.0.0.1:4566 cairn bench produce --embedded --object-store s3://cairn/bench
  cairn bench produce --embedded --codec lz4 --record-size 4KiB
  cairn bench produce --embedded --protocol kafka --codec none   # through the Kafka listener
  cairn bench produce --endpoint http://agent:7170 --producers 8 --rate 50000 --json
  cairn bench produce --endpoint a:7170,b:7170,c:7170 --producers 6   # a cluster, per-agent shares")]
    Produce(Common),
    /// Producers and a consumer together: end-to-end latency from send to receipt.
    E2e(Common),
    /// Catch-up reads: produce for --duration, then read it all back from offset 0; or, with
    /// --topic, read an existing topic from --from.
    Consume(Common),
    /// Produce a topic, then compact all of it in this process: compactor throughput and
    /// the Parquet bytes against the segment bytes they replace, with table commits, without,
    /// or both on copies of the same data.
    #[command(after_help = "\
Examples:
  cairn bench compact --embedded --duration 20s                       # 1 KiB random values
  cairn bench compact --embedded --values text --record-size 100B
  cairn bench compact --embedded --record-size 16B --tables on --json")]
    Compact(CompactArgs),
    /// The object store's own PUT throughput and latency for segment-sized objects: the
    /// baseline an agent is compared against.
    RawPut(RawPutArgs),
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
        BenchCommand::Compact(a) => compact::compact_bench(a).await,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Produce,
    E2e,
    Consume,
}

async fn agent_bench(c: Common, kind: Kind) -> anyhow::Result<()> {
    check(&c)?;
    if c.baseline && !c.embedded {
        bail!("--baseline needs --embedded (it measures the embedded agent's store)");
    }
    let embedded = if c.embedded {
        Some(Embedded::start(&c).await?)
    } else {
        None
    };
    let endpoints = match &embedded {
        Some(e) => vec![e.endpoint.clone()],
        None => c.connect.endpoints()?,
    };
    if endpoints.is_empty() {
        bail!("--endpoint is empty: give one agent address or several, comma-separated");
    }
    let kafka =
        match c.protocol {
            args::ProtocolArg::Grpc => None,
            args::ProtocolArg::Kafka => match (&embedded, &c.kafka_bootstrap) {
                (_, Some(k)) => Some(k.clone()),
                (Some(e), None) => Some(e.kafka.clone().ok_or_else(|| {
                    anyhow::anyhow!("the embedded agent serves no Kafka listener")
                })?),
                (None, None) => {
                    bail!("--protocol kafka needs --kafka-bootstrap HOST:PORT (or --embedded)")
                }
            },
        };
    let result = run_against(
        &c,
        kind,
        &endpoints,
        embedded.as_ref().map(|e| e.store_url.clone()),
        kafka,
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

/// The checks every agent benchmark makes of its flags.
fn check(c: &Common) -> anyhow::Result<()> {
    if c.producers == 0 || c.partitions == 0 || c.record_size < 8 {
        bail!("--producers and --partitions must be at least 1, --record-size at least 8 bytes");
    }
    Ok(())
}
