//! Access control lists in Kafka's model: a principal (or `*`) is allowed or denied an
//! operation on the resources a pattern names (literally, or by prefix); a deny wins over
//! any allow. Agents read the whole list every few seconds and decide each call from it.

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::tokens::check_principal;
use crate::{MetaError, Metadata};

/// What kind of thing an ACL is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResourceType {
    /// The cluster: agent status, tokens and ACLs, topic creation.
    Cluster,
    /// A topic.
    Topic,
    /// A consumer group.
    Group,
    /// A share group.
    ShareGroup,
    /// A named (transactional-style) producer.
    Producer,
}

/// How an ACL's pattern names resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PatternType {
    /// The resource whose name is the pattern (`*`: every resource of the type).
    Literal,
    /// Every resource whose name starts with the pattern.
    Prefix,
}

/// What an ACL allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Operation {
    /// Every operation.
    All,
    /// Fetch a topic; join, commit in or acquire from a group.
    Read,
    /// Produce to a topic; use a named producer.
    Write,
    /// Create a topic.
    Create,
    /// Delete a topic or its records.
    Delete,
    /// Change a topic (partitions), a group's offsets, or the cluster (tokens, ACLs).
    Alter,
    /// See a topic, group or the cluster (implied by read, write, delete and alter).
    Describe,
    /// See a resource's configuration (implied by alter).
    DescribeConfigs,
}

/// Whether an ACL allows or denies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Permission {
    /// Allows the operation.
    Allow,
    /// Denies it, whatever allows it.
    Deny,
}

macro_rules! names {
    ($t:ty { $($v:ident = $s:literal),* $(,)? }) => {
        impl $t {
            /// The name used in flags, logs and keys.
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl std::str::FromStr for $t {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($s => Ok(<$t>::$v),)*
                    other => Err(format!(
                        "`{other}`: use one of {}",
                        [$($s),*].join(", ")
                    )),
                }
            }
        }
    };
}

names!(ResourceType { Cluster = "cluster", Topic = "topic", Group = "group", ShareGroup = "share-group", Producer = "producer" });
names!(PatternType { Literal = "literal", Prefix = "prefix" });
names!(Operation {
    All = "all",
    Read = "read",
    Write = "write",
    Create = "create",
    Delete = "delete",
    Alter = "alter",
    Describe = "describe",
    DescribeConfigs = "describe-configs",
});
names!(Permission { Allow = "allow", Deny = "deny" });

/// One ACL.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Acl {
    /// The principal it applies to, or `*` for every authenticated principal.
    pub principal: String,
    /// The kind of resource.
    pub resource_type: ResourceType,
    /// How `pattern` names resources.
    pub pattern_type: PatternType,
    /// The name (or prefix); for the cluster, `*`.
    pub pattern: String,
    /// The operation.
    pub operation: Operation,
    /// Allow or deny.
    pub permission: Permission,
}

/// Longest pattern.
const MAX_PATTERN_BYTES: usize = 249;

impl Acl {
    /// Checks the fields: a principal name or `*`, a pattern of 1 to 249 bytes (`*` for
    /// the cluster), no prefix `*`.
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.principal != "*" {
            check_principal(&self.principal)?;
        }
        if self.resource_type == ResourceType::Cluster && self.pattern != "*" {
            return Err(MetaError::InvalidArgument(format!(
                "a cluster ACL's pattern is `*`, got `{}`",
                self.pattern.escape_debug()
            )));
        }
        if self.pattern.is_empty() || self.pattern.len() > MAX_PATTERN_BYTES {
            return Err(MetaError::InvalidArgument(format!(
                "an ACL pattern is 1 to {MAX_PATTERN_BYTES} bytes, got {}",
                self.pattern.len()
            )));
        }
        if let Some(c) = self.pattern.chars().find(|c| c.is_control()) {
            return Err(MetaError::InvalidArgument(format!(
                "ACL pattern `{}` contains {c:?}",
                self.pattern.escape_debug()
            )));
        }
        Ok(())
    }

    /// True when this ACL speaks of `operation` on the resource `name` of `resource_type`
    /// for `principal`.
    pub fn applies(
        &self,
        principal: &str,
        resource_type: ResourceType,
        name: &str,
        operation: Operation,
    ) -> bool {
        let who = self.principal == "*" || self.principal == principal;
        let what = self.resource_type == resource_type
            && match self.pattern_type {
                PatternType::Literal => self.pattern == "*" || self.pattern == name,
                PatternType::Prefix => name.starts_with(&self.pattern),
            };
        let how = self.operation == operation
            || self.operation == Operation::All
            || match operation {
                // Kafka's implications: who may act on a resource may see it, and its
                // configuration if they may change it. Only allows imply: a deny of read
                // does not deny describe.
                Operation::Describe => {
                    self.permission == Permission::Allow
                        && matches!(
                            self.operation,
                            Operation::Read
                                | Operation::Write
                                | Operation::Delete
                                | Operation::Alter
                        )
                }
                Operation::DescribeConfigs => {
                    self.permission == Permission::Allow && self.operation == Operation::Alter
                }
                _ => false,
            };
        who && what && how
    }

    /// The ACL in one line, as `cairn acl list` shows it.
    pub fn describe(&self) -> String {
        format!(
            "{} {} {} {} {} {}",
            self.permission,
            self.principal,
            self.operation,
            self.resource_type,
            self.pattern_type,
            self.pattern
        )
    }

    fn key(&self) -> Vec<u8> {
        keys::acl(
            self.resource_type.as_str(),
            self.pattern_type.as_str(),
            &self.pattern,
            &self.principal,
            self.operation.as_str(),
            self.permission.as_str(),
        )
    }
}

