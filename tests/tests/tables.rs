//! Each topic's Delta Lake table, read by engines no Cairn code touches: the `deltalake`
//! package (delta-rs), polars and DuckDB, in a Python process. At every step — compaction,
//! merges, collection, `delete-records`, retention, topic deletion — they see exactly what
//! `cairn sql` and the high watermarks say: each live record once, nothing deleted. A reader
//! holding an old snapshot reads it for the grace period. Concurrent compactors never commit
//! a version that lists a record twice or leaves a live file out.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::{Admin, TopicOptions};
use cairn_compactor::{Compactor, CompactorConfig};
use cairn_metadata::{Clock, EntryKind, ManualClock, Metadata, SystemClock};
use cairn_tests::{
    AgentProcess, cairn_bin, client_python, produce_workload, run_json, run_ok, s3_endpoint,
    s3_env, s3_url, temp_dir, workspace_root,
};
use serde_json::{Value, json};

/// Where a test's data is, and how each reader reaches it.
struct Stores {
    /// `--object-store` and `--metadata` flags.
    args: Vec<String>,
    /// Environment of Cairn processes (S3 credentials).
    env: Vec<(String, String)>,
    /// The object store URL.
    url: String,
    /// Storage options for the Python readers (`None` for a file store).
    options: Option<Value>,
}

impl Stores {
    fn table_uri(&self, topic: &str) -> String {
        let base = self.url.trim_end_matches('/');
        format!("{base}/topics/{topic}")
    }

    /// The outside readers' view of `topic`'s table at `version` (`latest`, `every` or a
    /// number).
    fn read(&self, topic: &str, version: &str) -> anyhow::Result<Value> {
        let mut cmd = self.python(topic, version)?;
        run_json(&mut cmd)
    }

    fn python(&self, topic: &str, version: &str) -> anyhow::Result<Command> {
        let mut cmd = Command::new(client_python()?);
        cmd.arg(workspace_root().join("tests/python/read_table.py"))
            .arg(self.table_uri(topic))
            .arg(version);
        if let Some(o) = &self.options {
            cmd.arg(o.to_string());
        }
        Ok(cmd)
    }

    fn cairn(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut cmd = Command::new(cairn_bin()?);
        cmd.args(args).args(&self.args);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        run_ok(&mut cmd)
    }

    /// `cairn sql`'s `(rows, distinct offsets)` per partition of `topic`.
    fn sql_per_partition(&self, topic: &str) -> anyhow::Result<Vec<(u32, i64, i64, i64)>> {
        let out = self.cairn(&[
            "sql",
            "--format",
            "json",
            &format!(
                "SELECT partition, count(*) AS n, min(\"offset\") AS lo, max(\"offset\") AS hi FROM {topic} GROUP BY partition ORDER BY partition"
            ),
        ])?;
        Ok(out
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["partition"].as_u64().unwrap() as u32,
                    v["n"].as_i64().unwrap(),
                    v["lo"].as_i64().unwrap(),
                    v["hi"].as_i64().unwrap(),
                )
            })
            .collect())
    }
}

fn file_stores(dir: &std::path::Path) -> Stores {
    let url = format!("file://{}", dir.join("objects").display());
    Stores {
        args: vec![
            "--object-store".into(),
            url.clone(),
            "--metadata".into(),
            format!("sqlite:{}", dir.join("meta.sqlite").display()),
        ],
        env: Vec::new(),
        url,
        options: None,
    }
}

fn s3_stores(dir: &std::path::Path) -> anyhow::Result<Stores> {
    let url = s3_url("tables");
    Ok(Stores {
        args: vec![
            "--object-store".into(),
            url.clone(),
            "--metadata".into(),
            format!("sqlite:{}", dir.join("meta.sqlite").display()),
        ],
        env: s3_env()?,
        url,
        options: Some(json!({
            "AWS_ENDPOINT_URL": s3_endpoint()?,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        })),
    })
}

/// Compacts everything now, merging pairs of small files.
fn eager(owner: &str) -> CompactorConfig {
    CompactorConfig {
        min_bytes: 0,
        max_age: Duration::ZERO,
        merge_fan_in: 2,
        owner: owner.into(),
        ..CompactorConfig::default()
    }
}

