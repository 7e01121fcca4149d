//! The API from a second language: `tests/python/test_client.py`, a Python client whose
//! stubs grpcio-tools generates from the .proto files at run time and which builds and opens
//! frames itself (zstd, LZ4 frame, CRC32C with standard Python packages) and partitions keys
//! with Kafka's murmur2, runs against a real agent process. Then the Rust client reads back
//! what Python wrote: same records, keyed ones where Rust's partitioner puts them.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cairn_tests::{
    AgentProcess, client_python, file_agent_args, read_all, temp_dir, workspace_root,
};

/// The round-trip topics' partition count and records per topic (test_client.py's
/// PARTITIONS, and two sends of 40 records).
const PARTITIONS: u32 = 3;
const ROUND_TRIP_RECORDS: usize = 80;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_produces_and_consumes() -> anyhow::Result<()> {
    let python = client_python()?;
    let dir = temp_dir()?;
    let args = file_agent_args(dir.path());
    let agent = AgentProcess::start(&args.iter().map(String::as_str).collect::<Vec<_>>(), &[])?;

    let script = workspace_root().join("tests/python/test_client.py");
    let out = tokio::process::Command::new(&python)
        .arg(&script)
        .arg(&agent.endpoint)
        .args(["--topic-prefix", "py"])
        // No __pycache__ left in the work tree.
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .await?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "{} {} failed ({}); its output is above",
        python.display(),
        script.display(),
        out.status
    );

    // Frames Python built decode in Rust to the records Python sent (test_client.py's
    // sample_records: header "i" holds the index the value and the "bin" header derive from).
    for codec in ["zstd", "lz4"] {
        let topic = format!("py-roundtrip-{codec}");
        let records = read_all(&agent.endpoint, &topic).await?;
        assert_eq!(records.len(), ROUND_TRIP_RECORDS, "{topic}");
        for r in &records {
            let i: usize = r
                .headers
                .iter()
                .find(|(k, _)| k == "i")
                .map(|(_, v)| String::from_utf8_lossy(v).parse().unwrap())
                .unwrap_or_else(|| panic!("{topic} {}/{}: no header i", r.partition, r.offset));
            let value = format!("value {i} {}", "z".repeat(i * 13 % 200));
            assert_eq!(
                r.value,
                value.as_bytes(),
                "{topic} {}/{}",
                r.partition,
                r.offset
            );
            let bin = r
                .headers
                .iter()
                .find(|(k, _)| k == "bin")
                .map(|(_, v)| v.to_vec());
            assert_eq!(bin, Some(vec![0, 255, (i % 256) as u8]));
            if !r.key.is_empty() {
                assert_eq!(
                    r.partition,
                    cairn_proto::partition_for_key(&r.key, PARTITIONS),
                    "{topic}: Python put key {:?} in another partition than Rust would",
                    String::from_utf8_lossy(&r.key)
                );
            }
        }
    }
    agent.stop()?;
    Ok(())
}
