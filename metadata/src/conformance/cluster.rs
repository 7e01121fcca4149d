//! The agent registry: leases, renewals, duplicate ids, expiry and the sweep.

use std::sync::Arc;
use std::time::Duration;

use crate::{AgentLoad, AgentRecord, ErrorKind, KvStore, ManualClock, MetaError, Metadata};

fn record(id: &str, incarnation: u64) -> AgentRecord {
    AgentRecord {
        id: id.into(),
        address: format!("http://{id}:7170"),
        peer_address: String::new(),
        kafka_address: format!("{id}:9092"),
        zone: "a".into(),
        version: "test".into(),
        started_ms: 1,
        incarnation,
        lease_expires_ms: 0,
        load: AgentLoad::default(),
    }
}

/// The ids of the live agents, in id order.
async fn live_ids(m: &Metadata) -> Vec<String> {
    m.live_agents()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Registration, renewal with load, a duplicate id refused while its lease runs and taken
/// over after it ran out, expiry from the live list, clean deregistration and the sweep.
pub async fn agent_registry(kv: Arc<dyn KvStore>) {
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let m = Metadata::new(kv, clock.clone());
    let lease = Duration::from_secs(10);
    assert!(m.live_agents().await.unwrap().is_empty());
    let a = m.register_agent(&record("a1", 1), lease).await.unwrap();
    assert_eq!(a.lease_expires_ms, 1_700_000_010_000);
    m.register_agent(&record("a2", 2), lease).await.unwrap();
    assert_eq!(live_ids(&m).await, ["a1", "a2"]);

    // A renewal carries the load and moves the lease.
    clock.advance(5_000);
    let mut renew = record("a1", 1);
    renew.load.produce_bytes_per_sec = 42;
    let r = m.register_agent(&renew, lease).await.unwrap();
    assert_eq!(r.lease_expires_ms, 1_700_000_015_000);
    let live = m.live_agents().await.unwrap();
    assert_eq!(live[0].load.produce_bytes_per_sec, 42);

    // Another process with the same id is refused while the lease runs.
    let err = m
        .register_agent(&record("a1", 99), lease)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, MetaError::AgentIdInUse { id, lease_left_ms, .. } if id == "a1" && *lease_left_ms == 10_000),
        "{err:?}"
    );
    assert_eq!(err.kind(), ErrorKind::AlreadyExists);

    // a2's lease runs out: it leaves the live list; its id can be taken over.
    clock.advance(6_000);
    assert_eq!(live_ids(&m).await, ["a1"]);
    m.register_agent(&record("a2", 3), lease).await.unwrap();
    assert_eq!(m.live_agents().await.unwrap().len(), 2);

    // Deregistration by an old incarnation changes nothing; by the current one removes.
    m.deregister_agent("a2", 2).await.unwrap();
    assert_eq!(m.live_agents().await.unwrap().len(), 2);
    m.deregister_agent("a2", 3).await.unwrap();
    assert_eq!(live_ids(&m).await, ["a1"]);

    // A record dead for ten leases is swept by the next registration.
    m.register_agent(&record("gone", 4), lease).await.unwrap();
    clock.advance(200_000);
    m.register_agent(&record("a1", 1), lease).await.unwrap();
    clock.advance(-200_000);
    // Back in time the swept record would be live again if it were still stored.
    assert_eq!(live_ids(&m).await, ["a1"]);

    // Bad input.
    let err = m.register_agent(&record("", 5), lease).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
    let err = m
        .register_agent(&record("x", 5), Duration::from_millis(10))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Invalid);
}
