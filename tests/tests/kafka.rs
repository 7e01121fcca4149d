//! Unmodified Kafka clients against a real agent process's Kafka listener: librdkafka
//! (PyPI's `confluent-kafka`, idempotent, every compression codec), Debian's `kcat`
//! (an older librdkafka) and the pure-Python `kafka-python`. Records written through Kafka
//! are read through gRPC identically, and the other way round. Malformed frames close only
//! their own connection.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicOptions};
use cairn_tests::pki::Ca;
use cairn_tests::{
    AgentProcess, client_python, file_agent_args, read_all, run_json, run_ok, temp_dir,
    workspace_root,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, RequestHeader, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use serde_json::Value;

const CODECS: [&str; 5] = ["none", "gzip", "snappy", "lz4", "zstd"];

fn agent(dir: &std::path::Path) -> anyhow::Result<(AgentProcess, String)> {
    let args = file_agent_args(dir);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let kafka = agent
        .kafka
        .clone()
        .ok_or_else(|| anyhow::anyhow!("the agent reported no Kafka listener"))?;
    Ok((agent, kafka))
}

fn python(mode: &str, args: &[&str]) -> anyhow::Result<Value> {
    let mut cmd = Command::new(client_python()?);
    cmd.arg(workspace_root().join("tests/python/kafka_clients.py"))
        .arg(mode)
        .args(args);
    run_json(&mut cmd)
}

fn str_of(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

/// librdkafka produces with idempotence on and each codec; every record is read back once,
/// in offset order, by librdkafka and by the gRPC consumer, identical in both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_produces_with_every_codec_and_reads_back() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let (agent, kafka) = agent(dir.path())?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("orders", 4, TopicOptions::default())
        .await?;
    // 100,000 records in all, as Kafka clients send them: idempotent, in every codec.
    const PER_CODEC: usize = 20_000;
    let mut produced: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for codec in CODECS {
        let out = python(
            "produce",
            &[&kafka, "orders", &PER_CODEC.to_string(), codec, codec],
        )?;
        assert_eq!(out["errors"], Value::Array(vec![]), "{codec}: {out}");
        assert_eq!(out["unflushed"], 0, "{codec}");
        let delivered = out["delivered"].as_array().unwrap();
        assert_eq!(delivered.len(), PER_CODEC, "{codec}");
        for d in delivered {
            let key = str_of(&d[2]);
            let at = (d[0].as_i64().unwrap(), d[1].as_i64().unwrap());
            assert!(
                produced.insert(key.clone(), at).is_none(),
                "{key} acked twice"
            );
        }
    }
    let total = produced.len();
    assert_eq!(total, PER_CODEC * CODECS.len());
    // Acked offsets are distinct per partition.
    let distinct: BTreeSet<(i64, i64)> = produced.values().copied().collect();
    assert_eq!(distinct.len(), total);

    let read = python("consume", &[&kafka, "orders", "4", &total.to_string()])?;
    let records = read["records"].as_array().unwrap();
    assert_eq!(
        records.len(),
        total,
        "librdkafka read {} records",
        records.len()
    );
    let mut next: BTreeMap<i64, i64> = BTreeMap::new();
    let mut seen = BTreeMap::new();
    for r in records {
        let (p, o) = (r[0].as_i64().unwrap(), r[1].as_i64().unwrap());
        let key = str_of(&r[2]);
        // Dense from 0 and in order within each partition.
        let expected = next.entry(p).or_insert(0);
        assert_eq!(o, *expected, "partition {p}");
        *expected += 1;
        assert_eq!(produced.get(&key), Some(&(p, o)), "{key}");
        assert_eq!(str_of(&r[3]), format!("value of {key}"));
        let codec = key.split('-').next().unwrap().to_string();
        let seq = key.rsplit('-').next().unwrap().to_string();
        assert_eq!(
            r[4],
            serde_json::json!([["seq", seq], ["codec", codec]]),
            "{key}"
        );
        seen.insert((p, o), (key, r[5].as_i64().unwrap()));
    }

    // The same records through the gRPC API: same offsets, keys, values, headers, times.
    let grpc = read_all(&agent.endpoint, "orders").await?;
    assert_eq!(grpc.len(), total);
    for r in &grpc {
        let (key, ts) = seen
            .get(&(i64::from(r.partition), r.offset))
            .unwrap_or_else(|| panic!("gRPC read {}/{} Kafka did not", r.partition, r.offset));
        assert_eq!(&r.key[..], key.as_bytes());
        assert_eq!(&r.value[..], format!("value of {key}").as_bytes());
        assert_eq!(r.timestamp_ms, *ts);
        assert_eq!(r.headers.len(), 2);
        assert_eq!(r.headers[0].0, "seq");
    }

    // ListOffsets: earliest, latest, and by time at record precision.
    let (p0_first_key, p0_first_ts) = seen.get(&(0, 0)).unwrap().clone();
    let p0_len = next[&0];
    let (_, later_ts) = seen.get(&(0, p0_len / 2)).unwrap().clone();
    let o = python("offsets", &[&kafka, "orders", "0", &later_ts.to_string()])?;
    assert_eq!(
        (o["low"].as_i64(), o["high"].as_i64()),
        (Some(0), Some(p0_len))
    );
    let first_at_or_after = (0..p0_len).find(|i| seen[&(0, *i)].1 >= later_ts).unwrap();
    assert_eq!(o["for_time"].as_i64(), Some(first_at_or_after));
    assert!(p0_first_ts <= later_ts, "{p0_first_key}");
    Ok(())
}

/// kcat (Debian's, an older librdkafka) reads records a gRPC producer wrote and writes
/// records the gRPC consumer reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_and_grpc_share_a_topic() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let (agent, kafka) = agent(dir.path())?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("mixed", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(channel, ProducerConfig::default());
    for i in 0..50 {
        producer
            .send(
                ProducerRecord::new("mixed", format!("grpc value {i}"))
                    .key(format!("g{i}"))
                    .partition(0),
            )
            .await?
            .await?;
    }
    let lines: String = (0..50).map(|i| format!("k{i}:kcat value {i}\n")).collect();
    let mut kcat = Command::new("kcat")
        .args(["-b", &kafka, "-t", "mixed", "-P", "-K:", "-p", "0"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    kcat.stdin.take().unwrap().write_all(lines.as_bytes())?;
    assert!(kcat.wait()?.success(), "kcat -P failed");

    let out = run_ok(Command::new("kcat").args([
        "-b",
        &kafka,
        "-t",
        "mixed",
        "-C",
        "-o",
        "beginning",
        "-e",
        "-f",
        "%o|%k|%s\n",
    ]))?;
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 100, "{out}");
    for (i, line) in got.iter().enumerate() {
        let expected = if i < 50 {
            format!("{i}|g{i}|grpc value {i}")
        } else {
            format!("{i}|k{}|kcat value {}", i - 50, i - 50)
        };
        assert_eq!(*line, expected);
    }
    let grpc = read_all(&agent.endpoint, "mixed").await?;
    assert_eq!(grpc.len(), 100);
    assert_eq!(&grpc[77].key[..], b"k27");
    assert_eq!(&grpc[77].value[..], b"kcat value 27");

    let listing = run_ok(Command::new("kcat").args(["-b", &kafka, "-L", "-t", "mixed"]))?;
    assert!(
        listing.contains("topic \"mixed\" with 1 partitions"),
        "{listing}"
    );

    // Compacted into Parquet: `cairn sql` reads both protocols' records in the same columns,
    // and Kafka fetchers read the compacted offsets as before.
    let args = file_agent_args(dir.path());
    let compacted = run_ok(
        Command::new(cairn_tests::cairn_bin()?)
            .args(["compactor", "--once", "--max-age", "0s"])
            .args(&args),
    )?;
    assert!(compacted.contains("100 records"), "{compacted}");
    let sql = run_ok(
        Command::new(cairn_tests::cairn_bin()?)
            .args([
                "sql",
                "--format",
                "csv",
                "SELECT \"offset\", CAST(key AS VARCHAR) AS k, CAST(value AS VARCHAR) AS v \
                 FROM mixed ORDER BY \"offset\"",
            ])
            .args(&args),
    )?;
    let rows: Vec<String> = sql.lines().skip(1).map(|l| l.replace(',', "|")).collect();
    assert_eq!(rows, got, "cairn sql and kcat disagree");
    let again = run_ok(Command::new("kcat").args([
        "-b",
        &kafka,
        "-t",
        "mixed",
        "-C",
        "-o",
        "beginning",
        "-e",
        "-f",
        "%o|%k|%s\n",
    ]))?;
    assert_eq!(again, out, "kcat reads the compacted topic differently");
    Ok(())
}

/// kafka-python, a client that shares no code with librdkafka: it produces, then reads
/// everything back as a member of a group and commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_produces_and_consumes() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let (agent, kafka) = agent(dir.path())?;
    Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .create_topic("py", 2, TopicOptions::default())
        .await?;
    let out = python("kafka-python", &[&kafka, "py", "500"])?;
    let sent = out["sent"].as_array().unwrap();
    let got = out["got"].as_array().unwrap();
    assert_eq!(sent.len(), 500);
    assert_eq!(got.len(), 500, "{out}");
    let sent: BTreeSet<(i64, i64)> = sent
        .iter()
        .map(|s| (s[0].as_i64().unwrap(), s[1].as_i64().unwrap()))
        .collect();
    for g in got {
        let at = (g[0].as_i64().unwrap(), g[1].as_i64().unwrap());
        assert!(sent.contains(&at), "{at:?} was read but not acked");
        let i = str_of(&g[2]).trim_start_matches("kp-").to_string();
        assert_eq!(str_of(&g[3]), format!("kafka-python {i}"));
    }
    let grpc = read_all(&agent.endpoint, "py").await?;
    assert_eq!(grpc.len(), 500);
    // kafka-python read as a group member and committed: the group, seen through gRPC,
    // ends at the high watermarks, as kafka-python itself reports.
    let group = Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .describe_group("py-group")
        .await?;
    assert_eq!(group.partitions.len(), 2, "{group:?}");
    for p in &group.partitions {
        assert_eq!(p.committed, Some(p.high_watermark), "{group:?}");
        assert_eq!(
            out["committed"][p.partition.to_string()].as_i64(),
            Some(p.high_watermark),
            "{out}"
        );
    }
    Ok(())
}

