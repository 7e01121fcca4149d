//! Producer guarantees end to end: a producer is acknowledged only once its record is
//! durable, and no retry — after a failed PUT, a failed commit, a lost reply or an agent
//! killed between commit and reply — stores a second copy. Conditional and atomic appends.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_agent::{AgentSettings, FaultSpec, FaultyStore};
use cairn_client::{
    Admin, AppendBatch, Producer, ProducerConfig, ProducerRecord, RejectReason, TopicOptions,
};
use cairn_metadata::{FaultyKv, KvStore};
use cairn_proto::v2::{
    self, Codec, ErrorReason, ProducerStamp, producer_service_client::ProducerServiceClient,
};
use cairn_tests::{
    AgentProcess, InProcessAgent, file_store, produce_workload_with, raw_batch, read_all, s3_store,
    s3_url, temp_dir, verify_exact,
};
use futures::StreamExt;
use object_store::ObjectStore;

fn settings() -> AgentSettings {
    AgentSettings {
        linger: Duration::from_millis(5),
        ..AgentSettings::default()
    }
}

async fn sqlite(dir: &std::path::Path) -> anyhow::Result<Arc<dyn KvStore>> {
    Ok(cairn_metadata::open_kv(&format!("sqlite:{}", dir.join("meta.sqlite").display())).await?)
}

/// Every segment object in the store.
async fn objects(store: &dyn ObjectStore) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut list = store.list(None);
    while let Some(meta) = list.next().await {
        out.push(meta?.location.to_string());
    }
    Ok(out)
}

fn values(records: &[cairn_client::ConsumedRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.value).into_owned())
        .collect()
}

