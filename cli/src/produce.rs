//! `cairn produce TOPIC`: one record per stdin line.

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{Producer, ProducerConfig, ProducerRecord};
use tokio::io::AsyncBufReadExt;

use crate::ConnectArgs;

/// Flags of `cairn produce`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Examples:
  echo hello | cairn produce events
  printf 'user-1:signed up\\nuser-2:logged in\\n' | cairn produce events --key-separator :
  seq 1000 | cairn produce events --partition 3 --header source=seq")]
pub(crate) struct ProduceArgs {
    /// Topic to write to.
    topic: String,
    /// Key of every record (records with equal keys share a partition).
    #[arg(long, conflicts_with = "key_separator")]
    key: Option<String>,
    /// Split each line at the first SEP into key and value.
    #[arg(long, value_name = "SEP")]
    key_separator: Option<String>,
    /// Write to this partition instead of choosing by key.
    #[arg(long, short)]
    partition: Option<u32>,
    /// A header added to every record, as KEY=VALUE (repeatable).
    #[arg(long = "header", value_name = "KEY=VALUE", value_parser = parse_header)]
    headers: Vec<(String, String)>,
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
    let channel = args.connect.channel().await?;
    let producer = Producer::new(channel, ProducerConfig::default());
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
        let (key, value) = match (&args.key_separator, &args.key) {
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
