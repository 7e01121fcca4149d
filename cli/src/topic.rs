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
        /// A JSON Schema file (`{"type": "object", "properties": {...}}`) whose top-level
        /// properties become typed columns of the topic's table (see `cairn topic
        /// set-schema`).
        #[arg(long, value_name = "FILE")]
        value_schema: Option<std::path::PathBuf>,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Declare a topic's value schema: a JSON Schema document whose top-level properties
    /// become typed columns of the topic's table, so `SELECT amount FROM orders` works in
    /// any engine. Properties of type string, integer, number and boolean become columns of
    /// that type; object and array properties hold their JSON text. A record whose value
    /// is not a JSON object, or lacks a property, has NULL there (its raw value is kept).
    #[command(after_help = "\
Examples:
  cat > orders.json <<'JSON'
  {\"type\": \"object\", \"properties\": {
     \"order_id\": {\"type\": \"integer\"}, \"amount\": {\"type\": \"number\"},
     \"currency\": {\"type\": \"string\"}}}
  JSON
  cairn topic set-schema orders --file orders.json

Changes evolve the table as Delta Lake's add-column does: a new property adds a column
(NULL in files written before it), a property keeps its type once declared, and a column
stays when a later schema leaves its property out. Files are typed when the compactor
writes them; `cairn sql` types the uncompacted tail the same way.")]
    SetSchema {
        /// Topic name.
        name: String,
        /// The JSON Schema file.
        #[arg(long, value_name = "FILE")]
        file: std::path::PathBuf,
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
        "{}\tpartitions={}\tcodec={}\tretention={}\tretention-bytes={}{}",
        t.name,
        t.partitions,
        codec_name(t.codec),
        retention(t.retention_ms),
        retention_bytes(t.retention_bytes),
        columns(t)
    );
}

/// The typed columns of a topic, as `\tcolumns=amount:number,...` (nothing when none).
fn columns(t: &TopicInfo) -> String {
    if t.value_columns.is_empty() {
        return String::new();
    }
    let list: Vec<String> = t
        .value_columns
        .iter()
        .map(|c| format!("{}:{}", c.name, c.r#type))
        .collect();
    format!("\tcolumns={}", list.join(","))
}

/// Reads a value schema file and checks it the way the agent will, so a mistake is told
/// with the file's name.
fn read_schema(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the value schema {}", path.display()))?;
    cairn_storage::value_schema::parse_json_schema(&text)
        .with_context(|| format!("{} is not a usable value schema", path.display()))?;
    Ok(text)
}

pub(crate) async fn run(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            codec,
            retention,
            retention_bytes,
            value_schema,
            connect,
        } => {
            let value_schema = value_schema.as_deref().map(read_schema).transpose()?;
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
                value_schema,
            };
            let admin = Admin::new(connect.cluster().await?);
            let t = admin.create_topic(&name, partitions, options).await?;
            eprintln!("created topic {} with {} partitions", t.name, t.partitions);
        }
        TopicCommand::SetSchema {
            name,
            file,
            connect,
        } => {
            let text = read_schema(&file)?;
            let t = Admin::new(connect.cluster().await?)
                .set_value_schema(&name, text)
                .await?;
            print_topic(&t);
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
