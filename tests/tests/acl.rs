//! Authorization on a real agent process that requires authentication: for every RPC, a
//! call without credentials is UNAUTHENTICATED, a principal without the ACL it needs is
//! PERMISSION_DENIED with the operation and resource named, and with the ACL the call
//! goes through. Also prefix ACLs, deny wins, listings filtered to what a principal may
//! see, and the super-user.

// Helpers build requests from literals the test controls: a failure is a broken test.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use cairn_client::{AclBinding, Admin, Cluster, Security};
use cairn_proto::v2;
use cairn_tests::{AgentProcess, cairn_bin, eventually, file_agent_args, raw_batch, temp_dir};
use futures::future::BoxFuture;
use tonic::{Code, Status};

/// A call of one RPC through `cluster`: Ok, or the status it failed with.
type Call = Box<dyn Fn(Cluster) -> BoxFuture<'static, Result<(), Status>>>;

/// `(operation, resource type, name)` an ACL grants.
type Grant = (&'static str, &'static str, &'static str);

fn binding(
    principal: &str,
    (operation, resource_type, pattern): Grant,
    prefix: bool,
    deny: bool,
) -> AclBinding {
    AclBinding {
        principal: principal.into(),
        resource_type: resource_type.into(),
        pattern_type: if prefix { "prefix" } else { "literal" }.into(),
        pattern: pattern.into(),
        operation: operation.into(),
        permission: if deny { "deny" } else { "allow" }.into(),
    }
}

async fn connect(endpoint: &str, token: Option<&str>) -> Cluster {
    let mut security = Security::default();
    if let Some(t) = token {
        security = security.with_token(t).unwrap();
    }
    Cluster::single(endpoint, &security).await.unwrap()
}

fn outcome<T>(r: Result<tonic::Response<T>, Status>) -> Result<(), Status> {
    r.map(|_| ())
}

/// Every RPC of the API, each with the ACLs it needs.
fn calls() -> Vec<(&'static str, Vec<Grant>, Call)> {
    use v2::admin_service_client::AdminServiceClient as A;
    use v2::consumer_service_client::ConsumerServiceClient as C;
    use v2::group_service_client::GroupServiceClient as G;
    use v2::producer_service_client::ProducerServiceClient as P;
    use v2::share_service_client::ShareServiceClient as S;
    macro_rules! call {
        ($client:ident, $method:ident, $req:expr) => {
            Box::new(|c: Cluster| {
                Box::pin(async move { outcome($client::new(c).$method($req).await) })
                    as BoxFuture<'static, Result<(), Status>>
            }) as Call
        };
    }
    vec![
        (
            "CreateTopic",
            vec![("create", "topic", "made.by.acl")],
            call!(
                A,
                create_topic,
                v2::CreateTopicRequest {
                    name: "made.by.acl".into(),
                    partitions: 1,
                    ..Default::default()
                }
            ),
        ),
        (
            "DescribeTopic",
            vec![("describe", "topic", "t1")],
            call!(
                A,
                describe_topic,
                v2::DescribeTopicRequest { name: "t1".into() }
            ),
        ),
        (
            "AddPartitions",
            vec![("alter", "topic", "t2")],
            call!(
                A,
                add_partitions,
                v2::AddPartitionsRequest {
                    name: "t2".into(),
                    partitions: 3
                }
            ),
        ),
        (
            "SetValueSchema",
            vec![("alter", "topic", "t1")],
            call!(
                A,
                set_value_schema,
                v2::SetValueSchemaRequest {
                    topic: "t1".into(),
                    value_schema: r#"{"type":"object","properties":{"n":{"type":"integer"}}}"#
                        .into()
                }
            ),
        ),
        (
            "DeleteRecords",
            vec![("delete", "topic", "t1")],
            call!(
                A,
                delete_records,
                v2::DeleteRecordsRequest {
                    topic: "t1".into(),
                    partition: 0,
                    before_offset: 0
                }
            ),
        ),
        (
            "DeleteTopic",
            vec![("delete", "topic", "doomed")],
            call!(
                A,
                delete_topic,
                v2::DeleteTopicRequest {
                    name: "doomed".into()
                }
            ),
        ),
        (
            "GetAgentStatus",
            vec![("describe", "cluster", "*")],
            call!(A, get_agent_status, v2::GetAgentStatusRequest {}),
        ),
        (
            "CreateToken",
            vec![("alter", "cluster", "*")],
            call!(
                A,
                create_token,
                v2::CreateTokenRequest {
                    principal: "someone".into(),
                    expires_in_ms: Some(60_000)
                }
            ),
        ),
        (
            "ListTokens",
            vec![("alter", "cluster", "*")],
            call!(A, list_tokens, v2::ListTokensRequest {}),
        ),
        (
            "RevokeToken",
            vec![("alter", "cluster", "*")],
            call!(
                A,
                revoke_token,
                v2::RevokeTokenRequest {
                    id: "0123456789abcdef".into()
                }
            ),
        ),
        (
            "CreateAcl",
            vec![("alter", "cluster", "*")],
            call!(
                A,
                create_acl,
                v2::CreateAclRequest {
                    acl: Some(binding("nobody", ("read", "topic", "t9"), false, false))
                }
            ),
        ),
        (
            "DeleteAcl",
            vec![("alter", "cluster", "*")],
            call!(
                A,
                delete_acl,
                v2::DeleteAclRequest {
                    acl: Some(binding("nobody", ("read", "topic", "t9"), false, false))
                }
            ),
        ),
        (
            "ListAcls",
            vec![("describe", "cluster", "*")],
            call!(A, list_acls, v2::ListAclsRequest {}),
        ),
        (
            "SetQuota",
            vec![("alter", "cluster", "*")],
            call!(
                A,
                set_quota,
                v2::SetQuotaRequest {
                    quota: Some(v2::QuotaBinding {
                        principal: "nobody".into(),
                        requests_per_second: Some(1000),
                        ..Default::default()
                    })
                }
            ),
        ),
        (
            "DeleteQuota",
            vec![("alter", "cluster", "*")],
            call!(
                A,
                delete_quota,
                v2::DeleteQuotaRequest {
                    principal: "nobody".into()
                }
            ),
        ),
        (
            "ListQuotas",
            vec![("describe-configs", "cluster", "*")],
            call!(A, list_quotas, v2::ListQuotasRequest {}),
        ),
        (
            "InitProducer",
            vec![("write", "producer", "named")],
            call!(
                P,
                init_producer,
                v2::InitProducerRequest {
                    name: "named".into()
                }
            ),
        ),
        (
            "Produce",
            vec![("write", "topic", "t1")],
            Box::new(|c: Cluster| {
                Box::pin(async move {
                    let batch = raw_batch("t1", 0, ["by acl"], v2::Codec::None, None).unwrap();
                    outcome(
                        P::new(c)
                            .produce(v2::ProduceRequest {
                                batches: vec![batch],
                                atomic: false,
                            })
                            .await,
                    )
                }) as BoxFuture<'static, Result<(), Status>>
            }),
        ),
        (
            "Fetch",
            vec![("read", "topic", "t1")],
            call!(
                C,
                fetch,
                v2::FetchRequest {
                    topic: "t1".into(),
                    partition: 0,
                    offset: 0,
                    ..Default::default()
                }
            ),
        ),
        (
            "JoinGroup",
            vec![("read", "group", "g1"), ("read", "topic", "t1")],
            call!(
                G,
                join_group,
                v2::JoinGroupRequest {
                    group: "g1".into(),
                    topics: vec!["t1".into()],
                    ..Default::default()
                }
            ),
        ),
        (
            "Heartbeat",
            vec![("read", "group", "g2")],
            call!(
                G,
                heartbeat,
                v2::HeartbeatRequest {
                    group: "g2".into(),
                    member_id: "m".into()
                }
            ),
        ),
        (
            "LeaveGroup",
            vec![("read", "group", "g3")],
            call!(
                G,
                leave_group,
                v2::LeaveGroupRequest {
                    group: "g3".into(),
                    member_id: "m".into()
                }
            ),
        ),
        (
            "CommitOffsets",
            vec![("read", "group", "g4"), ("read", "topic", "t1")],
            call!(
                G,
                commit_offsets,
                v2::CommitOffsetsRequest {
                    group: "g4".into(),
                    member_id: "m".into(),
                    generation: 1,
                    offsets: vec![v2::PartitionOffset {
                        topic: "t1".into(),
                        partition: 0,
                        offset: 0
                    }],
                }
            ),
        ),
        (
            "FetchCommittedOffsets",
            vec![("describe", "group", "g5")],
            call!(
                G,
                fetch_committed_offsets,
                v2::FetchCommittedOffsetsRequest { group: "g5".into() }
            ),
        ),
        (
            "DescribeGroup",
            vec![("describe", "group", "g6")],
            call!(
                G,
                describe_group,
                v2::DescribeGroupRequest { group: "g6".into() }
            ),
        ),
        (
            "ResetOffsets",
            vec![("alter", "group", "g7"), ("describe", "topic", "t1")],
            call!(
                G,
                reset_offsets,
                v2::ResetOffsetsRequest {
                    group: "g7".into(),
                    topic: "t1".into(),
                    to: Some(v2::reset_offsets_request::To::Earliest(true)),
                }
            ),
        ),
        (
            "Acquire",
            vec![("read", "share-group", "s1"), ("read", "topic", "t1")],
            call!(
                S,
                acquire,
                v2::AcquireRequest {
                    group: "s1".into(),
                    member_id: "m".into(),
                    topic: "t1".into(),
                    ..Default::default()
                }
            ),
        ),
        (
            "Settle",
            vec![("read", "share-group", "s2"), ("read", "topic", "t1")],
            call!(
                S,
                settle,
                v2::SettleRequest {
                    group: "s2".into(),
                    member_id: "m".into(),
                    topic: "t1".into(),
                    partition: 0,
                    offsets: vec![0],
                    ..Default::default()
                }
            ),
        ),
        (
            "DescribeShareGroup",
            vec![
                ("describe", "share-group", "s3"),
                ("describe", "topic", "t1"),
            ],
            call!(
                S,
                describe_share_group,
                v2::DescribeShareGroupRequest {
                    group: "s3".into(),
                    topic: "t1".into()
                }
            ),
        ),
    ]
}

#[tokio::test]
async fn every_rpc_checks_authentication_and_its_acls() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let d = dir.path();
    let mut args = file_agent_args(d);
    args.extend(["--require-auth", "--super-user", "admin"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let endpoint = agent.endpoint.clone();
    let metadata = format!("sqlite:{}", d.join("meta.sqlite").display());
    let out = std::process::Command::new(cairn_bin()?)
        .args([
            "token",
            "create",
            "--principal",
            "admin",
            "--metadata",
            &metadata,
        ])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_token = String::from_utf8(out.stdout)?.trim().to_string();
    eventually("the admin's token works", || async {
        Admin::new(connect(&endpoint, Some(&admin_token)).await)
            .agent_status()
            .await
            .is_ok()
    })
    .await;
    let admin = Admin::new(connect(&endpoint, Some(&admin_token)).await);
    for t in ["t1", "t2", "doomed", "orders.eu", "orders.us"] {
        admin
            .create_topic(t, 1, cairn_client::TopicOptions::default())
            .await?;
    }

    // One principal per RPC, so no call's grants help another's.
    let calls = calls();
    // Every RPC of the API is here: a new one must say what it needs.
    let api = include_str!("../../proto/proto/cairn/v2/api.proto");
    let mut rpcs: Vec<&str> = api
        .lines()
        .filter_map(|l| l.trim().strip_prefix("rpc "))
        .filter_map(|l| l.split('(').next())
        .collect();
    // The three that only filter what they list, or need only authentication, are
    // checked after the loop.
    let mut named: Vec<&str> = calls.iter().map(|(n, _, _)| *n).collect();
    named.extend(["DescribeCluster", "ListGroups", "ListTopics"]);
    rpcs.sort_unstable();
    named.sort_unstable();
    assert_eq!(named, rpcs, "calls() must list every RPC of api.proto");
    let mut tokens = Vec::new();
    for (name, _, _) in &calls {
        let principal = format!("p-{}", name.to_lowercase());
        tokens.push(admin.create_token(&principal, None).await?.token);
    }
    let last = tokens.last().cloned().unwrap_or_default();
    eventually("the principals' tokens work", || async {
        Admin::new(connect(&endpoint, Some(&last)).await)
            .describe_cluster()
            .await
            .is_ok()
    })
    .await;

    for ((name, grants, call), token) in calls.iter().zip(&tokens) {
        let principal = format!("p-{}", name.to_lowercase());
        // No credentials.
        let e = call(connect(&endpoint, None).await).await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "{name}: {e:?}");
        // Authenticated, no ACL: refused, naming what is missing.
        let e = call(connect(&endpoint, Some(token)).await)
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::PermissionDenied, "{name}: {e:?}");
        let (op, rt, pattern) = grants[0];
        assert!(
            e.message()
                .contains(&format!("`{principal}` may not {op} {rt} `{pattern}`")),
            "{name}: {}",
            e.message()
        );
        // With the ACLs: through (the call may fail for its own reasons, e.g. an unknown
        // member, but not for authorization).
        for g in grants {
            admin
                .create_acl(binding(&principal, *g, false, false))
                .await?;
        }
        let cluster = connect(&endpoint, Some(token)).await;
        let started = Instant::now();
        let result = loop {
            match call(cluster.clone()).await {
                Err(e) if e.code() == Code::PermissionDenied => {
                    assert!(started.elapsed() < Duration::from_secs(30), "{name}: {e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => break other,
            }
        };
        if let Err(e) = &result {
            assert_ne!(e.code(), Code::Unauthenticated, "{name}: {e:?}");
        }
        eprintln!(
            "{name}: allowed after {:?} ({:?})",
            started.elapsed(),
            result.err().map(|e| e.code())
        );
    }

    // DescribeCluster needs only authentication: clients call it to find agents.
    let v2_admin = |t: Option<String>| {
        let endpoint = endpoint.clone();
        async move {
            Admin::new(connect(&endpoint, t.as_deref()).await)
                .describe_cluster()
                .await
        }
    };
    assert!(v2_admin(Some(tokens[0].clone())).await.is_ok());
    assert!(v2_admin(None).await.is_err());

    // Prefix ACLs, deny wins, and listings show only what a principal may see.
    let reader = admin.create_token("reader", None).await?.token;
    admin
        .create_acl(binding("reader", ("read", "topic", "orders."), true, false))
        .await?;
    let fetch = |topic: &'static str, token: String| {
        let endpoint = endpoint.clone();
        async move {
            let c = connect(&endpoint, Some(&token)).await;
            v2::consumer_service_client::ConsumerServiceClient::new(c)
                .fetch(v2::FetchRequest {
                    topic: topic.into(),
                    partition: 0,
                    offset: 0,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        }
    };
    eventually("the prefix ACL applies", || {
        fetch("orders.eu", reader.clone()).then_ok()
    })
    .await;
    assert_eq!(
        fetch("t1", reader.clone()).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    admin
        .create_acl(binding(
            "reader",
            ("read", "topic", "orders.eu"),
            false,
            true,
        ))
        .await?;
    eventually("the deny wins", || async {
        fetch("orders.eu", reader.clone()).await.is_err_and(|e| {
            e.code() == Code::PermissionDenied && e.message().contains("denied by the ACL")
        })
    })
    .await;
    fetch("orders.us", reader.clone()).await.unwrap();
    let seen: Vec<String> = Admin::new(connect(&endpoint, Some(&reader)).await)
        .list_topics()
        .await?
        .into_iter()
        .map(|t| t.name)
        .collect();
    // Read on the prefix implies describe; the deny of read on orders.eu does not deny it.
    assert_eq!(seen, ["orders.eu", "orders.us"]);
    // The super-user sees everything, whatever the ACLs.
    assert!(admin.list_topics().await?.len() >= 5);
    // Groups likewise: g1 (joined above) is the admin's to see, not the reader's.
    let (groups, _) = admin.list_groups().await?;
    assert!(groups.iter().any(|g| g == "g1"), "{groups:?}");
    let (groups, _) = Admin::new(connect(&endpoint, Some(&reader)).await)
        .list_groups()
        .await?;
    assert!(groups.is_empty(), "{groups:?}");
    let acls = admin.list_acls().await?;
    assert!(
        acls.iter()
            .any(|a| a.principal == "reader" && a.permission == "deny")
    );
    agent.stop()?;
    Ok(())
}

/// `future` resolving to whether it succeeded.
trait ThenOk {
    fn then_ok(self) -> BoxFuture<'static, bool>;
}

impl<F> ThenOk for F
where
    F: std::future::Future<Output = Result<(), Status>> + Send + 'static,
{
    fn then_ok(self) -> BoxFuture<'static, bool> {
        Box::pin(async move { self.await.is_ok() })
    }
}