/// A request frame: size, header of `api`/`version`, then `body` bytes.
fn frame(api: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    frame_as("malformed-test", api, version, correlation, body)
}

/// [`frame`] from a client of id `client_id`.
fn frame_as(client_id: &str, api: i16, version: i16, correlation: i32, body: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    let header = RequestHeader::default()
        .with_request_api_key(api)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_string(client_id.to_string())));
    let header_version = ApiKey::try_from(api)
        .map(|k| k.request_header_version(version))
        .unwrap_or(1);
    header.encode(&mut b, header_version).unwrap();
    b.put_slice(body);
    let mut out = (b.len() as i32).to_be_bytes().to_vec();
    out.extend_from_slice(&b);
    out
}

fn connect(kafka: &str) -> TcpStream {
    let s = TcpStream::connect(kafka).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s
}

/// One response's header and body.
fn read_response(s: &mut TcpStream) -> std::io::Result<Bytes> {
    let mut size = [0u8; 4];
    s.read_exact(&mut size)?;
    let mut body = vec![0u8; i32::from_be_bytes(size) as usize];
    s.read_exact(&mut body)?;
    Ok(Bytes::from(body))
}

/// The connection was closed by the agent: a read sees the end, not a response.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 1];
    match s.read(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected the connection closed, got {other:?}"),
    }
}

