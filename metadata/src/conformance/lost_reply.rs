//! Conformance under a lost commit reply: every writing operation, run once normally and
//! once with its commit applied but reported as unknown (`FaultyKv::unknown_next_commits`),
//! must leave callers seeing exactly the same thing — the same answer, one topic, one
//! member, one epoch step, one delivery, one offset commit.
//!
//! Each case is a scenario run twice on fresh stores: without the fault and with it armed
//! just before the operation under test. The scenario records what a caller could observe
//! (the operation's answer and reads after it), and the two records must be equal. The
//! scenario also checks that the fault really fired on that operation (the retry loop ran
//! it again), so a case cannot pass by missing its target.

use std::fmt::Debug;
use std::future::Future;

use super::*;
use crate::{CompactedFile, SeededRandom};

/// A scenario's view of one run: the metadata, its faulty store, the clock, and whether
/// this run loses a reply.
#[derive(Clone)]
struct Ctx {
    m: Metadata,
    faulty: Arc<FaultyKv>,
    clock: Arc<ManualClock>,
    lose: bool,
}

/// Retries seen before the operation under test.
struct Armed(u64);

impl Ctx {
    fn new(kv: Arc<dyn KvStore>, lose: bool) -> Ctx {
        let faulty = Arc::new(FaultyKv::new(kv));
        let clock = Arc::new(ManualClock::new(1_700_000_000_000));
        let m = Metadata::new(faulty.clone(), clock.clone())
            .with_random(Arc::new(SeededRandom::new(7)))
            .with_retry(RetryPolicy {
                max_attempts: 10,
                initial_backoff: Duration::from_millis(1),
                max_backoff: Duration::from_millis(2),
            });
        Ctx {
            m,
            faulty,
            clock,
            lose,
        }
    }

    /// Arms the fault (in the losing run) for the next writing commit.
    fn arm(&self) -> Armed {
        if self.lose {
            self.faulty.unknown_next_commits(1);
        }
        Armed(self.m.retries())
    }

    /// Checks that the operation since `arm` met the fault (losing run) or ran once.
    fn check(&self, armed: Armed, what: &str) {
        let retried = self.m.retries() > armed.0;
        assert_eq!(
            retried, self.lose,
            "{what}: the lost reply must hit this operation (and only in the losing run)"
        );
    }
}

/// How a caller sees a result: the value, or the error's kind and message.
fn show<T: Debug>(r: &Result<T, MetaError>) -> String {
    match r {
        Ok(v) => format!("ok {v:?}"),
        Err(e) => format!("err {:?}: {e}", e.kind()),
    }
}

/// Runs `scenario` without and with a lost reply, and requires the same observations.
async fn compare<F, Fut, S, SFut>(fresh: &mut F, name: &str, scenario: S)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn KvStore>>,
    S: Fn(Ctx) -> SFut,
    SFut: Future<Output = Vec<String>>,
{
    let clean = scenario(Ctx::new(fresh().await, false)).await;
    let lost = scenario(Ctx::new(fresh().await, true)).await;
    assert_eq!(
        lost, clean,
        "{name}: a lost commit reply changed what callers see"
    );
}

/// `create_topic` answers Ok with the topic its first attempt created; one topic exists and
/// the next topic gets the next id.
async fn create_topic(c: Ctx) -> Vec<String> {
    let armed = c.arm();
    let r = c.m.create_topic(&spec("t", 2)).await;
    c.check(armed, "create_topic");
    assert!(r.is_ok(), "{}", show(&r));
    let topics = c.m.list_topics().await.unwrap();
    assert_eq!(topics.len(), 1);
    let next = c.m.create_topic(&spec("u", 1)).await.unwrap();
    vec![show(&r), format!("{topics:?}"), format!("{}", next.id)]
}

/// `delete_topic` answers Ok with the deleted topic, not "not found".
async fn delete_topic(c: Ctx) -> Vec<String> {
    c.m.create_topic(&spec("t", 2)).await.unwrap();
    let armed = c.arm();
    let r = c.m.delete_topic("t").await;
    c.check(armed, "delete_topic");
    assert!(r.is_ok(), "{}", show(&r));
    vec![show(&r), format!("{:?}", c.m.list_topics().await.unwrap())]
}

