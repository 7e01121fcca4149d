//! Kafka's ACL APIs (DescribeAcls, CreateAcls, DeleteAcls) over Cairn's ACLs: one list,
//! whichever API or `cairn acl` wrote it.
//!
//! Kafka's principals are `User:<name>`; Cairn's are the bare name, `*` for every
//! authenticated one. Cairn's ACLs have no host, so only the host `*` is taken. Kafka's
//! resource types map to Cairn's (topic, group, cluster, and transactional id to Cairn's
//! named producer); Cairn's share-group ACLs have no Kafka type and are not shown here.
//! Listing needs `describe` on the cluster, changing needs `alter`, as for `cairn acl`.

use cairn_metadata::acls::{Acl, Operation, PatternType, Permission, ResourceType};
use kafka_protocol::ResponseError;
use kafka_protocol::messages::create_acls_request::AclCreation;
use kafka_protocol::messages::create_acls_response::AclCreationResult;
use kafka_protocol::messages::delete_acls_response::{
    DeleteAclsFilterResult, DeleteAclsMatchingAcl,
};
use kafka_protocol::messages::describe_acls_response::{AclDescription, DescribeAclsResource};
use kafka_protocol::messages::{
    CreateAclsRequest, CreateAclsResponse, DeleteAclsRequest, DeleteAclsResponse,
    DescribeAclsRequest, DescribeAclsResponse,
};
use kafka_protocol::protocol::StrBytes;

use super::admin::Failure;
use super::kind_code;
use crate::service::Shared;

/// Kafka's codes of a filter matching anything.
const ANY: i8 = 1;
/// Kafka's pattern-type filter MATCH: the ACLs that apply to a resource name.
const MATCH: i8 = 2;

fn invalid(why: String) -> Failure {
    (ResponseError::InvalidRequest.code(), why)
}

/// Kafka's resource type code of a Cairn resource type, if Kafka has one.
fn resource_code(rt: ResourceType) -> Option<i8> {
    match rt {
        ResourceType::Topic => Some(2),
        ResourceType::Group => Some(3),
        ResourceType::Cluster => Some(4),
        ResourceType::Producer => Some(5),
        ResourceType::ShareGroup => None,
    }
}

fn resource_type(code: i8) -> Result<ResourceType, Failure> {
    Ok(match code {
        2 => ResourceType::Topic,
        3 => ResourceType::Group,
        4 => ResourceType::Cluster,
        5 => ResourceType::Producer,
        other => {
            return Err(invalid(format!(
                "resource type {other}: Cairn's ACLs are on topics (2), groups (3), the \
                 cluster (4) and transactional ids (5, Cairn's named producers)"
            )));
        }
    })
}

fn pattern_code(p: PatternType) -> i8 {
    match p {
        PatternType::Literal => 3,
        PatternType::Prefix => 4,
    }
}

fn pattern_type(code: i8) -> Result<PatternType, Failure> {
    match code {
        3 => Ok(PatternType::Literal),
        4 => Ok(PatternType::Prefix),
        other => Err(invalid(format!(
            "pattern type {other}: an ACL is LITERAL (3) or PREFIXED (4)"
        ))),
    }
}

fn operation_code(op: Operation) -> i8 {
    match op {
        Operation::All => 2,
        Operation::Read => 3,
        Operation::Write => 4,
        Operation::Create => 5,
        Operation::Delete => 6,
        Operation::Alter => 7,
        Operation::Describe => 8,
        Operation::DescribeConfigs => 10,
    }
}

fn operation(code: i8) -> Result<Operation, Failure> {
    Ok(match code {
        2 => Operation::All,
        3 => Operation::Read,
        4 => Operation::Write,
        5 => Operation::Create,
        6 => Operation::Delete,
        // ALTER_CONFIGS is Cairn's alter.
        7 | 11 => Operation::Alter,
        8 => Operation::Describe,
        10 => Operation::DescribeConfigs,
        other => {
            return Err(invalid(format!(
                "operation {other} is not one of Cairn's: ALL (2), READ (3), WRITE (4), \
                 CREATE (5), DELETE (6), ALTER (7), DESCRIBE (8), DESCRIBE_CONFIGS (10), \
                 ALTER_CONFIGS (11, Cairn's alter)"
            )));
        }
    })
}

