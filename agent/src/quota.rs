//! Limits on what one client may take of an agent.
//!
//! - **Quotas** per principal (metadata `quotas`, set with `cairn quota`): produce bytes,
//!   fetch bytes and calls per second, for the whole cluster. Each agent enforces its share,
//!   the rate divided by the live agents, with a token bucket per principal and kind that
//!   holds at most one second of its rate. A call is admitted while its bucket is not in
//!   debt and then charged what it took, so one call larger than a second's worth still goes
//!   through and the next waits for the debt to be paid. A call that is not admitted is
//!   answered RESOURCE_EXHAUSTED with `ERROR_REASON_THROTTLED` and a google.rpc.RetryInfo
//!   saying when the bucket is out of debt; nothing of it was done.
//! - **Per-connection limits** (agent settings): the long-polls waiting at once on one
//!   connection, and the request bytes one connection may have in flight (received and not
//!   yet answered). Past either, calls are throttled the same way, so one client cannot
//!   hold an agent's memory or its waiters.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cairn_metadata::quotas::{DEFAULT_PRINCIPAL, Quota};
use cairn_proto::v2::ErrorReason;
use tonic::Status;

/// How many seconds of its rate a bucket holds when full: the burst a principal may send
/// after being idle.
const BURST_SECS: f64 = 1.0;

/// Shortest retry delay a throttled call is told: below it, clients would only spin.
const MIN_RETRY: Duration = Duration::from_millis(5);

/// Longest a produce or fetch is held for its principal's byte quota before it is refused
/// (throttled) instead: holding keeps a producer's pipelined requests in order, refusing
/// keeps a client far over its quota from piling up held calls.
pub(crate) const MAX_HOLD: Duration = Duration::from_secs(1);

/// The delay told to a call held back by a per-connection limit, which frees as soon as
/// another call of the connection ends.
const CONNECTION_RETRY: Duration = Duration::from_millis(100);

/// What a quota limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// Payload bytes produced.
    ProduceBytes,
    /// Record bytes fetched or acquired.
    FetchBytes,
    /// Calls.
    Requests,
}

impl Kind {
    /// The name in errors, metrics and `cairn quota`.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::ProduceBytes => "produce_bytes_per_second",
            Kind::FetchBytes => "fetch_bytes_per_second",
            Kind::Requests => "requests_per_second",
        }
    }

    fn index(self) -> usize {
        match self {
            Kind::ProduceBytes => 0,
            Kind::FetchBytes => 1,
            Kind::Requests => 2,
        }
    }
}

/// A call held back: what limit, its value, and when to send the call again.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Throttled {
    /// The limit's name (a [`Kind::name`], `long_polls_per_connection` or
    /// `bytes_in_flight_per_connection`).
    pub(crate) limit: &'static str,
    /// Its value (for a quota, the cluster-wide rate).
    pub(crate) value: u64,
    /// When the call may succeed.
    pub(crate) retry_after: Duration,
    /// The sentence that explains it.
    pub(crate) message: String,
}

impl Throttled {
    /// RESOURCE_EXHAUSTED with an ErrorInfo (`ERROR_REASON_THROTTLED`, metadata `quota`,
    /// `limit`, `retry_after_ms`) and a RetryInfo.
    pub(crate) fn status(&self) -> Status {
        use tonic_types::{ErrorDetails, StatusExt};
        let mut details = ErrorDetails::with_retry_info(Some(self.retry_after));
        details.set_error_info(
            ErrorReason::Throttled.as_str_name(),
            "cairn",
            HashMap::from([
                ("quota".to_string(), self.limit.to_string()),
                ("limit".to_string(), self.value.to_string()),
                (
                    "retry_after_ms".to_string(),
                    self.retry_after.as_millis().to_string(),
                ),
            ]),
        );
        Status::with_error_details(tonic::Code::ResourceExhausted, &self.message, details)
    }
}

/// A token bucket whose tokens may go negative (debt).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    /// The rate it was last topped up at.
    rate: f64,
}

impl Bucket {
    /// Tops the bucket up for the time since it was last seen, at `rate` per second.
    fn refill(&mut self, rate: f64, now: Instant) {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + secs * rate).min(rate * BURST_SECS);
        self.at = now;
        self.rate = rate;
    }

    /// True when the bucket would be full by `now`: dropping it then forgets nothing (a
    /// bucket in debt must stay, or its debt would be forgiven).
    fn full_by(&self, now: Instant) -> bool {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens + secs * self.rate >= self.rate * BURST_SECS
    }
}

