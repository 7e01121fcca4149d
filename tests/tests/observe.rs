//! Observability: the metrics endpoint serves parseable Prometheus text whose counters move
//! with traffic, health endpoints answer, `cairn status` shows the agent, and `cairn bench`
//! runs in a smoke mode with every field in its JSON.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;

use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicOptions};
use cairn_tests::{AgentProcess, cairn_bin, run_json, run_ok, temp_dir};

/// A plain HTTP/1.0 GET: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let (head, body) = out.split_once("\r\n\r\n").unwrap();
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

fn counter(text: &str, name: &str) -> f64 {
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("parseable Prometheus text");
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name)
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a plain value"),
        })
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An agent process over `dir/objects` and `dir/meta.sqlite`, and its metrics address.
fn agent_with_metrics(dir: &std::path::Path) -> anyhow::Result<(AgentProcess, String)> {
    let objects = format!("file://{}", dir.join("objects").display());
    let metadata = format!("sqlite:{}", dir.join("meta.sqlite").display());
    let metrics = format!("127.0.0.1:{}", free_port());
    let agent = AgentProcess::start(
        &[
            "--object-store",
            &objects,
            "--metadata",
            &metadata,
            "--metrics-listen",
            &metrics,
        ],
        &[],
    )?;
    Ok((agent, metrics))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_health_and_status() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let (agent, metrics) = agent_with_metrics(dir.path())?;
    assert_eq!(http_get(&metrics, "/healthz"), (200, "ok\n".into()));
    assert_eq!(http_get(&metrics, "/readyz"), (200, "ready\n".into()));
    let (code, before) = http_get(&metrics, "/metrics");
    assert_eq!(code, 200);
    assert_eq!(counter(&before, "cairn_produce_requests_total"), 0.0);

    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("m", 2, TopicOptions::default())
        .await?;
    let producer = Producer::new(channel, ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..100 {
        acks.push(
            producer
                .send(ProducerRecord::new("m", format!("v{i}")))
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    producer.close().await?;
    let (_, after) = http_get(&metrics, "/metrics");
    assert!(counter(&after, "cairn_produce_requests_total") >= 1.0);
    assert_eq!(counter(&after, "cairn_produce_records_total"), 100.0);
    assert!(counter(&after, "cairn_object_puts_total") >= 1.0);
    assert!(counter(&after, "cairn_metadata_commits_total") >= 1.0);
    assert!(
        after.contains("cairn_produce_latency_seconds_bucket"),
        "{after}"
    );
    assert!(after.contains("cairn_segment_size_bytes_bucket"), "{after}");

    let text = run_ok(Command::new(cairn_bin()?).args([
        "status",
        "--sample",
        "100ms",
        "--endpoint",
        &agent.endpoint,
    ]))?;
    for want in [
        "uptime",
        "object store   file://",
        "metadata       sqlite",
        "topics         1",
        "100 records",
        "cache hits",
    ] {
        assert!(text.contains(want), "`{want}` missing from\n{text}");
    }
    // Catch-up read of the stored topic from an offset.
    let r = run_json(Command::new(cairn_bin()?).args([
        "bench",
        "consume",
        "--json",
        "--topic",
        "m",
        "--from",
        "10",
        "--endpoint",
        &agent.endpoint,
    ]))?;
    let read = r["read_records"].as_u64().unwrap();
    assert!(
        (80..=90).contains(&read),
        "100 records over 2 partitions from offset 10: {r}"
    );
    agent.stop()?;
    Ok(())
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    run_json(
        Command::new(cairn_bin().unwrap())
            .arg("bench")
            .args(args)
            .args(["--json", "--duration", "1s"]),
    )
    .unwrap()
}

const REPORT_FIELDS: &[&str] = &[
    "bench",
    "object_store",
    "metadata",
    "producers",
    "partitions",
    "record_size",
    "linger_ms",
    "segment_max_bytes",
    "seconds",
    "records",
    "bytes",
    "records_per_sec",
    "mib_per_sec",
    "produce_latency",
    "e2e_latency",
    "read_records",
    "read_mib_per_sec",
    "bill",
    "agent_cpu_seconds",
    "agent_cpu_seconds_per_gib",
    "agent_mib_per_cpu_second",
    "raw_put_mib_per_sec",
    "ingest_to_raw_put_ratio",
];
const BILL_FIELDS: &[&str] = &[
    "puts",
    "gets",
    "put_bytes",
    "get_bytes",
    "puts_per_gib_ingested",
    "gets_per_gib_read",
    "metadata_commits",
    "metadata_txns_per_gib",
    "metadata_retries",
    "usd_per_tib_ingested",
    "usd_per_tib_read",
    "s3_put_usd_per_1000",
    "s3_get_usd_per_1000",
];

#[test]
fn bench_smoke_reports_every_field() {
    let r = bench_json(&["produce", "--embedded", "--baseline", "--producers", "2"]);
    for f in REPORT_FIELDS {
        assert!(r.get(f).is_some(), "produce report lacks {f}: {r}");
    }
    for f in BILL_FIELDS {
        assert!(r["bill"].get(f).is_some(), "bill lacks {f}: {r}");
    }
    assert!(r["records"].as_u64().unwrap() > 0);
    assert!(r["bill"]["puts"].as_u64().unwrap() > 0);
    assert!(r["produce_latency"]["p99_ms"].as_f64().unwrap() > 0.0);
    assert!(r["raw_put_mib_per_sec"].as_f64().unwrap() > 0.0);
    assert!(r["ingest_to_raw_put_ratio"].as_f64().unwrap() > 0.0);
    assert!(
        r["agent_cpu_seconds"].as_f64().unwrap() > 0.0,
        "CPU time is measured"
    );

    let e2e = bench_json(&["e2e", "--embedded", "--linger", "20ms", "--rate", "2000"]);
    assert!(
        e2e["e2e_latency"]["p50_ms"].as_f64().unwrap() > 0.0,
        "{e2e}"
    );
    let consume = bench_json(&["consume", "--embedded", "--producers", "1"]);
    assert_eq!(consume["read_records"], consume["records"], "{consume}");
    assert!(consume["bill"]["gets"].as_u64().unwrap() > 0);
    // Through the Kafka listener: every record the bench's Kafka producer had acked is
    // read back.
    let kafka = bench_json(&[
        "consume",
        "--embedded",
        "--protocol",
        "kafka",
        "--codec",
        "lz4",
        "--producers",
        "2",
    ]);
    assert_eq!(kafka["protocol"], "kafka", "{kafka}");
    assert!(kafka["records"].as_u64().unwrap() > 0, "{kafka}");
    assert_eq!(kafka["read_records"], kafka["records"], "{kafka}");

    let raw = run_json(Command::new(cairn_bin().unwrap()).args([
        "bench",
        "raw-put",
        "--json",
        "--duration",
        "500ms",
        "--object-size",
        "64KiB",
    ]))
    .unwrap();
    for f in [
        "object_store",
        "object_size",
        "concurrency",
        "seconds",
        "puts",
        "puts_per_sec",
        "mib_per_sec",
        "put_latency",
    ] {
        assert!(raw.get(f).is_some(), "raw-put lacks {f}: {raw}");
    }
    assert!(raw["puts"].as_u64().unwrap() > 0);
}

/// Readiness follows the object store: a PUT that fails (here the segments directory is
/// replaced by a file) turns /readyz to 503 naming the failure while the produce waits;
/// once the store takes writes again the produce is acked and /readyz is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_object_store() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let root = dir.path().join("objects");
    let (agent, metrics) = agent_with_metrics(dir.path())?;
    assert_eq!(http_get(&metrics, "/readyz"), (200, "ready\n".into()));
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("r", 1, TopicOptions::default())
        .await?;
    // Segments cannot be written while `segments` is a file.
    let segments = root.join("segments");
    std::fs::create_dir_all(&segments)?;
    std::fs::rename(&segments, root.join("segments.away"))?;
    std::fs::write(&segments, b"in the way")?;
    let producer = Producer::new(channel, ProducerConfig::default());
    let ack = producer.send(ProducerRecord::new("r", "waits")).await?;
    let ack = tokio::spawn(ack);
    let mut seen = http_get(&metrics, "/readyz");
    while seen.0 == 200 {
        assert!(!ack.is_finished(), "acked while the store refused writes");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        seen = http_get(&metrics, "/readyz");
    }
    assert_eq!(seen.0, 503, "{seen:?}");
    assert!(seen.1.starts_with("object store failing: PUT"), "{seen:?}");
    // The store recovers: the waiting produce is acked, readiness returns.
    std::fs::remove_file(&segments)?;
    std::fs::rename(root.join("segments.away"), &segments)?;
    let meta = ack.await??;
    assert_eq!(meta.offset, 0);
    assert_eq!(http_get(&metrics, "/readyz"), (200, "ready\n".into()));
    agent.stop()?;
    Ok(())
}

/// Start-up checks that the object store takes writes: an agent pointed at a bucket that
/// does not exist, or at a directory where it cannot create its objects, exits with one
/// line saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_refuses_to_start_on_a_store_that_takes_no_writes() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    // A directory where nothing can be created (`probes` is a file, so probes/ID fails).
    std::fs::create_dir_all(dir.path().join("objects"))?;
    std::fs::write(dir.path().join("objects/probes"), b"")?;
    let metadata = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    let file_store = format!("file://{}", dir.path().join("objects").display());
    let cases = [
        (
            "s3://cairn-no-such-bucket/x".to_string(),
            cairn_tests::s3_env()?,
        ),
        (file_store, Vec::new()),
    ];
    for (store, env) in cases {
        let out = Command::new(cairn_bin()?)
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(["--object-store", &store, "--metadata", &metadata])
            .env("CAIRN_LOG", "error")
            .envs(env)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{store}: {err}");
        assert!(err.contains("does not take writes"), "{store}: {err}");
        assert!(out.stdout.is_empty(), "{store}: it never listened");
    }
    Ok(())
}

/// Once the metadata store reports damage (SQLite: "database disk image is malformed"), the
/// agent takes no more writes and is not ready: the produce that met it and every later
/// one are DATA_LOSS, and `/readyz` says why. The damage is injected at one commit of the
/// running agent; `a_damaged_sqlite_store_stops_every_operation` (cairn-metadata) shows a
/// real malformed SQLite file is reported as this damage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_metadata_store_stops_writes_and_readiness() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let kv = cairn_metadata::open_kv(&format!(
        "sqlite:{}",
        dir.path().join("meta.sqlite").display()
    ))
    .await?;
    let faulty = std::sync::Arc::new(cairn_metadata::FaultyKv::new(kv));
    let agent = cairn_agent::AgentBuilder::new(cairn_agent::AgentSettings::default())
        .object_store(cairn_tests::file_store(&dir.path().join("objects"))?)
        .metadata_store(faulty.clone())
        .build()?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let metrics = http.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(agent.serve_with_metrics(listener, Some(http), async move {
        let _ = stopped.await;
    }));
    let channel = cairn_client::connect(&endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("d", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(
        channel,
        ProducerConfig {
            delivery_timeout: std::time::Duration::from_secs(5),
            ..ProducerConfig::default()
        },
    );
    producer
        .send(ProducerRecord::new("d", "before"))
        .await?
        .await?;
    assert_eq!(http_get(&metrics, "/readyz"), (200, "ready\n".into()));

    faulty.damage_next_commits(1);
    let err = producer
        .send(ProducerRecord::new("d", "meets the damage"))
        .await?
        .await
        .expect_err("not acked on a damaged store");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
    assert!(
        err.to_string().contains("metadata store is damaged"),
        "{err}"
    );
    let (code, body) = http_get(&metrics, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.starts_with("metadata store damaged, taking no writes"),
        "{body}"
    );
    // Later writes are refused too, though the store would take them now.
    let err = producer
        .send(ProducerRecord::new("d", "after"))
        .await?
        .await
        .expect_err("still refused");
    assert_eq!(err.code(), Some(tonic::Code::DataLoss), "{err}");
    let _ = stop.send(());
    serving.await??;
    Ok(())
}

/// The metric names a PromQL expression reads (`cairn_…` identifiers).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("cairn_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The series names of a Prometheus text exposition.
fn exported(text: &str) -> std::collections::BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// Every metric the Grafana dashboard of `deploy/` queries exists in a running agent's or
/// compactor's /metrics once they have done some work: a renamed metric breaks this test,
/// not a panel nobody looks at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_queries_is_exported() -> anyhow::Result<()> {
    let path = cairn_tests::workspace_root().join("deploy/grafana/dashboards/cairn.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path)?)?;
    let mut wanted = std::collections::BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            assert!(!expr.is_empty(), "a target without a query in {panel}");
            wanted.extend(metric_names(expr));
        }
    }
    assert!(wanted.len() >= 15, "only {wanted:?} in {}", path.display());

    // An agent that produced, served fetches and read through its zone cache.
    let dir = temp_dir()?;
    let (agent, metrics) = agent_with_metrics(dir.path())?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("d", 2, TopicOptions::default())
        .await?;
    let producer = Producer::new(channel, ProducerConfig::default());
    let mut acks = Vec::new();
    for i in 0..20 {
        acks.push(
            producer
                .send(ProducerRecord::new("d", format!("v{i}")))
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    assert_eq!(cairn_tests::read_all(&agent.endpoint, "d").await?.len(), 20);
    // A consumer group with committed offsets, for the lag gauge.
    run_ok(Command::new(cairn_bin()?).args([
        "consume",
        "d",
        "--group",
        "dashboard",
        "--from-beginning",
        "--endpoint",
        &agent.endpoint,
    ]))?;
    // Five records the group has not read: its lag.
    let producer = Producer::new(
        cairn_client::connect(&agent.endpoint).await?,
        ProducerConfig::default(),
    );
    for i in 0..5 {
        producer
            .send(ProducerRecord::new("d", format!("late{i}")).partition(0))
            .await?
            .await?;
    }
    let (code, agent_text) = http_get(&metrics, "/metrics");
    assert_eq!(code, 200);

    // A compactor over the same stores, serving its metrics.
    let compactor_metrics = format!("127.0.0.1:{}", free_port());
    let mut compactor = Command::new(cairn_bin()?)
        .args([
            "compactor",
            "--interval",
            "1h",
            "--metrics-listen",
            &compactor_metrics,
        ])
        .args([
            "--object-store",
            &format!("file://{}", dir.path().join("objects").display()),
        ])
        .args([
            "--metadata",
            &format!("sqlite:{}", dir.path().join("meta.sqlite").display()),
        ])
        .env("CAIRN_LOG", "warn")
        .spawn()?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let compactor_text = loop {
        if TcpStream::connect(&compactor_metrics).is_ok() {
            // After its first cycle, which sets the backlog and lag gauges.
            let (code, text) = http_get(&compactor_metrics, "/metrics");
            if code == 200 && counter(&text, "cairn_compactor_cycles_total") >= 1.0 {
                break text;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the compactor never served /metrics after a cycle on {compactor_metrics}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    let _ = compactor.kill();
    let _ = compactor.wait();
    assert_eq!(
        counter(&compactor_text, "cairn_compactor_consumer_lag_records"),
        5.0,
        "the group read 20 records of 25"
    );
    assert!(counter(&compactor_text, "cairn_compactor_backlog_bytes") > 0.0);

    let mut have = exported(&agent_text);
    have.extend(exported(&compactor_text));
    let missing: Vec<&String> = wanted.iter().filter(|m| !have.contains(*m)).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics that neither the agent nor the compactor exports: {missing:?}"
    );
    agent.stop()?;
    Ok(())
}
