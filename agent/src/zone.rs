//! The zone read cache: the agents of one zone share one cache of object bytes, so a chunk
//! of an object is read from the object store about once per zone however many agents and
//! consumer groups read it (WarpStream's design; the rule is in `peer.proto`).
//!
//! - Every object is cut into chunks, aligned ranges of `chunk_bytes` (4 MiB by default).
//!   Each chunk has one owner among the live agents of the zone: the highest rendezvous
//!   score for (object key, chunk index). Chunks, not partitions: one hot partition's
//!   objects spread over every agent.
//! - [`ZoneStore`] is the object store the read path uses. A range read is split at chunk
//!   boundaries; a piece of a chunk this agent owns comes from its own chunk cache (a miss
//!   reads the whole chunk with one GET, and concurrent misses of one chunk share it); a
//!   piece of another agent's chunk is asked from that agent with `ReadRange` on its peer
//!   port ([`PeerServer`]), which answers from its chunk cache the same way.
//! - An owner that does not answer within `peer_read_timeout`, answers an error, or answers
//!   bytes that fail their CRC32C is skipped for a few seconds and the piece is read through
//!   this agent's own chunk cache instead: never wrong data, at worst one more GET. The read
//!   path also checks what it decodes (frame CRCs, Parquet row-group checksums); when bytes
//!   that came through the zone fail those checks, it reads them again directly from the
//!   store (`Reader`), so a peer that answers garbage with a matching CRC costs a retry,
//!   not a DATA_LOSS.
//! - Membership is the agent registry (zone and peer address of each live agent), read
//!   every 2 s. Agents whose views differ for a moment only read a chunk twice.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use cairn_metadata::Metadata;
use cairn_proto::v2::peer_service_client::PeerServiceClient;
use cairn_proto::v2::peer_service_server::PeerService;
use cairn_proto::v2::{ReadRangeRequest, ReadRangeResponse};
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions,
};
use tonic::transport::{Channel, Endpoint};

use crate::metrics::AgentMetrics;

/// Longest range one `ReadRange` call may ask for.
pub(crate) const MAX_PEER_READ: u64 = 64 << 20;
/// Longest object key a peer may name.
const MAX_KEY_BYTES: usize = 1024;
/// How long an owner that failed is skipped.
const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// How often the zone's membership is read from the registry.
const REFRESH_EVERY: Duration = Duration::from_secs(2);

/// A chunk: object key and chunk index.
type ChunkKey = (Arc<str>, u64);

/// A live agent of the zone that serves the peer port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    id: String,
    /// `http://host:port` of its peer port.
    peer: String,
}

/// Where a piece of a chunk is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// This agent's chunk cache held the chunk.
    LocalHit,
    /// This agent owned the chunk and read it from the store.
    LocalMiss,
    /// The owning agent answered.
    Peer,
    /// The owner failed (no answer in time, an error, a bad checksum): read here instead.
    PeerFailed,
}

impl Source {
    /// The label value of `cairn_zone_cache_reads_total`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Source::LocalHit => "local_hit",
            Source::LocalMiss => "local_miss",
            Source::Peer => "peer",
            Source::PeerFailed => "peer_failed",
        }
    }
}

/// One agent's part of its zone's read cache.
pub(crate) struct ZoneCache {
    /// The agent's own (instrumented) store: what a miss reads.
    store: Arc<dyn ObjectStore>,
    chunk_bytes: u64,
    timeout: Duration,
    chunks: moka::future::Cache<ChunkKey, Bytes>,
    /// This agent's id, once it joined the cluster; before that every chunk is its own.
    me: OnceLock<String>,
    members: Mutex<Arc<Vec<Member>>>,
    suspects: Mutex<HashMap<String, Instant>>,
    peers: Mutex<HashMap<String, PeerServiceClient<Channel>>>,
    metrics: Arc<AgentMetrics>,
    /// How peer ports are called when the agents serve TLS (mTLS, see `AgentTls`).
    peer_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl fmt::Debug for ZoneCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZoneCache")
            .field("chunk_bytes", &self.chunk_bytes)
            .field("me", &self.me.get())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An object-store error shared by every waiter of one failed chunk load.
#[derive(Debug)]
struct Shared(Arc<object_store::Error>);

impl fmt::Display for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Shared {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.0)
    }
}

