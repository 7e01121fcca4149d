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

    // Settings change in place; what is not named stays; bad values are refused.
    let changed = m
        .alter_topic_config(
            "orders",
            &TopicConfigChange {
                retention_ms: Some(60_000),
                codec: Some(Codec::Lz4),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!((changed.retention_ms, changed.codec), (60_000, Codec::Lz4));
    assert_eq!(changed.retention_bytes, b.retention_bytes);
    assert_eq!(m.topic("orders").await.unwrap(), changed);
    let bad = TopicConfigChange {
        retention_bytes: Some(0),
        ..Default::default()
    };
    assert_eq!(
        m.alter_topic_config("orders", &bad)
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::Invalid
    );
    assert_eq!(
        m.alter_topic_config("nope", &TopicConfigChange::default())
            .await
            .unwrap_err()
            .kind(),
        ErrorKind::NotFound
    );

    // Value schemas: columns accumulate in declaration order, keep their type, and stay
    // when a later schema leaves them out.
    let col = |name: &str, kind: &str| TopicColumn {
        name: name.into(),
        kind: kind.into(),
    };
    let schema = |text: &str, columns: Vec<TopicColumn>| ValueSchema {
        text: text.into(),
        columns,
    };
    let mut typed = spec("typed", 1);
    typed.value_schema = Some(schema(
        "v1",
        vec![col("amount", "number"), col("who", "string")],
    ));
    let t = m.create_topic(&typed).await.unwrap();
    assert_eq!(
        t.value_columns,
        [col("amount", "number"), col("who", "string")]
    );
    assert_eq!(
        m.topic("typed").await.unwrap().value_schema.as_deref(),
        Some("v1")
    );
    let v2 = schema("v2", vec![col("paid", "boolean"), col("amount", "number")]);
    let t = m.set_value_schema("typed", &v2).await.unwrap();
    assert_eq!(
        t.value_columns,
        [
            col("amount", "number"),
            col("who", "string"),
            col("paid", "boolean")
        ]
    );
    assert_eq!(t.value_schema.as_deref(), Some("v2"));
    // Idempotent, as a retry after a lost reply is.
    assert_eq!(m.set_value_schema("typed", &v2).await.unwrap(), t);
    for bad in [
        schema("v3", vec![col("amount", "string")]),
        schema("v3", vec![col("AMOUNT", "number")]),
        schema("v3", vec![col("x", "date")]),
        schema("v3", vec![]),
    ] {
        let err = m.set_value_schema("typed", &bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{bad:?}: {err}");
    }
    assert_eq!(
        m.topic("typed").await.unwrap(),
        t,
        "a refused schema changes nothing"
    );
    assert_eq!(
        m.set_value_schema("nope", &v2).await.unwrap_err().kind(),
        ErrorKind::NotFound
    );
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