fn permission_code(p: Permission) -> i8 {
    match p {
        Permission::Deny => 2,
        Permission::Allow => 3,
    }
}

fn permission(code: i8) -> Result<Permission, Failure> {
    match code {
        2 => Ok(Permission::Deny),
        3 => Ok(Permission::Allow),
        other => Err(invalid(format!(
            "permission {other}: an ACL is DENY (2) or ALLOW (3)"
        ))),
    }
}

/// Cairn's principal of Kafka's `User:<name>` (`User:*`: every principal).
fn principal(kafka: &str) -> Result<String, Failure> {
    kafka
        .strip_prefix("User:")
        .filter(|p| !p.is_empty())
        .map(str::to_string)
        .ok_or_else(|| {
            invalid(format!(
                "principal `{kafka}`: Kafka principals read `User:<name>` or `User:*`"
            ))
        })
}

fn host(h: &str) -> Result<(), Failure> {
    if h == "*" {
        Ok(())
    } else {
        Err(invalid(format!(
            "host `{h}`: Cairn's ACLs apply from every host; give `*`"
        )))
    }
}

/// A filter over ACLs, from a DescribeAcls or DeleteAcls request.
struct Filter {
    resource_type: Option<ResourceType>,
    name: Option<String>,
    /// `None`: any; `Some(None)`: MATCH; `Some(Some(p))`: that type.
    pattern: Option<Option<PatternType>>,
    principal: Option<String>,
    operation: Option<Operation>,
    permission: Option<Permission>,
}

impl Filter {
    #[allow(clippy::too_many_arguments)]
    fn new(
        resource_type: i8,
        name: Option<&StrBytes>,
        pattern: i8,
        principal_filter: Option<&StrBytes>,
        host_filter: Option<&StrBytes>,
        op: i8,
        perm: i8,
    ) -> Result<Filter, Failure> {
        if let Some(h) = host_filter {
            host(h.as_str())?;
        }
        Ok(Filter {
            resource_type: (resource_type != ANY)
                .then(|| self::resource_type(resource_type))
                .transpose()?,
            name: name.map(|n| n.as_str().to_string()),
            pattern: match pattern {
                ANY => None,
                MATCH => Some(None),
                p => Some(Some(pattern_type(p)?)),
            },
            principal: principal_filter
                .map(|p| principal(p.as_str()))
                .transpose()?,
            operation: (op != ANY).then(|| operation(op)).transpose()?,
            permission: (perm != ANY).then(|| permission(perm)).transpose()?,
        })
    }

    fn matches(&self, a: &Acl) -> bool {
        if resource_code(a.resource_type).is_none() {
            return false;
        }
        let name_ok = match (&self.name, self.pattern) {
            (None, _) => true,
            // MATCH: the ACLs that would apply to that resource name.
            (Some(n), Some(None)) => match a.pattern_type {
                PatternType::Literal => a.pattern == *n || a.pattern == "*",
                PatternType::Prefix => n.starts_with(&a.pattern),
            },
            (Some(n), _) => a.pattern == *n,
        };
        let pattern_ok = match self.pattern {
            Some(Some(p)) => a.pattern_type == p,
            _ => true,
        };
        self.resource_type.is_none_or(|t| t == a.resource_type)
            && name_ok
            && pattern_ok
            && self.principal.as_ref().is_none_or(|p| *p == a.principal)
            && self.operation.is_none_or(|o| o == a.operation)
            && self.permission.is_none_or(|p| p == a.permission)
    }
}

fn kafka_principal(p: &str) -> StrBytes {
    StrBytes::from_string(format!("User:{p}"))
}

/// Whether the principal may do `op` on the cluster, as a Kafka error if not.
fn cluster_denied(s: &Shared, principal: Option<&str>, op: Operation) -> Option<Failure> {
    super::admin::denied(s, principal, op, ResourceType::Cluster, "*")
}