/// (a) PUT fails, (b) PUT succeeds but the commit fails, (c) the commit succeeds but the
/// reply is lost: in each case the producer retries and exactly one copy is stored.
async fn retries_store_one_copy(store: Arc<dyn ObjectStore>) -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let faulty_store = Arc::new(FaultyStore::new(store.clone()));
    let faulty_kv = Arc::new(FaultyKv::new(sqlite(dir.path()).await?));
    let agent = InProcessAgent::start_with(
        faulty_store.clone(),
        faulty_kv.clone(),
        settings(),
        FaultSpec::default(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("once", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(channel, ProducerConfig::default());
    let send = |v: &'static str| {
        let p = &producer;
        async move { p.send(ProducerRecord::new("once", v)).await?.await }
    };

    // (a) The PUT fails: nothing is written; the retry stores it once.
    faulty_store.fail_next_puts(1);
    assert_eq!(send("a").await?.offset, 0);

    // (b) The PUT succeeds, the commit fails for good: the object is an orphan, the retry
    // stores the record once in a new object.
    let before: HashSet<String> = objects(store.as_ref()).await?.into_iter().collect();
    faulty_kv.break_next_commits(1);
    assert_eq!(send("b").await?.offset, 1);
    let after = objects(store.as_ref()).await?;
    let new: Vec<&String> = after.iter().filter(|o| !before.contains(*o)).collect();
    assert_eq!(
        new.len(),
        2,
        "the failed attempt's object and the retry's: {new:?}"
    );
    let mut orphans = 0;
    for o in &new {
        if !agent.metadata.is_object_committed(o).await? {
            orphans += 1;
        }
    }
    assert_eq!(orphans, 1, "one orphan is left for the garbage collector");

    // (c) The commit succeeds but the reply is lost: the retry gets the original offset.
    agent.faults.drop_next_replies(1);
    assert_eq!(send("c").await?.offset, 2);

    producer.close().await?;
    let read = read_all(&agent.endpoint, "once").await?;
    assert_eq!(values(&read), ["a", "b", "c"], "exactly one copy of each");
    agent.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_store_one_copy_file_store() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    retries_store_one_copy(file_store(dir.path())?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_store_one_copy_s3() -> anyhow::Result<()> {
    retries_store_one_copy(s3_store(&s3_url("guarantees"))?).await
}

/// (d) The agent process dies (abort, as `kill -9` would) after committing and before
/// replying; the producer's retry reaches another agent and gets the original offsets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_killed_between_commit_and_reply() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let objects = format!("file://{}", dir.path().join("objects").display());
    let metadata = format!("sqlite:{}", dir.path().join("meta.sqlite").display());
    let args = ["--object-store", &objects, "--metadata", &metadata];
    let survivor = AgentProcess::start(&args, &[])?;
    let doomed = AgentProcess::start(
        &args,
        &[("CAIRN_TEST_FAULTS".into(), "crash_after_commits=1".into())],
    )?;
    let admin = Admin::new(cairn_client::connect(&survivor.endpoint).await?);
    admin
        .create_topic("kill", 1, TopicOptions::default())
        .await?;

    // The producer's id comes from the survivor; its batch goes to the doomed agent first.
    let mut to_survivor =
        ProducerServiceClient::new(cairn_client::connect(&survivor.endpoint).await?);
    let id = to_survivor
        .init_producer(v2::InitProducerRequest::default())
        .await?
        .into_inner();
    let stamp = ProducerStamp {
        producer_id: id.producer_id,
        epoch: id.epoch,
        base_sequence: 0,
    };
    let batch = raw_batch("kill", 0, ["one", "two", "three"], Codec::Zstd, Some(stamp))?;
    let request = v2::ProduceRequest {
        batches: vec![batch],
        atomic: false,
    };
    let mut to_doomed = ProducerServiceClient::new(cairn_client::connect(&doomed.endpoint).await?);
    let lost = to_doomed.produce(request.clone()).await;
    assert!(lost.is_err(), "the agent died before replying: {lost:?}");
    // It did commit before dying.
    let d = admin.describe_topic("kill").await?;
    assert_eq!(d.partitions[0].high_watermark, 3);

    // The retry, with the same stamp, through the surviving agent.
    let retry = to_survivor.produce(request).await?.into_inner();
    let result = &retry.results[0];
    assert!(result.duplicate, "{result:?}");
    assert_eq!(
        result.base_offset,
        Some(0),
        "the original offsets come back"
    );
    assert_eq!(
        values(&read_all(&survivor.endpoint, "kill").await?),
        ["one", "two", "three"]
    );

    // The SDK producer does the same on its own when its agent dies under it: it talks to
    // a second doomed agent first, and once that one is dead it can reach only the survivor.
    let mut doomed2 = AgentProcess::start(
        &args,
        &[("CAIRN_TEST_FAULTS".into(), "crash_after_commits=1".into())],
    )?;
    let (channel, routes) = tonic::transport::Channel::balance_channel::<&str>(4);
    let endpoint = |e: &str| tonic::transport::Endpoint::from_shared(e.to_string()).unwrap();
    routes
        .send(tonic::transport::channel::Change::Insert(
            "doomed",
            endpoint(&doomed2.endpoint),
        ))
        .await?;
    let producer = Producer::new(channel, ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..20 {
        deliveries.push(
            producer
                .send(ProducerRecord::new("kill", format!("sdk-{i}")))
                .await?,
        );
    }
    let status = doomed2.wait_for_exit(Duration::from_secs(30)).await?;
    assert!(
        !status.success(),
        "the agent crashed after its commit: {status}"
    );
    routes
        .send(tonic::transport::channel::Change::Remove("doomed"))
        .await?;
    routes
        .send(tonic::transport::channel::Change::Insert(
            "survivor",
            endpoint(&survivor.endpoint),
        ))
        .await?;
    let mut offsets = Vec::new();
    for d in deliveries {
        offsets.push(d.await?.offset);
    }
    producer.close().await?;
    assert_eq!(offsets, (3..23).collect::<Vec<i64>>());
    let read = values(&read_all(&survivor.endpoint, "kill").await?);
    assert_eq!(read.len(), 23, "{read:?}");
    let unique: HashSet<&String> = read.iter().collect();
    assert_eq!(unique.len(), 23, "no duplicates: {read:?}");
    drop(doomed);
    survivor.stop()?;
    Ok(())
}

/// 8 producers × 10,000 records while 5% of PUTs fail, 5% of commits fail and 5% of
/// replies are lost: every acknowledged record is stored exactly once, in per-producer
/// order within each partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_faults_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let faults = FaultSpec {
        put_fail_rate: 0.05,
        commit_fail_rate: 0.05,
        reply_drop_rate: 0.05,
        seed: 42,
        ..FaultSpec::default()
    };
    let agent = InProcessAgent::start_with(
        file_store(dir.path())?,
        sqlite(dir.path()).await?,
        AgentSettings {
            linger: Duration::from_millis(2),
            ..AgentSettings::default()
        },
        faults,
    )
    .await?;
    Admin::new(cairn_client::connect(&agent.endpoint).await?)
        .create_topic("faulty", 4, TopicOptions::default())
        .await?;
    let started = std::time::Instant::now();
    // Small batches, so that many requests and segments meet the faults.
    let config = ProducerConfig {
        batch_max_bytes: 8 << 10,
        ..ProducerConfig::default()
    };
    let sent = produce_workload_with(
        std::slice::from_ref(&agent.endpoint),
        "faulty",
        8,
        10_000,
        config,
    )
    .await?;
    let consumed = read_all(&agent.endpoint, "faulty").await?;
    let unique: HashSet<(u32, i64)> = consumed.iter().map(|r| (r.partition, r.offset)).collect();
    let distinct_values: HashSet<&bytes::Bytes> = consumed.iter().map(|r| &r.value).collect();
    let injected = agent.faults.report();
    eprintln!(
        "faults at 5%: sent 80000, acked {}, found {}, duplicates {}, in {:?}; {} PUT attempts, \
         {injected:?}, {} retries answered with their original offsets",
        sent.len(),
        consumed.len(),
        consumed.len() - distinct_values.len(),
        started.elapsed(),
        agent.counters.snapshot().puts,
        agent.gauges.duplicates_answered(),
    );
    assert!(
        injected.puts_failed > 0 && injected.commits_failed > 0 && injected.replies_dropped > 0,
        "every kind of fault happened: {injected:?}"
    );
    assert!(
        agent.gauges.duplicates_answered() > 0,
        "lost replies were retried"
    );
    assert_eq!(sent.len(), 80_000);
    assert_eq!(unique.len(), consumed.len());
    assert_eq!(
        distinct_values.len(),
        consumed.len(),
        "no record stored twice"
    );
    verify_exact(&sent, &consumed)?;
    agent.stop().await?;
    Ok(())
}

/// 16 writers race with expected offsets on one partition for 2,000 appends: every offset
/// is won by exactly one writer, no update is lost, every loser learns the next offset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conditional_appends_race() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start_with(
        file_store(dir.path())?,
        sqlite(dir.path()).await?,
        AgentSettings {
            linger: Duration::from_millis(1),
            ..AgentSettings::default()
        },
        FaultSpec::default(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("stream", 1, TopicOptions::default())
        .await?;
    const TARGET: i64 = 2_000;
    let mut writers = Vec::new();
    for w in 0..16 {
        let channel = channel.clone();
        writers.push(tokio::spawn(async move {
            let producer = Producer::new(channel, ProducerConfig::default());
            let mut believed = 0i64;
            let mut won = Vec::new();
            let mut lost = 0u64;
            while believed < TARGET {
                let value = format!("writer {w} at {believed}");
                let batch = AppendBatch::new(
                    "stream",
                    0,
                    vec![ProducerRecord::new("stream", value.clone())],
                )
                .expect_offset(believed);
                match producer.append(batch).await {
                    Ok(r) => {
                        assert_eq!(r.base_offset, believed);
                        won.push((r.base_offset, value));
                        believed += 1;
                    }
                    Err(e) => {
                        let rej = e
                            .rejected()
                            .unwrap_or_else(|| panic!("unexpected error {e}"));
                        assert_eq!(rej.reason, RejectReason::OffsetMismatch);
                        assert_eq!(e.code(), Some(tonic::Code::FailedPrecondition));
                        let next = rej.next_offset.expect("the reply names the next offset");
                        assert!(next > believed, "{next} <= {believed}");
                        believed = next;
                        lost += 1;
                    }
                }
            }
            producer.close().await?;
            Ok::<_, anyhow::Error>((won, lost))
        }));
    }
    let mut won: HashMap<i64, String> = HashMap::new();
    let mut losses = 0;
    for w in writers {
        let (mine, lost) = w.await??;
        losses += lost;
        for (offset, value) in mine {
            assert!(
                won.insert(offset, value).is_none(),
                "offset {offset} won twice"
            );
        }
    }
    let read = read_all(&agent.endpoint, "stream").await?;
    eprintln!("2000 conditional appends by 16 writers: {} refused", losses);
    assert_eq!(read.len() as i64, TARGET, "offsets dense, nothing extra");
    for r in &read {
        assert_eq!(
            won.get(&r.offset).map(String::as_str),
            Some(String::from_utf8_lossy(&r.value).as_ref()),
            "the record at {} is the one its winner was told about",
            r.offset
        );
    }
    assert!(losses > 0, "16 writers must have collided");
    agent.stop().await?;
    Ok(())
}

/// An atomic append over 3 partitions: a commit failure or one stale expected offset
/// leaves no trace in any partition; otherwise all three commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn atomic_append_is_all_or_nothing() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let faulty_kv = Arc::new(FaultyKv::new(sqlite(dir.path()).await?));
    let agent = InProcessAgent::start_with(
        file_store(dir.path())?,
        faulty_kv.clone(),
        settings(),
        FaultSpec::default(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin
        .create_topic("ledger", 3, TopicOptions::default())
        .await?;
    let batch = |p: u32, v: &str| {
        AppendBatch::new(
            "ledger",
            p,
            vec![ProducerRecord::new("ledger", v.to_string())],
        )
    };
    let hwms = || async {
        let d = admin.describe_topic("ledger").await?;
        Ok::<_, anyhow::Error>(
            d.partitions
                .iter()
                .map(|p| p.high_watermark)
                .collect::<Vec<_>>(),
        )
    };

    // A commit failure, seen by a client that does not retry: nothing anywhere.
    let mut raw = ProducerServiceClient::new(channel.clone());
    let request = v2::ProduceRequest {
        batches: (0..3)
            .map(|p| {
                raw_batch(
                    "ledger",
                    p,
                    [format!("transfer leg {p}")],
                    Codec::Zstd,
                    None,
                )
            })
            .collect::<anyhow::Result<_>>()?,
        atomic: true,
    };
    faulty_kv.break_next_commits(1);
    let err = raw
        .produce(request.clone())
        .await
        .expect_err("the commit was broken");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{}", err.message());
    assert_eq!(hwms().await?, [0, 0, 0], "no partition shows any of it");

    // Without the failure, all three.
    let ok = raw.produce(request).await?.into_inner();
    assert_eq!(
        ok.results.iter().map(|r| r.base_offset).collect::<Vec<_>>(),
        [Some(0); 3]
    );
    assert_eq!(hwms().await?, [1, 1, 1]);

    // One stale expected offset aborts the whole append; the error names the cause.
    let producer = Producer::new(channel, ProducerConfig::default());
    let err = producer
        .append_atomic(vec![
            batch(0, "x"),
            batch(1, "y").expect_offset(0),
            batch(2, "z"),
        ])
        .await
        .expect_err("partition 1 is at 1, not 0");
    let rej = err.rejected().expect("a rejection");
    assert_eq!(rej.reason, RejectReason::OffsetMismatch);
    assert_eq!(rej.next_offset, Some(1));
    assert_eq!(
        hwms().await?,
        [1, 1, 1],
        "none of the aborted append is visible"
    );

    let results = producer
        .append_atomic(vec![
            batch(0, "x"),
            batch(1, "y").expect_offset(1),
            batch(2, "z"),
        ])
        .await?;
    assert_eq!(
        results.iter().map(|r| r.base_offset).collect::<Vec<_>>(),
        [1, 1, 1]
    );
    producer.close().await?;
    let read = read_all(&agent.endpoint, "ledger").await?;
    assert_eq!(read.len(), 6);
    agent.stop().await?;
    Ok(())
}

/// A named producer fences its older instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_producer_fences_its_zombie() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        settings(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("orders", 1, TopicOptions::default())
        .await?;
    let config = ProducerConfig {
        name: Some("order-service".into()),
        ..ProducerConfig::default()
    };
    let old = Producer::new(channel.clone(), config.clone());
    old.send(ProducerRecord::new("orders", "from the old instance"))
        .await?
        .await?;
    let new = Producer::new(channel, config);
    new.send(ProducerRecord::new("orders", "from the new instance"))
        .await?
        .await?;
    let err = old
        .send(ProducerRecord::new("orders", "zombie write"))
        .await?
        .await
        .expect_err("the old instance is fenced");
    assert_eq!(
        err.rejected().map(|r| r.reason),
        Some(RejectReason::Fenced),
        "{err}"
    );
    let read = values(&read_all(&agent.endpoint, "orders").await?);
    assert_eq!(read, ["from the old instance", "from the new instance"]);
    agent.stop().await?;
    Ok(())
}

/// Stamp and condition errors answer with a precise status and a machine-readable reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_have_precise_statuses() -> anyhow::Result<()> {
    use tonic_types::StatusExt;
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        settings(),
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("strict", 1, TopicOptions::default())
        .await?;
    let mut raw = ProducerServiceClient::new(channel);
    let id = raw
        .init_producer(v2::InitProducerRequest::default())
        .await?
        .into_inner();
    let stamp = |seq: i64| ProducerStamp {
        producer_id: id.producer_id,
        epoch: id.epoch,
        base_sequence: seq,
    };
    let batch = |seq: i64| raw_batch("strict", 0, ["v"], Codec::Zstd, Some(stamp(seq))).unwrap();
    // The same frame with another stamp (the stamp is in the header, outside the CRC).
    let restamped = |mut b: v2::ProduceBatch, s: ProducerStamp| {
        if let Some(h) = b.frame.as_mut().and_then(|f| f.header.as_mut()) {
            h.producer = Some(s);
        }
        b
    };
    let one = |b: v2::ProduceBatch| v2::ProduceRequest {
        batches: vec![b],
        atomic: false,
    };
    let reason = |s: &tonic::Status| {
        s.get_error_details()
            .error_info()
            .map(|i| (i.reason.clone(), i.metadata.clone()))
    };

    // A gap: sequence 5 before 0.
    let err = raw.produce(one(batch(5))).await.expect_err("a gap");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let (r, meta) = reason(&err).expect("ErrorInfo");
    assert_eq!(r, ErrorReason::OutOfOrderSequence.as_str_name());
    assert_eq!(meta.get("expected_sequence").map(String::as_str), Some("0"));
    assert!(err.message().contains("strict/0"), "{}", err.message());

    // In a multi-batch request the same refusal is per batch, beside a committed one.
    let mixed = raw
        .produce(v2::ProduceRequest {
            batches: vec![batch(0), batch(7)],
            atomic: false,
        })
        .await?
        .into_inner();
    assert_eq!(mixed.results[0].base_offset, Some(0));
    assert!(mixed.results[0].error.is_none());
    let e = mixed.results[1].error.as_ref().expect("refused");
    assert_eq!(e.reason(), ErrorReason::OutOfOrderSequence);
    assert_eq!(e.expected_sequence, Some(1));
    assert_eq!((e.next_offset, e.current_epoch), (None, None));
    assert_eq!(mixed.results[1].base_offset, None);

    // A retry of the committed batch is answered as a duplicate.
    let dup = raw.produce(one(batch(0))).await?.into_inner();
    assert!(dup.results[0].duplicate);
    assert_eq!(dup.results[0].base_offset, Some(0));

    // An id the agent never issued.
    let ghost = restamped(
        batch(0),
        ProducerStamp {
            producer_id: 999_999,
            ..stamp(0)
        },
    );
    let err = raw.produce(one(ghost)).await.expect_err("unknown id");
    assert_eq!(
        reason(&err).map(|r| r.0).as_deref(),
        Some(ErrorReason::UnknownProducer.as_str_name())
    );

    // A named producer's older epoch is fenced, and told the current one.
    let named = v2::InitProducerRequest {
        name: "strict-writer".into(),
    };
    let first = raw.init_producer(named.clone()).await?.into_inner();
    let second = raw.init_producer(named).await?.into_inner();
    assert_eq!(
        (second.producer_id, second.epoch),
        (first.producer_id, first.epoch + 1)
    );
    let zombie = restamped(
        batch(0),
        ProducerStamp {
            producer_id: first.producer_id,
            epoch: first.epoch,
            base_sequence: 0,
        },
    );
    let err = raw.produce(one(zombie)).await.expect_err("fenced");
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    let (r, meta) = reason(&err).expect("ErrorInfo");
    assert_eq!(r, ErrorReason::Fenced.as_str_name(), "{}", err.message());
    assert_eq!(
        meta.get("current_epoch"),
        Some(&second.epoch.to_string()),
        "{meta:?}"
    );

    // Malformed stamps are invalid frames naming the header field; a bad condition is an
    // invalid argument.
    let no_id = restamped(
        batch(0),
        ProducerStamp {
            producer_id: 0,
            ..stamp(3)
        },
    );
    let negative = batch(-1);
    let mut bad_offset = batch(1);
    bad_offset.expected_offset = Some(-2);
    for (b, reason_wanted, field, words) in [
        (
            no_id,
            ErrorReason::InvalidFrame,
            Some("producer.producer_id"),
            "0 is not an id",
        ),
        (
            negative,
            ErrorReason::InvalidFrame,
            Some("producer.base_sequence"),
            "must be 0 or more",
        ),
        (
            bad_offset,
            ErrorReason::InvalidArgument,
            None,
            "expected_offset must be 0 or more",
        ),
    ] {
        let err = raw.produce(one(b)).await.expect_err(words);
        assert_eq!(
            err.code(),
            tonic::Code::InvalidArgument,
            "{}",
            err.message()
        );
        assert!(err.message().contains(words), "{}", err.message());
        let (r, meta) = reason(&err).expect("ErrorInfo");
        assert_eq!(r, reason_wanted.as_str_name(), "{}", err.message());
        assert_eq!(
            meta.get("field").map(String::as_str),
            field,
            "{}",
            err.message()
        );
    }
    let err = raw
        .init_producer(v2::InitProducerRequest {
            name: "no spaces allowed".into(),
        })
        .await
        .expect_err("bad name");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(
        err.message().contains("invalid producer name"),
        "{}",
        err.message()
    );
    agent.stop().await?;
    Ok(())
}

