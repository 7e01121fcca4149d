//! Conformance of consumer groups (stream mode): sticky assignment, session expiry,
//! generation fencing, committed offsets, lag and resets.

use super::*;

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
    assert_fenced(&err, FenceReason::StaleGeneration);
    let (tb, pb) = b.partitions[0].clone();
    let err = m
        .commit_offsets("billing", &a.member_id, a.generation, &[(tb, pb, 0)])
        .await
        .unwrap_err();
    assert_fenced(&err, FenceReason::NotAssigned);
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
    assert_fenced(&err, FenceReason::UnknownMember);
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
    assert_fenced(&err, FenceReason::GroupActive);
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
    // The first entry with a record at or after a time; the agent reads it for the record.
    let (state, entry) = m.entry_for_time(t.id, pa, 0, 0).await.unwrap();
    assert_eq!(state.next_offset, 10);
    assert_eq!(entry.map(|e| e.base_offset), Some(0));
    let (_, entry) = m.entry_for_time(t.id, pa, 0, i64::MAX).await.unwrap();
    assert!(entry.is_none(), "nothing that recent");
    let mut offsets = vec![0; 12];
    offsets[pa as usize] = 4;
    let empty = (pa + 1) % 12;
    offsets[empty as usize] = -3;
    let reset = m
        .reset_offsets("billing", "orders", OffsetReset::PerPartition(offsets))
        .await
        .unwrap();
    assert!(reset.contains(&(ta.clone(), pa, 4)));
    assert!(
        reset.contains(&(ta.clone(), empty, 0)),
        "clamped to the start"
    );
    let err = m
        .reset_offsets("billing", "orders", OffsetReset::PerPartition(vec![0; 3]))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
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
    // Negative offsets are invalid arguments (the table in ARCHITECTURE), not out of range.
    let err = m
        .commit_offsets("billing", "member-1", 1, &[("orders".to_string(), pa, -5)])
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    let err = m.delete_records("orders", pa, -5).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    // An id the group never issued is refused, not taken as a new member.
    let before = m.describe_group("billing").await.unwrap().members.len();
    let err = m
        .join_group("billing", Some("member-999999"), &topics, 3_000)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MetaError::Fenced {
                reason: crate::FenceReason::UnknownMember,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        m.describe_group("billing").await.unwrap().members.len(),
        before
    );

    // A member named by its client (KIP-848's UUIDs) joins under that name, once.
    let named = m
        .join_group_as("named", "client-uuid-1", &topics, 3_000)
        .await
        .unwrap();
    assert_eq!(named.member_id, "client-uuid-1");
    assert_eq!(named.partitions.len(), 12);
    let again = m
        .join_group_as("named", "client-uuid-1", &topics, 3_000)
        .await
        .unwrap();
    assert_eq!(
        (again.member_id.as_str(), again.generation),
        ("client-uuid-1", named.generation)
    );
    assert_eq!(
        m.join_group_as("named", "", &topics, 3_000)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    m.leave_group("named", "client-uuid-1").await.unwrap();
    // join_group still refuses ids the group never issued.
    assert!(
        m.join_group("named", Some("client-uuid-2"), &topics, 3_000)
            .await
            .is_err()
    );
}