/// The decision on one call: `Ok` when some ACL allows it and none denies it.
pub fn decide(
    acls: &[Acl],
    principal: &str,
    resource_type: ResourceType,
    name: &str,
    operation: Operation,
) -> Result<(), Denial> {
    let mut allowed = false;
    for a in acls {
        if a.applies(principal, resource_type, name, operation) {
            match a.permission {
                Permission::Deny => return Err(Denial::Denied(a.clone())),
                Permission::Allow => allowed = true,
            }
        }
    }
    if allowed {
        Ok(())
    } else {
        Err(Denial::NoAllow)
    }
}

/// Why a call is not allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denial {
    /// No ACL allows it.
    NoAllow,
    /// This ACL denies it.
    Denied(Acl),
}

fn decode(k: &[u8], v: &[u8]) -> Result<Acl, MetaError> {
    serde_json::from_slice(v)
        .map_err(|e| MetaError::corrupt(format!("ACL {}", String::from_utf8_lossy(k)), e))
}

impl Metadata {
    /// Adds `acl` (adding one that exists changes nothing).
    pub async fn add_acl(&self, acl: &Acl) -> Result<(), MetaError> {
        acl.validate()?;
        let value = serde_json::to_vec(acl).map_err(|e| MetaError::corrupt("ACL", e))?;
        self.put_record("add_acl", acl.key(), value).await
    }

    /// Removes `acl`; false when there was no such ACL.
    pub async fn remove_acl(&self, acl: &Acl) -> Result<bool, MetaError> {
        self.remove_record("remove_acl", acl.key()).await
    }

    /// Every ACL, by resource type, pattern and principal.
    pub async fn list_acls(&self) -> Result<Vec<Acl>, MetaError> {
        self.list_records("list_acls", keys::acls(), decode).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acl(
        principal: &str,
        pattern_type: PatternType,
        pattern: &str,
        op: Operation,
        p: Permission,
    ) -> Acl {
        Acl {
            principal: principal.into(),
            resource_type: ResourceType::Topic,
            pattern_type,
            pattern: pattern.into(),
            operation: op,
            permission: p,
        }
    }

    #[test]
    fn prefixes_wildcards_implications_and_deny_wins() {
        use Operation::*;
        use PatternType::*;
        use Permission::*;
        let acls = vec![
            acl("alice", Prefix, "orders.", Read, Allow),
            acl("*", Literal, "public", Write, Allow),
            acl("alice", Literal, "orders.secret", Read, Deny),
        ];
        let t = ResourceType::Topic;
        assert_eq!(decide(&acls, "alice", t, "orders.eu", Read), Ok(()));
        // Read implies describe.
        assert_eq!(decide(&acls, "alice", t, "orders.eu", Describe), Ok(()));
        assert_eq!(
            decide(&acls, "alice", t, "orders.eu", Write),
            Err(Denial::NoAllow)
        );
        assert_eq!(
            decide(&acls, "alice", t, "payments", Read),
            Err(Denial::NoAllow)
        );
        assert!(matches!(
            decide(&acls, "alice", t, "orders.secret", Read),
            Err(Denial::Denied(_))
        ));
        // The denied read does not deny describe, which the prefix read allows.
        assert_eq!(decide(&acls, "alice", t, "orders.secret", Describe), Ok(()));
        assert_eq!(decide(&acls, "bob", t, "public", Write), Ok(()));
        assert_eq!(
            decide(&acls, "bob", ResourceType::Group, "public", Write),
            Err(Denial::NoAllow)
        );
        let all = vec![acl("bob", Literal, "*", All, Allow)];
        assert_eq!(decide(&all, "bob", t, "anything", Delete), Ok(()));
        assert!("describe-configs".parse::<Operation>().is_ok());
        assert!("share-group".parse::<ResourceType>().is_ok());
        assert!("sometimes".parse::<Permission>().is_err());
        let mut bad = acl("a b", Literal, "x", Read, Allow);
        assert!(bad.validate().is_err());
        bad.principal = "a".into();
        bad.resource_type = ResourceType::Cluster;
        assert!(bad.validate().is_err());
        bad.pattern = "*".into();
        assert!(bad.validate().is_ok());
    }
}
