//! Runs the metadata conformance suite against every backend present: memory, SQLite and
//! PostgreSQL (a throwaway server this test starts) always, FoundationDB when built with `--features fdb` and `CAIRN_FDB_CLUSTER_FILE` is set.

#![allow(clippy::expect_used)]

use std::sync::Arc;

use cairn_metadata::{KvStore, Limits, MemoryKv, PostgresKv, SqliteKv, conformance};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_backend_conforms() {
    conformance::run_all(|| async {
        Arc::new(MemoryKv::new(Limits::default())) as Arc<dyn KvStore>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_backend_conforms() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let mut n = 0;
    let root = dir.path().to_path_buf();
    conformance::run_all(|| {
        n += 1;
        let path = root.join(format!("meta-{n}.sqlite"));
        async move {
            Arc::new(SqliteKv::open(path, Limits::default()).expect("open sqlite"))
                as Arc<dyn KvStore>
        }
    })
    .await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_backend_conforms() -> Result<(), Box<dyn std::error::Error>> {
    let pg = conformance::TempPostgres::start()?;
    let mut n = 0;
    let pg = &pg;
    conformance::run_all(|| {
        n += 1;
        let db = format!("conformance_{n}");
        async move {
            let url = pg.create_database(&db).await.expect("create a database");
            Arc::new(
                PostgresKv::open(&url, Limits::default())
                    .await
                    .expect("open postgres"),
            ) as Arc<dyn KvStore>
        }
    })
    .await;
    Ok(())
}

/// Two SQLite handles on one file behave like two agent processes sharing it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_file_shared_by_two_handles() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("shared.sqlite");
    let a: Arc<dyn KvStore> = Arc::new(SqliteKv::open(&path, Limits::default())?);
    let b: Arc<dyn KvStore> = Arc::new(SqliteKv::open(&path, Limits::default())?);
    let clock = Arc::new(cairn_metadata::SystemClock);
    let ma = cairn_metadata::Metadata::new(a, clock.clone());
    let mb = cairn_metadata::Metadata::new(b, clock);
    let t = ma.create_topic(&conformance::spec("shared", 1)).await?;
    let ta = {
        let ma = ma.clone();
        tokio::spawn(async move {
            for i in 0..20 {
                ma.commit_segment(&conformance::segment(&format!("a{i}"), &[(t.id, 0, 1)]))
                    .await?;
            }
            Ok::<_, cairn_metadata::MetaError>(())
        })
    };
    for i in 0..20 {
        mb.commit_segment(&conformance::segment(&format!("b{i}"), &[(t.id, 0, 1)]))
            .await?;
    }
    ta.await??;
    assert_eq!(mb.partition_state(t.id, 0).await?.next_offset, 40);
    let (_, entries) = ma.read_index(t.id, 0, 0, 100).await?;
    let mut expect = 0;
    for e in &entries {
        assert_eq!(e.base_offset, expect);
        expect = e.end_offset;
    }
    assert_eq!(expect, 40);
    Ok(())
}

#[cfg(feature = "fdb")]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fdb_backend_conforms() {
    let Ok(cluster) = std::env::var("CAIRN_FDB_CLUSTER_FILE") else {
        eprintln!("CAIRN_FDB_CLUSTER_FILE not set: no FoundationDB cluster to test against");
        return;
    };
    let kv = Arc::new(cairn_metadata::FdbKv::open(&cluster).expect("open fdb"));
    conformance::run_all(|| {
        let kv = kv.clone();
        async move {
            kv.clear_all_for_tests()
                .await
                .expect("clear fdb test keyspace");
            kv as Arc<dyn KvStore>
        }
    })
    .await;
}

/// A SQLite file damaged under a running store: the first operation that meets the damage
/// is refused as DATA_LOSS, and from then on every operation of that `Metadata` is (the
/// agent's readiness and writes stop); opening the damaged file is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_sqlite_store_stops_every_operation() -> Result<(), Box<dyn std::error::Error>> {
    use cairn_metadata::{ErrorKind, KvError, Metadata, SystemClock};
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("meta.sqlite");
    let spec = format!("sqlite:{}", path.display());
    let m = Metadata::new(cairn_metadata::open_kv(&spec).await?, Arc::new(SystemClock));
    // Enough topics that the table spans many pages.
    for i in 0..300 {
        m.create_topic(&conformance::spec(&format!("topic-{i:03}"), 1))
            .await?;
    }
    drop(m);
    let good = std::fs::read(&path)?;
    assert!(good.len() > 16 * 4096, "{} bytes", good.len());
    // Opened while the file is sound; then every page after the first two is overwritten
    // under it: SQLite calls the file malformed when it reads one.
    let kv: Arc<dyn KvStore> = Arc::new(SqliteKv::open(&path, Limits::default())?);
    let m = Metadata::new(kv, Arc::new(SystemClock));
    let mut bad = good.clone();
    for b in bad.iter_mut().skip(2 * 4096) {
        *b = 0xA5;
    }
    std::fs::write(&path, &bad)?;
    let err = m
        .topic("topic-150")
        .await
        .expect_err("a malformed database is not read as data");
    assert_eq!(err.kind(), ErrorKind::Data, "{err}");
    assert!(
        err.to_string().contains("metadata store is damaged"),
        "{err}"
    );
    assert!(matches!(m.damaged(), Some(KvError::Damaged { .. })));
    let write = m
        .create_topic(&conformance::spec("after", 1))
        .await
        .expect_err("a damaged store takes no writes");
    assert_eq!(write.kind(), ErrorKind::Data, "{write}");
    // Once damaged, always refused by this process, even if the bytes look fine again: a
    // restore is an operator's act, followed by a restart.
    std::fs::write(&path, &good)?;
    let again = m.topic("topic-001").await.expect_err("still refused");
    assert_eq!(again.kind(), ErrorKind::Data, "{again}");
    // A fresh open of the damaged bytes is refused at once, naming the damage.
    std::fs::write(&path, &bad)?;
    let Err(open) = cairn_metadata::open_kv(&spec).await else {
        panic!("a damaged file must be refused at open")
    };
    assert_eq!(open.kind(), ErrorKind::Data, "{open}");
    Ok(())
}

