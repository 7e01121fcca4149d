//! Object stores: opening one from a URL, and the wrappers that stack on any store — an
//! instrumented one that counts requests and bytes (tests, `cairn bench`, metrics) and a
//! fault-injecting one for tests of the failure paths.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::StorageError;

/// Opens the object store a URL names, with its key prefix applied:
/// `file:///abs/dir` (or a plain directory path), `s3://bucket/prefix`, `memory://`.
///
/// S3 settings come from the usual `AWS_*` environment variables, then from `options`
/// (`("aws_endpoint", "http://127.0.0.1:4566")`, …); an `http://` endpoint is allowed
/// without TLS.
pub fn open_object_store(
    url: &str,
    options: &[(String, String)],
) -> Result<Arc<dyn ObjectStore>, StorageError> {
    let bad = StorageError::Config;
    if url == "memory://" || url == "memory:" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        install_crypto_provider();
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad(format!("object store URL `{url}` names no bucket")));
        }
        let s3 = s3_builder(bucket, options)?
            .build()
            .map_err(|e| bad(format!("cannot configure S3 for `{url}`: {e}")))?;
        return Ok(with_prefix(Arc::new(s3), prefix));
    }
    let dir = match url.strip_prefix("file://") {
        // After `file://` comes a host, then the absolute path: `file://rel/x` names host
        // `rel`, not the relative directory `rel/x`, so it is refused rather than guessed.
        Some(path) if !path.starts_with('/') => {
            return Err(bad(format!(
                "object store URL `{url}` has no absolute path (a file URL is file:///ABSOLUTE/DIR); for a relative directory give the path alone, e.g. `{path}`"
            )));
        }
        Some(path) => path.to_string(),
        None if !url.contains("://") => url.to_string(),
        None => {
            return Err(bad(format!(
                "unsupported object store URL `{url}`: use file:///dir, s3://bucket/prefix or memory://"
            )));
        }
    };
    if dir.is_empty() {
        return Err(bad(format!("object store URL `{url}` names no directory")));
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| bad(format!("cannot create object directory {dir}: {e}")))?;
    let local = object_store::local::LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| bad(format!("cannot open object directory {dir}: {e}")))?;
    Ok(Arc::new(local))
}

/// The S3 client's settings for `bucket`: the `AWS_*` environment, then `options`, plain
/// HTTP when the endpoint is `http://`, short retries, and unsigned bodies by default.
fn s3_builder(
    bucket: &str,
    options: &[(String, String)],
) -> Result<object_store::aws::AmazonS3Builder, StorageError> {
    let bad = StorageError::Config;
    let mut builder = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
    let mut http = std::env::var("AWS_ENDPOINT")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .is_ok_and(|e| e.starts_with("http://"));
    for (k, v) in options {
        let key = k
            .parse()
            .map_err(|e| bad(format!("unknown S3 option `{k}`: {e}")))?;
        http |= k.contains("endpoint") && v.starts_with("http://");
        builder = builder.with_config(key, v);
    }
    if http {
        builder = builder.with_allow_http(true);
    }
    // SigV4 signs a PUT's body with its SHA-256 unless the request says
    // UNSIGNED-PAYLOAD, and that hash was 37% of the agent's CPU while ingesting into
    // LocalStack. It guards nothing Cairn relies on: every frame of a segment and every
    // row group of a Parquet file carries a CRC32C that each read verifies (DATA_LOSS on
    // a mismatch), and an https:// endpoint has TLS in transit. AWS_UNSIGNED_PAYLOAD=false
    // (or the `aws_unsigned_payload` option) signs bodies again.
    let unsigned_given = std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some()
        || options.iter().any(|(k, _)| k.ends_with("unsigned_payload"));
    if !unsigned_given {
        builder = builder.with_unsigned_payload(true);
    }
    // Fail fast enough that a producer hears UNAVAILABLE and retries elsewhere, rather
    // than hanging for object_store's default three minutes.
    builder = builder.with_retry(object_store::RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(15),
        ..object_store::RetryConfig::default()
    });
    Ok(builder)
}

/// Names ring as the process's TLS crypto provider, once. rustls picks one by itself only
/// when a single provider is compiled in, and the Delta Lake library's HTTP client compiles
/// in aws-lc-rs beside the ring that Cairn uses, so without this the S3 client's TLS setup
/// would find none. Every process that opens an object store calls it; later calls (or a
/// provider installed by the embedding program) leave the first in place.
pub fn install_crypto_provider() {
    // An error only says a provider is already installed, which is what is wanted.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn with_prefix(store: Arc<dyn ObjectStore>, prefix: &str) -> Arc<dyn ObjectStore> {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        store
    } else {
        Arc::new(PrefixedStore::new(store, prefix))
    }
}

