//! The chaos run: idempotent, atomic and conditional producers, a consumer group and a
//! share group work against a cluster of three agent processes (two zones), a compactor
//! process, PostgreSQL and LocalStack's S3, while a seeded schedule injects faults:
//! - inside every agent and the compactor (`CAIRN_TEST_FAULTS`): PUTs and GETs failing,
//!   PUTs applied whose reply is lost, slow object-store requests, multipart uploads failing
//!   half way (a bulk producer writes 9 MiB batches so that segments go up in parts, and
//!   the compactor's Parquet files too), metadata commits failing or applied with their
//!   reply lost, produce replies lost after their commit; one agent slot runs with its
//!   clock skewed by up to ±5 s (a new skew each time it is replaced; the agent measures it
//!   against PostgreSQL's clock at start and corrects its leases and deadlines by it);
//! - from outside: agents killed with SIGKILL and replaced, agents frozen with SIGSTOP past
//!   their lease (then back with stale state), agents cut off from the network while they
//!   run (every connection to and from them stalls: clients, PostgreSQL and S3), one
//!   agent's object store stalled past its 5 s request timeout (real timeouts) or answering
//!   `503 Slow Down` to every request (S3's throttling, through object_store's retries), the
//!   compactor killed and restarted, PostgreSQL stopped and restarted, group members and
//!   share consumers killed (share consumers while holding leases).
//!
//! At the end the faults stop, everything drains, a fresh reader reads every partition and
//! the history checker (`cairn_tests::history`) reports the anomalies; the test fails on
//! any forbidden one.
//!
//! Knobs: `CAIRN_CHAOS_SECS` (how long faults are injected; 120 by default, what CI runs),
//! `CAIRN_CHAOS_SEED` (the schedule's seed; random by default and printed, so a failing
//! schedule can be replayed — the timing of the clients around it is not replayed) and
//! `CAIRN_CHAOS_PAUSE_MS` (a pause between each producer's windows of 200 records, to
//! bound the in-memory history of a long run; 0 by default).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use cairn_client::{
    Admin, AppendBatch, ClientError, Cluster, ClusterConfig, GroupConfig, GroupConsumer, Offset,
    Producer, ProducerConfig, ProducerRecord, RejectReason, ShareConfig, ShareConsumer,
    TopicOptions,
};
use cairn_metadata::conformance::TempPostgres;
use cairn_tests::history::{self, History, Op, Outcome, ShareScope, Tp, WriteBatch};
use cairn_tests::netcut::CuttableProxy;
use cairn_tests::{AgentProcess, cairn_bin, s3_env, s3_url};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const EVENTS: &str = "events";
const EVENT_PARTITIONS: u32 = 6;
const JOBS: &str = "jobs";
const JOB_PARTITIONS: u32 = 2;
const LEDGER: &str = "ledger";
/// Partitions 0 and 1 take atomic appends, 2 conditional ones.
const LEDGER_PARTITIONS: u32 = 3;
/// Big batches, so that segments (and Parquet files) go up as multipart uploads.
const BULK: &str = "bulk";
/// Records per bulk batch, each of BULK_RECORD_BYTES.
const BULK_RECORDS: usize = 9;
const BULK_RECORD_BYTES: usize = 1 << 20;
const GROUP: &str = "audit";
const SHARE_GROUP: &str = "workers";

/// How long each record producer waits between its windows of 200 records
/// (`CAIRN_CHAOS_PAUSE_MS`, default 0): the history is kept in memory, and an hour at full
/// speed would hold tens of millions of records.
fn window_pause() -> anyhow::Result<Duration> {
    match std::env::var("CAIRN_CHAOS_PAUSE_MS") {
        Ok(s) => Ok(Duration::from_millis(
            s.parse()
                .context("CAIRN_CHAOS_PAUSE_MS must be a number of milliseconds")?,
        )),
        Err(_) => Ok(Duration::ZERO),
    }
}

/// The schedule's seed and how long faults are injected.
fn knobs() -> anyhow::Result<(u64, Duration)> {
    let seed = match std::env::var("CAIRN_CHAOS_SEED") {
        Ok(s) => s.parse().context("CAIRN_CHAOS_SEED must be an integer")?,
        // A fresh schedule each run; it is printed, and the variable replays it.
        #[allow(clippy::disallowed_methods)]
        Err(_) => rand::rng().random(),
    };
    let secs = match std::env::var("CAIRN_CHAOS_SECS") {
        Ok(s) => s
            .parse()
            .context("CAIRN_CHAOS_SECS must be a number of seconds")?,
        Err(_) => 120,
    };
    Ok((seed, Duration::from_secs(secs)))
}