/// Every partition's readable range `(partition, start, high watermark)`.
async fn ranges(m: &Metadata, topic: &str) -> Vec<(u32, i64, i64)> {
    let t = m.topic(topic).await.unwrap();
    m.partition_states(&t)
        .await
        .unwrap()
        .iter()
        .map(|s| (s.partition, s.start_offset, s.next_offset))
        .collect()
}

/// The outside readers saw exactly the readable records of `topic`, as `cairn sql` does:
/// per partition, `hwm - start` rows, offsets `start..hwm`, each once.
async fn check_exact(
    stores: &Stores,
    m: &Metadata,
    topic: &str,
    what: &str,
) -> anyhow::Result<Value> {
    let v = stores.read(topic, "latest")?;
    let want = ranges(m, topic).await;
    let mut rows = 0;
    for (p, start, hwm) in &want {
        let n = hwm - start;
        rows += n;
        let got = &v["per_partition"][p.to_string()];
        if n == 0 {
            assert!(got.is_null(), "{what}: partition {p} should be empty: {v}");
        } else {
            assert_eq!(
                got,
                &json!([n, start, hwm - 1, n]),
                "{what}: partition {p} ({start}..{hwm}): {v}"
            );
        }
    }
    assert_eq!(v["rows"], rows, "{what}: {v}");
    assert_eq!(v["polars_rows"], rows, "{what}: polars: {v}");
    assert_eq!(v["duckdb"], json!([rows, rows]), "{what}: duckdb: {v}");
    let sql: Vec<(u32, i64, i64, i64)> = stores.sql_per_partition(topic)?;
    let expected: Vec<(u32, i64, i64, i64)> = want
        .iter()
        .filter(|(_, s, h)| h > s)
        .map(|(p, s, h)| (*p, h - s, *s, h - 1))
        .collect();
    assert_eq!(sql, expected, "{what}: cairn sql");
    Ok(v)
}

