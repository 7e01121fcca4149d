//! Harness for Cairn's whole-system tests: real agent processes on loopback, real SQLite
//! files, and LocalStack's S3 (started on first use through `localstack/host.sh` unless
//! `CAIRN_TEST_S3_ENDPOINT` names one).

// Only the FoundationDB adapter in cairn-metadata may use unsafe code.
#![forbid(unsafe_code)]

pub mod history;
pub mod netcut;
pub mod pki;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};
use cairn_agent::{AgentBuilder, AgentSettings, FaultControl, FaultSpec, StoreCounters};
use cairn_client::{ConsumedRecord, Consumer, ConsumerConfig, Offset};
use cairn_metadata::KvStore;
use object_store::ObjectStore;

/// The bucket the tests use.
pub const BUCKET: &str = "cairn";

/// Credentials LocalStack accepts.
const S3_ENV: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "test"),
    ("AWS_SECRET_ACCESS_KEY", "test"),
    ("AWS_REGION", "us-east-1"),
    ("AWS_ALLOW_HTTP", "true"),
];

/// The S3 endpoint for this test process: `CAIRN_TEST_S3_ENDPOINT`, or a LocalStack that
/// this process starts once and that stops when the process exits.
pub fn s3_endpoint() -> anyhow::Result<String> {
    static ENDPOINT: OnceLock<Result<String, String>> = OnceLock::new();
    ENDPOINT
        .get_or_init(|| start_localstack().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn start_localstack() -> anyhow::Result<String> {
    if let Ok(ep) = std::env::var("CAIRN_TEST_S3_ENDPOINT")
        && !ep.is_empty()
    {
        return Ok(ep);
    }
    start_localstack_on("127.0.0.1")
}

/// Starts another LocalStack for this test process, listening on `host` (an address of this
/// machine, e.g. a Docker network's gateway so containers reach it), with the test bucket;
/// it stops when the process exits. Returns its endpoint.
pub fn start_localstack_on(host: &str) -> anyhow::Result<String> {
    let script = workspace_root().join("localstack/host.sh");
    let mut child = Command::new("bash")
        .env("CAIRN_LOCALSTACK_HOST", host)
        .arg(&script)
        .args(["run", "--watch-pid", &std::process::id().to_string(), "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("cannot run {}", script.display()))?;
    let stdout = child.stdout.take().context("no stdout from host.sh")?;
    for line in BufReader::new(stdout).lines() {
        let line = line.context("reading host.sh output")?;
        if let Some(ep) = line.strip_prefix("LOCALSTACK_ENDPOINT=") {
            // host.sh keeps running and stops LocalStack once this process is gone.
            std::mem::forget(child);
            return Ok(ep.trim().to_string());
        }
    }
    let status = child.wait().context("waiting for host.sh")?;
    bail!("localstack/host.sh exited ({status}) before LocalStack was ready; see its output above")
}

/// The environment an agent process needs to reach the test S3.
pub fn s3_env() -> anyhow::Result<Vec<(String, String)>> {
    let mut env: Vec<(String, String)> = S3_ENV
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("AWS_ENDPOINT_URL".into(), s3_endpoint()?));
    Ok(env)
}

/// A fresh `s3://` URL under the test bucket, unique to the caller.
pub fn s3_url(test: &str) -> String {
    format!("s3://{BUCKET}/{test}-{}", uuid_like())
}

/// An S3 object store for in-process agents, rooted at `url` (from [`s3_url`]).
pub fn s3_store(url: &str) -> anyhow::Result<Arc<dyn ObjectStore>> {
    let mut options: Vec<(String, String)> = vec![
        ("endpoint".into(), s3_endpoint()?),
        ("access_key_id".into(), "test".into()),
        ("secret_access_key".into(), "test".into()),
        ("region".into(), "us-east-1".into()),
        ("allow_http".into(), "true".into()),
    ];
    options.sort();
    Ok(cairn_agent::open_object_store(url, &options)?)
}

fn uuid_like() -> String {
    use rand::Rng;
    // Only needs to differ between runs sharing one bucket; no test outcome depends on it.
    #[allow(clippy::disallowed_methods)]
    let n: u64 = rand::rng().random();
    format!("{n:016x}")
}

/// A Python with `pyarrow` (an engine no one here wrote, to read our Parquet): a venv cached
/// in `~/.cache/cairn/pyarrow` (or `CAIRN_PYARROW_HOME`), created with `python3` and a pinned
/// pyarrow from PyPI on first use.
pub fn pyarrow_python() -> anyhow::Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| install_pyarrow().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(|e| anyhow::anyhow!(e))
}

fn install_pyarrow() -> anyhow::Result<PathBuf> {
    const PYARROW: &str = "pyarrow==26.0.1";
    let home = match std::env::var_os("CAIRN_PYARROW_HOME") {
        Some(h) => PathBuf::from(h),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set")?)
            .join(".cache/cairn/pyarrow"),
    };
    let python = home.join("venv/bin/python");
    let ready = |py: &Path| {
        Command::new(py)
            .args(["-c", "import pyarrow.parquet"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if ready(&python) {
        return Ok(python);
    }
    std::fs::create_dir_all(&home)?;
    let status = Command::new("python3")
        .args(["-m", "venv"])
        .arg(home.join("venv"))
        .status()
        .context("running python3 -m venv (is python3 installed?)")?;
    if !status.success() {
        bail!("python3 -m venv failed ({status})");
    }
    let status = Command::new(home.join("venv/bin/pip"))
        .args(["install", "--quiet", PYARROW])
        .status()
        .context("running pip")?;
    if !status.success() || !ready(&python) {
        bail!("could not install {PYARROW} into {}", home.display());
    }
    Ok(python)
}

/// The workspace directory (parent of this crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

/// The `cairn` binary: `CAIRN_BIN`, or the one Cargo built next to this test.
pub fn cairn_bin() -> anyhow::Result<PathBuf> {
    if let Ok(p) = std::env::var("CAIRN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().context("no current exe")?;
    // target/<profile>/deps/<test> → target/<profile>/cairn
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("unexpected test binary location")?;
    let bin = dir.join(format!("cairn{}", std::env::consts::EXE_SUFFIX));
    if !bin.exists() {
        bail!(
            "{} does not exist: run the tests with `cargo test --workspace` (which builds it) or set CAIRN_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

/// Runs `cmd` to completion and returns its standard output; an error naming the command, its
/// exit status and both its outputs if it could not start or did not succeed.
pub fn run_ok(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(stdout)
}

/// [`run_ok`], with the standard output parsed as one JSON value.
pub fn run_json(cmd: &mut Command) -> anyhow::Result<serde_json::Value> {
    let stdout = run_ok(cmd)?;
    serde_json::from_str(&stdout).with_context(|| format!("{cmd:?} printed no JSON:\n{stdout}"))
}

/// `cairn agent` flags for a `file://` object store and a SQLite file under `dir`.
pub fn file_agent_args(dir: &Path) -> Vec<String> {
    vec![
        "--object-store".into(),
        format!("file://{}", dir.join("objects").display()),
        "--metadata".into(),
        format!("sqlite:{}", dir.join("meta.sqlite").display()),
    ]
}

/// A `file://` object store in `dir/objects` (where [`file_agent_args`] puts it too).
pub fn file_store(dir: &Path) -> anyhow::Result<Arc<dyn ObjectStore>> {
    Ok(cairn_agent::open_object_store(
        &format!("file://{}", dir.join("objects").display()),
        &[],
    )?)
}

/// An agent running as a separate `cairn agent` process on a free loopback port.
#[derive(Debug)]
pub struct AgentProcess {
    child: Child,
    /// The agent's gRPC endpoint (`http://127.0.0.1:PORT`).
    pub endpoint: String,
    /// Its Kafka listener (`127.0.0.1:PORT`), unless started with `--kafka-listen off`.
    pub kafka: Option<String>,
}

impl AgentProcess {
    /// Starts `cairn agent` with these flags and extra environment, and waits until it
    /// listens.
    pub fn start(args: &[&str], env: &[(String, String)]) -> anyhow::Result<AgentProcess> {
        Self::start_at("127.0.0.1:0", args, env)
    }

    /// [`AgentProcess::start`] over a local object store and SQLite file in `dir`
    /// ([`file_agent_args`]).
    pub fn on_files(dir: &Path) -> anyhow::Result<AgentProcess> {
        let args = file_agent_args(dir);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Self::start(&args, &[])
    }

    /// [`AgentProcess::start`] listening on `listen` (e.g. `127.0.0.3:0`: another loopback
    /// address, a free port).
    pub fn start_at(
        listen: &str,
        args: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<AgentProcess> {
        Self::spawn(listen, args, env, Stdio::inherit())
    }

    /// [`AgentProcess::start_at`] logging at info level to the file `log`.
    pub fn start_logging(
        listen: &str,
        args: &[&str],
        env: &[(String, String)],
        log: &Path,
    ) -> anyhow::Result<AgentProcess> {
        let mut env = env.to_vec();
        env.push(("CAIRN_LOG".into(), "info".into()));
        Self::spawn(listen, args, &env, Stdio::from(std::fs::File::create(log)?))
    }

    fn spawn(
        listen: &str,
        args: &[&str],
        env: &[(String, String)],
        stderr: Stdio,
    ) -> anyhow::Result<AgentProcess> {
        let mut cmd = Command::new(cairn_bin()?);
        cmd.arg("agent")
            .args(["--listen", listen])
            .args(args)
            .env("CAIRN_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().context("cannot start cairn agent")?;
        let stdout = child.stdout.take().context("no stdout")?;
        // The first line comes from a reader thread, so an agent that hangs before it is
        // ready fails the test instead of stalling it.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(read) => read.context("reading the agent's first line")?,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("cairn agent did not report it was listening within 60s");
            }
        };
        let Some(rest) = line.trim().strip_prefix("cairn agent listening on ") else {
            let status = child.wait()?;
            bail!(
                "cairn agent did not start ({status}); it printed `{}`",
                line.trim()
            );
        };
        // `http://HOST:PORT` then, with a Kafka listener, `(kafka HOST:PORT)`.
        let endpoint = rest.split_whitespace().next().unwrap_or_default();
        let kafka = rest
            .split_once("(kafka ")
            .and_then(|(_, k)| k.strip_suffix(')'))
            .map(str::to_string);
        Ok(AgentProcess {
            endpoint: endpoint.to_string(),
            kafka,
            child,
        })
    }

    /// Waits until the process exits by itself (it is expected to crash or stop), up to
    /// `timeout`, and returns its exit status.
    pub async fn wait_for_exit(
        &mut self,
        timeout: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().context("checking the agent")? {
                return Ok(status);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("agent still running after {timeout:?}");
            }
            // No portable exit notification for a std child: poll it.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the process with SIGKILL (a crash: nothing is flushed, nothing deregistered).
    pub fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL the agent")?;
        self.child.wait().context("waiting for the killed agent")?;
        Ok(())
    }

    /// Freezes the process with SIGSTOP: to its peers it is cut off (its lease runs out,
    /// its connections hang) until [`AgentProcess::resume`], and then it carries on with
    /// whatever stale state it held.
    pub fn pause(&self) -> anyhow::Result<()> {
        self.signal("-STOP")
    }

    /// Lets a paused process run again (SIGCONT).
    pub fn resume(&self) -> anyhow::Result<()> {
        self.signal("-CONT")
    }

    fn signal(&self, sig: &str) -> anyhow::Result<()> {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .context("running kill")?;
        if !status.success() {
            bail!("kill {sig} failed");
        }
        Ok(())
    }

    /// Sends SIGTERM and returns at once (see [`AgentProcess::wait_for_exit`]).
    pub fn terminate(&self) -> anyhow::Result<()> {
        self.signal("-TERM")
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> anyhow::Result<()> {
        self.terminate()?;
        let exit = self.child.wait().context("waiting for the agent")?;
        if !exit.success() {
            bail!("agent exited with {exit} after SIGTERM");
        }
        Ok(())
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An agent running inside the test process, for tests that inject faults or read its
/// object-store counters.
#[derive(Debug)]
pub struct InProcessAgent {
    /// The agent's gRPC endpoint.
    pub endpoint: String,
    /// Its object-store counters.
    pub counters: Arc<StoreCounters>,
    /// Its live gauges.
    pub gauges: Arc<cairn_agent::AgentGauges>,
    /// Injects faults while it serves.
    pub faults: FaultControl,
    /// Its metadata handle.
    pub metadata: cairn_metadata::Metadata,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl InProcessAgent {
    /// Starts an agent over `store` and the SQLite file at `sqlite`.
    pub async fn start(
        store: Arc<dyn ObjectStore>,
        sqlite: &Path,
        settings: AgentSettings,
    ) -> anyhow::Result<InProcessAgent> {
        let kv = cairn_metadata::open_kv(&format!("sqlite:{}", sqlite.display())).await?;
        Self::start_with(store, kv, settings, FaultSpec::default()).await
    }

    /// Starts an agent over `store` and `kv` with `faults` injected.
    pub async fn start_with(
        store: Arc<dyn ObjectStore>,
        kv: Arc<dyn KvStore>,
        settings: AgentSettings,
        faults: FaultSpec,
    ) -> anyhow::Result<InProcessAgent> {
        Self::start_with_clock(
            store,
            kv,
            settings,
            faults,
            Arc::new(cairn_metadata::SystemClock),
        )
        .await
    }

    /// Starts an agent whose time comes from `clock` (tests of leases and expiry).
    pub async fn start_with_clock(
        store: Arc<dyn ObjectStore>,
        kv: Arc<dyn KvStore>,
        settings: AgentSettings,
        faults: FaultSpec,
        clock: Arc<dyn cairn_metadata::Clock>,
    ) -> anyhow::Result<InProcessAgent> {
        let agent = AgentBuilder::new(settings)
            .object_store(store)
            .metadata_store(kv)
            .faults(faults)
            .clock(clock)
            .build()?;
        let counters = agent.store_counters();
        let gauges = agent.gauges();
        let fault_control = agent.fault_control();
        let metadata = agent.metadata().clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let endpoint = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            agent
                .serve(listener, async move {
                    let _ = stopped.await;
                })
                .await?;
            Ok(())
        });
        Ok(InProcessAgent {
            endpoint,
            counters,
            gauges,
            faults: fault_control,
            metadata,
            stop: Some(stop),
            task: Some(task),
        })
    }

    /// Stops the agent gracefully and waits for it.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await??;
        }
        Ok(())
    }
}

/// Reads every partition of `topic` from the beginning up to the current high watermarks.
pub async fn read_all(endpoint: &str, topic: &str) -> anyhow::Result<Vec<ConsumedRecord>> {
    read_all_through(cairn_client::connect(endpoint).await?, topic).await
}

/// [`read_all`] through a cluster (each partition from the agent that owns it) or a channel.
pub async fn read_all_through(
    cluster: impl Into<cairn_client::Cluster>,
    topic: &str,
) -> anyhow::Result<Vec<ConsumedRecord>> {
    read_all_mapped(cluster, topic, |r| r).await
}

/// [`read_all_through`], keeping only what `keep` makes of each record (so a large topic
/// is checked as it is read, not held in memory).
pub async fn read_all_mapped<T>(
    cluster: impl Into<cairn_client::Cluster>,
    topic: &str,
    mut keep: impl FnMut(ConsumedRecord) -> T,
) -> anyhow::Result<Vec<T>> {
    let mut consumer = Consumer::new(cluster, ConsumerConfig::default());
    consumer.assign_all(topic, Offset::Beginning).await?;
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(Duration::ZERO).await?;
        if batch.is_empty() && consumer.caught_up() {
            return Ok(out);
        }
        out.extend(batch.into_iter().map(&mut keep));
    }
}

/// Records holding `values` (no key, no headers), timestamped now: what raw produce calls
/// send.
pub fn value_records<V: Into<bytes::Bytes>>(
    values: impl IntoIterator<Item = V>,
) -> Vec<cairn_proto::v2::Record> {
    let now = cairn_metadata::Clock::now_ms(&cairn_metadata::SystemClock);
    values
        .into_iter()
        .map(|v| cairn_proto::v2::Record {
            timestamp_ms: now,
            value: v.into(),
            ..Default::default()
        })
        .collect()
}

/// One batch of a raw produce request: `values` as one frame built with `codec`, stamped
/// with `stamp` (an idempotent producer's) if given.
pub fn raw_batch<V: Into<bytes::Bytes>>(
    topic: &str,
    partition: u32,
    values: impl IntoIterator<Item = V>,
    codec: cairn_proto::v2::Codec,
    stamp: Option<cairn_proto::v2::ProducerStamp>,
) -> anyhow::Result<cairn_proto::v2::ProduceBatch> {
    let frame = cairn_proto::build_frame(value_records(values), codec, stamp)?;
    Ok(cairn_proto::v2::ProduceBatch {
        topic: topic.to_string(),
        partition,
        frame: Some(frame),
        expected_offset: None,
    })
}

/// Waits up to 30 s for `check` to hold, polling every 100 ms; fails naming `what`.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 30s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh temporary directory for one test's files.
pub fn temp_dir() -> anyhow::Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix("cairn-test-").tempdir()?)
}

/// One record a workload producer sent, with where the agent said it landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// Which producer sent it.
    pub producer: usize,
    /// Its sequence number within that producer.
    pub seq: usize,
    /// The key.
    pub key: bytes::Bytes,
    /// The value.
    pub value: bytes::Bytes,
    /// The headers.
    pub headers: Vec<(String, bytes::Bytes)>,
    /// The acknowledged partition.
    pub partition: u32,
    /// The acknowledged offset.
    pub offset: i64,
}

/// Runs `producers` concurrent producers, producer `i` connected to
/// `endpoints[i % endpoints.len()]`, each sending `per_producer` keyed records with headers
/// to `topic`; returns every acknowledged record.
pub async fn produce_workload(
    endpoints: &[String],
    topic: &str,
    producers: usize,
    per_producer: usize,
) -> anyhow::Result<Vec<Sent>> {
    produce_workload_with(
        endpoints,
        topic,
        producers,
        per_producer,
        cairn_client::ProducerConfig::default(),
    )
    .await
}

/// [`produce_workload`] with a given producer configuration.
pub async fn produce_workload_with(
    endpoints: &[String],
    topic: &str,
    producers: usize,
    per_producer: usize,
    config: cairn_client::ProducerConfig,
) -> anyhow::Result<Vec<Sent>> {
    let mut clusters = Vec::new();
    for p in 0..producers {
        let channel = cairn_client::connect(&endpoints[p % endpoints.len()]).await?;
        clusters.push(cairn_client::Cluster::from(channel));
    }
    produce_workload_through(clusters, topic, per_producer, config).await
}

/// [`produce_workload_with`] with one producer per given cluster (or agent channel).
pub async fn produce_workload_through(
    clusters: Vec<cairn_client::Cluster>,
    topic: &str,
    per_producer: usize,
    config: cairn_client::ProducerConfig,
) -> anyhow::Result<Vec<Sent>> {
    use cairn_client::{Producer, ProducerRecord};
    let mut tasks = Vec::new();
    for (p, channel) in clusters.into_iter().enumerate() {
        let topic = topic.to_string();
        let config = config.clone();
        tasks.push(tokio::spawn(async move {
            let producer = Producer::new(channel, config);
            let mut pending = Vec::with_capacity(per_producer);
            for seq in 0..per_producer {
                let key = bytes::Bytes::from(format!("key-{}", (seq * 7 + p) % 1009));
                let value = bytes::Bytes::from(format!(
                    "producer {p} record {seq} {}",
                    "x".repeat(seq % 50)
                ));
                let record = ProducerRecord::new(topic.clone(), value.clone())
                    .key(key.clone())
                    .header("producer", p.to_string())
                    .header("seq", seq.to_string());
                let headers = record.headers.clone();
                let delivery = producer.send(record).await?;
                pending.push((seq, key, value, headers, delivery));
            }
            let mut sent = Vec::with_capacity(per_producer);
            for (seq, key, value, headers, delivery) in pending {
                let meta = delivery.await?;
                sent.push(Sent {
                    producer: p,
                    seq,
                    key,
                    value,
                    headers,
                    partition: meta.partition,
                    offset: meta.offset,
                });
            }
            producer.close().await?;
            Ok::<_, anyhow::Error>(sent)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    Ok(all)
}

/// Checks that `consumed` is exactly `sent`: same count, every partition's offsets dense from
/// 0, every record where its acknowledgement said with the same key, value and headers,
/// and each producer's records in send order within a partition.
pub fn verify_exact(sent: &[Sent], consumed: &[ConsumedRecord]) -> anyhow::Result<()> {
    use std::collections::HashMap;
    if sent.len() != consumed.len() {
        bail!("sent {} records, read back {}", sent.len(), consumed.len());
    }
    let mut next: HashMap<u32, i64> = HashMap::new();
    for r in consumed {
        let expected = next.entry(r.partition).or_insert(0);
        if r.offset != *expected {
            bail!(
                "partition {} offsets are not dense: expected {expected}, got {}",
                r.partition,
                r.offset
            );
        }
        *expected += 1;
    }
    let by_position: HashMap<(u32, i64), &Sent> =
        sent.iter().map(|s| ((s.partition, s.offset), s)).collect();
    if by_position.len() != sent.len() {
        bail!("two acknowledgements named the same partition and offset");
    }
    let mut last_seq: HashMap<(u32, usize), usize> = HashMap::new();
    for r in consumed {
        let Some(s) = by_position.get(&(r.partition, r.offset)) else {
            bail!(
                "record at {}/{} was never acknowledged",
                r.partition,
                r.offset
            );
        };
        if r.key != s.key || r.value != s.value || r.headers != s.headers {
            bail!(
                "record at {}/{} differs from what producer {} sent as #{}",
                r.partition,
                r.offset,
                s.producer,
                s.seq
            );
        }
        if let Some(prev) = last_seq.insert((r.partition, s.producer), s.seq)
            && prev > s.seq
        {
            bail!(
                "producer {}'s record #{} precedes #{prev} in partition {}",
                s.producer,
                s.seq,
                r.partition
            );
        }
    }
    Ok(())
}

/// A Python for the second-language client test (`tests/python`): the [`pyarrow_python`] venv
/// with the packages pinned in `tests/python/requirements.txt`. Like `.ci/run`, it installs
/// them only when that file differs from the copy kept in the venv after the last install.
pub fn client_python() -> anyhow::Result<PathBuf> {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PYTHON
        .get_or_init(|| install_client_packages().map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn install_client_packages() -> anyhow::Result<PathBuf> {
    let python = pyarrow_python()?;
    let requirements = workspace_root().join("tests/python/requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .with_context(|| format!("reading {}", requirements.display()))?;
    let venv = python
        .parent()
        .and_then(Path::parent)
        .context("unexpected venv layout")?;
    let stamp = venv.join("cairn-client-requirements.txt");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    run_ok(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet", "-r"])
            .arg(&requirements),
    )?;
    std::fs::write(&stamp, wanted).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(python)
}

/// A zone-aware client of `zone` bootstrapped from `bootstrap`, refreshing its view of the
/// agents every 300 ms (tests kill and add agents and want the view to follow quickly).
pub async fn zone_cluster(bootstrap: &[&str], zone: &str) -> anyhow::Result<cairn_client::Cluster> {
    let mut config = cairn_client::ClusterConfig::new(bootstrap.iter().copied()).zone(zone);
    config.refresh_interval = Duration::from_millis(300);
    Ok(cairn_client::Cluster::connect(config).await?)
}

/// The agent at `endpoint`'s account of itself (GetAgentStatus).
pub async fn agent_status(endpoint: &str) -> anyhow::Result<cairn_client::GetAgentStatusResponse> {
    Ok(
        cairn_client::Admin::new(cairn_client::connect(endpoint).await?)
            .agent_status()
            .await?,
    )
}

/// `len` bytes nobody can compress: xorshift64 seeded by `seed` (a record number), so each
/// record's value differs and compressed segments are as large as the records.
pub fn incompressible(seed: u64, len: usize) -> bytes::Bytes {
    let mut x = seed.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out.into()
}

/// What the index of `topic` references, as the zone read cache reads it: the number of
/// `chunk`-byte chunks its entries touch (the fewest GETs a zone can read it with), the
/// number of objects and the bytes indexed.
pub async fn chunks_touched(
    metadata_url: &str,
    topic: &str,
    chunk: u64,
) -> anyhow::Result<(u64, u64, u64)> {
    let kv = cairn_metadata::open_kv(metadata_url).await?;
    let m = cairn_metadata::Metadata::new(kv, Arc::new(cairn_metadata::SystemClock));
    let t = m.topic(topic).await?;
    let mut touched = std::collections::BTreeSet::new();
    let (mut objects, mut bytes) = (std::collections::BTreeSet::new(), 0u64);
    for p in 0..t.partitions {
        let (_, entries) = m.read_index(t.id, p, 0, 100_000).await?;
        for e in entries {
            bytes += e.length;
            for c in e.position / chunk..=(e.position + e.length.max(1) - 1) / chunk {
                touched.insert((e.object_key.clone(), c));
            }
            objects.insert(e.object_key);
        }
    }
    Ok((touched.len() as u64, objects.len() as u64, bytes))
}

/// A producer that keeps sending keyed records until told to stop, publishing how many were
/// acknowledged; its result is every acknowledged record and the longest time between two
/// acknowledgements.
pub struct Load {
    acked: tokio::sync::watch::Receiver<u64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<(Vec<Sent>, Duration)>>,
}

impl Load {
    /// Starts producing to `topic` through `c`, as producer number `producer` (recorded in
    /// each [`Sent`]).
    pub fn start(c: cairn_client::Cluster, topic: &str, producer: usize) -> Load {
        let topic = topic.to_string();
        let (tx, acked) = tokio::sync::watch::channel(0u64);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let task = tokio::spawn(async move {
            let config = cairn_client::ProducerConfig {
                linger: Duration::from_millis(2),
                ..cairn_client::ProducerConfig::default()
            };
            let p = cairn_client::Producer::new(c, config);
            let mut sent = Vec::new();
            let mut longest = Duration::ZERO;
            let mut last = std::time::Instant::now();
            let mut seq = 0usize;
            while !stopping.load(std::sync::atomic::Ordering::SeqCst) {
                // Windows of 50 records: enough in flight to pipeline, few enough that the
                // gaps between acknowledgements show a failover.
                let mut pending = Vec::new();
                for _ in 0..50 {
                    let key = bytes::Bytes::from(format!("key-{}", seq % 97));
                    let value = bytes::Bytes::from(format!("producer {producer} record {seq}"));
                    let record = cairn_client::ProducerRecord::new(topic.as_str(), value.clone())
                        .key(key.clone())
                        .header("seq", seq.to_string());
                    let headers = record.headers.clone();
                    pending.push((seq, key, value, headers, p.send(record).await?));
                    seq += 1;
                }
                let mut errors = Vec::new();
                for (seq, key, value, headers, d) in pending {
                    let meta = match d.await {
                        Ok(m) => m,
                        Err(e) => {
                            errors.push(format!(
                                "record {seq} ({}): {e}",
                                String::from_utf8_lossy(&key)
                            ));
                            continue;
                        }
                    };
                    longest = longest.max(last.elapsed());
                    last = std::time::Instant::now();
                    sent.push(Sent {
                        producer,
                        seq,
                        key,
                        value,
                        headers,
                        partition: meta.partition,
                        offset: meta.offset,
                    });
                }
                if !errors.is_empty() {
                    anyhow::bail!("{} deliveries failed:\n{}", errors.len(), errors.join("\n"));
                }
                tx.send_replace(sent.len() as u64);
            }
            p.close().await?;
            Ok((sent, longest))
        });
        Load { acked, stop, task }
    }

    /// Waits until `n` more records than now were acknowledged.
    pub async fn progress(&mut self, n: u64) -> anyhow::Result<()> {
        let target = *self.acked.borrow() + n;
        match tokio::time::timeout(
            Duration::from_secs(120),
            self.acked.wait_for(|a| *a >= target),
        )
        .await
        {
            Ok(Ok(_)) => Ok(()),
            // The producer task ended: it failed.
            Ok(Err(_)) => match (&mut self.task).await? {
                Err(e) => Err(e.context("the producer failed")),
                Ok(_) => anyhow::bail!("the producer stopped"),
            },
            Err(_) => anyhow::bail!("the producer made no progress for 120s"),
        }
    }

    /// Stops the producer; every acknowledged record and the longest gap between two
    /// acknowledgements.
    pub async fn finish(self) -> anyhow::Result<(Vec<Sent>, Duration)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.await?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ok_reports_a_failed_command_with_its_output() {
        let err = run_ok(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("out") && err.contains("err") && err.contains('3'),
            "{err}"
        );
        let v = run_json(Command::new("sh").args(["-c", r#"echo '{"a": 1}'"#]));
        assert_eq!(v.ok().map(|v| v["a"].clone()), Some(serde_json::json!(1)));
        assert!(run_json(Command::new("sh").args(["-c", "echo no"])).is_err());
    }
}