/// The quotas one principal has, per second, for the whole cluster, by [`Kind::index`].
type Rates = [Option<u64>; 3];

fn rates(q: &Quota) -> Rates {
    [
        q.produce_bytes_per_sec,
        q.fetch_bytes_per_sec,
        q.requests_per_sec,
    ]
}

/// The quota table as the agent applies it.
#[derive(Debug, Default)]
struct Table {
    /// Each principal with quotas of its own, with the default's filled in.
    principals: HashMap<String, Rates>,
    /// The default's (every other principal, and unauthenticated calls).
    default: Rates,
}

impl Table {
    fn rates(&self, principal: &str) -> &Rates {
        self.principals.get(principal).unwrap_or(&self.default)
    }

    fn is_empty(&self) -> bool {
        self.principals.is_empty() && self.default.iter().all(Option::is_none)
    }
}

/// The agent's quotas: the table read from metadata, the cluster's size, and the buckets.
#[derive(Debug)]
pub(crate) struct Quotas {
    table: RwLock<Arc<Table>>,
    /// True when no quota is set: calls skip the buckets.
    none: std::sync::atomic::AtomicBool,
    /// Live agents sharing each rate (at least 1).
    agents: AtomicU64,
    buckets: Mutex<HashMap<(String, Kind), Bucket>>,
    /// Calls throttled, by limit, for /metrics.
    throttled: Throttles,
}

type Counter = prometheus_client::metrics::counter::Counter;

/// Counters by a `limit` label.
pub(crate) type Throttles =
    prometheus_client::metrics::family::Family<Vec<(String, String)>, Counter>;

impl Default for Quotas {
    fn default() -> Self {
        Quotas::new(Throttles::default())
    }
}

impl Quotas {
    /// No quota yet; throttled calls are counted in `throttled`.
    pub(crate) fn new(throttled: Throttles) -> Self {
        Quotas {
            table: RwLock::default(),
            none: std::sync::atomic::AtomicBool::new(true),
            agents: AtomicU64::new(1),
            buckets: Mutex::default(),
            throttled,
        }
    }

    /// Applies a new quota table and cluster size; drops the buckets that are full again
    /// (a principal seen again gets a full one).
    pub(crate) fn set(&self, quotas: Vec<Quota>, live_agents: usize) {
        let default = quotas
            .iter()
            .find(|q| q.principal == DEFAULT_PRINCIPAL)
            .cloned();
        let principals = quotas
            .iter()
            .filter(|q| q.principal != DEFAULT_PRINCIPAL)
            .map(|q| (q.principal.clone(), rates(&q.or(default.as_ref()))))
            .collect();
        let table = Table {
            principals,
            default: default.as_ref().map(rates).unwrap_or_default(),
        };
        self.none.store(table.is_empty(), Ordering::Relaxed);
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
        self.agents
            .store(live_agents.max(1) as u64, Ordering::Relaxed);
        let now = Instant::now();
        self.buckets
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, b| !b.full_by(now));
    }

    /// The number of live agents each rate is divided by.
    pub(crate) fn agents(&self) -> u64 {
        self.agents.load(Ordering::Relaxed)
    }

    fn count(&self, limit: &str) {
        self.throttled
            .get_or_create(&vec![("limit".to_string(), limit.to_string())])
            .inc();
    }

    /// Admits a call of `principal` of `kind` that costs `cost` (0 when its cost is known
    /// only after it ran: see [`Quotas::charge`]). A call fits when the bucket holds its
    /// cost (or is full, for a call bigger than the bucket); else it is admitted after a
    /// hold, the time until the bucket holds it, when that is at most `max_hold` (the
    /// bucket is charged at once, so calls are admitted in the order they came); else it
    /// is throttled. Returns the hold.
    pub(crate) fn take(
        &self,
        principal: Option<&str>,
        kind: Kind,
        cost: u64,
        max_hold: Duration,
    ) -> Result<Duration, Throttled> {
        if self.none.load(Ordering::Relaxed) {
            return Ok(Duration::ZERO);
        }
        let principal = principal.unwrap_or("");
        let table = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let Some(total) = table.rates(principal)[kind.index()] else {
            return Ok(Duration::ZERO);
        };
        let agents = self.agents();
        let rate = total as f64 / agents as f64;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let bucket = buckets
            .entry((principal.to_string(), kind))
            .or_insert(Bucket {
                tokens: rate * BURST_SECS,
                at: now,
                rate,
            });
        bucket.refill(rate, now);
        let need = (cost as f64).min(rate * BURST_SECS);
        if bucket.tokens >= need {
            bucket.tokens -= cost as f64;
            return Ok(Duration::ZERO);
        }
        let wait = Duration::from_secs_f64((need - bucket.tokens) / rate).max(MIN_RETRY);
        if wait <= max_hold {
            bucket.tokens -= cost as f64;
            return Ok(wait);
        }
        drop(buckets);
        let retry_after = wait.saturating_sub(max_hold).max(MIN_RETRY);
        self.count(kind.name());
        let who = if principal.is_empty() {
            "unauthenticated calls are".to_string()
        } else {
            format!("principal `{principal}` is")
        };
        let share = if agents > 1 {
            format!(", {} on each of {agents} agents", total / agents)
        } else {
            String::new()
        };
        let unit = match kind {
            Kind::ProduceBytes => "produced bytes per second",
            Kind::FetchBytes => "fetched bytes per second",
            Kind::Requests => "calls per second",
        };
        Err(Throttled {
            limit: kind.name(),
            value: total,
            retry_after,
            message: format!(
                "{who} over the quota of {total} {unit}{share}; retry in {} ms",
                retry_after.as_millis()
            ),
        })
    }

    /// Charges `principal`'s bucket of `kind` for `cost` taken by a call already admitted.
    pub(crate) fn charge(&self, principal: Option<&str>, kind: Kind, cost: u64) {
        if self.none.load(Ordering::Relaxed) || cost == 0 {
            return;
        }
        let principal = principal.unwrap_or("");
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(b) = buckets.get_mut(&(principal.to_string(), kind)) {
            b.tokens -= cost as f64;
        }
    }
}