/// The error again, keeping "not found" (a missing object is DATA_LOSS, not a retry).
fn unshare(e: Arc<object_store::Error>) -> object_store::Error {
    match &*e {
        object_store::Error::NotFound { path, .. } => object_store::Error::NotFound {
            path: path.clone(),
            source: Box::new(Shared(e.clone())),
        },
        _ => object_store::Error::Generic {
            store: "zone cache",
            source: Box::new(Shared(e)),
        },
    }
}

/// A read that starts at or past the object's end. The wording is the one `object_store`
/// uses, which `StorageError::store` classifies as a truncated object.
fn past_the_end(key: &Path, start: u64) -> object_store::Error {
    object_store::Error::Generic {
        store: "zone cache",
        source: format!("Wanted range starting at {start}, but object {key} ends before it").into(),
    }
}

impl ZoneCache {
    /// A zone cache over `store` holding up to `cache_bytes` of owned chunks.
    pub(crate) fn new(
        store: Arc<dyn ObjectStore>,
        chunk_bytes: u64,
        cache_bytes: u64,
        timeout: Duration,
        metrics: Arc<AgentMetrics>,
        peer_tls: Option<tonic::transport::ClientTlsConfig>,
    ) -> Self {
        let chunks = moka::future::Cache::builder()
            .max_capacity(cache_bytes)
            .weigher(|_k: &ChunkKey, v: &Bytes| u32::try_from(v.len() + 64).unwrap_or(u32::MAX))
            .build();
        ZoneCache {
            store,
            chunk_bytes: chunk_bytes.max(1),
            timeout,
            chunks,
            me: OnceLock::new(),
            members: Mutex::default(),
            suspects: Mutex::default(),
            peers: Mutex::default(),
            metrics,
            peer_tls,
        }
    }

    /// Sets this agent's id once it has joined the cluster.
    pub(crate) fn joined(&self, id: &str) {
        let _ = self.me.set(id.to_string());
    }

    /// Reads the zone's members (live agents of `zone` with a peer port) from the registry
    /// every 2 s, for ever.
    pub(crate) async fn follow_members(self: Arc<Self>, metadata: Metadata, zone: String) {
        loop {
            match metadata.live_agents().await {
                Ok(agents) => {
                    let members: Vec<Member> = agents
                        .into_iter()
                        .filter(|a| a.zone == zone && !a.peer_address.is_empty())
                        .map(|a| Member {
                            id: a.id,
                            peer: a.peer_address,
                        })
                        .collect();
                    self.set_members(members);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the zone's agents; keeping the last view")
                }
            }
            tokio::time::sleep(REFRESH_EVERY).await;
        }
    }

    /// How many agents of the zone this agent sees, itself included.
    pub(crate) fn member_count(&self) -> u32 {
        let members = lock(&self.members).clone();
        let me = self.me.get();
        let others = members.iter().filter(|m| Some(&m.id) != me).count();
        u32::try_from(others + 1).unwrap_or(u32::MAX)
    }

    fn set_members(&self, members: Vec<Member>) {
        let mut peers = lock(&self.peers);
        peers.retain(|address, _| members.iter().any(|m| &m.peer == address));
        drop(peers);
        *lock(&self.members) = Arc::new(members);
    }

    /// The owner of chunk `index` of `key` when it is another agent (`None`: this one).
    /// Agents that failed lately are passed over.
    fn owner(&self, key: &str, index: u64) -> Option<Member> {
        let me = self.me.get()?;
        let members = lock(&self.members).clone();
        let now = Instant::now();
        let suspects = {
            let mut s = lock(&self.suspects);
            s.retain(|_, until| *until > now);
            s.clone()
        };
        let best = members
            .iter()
            .filter(|m| &m.id != me && !suspects.contains_key(&m.id))
            .max_by_key(|m| cairn_proto::rendezvous_score(&m.id, key, index))?;
        let mine = cairn_proto::rendezvous_score(me, key, index);
        (cairn_proto::rendezvous_score(&best.id, key, index) > mine).then(|| best.clone())
    }

