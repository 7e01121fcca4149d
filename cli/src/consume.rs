//! `cairn consume TOPIC`.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{ConsumedRecord, Consumer, ConsumerConfig, GroupConfig, GroupConsumer, Offset};

use crate::ConnectArgs;

/// Flags of `cairn consume`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Without --follow, prints what the partitions hold now and exits. Without --from-beginning or
--offset, starts at the end (like Kafka's console consumer), so only new records are shown.

Examples:
  cairn consume events --from-beginning
  cairn consume events --partition 0 --offset 42 --format json
  cairn consume events --follow
  cairn consume events --group billing --follow     # share partitions with other members

With --group, the agent assigns this consumer some of the topic's partitions (sticky, shared
with the group's other members); it starts each at the group's committed offset (else where
--from-beginning says), and commits its position after printing each batch. If it dies, its
partitions move to the others after --session-timeout.")]
pub(crate) struct ConsumeArgs {
    /// Topic to read.
    topic: String,
    /// Partitions to read (repeatable); all when not given.
    #[arg(long, short, conflicts_with = "group")]
    partition: Vec<u32>,
    /// Consume as a member of this consumer group.
    #[arg(long, short)]
    group: Option<String>,
    /// With --group: how long without a heartbeat before this member's partitions move
    /// (1s to 10m).
    #[arg(long, value_parser = crate::one_second_to_ten_minutes, default_value = "10s", requires = "group")]
    session_timeout: Duration,
    /// Start at the oldest record.
    #[arg(long, conflicts_with = "offset")]
    from_beginning: bool,
    /// Start at this offset (in each chosen partition).
    #[arg(long, conflicts_with = "group")]
    offset: Option<i64>,
    /// Keep waiting for new records instead of exiting at the end.
    #[arg(long, short)]
    follow: bool,
    /// Stop after this many records.
    #[arg(long, value_name = "N")]
    max_records: Option<u64>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    format: Format,
    /// In text format, print `key<TAB>value` instead of the value alone.
    #[arg(long)]
    print_key: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

/// How records are printed.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub(crate) enum Format {
    /// The value, one record per line.
    Text,
    /// One JSON object per line with offset, timestamp, key, value and headers.
    Json,
}

pub(crate) async fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    if let Some(n) = args.offset
        && n < 0
    {
        bail!("--offset must be 0 or more, got {n}");
    }
    let from = match (args.from_beginning, args.offset) {
        (true, _) => Offset::Beginning,
        (false, Some(n)) => Offset::At(n),
        (false, None) => Offset::End,
    };
    let channel = args.connect.cluster().await?;
    if let Some(group) = args.group.clone() {
        return run_group(args, channel, &group, from).await;
    }
    let mut consumer = Consumer::new(channel, ConsumerConfig::default());
    let mut retries = Retries::default();
    if args.partition.is_empty() {
        while let Err(e) = consumer.assign_all(&args.topic, from).await {
            retries.after(e).await?;
        }
    } else {
        for &p in &args.partition {
            while let Err(e) = consumer.assign(&args.topic, p, from).await {
                retries.after(e).await?;
            }
        }
    }
    retries.succeeded();
    if args.follow {
        // After assignment, so a reader of stderr knows records produced now will show.
        let n = consumer.positions().len();
        eprintln!(
            "following {} ({n} partition{}); Ctrl-C to stop",
            args.topic,
            if n == 1 { "" } else { "s" }
        );
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.max_records.unwrap_or(u64::MAX);
    let wait = if args.follow {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    'poll: loop {
        let records = match consumer.poll(wait).await {
            Ok(r) => {
                retries.succeeded();
                r
            }
            Err(e) => {
                retries.after(e).await?;
                continue;
            }
        };
        if records.is_empty() && !args.follow && consumer.caught_up() {
            break;
        }
        for r in &records {
            print_record(&mut out, r, args.format, args.print_key)
                .context("cannot write to stdout")?;
            printed += 1;
            if printed >= limit {
                break 'poll;
            }
        }
        out.flush().context("cannot write to stdout")?;
    }
    out.flush().context("cannot write to stdout")?;
    if printed == 0 && from == Offset::End && !args.follow {
        eprintln!("no new records (use --from-beginning to read what is stored)");
    }
    Ok(())
}

/// How long `cairn consume` keeps retrying calls that fail retryably (an agent died and
/// clients have not yet seen its lease run out, the metadata store restarts) before it
/// gives up, as a Kafka consumer keeps polling through a broker's failover.
const RETRY_FOR: Duration = Duration::from_secs(60);

/// The retries of failing calls: a warning at the first, exponential backoff, a deadline.
#[derive(Debug, Default)]
struct Retries {
    since: Option<std::time::Instant>,
    backoff: Duration,
}

impl Retries {
    /// Waits before the next try when `e` is retryable and the deadline has not passed;
    /// else returns it.
    async fn after(&mut self, e: cairn_client::ClientError) -> anyhow::Result<()> {
        let since = *self.since.get_or_insert_with(std::time::Instant::now);
        if !e.is_retryable() || since.elapsed() >= RETRY_FOR {
            return Err(e.into());
        }
        if self.backoff.is_zero() {
            eprintln!("warning: {e}; retrying for up to {} s", RETRY_FOR.as_secs());
            self.backoff = Duration::from_millis(100);
        } else {
            self.backoff = (self.backoff * 2).min(Duration::from_secs(2));
        }
        tokio::time::sleep(self.backoff).await;
        Ok(())
    }

    /// A call succeeded: the next failure starts over.
    fn succeeded(&mut self) {
        *self = Retries::default();
    }
}

/// `cairn consume --group`: a group member that commits after printing each batch.
async fn run_group(
    args: ConsumeArgs,
    channel: cairn_client::Cluster,
    group: &str,
    from: Offset,
) -> anyhow::Result<()> {
    let config = GroupConfig {
        session_timeout: args.session_timeout,
        start: from,
        ..GroupConfig::default()
    };
    let mut member = GroupConsumer::join(channel, group, &[args.topic.as_str()], config).await?;
    eprintln!(
        "joined group {group} as {} (generation {}, {} partition(s)); Ctrl-C to stop",
        member.member_id(),
        member.generation(),
        member.assignment().len()
    );
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let limit = args.max_records.unwrap_or(u64::MAX);
    let wait = if args.follow {
        Duration::from_secs(10)
    } else {
        Duration::ZERO
    };
    let stop = tokio::signal::ctrl_c();
    tokio::pin!(stop);
    let mut retries = Retries::default();
    loop {
        let records = tokio::select! {
            r = member.poll(wait) => r,
            _ = &mut stop => break,
        };
        let records = match records {
            Ok(r) => {
                retries.succeeded();
                r
            }
            Err(e) => {
                retries.after(e).await?;
                continue;
            }
        };
        if records.is_empty() && !args.follow && member.caught_up() {
            break;
        }
        let mut take = records.len();
        if printed + take as u64 > limit {
            take = (limit - printed) as usize;
            // Commit only what is printed: the rest stays for the group.
            let mut first: std::collections::BTreeMap<(String, u32), i64> = Default::default();
            for r in &records[take..] {
                first
                    .entry((r.topic.clone(), r.partition))
                    .or_insert(r.offset);
            }
            for ((t, p), o) in first {
                member.seek(&t, p, o).await?;
            }
        }
        for r in &records[..take] {
            print_record(&mut out, r, args.format, args.print_key)
                .context("cannot write to stdout")?;
        }
        printed += take as u64;
        out.flush().context("cannot write to stdout")?;
        if take > 0
            && let Err(e) = member.commit().await
        {
            // Committed with the next batch, or at the end.
            retries.after(e).await?;
        }
        if printed >= limit {
            break;
        }
    }
    out.flush().context("cannot write to stdout")?;
    member.commit().await?;
    member.leave().await?;
    Ok(())
}

pub(crate) fn print_record(
    out: &mut impl Write,
    r: &ConsumedRecord,
    format: Format,
    print_key: bool,
) -> std::io::Result<()> {
    match format {
        Format::Text => {
            if print_key {
                out.write_all(&r.key)?;
                out.write_all(b"\t")?;
            }
            out.write_all(&r.value)?;
            out.write_all(b"\n")
        }
        Format::Json => {
            let mut obj = serde_json::Map::new();
            obj.insert("topic".into(), r.topic.clone().into());
            obj.insert("partition".into(), r.partition.into());
            obj.insert("offset".into(), r.offset.into());
            obj.insert("timestamp_ms".into(), r.timestamp_ms.into());
            put_bytes(&mut obj, "key", &r.key);
            put_bytes(&mut obj, "value", &r.value);
            let headers: Vec<serde_json::Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    let mut h = serde_json::Map::new();
                    h.insert("key".into(), k.clone().into());
                    put_bytes(&mut h, "value", v);
                    h.into()
                })
                .collect();
            obj.insert("headers".into(), headers.into());
            serde_json::to_writer(&mut *out, &serde_json::Value::Object(obj))?;
            out.write_all(b"\n")
        }
    }
}

/// Text when the bytes are UTF-8, else `<name>_hex` with the bytes in hex.
fn put_bytes(obj: &mut serde_json::Map<String, serde_json::Value>, name: &str, b: &Bytes) {
    match std::str::from_utf8(b) {
        Ok(s) => {
            obj.insert(name.into(), s.into());
        }
        Err(_) => {
            let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
            obj.insert(format!("{name}_hex"), hex.into());
        }
    }
}
