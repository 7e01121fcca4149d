//! The metadata conformance suite: generic async checks that every backend must pass. The
//! crate's tests run them against SQLite and memory, and against FoundationDB when
//! `CAIRN_FDB_CLUSTER_FILE` names a cluster. Each function takes a fresh, empty store and
//! panics (it is test code) on the first violation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use crate::{
    BatchOutcome, Codec, CommitBatch, ErrorKind, FaultyKv, KvError, KvStore, ManualClock,
    MetaError, Metadata, RetryPolicy, SegmentCommit, TopicSpec, transact,
};

fn metadata(kv: Arc<dyn KvStore>) -> Metadata {
    Metadata::new(kv, Arc::new(ManualClock::new(1_700_000_000_000)))
}

/// A topic spec with defaults.
pub fn spec(name: &str, partitions: u32) -> TopicSpec {
    TopicSpec {
        name: name.into(),
        partitions,
        codec: Codec::Zstd,
        retention_ms: -1,
        retention_bytes: -1,
    }
}

/// A segment whose batches are laid out back to back, `(topic_id, partition, records)` each.
pub fn segment(object_key: &str, batches: &[(u64, u32, u32)]) -> SegmentCommit {
    let mut position = 10;
    let batches = batches
        .iter()
        .map(|&(topic_id, partition, record_count)| {
            let b = CommitBatch {
                topic_id,
                partition,
                position,
                length: 100,
                record_count,
                min_timestamp_ms: 1,
                max_timestamp_ms: 2,
            };
            position += 100;
            b
        })
        .collect();
    SegmentCommit {
        object_key: object_key.into(),
        object_size: position + 100,
        batches,
    }
}

fn offsets(outcomes: &[BatchOutcome]) -> Vec<i64> {
    outcomes
        .iter()
        .map(|o| match o {
            BatchOutcome::Committed { base_offset } => *base_offset,
            BatchOutcome::TopicGone => -1,
        })
        .collect()
}

/// Point and range reads, read-your-writes, clears, atomic add, rollback on drop.
pub async fn kv_basics(kv: Arc<dyn KvStore>) {
    let tx = kv.begin().await.unwrap();
    for (k, v) in [
        (&b"a"[..], &b"1"[..]),
        (b"b", b"2"),
        (b"c", b"3"),
        (b"d", b"4"),
    ] {
        tx.set(k, v).await.unwrap();
    }
    assert_eq!(tx.get(b"b").await.unwrap().as_deref(), Some(&b"2"[..]));
    tx.commit().await.unwrap();

    let tx = kv.begin().await.unwrap();
    let r = tx.get_range(b"a", b"d", 10, false).await.unwrap();
    assert_eq!(
        r.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
        [&b"a"[..], b"b", b"c"]
    );
    let r = tx.get_range(b"a", b"e", 2, true).await.unwrap();
    assert_eq!(
        r.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
        [&b"d"[..], b"c"]
    );
    tx.clear(b"a").await.unwrap();
    tx.clear_range(b"b", b"d").await.unwrap();
    tx.atomic_add(b"n", 5).await.unwrap();
    tx.atomic_add(b"n", -2).await.unwrap();
    let r = tx.get_range(b"a", b"z", 10, false).await.unwrap();
    assert_eq!(
        r.iter().map(|(k, _)| k.as_slice()).collect::<Vec<_>>(),
        [&b"d"[..], b"n"]
    );
    tx.commit().await.unwrap();

    // A transaction dropped without commit leaves no trace.
    let tx = kv.begin().await.unwrap();
    tx.set(b"zz", b"gone").await.unwrap();
    tx.clear(b"d").await.unwrap();
    drop(tx);
    let tx = kv.begin().await.unwrap();
    assert_eq!(tx.get(b"zz").await.unwrap(), None);
    assert_eq!(tx.get(b"d").await.unwrap().as_deref(), Some(&b"4"[..]));
    assert_eq!(
        tx.get(b"n").await.unwrap().as_deref(),
        Some(&3i64.to_le_bytes()[..])
    );
    tx.commit().await.unwrap();
}

