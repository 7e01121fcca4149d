//! The PostgreSQL backend: agents on many hosts share one database.
//!
//! One table, `cairn_kv (k bytea PRIMARY KEY, v bytea NOT NULL)`: PostgreSQL orders `bytea`
//! bytewise (then by length), which is FoundationDB's key order, so range reads are plain
//! `k >= $1 AND k < $2` scans of the primary key. Every transaction is `SERIALIZABLE`;
//! a serialization failure or deadlock (SQLSTATE 40001 / 40P01), at any statement or at
//! COMMIT, is a retryable conflict. A connection that breaks while COMMIT is on the wire is
//! reported as [`KvError::CommitUnknown`] — the transaction may have committed — which the
//! metadata retry loop handles like a lost FoundationDB reply. A connection that breaks
//! before COMMIT, or a server that cannot be reached, is `Unavailable`.
//!
//! `atomic_add` is a read-modify-write inside the transaction: under SERIALIZABLE two
//! transactions that add to the same key conflict and one is retried (correct, but not
//! FoundationDB's conflict-free add). Limits (key, value, transaction size and age) are
//! enforced by the same tracker as SQLite's, so a transaction that fits here fits FDB.

use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use std::collections::BTreeMap;

use tokio::sync::RwLock;
use tokio_postgres::error::SqlState;

use crate::error::Cause;
use crate::kv::{KeyValue, KvStore, KvTransaction};
use crate::limits::LimitTracker;
use crate::{KvError, Limits, MetaError};

/// The backend's name in errors and logs.
const NAME: &str = "postgres";

/// Connections kept open per store.
const POOL_SIZE: usize = 16;

/// How long to wait for a pooled connection (or a new one) before answering UNAVAILABLE.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long sent bytes may stay unacknowledged before the connection is dropped (Linux
/// `TCP_USER_TIMEOUT`; a server busy with a query still acknowledges at once).
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(10);

/// A PostgreSQL [`KvStore`].
#[derive(Clone)]
pub struct PostgresKv {
    pool: Pool,
    limits: Limits,
    /// The URL without its password, for messages.
    shown: String,
}

impl std::fmt::Debug for PostgresKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresKv")
            .field("url", &self.shown)
            .finish_non_exhaustive()
    }
}

/// Maps a driver error met during a statement (not COMMIT).
fn map_err(e: tokio_postgres::Error) -> KvError {
    match e.code() {
        Some(c)
            if *c == SqlState::T_R_SERIALIZATION_FAILURE
                || *c == SqlState::T_R_DEADLOCK_DETECTED =>
        {
            KvError::conflict(NAME, e)
        }
        Some(c)
            if *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::CANNOT_CONNECT_NOW
                || *c == SqlState::TOO_MANY_CONNECTIONS =>
        {
            KvError::unavailable(NAME, e)
        }
        Some(_) => KvError::backend(NAME, e),
        // No SQLSTATE: the connection broke or could not be made.
        None => KvError::unavailable(NAME, e),
    }
}

/// Maps an error met during COMMIT: a broken connection leaves the outcome unknown.
fn map_commit_err(e: tokio_postgres::Error) -> KvError {
    if e.code().is_none() {
        KvError::commit_unknown(NAME, e)
    } else {
        map_err(e)
    }
}