    /// Skips `id` for a while; true when it was not skipped already.
    fn suspect(&self, id: &str) -> bool {
        let now = Instant::now();
        let mut suspects = lock(&self.suspects);
        let was = suspects.get(id).is_some_and(|until| *until > now);
        suspects.insert(id.to_string(), now + SUSPECT_FOR);
        !was
    }

    fn count(&self, source: Source) {
        self.metrics.zone_reads(source).inc();
    }

    /// Bytes `range` of `key` through the zone: each chunk's piece from its owner.
    pub(crate) async fn read(&self, key: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.read_pieces(key, range, true).await
    }

    /// Bytes `range` of `key` through this agent's chunk cache only (a peer's request).
    async fn read_here(&self, key: &Path, range: Range<u64>) -> object_store::Result<Bytes> {
        self.read_pieces(key, range, false).await
    }

    async fn read_pieces(
        &self,
        key: &Path,
        range: Range<u64>,
        through_owners: bool,
    ) -> object_store::Result<Bytes> {
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        let c = self.chunk_bytes;
        let pieces: Vec<(u64, Range<u64>)> = (range.start / c..=(range.end - 1) / c)
            .map(|i| {
                let piece = range.start.max(i * c)..range.end.min((i + 1).saturating_mul(c));
                (i, piece)
            })
            .collect();
        let parts = futures::future::join_all(pieces.iter().map(|(i, piece)| {
            let (i, piece) = (*i, piece.clone());
            async move {
                match through_owners
                    .then(|| self.owner(key.as_ref(), i))
                    .flatten()
                {
                    Some(owner) => self.read_from_owner(&owner, key, i, piece).await,
                    None => self.slice(key, i, piece).await,
                }
            }
        }))
        .await;
        // A piece shorter than asked is where the object ends: nothing after it counts (a
        // later chunk then starts past the end, and its read fails; an object that ends on
        // a chunk boundary shows only that failure).
        let mut out = Vec::with_capacity((range.end - range.start) as usize);
        for (n, ((_, piece), part)) in pieces.iter().zip(parts).enumerate() {
            let part = match part {
                Ok(p) => p,
                Err(e) if n > 0 && cairn_storage::range_not_satisfiable(&e).is_some() => break,
                Err(e) => return Err(e),
            };
            if pieces.len() == 1 && !part.is_empty() {
                return Ok(part);
            }
            out.extend_from_slice(&part);
            if (part.len() as u64) < piece.end - piece.start {
                break;
            }
        }
        if out.is_empty() {
            return Err(past_the_end(key, range.start));
        }
        Ok(Bytes::from(out))
    }

    /// `piece` of chunk `index`, from the owner; on any failure, from this agent's cache.
    async fn read_from_owner(
        &self,
        owner: &Member,
        key: &Path,
        index: u64,
        piece: Range<u64>,
    ) -> object_store::Result<Bytes> {
        match self.ask(owner, key, piece.clone()).await {
            Ok(bytes) => {
                self.count(Source::Peer);
                Ok(bytes)
            }
            Err(why) => {
                // One line per owner that turns suspect; the pieces in flight to it with it
                // only at debug level.
                if self.suspect(&owner.id) {
                    tracing::warn!(owner = %owner.id, peer = %owner.peer, object = %key, %why, "zone cache owner failed; reading the store here and skipping it for 5s");
                } else {
                    tracing::debug!(owner = %owner.id, object = %key, %why, "zone cache owner failed again");
                }
                self.count(Source::PeerFailed);
                self.slice(key, index, piece).await
            }
        }
    }

