//! The PostgreSQL backend's own failure modes, against a throwaway server: a malformed URL,
//! a database that does not exist, a server that is down. (The conformance suite runs on it
//! in `conformance.rs`.)

#![allow(clippy::expect_used)]

use cairn_metadata::{ErrorKind, KvStore, Limits, PostgresKv, conformance::TempPostgres, open_kv};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_urls_missing_databases_and_a_stopped_server_answer_clearly()
-> Result<(), Box<dyn std::error::Error>> {
    let garbage = open_kv("postgres://cairn@127.0.0.1:notaport/db")
        .await
        .expect_err("a malformed URL is refused");
    assert_eq!(garbage.kind(), ErrorKind::Invalid, "{garbage}");
    assert!(
        garbage.to_string().contains("bad PostgreSQL URL"),
        "{garbage}"
    );

    let pg = TempPostgres::start()?;
    let missing = PostgresKv::open(&pg.url("no_such_db"), Limits::default())
        .await
        .expect_err("a missing database is refused");
    assert_eq!(missing.kind(), ErrorKind::Invalid, "{missing}");
    assert!(missing.to_string().contains("no_such_db"), "{missing}");

    let url = pg.create_database("faults").await?;
    let kv = PostgresKv::open(&url, Limits::default()).await?;
    let tx = kv.begin().await?;
    tx.set(b"k", b"v").await?;
    tx.commit().await?;

    // The server goes away: new transactions are UNAVAILABLE (retryable), not errors
    // that need a person, and opening a store says the same.
    pg.stop()?;
    let err = match kv.begin().await {
        Ok(tx) => tx.get(b"k").await.expect_err("the server is down"),
        Err(e) => e,
    };
    assert!(err.is_retryable(), "{err}");
    let down = PostgresKv::open(&url, Limits::default())
        .await
        .expect_err("nobody listens");
    assert_eq!(down.kind(), ErrorKind::Unavailable, "{down}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_writes_are_read_back_and_cleared_ranges_stay_clear()
-> Result<(), Box<dyn std::error::Error>> {
    let pg = TempPostgres::start()?;
    let kv = PostgresKv::open(&pg.create_database("overlay").await?, Limits::default()).await?;
    let tx = kv.begin().await?;
    for k in [b"a1", b"a2", b"a3", b"b1"] {
        tx.set(k, b"old").await?;
    }
    tx.commit().await?;

    let tx = kv.begin().await?;
    tx.set(b"a2", b"new").await?;
    assert_eq!(tx.get(b"a2").await?.as_deref(), Some(&b"new"[..]));
    tx.clear_range(b"a", b"b").await?;
    assert_eq!(tx.get(b"a1").await?, None, "cleared by the pending range");
    assert_eq!(
        tx.get(b"a2").await?,
        None,
        "a write before the clear is void"
    );
    tx.set(b"a3", b"after").await?;
    assert_eq!(tx.get(b"a3").await?.as_deref(), Some(&b"after"[..]));
    tx.atomic_add(b"n", 5).await?;
    tx.atomic_add(b"n", -2).await?;
    let range = tx.get_range(b"a", b"c", 10, false).await?;
    let keys: Vec<&[u8]> = range.iter().map(|(k, _)| k.as_slice()).collect();
    assert_eq!(keys, [&b"a3"[..], &b"b1"[..]]);
    tx.commit().await?;

    let tx = kv.begin().await?;
    assert_eq!(tx.get(b"a3").await?.as_deref(), Some(&b"after"[..]));
    assert_eq!(tx.get(b"a1").await?, None);
    assert_eq!(
        tx.get(b"n").await?.as_deref(),
        Some(&3i64.to_le_bytes()[..])
    );
    Ok(())
}

/// Agents starting together on a new database all open it: the race to create the table is
/// not an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_agents_opening_a_new_database_at_once_all_succeed()
-> Result<(), Box<dyn std::error::Error>> {
    let pg = TempPostgres::start()?;
    for round in 0..10 {
        let url = pg.create_database(&format!("race_{round}")).await?;
        let opens: Vec<_> = (0..16)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { PostgresKv::open(&url, Limits::default()).await })
            })
            .collect();
        for opened in futures::future::join_all(opens).await {
            opened??;
        }
    }
    Ok(())
}