/// FoundationDB's limits: 10 kB keys, 100 kB values, 10 MB per transaction.
pub async fn kv_limits(kv: Arc<dyn KvStore>) {
    let tx = kv.begin().await.unwrap();
    let big_key = vec![b'k'; 10_001];
    assert!(matches!(
        tx.set(&big_key, b"v").await,
        Err(KvError::KeyTooLarge { size: 10_001, .. })
    ));
    drop(tx);
    let tx = kv.begin().await.unwrap();
    assert!(matches!(
        tx.set(b"k", &vec![0u8; 100_001]).await,
        Err(KvError::ValueTooLarge { size: 100_001, .. })
    ));
    drop(tx);
    let tx = kv.begin().await.unwrap();
    let value = vec![7u8; 99_000];
    let mut failed = None;
    for i in 0..120u32 {
        if let Err(e) = tx.set(&i.to_be_bytes(), &value).await {
            failed = Some((i, e));
            break;
        }
    }
    match failed {
        Some((i, KvError::TransactionTooLarge { .. })) => assert!((100..=102).contains(&i)),
        other => panic!("expected TransactionTooLarge near 10 MB, got {other:?}"),
    }
    drop(tx);
    // Nothing of the refused transaction is visible.
    let tx = kv.begin().await.unwrap();
    assert!(
        tx.get_range(b"", b"\xff", 10, false)
            .await
            .unwrap()
            .is_empty()
    );
    tx.commit().await.unwrap();
}

