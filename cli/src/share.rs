//! `cairn share consume`: queue-mode consumption from a share group.

use std::io::Write;
use std::time::Duration;

use anyhow::Context;
use cairn_client::{ShareConfig, ShareConsumer};
use clap::Subcommand;

use crate::ConnectArgs;
use crate::consume::{Format, print_record};

/// Share-group (queue) commands.
#[derive(Debug, Subcommand)]
pub(crate) enum ShareCommand {
    /// Take records from a share group: each record goes to one consumer of the group at a
    /// time and is settled only by an acknowledgement.
    #[command(after_help = "\
Without --ack, records are printed and released again (a peek: they stay in the queue).
With --ack, each printed batch is acknowledged: those records are done for the group.
With --reject, they go to the dead-letter topic <topic>.dlq instead.
A record not acknowledged before its lease ends is delivered again, to any consumer; after
the agent's share_max_deliveries (default 5) it goes to <topic>.dlq.

Examples:
  cairn share consume tasks --group workers --ack --follow
  cairn share consume tasks --group workers --max-records 10        # peek")]
    Consume {
        /// Topic to read.
        topic: String,
        /// Share group name.
        #[arg(long, short)]
        group: String,
        /// Acknowledge what is printed.
        #[arg(long, conflicts_with = "reject")]
        ack: bool,
        /// Reject what is printed (to <topic>.dlq).
        #[arg(long)]
        reject: bool,
        /// Keep waiting for records instead of exiting when none is available.
        #[arg(long, short)]
        follow: bool,
        /// Stop after this many records.
        #[arg(long, value_name = "N")]
        max_records: Option<u64>,
        /// How long records are held before they go back to the queue (1s to 10m).
        #[arg(long, value_parser = crate::one_second_to_ten_minutes, default_value = "30s")]
        lease: Duration,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
        /// In text format, print `key<TAB>value` instead of the value alone.
        #[arg(long)]
        print_key: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

pub(crate) async fn run(cmd: ShareCommand) -> anyhow::Result<()> {
    let ShareCommand::Consume {
        topic,
        group,
        ack,
        reject,
        follow,
        max_records,
        lease,
        format,
        print_key,
        connect,
    } = cmd;
    let limit = max_records.unwrap_or(u64::MAX);
    let config = ShareConfig {
        lease,
        max_records: u32::try_from(limit.min(500)).unwrap_or(500),
        ..ShareConfig::default()
    };
    let mut consumer = ShareConsumer::new(connect.cluster().await?, &group, &topic, config);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut printed = 0u64;
    let wait = if follow {
        Duration::from_secs(10)
    } else {
        Duration::from_millis(200)
    };
    while printed < limit {
        let mut records = consumer.poll(wait).await?;
        if records.is_empty() {
            if follow {
                continue;
            }
            break;
        }
        let keep = usize::try_from(limit - printed).unwrap_or(usize::MAX);
        if records.len() > keep {
            let extra = records.split_off(keep);
            consumer.release(&extra).await?;
        }
        for r in &records {
            print_record(&mut out, &r.record, format, print_key)
                .context("cannot write to stdout")?;
        }
        out.flush().context("cannot write to stdout")?;
        printed += records.len() as u64;
        if ack {
            consumer.ack(&records).await?;
        } else if reject {
            consumer.reject(&records).await?;
        } else {
            consumer.release(&records).await?;
        }
        if !ack && !reject && !follow {
            // A peek must not read what it just released again.
            break;
        }
    }
    out.flush().context("cannot write to stdout")?;
    Ok(())
}
