//! Resetting a group to a time lands on the first record at or after it, not on the start
//! of the index entry (a whole segment batch, or after compaction a whole Parquet file)
//! that holds it; the same answers before and after compaction.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_agent::AgentSettings;
use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, ResetTo, TopicOptions};
use cairn_compactor::{Compactor, CompactorConfig};
use cairn_metadata::{EntryKind, Metadata, SystemClock};
use cairn_tests::{InProcessAgent, file_store, temp_dir};

/// Record timestamps in offset order: CreateTime need not grow (offset 3 is older than 2).
const TIMES: [i64; 8] = [1_000, 1_010, 1_050, 1_020, 1_060, 1_070, 1_080, 1_090];

/// Where a reset to each time must land: the first offset whose timestamp is at or after it.
fn expected(ts: i64) -> i64 {
    TIMES
        .iter()
        .position(|&t| t >= ts)
        .map_or(TIMES.len() as i64, |i| i as i64)
}

async fn check(admin: &Admin, stage: &str) -> anyhow::Result<()> {
    for ts in [0, 1_000, 1_005, 1_015, 1_030, 1_055, 1_085, 1_090, 5_000] {
        let got = admin
            .reset_offsets("readers", "timed", ResetTo::Timestamp(ts))
            .await?;
        assert_eq!(got.len(), 2, "{stage}: {got:?}");
        for p in &got {
            let want = if p.partition == 0 { expected(ts) } else { 0 };
            assert_eq!(
                p.offset, want,
                "{stage}: reset to {ts} ms, partition {}",
                p.partition
            );
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_to_a_time_finds_the_record_not_the_entry() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let store = file_store(dir.path())?;
    let sqlite = dir.path().join("meta.sqlite");
    let agent = InProcessAgent::start(store.clone(), &sqlite, AgentSettings::default()).await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin
        .create_topic("timed", 2, TopicOptions::default())
        .await?;
    // Two batches of four: two index entries, each spanning several times.
    let producer = Producer::new(channel, ProducerConfig::default());
    for half in TIMES.chunks(4) {
        let mut deliveries = Vec::new();
        for &t in half {
            let record = ProducerRecord::new("timed", format!("at {t}")).partition(0);
            deliveries.push(producer.send(record.timestamp_ms(t)).await?);
        }
        for d in deliveries {
            d.await?;
        }
    }
    producer.close().await?;
    let metadata = Metadata::new(
        cairn_metadata::open_kv(&format!("sqlite:{}", sqlite.display())).await?,
        std::sync::Arc::new(SystemClock),
    );
    let topic = metadata.topic("timed").await?;
    let (_, entries) = metadata.read_index(topic.id, 0, 0, 100).await?;
    assert!(
        entries.iter().all(|e| e.end_offset - e.base_offset > 1),
        "entries hold several records each: {entries:?}"
    );
    check(&admin, "segments").await?;

    // Compacted into one Parquet file, the answers stay record-exact.
    let compactor = Compactor::new(
        store,
        metadata.clone(),
        CompactorConfig {
            min_bytes: 0,
            max_age: Duration::ZERO,
            ..CompactorConfig::default()
        },
    );
    compactor.run_once(&|_| {}).await?;
    let (_, entries) = metadata.read_index(topic.id, 0, 0, 100).await?;
    assert!(
        entries.iter().all(|e| e.kind == EntryKind::Parquet),
        "compacted: {entries:?}"
    );
    check(&admin, "parquet").await?;
    agent.stop().await?;
    Ok(())
}