/// A partition's batch that keeps growing while requests are in flight is split into
/// requests within the producer's (and the agent's) size limit, not sent as one oversize
/// request the agent must refuse.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backlog_is_split_into_requests_the_agent_accepts() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let agent = InProcessAgent::start(
        file_store(dir.path())?,
        &dir.path().join("meta.sqlite"),
        AgentSettings {
            max_request_bytes: 256 << 10,
            max_batch_uncompressed_bytes: 256 << 10,
            ..settings()
        },
    )
    .await?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("backlog", 1, TopicOptions::default())
        .await?;
    let producer = Producer::new(
        channel,
        ProducerConfig {
            request_max_bytes: 128 << 10,
            batch_max_bytes: 1 << 20,
            // Sizes as sent are sizes as declared: the agent's limits bind for real.
            codec: Codec::None,
            ..ProducerConfig::default()
        },
    );
    let mut acks = Vec::new();
    for i in 0..2_000 {
        let value = format!("{i:06}{}", "x".repeat(1000));
        acks.push(producer.send(ProducerRecord::new("backlog", value)).await?);
    }
    let mut offsets = Vec::new();
    for a in acks {
        offsets.push(a.await?.offset);
    }
    producer.close().await?;
    assert_eq!(offsets, (0..2_000).collect::<Vec<i64>>());
    agent.stop().await?;
    Ok(())
}