/// Concurrent read-modify-write transactions through the retry loop lose no update.
pub async fn kv_serializable(kv: Arc<dyn KvStore>) {
    let policy = RetryPolicy {
        max_attempts: 1000,
        ..RetryPolicy::default()
    };
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let kv = kv.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                transact(kv.as_ref(), &policy, "increment", |tx| async move {
                    let n = match tx.get(b"counter").await? {
                        Some(v) => u64::from_le_bytes(v.try_into().unwrap()),
                        None => 0,
                    };
                    tx.set(b"counter", &(n + 1).to_le_bytes()).await?;
                    Ok(())
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let tx = kv.begin().await.unwrap();
    let v = tx.get(b"counter").await.unwrap().unwrap();
    assert_eq!(u64::from_le_bytes(v.try_into().unwrap()), 90);
}

/// Topic create, list, describe, delete, re-create with a new id, add partitions, and the
/// validation errors.
pub async fn topics(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let a = m.create_topic(&spec("orders", 3)).await.unwrap();
    assert_eq!(a.partitions, 3);
    let err = m.create_topic(&spec("orders", 3)).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);
    for (name, n) in [
        ("", 1),
        ("bad name", 1),
        ("..", 1),
        ("ok", 0),
        ("ok", 10_001),
    ] {
        let err = m.create_topic(&spec(name, n)).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{name:?}/{n}: {err}");
    }
    m.create_topic(&spec("audit", 1)).await.unwrap();
    let names: Vec<String> = m
        .list_topics()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["audit", "orders"]);

    let grown = m.add_partitions("orders", 5).await.unwrap();
    assert_eq!(grown.partitions, 5);
    assert_eq!(
        m.add_partitions("orders", 5).await.unwrap_err().kind(),
        ErrorKind::Invalid
    );
    assert_eq!(m.partition_states(&grown).await.unwrap().len(), 5);

    m.commit_segment(&segment("o1", &[(a.id, 0, 10)]))
        .await
        .unwrap();
    m.delete_topic("orders").await.unwrap();
    assert_eq!(
        m.topic("orders").await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
    let b = m.create_topic(&spec("orders", 2)).await.unwrap();
    assert_ne!(a.id, b.id, "a re-created topic gets a new id");
    let states = m.partition_states(&b).await.unwrap();
    assert!(states.iter().all(|s| s.next_offset == 0));
    // A late segment for the deleted topic does not land in the new one.
    let out = m
        .commit_segment(&segment("o2", &[(a.id, 0, 4), (b.id, 0, 4)]))
        .await
        .unwrap();
    assert_eq!(offsets(&out), [-1, 0]);
}

/// Dense offsets in commit order, one index entry per run, idempotent reruns, lookups.
pub async fn commit_and_index(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let t = m.create_topic(&spec("events", 2)).await.unwrap();
    let out = m
        .commit_segment(&segment(
            "seg-1",
            &[(t.id, 0, 3), (t.id, 0, 2), (t.id, 1, 7), (t.id, 0, 1)],
        ))
        .await
        .unwrap();
    assert_eq!(offsets(&out), [0, 3, 0, 5]);
    let out = m
        .commit_segment(&segment("seg-2", &[(t.id, 0, 4)]))
        .await
        .unwrap();
    assert_eq!(offsets(&out), [6]);

    // Rerunning a committed object's commit returns the first outcome and changes nothing.
    let again = m
        .commit_segment(&segment(
            "seg-1",
            &[(t.id, 0, 3), (t.id, 0, 2), (t.id, 1, 7), (t.id, 0, 1)],
        ))
        .await
        .unwrap();
    assert_eq!(offsets(&again), [0, 3, 0, 5]);
    let states = m.partition_states(&t).await.unwrap();
    assert_eq!(states[0].next_offset, 10);
    assert_eq!(states[1].next_offset, 7);
    // p0: [0,5) adjacent run, [5,6) after p1's batch, [6,10) in seg-2.
    assert_eq!(states[0].index_entries, 3);

    let (_, entries) = m.read_index(t.id, 0, 0, 100).await.unwrap();
    let ranges: Vec<(i64, i64, u32)> = entries
        .iter()
        .map(|e| (e.base_offset, e.end_offset, e.batch_count))
        .collect();
    assert_eq!(ranges, [(0, 5, 2), (5, 6, 1), (6, 10, 1)]);
    assert_eq!(entries[0].length, 200);
    assert_eq!(entries[2].object_key, "seg-2");
    let (_, from4) = m.read_index(t.id, 0, 4, 100).await.unwrap();
    assert_eq!(
        from4[0].base_offset, 0,
        "the entry covering offset 4 comes first"
    );
    let (_, from5) = m.read_index(t.id, 0, 5, 1).await.unwrap();
    assert_eq!(from5.len(), 1);
    assert_eq!(from5[0].base_offset, 5);
    let (state, none) = m.read_index(t.id, 0, 10, 100).await.unwrap();
    assert!(none.is_empty());
    assert_eq!(state.next_offset, 10);
}

/// A commit whose reply is lost is rerun and returns the first run's offsets; a commit that
/// keeps failing surfaces as Unavailable and leaves nothing visible.
pub async fn commit_faults(kv: Arc<dyn KvStore>) {
    let faulty = Arc::new(FaultyKv::new(kv));
    let m = Metadata::new(faulty.clone(), Arc::new(ManualClock::new(0))).with_retry(RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    });
    let t = m.create_topic(&spec("faults", 1)).await.unwrap();
    m.commit_segment(&segment("a", &[(t.id, 0, 5)]))
        .await
        .unwrap();

    faulty.unknown_next_commits(1);
    let out = m
        .commit_segment(&segment("b", &[(t.id, 0, 5)]))
        .await
        .unwrap();
    assert_eq!(offsets(&out), [5]);
    assert_eq!(m.partition_state(t.id, 0).await.unwrap().next_offset, 10);

    faulty.fail_next_commits(10);
    let err = m
        .commit_segment(&segment("c", &[(t.id, 0, 5)]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable);
    faulty.fail_next_commits(0);
    assert_eq!(m.partition_state(t.id, 0).await.unwrap().next_offset, 10);
    let (_, entries) = m.read_index(t.id, 0, 0, 10).await.unwrap();
    assert_eq!(entries.len(), 2);
}

/// A segment commit too large for one transaction is refused whole, with a precise error.
pub async fn commit_too_large(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let t = m.create_topic(&spec("huge", 10_000)).await.unwrap();
    let batches: Vec<(u64, u32, u32)> = (0..120_000u32).map(|i| (t.id, i % 10_000, 1)).collect();
    let err = m
        .commit_segment(&segment("too-big", &batches))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::TooLarge, "{err}");
    assert!(err.to_string().contains("fewer batches"), "{err}");
    let states = m.partition_states(&t).await.unwrap();
    assert!(states.iter().all(|s| s.next_offset == 0));
    // The same number of batches in one run per partition is small enough.
    let mut batches: Vec<(u64, u32, u32)> =
        (0..120_000u32).map(|i| (t.id, i % 10_000, 1)).collect();
    batches.sort_by_key(|b| b.1);
    let out = m.commit_segment(&segment("fits", &batches)).await.unwrap();
    assert_eq!(out.len(), 120_000);
    assert_eq!(
        m.partition_state(t.id, 9_999).await.unwrap().next_offset,
        12
    );
    assert_eq!(
        m.partition_state(t.id, 9_999).await.unwrap().index_entries,
        1
    );
}

