//! Conformance of idempotent producers: ids, epochs and fencing, the per-partition window
//! that recognises retries, and the expiry that bounds producer state.

use super::*;

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