/// A well-formed ApiVersions v3 exchange on `s`; returns the APIs advertised.
fn api_versions(s: &mut TcpStream, correlation: i32) -> ApiVersionsResponse {
    let mut body = BytesMut::new();
    ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("t"))
        .with_client_software_version(StrBytes::from_static_str("1"))
        .encode(&mut body, 3)
        .unwrap();
    s.write_all(&frame(ApiKey::ApiVersions as i16, 3, correlation, &body))
        .unwrap();
    let mut resp = read_response(s).unwrap();
    let header = ResponseHeader::decode(&mut resp, 0).unwrap();
    assert_eq!(header.correlation_id, correlation);
    ApiVersionsResponse::decode(&mut resp, 3).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let (_agent, kafka) = agent(dir.path())?;
    let mut good = connect(&kafka);
    let advertised = api_versions(&mut good, 1);
    assert_eq!(advertised.error_code, 0);
    let apis: BTreeMap<i16, (i16, i16)> = advertised
        .api_keys
        .iter()
        .map(|a| (a.api_key, (a.min_version, a.max_version)))
        .collect();
    assert_eq!(apis.get(&(ApiKey::Produce as i16)), Some(&(3, 12)));
    // Transactions and share groups are not advertised.
    for absent in [
        ApiKey::AddPartitionsToTxn,
        ApiKey::EndTxn,
        ApiKey::ShareFetch,
    ] {
        assert!(!apis.contains_key(&(absent as i16)), "{absent:?}");
    }

    // An unsupported ApiVersions version is answered (in v0) with UNSUPPORTED_VERSION.
    let mut s = connect(&kafka);
    s.write_all(&frame(ApiKey::ApiVersions as i16, 99, 7, &[]))?;
    let mut resp = read_response(&mut s)?;
    assert_eq!(resp.get_i32(), 7);
    assert_eq!(resp.get_i16(), 35, "UNSUPPORTED_VERSION");

    let mut metadata_v1 = BytesMut::new();
    MetadataRequest::default()
        .with_topics(Some(Vec::new()))
        .encode(&mut metadata_v1, 1)?;
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("unknown API key", frame(999, 0, 1, &[]), false),
        (
            "unsupported version",
            frame(ApiKey::Produce as i16, 2, 1, &[]),
            false,
        ),
        ("negative size", (-5i32).to_be_bytes().to_vec(), false),
        ("oversized size", i32::MAX.to_be_bytes().to_vec(), false),
        ("shorter than a header", vec![0, 0, 0, 3, 0, 3, 0], false),
        (
            "garbage after a valid header",
            frame(ApiKey::Metadata as i16, 1, 1, &[0xff; 9]),
            false,
        ),
        (
            "bytes after a valid body",
            frame(
                ApiKey::Metadata as i16,
                1,
                1,
                &[&metadata_v1[..], &[1, 2, 3]].concat(),
            ),
            false,
        ),
        // Truncated: the size promises more than comes before the peer stops writing.
        ("truncated request", vec![0, 0, 0, 100, 0, 18, 0], true),
    ];
    for (what, bytes, half_close) in cases {
        let mut s = connect(&kafka);
        s.write_all(&bytes)?;
        if half_close {
            s.shutdown(std::net::Shutdown::Write)?;
        }
        assert_closed(&mut s, what);
        // Other connections keep working.
        let again = api_versions(&mut good, 2);
        assert_eq!(again.error_code, 0, "after {what}");
    }
    Ok(())
}

/// What one group member's process reported.
#[derive(Default)]
struct MemberLog {
    /// (partition, offset, key) of every record it processed.
    records: Vec<(i64, i64, String)>,
    commits: usize,
    errors: Vec<String>,
}

/// Starts a confluent-kafka group member whose JSON lines land in `log`, of the classic
/// group protocol or KIP-848's (`group_protocol` "consumer").
fn start_member(
    kafka: &str,
    name: &str,
    stop: &std::path::Path,
    log: std::sync::Arc<std::sync::Mutex<MemberLog>>,
    group_protocol: &str,
) -> anyhow::Result<std::process::Child> {
    let mut child = Command::new(client_python()?)
        .arg(workspace_root().join("tests/python/kafka_clients.py"))
        .args(["member", kafka, "events", "workers", name])
        .arg(stop)
        .env(
            "CAIRN_KAFKA_CONFIG",
            serde_json::json!({ "group.protocol": group_protocol }).to_string(),
        )
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            let mut l = log.lock().unwrap();
            if let Some(p) = v["p"].as_i64() {
                l.records
                    .push((p, v["o"].as_i64().unwrap(), str_of(&v["k"])));
            } else if v.get("commit").is_some() {
                l.commits += 1;
            } else if let Some(e) = v.get("error").or(v.get("commit_error")) {
                l.errors.push(e.to_string());
            }
        }
    });
    Ok(child)
}

