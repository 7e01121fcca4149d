//! A cluster on one machine: `cairn agent` processes on different loopback addresses
//! (127.0.0.2–5) in two zones over one throwaway PostgreSQL and LocalStack's S3.
//!
//! One scenario, in steps, because each step starts from the state the last one left:
//! zone-aware produce and fetch (a client of zone z2 reads only through z2's agent), a
//! client bootstrapping from a dead address among live ones, SIGKILL of the agent a
//! producer and a group member use (they move to the other agent of their zone; nothing
//! acked is lost or duplicated), a fourth agent joining under load (fetch ownership moves
//! to it by rendezvous), and PostgreSQL restarting under load (agents answer UNAVAILABLE
//! meanwhile and recover by themselves). At the end every acknowledged record is read
//! back exactly once per partition, in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use cairn_client::{
    Admin, Cluster, ClusterConfig, ConsumedRecord, ErrorReason, GroupConfig, GroupConsumer, Offset,
    ProducerConfig, ShareConfig, ShareConsumer, TopicOptions,
};
use cairn_metadata::conformance::TempPostgres;
use cairn_tests::{
    AgentProcess, Load, Sent, agent_status, cairn_bin, file_agent_args, run_json, s3_env, s3_url,
    temp_dir, verify_exact, zone_cluster,
};

const TOPIC: &str = "orders";
const PARTITIONS: u32 = 12;

