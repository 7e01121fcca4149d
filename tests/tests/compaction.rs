//! Compaction end to end: segments become Parquet, consumers read one seamless stream across
//! the compacted/uncompacted boundary, replaced segments are collected only after the grace
//! period, two compactors never compact a run twice, and a produce racing a compaction
//! neither loses nor doubles a record. pyarrow reads the compacted topic as a Hive dataset.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_agent::{AgentSettings, FaultSpec};
use cairn_client::{Admin, TopicOptions};
use cairn_compactor::{Compactor, CompactorConfig};
use cairn_metadata::{Clock, EntryKind, ManualClock, Metadata, SystemClock};
use cairn_tests::{
    InProcessAgent, produce_workload, pyarrow_python, read_all, run_json, run_ok, s3_store, s3_url,
    temp_dir, verify_exact,
};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// The data objects under `prefix` (not the tables' logs).
async fn objects(store: &dyn ObjectStore, prefix: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let prefix = Path::from(prefix);
    let mut list = store.list(Some(&prefix));
    while let Some(m) = list.next().await {
        let key = m.unwrap().location.to_string();
        if !cairn_compactor::table::is_table_log(&key) {
            out.insert(key);
        }
    }
    out
}

/// Compacts everything now (no size or age threshold), merging pairs of small files.
fn eager(owner: &str) -> CompactorConfig {
    CompactorConfig {
        min_bytes: 0,
        max_age: Duration::ZERO,
        merge_fan_in: 2,
        owner: owner.into(),
        ..CompactorConfig::default()
    }
}

fn small_segments() -> AgentSettings {
    AgentSettings {
        linger: Duration::from_millis(5),
        segment_max_bytes: 64 << 10,
        ..AgentSettings::default()
    }
}

async fn entries(m: &Metadata, topic: &str) -> Vec<Vec<(EntryKind, i64, i64)>> {
    let t = m.topic(topic).await.unwrap();
    let mut out = Vec::new();
    for p in 0..t.partitions {
        let (_, e) = m.read_index(t.id, p, 0, 100_000).await.unwrap();
        out.push(
            e.iter()
                .map(|e| (e.kind, e.base_offset, e.end_offset))
                .collect(),
        );
    }
    out
}

const PYARROW_DATASET: &str = r#"
import json, sys
import pyarrow.dataset as ds
d = ds.dataset(sys.argv[1], format="parquet", partitioning="hive")
t = d.to_table()
parts = {}
for p, o in zip(t.column("partition").to_pylist(), t.column("offset").to_pylist()):
    parts.setdefault(str(p), []).append(o)
v = t.filter(ds.field("offset") == 7).column("value")[0].as_py().decode()
print(json.dumps({"rows": t.num_rows, "value_at_7": v,
                  "per_partition": {p: [len(o), min(o), max(o), len(set(o))] for p, o in parts.items()}}))
"#;

