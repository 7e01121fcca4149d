//! `cairn compactor`: the compactor role (compaction into Parquet, retention and garbage
//! collection).

use std::time::Duration;

use anyhow::Context;
use cairn_compactor::{Compactor, CompactorConfig, Progress};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `cairn compactor`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Each cycle:
  1. applies each topic's retention (retention.ms and retention.bytes);
  2. compacts every partition whose uncompacted batches hold --min-bytes or whose oldest
     record is --max-age old into one Parquet file per run
     (topics/<topic>/partition=<p>/<first>-<last>-<writer>.parquet), and merges
     --merge-fan-in small Parquet files into one of up to --target-bytes;
  3. commits each topic's Delta Lake table (topics/<topic>/_delta_log): a snapshot listing
     exactly the live Parquet files (see `cairn table describe --help`);
  4. deletes objects no index entry references any more, and orphans no commit ever
     referenced, once they are older than --grace.
Consumers read compacted offsets from the Parquet files; other engines read the tables.
Any number of compactors may run against the same stores: partitions are claimed with a
lease in metadata.

Examples:
  cairn compactor --once                       # one cycle with a progress bar, then exit
  cairn compactor --once --max-age 0s          # compact everything now
  cairn compactor --interval 30s --metrics-listen 127.0.0.1:9190")]
pub(crate) struct CompactorArgs {
    /// Run one cycle and exit.
    #[arg(long)]
    once: bool,
    /// Pause between cycles.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    interval: Duration,
    /// How long unreferenced objects are kept before deletion (longer than any fetch).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    grace: Duration,
    /// Most objects deleted per cycle.
    #[arg(long, default_value_t = 1000)]
    max_deletes: usize,
    /// Compact a partition once its uncompacted batches hold this much (e.g. 8MiB).
    #[arg(long, value_parser = crate::size::parse_size, default_value = "8MiB")]
    min_bytes: usize,
    /// ...or once its oldest uncompacted record is this old.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10m")]
    max_age: Duration,
    /// Input bytes per Parquet file.
    #[arg(long, value_parser = crate::size::parse_size, default_value = "128MiB")]
    target_bytes: usize,
    /// Merge this many consecutive small Parquet files into one (at least 2).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(2..=1000))]
    merge_fan_in: u64,
    /// Do not keep the topics' Delta Lake tables (their logs are left as they are).
    #[arg(long)]
    no_tables: bool,
    /// Serve Prometheus metrics (bytes in/out, files written) on this address.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
}

pub(crate) async fn run(args: CompactorArgs) -> anyhow::Result<()> {
    if args.grace < Duration::from_secs(1) {
        anyhow::bail!("--grace must be at least 1s, got {:?}", args.grace);
    }
    let (store, metadata, _faults) = args.stores.open_with_test_faults().await?;
    let compactor = Compactor::new(
        store,
        metadata,
        CompactorConfig {
            grace: args.grace,
            max_deletes_per_cycle: args.max_deletes.max(1),
            interval: args.interval,
            min_bytes: args.min_bytes as u64,
            max_age: args.max_age,
            target_bytes: args.target_bytes as u64,
            merge_fan_in: usize::try_from(args.merge_fan_in).unwrap_or(8),
            tables: !args.no_tables,
            ..CompactorConfig::default()
        },
    );
    if let Some(addr) = args.metrics_listen {
        let metrics = compactor.metrics().clone();
        let app = axum::Router::new().route(
            "/metrics",
            axum::routing::get(move || {
                let metrics = metrics.clone();
                async move { metrics.render() }
            }),
        );
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        eprintln!("metrics on http://{}/metrics", listener.local_addr()?);
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!(error = %e, "metrics endpoint stopped");
            }
        });
    }
    if args.once {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} {elapsed} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        let r = compactor
            .run_once(&|p| match p {
                Progress::Step(step) => bar.set_message(step.to_string()),
                Progress::Planned { bytes, .. } => bar.set_length(bytes),
                Progress::BytesRead(n) => bar.inc(n),
            })
            .await?;
        bar.finish_and_clear();
        let secs = bar.elapsed().as_secs_f64().max(1e-3);
        println!(
            "compaction: {} runs ({} merges) -> {} files, {} records, {} index entries replaced; read {} ({:.1} MiB/s), wrote {}; {} lost a race, {} failed, {} partitions busy elsewhere",
            r.runs,
            r.merges,
            r.runs,
            r.records_compacted,
            r.entries_replaced,
            indicatif::HumanBytes(r.bytes_in),
            r.bytes_in as f64 / secs / 1048576.0,
            indicatif::HumanBytes(r.bytes_out),
            r.conflicts,
            r.failed_runs,
            r.claimed_elsewhere,
        );
        println!(
            "retention: {} entries ({} bytes) removed over {} topics; objects: {} marked unreferenced, {} deleted; orphans: {} deleted, {} younger than the grace period",
            r.retention_entries_removed,
            r.retention_bytes_removed,
            r.topics,
            r.objects_marked_dead,
            r.objects_deleted,
            r.orphans_deleted,
            r.orphans_waiting
        );
        println!(
            "tables: {} versions committed ({} files added, {} removed), {} failed",
            r.table_commits, r.table_files_added, r.table_files_removed, r.failed_table_commits
        );
        if r.failed_runs > 0 {
            anyhow::bail!(
                "{} compaction runs failed (see the log); they are retried next cycle",
                r.failed_runs
            );
        }
        return Ok(());
    }
    eprintln!(
        "cairn compactor running every {:?}; Ctrl-C to stop",
        args.interval
    );
    compactor
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await;
    Ok(())
}
