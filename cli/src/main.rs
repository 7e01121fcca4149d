//! `cairn`: run an agent, manage topics, produce and consume records, inspect segments.

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

mod acl;
mod agent;
mod bench;
mod cluster;
mod codec;
mod compactor;
mod consume;
mod group;
mod inspect;
mod produce;
mod quota;
mod share;
mod size;
#[cfg(feature = "sql")]
mod sql;
mod status;
mod stores;
mod table;
mod token;
mod topic;

use std::process::ExitCode;

/// mimalloc instead of the system allocator: the agent's request buffers are large and
/// short-lived, and glibc's malloc serves each from fresh mmap'd pages (page faults and
/// zeroing on every produce request; see docs/BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand};

/// Default address of an agent, for every client command.
pub(crate) const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:7170";

/// Cairn: a diskless, event-sourced log on object storage.
///
/// Start an agent with `cairn agent` (data goes to ./cairn-data), then use the other
/// commands against it. The agent's settings and the agent address (--endpoint) can also be
/// given as CAIRN_* environment variables (see each command's --help).
#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    propagate_version = true,
    max_term_width = 100
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run an agent (with no flags: objects in ./cairn-data/objects, metadata in
    /// ./cairn-data/meta.sqlite, gRPC on 127.0.0.1:7170).
    Agent(agent::AgentArgs),
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Send lines from stdin as records.
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// Run the compactor: Parquet compaction, retention and garbage collection.
    Compactor(compactor::CompactorArgs),
    /// SQL over live topics (compacted Parquet plus the uncompacted tail).
    #[cfg(feature = "sql")]
    Sql(sql::SqlArgs),
    /// The Delta Lake table of each topic (for Spark, DuckDB, polars, Trino...).
    #[command(subcommand)]
    Table(table::TableCommand),
    /// Benchmarks: produce, end-to-end, consume, raw PUT; with the object-store bill.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// One screen about a running agent: version, uptime, stores, throughput, cache.
    Status(status::StatusArgs),
    /// The cluster's live agents: addresses, zones, load.
    Cluster(cluster::ClusterArgs),
    /// Consume from share groups (queue mode, per-record acknowledgement).
    #[command(subcommand)]
    Share(share::ShareCommand),
    /// List, describe and reset consumer groups.
    #[command(subcommand)]
    Group(group::GroupCommand),
    /// Add, list and remove ACLs (who may do what to which topics and groups).
    #[command(subcommand)]
    Acl(acl::AclCommand),
    /// Issue, list and revoke bearer tokens.
    #[command(subcommand)]
    Token(token::TokenCommand),
    /// Set, list and remove quotas (bytes and calls per second per principal).
    #[command(subcommand)]
    Quota(quota::QuotaCommand),
    /// Look inside stored objects.
    #[command(subcommand)]
    Inspect(inspect::InspectCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Before any TLS client or server is built (see the function's docs).
    cairn_storage::install_crypto_provider();
    // A benchmark prints its own report: the compactor's cycle lines would bury it.
    let level = if matches!(cli.command, Command::Bench(_)) {
        "warn"
    } else {
        "info"
    };
    let filter = match log_filter(level) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only on a terminal: a log file or journald gets plain text to grep.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Agent(args) => agent::run(args).await,
            Command::Topic(cmd) => topic::run(cmd).await,
            Command::Produce(args) => produce::run(args).await,
            Command::Consume(args) => consume::run(args).await,
            Command::Inspect(cmd) => inspect::run(cmd).await,
            Command::Group(cmd) => group::run(cmd).await,
            Command::Share(cmd) => share::run(cmd).await,
            Command::Status(args) => status::run(args).await,
            Command::Cluster(args) => cluster::run(args).await,
            Command::Token(cmd) => token::run(cmd).await,
            Command::Acl(cmd) => acl::run(cmd).await,
            Command::Quota(cmd) => quota::run(cmd).await,
            Command::Bench(cmd) => bench::run(cmd).await,
            Command::Compactor(args) => compactor::run(args).await,
            Command::Table(cmd) => table::run(cmd).await,
            #[cfg(feature = "sql")]
            Command::Sql(args) => sql::run(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes, no backtrace.
            let mut line = e.to_string();
            for cause in e.chain().skip(1) {
                let cause = cause.to_string();
                if !line.contains(&cause) {
                    line.push_str(": ");
                    line.push_str(&cause);
                }
            }
            eprintln!("error: {line}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter from `CAIRN_LOG`, else `RUST_LOG`, else `level`; a filter that is set but
/// does not parse is an error (silently logging at another level hides what was asked).
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter, String> {
    for var in ["CAIRN_LOG", "RUST_LOG"] {
        if let Ok(spec) = std::env::var(var) {
            return tracing_subscriber::EnvFilter::try_new(&spec).map_err(|e| {
                format!(
                    "invalid {var} `{spec}`: {e} (e.g. {var}=info or {var}=cairn_agent=debug,warn)"
                )
            });
        }
    }
    // The Delta Lake library logs every snapshot it builds at info, and at error the
    // missing log of a table not created yet (an answer it also returns, which Cairn logs
    // when it is a failure).
    Ok(tracing_subscriber::EnvFilter::new(format!(
        "{level},buoyant_kernel=off,buoyant_kernel_engine=warn,deltalake_core=warn"
    )))
}

/// A duration flag between `lo` and `hi` (inclusive), for clap.
pub(crate) fn duration_between(
    s: &str,
    lo: std::time::Duration,
    hi: std::time::Duration,
) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s).map_err(|e| e.to_string())?;
    if d < lo || d > hi {
        return Err(format!(
            "must be between {} and {}, got {}",
            humantime::format_duration(lo),
            humantime::format_duration(hi),
            humantime::format_duration(d)
        ));
    }
    Ok(d)
}

/// A lease or session timeout: 1s to 10m, as the agent accepts.
pub(crate) fn one_second_to_ten_minutes(s: &str) -> Result<std::time::Duration, String> {
    duration_between(
        s,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(600),
    )
}

/// Connection flags shared by the client commands.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ConnectArgs {
    /// Address of an agent, or a comma-separated list: the client learns the whole cluster
    /// from the first that answers, then produces to an agent of its zone and fetches each
    /// partition from its owner there.
    #[arg(
        long,
        env = "CAIRN_ENDPOINT",
        default_value = DEFAULT_ENDPOINT,
        value_delimiter = ',',
        value_name = "ADDR[,ADDR...]"
    )]
    pub(crate) endpoint: Vec<String>,
    /// The client's zone (availability zone): agents of this zone are preferred; with none,
    /// or when the zone has no live agent, any agent is used.
    #[arg(long, env = "CAIRN_ZONE", value_name = "ZONE")]
    pub(crate) zone: Option<String>,
    /// CA certificate (PEM) that signed the agents' certificates: connect over TLS and
    /// trust it. With --cert but no --ca, the system's trusted roots are used.
    #[arg(long, env = "CAIRN_CA", value_name = "FILE")]
    pub(crate) ca: Option<std::path::PathBuf>,
    /// Client certificate (PEM) to present to agents that ask for one (mTLS); needs --key.
    #[arg(long, env = "CAIRN_CERT", value_name = "FILE", requires = "key")]
    pub(crate) cert: Option<std::path::PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(long, env = "CAIRN_KEY", value_name = "FILE", requires = "cert")]
    pub(crate) key: Option<std::path::PathBuf>,
    /// Bearer token to authenticate with (`cairn token create` prints one). Prefer the
    /// environment variable: other users of the host can read a process's flags.
    #[arg(
        long,
        env = "CAIRN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub(crate) token: Option<String>,
}

