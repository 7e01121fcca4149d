//! The injected clock and random source. Wall-clock time and entropy are read only here, so
//! tests can control time (lease expiry, retention, grace periods) without sleeping, and
//! replay the random numbers an operation draws (the tokens that let a rerun after a lost
//! commit reply recognise its own earlier write).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + std::fmt::Debug + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when a test moves it.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// A clock standing at `now_ms`.
    pub fn new(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Another clock moved by a fixed offset: a machine whose clock is ahead (positive) or
/// behind (negative), for tests of what leases and deadlines do under clock skew.
#[derive(Debug)]
pub struct SkewedClock {
    inner: Arc<dyn Clock>,
    skew_ms: i64,
}

impl SkewedClock {
    /// `inner` moved by `skew_ms` milliseconds.
    pub fn new(inner: Arc<dyn Clock>, skew_ms: i64) -> Self {
        SkewedClock { inner, skew_ms }
    }
}

impl Clock for SkewedClock {
    fn now_ms(&self) -> i64 {
        self.inner.now_ms().saturating_add(self.skew_ms)
    }
}

/// A clock kept on the metadata store's time: the local clock plus the offset last measured
/// against the store ([`Metadata::sync_clock`](crate::Metadata::sync_clock)). Leases,
/// session deadlines and lock expiries are written by one process and judged by others; on
/// the store's one clock they mean the same to all, however far a host's own clock is off.
/// Until a measurement (and for a store without a clock) the offset is 0.
#[derive(Debug)]
pub struct SyncedClock {
    inner: Arc<dyn Clock>,
    offset_ms: AtomicI64,
    measured: AtomicBool,
}

impl SyncedClock {
    /// A change of the offset smaller than this is taken for the noise of the round trip
    /// and ignored, so time does not jitter back and forth with each measurement.
    pub const NOISE_MS: i64 = 100;

    /// `inner`, not yet synchronised.
    pub fn new(inner: Arc<dyn Clock>) -> Self {
        SyncedClock {
            inner,
            offset_ms: AtomicI64::new(0),
            measured: AtomicBool::new(false),
        }
    }

    /// The local clock's time, without the offset.
    pub fn local_ms(&self) -> i64 {
        self.inner.now_ms()
    }

    /// How far the store's clock is ahead of the local one (ms), once measured.
    pub fn offset_ms(&self) -> Option<i64> {
        self.measured
            .load(Ordering::SeqCst)
            .then(|| self.offset_ms.load(Ordering::SeqCst))
    }

    /// Takes a new measurement of the offset; returns whether the offset in use changed
    /// (the first measurement, or one that moved by more than [`Self::NOISE_MS`]).
    pub fn observe(&self, offset_ms: i64) -> bool {
        let first = !self.measured.swap(true, Ordering::SeqCst);
        let old = self.offset_ms.load(Ordering::SeqCst);
        if first || offset_ms.saturating_sub(old).abs() > Self::NOISE_MS {
            self.offset_ms.store(offset_ms, Ordering::SeqCst);
            return true;
        }
        false
    }
}

impl Clock for SyncedClock {
    fn now_ms(&self) -> i64 {
        self.inner
            .now_ms()
            .saturating_add(self.offset_ms.load(Ordering::SeqCst))
    }
}

/// A source of random numbers for values that must be unique across processes, such as the
/// token an operation records in what it writes so that its rerun recognises its own write.
pub trait RandomSource: Send + Sync + std::fmt::Debug + 'static {
    /// A uniformly random 64-bit number.
    fn next_u64(&self) -> u64;
}

/// Random numbers from the operating system's entropy (through `rand`'s thread generator).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemRandom;

impl RandomSource for SystemRandom {
    // The one place outside tests where the thread generator is read (see clippy.toml).
    #[allow(clippy::disallowed_methods)]
    fn next_u64(&self) -> u64 {
        rand::rng().random()
    }
}

/// A repeatable sequence of random numbers from a seed, for tests.
#[derive(Debug)]
pub struct SeededRandom(Mutex<rand::rngs::StdRng>);

impl SeededRandom {
    /// The sequence that `seed` starts.
    pub fn new(seed: u64) -> Self {
        SeededRandom(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)))
    }
}

impl RandomSource for SeededRandom {
    fn next_u64(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_synced_clock_moves_by_the_measured_offset_and_ignores_noise() {
        let local = Arc::new(ManualClock::new(1_000_000));
        let clock = SyncedClock::new(local.clone());
        assert_eq!((clock.now_ms(), clock.offset_ms()), (1_000_000, None));
        // The store is five minutes ahead.
        assert!(clock.observe(300_000));
        assert_eq!(clock.now_ms(), 1_300_000);
        assert_eq!(clock.offset_ms(), Some(300_000));
        // Round-trip noise does not move it; a real change does.
        assert!(!clock.observe(300_000 + SyncedClock::NOISE_MS));
        assert_eq!(clock.now_ms(), 1_300_000);
        assert!(clock.observe(-60_000));
        local.advance(5);
        assert_eq!((clock.now_ms(), clock.local_ms()), (940_005, 1_000_005));
        // The first measurement counts even when it is 0.
        let fresh = SyncedClock::new(local);
        assert!(fresh.observe(0));
        assert_eq!(fresh.offset_ms(), Some(0));
    }

    #[test]
    fn a_skewed_clock_runs_at_a_fixed_offset_from_its_source() {
        let source = Arc::new(ManualClock::new(10_000));
        let ahead = SkewedClock::new(source.clone(), 2_500);
        let behind = SkewedClock::new(source.clone(), -4_000);
        assert_eq!((ahead.now_ms(), behind.now_ms()), (12_500, 6_000));
        source.advance(1_000);
        assert_eq!((ahead.now_ms(), behind.now_ms()), (13_500, 7_000));
        let edge = SkewedClock::new(Arc::new(ManualClock::new(i64::MAX - 1)), 5);
        assert_eq!(edge.now_ms(), i64::MAX);
    }
}
