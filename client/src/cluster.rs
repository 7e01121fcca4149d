//! [`Cluster`]: the client's view of the agents and the transport every client type sends
//! through. It bootstraps from any agent address of a list, learns the live agents with
//! `DescribeCluster`, refreshes that view in the background and whenever an agent fails,
//! and routes each call:
//!
//! - produce (and calls with no partition: admin, groups, share groups, producer ids) to
//!   one agent of the client's zone, chosen by load (the less loaded of two random picks)
//!   and kept while it lives;
//! - a fetch of topic T, partition P to the partition's owner among the live agents of the
//!   zone by rendezvous hashing (the rule is in the proto's `AgentInfo`), so each agent's
//!   cache holds its share of the partitions;
//! - with no zone, or a zone without agents, over all live agents.
//!
//! A call that fails to connect or answers UNAVAILABLE marks its agent suspect for a few
//! seconds (routing skips it) and triggers a refresh; the caller's own retry then goes to
//! another agent. Any agent serves any partition, so routing is for locality and load,
//! never for correctness.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use cairn_proto::v2::{self, admin_service_client::AdminServiceClient};
use rand::Rng;
use tonic::body::Body;
use tonic::codegen::{BoxFuture, Service, StdError, http};
use tonic::transport::Channel;

use crate::{ClientError, Security};

/// How long an agent that failed a call is skipped.
const SUSPECT_FOR: Duration = Duration::from_secs(5);
/// Fewest time between two refreshes triggered by failures.
const MIN_REFRESH_GAP: Duration = Duration::from_millis(250);
/// Topics whose partition owners a client keeps computed.
const MAX_CACHED_TOPICS: usize = 4096;

/// How long one DescribeCluster may take.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Where a request should go, carried in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// A fetch of one partition: to its owner among the zone's agents.
    Partition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The topic's partition count as the caller knows it (0: not known), which splits
        /// the topic evenly over the zone's agents.
        partitions: u32,
    },
}

/// Tags `request` with where it should go.
pub(crate) fn route<T>(mut request: tonic::Request<T>, route: Route) -> tonic::Request<T> {
    request.extensions_mut().insert(route);
    request
}

/// How a client finds agents.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// Agent addresses to learn the cluster from (`http://host:port` or `host:port`); the
    /// first that answers is used, so dead ones among live ones only cost a failed dial.
    pub bootstrap: Vec<String>,
    /// The client's zone: agents of this zone are preferred. `None`: every agent.
    pub zone: Option<String>,
    /// How often the view is refreshed in the background.
    pub refresh_interval: Duration,
    /// TLS and credentials (default: plain text, none).
    pub security: Security,
}

impl ClusterConfig {
    /// A config bootstrapping from `addresses`, without a zone.
    pub fn new<S: Into<String>>(addresses: impl IntoIterator<Item = S>) -> Self {
        ClusterConfig {
            bootstrap: addresses.into_iter().map(Into::into).collect(),
            zone: None,
            refresh_interval: Duration::from_secs(5),
            security: Security::default(),
        }
    }

    /// The same config with TLS and credentials.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The same config with `zone`.
    pub fn zone(mut self, zone: impl Into<String>) -> Self {
        let zone = zone.into();
        self.zone = (!zone.is_empty()).then_some(zone);
        self
    }
}

/// One agent of the view.
#[derive(Debug, Clone)]
struct Member {
    id: String,
    address: String,
    zone: String,
    produce_load: u64,
}

#[derive(Debug, Default)]
struct State {
    /// The live agents as last described, by id.
    members: Vec<Member>,
    /// One lazily connected channel per address.
    channels: HashMap<String, Channel>,
    /// Agents that failed a call recently, until when.
    suspects: HashMap<String, Instant>,
    /// The agent produce and unrouted calls go to, while it stays a candidate.
    home: Option<String>,
    /// Partition owners by (topic, partition count), for the candidates (ids) they were
    /// computed over.
    owners: HashMap<(String, u32), (Vec<String>, Vec<usize>)>,
    last_refresh: Option<Instant>,
}

