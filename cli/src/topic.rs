//! `cairn topic ...`.

use anyhow::{Context, bail};
use cairn_client::{Admin, TopicInfo, TopicOptions};
use clap::Subcommand;

use crate::ConnectArgs;
use crate::codec::{CodecArg, codec_name};

/// Topic administration.
#[derive(Debug, Subcommand)]
pub(crate) enum TopicCommand {
    /// Create a topic.
    Create {
        /// Topic name: letters, digits, `.`, `_` and `-`.
        name: String,
        /// Number of partitions.
        #[arg(long, short, default_value_t = 1)]
        partitions: u32,
        /// Codec of the frames the agent builds itself (records read back from Parquet);
        /// producers choose their own codec per batch (`cairn produce --codec`).
        #[arg(long, alias = "compression", value_enum, default_value = "zstd")]
        codec: CodecArg,
        /// How long records are kept (e.g. 7d); forever when not given.
        #[arg(long, value_parser = humantime::parse_duration)]
        retention: Option<std::time::Duration>,
        /// Bytes kept per partition (e.g. 10GiB); the oldest go first. Unlimited when not given.
        #[arg(long, value_parser = crate::size::parse_size, value_name = "SIZE")]
        retention_bytes: Option<usize>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// List topics.
    List {
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Show a topic and its partitions' offsets and sizes.
    Describe {
        /// Topic name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Delete a topic.
    Delete {
        /// Topic name.
        name: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Make a partition's records before an offset unreadable (the compactor then deletes
    /// their objects).
    DeleteRecords {
        /// Topic name.
        name: String,
        /// Partition.
        #[arg(long, short)]
        partition: u32,
        /// The first offset to keep.
        #[arg(long, value_name = "OFFSET")]
        before: i64,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Raise the partition count of a topic.
    AddPartitions {
        /// Topic name.
        name: String,
        /// The new total number of partitions.
        #[arg(long, short)]
        partitions: u32,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// A time retention for people: `forever` when the topic has none.
fn retention(ms: Option<i64>) -> String {
    match ms {
        Some(ms) if ms >= 0 => {
            humantime::format_duration(std::time::Duration::from_millis(ms as u64)).to_string()
        }
        Some(ms) => format!("{ms}ms"),
        None => "forever".into(),
    }
}

/// A size retention in bytes per partition: `unlimited` when the topic has none.
fn retention_bytes(bytes: Option<i64>) -> String {
    bytes.map_or_else(|| "unlimited".into(), |b| b.to_string())
}

fn print_topic(t: &TopicInfo) {
    println!(
        "{}\tpartitions={}\tcodec={}\tretention={}\tretention-bytes={}",
        t.name,
        t.partitions,
        codec_name(t.codec),
        retention(t.retention_ms),
        retention_bytes(t.retention_bytes)
    );
}

pub(crate) async fn run(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            codec,
            retention,
            retention_bytes,
            connect,
        } => {
            let retention_ms = match retention {
                Some(d) if d.as_millis() == 0 => {
                    bail!("--retention must be at least 1ms (leave it out to keep records forever)")
                }
                Some(d) => Some(i64::try_from(d.as_millis()).context("--retention is too long")?),
                None => None,
            };
            let retention_bytes = match retention_bytes {
                Some(0) => bail!(
                    "--retention-bytes must be at least 1 byte (leave it out to keep everything)"
                ),
                Some(b) => Some(i64::try_from(b).context("--retention-bytes is too large")?),
                None => None,
            };
            let options = TopicOptions {
                codec: Some(codec.into()),
                retention_ms,
                retention_bytes,
            };
            let admin = Admin::new(connect.cluster().await?);
            let t = admin.create_topic(&name, partitions, options).await?;
            eprintln!("created topic {} with {} partitions", t.name, t.partitions);
        }
        TopicCommand::List { connect } => {
            let admin = Admin::new(connect.cluster().await?);
            for t in admin.list_topics().await? {
                print_topic(&t);
            }
        }
        TopicCommand::Describe { name, connect } => {
            let admin = Admin::new(connect.cluster().await?);
            let d = admin.describe_topic(&name).await?;
            if let Some(t) = &d.topic {
                print_topic(t);
            }
            println!("PARTITION\tSTART\tHIGH-WATERMARK\tRECORDS\tBYTES\tINDEX-ENTRIES");
            for p in &d.partitions {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    p.partition,
                    p.start_offset,
                    p.high_watermark,
                    p.records,
                    p.bytes,
                    p.index_entries
                );
            }
        }
        TopicCommand::Delete { name, connect } => {
            Admin::new(connect.cluster().await?)
                .delete_topic(&name)
                .await?;
            eprintln!("deleted topic {name}");
        }
        TopicCommand::DeleteRecords {
            name,
            partition,
            before,
            connect,
        } => {
            let start = Admin::new(connect.cluster().await?)
                .delete_records(&name, partition, before)
                .await?;
            eprintln!("{name}/{partition} now starts at offset {start}");
        }
        TopicCommand::AddPartitions {
            name,
            partitions,
            connect,
        } => {
            let t = Admin::new(connect.cluster().await?)
                .add_partitions(&name, partitions)
                .await?;
            eprintln!("topic {} now has {} partitions", t.name, t.partitions);
        }
    }
    Ok(())
}
