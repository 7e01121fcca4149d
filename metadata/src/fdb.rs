//! The FoundationDB backend (cargo feature `fdb`, API 7.3): the production metadata engine
//! for many hosts. Transactions map one to one onto FoundationDB transactions; the limit
//! checks of the other backends run here too, so a violation reads the same everywhere.

use std::sync::{Mutex, OnceLock};

use async_trait::async_trait;
use foundationdb::options::{MutationType, StreamingMode};
use foundationdb::{Database, FdbError, RangeOption, Transaction};

use crate::kv::{KeyValue, KvStore, KvTransaction};
use crate::limits::LimitTracker;
use crate::{KvError, Limits, MetaError};

/// The backend's name in errors and logs.
const NAME: &str = "fdb";

/// A FoundationDB error with its numeric code, which operators look up.
#[derive(Debug, thiserror::Error)]
#[error("{source} (FoundationDB error {code})")]
struct Failure {
    code: i32,
    #[source]
    source: FdbError,
}

/// The client network could not start.
#[derive(Debug, thiserror::Error)]
#[error("{step}: {source}")]
struct NetworkStart {
    step: &'static str,
    #[source]
    source: FdbError,
}

/// The FoundationDB client network: started once per process, never stopped (it runs on
/// its own thread until the process exits). A failure to start is kept and answered to
/// every later open.
static NETWORK: OnceLock<Result<(), KvError>> = OnceLock::new();

fn start_network() -> Result<(), MetaError> {
    let failed = |step| move |source| KvError::unavailable(NAME, NetworkStart { step, source });
    NETWORK
        .get_or_init(|| {
            let builder = foundationdb::api::FdbApiBuilder::default()
                .build()
                .map_err(failed("cannot select the FoundationDB API version"))?;
            // SAFETY: `boot` must run at most once per process and before any other
            // FoundationDB call; the `OnceLock` guarantees both for every path through
            // this crate, which is the only user of the client library.
            #[allow(unsafe_code)]
            let guard = unsafe { builder.boot() }
                .map_err(failed("cannot start the FoundationDB network"))?;
            // Stopping the network would make every later open fail; keep it for the
            // life of the process.
            std::mem::forget(guard);
            Ok(())
        })
        .clone()
        .map_err(MetaError::Kv)
}

/// A [`KvStore`] on a FoundationDB cluster.
pub struct FdbKv {
    db: Database,
    limits: Limits,
}

impl std::fmt::Debug for FdbKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdbKv")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl FdbKv {
    /// Connects to the cluster described by `cluster_file` (e.g.
    /// `/etc/foundationdb/fdb.cluster`), starting the client network on first use.
    pub fn open(cluster_file: &str) -> Result<FdbKv, MetaError> {
        if cluster_file.is_empty() {
            return Err(MetaError::InvalidArgument(
                "metadata spec `fdb:` needs a cluster file path, e.g. fdb:/etc/foundationdb/fdb.cluster".into(),
            ));
        }
        if !std::path::Path::new(cluster_file).is_file() {
            return Err(MetaError::InvalidArgument(format!(
                "FoundationDB cluster file {cluster_file} does not exist"
            )));
        }
        start_network()?;
        let db = Database::from_path(cluster_file).map_err(|e| MetaError::Kv(map_err(e)))?;
        Ok(FdbKv {
            db,
            limits: Limits::default(),
        })
    }

    /// Removes every key Cairn owns (the `("cairn", …)` subspace). For tests only.
    pub async fn clear_all_for_tests(&self) -> Result<(), KvError> {
        let (begin, end) = foundationdb_tuple::Subspace::from("cairn").range();
        let tr = self.db.create_trx().map_err(map_err)?;
        tr.clear_range(&begin, &end);
        tr.commit().await.map_err(|e| map_err(FdbError::from(e)))?;
        Ok(())
    }
}