/// What one connection has in flight.
#[derive(Debug)]
pub(crate) struct ConnectionUse {
    long_polls: AtomicUsize,
    bytes: AtomicU64,
    limits: ConnectionLimits,
    quotas: Arc<Quotas>,
}

/// The per-connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConnectionLimits {
    /// Long-polls waiting at once.
    pub(crate) long_polls: usize,
    /// Request bytes received and not yet answered.
    pub(crate) bytes: u64,
}

/// Every open connection's use, by its peer's address.
#[derive(Debug)]
pub(crate) struct Connections {
    map: Mutex<HashMap<SocketAddr, Weak<ConnectionUse>>>,
    limits: ConnectionLimits,
    quotas: Arc<Quotas>,
}

impl Connections {
    /// No connection yet.
    pub(crate) fn new(limits: ConnectionLimits, quotas: Arc<Quotas>) -> Self {
        Connections {
            map: Mutex::default(),
            limits,
            quotas,
        }
    }

    /// The use of the connection from `peer`, shared by its calls in flight.
    pub(crate) fn of(&self, peer: SocketAddr) -> Arc<ConnectionUse> {
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(u) = map.get(&peer).and_then(Weak::upgrade) {
            return u;
        }
        let u = Arc::new(ConnectionUse {
            long_polls: AtomicUsize::new(0),
            bytes: AtomicU64::new(0),
            limits: self.limits,
            quotas: self.quotas.clone(),
        });
        // Entries of connections with nothing in flight are swept as the map grows.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, w| w.strong_count() > 0);
        }
        map.insert(peer, Arc::downgrade(&u));
        u
    }
}

/// A long-poll counted against its connection while it lives.
#[derive(Debug)]
pub(crate) struct LongPoll(Arc<ConnectionUse>);