impl PostgresKv {
    /// Connects to the database at `url` (`postgres://user:password@host:port/db`, or any
    /// libpq-style connection string), creates the `cairn_kv` table if needed, and keeps a
    /// pool of connections. Fails with UNAVAILABLE if the server cannot be reached and
    /// INVALID_ARGUMENT if the URL is malformed or the server refuses the login.
    pub async fn open(url: &str, limits: Limits) -> Result<Self, MetaError> {
        let shown = crate::redact_spec(url);
        let mut config: tokio_postgres::Config = url.parse().map_err(|e| {
            MetaError::InvalidArgument(format!("bad PostgreSQL URL `{shown}`: {e}"))
        })?;
        if config.get_hosts().is_empty() {
            return Err(MetaError::InvalidArgument(format!(
                "PostgreSQL URL `{shown}` names no host: use postgres://USER:PASSWORD@HOST:PORT/DB"
            )));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("cairn");
        // A connection whose packets stop being acknowledged (the host cut off the network,
        // the server's machine gone) fails within seconds instead of waiting out TCP's
        // retransmissions (minutes), so the pool opens a fresh one once the network is back.
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        config.keepalives_idle(Duration::from_secs(5));
        // An acknowledged commit must survive a crash of the server, whatever the server's
        // default: with synchronous_commit off, PostgreSQL acknowledges a COMMIT before its
        // WAL is written and a crash loses the last ones (acknowledged records included).
        // And the ROLLBACK that starts each transaction (in case a dropped one left the
        // connection inside it) warns "there is no transaction in progress" on a clean
        // connection: the server sends no notice below an error, so logs stay readable.
        let ours = "-c synchronous_commit=on -c client_min_messages=error";
        let options = match config.get_options() {
            Some(o) if !o.is_empty() => format!("{o} {ours}"),
            _ => ours.to_string(),
        };
        config.options(&options);
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .build()
            .map_err(|e| MetaError::Kv(KvError::backend(NAME, e)))?;
        let kv = PostgresKv {
            pool,
            limits,
            shown,
        };
        let client = kv.connection().await.map_err(|e| match e {
            // A refused login or a missing database is the operator's to fix, not a
            // reason to retry.
            KvError::Backend { source, .. } => MetaError::InvalidArgument(format!(
                "cannot use PostgreSQL at {}: {source}",
                kv.shown
            )),
            other => MetaError::Kv(other),
        })?;
        // Agents starting together on a new database race to create the table, and
        // IF NOT EXISTS does not cover the race (the loser fails on the catalog's unique
        // indexes): a transaction-scoped advisory lock makes the creations take turns.
        // The agent that creates the table marks the store as Cairn's in the same
        // transaction, so the others never see it unmarked.
        let created = async {
            client
                .batch_execute("BEGIN; SELECT pg_advisory_xact_lock(7170);")
                .await?;
            let new: bool = client
                .query_one("SELECT to_regclass('cairn_kv') IS NULL", &[])
                .await?
                .get(0);
            client
                .batch_execute(
                    "CREATE TABLE IF NOT EXISTS cairn_kv (k bytea PRIMARY KEY, v bytea NOT NULL);",
                )
                .await?;
            if new {
                client
                    .execute(
                        "INSERT INTO cairn_kv (k, v) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[&crate::keys::format_marker(), &crate::keys::FORMAT],
                    )
                    .await?;
            }
            client.batch_execute("COMMIT;").await
        }
        .await;
        created.map_err(|e| MetaError::Kv(map_err(e)))?;
        Ok(kv)
    }

    /// A pooled connection.
    async fn connection(&self) -> Result<Object, KvError> {
        use deadpool_postgres::PoolError;
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(PoolError::Backend(e)) => Err(match e.code() {
                Some(c)
                    if *c == SqlState::INVALID_PASSWORD
                        || *c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION
                        || *c == SqlState::INVALID_CATALOG_NAME =>
                {
                    KvError::backend(NAME, e)
                }
                _ => map_err(e),
            }),
            Err(e) => Err(KvError::unavailable(
                NAME,
                Cause(format!("no connection to {}: {e}", self.shown)),
            )),
        }
    }
}

#[async_trait]
impl KvStore for PostgresKv {
    async fn begin(&self) -> Result<Box<dyn KvTransaction>, KvError> {
        let client = self.connection().await?;
        // A connection given back by a dropped transaction may still be inside it: the
        // ROLLBACK ends it (and only warns on a clean connection).
        client
            .batch_execute("ROLLBACK; BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await
            .map_err(map_err)?;
        Ok(Box::new(PostgresTxn {
            conn: RwLock::new(Conn {
                client: Some(client),
                done: false,
            }),
            writes: std::sync::Mutex::new(Writes::default()),
            tracker: LimitTracker::new(self.limits),
        }))
    }

    fn name(&self) -> &'static str {
        NAME
    }

    async fn store_time_ms(&self) -> Result<Option<i64>, KvError> {
        use tokio_postgres::SimpleQueryMessage;
        let client = self.connection().await?;
        // As in `begin`, the ROLLBACK ends a transaction a dropped one left open. And
        // clock_timestamp(), not now(), which is the start of the current transaction.
        let messages = client
            .simple_query("ROLLBACK; SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint")
            .await
            .map_err(map_err)?;
        let text = messages.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0),
            _ => None,
        });
        let ms = text.and_then(|t| t.parse::<i64>().ok()).ok_or_else(|| {
            KvError::backend(NAME, Cause(format!("clock_timestamp() answered {text:?}")))
        })?;
        Ok(Some(ms))
    }
}

/// The transaction's connection. Reads share it (tokio-postgres pipelines concurrent
/// queries on one connection, so the metadata layer's concurrent reads cost one round
/// trip); a flush, a failure or the commit take it alone.
struct Conn {
    /// `None` once the connection was dropped as unusable.
    client: Option<Object>,
    /// Committed or failed: no further use.
    done: bool,
}