/// `store` with every key under `prefix`: object_store's `PrefixStore`, except that a GET or
/// HEAD reports the key it was asked for. (`PrefixStore` 0.13 reports the inner key, prefix
/// included, so DataFusion, which checks that a file it HEADs is the one it listed, found no
/// Parquet files under an `s3://bucket/prefix` store and `cairn sql` saw only the tail.)
#[derive(Debug)]
pub struct PrefixedStore(object_store::prefix::PrefixStore<Arc<dyn ObjectStore>>);

impl PrefixedStore {
    /// `store` seen under `prefix` (a key path, e.g. `cairn/prod` or `topics/orders`).
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        PrefixedStore(object_store::prefix::PrefixStore::new(store, prefix))
    }
}

impl fmt::Display for PrefixedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for PrefixedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let mut r = self.0.get_opts(location, options).await?;
        r.meta.location = location.clone();
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.0.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.0.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.0.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }
}

/// Request and byte counters of an [`InstrumentedStore`]; the same counters are exported
/// as Prometheus metrics.
#[derive(Debug, Clone, Default)]
pub struct StoreCounters {
    /// PUT requests (each multipart part, plus one to complete).
    pub puts: Counter,
    /// GET requests (each coalesced range request).
    pub gets: Counter,
    /// Objects deleted.
    pub deletes: Counter,
    /// LIST requests.
    pub lists: Counter,
    /// Bytes PUT.
    pub put_bytes: Counter,
    /// Bytes read by GETs.
    pub get_bytes: Counter,
    /// PUT latency (a multipart upload: each part, and the completion).
    pub put_seconds: Latency,
    /// GET latency.
    pub get_seconds: Latency,
    /// How the latest requests went, for readiness.
    pub health: Arc<StoreHealth>,
}

/// When the object store last answered a request well and last failed one (on
/// [`StoreHealth::now_ms`]'s clock; 0 for never), and the last failure: an agent whose latest request failed
/// is not ready. A missing object is an answer, not a failure.
#[derive(Debug, Default)]
pub struct StoreHealth {
    last_ok_ms: AtomicU64,
    last_failure_ms: AtomicU64,
    last_failure: std::sync::Mutex<String>,
}

impl StoreHealth {
    /// Milliseconds on this process's monotonic clock (from 1, so 0 can mean never): the
    /// times here are compared with each other only, never with wall-clock time.
    pub fn now_ms() -> u64 {
        static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        BASE.get_or_init(std::time::Instant::now)
            .elapsed()
            .as_millis() as u64
            + 1
    }

    /// Records the outcome of one request.
    pub fn record<T>(&self, op: &str, r: &object_store::Result<T>) {
        // A GET of a missing object is an answer; a PUT never legitimately meets NotFound
        // (S3 says it of a missing bucket).
        let failure = match r {
            Ok(_) => None,
            Err(object_store::Error::NotFound { .. }) if op.starts_with("GET") => None,
            Err(e) => Some(e),
        };
        match failure {
            None => self.last_ok_ms.store(Self::now_ms(), Ordering::Relaxed),
            Some(e) => {
                *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = format!("{op}: {e}");
                self.last_failure_ms
                    .store(Self::now_ms(), Ordering::Relaxed);
            }
        }
    }

    /// When a request last succeeded ([`StoreHealth::now_ms`], 0 for never).
    pub fn last_ok_ms(&self) -> u64 {
        self.last_ok_ms.load(Ordering::Relaxed)
    }

    /// The latest failure, when it is more recent than the latest success.
    pub fn failing(&self) -> Option<String> {
        let failed = self.last_failure_ms.load(Ordering::Relaxed);
        (failed != 0 && failed >= self.last_ok_ms()).then(|| {
            self.last_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone()
        })
    }
}

/// Histogram buckets for request latencies: 0.5 ms to ~33 s, doubling.
pub fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.0, 17)
}

/// A latency histogram (buckets of [`latency_buckets`]) exported to Prometheus whose
/// bucket counts can also be read back — prometheus-client keeps its own private — so an
/// agent can report them in its status and a benchmark can take percentiles over a run.
#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram,
    bounds: Arc<[f64]>,
    counts: Arc<[AtomicU64]>,
}

