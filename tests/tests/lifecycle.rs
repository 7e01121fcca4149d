//! Object lifecycle with a real agent, the compactor and an injected clock: retention moves
//! start offsets and its objects are deleted only after the grace period (so a fetch that
//! already looked them up can still read them); orphan objects are deleted after the grace
//! period too; objects still referenced are never deleted.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use cairn_agent::{AgentSettings, FaultSpec};
use cairn_client::{
    Admin, GroupConfig, GroupConsumer, Offset, Producer, ProducerConfig, ProducerRecord,
    TopicOptions,
};
use cairn_compactor::{Compactor, CompactorConfig};
use cairn_metadata::{Clock, ManualClock, Metadata, SystemClock};
use cairn_tests::{InProcessAgent, read_all, temp_dir};
use futures::StreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

/// Every data object (the topics' table logs aside: the collector leaves those alone).
async fn objects(store: &dyn ObjectStore) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut list = store.list(None);
    while let Some(m) = list.next().await {
        let key = m.unwrap().location.to_string();
        if !cairn_compactor::table::is_table_log(&key) {
            out.insert(key);
        }
    }
    out
}

/// Sends `values` one at a time, timestamped by `clock` (records carry their producer's
/// time, and retention goes by record time).
async fn produce(
    endpoint: &str,
    clock: &ManualClock,
    topic: &str,
    values: &[&str],
) -> anyhow::Result<()> {
    let producer = Producer::new(
        cairn_client::connect(endpoint).await?,
        ProducerConfig::default(),
    );
    for v in values {
        producer
            .send(ProducerRecord::new(topic, v.to_string()).timestamp_ms(clock.now_ms()))
            .await?
            .await?;
    }
    producer.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_garbage_collection() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    // The clock starts at real time so that object timestamps from the file system compare.
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let store = cairn_tests::file_store(dir.path())?;
    let sqlite = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    let agent = InProcessAgent::start_with_clock(
        store.clone(),
        cairn_metadata::open_kv(&sqlite).await?,
        AgentSettings {
            linger: Duration::from_millis(5),
            ..AgentSettings::default()
        },
        FaultSpec::default(),
        clock.clone(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin
        .create_topic(
            "events",
            1,
            TopicOptions {
                retention_ms: Some(30 * 60_000),
                ..TopicOptions::default()
            },
        )
        .await?;
    admin
        .create_topic("forever", 1, TopicOptions::default())
        .await?;
    produce(&agent.endpoint, &clock, "events", &["e0", "e1"]).await?;
    produce(&agent.endpoint, &clock, "forever", &["f0"]).await?;
    let old_objects = objects(store.as_ref()).await;
    assert_eq!(old_objects.len(), 3, "{old_objects:?}");

    // An orphan: a segment PUT whose commit never happened. Young, it is left alone.
    let orphan = object_store::path::Path::from("segments/ff/orphan.seg");
    store
        .put(&orphan, PutPayload::from_static(b"never committed"))
        .await?;
    let compactor = Compactor::new(
        store.clone(),
        Metadata::new(cairn_metadata::open_kv(&sqlite).await?, clock.clone()),
        // Retention and collection only: no Parquet compaction in this test.
        CompactorConfig {
            min_bytes: u64::MAX,
            max_age: Duration::from_secs(100 * 86_400),
            ..CompactorConfig::default()
        },
    );
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(
        (r.orphans_waiting, r.orphans_deleted, r.objects_deleted),
        (1, 0, 0),
        "{r:?}"
    );

    // Forty minutes later, more records; the first ones are past the 30-minute retention.
    clock.advance(40 * 60_000);
    produce(&agent.endpoint, &clock, "events", &["e2"]).await?;
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(r.retention_entries_removed, 2, "{r:?}");
    assert_eq!(r.objects_marked_dead, 2, "{r:?}");
    assert_eq!(r.objects_deleted, 0, "grace period: {r:?}");
    assert_eq!(
        r.orphans_deleted, 1,
        "the orphan is older than the grace period now"
    );
    let d = admin.describe_topic("events").await?;
    assert_eq!(d.partitions[0].start_offset, 2);
    let values: Vec<_> = read_all(&agent.endpoint, "events")
        .await?
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect();
    assert_eq!(values, ["e2"], "retention hides what it removed");
    // Within the grace period the removed records' objects are still readable, so a fetch
    // that looked them up before the removal completes.
    for o in &old_objects {
        assert!(
            store
                .get(&object_store::path::Path::from(o.as_str()))
                .await
                .is_ok(),
            "{o}"
        );
    }

    // After the grace period they go, with the orphan; everything referenced stays.
    clock.advance(11 * 60_000);
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.objects_deleted, r.orphans_deleted), (2, 0), "{r:?}");
    let left = objects(store.as_ref()).await;
    assert_eq!(
        left.len(),
        2,
        "the `forever` segment and the `e2` segment: {left:?}"
    );
    assert!(!left.contains(orphan.as_ref()));
    let forever: Vec<_> = read_all(&agent.endpoint, "forever").await?;
    assert_eq!(forever.len(), 1);
    let events = read_all(&agent.endpoint, "events").await?;
    assert_eq!(events.len(), 1);
    // Idempotent: nothing more to do.
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(
        (
            r.objects_deleted,
            r.orphans_deleted,
            r.retention_entries_removed
        ),
        (0, 0, 0)
    );

    // DeleteRecords hides offsets; the compactor then collects the objects.
    produce(&agent.endpoint, &clock, "forever", &["f1", "f2"]).await?;
    assert_eq!(admin.delete_records("forever", 0, 2).await?, 2);
    let forever: Vec<_> = read_all(&agent.endpoint, "forever").await?;
    assert_eq!(forever.iter().map(|r| r.offset).collect::<Vec<_>>(), [2]);

    // A consumer group whose committed offset was removed resumes at the new start.
    let config = GroupConfig {
        start: Offset::Beginning,
        ..GroupConfig::default()
    };
    let mut member =
        GroupConsumer::join(channel.clone(), "readers", &["forever"], config.clone()).await?;
    let got = member.poll(Duration::from_secs(1)).await?;
    assert_eq!(got.iter().map(|r| r.offset).collect::<Vec<_>>(), [2]);
    member.commit().await?;
    member.leave().await?;
    produce(&agent.endpoint, &clock, "forever", &["f3", "f4", "f5"]).await?;
    assert_eq!(admin.delete_records("forever", 0, 5).await?, 5);
    let mut member = GroupConsumer::join(channel, "readers", &["forever"], config).await?;
    let got = member.poll(Duration::from_secs(1)).await?;
    assert_eq!(
        got.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [5],
        "resumed at the start"
    );
    member.leave().await?;
    agent.stop().await?;
    Ok(())
}