/// Format marker: a new file is marked, an existing empty one refused unless `init`, a
/// store with keys from before the marker accepted and marked, a foreign format refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_stores_carry_a_format_marker() -> Result<(), Box<dyn std::error::Error>> {
    use cairn_metadata::{ErrorKind, OpenOptions, open_kv, open_kv_with};
    let dir = tempfile::tempdir()?;
    let spec = |name: &str| format!("sqlite:{}", dir.path().join(name).display());

    // New: created, marked, reopened without options.
    open_kv(&spec("new.sqlite")).await?;
    open_kv(&spec("new.sqlite")).await?;

    // A 0-byte file: refused, then taken with init, then fine without.
    std::fs::write(dir.path().join("empty.sqlite"), b"")?;
    let Err(err) = open_kv(&spec("empty.sqlite")).await else {
        panic!("an empty existing file must be refused")
    };
    assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
    assert!(err.to_string().contains("--init"), "{err}");
    open_kv_with(&spec("empty.sqlite"), OpenOptions { init: true }).await?;
    open_kv(&spec("empty.sqlite")).await?;

    // Written before markers existed: a store with keys but no marker.
    let legacy = dir.path().join("legacy.sqlite");
    {
        let kv: Arc<dyn KvStore> = Arc::new(SqliteKv::open(&legacy, Limits::default())?);
        let tx = kv.begin().await?;
        // The marker this open wrote goes, as in an old store; a topic-like key stays.
        let all = tx.get_range(b"", b"\xff\xff", 10, false).await?;
        assert_eq!(all.len(), 1, "only the marker: {all:?}");
        tx.clear(&all[0].0).await?;
        tx.set(b"\x02old\x00", b"data").await?;
        tx.commit().await?;
        let kv = open_kv(&spec("legacy.sqlite")).await?;
        let tx = kv.begin().await?;
        assert_eq!(
            tx.get_range(b"", b"\xff\xff", 10, false).await?.len(),
            2,
            "marked"
        );
        // A marker of another format is refused.
        tx.set(&all[0].0, b"cairn-metadata 99").await?;
        tx.commit().await?;
    }
    let Err(err) = open_kv(&spec("legacy.sqlite")).await else {
        panic!("a foreign format must be refused")
    };
    assert!(err.to_string().contains("cairn-metadata 99"), "{err}");
    Ok(())
}