/// A copy of a [`Latency`]'s buckets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LatencySnapshot {
    /// Upper bounds of the buckets in seconds, increasing.
    pub bounds_seconds: Vec<f64>,
    /// Observations per bucket: one per bound, then one more for those above the last.
    pub counts: Vec<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        let bounds: Arc<[f64]> = latency_buckets().collect();
        Latency {
            histogram: Histogram::new(bounds.iter().copied()),
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            bounds,
        }
    }
}

impl Latency {
    /// Records one observation of `seconds`.
    pub fn observe(&self, seconds: f64) {
        self.histogram.observe(seconds);
        let bucket = self.bounds.partition_point(|&b| b < seconds);
        if let Some(c) = self.counts.get(bucket) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The Prometheus histogram fed by [`Latency::observe`], to register.
    pub fn histogram(&self) -> Histogram {
        self.histogram.clone()
    }

    /// The bucket counts now.
    pub fn snapshot(&self) -> LatencySnapshot {
        LatencySnapshot {
            bounds_seconds: self.bounds.to_vec(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
        }
    }
}

impl LatencySnapshot {
    /// The observations made between `earlier` and this snapshot (same buckets).
    pub fn since(&self, earlier: &LatencySnapshot) -> LatencySnapshot {
        LatencySnapshot {
            bounds_seconds: self.bounds_seconds.clone(),
            counts: self
                .counts
                .iter()
                .enumerate()
                .map(|(i, &c)| c.saturating_sub(earlier.counts.get(i).copied().unwrap_or(0)))
                .collect(),
        }
    }

    /// The `q` quantile (0 to 1) in seconds, interpolated linearly inside the bucket it
    /// falls in, as Prometheus's `histogram_quantile` does; `None` without observations.
    /// A quantile above the last bound is reported as the last bound.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total: u64 = self.counts.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c > 0 && (seen + c) as f64 >= rank {
                let Some(&upper) = self.bounds_seconds.get(i) else {
                    return self.bounds_seconds.last().copied();
                };
                let lower = if i == 0 {
                    0.0
                } else {
                    self.bounds_seconds[i - 1]
                };
                let within = ((rank - seen as f64) / c as f64).clamp(0.0, 1.0);
                return Some(lower + (upper - lower) * within);
            }
            seen += c;
        }
        self.bounds_seconds.last().copied()
    }
}

/// A point-in-time copy of [`StoreCounters`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoreStats {
    /// PUT requests (a multipart upload counts each part, plus one to complete it).
    pub puts: u64,
    /// GET requests (each range counts).
    pub gets: u64,
    /// DELETE requests.
    pub deletes: u64,
    /// LIST requests.
    pub lists: u64,
    /// Bytes uploaded.
    pub put_bytes: u64,
    /// Bytes downloaded.
    pub get_bytes: u64,
}

impl StoreCounters {
    /// The counters now.
    pub fn snapshot(&self) -> StoreStats {
        StoreStats {
            puts: self.puts.get(),
            gets: self.gets.get(),
            deletes: self.deletes.get(),
            lists: self.lists.get(),
            put_bytes: self.put_bytes.get(),
            get_bytes: self.get_bytes.get(),
        }
    }
}

/// An [`ObjectStore`] that counts the requests and bytes passing through it.
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    counters: Arc<StoreCounters>,
}

impl InstrumentedStore {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        InstrumentedStore {
            inner,
            counters: Arc::new(StoreCounters::default()),
        }
    }

    /// The live counters (shared; keep the `Arc` to read them later).
    pub fn counters(&self) -> Arc<StoreCounters> {
        self.counters.clone()
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    counters: Arc<StoreCounters>,
}