    /// Asks `owner` for `piece`; an error says why its answer is not used.
    async fn ask(&self, owner: &Member, key: &Path, piece: Range<u64>) -> Result<Bytes, String> {
        let mut client = self.client(&owner.peer)?;
        let length = piece.end - piece.start;
        let request = ReadRangeRequest {
            object_key: key.to_string(),
            offset: piece.start,
            length: u32::try_from(length).map_err(|_| "piece too long".to_string())?,
        };
        let answer = tokio::time::timeout(self.timeout, client.read_range(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.timeout))?
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))?
            .into_inner();
        if answer.data.len() as u64 > length {
            return Err(format!(
                "answered {} bytes for a range of {length}",
                answer.data.len()
            ));
        }
        let crc = crc32c::crc32c(&answer.data);
        if crc != answer.crc32c {
            return Err(format!(
                "the bytes' CRC32C is {crc:#010x}, the answer says {:#010x}",
                answer.crc32c
            ));
        }
        Ok(answer.data)
    }

    fn client(&self, address: &str) -> Result<PeerServiceClient<Channel>, String> {
        let mut peers = lock(&self.peers);
        if let Some(c) = peers.get(address) {
            return Ok(c.clone());
        }
        let mut endpoint = Endpoint::from_shared(address.to_string())
            .map_err(|e| format!("bad peer address {address}: {e}"))?
            .connect_timeout(self.timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.peer_tls {
            endpoint = endpoint
                .tls_config(tls.clone())
                .map_err(|e| format!("peer {address}: TLS: {e}"))?;
        }
        let client = PeerServiceClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(MAX_PEER_READ as usize + 4096);
        peers.insert(address.to_string(), client.clone());
        Ok(client)
    }

    /// `piece` of chunk `index` from this agent's chunk cache (copied out, so a small
    /// cached frame never pins a whole chunk in memory).
    async fn slice(
        &self,
        key: &Path,
        index: u64,
        piece: Range<u64>,
    ) -> object_store::Result<Bytes> {
        let chunk = self.chunk(key, index).await?;
        let base = index * self.chunk_bytes;
        let (a, b) = ((piece.start - base) as usize, (piece.end - base) as usize);
        if a >= chunk.len() {
            return Ok(Bytes::new());
        }
        Ok(Bytes::copy_from_slice(&chunk[a..b.min(chunk.len())]))
    }

    /// Chunk `index` of `key`: cached, or one GET shared by every concurrent reader.
    async fn chunk(&self, key: &Path, index: u64) -> object_store::Result<Bytes> {
        let k: ChunkKey = (Arc::from(key.as_ref()), index);
        if let Some(hit) = self.chunks.get(&k).await {
            self.count(Source::LocalHit);
            return Ok(hit);
        }
        let c = self.chunk_bytes;
        let store = self.store.clone();
        let path = key.clone();
        let mut loaded = false;
        let r = self
            .chunks
            .try_get_with(k, async {
                loaded = true;
                store
                    .get_range(&path, index * c..(index + 1).saturating_mul(c))
                    .await
            })
            .await
            .map_err(unshare);
        // A reader that waited for another's GET shared it: a hit for this reader.
        self.count(if loaded {
            Source::LocalMiss
        } else {
            Source::LocalHit
        });
        r
    }
}

/// The object store of the read path: bounded range reads go through the zone cache,
/// everything else straight to the agent's store.
#[derive(Debug)]
pub(crate) struct ZoneStore {
    zone: Arc<ZoneCache>,
    inner: Arc<dyn ObjectStore>,
}

impl ZoneStore {
    pub(crate) fn new(zone: Arc<ZoneCache>, inner: Arc<dyn ObjectStore>) -> Self {
        ZoneStore { zone, inner }
    }
}