/// `add_partitions` answers Ok with the grown topic, not "must be larger".
async fn add_partitions(c: Ctx) -> Vec<String> {
    c.m.create_topic(&spec("t", 2)).await.unwrap();
    let armed = c.arm();
    let r = c.m.add_partitions("t", 5).await;
    c.check(armed, "add_partitions");
    assert!(r.is_ok(), "{}", show(&r));
    vec![show(&r), format!("{:?}", c.m.topic("t").await.unwrap())]
}

/// `commit_segment` returns the first run's offsets; the high watermark moved once.
async fn commit_segment(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 2)).await.unwrap();
    c.m.commit_segment(&segment("s0", &[(t.id, 0, 3)]))
        .await
        .unwrap();
    let armed = c.arm();
    let r =
        c.m.commit_segment(&segment("s1", &[(t.id, 0, 4), (t.id, 1, 2)]))
            .await;
    c.check(armed, "commit_segment");
    let states = c.m.partition_states(&t).await.unwrap();
    assert_eq!(states[0].next_offset, 7);
    let (_, entries) = c.m.read_index(t.id, 0, 0, 10).await.unwrap();
    vec![show(&r), format!("{states:?}"), format!("{entries:?}")]
}

/// `delete_records` answers the new start offset, not "out of range"; entries before it are
/// removed once (bytes and entry counts drop once).
async fn delete_records(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 1)).await.unwrap();
    for i in 0..3 {
        c.m.commit_segment(&segment(&format!("s{i}"), &[(t.id, 0, 5)]))
            .await
            .unwrap();
    }
    let armed = c.arm();
    let r = c.m.delete_records("t", 0, 10).await;
    c.check(armed, "delete_records");
    assert_eq!(r.as_ref().ok(), Some(&10), "{}", show(&r));
    vec![
        show(&r),
        format!("{:?}", c.m.partition_state(t.id, 0).await.unwrap()),
    ]
}

/// A named `init_producer` raises the epoch by exactly one.
async fn init_named_producer(c: Ctx) -> Vec<String> {
    let first = c.m.init_producer(Some("writer")).await.unwrap();
    let armed = c.arm();
    let r = c.m.init_producer(Some("writer")).await;
    c.check(armed, "init_producer(named)");
    assert_eq!(
        r.as_ref().ok().map(|p| p.epoch),
        Some(first.epoch + 1),
        "{}",
        show(&r)
    );
    let next = c.m.init_producer(Some("writer")).await.unwrap();
    vec![
        show(&r),
        format!("{next:?}"),
        format!("{:?}", c.m.producer_stats().await.unwrap()),
    ]
}

/// An anonymous `init_producer` makes exactly one producer id.
async fn init_anonymous_producer(c: Ctx) -> Vec<String> {
    let armed = c.arm();
    let r = c.m.init_producer(None).await;
    c.check(armed, "init_producer(anonymous)");
    let stats = c.m.producer_stats().await.unwrap();
    assert_eq!(stats.producers, 1, "one producer, no ghost");
    let next = c.m.init_producer(None).await.unwrap();
    vec![show(&r), format!("{stats:?}"), format!("{next:?}")]
}

/// `join_group` adds exactly one member (no ghost holding partitions) at one generation.
async fn join_group(c: Ctx) -> Vec<String> {
    c.m.create_topic(&spec("t", 4)).await.unwrap();
    let topics = vec!["t".to_string()];
    let armed = c.arm();
    let r = c.m.join_group("g", None, &topics, 10_000).await;
    c.check(armed, "join_group");
    let d = c.m.describe_group("g").await.unwrap();
    assert_eq!(d.members.len(), 1, "one member");
    assert_eq!(r.as_ref().map(|a| a.partitions.len()).ok(), Some(4));
    // A second member splits the partitions evenly: a ghost would have taken a share.
    let b = c.m.join_group("g", None, &topics, 10_000).await.unwrap();
    assert_eq!(b.partitions.len(), 2);
    vec![show(&r), format!("{d:?}"), format!("{b:?}")]
}

