//! The write path's core: one open segment buffer shared by every partition, sealed by size
//! or linger; one object PUT per sealed segment (several may run at once); commits in seal
//! order; each producer answered only after its segment's PUT and commit both succeeded.
//!
//! ```text
//! produce handlers ──Append──▶ batcher task ──seal──▶ upload tasks (≤ max_inflight)
//!                                   │                        │
//!                                   └──in seal order──▶ committer task ──▶ replies
//! ```

use std::sync::Arc;

use bytes::Bytes;
use cairn_metadata::{BatchOutcome, Clock, CommitBatch, Metadata, ProducerStamp, SegmentCommit};
use cairn_proto::v2::FrameHeader;
use cairn_storage::{SegmentBuilder, StorageError, keys};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::faults::Faults;
use crate::metrics::AgentMetrics;
use crate::{AgentError, AgentSettings};

/// One validated frame waiting for a segment: its header (stamped with the append time)
/// and the producer's payload, untouched.
#[derive(Debug, Clone)]
pub(crate) struct PendingBatch {
    pub(crate) topic_id: u64,
    pub(crate) partition: u32,
    pub(crate) header: FrameHeader,
    pub(crate) payload: Bytes,
    pub(crate) min_ts: i64,
    pub(crate) max_ts: i64,
    /// The idempotent producer's stamp, if any.
    pub(crate) producer: Option<ProducerStamp>,
    /// Conditional append: the partition's expected next offset.
    pub(crate) expected_offset: Option<i64>,
}

type Reply = oneshot::Sender<Result<Vec<BatchOutcome>, AgentError>>;

/// One produce request's batches, waiting in the open segment.
struct Request {
    batches: Vec<PendingBatch>,
    /// All batches commit together or none does.
    atomic: bool,
    reply: Reply,
}

enum Command {
    Append(Request),
    Flush,
    Shutdown(oneshot::Sender<()>),
}

/// The handle produce handlers use.
#[derive(Debug, Clone)]
pub(crate) struct Batcher {
    tx: mpsc::Sender<Command>,
}

/// Where a request's batches ended up in a sealed segment.
struct Waiter {
    reply: Reply,
    slots: Vec<usize>,
}

struct Open {
    opened: Instant,
    requests: Vec<Request>,
    bytes: usize,
    batches: usize,
    deadline: Instant,
}

struct Sealed {
    key: Path,
    commit: SegmentCommit,
    waiters: Vec<Waiter>,
    upload: JoinHandle<Result<(), AgentError>>,
    _permit: OwnedSemaphorePermit,
}

struct Ctx {
    metrics: Arc<AgentMetrics>,
    settings: AgentSettings,
    store: Arc<dyn ObjectStore>,
    clock: Arc<dyn Clock>,
    permits: Arc<Semaphore>,
    sealed: mpsc::Sender<Sealed>,
}

impl Batcher {
    /// Starts the batcher and committer tasks.
    pub(crate) fn start(
        settings: AgentSettings,
        store: Arc<dyn ObjectStore>,
        metadata: Metadata,
        faults: Arc<Faults>,
        metrics: Arc<AgentMetrics>,
    ) -> Batcher {
        let (tx, rx) = mpsc::channel(1024);
        let (sealed_tx, sealed_rx) = mpsc::channel(settings.max_inflight_segments);
        let clock = metadata.clock().clone();
        let committer = tokio::spawn(commit_loop(sealed_rx, metadata, faults, metrics.clone()));
        let ctx = Ctx {
            metrics,
            permits: Arc::new(Semaphore::new(settings.max_inflight_segments)),
            clock,
            settings,
            store,
            sealed: sealed_tx,
        };
        tokio::spawn(batch_loop(rx, ctx, committer));
        Batcher { tx }
    }

    /// Adds a request's batches to the open segment and waits for their outcomes. An
    /// atomic request's batches commit together or not at all.
    pub(crate) async fn append(
        &self,
        batches: Vec<PendingBatch>,
        atomic: bool,
    ) -> Result<Vec<BatchOutcome>, AgentError> {
        self.submit(batches, atomic).await?.outcomes().await
    }

