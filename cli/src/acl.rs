//! `cairn acl`: add, list and remove ACLs, in Kafka's model.

use cairn_client::{AclBinding, Admin};
use cairn_metadata::acls::{Operation, PatternType, Permission, ResourceType};

use crate::ConnectArgs;

/// Subcommands of `cairn acl`.
#[derive(Debug, clap::Subcommand)]
#[command(after_help = "\
An ACL allows (or, with --deny, denies) a principal an operation on a resource: the cluster,
a topic, a consumer group, a share group or a named producer, named literally (`*`: all of
them) or by --prefix. A deny wins over any allow. ACLs are enforced by agents started with
--require-auth; --super-user principals bypass them. Every agent applies a change within 5
seconds.

What each call needs:
  produce                 write on the topic (and on the producer, for a named producer)
  consume / fetch         read on the topic
  consumer groups         read on the group and its topics; describe to see it; alter to
                          reset its offsets
  share groups            read on the share group and the topic
  topic create            create on the topic (or on the cluster: any topic)
  topic delete, delete-records     delete on the topic; add partitions: alter on the topic
  status                  describe on the cluster
  tokens, ACLs            alter on the cluster (describe to list ACLs)
read, write, delete and alter each imply describe.

Examples:
  cairn acl add --principal alice --operation read --topic orders
  cairn acl add --principal alice --operation read --group billing
  cairn acl add --principal etl --operation write --topic events. --prefix
  cairn acl add --principal '*' --operation describe --topic '*'
  cairn acl add --principal bob --operation read --topic orders.secret --deny
  cairn acl add --principal ops --operation alter --cluster
  cairn acl list
  cairn acl remove --principal alice --operation read --topic orders")]
pub(crate) enum AclCommand {
    /// Add an ACL.
    Add(AclArgs),
    /// List the ACLs.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        connect: ConnectArgs,
    },
    /// Remove an ACL (given exactly as it was added).
    Remove(AclArgs),
}

/// One ACL, from flags.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("resource").required(true).args(["cluster", "topic", "group", "share_group", "producer"])))]
pub(crate) struct AclArgs {
    /// The principal, or `*` for every authenticated principal.
    #[arg(long, value_name = "NAME")]
    principal: String,
    /// all, read, write, create, delete, alter, describe or describe-configs.
    #[arg(long, value_name = "OPERATION")]
    operation: Operation,
    /// The ACL is about the cluster.
    #[arg(long)]
    cluster: bool,
    /// The ACL is about this topic (`*`: every topic).
    #[arg(long, value_name = "NAME")]
    topic: Option<String>,
    /// The ACL is about this consumer group.
    #[arg(long, value_name = "NAME")]
    group: Option<String>,
    /// The ACL is about this share group.
    #[arg(long, value_name = "NAME")]
    share_group: Option<String>,
    /// The ACL is about this named producer.
    #[arg(long, value_name = "NAME")]
    producer: Option<String>,
    /// The name is a prefix: every resource whose name starts with it.
    #[arg(long)]
    prefix: bool,
    /// Deny instead of allow.
    #[arg(long)]
    deny: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

impl AclArgs {
    fn binding(&self) -> anyhow::Result<AclBinding> {
        let (resource_type, pattern) = if self.cluster {
            (ResourceType::Cluster, "*".to_string())
        } else if let Some(t) = &self.topic {
            (ResourceType::Topic, t.clone())
        } else if let Some(g) = &self.group {
            (ResourceType::Group, g.clone())
        } else if let Some(g) = &self.share_group {
            (ResourceType::ShareGroup, g.clone())
        } else if let Some(p) = &self.producer {
            (ResourceType::Producer, p.clone())
        } else {
            anyhow::bail!(
                "name a resource: --cluster, --topic, --group, --share-group or --producer"
            );
        };
        if self.cluster && self.prefix {
            anyhow::bail!("--prefix does not apply to --cluster");
        }
        let acl = cairn_metadata::acls::Acl {
            principal: self.principal.clone(),
            resource_type,
            pattern_type: if self.prefix {
                PatternType::Prefix
            } else {
                PatternType::Literal
            },
            pattern,
            operation: self.operation,
            permission: if self.deny {
                Permission::Deny
            } else {
                Permission::Allow
            },
        };
        acl.validate()?;
        Ok(AclBinding {
            principal: acl.principal,
            resource_type: acl.resource_type.to_string(),
            pattern_type: acl.pattern_type.to_string(),
            pattern: acl.pattern,
            operation: acl.operation.to_string(),
            permission: acl.permission.to_string(),
        })
    }
}

pub(crate) async fn run(cmd: AclCommand) -> anyhow::Result<()> {
    match cmd {
        AclCommand::Add(args) => {
            let acl = args.binding()?;
            Admin::new(args.connect.cluster().await?)
                .create_acl(acl)
                .await?;
            eprintln!("added; every agent applies it within 5 seconds");
        }
        AclCommand::Remove(args) => {
            let acl = args.binding()?;
            let deleted = Admin::new(args.connect.cluster().await?)
                .delete_acl(acl)
                .await?;
            if !deleted {
                anyhow::bail!("no such ACL: `cairn acl list` shows them");
            }
            eprintln!("removed; every agent applies it within 5 seconds");
        }
        AclCommand::List { json, connect } => {
            let acls = Admin::new(connect.cluster().await?).list_acls().await?;
            if json {
                let list: Vec<serde_json::Value> = acls
                    .iter()
                    .map(|a| {
                        serde_json::json!({
                            "principal": a.principal,
                            "resource_type": a.resource_type,
                            "pattern_type": a.pattern_type,
                            "pattern": a.pattern,
                            "operation": a.operation,
                            "permission": a.permission,
                        })
                    })
                    .collect();
                println!("{}", serde_json::Value::Array(list));
            } else {
                println!(
                    "{:<10} {:<20} {:<17} {:<12} {:<8} PATTERN",
                    "PERMISSION", "PRINCIPAL", "OPERATION", "RESOURCE", "MATCH"
                );
                for a in &acls {
                    println!(
                        "{:<10} {:<20} {:<17} {:<12} {:<8} {}",
                        a.permission,
                        a.principal,
                        a.operation,
                        a.resource_type,
                        a.pattern_type,
                        a.pattern
                    );
                }
            }
        }
    }
    Ok(())
}