/// One agent slot: a zone and loopback address, the process serving it now, and the
/// proxies every connection to and from it goes through (so it can be cut off).
struct Slot {
    name: &'static str,
    zone: &'static str,
    ip: &'static str,
    incarnation: u32,
    process: Option<AgentProcess>,
    paused: bool,
    /// Whether this slot's agents run with a skewed clock.
    skewed: bool,
    /// Clients reach the agent through this one.
    front: CuttableProxy,
    /// The agent reaches PostgreSQL through this one...
    pg: CuttableProxy,
    /// ...and S3 through this one.
    s3: CuttableProxy,
}

impl Slot {
    fn proxies(&self) -> [&CuttableProxy; 3] {
        [&self.front, &self.pg, &self.s3]
    }
}

/// The cluster under test.
struct Rig {
    objects: String,
    /// PostgreSQL's address and the metadata URL naming it.
    pg_addr: String,
    metadata: String,
    env: Vec<(String, String)>,
    seed: u64,
    slots: Vec<Slot>,
    compactor: Option<std::process::Child>,
    compactor_incarnation: u32,
    /// Whether new agents and compactors inject faults.
    faults: bool,
    /// The agents' configuration file, and the fault reports of every process started.
    dir: tempfile::TempDir,
    reports: Vec<std::path::PathBuf>,
    /// The skews the skewed slot ran with, in milliseconds.
    skews: Vec<i64>,
}

/// The in-process faults every agent injects (besides its clock skew and report file).
const AGENT_FAULTS: &str = "put_fail_rate=0.01,get_fail_rate=0.01,put_reply_lost_rate=0.01,\
    slow_rate=0.01,slow_ms=800,part_fail_rate=0.1,commit_fail_rate=0.002,\
    commit_unknown_rate=0.01,reply_drop_rate=0.01";

/// The compactor's.
const COMPACTOR_FAULTS: &str = "put_fail_rate=0.02,get_fail_rate=0.02,put_reply_lost_rate=0.02,\
    slow_rate=0.02,slow_ms=800,part_fail_rate=0.2,commit_fail_rate=0.01,commit_unknown_rate=0.02";

/// The agents' configuration: segments above 5 MiB go up in parts (the bulk batches make
/// them), and an S3 request that gets no answer in 5 s times out (and is retried).
const AGENT_CONFIG: &str = "[s3]\ntimeout = \"5s\"\n\n[tuning]\nmultipart_threshold = 5242880\n";

impl Rig {
    fn start_agent(&mut self, i: usize, schedule: &mut StdRng) -> anyhow::Result<()> {
        let report = self.dir.path().join(format!(
            "agent-{}-{}.faults",
            self.slots[i].name,
            self.slots[i].incarnation + 1
        ));
        let skew = if self.slots[i].skewed && self.faults {
            let ms = schedule.random_range(1000..5000) * if schedule.random() { 1 } else { -1 };
            self.skews.push(ms);
            ms
        } else {
            0
        };
        let slot = &mut self.slots[i];
        slot.incarnation += 1;
        // A replacement takes a new id: the dead one's registration runs out by itself.
        let id = format!("{}{}", slot.name, slot.incarnation);
        let seed = self
            .seed
            .wrapping_add(u64::from(slot.incarnation) * 31 + i as u64);
        let mut env: Vec<(String, String)> = self
            .env
            .iter()
            .filter(|(k, _)| k != "AWS_ENDPOINT_URL")
            .cloned()
            .collect();
        env.push((
            "AWS_ENDPOINT_URL".into(),
            format!("http://{}", slot.s3.addr),
        ));
        if self.faults {
            let faults = format!(
                "{AGENT_FAULTS},clock_skew_ms={skew},report_file={},seed={seed}",
                report.display()
            );
            env.push(("CAIRN_TEST_FAULTS".into(), faults));
            self.reports.push(report);
        }
        let metadata = self
            .metadata
            .replace(&self.pg_addr, &slot.pg.addr.to_string());
        let config = self.dir.path().join("agent.toml");
        let advertise = slot.front.addr.to_string();
        let args = [
            "--config",
            &config.to_string_lossy(),
            "--object-store",
            &self.objects,
            "--metadata",
            &metadata,
            "--agent-id",
            &id,
            "--zone",
            slot.zone,
            "--advertise",
            &advertise,
            "--agent-lease",
            "2s",
            "--linger",
            "10ms",
        ];
        let listen = format!("{}:0", slot.ip);
        let process = AgentProcess::start_at(&listen, &args, &env)?;
        let listening = process
            .endpoint
            .trim_start_matches("http://")
            .parse()
            .context("the agent's endpoint")?;
        slot.front.set_upstream(listening);
        slot.process = Some(process);
        slot.paused = false;
        Ok(())
    }

