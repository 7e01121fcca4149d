//! `cairn table`: the Delta Lake table the compactor keeps for each topic.

use cairn_compactor::table::{TableDescription, describe};

/// `cairn table` subcommands.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum TableCommand {
    /// Show a topic's table: its location, current snapshot (version, time) and files.
    #[command(after_help = "\
Each topic's compacted Parquet files form a Delta Lake table at
  <object store>/topics/<topic>/          (log in topics/<topic>/_delta_log/)
partitioned by `partition`, with the columns
  partition INT, offset BIGINT, timestamp TIMESTAMP, key BINARY, value BINARY,
  headers ARRAY<STRUCT<key STRING, value BINARY>>, producer_id BIGINT, sequence BIGINT,
then the typed columns of the topic's value schema (`cairn topic set-schema`), if any.
The compactor commits a new snapshot after each cycle: exactly the live Parquet files, so any
Delta reader (Spark, DuckDB, polars, Trino, deltalake for Python) sees each compacted record
once. Records not compacted yet are not in the table; `cairn sql` reads those too.

Examples:
  cairn table describe orders
  cairn table describe orders --format json")]
    Describe(DescribeArgs),
}

/// Flags of `cairn table describe`.
#[derive(Debug, clap::Args)]
pub(crate) struct DescribeArgs {
    /// The topic.
    topic: String,
    /// How to print it.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
}

/// Output formats of `cairn table describe`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// Lines for a person.
    Text,
    /// One JSON object.
    Json,
}

pub(crate) async fn run(cmd: TableCommand) -> anyhow::Result<()> {
    match cmd {
        TableCommand::Describe(args) => {
            let (store, _) = args.stores.open().await?;
            let Some(d) = describe(store, &args.topic).await? else {
                anyhow::bail!(
                    "topic {} has no table yet: the compactor creates it at its first cycle after the topic exists (cairn compactor --once)",
                    args.topic
                );
            };
            match args.format {
                Format::Text => print!("{}", text(&d)),
                Format::Json => println!("{}", json(&d)),
            }
            Ok(())
        }
    }
}

fn text(d: &TableDescription) -> String {
    let bytes: u64 = d.files.iter().map(|f| f.2).sum();
    let rows: u64 = d.files.iter().filter_map(|f| f.3).sum();
    let mut out = format!(
        "table     {}\nformat    Delta Lake\nversion   {}\ncommitted {}\nfiles     {} ({}, {} rows)\n",
        d.root,
        d.version,
        d.timestamp_ms.map_or_else(|| "-".to_string(), time),
        d.files.len(),
        indicatif::HumanBytes(bytes),
        rows
    );
    if !d.typed_columns.is_empty() {
        let list: Vec<String> = d
            .typed_columns
            .iter()
            .map(|(name, kind)| format!("{name} {kind}"))
            .collect();
        out.push_str(&format!("columns   {} (typed)\n", list.join(", ")));
    }
    if !d.files.is_empty() {
        out.push_str("\nPARTITION        ROWS       BYTES  FILE\n");
        for (path, partition, size, rows) in &d.files {
            out.push_str(&format!(
                "{:>9} {:>11} {:>11}  {path}\n",
                partition.map_or_else(|| "-".to_string(), |p| p.to_string()),
                rows.map_or_else(|| "-".to_string(), |r| r.to_string()),
                size
            ));
        }
    }
    out
}

fn time(ms: i64) -> String {
    let t =
        std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn json(d: &TableDescription) -> serde_json::Value {
    serde_json::json!({
        "root": d.root,
        "format": "delta",
        "version": d.version,
        "committed_ms": d.timestamp_ms,
        "typed_columns": d.typed_columns.iter().map(|(name, kind)| serde_json::json!({
            "name": name, "type": kind,
        })).collect::<Vec<_>>(),
        "files": d.files.iter().map(|(path, partition, size, rows)| serde_json::json!({
            "path": path, "partition": partition, "bytes": size, "rows": rows,
        })).collect::<Vec<_>>(),
    })
}
