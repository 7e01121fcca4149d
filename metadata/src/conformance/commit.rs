//! Conformance of segment commits: dense offsets, index entries, idempotent reruns, faults,
//! size limits, concurrency, long-polls, conditional appends and atomic groups.

use super::*;

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

/// Byte and entry counts are atomic counters; a partition written before they existed (its
/// counts inside the position value) keeps its totals, and the first writer folds them into
/// the counters exactly once.
pub async fn legacy_partition_counts(kv: Arc<dyn KvStore>) {
    let m = metadata(kv.clone());
    let t = m.create_topic(&spec("old", 2)).await.unwrap();
    // As the previous layout stored it: start 0, next 10, 1000 bytes, 2 entries.
    let tx = kv.begin().await.unwrap();
    tx.set(
        &crate::keys::partition(t.id, 0),
        &crate::keys::value(&(0i64, 10i64, 1_000u64, 2u64)),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let s = m.partition_state(t.id, 0).await.unwrap();
    assert_eq!((s.next_offset, s.bytes, s.index_entries), (10, 1_000, 2));

    m.commit_segment(&segment("n1", &[(t.id, 0, 5), (t.id, 1, 1)]))
        .await
        .unwrap();
    m.commit_segment(&segment("n2", &[(t.id, 0, 5)]))
        .await
        .unwrap();
    let states = m.partition_states(&t).await.unwrap();
    assert_eq!(
        (
            states[0].next_offset,
            states[0].bytes,
            states[0].index_entries
        ),
        (20, 1_200, 4),
        "legacy counts plus two commits, counted once"
    );
    assert_eq!((states[1].bytes, states[1].index_entries), (100, 1));
    assert_eq!(m.partition_state(t.id, 0).await.unwrap(), states[0]);
    let tx = kv.begin().await.unwrap();
    let v = tx
        .get(&crate::keys::partition(t.id, 0))
        .await
        .unwrap()
        .unwrap();
    let folded: (i64, i64, u64, u64) = crate::keys::decode("partition", &v).unwrap();
    assert_eq!(
        folded,
        (0, 20, 0, 0),
        "the legacy counts moved to the counters"
    );
    drop(tx);
    // delete_records takes the removed entries off the counters.
    let (_, entries) = m.read_index(t.id, 0, 10, 10).await.unwrap();
    m.delete_records("old", 0, entries[0].end_offset)
        .await
        .unwrap();
    let s = m.partition_state(t.id, 0).await.unwrap();
    assert_eq!((s.start_offset, s.bytes, s.index_entries), (15, 1_100, 3));
}
