//! Quotas and per-connection limits on real agents: a producer and a reader held at their
//! principal's rates (±10% over 10 s) while another principal goes at full speed, calls per
//! second, a rate shared by the live agents, 10,000 long-polls on one connection capped while
//! the agent keeps serving, and a connection's bytes in flight capped. Throttled calls carry
//! RESOURCE_EXHAUSTED, ERROR_REASON_THROTTLED and a RetryInfo; the SDK waits them out.

// Helpers build requests from literals the test controls: a failure is a broken test.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_agent::AgentSettings;
use cairn_client::{
    Admin, Cluster, Codec, ConsumerConfig, Offset, Producer, ProducerConfig, ProducerRecord,
    QuotaBinding, Security, TopicOptions,
};
use cairn_proto::v2::{
    self, admin_service_client::AdminServiceClient, consumer_service_client::ConsumerServiceClient,
    producer_service_client::ProducerServiceClient,
};
use cairn_tests::{
    AgentProcess, InProcessAgent, cairn_bin, eventually, file_agent_args, file_store,
    incompressible, raw_batch, temp_dir,
};
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tonic_types::StatusExt;

/// Alice's produce quota, bytes per second (for the cluster, which here is one agent).
const PRODUCE_RATE: u64 = 1 << 20;
/// Alice's fetch quota, bytes per second.
const FETCH_RATE: u64 = 2 << 20;
/// Seconds measured, after a warm-up that lets the bucket's first second of burst pass.
const MEASURE: Duration = Duration::from_secs(10);
const WARM_UP: Duration = Duration::from_secs(3);

async fn connect(endpoint: &str, token: &str) -> Cluster {
    let security = Security::default().with_token(token).unwrap();
    Cluster::single(endpoint, &security).await.unwrap()
}

/// The limit named by a throttled status, and its retry delay; `None` for any other.
fn throttled(s: &tonic::Status) -> Option<(String, Duration)> {
    if s.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    let d = s.get_error_details();
    let info = d.error_info()?;
    assert_eq!(info.reason, "ERROR_REASON_THROTTLED", "{s:?}");
    let delay = d.retry_info()?.retry_delay?;
    Some((info.metadata.get("quota")?.clone(), delay))
}

/// An agent process that requires authentication, with an admin token and tokens for
/// `alice` and `bob` (all super-users: ACLs are not what this tests).
struct Secure {
    _dir: tempfile::TempDir,
    agent: AgentProcess,
    admin: Admin,
    alice: String,
    bob: String,
}

async fn secure_agent() -> anyhow::Result<Secure> {
    let dir = temp_dir()?;
    let d = dir.path();
    let mut args = file_agent_args(d);
    args.extend(["--require-auth", "--super-user", "admin,alice,bob"].map(String::from));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let metadata = format!("sqlite:{}", d.join("meta.sqlite").display());
    let out = std::process::Command::new(cairn_bin()?)
        .args(["token", "create", "--principal", "admin"])
        .args(["--metadata", &metadata])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let admin_token = String::from_utf8(out.stdout)?.trim().to_string();
    let endpoint = agent.endpoint.clone();
    eventually("the admin's token works", || async {
        Admin::new(connect(&endpoint, &admin_token).await)
            .agent_status()
            .await
            .is_ok()
    })
    .await;
    let admin = Admin::new(connect(&endpoint, &admin_token).await);
    let alice = admin.create_token("alice", None).await?.token;
    let bob = admin.create_token("bob", None).await?.token;
    Ok(Secure {
        _dir: dir,
        agent,
        admin,
        alice,
        bob,
    })
}

/// Sends raw produce requests of `bytes` as the caller of `c` until one is throttled on
/// `limit`: the agent has read the quota.
async fn until_throttled(c: &Cluster, topic: &str, bytes: usize, limit: &str) {
    eventually(&format!("a produce is throttled on {limit}"), || async {
        let batch = raw_batch(topic, 0, [incompressible(1, bytes)], v2::Codec::None, None).unwrap();
        let r = ProducerServiceClient::new(c.clone())
            .produce(v2::ProduceRequest {
                batches: vec![batch],
                atomic: false,
            })
            .await;
        matches!(r, Err(s) if throttled(&s).is_some_and(|(l, _)| l == limit))
    })
    .await;
}

/// Bytes with a time in `[from, from + MEASURE)`, per second.
fn rate_in_window(events: &[(Instant, u64)], from: Instant) -> f64 {
    let to = from + MEASURE;
    let bytes: u64 = events
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .map(|(_, n)| n)
        .sum();
    bytes as f64 / MEASURE.as_secs_f64()
}

