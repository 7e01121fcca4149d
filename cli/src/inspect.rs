//! `cairn inspect segment URL`: prints a segment's footer and verifies every CRC.

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_proto::SegmentReader;
use cairn_proto::v1::Compression;
use object_store::ObjectStoreExt;
use object_store::path::Path;

/// What to inspect.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum InspectCommand {
    /// Print a segment object's footer and verify its CRCs.
    #[command(after_help = "\
URL is a local path, file:///path/to/x.seg or s3://bucket/key (S3 settings from AWS_*).

Example:
  cairn inspect segment cairn-data/objects/segments/3f/0193....seg")]
    Segment {
        /// The segment object.
        url: String,
        /// Also decode and count every batch's records.
        #[arg(long)]
        decode: bool,
    },
}

pub(crate) async fn run(cmd: InspectCommand) -> anyhow::Result<()> {
    let InspectCommand::Segment { url, decode } = cmd;
    let bytes = read_object(&url).await?;
    let size = bytes.len();
    let (footer, frames) =
        SegmentReader::read_all(bytes).with_context(|| format!("{url} is not a valid segment"))?;
    println!("segment {url}");
    println!(
        "  size {size} bytes, {} batches, sealed at {} ms",
        footer.batches.len(),
        footer.sealed_at_ms
    );
    println!(
        "  TOPIC-ID\tPARTITION\tPOSITION\tLENGTH\tRECORDS\tCODEC\tCRC32C\tMIN-TS\tMAX-TS\tPRODUCER"
    );
    let mut records = 0u64;
    for (b, frame) in footer.batches.iter().zip(&frames) {
        let codec = Compression::try_from(b.compression).unwrap_or(Compression::Unspecified);
        if decode {
            let batch = cairn_proto::decode_records(codec, b.record_count, frame.payload.clone())
                .with_context(|| format!("batch at {} does not decode", b.position))?;
            records += batch.records.len() as u64;
        } else {
            records += u64::from(b.record_count);
        }
        let producer = if b.producer_id == 0 {
            "-".to_string()
        } else {
            format!("{}.{}@{}", b.producer_id, b.producer_epoch, b.base_sequence)
        };
        println!(
            "  {}\t{}\t{}\t{}\t{}\t{}\t{:#010x}\t{}\t{}\t{producer}",
            b.topic_id,
            b.partition,
            b.position,
            b.length,
            b.record_count,
            codec.as_str_name(),
            b.crc32c,
            b.min_timestamp_ms,
            b.max_timestamp_ms
        );
    }
    println!("  ok: {records} records, every CRC verified");
    Ok(())
}

async fn read_object(url: &str) -> anyhow::Result<Bytes> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .with_context(|| format!("`{url}` is not s3://bucket/key"))?;
        let store: Arc<dyn object_store::ObjectStore> =
            cairn_agent::open_object_store(&format!("s3://{bucket}"), &[])?;
        let got = store
            .get(&Path::from(key))
            .await
            .with_context(|| format!("cannot read {url}"))?;
        return got
            .bytes()
            .await
            .with_context(|| format!("cannot read {url}"));
    }
    if url.contains("://") && !url.starts_with("file://") {
        bail!("unsupported URL `{url}`: use a path, file:///path or s3://bucket/key");
    }
    let path = url.strip_prefix("file://").unwrap_or(url);
    let data = std::fs::read(path).with_context(|| format!("cannot read {path}"))?;
    Ok(Bytes::from(data))
}