/// DescribeAcls: the ACLs the filter matches, by resource.
pub(super) async fn describe_acls(
    s: &Shared,
    principal: Option<&str>,
    req: DescribeAclsRequest,
) -> DescribeAclsResponse {
    let fail = |(code, why): Failure| {
        DescribeAclsResponse::default()
            .with_error_code(code)
            .with_error_message(Some(StrBytes::from_string(why)))
    };
    if let Some(f) = cluster_denied(s, principal, Operation::Describe) {
        return fail(f);
    }
    let filter = match Filter::new(
        req.resource_type_filter,
        req.resource_name_filter.as_ref(),
        req.pattern_type_filter,
        req.principal_filter.as_ref(),
        req.host_filter.as_ref(),
        req.operation,
        req.permission_type,
    ) {
        Ok(f) => f,
        Err(f) => return fail(f),
    };
    let acls = match s.metadata.list_acls().await {
        Ok(a) => a,
        Err(e) => return fail((kind_code(e.kind()), e.to_string())),
    };
    let mut resources: Vec<DescribeAclsResource> = Vec::new();
    for a in acls.iter().filter(|a| filter.matches(a)) {
        let Some(rt) = resource_code(a.resource_type) else {
            continue;
        };
        let pt = pattern_code(a.pattern_type);
        let description = AclDescription::default()
            .with_principal(kafka_principal(&a.principal))
            .with_host(StrBytes::from_static_str("*"))
            .with_operation(operation_code(a.operation))
            .with_permission_type(permission_code(a.permission));
        // The list comes sorted by resource type, pattern and name: same resources follow
        // each other.
        match resources.last_mut() {
            Some(r)
                if r.resource_type == rt
                    && r.pattern_type == pt
                    && r.resource_name.as_str() == a.pattern =>
            {
                r.acls.push(description)
            }
            _ => resources.push(
                DescribeAclsResource::default()
                    .with_resource_type(rt)
                    .with_resource_name(StrBytes::from_string(a.pattern.clone()))
                    .with_pattern_type(pt)
                    .with_acls(vec![description]),
            ),
        }
    }
    DescribeAclsResponse::default().with_resources(resources)
}

/// The Cairn ACL of a CreateAcls entry.
fn acl_of(c: &AclCreation) -> Result<Acl, Failure> {
    host(c.host.as_str())?;
    let acl = Acl {
        principal: principal(c.principal.as_str())?,
        resource_type: resource_type(c.resource_type)?,
        pattern_type: pattern_type(c.resource_pattern_type)?,
        pattern: c.resource_name.as_str().to_string(),
        operation: operation(c.operation)?,
        permission: permission(c.permission_type)?,
    };
    acl.validate().map_err(|e| invalid(e.to_string()))?;
    Ok(acl)
}

/// CreateAcls: each ACL added (adding one that exists changes nothing).
pub(super) async fn create_acls(
    s: &Shared,
    principal: Option<&str>,
    req: CreateAclsRequest,
) -> CreateAclsResponse {
    let denied = cluster_denied(s, principal, Operation::Alter);
    let mut results = Vec::with_capacity(req.creations.len());
    for c in &req.creations {
        let outcome = match (&denied, acl_of(c)) {
            (Some(f), _) => Err(f.clone()),
            (None, Err(f)) => Err(f),
            (None, Ok(acl)) => match s.metadata.add_acl(&acl).await {
                Ok(()) => {
                    tracing::info!(
                        target: crate::auth::AUDIT,
                        principal = principal.unwrap_or(""),
                        operation = "kafka:CreateAcls",
                        resource = %acl.describe(),
                        "ACL added"
                    );
                    Ok(())
                }
                Err(e) => Err((kind_code(e.kind()), e.to_string())),
            },
        };
        results.push(match outcome {
            Ok(()) => AclCreationResult::default(),
            Err((code, why)) => AclCreationResult::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(why))),
        });
    }
    CreateAclsResponse::default().with_results(results)
}