#[derive(Debug)]
struct Inner {
    config: ClusterConfig,
    /// The bootstrap addresses' channels, the fallback while the view is empty.
    bootstrap: Vec<(String, Channel)>,
    state: Mutex<State>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
}

/// The agents of a cluster and the transport through which every client type sends (see
/// the module docs). Cheap to clone; clones share the view. Made with
/// [`Cluster::connect`], or from a [`Channel`] (one agent, no discovery).
#[derive(Debug, Clone)]
pub struct Cluster {
    kind: Kind,
    /// The `authorization` value every call carries.
    token: Option<http::HeaderValue>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// One channel: every call goes there.
    Fixed(Channel),
    /// A view of the agents, routed per call.
    View(Arc<Inner>),
}

impl From<Channel> for Cluster {
    fn from(channel: Channel) -> Self {
        Cluster {
            kind: Kind::Fixed(channel),
            token: None,
        }
    }
}

/// A registry address as a URL (`host:port` from an agent older than the scheme: `http://`).
fn with_scheme(address: &str) -> String {
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// How often a connection with calls in flight is pinged.
pub(crate) const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a ping may go unanswered before the connection is taken for dead.
pub(crate) const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(2);

fn lazy_channel(address: &str, security: &Security) -> Result<Channel, ClientError> {
    Ok(security
        .endpoint(address, Duration::from_secs(2))?
        .connect_lazy())
}

/// A status's message and the causes under it (a refused connection says so only in
/// its sources).
fn with_causes(status: &tonic::Status) -> String {
    let mut out = status.message().to_string();
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        let s = e.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        source = e.source();
    }
    out
}

/// The rendezvous score of `agent` for `topic`/`partition` (see the proto's `AgentInfo`).
fn score(agent: &str, topic: &str, partition: u32) -> u64 {
    cairn_proto::rendezvous_score(agent, topic, u64::from(partition))
}

impl Cluster {
    /// Learns the cluster from the first bootstrap address that answers, and keeps the
    /// view fresh in the background while any clone of the cluster lives.
    pub async fn connect(config: ClusterConfig) -> Result<Cluster, ClientError> {
        if config.bootstrap.is_empty() {
            return Err(ClientError::Invalid(
                "no agent address to bootstrap from".into(),
            ));
        }
        if config.refresh_interval < Duration::from_millis(100) {
            return Err(ClientError::Invalid(format!(
                "refresh interval must be at least 100ms, got {:?}",
                config.refresh_interval
            )));
        }
        let mut bootstrap = Vec::new();
        for a in &config.bootstrap {
            let a = config.security.url(a)?;
            let ch = lazy_channel(&a, &config.security)?;
            bootstrap.push((a, ch));
        }
        let token = config.security.token().cloned();
        let inner = Arc::new(Inner {
            config,
            bootstrap,
            state: Mutex::default(),
            refreshing: tokio::sync::Mutex::new(()),
        });
        let cluster = Cluster {
            kind: Kind::View(inner.clone()),
            token,
        };
        cluster.refresh().await?;
        tokio::spawn(refresh_forever(Arc::downgrade(&inner)));
        Ok(cluster)
    }

    /// One agent at `address`, without discovery: every call goes there (commands about
    /// one agent). Connects now, so an agent that is not there is reported here.
    pub async fn single(address: &str, security: &Security) -> Result<Cluster, ClientError> {
        let url = security.url(address)?;
        let channel = security
            .endpoint(address, Duration::from_secs(5))?
            .connect()
            .await
            .map_err(|source| ClientError::Connect {
                endpoint: url,
                source,
            })?;
        Ok(Cluster {
            kind: Kind::Fixed(channel),
            token: security.token().cloned(),
        })
    }