async fn tables_follow_the_topic(stores: Stores, dir: &std::path::Path) -> anyhow::Result<()> {
    let args: Vec<&str> = stores.args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &stores.env)?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("orders", 3, TopicOptions::default())
        .await?;
    admin
        .create_topic(
            "logs",
            2,
            TopicOptions {
                retention_ms: Some(20 * 60_000),
                ..TopicOptions::default()
            },
        )
        .await?;
    produce_workload(std::slice::from_ref(&agent.endpoint), "orders", 3, 4_000).await?;
    produce_workload(std::slice::from_ref(&agent.endpoint), "logs", 2, 500).await?;

    let clock = Arc::new(ManualClock::new(SystemClock.now_ms()));
    let kv =
        cairn_metadata::open_kv(&format!("sqlite:{}", dir.join("meta.sqlite").display())).await?;
    let m = Metadata::new(kv, clock.clone());
    let store = if stores.options.is_some() {
        cairn_tests::s3_store(&stores.url)?
    } else {
        cairn_agent::open_object_store(&stores.url, &[])?
    };
    let store = Arc::new(cairn_storage::InstrumentedStore::new(store));
    let counters = store.counters();
    let compactor = Compactor::new(store, m.clone(), eager("c1"));

    // 1. Compaction: one file per partition, one table version with all of them.
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.runs, r.failed_table_commits), (5, 0), "{r:?}");
    assert_eq!(r.table_commits, 2, "one version per topic: {r:?}");
    let first = check_exact(&stores, &m, "orders", "after compaction").await?;
    assert_eq!(first["rows"], 12_000);
    assert_eq!(first["files"], 3, "{first}");
    assert_eq!(
        first["columns"],
        json!([
            "partition",
            "offset",
            "timestamp",
            "key",
            "value",
            "headers",
            "producer_id",
            "sequence"
        ]),
    );
    let v1 = first["version"].as_i64().unwrap().to_string();
    let described: Value =
        serde_json::from_str(&stores.cairn(&["table", "describe", "orders", "--format", "json"])?)?;
    assert_eq!(described["version"].to_string(), v1, "{described}");
    assert_eq!(described["files"].as_array().unwrap().len(), 3);
    let rows: u64 = described["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["rows"].as_u64().unwrap())
        .sum();
    assert_eq!(rows, 12_000, "{described}");
    check_exact(&stores, &m, "logs", "logs after compaction").await?;

    // Nothing new: no new version, and not even a look at the tables (the collector's
    // orphan scan LISTs; nothing GETs).
    let gets = counters.gets.get();
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(r.table_commits, 0, "{r:?}");
    assert_eq!(counters.gets.get(), gets, "an idle cycle read objects");

    // 2. More records, compacted and merged with the first files in one cycle: the new
    // version replaces the first files with the merged ones, so no record shows twice.
    produce_workload(std::slice::from_ref(&agent.endpoint), "orders", 3, 4_000).await?;
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.runs, r.merges), (6, 3), "{r:?}");
    let merged = check_exact(&stores, &m, "orders", "after merging").await?;
    assert_eq!(merged["rows"], 24_000);
    assert_eq!(merged["files"], 3, "{merged}");

    // 3. A reader holding the first snapshot keeps reading it for the grace period...
    let old = stores.read("orders", &v1)?;
    assert_eq!(old["rows"], 12_000, "{old}");
    // ...and the latest stays exact after the replaced files are collected.
    clock.advance(11 * 60_000);
    let r = compactor.run_once(&|_| {}).await?;
    assert!(r.objects_deleted >= 6, "{r:?}");
    check_exact(&stores, &m, "orders", "after collection").await?;
    // Past the grace period the first snapshot's files are gone: a reader asking for it
    // gets an error, never other records.
    let gone = stores.python("orders", &v1)?.output()?;
    assert!(
        !gone.status.success(),
        "the first snapshot after its files were collected: {}",
        String::from_utf8_lossy(&gone.stdout)
    );

    // 4. delete-records in the middle of partition 0's file: the file is rewritten without
    // the deleted records (a trim) and the table lists the new one.
    let (_, _, hwm0) = ranges(&m, "orders").await[0];
    let before = hwm0 / 2 + 3;
    admin.delete_records("orders", 0, before).await?;
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(r.runs, 1, "one trim: {r:?}");
    let trimmed = check_exact(&stores, &m, "orders", "after delete-records").await?;
    assert_eq!(
        trimmed["per_partition"]["0"],
        json!([hwm0 - before, before, hwm0 - 1, hwm0 - before])
    );
    let t = m.topic("orders").await?;
    let (_, entries) = m.read_index(t.id, 0, 0, 100).await?;
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.kind, e.base_offset, e.end_offset))
            .collect::<Vec<_>>(),
        [(EntryKind::Parquet, before, hwm0)]
    );

    // 5. Retention: every record of `logs` is older than its 20 minutes now.
    clock.advance(15 * 60_000);
    let r = compactor.run_once(&|_| {}).await?;
    assert!(r.retention_entries_removed >= 2, "{r:?}");
    let logs = check_exact(&stores, &m, "logs", "after retention").await?;
    assert_eq!(logs["rows"], 0, "{logs}");

    // 6. A deleted topic's table is emptied.
    admin.delete_topic("orders").await?;
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!(r.failed_table_commits, 0, "{r:?}");
    let deleted = stores.read("orders", "latest")?;
    assert_eq!(
        (deleted["rows"].as_i64(), deleted["files"].as_i64()),
        (Some(0), Some(0)),
        "{deleted}"
    );

    // No version the log still holds listed a record twice.
    let every = stores.read("logs", "every")?;
    for (version, seen) in every.as_object().unwrap() {
        if let Some([rows, distinct]) = seen.as_array().map(Vec::as_slice) {
            assert_eq!(rows, distinct, "logs version {version}: {every}");
        }
    }
    agent.stop()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_file_store() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    tables_follow_the_topic(file_stores(dir.path()), dir.path()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_on_localstack_s3() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    tables_follow_the_topic(s3_stores(dir.path())?, dir.path()).await
}

