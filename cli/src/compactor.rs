//! `cairn compactor`: the compactor role (retention and garbage collection).

use std::time::Duration;

use anyhow::Context;
use cairn_compactor::{Compactor, CompactorConfig};
use indicatif::{ProgressBar, ProgressStyle};

/// Flags of `cairn compactor`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Applies each topic's retention (retention.ms and retention.bytes) and deletes segment objects
no index entry references any more, and orphans no commit ever referenced, once they are
older than --grace. Any number of compactors may run against the same stores.

Examples:
  cairn compactor --once                # one cycle with a progress display, then exit
  cairn compactor --interval 30s        # keep running")]
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
    /// Where segments are stored (as for `cairn agent`).
    #[arg(
        long,
        env = "CAIRN_OBJECT_STORE",
        value_name = "URL",
        default_value = "./cairn-data/objects"
    )]
    object_store: String,
    /// Metadata store (as for `cairn agent`).
    #[arg(
        long,
        env = "CAIRN_METADATA",
        value_name = "SPEC",
        default_value = "sqlite:./cairn-data/meta.sqlite"
    )]
    metadata: String,
}

pub(crate) async fn run(args: CompactorArgs) -> anyhow::Result<()> {
    if args.grace < Duration::from_secs(1) {
        anyhow::bail!("--grace must be at least 1s, got {:?}", args.grace);
    }
    let store = cairn_agent::open_object_store(&args.object_store, &[])?;
    let kv = cairn_metadata::open_kv(&args.metadata)
        .await
        .with_context(|| format!("cannot open metadata store {}", args.metadata))?;
    let metadata =
        cairn_metadata::Metadata::new(kv, std::sync::Arc::new(cairn_metadata::SystemClock));
    let compactor = Compactor::new(
        store,
        metadata,
        CompactorConfig {
            grace: args.grace,
            max_deletes_per_cycle: args.max_deletes.max(1),
            interval: args.interval,
        },
    );
    if args.once {
        let spinner = ProgressBar::new_spinner();
        spinner.set_style(
            ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        spinner.enable_steady_tick(Duration::from_millis(100));
        let r = compactor
            .run_once(&|step| spinner.set_message(step.to_string()))
            .await?;
        spinner.finish_and_clear();
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
