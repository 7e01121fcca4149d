//! The SQLite backend, Cairn's embedded default: one file in WAL mode that several agent
//! processes on one host may share.
//!
//! A transaction is a deferred SQLite transaction: its first read pins a WAL snapshot and
//! writes go straight into it (so the transaction reads its own writes). Its first write
//! takes SQLite's write lock; if another connection committed since the snapshot was taken,
//! SQLite refuses with `SQLITE_BUSY_SNAPSHOT`, which we report as a retryable conflict. That
//! makes every committed transaction serializable, like FoundationDB's optimistic commits,
//! at the price of treating any concurrent commit as a conflict. Commits are fsynced
//! (`synchronous = FULL`), so an acknowledged commit survives a power cut.
//!
//! At most [`MAX_CONNECTIONS`] connections are open per handle, reused from a pool; a
//! transaction beyond that waits for one. Connections are never opened and closed per
//! transaction: SQLite on Unix cannot close a file descriptor while another connection of
//! the process holds a lock on the file (closing would drop that lock), so it parks the
//! descriptor until the file is unlocked, which on a busy file is never — a burst of
//! 5,000 concurrent reads used to leave 5,000 descriptors open.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, ErrorCode, OptionalExtension, params};

use crate::error::Cause;
use crate::kv::{KeyValue, KvStore, KvTransaction};
use crate::limits::LimitTracker;
use crate::{KvError, Limits, MetaError};

/// The backend's name in errors and logs.
const NAME: &str = "sqlite";

/// Most connections (so transactions) open at once per handle.
pub(crate) const MAX_CONNECTIONS: usize = 32;

/// The database file cannot be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot open {}: {source}", .path.display())]
struct OpenFailed {
    path: PathBuf,
    #[source]
    source: rusqlite::Error,
}

/// A SQLite-file [`KvStore`].
#[derive(Debug, Clone)]
pub struct SqliteKv {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
    /// One permit per connection that may be open.
    permits: Arc<tokio::sync::Semaphore>,
    limits: Limits,
}

fn map_err(e: rusqlite::Error) -> KvError {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => KvError::conflict(NAME, e),
        Some(ErrorCode::DatabaseCorrupt | ErrorCode::NotADatabase) => KvError::damaged(NAME, e),
        Some(ErrorCode::DiskFull | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => {
            KvError::unavailable(NAME, e)
        }
        _ => KvError::backend(NAME, e),
    }
}

impl SqliteKv {
    /// Opens (creating if needed) the database file at `path`, and its parent directory.
    pub fn open(path: impl AsRef<Path>, limits: Limits) -> Result<Self, MetaError> {
        let path = path.as_ref().to_path_buf();
        if path.is_dir() {
            return Err(MetaError::InvalidArgument(format!(
                "the SQLite metadata file {} is a directory: name a file (e.g. {})",
                path.display(),
                path.join("meta.sqlite").display()
            )));
        }
        if let Some(parent) = path.parent()
            && !parent.as_os_str().is_empty()
        {
            std::fs::create_dir_all(parent).map_err(|source| MetaError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        // A file this call creates is a new store, marked as Cairn's with its table; an
        // existing file must carry the mark already (see `open_kv`).
        let new = !path.exists();
        let kv = SqliteKv {
            path,
            pool: Arc::new(Mutex::new(Vec::new())),
            permits: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            limits,
        };
        let conn = kv.connect()?;
        let created = (|| {
            conn.execute_batch(
                "BEGIN IMMEDIATE; \
                 CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL) WITHOUT ROWID;",
            )?;
            if new {
                conn.execute(
                    "INSERT OR IGNORE INTO kv (k, v) VALUES (?1, ?2)",
                    rusqlite::params![crate::keys::format_marker(), crate::keys::FORMAT],
                )?;
            }
            conn.execute_batch("COMMIT;")
        })();
        created.map_err(|e| MetaError::Kv(map_err(e)))?;
        kv.give_back(conn);
        Ok(kv)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn connect(&self) -> Result<Connection, KvError> {
        let conn = Connection::open(&self.path).map_err(|source| {
            KvError::unavailable(
                NAME,
                OpenFailed {
                    path: self.path.clone(),
                    source,
                },
            )
        })?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(map_err)?;
        // journal_mode returns a row, so it is queried rather than executed.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(map_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(KvError::backend(
                NAME,
                Cause(format!(
                    "{} cannot use WAL mode (the journal mode is {mode})",
                    self.path.display()
                )),
            ));
        }
        conn.execute_batch("PRAGMA synchronous = FULL;")
            .map_err(map_err)?;
        Ok(conn)
    }

