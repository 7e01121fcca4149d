//! `cairn bench compact`: produce a topic through an embedded agent, then compact all of it
//! in-process and report the compactor's throughput and what the Parquet files weigh
//! against the segments they replace — with table commits, without, or both on copies of
//! the same data (so the ratio between the two comes from one run).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_compactor::{Compactor, CompactorConfig, Progress};
use cairn_metadata::{EntryKind, Metadata};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::args::{CompactArgs, ProtocolArg, TablesArg};
use super::embedded::Embedded;
use super::report::{MIB, print_report};
use super::workload::run_against;
use super::{Common, Kind};

use crate::stores::StoreArgs;

/// The compactor's progress step during which it reconciles tables.
const TABLE_STEP: &str = "committing tables";

/// Most compactor cycles one compaction may take (each compacts up to 16 runs per
/// partition); a topic of the bench's size needs a handful.
const MAX_CYCLES: usize = 200;

/// One compaction of the produced topic.
#[derive(Debug, Clone, Serialize)]
struct CompactionReport {
    tables: bool,
    seconds: f64,
    cycles: usize,
    records: u64,
    segment_bytes: u64,
    parquet_bytes: u64,
    parquet_files: u64,
    /// Parquet bytes over segment bytes: below 1 the topic shrank.
    size_ratio: f64,
    /// Segment bytes compacted per second.
    mib_per_sec: f64,
    records_per_sec: f64,
    table_commits: u64,
    /// Of `seconds`, the time spent reconciling tables (loading, committing).
    table_seconds: f64,
}

/// The whole result: the produce run, then each compaction.
#[derive(Debug, Clone, Serialize)]
struct CompactBenchReport {
    produce: super::report::Report,
    compactions: Vec<CompactionReport>,
    /// With tables over without, in records per second, over all the runs of each
    /// (`--tables both` only).
    tables_throughput_ratio: Option<f64>,
}

pub(super) async fn compact_bench(a: CompactArgs) -> anyhow::Result<()> {
    let mut c: Common = a.common;
    super::check(&c)?;
    if !c.embedded {
        bail!(
            "`cairn bench compact` needs --embedded: it compacts the embedded agent's stores \
             in this process after producing"
        );
    }
    if a.tables == TablesArg::Both && (c.object_store.is_some() || c.metadata.is_some()) {
        bail!(
            "--tables both copies the embedded agent's local directory: leave --object-store and \
             --metadata unset, or choose --tables on or off"
        );
    }
    if c.topic.is_some() {
        bail!("--topic is for `cairn bench consume`");
    }
    // The topic must outlive the produce run to be compacted.
    c.keep = true;
    let embedded = Embedded::start(&c).await?;
    let store_url = embedded.store_url.clone();
    let produced = run_against(
        &c,
        Kind::Produce,
        std::slice::from_ref(&embedded.endpoint),
        Some(store_url.clone()),
        embedded
            .kafka
            .clone()
            .filter(|_| c.protocol == ProtocolArg::Kafka),
    )
    .await;
    // The agent is stopped before compacting, so the compactor has the machine to itself.
    let dir = embedded.stop().await;
    let produced = produced?;
    if !c.json {
        print_report(&produced);
        println!();
    }
    let metadata_spec = c
        .metadata
        .clone()
        .unwrap_or_else(|| format!("sqlite:{}", dir.path().join("meta.sqlite").display()));
    let modes = match a.tables {
        TablesArg::On => vec![true],
        TablesArg::Off => vec![false],
        // Off, on, on, off: a drift over the run (the disk settling after the copies, the
        // other tenants of a shared machine) weighs on both sides alike.
        TablesArg::Both => vec![false, true, true, false],
    };
    let mut compactions = Vec::new();
    for (i, tables) in modes.into_iter().enumerate() {
        let stores = if a.tables == TablesArg::Both {
            // Each compaction gets its own copy of the produced stores.
            let copy = dir.path().join(format!("copy-{i}"));
            copy_stores(dir.path(), &copy)?;
            StoreArgs::new(
                format!("file://{}", copy.join("objects").display()),
                format!("sqlite:{}", copy.join("meta.sqlite").display()),
            )
        } else {
            StoreArgs::new(store_url.clone(), metadata_spec.clone())
        };
        compactions.push(compact_all(&stores, tables, c.json).await?);
    }
    let seconds = |tables: bool| -> f64 {
        compactions
            .iter()
            .filter(|c| c.tables == tables)
            .map(|c| c.seconds)
            .sum()
    };
    // Same records each run: the ratio of throughputs is the inverse ratio of times.
    let ratio = (a.tables == TablesArg::Both).then(|| seconds(false) / seconds(true).max(1e-9));
    let report = CompactBenchReport {
        produce: produced,
        compactions,
        tables_throughput_ratio: ratio,
    };
    if c.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_compactions(&report);
    }
    Ok(())
}

