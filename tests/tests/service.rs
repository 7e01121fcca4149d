//! Standard gRPC services load balancers and `grpcurl` rely on: health and reflection.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_agent::AgentSettings;
use cairn_tests::{InProcessAgent, temp_dir};
use futures::StreamExt;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_are_served() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store = cairn_agent::open_object_store("memory://", &[])?;
    let agent = InProcessAgent::start(
        store,
        &dir.path().join("meta.sqlite"),
        AgentSettings::default(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;

    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await?
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel)
        .server_reflection_info(futures::stream::iter([request]))
        .await?
        .into_inner();
    let response = responses.next().await.expect("one response")?;
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection answer {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in [
        "cairn.v2.AdminService",
        "cairn.v2.ProducerService",
        "cairn.v2.ConsumerService",
        "cairn.v2.GroupService",
        "cairn.v2.ShareService",
        "grpc.health.v1.Health",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} missing from {names:?}"
        );
    }
    agent.stop().await?;
    Ok(())
}