/// A classic consumer group of three librdkafka members; one is killed mid-way. Its
/// partitions move to the others, every record is processed, and no partition's committed
/// offset ever goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_group_survives_a_killed_member() -> anyhow::Result<()> {
    group_survives_a_killed_member("classic", &[]).await
}

/// The same with KIP-848's protocol (`group.protocol=consumer`): ConsumerGroupHeartbeat,
/// assignments by topic id, OffsetCommit v9 with member epochs. The session timeout is the
/// agent's (6 s here, Kafka's 45 s by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_kip848_group_survives_a_killed_member() -> anyhow::Result<()> {
    group_survives_a_killed_member("consumer", &["kafka_group_session_timeout = \"6s\""]).await
}

async fn group_survives_a_killed_member(protocol: &str, tuning: &[&str]) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    let dir = temp_dir()?;
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, format!("[tuning]\n{}\n", tuning.join("\n")))?;
    let mut args = file_agent_args(dir.path());
    args.extend(["--config".into(), config.display().to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let kafka = agent.kafka.clone().unwrap();
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);
    admin
        .create_topic("events", 6, TopicOptions::default())
        .await?;
    const COUNT: usize = 100_000;
    let out = python(
        "produce",
        &[&kafka, "events", &COUNT.to_string(), "lz4", "e"],
    )?;
    assert_eq!(out["delivered"].as_array().map(Vec::len), Some(COUNT));

    let stop = dir.path().join("stop");
    let logs: Vec<Arc<Mutex<MemberLog>>> = (0..3).map(|_| Arc::default()).collect();
    let mut members = Vec::new();
    for (i, log) in logs.iter().enumerate() {
        members.push(start_member(
            &kafka,
            &format!("m{i}"),
            &stop,
            log.clone(),
            protocol,
        )?);
    }
    let processed = |logs: &[Arc<Mutex<MemberLog>>]| -> BTreeSet<String> {
        logs.iter()
            .flat_map(|l| {
                l.lock()
                    .unwrap()
                    .records
                    .iter()
                    .map(|r| r.2.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let mut last: BTreeMap<(String, u32), i64> = BTreeMap::new();
    let mut check_commits = async || -> anyhow::Result<()> {
        let d = admin.describe_group("workers").await?;
        for p in d.partitions {
            if let Some(c) = p.committed {
                let prev = last.insert((p.topic.clone(), p.partition), c).unwrap_or(0);
                assert!(
                    c >= prev,
                    "{}/{} committed {c} after {prev}",
                    p.topic,
                    p.partition
                );
            }
        }
        Ok(())
    };
    // Kill the first member once it has processed some records and committed.
    let deadline = std::time::Instant::now() + Duration::from_secs(240);
    loop {
        {
            let l = logs[0].lock().unwrap();
            if l.records.len() >= 2_000 && l.commits > 0 {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "member m0 processed nothing"
        );
        check_commits().await.ok();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    members[0].kill()?;
    members[0].wait()?;
    let killed_at = logs[0].lock().unwrap().records.len();
    assert!(
        killed_at < COUNT,
        "m0 processed everything before it was killed"
    );
    loop {
        check_commits().await?;
        let seen = processed(&logs);
        if seen.len() == COUNT {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {COUNT} records processed",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The survivors commit what they processed: the group ends at the high watermarks.
    loop {
        check_commits().await?;
        let d = admin.describe_group("workers").await?;
        if d.partitions
            .iter()
            .all(|p| p.committed == Some(p.high_watermark))
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "commits lag: {d:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    std::fs::write(&stop, b"")?;
    for m in &mut members[1..] {
        assert!(m.wait()?.success());
    }
    // Both survivors took part, and each record came from the partition it was produced to.
    for l in &logs[1..] {
        let l = l.lock().unwrap();
        assert!(!l.records.is_empty());
        assert!(
            l.errors.iter().all(|e| !e.contains("Fatal")),
            "{:?}",
            l.errors
        );
    }
    // The killed member's partitions moved: a survivor read on past where m0 stopped.
    let mut m0_last: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, o, _) in &logs[0].lock().unwrap().records {
        let e = m0_last.entry(*p).or_insert(*o);
        *e = (*e).max(*o);
    }
    let moved = logs[1..].iter().any(|l| {
        l.lock()
            .unwrap()
            .records
            .iter()
            .any(|(p, o, _)| m0_last.get(p).is_some_and(|last| o > last))
    });
    assert!(
        moved,
        "no partition of the killed member moved: {m0_last:?}"
    );
    let total: usize = logs.iter().map(|l| l.lock().unwrap().records.len()).sum();
    eprintln!(
        "processed: m0 {killed_at} (killed), m1 {}, m2 {}; {} reprocessed after moves",
        logs[1].lock().unwrap().records.len(),
        logs[2].lock().unwrap().records.len(),
        total - COUNT
    );
    let produced: BTreeMap<String, (i64, i64)> = out["delivered"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                str_of(&d[2]),
                (d[0].as_i64().unwrap(), d[1].as_i64().unwrap()),
            )
        })
        .collect();
    for l in &logs {
        for (p, o, k) in &l.lock().unwrap().records {
            assert_eq!(produced.get(k), Some(&(*p, *o)), "{k}");
        }
    }
    Ok(())
}

/// A request of `api`/`version` with `body`, on `s`; returns the response body.
fn call<T: Encodable, R: Decodable>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation: i32,
    body: &T,
) -> R {
    let mut b = BytesMut::new();
    body.encode(&mut b, version).unwrap();
    s.write_all(&frame(api as i16, version, correlation, &b))
        .unwrap();
    let mut resp = read_response(s).unwrap();
    let header = ResponseHeader::decode(&mut resp, api.response_header_version(version)).unwrap();
    assert_eq!(header.correlation_id, correlation);
    R::decode(&mut resp, version).unwrap()
}

/// `records` values as one Kafka batch stamped by an idempotent producer.
fn stamped_batch(values: &[&str], producer_id: i64, epoch: i16, sequence: i32) -> Bytes {
    let records: Vec<cairn_proto::v2::Record> = values
        .iter()
        .map(|v| cairn_proto::v2::Record {
            timestamp_ms: 1_700_000_000_000,
            value: Bytes::copy_from_slice(v.as_bytes()),
            ..Default::default()
        })
        .collect();
    let mut b = cairn_proto::kafka::encode_kafka_batch(0, &records).to_vec();
    b[43..51].copy_from_slice(&producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&epoch.to_be_bytes());
    b[53..57].copy_from_slice(&sequence.to_be_bytes());
    let crc = cairn_proto::payload_crc(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

/// An idempotent Kafka producer's retry is answered with the first attempt's offset and
/// stored once; a sequence gap is OUT_OF_ORDER_SEQUENCE_NUMBER. The producer state is the
/// one gRPC producers use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_are_stored_once() -> anyhow::Result<()> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    use kafka_protocol::messages::{
        InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, TopicName,
    };
    let dir = temp_dir()?;
    let (agent, kafka) = agent(dir.path())?;
    Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .create_topic("once", 1, TopicOptions::default())
        .await?;
    let mut s = connect(&kafka);
    let id: InitProducerIdResponse = call(
        &mut s,
        ApiKey::InitProducerId,
        4,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id((-1).into())
            .with_producer_epoch(-1),
    );
    assert_eq!(id.error_code, 0);
    assert!(id.producer_id.0 >= 0);
    let produce = |s: &mut TcpStream, correlation: i32, batch: Bytes| -> (i16, i64) {
        let req = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("once")))
                    .with_partition_data(vec![
                        PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch)),
                    ]),
            ]);
        let resp: ProduceResponse = call(s, ApiKey::Produce, 9, correlation, &req);
        let p = &resp.responses[0].partition_responses[0];
        (p.error_code, p.base_offset)
    };
    let first = stamped_batch(&["a", "b", "c"], id.producer_id.0, id.producer_epoch, 0);
    assert_eq!(produce(&mut s, 2, first.clone()), (0, 0));
    // The retry of a committed batch: its first offset again, nothing stored.
    assert_eq!(produce(&mut s, 3, first), (0, 0));
    let next = stamped_batch(&["d"], id.producer_id.0, id.producer_epoch, 3);
    assert_eq!(produce(&mut s, 4, next), (0, 3));
    let gap = stamped_batch(&["x"], id.producer_id.0, id.producer_epoch, 9);
    assert_eq!(
        produce(&mut s, 5, gap).0,
        45,
        "OUT_OF_ORDER_SEQUENCE_NUMBER"
    );
    let unknown = stamped_batch(&["y"], id.producer_id.0 + 1000, 0, 0);
    assert_eq!(produce(&mut s, 6, unknown).0, 59, "UNKNOWN_PRODUCER_ID");
    let values: Vec<Bytes> = read_all(&agent.endpoint, "once")
        .await?
        .into_iter()
        .map(|r| r.value)
        .collect();
    assert_eq!(
        values,
        ["a", "b", "c", "d"].map(|v| Bytes::from_static(v.as_bytes()))
    );
    Ok(())
}