async fn compact_and_read_back(url: &str, store: Arc<dyn ObjectStore>) -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let sqlite = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    let agent = InProcessAgent::start_with_clock(
        store.clone(),
        cairn_metadata::open_kv(&sqlite).await?,
        small_segments(),
        FaultSpec::default(),
        clock.clone(),
    )
    .await?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("orders", 4, TopicOptions::default())
        .await?;
    let mut sent =
        produce_workload(std::slice::from_ref(&agent.endpoint), "orders", 4, 50_000).await?;
    assert_eq!(sent.len(), 200_000);
    let m = Metadata::new(cairn_metadata::open_kv(&sqlite).await?, clock.clone());
    let before = entries(&m, "orders").await;
    let entries_before: usize = before.iter().map(Vec::len).sum();
    assert!(
        entries_before >= 40,
        "small segments: {entries_before} entries"
    );
    let segments = objects(store.as_ref(), "segments").await;

    let compactor = Compactor::new(store.clone(), m.clone(), eager("c1"));
    let r = compactor.run_once(&|_| {}).await?;
    eprintln!(
        "{url}: {entries_before} index entries in {} segments -> {} Parquet files; {} bytes read, {} written",
        segments.len(),
        r.runs,
        r.bytes_in,
        r.bytes_out
    );
    assert_eq!((r.runs, r.conflicts, r.failed_runs), (4, 0, 0), "{r:?}");
    assert_eq!(r.records_compacted, 200_000);
    assert_eq!(r.entries_replaced as usize, entries_before);
    let after = entries(&m, "orders").await;
    for (p, e) in after.iter().enumerate() {
        assert_eq!(e.len(), 1, "partition {p}: one Parquet entry: {e:?}");
        assert_eq!(e[0].0, EntryKind::Parquet);
        assert_eq!((e[0].1, e[0].2), (0, before[p].last().unwrap().2));
    }
    assert_eq!(r.objects_marked_dead as usize, segments.len(), "{r:?}");
    let metrics = compactor.metrics().render();
    assert!(
        metrics.contains("cairn_compactor_files_written_total 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("cairn_compactor_read_bytes_total {}", r.bytes_in)),
        "{metrics}"
    );

    // The replaced segments stay readable for the grace period (a fetch that looked them
    // up before the swap completes), and are deleted after it.
    for s in &segments {
        assert!(store.head(&Path::from(s.as_str())).await.is_ok(), "{s}");
    }
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.runs, r.objects_deleted), (0, 0), "{r:?}");
    clock.advance(11 * 60_000);
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(r.objects_deleted as usize, segments.len(), "{r:?}");
    assert!(objects(store.as_ref(), "segments").await.is_empty());

    // More records after the compaction: the stream crosses the boundary seamlessly.
    let more = produce_workload(std::slice::from_ref(&agent.endpoint), "orders", 2, 2_000).await?;
    let consumed = read_all(&agent.endpoint, "orders").await?;
    let mut all = sent.clone();
    all.extend(more.iter().cloned().map(|mut s| {
        s.producer += 4;
        s
    }));
    // verify_exact checks per-producer order by `seq`; the second wave has its own producers.
    verify_exact(&all, &consumed)?;

    // Compact again: the new tail becomes a second file, then the two are merged.
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.runs, r.merges), (8, 4), "{r:?}");
    let merged = entries(&m, "orders").await;
    assert!(merged.iter().all(|e| e.len() == 1), "{merged:?}");
    let consumed = read_all(&agent.endpoint, "orders").await?;
    verify_exact(&all, &consumed)?;
    sent.clear();
    // The replaced files go after the grace period; a directory listing (what an external
    // engine reads) then holds each record exactly once.
    clock.advance(11 * 60_000);
    let r = compactor.run_once(&|_| {}).await?;
    // The first and second files of each partition, and the second wave's segments.
    assert!(r.objects_deleted > 8, "{r:?}");
    assert_eq!(objects(store.as_ref(), "topics").await.len(), 4);
    assert!(objects(store.as_ref(), "segments").await.is_empty());

    // pyarrow reads the compacted topic as a Hive-partitioned dataset (file stores only:
    // the test reads the files from disk).
    if let Some(root) = url.strip_prefix("file://") {
        let python = pyarrow_python()?;
        let v = run_json(
            Command::new(python)
                .args(["-c", PYARROW_DATASET])
                .arg(format!("{root}/topics/orders")),
        )?;
        assert_eq!(v["rows"], 204_000, "{v}");
        for p in 0..4u32 {
            let n = consumed.iter().filter(|r| r.partition == p).count() as i64;
            assert_eq!(
                v["per_partition"][p.to_string()],
                serde_json::json!([n, 0, n - 1, n]),
                "partition {p}: {v}"
            );
        }
        assert!(v["value_at_7"].as_str().unwrap().starts_with("producer "));
    }
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_file_store() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let url = format!("file://{}", dir.path().join("objects").display());
    let store = cairn_agent::open_object_store(&url, &[])?;
    compact_and_read_back(&url, store).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_on_localstack_s3() -> anyhow::Result<()> {
    let url = s3_url("compaction");
    let store = s3_store(&url)?;
    compact_and_read_back(&url, store).await
}