    fn take(&self) -> Result<Connection, KvError> {
        let pooled = self.pool.lock().ok().and_then(|mut p| p.pop());
        match pooled {
            Some(c) => Ok(c),
            None => self.connect(),
        }
    }

    fn give_back(&self, conn: Connection) {
        if let Ok(mut p) = self.pool.lock()
            && p.len() < MAX_CONNECTIONS
        {
            p.push(conn);
        }
    }
}

#[async_trait]
impl KvStore for SqliteKv {
    async fn begin(&self) -> Result<Box<dyn KvTransaction>, KvError> {
        // The semaphore is never closed, so acquiring fails only if it were.
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| KvError::backend(NAME, e))?;
        let store = self.clone();
        let conn = tokio::task::spawn_blocking(move || store.take())
            .await
            .map_err(|e| KvError::backend(NAME, e))??;
        Ok(Box::new(SqliteTxn {
            state: Arc::new(Mutex::new(Some(TxnState {
                conn,
                open: false,
                done: false,
            }))),
            store: self.clone(),
            tracker: LimitTracker::new(self.limits),
            _permit: permit,
        }))
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

struct TxnState {
    conn: Connection,
    /// A SQLite transaction is open on `conn`.
    open: bool,
    /// Committed or failed: no further use.
    done: bool,
}

impl TxnState {
    fn ensure_open(&mut self) -> Result<(), KvError> {
        if self.done {
            return Err(KvError::Finished { backend: NAME });
        }
        if !self.open {
            self.conn.execute_batch("BEGIN DEFERRED").map_err(map_err)?;
            self.open = true;
        }
        Ok(())
    }
}

struct SqliteTxn {
    state: Arc<Mutex<Option<TxnState>>>,
    store: SqliteKv,
    tracker: LimitTracker,
    /// Held while the transaction lives: its connection counts against the limit.
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl SqliteTxn {
    /// Runs `f` on the transaction's connection on the blocking pool. An error inside an
    /// open transaction finishes it (SQLite may have rolled it back already).
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, rusqlite::Error> + Send + 'static,
    ) -> Result<T, KvError> {
        self.tracker.check_time()?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = state
                .lock()
                .map_err(|_| KvError::Poisoned { backend: NAME })?;
            let st = guard
                .as_mut()
                .ok_or_else(|| KvError::Finished { backend: NAME })?;
            st.ensure_open()?;
            match f(&st.conn) {
                Ok(v) => Ok(v),
                Err(e) => {
                    let _ = st.conn.execute_batch("ROLLBACK");
                    st.open = false;
                    st.done = true;
                    Err(map_err(e))
                }
            }
        })
        .await
        .map_err(|e| KvError::backend(NAME, e))?
    }
}