impl Conn {
    fn client(&self) -> Result<&Object, KvError> {
        if self.done {
            return Err(KvError::Finished { backend: NAME });
        }
        self.client
            .as_ref()
            .ok_or(KvError::Finished { backend: NAME })
    }

    /// After a failed statement PostgreSQL has aborted the transaction: it is finished,
    /// and a broken connection is not given back to the pool.
    fn failed(&mut self, e: tokio_postgres::Error) -> KvError {
        self.done = true;
        if e.code().is_none()
            && let Some(c) = self.client.take()
        {
            let _ = Object::take(c);
        }
        map_err(e)
    }
}

/// Writes not yet sent: they go in a few array statements before the next range read and
/// at commit, instead of one round trip each. Point reads see them here first.
#[derive(Default)]
struct Writes {
    /// Ranges cleared, in order (applied before `points`).
    ranges: Vec<(Vec<u8>, Vec<u8>)>,
    /// The latest write per key since the last flush: a value, or `None` for a clear.
    points: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Atomic adds to keys the transaction has not written since the last flush: their
    /// current values are read for all of them at once when flushed, instead of one round
    /// trip per add. A key is never in both `points` and `adds`.
    adds: BTreeMap<Vec<u8>, i64>,
}

impl Writes {
    fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.points.is_empty() && self.adds.is_empty()
    }

    fn covered_by_range(&self, key: &[u8]) -> bool {
        self.ranges
            .iter()
            .any(|(b, e)| b.as_slice() <= key && key < e.as_slice())
    }

    /// Records an atomic add of `delta` to `key`: folded into a pending value when this
    /// transaction decided the key already, kept as a pending add otherwise.
    fn add(&mut self, key: &[u8], delta: i64) {
        let decided = match self.points.get(key) {
            Some(v) => Some(v.as_deref().map_or(0, crate::keys::decode_i64_le)),
            None if self.covered_by_range(key) => Some(0),
            None => None,
        };
        match decided {
            Some(now) => {
                let next = now.wrapping_add(delta).to_le_bytes().to_vec();
                self.points.insert(key.to_vec(), Some(next));
            }
            None => {
                let sum = self.adds.entry(key.to_vec()).or_insert(0);
                *sum = sum.wrapping_add(delta);
            }
        }
    }

    /// What this transaction's pending writes say of `key`: `Some(value or None)` if they
    /// decide it, `None` if the database must be asked.
    fn lookup(&self, key: &[u8]) -> Option<Option<Vec<u8>>> {
        if let Some(v) = self.points.get(key) {
            return Some(v.clone());
        }
        self.covered_by_range(key).then_some(None)
    }
}

struct PostgresTxn {
    conn: RwLock<Conn>,
    writes: std::sync::Mutex<Writes>,
    tracker: LimitTracker,
}

