//! Conformance of the transactional-KV trait itself: reads, writes, rollback, FoundationDB's
//! limits and serializable retries, the same on every backend.

use super::*;

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

/// Atomic adds mixed with the transaction's other writes to the same keys, read back in
/// the transaction and after it; adds wrap around like FoundationDB's.
pub async fn kv_atomic_add(kv: Arc<dyn KvStore>) {
    let n = |v: i64| Some(v.to_le_bytes().to_vec());
    let tx = kv.begin().await.unwrap();
    for k in [&b"base"[..], b"r1", b"r2", b"max"] {
        tx.set(k, &10i64.to_le_bytes()).await.unwrap();
    }
    tx.set(b"max", &i64::MAX.to_le_bytes()).await.unwrap();
    tx.commit().await.unwrap();

    let tx = kv.begin().await.unwrap();
    tx.atomic_add(b"base", 5).await.unwrap(); // stored 10, then +5
    tx.atomic_add(b"base", -1).await.unwrap();
    tx.atomic_add(b"fresh", 7).await.unwrap(); // absent counts as 0
    tx.set(b"set_then_add", &100i64.to_le_bytes())
        .await
        .unwrap();
    tx.atomic_add(b"set_then_add", 1).await.unwrap();
    tx.atomic_add(b"add_then_set", 1).await.unwrap();
    tx.set(b"add_then_set", &50i64.to_le_bytes()).await.unwrap();
    tx.atomic_add(b"add_then_clear", 1).await.unwrap();
    tx.clear(b"add_then_clear").await.unwrap();
    tx.clear(b"r1").await.unwrap(); // stored 10, cleared, then +3
    tx.atomic_add(b"r1", 3).await.unwrap();
    tx.clear_range(b"r2", b"r3").await.unwrap(); // stored 10, range-cleared, then +4
    tx.atomic_add(b"r2", 4).await.unwrap();
    tx.atomic_add(b"s1", 9).await.unwrap(); // added, then range-cleared
    tx.clear_range(b"s0", b"s2").await.unwrap();
    tx.atomic_add(b"max", 1).await.unwrap(); // wraps
    // Read-your-writes, point and range.
    assert_eq!(tx.get(b"base").await.unwrap(), n(14));
    tx.atomic_add(b"base", 1).await.unwrap();
    let expected = [
        (&b"add_then_set"[..], n(50)),
        (b"base", n(15)),
        (b"fresh", n(7)),
        (b"max", n(i64::MIN)),
        (b"r1", n(3)),
        (b"r2", n(4)),
        (b"set_then_add", n(101)),
    ];
    let read: Vec<(Vec<u8>, Option<Vec<u8>>)> = tx
        .get_range(b"a", b"z", 100, false)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    let want: Vec<(Vec<u8>, Option<Vec<u8>>)> = expected
        .iter()
        .map(|(k, v)| (k.to_vec(), v.clone()))
        .collect();
    assert_eq!(read, want);
    tx.atomic_add(b"fresh", 1).await.unwrap();
    tx.commit().await.unwrap();

    let tx = kv.begin().await.unwrap();
    assert_eq!(tx.get(b"fresh").await.unwrap(), n(8));
    assert_eq!(tx.get(b"base").await.unwrap(), n(15));
    assert_eq!(tx.get(b"add_then_clear").await.unwrap(), None);
    assert_eq!(tx.get(b"s1").await.unwrap(), None);
    assert_eq!(tx.get(b"max").await.unwrap(), n(i64::MIN));
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
        Some((i, e)) => panic!("expected TransactionTooLarge near 10 MB, got at write {i}: {e}"),
        None => panic!("expected TransactionTooLarge near 10 MB, but every write fit"),
    }
    drop(tx);
    // Nothing of the refused transaction is visible (its keys are 0..120 big-endian).
    let tx = kv.begin().await.unwrap();
    assert!(
        tx.get_range(b"\0\0\0\0", b"\0\0\x01\0", 10, false)
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
                transact(kv.as_ref(), &policy, "increment", |tx, _| async move {
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
