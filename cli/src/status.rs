//! `cairn status`: one screen about an agent.

use std::time::Duration;

use cairn_client::Admin;

use crate::ConnectArgs;

/// Flags of `cairn status`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Shows the agent's version, uptime, stores, topic count, throughput over --sample, cache
hit ratio, object-store requests, CPU time and peak resident memory.")]
pub(crate) struct StatusArgs {
    /// How long to measure throughput.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    sample: Duration,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<()> {
    let admin = Admin::new(args.connect.first_agent().await?);
    let a = admin.agent_status().await?;
    tokio::time::sleep(args.sample).await;
    let b = admin.agent_status().await?;
    let secs = (b.uptime_seconds - a.uptime_seconds).max(1e-9);
    let rate = |x: u64, y: u64| (y.saturating_sub(x)) as f64 / secs;
    let lookups = b.cache_hits + b.cache_misses;
    let hit_ratio = if lookups == 0 {
        "-".to_string()
    } else {
        format!("{:.1}%", 100.0 * b.cache_hits as f64 / lookups as f64)
    };
    let up = Duration::from_secs(b.uptime_seconds as u64);
    println!(
        "agent          {} at {} (cairn {})",
        b.agent_id, b.advertised_address, b.version
    );
    if !b.zone.is_empty() {
        println!("zone           {}", b.zone);
    }
    println!("uptime         {}", humantime::format_duration(up));
    println!("object store   {}", b.object_store);
    println!("metadata       {}", b.metadata_backend);
    println!("topics         {}", b.topics);
    println!(
        "produce        {:.0} records/s, {:.2} MiB/s ({} records, {:.1} MiB in all)",
        rate(a.produce_records, b.produce_records),
        rate(a.produce_bytes, b.produce_bytes) / (1024.0 * 1024.0),
        b.produce_records,
        mib(b.produce_bytes)
    );
    println!(
        "fetch          {:.0} requests/s, {:.2} MiB/s ({:.1} MiB in all)",
        rate(a.fetch_requests, b.fetch_requests),
        rate(a.fetch_bytes, b.fetch_bytes) / (1024.0 * 1024.0),
        mib(b.fetch_bytes)
    );
    println!(
        "waiting        {} fetches at a high watermark",
        b.waiting_fetches
    );
    println!("cache hits     {hit_ratio} of {lookups} lookups");
    if b.zone_cache_members > 0 {
        let chunk_lookups = b.zone_cache_local_hits + b.zone_cache_local_misses;
        let chunk_ratio = if chunk_lookups == 0 {
            "-".to_string()
        } else {
            format!(
                "{:.1}%",
                100.0 * b.zone_cache_local_hits as f64 / chunk_lookups as f64
            )
        };
        println!(
            "zone cache     {} agents in the zone; chunk hits {chunk_ratio} of {chunk_lookups}; \
             {} pieces from their owner, {} owner failures",
            b.zone_cache_members, b.zone_cache_peer_reads, b.zone_cache_peer_failures
        );
    }
    println!(
        "object store   {} PUTs ({:.1} MiB), {} GETs ({:.1} MiB)",
        b.object_puts,
        mib(b.object_put_bytes),
        b.object_gets,
        mib(b.object_get_bytes)
    );
    println!(
        "metadata       {} segment commits, {} retries",
        b.metadata_commits, b.metadata_retries
    );
    if let Some(offset) = b.clock_offset_ms {
        println!(
            "clock          {} (leases and deadlines use the metadata store's clock)",
            clock_offset(offset)
        );
    }
    if !b.caller_principal.is_empty() {
        println!(
            "you are        {} (as the agent authenticated you)",
            b.caller_principal
        );
    }
    println!("cpu            {:.2} s", b.cpu_seconds);
    let peak_rss = if b.peak_rss_bytes == 0 {
        "- (not reported on this platform)".to_string()
    } else {
        format!("{:.1} MiB", mib(b.peak_rss_bytes))
    };
    println!("peak memory    {peak_rss} resident");
    Ok(())
}

/// How far the store's clock is from the agent's, in words.
fn clock_offset(offset_ms: i64) -> String {
    let secs = offset_ms.unsigned_abs() as f64 / 1000.0;
    match offset_ms {
        0 => "the agent's clock agrees with the metadata store's".to_string(),
        o if o > 0 => format!("the agent's clock is {secs:.3} s behind the metadata store's"),
        _ => format!("the agent's clock is {secs:.3} s ahead of the metadata store's"),
    }
}