/// `heartbeat` and `leave_group`: the generation moves once; leaving answers Ok.
async fn heartbeat_and_leave(c: Ctx) -> Vec<String> {
    c.m.create_topic(&spec("t", 4)).await.unwrap();
    let topics = vec!["t".to_string()];
    let a = c.m.join_group("g", None, &topics, 3_000).await.unwrap();
    let b = c.m.join_group("g", None, &topics, 3_000).await.unwrap();
    let c2 = c.m.join_group("g", None, &topics, 3_000).await.unwrap();
    // c2 falls silent; a's heartbeat expires it and rebalances.
    c.clock.advance(2_000);
    c.m.heartbeat("g", &a.member_id).await.unwrap();
    c.m.heartbeat("g", &b.member_id).await.unwrap();
    c.clock.advance(1_500);
    let armed = c.arm();
    let hb = c.m.heartbeat("g", &a.member_id).await;
    c.check(armed, "heartbeat");
    assert!(
        hb.as_ref().is_ok_and(|x| x.generation == c2.generation + 1),
        "{}",
        show(&hb)
    );
    let armed = c.arm();
    let left = c.m.leave_group("g", &a.member_id).await;
    c.check(armed, "leave_group");
    assert!(left.is_ok(), "{}", show(&left));
    let d = c.m.describe_group("g").await.unwrap();
    assert_eq!(d.generation, c2.generation + 2, "one step per change");
    vec![show(&hb), show(&left), format!("{d:?}")]
}

/// `commit_offsets` commits once and answers Ok; `reset_offsets` answers the offsets it
/// set.
async fn offsets(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 2)).await.unwrap();
    c.m.commit_segment(&segment("s", &[(t.id, 0, 10), (t.id, 1, 4)]))
        .await
        .unwrap();
    let topics = vec!["t".to_string()];
    let a = c.m.join_group("g", None, &topics, 3_000).await.unwrap();
    let armed = c.arm();
    let r =
        c.m.commit_offsets(
            "g",
            &a.member_id,
            a.generation,
            &[("t".into(), 0, 6), ("t".into(), 1, 3)],
        )
        .await;
    c.check(armed, "commit_offsets");
    assert!(r.is_ok(), "{}", show(&r));
    let committed = c.m.committed_offsets("g").await.unwrap();
    c.m.leave_group("g", &a.member_id).await.unwrap();
    let armed = c.arm();
    let reset = c.m.reset_offsets("g", "t", OffsetReset::Latest).await;
    c.check(armed, "reset_offsets");
    assert!(reset.is_ok(), "{}", show(&reset));
    vec![
        show(&r),
        format!("{committed:?}"),
        show(&reset),
        format!("{:?}", c.m.committed_offsets("g").await.unwrap()),
    ]
}

/// `share_acquire` leases each record once: the first attempt's records come back with
/// delivery count 1, nothing else is leased to the caller, and after the lease runs out the
/// records come back with count 2, not 3.
async fn share_acquire(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 1)).await.unwrap();
    c.m.commit_segment(&segment("s", &[(t.id, 0, 8)]))
        .await
        .unwrap();
    // Creates the group, so the fault below meets the acquisition itself.
    c.m.share_acquire("q", "zed", "t", 0, 1_000, 5)
        .await
        .unwrap();
    let armed = c.arm();
    let r = c.m.share_acquire("q", "alice", "t", 3, 1_000, 5).await;
    c.check(armed, "share_acquire");
    let got = r.as_ref().map(|a| a.records.clone()).unwrap_or_default();
    assert_eq!(got, [(0, 0, 1), (0, 1, 1), (0, 2, 1)], "{}", show(&r));
    let bob = c.m.share_acquire("q", "bob", "t", 10, 1_000, 5).await;
    assert_eq!(
        bob.as_ref().map(|a| a.records.len()).ok(),
        Some(5),
        "bob gets the 5 alice does not hold: {}",
        show(&bob)
    );
    let d = c.m.describe_share_group("q", "t").await.unwrap();
    c.clock.advance(1_500);
    let again = c.m.share_acquire("q", "carol", "t", 10, 1_000, 5).await;
    assert!(
        again
            .as_ref()
            .is_ok_and(|a| a.records.len() == 8 && a.records.iter().all(|r| r.2 == 2)),
        "second deliveries: {}",
        show(&again)
    );
    vec![show(&r), show(&bob), format!("{d:?}"), show(&again)]
}

