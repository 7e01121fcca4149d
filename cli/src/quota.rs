//! `cairn quota`: set, list and remove quotas per principal.

use cairn_client::{Admin, QuotaBinding};

use crate::ConnectArgs;
use crate::size::parse_size;

/// Subcommands of `cairn quota`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = "\
A quota limits what one principal may take of the cluster each second: payload bytes it
produces, record bytes it fetches (share-group acquires included) and calls of any kind.
The rates are for the whole cluster: each agent enforces its share, the rate divided by the
live agents. A call over its quota is answered RESOURCE_EXHAUSTED (THROTTLED) with the time
to wait, which Cairn's clients wait out by themselves; a principal may burst one second's
worth after being idle. Principal `*` is the default: it covers every principal without a
quota of its own (and unauthenticated calls), and fills in the rates a principal's own quota
leaves unset. Every agent applies a change within 5 seconds. Sizes take K, M, G (powers of
1024): 10M is 10 MiB.

Examples:
  cairn quota set --principal '*' --produce-bytes 50M --fetch-bytes 100M
  cairn quota set --principal etl --produce-bytes 200M --requests 2000
  cairn quota list
  cairn quota remove --principal etl")]
pub(crate) enum QuotaCommand {
    /// Set a principal's quotas, replacing its earlier ones.
    Set(SetArgs),
    /// List the quotas.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove a principal's quotas (it then has the default's).
    Remove {
        /// The principal, or `*` for the default.
        #[arg(long, value_name = "NAME")]
        principal: String,
        #[command(flatten)]
        connect: ConnectArgs,
    },
}

/// `cairn quota set`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("rate").required(true).multiple(true).args(["produce_bytes", "fetch_bytes", "requests"])))]
pub(crate) struct SetArgs {
    /// The principal, or `*` for the default.
    #[arg(long, value_name = "NAME")]
    principal: String,
    /// Payload bytes produced per second, for the whole cluster (e.g. 10M).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    produce_bytes: Option<usize>,
    /// Record bytes fetched per second, for the whole cluster (e.g. 50M).
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    fetch_bytes: Option<usize>,
    /// Calls per second, for the whole cluster.
    #[arg(long, value_name = "N")]
    requests: Option<u64>,
    #[command(flatten)]
    connect: ConnectArgs,
}

fn rate(r: Option<u64>, bytes: bool) -> String {
    match r {
        None => "-".into(),
        Some(n) if bytes => format!("{}/s", crate::cluster::human_rate(n)),
        Some(n) => format!("{n}/s"),
    }
}

pub(crate) async fn run(cmd: QuotaCommand) -> anyhow::Result<()> {
    match cmd {
        QuotaCommand::Set(a) => {
            let quota = cairn_metadata::quotas::Quota {
                principal: a.principal,
                produce_bytes_per_sec: a.produce_bytes.map(|n| n as u64),
                fetch_bytes_per_sec: a.fetch_bytes.map(|n| n as u64),
                requests_per_sec: a.requests,
            };
            quota.validate()?;
            Admin::new(a.connect.cluster().await?)
                .set_quota(QuotaBinding {
                    principal: quota.principal,
                    produce_bytes_per_second: quota.produce_bytes_per_sec,
                    fetch_bytes_per_second: quota.fetch_bytes_per_sec,
                    requests_per_second: quota.requests_per_sec,
                })
                .await?;
            eprintln!("set; every agent applies it within 5 seconds");
        }
        QuotaCommand::Remove { principal, connect } => {
            let deleted = Admin::new(connect.cluster().await?)
                .delete_quota(&principal)
                .await?;
            if !deleted {
                anyhow::bail!("`{principal}` has no quota: `cairn quota list` shows them");
            }
            eprintln!("removed; every agent applies it within 5 seconds");
        }
        QuotaCommand::List { json, connect } => {
            let quotas = Admin::new(connect.cluster().await?).list_quotas().await?;
            if json {
                let list: Vec<serde_json::Value> = quotas
                    .iter()
                    .map(|q| {
                        serde_json::json!({
                            "principal": q.principal,
                            "produce_bytes_per_second": q.produce_bytes_per_second,
                            "fetch_bytes_per_second": q.fetch_bytes_per_second,
                            "requests_per_second": q.requests_per_second,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<24} {:>14} {:>14} {:>12}",
                    "PRINCIPAL", "PRODUCE", "FETCH", "REQUESTS"
                );
                for q in &quotas {
                    println!(
                        "{:<24} {:>14} {:>14} {:>12}",
                        q.principal,
                        rate(q.produce_bytes_per_second, true),
                        rate(q.fetch_bytes_per_second, true),
                        rate(q.requests_per_second, false)
                    );
                }
            }
        }
    }
    Ok(())
}