    fn start_compactor(&mut self) -> anyhow::Result<()> {
        self.compactor_incarnation += 1;
        let mut cmd = std::process::Command::new(cairn_bin()?);
        cmd.args([
            "compactor",
            "--object-store",
            &self.objects,
            "--metadata",
            &self.metadata,
            "--interval",
            "1s",
            "--max-age",
            "3s",
            "--min-bytes",
            "256KiB",
            "--grace",
            "60s",
        ])
        .env("CAIRN_LOG", "error")
        .stdout(std::process::Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        if self.faults {
            let report = self
                .dir
                .path()
                .join(format!("compactor-{}.faults", self.compactor_incarnation));
            cmd.env(
                "CAIRN_TEST_FAULTS",
                format!(
                    "{COMPACTOR_FAULTS},report_file={},seed={}",
                    report.display(),
                    self.seed
                        .wrapping_add(u64::from(self.compactor_incarnation))
                ),
            );
            self.reports.push(report);
        }
        self.compactor = Some(cmd.spawn().context("starting the compactor")?);
        Ok(())
    }

    fn kill_compactor(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.compactor.take() {
            c.kill()?;
            c.wait()?;
        }
        Ok(())
    }

    fn endpoints(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|s| s.process.is_some())
            .map(|s| format!("http://{}", s.front.addr))
            .collect()
    }

    /// The faults every agent and compactor reported, summed per kind (an agent killed
    /// loses at most its last second).
    fn injected_inside(&self) -> BTreeMap<String, u64> {
        let mut sums = BTreeMap::new();
        for path in &self.reports {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            for pair in text.trim().split(',') {
                if let Some((k, v)) = pair.split_once('=')
                    && let Ok(n) = v.parse::<u64>()
                {
                    *sums.entry(k.to_string()).or_default() += n;
                }
            }
        }
        sums
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = self.kill_compactor();
        for s in &mut self.slots {
            if let Some(p) = &s.process
                && s.paused
            {
                let _ = p.resume();
            }
            for proxy in s.proxies() {
                proxy.heal();
            }
        }
    }
}

async fn cluster(endpoints: &[String], zone: &str) -> anyhow::Result<Cluster> {
    let mut config = ClusterConfig::new(endpoints.iter().map(String::as_str)).zone(zone);
    config.refresh_interval = Duration::from_millis(300);
    Ok(Cluster::connect(config).await?)
}

/// How a client error leaves a write: refused for good, or of unknown outcome.
fn outcome_of(e: &ClientError) -> Outcome {
    match e {
        ClientError::Rejected(r)
            if matches!(
                r.reason,
                RejectReason::OffsetMismatch | RejectReason::AtomicAborted
            ) =>
        {
            Outcome::Refused
        }
        _ => Outcome::Unknown,
    }
}

/// Counts of what the clients did.
#[derive(Default)]
struct Tally {
    acked: AtomicU64,
    failed: AtomicU64,
}

/// What every writer shares: the history it records in, the counts, and the flag that
/// stops them.
#[derive(Clone)]
struct Writers {
    history: Arc<History>,
    tally: Arc<Tally>,
    stop: Arc<AtomicBool>,
}

impl Writers {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::SeqCst)
    }

    /// Records one write (of several batches when atomic) and counts its records.
    fn record(&self, producer: &str, seq: u64, batches: Vec<(WriteBatch, Outcome)>, atomic: bool) {
        for (b, outcome) in &batches {
            let counter = match outcome {
                Outcome::Acked(_) => &self.tally.acked,
                _ => &self.tally.failed,
            };
            counter.fetch_add(b.values.len() as u64, Ordering::Relaxed);
        }
        self.history.record(Op::Write {
            producer: producer.to_string(),
            seq,
            batches,
            atomic,
        });
    }
}

/// A producer of single keyed records to `topic`, in windows of 200, until `stop`.
async fn produce(c: Cluster, topic: &'static str, name: String, w: Writers) -> anyhow::Result<()> {
    let config = ProducerConfig {
        linger: Duration::from_millis(5),
        delivery_timeout: Duration::from_secs(60),
        ..ProducerConfig::default()
    };
    let p = Producer::new(c, config);
    let pause = window_pause()?;
    let mut seq = 0u64;
    while w.running() {
        tokio::time::sleep(pause).await;
        let mut window = Vec::new();
        for _ in 0..200 {
            let key = format!("k{}", seq % 16);
            let value = format!("{name}-{seq}");
            let record = ProducerRecord::new(topic, value.clone()).key(key.clone());
            window.push((seq, key, value, p.send(record).await?));
            seq += 1;
        }
        for (seq, key, value, delivery) in window {
            let (tp, outcome) = match delivery.await {
                Ok(m) => ((m.topic, m.partition), Outcome::Acked(vec![m.offset])),
                Err(e) => {
                    // The partition is unknown to the client here: keyed records hash to
                    // one, but the check only needs it for acknowledged writes.
                    ((topic.to_string(), u32::MAX), outcome_of(&e))
                }
            };
            w.record(
                &name,
                seq,
                vec![(
                    WriteBatch {
                        tp,
                        values: vec![value],
                        key: Some(key),
                        expected_offset: None,
                    },
                    outcome,
                )],
                false,
            );
        }
    }
    p.close().await?;
    Ok(())
}