/// `share_settle` answers the delivery counts of what it settled, not "already settled".
async fn share_settle(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 1)).await.unwrap();
    c.m.commit_segment(&segment("s", &[(t.id, 0, 4)]))
        .await
        .unwrap();
    c.m.share_acquire("q", "alice", "t", 4, 1_000, 5)
        .await
        .unwrap();
    let armed = c.arm();
    let acked =
        c.m.share_settle("q", "alice", "t", 0, &[0, 1], ShareAction::Ack)
            .await;
    c.check(armed, "share_settle(ack)");
    assert_eq!(acked.as_ref().ok(), Some(&vec![1, 1]), "{}", show(&acked));
    let armed = c.arm();
    let released =
        c.m.share_settle("q", "alice", "t", 0, &[2, 3], ShareAction::Release)
            .await;
    c.check(armed, "share_settle(release)");
    assert!(released.is_ok(), "{}", show(&released));
    vec![
        show(&acked),
        show(&released),
        format!("{:?}", c.m.describe_share_group("q", "t").await.unwrap()),
    ]
}

/// `claim_compaction` hands out one fencing token; `swap_compacted` answers Ok and adjusts
/// the partition once; `release_compaction` is Ok.
async fn compaction(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 2)).await.unwrap();
    for i in 0..3 {
        c.m.commit_segment(&segment(&format!("s{i}"), &[(t.id, 0, 10)]))
            .await
            .unwrap();
    }
    let lease = Duration::from_secs(60);
    let armed = c.arm();
    let claim = c.m.claim_compaction(t.id, 0, "a", lease).await;
    c.check(armed, "claim_compaction");
    let Ok(Some(claim)) = claim else {
        panic!("claim refused: {}", show(&claim));
    };
    let other = c.m.claim_compaction(t.id, 1, "a", lease).await.unwrap();
    assert_eq!(
        other.map(|o| o.token),
        Some(claim.token + 1),
        "one token step"
    );
    let (_, run) = c.m.read_index(t.id, 0, 0, 10).await.unwrap();
    let file = CompactedFile {
        object_key: format!("p-{}", claim.token),
        first_offset: run[0].base_offset,
        size: 120,
        row_groups: 1,
        min_timestamp_ms: 1,
        max_timestamp_ms: 2,
    };
    let armed = c.arm();
    let swapped = c.m.swap_compacted(claim, &run, &file).await;
    c.check(armed, "swap_compacted");
    assert!(swapped.is_ok(), "{}", show(&swapped));
    let (state, entries) = c.m.read_index(t.id, 0, 0, 10).await.unwrap();
    assert_eq!((state.index_entries, state.bytes), (1, 120));
    let armed = c.arm();
    let released = c.m.release_compaction(claim).await;
    c.check(armed, "release_compaction");
    vec![
        format!("{claim:?}"),
        show(&swapped),
        format!("{state:?} {entries:?}"),
        show(&released),
    ]
}

/// `apply_retention` reports the entries it removed (not zero on the rerun), and the
/// partition's bytes drop once.
async fn retention(c: Ctx) -> Vec<String> {
    let mut timed = spec("t", 1);
    timed.retention_ms = 60_000;
    let t = c.m.create_topic(&timed).await.unwrap();
    for i in 0..3 {
        let mut seg = segment(&format!("s{i}"), &[(t.id, 0, 5)]);
        for b in &mut seg.batches {
            b.min_timestamp_ms = crate::Clock::now_ms(c.clock.as_ref());
            b.max_timestamp_ms = b.min_timestamp_ms;
        }
        c.m.commit_segment(&seg).await.unwrap();
        c.clock.advance(40_000);
    }
    let armed = c.arm();
    let r = c.m.apply_retention("t").await;
    c.check(armed, "apply_retention");
    assert_eq!(
        r.as_ref().map(|r| r.entries_removed).ok(),
        Some(2),
        "{}",
        show(&r)
    );
    vec![
        show(&r),
        format!("{:?}", c.m.partition_state(t.id, 0).await.unwrap()),
    ]
}