/// DeleteAcls: every ACL each filter matches, removed and listed.
pub(super) async fn delete_acls(
    s: &Shared,
    principal: Option<&str>,
    req: DeleteAclsRequest,
) -> DeleteAclsResponse {
    let denied = cluster_denied(s, principal, Operation::Alter);
    let listed = match &denied {
        Some(_) => Ok(Vec::new()),
        None => s.metadata.list_acls().await,
    };
    let mut results = Vec::with_capacity(req.filters.len());
    for f in &req.filters {
        let fail = |(code, why): Failure| {
            DeleteAclsFilterResult::default()
                .with_error_code(code)
                .with_error_message(Some(StrBytes::from_string(why)))
        };
        if let Some(d) = &denied {
            results.push(fail(d.clone()));
            continue;
        }
        let acls = match &listed {
            Ok(a) => a,
            Err(e) => {
                results.push(fail((kind_code(e.kind()), e.to_string())));
                continue;
            }
        };
        let filter = match Filter::new(
            f.resource_type_filter,
            f.resource_name_filter.as_ref(),
            f.pattern_type_filter,
            f.principal_filter.as_ref(),
            f.host_filter.as_ref(),
            f.operation,
            f.permission_type,
        ) {
            Ok(filter) => filter,
            Err(e) => {
                results.push(fail(e));
                continue;
            }
        };
        let mut matching = Vec::new();
        for a in acls.iter().filter(|a| filter.matches(a)) {
            let mut m = DeleteAclsMatchingAcl::default()
                .with_resource_type(resource_code(a.resource_type).unwrap_or_default())
                .with_resource_name(StrBytes::from_string(a.pattern.clone()))
                .with_pattern_type(pattern_code(a.pattern_type))
                .with_principal(kafka_principal(&a.principal))
                .with_host(StrBytes::from_static_str("*"))
                .with_operation(operation_code(a.operation))
                .with_permission_type(permission_code(a.permission));
            match s.metadata.remove_acl(a).await {
                Ok(_) => tracing::info!(
                    target: crate::auth::AUDIT,
                    principal = principal.unwrap_or(""),
                    operation = "kafka:DeleteAcls",
                    resource = %a.describe(),
                    "ACL removed"
                ),
                Err(e) => {
                    m.error_code = kind_code(e.kind());
                    m.error_message = Some(StrBytes::from_string(e.to_string()));
                }
            }
            matching.push(m);
        }
        results.push(DeleteAclsFilterResult::default().with_matching_acls(matching));
    }
    DeleteAclsResponse::default().with_filter_results(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for rt in [
            ResourceType::Topic,
            ResourceType::Group,
            ResourceType::Cluster,
            ResourceType::Producer,
        ] {
            assert_eq!(resource_type(resource_code(rt).unwrap()).unwrap(), rt);
        }
        for op in [
            Operation::All,
            Operation::Read,
            Operation::Write,
            Operation::Create,
            Operation::Delete,
            Operation::Alter,
            Operation::Describe,
            Operation::DescribeConfigs,
        ] {
            assert_eq!(operation(operation_code(op)).unwrap(), op);
        }
        assert!(operation(12).is_err());
        assert_eq!(principal("User:alice").unwrap(), "alice");
        assert!(principal("alice").is_err());
        assert!(host("10.0.0.1").is_err());
    }

    #[test]
    fn match_filters_find_the_acls_of_a_name() {
        let acl = |pattern: &str, pt| Acl {
            principal: "alice".into(),
            resource_type: ResourceType::Topic,
            pattern_type: pt,
            pattern: pattern.into(),
            operation: Operation::Read,
            permission: Permission::Allow,
        };
        let name = StrBytes::from_static_str("orders-eu");
        let f = Filter::new(2, Some(&name), MATCH, None, None, ANY, ANY).unwrap();
        assert!(f.matches(&acl("orders-", PatternType::Prefix)));
        assert!(f.matches(&acl("*", PatternType::Literal)));
        assert!(f.matches(&acl("orders-eu", PatternType::Literal)));
        assert!(!f.matches(&acl("orders", PatternType::Literal)));
        let f = Filter::new(2, Some(&name), 3, None, None, ANY, ANY).unwrap();
        assert!(!f.matches(&acl("orders-", PatternType::Prefix)));
    }
}
