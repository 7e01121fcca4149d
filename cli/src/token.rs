//! `cairn token`: issue, list and revoke bearer tokens, through an agent or (to bootstrap
//! a cluster that requires authentication) directly in the metadata store.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cairn_client::Admin;
use cairn_metadata::Metadata;
use serde_json::json;

use crate::ConnectArgs;

/// Subcommands of `cairn token`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = "\
A token authenticates its holder as a principal on every agent of the cluster. The cluster
keeps only a salted hash of it: the token is printed once, by `create`. A revoked or
expired token is refused by every agent within 5 seconds.

To issue the first token of a cluster that requires authentication, run `create` where the
metadata store is reachable, with --metadata (no agent is asked).

Examples:
  cairn token create --principal alice --expires 30d
  cairn token create --principal admin --metadata sqlite:./cairn-data/meta.sqlite
  export CAIRN_TOKEN=cairn_...        # then every cairn command sends it
  cairn token list
  cairn token revoke 3f1c0a9e5b2d4c71")]
pub(crate) enum TokenCommand {
    /// Issue a token and print it (once).
    Create {
        /// The principal the token authenticates as.
        #[arg(long, value_name = "NAME")]
        principal: String,
        /// How long it works (e.g. 30d, 12h); for ever when not given.
        #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
        expires: Option<Duration>,
        /// Print JSON (with the token) instead of the token alone.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// List tokens: id, principal, when issued, when they expire, by whom.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Revoke a token by its id (or the whole token).
    Revoke {
        /// The token's id, as `list` shows it.
        id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Through an agent, or directly in a metadata store.
#[derive(Debug, clap::Args)]
pub(crate) struct Target {
    /// Write to this metadata store directly instead of asking an agent (sqlite:PATH or
    /// postgres://...): how the first token of a secure cluster is issued.
    #[arg(long, value_name = "SPEC")]
    metadata: Option<String>,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl Target {
    async fn open(&self) -> anyhow::Result<Option<Metadata>> {
        let Some(spec) = &self.metadata else {
            return Ok(None);
        };
        let kv = cairn_metadata::open_kv(spec).await.with_context(|| {
            format!(
                "cannot open metadata store {}",
                cairn_metadata::redact_spec(spec)
            )
        })?;
        let metadata = Metadata::new(kv, Arc::new(cairn_metadata::SystemClock));
        // Expiry is judged on the store's clock, as the agents judge it.
        if let Err(e) = metadata.sync_clock().await {
            tracing::warn!(error = %e, "cannot read the metadata store's clock; using this host's");
        }
        Ok(Some(metadata))
    }
}

fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

fn row(t: &cairn_client::TokenInfo) -> serde_json::Value {
    json!({
        "id": t.id,
        "principal": t.principal,
        "created_at_ms": t.created_at_ms,
        "expires_at_ms": t.expires_at_ms,
        "created_by": t.created_by,
    })
}

fn info(t: cairn_metadata::tokens::TokenRecord) -> cairn_client::TokenInfo {
    cairn_client::TokenInfo {
        id: t.id,
        principal: t.principal,
        created_at_ms: t.created_ms,
        expires_at_ms: t.expires_ms,
        created_by: t.created_by,
    }
}

pub(crate) async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create {
            principal,
            expires,
            json,
            target,
        } => {
            let expires_ms = expires.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
            let (record, token) = match target.open().await? {
                Some(m) => {
                    let (r, t) = m
                        .create_token(&principal, expires_ms, "(metadata store)")
                        .await?;
                    (info(r), t)
                }
                None => {
                    let r = Admin::new(target.connect.cluster().await?)
                        .create_token(&principal, expires)
                        .await?;
                    (
                        r.info.context("the agent answered no token record")?,
                        r.token,
                    )
                }
            };
            if json {
                let mut v = row(&record);
                v["token"] = json!(token);
                println!("{v}");
            } else {
                println!("{token}");
                eprintln!(
                    "token {} for principal {}{}; keep it now, it cannot be shown again",
                    record.id,
                    record.principal,
                    record
                        .expires_at_ms
                        .map_or_else(String::new, |e| format!(", expires {}", time(e)))
                );
            }
        }
        TokenCommand::List { json, target } => {
            let tokens = match target.open().await? {
                Some(m) => m.list_tokens().await?.into_iter().map(info).collect(),
                None => {
                    Admin::new(target.connect.cluster().await?)
                        .list_tokens()
                        .await?
                }
            };
            if json {
                let list: Vec<_> = tokens.iter().map(row).collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<16}  {:<24}  {:<20}  {:<20}  CREATED BY",
                    "ID", "PRINCIPAL", "CREATED", "EXPIRES"
                );
                for t in &tokens {
                    println!(
                        "{:<16}  {:<24}  {:<20}  {:<20}  {}",
                        t.id,
                        t.principal,
                        time(t.created_at_ms),
                        t.expires_at_ms.map_or_else(|| "never".into(), time),
                        t.created_by
                    );
                }
            }
        }
        TokenCommand::Revoke { id, target } => {
            let revoked = match target.open().await? {
                Some(m) => m.revoke_token(&id).await?,
                None => {
                    Admin::new(target.connect.cluster().await?)
                        .revoke_token(&id)
                        .await?
                }
            };
            if !revoked {
                // The id only: a whole token pasted here is not echoed back.
                let id = cairn_metadata::tokens::parse_token(&id).map_or(id.as_str(), |t| t.id);
                anyhow::bail!("no token has id {id}: `cairn token list` shows them");
            }
            eprintln!("revoked; every agent refuses it within 5 seconds");
        }
    }
    Ok(())
}
