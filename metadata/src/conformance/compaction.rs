//! Conformance of compaction in metadata: exclusive, fenced claims and the swap that
//! replaces exactly the run a compactor read.

use super::*;

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
        first_offset: run[0].base_offset,
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
    assert_fenced(&err, FenceReason::CompactionConflict);
    // After the lease, another owner takes over; the old token is fenced.
    clock.advance(61_000);
    let b = m
        .claim_compaction(t.id, 0, "b", lease)
        .await
        .unwrap()
        .unwrap();
    let rest = crate::CompactedFile {
        first_offset: run[3].base_offset,
        ..file.clone()
    };
    let err = m.swap_compacted(a, &run[3..], &rest).await.unwrap_err();
    assert_fenced(&err, FenceReason::ClaimLost);
    // A file must start within the run it replaces.
    for first_offset in [run[3].base_offset - 1, run[3].end_offset] {
        let outside = crate::CompactedFile {
            first_offset,
            ..file.clone()
        };
        let err = m.swap_compacted(b, &run[3..], &outside).await.unwrap_err();
        assert!(matches!(err, MetaError::InvalidArgument(_)), "{err}");
    }
    // Retention removes an entry under a compaction: the swap refuses.
    m.delete_records("c", 0, 40).await.unwrap();
    let err = m.swap_compacted(b, &run[3..], &rest).await.unwrap_err();
    assert_fenced(&err, FenceReason::CompactionConflict);
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
    let file1 = crate::CompactedFile {
        first_offset: run1[0].base_offset,
        ..file.clone()
    };
    let err = m.swap_compacted(b1, &run1, &file1).await.unwrap_err();
    assert!(matches!(err, MetaError::Fenced { .. }), "{err}");
}
