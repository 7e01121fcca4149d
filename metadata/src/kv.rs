//! The transactional-KV trait every backend implements, shaped like FoundationDB's API:
//! point and range reads, writes that the same transaction reads back, atomic add and a
//! serializable commit. Also the retry policy and a fault-injecting wrapper for tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;

use crate::KvError;
use crate::error::Cause;

/// One key and its value, as returned by range reads.
pub type KeyValue = (Vec<u8>, Vec<u8>);

/// A transactional ordered key-value store.
#[async_trait]
pub trait KvStore: Send + Sync + std::fmt::Debug + 'static {
    /// Starts a transaction. Reads see one consistent snapshot plus the transaction's own
    /// writes; the commit fails with a retryable error if it would not be serializable.
    async fn begin(&self) -> Result<Box<dyn KvTransaction>, KvError>;

    /// A short name for logs and `cairn status` (`sqlite`, `memory`, `fdb`).
    fn name(&self) -> &'static str;

    /// The store's own wall clock (ms since the Unix epoch), for a backend shared by
    /// processes on many hosts that has one (PostgreSQL's `clock_timestamp()`): every
    /// process judges leases and deadlines on this one clock, so a host whose clock is off
    /// by minutes does not make its leases look expired or immortal to the others. `None`
    /// for a backend that is on the caller's host (SQLite, memory) or has no clock to read
    /// (FoundationDB, whose hosts must keep their clocks in sync).
    async fn store_time_ms(&self) -> Result<Option<i64>, KvError> {
        Ok(None)
    }
}

/// One transaction. Methods take `&self` so the retry loop can share it with the closure.
#[async_trait]
pub trait KvTransaction: Send + Sync {
    /// Reads one key.
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError>;
    /// Reads keys in `[begin, end)`, at most `limit`, in ascending order (descending if
    /// `reverse`).
    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError>;
    /// Writes one key.
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError>;
    /// Removes one key.
    async fn clear(&self, key: &[u8]) -> Result<(), KvError>;
    /// Removes every key in `[begin, end)`.
    async fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError>;
    /// Adds `delta` to the little-endian i64 stored at `key` (absent counts as 0).
    async fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), KvError>;
    /// Commits. After an error the transaction must not be used again.
    async fn commit(&self) -> Result<(), KvError>;
}

/// How the metadata layer retries a transaction that hit a retryable error.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Attempts before giving up with the last error.
    pub max_attempts: u32,
    /// First backoff; doubles up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 60,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(200),
        }
    }
}

/// A wrapper that injects commit faults, for testing the commit path: each scheduled fault
/// applies to the next commit that writes.
#[derive(Debug)]
pub struct FaultyKv {
    inner: Arc<dyn KvStore>,
    faults: Arc<Faults>,
}

/// Work run between a commit that was applied and its (lost) reply.
type Interlude = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;

struct Faults {
    fail_commits: AtomicU32,
    damaged_commits: AtomicU32,
    unknown_commits: AtomicU32,
    broken_commits: AtomicU32,
    /// Probability (parts per million) that a writing commit fails for good.
    break_ppm: u32,
    /// Probability (parts per million) that a writing commit is applied but its reply lost.
    unknown_ppm: u32,
    unknowns: std::sync::atomic::AtomicU64,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
    broken: std::sync::atomic::AtomicU64,
    /// Runs after the next lost-reply commit is applied, before it reports unknown.
    interlude: std::sync::Mutex<Option<Interlude>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults")
            .field("fail_commits", &self.fail_commits)
            .field("unknown_commits", &self.unknown_commits)
            .field("broken_commits", &self.broken_commits)
            .field("break_ppm", &self.break_ppm)
            .finish_non_exhaustive()
    }
}

impl Faults {
    fn roll(&self, ppm: u32) -> bool {
        use rand::Rng;
        if ppm == 0 {
            return false;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_range(0..1_000_000) < ppm
    }
}

impl FaultyKv {
    /// Wraps a store; no faults are scheduled.
    pub fn new(inner: Arc<dyn KvStore>) -> Self {
        Self::with_break_rate(inner, 0.0, 0)
    }

    /// Wraps a store so that each writing commit, with probability `rate`, fails for good
    /// (a non-retryable backend error, not applied): the caller sees the failure. `seed`
    /// makes the sequence of failures repeatable.
    pub fn with_break_rate(inner: Arc<dyn KvStore>, rate: f64, seed: u64) -> Self {
        Self::with_rates(inner, rate, 0.0, seed)
    }

    /// Wraps a store so that each writing commit fails for good with probability
    /// `break_rate` (see [`FaultyKv::with_break_rate`]) and, with probability
    /// `unknown_rate`, is applied but reports `CommitUnknown`, like a lost reply (the
    /// metadata layer's retry contract must cope). `seed` makes the sequence repeatable.
    pub fn with_rates(
        inner: Arc<dyn KvStore>,
        break_rate: f64,
        unknown_rate: f64,
        seed: u64,
    ) -> Self {
        use rand::SeedableRng;
        FaultyKv {
            inner,
            faults: Arc::new(Faults {
                fail_commits: AtomicU32::new(0),
                damaged_commits: AtomicU32::new(0),
                unknown_commits: AtomicU32::new(0),
                broken_commits: AtomicU32::new(0),
                break_ppm: (break_rate.clamp(0.0, 1.0) * 1e6) as u32,
                unknown_ppm: (unknown_rate.clamp(0.0, 1.0) * 1e6) as u32,
                unknowns: std::sync::atomic::AtomicU64::new(0),
                rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
                broken: std::sync::atomic::AtomicU64::new(0),
                interlude: std::sync::Mutex::new(None),
            }),
        }
    }