fn assert_within_10_percent(what: &str, measured: f64, quota: u64) {
    let ratio = measured / quota as f64;
    eprintln!("{what}: {measured:.0} B/s for a quota of {quota} B/s (ratio {ratio:.3})");
    assert!(
        (0.9..=1.1).contains(&ratio),
        "{what}: {measured:.0} B/s is not within 10% of the quota of {quota} B/s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_holds_a_producer_and_a_reader_at_their_rates_and_spares_another_principal()
-> anyhow::Result<()> {
    let s = secure_agent().await?;
    let endpoint = s.agent.endpoint.clone();
    for t in ["metered", "free"] {
        s.admin.create_topic(t, 1, TopicOptions::default()).await?;
    }
    s.admin
        .set_quota(QuotaBinding {
            principal: "alice".into(),
            produce_bytes_per_second: Some(PRODUCE_RATE),
            fetch_bytes_per_second: Some(FETCH_RATE),
            requests_per_second: None,
        })
        .await?;
    let listed = s.admin.list_quotas().await?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].produce_bytes_per_second, Some(PRODUCE_RATE));
    let alice = connect(&endpoint, &s.alice).await;
    let bob = connect(&endpoint, &s.bob).await;
    until_throttled(&alice, "metered", 2 << 20, "produce_bytes_per_second").await;

    // Alice produces through the SDK, which waits out every throttle by itself; Bob sends
    // raw requests at full speed, and none of his is throttled.
    let started = Instant::now();
    let deadline = started + WARM_UP + MEASURE + Duration::from_secs(1);
    let alice_task = {
        let alice = alice.clone();
        tokio::spawn(async move {
            let p = Producer::new(
                alice,
                ProducerConfig {
                    codec: Codec::None,
                    linger: Duration::from_millis(5),
                    ..ProducerConfig::default()
                },
            );
            let value = incompressible(7, 1024);
            let mut acks = Vec::new();
            let mut pending = FuturesUnordered::new();
            while Instant::now() < deadline {
                while pending.len() < 1000 {
                    let d = p
                        .send(ProducerRecord::new("metered", value.clone()))
                        .await?;
                    pending.push(d);
                }
                if let Some(r) = pending.next().await {
                    r?;
                    acks.push((Instant::now(), 1024u64));
                }
            }
            drop(pending);
            p.close().await?;
            anyhow::Ok(acks)
        })
    };
    let bob_bytes = Arc::new(AtomicU64::new(0));
    let mut bob_tasks = Vec::new();
    for w in 0..4u64 {
        let (bob, bob_bytes) = (bob.clone(), bob_bytes.clone());
        bob_tasks.push(tokio::spawn(async move {
            let mut client = ProducerServiceClient::new(bob);
            let value = incompressible(w, 256 << 10);
            while Instant::now() < deadline {
                let batch = raw_batch("free", 0, [value.clone()], v2::Codec::None, None)?;
                let r = client
                    .produce(v2::ProduceRequest {
                        batches: vec![batch],
                        atomic: false,
                    })
                    .await;
                match r {
                    Ok(_) => {
                        bob_bytes.fetch_add(value.len() as u64, Ordering::SeqCst);
                    }
                    Err(s) => anyhow::bail!("bob's produce failed: {s:?}"),
                }
            }
            anyhow::Ok(())
        }));
    }
    let acks = alice_task.await??;
    for t in bob_tasks {
        t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert_within_10_percent(
        "alice's produce rate",
        rate_in_window(&acks, started + WARM_UP),
        PRODUCE_RATE,
    );
    let bob_rate = bob_bytes.load(Ordering::SeqCst) as f64 / elapsed;
    eprintln!("bob's produce rate, no quota: {bob_rate:.0} B/s");
    assert!(
        bob_rate > 3.0 * PRODUCE_RATE as f64,
        "bob has no quota but produced only {bob_rate:.0} B/s"
    );

    // Alice reads Bob's topic (far more than 10 s of her quota) under her fetch quota while
    // Bob reads it unhindered.
    let bob_reader = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let mut c = cairn_client::Consumer::new(bob, ConsumerConfig::default());
            c.assign("free", 0, Offset::Beginning).await?;
            let mut read = 0u64;
            let t = Instant::now();
            while !c.caught_up() || read == 0 {
                for r in c.poll(Duration::ZERO).await? {
                    read += r.value.len() as u64;
                }
            }
            anyhow::Ok(read as f64 / t.elapsed().as_secs_f64())
        })
    };
    // One 256 KiB frame per fetch: the quota is measured in fine steps.
    let mut reader = cairn_client::Consumer::new(
        alice.clone(),
        ConsumerConfig {
            max_bytes_per_partition: 256 << 10,
        },
    );
    reader.assign("free", 0, Offset::Beginning).await?;
    let started = Instant::now();
    let mut reads = Vec::new();
    while started.elapsed() < WARM_UP + MEASURE + Duration::from_secs(1) {
        let got = reader.poll(Duration::from_millis(100)).await?;
        let n: u64 = got.iter().map(|r| r.value.len() as u64).sum();
        reads.push((Instant::now(), n));
        assert!(
            !(got.is_empty() && reader.caught_up()),
            "alice read the whole topic before the end of the window: too few records"
        );
    }
    let mut per_second = vec![0u64; 15];
    for (t, n) in &reads {
        let i = (t.duration_since(started).as_secs() as usize).min(14);
        per_second[i] += n;
    }
    eprintln!("alice's reads per second: {per_second:?}");
    assert_within_10_percent(
        "alice's fetch rate",
        rate_in_window(&reads, started + WARM_UP),
        FETCH_RATE,
    );
    let bob_read = bob_reader.await??;
    eprintln!("bob's fetch rate, no quota: {bob_read:.0} B/s");
    assert!(bob_read > 3.0 * FETCH_RATE as f64);
    Ok(())
}

