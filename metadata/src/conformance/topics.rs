//! Conformance of topic administration: create, list, delete, re-create with a fresh id,
//! add partitions, and the error kinds callers map to statuses.

use super::*;

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