/// The agents' common flags.
fn agent_args(objects: &str, metadata: &str, id: &str, zone: &str) -> Vec<String> {
    [
        "--object-store",
        objects,
        "--metadata",
        metadata,
        "--agent-id",
        id,
        "--zone",
        zone,
        "--agent-lease",
        "2s",
        "--linger",
        "20ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(listen: &str, args: &[String], env: &[(String, String)]) -> anyhow::Result<AgentProcess> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    AgentProcess::start_at(listen, &args, env)
}

/// Reads every partition from the beginning to the current high watermarks through `c`.
async fn read_all(c: &Cluster) -> anyhow::Result<Vec<ConsumedRecord>> {
    cairn_tests::read_all_through(c.clone(), TOPIC).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_routes_by_zone_and_survives_agents_and_postgres_failing() -> anyhow::Result<()> {
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let metadata = pg
        .create_database("cluster")
        .await
        .map_err(anyhow::Error::msg)?;
    let objects = s3_url("cluster");
    let env = s3_env()?;
    let a = start(
        "127.0.0.2:0",
        &agent_args(&objects, &metadata, "a", "z1"),
        &env,
    )?;
    let b = start(
        "127.0.0.3:0",
        &agent_args(&objects, &metadata, "b", "z1"),
        &env,
    )?;
    let c = start(
        "127.0.0.4:0",
        &agent_args(&objects, &metadata, "c", "z2"),
        &env,
    )?;

    // Bootstrapping from a dead address among live ones works: the client learns all three.
    let z1 = zone_cluster(&["http://127.0.0.1:1", &a.endpoint], "z1").await?;
    let mut agents = z1.agents();
    agents.sort();
    let seen: Vec<(&str, &str)> = agents
        .iter()
        .map(|(id, _, zone)| (id.as_str(), zone.as_str()))
        .collect();
    assert_eq!(seen, [("a", "z1"), ("b", "z1"), ("c", "z2")]);
    let z2 = zone_cluster(&[&b.endpoint], "z2").await?;
    // `cairn cluster` shows the same view; a CLI client of zone z2 asks z2's agent.
    let shown = run_json(std::process::Command::new(cairn_bin()?).args([
        "cluster",
        "--endpoint",
        &format!("127.0.0.1:1,{}", a.endpoint),
        "--zone",
        "z2",
        "--json",
    ]))?;
    let ids: Vec<&str> = shown["agents"]
        .as_array()
        .map(|a| a.iter().filter_map(|x| x["id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(ids, ["a", "b", "c"], "{shown}");
    assert_eq!(shown["answered_by"], "c", "{shown}");
    Admin::new(z1.clone())
        .create_topic(TOPIC, PARTITIONS, TopicOptions::default())
        .await?;

    // Zone-aware produce: z1's producers use a and b, never c.
    let mut all_sent: Vec<Sent> = Vec::new();
    let clusters = vec![
        zone_cluster(&[&a.endpoint], "z1").await?,
        zone_cluster(&[&c.endpoint], "z1").await?,
    ];
    let sent =
        cairn_tests::produce_workload_through(clusters, TOPIC, 500, ProducerConfig::default())
            .await?;
    // Producer numbers 0 and 1 are used by the workload; the loads below use 10 and up.
    all_sent.extend(sent);
    assert_eq!(
        agent_status(&c.endpoint).await?.produce_records,
        0,
        "z1 never produced to c"
    );
    assert!(
        agent_status(&a.endpoint).await?.produce_records
            + agent_status(&b.endpoint).await?.produce_records
            >= 1000
    );

    // Zone-aware fetch: a z2 reader reads everything through c alone.
    let (fa, fb) = (
        agent_status(&a.endpoint).await?.fetch_bytes,
        agent_status(&b.endpoint).await?.fetch_bytes,
    );
    let got = read_all(&z2).await?;
    verify_exact(&all_sent, &got)?;
    assert!(
        agent_status(&c.endpoint).await?.fetch_bytes > 0,
        "z2 reads through c"
    );
    assert_eq!(
        agent_status(&a.endpoint).await?.fetch_bytes,
        fa,
        "z2 never fetched from a"
    );
    assert_eq!(
        agent_status(&b.endpoint).await?.fetch_bytes,
        fb,
        "z2 never fetched from b"
    );

    // A group member of z1 follows the topic throughout.
    let members = zone_cluster(&[&a.endpoint], "z1").await?;
    // Distinct records the member read, and (once the loads end) how many there are.
    let consumed = Arc::new(AtomicU64::new(0));
    let group_target = Arc::new(AtomicU64::new(0));
    let group = {
        let (members, consumed, target) = (members.clone(), consumed.clone(), group_target.clone());
        tokio::spawn(async move {
            let config = GroupConfig {
                session_timeout: Duration::from_secs(6),
                start: Offset::Beginning,
                ..GroupConfig::default()
            };
            let mut g = GroupConsumer::join(members, "audit", &[TOPIC], config).await?;
            let mut committed = false;
            let mut seen = std::collections::HashSet::new();
            // Until every record is read and the last position committed.
            loop {
                let t = target.load(Ordering::SeqCst);
                if t > 0 && seen.len() as u64 >= t && committed {
                    break;
                }
                let records = match g.poll(Duration::from_millis(200)).await {
                    Ok(r) => r,
                    // The agent it used died, or PostgreSQL is down: a real application
                    // backs off, then the next call goes to whichever agent answers.
                    Err(e) if e.is_retryable() => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                seen.extend(records.iter().map(|r| (r.partition, r.offset)));
                consumed.store(seen.len() as u64, Ordering::SeqCst);
                committed = match g.commit().await {
                    Ok(_) => true,
                    Err(e) if e.is_retryable() => false,
                    // Its session ran out while PostgreSQL was down: the member joined again
                    // and reads from the group's last commit (reprocessing is allowed).
                    Err(e) if e.reason() == Some(ErrorReason::UnknownMember) => false,
                    Err(e) => return Err(anyhow::Error::from(e)),
                };
            }
            g.leave().await?;
            Ok::<_, anyhow::Error>(())
        })
    };

    // SIGKILL the agent a z1 producer uses, under load: it moves to the other z1 agent.
    let load_cluster = zone_cluster(&[&a.endpoint], "z1").await?;
    let mut load = Load::start(load_cluster.clone(), TOPIC, 10);
    load.progress(500).await?;
    let victim = load_cluster
        .produce_agent()
        .expect("the producer has chosen an agent");
    let (victim, survivor) = if victim == "a" { (a, b) } else { (b, a) };
    let killed_at = Instant::now();
    victim.kill()?;
    load.progress(1000).await?;
    let (sent, longest_gap) = load.finish().await?;
    let failover = longest_gap;
    eprintln!(
        "failover: {} records acked, longest gap between acks {:?} (killed {:?} ago)",
        sent.len(),
        failover,
        killed_at.elapsed()
    );
    assert_eq!(
        load_cluster.produce_agent().as_deref(),
        Some(if survivor.endpoint.contains("127.0.0.2") {
            "a"
        } else {
            "b"
        }),
        "the producer moved to the surviving agent of its zone"
    );
    all_sent.extend(sent);

    eprintln!("step: the killed agent's lease runs out");
    // Its registration runs out: clients stop listing it.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        z1.refresh().await?;
        if z1.agents().len() == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed agent never left the view"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    eprintln!("step: a fourth agent joins");
    // A fourth agent joins under load: half of the topic's partitions move to it (z1 had
    // one live agent; a topic is split evenly over its zone's agents, by rendezvous score).
    let owners_before: Vec<Option<String>> = (0..PARTITIONS)
        .map(|p| z1.owner(TOPIC, p, PARTITIONS))
        .collect();
    let mut load = Load::start(zone_cluster(&[&survivor.endpoint], "z1").await?, TOPIC, 11);
    load.progress(300).await?;
    let d = start(
        "127.0.0.5:0",
        &agent_args(&objects, &metadata, "d", "z1"),
        &env,
    )?;
    z1.refresh().await?;
    let owners_after: Vec<Option<String>> = (0..PARTITIONS)
        .map(|p| z1.owner(TOPIC, p, PARTITIONS))
        .collect();
    let moved: Vec<u32> = (0..PARTITIONS)
        .filter(|&p| owners_before[p as usize] != owners_after[p as usize])
        .collect();
    assert_eq!(
        moved.len() as u32,
        PARTITIONS / 2,
        "half the partitions move to d"
    );
    for &p in &moved {
        assert_eq!(
            owners_after[p as usize].as_deref(),
            Some("d"),
            "partition {p} moved only to d"
        );
    }
    load.progress(300).await?;
    let d_before = agent_status(&d.endpoint).await?.fetch_bytes;
    let got = read_all(&z1).await?;
    assert!(got.len() >= all_sent.len());
    assert!(
        agent_status(&d.endpoint).await?.fetch_bytes > d_before,
        "z1 reads d's partitions from d"
    );

    eprintln!("step: PostgreSQL restarts");
    // PostgreSQL restarts under load: agents answer UNAVAILABLE meanwhile, then recover.
    load.progress(300).await?;
    pg.stop().map_err(anyhow::Error::msg)?;
    let outage = Admin::new(cairn_client::connect(&d.endpoint).await?)
        .describe_topic(TOPIC)
        .await
        .expect_err("no metadata, no answer");
    assert_eq!(outage.code(), Some(tonic::Code::Unavailable), "{outage}");
    pg.start_again().map_err(anyhow::Error::msg)?;
    load.progress(500).await?;
    let (sent, _) = load.finish().await?;
    all_sent.extend(sent);

    eprintln!("step: the group member catches up");
    // The group member, whose agent may have been the one killed, reads every record.
    group_target.store(all_sent.len() as u64, Ordering::SeqCst);
    let finished = tokio::time::timeout(Duration::from_secs(120), group).await;
    assert!(
        finished.is_ok(),
        "the group member read {} of {} records in 120s",
        consumed.load(Ordering::SeqCst),
        all_sent.len()
    );
    finished???;
    // Its committed offsets cover every acknowledged record.
    let described = Admin::new(z2.clone()).describe_group("audit").await?;
    for p in &described.partitions {
        let last_acked = all_sent
            .iter()
            .filter(|s| s.partition == p.partition)
            .map(|s| s.offset + 1)
            .max()
            .unwrap_or(0);
        assert!(
            p.committed.unwrap_or(0) >= last_acked,
            "partition {}: committed {:?}, acked up to {last_acked}",
            p.partition,
            p.committed
        );
    }

    eprintln!("step: reading everything back");
    // Everything acknowledged, exactly once per partition, in order, read through z2.
    let got = read_all(&z2).await?;
    verify_exact(&all_sent, &got)?;
    eprintln!(
        "checked {} acknowledged records: none lost, none duplicated",
        all_sent.len()
    );
    survivor.stop()?;
    d.stop()?;
    c.stop()?;
    Ok(())
}

/// The agents whose clock is five minutes behind or ahead, the other one's right.
const SKEW_MS: i64 = 5 * 60 * 1000;

/// The live agents' ids as the agent at `endpoint` (the only one of `zone`) sees them.
fn seen_by(endpoint: &str, zone: &str) -> anyhow::Result<Vec<String>> {
    let shown = run_json(std::process::Command::new(cairn_bin()?).args([
        "cluster",
        "--endpoint",
        endpoint,
        "--zone",
        zone,
        "--json",
    ]))?;
    let ids = shown["agents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x["id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    Ok(ids)
}

/// Agents whose clocks are minutes off judge each other's leases, share locks and
/// deadlines on the metadata store's clock: they see each other, a share record one of them
/// leased stays leased for its lease and not for minutes more, an agent killed drops out
/// within its lease, and every acknowledged record is read back exactly once. (Judged on
/// the writer's clock, the agent behind would be invisible to the others, its share leases
/// already expired; the agent ahead would hold them, and look alive, for minutes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agents_with_clocks_minutes_off_agree_on_the_store_clock() -> anyhow::Result<()> {
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let metadata = pg
        .create_database("skew")
        .await
        .map_err(anyhow::Error::msg)?;
    let objects = s3_url("skew");
    let env = s3_env()?;
    let skewed = |ms: i64| {
        let mut env = env.clone();
        env.push((
            "CAIRN_TEST_FAULTS".to_string(),
            format!("clock_skew_ms={ms}"),
        ));
        env
    };
    // One agent per zone, so a client of a zone talks to that agent alone.
    let a = start(
        "127.0.0.2:0",
        &agent_args(&objects, &metadata, "a", "z1"),
        &env,
    )?;
    let b = start(
        "127.0.0.3:0",
        &agent_args(&objects, &metadata, "b", "z2"),
        &skewed(-SKEW_MS),
    )?;
    let c = start(
        "127.0.0.4:0",
        &agent_args(&objects, &metadata, "c", "z3"),
        &skewed(SKEW_MS),
    )?;

    // Each sees all three, and knows how far its clock is off the store's.
    // (Awaited: a renewal may land late on a busy machine; a lease judged on the wrong
    // clock never shows.)
    let deadline = Instant::now() + Duration::from_secs(20);
    for (agent, zone) in [(&a, "z1"), (&b, "z2"), (&c, "z3")] {
        loop {
            let seen = seen_by(&agent.endpoint, zone)?;
            if seen == ["a", "b", "c"] {
                break;
            }
            assert!(Instant::now() < deadline, "{zone} sees only {seen:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let offset = |s: cairn_client::GetAgentStatusResponse| {
        s.clock_offset_ms.expect("PostgreSQL has a clock")
    };
    let offsets = [
        offset(agent_status(&a.endpoint).await?),
        offset(agent_status(&b.endpoint).await?),
        offset(agent_status(&c.endpoint).await?),
    ];
    eprintln!("clock offsets (store minus agent): {offsets:?} ms");
    assert!(offsets[0].abs() < 1_000, "{offsets:?}");
    assert!((offsets[1] - SKEW_MS).abs() < 1_000, "{offsets:?}");
    assert!((offsets[2] + SKEW_MS).abs() < 1_000, "{offsets:?}");

    // Produce through all three with idempotent producers.
    let z1 = zone_cluster(&[&a.endpoint], "z1").await?;
    let (z2, z3) = (
        zone_cluster(&[&b.endpoint], "z2").await?,
        zone_cluster(&[&c.endpoint], "z3").await?,
    );
    Admin::new(z1.clone())
        .create_topic(TOPIC, 4, TopicOptions::default())
        .await?;
    let sent = cairn_tests::produce_workload_through(
        vec![z1.clone(), z2.clone(), z3.clone()],
        TOPIC,
        200,
        ProducerConfig::default(),
    )
    .await?;
    for (agent, zone) in [(&a, "z1"), (&b, "z2"), (&c, "z3")] {
        assert!(
            agent_status(&agent.endpoint).await?.produce_records > 0,
            "{zone} produced through its agent"
        );
    }

    // A share record leased through the agent behind stays leased: the agent on time has
    // nothing to hand out meanwhile.
    let lease = ShareConfig {
        lease: Duration::from_secs(60),
        max_records: 10_000,
        ..ShareConfig::default()
    };
    let mut behind = ShareConsumer::new(z2.clone(), "work", TOPIC, lease.clone());
    let mut on_time = ShareConsumer::new(z1.clone(), "work", TOPIC, lease.clone());
    let mut held = Vec::new();
    while held.len() < sent.len() {
        let got = behind.poll(Duration::from_secs(5)).await?;
        assert!(!got.is_empty(), "leased {} of {}", held.len(), sent.len());
        held.extend(got);
    }
    assert!(held.iter().all(|r| r.delivery_count == 1));
    let stolen = on_time.poll(Duration::from_millis(500)).await?;
    assert!(
        stolen.is_empty(),
        "{} records leased for 60 s through the agent behind were handed out again at once",
        stolen.len()
    );
    behind.release(&held).await?;

    // A lease of 1 s taken through the agent ahead runs out after 1 s, not 5 minutes: the
    // agent on time hands the records out again once its holder went silent.
    let mut ahead = ShareConsumer::new(
        z3.clone(),
        "work",
        TOPIC,
        ShareConfig {
            lease: Duration::from_secs(1),
            ..lease.clone()
        },
    );
    let mut taken = Vec::new();
    while taken.len() < sent.len() {
        let got = ahead.poll(Duration::from_secs(5)).await?;
        assert!(!got.is_empty(), "leased {} of {}", taken.len(), sent.len());
        taken.extend(got);
    }
    drop(ahead);
    let mut again = Vec::new();
    while again.len() < sent.len() {
        let got = on_time.poll(Duration::from_secs(20)).await?;
        assert!(
            !got.is_empty(),
            "{} of {} records leased for 1 s through the agent ahead came back within 20 s",
            again.len(),
            sent.len()
        );
        again.extend(got);
    }
    assert!(again.iter().all(|r| r.delivery_count >= 2));
    on_time.ack(&again).await?;

    // The agent ahead, killed, drops out of the others' view within its lease (2 s), not
    // five minutes later.
    let killed = Instant::now();
    c.kill()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if seen_by(&a.endpoint, "z1")? == ["a", "b"] && seen_by(&b.endpoint, "z2")? == ["a", "b"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed agent ahead stayed in the view for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "the killed agent ahead left the view after {:?}",
        killed.elapsed()
    );

    // Everything acknowledged, exactly once per partition, in order.
    let got = cairn_tests::read_all_through(z1.clone(), TOPIC).await?;
    verify_exact(&sent, &got)?;
    eprintln!(
        "checked {} acknowledged records with clocks off by ±5 min: none lost, none duplicated",
        sent.len()
    );
    a.stop()?;
    b.stop()?;
    Ok(())
}

/// Bad cluster input is refused at start with an error that names the fix: a duplicate id
/// of a live agent, an advertised address nobody can dial, a wildcard listen address
/// without one, and bad zone names; and a client whose every bootstrap address is dead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cluster_input_is_refused_clearly() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let mut args = file_agent_args(dir.path());
    args.extend(["--agent-id".into(), "one".into()]);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let first = AgentProcess::start(&argv, &[])?;

    let refused = |extra: &[&str]| -> anyhow::Result<String> {
        let out = std::process::Command::new(cairn_bin()?)
            .arg("agent")
            .args(file_agent_args(dir.path()))
            .args(extra)
            .env("CAIRN_LOG", "error")
            .output()?;
        anyhow::ensure!(!out.status.success(), "the agent started with {extra:?}");
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let e = refused(&["--listen", "127.0.0.1:0", "--agent-id", "one"])?;
    assert!(
        e.contains("agent id `one` is already registered by a live agent at http://127.0.0.1:"),
        "{e}"
    );
    let e = refused(&["--listen", "127.0.0.1:0", "--advertise", "127.0.0.1:1"])?;
    assert!(
        e.contains("advertised address http://127.0.0.1:1 is not reachable"),
        "{e}"
    );
    let loopback_name = {
        use std::net::ToSocketAddrs;
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        (name.trim(), 0u16)
            .to_socket_addrs()
            .map(|mut a| a.all(|a| a.ip().is_loopback()))
            .unwrap_or(true)
    };
    if loopback_name {
        // Otherwise a wildcard listen advertises the address the host's name resolves to.
        let e = refused(&["--listen", "0.0.0.0:0", "--insecure"])?;
        assert!(e.contains("--advertise HOST:PORT"), "{e}");
    }
    let e = refused(&["--listen", "127.0.0.1:0", "--zone", "eu west"])?;
    assert!(e.contains("zone `eu west` contains ' '"), "{e}");
    let e = refused(&["--listen", "127.0.0.1:0", "--advertise", "https://x:1"])?;
    assert!(e.contains("must use http"), "{e}");

    // Every bootstrap address dead: a clear, retryable error naming them.
    let err = Cluster::connect(ClusterConfig::new(["127.0.0.1:1", "http://127.0.0.1:2"]))
        .await
        .expect_err("nothing answers");
    assert!(err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("no agent answered at 127.0.0.1:1, http://127.0.0.1:2"),
        "{err}"
    );
    // A client of a zone without agents uses the others.
    let z = zone_cluster(&[&first.endpoint], "nowhere").await?;
    Admin::new(z)
        .create_topic("t", 1, TopicOptions::default())
        .await?;
    first.stop()?;
    Ok(())
}