#[async_trait]
impl KvTransaction for SqliteTxn {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.tracker.check_key(key)?;
        let key = key.to_vec();
        self.run(move |c| {
            c.prepare_cached("SELECT v FROM kv WHERE k = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()
        })
        .await
    }

    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        if begin >= end || limit == 0 {
            return Ok(Vec::new());
        }
        let (begin, end) = (begin.to_vec(), end.to_vec());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.run(move |c| {
            let sql = if reverse {
                "SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k DESC LIMIT ?3"
            } else {
                "SELECT k, v FROM kv WHERE k >= ?1 AND k < ?2 ORDER BY k ASC LIMIT ?3"
            };
            let mut stmt = c.prepare_cached(sql)?;
            let rows =
                stmt.query_map(params![begin, end, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, Some(value))?;
        let (key, value) = (key.to_vec(), value.to_vec());
        self.run(move |c| {
            c.prepare_cached(
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            )?
            .execute(params![key, value])
            .map(drop)
        })
        .await
    }

    async fn clear(&self, key: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, None)?;
        let key = key.to_vec();
        self.run(move |c| {
            c.prepare_cached("DELETE FROM kv WHERE k = ?1")?
                .execute(params![key])
                .map(drop)
        })
        .await
    }

    async fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.tracker.write(begin, Some(end))?;
        let (begin, end) = (begin.to_vec(), end.to_vec());
        self.run(move |c| {
            c.prepare_cached("DELETE FROM kv WHERE k >= ?1 AND k < ?2")?
                .execute(params![begin, end])
                .map(drop)
        })
        .await
    }

    async fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), KvError> {
        self.tracker.write(key, Some(&[0; 8]))?;
        let key = key.to_vec();
        self.run(move |c| {
            let now: Option<Vec<u8>> = c
                .prepare_cached("SELECT v FROM kv WHERE k = ?1")?
                .query_row(params![key], |r| r.get(0))
                .optional()?;
            let next = now
                .as_deref()
                .map_or(0, crate::keys::decode_i64_le)
                .wrapping_add(delta);
            c.prepare_cached(
                "INSERT INTO kv (k, v) VALUES (?1, ?2) ON CONFLICT (k) DO UPDATE SET v = excluded.v",
            )?
            .execute(params![key, next.to_le_bytes().to_vec()])
            .map(drop)
        })
        .await
    }

    async fn commit(&self) -> Result<(), KvError> {
        self.tracker.check_time()?;
        let state = self.state.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = state
                .lock()
                .map_err(|_| KvError::Poisoned { backend: NAME })?;
            let st = guard
                .as_mut()
                .ok_or_else(|| KvError::Finished { backend: NAME })?;
            if st.done {
                return Err(KvError::Finished { backend: NAME });
            }
            st.done = true;
            if !st.open {
                return Ok(());
            }
            st.open = false;
            match st.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(()),
                Err(e) => {
                    let _ = st.conn.execute_batch("ROLLBACK");
                    Err(map_err(e))
                }
            }
        })
        .await
        .map_err(|e| KvError::backend(NAME, e))?
    }
}

impl Drop for SqliteTxn {
    fn drop(&mut self) {
        let Ok(mut guard) = self.state.lock() else {
            return;
        };
        if let Some(mut st) = guard.take() {
            if st.open && st.conn.execute_batch("ROLLBACK").is_err() {
                return; // a connection in an unknown state is not pooled
            }
            st.open = false;
            self.store.give_back(st.conn);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;
    use crate::ErrorKind;

    #[test]
    fn errors_keep_their_source() {
        // A SQLite failure keeps the rusqlite error, reachable by downcast and as source.
        let busy = rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
            Some("database is locked".into()),
        );
        let e = map_err(busy);
        let KvError::Conflict { backend, source } = &e else {
            panic!("busy is a conflict, got: {e}");
        };
        assert_eq!(*backend, "sqlite");
        assert!(source.downcast_ref::<rusqlite::Error>().is_some());
        assert!(e.source().is_some());
        assert!(e.to_string().contains("database is locked"), "{e}");
        assert!(e.is_retryable());

        // A directory that cannot be made keeps the I/O error and is the caller's mistake.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        let err = SqliteKv::open(file.join("meta.sqlite"), Limits::default()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Invalid, "{err}");
        let io = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>())
            .expect("the I/O error is the source");
        assert_ne!(io.kind(), std::io::ErrorKind::NotFound);
    }
}