impl PostgresTxn {
    fn writes(&self) -> std::sync::MutexGuard<'_, Writes> {
        self.writes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the pending writes: range clears in order, then point clears, then upserts,
    /// each as one statement over arrays.
    async fn flush(&self) -> Result<(), KvError> {
        if self.writes().is_empty() {
            return Ok(());
        }
        // The connection first, then the writes: a read racing this flush either finds its
        // key among the pending writes or waits for the flush to land.
        let mut conn = self.conn.write().await;
        let pending = std::mem::take(&mut *self.writes());
        let c = conn.client()?;
        let (mut clear, mut keys, mut values) = (Vec::new(), Vec::new(), Vec::new());
        for (k, v) in pending.points {
            match v {
                Some(v) => {
                    keys.push(k);
                    values.push(v);
                }
                None => clear.push(k),
            }
        }
        let r = async {
            if !pending.adds.is_empty() {
                // The added-to keys are in no pending clear or write, so reading them before
                // those land reads what they will find.
                let added: Vec<&Vec<u8>> = pending.adds.keys().collect();
                let stmt = c
                    .prepare_cached("SELECT k, v FROM cairn_kv WHERE k = ANY($1)")
                    .await?;
                let now: BTreeMap<Vec<u8>, Vec<u8>> = c
                    .query(&stmt, &[&added])
                    .await?
                    .into_iter()
                    .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                    .collect();
                for (k, delta) in pending.adds {
                    let was = now.get(&k).map_or(0, |v| crate::keys::decode_i64_le(v));
                    values.push(was.wrapping_add(delta).to_le_bytes().to_vec());
                    keys.push(k);
                }
            }
            for (b, e) in &pending.ranges {
                let stmt = c
                    .prepare_cached("DELETE FROM cairn_kv WHERE k >= $1 AND k < $2")
                    .await?;
                c.execute(&stmt, &[b, e]).await?;
            }
            if !clear.is_empty() {
                let stmt = c
                    .prepare_cached("DELETE FROM cairn_kv WHERE k = ANY($1)")
                    .await?;
                c.execute(&stmt, &[&clear]).await?;
            }
            if !keys.is_empty() {
                let stmt = c
                    .prepare_cached(
                        "INSERT INTO cairn_kv (k, v) SELECT * FROM unnest($1::bytea[], $2::bytea[]) \
                         ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                    )
                    .await?;
                c.execute(&stmt, &[&keys, &values]).await?;
            }
            Ok::<_, tokio_postgres::Error>(())
        }
        .await;
        r.map_err(|e| conn.failed(e))
    }
}

#[async_trait]
impl KvTransaction for PostgresTxn {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.tracker.check_key(key)?;
        self.tracker.check_time()?;
        let add_pending = {
            let w = self.writes();
            if let Some(decided) = w.lookup(key) {
                return Ok(decided);
            }
            w.adds.contains_key(key)
        };
        if add_pending {
            // The add needs the stored value: land the pending writes, then read.
            self.flush().await?;
        }
        let r = {
            let conn = self.conn.read().await;
            let c = conn.client()?;
            async {
                let stmt = c
                    .prepare_cached("SELECT v FROM cairn_kv WHERE k = $1")
                    .await?;
                c.query_opt(&stmt, &[&key]).await
            }
            .await
        };
        match r {
            Ok(row) => Ok(row.map(|r| r.get::<_, Vec<u8>>(0))),
            Err(e) => Err(self.conn.write().await.failed(e)),
        }
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
        self.tracker.check_time()?;
        self.flush().await?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let sql = if reverse {
            "SELECT k, v FROM cairn_kv WHERE k >= $1 AND k < $2 ORDER BY k DESC LIMIT $3"
        } else {
            "SELECT k, v FROM cairn_kv WHERE k >= $1 AND k < $2 ORDER BY k ASC LIMIT $3"
        };
        let r = {
            let conn = self.conn.read().await;
            let c = conn.client()?;
            async {
                let stmt = c.prepare_cached(sql).await?;
                c.query(&stmt, &[&begin, &end, &limit]).await
            }
            .await
        };
        match r {
            Ok(rows) => Ok(rows
                .into_iter()
                .map(|r| (r.get::<_, Vec<u8>>(0), r.get::<_, Vec<u8>>(1)))
                .collect()),
            Err(e) => Err(self.conn.write().await.failed(e)),
        }
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, Some(value))?;
        self.tracker.check_time()?;
        let mut w = self.writes();
        w.adds.remove(key);
        w.points.insert(key.to_vec(), Some(value.to_vec()));
        Ok(())
    }

    async fn clear(&self, key: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, None)?;
        self.tracker.check_time()?;
        let mut w = self.writes();
        w.adds.remove(key);
        w.points.insert(key.to_vec(), None);
        Ok(())
    }

    async fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.tracker.write(begin, Some(end))?;
        self.tracker.check_time()?;
        if begin >= end {
            return Ok(());
        }
        let mut w = self.writes();
        // Earlier point writes inside the range are void; later ones land after it.
        let inside: Vec<Vec<u8>> = w
            .points
            .range(begin.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in inside {
            w.points.remove(&k);
        }
        let added: Vec<Vec<u8>> = w
            .adds
            .range(begin.to_vec()..end.to_vec())
            .map(|(k, _)| k.clone())
            .collect();
        for k in added {
            w.adds.remove(&k);
        }
        w.ranges.push((begin.to_vec(), end.to_vec()));
        Ok(())
    }

    async fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), KvError> {
        self.tracker.write(key, Some(&[0; 8]))?;
        self.tracker.check_time()?;
        self.writes().add(key, delta);
        Ok(())
    }

    async fn commit(&self) -> Result<(), KvError> {
        self.tracker.check_time()?;
        self.flush().await?;
        let mut conn = self.conn.write().await;
        let c = conn.client()?;
        let r = c.batch_execute("COMMIT").await;
        conn.done = true;
        match r {
            Ok(()) => Ok(()),
            Err(e) => {
                let err = map_commit_err(e);
                if !matches!(err, KvError::Conflict { .. })
                    && let Some(c) = conn.client.take()
                {
                    let _ = Object::take(c);
                }
                Err(err)
            }
        }
    }
}
