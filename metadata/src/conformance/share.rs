//! Conformance of share groups (queue mode): leases, settling, redelivery counts,
//! dead-lettering and the in-flight bound.

use super::*;

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
    assert_fenced(&err, FenceReason::NotHeld);
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
    assert_fenced(&err, FenceReason::LeaseExpired);
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
