//! `cairn group ...`: list, describe and reset consumer groups.

use cairn_client::{Admin, ResetTo};
use clap::Subcommand;

use crate::ConnectArgs;

/// Consumer-group administration.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupCommand {
    /// List consumer groups and share groups.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show a group's members, assignment, committed offsets and lag.
    Describe {
        /// Group name.
        group: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Move a group's committed offsets for a topic (stop its consumers first).
    #[command(after_help = "\
Examples:
  cairn group reset billing --topic orders --to-earliest
  cairn group reset billing --topic orders --to-timestamp 2026-11-25T12:00:00Z")]
    Reset {
        /// Group name.
        group: String,
        /// The topic whose offsets move.
        #[arg(long)]
        topic: String,
        /// To each partition's first readable offset.
        #[arg(long, group = "to")]
        to_earliest: bool,
        /// To each partition's high watermark (skip everything stored).
        #[arg(long, group = "to")]
        to_latest: bool,
        /// To this offset (clamped into each partition's readable range).
        #[arg(long, group = "to", value_name = "N")]
        to_offset: Option<i64>,
        /// To each partition's first record stamped at or after this time (RFC 3339, e.g.
        /// 2026-11-25T12:00:00Z); the end where none is.
        #[arg(long, group = "to", value_name = "TIME", value_parser = humantime::parse_rfc3339_weak)]
        to_timestamp: Option<std::time::SystemTime>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub(crate) async fn run(cmd: GroupCommand) -> anyhow::Result<()> {
    match cmd {
        GroupCommand::List { connect } => {
            let admin = Admin::new(connect.cluster().await?);
            let (groups, shares) = admin.list_groups().await?;
            for g in groups {
                println!("{g}\tconsumer");
            }
            for g in shares {
                println!("{g}\tshare");
            }
        }
        GroupCommand::Describe { group, connect } => {
            let admin = Admin::new(connect.cluster().await?);
            let d = admin.describe_group(&group).await?;
            println!(
                "{}\tgeneration={}\tmembers={}",
                d.group,
                d.generation,
                d.members.len()
            );
            println!("MEMBER\tPARTITIONS");
            for m in &d.members {
                let parts: Vec<String> = m
                    .partitions
                    .iter()
                    .map(|p| format!("{}/{}", p.topic, p.partition))
                    .collect();
                println!("{}\t{}", m.member_id, parts.join(","));
            }
            println!("TOPIC\tPARTITION\tCOMMITTED\tHIGH-WATERMARK\tLAG");
            for p in &d.partitions {
                let committed = p
                    .committed
                    .map_or_else(|| "-".to_string(), |c| c.to_string());
                println!(
                    "{}\t{}\t{committed}\t{}\t{}",
                    p.topic, p.partition, p.high_watermark, p.lag
                );
            }
        }
        GroupCommand::Reset {
            group,
            topic,
            to_earliest,
            to_latest,
            to_offset,
            to_timestamp,
            connect,
        } => {
            let to = match (to_earliest, to_latest, to_offset, to_timestamp) {
                (true, _, _, _) => ResetTo::Earliest,
                (_, true, _, _) => ResetTo::Latest,
                (_, _, Some(n), _) if n < 0 => {
                    anyhow::bail!("--to-offset must be 0 or more, got {n}")
                }
                (_, _, Some(n), _) => ResetTo::Offset(n),
                (_, _, _, Some(t)) => {
                    let ms = t
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_err(|_| anyhow::anyhow!("--to-timestamp is before 1970"))?
                        .as_millis();
                    ResetTo::Timestamp(i64::try_from(ms)?)
                }
                _ => anyhow::bail!(
                    "say where to: --to-earliest, --to-latest, --to-offset N or --to-timestamp TIME"
                ),
            };
            let admin = Admin::new(connect.cluster().await?);
            for o in admin.reset_offsets(&group, &topic, to).await? {
                println!("{}\t{}\t{}", o.topic, o.partition, o.offset);
            }
        }
    }
    Ok(())
}