    /// Reads the view again now (the background task does it every refresh interval).
    /// Fails only when no known agent and no bootstrap address answers.
    pub async fn refresh(&self) -> Result<(), ClientError> {
        let Kind::View(inner) = &self.kind else {
            return Ok(());
        };
        let _one = inner.refreshing.lock().await;
        // Ask known live agents first, then the bootstrap addresses.
        let mut candidates: Vec<(String, Channel)> = {
            let mut st = inner.lock();
            let now = Instant::now();
            let healthy: Vec<String> = st
                .members
                .iter()
                .filter(|m| !st.is_suspect(&m.id, now))
                .take(3)
                .map(|m| m.address.clone())
                .collect();
            healthy
                .into_iter()
                .filter_map(|a| st.channel(&a, &inner.config.security).ok().map(|c| (a, c)))
                .collect()
        };
        candidates.extend(inner.bootstrap.iter().cloned());
        let mut last_error = None;
        for (address, channel) in candidates {
            let mut admin = AdminServiceClient::new(channel);
            let mut request = tonic::Request::new(v2::DescribeClusterRequest {});
            if let Some(t) = &self.token
                && let Ok(mut v) = tonic::metadata::AsciiMetadataValue::try_from(t.as_bytes())
            {
                v.set_sensitive(true);
                request
                    .metadata_mut()
                    .insert(crate::security::AUTHORIZATION, v);
            }
            let call = admin.describe_cluster(request);
            match tokio::time::timeout(DESCRIBE_TIMEOUT, call).await {
                Ok(Ok(r)) => {
                    let agents = r.into_inner().agents;
                    inner.lock().replace(agents);
                    return Ok(());
                }
                Ok(Err(status)) => {
                    last_error = Some(format!("{address}: {}", with_causes(&status)))
                }
                Err(_) => last_error = Some(format!("{address}: no answer within 3s")),
            }
        }
        inner.lock().last_refresh = Some(Instant::now());
        Err(ClientError::Unreachable {
            addresses: inner.config.bootstrap.join(", "),
            last_error: last_error.unwrap_or_default(),
        })
    }

    /// The live agents as last learned: `(id, address, zone)`, by id.
    pub fn agents(&self) -> Vec<(String, String, String)> {
        match &self.kind {
            Kind::View(inner) => inner
                .lock()
                .members
                .iter()
                .map(|m| (m.id.clone(), m.address.clone(), m.zone.clone()))
                .collect(),
            Kind::Fixed(_) => Vec::new(),
        }
    }

    /// The id of the agent produce and unrouted calls go to now, once one was chosen.
    pub fn produce_agent(&self) -> Option<String> {
        match &self.kind {
            Kind::View(inner) => inner.lock().home.clone(),
            Kind::Fixed(_) => None,
        }
    }

    /// The id of the agent `topic`/`partition` is fetched from, if the view has agents:
    /// among the zone's live agents, by [`cairn_proto::balanced_owners`] when the topic's
    /// partition count is given (not 0), else by the highest rendezvous score.
    pub fn owner(&self, topic: &str, partition: u32, partitions: u32) -> Option<String> {
        let Kind::View(inner) = &self.kind else {
            return None;
        };
        let mut st = inner.lock();
        let candidates = st.candidates(inner.config.zone.as_deref(), Instant::now());
        st.owner_of(&candidates, topic, partition, partitions)
            .map(|m| m.id.clone())
    }

