//! `cairn sql` over a live topic: the same answers before compaction (all segments), after it
//! (Parquet), and with a new uncompacted tail on top; deleted records disappear; csv and json
//! output.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use cairn_client::{Admin, TopicOptions};
use cairn_tests::{AgentProcess, cairn_bin, file_agent_args, produce_workload, run_ok, temp_dir};

fn cairn(args: &[&str], stores: &[String]) -> String {
    run_ok(Command::new(cairn_bin().unwrap()).args(args).args(stores)).unwrap()
}

/// Runs a query with `--format json` and returns its rows.
fn sql(query: &str, stores: &[String]) -> Vec<serde_json::Value> {
    cairn(&["sql", "--format", "json", query], stores)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn count_and_max(stores: &[String]) -> (i64, i64) {
    let rows = sql("SELECT count(*) AS n, max(offset) AS m FROM events", stores);
    assert_eq!(rows.len(), 1, "{rows:?}");
    (
        rows[0]["n"].as_i64().unwrap(),
        rows[0]["m"].as_i64().unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_sees_the_live_topic_before_and_after_compaction() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let stores = file_agent_args(dir.path());
    let agent = AgentProcess::start(&stores.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("events", 3, TopicOptions::default())
        .await?;
    let sent = produce_workload(std::slice::from_ref(&agent.endpoint), "events", 3, 4_000).await?;
    let max_offset = sent.iter().map(|s| s.offset).max().unwrap();
    assert_eq!(count_and_max(&stores), (12_000, max_offset));

    let per_partition = sql(
        "SELECT partition, count(*) AS n, min(\"offset\") AS lo FROM events GROUP BY partition ORDER BY partition",
        &stores,
    );
    assert_eq!(per_partition.len(), 3, "{per_partition:?}");
    for row in &per_partition {
        let p = row["partition"].as_u64().unwrap() as u32;
        let n = sent.iter().filter(|s| s.partition == p).count() as i64;
        assert_eq!((row["n"].as_i64(), row["lo"].as_i64()), (Some(n), Some(0)));
    }

    let report = cairn(&["compactor", "--once", "--max-age", "0s"], &stores);
    assert!(report.contains("compaction: 3 runs"), "{report}");
    assert_eq!(
        count_and_max(&stores),
        (12_000, max_offset),
        "the same after compaction"
    );

    // A new uncompacted tail on top of the Parquet files is seen at once.
    let more = produce_workload(std::slice::from_ref(&agent.endpoint), "events", 1, 500).await?;
    let new_max = more.iter().map(|s| s.offset).max().unwrap().max(max_offset);
    assert_eq!(count_and_max(&stores), (12_500, new_max));

    // Values, as text.
    let first = sql(
        "SELECT CAST(value AS VARCHAR) AS v FROM events WHERE partition = 0 AND \"offset\" = 0",
        &stores,
    );
    let want = sent
        .iter()
        .find(|s| s.partition == 0 && s.offset == 0)
        .unwrap();
    assert_eq!(
        first[0]["v"].as_str().unwrap().as_bytes(),
        &want.value[..],
        "{first:?}"
    );

    // Deleted records are not rows any more.
    admin.delete_records("events", 0, 10).await?;
    assert_eq!(count_and_max(&stores).0, 12_490);

    // CSV: a header and one line per row.
    let csv = cairn(
        &[
            "sql",
            "--format",
            "csv",
            "SELECT partition, count(*) AS n FROM events GROUP BY partition ORDER BY partition",
        ],
        &stores,
    );
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 4, "{csv}");
    assert_eq!(lines[0], "partition,n");

    // A bad query is a one-line error naming the problem.
    let out = Command::new(cairn_bin()?)
        .args(["sql", "SELECT nope FROM events"])
        .args(&stores)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nope"), "{err}");
    agent.stop()?;
    Ok(())
}
