//! Fault injection for tests of the no-loss, no-duplicate guarantees: PUTs that fail,
//! metadata commits that fail, replies lost after a successful commit, and a process crash
//! between commit and reply. Off unless configured; the CLI reads a spec from
//! `CAIRN_TEST_FAULTS` and logs a warning when it is set.

use std::str::FromStr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use cairn_metadata::FaultyKv;

use crate::{AgentError, FaultyStore};

/// How many faults an agent injected.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultReport {
    /// Segment PUTs that failed.
    pub puts_failed: u64,
    /// Metadata commits that failed.
    pub commits_failed: u64,
    /// Produce replies lost after their commit.
    pub replies_dropped: u64,
    /// GETs that failed.
    pub gets_failed: u64,
    /// PUTs applied whose reply was lost.
    pub put_replies_lost: u64,
    /// Object-store requests slowed down.
    pub requests_slowed: u64,
    /// Metadata commits applied whose reply was lost.
    pub commits_unknown: u64,
    /// Multipart uploads failed half way.
    pub uploads_failed: u64,
    /// Multipart uploads aborted after a failure.
    pub uploads_aborted: u64,
}

impl std::fmt::Display for FaultReport {
    /// `key=value` pairs separated by commas, in the field names' order.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "puts_failed={},commits_failed={},replies_dropped={},gets_failed={},\
             put_replies_lost={},requests_slowed={},commits_unknown={},uploads_failed={},\
             uploads_aborted={}",
            self.puts_failed,
            self.commits_failed,
            self.replies_dropped,
            self.gets_failed,
            self.put_replies_lost,
            self.requests_slowed,
            self.commits_unknown,
            self.uploads_failed,
            self.uploads_aborted,
        )
    }
}

/// Which faults to inject, and how often.
///
/// Parsed from `key=value` pairs separated by commas, e.g.
/// `put_fail_rate=0.05,commit_fail_rate=0.05,reply_drop_rate=0.05,seed=7` or
/// `crash_after_commits=3`. Keys: `put_fail_rate`, `get_fail_rate`, `put_reply_lost_rate`,
/// `slow_rate` with `slow_ms`, `part_fail_rate`, `commit_fail_rate`, `commit_unknown_rate`,
/// `commit_unavailable_first`, `reply_drop_rate`, `crash_after_commits`, `clock_skew_ms`,
/// `report_file`, `seed`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultSpec {
    /// Probability that a segment PUT fails.
    pub put_fail_rate: f64,
    /// Probability that an object-store GET fails.
    pub get_fail_rate: f64,
    /// Probability that a PUT is applied but its reply lost (the agent sees a failure).
    pub put_reply_lost_rate: f64,
    /// Probability that an object-store request is answered only after `slow_ms`.
    pub slow_rate: f64,
    /// How long a slow request waits, in milliseconds (default 1,000).
    pub slow_ms: u64,
    /// Probability that a multipart upload fails half way (after its first part).
    pub part_fail_rate: f64,
    /// Probability that a metadata commit fails for good (not applied).
    pub commit_fail_rate: f64,
    /// Probability that a metadata commit is applied but reports an unknown outcome.
    pub commit_unknown_rate: f64,
    /// The first this many metadata commits fail as unavailable (not applied; the metadata
    /// layer retries them): a metadata store that is down, or too contended, when the
    /// process starts.
    pub commit_unavailable_first: u32,
    /// Probability that a produce reply is replaced by UNAVAILABLE after its commit
    /// succeeded, as if the response were lost on the way.
    pub reply_drop_rate: f64,
    /// Abort the process right after this many successful segment commits, before any of
    /// the last segment's producers is answered.
    pub crash_after_commits: Option<u64>,
    /// Milliseconds added to the agent's wall clock (negative: behind), at most an hour
    /// either way: the clock every lease, session, deadline and timestamp the agent writes
    /// is computed from.
    pub clock_skew_ms: i64,
    /// A file the agent rewrites every second with its [`FaultReport`] (`key=value` pairs),
    /// so a harness can count the faults even of an agent it kills.
    pub report_file: Option<std::path::PathBuf>,
    /// Seed of the fault sequence.
    pub seed: u64,
}

impl FaultSpec {
    /// Whether any fault is configured.
    pub fn is_active(&self) -> bool {
        self.store_faults()
            || self.commit_fail_rate > 0.0
            || self.commit_unknown_rate > 0.0
            || self.commit_unavailable_first > 0
            || self.reply_drop_rate > 0.0
            || self.crash_after_commits.is_some()
            || self.clock_skew_ms != 0
    }
}

impl FaultSpec {
    /// Whether any object-store fault is configured.
    pub(crate) fn store_faults(&self) -> bool {
        self.put_fail_rate > 0.0
            || self.get_fail_rate > 0.0
            || self.put_reply_lost_rate > 0.0
            || self.slow_rate > 0.0
            || self.part_fail_rate > 0.0
    }

