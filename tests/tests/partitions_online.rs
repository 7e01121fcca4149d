//! Partitions added online: a running keyed producer, a consumer-group member and a share
//! consumer all start using partitions added to their topic, without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_agent::AgentSettings;
use cairn_client::{
    Admin, GroupConfig, GroupConsumer, Offset, Producer, ProducerConfig, ProducerRecord,
    ShareConfig, ShareConsumer, TopicOptions,
};
use cairn_tests::{InProcessAgent, file_store, temp_dir};

/// Fails once `deadline` passed: the conditions below are a client picking up new
/// metadata by itself, which the test cannot be notified of, so it checks after each step.
fn before(deadline: Instant, what: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        Instant::now() < deadline,
        "{what} did not happen within 30s"
    );
    Ok(())
}

/// Sends 50 keyed records and returns the partitions they were stored in.
async fn send_batch(producer: &Producer, n: &mut u64) -> anyhow::Result<BTreeSet<u32>> {
    let mut pending = Vec::new();
    for _ in 0..50 {
        let r = ProducerRecord::new("grow", format!("v{n}")).key(format!("k{}", *n % 64));
        pending.push(producer.send(r).await?);
        *n += 1;
    }
    let mut parts = BTreeSet::new();
    for d in pending {
        parts.insert(d.await?.partition);
    }
    Ok(parts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_groups_and_share_groups_pick_up_added_partitions() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        AgentSettings {
            linger: Duration::from_millis(5),
            ..AgentSettings::default()
        },
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin
        .create_topic("grow", 2, TopicOptions::default())
        .await?;

    let producer = Producer::new(
        channel.clone(),
        ProducerConfig {
            metadata_max_age: Duration::from_millis(200),
            ..ProducerConfig::default()
        },
    );
    let mut group = GroupConsumer::join(
        channel.clone(),
        "g",
        &["grow"],
        GroupConfig {
            session_timeout: Duration::from_secs(3),
            start: Offset::Beginning,
            ..GroupConfig::default()
        },
    )
    .await?;
    let mut share = ShareConsumer::new(channel.clone(), "s", "grow", ShareConfig::default());
    let mut n = 0u64;
    let first = send_batch(&producer, &mut n).await?;
    assert!(first.iter().all(|&p| p < 2), "{first:?}");
    group.poll(Duration::ZERO).await?;
    assert_eq!(group.assignment().len(), 2);

    admin.add_partitions("grow", 4).await?;

    // The producer's keys spread over four partitions once it re-reads the count.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !send_batch(&producer, &mut n).await?.iter().any(|&p| p >= 2) {
        before(deadline, "records reaching the new partitions")?;
    }

    // The group member is assigned the new partitions at a heartbeat and reads them.
    let mut group_parts = BTreeSet::new();
    while !group_parts.iter().any(|&p| p >= 2) {
        before(deadline, "the group reading the new partitions")?;
        for r in group.poll(Duration::from_millis(100)).await? {
            group_parts.insert(r.partition);
        }
    }
    assert_eq!(group.assignment().len(), 4, "{:?}", group.assignment());

    // The share consumer acquires records of the new partitions.
    let mut share_parts = BTreeSet::new();
    while !share_parts.iter().any(|&p| p >= 2) {
        before(deadline, "the share group reading the new partitions")?;
        let got = share.poll(Duration::from_millis(100)).await?;
        for r in &got {
            share_parts.insert(r.record.partition);
        }
        share.ack(&got).await?;
    }

    producer.close().await?;
    group.leave().await?;
    agent.stop().await?;
    Ok(())
}
