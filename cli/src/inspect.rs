//! `cairn inspect segment URL`: prints a segment's frames (from its footer and the frame
//! headers) and verifies every CRC.

use std::sync::Arc;

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_proto::v2::{FrameHeader, TimestampType};
use cairn_storage::SegmentReader;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::codec::codec_name;

/// What to inspect.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum InspectCommand {
    /// Print a segment object's frames and verify its CRCs.
    #[command(after_help = "\
URL is a local path, file:///path/to/x.seg or s3://bucket/key (S3 settings from AWS_*).

One line per frame: the topic's internal id, the partition, where the stored frame lies in
the object (POSITION, LENGTH), its record count, codec and payload CRC32C, which clock its
record timestamps come from (create or log-append), the first and last record timestamps
(create time; `-` for log-append frames), when the agent stored it (APPEND-TIME, ms since
the Unix epoch), and the idempotent producer's stamp as id.epoch@base-sequence (`-` for a
plain producer). Every frame header and payload CRC and the footer's CRC are verified.

Example:
  cairn inspect segment cairn-data/objects/segments/3f/0193....seg")]
    Segment {
        /// The segment object.
        url: String,
        /// Also decompress and decode every frame's records, and check each frame's record
        /// count against them.
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
        "  size {size} bytes, {} frames, sealed at {} ms",
        footer.frames.len(),
        footer.sealed_at_ms
    );
    println!(
        "  TOPIC-ID\tPARTITION\tPOSITION\tLENGTH\tRECORDS\tCODEC\tCRC32C\tTIMESTAMPS\tFIRST-TS\tLAST-TS\tAPPEND-TIME\tPRODUCER"
    );
    let mut records = 0u64;
    for (entry, frame) in footer.frames.iter().zip(frames) {
        let h = &frame.header;
        let (first, last) = first_last(h);
        let row = format!(
            "  {}\t{}\t{}\t{}\t{}\t{}\t{:#010x}\t{}\t{}\t{}\t{}\t{}",
            entry.topic_id,
            entry.partition,
            entry.position,
            entry.length,
            h.record_count,
            codec_name(h.codec),
            h.payload_crc32c,
            timestamp_type(h),
            first,
            last,
            h.append_time_ms,
            producer(h)
        );
        if decode {
            let opened = cairn_proto::open_frame(h, frame.payload).with_context(|| {
                format!(
                    "the frame at {} ({}/{}) does not decode",
                    entry.position, entry.topic_id, entry.partition
                )
            })?;
            records += opened.len() as u64;
        } else {
            records += u64::from(h.record_count);
        }
        println!("{row}");
    }
    if decode {
        println!("  ok: {records} records, every CRC verified, every frame decoded");
    } else {
        println!("  ok: {records} records, every CRC verified");
    }
    Ok(())
}

/// Which clock a frame's record timestamps come from.
fn timestamp_type(h: &FrameHeader) -> &'static str {
    match TimestampType::try_from(h.timestamp_type) {
        Ok(TimestampType::CreateTime) => "create",
        Ok(TimestampType::LogAppendTime) => "log-append",
        Ok(TimestampType::Unspecified) => "unspecified",
        Err(_) => "unknown",
    }
}

/// The first and last record timestamps of a CREATE_TIME frame; `-` otherwise (every record
/// of a LOG_APPEND_TIME frame takes its append time).
fn first_last(h: &FrameHeader) -> (String, String) {
    if h.timestamp_type == TimestampType::CreateTime as i32 {
        (
            h.first_timestamp_ms.to_string(),
            h.last_timestamp_ms.to_string(),
        )
    } else {
        ("-".into(), "-".into())
    }
}

/// The idempotent producer's stamp as `id.epoch@base-sequence`, `-` for a plain producer.
fn producer(h: &FrameHeader) -> String {
    match &h.producer {
        Some(p) => format!("{}.{}@{}", p.producer_id, p.epoch, p.base_sequence),
        None => "-".into(),
    }
}

async fn read_object(url: &str) -> anyhow::Result<Bytes> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .filter(|(b, k)| !b.is_empty() && !k.is_empty())
            .with_context(|| format!("`{url}` is not s3://bucket/key"))?;
        let store: Arc<dyn object_store::ObjectStore> =
            cairn_storage::open_object_store(&format!("s3://{bucket}"), &[])?;
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