/// Atomic appends of three records to each of ledger partitions 0 and 1, one at a time.
async fn append_atomically(c: Cluster, w: Writers) -> anyhow::Result<()> {
    let p = Producer::new(
        c,
        ProducerConfig {
            delivery_timeout: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    );
    let mut seq = 0u64;
    while w.running() {
        let batch = |partition: u32| WriteBatch {
            tp: (LEDGER.to_string(), partition),
            values: (0..3)
                .map(|i| format!("atomic-{seq}-{partition}-{i}"))
                .collect(),
            key: None,
            expected_offset: None,
        };
        let batches = [batch(0), batch(1)];
        let request = batches
            .iter()
            .map(|b| {
                AppendBatch::new(
                    LEDGER,
                    b.tp.1,
                    b.values
                        .iter()
                        .map(|v| ProducerRecord::new(LEDGER, v.clone()))
                        .collect(),
                )
            })
            .collect();
        let outcomes: Vec<Outcome> = match p.append_atomic(request).await {
            Ok(results) => results
                .iter()
                .map(|r| Outcome::Acked((0..3).map(|i| r.base_offset + i).collect()))
                .collect(),
            Err(e) => {
                vec![outcome_of(&e); 2]
            }
        };
        w.record(
            "atomic",
            seq,
            batches.into_iter().zip(outcomes).collect(),
            true,
        );
        seq += 1;
    }
    p.close().await?;
    Ok(())
}

/// The filler after a bulk record's name: 1 MiB that compresses poorly, the same for the
/// same name in every run of a seed, so a reader can tell a damaged record from a whole one.
fn bulk_filler(seed: u64, name: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut h = std::hash::DefaultHasher::new();
    std::hash::Hash::hash(&(seed, name), &mut h);
    let mut rng = StdRng::seed_from_u64(std::hash::Hasher::finish(&h));
    (0..BULK_RECORD_BYTES - name.len() - 1)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())])
        .collect()
}

/// What the history knows a bulk record by: its name if the filler is whole, else a value
/// no producer wrote (the checker then reports it).
fn bulk_value(seed: u64, value: &[u8]) -> String {
    let text = String::from_utf8_lossy(value);
    match text.split_once('|') {
        Some((name, filler)) if filler.as_bytes() == bulk_filler(seed, name) => name.to_string(),
        Some((name, _)) => format!("{name} with a damaged filler"),
        None => format!("a bulk record without a name: {} bytes", value.len()),
    }
}

/// Appends of BULK_RECORDS records of 1 MiB in one uncompressed batch (9 MiB: a segment
/// above the agents' 5 MiB multipart threshold, so it goes up in two parts of 8 and 1 MiB),
/// every 5-10 s.
async fn append_bulk(c: Cluster, seed: u64, w: Writers) -> anyhow::Result<()> {
    let p = Producer::new(
        c,
        ProducerConfig {
            delivery_timeout: Duration::from_secs(60),
            batch_max_bytes: 16 << 20,
            request_max_bytes: 16 << 20,
            buffer_max_bytes: 64 << 20,
            codec: cairn_client::Codec::None,
            ..ProducerConfig::default()
        },
    );
    let mut pace = StdRng::seed_from_u64(seed ^ 0xb01c);
    let mut seq = 0u64;
    while w.running() {
        let names: Vec<String> = (0..BULK_RECORDS)
            .map(|i| format!("bulk-{seq}-{i}"))
            .collect();
        let records = names
            .iter()
            .map(|name| {
                let mut value = format!("{name}|").into_bytes();
                value.extend(bulk_filler(seed, name));
                ProducerRecord::new(BULK, value)
            })
            .collect();
        let outcome = match p.append(AppendBatch::new(BULK, 0, records)).await {
            Ok(r) => Outcome::Acked(
                (0..BULK_RECORDS as i64)
                    .map(|i| r.base_offset + i)
                    .collect(),
            ),
            Err(e) => outcome_of(&e),
        };
        w.record(
            "bulk",
            seq,
            vec![(
                WriteBatch {
                    tp: (BULK.to_string(), 0),
                    values: names,
                    key: None,
                    expected_offset: None,
                },
                outcome,
            )],
            false,
        );
        seq += 1;
        tokio::time::sleep(Duration::from_millis(pace.random_range(5000..10000))).await;
    }
    p.close().await?;
    Ok(())
}