    /// The object-store fault rates.
    pub(crate) fn store_rates(&self) -> cairn_storage::StoreFaultRates {
        cairn_storage::StoreFaultRates {
            put_fail: self.put_fail_rate,
            get_fail: self.get_fail_rate,
            put_reply_lost: self.put_reply_lost_rate,
            slow: self.slow_rate,
            slow_for: std::time::Duration::from_millis(self.slow_ms),
            part_fail: self.part_fail_rate,
        }
    }
}

impl FromStr for FaultSpec {
    type Err = AgentError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut spec = FaultSpec {
            slow_ms: 1000,
            ..FaultSpec::default()
        };
        for pair in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let bad = |why: &str| AgentError::Config(format!("fault spec `{pair}`: {why}"));
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| bad("expected key=value"))?;
            let rate = || {
                v.parse::<f64>()
                    .ok()
                    .filter(|r| (0.0..=1.0).contains(r))
                    .ok_or_else(|| bad("a rate is a number from 0 to 1"))
            };
            match k {
                "put_fail_rate" => spec.put_fail_rate = rate()?,
                "commit_fail_rate" => spec.commit_fail_rate = rate()?,
                "commit_unknown_rate" => spec.commit_unknown_rate = rate()?,
                "get_fail_rate" => spec.get_fail_rate = rate()?,
                "put_reply_lost_rate" => spec.put_reply_lost_rate = rate()?,
                "slow_rate" => spec.slow_rate = rate()?,
                "slow_ms" => {
                    spec.slow_ms = v
                        .parse()
                        .ok()
                        .filter(|ms| *ms <= 600_000)
                        .ok_or_else(|| bad("expected milliseconds, at most 600000"))?
                }
                "reply_drop_rate" => spec.reply_drop_rate = rate()?,
                "part_fail_rate" => spec.part_fail_rate = rate()?,
                "commit_unavailable_first" => {
                    spec.commit_unavailable_first =
                        v.parse().map_err(|_| bad("expected a count of commits"))?
                }
                "clock_skew_ms" => {
                    spec.clock_skew_ms = v
                        .parse::<i64>()
                        .ok()
                        .filter(|ms| ms.abs() <= 3_600_000)
                        .ok_or_else(|| bad("expected milliseconds from -3600000 to 3600000"))?
                }
                "report_file" if v.is_empty() => return Err(bad("expected a file path")),
                "report_file" => spec.report_file = Some(v.into()),
                "crash_after_commits" => {
                    spec.crash_after_commits = Some(v.parse().map_err(|_| bad("expected a count"))?)
                }
                "seed" => spec.seed = v.parse().map_err(|_| bad("expected an integer"))?,
                _ => {
                    return Err(bad(
                        "unknown key (use put_fail_rate, get_fail_rate, put_reply_lost_rate, \
                         slow_rate, slow_ms, part_fail_rate, commit_fail_rate, \
                         commit_unknown_rate, commit_unavailable_first, reply_drop_rate, \
                         crash_after_commits, \
                         clock_skew_ms, report_file, seed)",
                    ));
                }
            }
        }
        Ok(spec)
    }
}

/// Wraps the stores with the faults `spec` names and starts the report writer, if any.
pub(crate) fn wrap_stores(
    spec: &FaultSpec,
    mut store: Arc<dyn object_store::ObjectStore>,
    mut kv: Arc<dyn cairn_metadata::KvStore>,
) -> (
    Arc<dyn object_store::ObjectStore>,
    Arc<dyn cairn_metadata::KvStore>,
    Arc<Faults>,
) {
    let mut faulty_store = None;
    let mut faulty_kv = None;
    if spec.store_faults() {
        let f = Arc::new(FaultyStore::with_rates(
            store,
            spec.store_rates(),
            spec.seed,
        ));
        faulty_store = Some(f.clone());
        store = f;
    }
    if spec.commit_fail_rate > 0.0
        || spec.commit_unknown_rate > 0.0
        || spec.commit_unavailable_first > 0
    {
        let f = Arc::new(FaultyKv::with_rates(
            kv,
            spec.commit_fail_rate,
            spec.commit_unknown_rate,
            spec.seed.wrapping_add(2),
        ));
        f.fail_next_commits(spec.commit_unavailable_first);
        faulty_kv = Some(f.clone());
        kv = f;
    }
    let faults = Arc::new(Faults::new(spec, faulty_store, faulty_kv));
    if let Some(path) = &spec.report_file {
        faults.keep_reporting(path.clone());
    }
    (store, kv, faults)
}

/// The faults the agent itself injects (PUT and commit faults live in the wrapped stores).
#[derive(Debug)]
pub(crate) struct Faults {
    store: Option<Arc<FaultyStore>>,
    kv: Option<Arc<FaultyKv>>,
    replies_dropped: AtomicU64,
    reply_drop_ppm: u32,
    crash_after_commits: Option<u64>,
    commits: AtomicU64,
    drop_next_replies: AtomicU32,
    rng: Mutex<StdRng>,
}