    /// The agent a call goes to, and its channel.
    fn pick(&self, route: Option<&Route>) -> (Option<String>, Channel) {
        let inner = match &self.kind {
            Kind::Fixed(ch) => return (None, ch.clone()),
            Kind::View(inner) => inner,
        };
        let mut st = inner.lock();
        let now = Instant::now();
        let candidates = st.candidates(inner.config.zone.as_deref(), now);
        let chosen = match route {
            Some(Route::Partition {
                topic,
                partition,
                partitions,
            }) => st
                .owner_of(&candidates, topic, *partition, *partitions)
                .cloned(),
            None => {
                let home = st
                    .home
                    .as_ref()
                    .and_then(|h| candidates.iter().find(|m| &m.id == h))
                    .cloned();
                let m = home.or_else(|| pick_by_load(&candidates));
                st.home = m.as_ref().map(|m| m.id.clone());
                m
            }
        };
        if let Some(m) = chosen
            && let Ok(ch) = st.channel(&m.address, &inner.config.security)
        {
            return (Some(m.id), ch);
        }
        drop(st);
        // No usable view: a bootstrap address (connect made sure there is one).
        #[allow(clippy::disallowed_methods)]
        let i = rand::rng().random_range(0..inner.bootstrap.len());
        (None, inner.bootstrap[i].1.clone())
    }

    /// Marks `id` suspect and refreshes the view soon.
    fn failed(&self, id: &str) {
        let Kind::View(inner) = &self.kind else {
            return;
        };
        let due = {
            let mut st = inner.lock();
            st.suspects
                .insert(id.to_string(), Instant::now() + SUSPECT_FOR);
            if st.home.as_deref() == Some(id) {
                st.home = None;
            }
            st.last_refresh
                .is_none_or(|t| t.elapsed() >= MIN_REFRESH_GAP)
        };
        if due {
            tracing::debug!(
                agent = id,
                "agent failed a call; refreshing the cluster view"
            );
            let this = self.clone();
            tokio::spawn(async move {
                if let Err(e) = this.refresh().await {
                    tracing::debug!(error = %e, "cluster refresh failed");
                }
            });
        }
    }
}

fn pick_owner<'a>(candidates: &'a [Member], topic: &str, partition: u32) -> Option<&'a Member> {
    candidates.iter().max_by(|a, b| {
        score(&a.id, topic, partition)
            .cmp(&score(&b.id, topic, partition))
            // Ties go to the smaller id.
            .then_with(|| b.id.cmp(&a.id))
    })
}

/// The less loaded of two random candidates.
fn pick_by_load(candidates: &[Member]) -> Option<Member> {
    if candidates.is_empty() {
        return None;
    }
    // Spreading clients over agents is not a decision anyone must replay.
    #[allow(clippy::disallowed_methods)]
    let mut rng = rand::rng();
    let a = &candidates[rng.random_range(0..candidates.len())];
    let b = &candidates[rng.random_range(0..candidates.len())];
    Some(
        if b.produce_load < a.produce_load {
            b
        } else {
            a
        }
        .clone(),
    )
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl State {
    fn is_suspect(&self, id: &str, now: Instant) -> bool {
        self.suspects.get(id).is_some_and(|until| *until > now)
    }

    /// Live, unsuspected agents of `zone` (of any zone when the zone has none, or when
    /// `zone` is `None`); when every agent is suspect, all of them.
    /// The owner of `topic`/`partition` among `candidates`: balanced over the topic's
    /// `partitions` when known (cached per candidate set), else the highest score.
    fn owner_of<'a>(
        &mut self,
        candidates: &'a [Member],
        topic: &str,
        partition: u32,
        partitions: u32,
    ) -> Option<&'a Member> {
        if partition >= partitions {
            return pick_owner(candidates, topic, partition);
        }
        let key = (topic.to_string(), partitions);
        let fresh = self.owners.get(&key).is_some_and(|(ids, _)| {
            ids.len() == candidates.len() && ids.iter().zip(candidates).all(|(i, m)| *i == m.id)
        });
        if !fresh {
            // Topics come and go; the cache is rebuilt rather than grown without bound.
            if self.owners.len() >= MAX_CACHED_TOPICS {
                self.owners.clear();
            }
            let ids: Vec<&str> = candidates.iter().map(|m| m.id.as_str()).collect();
            let owners = cairn_proto::balanced_owners(&ids, topic, partitions);
            let ids = ids.into_iter().map(String::from).collect();
            self.owners.insert(key.clone(), (ids, owners));
        }
        let (_, owners) = self.owners.get(&key)?;
        candidates.get(*owners.get(partition as usize)?)
    }

    fn candidates(&self, zone: Option<&str>, now: Instant) -> Vec<Member> {
        let healthy: Vec<&Member> = self
            .members
            .iter()
            .filter(|m| !self.is_suspect(&m.id, now))
            .collect();
        let pool: Vec<&Member> = if healthy.is_empty() {
            self.members.iter().collect()
        } else {
            healthy
        };
        if let Some(z) = zone {
            let local: Vec<Member> = pool
                .iter()
                .filter(|m| m.zone == z)
                .map(|m| (*m).clone())
                .collect();
            if !local.is_empty() {
                return local;
            }
        }
        pool.into_iter().cloned().collect()
    }

    fn channel(&mut self, address: &str, security: &Security) -> Result<Channel, ClientError> {
        if let Some(ch) = self.channels.get(address) {
            return Ok(ch.clone());
        }
        let ch = lazy_channel(address, security)?;
        self.channels.insert(address.to_string(), ch.clone());
        Ok(ch)
    }

    fn replace(&mut self, agents: Vec<v2::AgentInfo>) {
        let now = Instant::now();
        self.last_refresh = Some(now);
        if agents.is_empty() {
            // An agent that lists nobody (an agent older than the registry) says nothing
            // about who is alive: keep the view (or the bootstrap addresses).
            return;
        }
        self.members = agents
            .into_iter()
            .map(|a| Member {
                id: a.id,
                address: with_scheme(&a.address),
                zone: a.zone,
                produce_load: a.produce_bytes_per_second,
            })
            .collect();
        let live: std::collections::HashSet<&str> =
            self.members.iter().map(|m| m.address.as_str()).collect();
        self.channels.retain(|a, _| live.contains(a.as_str()));
        self.suspects.retain(|_, until| *until > now);
    }
}