/// confluent-kafka's AdminClient creates, describes, grows, trims and deletes a topic, and
/// gRPC sees each change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn librdkafka_admin_manages_topics() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let mut args = file_agent_args(dir.path());
    args.extend(["--kafka-auto-create-partitions".into(), "2".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let kafka = agent.kafka.clone().unwrap();
    let admin = Admin::new(cairn_client::connect(&agent.endpoint).await?);

    let out = python("admin", &[&kafka, "create"])?;
    assert_eq!(out["create"]["adm"], "ok", "{out}");
    let bad = str_of(&out["create"]["adm-bad"]);
    assert!(bad.contains("cleanup.policy"), "{bad}");
    assert!(str_of(&out["again"]["adm"]).contains("exists"), "{out}");
    assert_eq!(out["configs"]["retention.ms"], "3600000");
    assert_eq!(out["configs"]["compression.type"], "lz4");
    assert_eq!(out["brokers"], 1);
    let info = admin.describe_topic("adm").await?;
    let topic = info.topic.unwrap();
    assert_eq!(topic.partitions, 3);
    assert_eq!(topic.retention_ms, Some(3_600_000));

    let out = python("admin", &[&kafka, "grow"])?;
    assert_eq!(out["grow"]["adm"], "ok", "{out}");
    assert_ne!(out["shrink"]["adm"], "ok", "{out}");
    assert_eq!(out["partitions"], 5);
    assert_eq!(
        admin.describe_topic("adm").await?.topic.unwrap().partitions,
        5
    );

    let producer = Producer::new(
        cairn_client::connect(&agent.endpoint).await?,
        ProducerConfig::default(),
    );
    for i in 0..4 {
        producer
            .send(ProducerRecord::new("adm", format!("v{i}")).partition(0))
            .await?
            .await?;
    }
    let out = python("admin", &[&kafka, "trim"])?;
    assert_eq!(
        out["trim"].as_object().unwrap().values().next(),
        Some(&Value::from(2)),
        "{out}"
    );
    let left: Vec<i64> = read_all(&agent.endpoint, "adm")
        .await?
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(left, [2, 3]);

    // IncrementalAlterConfigs: SET and DELETE (back to the default), seen through gRPC.
    let out = python("admin", &[&kafka, "configs"])?;
    assert_eq!(out["set"], "ok", "{out}");
    assert!(str_of(&out["bad"]).contains("cleanup.policy"), "{out}");
    assert!(
        str_of(&out["missing"]).to_lowercase().contains("unknown"),
        "{out}"
    );
    assert_eq!(out["configs"]["retention.ms"], "120000", "{out}");
    assert_eq!(out["configs"]["compression.type"], "zstd", "{out}");
    let topic = admin.describe_topic("adm").await?.topic.unwrap();
    assert_eq!(topic.retention_ms, Some(120_000));

    // Kafka's ACL APIs write Cairn's ACL list: `cairn acl list` shows what they made.
    let out = python("admin", &[&kafka, "acls"])?;
    let created = out["create"].as_object().unwrap();
    assert_eq!(created.values().filter(|v| *v == "ok").count(), 2, "{out}");
    assert!(
        created.values().any(|v| str_of(v).contains("host")),
        "{out}"
    );
    assert_eq!(
        out["described"],
        serde_json::json!([
            ["GROUP", "g1", "LITERAL", "User:bob", "READ", "DENY"],
            ["TOPIC", "adm-", "PREFIXED", "User:alice", "READ", "ALLOW"],
        ]),
        "{out}"
    );
    assert_eq!(out["deleted"], 1, "{out}");
    assert_eq!(out["left"].as_array().map(Vec::len), Some(1), "{out}");
    let acls = run_ok(Command::new(cairn_tests::cairn_bin()?).args([
        "acl",
        "list",
        "--endpoint",
        &agent.endpoint,
    ]))?;
    assert!(acls.contains("alice") && acls.contains("adm-"), "{acls}");
    assert!(!acls.contains("bob"), "{acls}");

    // Auto-creation (on for this agent): a producer's Metadata makes the topic.
    let mut kcat = Command::new("kcat")
        .args(["-b", &kafka, "-t", "auto-made", "-P"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    kcat.stdin.take().unwrap().write_all(b"first\n")?;
    assert!(kcat.wait()?.success(), "kcat -P failed");
    let made = admin.describe_topic("auto-made").await?.topic.unwrap();
    assert_eq!(made.partitions, 2);
    assert_eq!(read_all(&agent.endpoint, "auto-made").await?.len(), 1);

    let out = python("admin", &[&kafka, "delete"])?;
    assert_eq!(out["delete"]["adm"], "ok", "{out}");
    assert!(
        str_of(&out["delete"]["never-made"])
            .to_lowercase()
            .contains("unknown"),
        "{out}"
    );
    assert!(admin.describe_topic("adm").await.is_err());
    Ok(())
}

/// Kafka's SASL_SSL and SSL. Over TLS, kcat authenticates with SASL PLAIN and librdkafka
/// with OAUTHBEARER, Cairn tokens as the secrets; with a client CA, a client certificate
/// names the principal as on the gRPC port. Each principal's ACLs decide each topic; a bad
/// token and a missing credential are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_and_certificates_over_tls_map_to_principals_and_acls() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let d = dir.path();
    let ca = Ca::new(d, "ca")?;
    let served = ca.issue("agent")?;
    let alice_cert = ca.issue("alice")?;
    let ca_path = ca.cert.display().to_string();
    let args = file_agent_args(d);
    let metadata = args[3].clone();
    let token = |principal: &str| -> anyhow::Result<String> {
        Ok(run_ok(Command::new(cairn_tests::cairn_bin()?).args([
            "token",
            "create",
            "--principal",
            principal,
            "--metadata",
            &metadata,
        ]))?
        .trim()
        .to_string())
    };
    let admin = token("admin")?;
    let alice = token("alice")?;
    let mut agent_args: Vec<String> = args.clone();
    agent_args.extend(
        [
            "--require-auth",
            "--super-user",
            "admin",
            "--tls-cert",
            served.cert.to_str().unwrap(),
            "--tls-key",
            served.key.to_str().unwrap(),
            "--tls-peer-ca",
            &ca_path,
        ]
        .map(String::from),
    );
    let started: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&started, &[])?;
    assert!(agent.endpoint.starts_with("https://"), "{}", agent.endpoint);
    let kafka = agent.kafka.clone().unwrap();
    let cairn = |args: &[&str]| {
        run_ok(
            Command::new(cairn_tests::cairn_bin()?)
                .args(args)
                .args(["--endpoint", &agent.endpoint, "--ca", &ca_path])
                .env("CAIRN_TOKEN", &admin),
        )
    };
    cairn(&["topic", "create", "ok-1", "--partitions", "1"])?;
    cairn(&["topic", "create", "ok-2", "--partitions", "2"])?;
    cairn(&["topic", "create", "secret", "--partitions", "1"])?;
    for op in ["write", "read", "describe"] {
        cairn(&[
            "acl",
            "add",
            "--principal",
            "alice",
            "--operation",
            op,
            "--topic",
            "ok-",
            "--prefix",
        ])?;
    }
    let sasl_ssl = |password: &str| {
        [
            "security.protocol=SASL_SSL".to_string(),
            format!("ssl.ca.location={ca_path}"),
            "sasl.mechanisms=PLAIN".into(),
            "sasl.username=alice".into(),
            format!("sasl.password={password}"),
        ]
    };
    let kcat = |config: &[String], topic: &str, produce: Option<&str>| {
        let mut cmd = kcat_cmd(&kafka, config);
        cmd.args(["-t", topic, "-X", "message.timeout.ms=10000"]);
        match produce {
            Some(_) => cmd.args(["-P"]),
            None => cmd.args(["-C", "-o", "beginning", "-e", "-f", "%s\n"]),
        };
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        if let Some(lines) = produce {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(lines.as_bytes())
                .unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let list = |kafka: &str, config: &[String], topic: &str| {
        run_ok(kcat_cmd(kafka, config).args(["-L", "-t", topic])).unwrap_or_default()
    };
    // The agent applies new ACLs within seconds; `describe` was added last.
    cairn_tests::eventually("alice's ACLs apply", || {
        let listing = list(&kafka, &sasl_ssl(&alice), "ok-1");
        async move { listing.contains("topic \"ok-1\" with 1 partitions") }
    })
    .await;
    let listing = list(&kafka, &sasl_ssl(&alice), "secret");
    assert!(listing.contains("authorization failed"), "{listing}");
    let (ok, _, err) = kcat(&sasl_ssl(&alice), "ok-1", Some("one\ntwo\n"));
    assert!(ok, "alice's produce to ok-1 failed: {err}");
    let (ok, out, err) = kcat(&sasl_ssl(&alice), "ok-1", None);
    assert!(ok, "{err}");
    assert_eq!(out, "one\ntwo\n");
    // No ACL lets alice write `secret`.
    let (_, _, err) = kcat(&sasl_ssl(&alice), "secret", Some("x\n"));
    assert!(err.to_lowercase().contains("authoriz"), "{err}");
    // A wrong token fails authentication.
    let wrong = format!("{}AAAA", &alice[..alice.len() - 4]);
    let (ok, _, err) = kcat(&sasl_ssl(&wrong), "ok-1", Some("y\n"));
    assert!(!ok, "{err}");
    assert!(
        err.contains("unknown or revoked") || err.to_lowercase().contains("authentication"),
        "{err}"
    );
    // TLS without SASL: the agent closes the connection, nothing is read.
    let anon = [
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={ca_path}"),
    ];
    let (_, out, _) = kcat(&anon, "ok-1", None);
    assert!(out.is_empty(), "{out}");
    // Plain text to the TLS port reads nothing either.
    let (_, out, _) = kcat(&[], "ok-1", None);
    assert!(out.is_empty(), "{out}");

    // librdkafka with OAUTHBEARER, the token as bearer: produced idempotently, read back.
    let oauth = serde_json::json!({
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": ca_path,
        "sasl.mechanisms": "OAUTHBEARER",
        "cairn.oauth.token": alice,
    })
    .to_string();
    let secured = |mode: &str, args: &[&str]| {
        let mut cmd = Command::new(client_python()?);
        cmd.arg(workspace_root().join("tests/python/kafka_clients.py"))
            .arg(mode)
            .args(args)
            .env("CAIRN_KAFKA_CONFIG", &oauth);
        run_json(&mut cmd)
    };
    let produced = secured("produce", &[&kafka, "ok-2", "300", "zstd", "oauth"])?;
    assert_eq!(produced["errors"], serde_json::json!([]), "{produced}");
    assert_eq!(produced["delivered"].as_array().map(Vec::len), Some(300));
    let read = secured("consume", &[&kafka, "ok-2", "2", "300"])?;
    let keys: BTreeSet<String> = read["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| str_of(&r[2]))
        .collect();
    assert_eq!(keys.len(), 300, "{read}");

    // Only alice's records are stored.
    let got = cairn(&["consume", "ok-1", "--from-beginning"])?;
    assert_eq!(got, "one\ntwo\n");
    drop(agent);

    // mTLS: with a client CA, alice's certificate is her principal over plain SSL.
    agent_args.extend(["--tls-client-ca".to_string(), ca_path.clone()]);
    let started: Vec<&str> = agent_args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&started, &[])?;
    let kafka = agent.kafka.clone().unwrap();
    let mtls = [
        "security.protocol=SSL".to_string(),
        format!("ssl.ca.location={ca_path}"),
        format!("ssl.certificate.location={}", alice_cert.cert.display()),
        format!("ssl.key.location={}", alice_cert.key.display()),
    ];
    let listing = list(&kafka, &mtls, "ok-1");
    assert!(
        listing.contains("topic \"ok-1\" with 1 partitions"),
        "{listing}"
    );
    let listing = list(&kafka, &mtls, "secret");
    assert!(listing.contains("authorization failed"), "{listing}");
    let mut cmd = kcat_cmd(&kafka, &mtls);
    let out = run_ok(cmd.args(["-t", "ok-1", "-C", "-o", "beginning", "-e", "-f", "%s\n"]))?;
    assert_eq!(out, "one\ntwo\n");
    // Without a certificate the handshake fails: nothing is read.
    let out = kcat_cmd(&kafka, &anon)
        .args(["-t", "ok-1", "-C", "-o", "beginning", "-e"])
        .output()?;
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.is_empty(), "{out}");
    Ok(())
}

/// kcat against `kafka` with librdkafka settings `config`, bounded to 30 s: a client
/// refused authentication would otherwise retry for minutes.
fn kcat_cmd(kafka: &str, config: &[String]) -> Command {
    let mut cmd = Command::new("timeout");
    cmd.args(["30", "kcat", "-b", kafka]);
    for c in config {
        cmd.args(["-X", c]);
    }
    cmd
}

/// The hosts of the leaders Metadata names for `topic`'s partitions, asked of `kafka` by a
/// client of id `client_id`, and the brokers listed.
fn leader_hosts(kafka: &str, client_id: &str, topic: &str) -> (Vec<String>, usize) {
    use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
    use kafka_protocol::messages::{MetadataResponse, TopicName};
    let mut s = connect(kafka);
    let mut body = BytesMut::new();
    MetadataRequest::default()
        .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
            TopicName(StrBytes::from_string(topic.to_string())),
        ))]))
        .encode(&mut body, 12)
        .unwrap();
    s.write_all(&frame_as(client_id, ApiKey::Metadata as i16, 12, 1, &body))
        .unwrap();
    let mut resp = read_response(&mut s).unwrap();
    ResponseHeader::decode(&mut resp, ApiKey::Metadata.response_header_version(12)).unwrap();
    let m = MetadataResponse::decode(&mut resp, 12).unwrap();
    let host = |node: i32| {
        m.brokers
            .iter()
            .find(|b| b.node_id.0 == node)
            .map(|b| b.host.as_str().to_string())
            .unwrap_or_else(|| format!("unknown node {node}"))
    };
    let leaders = m.topics[0]
        .partitions
        .iter()
        .map(|p| host(p.leader_id.0))
        .collect();
    (leaders, m.brokers.len())
}