#[async_trait]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.counters.puts.inc_by(1);
        self.counters.put_bytes.inc_by(data.content_length() as u64);
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.counters.puts.inc_by(1);
        let started = std::time::Instant::now();
        let r = self.inner.complete().await;
        self.counters.health.record("PUT (complete multipart)", &r);
        let r = r?;
        self.counters
            .put_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(r)
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.counters.puts.inc_by(1);
        self.counters
            .put_bytes
            .inc_by(payload.content_length() as u64);
        let started = std::time::Instant::now();
        let r = self.inner.put_opts(location, payload, opts).await;
        self.counters.health.record("PUT", &r);
        let r = r?;
        self.counters
            .put_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let inner = self.inner.put_multipart_opts(location, opts).await;
        self.counters.health.record("PUT (start multipart)", &inner);
        let inner = inner?;
        Ok(Box::new(CountingUpload {
            inner,
            counters: self.counters.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.counters.gets.inc_by(1);
        let started = std::time::Instant::now();
        let r = self.inner.get_opts(location, options).await;
        self.counters.health.record("GET", &r);
        let r = r?;
        self.counters
            .get_seconds
            .observe(started.elapsed().as_secs_f64());
        self.counters.get_bytes.inc_by(r.range.end - r.range.start);
        Ok(r)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        // Delegate so the inner store's coalescing applies; count what it returns.
        let started = std::time::Instant::now();
        let r = self.inner.get_ranges(location, ranges).await;
        self.counters.health.record("GET", &r);
        let r = r?;
        self.counters
            .get_seconds
            .observe(started.elapsed().as_secs_f64());
        self.counters.gets.inc_by(coalesced_requests(ranges));
        let bytes: u64 = r.iter().map(|b| b.len() as u64).sum();
        self.counters.get_bytes.inc_by(bytes);
        Ok(r)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let counters = self.counters.clone();
        self.inner
            .delete_stream(locations)
            .inspect(move |r| {
                if r.is_ok() {
                    counters.deletes.inc_by(1);
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.counters.lists.inc_by(1);
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.counters.lists.inc_by(1);
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.counters.puts.inc_by(1);
        self.inner.copy_opts(from, to, options).await
    }
}

/// How many GET requests `object_store`'s range coalescing makes for `ranges` (ranges
/// closer than 1 MiB are merged), so the counters match what the store is billed.
fn coalesced_requests(ranges: &[Range<u64>]) -> u64 {
    let mut sorted: Vec<&Range<u64>> = ranges.iter().collect();
    sorted.sort_by_key(|r| r.start);
    let mut n = 0;
    let mut end: Option<u64> = None;
    for r in sorted {
        match end {
            Some(e) if r.start <= e + (1 << 20) => end = Some(e.max(r.end)),
            _ => {
                n += 1;
                end = Some(r.end);
            }
        }
    }
    n
}

/// Rates of the faults a [`FaultyStore`] injects at random (each a probability from 0 to 1
/// per request).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StoreFaultRates {
    /// A PUT (plain or multipart start) fails and is not applied, as a 500 or 503 would.
    pub put_fail: f64,
    /// A GET fails, as a 500 or 503 would.
    pub get_fail: f64,
    /// A PUT is applied but its reply is lost: the caller sees a failure.
    pub put_reply_lost: f64,
    /// A request is answered only after [`StoreFaultRates::slow_for`] (a slow store, or a
    /// timeout when the delay is longer than the caller waits).
    pub slow: f64,
    /// How long a slow request waits.
    pub slow_for: std::time::Duration,
    /// A multipart upload fails half way: its second part fails (or, with one part, its
    /// completion), after the first part was uploaded. The caller should abort it.
    pub part_fail: f64,
}

/// An [`ObjectStore`] that injects faults, for tests of the failure paths: the next N PUTs
/// or GETs fail on request, and PUT and GET failures, lost PUT replies and slow requests
/// happen at random at given rates, in a sequence a seed makes repeatable. Failures are
/// `object_store::Error::Generic`, as a 5xx would be.
#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    put_failures: AtomicU32,
    get_failures: AtomicU32,
    rates: StoreFaultRates,
    rng: std::sync::Mutex<rand::rngs::StdRng>,
    failed_puts: std::sync::atomic::AtomicU64,
    failed_gets: std::sync::atomic::AtomicU64,
    lost_put_replies: std::sync::atomic::AtomicU64,
    slowed: std::sync::atomic::AtomicU64,
    failed_uploads: Arc<AtomicU64>,
    aborted_uploads: Arc<AtomicU64>,
}

/// What a [`FaultyStore`] injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreFaultCounts {
    /// PUTs failed (not applied).
    pub failed_puts: u64,
    /// GETs failed.
    pub failed_gets: u64,
    /// PUTs applied whose reply was lost.
    pub lost_put_replies: u64,
    /// Requests slowed down.
    pub slowed: u64,
    /// Multipart uploads failed half way.
    pub failed_uploads: u64,
    /// Multipart uploads the caller aborted (after any failure, injected or not).
    pub aborted_uploads: u64,
}

impl FaultyStore {
    /// Wraps `inner`; no faults scheduled.
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self::with_rates(inner, StoreFaultRates::default(), 0)
    }

    /// Wraps `inner` so that each PUT fails with probability `rate`, in a sequence that
    /// `seed` makes repeatable.
    pub fn with_put_fail_rate(inner: Arc<dyn ObjectStore>, rate: f64, seed: u64) -> Self {
        let rates = StoreFaultRates {
            put_fail: rate,
            ..StoreFaultRates::default()
        };
        Self::with_rates(inner, rates, seed)
    }

    /// Wraps `inner` to inject faults at `rates`, in a sequence that `seed` makes
    /// repeatable.
    pub fn with_rates(inner: Arc<dyn ObjectStore>, rates: StoreFaultRates, seed: u64) -> Self {
        use rand::SeedableRng;
        FaultyStore {
            inner,
            put_failures: AtomicU32::new(0),
            get_failures: AtomicU32::new(0),
            rates,
            rng: std::sync::Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)),
            failed_puts: std::sync::atomic::AtomicU64::new(0),
            failed_gets: std::sync::atomic::AtomicU64::new(0),
            lost_put_replies: std::sync::atomic::AtomicU64::new(0),
            slowed: std::sync::atomic::AtomicU64::new(0),
            failed_uploads: Arc::new(AtomicU64::new(0)),
            aborted_uploads: Arc::new(AtomicU64::new(0)),
        }
    }

    /// PUTs failed on purpose so far.
    pub fn failed_puts(&self) -> u64 {
        self.failed_puts.load(Ordering::SeqCst)
    }

    /// Every fault injected so far.
    pub fn counts(&self) -> StoreFaultCounts {
        StoreFaultCounts {
            failed_puts: self.failed_puts.load(Ordering::SeqCst),
            failed_gets: self.failed_gets.load(Ordering::SeqCst),
            lost_put_replies: self.lost_put_replies.load(Ordering::SeqCst),
            slowed: self.slowed.load(Ordering::SeqCst),
            failed_uploads: self.failed_uploads.load(Ordering::SeqCst),
            aborted_uploads: self.aborted_uploads.load(Ordering::SeqCst),
        }
    }

    /// Whether an event of probability `rate` happens now.
    fn roll(&self, rate: f64) -> bool {
        use rand::Rng;
        if rate <= 0.0 {
            return false;
        }
        let ppm = (rate.clamp(0.0, 1.0) * 1e6) as u32;
        let mut rng = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        rng.random_range(0..1_000_000) < ppm
    }

    /// Waits before a request if this one is to be slow.
    async fn maybe_slow(&self) {
        if self.roll(self.rates.slow) {
            self.slowed.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(self.rates.slow_for).await;
        }
    }

    fn put_fault(&self, op: &str) -> object_store::Result<()> {
        let scheduled = Self::injected(&self.put_failures, op);
        if scheduled.is_err() || self.roll(self.rates.put_fail) {
            self.failed_puts.fetch_add(1, Ordering::SeqCst);
            return Err(injected(op));
        }
        Ok(())
    }

    fn get_fault(&self) -> object_store::Result<()> {
        if Self::injected(&self.get_failures, "GET").is_err() || self.roll(self.rates.get_fail) {
            self.failed_gets.fetch_add(1, Ordering::SeqCst);
            return Err(injected("GET"));
        }
        Ok(())
    }

    /// The next `n` PUTs (plain or multipart) fail.
    pub fn fail_next_puts(&self, n: u32) {
        self.put_failures.store(n, Ordering::SeqCst);
    }

    /// The next `n` GETs fail.
    pub fn fail_next_gets(&self, n: u32) {
        self.get_failures.store(n, Ordering::SeqCst);
    }

    fn injected(counter: &AtomicU32, op: &str) -> object_store::Result<()> {
        if counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(injected(op));
        }
        Ok(())
    }
}