/// Copies the embedded agent's objects and SQLite files into `to`.
fn copy_stores(from: &Path, to: &Path) -> anyhow::Result<()> {
    copy_dir(&from.join("objects"), &to.join("objects"))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("meta.sqlite") {
            std::fs::copy(entry.path(), to.join(&name))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Bytes of the index entries of every topic, by kind: (segment frames, Parquet files,
/// Parquet entries).
async fn stored_bytes(metadata: &Metadata) -> anyhow::Result<(u64, u64, u64)> {
    let (mut segments, mut parquet, mut files) = (0, 0, 0);
    for t in metadata.list_topics().await? {
        for p in 0..t.partitions {
            let mut from = 0;
            loop {
                let (_, page) = metadata.read_index(t.id, p, from, 1000).await?;
                for e in &page {
                    match e.kind {
                        EntryKind::Parquet => {
                            parquet += e.length;
                            files += 1;
                        }
                        EntryKind::Segment => segments += e.length,
                    }
                }
                match page.last() {
                    Some(last) if page.len() == 1000 => from = last.end_offset,
                    _ => break,
                }
            }
        }
    }
    Ok((segments, parquet, files))
}

/// Compacts everything in `stores` (cycles until none is due) and measures it.
async fn compact_all(
    stores: &StoreArgs,
    tables: bool,
    quiet: bool,
) -> anyhow::Result<CompactionReport> {
    let (store, metadata) = stores.open().await?;
    let (segment_bytes, _, _) = stored_bytes(&metadata).await?;
    let compactor = Compactor::new(
        store,
        metadata.clone(),
        CompactorConfig {
            min_bytes: 1,
            max_age: Duration::ZERO,
            tables,
            ..CompactorConfig::default()
        },
    );
    let bar = if quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(segment_bytes)
    };
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} compacting (tables {prefix}) [{bar:30}] {bytes}/{total_bytes} {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_prefix(if tables { "on" } else { "off" });
    // The time from the cycle's table step to its next step is what table commits cost.
    let table_step: std::sync::Mutex<(Option<Instant>, Duration)> =
        std::sync::Mutex::new((None, Duration::ZERO));
    let progress = |p: Progress<'_>| match p {
        Progress::Step(s) => {
            if let Ok(mut t) = table_step.lock() {
                if let Some(started) = t.0.take() {
                    t.1 += started.elapsed();
                }
                if s == TABLE_STEP {
                    t.0 = Some(Instant::now());
                }
            }
            bar.set_message(s.to_string());
        }
        Progress::BytesRead(n) => bar.inc(n),
        Progress::Planned { .. } => {}
    };
    let started = Instant::now();
    let (mut cycles, mut records, mut table_commits) = (0, 0, 0);
    loop {
        let r = compactor.run_once(&progress).await?;
        cycles += 1;
        records += r.records_compacted;
        table_commits += r.table_commits;
        if r.failed_runs > 0 || r.failed_table_commits > 0 {
            bail!("a compaction run or table commit failed; see the log (CAIRN_LOG=warn)");
        }
        if r.runs == 0 {
            break;
        }
        if cycles >= MAX_CYCLES {
            bail!("compaction still had runs due after {MAX_CYCLES} cycles");
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let table_seconds = table_step
        .lock()
        .map(|t| t.1.as_secs_f64())
        .unwrap_or_default();
    bar.finish_and_clear();
    let (left, parquet_bytes, parquet_files) = stored_bytes(&metadata).await?;
    if left > 0 {
        bail!("{left} bytes of segments were left uncompacted");
    }
    Ok(CompactionReport {
        tables,
        seconds,
        cycles,
        records,
        segment_bytes,
        parquet_bytes,
        parquet_files,
        size_ratio: parquet_bytes as f64 / segment_bytes.max(1) as f64,
        mib_per_sec: segment_bytes as f64 / MIB / seconds.max(1e-9),
        records_per_sec: records as f64 / seconds.max(1e-9),
        table_commits,
        table_seconds,
    })
}

fn print_compactions(r: &CompactBenchReport) {
    println!(
        "{:<8} {:>8} {:>7} {:>12} {:>12} {:>12} {:>7} {:>10} {:>12} {:>8} {:>9}",
        "tables",
        "seconds",
        "cycles",
        "records",
        "segments B",
        "parquet B",
        "ratio",
        "MiB/s",
        "records/s",
        "commits",
        "tables s"
    );
    for c in &r.compactions {
        println!(
            "{:<8} {:>8.2} {:>7} {:>12} {:>12} {:>12} {:>7.3} {:>10.1} {:>12.0} {:>8} {:>9.3}",
            if c.tables { "on" } else { "off" },
            c.seconds,
            c.cycles,
            c.records,
            c.segment_bytes,
            c.parquet_bytes,
            c.size_ratio,
            c.mib_per_sec,
            c.records_per_sec,
            c.table_commits,
            c.table_seconds
        );
    }
    if let Some(ratio) = r.tables_throughput_ratio {
        println!("throughput with tables / without: {ratio:.3}");
    }
}