/// An in-process agent over files in `dir` with `settings`.
async fn agent(dir: &std::path::Path, settings: AgentSettings) -> anyhow::Result<InProcessAgent> {
    InProcessAgent::start(file_store(dir)?, &dir.join("meta.sqlite"), settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_per_second_are_limited_and_rates_are_shared_by_the_live_agents() -> anyhow::Result<()>
{
    let dir = temp_dir()?;
    let a = agent(dir.path(), AgentSettings::default()).await?;
    let admin = Admin::new(cairn_client::connect(&a.endpoint).await?);
    admin.create_topic("t", 1, TopicOptions::default()).await?;
    // The default quota covers unauthenticated calls: 20 calls a second.
    a.metadata
        .set_quota(&cairn_metadata::quotas::Quota {
            principal: "*".into(),
            requests_per_sec: Some(20),
            ..Default::default()
        })
        .await?;
    let mut client = AdminServiceClient::new(cairn_client::connect(&a.endpoint).await?);
    let describe = v2::DescribeTopicRequest { name: "t".into() };
    eventually("a call is throttled", || {
        let mut client = client.clone();
        let describe = describe.clone();
        async move {
            // More calls than the quota allows in a second, at once.
            for _ in 0..50 {
                if let Err(s) = client.describe_topic(describe.clone()).await {
                    return throttled(&s).is_some_and(|(l, _)| l == "requests_per_second");
                }
            }
            false
        }
    })
    .await;
    // Calls that wait as told go through at the quota's rate.
    let started = Instant::now();
    let (mut ok, mut refused) = (0u64, 0u64);
    while started.elapsed() < Duration::from_secs(5) {
        match client.describe_topic(describe.clone()).await {
            Ok(_) => ok += 1,
            Err(s) => {
                let (_, delay) = throttled(&s).expect("only throttled");
                refused += 1;
                tokio::time::sleep(delay).await;
            }
        }
    }
    let rate = ok as f64 / started.elapsed().as_secs_f64();
    eprintln!("{ok} calls in 5 s ({rate:.1}/s), {refused} throttled");
    // At most the quota plus the bucket's one second of burst; at least 90% of it.
    assert!(
        (18.0..=20.0 * 1.1 + 4.0).contains(&rate),
        "{rate:.1} calls/s for a quota of 20"
    );
    a.metadata.remove_quota("*").await?;

    // A second agent on the same metadata: each now enforces half the cluster's rate.
    let b = agent(dir.path(), AgentSettings::default()).await?;
    a.metadata
        .set_quota(&cairn_metadata::quotas::Quota {
            principal: "*".into(),
            produce_bytes_per_sec: Some(2 << 20),
            ..Default::default()
        })
        .await?;
    let producer = ProducerServiceClient::new(cairn_client::connect(&a.endpoint).await?);
    let two = Bytes::from(vec![b'x'; 1536 << 10]);
    eventually("each agent enforces half the produce rate", || {
        let mut producer = producer.clone();
        let two = two.clone();
        async move {
            let batch = raw_batch("t", 0, [two], v2::Codec::None, None).unwrap();
            match producer
                .produce(v2::ProduceRequest {
                    batches: vec![batch],
                    atomic: false,
                })
                .await
            {
                Err(s) if throttled(&s).is_some() => {
                    s.message().contains("1048576 on each of 2 agents")
                }
                _ => false,
            }
        }
    })
    .await;
    b.stop().await?;
    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_long_polls_on_one_connection_are_capped_and_the_agent_serves_on()
-> anyhow::Result<()> {
    const POLLS: usize = 10_000;
    let dir = temp_dir()?;
    let settings = AgentSettings {
        linger: Duration::from_millis(5),
        ..AgentSettings::default()
    };
    let cap = settings.max_long_polls_per_connection;
    let a = agent(dir.path(), settings).await?;
    let admin = Admin::new(cairn_client::connect(&a.endpoint).await?);
    admin
        .create_topic("waits", 1, TopicOptions::default())
        .await?;
    // One connection carries every long-poll.
    let one = ConsumerServiceClient::new(cairn_client::connect(&a.endpoint).await?);
    let throttled_polls = Arc::new(AtomicU64::new(0));
    let mut polls: Vec<tokio::task::JoinHandle<anyhow::Result<usize>>> = Vec::with_capacity(POLLS);
    for _ in 0..POLLS {
        let mut c = one.clone();
        let throttled_polls = throttled_polls.clone();
        polls.push(tokio::spawn(async move {
            let r = c
                .fetch(v2::FetchRequest {
                    topic: "waits".into(),
                    partition: 0,
                    offset: 0,
                    max_bytes: None,
                    max_wait_ms: 30_000,
                })
                .await;
            match r {
                Ok(f) => Ok(f.into_inner().frames.len()),
                Err(s) => {
                    let (limit, _) = throttled(&s).ok_or_else(|| anyhow::anyhow!("{s:?}"))?;
                    assert_eq!(limit, "long_polls_per_connection");
                    throttled_polls.fetch_add(1, Ordering::SeqCst);
                    Ok(0)
                }
            }
        }));
    }
    let refused = (POLLS - cap) as u64;
    eventually("every long-poll past the cap is refused", || async {
        throttled_polls.load(Ordering::SeqCst) >= refused
    })
    .await;
    assert_eq!(throttled_polls.load(Ordering::SeqCst), refused);
    // The agent serves others meanwhile: a produce on another connection is answered, and
    // wakes every admitted long-poll with its record.
    let p = Producer::new(
        cairn_client::connect(&a.endpoint).await?,
        ProducerConfig::default(),
    );
    p.send(ProducerRecord::new("waits", "wake up"))
        .await?
        .await?;
    let mut woken = 0;
    for poll in polls {
        woken += poll.await??;
    }
    assert_eq!(woken, cap, "every admitted long-poll got the record");
    a.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_holds_at_most_its_bytes_in_flight() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let settings = AgentSettings {
        // Requests wait a second for their segment: they stay in flight.
        linger: Duration::from_secs(1),
        max_request_bytes: 1 << 20,
        max_connection_bytes: 2 << 20,
        ..AgentSettings::default()
    };
    let a = agent(dir.path(), settings).await?;
    let admin = Admin::new(cairn_client::connect(&a.endpoint).await?);
    admin
        .create_topic("big", 1, TopicOptions::default())
        .await?;
    let one = ProducerServiceClient::new(cairn_client::connect(&a.endpoint).await?);
    let mut calls = FuturesUnordered::new();
    for i in 0..8u64 {
        let mut c = one.clone();
        calls.push(async move {
            let batch = raw_batch(
                "big",
                0,
                [incompressible(i, 600 << 10)],
                v2::Codec::None,
                None,
            )
            .unwrap();
            c.produce(v2::ProduceRequest {
                batches: vec![batch],
                atomic: false,
            })
            .await
        });
    }
    let (mut ok, mut capped) = (0, 0);
    while let Some(r) = calls.next().await {
        match r {
            Ok(_) => ok += 1,
            Err(s) => {
                let (limit, _) = throttled(&s).ok_or_else(|| anyhow::anyhow!("{s:?}"))?;
                assert_eq!(limit, "bytes_in_flight_per_connection");
                capped += 1;
            }
        }
    }
    eprintln!("{ok} answered, {capped} over the connection's bytes");
    // 600 KiB each against 2 MiB: three fit at once.
    assert!(
        (1..=3).contains(&ok) && ok + capped == 8,
        "{ok} ok, {capped} capped"
    );

    // The SDK sends again when told: every record of a burst on one connection lands.
    let p = Producer::new(
        cairn_client::connect(&a.endpoint).await?,
        ProducerConfig {
            codec: Codec::None,
            batch_max_bytes: 900 << 10,
            request_max_bytes: 900 << 10,
            ..ProducerConfig::default()
        },
    );
    let mut deliveries = Vec::new();
    for i in 0..40u64 {
        deliveries.push(
            p.send(ProducerRecord::new("big", incompressible(i, 100 << 10)))
                .await?,
        );
    }
    for d in deliveries {
        d.await?;
    }
    p.close().await?;
    let read = cairn_tests::read_all(&a.endpoint, "big").await?;
    assert_eq!(read.len(), ok + 40);
    a.stop().await?;
    Ok(())
}