fn injected(op: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "FaultyStore",
        source: format!("injected {op} failure").into(),
    }
}

/// A multipart upload of a [`FaultyStore`]: when `fail` is set, the second part fails (the
/// first one is uploaded), or the completion when there was only one part.
#[derive(Debug)]
struct FaultyUpload {
    inner: Box<dyn MultipartUpload>,
    parts: usize,
    fail: bool,
    failed: Arc<AtomicU64>,
    aborted: Arc<AtomicU64>,
}

#[async_trait]
impl MultipartUpload for FaultyUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.parts += 1;
        if self.fail && self.parts == 2 {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Box::pin(async { Err(injected("multipart part")) });
        }
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        if self.fail && self.parts < 2 {
            self.failed.fetch_add(1, Ordering::SeqCst);
            return Err(injected("multipart completion"));
        }
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.aborted.fetch_add(1, Ordering::SeqCst);
        self.inner.abort().await
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Faulty({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.maybe_slow().await;
        self.put_fault("PUT")?;
        let done = self.inner.put_opts(location, payload, opts).await?;
        if self.roll(self.rates.put_reply_lost) {
            self.lost_put_replies.fetch_add(1, Ordering::SeqCst);
            return Err(object_store::Error::Generic {
                store: "FaultyStore",
                source: "injected lost reply: the PUT was applied".into(),
            });
        }
        Ok(done)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.maybe_slow().await;
        self.put_fault("multipart PUT")?;
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        Ok(Box::new(FaultyUpload {
            inner,
            parts: 0,
            fail: self.roll(self.rates.part_fail),
            failed: self.failed_uploads.clone(),
            aborted: self.aborted_uploads.clone(),
        }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.maybe_slow().await;
        self.get_fault()?;
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.maybe_slow().await;
        self.get_fault()?;
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod latency_tests {
    use super::*;

    #[test]
    fn quantiles_interpolate_inside_the_bucket_and_runs_subtract() {
        let l = Latency::default();
        assert_eq!(l.snapshot().quantile(0.99), None);
        let before = l.snapshot();
        // 0.5 ms buckets double: (0.004, 0.008] holds 0.005.
        for _ in 0..99 {
            l.observe(0.005);
        }
        l.observe(1.5);
        let run = l.snapshot().since(&before);
        assert_eq!(run.counts.iter().sum::<u64>(), 100);
        let p50 = run.quantile(0.5).unwrap();
        assert!(p50 > 0.004 && p50 <= 0.008, "{p50}");
        let max = run.quantile(1.0).unwrap();
        assert!(max > 1.024 && max <= 2.048, "{max}");
        l.observe(1000.0);
        assert_eq!(
            l.snapshot().quantile(1.0),
            l.snapshot().bounds_seconds.last().copied()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_url_needs_an_absolute_path() {
        let err = open_object_store("file://rel/x", &[])
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("has no absolute path") && e.contains("`rel/x`")),
            "{err:?}"
        );
        let dir = std::env::temp_dir().join(format!("cairn-file-url-{}", std::process::id()));
        let url = format!("file://{}", dir.display());
        assert!(open_object_store(&url, &[]).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn s3_bodies_go_unsigned_unless_asked_otherwise() {
        use object_store::aws::AmazonS3ConfigKey::UnsignedPayload;
        if std::env::var_os("AWS_UNSIGNED_PAYLOAD").is_some() {
            return;
        }
        let unsigned = |options: &[(String, String)]| {
            s3_builder("b", options)
                .map(|b| b.get_config_value(&UnsignedPayload))
                .ok()
                .flatten()
        };
        assert_eq!(unsigned(&[]).as_deref(), Some("true"));
        let signed = [("aws_unsigned_payload".to_string(), "false".to_string())];
        assert_eq!(unsigned(&signed).as_deref(), Some("false"));
    }

    #[test]
    fn coalescing_counts_requests_like_object_store() {
        assert_eq!(coalesced_requests(&[0..10, 20..30]), 1);
        assert_eq!(coalesced_requests(&[0..10, (5 << 20)..(6 << 20)]), 2);
        assert_eq!(coalesced_requests(&[]), 0);
    }
}

#[cfg(test)]
mod prefix_tests {
    use object_store::ObjectStoreExt;

    use super::*;

    #[tokio::test]
    async fn head_and_get_report_the_key_asked_for() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = PrefixedStore::new(inner.clone(), "bucket-prefix/env");
        let key = Path::from("topics/t/partition=0/a.parquet");
        store
            .put(&key, Bytes::from_static(b"abc").into())
            .await
            .unwrap();
        assert!(
            inner
                .head(&Path::from(
                    "bucket-prefix/env/topics/t/partition=0/a.parquet"
                ))
                .await
                .is_ok()
        );
        let head = store.head(&key).await.unwrap();
        assert_eq!((head.location, head.size), (key.clone(), 3));
        assert_eq!(store.get(&key).await.unwrap().meta.location, key);
        let listed: Vec<_> = store.list(Some(&Path::from("topics"))).collect().await;
        assert_eq!(listed[0].as_ref().unwrap().location, key);
    }
}