/// Conditional appends of two records to ledger partition 2, each expecting the offset
/// after the last one it saw.
async fn append_conditionally(c: Cluster, w: Writers) -> anyhow::Result<()> {
    let p = Producer::new(
        c,
        ProducerConfig {
            delivery_timeout: Duration::from_secs(30),
            ..ProducerConfig::default()
        },
    );
    let mut next = 0i64;
    let mut seq = 0u64;
    while w.running() {
        let values: Vec<String> = (0..2).map(|i| format!("cond-{seq}-{i}")).collect();
        let batch = AppendBatch::new(
            LEDGER,
            2,
            values
                .iter()
                .map(|v| ProducerRecord::new(LEDGER, v.clone()))
                .collect(),
        )
        .expect_offset(next);
        let expected = next;
        let outcome = match p.append(batch).await {
            Ok(r) => {
                next = r.base_offset + 2;
                Outcome::Acked(vec![r.base_offset, r.base_offset + 1])
            }
            Err(e) => {
                if let ClientError::Rejected(r) = &e
                    && let Some(n) = r.next_offset
                {
                    next = n;
                }
                outcome_of(&e)
            }
        };
        w.record(
            "conditional",
            seq,
            vec![(
                WriteBatch {
                    tp: (LEDGER.to_string(), 2),
                    values,
                    key: None,
                    expected_offset: Some(expected),
                },
                outcome,
            )],
            false,
        );
        seq += 1;
    }
    p.close().await?;
    Ok(())
}