impl fmt::Display for ZoneStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneStore({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for ZoneStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
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
        // Only plain bounded range reads of immutable objects are cached; conditional and
        // versioned reads, HEAD and open-ended ranges go to the store.
        let plain = !options.head
            && options.if_match.is_none()
            && options.if_none_match.is_none()
            && options.if_modified_since.is_none()
            && options.if_unmodified_since.is_none()
            && options.version.is_none();
        let range = match &options.range {
            Some(GetRange::Bounded(r)) if plain && r.end - r.start <= MAX_PEER_READ => r.clone(),
            _ => return self.inner.get_opts(location, options).await,
        };
        let bytes = self.zone.read(location, range.clone()).await?;
        let end = range.start + bytes.len() as u64;
        Ok(GetResult {
            payload: GetResultPayload::Stream(futures::stream::once(async { Ok(bytes) }).boxed()),
            // The object's size and time are not known here; only the bytes are used.
            meta: ObjectMeta {
                location: location.clone(),
                last_modified: chrono::DateTime::UNIX_EPOCH,
                size: end,
                e_tag: None,
                version: None,
            },
            range: range.start..end,
            attributes: Default::default(),
        })
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

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
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

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

/// The peer port's service: other agents of the zone read the chunks this agent owns.
#[derive(Debug, Clone)]
pub(crate) struct PeerServer {
    zone: Arc<ZoneCache>,
    /// When set, only callers whose certificate names this principal (read the way given)
    /// are served: the service principal, the agents' own.
    admit: Option<(String, crate::auth::CertName)>,
}

impl PeerServer {
    /// Serves `zone`'s chunks to every caller the port's TLS admits.
    pub(crate) fn new(zone: Arc<ZoneCache>) -> Self {
        PeerServer { zone, admit: None }
    }

    /// Serves only callers whose certificate names `principal` (read by `how`).
    pub(crate) fn admitting(mut self, principal: String, how: crate::auth::CertName) -> Self {
        self.admit = Some((principal, how));
        self
    }

    /// `Ok` when the caller is an agent, or when any caller is.
    fn check_caller<T>(&self, request: &tonic::Request<T>) -> Result<(), tonic::Status> {
        let Some((principal, how)) = &self.admit else {
            return Ok(());
        };
        let named = request.peer_certs().and_then(|certs| {
            certs
                .first()
                .and_then(|c| crate::auth::principal_of_certificate(c.as_ref(), *how))
        });
        if named.as_deref() == Some(principal.as_str()) {
            return Ok(());
        }
        let named = named.unwrap_or_else(|| "no principal".into());
        tracing::warn!(
            target: crate::auth::AUDIT,
            principal = %named,
            operation = "PeerService/ReadRange",
            peer = %crate::service::peer_of(request),
            "refused: the peer port serves the service principal only"
        );
        Err(tonic::Status::permission_denied(format!(
            "the peer port serves agents only: the certificate names `{named}`, not the service principal `{principal}`"
        )))
    }
}

/// Checks a peer's request; the object key as a path.
fn check_request(r: &ReadRangeRequest) -> Result<Path, tonic::Status> {
    let bad = |m: String| Err(tonic::Status::invalid_argument(m));
    if r.object_key.is_empty() || r.object_key.len() > MAX_KEY_BYTES {
        return bad(format!(
            "object_key must be 1 to {MAX_KEY_BYTES} bytes, got {}",
            r.object_key.len()
        ));
    }
    let path = match Path::parse(&r.object_key) {
        Ok(p) => p,
        Err(e) => return bad(format!("object_key is not an object key: {e}")),
    };
    let top = path.parts().next();
    if !top.is_some_and(|t| cairn_storage::keys::OBJECT_PREFIXES.contains(&t.as_ref())) {
        return bad(format!(
            "object_key {} is outside Cairn's data prefixes ({})",
            r.object_key.escape_debug(),
            cairn_storage::keys::OBJECT_PREFIXES.join(", ")
        ));
    }
    if r.length == 0 || u64::from(r.length) > MAX_PEER_READ {
        return bad(format!(
            "length must be 1 to {MAX_PEER_READ} bytes, got {}",
            r.length
        ));
    }
    if r.offset.checked_add(u64::from(r.length)).is_none() {
        return bad(format!("offset {} + length overflows", r.offset));
    }
    Ok(path)
}

#[async_trait]
impl PeerService for PeerServer {
    async fn read_range(
        &self,
        request: tonic::Request<ReadRangeRequest>,
    ) -> Result<tonic::Response<ReadRangeResponse>, tonic::Status> {
        self.check_caller(&request)?;
        let r = request.into_inner();
        let path = check_request(&r)?;
        let range = r.offset..r.offset + u64::from(r.length);
        let data = self
            .zone
            .read_here(&path, range)
            .await
            .map_err(|e| match e {
                object_store::Error::NotFound { .. } => {
                    tonic::Status::not_found(format!("object {path} does not exist"))
                }
                e => tonic::Status::unavailable(format!("reading {path}: {e}")),
            })?;
        self.zone
            .metrics
            .peer_served_bytes
            .inc_by(data.len() as u64);
        Ok(tonic::Response::new(ReadRangeResponse {
            crc32c: crc32c::crc32c(&data),
            data,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::v2::peer_service_server::PeerServiceServer;
    use cairn_storage::{InstrumentedStore, StoreCounters};
    use object_store::memory::InMemory;

    const CHUNK: u64 = 1024;
    const KEY: &str = "segments/00000000000000000001-abc.seg";

    /// An object of `len` bytes whose every byte depends on its position.
    fn object(len: usize) -> Bytes {
        (0..len)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>()
            .into()
    }

    struct Agent {
        zone: Arc<ZoneCache>,
        counters: Arc<StoreCounters>,
    }

    /// An agent's zone cache over `store`, counting its GETs.
    fn agent(store: Arc<dyn ObjectStore>, timeout: Duration) -> Agent {
        let instrumented = InstrumentedStore::new(store);
        let counters = instrumented.counters();
        let metrics = Arc::new(AgentMetrics::new(StoreCounters::default(), "z1"));
        let zone = Arc::new(ZoneCache::new(
            Arc::new(instrumented),
            CHUNK,
            1 << 20,
            timeout,
            metrics,
            None,
        ));
        Agent { zone, counters }
    }

    async fn store_with(len: usize) -> (Arc<dyn ObjectStore>, Bytes) {
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let bytes = object(len);
        store
            .put(&Path::from(KEY), PutPayload::from(bytes.clone()))
            .await
            .unwrap();
        (store, bytes)
    }

    /// Serves `zone` on a peer port; returns its address.
    async fn serve(zone: Arc<ZoneCache>) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServiceServer::new(PeerServer::new(zone)))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    fn reads(zone: &ZoneCache, source: Source) -> u64 {
        zone.metrics.zone_reads(source).get()
    }

    #[tokio::test]
    async fn ranges_split_at_chunk_boundaries_read_what_the_store_holds() {
        let (store, bytes) = store_with(10_000).await;
        let a = agent(store, Duration::from_secs(1));
        let key = Path::from(KEY);
        for (start, end) in [
            (0, 1),
            (0, 1024),
            (1000, 1100),
            (1023, 4097),
            (5000, 10_000),
            (0, 10_000),
        ] {
            let got = a.zone.read(&key, start..end).await.unwrap();
            assert_eq!(
                got,
                bytes.slice(start as usize..end as usize),
                "{start}..{end}"
            );
        }
        // Ten chunks, each read from the store once however often it was asked for.
        assert_eq!(a.counters.gets.get(), 10);
        // Past the end: shorter, as an object store's range read is; from past the end: an
        // error that says the object is shorter.
        let got = a.zone.read(&key, 9_000..20_000).await.unwrap();
        assert_eq!(got, bytes.slice(9_000..));
        let err = a.zone.read(&key, 10_000..10_010).await.unwrap_err();
        assert!(
            err.to_string().contains("Wanted range starting at"),
            "{err}"
        );
        // An object that ends on a chunk boundary: the next chunk starts past its end.
        let (even, even_bytes) = store_with(2048).await;
        let e = agent(even, Duration::from_secs(1));
        let got = e.zone.read(&key, 1000..5000).await.unwrap();
        assert_eq!(got, even_bytes.slice(1000..));
        let missing = a
            .zone
            .read(&Path::from("segments/nope"), 0..10)
            .await
            .unwrap_err();
        assert!(
            matches!(missing, object_store::Error::NotFound { .. }),
            "{missing}"
        );
    }

    #[tokio::test]
    async fn concurrent_reads_of_one_chunk_share_one_get() {
        let (store, bytes) = store_with(4096).await;
        let a = agent(store, Duration::from_secs(1));
        let key = Path::from(KEY);
        let reads = (0..32u64).map(|i| a.zone.read(&key, i * 30..i * 30 + 25));
        for (i, got) in futures::future::join_all(reads)
            .await
            .into_iter()
            .enumerate()
        {
            let start = i * 30;
            assert_eq!(got.unwrap(), bytes.slice(start..start + 25));
        }
        assert_eq!(a.counters.gets.get(), 1);
    }

    #[tokio::test]
    async fn chunks_owned_by_another_agent_are_read_from_it_once_per_zone() {
        let (store, bytes) = store_with(64 * CHUNK as usize).await;
        let a = agent(store.clone(), Duration::from_secs(5));
        let b = agent(store, Duration::from_secs(5));
        let b_address = serve(b.zone.clone()).await;
        a.zone.joined("a");
        b.zone.joined("b");
        let members = vec![
            Member {
                id: "a".into(),
                peer: "http://127.0.0.1:1".into(),
            },
            Member {
                id: "b".into(),
                peer: b_address,
            },
        ];
        a.zone.set_members(members.clone());
        b.zone.set_members(members);
        let key = Path::from(KEY);
        let owned_by_b = (0..64).filter(|&i| a.zone.owner(KEY, i).is_some()).count() as u64;
        assert!(
            (16..48).contains(&owned_by_b),
            "rendezvous gives b about half the chunks, got {owned_by_b} of 64"
        );
        // Two passes over the whole object through a: each chunk is read from the store
        // once, by its owner.
        for _ in 0..2 {
            let got = a.zone.read(&key, 0..64 * CHUNK).await.unwrap();
            assert_eq!(got, bytes);
        }
        assert_eq!(a.counters.gets.get(), 64 - owned_by_b);
        assert_eq!(b.counters.gets.get(), owned_by_b);
        assert_eq!(reads(&a.zone, Source::Peer), 2 * owned_by_b);
        assert_eq!(reads(&a.zone, Source::PeerFailed), 0);
        assert_eq!(
            b.zone.metrics.peer_served_bytes.get(),
            2 * owned_by_b * CHUNK
        );
    }

    /// A peer port that accepts connections and never answers.
    async fn silent_peer() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        address
    }

    /// A peer that answers every range with wrong bytes, and a CRC that matches them when
    /// `honest_crc`, or not.
    #[derive(Clone)]
    struct Liar {
        honest_crc: bool,
    }

    #[async_trait]
    impl PeerService for Liar {
        async fn read_range(
            &self,
            request: tonic::Request<ReadRangeRequest>,
        ) -> Result<tonic::Response<ReadRangeResponse>, tonic::Status> {
            let data = Bytes::from(vec![0xAB; request.into_inner().length as usize]);
            let crc = crc32c::crc32c(&data);
            Ok(tonic::Response::new(ReadRangeResponse {
                crc32c: if self.honest_crc { crc } else { crc ^ 1 },
                data,
            }))
        }
    }

    async fn serve_liar(liar: Liar) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(PeerServiceServer::new(liar))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        address
    }

    /// `a` in a zone with one other member `b` at `peer`; a chunk `b` owns.
    fn zone_with_peer(a: &Agent, peer: String) -> u64 {
        a.zone.joined("a");
        a.zone.set_members(vec![Member {
            id: "b".into(),
            peer,
        }]);
        (0..64)
            .find(|&i| a.zone.owner(KEY, i).is_some())
            .expect("b owns some of 64 chunks")
    }

    #[tokio::test]
    async fn an_owner_that_does_not_answer_in_time_is_skipped_and_the_store_read() {
        let (store, bytes) = store_with(64 * CHUNK as usize).await;
        let a = agent(store, Duration::from_millis(200));
        let chunk = zone_with_peer(&a, silent_peer().await);
        let key = Path::from(KEY);
        let range = chunk * CHUNK..(chunk + 1) * CHUNK;
        let got = a.zone.read(&key, range.clone()).await.unwrap();
        assert_eq!(got, bytes.slice(range.start as usize..range.end as usize));
        assert_eq!(reads(&a.zone, Source::PeerFailed), 1);
        assert_eq!(a.counters.gets.get(), 1);
        // Skipped for a while: the next chunk b would own is read here at once.
        assert!(a.zone.owner(KEY, chunk).is_none());
    }

    #[tokio::test]
    async fn bytes_that_fail_their_crc_are_not_used() {
        let (store, bytes) = store_with(64 * CHUNK as usize).await;
        let a = agent(store, Duration::from_secs(5));
        let chunk = zone_with_peer(&a, serve_liar(Liar { honest_crc: false }).await);
        let key = Path::from(KEY);
        let range = chunk * CHUNK..(chunk + 1) * CHUNK;
        let got = a.zone.read(&key, range.clone()).await.unwrap();
        assert_eq!(got, bytes.slice(range.start as usize..range.end as usize));
        assert_eq!(reads(&a.zone, Source::PeerFailed), 1);
    }

    #[tokio::test]
    async fn garbage_with_a_matching_crc_is_caught_by_the_reader_which_reads_the_store() {
        // The zone cannot tell these bytes are wrong; the read path's own checks can, and
        // then it reads the store directly (retry_direct).
        let (store, bytes) = store_with(64 * CHUNK as usize).await;
        let a = agent(store.clone(), Duration::from_secs(5));
        let chunk = zone_with_peer(&a, serve_liar(Liar { honest_crc: true }).await);
        let key = Path::from(KEY);
        let range = chunk * CHUNK..(chunk + 1) * CHUNK;
        let want = bytes.slice(range.start as usize..range.end as usize);
        let zoned = ZoneStore::new(a.zone.clone(), store.clone());
        let check = |b: Bytes| {
            if b == want {
                Ok(b)
            } else {
                Err(cairn_storage::StorageError::corrupt(
                    KEY,
                    cairn_storage::FormatError::Invalid {
                        what: "test",
                        reason: "not the stored bytes".into(),
                    },
                ))
            }
        };
        let first = check(zoned.get_range(&key, range.clone()).await.unwrap());
        assert!(first.is_err(), "the liar's bytes came through the zone");
        let direct = async { check(store.get_range(&key, range.clone()).await.unwrap()) };
        let got = crate::fetch::retry_direct(KEY, first, Some(direct)).await;
        assert_eq!(got.ok(), Some(want.clone()));
    }

    #[test]
    fn peer_requests_are_checked() {
        let ok = ReadRangeRequest {
            object_key: KEY.into(),
            offset: 0,
            length: 10,
        };
        assert!(check_request(&ok).is_ok());
        let bad = [
            ReadRangeRequest {
                object_key: "secrets/key".into(),
                ..ok.clone()
            },
            ReadRangeRequest {
                object_key: String::new(),
                ..ok.clone()
            },
            ReadRangeRequest {
                object_key: "segments/../x".into(),
                ..ok.clone()
            },
            ReadRangeRequest {
                length: 0,
                ..ok.clone()
            },
            ReadRangeRequest {
                length: (MAX_PEER_READ + 1) as u32,
                ..ok.clone()
            },
            ReadRangeRequest {
                offset: u64::MAX,
                ..ok.clone()
            },
        ];
        for r in bad {
            let e = check_request(&r).unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{r:?}");
        }
    }
}
