//! `cairn produce TOPIC`: one record per stdin line.

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{AppendBatch, Producer, ProducerConfig, ProducerRecord};
use tokio::io::AsyncBufReadExt;

use crate::ConnectArgs;
use crate::codec::CodecArg;

/// Flags of `cairn produce`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  echo hello | cairn produce events
  printf 'user-1:signed up\\nuser-2:logged in\\n' | cairn produce events --key-separator :
  seq 1000 | cairn produce events --partition 3 --header source=seq --codec lz4
  printf 'e1\\ne2\\n' | cairn produce orders --partition 0 --expected-offset 42

Every record is acknowledged only once it is durable in object storage and committed;
retries never store a second copy (the producer is idempotent).

With --expected-offset, all lines form one batch that commits only if the partition's
next offset is N (optimistic concurrency, as in an event store); otherwise nothing is
written and the error names the actual next offset.")]
pub(crate) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Key of every record (records with equal keys share a partition). (`--key` is the
    /// client's TLS key, as for every command.)
    #[arg(
        long = "record-key",
        short = 'k',
        value_name = "KEY",
        conflicts_with = "key_separator"
    )]
    record_key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Write to this partition instead of choosing by key.
    #[arg(long, short)]
    partition: Option<u32>,
    /// Append all lines as one batch, only if the partition's next offset is N (needs
    /// --partition).
    #[arg(long, value_name = "N", requires = "partition")]
    expected_offset: Option<i64>,
    /// A header added to every record, as KEY=VALUE (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// How each batch is compressed before it is sent (and stored as sent): zstd for the
    /// smallest objects, lz4 for the least CPU, none for incompressible values.
    #[arg(long, value_enum, default_value = "zstd")]
    codec: CodecArg,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("header `{s}` is not KEY=VALUE")),
    }
}

pub(crate) async fn run(args: ProduceArgs) -> anyhow::Result<()> {
    if let Some(sep) = &args.key_separator
        && sep.is_empty()
    {
        bail!("--key-separator must not be empty");
    }
    if let Some(n) = args.expected_offset
        && n < 0
    {
        bail!("--expected-offset must be 0 or more, got {n}");
    }
    let channel = args.connect.cluster().await?;
    let config = ProducerConfig {
        codec: args.codec.into(),
        ..ProducerConfig::default()
    };
    let producer = Producer::new(channel, config);
    if let (Some(expected), Some(partition)) = (args.expected_offset, args.partition) {
        let records = read_records(&args).await?;
        if records.is_empty() {
            bail!("--expected-offset needs at least one line on stdin");
        }
        let batch =
            AppendBatch::new(args.topic.clone(), partition, records).expect_offset(expected);
        let result = producer.append(batch).await?;
        producer.close().await?;
        eprintln!(
            "produced {} records to {}/{} at offsets {}..{}",
            result.record_count,
            args.topic,
            partition,
            result.base_offset,
            result.base_offset + i64::from(result.record_count)
        );
        return Ok(());
    }
    let (tx, mut rx) = tokio::sync::mpsc::channel::<cairn_client::Delivery>(100_000);
    let collector = tokio::spawn(async move {
        let mut acked = 0u64;
        while let Some(delivery) = rx.recv().await {
            delivery.await?;
            acked += 1;
        }
        Ok::<u64, cairn_client::ClientError>(acked)
    });
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut line_no = 0u64;
    while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
        line_no += 1;
        let record = to_record(&args, line, line_no)?;
        let delivery = producer.send(record).await?;
        if tx.send(delivery).await.is_err() {
            break; // the collector stopped on an error; it is reported below
        }
    }
    drop(tx);
    producer.close().await?;
    let acked = collector.await.context("delivery task failed")??;
    eprintln!("produced {acked} records to {}", args.topic);
    Ok(())
}

/// One stdin line as a record, split into key and value as the flags say.
fn to_record(args: &ProduceArgs, line: String, line_no: u64) -> anyhow::Result<ProducerRecord> {
    let (key, value) = match (&args.key_separator, &args.record_key) {
        (Some(sep), _) => match line.split_once(sep.as_str()) {
            Some((k, v)) => (Some(k.to_string()), v.to_string()),
            None => bail!("line {line_no} has no key separator `{sep}`"),
        },
        (None, Some(k)) => (Some(k.clone()), line),
        (None, None) => (None, line),
    };
    let mut record = ProducerRecord::new(args.topic.clone(), Bytes::from(value));
    record.key = key.map(Bytes::from);
    record.partition = args.partition;
    for (k, v) in &args.headers {
        record = record.header(k.clone(), v.clone());
    }
    Ok(record)
}

/// Every stdin line as a record.
async fn read_records(args: &ProduceArgs) -> anyhow::Result<Vec<ProducerRecord>> {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut records = Vec::new();
    while let Some(line) = lines.next_line().await.context("cannot read stdin")? {
        records.push(to_record(args, line, records.len() as u64 + 1)?);
    }
    Ok(records)
}