/// A group member that polls and commits until killed (its task aborted, no leave).
async fn group_member(c: Cluster, name: String, history: Arc<History>) -> anyhow::Result<()> {
    let config = GroupConfig {
        session_timeout: Duration::from_secs(6),
        start: Offset::Beginning,
        ..GroupConfig::default()
    };
    let mut g = loop {
        match GroupConsumer::join(c.clone(), GROUP, &[EVENTS], config.clone()).await {
            Ok(g) => break g,
            Err(e) => {
                note("join", &e);
                tokio::time::sleep(Duration::from_millis(100)).await
            }
        }
    };
    loop {
        let records = match g.poll(Duration::from_millis(300)).await {
            Ok(r) => r,
            Err(e) => {
                note("group poll", &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let incarnation = format!("{}/{}", g.member_id(), g.generation());
        if !records.is_empty() {
            history.record(Op::Poll {
                consumer: name.clone(),
                incarnation,
                records: records
                    .iter()
                    .map(|r| {
                        (
                            (r.topic.clone(), r.partition),
                            r.offset,
                            String::from_utf8_lossy(&r.value).into_owned(),
                        )
                    })
                    .collect(),
            });
        }
        let invoked = Instant::now();
        match g.commit().await {
            Ok(committed) => history.record(Op::Commit {
                group: GROUP.into(),
                consumer: name.clone(),
                offsets: committed.into_iter().map(|(t, p, o)| ((t, p), o)).collect(),
                invoked,
                completed: Instant::now(),
            }),
            // Not committed, or not known to be (its session may have run out while a
            // fault lasted: then it joined again).
            Err(e) => note("group commit", &e),
        }
    }
}

/// A share consumer that acquires and acknowledges until killed (holding whatever it
/// acquired last: those leases run out and the records go to others).
async fn share_member(c: Cluster, name: String, history: Arc<History>) -> anyhow::Result<()> {
    let config = ShareConfig {
        lease: Duration::from_secs(3),
        max_records: 100,
        ..ShareConfig::default()
    };
    let mut s = ShareConsumer::new(c, SHARE_GROUP, JOBS, config);
    let mut call = 0u64;
    loop {
        let records = match s.poll(Duration::from_millis(300)).await {
            Ok(r) => r,
            Err(e) => {
                note("share acquire", &e);
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        if records.is_empty() {
            continue;
        }
        let leased: Vec<(Tp, i64, String)> = records
            .iter()
            .map(|r| {
                (
                    (JOBS.to_string(), r.record.partition),
                    r.record.offset,
                    String::from_utf8_lossy(&r.record.value).into_owned(),
                )
            })
            .collect();
        history.record(Op::ShareAcquire {
            consumer: name.clone(),
            records: leased.clone(),
        });
        // One settle call per partition: record each partition's outcome on its own.
        let mut by_partition: BTreeMap<u32, Vec<cairn_client::ShareRecord>> = BTreeMap::new();
        for r in records {
            by_partition.entry(r.record.partition).or_default().push(r);
        }
        for (partition, held) in by_partition {
            call += 1;
            let records: Vec<(Tp, i64)> = held
                .iter()
                .map(|r| ((JOBS.to_string(), partition), r.record.offset))
                .collect();
            let record = |accepted| Op::ShareAck {
                consumer: name.clone(),
                call,
                records: records.clone(),
                accepted,
            };
            // Recorded before it is sent: if this consumer is killed while the call is in
            // flight, the acknowledgement stays of unknown outcome (it may have settled).
            history.record(record(None));
            let accepted = match s.ack(&held).await {
                Ok(()) => Some(true),
                Err(e) => {
                    note("share ack", &e);
                    // Refused (not held, lease expired), or of unknown outcome.
                    (e.code() == Some(tonic::Code::FailedPrecondition)).then_some(false)
                }
            };
            history.record(record(accepted));
        }
    }
}

/// Errors the consumers met and carried on after (as applications do), by operation and
/// code: printed at the end.
static ERRORS: std::sync::Mutex<BTreeMap<String, u64>> = std::sync::Mutex::new(BTreeMap::new());

fn note(op: &str, e: &ClientError) {
    let code = e
        .code()
        .map_or_else(|| "client".to_string(), |c| format!("{c:?}"));
    *ERRORS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(format!("{op}: {code}"))
        .or_default() += 1;
}

/// Fails with a client's error if its task ended (clients run until aborted).
async fn stopped(task: &mut tokio::task::JoinHandle<anyhow::Result<()>>) -> anyhow::Result<()> {
    if !task.is_finished() {
        return Ok(());
    }
    match task.await {
        Ok(Ok(())) => anyhow::bail!("a client ended by itself"),
        Ok(Err(e)) => Err(e.context("a client failed")),
        Err(e) => Err(anyhow::Error::from(e).context("a client panicked")),
    }
}

/// What `keep` makes of every record of `topic`, read from the start, retrying while the
/// cluster settles.
async fn read_everything<T>(
    c: &Cluster,
    topic: &str,
    mut keep: impl FnMut(cairn_client::ConsumedRecord) -> T,
) -> anyhow::Result<Vec<T>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match cairn_tests::read_all_mapped(c.clone(), topic, &mut keep).await {
            Ok(all) => return Ok(all),
            Err(e) if Instant::now() < deadline => {
                eprintln!("final read of {topic}: {e:#}; again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e.context(format!("final read of {topic}"))),
        }
    }
}

/// Faults the schedule injects from outside the agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillAgent,
    PauseAgent,
    CutAgent,
    StallObjectStore,
    ThrottleObjectStore,
    KillCompactor,
    RestartPostgres,
    KillGroupMember,
    KillShareConsumer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_acknowledged_is_lost_under_a_seeded_chaos_schedule() -> anyhow::Result<()> {
    let (seed, duration) = knobs()?;
    eprintln!(
        "chaos: seed {seed}, {}s of faults (replay with CAIRN_CHAOS_SEED={seed})",
        duration.as_secs()
    );
    let mut schedule = StdRng::seed_from_u64(seed);
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let metadata = pg
        .create_database("chaos")
        .await
        .map_err(anyhow::Error::msg)?;
    let pg_addr = metadata
        .split_once('@')
        .and_then(|(_, rest)| rest.split_once('/'))
        .map(|(addr, _)| addr.to_string())
        .context("PostgreSQL's address in its URL")?;
    let s3_addr: std::net::SocketAddr = cairn_tests::s3_endpoint()?
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .context("the S3 endpoint's address")?;
    let mut slots = Vec::new();
    for (name, zone, ip, skewed) in [
        ("a", "z1", "127.0.0.2", false),
        ("b", "z1", "127.0.0.3", false),
        ("c", "z2", "127.0.0.4", true),
    ] {
        // The front proxy learns its agent's port when the agent starts.
        let nowhere = "127.0.0.1:9".parse()?;
        slots.push(Slot {
            name,
            zone,
            ip,
            incarnation: 0,
            process: None,
            paused: false,
            skewed,
            front: CuttableProxy::start(&format!("{ip}:0"), nowhere).await?,
            pg: CuttableProxy::start("127.0.0.1:0", pg_addr.parse()?).await?,
            s3: CuttableProxy::start("127.0.0.1:0", s3_addr).await?,
        });
    }
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("agent.toml"), AGENT_CONFIG)?;
    let mut rig = Rig {
        objects: s3_url(&format!("chaos-{seed}")),
        pg_addr,
        metadata,
        env: s3_env()?,
        seed,
        slots,
        compactor: None,
        compactor_incarnation: 0,
        faults: true,
        dir,
        reports: Vec::new(),
        skews: Vec::new(),
    };
    for i in 0..rig.slots.len() {
        rig.start_agent(i, &mut schedule)?;
    }
    rig.start_compactor()?;
    let endpoints = rig.endpoints();
    let admin = Admin::new(cluster(&endpoints, "z1").await?);
    for (topic, partitions) in [
        (EVENTS, EVENT_PARTITIONS),
        (JOBS, JOB_PARTITIONS),
        (LEDGER, LEDGER_PARTITIONS),
        (BULK, 1),
    ] {
        admin
            .create_topic(topic, partitions, TopicOptions::default())
            .await?;
    }

    let history = Arc::new(History::new());
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let shared = Writers {
        history: history.clone(),
        tally: tally.clone(),
        stop: stop.clone(),
    };
    let mut writers = Vec::new();
    for i in 0..4 {
        let zone = if i % 2 == 0 { "z1" } else { "z2" };
        writers.push(tokio::spawn(produce(
            cluster(&endpoints, zone).await?,
            EVENTS,
            format!("p{i}"),
            shared.clone(),
        )));
    }
    writers.push(tokio::spawn(produce(
        cluster(&endpoints, "z2").await?,
        JOBS,
        "jobs".into(),
        shared.clone(),
    )));
    writers.push(tokio::spawn(append_atomically(
        cluster(&endpoints, "z1").await?,
        shared.clone(),
    )));
    writers.push(tokio::spawn(append_bulk(
        cluster(&endpoints, "z1").await?,
        seed,
        shared.clone(),
    )));
    writers.push(tokio::spawn(append_conditionally(
        cluster(&endpoints, "z2").await?,
        shared.clone(),
    )));
    let mut members_started = 0;
    let mut members = Vec::new();
    for _ in 0..2 {
        members_started += 1;
        members.push(tokio::spawn(group_member(
            cluster(&endpoints, "z1").await?,
            format!("member{members_started}"),
            history.clone(),
        )));
    }
    let mut sharers_started = 0;
    let mut sharers = Vec::new();
    for _ in 0..2 {
        sharers_started += 1;
        sharers.push(tokio::spawn(share_member(
            cluster(&endpoints, "z2").await?,
            format!("share{sharers_started}"),
            history.clone(),
        )));
    }

    // The schedule: one fault at a time, every 2-5 s.
    let mut injected: BTreeMap<Fault, u32> = BTreeMap::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(Duration::from_millis(schedule.random_range(2000..5000))).await;
        for task in members.iter_mut().chain(&mut sharers).chain(&mut writers) {
            stopped(task).await?;
        }
        let fault = match schedule.random_range(0..13) {
            0..=2 => Fault::KillAgent,
            3 => Fault::PauseAgent,
            4 => Fault::CutAgent,
            5 => Fault::StallObjectStore,
            6 => Fault::ThrottleObjectStore,
            7 => Fault::KillCompactor,
            8 => Fault::RestartPostgres,
            9 | 10 => Fault::KillGroupMember,
            _ => Fault::KillShareConsumer,
        };
        let t = started.elapsed().as_secs_f64();
        match fault {
            Fault::KillAgent => {
                let i = schedule.random_range(0..rig.slots.len());
                eprintln!("chaos {t:6.1}s: SIGKILL agent slot {}", rig.slots[i].name);
                if let Some(p) = rig.slots[i].process.take() {
                    p.kill()?;
                }
                tokio::time::sleep(Duration::from_millis(schedule.random_range(500..2000))).await;
                rig.start_agent(i, &mut schedule)?;
            }
            Fault::CutAgent => {
                let i = schedule.random_range(0..rig.slots.len());
                let hold = Duration::from_millis(schedule.random_range(2500..6000));
                eprintln!(
                    "chaos {t:6.1}s: agent slot {} cut off from the network for {hold:?}",
                    rig.slots[i].name
                );
                for proxy in rig.slots[i].proxies() {
                    proxy.cut();
                }
                tokio::time::sleep(hold).await;
                for proxy in rig.slots[i].proxies() {
                    proxy.heal();
                }
            }
            Fault::StallObjectStore => {
                let i = schedule.random_range(0..rig.slots.len());
                let hold = Duration::from_millis(schedule.random_range(6000..10000));
                eprintln!(
                    "chaos {t:6.1}s: S3 stalled for agent slot {} for {hold:?} (its timeout 5s)",
                    rig.slots[i].name
                );
                rig.slots[i].s3.cut();
                tokio::time::sleep(hold).await;
                rig.slots[i].s3.heal();
            }
            Fault::ThrottleObjectStore => {
                let i = schedule.random_range(0..rig.slots.len());
                let hold = Duration::from_millis(schedule.random_range(2000..8000));
                eprintln!(
                    "chaos {t:6.1}s: S3 answers 503 Slow Down to agent slot {} for {hold:?}",
                    rig.slots[i].name
                );
                rig.slots[i].s3.slow_down();
                tokio::time::sleep(hold).await;
                rig.slots[i].s3.heal();
            }
            Fault::PauseAgent => {
                let i = schedule.random_range(0..rig.slots.len());
                let hold = Duration::from_millis(schedule.random_range(2500..5000));
                eprintln!(
                    "chaos {t:6.1}s: SIGSTOP agent slot {} for {hold:?} (lease 2s)",
                    rig.slots[i].name
                );
                let slot = &mut rig.slots[i];
                if let Some(p) = &slot.process {
                    p.pause()?;
                    slot.paused = true;
                    tokio::time::sleep(hold).await;
                    p.resume()?;
                    slot.paused = false;
                }
            }
            Fault::KillCompactor => {
                eprintln!("chaos {t:6.1}s: SIGKILL the compactor");
                rig.kill_compactor()?;
                tokio::time::sleep(Duration::from_millis(schedule.random_range(200..1500))).await;
                rig.start_compactor()?;
            }
            Fault::RestartPostgres => {
                let down = Duration::from_millis(schedule.random_range(500..3000));
                eprintln!("chaos {t:6.1}s: PostgreSQL down for {down:?}");
                pg.stop().map_err(anyhow::Error::msg)?;
                tokio::time::sleep(down).await;
                pg.start_again().map_err(anyhow::Error::msg)?;
            }
            Fault::KillGroupMember => {
                let i = schedule.random_range(0..members.len());
                eprintln!("chaos {t:6.1}s: kill group member {i}");
                members[i].abort();
                members_started += 1;
                members[i] = tokio::spawn(group_member(
                    cluster(&rig.endpoints(), "z1").await?,
                    format!("member{members_started}"),
                    history.clone(),
                ));
            }
            Fault::KillShareConsumer => {
                let i = schedule.random_range(0..sharers.len());
                eprintln!("chaos {t:6.1}s: kill share consumer {i} (holding its leases)");
                sharers[i].abort();
                sharers_started += 1;
                sharers[i] = tokio::spawn(share_member(
                    cluster(&rig.endpoints(), "z2").await?,
                    format!("share{sharers_started}"),
                    history.clone(),
                ));
            }
        }
        *injected.entry(fault).or_default() += 1;
    }

    eprintln!("chaos: faults stop; draining");
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await??;
    }
    // The faults stop: each agent is replaced, one at a time, by one without them (the
    // old one gets SIGTERM and must exit cleanly).
    rig.faults = false;
    rig.kill_compactor()?;
    rig.start_compactor()?;
    for i in 0..rig.slots.len() {
        if let Some(old) = rig.slots[i].process.take() {
            old.stop()?;
        }
        rig.start_agent(i, &mut schedule)?;
    }
    // Everything written is now final: wait until the group committed all of it and the
    // share group settled all of it.
    let endpoints = rig.endpoints();
    let reader = cluster(&endpoints, "z1").await?;
    let admin = Admin::new(reader.clone());
    let mut share_admin =
        cairn_proto::v2::share_service_client::ShareServiceClient::new(reader.clone());
    let deadline = Instant::now() + Duration::from_secs(180);
    let settled_below = loop {
        let topic = admin.describe_topic(EVENTS).await?;
        let group = admin.describe_group(GROUP).await?;
        let committed: BTreeMap<u32, i64> = group
            .partitions
            .iter()
            .map(|p| (p.partition, p.committed.unwrap_or(0)))
            .collect();
        let group_done = topic
            .partitions
            .iter()
            .all(|p| committed.get(&p.partition).copied().unwrap_or(0) >= p.high_watermark);
        let share = share_admin
            .describe_share_group(cairn_proto::v2::DescribeShareGroupRequest {
                group: SHARE_GROUP.into(),
                topic: JOBS.into(),
            })
            .await?
            .into_inner();
        let share_done = share.partitions.len() == JOB_PARTITIONS as usize
            && share
                .partitions
                .iter()
                .all(|p| p.start_offset >= p.high_watermark);
        if group_done && share_done {
            break share
                .partitions
                .iter()
                .map(|p| ((JOBS.to_string(), p.partition), p.start_offset))
                .collect::<BTreeMap<Tp, i64>>();
        }
        if Instant::now() > deadline {
            eprintln!("group: {group:?}\nshare group: {share:?}");
            anyhow::bail!("the consumers did not drain within 180s of the faults stopping");
        }
        for task in members.iter_mut().chain(&mut sharers) {
            stopped(task).await?;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    for task in members.into_iter().chain(sharers) {
        task.abort();
    }

    let mut final_read = Vec::new();
    for topic in [EVENTS, JOBS, LEDGER, BULK] {
        let value = |v: &[u8]| match topic {
            BULK => bulk_value(seed, v),
            _ => String::from_utf8_lossy(v).into_owned(),
        };
        final_read.extend(
            read_everything(&reader, topic, |r| {
                ((r.topic.clone(), r.partition), r.offset, value(&r.value))
            })
            .await?,
        );
    }
    // Records the share group dead-lettered (the topic exists once one was).
    let mut dead_letters = std::collections::BTreeSet::new();
    let dlq = format!("{JOBS}.dlq");
    if admin.describe_topic(&dlq).await.is_ok() {
        for v in read_everything(&reader, &dlq, |r| r.value).await? {
            dead_letters.insert(String::from_utf8_lossy(&v).into_owned());
        }
    }
    let report = history::check(
        &history.ops(),
        &final_read,
        &ShareScope {
            settled_below,
            dead_letters,
        },
    );
    eprintln!(
        "chaos: seed {seed}, {:.0}s, faults injected from outside {injected:?}, inside the \
         agents and compactors {:?}, clock skews (ms) {:?}; records acked {}, writes failed {}\n{report}",
        started.elapsed().as_secs_f64(),
        rig.injected_inside(),
        rig.skews,
        tally.acked.load(Ordering::Relaxed),
        tally.failed.load(Ordering::Relaxed),
    );
    eprintln!(
        "errors the consumers carried on after: {:?}",
        ERRORS.lock().unwrap_or_else(|p| p.into_inner())
    );
    assert!(
        report.is_valid(),
        "forbidden anomalies under seed {seed}: {:?}\n{report}",
        report.forbidden()
    );
    assert!(report.acked_records > 0, "nothing was acknowledged");
    drop(rig);
    Ok(())
}