/// Translates FoundationDB error codes into the layer's error kinds.
fn map_err(e: FdbError) -> KvError {
    let failure = |e: FdbError| Failure {
        code: e.code(),
        source: e,
    };
    match e.code() {
        1020 => KvError::conflict(NAME, failure(e)),
        1021 => KvError::commit_unknown(NAME, failure(e)),
        1007 => KvError::TooOld {
            elapsed_ms: 5_000,
            limit_ms: 5_000,
        },
        2101 => KvError::TransactionTooLarge {
            size: 10_000_001,
            limit: 10_000_000,
        },
        2102 => KvError::KeyTooLarge {
            size: 10_001,
            limit: 10_000,
        },
        2103 => KvError::ValueTooLarge {
            size: 100_001,
            limit: 100_000,
        },
        _ if e.is_maybe_committed() => KvError::commit_unknown(NAME, failure(e)),
        _ if e.is_retryable() => KvError::unavailable(NAME, failure(e)),
        _ => KvError::backend(NAME, failure(e)),
    }
}

#[async_trait]
impl KvStore for FdbKv {
    async fn begin(&self) -> Result<Box<dyn KvTransaction>, KvError> {
        let tr = self.db.create_trx().map_err(map_err)?;
        Ok(Box::new(FdbTxn {
            tr: Mutex::new(Some(tr)),
            tracker: LimitTracker::new(self.limits),
        }))
    }

    fn name(&self) -> &'static str {
        NAME
    }
}

struct FdbTxn {
    /// `None` once committed: FoundationDB's commit consumes the transaction.
    tr: Mutex<Option<Transaction>>,
    tracker: LimitTracker,
}

impl FdbTxn {
    /// Runs `f` on the live transaction. Futures it returns own their state, so the lock is
    /// never held across an await.
    fn with<T>(&self, f: impl FnOnce(&Transaction) -> T) -> Result<T, KvError> {
        self.tracker.check_time()?;
        let guard = self
            .tr
            .lock()
            .map_err(|_| KvError::Poisoned { backend: NAME })?;
        match guard.as_ref() {
            Some(tr) => Ok(f(tr)),
            None => Err(KvError::Finished { backend: NAME }),
        }
    }
}

#[async_trait]
impl KvTransaction for FdbTxn {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.tracker.check_key(key)?;
        let read = self.with(|tr| tr.get(key, false))?;
        Ok(read.await.map_err(map_err)?.map(|v| v.to_vec()))
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
        let mut out: Vec<KeyValue> = Vec::new();
        let mut opt = Some(RangeOption {
            limit: Some(limit),
            reverse,
            mode: StreamingMode::WantAll,
            ..RangeOption::from((begin.to_vec(), end.to_vec()))
        });
        let mut iteration = 1;
        while let Some(range) = opt {
            let read = self.with(|tr| tr.get_range(&range, iteration, false))?;
            let values = read.await.map_err(map_err)?;
            out.extend(
                values
                    .iter()
                    .map(|kv| (kv.key().to_vec(), kv.value().to_vec())),
            );
            opt = range.next_range(&values);
            iteration += 1;
        }
        out.truncate(limit);
        Ok(out)
    }

    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, Some(value))?;
        self.with(|tr| tr.set(key, value))
    }

    async fn clear(&self, key: &[u8]) -> Result<(), KvError> {
        self.tracker.write(key, None)?;
        self.with(|tr| tr.clear(key))
    }

    async fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.tracker.write(begin, Some(end))?;
        if begin >= end {
            return Ok(());
        }
        self.with(|tr| tr.clear_range(begin, end))
    }

    async fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), KvError> {
        self.tracker.write(key, Some(&delta.to_le_bytes()))?;
        self.with(|tr| tr.atomic_op(key, &delta.to_le_bytes(), MutationType::Add))
    }

    async fn commit(&self) -> Result<(), KvError> {
        self.tracker.check_time()?;
        let tr = self
            .tr
            .lock()
            .map_err(|_| KvError::Poisoned { backend: NAME })?
            .take()
            .ok_or_else(|| KvError::Finished { backend: NAME })?;
        tr.commit()
            .await
            .map(|_| ())
            .map_err(|e| map_err(FdbError::from(e)))
    }
}
