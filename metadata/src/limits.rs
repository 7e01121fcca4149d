//! FoundationDB's transaction limits, enforced by every backend so that a metadata operation
//! that would fail on FoundationDB fails in our tests first.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::KvError;

/// Per-transaction limits (FoundationDB's defaults unless a test lowers them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest key in bytes (FoundationDB: 10,000).
    pub max_key: usize,
    /// Largest value in bytes (FoundationDB: 100,000).
    pub max_value: usize,
    /// Most bytes written by one transaction (FoundationDB: 10,000,000).
    pub max_txn_bytes: usize,
    /// Longest a transaction may live (FoundationDB: 5 s).
    pub max_txn_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_key: 10_000,
            max_value: 100_000,
            max_txn_bytes: 10_000_000,
            max_txn_time: Duration::from_secs(5),
        }
    }
}

/// Tracks one transaction against its limits.
#[derive(Debug)]
pub(crate) struct LimitTracker {
    limits: Limits,
    started: Instant,
    written: AtomicUsize,
}

impl LimitTracker {
    pub(crate) fn new(limits: Limits) -> Self {
        LimitTracker {
            limits,
            started: Instant::now(),
            written: AtomicUsize::new(0),
        }
    }

    pub(crate) fn check_time(&self) -> Result<(), KvError> {
        let elapsed = self.started.elapsed();
        if elapsed > self.limits.max_txn_time {
            return Err(KvError::TooOld {
                elapsed_ms: elapsed.as_millis() as u64,
                limit_ms: self.limits.max_txn_time.as_millis() as u64,
            });
        }
        Ok(())
    }

    pub(crate) fn check_key(&self, key: &[u8]) -> Result<(), KvError> {
        if key.len() > self.limits.max_key {
            return Err(KvError::KeyTooLarge {
                size: key.len(),
                limit: self.limits.max_key,
            });
        }
        self.check_time()
    }

    /// Accounts for a write of `key` (and `value`, if any).
    pub(crate) fn write(&self, key: &[u8], value: Option<&[u8]>) -> Result<(), KvError> {
        self.check_key(key)?;
        let vlen = value.map_or(0, <[u8]>::len);
        if vlen > self.limits.max_value {
            return Err(KvError::ValueTooLarge {
                size: vlen,
                limit: self.limits.max_value,
            });
        }
        let total = self.written.fetch_add(key.len() + vlen, Ordering::Relaxed) + key.len() + vlen;
        if total > self.limits.max_txn_bytes {
            return Err(KvError::TransactionTooLarge {
                size: total,
                limit: self.limits.max_txn_bytes,
            });
        }
        Ok(())
    }
}
