//! `cairn cluster`: the live agents of the cluster, as the registry lists them.

use std::time::Duration;

use cairn_client::Admin;

use crate::ConnectArgs;

/// Flags of `cairn cluster`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Lists the live agents (those whose registry lease has not run out): id, address, zone,
version, uptime, load over their last lease renewal, and when their lease runs out. The
agent that answered is marked with *. A client of --zone Z produces to and fetches from the
agents of zone Z; the OWNS column counts, for --topic, the partitions each agent serves to
clients of that zone.

Examples:
  cairn cluster
  cairn cluster --endpoint a:7170,b:7170 --zone eu-west-1a --topic orders
  cairn cluster --json")]
pub(crate) struct ClusterArgs {
    /// Also show which agent serves each partition of this topic to clients of --zone.
    #[arg(long, value_name = "TOPIC")]
    topic: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub(crate) async fn run(args: ClusterArgs) -> anyhow::Result<()> {
    let cluster = args.connect.cluster().await?;
    let admin = Admin::new(cluster.clone());
    let described = admin.describe_cluster().await?;
    let (agents, answered_by, now) = (
        described.agents,
        described.answered_by,
        described.answered_at_ms,
    );
    let mut owns = std::collections::BTreeMap::<String, u32>::new();
    if let Some(topic) = &args.topic {
        let t = admin.describe_topic(topic).await?;
        let count = t.partitions.len() as u32;
        for p in &t.partitions {
            if let Some(id) = cluster.owner(topic, p.partition, count) {
                *owns.entry(id).or_default() += 1;
            }
        }
    }
    if args.json {
        let list: Vec<serde_json::Value> = agents
            .iter()
            .map(|a| {
                serde_json::json!({
                    "id": a.id,
                    "address": a.address,
                    "peer_address": a.peer_address,
                    "zone": a.zone,
                    "version": a.version,
                    "started_at_ms": a.started_at_ms,
                    "lease_expires_at_ms": a.lease_expires_at_ms,
                    "produce_bytes_per_second": a.produce_bytes_per_second,
                    "fetch_bytes_per_second": a.fetch_bytes_per_second,
                    "inflight_segments": a.inflight_segments,
                    "owned_partitions": args.topic.as_ref().map(|_| owns.get(&a.id).copied().unwrap_or(0)),
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "answered_by": answered_by,
                "answered_at_ms": now,
                "agents": list,
            }))?
        );
        return Ok(());
    }
    if agents.is_empty() {
        println!("no live agents are registered (the answering agent has not registered yet)");
        return Ok(());
    }
    println!(
        "{:<2}{:<24} {:<28} {:<12} {:<10} {:>10} {:>12} {:>12} {:>5} {:>6}{}",
        "",
        "ID",
        "ADDRESS",
        "ZONE",
        "VERSION",
        "UPTIME",
        "PRODUCE/s",
        "FETCH/s",
        "SEGS",
        "LEASE",
        if args.topic.is_some() { "  OWNS" } else { "" }
    );
    for a in &agents {
        // Times against the answering agent's clock, so no local clock is needed.
        let up = Duration::from_secs(((now - a.started_at_ms).max(0) / 1000) as u64);
        let lease_left = (a.lease_expires_at_ms - now).max(0) as f64 / 1000.0;
        println!(
            "{:<2}{:<24} {:<28} {:<12} {:<10} {:>10} {:>12} {:>12} {:>5} {:>5.1}s{}",
            if a.id == answered_by { "*" } else { "" },
            a.id,
            a.address,
            if a.zone.is_empty() { "-" } else { &a.zone },
            a.version,
            humantime::format_duration(up)
                .to_string()
                .split(' ')
                .next()
                .unwrap_or("-"),
            human_rate(a.produce_bytes_per_second),
            human_rate(a.fetch_bytes_per_second),
            a.inflight_segments,
            lease_left,
            match &args.topic {
                Some(_) => format!("  {:>4}", owns.get(&a.id).copied().unwrap_or(0)),
                None => String::new(),
            }
        );
    }
    let zones: std::collections::BTreeSet<&str> = agents.iter().map(|a| a.zone.as_str()).collect();
    println!(
        "{} agents in {} zone{}",
        agents.len(),
        zones.len(),
        if zones.len() == 1 { "" } else { "s" }
    );
    Ok(())
}

/// Bytes per second, human-sized.
pub(crate) fn human_rate(b: u64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB", b / 1024.0)
    } else {
        format!("{b:.0} B")
    }
}