/// `gc_scan` reports objects newly dead once (the rerun does not see them as older news);
/// `forget_object` is Ok.
async fn garbage(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 1)).await.unwrap();
    for i in 0..3 {
        c.m.commit_segment(&segment(&format!("s{i}"), &[(t.id, 0, 5)]))
            .await
            .unwrap();
    }
    c.m.delete_topic("t").await.unwrap();
    let grace = Duration::ZERO;
    let armed = c.arm();
    let first = c.m.gc_scan("", grace).await;
    c.check(armed, "gc_scan");
    assert!(
        first
            .as_ref()
            .is_ok_and(|p| p.newly_dead == 3 && p.deletable.is_empty()),
        "{}",
        show(&first)
    );
    let second = c.m.gc_scan("", grace).await;
    let armed = c.arm();
    let forgot = c.m.forget_object("s0").await;
    c.check(armed, "forget_object");
    vec![
        show(&first),
        show(&second),
        show(&forgot),
        format!("{:?}", c.m.is_object_committed("s0").await.unwrap()),
    ]
}

/// `expire_producers` reports what it removed, for both of its sweeps.
async fn producer_expiry(c: Ctx) -> Vec<String> {
    let t = c.m.create_topic(&spec("t", 2)).await.unwrap();
    let p = c.m.init_producer(None).await.unwrap();
    c.m.commit_segment(&stamped_segment(
        "s",
        &[B::new(t.id, 0, 1).seq(p, 0), B::new(t.id, 1, 1).seq(p, 0)],
    ))
    .await
    .unwrap();
    let day = Duration::from_secs(86_400);
    c.clock.advance(8 * 86_400_000);
    // The fault meets the first sweep (per-partition states).
    let armed = c.arm();
    let states = c.m.expire_producers(7 * day).await;
    c.check(armed, "expire_producers(states)");
    assert_eq!(
        states
            .as_ref()
            .map(|r| (r.partition_states, r.producers))
            .ok(),
        Some((2, 1)),
        "{}",
        show(&states)
    );
    // A producer with no per-partition state: the fault meets the second sweep (ids).
    c.m.init_producer(Some("idle")).await.unwrap();
    c.clock.advance(8 * 86_400_000);
    let armed = c.arm();
    let ids = c.m.expire_producers(7 * day).await;
    c.check(armed, "expire_producers(ids)");
    assert_eq!(
        ids.as_ref().map(|r| (r.partition_states, r.producers)).ok(),
        Some((0, 1)),
        "{}",
        show(&ids)
    );
    vec![
        show(&states),
        show(&ids),
        format!("{:?}", c.m.producer_stats().await.unwrap()),
    ]
}