/// Two compactors cycling at once while records keep coming: they race for the table's
/// next version, and the loser redoes its commit from the index, so every version lists
/// each record at most once and the last one lists every compacted record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_compactors_lose_no_table_file() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let stores = file_stores(dir.path());
    let args: Vec<&str> = stores.args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("clicks", 4, TopicOptions::default())
        .await?;
    let kv = cairn_metadata::open_kv(&format!(
        "sqlite:{}",
        dir.path().join("meta.sqlite").display()
    ))
    .await?;
    let m = Metadata::new(kv, Arc::new(SystemClock));
    let store = cairn_agent::open_object_store(&stores.url, &[])?;
    let a = Compactor::new(store.clone(), m.clone(), eager("a"));
    let b = Compactor::new(store.clone(), m.clone(), eager("b"));
    let mut commits = 0;
    for round in 0..6 {
        produce_workload(std::slice::from_ref(&agent.endpoint), "clicks", 2, 500).await?;
        let (ra, rb) = tokio::join!(a.run_once(&|_| {}), b.run_once(&|_| {}));
        let (ra, rb) = (ra?, rb?);
        assert_eq!(
            ra.failed_table_commits + rb.failed_table_commits,
            0,
            "round {round}: {ra:?} {rb:?}"
        );
        commits += ra.table_commits + rb.table_commits;
    }
    // A last cycle with nothing to compact brings the table to the index if the last race
    // left it a step behind.
    a.run_once(&|_| {}).await?;
    check_exact(&stores, &m, "clicks", "after concurrent compactors").await?;
    // The table lists exactly the index's Parquet files.
    let t = m.topic("clicks").await?;
    let mut index_files = Vec::new();
    for p in 0..4 {
        let (_, entries) = m.read_index(t.id, p, 0, 1000).await?;
        assert!(entries.iter().all(|e| e.kind == EntryKind::Parquet));
        index_files.extend(entries.iter().map(|e| e.object_key.clone()));
    }
    index_files.sort();
    let described: Value =
        serde_json::from_str(&stores.cairn(&["table", "describe", "clicks", "--format", "json"])?)?;
    let mut table_files: Vec<String> = described["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| format!("topics/clicks/{}", f["path"].as_str().unwrap()))
        .collect();
    table_files.sort();
    assert_eq!(table_files, index_files);
    let every = stores.read("clicks", "every")?;
    for (version, seen) in every.as_object().unwrap() {
        if let Some([rows, distinct]) = seen.as_array().map(Vec::as_slice) {
            assert_eq!(
                rows, distinct,
                "version {version} lists a record twice: {every}"
            );
        }
    }
    eprintln!("{commits} table versions committed by two compactors");
    agent.stop()?;
    Ok(())
}