impl Drop for LongPoll {
    fn drop(&mut self) {
        self.0.long_polls.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ConnectionUse {
    /// Counts a long-poll, unless the connection has its most already.
    pub(crate) fn long_poll(self: &Arc<Self>) -> Result<LongPoll, Throttled> {
        let max = self.limits.long_polls;
        let before = self.long_polls.fetch_add(1, Ordering::SeqCst);
        let poll = LongPoll(self.clone());
        if before >= max {
            drop(poll);
            self.quotas.count("long_polls_per_connection");
            return Err(Throttled {
                limit: "long_polls_per_connection",
                value: max as u64,
                retry_after: CONNECTION_RETRY,
                message: format!(
                    "this connection already has {max} long-polls waiting, the most an agent \
                     allows one connection (max_long_polls_per_connection); wait for some to \
                     end or spread them over connections"
                ),
            });
        }
        Ok(poll)
    }

    /// Long-polls waiting on this connection now.
    #[cfg(test)]
    pub(crate) fn long_polls(&self) -> usize {
        self.long_polls.load(Ordering::SeqCst)
    }

    /// Counts `n` more request bytes in flight, unless that passes the limit.
    fn hold(&self, n: u64) -> Result<(), Throttled> {
        let max = self.limits.bytes;
        let before = self.bytes.fetch_add(n, Ordering::SeqCst);
        if before + n > max {
            self.bytes.fetch_sub(n, Ordering::SeqCst);
            self.quotas.count("bytes_in_flight_per_connection");
            return Err(Throttled {
                limit: "bytes_in_flight_per_connection",
                value: max,
                retry_after: CONNECTION_RETRY,
                message: format!(
                    "this connection has {before} request bytes in flight; {n} more would pass \
                     the {max} an agent allows one connection (max_connection_bytes); send \
                     again once earlier calls are answered"
                ),
            });
        }
        Ok(())
    }
}

/// The request bytes of one call, counted against its connection until the call is
/// answered (dropped).
#[derive(Debug)]
pub(crate) struct Held {
    conn: Arc<ConnectionUse>,
    bytes: Arc<AtomicU64>,
}

impl Held {
    /// Nothing held yet on `conn`.
    pub(crate) fn new(conn: Arc<ConnectionUse>) -> Self {
        Held {
            conn,
            bytes: Arc::default(),
        }
    }

    /// A request body that counts its bytes here as they arrive, and fails the call
    /// (THROTTLED) when the connection would pass its limit.
    pub(crate) fn body(&self, inner: tonic::body::Body) -> tonic::body::Body {
        tonic::body::Body::new(Counted {
            inner,
            conn: self.conn.clone(),
            held: self.bytes.clone(),
        })
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let n = self.bytes.load(Ordering::SeqCst);
        self.conn.bytes.fetch_sub(n, Ordering::SeqCst);
    }
}

/// See [`Held::body`].
struct Counted {
    inner: tonic::body::Body,
    conn: Arc<ConnectionUse>,
    held: Arc<AtomicU64>,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Status>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled
            && let Some(data) = frame.data_ref()
        {
            let n = data.len() as u64;
            if let Err(t) = self.conn.hold(n) {
                return Poll::Ready(Some(Err(t.status())));
            }
            self.held.fetch_add(n, Ordering::SeqCst);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(p: &str, produce: Option<u64>, requests: Option<u64>) -> Quota {
        Quota {
            principal: p.into(),
            produce_bytes_per_sec: produce,
            fetch_bytes_per_sec: None,
            requests_per_sec: requests,
        }
    }

    #[test]
    fn no_quota_admits_everything() {
        let q = Quotas::default();
        for _ in 0..1000 {
            assert!(
                q.take(Some("a"), Kind::ProduceBytes, 1 << 30, Duration::ZERO)
                    .is_ok()
            );
        }
        q.set(vec![quota("b", Some(10), None)], 1);
        assert!(
            q.take(Some("a"), Kind::ProduceBytes, 1 << 30, Duration::ZERO)
                .is_ok()
        );
        assert!(
            q.take(Some("a"), Kind::ProduceBytes, 1 << 30, Duration::ZERO)
                .is_ok()
        );
    }

    #[test]
    fn a_bucket_admits_until_in_debt_and_says_when_it_is_out() {
        let q = Quotas::default();
        q.set(vec![quota("a", Some(1000), None)], 1);
        // A full bucket (one second's worth) admits a call bigger than it.
        assert!(
            q.take(Some("a"), Kind::ProduceBytes, 3000, Duration::ZERO)
                .is_ok()
        );
        let t = q
            .take(Some("a"), Kind::ProduceBytes, 1, Duration::ZERO)
            .unwrap_err();
        assert_eq!(t.limit, "produce_bytes_per_second");
        assert_eq!(t.value, 1000);
        // 2000 bytes of debt at 1000 per second.
        assert!(
            t.retry_after > Duration::from_millis(1900)
                && t.retry_after <= Duration::from_millis(2100),
            "{:?}",
            t.retry_after
        );
        // With a long enough hold, the call is admitted after it, and the next one after
        // both.
        let hold = q.take(Some("a"), Kind::ProduceBytes, 500, Duration::from_secs(3));
        assert!(
            hold.as_ref()
                .is_ok_and(|h| *h > Duration::from_millis(2400)),
            "{hold:?}"
        );
        let hold = q.take(Some("a"), Kind::ProduceBytes, 500, Duration::from_secs(3));
        assert!(
            hold.as_ref()
                .is_ok_and(|h| *h > Duration::from_millis(2900)),
            "{hold:?}"
        );
        assert!(t.message.contains("principal `a`"), "{}", t.message);
        let status = t.status();
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        let details = status.get_error_details();
        assert_eq!(
            details.retry_info().and_then(|r| r.retry_delay),
            Some(t.retry_after)
        );
        assert_eq!(
            details.error_info().map(|i| i.reason.as_str()),
            Some("ERROR_REASON_THROTTLED")
        );
        // Another principal, and another kind, have buckets of their own.
        assert!(
            q.take(Some("b"), Kind::ProduceBytes, 5000, Duration::ZERO)
                .is_ok()
        );
        assert!(
            q.take(Some("a"), Kind::FetchBytes, 5000, Duration::ZERO)
                .is_ok()
        );
    }

    #[test]
    fn the_default_covers_the_others_and_rates_are_shared_by_the_agents() {
        let q = Quotas::default();
        q.set(
            vec![
                quota("*", Some(100), Some(4)),
                quota("a", Some(10_000), None),
            ],
            2,
        );
        // `a` has its own produce rate and the default's request rate, halved: 2 a second,
        // so a full bucket holds 2 calls.
        assert!(q.take(Some("a"), Kind::Requests, 1, Duration::ZERO).is_ok());
        assert!(q.take(Some("a"), Kind::Requests, 1, Duration::ZERO).is_ok());
        let t = q
            .take(Some("a"), Kind::Requests, 1, Duration::ZERO)
            .unwrap_err();
        assert!(t.message.contains("2 on each of 2 agents"), "{}", t.message);
        // Unauthenticated calls have the default.
        assert!(
            q.take(None, Kind::ProduceBytes, 200, Duration::ZERO)
                .is_ok()
        );
        let t = q
            .take(None, Kind::ProduceBytes, 1, Duration::ZERO)
            .unwrap_err();
        assert!(t.message.starts_with("unauthenticated"), "{}", t.message);
        // 150 bytes of debt at 50 a second.
        assert!(
            t.retry_after > Duration::from_millis(2900),
            "{:?}",
            t.retry_after
        );
    }

    #[test]
    fn a_refresh_keeps_a_bucket_in_debt() {
        let q = Quotas::default();
        let table = vec![quota("a", Some(1000), None)];
        q.set(table.clone(), 1);
        assert!(
            q.take(Some("a"), Kind::ProduceBytes, 5000, Duration::ZERO)
                .is_ok()
        );
        q.set(table, 1);
        assert!(
            q.take(Some("a"), Kind::ProduceBytes, 1, Duration::ZERO)
                .is_err()
        );
        // Idle for two seconds but still 3000 in debt: kept; paid back and topped up: not.
        let now = Instant::now();
        let two_ago = now.checked_sub(Duration::from_secs(2)).unwrap_or(now);
        let in_debt = Bucket {
            tokens: -5000.0,
            at: two_ago,
            rate: 1000.0,
        };
        assert!(!in_debt.full_by(now));
        let paid = Bucket {
            tokens: -1000.0,
            ..in_debt
        };
        assert!(paid.full_by(now));
    }

    #[test]
    fn charges_after_the_call_count_against_the_next() {
        let q = Quotas::default();
        q.set(
            vec![Quota {
                principal: "*".into(),
                fetch_bytes_per_sec: Some(100),
                ..Quota::default()
            }],
            1,
        );
        assert!(
            q.take(Some("r"), Kind::FetchBytes, 0, Duration::ZERO)
                .is_ok()
        );
        q.charge(Some("r"), Kind::FetchBytes, 250);
        assert!(
            q.take(Some("r"), Kind::FetchBytes, 0, Duration::ZERO)
                .is_err()
        );
    }

    #[test]
    fn a_connection_is_capped_in_long_polls_and_bytes() {
        let quotas = Arc::new(Quotas::default());
        let conns = Connections::new(
            ConnectionLimits {
                long_polls: 2,
                bytes: 100,
            },
            quotas,
        );
        let peer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let c = conns.of(peer);
        let a = c.long_poll().unwrap();
        let _b = c.long_poll().unwrap();
        let t = c.long_poll().unwrap_err();
        assert_eq!(t.limit, "long_polls_per_connection");
        assert_eq!(c.long_polls(), 2);
        drop(a);
        assert!(c.long_poll().is_ok());
        // The same peer is the same connection; another is not.
        assert_eq!(conns.of(peer).long_polls(), 1);
        assert_eq!(conns.of("127.0.0.1:5001".parse().unwrap()).long_polls(), 0);

        let held = Held::new(c.clone());
        c.hold(60).unwrap();
        held.bytes.fetch_add(60, Ordering::SeqCst);
        assert!(c.hold(50).is_err());
        drop(held);
        assert!(c.hold(100).is_ok());
    }
}
