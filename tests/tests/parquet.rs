//! Our Parquet files are read by an engine no one here wrote: pyarrow (installed from PyPI
//! into a cached venv) checks row count, offsets, a value, headers and producer stamps.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use bytes::Bytes;
use cairn_storage::parquet::{StoredRecord, write};
use cairn_tests::{pyarrow_python, run_json, temp_dir};

const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
path = sys.argv[1]
t = pq.read_table(path)
offsets = t.column("offset").to_pylist()
print(json.dumps({
    "rows": t.num_rows,
    "min": min(offsets),
    "max": max(offsets),
    "value7": t.column("value")[7].as_py().decode(),
    "headers2": [h["key"] for h in t.column("headers")[2].as_py()],
    "producer0": t.column("producer_id")[0].as_py(),
    "sequence0": t.column("sequence")[0].as_py(),
    "producer1": t.column("producer_id")[1].as_py(),
    "timestamp_type": str(t.schema.field("timestamp").type),
    "row_groups": pq.ParquetFile(path).num_row_groups,
}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyarrow_reads_our_parquet() -> anyhow::Result<()> {
    let python = pyarrow_python()?;
    let dir = temp_dir()?;
    let store = cairn_agent::open_object_store(&format!("file://{}", dir.path().display()), &[])?;
    let records: Vec<StoredRecord> = (0..50_000i64)
        .map(|i| StoredRecord {
            offset: 1_000 + i,
            timestamp_ms: 1_700_000_000_000 + i,
            key: Bytes::from(format!("k{}", i % 100)),
            value: Bytes::from(format!("event {i}")),
            headers: (0..(i % 3))
                .map(|h| (format!("h{h}"), Bytes::from_static(b"v")))
                .collect(),
            producer: (i % 2 == 0).then_some((9, 500 + i)),
        })
        .collect();
    let file = write(store, "orders", 2, 1, &records, &[]).await?;
    let path = dir.path().join(&file.path);
    let r = run_json(Command::new(python).args(["-c", SCRIPT]).arg(&path))?;
    assert_eq!(r["rows"], 50_000);
    assert_eq!(
        (r["min"].as_i64(), r["max"].as_i64()),
        (Some(1_000), Some(50_999))
    );
    assert_eq!(r["value7"], "event 7");
    assert_eq!(r["headers2"], serde_json::json!(["h0", "h1"]));
    assert_eq!(
        (r["producer0"].as_u64(), r["sequence0"].as_i64()),
        (Some(9), Some(500))
    );
    assert!(r["producer1"].is_null());
    assert_eq!(r["timestamp_type"], "timestamp[ms, tz=UTC]");
    assert!(r["row_groups"].as_u64().unwrap() >= 1);
    Ok(())
}
