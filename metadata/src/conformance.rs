//! The metadata conformance suite: generic async checks that every backend must pass. The
//! crate's tests run them against SQLite and memory, and against FoundationDB when
//! `CAIRN_FDB_CLUSTER_FILE` names a cluster. Each function takes a fresh, empty store and
//! panics (it is test code) on the first violation.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::time::Duration;

use crate::{
    BatchOutcome, Codec, CommitBatch, ErrorKind, FaultyKv, KvError, KvStore, ManualClock,
    MetaError, Metadata, OffsetReset, PRODUCER_WINDOW, ProducerId, ProducerStamp, Rejection,
    RetryPolicy, SegmentCommit, ShareAction, TopicSpec, transact,
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
                min_timestamp_ms: 1,
                max_timestamp_ms: 2,
                ..CommitBatch::plain(topic_id, partition, position, 100, record_count)
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
            _ => -1,
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

/// A batch of `records` records for `(topic_id, partition)` with optional stamp, expected
/// offset and atomic group.
#[derive(Debug, Clone, Copy)]
pub struct B {
    /// Topic id.
    pub topic_id: u64,
    /// Partition.
    pub partition: u32,
    /// Record count.
    pub records: u32,
    /// Idempotence stamp: producer, epoch, base sequence.
    pub stamp: Option<(ProducerId, i64)>,
    /// Expected offset.
    pub expected: Option<i64>,
    /// Atomic group.
    pub group: Option<u32>,
}

impl B {
    /// A plain batch.
    pub fn new(topic_id: u64, partition: u32, records: u32) -> Self {
        B {
            topic_id,
            partition,
            records,
            stamp: None,
            expected: None,
            group: None,
        }
    }
    /// With an idempotence stamp.
    pub fn seq(mut self, p: ProducerId, base_sequence: i64) -> Self {
        self.stamp = Some((p, base_sequence));
        self
    }
    /// With an expected offset.
    pub fn expect(mut self, offset: i64) -> Self {
        self.expected = Some(offset);
        self
    }
    /// In an atomic group.
    pub fn group(mut self, g: u32) -> Self {
        self.group = Some(g);
        self
    }
}

/// A segment of stamped batches laid out back to back.
pub fn stamped_segment(object_key: &str, batches: &[B]) -> SegmentCommit {
    let mut seg = segment(
        object_key,
        &batches
            .iter()
            .map(|b| (b.topic_id, b.partition, b.records))
            .collect::<Vec<_>>(),
    );
    for (c, b) in seg.batches.iter_mut().zip(batches) {
        c.producer = b.stamp.map(|(p, base_sequence)| ProducerStamp {
            producer_id: p.id,
            epoch: p.epoch,
            base_sequence,
        });
        c.expected_offset = b.expected;
        c.atomic_group = b.group;
    }
    seg
}

/// Idempotent producers: retries return the original offsets, gaps and reorders are
/// rejected, the window remembers the last batches, a new epoch fences the old one.
pub async fn idempotent_producers(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let t = m.create_topic(&spec("idem", 2)).await.unwrap();
    let p = m.init_producer(None).await.unwrap();
    assert_eq!(p.epoch, 0);
    let q = m.init_producer(None).await.unwrap();
    assert_ne!(p.id, q.id, "anonymous producers get distinct ids");

    let first = [B::new(t.id, 0, 3).seq(p, 0)];
    let out = m
        .commit_segment(&stamped_segment("i1", &first))
        .await
        .unwrap();
    assert_eq!(out, [BatchOutcome::Committed { base_offset: 0 }]);
    // The same batch in another object (a retry through another segment) is a duplicate.
    let out = m
        .commit_segment(&stamped_segment("i2", &first))
        .await
        .unwrap();
    assert_eq!(out, [BatchOutcome::Duplicate { base_offset: 0 }]);
    // A gap, and the same base sequence with another size, are out of order.
    let out = m
        .commit_segment(&stamped_segment(
            "i3",
            &[B::new(t.id, 0, 1).seq(p, 5), B::new(t.id, 0, 2).seq(p, 0)],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            BatchOutcome::Rejected(Rejection::OutOfOrderSequence { expected: 3 }),
            BatchOutcome::Rejected(Rejection::OutOfOrderSequence { expected: 3 }),
        ]
    );
    // In order, with a retry of it in the same segment and another producer interleaved.
    let out = m
        .commit_segment(&stamped_segment(
            "i4",
            &[
                B::new(t.id, 0, 2).seq(p, 3),
                B::new(t.id, 0, 1).seq(q, 0),
                B::new(t.id, 0, 2).seq(p, 3),
                B::new(t.id, 1, 4).seq(p, 0),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            BatchOutcome::Committed { base_offset: 3 },
            BatchOutcome::Committed { base_offset: 5 },
            BatchOutcome::Duplicate { base_offset: 3 },
            BatchOutcome::Committed { base_offset: 0 },
        ]
    );
    assert_eq!(m.partition_state(t.id, 0).await.unwrap().next_offset, 6);

    // The window holds the last PRODUCER_WINDOW batches; older ones are no longer known.
    let mut seq = 5;
    for i in 0..PRODUCER_WINDOW {
        let out = m
            .commit_segment(&stamped_segment(
                &format!("w{i}"),
                &[B::new(t.id, 0, 1).seq(p, seq)],
            ))
            .await
            .unwrap();
        assert!(matches!(out[0], BatchOutcome::Committed { .. }), "{out:?}");
        seq += 1;
    }
    let out = m
        .commit_segment(&stamped_segment("old", &[B::new(t.id, 0, 2).seq(p, 3)]))
        .await
        .unwrap();
    assert_eq!(
        out,
        [BatchOutcome::Rejected(Rejection::OutOfOrderSequence {
            expected: seq
        })]
    );
    let recent = m
        .commit_segment(&stamped_segment(
            "recent",
            &[B::new(t.id, 0, 1).seq(p, seq - 1)],
        ))
        .await
        .unwrap();
    assert!(
        matches!(recent[0], BatchOutcome::Duplicate { .. }),
        "{recent:?}"
    );

    // Named producers: a second init raises the epoch and fences the first instance.
    let a = m.init_producer(Some("orders-writer")).await.unwrap();
    let out = m
        .commit_segment(&stamped_segment("n1", &[B::new(t.id, 1, 1).seq(a, 0)]))
        .await
        .unwrap();
    assert_eq!(out, [BatchOutcome::Committed { base_offset: 4 }]);
    let b = m.init_producer(Some("orders-writer")).await.unwrap();
    assert_eq!((b.id, b.epoch), (a.id, a.epoch + 1));
    let out = m
        .commit_segment(&stamped_segment(
            "n2",
            &[B::new(t.id, 1, 1).seq(a, 1), B::new(t.id, 1, 1).seq(b, 0)],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            BatchOutcome::Rejected(Rejection::Fenced { current_epoch: 1 }),
            BatchOutcome::Committed { base_offset: 5 },
        ],
        "the zombie is fenced; the new epoch starts at sequence 0"
    );
    let ghost = ProducerId {
        id: 9_999,
        epoch: 0,
    };
    let out = m
        .commit_segment(&stamped_segment("g", &[B::new(t.id, 1, 1).seq(ghost, 0)]))
        .await
        .unwrap();
    assert_eq!(out, [BatchOutcome::Rejected(Rejection::UnknownProducer)]);
    assert!(m.init_producer(Some("bad name!")).await.is_err());
}

/// Conditional appends: a batch commits only at its expected offset; a retry of a refused
/// idempotent batch gets the same refusal, and the producer's next batch still fits.
pub async fn conditional_appends(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let t = m.create_topic(&spec("cond", 1)).await.unwrap();
    let out = m
        .commit_segment(&stamped_segment(
            "c1",
            &[
                B::new(t.id, 0, 2).expect(0),
                B::new(t.id, 0, 1).expect(0),
                B::new(t.id, 0, 1).expect(2),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            BatchOutcome::Committed { base_offset: 0 },
            BatchOutcome::Rejected(Rejection::OffsetMismatch { next_offset: 2 }),
            BatchOutcome::Committed { base_offset: 2 },
        ]
    );
    let p = m.init_producer(None).await.unwrap();
    let refused = [B::new(t.id, 0, 1).seq(p, 0).expect(1)];
    let out = m
        .commit_segment(&stamped_segment("c2", &refused))
        .await
        .unwrap();
    assert_eq!(
        out,
        [BatchOutcome::Rejected(Rejection::OffsetMismatch {
            next_offset: 3
        })]
    );
    let out = m
        .commit_segment(&stamped_segment("c3", &refused))
        .await
        .unwrap();
    assert_eq!(
        out,
        [BatchOutcome::Rejected(Rejection::OffsetMismatch {
            next_offset: 3
        })],
        "a retry of a refused batch is refused the same way"
    );
    let out = m
        .commit_segment(&stamped_segment(
            "c4",
            &[B::new(t.id, 0, 1).seq(p, 1).expect(3)],
        ))
        .await
        .unwrap();
    assert_eq!(out, [BatchOutcome::Committed { base_offset: 3 }]);
    assert_eq!(m.partition_state(t.id, 0).await.unwrap().next_offset, 4);
}

/// Atomic groups commit whole or not at all, and others in the segment are unaffected.
pub async fn atomic_groups(kv: Arc<dyn KvStore>) {
    let m = metadata(kv);
    let t = m.create_topic(&spec("atomic", 3)).await.unwrap();
    let out = m
        .commit_segment(&stamped_segment(
            "a1",
            &[
                B::new(t.id, 0, 2).group(1),
                B::new(t.id, 0, 1).group(2),
                B::new(t.id, 1, 2).group(1),
                B::new(t.id, 1, 1),
                B::new(t.id, 2, 2).group(1),
                B::new(t.id, 2, 1).group(2).expect(7),
            ],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            BatchOutcome::Committed { base_offset: 0 },
            BatchOutcome::Rejected(Rejection::AtomicAborted),
            BatchOutcome::Committed { base_offset: 0 },
            BatchOutcome::Committed { base_offset: 2 },
            BatchOutcome::Committed { base_offset: 0 },
            BatchOutcome::Rejected(Rejection::OffsetMismatch { next_offset: 2 }),
        ]
    );
    let hwms: Vec<i64> = m
        .partition_states(&t)
        .await
        .unwrap()
        .iter()
        .map(|s| s.next_offset)
        .collect();
    assert_eq!(hwms, [2, 3, 2], "nothing of group 2 is visible anywhere");
    // A group containing a deleted topic's batch aborts as a whole too.
    let gone = m.create_topic(&spec("gone", 1)).await.unwrap();
    m.delete_topic("gone").await.unwrap();
    let out = m
        .commit_segment(&stamped_segment(
            "a2",
            &[B::new(t.id, 0, 1).group(3), B::new(gone.id, 0, 1).group(3)],
        ))
        .await
        .unwrap();
    assert_eq!(
        out,
        [
            BatchOutcome::Rejected(Rejection::AtomicAborted),
            BatchOutcome::TopicGone
        ]
    );
    assert_eq!(m.partition_state(t.id, 0).await.unwrap().next_offset, 2);
}

/// Producer state is bounded: each producer-partition holds a fixed-size window, and
/// state idle past the expiry is removed while active state stays.
pub async fn producer_expiry(kv: Arc<dyn KvStore>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let m = Metadata::new(kv, clock.clone());
    let t = m.create_topic(&spec("exp", 3)).await.unwrap();
    let day = 86_400_000;
    let mut producers = Vec::new();
    for i in 0..40u32 {
        let name = format!("writer-{i}");
        let p = m
            .init_producer(if i % 2 == 0 {
                Some(name.as_str())
            } else {
                None
            })
            .await
            .unwrap();
        let batches: Vec<B> = (0..3).map(|part| B::new(t.id, part, 1).seq(p, 0)).collect();
        m.commit_segment(&stamped_segment(&format!("e{i}"), &batches))
            .await
            .unwrap();
        producers.push(p);
    }
    // Once its window is full, more batches from a producer do not grow its state.
    let mut before = None;
    for s in 1..50 {
        if s == 10 {
            before = Some(m.producer_stats().await.unwrap());
        }
        m.commit_segment(&stamped_segment(
            &format!("more{s}"),
            &[B::new(t.id, 0, 1).seq(producers[0], s)],
        ))
        .await
        .unwrap();
    }
    let stats = m.producer_stats().await.unwrap();
    assert_eq!((stats.producers, stats.partition_states), (40, 120));
    assert_eq!(
        stats.bytes,
        before.unwrap().bytes,
        "a window has a fixed size"
    );
    let bound = 40 * (64 + 3 * (64 + 13 + PRODUCER_WINDOW as u64 * 21));
    assert!(stats.bytes <= bound, "{} > {bound}", stats.bytes);

    // Six days later producer 1 writes again; at eight days the rest expire.
    clock.advance(6 * day);
    m.commit_segment(&stamped_segment(
        "late",
        &[B::new(t.id, 1, 1).seq(producers[1], 1)],
    ))
    .await
    .unwrap();
    clock.advance(2 * day);
    let report = m
        .expire_producers(Duration::from_millis(7 * day as u64))
        .await
        .unwrap();
    assert_eq!(report.partition_states, 119);
    assert_eq!(report.producers, 39);
    let stats = m.producer_stats().await.unwrap();
    assert_eq!((stats.producers, stats.partition_states), (1, 1));
    // The survivor keeps its sequence; an expired producer is unknown.
    let out = m
        .commit_segment(&stamped_segment(
            "after",
            &[
                B::new(t.id, 1, 1).seq(producers[1], 2),
                B::new(t.id, 1, 1).seq(producers[0], 50),
            ],
        ))
        .await
        .unwrap();
    assert!(matches!(out[0], BatchOutcome::Committed { .. }), "{out:?}");
    assert_eq!(out[1], BatchOutcome::Rejected(Rejection::UnknownProducer));
    // An expired name starts over with a fresh id.
    let again = m.init_producer(Some("writer-0")).await.unwrap();
    assert_eq!(again.epoch, 0);
    assert_ne!(again.id, producers[0].id);
}

/// Consumer groups: sticky assignment over joins and expiry, generation and member fencing
/// of commits, committed offsets and lag, resets only while the group is empty.
pub async fn consumer_groups(kv: Arc<dyn KvStore>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let m = Metadata::new(kv, clock.clone());
    let t = m.create_topic(&spec("orders", 12)).await.unwrap();
    let topics = vec!["orders".to_string()];
    let a = m.join_group("billing", None, &topics, 3_000).await.unwrap();
    assert_eq!(a.partitions.len(), 12);
    let b = m.join_group("billing", None, &topics, 3_000).await.unwrap();
    let c = m.join_group("billing", None, &topics, 3_000).await.unwrap();
    assert_ne!(a.member_id, b.member_id);
    let a = m.heartbeat("billing", &a.member_id).await.unwrap();
    let b = m.heartbeat("billing", &b.member_id).await.unwrap();
    assert_eq!(a.generation, c.generation);
    let mut all: Vec<_> = [&a, &b, &c]
        .iter()
        .flat_map(|x| x.partitions.clone())
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 12, "every partition has exactly one owner");
    assert!([&a, &b, &c].iter().all(|x| x.partitions.len() == 4));

    // Offsets commit for owned partitions at the current generation only.
    m.commit_segment(&segment("g1", &[(t.id, a.partitions[0].1, 10)]))
        .await
        .unwrap();
    let (ta, pa) = a.partitions[0].clone();
    m.commit_offsets(
        "billing",
        &a.member_id,
        a.generation,
        &[(ta.clone(), pa, 7)],
    )
    .await
    .unwrap();
    let err = m
        .commit_offsets(
            "billing",
            &a.member_id,
            a.generation - 1,
            &[(ta.clone(), pa, 8)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "STALE_GENERATION",
                ..
            }
        ),
        "{err}"
    );
    let (tb, pb) = b.partitions[0].clone();
    let err = m
        .commit_offsets("billing", &a.member_id, a.generation, &[(tb, pb, 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "NOT_ASSIGNED",
                ..
            }
        ),
        "{err}"
    );
    let err = m
        .commit_offsets(
            "billing",
            &a.member_id,
            a.generation,
            &[(ta.clone(), pa, 11)],
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::OutOfRange, "{err}");

    // c stops heartbeating: after its session it is gone and a, b split its partitions,
    // keeping their own.
    clock.advance(2_000);
    m.heartbeat("billing", &a.member_id).await.unwrap();
    m.heartbeat("billing", &b.member_id).await.unwrap();
    clock.advance(2_000);
    let a2 = m.heartbeat("billing", &a.member_id).await.unwrap();
    let b2 = m.heartbeat("billing", &b.member_id).await.unwrap();
    assert!(a2.generation > a.generation);
    assert_eq!(a2.partitions.len() + b2.partitions.len(), 12);
    assert!(
        a.partitions.iter().all(|p| a2.partitions.contains(p)),
        "sticky"
    );
    assert!(
        b.partitions.iter().all(|p| b2.partitions.contains(p)),
        "sticky"
    );
    // The zombie's late commit and heartbeat are fenced.
    let (tc, pc) = c.partitions[0].clone();
    let err = m
        .commit_offsets("billing", &c.member_id, c.generation, &[(tc, pc, 0)])
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "UNKNOWN_MEMBER",
                ..
            }
        ),
        "{err}"
    );
    assert!(matches!(
        m.heartbeat("billing", &c.member_id).await.unwrap_err(),
        MetaError::Fenced { .. }
    ));
    // The old generation of a is stale now.
    let err = m
        .commit_offsets(
            "billing",
            &a.member_id,
            a.generation,
            &[(ta.clone(), pa, 9)],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, MetaError::Fenced { .. }));

    let d = m.describe_group("billing").await.unwrap();
    assert_eq!(d.members.len(), 2);
    assert_eq!(d.generation, a2.generation);
    let lag = d.partitions.iter().find(|p| p.partition == pa).unwrap();
    assert_eq!(
        (lag.committed, lag.high_watermark, lag.lag),
        (Some(7), 10, 3)
    );
    assert_eq!(m.list_groups().await.unwrap(), ["billing"]);
    assert_eq!(
        m.committed_offsets("billing").await.unwrap(),
        [(ta.clone(), pa, 7)]
    );

    // Resets wait for an empty group.
    let err = m
        .reset_offsets("billing", "orders", OffsetReset::Earliest)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "GROUP_ACTIVE",
                ..
            }
        ),
        "{err}"
    );
    m.leave_group("billing", &a2.member_id).await.unwrap();
    let b3 = m.heartbeat("billing", &b2.member_id).await.unwrap();
    assert_eq!(b3.partitions.len(), 12, "the last member owns everything");
    m.leave_group("billing", &b3.member_id).await.unwrap();
    let reset = m
        .reset_offsets("billing", "orders", OffsetReset::Latest)
        .await
        .unwrap();
    assert_eq!(reset.len(), 12);
    assert!(reset.contains(&(ta.clone(), pa, 10)));
    let reset = m
        .reset_offsets("billing", "orders", OffsetReset::Timestamp(0))
        .await
        .unwrap();
    assert!(reset.contains(&(ta.clone(), pa, 0)));
    let reset = m
        .reset_offsets("billing", "orders", OffsetReset::To(99))
        .await
        .unwrap();
    assert!(
        reset.contains(&(ta, pa, 10)),
        "clamped to the high watermark"
    );
    assert!(matches!(
        m.describe_group("nobody").await.unwrap_err(),
        MetaError::GroupNotFound(_)
    ));
    assert_eq!(
        m.join_group("billing", None, &topics, 10)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        m.join_group("billing", None, &["nope".to_string()], 3_000)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );
}