/// A JSON value schema declared on a topic adds typed columns to its table: an outside
/// engine runs `SELECT sum(amount)` on them, `cairn sql` does too (the uncompacted tail
/// included), values that do not follow the schema are NULL, and a later schema that adds a
/// property evolves the table (old files read NULL) while a type change is refused and a
/// property left out keeps its column.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_from_a_value_schema() -> anyhow::Result<()> {
    use cairn_client::{Producer, ProducerConfig, ProducerRecord};
    let dir = temp_dir()?;
    let stores = file_stores(dir.path());
    let args: Vec<&str> = stores.args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    let v1 = r#"{"type": "object", "properties": {
        "order_id": {"type": "integer"}, "amount": {"type": ["number", "null"]},
        "currency": {"type": "string"}}}"#;
    let created = admin
        .create_topic(
            "orders",
            2,
            TopicOptions {
                value_schema: Some(v1.to_string()),
                ..TopicOptions::default()
            },
        )
        .await?;
    let declared: Vec<(String, String)> = created
        .value_columns
        .iter()
        .map(|c| (c.name.clone(), c.r#type.clone()))
        .collect();
    assert_eq!(
        declared,
        [
            ("order_id", "integer"),
            ("amount", "number"),
            ("currency", "string")
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // A schema the agent cannot turn into columns is refused with the reason.
    let bad = admin
        .set_value_schema(
            "orders",
            r#"{"type":"object","properties":{"offset":{"type":"integer"}}}"#.into(),
        )
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("table's own columns"), "{bad}");

    let channel = cairn_client::Cluster::from(cairn_client::connect(&agent.endpoint).await?);
    let send = |values: Vec<String>| {
        let channel = channel.clone();
        async move {
            let producer = Producer::new(channel, ProducerConfig::default());
            let mut pending = Vec::new();
            for v in values {
                pending.push(producer.send(ProducerRecord::new("orders", v)).await?);
            }
            for d in pending {
                d.await?;
            }
            producer.close().await?;
            anyhow::Ok(())
        }
    };
    // 200 orders that follow the schema, 10 values that are not JSON objects.
    let mut values: Vec<String> = (0..200)
        .map(|i| {
            format!(
                r#"{{"order_id": {i}, "amount": {}.25, "currency": "{}"}}"#,
                i % 10,
                if i % 2 == 0 { "EUR" } else { "USD" }
            )
        })
        .collect();
    values.extend((0..10).map(|i| format!("plain text {i}")));
    send(values).await?;

    let kv = cairn_metadata::open_kv(&format!(
        "sqlite:{}",
        dir.path().join("meta.sqlite").display()
    ))
    .await?;
    let m = Metadata::new(kv, Arc::new(SystemClock));
    let store = cairn_agent::open_object_store(&stores.url, &[])?;
    let compactor = Compactor::new(store, m.clone(), eager("typed"));
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.table_commits, r.failed_table_commits), (1, 0), "{r:?}");

    let query = |sql: &str| -> anyhow::Result<Value> {
        let mut cmd = Command::new(client_python()?);
        cmd.arg(workspace_root().join("tests/python/read_table.py"))
            .arg(stores.table_uri("orders"))
            .arg("query")
            .arg(sql);
        run_json(&mut cmd)
    };
    // sum(amount) = 20 × (0.25 + 1.25 + … + 9.25) = 20 × 47.5.
    let v = query(
        "SELECT count(*), count(amount), sum(amount), sum(order_id), \
         count(*) FILTER (WHERE currency = 'EUR') FROM topic",
    )?;
    assert_eq!(v["rows"], json!([[210, 200, 950.0, 19900, 100]]), "{v}");
    assert_eq!(v["types"]["amount"], "double", "{v}");
    assert_eq!(v["types"]["order_id"], "int64", "{v}");
    assert_eq!(v["polars_non_null"]["currency"], 200, "{v}");
    let sql = stores.cairn(&[
        "sql",
        "--format",
        "json",
        "SELECT count(amount) AS n, sum(amount) AS total FROM orders",
    ])?;
    assert_eq!(
        serde_json::from_str::<Value>(sql.trim())?,
        json!({"n": 200, "total": 950.0})
    );

    // 2. A later schema: `paid` is new, `currency` is left out (its column stays); `amount`
    // keeps its type.
    let changed = admin
        .set_value_schema(
            "orders",
            r#"{"type":"object","properties":{"amount":{"type":"string"}}}"#.into(),
        )
        .await
        .unwrap_err();
    assert!(
        changed.to_string().contains("keeps its name and type"),
        "{changed}"
    );
    let v2 = r#"{"type": "object", "properties": {"order_id": {"type": "integer"},
        "amount": {"type": "number"}, "paid": {"type": "boolean"}}}"#;
    let evolved = admin.set_value_schema("orders", v2.into()).await?;
    assert_eq!(
        evolved
            .value_columns
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["order_id", "amount", "currency", "paid"],
        "a dropped property keeps its column"
    );
    // The table takes the new column at once, with no file rewritten.
    let r = compactor.run_once(&|_| {}).await?;
    assert_eq!((r.runs, r.table_commits), (0, 1), "{r:?}");
    let v = query("SELECT count(*), count(paid) FROM topic")?;
    assert_eq!(v["rows"], json!([[210, 0]]), "{v}");
    assert_eq!(v["types"]["paid"], "bool", "{v}");

    // New records: `cairn sql` types them before they are compacted...
    send(
        (0..100)
            .map(|i| {
                format!(
                    r#"{{"order_id": {}, "amount": 1, "paid": {}, "currency": "EUR"}}"#,
                    1000 + i,
                    i % 4 == 0
                )
            })
            .collect(),
    )
    .await?;
    let tail = stores.cairn(&[
        "sql",
        "--format",
        "json",
        "SELECT count(paid) AS paid, count(currency) AS currency, sum(amount) AS total FROM orders",
    ])?;
    assert_eq!(
        serde_json::from_str::<Value>(tail.trim())?,
        json!({"paid": 100, "currency": 300, "total": 1050.0}),
        "the tail is typed with every column the table has"
    );
    // ...and every engine after.
    compactor.run_once(&|_| {}).await?;
    let v = query(
        "SELECT count(*), count(paid), count(*) FILTER (WHERE paid), count(currency), sum(amount) FROM topic",
    )?;
    assert_eq!(v["rows"], json!([[310, 100, 25, 300, 1050.0]]), "{v}");
    let described: Value =
        serde_json::from_str(&stores.cairn(&["table", "describe", "orders", "--format", "json"])?)?;
    assert_eq!(
        described["typed_columns"],
        json!([
            {"name": "order_id", "type": "long"},
            {"name": "amount", "type": "double"},
            {"name": "currency", "type": "string"},
            {"name": "paid", "type": "boolean"}
        ]),
        "{described}"
    );
    agent.stop()?;
    Ok(())
}
