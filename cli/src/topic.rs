//! `cairn topic ...`.

use anyhow::Context;
use cairn_client::{Admin, Compression, TopicInfo, TopicOptions};
use clap::Subcommand;

use crate::ConnectArgs;

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
        /// Codec of stored batches.
        #[arg(long, value_enum, default_value = "zstd")]
        compression: Codec,
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

/// Codec names on the command line.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Codec {
    /// No compression.
    None,
    /// Zstandard.
    Zstd,
    /// LZ4.
    Lz4,
}

fn codec_name(code: i32) -> &'static str {
    match Compression::try_from(code) {
        Ok(Compression::None) => "none",
        Ok(Compression::Zstd) => "zstd",
        Ok(Compression::Lz4) => "lz4",
        _ => "unknown",
    }
}

fn retention(ms: i64) -> String {
    if ms < 0 {
        "forever".into()
    } else {
        humantime::format_duration(std::time::Duration::from_millis(ms as u64)).to_string()
    }
}

fn print_topic(t: &TopicInfo) {
    println!(
        "{}\tpartitions={}\tcompression={}\tretention={}",
        t.name,
        t.partitions,
        codec_name(t.compression),
        retention(t.retention_ms)
    );
}

pub(crate) async fn run(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            compression,
            retention,
            retention_bytes,
            connect,
        } => {
            let admin = Admin::new(connect.channel().await?);
            let retention_ms = match retention {
                Some(d) => Some(i64::try_from(d.as_millis()).context("retention is too long")?),
                None => None,
            };
            let options = TopicOptions {
                compression: Some(match compression {
                    Codec::None => Compression::None,
                    Codec::Zstd => Compression::Zstd,
                    Codec::Lz4 => Compression::Lz4,
                }),
                retention_ms,
                retention_bytes: retention_bytes
                    .map(|b| i64::try_from(b).context("retention bytes is too large"))
                    .transpose()?,
            };
            let t = admin.create_topic(&name, partitions, options).await?;
            eprintln!("created topic {} with {} partitions", t.name, t.partitions);
        }
        TopicCommand::List { connect } => {
            let admin = Admin::new(connect.channel().await?);
            for t in admin.list_topics().await? {
                print_topic(&t);
            }
        }
        TopicCommand::Describe { name, connect } => {
            let admin = Admin::new(connect.channel().await?);
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
            Admin::new(connect.channel().await?)
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
            let start = Admin::new(connect.channel().await?)
                .delete_records(&name, partition, before)
                .await?;
            eprintln!("{name}/{partition} now starts at offset {start}");
        }
        TopicCommand::AddPartitions {
            name,
            partitions,
            connect,
        } => {
            let t = Admin::new(connect.channel().await?)
                .add_partitions(&name, partitions)
                .await?;
            eprintln!("topic {} now has {} partitions", t.name, t.partitions);
        }
    }
    Ok(())
}