/// Share groups: leases, acknowledgement, release, rejection, renewal, expiry with the
/// injected clock, redelivery counts, dead-lettering after max deliveries, the in-flight
/// bound, and precise refusals.
pub async fn share_groups(kv: Arc<dyn KvStore>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let m = Metadata::new(kv, clock.clone());
    let t = m.create_topic(&spec("tasks", 2)).await.unwrap();
    m.commit_segment(&segment("s1", &[(t.id, 0, 5), (t.id, 1, 5)]))
        .await
        .unwrap();
    let a = m
        .share_acquire("q", "alice", "tasks", 4, 1_000, 5)
        .await
        .unwrap();
    assert_eq!(a.records.len(), 4);
    assert!(a.records.iter().all(|r| r.2 == 1), "first deliveries");
    let b = m
        .share_acquire("q", "bob", "tasks", 100, 1_000, 5)
        .await
        .unwrap();
    assert_eq!(b.records.len(), 6, "bob gets the rest, never alice's");
    let mut all: Vec<(u32, i64)> = a
        .records
        .iter()
        .chain(&b.records)
        .map(|r| (r.0, r.1))
        .collect();
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 10);
    assert!(
        m.share_acquire("q", "carol", "tasks", 10, 1_000, 5)
            .await
            .unwrap()
            .records
            .is_empty()
    );

    // Alice acks two, releases one, rejects one.
    let (p, o) = (a.records[0].0, a.records[0].1);
    let offs: Vec<i64> = a.records.iter().filter(|r| r.0 == p).map(|r| r.1).collect();
    m.share_settle("q", "alice", "tasks", p, &offs[..1], ShareAction::Ack)
        .await
        .unwrap();
    // Not double-settled, and not by someone else.
    let err = m
        .share_settle("q", "alice", "tasks", p, &[o], ShareAction::Ack)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "NOT_HELD",
                ..
            }
        ),
        "{err}"
    );
    let (bp, bo) = (b.records[0].0, b.records[0].1);
    let err = m
        .share_settle("q", "alice", "tasks", bp, &[bo], ShareAction::Ack)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("not held by this consumer"),
        "{err}"
    );
    let err = m
        .share_settle("q", "alice", "tasks", 0, &[99], ShareAction::Ack)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("never delivered"), "{err}");
    // All or nothing: one bad offset leaves the good one held.
    assert!(
        m.share_settle("q", "bob", "tasks", bp, &[bo, 99], ShareAction::Ack)
            .await
            .is_err()
    );

    // Bob renews; time passes beyond the first lease: alice's unsettled records come back
    // with delivery count 2, bob's renewed ones stay his.
    let bob_offsets: Vec<(u32, i64)> = b.records.iter().map(|r| (r.0, r.1)).collect();
    for part in [0, 1] {
        let mine: Vec<i64> = bob_offsets
            .iter()
            .filter(|r| r.0 == part)
            .map(|r| r.1)
            .collect();
        if !mine.is_empty() {
            m.share_settle("q", "bob", "tasks", part, &mine, ShareAction::Renew(10_000))
                .await
                .unwrap();
        }
    }
    clock.advance(1_500);
    let err = m
        .share_settle(
            "q",
            "alice",
            "tasks",
            a.records[1].0,
            &[a.records[1].1],
            ShareAction::Ack,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "LEASE_EXPIRED",
                ..
            }
        ),
        "{err}"
    );
    let again = m
        .share_acquire("q", "carol", "tasks", 100, 1_000, 5)
        .await
        .unwrap();
    assert_eq!(
        again.records.len(),
        3,
        "alice's three unsettled records: {again:?}"
    );
    assert!(
        again.records.iter().all(|r| r.2 == 2),
        "second delivery: {again:?}"
    );
    // Carol acks everything she got, bob acks his.
    for part in [0, 1] {
        let mine: Vec<i64> = again
            .records
            .iter()
            .filter(|r| r.0 == part)
            .map(|r| r.1)
            .collect();
        if !mine.is_empty() {
            m.share_settle("q", "carol", "tasks", part, &mine, ShareAction::Ack)
                .await
                .unwrap();
        }
        let bobs: Vec<i64> = bob_offsets
            .iter()
            .filter(|r| r.0 == part)
            .map(|r| r.1)
            .collect();
        if !bobs.is_empty() {
            m.share_settle("q", "bob", "tasks", part, &bobs, ShareAction::Ack)
                .await
                .unwrap();
        }
    }
    let d = m.describe_share_group("q", "tasks").await.unwrap();
    assert!(
        d.iter().all(|p| p.start_offset == 5 && p.end_offset == 5),
        "{d:?}"
    );

    // A poison record: released 3 times, it is dead-lettered at the 4th acquisition when
    // max_deliveries is 3; rejecting sends it there at once.
    m.commit_segment(&segment("s2", &[(t.id, 0, 2)]))
        .await
        .unwrap();
    for round in 1..=3u32 {
        let got = m
            .share_acquire("q", "dave", "tasks", 1, 1_000, 3)
            .await
            .unwrap();
        assert_eq!(got.records, [(0, 5, round)]);
        m.share_settle("q", "dave", "tasks", 0, &[5], ShareAction::Release)
            .await
            .unwrap();
    }
    let got = m
        .share_acquire("q", "dave", "tasks", 1, 1_000, 3)
        .await
        .unwrap();
    assert_eq!(got.dead_letter, [(0, 5, 3)]);
    assert_eq!(got.records, [(0, 6, 1)]);
    m.share_settle("q", "dave", "tasks", 0, &[6], ShareAction::Reject)
        .await
        .unwrap();
    // Only the one it was handed to may settle the move.
    assert!(
        m.share_settle("q", "erin", "tasks", 0, &[5], ShareAction::DeadLettered)
            .await
            .is_err()
    );
    m.share_settle("q", "dave", "tasks", 0, &[5, 6], ShareAction::DeadLettered)
        .await
        .unwrap();
    let d = m.describe_share_group("q", "tasks").await.unwrap();
    assert_eq!((d[0].start_offset, d[0].end_offset), (7, 7), "{d:?}");
    assert!(
        m.share_acquire("q", "dave", "tasks", 10, 1_000, 3)
            .await
            .unwrap()
            .records
            .is_empty()
    );

    // The in-flight window is bounded.
    let big: Vec<(u64, u32, u32)> = vec![(t.id, 1, 5_000)];
    m.commit_segment(&segment("s3", &big)).await.unwrap();
    let got = m
        .share_acquire("q", "frank", "tasks", 10_000, 1_000, 5)
        .await
        .unwrap();
    assert_eq!(got.records.len() as i64, crate::SHARE_MAX_IN_FLIGHT);
    assert_eq!(m.list_share_groups().await.unwrap(), ["q"]);
    assert!(matches!(
        m.describe_share_group("nope", "tasks").await.unwrap_err(),
        MetaError::GroupNotFound(_)
    ));
}