    /// Commits failed for good on purpose so far (by rate or by `break_next_commits`).
    pub fn broken_commits(&self) -> u64 {
        self.faults.broken.load(Ordering::SeqCst)
    }

    /// Commits applied whose reply was lost at random so far.
    pub fn unknown_commits(&self) -> u64 {
        self.faults.unknowns.load(Ordering::SeqCst)
    }

    /// The next `n` commits fail with `Unavailable` and are not applied (the metadata
    /// layer retries these).
    pub fn fail_next_commits(&self, n: u32) {
        self.faults.fail_commits.store(n, Ordering::SeqCst);
    }

    /// The next `n` commits fail with [`KvError::Damaged`], as when SQLite finds its file
    /// malformed, and are not applied.
    pub fn damage_next_commits(&self, n: u32) {
        self.faults.damaged_commits.store(n, Ordering::SeqCst);
    }

    /// The next `n` commits are applied but report `CommitUnknown`, like a lost reply.
    pub fn unknown_next_commits(&self, n: u32) {
        self.faults.unknown_commits.store(n, Ordering::SeqCst);
    }

    /// The next commit is applied, then `interlude` runs (another client acting, say),
    /// then the commit reports `CommitUnknown`: a lost reply with the world moving on before
    /// the caller's retry.
    pub fn unknown_next_commit_then<F, Fut>(&self, interlude: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        *self
            .faults
            .interlude
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(Box::new(move || Box::pin(interlude())));
        self.unknown_next_commits(1);
    }

    /// The next `n` commits fail for good (a non-retryable backend error, not applied), so
    /// the operation itself fails.
    pub fn break_next_commits(&self, n: u32) {
        self.faults.broken_commits.store(n, Ordering::SeqCst);
    }
}

fn take_one(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[async_trait]
impl KvStore for FaultyKv {
    async fn begin(&self) -> Result<Box<dyn KvTransaction>, KvError> {
        Ok(Box::new(FaultyTxn {
            inner: self.inner.begin().await?,
            name: self.inner.name(),
            faults: self.faults.clone(),
            wrote: std::sync::atomic::AtomicBool::new(false),
        }))
    }

    fn name(&self) -> &'static str {
        self.inner.name()
    }

    async fn store_time_ms(&self) -> Result<Option<i64>, KvError> {
        self.inner.store_time_ms().await
    }
}

struct FaultyTxn {
    inner: Box<dyn KvTransaction>,
    /// The wrapped store's name, for errors.
    name: &'static str,
    faults: Arc<Faults>,
    wrote: std::sync::atomic::AtomicBool,
}

impl FaultyTxn {
    fn wrote(&self) {
        self.wrote.store(true, Ordering::Relaxed);
    }
}

#[async_trait]
impl KvTransaction for FaultyTxn {
    async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.inner.get(key).await
    }
    async fn get_range(
        &self,
        begin: &[u8],
        end: &[u8],
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<KeyValue>, KvError> {
        self.inner.get_range(begin, end, limit, reverse).await
    }
    async fn set(&self, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.wrote();
        self.inner.set(key, value).await
    }
    async fn clear(&self, key: &[u8]) -> Result<(), KvError> {
        self.wrote();
        self.inner.clear(key).await
    }
    async fn clear_range(&self, begin: &[u8], end: &[u8]) -> Result<(), KvError> {
        self.wrote();
        self.inner.clear_range(begin, end).await
    }
    async fn atomic_add(&self, key: &[u8], delta: i64) -> Result<(), KvError> {
        self.wrote();
        self.inner.atomic_add(key, delta).await
    }
    async fn commit(&self) -> Result<(), KvError> {
        if self.wrote.load(Ordering::Relaxed) {
            let f = &self.faults;
            if take_one(&f.broken_commits) || f.roll(f.break_ppm) {
                f.broken.fetch_add(1, Ordering::SeqCst);
                return Err(KvError::backend(
                    self.name,
                    Cause("injected commit failure".into()),
                ));
            }
            if take_one(&f.damaged_commits) {
                return Err(KvError::damaged(
                    self.name,
                    Cause("injected: database disk image is malformed".into()),
                ));
            }
            if take_one(&f.fail_commits) {
                return Err(KvError::unavailable(
                    self.name,
                    Cause("injected commit failure".into()),
                ));
            }
            if take_one(&f.unknown_commits) {
                self.inner.commit().await?;
                let interlude = f.interlude.lock().unwrap_or_else(|p| p.into_inner()).take();
                if let Some(run) = interlude {
                    run().await;
                }
                return Err(KvError::commit_unknown(
                    self.name,
                    Cause("injected lost commit reply".into()),
                ));
            }
            if f.roll(f.unknown_ppm) {
                self.inner.commit().await?;
                f.unknowns.fetch_add(1, Ordering::SeqCst);
                return Err(KvError::commit_unknown(
                    self.name,
                    Cause("injected lost commit reply".into()),
                ));
            }
        }
        self.inner.commit().await
    }
}