impl ConnectArgs {
    /// TLS settings and credentials from the flags.
    pub(crate) fn security(&self) -> anyhow::Result<cairn_client::Security> {
        let mut security = if self.ca.is_some() || self.cert.is_some() {
            cairn_client::Security::tls_from_files(
                self.ca.as_deref(),
                self.cert.as_deref(),
                self.key.as_deref(),
            )?
        } else {
            cairn_client::Security::default()
        };
        if let Some(t) = &self.token {
            security = security.with_token(t)?;
        }
        Ok(security)
    }

    /// The endpoints with a scheme (`https://` with TLS settings).
    pub(crate) fn endpoints(&self) -> anyhow::Result<Vec<String>> {
        let security = self.security()?;
        let mut out = Vec::new();
        for e in self
            .endpoint
            .iter()
            .map(|e| e.trim())
            .filter(|e| !e.is_empty())
        {
            out.push(security.url(e)?);
        }
        Ok(out)
    }

    /// The cluster, learned from the endpoints.
    pub(crate) async fn cluster(&self) -> anyhow::Result<cairn_client::Cluster> {
        use anyhow::Context;
        let endpoints = self.endpoints()?;
        if endpoints.is_empty() {
            anyhow::bail!("--endpoint is empty: give an agent address such as {DEFAULT_ENDPOINT}");
        }
        let mut config =
            cairn_client::ClusterConfig::new(endpoints.clone()).security(self.security()?);
        if let Some(z) = &self.zone {
            config = config.zone(z.clone());
        }
        cairn_client::Cluster::connect(config)
            .await
            .context("is an agent running? start one with `cairn agent`")
    }

    /// The first endpoint alone (for commands about one agent).
    pub(crate) async fn first_agent(&self) -> anyhow::Result<cairn_client::Cluster> {
        use anyhow::Context;
        let Some(endpoint) = self.endpoints()?.into_iter().next() else {
            anyhow::bail!("--endpoint is empty: give an agent address such as {DEFAULT_ENDPOINT}");
        };
        cairn_client::Cluster::single(&endpoint, &self.security()?)
            .await
            .with_context(|| {
                format!("is an agent running at {endpoint}? start one with `cairn agent`")
            })
    }
}

#[cfg(test)]
mod cli_tests {
    use super::*;

    /// Every command's flags are well formed (no two with one name): clap checks this only
    /// when a command is parsed, so a clash would otherwise surface to users.
    #[test]
    fn every_command_is_well_formed() {
        <Cli as clap::CommandFactory>::command().debug_assert();
    }
}