/// Retention by time and size, delete_records, and collection of unreferenced objects
/// after a grace period (by the injected clock).
pub async fn lifecycle(kv: Arc<dyn KvStore>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let m = Metadata::new(kv, clock.clone());
    let mut timed = spec("timed", 1);
    timed.retention_ms = 60_000;
    let t = m.create_topic(&timed).await.unwrap();
    let keep = m.create_topic(&spec("keep", 1)).await.unwrap();
    // Three segments a minute apart; "shared" also holds a batch of the kept topic.
    for (i, key) in ["old", "shared", "new"].iter().enumerate() {
        let mut seg = segment(key, &[(t.id, 0, 10), (keep.id, 0, 1)]);
        for b in &mut seg.batches {
            b.min_timestamp_ms = crate::Clock::now_ms(clock.as_ref());
            b.max_timestamp_ms = crate::Clock::now_ms(clock.as_ref());
        }
        if i != 1 {
            seg.batches.pop();
        }
        m.commit_segment(&seg).await.unwrap();
        clock.advance(61_000);
    }
    // Now: "old" and "shared" are older than a minute, "new" is 61 s old too; advance less.
    let r = m.apply_retention("timed").await.unwrap();
    assert_eq!(r.entries_removed, 3);
    assert_eq!(r.moved, [(0, 30)]);
    let s = m.partition_state(t.id, 0).await.unwrap();
    assert_eq!(
        (s.start_offset, s.next_offset, s.bytes, s.index_entries),
        (30, 30, 0, 0)
    );
    assert_eq!(
        m.apply_retention("keep").await.unwrap(),
        crate::RetentionReport::default()
    );

    // Collection: "old" and "new" are unreferenced, "shared" still holds the kept topic.
    let grace = Duration::from_secs(600);
    let page = m.gc_scan("", grace).await.unwrap();
    assert_eq!(page.newly_dead, 2);
    assert!(
        page.deletable.is_empty(),
        "nothing is deleted before the grace period"
    );
    clock.advance(599_000);
    assert!(m.gc_scan("", grace).await.unwrap().deletable.is_empty());
    clock.advance(2_000);
    let mut page = m.gc_scan("", grace).await.unwrap();
    page.deletable.sort();
    assert_eq!(page.deletable, ["new", "old"]);
    for o in &page.deletable {
        m.forget_object(o).await.unwrap();
        m.forget_object(o).await.unwrap();
        assert!(!m.is_object_committed(o).await.unwrap());
    }
    assert!(m.is_object_committed("shared").await.unwrap());
    assert!(
        m.forget_object("shared").await.is_err(),
        "a referenced object stays"
    );

    // delete_records hides offsets and removes whole entries before them.
    let sized = m.create_topic(&spec("sized", 1)).await.unwrap();
    for i in 0..4 {
        m.commit_segment(&segment(&format!("z{i}"), &[(sized.id, 0, 5)]))
            .await
            .unwrap();
    }
    assert_eq!(m.delete_records("sized", 0, 12).await.unwrap(), 12);
    let s = m.partition_state(sized.id, 0).await.unwrap();
    assert_eq!((s.start_offset, s.index_entries, s.bytes), (12, 2, 200));
    let (_, entries) = m.read_index(sized.id, 0, 12, 10).await.unwrap();
    assert_eq!(
        entries[0].base_offset, 10,
        "the entry holding offset 12 stays"
    );
    assert_eq!(
        m.delete_records("sized", 0, 5).await.unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    assert_eq!(
        m.delete_records("sized", 0, 21).await.unwrap_err().kind(),
        ErrorKind::OutOfRange
    );
    // Size retention: keep at most 150 bytes (entries are 100 bytes each).
    let mut capped = spec("capped", 1);
    capped.retention_bytes = 150;
    let c = m.create_topic(&capped).await.unwrap();
    for i in 0..4 {
        m.commit_segment(&segment(&format!("c{i}"), &[(c.id, 0, 5)]))
            .await
            .unwrap();
    }
    let r = m.apply_retention("capped").await.unwrap();
    assert_eq!(r.entries_removed, 3);
    let s = m.partition_state(c.id, 0).await.unwrap();
    assert_eq!((s.start_offset, s.bytes), (15, 100));
    // Deleting a topic leaves its objects unreferenced.
    m.delete_topic("sized").await.unwrap();
    let page = m.gc_scan("", grace).await.unwrap();
    assert!(page.newly_dead >= 4, "{page:?}");
}

/// Compaction claims are exclusive while leased and fenced by token; a swap replaces exactly
/// the run it read, refuses if any entry changed, and leaves later entries alone.
pub async fn compaction(kv: Arc<dyn KvStore>) {
    let clock = Arc::new(ManualClock::new(1_000_000));
    let m = Metadata::new(kv, clock.clone());
    let t = m.create_topic(&spec("c", 2)).await.unwrap();
    for i in 0..4 {
        m.commit_segment(&segment(&format!("s{i}"), &[(t.id, 0, 10), (t.id, 1, 1)]))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let a = m
        .claim_compaction(t.id, 0, "a", lease)
        .await
        .unwrap()
        .unwrap();
    assert!(
        m.claim_compaction(t.id, 0, "b", lease)
            .await
            .unwrap()
            .is_none()
    );
    let b1 = m
        .claim_compaction(t.id, 1, "b", lease)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(a.token, b1.token);
    let (_, run) = m.read_index(t.id, 0, 0, 10).await.unwrap();
    assert_eq!(run.len(), 4);
    // A produce lands after the run was read: it is not covered and stays.
    m.commit_segment(&segment("late", &[(t.id, 0, 5)]))
        .await
        .unwrap();
    let file = crate::CompactedFile {
        object_key: "p0".into(),
        size: 150,
        row_groups: 1,
        min_timestamp_ms: 1,
        max_timestamp_ms: 2,
    };
    // Only the first three: swap them.
    m.swap_compacted(a, &run[..3], &file).await.unwrap();
    let (state, entries) = m.read_index(t.id, 0, 0, 10).await.unwrap();
    assert_eq!(
        entries
            .iter()
            .map(|e| (e.base_offset, e.end_offset, e.kind, e.object_key.as_str()))
            .collect::<Vec<_>>(),
        [
            (0, 30, crate::EntryKind::Parquet, "p0"),
            (30, 40, crate::EntryKind::Segment, "s3"),
            (40, 45, crate::EntryKind::Segment, "late"),
        ]
    );
    assert_eq!(
        (state.index_entries, state.bytes, state.next_offset),
        (3, 350, 45)
    );
    assert!(m.is_object_committed("p0").await.unwrap());
    // Swapping the same run again is a conflict: it changed (it is gone).
    let err = m.swap_compacted(a, &run[..3], &file).await.unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "COMPACTION_CONFLICT",
                ..
            }
        ),
        "{err}"
    );
    // After the lease, another owner takes over; the old token is fenced.
    clock.advance(61_000);
    let b = m
        .claim_compaction(t.id, 0, "b", lease)
        .await
        .unwrap()
        .unwrap();
    let err = m.swap_compacted(a, &run[3..], &file).await.unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "CLAIM_LOST",
                ..
            }
        ),
        "{err}"
    );
    // Retention removes an entry under a compaction: the swap refuses.
    m.delete_records("c", 0, 40).await.unwrap();
    let err = m.swap_compacted(b, &run[3..], &file).await.unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: "COMPACTION_CONFLICT",
                ..
            }
        ),
        "{err}"
    );
    m.release_compaction(b).await.unwrap();
    m.release_compaction(a).await.unwrap();
    assert!(
        m.claim_compaction(t.id, 0, "c", lease)
            .await
            .unwrap()
            .is_some()
    );
    // Segments s0..s3 still hold partition 1; the file "p0" was removed by delete_records.
    let page = m.gc_scan("", Duration::from_secs(600)).await.unwrap();
    assert_eq!(page.newly_dead, 1, "{page:?}");
    assert!(m.forget_object("p0").await.is_ok());
    assert!(
        m.forget_object("s0").await.is_err(),
        "s0 still holds partition 1"
    );
    let (_, run1) = m.read_index(t.id, 1, 0, 10).await.unwrap();
    m.delete_topic("c").await.unwrap();
    let err = m.swap_compacted(b1, &run1, &file).await.unwrap_err();
    assert!(matches!(err, MetaError::Fenced { .. }), "{err}");
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
    idempotent_producers(fresh().await).await;
    conditional_appends(fresh().await).await;
    atomic_groups(fresh().await).await;
    producer_expiry(fresh().await).await;
    consumer_groups(fresh().await).await;
    share_groups(fresh().await).await;
    lifecycle(fresh().await).await;
    compaction(fresh().await).await;
}
