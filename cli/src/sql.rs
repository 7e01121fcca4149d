//! `cairn sql`: SQL over live topics (DataFusion over the compacted Parquet files plus the
//! uncompacted tail).

use cairn_compactor::sql::{OutputFormat, query, render};
use cairn_compactor::{Compactor, CompactorConfig};

/// Output formats of `cairn sql`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Format {
    /// An aligned text table.
    Table,
    /// CSV with a header line.
    Csv,
    /// One JSON object per line.
    Json,
}

/// Flags of `cairn sql`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Every topic is a table with the columns
  partition INT, offset BIGINT, timestamp TIMESTAMP(ms, UTC), key BYTES, value BYTES,
  headers LIST<STRUCT<key STRING, value BYTES>>, producer_id BIGINT, sequence BIGINT
over its compacted Parquet files and its not yet compacted records, so a query sees the live
topic. `offset` and `timestamp` are SQL keywords in some positions: quote them (\"offset\") if
a query does not parse. Topic names with dots or dashes need double quotes; unquoted names
are lower-cased.

Examples:
  cairn sql 'SELECT count(*), max(\"offset\") FROM orders'
  cairn sql 'SELECT partition, count(*) FROM orders GROUP BY partition ORDER BY partition'
  cairn sql --format csv 'SELECT \"offset\", CAST(value AS VARCHAR) AS v FROM \"app.events\" LIMIT 10'")]
pub(crate) struct SqlArgs {
    /// The query.
    query: String,
    /// How to print the rows.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    #[command(flatten)]
    stores: crate::stores::StoreArgs,
}

pub(crate) async fn run(args: SqlArgs) -> anyhow::Result<()> {
    if args.query.trim().is_empty() {
        anyhow::bail!("the query is empty: give one, e.g. cairn sql 'SELECT count(*) FROM orders'");
    }
    let (store, metadata) = args.stores.open().await?;
    let compactor = Compactor::new(store, metadata, CompactorConfig::default());
    let ctx = compactor.sql_context().await?;
    let rows = query(&ctx, &args.query).await?;
    let format = match args.format {
        Format::Table => OutputFormat::Table,
        Format::Csv => OutputFormat::Csv,
        Format::Json => OutputFormat::Json,
    };
    let out = render(&rows, format)?;
    print!("{out}");
    if !out.ends_with('\n') && !out.is_empty() {
        println!();
    }
    Ok(())
}
