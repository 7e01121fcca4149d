//! Share groups end to end: consumers that crash mid-batch lose nothing and settle nothing
//! twice; poison records reach the dead-letter topic; leases expire by an injected clock;
//! refusals are precise.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_agent::{AgentSettings, FaultSpec};
use cairn_client::{
    Admin, ClientError, ErrorReason, Producer, ProducerConfig, ProducerRecord, ShareConfig,
    ShareConsumer, TopicOptions,
};
use cairn_metadata::ManualClock;
use cairn_proto::v2::{self, share_service_client::ShareServiceClient};
use cairn_tests::{AgentProcess, InProcessAgent, file_agent_args, read_all, temp_dir};
use rand::{Rng, SeedableRng};

async fn produce(endpoint: &str, topic: &str, n: usize) -> anyhow::Result<()> {
    let producer = Producer::new(
        cairn_client::connect(endpoint).await?,
        ProducerConfig::default(),
    );
    let mut acks = Vec::with_capacity(n);
    for i in 0..n {
        acks.push(
            producer
                .send(ProducerRecord::new(topic, format!("task {i}")))
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    producer.close().await?;
    Ok(())
}

/// 4 consumers share 50,000 records; each "crashes" (drops its batch unacknowledged and
/// comes back as a new consumer) on 5% of its batches. Every record is acknowledged exactly
/// once, none is lost, redeliveries carry a higher delivery count, nothing stays in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashing_consumers_lose_nothing() -> anyhow::Result<()> {
    const RECORDS: usize = 50_000;
    let dir = temp_dir()?;
    let mut args = file_agent_args(dir.path());
    args.extend(["--linger".to_string(), "10ms".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("work", 4, TopicOptions::default())
        .await?;
    produce(&agent.endpoint, "work", RECORDS).await?;

    let acked: Arc<Mutex<HashMap<(u32, i64), u32>>> = Arc::default();
    let dropped: Arc<Mutex<HashMap<(u32, i64), u32>>> = Arc::default();
    let deliveries = Arc::new(AtomicUsize::new(0));
    let crashes = Arc::new(AtomicUsize::new(0));
    let late_acks = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for c in 0..4u64 {
        let (channel, acked, dropped) = (channel.clone(), acked.clone(), dropped.clone());
        let (deliveries, crashes) = (deliveries.clone(), crashes.clone());
        let late_acks = late_acks.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c);
            let config = ShareConfig {
                lease: Duration::from_secs(2),
                max_records: 200,
                member_id: None,
            };
            let mut consumer =
                ShareConsumer::new(channel.clone(), "workers", "work", config.clone());
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while acked.lock().unwrap().len() < RECORDS {
                assert!(tokio::time::Instant::now() < deadline, "timed out");
                let batch = consumer.poll(Duration::from_millis(500)).await?;
                deliveries.fetch_add(batch.len(), Ordering::SeqCst);
                for r in &batch {
                    let key = (r.record.partition, r.record.offset);
                    if let Some(before) = dropped.lock().unwrap().get(&key) {
                        assert!(
                            r.delivery_count > *before,
                            "redelivered {key:?} with count {} after {before}",
                            r.delivery_count
                        );
                    }
                }
                if batch.is_empty() {
                    continue;
                }
                if rng.random_range(0..100) < 5 {
                    // Crash mid-batch: nothing acknowledged; a new consumer takes over.
                    crashes.fetch_add(1, Ordering::SeqCst);
                    let mut d = dropped.lock().unwrap();
                    for r in &batch {
                        d.insert((r.record.partition, r.record.offset), r.delivery_count);
                    }
                    drop(d);
                    consumer =
                        ShareConsumer::new(channel.clone(), "workers", "work", config.clone());
                    continue;
                }
                // Acknowledge per partition (each is all or none). Under load a lease can
                // end before the ack arrives: then the record was not settled and will be
                // delivered again, exactly like a crash.
                let mut by_partition: HashMap<u32, Vec<cairn_client::ShareRecord>> = HashMap::new();
                for r in batch {
                    by_partition.entry(r.record.partition).or_default().push(r);
                }
                for (_, records) in by_partition {
                    match consumer.ack(&records).await {
                        Ok(()) => {
                            let mut a = acked.lock().unwrap();
                            for r in &records {
                                let prev = a.insert(
                                    (r.record.partition, r.record.offset),
                                    r.delivery_count,
                                );
                                assert!(
                                    prev.is_none(),
                                    "{:?} acknowledged twice",
                                    (r.record.partition, r.record.offset)
                                );
                            }
                        }
                        // Expired, or expired and already taken by another consumer.
                        Err(e)
                            if matches!(
                                e.reason(),
                                Some(ErrorReason::LeaseExpired | ErrorReason::NotHeld)
                            ) =>
                        {
                            late_acks.fetch_add(1, Ordering::SeqCst);
                            let mut d = dropped.lock().unwrap();
                            for r in &records {
                                d.insert((r.record.partition, r.record.offset), r.delivery_count);
                            }
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok::<_, ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let acked = acked.lock().unwrap().clone();
    let dropped = dropped.lock().unwrap().clone();
    let redelivered = acked.values().filter(|n| **n > 1).count();
    eprintln!(
        "share groups: {RECORDS} records, {} deliveries, {} crashes and {} late acks dropping {} records, {redelivered} redelivered, {} acked, 0 dead-lettered, lost {}",
        deliveries.load(Ordering::SeqCst),
        crashes.load(Ordering::SeqCst),
        late_acks.load(Ordering::SeqCst),
        dropped.len(),
        acked.len(),
        RECORDS - acked.len()
    );
    assert_eq!(
        acked.len(),
        RECORDS,
        "every record acknowledged exactly once"
    );
    assert!(crashes.load(Ordering::SeqCst) > 0, "some consumer crashed");
    for key in dropped.keys() {
        assert!(
            acked.get(key).is_some_and(|n| *n >= 2),
            "{key:?} was redelivered"
        );
    }
    let mut share = ShareServiceClient::new(channel.clone());
    let d = share
        .describe_share_group(v2::DescribeShareGroupRequest {
            group: "workers".into(),
            topic: "work".into(),
        })
        .await?
        .into_inner();
    for p in &d.partitions {
        assert_eq!(
            (p.start_offset, p.end_offset, p.acquired, p.available),
            (p.high_watermark, p.high_watermark, 0, 0),
            "nothing in flight: {p:?}"
        );
    }
    let all: HashSet<(u32, i64)> = read_all(&agent.endpoint, "work")
        .await?
        .iter()
        .map(|r| (r.partition, r.offset))
        .collect();
    assert_eq!(all, acked.keys().copied().collect::<HashSet<_>>());
    agent.stop()?;
    Ok(())
}

/// A record released 5 times, and one rejected, land in `<topic>.dlq` with headers naming
/// the group, origin and delivery count, and are not delivered again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_records_go_to_the_dead_letter_topic() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = AgentProcess::on_files(dir.path())?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("orders", 1, TopicOptions::default())
        .await?;
    produce(&agent.endpoint, "orders", 2).await?;
    let config = ShareConfig {
        max_records: 1,
        ..ShareConfig::default()
    };
    let mut consumer = ShareConsumer::new(channel.clone(), "billing", "orders", config);
    // Offset 0 fails processing five times.
    for round in 1..=5 {
        let got = consumer.poll(Duration::from_secs(1)).await?;
        assert_eq!(got.len(), 1);
        assert_eq!((got[0].record.offset, got[0].delivery_count), (0, round));
        consumer.release(&got).await?;
    }
    // The sixth attempt moves it to the dead-letter topic and hands out offset 1 instead;
    // that one is rejected as poison.
    let got = consumer.poll(Duration::from_secs(1)).await?;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].record.offset, 1);
    consumer.reject(&got).await?;
    assert!(
        consumer.poll(Duration::from_millis(300)).await?.is_empty(),
        "nothing comes back"
    );

    let dlq = read_all(&agent.endpoint, "orders.dlq").await?;
    assert_eq!(dlq.len(), 2);
    let header = |r: &cairn_client::ConsumedRecord, k: &str| {
        r.headers
            .iter()
            .find(|(hk, _)| hk == k)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(dlq[0].value, "task 0");
    assert_eq!(
        header(&dlq[0], "cairn.dlq.group").as_deref(),
        Some("billing")
    );
    assert_eq!(
        header(&dlq[0], "cairn.dlq.topic").as_deref(),
        Some("orders")
    );
    assert_eq!(header(&dlq[0], "cairn.dlq.offset").as_deref(), Some("0"));
    assert_eq!(
        header(&dlq[0], "cairn.dlq.delivery_count").as_deref(),
        Some("5")
    );
    assert_eq!(
        header(&dlq[0], "cairn.dlq.reason").as_deref(),
        Some("max_deliveries")
    );
    assert_eq!(dlq[1].value, "task 1");
    assert_eq!(header(&dlq[1], "cairn.dlq.offset").as_deref(), Some("1"));
    assert_eq!(
        header(&dlq[1], "cairn.dlq.delivery_count").as_deref(),
        Some("1")
    );
    assert_eq!(
        header(&dlq[1], "cairn.dlq.reason").as_deref(),
        Some("rejected")
    );
    agent.stop()?;
    Ok(())
}

/// Lease expiry by an injected clock, and precise refusals: an ack after the lease ended,
/// an ack of a record not held, a second ack, an unknown group, an invalid lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_expire_by_the_clock_and_refusals_are_precise() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let store = cairn_tests::file_store(dir.path())?;
    let kv = cairn_metadata::open_kv(&format!(
        "sqlite:{}",
        dir.path().join("meta.sqlite").display()
    ))
    .await?;
    let agent = InProcessAgent::start_with_clock(
        store,
        kv,
        AgentSettings {
            linger: Duration::from_millis(5),
            ..AgentSettings::default()
        },
        FaultSpec::default(),
        clock.clone(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("jobs", 1, TopicOptions::default())
        .await?;
    produce(&agent.endpoint, "jobs", 1).await?;
    let config = ShareConfig {
        lease: Duration::from_secs(10),
        ..ShareConfig::default()
    };
    let mut slow = ShareConsumer::new(channel.clone(), "q", "jobs", config.clone());
    let mut fast = ShareConsumer::new(channel.clone(), "q", "jobs", config);
    let held = slow.poll(Duration::ZERO).await?;
    assert_eq!(held.len(), 1);
    // Someone else cannot settle it.
    let err = fast.ack(&held).await.expect_err("not held by fast");
    assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
    assert_eq!(err.reason(), Some(ErrorReason::NotHeld));
    assert!(
        err.to_string().contains("not held by this consumer"),
        "{err}"
    );
    assert!(
        fast.poll(Duration::ZERO).await?.is_empty(),
        "leased to slow"
    );

    // Eleven seconds later (by the agent's clock) the lease is over.
    clock.advance(11_000);
    let err = slow.ack(&held).await.expect_err("lease expired");
    assert_eq!(err.reason(), Some(ErrorReason::LeaseExpired), "{err}");
    let again = fast.poll(Duration::ZERO).await?;
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].delivery_count, 2);
    fast.ack(&again).await?;
    let err = fast.ack(&again).await.expect_err("settled once only");
    assert!(err.to_string().contains("already settled"), "{err}");
    let err = slow.ack(&held).await.expect_err("still not slow's");
    assert_eq!(err.reason(), Some(ErrorReason::NotHeld));

    let mut raw = ShareServiceClient::new(channel.clone());
    let err = raw
        .describe_share_group(v2::DescribeShareGroupRequest {
            group: "nobody".into(),
            topic: "jobs".into(),
        })
        .await
        .expect_err("unknown group");
    assert_eq!(err.code(), tonic::Code::NotFound, "{}", err.message());
    let err = raw
        .settle(v2::SettleRequest {
            group: "nobody".into(),
            member_id: "m".into(),
            topic: "jobs".into(),
            partition: 0,
            offsets: vec![0],
            action: v2::SettleAction::Ack as i32,
            lease_ms: None,
        })
        .await
        .expect_err("unknown group");
    assert_eq!(err.code(), tonic::Code::NotFound);
    for lease_ms in [0, 500, 700_000] {
        let err = raw
            .acquire(v2::AcquireRequest {
                group: "q".into(),
                member_id: "m".into(),
                topic: "jobs".into(),
                lease_ms: Some(lease_ms),
                ..Default::default()
            })
            .await
            .expect_err("invalid lease");
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message()
                .contains("lease_ms must be between 1000 and 600000"),
            "{}",
            err.message()
        );
    }
    let err = raw
        .settle(v2::SettleRequest {
            group: "q".into(),
            member_id: "m".into(),
            topic: "jobs".into(),
            partition: 0,
            offsets: vec![0],
            action: 9,
            lease_ms: None,
        })
        .await
        .expect_err("unknown action");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    agent.stop().await?;
    Ok(())
}