impl Faults {
    pub(crate) fn new(
        spec: &FaultSpec,
        store: Option<Arc<FaultyStore>>,
        kv: Option<Arc<FaultyKv>>,
    ) -> Self {
        Faults {
            store,
            kv,
            replies_dropped: AtomicU64::new(0),
            reply_drop_ppm: (spec.reply_drop_rate * 1e6) as u32,
            crash_after_commits: spec.crash_after_commits,
            commits: AtomicU64::new(0),
            drop_next_replies: AtomicU32::new(0),
            rng: Mutex::new(StdRng::seed_from_u64(spec.seed.wrapping_add(1))),
        }
    }

    /// Called after each successful segment commit, before its producers are answered.
    pub(crate) fn after_commit(&self) {
        let n = self.commits.fetch_add(1, Ordering::SeqCst) + 1;
        if self.crash_after_commits.is_some_and(|limit| n >= limit) {
            tracing::error!(
                commits = n,
                "injected crash after commit (CAIRN_TEST_FAULTS)"
            );
            std::process::abort();
        }
    }

    /// Whether to lose this produce reply.
    pub(crate) fn drop_reply(&self) -> bool {
        let lost = self.roll_reply();
        if lost {
            self.replies_dropped.fetch_add(1, Ordering::SeqCst);
        }
        lost
    }

    /// What was injected so far.
    pub(crate) fn report(&self) -> FaultReport {
        let store = self.store.as_ref().map(|s| s.counts()).unwrap_or_default();
        FaultReport {
            puts_failed: store.failed_puts,
            commits_failed: self.kv.as_ref().map_or(0, |k| k.broken_commits()),
            replies_dropped: self.replies_dropped.load(Ordering::SeqCst),
            gets_failed: store.failed_gets,
            put_replies_lost: store.lost_put_replies,
            requests_slowed: store.slowed,
            commits_unknown: self.kv.as_ref().map_or(0, |k| k.unknown_commits()),
            uploads_failed: store.failed_uploads,
            uploads_aborted: store.aborted_uploads,
        }
    }

    /// Rewrites `path` with the report every second while the agent lives (a harness
    /// reads it even after killing the process: at most a second of faults is missing).
    pub(crate) fn keep_reporting(self: &Arc<Self>, path: std::path::PathBuf) {
        let faults = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(f) = faults.upgrade() else { break };
                let line = format!("{}\n", f.report());
                drop(f);
                if let Err(e) = tokio::fs::write(&path, line).await {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write the fault report");
                }
            }
        });
    }

    fn roll_reply(&self) -> bool {
        if self
            .drop_next_replies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return true;
        }
        if self.reply_drop_ppm == 0 {
            return false;
        }
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_range(0..1_000_000) < self.reply_drop_ppm
    }

    /// Loses the next `n` produce replies after their commits.
    pub(crate) fn drop_next_replies(&self, n: u32) {
        self.drop_next_replies.store(n, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs_and_names_bad_parts() {
        let s: FaultSpec = "put_fail_rate=0.05, reply_drop_rate=0.1,crash_after_commits=3,seed=9"
            .parse()
            .unwrap();
        assert_eq!(s.put_fail_rate, 0.05);
        assert_eq!(s.reply_drop_rate, 0.1);
        assert_eq!(s.crash_after_commits, Some(3));
        assert_eq!(s.seed, 9);
        assert!(s.is_active());
        assert!(!FaultSpec::from_str("").unwrap().is_active());
        let e = FaultSpec::from_str("put_fail_rate=2").unwrap_err();
        assert!(e.to_string().contains("from 0 to 1"), "{e}");
        let e = FaultSpec::from_str("nope=1").unwrap_err();
        assert!(e.to_string().contains("unknown key"), "{e}");
        let s: FaultSpec = "get_fail_rate=0.1,put_reply_lost_rate=0.2,slow_rate=0.3,slow_ms=50,commit_unknown_rate=0.4"
            .parse()
            .unwrap();
        assert!(s.is_active() && s.store_faults());
        assert_eq!(
            s.store_rates().slow_for,
            std::time::Duration::from_millis(50)
        );
        assert_eq!(s.commit_unknown_rate, 0.4);
        assert_eq!(FaultSpec::from_str("").unwrap().slow_ms, 1000);
        let e = FaultSpec::from_str("slow_ms=-1").unwrap_err();
        assert!(e.to_string().contains("milliseconds"), "{e}");
        let s: FaultSpec = "part_fail_rate=0.5,clock_skew_ms=-4000,report_file=/tmp/r"
            .parse()
            .unwrap();
        assert!(s.is_active() && s.store_faults());
        assert_eq!(s.store_rates().part_fail, 0.5);
        assert_eq!(s.clock_skew_ms, -4000);
        assert_eq!(s.report_file, Some("/tmp/r".into()));
        assert!(FaultSpec::from_str("clock_skew_ms=2").unwrap().is_active());
        let s = FaultSpec::from_str("commit_unavailable_first=70").unwrap();
        assert!(s.is_active() && s.commit_unavailable_first == 70);
        let e = FaultSpec::from_str("clock_skew_ms=3600001").unwrap_err();
        assert!(e.to_string().contains("-3600000 to 3600000"), "{e}");
        let e = FaultSpec::from_str("report_file=").unwrap_err();
        assert!(e.to_string().contains("a file path"), "{e}");
    }
}