async fn refresh_forever(inner: Weak<Inner>) {
    loop {
        let every = match inner.upgrade() {
            Some(i) => i.config.refresh_interval,
            None => return,
        };
        tokio::time::sleep(every).await;
        let Some(i) = inner.upgrade() else { return };
        let cluster = Cluster {
            token: i.config.security.token().cloned(),
            kind: Kind::View(i),
        };
        if let Err(e) = cluster.refresh().await {
            tracing::debug!(error = %e, "background cluster refresh failed");
        }
    }
}

/// True when a response is a gRPC UNAVAILABLE (trailers-only responses carry the status
/// in their headers).
fn is_unavailable<B>(response: &http::Response<B>) -> bool {
    response
        .headers()
        .get("grpc-status")
        .is_some_and(|v| v.as_bytes() == b"14")
}

impl Service<http::Request<Body>> for Cluster {
    type Response = http::Response<Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the chosen channel's, awaited in `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        if let Some(t) = &self.token {
            request
                .headers_mut()
                .insert(crate::security::AUTHORIZATION, t.clone());
        }
        let route = request.extensions().get::<Route>().cloned();
        let (agent, mut channel) = self.pick(route.as_ref());
        let this = self.clone();
        Box::pin(async move {
            let result = async {
                futures::future::poll_fn(|cx| channel.poll_ready(cx)).await?;
                channel.call(request).await
            }
            .await;
            if let Some(id) = &agent {
                match &result {
                    Err(_) => this.failed(id),
                    Ok(r) if is_unavailable(r) => this.failed(id),
                    Ok(_) => {}
                }
            }
            result.map_err(Into::into)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: &str, zone: &str, load: u64) -> Member {
        Member {
            id: id.into(),
            address: format!("http://{id}:1"),
            zone: zone.into(),
            produce_load: load,
        }
    }

    #[test]
    fn a_topic_of_known_size_is_split_evenly_and_recomputed_when_agents_change() {
        let mut st = State::default();
        let two = vec![member("a2", "z", 0), member("a3", "z", 0)];
        let count = |st: &mut State, agents: &[Member], id: &str| {
            (0..12)
                .filter(|&p| st.owner_of(agents, "hosts", p, 12).map(|m| m.id.as_str()) == Some(id))
                .count()
        };
        // The highest score alone gives a3 ten of these twelve partitions.
        let plain = (0..12)
            .filter(|&p| pick_owner(&two, "hosts", p).map(|m| m.id.as_str()) == Some("a3"))
            .count();
        assert_eq!(plain, 10);
        assert_eq!(count(&mut st, &two, "a3"), 6);
        assert_eq!(count(&mut st, &two, "a2"), 6);
        let mut three = two.clone();
        three.push(member("a4", "z", 0));
        for id in ["a2", "a3", "a4"] {
            assert_eq!(count(&mut st, &three, id), 4, "{id}");
        }
        // Unknown size (0) or a partition beyond it: the highest score.
        assert_eq!(
            st.owner_of(&two, "hosts", 3, 0).map(|m| m.id.clone()),
            pick_owner(&two, "hosts", 3).map(|m| m.id.clone())
        );
        assert_eq!(
            st.owner_of(&two, "hosts", 20, 12).map(|m| m.id.clone()),
            pick_owner(&two, "hosts", 20).map(|m| m.id.clone())
        );
        assert!(st.owner_of(&[], "hosts", 1, 12).is_none());
    }

    #[test]
    fn rendezvous_moves_only_the_partitions_of_an_added_or_removed_agent() {
        let three = vec![
            member("a", "z", 0),
            member("b", "z", 0),
            member("c", "z", 0),
        ];
        let mut four = three.clone();
        four.push(member("d", "z", 0));
        let mut moved = 0;
        let mut per_agent: HashMap<String, usize> = HashMap::new();
        for p in 0..1000 {
            let before = pick_owner(&three, "t", p).map(|m| m.id.clone());
            let after = pick_owner(&four, "t", p).map(|m| m.id.clone());
            *per_agent
                .entry(before.clone().unwrap_or_default())
                .or_default() += 1;
            if before != after {
                moved += 1;
                // Only to the new agent.
                assert_eq!(after.as_deref(), Some("d"));
            }
        }
        // About a quarter moves; each of three agents owns about a third.
        assert!((150..350).contains(&moved), "{moved}");
        for (id, n) in per_agent {
            assert!((250..420).contains(&n), "{id}: {n}");
        }
    }

    #[test]
    fn candidates_prefer_the_zone_then_anyone_healthy() {
        let mut st = State {
            members: vec![
                member("a", "z1", 5),
                member("b", "z2", 0),
                member("c", "z2", 0),
            ],
            ..State::default()
        };
        let now = Instant::now();
        let ids = |v: Vec<Member>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
        assert_eq!(ids(st.candidates(Some("z2"), now)), ["b", "c"]);
        assert_eq!(ids(st.candidates(Some("z1"), now)), ["a"]);
        assert_eq!(ids(st.candidates(Some("nowhere"), now)), ["a", "b", "c"]);
        assert_eq!(ids(st.candidates(None, now)), ["a", "b", "c"]);
        st.suspects.insert("a".into(), now + SUSPECT_FOR);
        assert_eq!(ids(st.candidates(Some("z1"), now)), ["b", "c"]);
        for id in ["b", "c"] {
            st.suspects.insert(id.into(), now + SUSPECT_FOR);
        }
        assert_eq!(ids(st.candidates(Some("z1"), now)), ["a"]);
        // The less loaded of two picks is never the most loaded when others exist twice.
        let pool = vec![member("x", "", 100), member("y", "", 0)];
        let mut ys = 0;
        for _ in 0..200 {
            if pick_by_load(&pool).map(|m| m.id) == Some("y".into()) {
                ys += 1;
            }
        }
        assert!(ys > 100, "{ys}");
    }
}