/// An in-process agent with small segments over a `file://` store and SQLite in a fresh
/// directory, and a topic on it.
async fn file_agent_with_topic(
    topic: &str,
    partitions: u32,
) -> anyhow::Result<(tempfile::TempDir, Arc<dyn ObjectStore>, InProcessAgent)> {
    let dir = temp_dir()?;
    let store = cairn_tests::file_store(dir.path())?;
    let agent = InProcessAgent::start(
        store.clone(),
        &dir.path().join("meta.sqlite"),
        small_segments(),
    )
    .await?;
    Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .create_topic(topic, partitions, TopicOptions::default())
        .await?;
    Ok((dir, store, agent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_compactors_never_compact_a_run_twice() -> anyhow::Result<()> {
    let (dir, store, agent) = file_agent_with_topic("clicks", 8).await?;
    let sqlite = dir.path().join("meta.sqlite");
    let sent = produce_workload(std::slice::from_ref(&agent.endpoint), "clicks", 4, 10_000).await?;
    let spec = format!("sqlite:{}", sqlite.display());
    let m = Metadata::new(cairn_metadata::open_kv(&spec).await?, Arc::new(SystemClock));
    let entries_before: usize = entries(&m, "clicks").await.iter().map(Vec::len).sum();
    let a = Compactor::new(store.clone(), m.clone(), eager("a"));
    let b = Compactor::new(
        store.clone(),
        Metadata::new(cairn_metadata::open_kv(&spec).await?, Arc::new(SystemClock)),
        eager("b"),
    );
    let (ra, rb) = tokio::join!(a.run_once(&|_| {}), b.run_once(&|_| {}));
    let (ra, rb) = (ra?, rb?);
    eprintln!(
        "compactor a: {} runs, {} partitions busy elsewhere; b: {} runs, {} busy elsewhere",
        ra.runs, ra.claimed_elsewhere, rb.runs, rb.claimed_elsewhere
    );
    assert_eq!(
        ra.runs + rb.runs,
        8,
        "each partition compacted exactly once: {ra:?} {rb:?}"
    );
    assert_eq!(ra.conflicts + rb.conflicts, 0, "{ra:?} {rb:?}");
    assert_eq!(
        (ra.entries_replaced + rb.entries_replaced) as usize,
        entries_before
    );
    assert_eq!(ra.records_compacted + rb.records_compacted, 40_000);
    assert_eq!(
        objects(store.as_ref(), "topics").await.len(),
        8,
        "one file per partition, none written twice"
    );
    verify_exact(&sent, &read_all(&agent.endpoint, "clicks").await?)?;
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produce_racing_compaction_loses_and_doubles_nothing() -> anyhow::Result<()> {
    let (dir, store, agent) = file_agent_with_topic("race", 1).await?;
    let sqlite = dir.path().join("meta.sqlite");
    let m = Metadata::new(
        cairn_metadata::open_kv(&format!("sqlite:{}", sqlite.display())).await?,
        Arc::new(SystemClock),
    );
    let compactor = Compactor::new(store.clone(), m.clone(), eager("racer"));
    let endpoint = agent.endpoint.clone();
    let producing =
        tokio::spawn(async move { produce_workload(&[endpoint], "race", 2, 20_000).await });
    let mut runs = 0;
    while !producing.is_finished() {
        let r = compactor.run_once(&|_| {}).await?;
        assert_eq!(r.failed_runs, 0, "{r:?}");
        runs += r.runs;
    }
    let sent = producing.await??;
    let r = compactor.run_once(&|_| {}).await?;
    runs += r.runs;
    assert!(runs >= 2, "compactions ran while producing: {runs}");
    eprintln!("{runs} compaction runs while 40,000 records were produced");
    let e = entries(&m, "race").await;
    assert!(
        e[0].iter().all(|(k, _, _)| *k == EntryKind::Parquet),
        "{e:?}"
    );
    verify_exact(&sent, &read_all(&agent.endpoint, "race").await?)?;
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compactor_cli_once_reports_and_compacts() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let args = cairn_tests::file_agent_args(dir.path());
    let agent = cairn_tests::AgentProcess::start(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[],
    )?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("cli", 2, TopicOptions::default())
        .await?;
    let sent = produce_workload(std::slice::from_ref(&agent.endpoint), "cli", 2, 5_000).await?;
    let stdout = run_ok(
        Command::new(cairn_tests::cairn_bin()?)
            .args(["compactor", "--once", "--max-age", "0s"])
            .args(&args),
    )?;
    assert!(
        stdout.contains("compaction: 2 runs") && stdout.contains("10000 records"),
        "{stdout}"
    );
    verify_exact(&sent, &read_all(&agent.endpoint, "cli").await?)?;
    agent.stop()?;
    Ok(())
}
