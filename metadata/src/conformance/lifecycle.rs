//! Conformance of the object lifecycle: retention by time and size, `delete_records`, and
//! collection of unreferenced objects after a grace period.

use super::*;

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