/// Zones: Metadata names each partition's leader among the agents of the client's zone,
/// from `cairn_az=` in its client id or else from the agent's zone CIDRs for its address;
/// a client of no zone gets leaders spread over every agent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_names_leaders_in_the_clients_zone() -> anyhow::Result<()> {
    let pg = cairn_metadata::conformance::TempPostgres::start().map_err(anyhow::Error::msg)?;
    let metadata = pg
        .create_database("kafka_zones")
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = temp_dir()?;
    let objects = format!("file://{}", dir.path().join("objects").display());
    let common = ["--object-store", &objects, "--metadata", &metadata];
    // Agent a (zone a) takes its loopback clients for zone b's.
    let mut args_a = common.to_vec();
    args_a.extend(["--agent-id", "a", "--zone", "a"]);
    args_a.extend(["--kafka-zone-cidrs", "b=127.0.0.0/8"]);
    let a = AgentProcess::start_at("127.0.0.2:0", &args_a, &[])?;
    let mut args_b = common.to_vec();
    args_b.extend(["--agent-id", "b", "--zone", "b"]);
    let b = AgentProcess::start_at("127.0.0.3:0", &args_b, &[])?;
    Admin::new(cairn_client::connect(&a.endpoint).await?)
        .create_topic("zoned", 6, TopicOptions::default())
        .await?;
    let (ka, kb) = (a.kafka.clone().unwrap(), b.kafka.clone().unwrap());
    cairn_tests::eventually("both agents are brokers", || {
        let (ka, kb) = (ka.clone(), kb.clone());
        async move {
            leader_hosts(&ka, "plain", "zoned").1 == 2 && leader_hosts(&kb, "plain", "zoned").1 == 2
        }
    })
    .await;
    // By address: agent a maps this client to zone b.
    let (leaders, _) = leader_hosts(&ka, "plain", "zoned");
    assert_eq!(leaders, vec!["127.0.0.3"; 6]);
    // The client id's zone wins over the address's.
    let (leaders, _) = leader_hosts(&ka, "app,cairn_az=a", "zoned");
    assert_eq!(leaders, vec!["127.0.0.2"; 6]);
    let (leaders, _) = leader_hosts(&kb, "cairn_az=b", "zoned");
    assert_eq!(leaders, vec!["127.0.0.3"; 6]);
    // No zone (agent b has no CIDRs): the partitions are shared by both agents.
    let (leaders, _) = leader_hosts(&kb, "plain", "zoned");
    let spread: BTreeSet<&String> = leaders.iter().collect();
    assert_eq!(spread.len(), 2, "{leaders:?}");
    // A zone with no agent falls back to every agent.
    let (leaders, _) = leader_hosts(&kb, "cairn_az=nowhere", "zoned");
    assert_eq!(
        leaders.iter().collect::<BTreeSet<_>>().len(),
        2,
        "{leaders:?}"
    );
    Ok(())
}