/// Every lost-reply case, each comparing a clean run with a losing one on fresh stores.
pub async fn lost_replies<F, Fut>(fresh: &mut F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn KvStore>>,
{
    compare(fresh, "create_topic", create_topic).await;
    compare(fresh, "delete_topic", delete_topic).await;
    compare(fresh, "add_partitions", add_partitions).await;
    compare(fresh, "commit_segment", commit_segment).await;
    compare(fresh, "delete_records", delete_records).await;
    compare(fresh, "init_producer(named)", init_named_producer).await;
    compare(fresh, "init_producer(anonymous)", init_anonymous_producer).await;
    compare(fresh, "join_group", join_group).await;
    compare(fresh, "heartbeat/leave_group", heartbeat_and_leave).await;
    compare(fresh, "commit_offsets/reset_offsets", offsets).await;
    compare(fresh, "share_acquire", share_acquire).await;
    compare(fresh, "share_settle", share_settle).await;
    compare(fresh, "compaction", compaction).await;
    compare(fresh, "apply_retention", retention).await;
    compare(fresh, "gc_scan/forget_object", garbage).await;
    compare(fresh, "expire_producers", producer_expiry).await;
}

/// Lost replies with another client acting before the retry, where only the operation's
/// token (not the state it finds) can tell its own write from someone else's:
/// - an offset commit whose group rebalanced meanwhile answers Ok, not STALE_GENERATION;
/// - a topic deleted and re-created by someone else meanwhile: the delete answers the topic
///   it deleted and leaves the new one alone;
/// - a settle followed by another consumer's settle in the same partition still finds its
///   receipt.
pub async fn lost_reply_races<F, Fut>(fresh: &mut F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Arc<dyn KvStore>>,
{
    // Offset commit, then a second member joins (new generation) before the retry.
    let c = Ctx::new(fresh().await, true);
    let t = c.m.create_topic(&spec("t", 2)).await.unwrap();
    c.m.commit_segment(&segment("s", &[(t.id, 0, 10), (t.id, 1, 4)]))
        .await
        .unwrap();
    let topics = vec!["t".to_string()];
    let a = c.m.join_group("g", None, &topics, 3_000).await.unwrap();
    let other = c.m.clone();
    let joined = Arc::new(std::sync::Mutex::new(None));
    let slot = joined.clone();
    c.faulty.unknown_next_commit_then(move || async move {
        let b = other.join_group("g", None, &topics, 3_000).await.unwrap();
        *slot.lock().unwrap() = Some(b);
    });
    let r =
        c.m.commit_offsets("g", &a.member_id, a.generation, &[("t".into(), 0, 6)])
            .await;
    assert!(r.is_ok(), "commit_offsets: {}", show(&r));
    let b = joined
        .lock()
        .unwrap()
        .take()
        .expect("the other member joined");
    assert!(b.generation > a.generation, "the group did rebalance");
    assert_eq!(
        c.m.committed_offsets("g").await.unwrap(),
        [("t".to_string(), 0, 6)]
    );

    // Delete, then the name is re-created by someone else before the retry.
    let c = Ctx::new(fresh().await, true);
    let old = c.m.create_topic(&spec("t", 1)).await.unwrap();
    let other = c.m.clone();
    c.faulty.unknown_next_commit_then(move || async move {
        other.create_topic(&spec("t", 3)).await.unwrap();
    });
    let r = c.m.delete_topic("t").await;
    assert_eq!(r.as_ref().ok(), Some(&old), "delete_topic: {}", show(&r));
    let now = c.m.topic("t").await.unwrap();
    assert_ne!(now.id, old.id);
    assert_eq!(
        now.partitions, 3,
        "the new topic of that name is left alone"
    );

    // Settle, then another consumer settles in the same partition before the retry.
    let c = Ctx::new(fresh().await, true);
    let t = c.m.create_topic(&spec("t", 1)).await.unwrap();
    c.m.commit_segment(&segment("s", &[(t.id, 0, 4)]))
        .await
        .unwrap();
    c.m.share_acquire("q", "alice", "t", 2, 10_000, 5)
        .await
        .unwrap();
    c.m.share_acquire("q", "bob", "t", 2, 10_000, 5)
        .await
        .unwrap();
    let other = c.m.clone();
    c.faulty.unknown_next_commit_then(move || async move {
        other
            .share_settle("q", "bob", "t", 0, &[2, 3], ShareAction::Ack)
            .await
            .unwrap();
    });
    let r =
        c.m.share_settle("q", "alice", "t", 0, &[0, 1], ShareAction::Ack)
            .await;
    assert_eq!(
        r.as_ref().ok(),
        Some(&vec![1, 1]),
        "share_settle: {}",
        show(&r)
    );
    let d = c.m.describe_share_group("q", "t").await.unwrap();
    assert_eq!((d[0].start_offset, d[0].end_offset), (4, 4), "{d:?}");
}

/// The retry loop's flag: false on a first attempt and after failures known not to have
/// committed; true once an attempt's commit result was unknown, and from then on.
pub async fn maybe_committed_flag(kv: Arc<dyn KvStore>) {
    let faulty = Arc::new(FaultyKv::new(kv));
    let policy = RetryPolicy {
        max_attempts: 10,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(2),
    };
    let run = |setup: &'static str| {
        let faulty = faulty.clone();
        async move {
            let seen = std::sync::Mutex::new(Vec::new());
            transact(faulty.as_ref(), &policy, "flag", |tx, maybe| {
                let seen = &seen;
                let faulty = faulty.clone();
                async move {
                    let attempt = {
                        let mut s = seen.lock().unwrap();
                        s.push(maybe.get());
                        s.len()
                    };
                    // The second attempt of this case fails without committing.
                    if setup == "unknown then unavailable" && attempt == 2 {
                        faulty.fail_next_commits(1);
                    }
                    tx.set(b"k", b"v").await?;
                    Ok(())
                }
            })
            .await
            .unwrap();
            seen.into_inner().unwrap()
        }
    };
    assert_eq!(run("clean").await, [false]);
    faulty.fail_next_commits(1);
    assert_eq!(run("unavailable").await, [false, false]);
    faulty.unknown_next_commits(1);
    assert_eq!(run("unknown").await, [false, true]);
    faulty.unknown_next_commits(1);
    assert_eq!(
        run("unknown then unavailable").await,
        [false, true, true],
        "the flag stays set once an attempt may have committed"
    );
}