    /// Adds a request's batches to the open segment, behind every request submitted before
    /// it; the returned ticket yields their outcomes.
    pub(crate) async fn submit(
        &self,
        batches: Vec<PendingBatch>,
        atomic: bool,
    ) -> Result<Ticket, AgentError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(Request {
                batches,
                atomic,
                reply,
            }))
            .await
            .map_err(|_| AgentError::ShuttingDown("the segment writer has stopped".into()))?;
        Ok(Ticket(rx))
    }

    /// Seals the open segment now instead of at its linger deadline.
    pub(crate) async fn flush(&self) {
        let _ = self.tx.send(Command::Flush).await;
    }

    /// Seals the open segment, waits until every sealed segment is committed and answered,
    /// and stops. Appends after this fail with UNAVAILABLE.
    pub(crate) async fn shutdown(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Command::Shutdown(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

/// A submitted request's place in the segment writer: its outcomes once its segment is
/// durable and committed (or its failure).
pub(crate) struct Ticket(oneshot::Receiver<Result<Vec<BatchOutcome>, AgentError>>);

impl Ticket {
    /// Waits for the request's outcomes, one per batch in request order.
    pub(crate) async fn outcomes(self) -> Result<Vec<BatchOutcome>, AgentError> {
        self.0.await.map_err(|_| {
            AgentError::ShuttingDown("the segment writer stopped before answering".into())
        })?
    }
}

async fn batch_loop(mut rx: mpsc::Receiver<Command>, ctx: Ctx, committer: JoinHandle<()>) {
    let mut open: Option<Open> = None;
    let done = loop {
        let deadline = open.as_ref().map(|o| o.deadline);
        let cmd = tokio::select! {
            biased;
            cmd = rx.recv() => cmd,
            _ = sleep_until(deadline), if deadline.is_some() => {
                seal(&ctx, open.take()).await;
                continue;
            }
        };
        match cmd {
            Some(Command::Append(request)) => {
                let n = request.batches.len();
                let bytes: usize = request.batches.iter().map(|b| b.payload.len() + 96).sum();
                if open
                    .as_ref()
                    .is_some_and(|o| o.batches + n > ctx.settings.segment_max_batches)
                {
                    seal(&ctx, open.take()).await;
                }
                let o = open.get_or_insert_with(|| Open {
                    opened: Instant::now(),
                    requests: Vec::new(),
                    bytes: 0,
                    batches: 0,
                    deadline: Instant::now() + ctx.settings.linger,
                });
                o.bytes += bytes;
                o.batches += n;
                o.requests.push(request);
                if o.bytes >= ctx.settings.segment_max_bytes {
                    seal(&ctx, open.take()).await;
                }
            }
            Some(Command::Flush) => seal(&ctx, open.take()).await,
            Some(Command::Shutdown(done)) => {
                seal(&ctx, open.take()).await;
                break Some(done);
            }
            None => {
                seal(&ctx, open.take()).await;
                break None;
            }
        }
    };
    rx.close();
    // Answer anything that raced with shutdown.
    while let Some(cmd) = rx.recv().await {
        if let Command::Append(request) = cmd {
            let _ = request.reply.send(Err(AgentError::ShuttingDown(
                "the agent is shutting down; retry on another agent".into(),
            )));
        }
    }
    drop(ctx);
    let _ = committer.await;
    if let Some(done) = done {
        let _ = done.send(());
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn seal(ctx: &Ctx, open: Option<Open>) {
    let Some(open) = open else { return };
    // Backpressure: wait for a slot before starting another upload.
    let permit = match ctx.permits.clone().acquire_owned().await {
        Ok(p) => p,
        Err(_) => {
            fail_all(
                open.requests,
                AgentError::ShuttingDown("uploads closed".into()).shared(),
            );
            return;
        }
    };
    ctx.metrics
        .segment_fill_seconds
        .observe(open.opened.elapsed().as_secs_f64());
    let now_ms = ctx.clock.now_ms();
    let key = keys::segment_key(now_ms);
    let (chunks, commit, waiters) = match build(&key, open, now_ms) {
        Ok(built) => built,
        Err((e, requests)) => {
            fail_all(requests, e.shared());
            return;
        }
    };
    ctx.metrics.segment_bytes.observe(commit.object_size as f64);
    ctx.metrics.segments_inflight.inc();
    let store = ctx.store.clone();
    let threshold = ctx.settings.multipart_threshold;
    let put_key = key.clone();
    let put_latency = ctx.metrics.segment_put_seconds.clone();
    let upload = tokio::spawn(async move {
        let started = std::time::Instant::now();
        let put = put_segment(store.as_ref(), &put_key, chunks, threshold).await;
        if put.is_ok() {
            put_latency.observe(started.elapsed().as_secs_f64());
        }
        put
    });
    let sealed = Sealed {
        key,
        commit,
        waiters,
        upload,
        _permit: permit,
    };
    if let Err(mpsc::error::SendError(s)) = ctx.sealed.send(sealed).await {
        for w in s.waiters {
            let _ = w
                .reply
                .send(Err(AgentError::ShuttingDown("committer stopped".into())));
        }
    }
}

fn fail_all(requests: Requests, e: Arc<AgentError>) {
    for r in requests {
        let _ = r.reply.send(Err(AgentError::Shared(e.clone())));
    }
}

type Built = (Vec<Bytes>, SegmentCommit, Vec<Waiter>);
/// Requests handed back when a segment cannot be built, so each can be answered.
type Requests = Vec<Request>;

/// Lays the segment out grouped by partition (arrival order kept within a partition), so
/// each partition's batches form one contiguous byte range and one index entry.
fn build(key: &Path, open: Open, sealed_at_ms: i64) -> Result<Built, (AgentError, Requests)> {
    let mut order: Vec<(usize, usize)> = open
        .requests
        .iter()
        .enumerate()
        .flat_map(|(r, req)| (0..req.batches.len()).map(move |b| (r, b)))
        .collect();
    // Stable: arrival order is kept within a partition.
    order.sort_by_key(|&(r, b)| {
        let batch = &open.requests[r].batches[b];
        (batch.topic_id, batch.partition)
    });
    let mut slots: Vec<Vec<usize>> = open
        .requests
        .iter()
        .map(|req| vec![0; req.batches.len()])
        .collect();
    let mut builder = SegmentBuilder::new();
    let mut batches = Vec::with_capacity(order.len());
    for (slot, &(r, b)) in order.iter().enumerate() {
        let req = &open.requests[r];
        let p = &req.batches[b];
        let entry = match builder.push(p.topic_id, p.partition, &p.header, p.payload.clone()) {
            Ok(e) => e,
            Err(e) => {
                let e = StorageError::Encode {
                    key: key.to_string(),
                    source: Arc::new(e),
                };
                return Err((e.into(), open.requests));
            }
        };
        batches.push(CommitBatch {
            topic_id: p.topic_id,
            partition: p.partition,
            position: entry.position,
            length: entry.length,
            record_count: p.header.record_count,
            min_timestamp_ms: p.min_ts,
            max_timestamp_ms: p.max_ts,
            producer: p.producer,
            expected_offset: p.expected_offset,
            atomic_group: req.atomic.then_some(r as u32),
        });
        slots[r][b] = slot;
    }
    let (chunks, size, _footer) = builder.finish(sealed_at_ms);
    let commit = SegmentCommit {
        object_key: key.to_string(),
        object_size: size as u64,
        batches,
    };
    let waiters = open
        .requests
        .into_iter()
        .zip(slots)
        .map(|(req, slots)| Waiter {
            reply: req.reply,
            slots,
        })
        .collect();
    Ok((chunks, commit, waiters))
}

/// Writes one immutable segment object from its chunks (the producers' payloads are not
/// copied into one buffer): one PUT, or a multipart upload above `threshold`.
async fn put_segment(
    store: &dyn ObjectStore,
    key: &Path,
    chunks: Vec<Bytes>,
    threshold: usize,
) -> Result<(), AgentError> {
    let storage =
        |e: object_store::Error| AgentError::from(StorageError::store("PUT", key.as_ref(), e));
    let size: usize = chunks.iter().map(Bytes::len).sum();
    if size <= threshold {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..PutOptions::default()
        };
        store
            .put_opts(key, PutPayload::from_iter(chunks), opts)
            .await
            .map_err(storage)?;
    } else {
        let mut upload = store.put_multipart(key).await.map_err(storage)?;
        let parts = split_parts(chunks, PART_BYTES);
        let uploaded = async {
            // Every part's future is made (in order) before any is awaited; at most
            // PARTS_IN_FLIGHT run at once.
            let pending: Vec<_> = parts.into_iter().map(|p| upload.put_part(p)).collect();
            use futures::{StreamExt, TryStreamExt};
            futures::stream::iter(pending)
                .buffer_unordered(PARTS_IN_FLIGHT)
                .try_collect::<Vec<()>>()
                .await?;
            upload.complete().await
        }
        .await;
        if let Err(e) = uploaded {
            // A failed upload leaves its parts stored (and billed) until aborted; the
            // segment is written again under a new key when the producers retry.
            if let Err(abort) = upload.abort().await {
                tracing::warn!(%key, error = %abort, "aborting a failed multipart upload failed");
            }
            return Err(storage(e));
        }
    }
    Ok(())
}

/// Size of each part of a multipart segment upload but the last (S3 wants at least 5 MiB,
/// and some stores equal sizes).
const PART_BYTES: usize = 8 << 20;

/// Parts of one multipart upload being sent at once.
const PARTS_IN_FLIGHT: usize = 4;

/// Cuts `chunks` into payloads of exactly `part` bytes, the last one shorter, without
/// copying.
fn split_parts(chunks: Vec<Bytes>, part: usize) -> Vec<PutPayload> {
    let mut parts = Vec::new();
    let mut current: Vec<Bytes> = Vec::new();
    let mut filled = 0;
    for mut chunk in chunks {
        while !chunk.is_empty() {
            let take = chunk.len().min(part - filled);
            current.push(chunk.split_to(take));
            filled += take;
            if filled == part {
                parts.push(PutPayload::from_iter(std::mem::take(&mut current)));
                filled = 0;
            }
        }
    }
    if !current.is_empty() {
        parts.push(PutPayload::from_iter(current));
    }
    parts
}

async fn commit_loop(
    mut rx: mpsc::Receiver<Sealed>,
    metadata: Metadata,
    faults: Arc<Faults>,
    metrics: Arc<AgentMetrics>,
) {
    while let Some(sealed) = rx.recv().await {
        let outcome = match sealed.upload.await {
            Ok(Ok(())) => {
                let started = std::time::Instant::now();
                let committed = metadata
                    .commit_segment(&sealed.commit)
                    .await
                    .map_err(|e| match e.kind() {
                        // The store failed, not the request: nothing was committed
                        // and a retry is safe (idempotent producers dedupe it).
                        cairn_metadata::ErrorKind::Unavailable
                        | cairn_metadata::ErrorKind::Internal => AgentError::CommitFailed {
                            object: sealed.key.to_string(),
                            source: e,
                        },
                        _ => AgentError::Meta(e),
                    });
                metrics
                    .commit_seconds
                    .observe(started.elapsed().as_secs_f64());
                if committed.is_ok() {
                    metrics.commits.inc();
                    faults.after_commit();
                }
                committed
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(AgentError::Internal(format!("upload task failed: {e}"))),
        };
        match &outcome {
            Ok(_) => {
                tracing::debug!(object = %sealed.key, batches = sealed.commit.batches.len(), "segment committed")
            }
            Err(e) => {
                tracing::warn!(object = %sealed.key, error = %e, "segment not committed; its producers get an error and retry")
            }
        }
        metrics.segments_inflight.dec();
        let outcome = outcome.map_err(AgentError::shared);
        for w in sealed.waiters {
            let reply = match &outcome {
                Ok(all) => w
                    .slots
                    .iter()
                    .map(|&s| {
                        all.get(s).copied().ok_or_else(|| {
                            AgentError::Internal(format!("commit returned no outcome for slot {s}"))
                        })
                    })
                    .collect(),
                Err(e) => Err(AgentError::Shared(e.clone())),
            };
            let _ = w.reply.send(reply);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ops::Range;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;
    use cairn_metadata::{MemoryKv, SystemClock, TopicSpec};
    use futures::stream::BoxStream;
    use object_store::{
        CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta,
        PutMultipartOptions, PutPayload, PutResult,
    };
    use tokio::sync::Notify;

    use super::*;

    /// A store whose first PUT waits until released, so a later segment's PUT finishes
    /// first.
    #[derive(Debug)]
    struct GatedStore {
        inner: object_store::memory::InMemory,
        puts: AtomicUsize,
        gate: Notify,
    }

    impl std::fmt::Display for GatedStore {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "GatedStore")
        }
    }

    #[async_trait]
    impl ObjectStore for GatedStore {
        async fn put_opts(
            &self,
            location: &Path,
            payload: PutPayload,
            opts: PutOptions,
        ) -> object_store::Result<PutResult> {
            if self.puts.fetch_add(1, Ordering::SeqCst) == 0 {
                self.gate.notified().await;
            }
            self.inner.put_opts(location, payload, opts).await
        }
        async fn put_multipart_opts(
            &self,
            location: &Path,
            opts: PutMultipartOptions,
        ) -> object_store::Result<Box<dyn MultipartUpload>> {
            self.inner.put_multipart_opts(location, opts).await
        }
        async fn get_opts(
            &self,
            location: &Path,
            options: GetOptions,
        ) -> object_store::Result<GetResult> {
            self.inner.get_opts(location, options).await
        }
        async fn get_ranges(
            &self,
            location: &Path,
            ranges: &[Range<u64>],
        ) -> object_store::Result<Vec<Bytes>> {
            self.inner.get_ranges(location, ranges).await
        }
        fn delete_stream(
            &self,
            locations: BoxStream<'static, object_store::Result<Path>>,
        ) -> BoxStream<'static, object_store::Result<Path>> {
            self.inner.delete_stream(locations)
        }
        fn list(
            &self,
            prefix: Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
            self.inner.list(prefix)
        }
        async fn list_with_delimiter(
            &self,
            prefix: Option<&Path>,
        ) -> object_store::Result<ListResult> {
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

    fn pending(topic_id: u64, value: &'static str) -> PendingBatch {
        let frame = cairn_proto::build_frame(
            vec![cairn_proto::v2::Record {
                timestamp_ms: 1,
                value: Bytes::from_static(value.as_bytes()),
                ..Default::default()
            }],
            cairn_proto::v2::Codec::None,
            None,
        )
        .unwrap();
        PendingBatch {
            topic_id,
            partition: 0,
            header: frame.header.unwrap(),
            payload: frame.payload,
            min_ts: 1,
            max_ts: 1,
            producer: None,
            expected_offset: None,
        }
    }

    #[tokio::test]
    async fn commits_follow_seal_order_even_when_a_later_put_finishes_first() {
        let store = Arc::new(GatedStore {
            inner: object_store::memory::InMemory::new(),
            puts: AtomicUsize::new(0),
            gate: Notify::new(),
        });
        let kv = Arc::new(MemoryKv::new(cairn_metadata::Limits::default()));
        let metadata = Metadata::new(kv, Arc::new(SystemClock));
        let topic = metadata
            .create_topic(&TopicSpec {
                name: "t".into(),
                partitions: 1,
                codec: cairn_metadata::Codec::None,
                retention_ms: -1,
                retention_bytes: -1,
                value_schema: None,
            })
            .await
            .unwrap();
        let settings = AgentSettings {
            linger: std::time::Duration::from_secs(60),
            ..AgentSettings::default()
        };
        let faults = Arc::new(Faults::new(&crate::FaultSpec::default(), None, None));
        let metrics = Arc::new(AgentMetrics::new(crate::StoreCounters::default(), ""));
        let batcher = Batcher::start(settings, store.clone(), metadata.clone(), faults, metrics);

        // Segment 1: its PUT blocks at the gate.
        let b1 = batcher.clone();
        let first =
            tokio::spawn(async move { b1.append(vec![pending(topic.id, "one")], false).await });
        while store.puts.load(Ordering::SeqCst) < 1 {
            batcher.flush().await;
            tokio::task::yield_now().await;
        }
        // Segment 2 is sealed after segment 1; its PUT completes at once.
        let b2 = batcher.clone();
        let mut second =
            tokio::spawn(async move { b2.append(vec![pending(topic.id, "two")], false).await });
        // Wait until segment 2 has been appended, sealed and PUT.
        while store.puts.load(Ordering::SeqCst) < 2 {
            batcher.flush().await;
            tokio::task::yield_now().await;
        }
        // Segment 2 is uploaded; give a wrongly ordered committer time to answer it.
        let early = tokio::time::timeout(std::time::Duration::from_millis(200), &mut second).await;
        assert!(
            early.is_err(),
            "segment 2 was answered before segment 1 committed"
        );
        let state = metadata.partition_state(topic.id, 0).await.unwrap();
        assert_eq!(state.next_offset, 0, "nothing may commit before segment 1");

        store.gate.notify_one();
        let first = first.await.unwrap().unwrap();
        let second = second.await.unwrap().unwrap();
        assert_eq!(first, vec![BatchOutcome::Committed { base_offset: 0 }]);
        assert_eq!(second, vec![BatchOutcome::Committed { base_offset: 1 }]);
        batcher.shutdown().await;
    }

    #[test]
    fn parts_are_cut_to_the_part_size_without_regard_to_chunk_bounds() {
        let chunks = vec![
            Bytes::from(vec![1u8; 5]),
            Bytes::from(vec![2u8; 9]),
            Bytes::from(vec![3u8; 3]),
        ];
        let parts = split_parts(chunks.clone(), 4);
        let sizes: Vec<usize> = parts.iter().map(PutPayload::content_length).collect();
        assert_eq!(sizes, vec![4, 4, 4, 4, 1]);
        let joined: Vec<u8> = parts
            .iter()
            .flat_map(|p| p.iter().flat_map(|b| b.to_vec()))
            .collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(joined, expected);
        assert!(split_parts(Vec::new(), 4).is_empty());
        assert_eq!(split_parts(vec![Bytes::from(vec![0u8; 8])], 4).len(), 2);
    }

    #[tokio::test]
    async fn a_multipart_segment_upload_that_fails_half_way_is_aborted() {
        let inner: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let rates = cairn_storage::StoreFaultRates {
            part_fail: 1.0,
            ..Default::default()
        };
        let faulty = cairn_storage::FaultyStore::with_rates(inner.clone(), rates, 1);
        let chunks: Vec<Bytes> = (0..5u8).map(|i| Bytes::from(vec![i; 4 << 20])).collect();
        let key = Path::from("segments/half-way");
        let failed = put_segment(&faulty, &key, chunks.clone(), 5 << 20).await;
        assert!(failed.is_err(), "the upload should fail: {failed:?}");
        let counts = faulty.counts();
        assert_eq!((counts.failed_uploads, counts.aborted_uploads), (1, 1));
        assert!(matches!(
            inner.get(&key).await,
            Err(object_store::Error::NotFound { .. })
        ));

        // Without the fault the same segment is stored whole, in three parts.
        let healthy = cairn_storage::FaultyStore::new(inner.clone());
        let r = put_segment(&healthy, &key, chunks.clone(), 5 << 20).await;
        assert!(r.is_ok(), "{r:?}");
        let stored = match inner.get(&key).await {
            Ok(got) => got.bytes().await.ok(),
            Err(_) => None,
        };
        let expected: Vec<u8> = chunks.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(stored.as_deref(), Some(&expected[..]));
    }
}