/// Concurrent committers to the same partitions: offsets stay dense and disjoint.
pub async fn concurrent_commits(kv: Arc<dyn KvStore>) {
    let m = metadata(kv).with_retry(RetryPolicy {
        max_attempts: 1000,
        ..RetryPolicy::default()
    });
    let t = m.create_topic(&spec("race", 3)).await.unwrap();
    let mut tasks = Vec::new();
    for w in 0..4 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for s in 0..10 {
                let seg = segment(
                    &format!("w{w}-s{s}"),
                    &[(t.id, 0, 2), (t.id, 1, 3), (t.id, 2, 1)],
                );
                let out = m.commit_segment(&seg).await.unwrap();
                got.push(offsets(&out));
            }
            got
        }));
    }
    let mut p0 = Vec::new();
    for task in tasks {
        for o in task.await.unwrap() {
            p0.push(o[0]);
        }
    }
    p0.sort_unstable();
    assert_eq!(p0, (0..40).map(|i| i * 2).collect::<Vec<_>>());
    let states = m
        .partition_states(&m.topic("race").await.unwrap())
        .await
        .unwrap();
    let hwms: Vec<i64> = states.iter().map(|s| s.next_offset).collect();
    assert_eq!(hwms, [80, 120, 40]);
}

/// A waiter at the high watermark wakes when a commit lands, and times out otherwise.
pub async fn wait_for_offset(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let t = m.create_topic(&spec("wait", 1)).await.unwrap();
    let s = m
        .wait_for_offset(t.id, 0, 0, Duration::from_millis(30))
        .await
        .unwrap();
    assert_eq!(s.next_offset, 0);
    let waiter = {
        let m = m.clone();
        tokio::spawn(async move { m.wait_for_offset(t.id, 0, 0, Duration::from_secs(30)).await })
    };
    tokio::task::yield_now().await;
    m.commit_segment(&segment("w", &[(t.id, 0, 2)]))
        .await
        .unwrap();
    let s = waiter.await.unwrap().unwrap();
    assert_eq!(s.next_offset, 2);
}

/// Errors carry the kind the agent maps to a gRPC status.
pub async fn error_kinds(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    assert!(matches!(
        m.topic("nope").await,
        Err(MetaError::TopicNotFound(ref n)) if n == "nope"
    ));
    assert_eq!(
        m.commit_segment(&SegmentCommit {
            object_key: "x".into(),
            object_size: 0,
            batches: vec![],
        })
        .await
        .unwrap_err()
        .kind(),
        ErrorKind::Invalid
    );
}

/// Runs every check, each on a fresh store from `fresh`.
pub async fn run_all<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Arc<dyn KvStore>>,
{
    kv_basics(fresh().await).await;
    kv_limits(fresh().await).await;
    kv_serializable(fresh().await).await;
    topics(fresh().await).await;
    commit_and_index(fresh().await).await;
    commit_faults(fresh().await).await;
    commit_too_large(fresh().await).await;
    concurrent_commits(fresh().await).await;
    wait_for_offset(fresh().await).await;
    error_kinds(fresh().await).await;
}
