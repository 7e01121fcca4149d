//! Consumer groups with real processes: three `cairn consume --group` members share 12
//! partitions; one is killed with SIGKILL; its partitions move to the others, every record
//! is processed, committed offsets only move forward, and a zombie's late commit is fenced.

// A panic is how a test fails; helpers outside #[test] fns may unwrap too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_client::ErrorReason;
use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicOptions};
use cairn_proto::v2::{self, group_service_client::GroupServiceClient};
use cairn_tests::{AgentProcess, cairn_bin, file_agent_args, temp_dir};
use tokio::sync::watch;

const PARTITIONS: u32 = 12;
const RECORDS: usize = 6_000;

/// One `cairn consume --group` process and the (partition, offset) pairs it printed.
struct Member {
    child: Child,
    seen: Arc<Mutex<Vec<(u32, i64)>>>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_member(endpoint: &str, progress: watch::Sender<usize>) -> Member {
    let mut child = Command::new(cairn_bin().unwrap())
        .args([
            "consume",
            "jobs",
            "--group",
            "workers",
            "--follow",
            "--from-beginning",
            "--format",
            "json",
            "--session-timeout",
            "2s",
        ])
        .env("CAIRN_ENDPOINT", endpoint)
        .env("CAIRN_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            let p = v["partition"].as_u64().unwrap() as u32;
            let o = v["offset"].as_i64().unwrap();
            sink.lock().unwrap().push((p, o));
            progress.send_modify(|n| *n += 1);
        }
    });
    Member { child, seen }
}

async fn produce(endpoint: &str, from: usize, to: usize) -> anyhow::Result<()> {
    let producer = Producer::new(
        cairn_client::connect(endpoint).await?,
        ProducerConfig::default(),
    );
    let mut acks = Vec::new();
    for i in from..to {
        acks.push(
            producer
                .send(ProducerRecord::new("jobs", format!("job {i}")).key(format!("k{i}")))
                .await?,
        );
    }
    for a in acks {
        a.await?;
    }
    producer.close().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_partitions_and_survive_a_kill() -> anyhow::Result<()> {
    let dir = temp_dir()?;
    let mut args = file_agent_args(dir.path());
    args.extend(["--linger".to_string(), "10ms".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let agent = AgentProcess::start(&args, &[])?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    let admin = Admin::new(channel.clone());
    admin
        .create_topic("jobs", PARTITIONS, TopicOptions::default())
        .await?;
    produce(&agent.endpoint, 0, RECORDS / 2).await?;

    // Committed offsets must never go back: watch them the whole time.
    let watcher = {
        let admin = admin.clone();
        let (stop_tx, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut last: BTreeMap<u32, i64> = BTreeMap::new();
            let mut checks = 0u64;
            loop {
                if let Ok(d) = admin.describe_group("workers").await {
                    for p in d.partitions {
                        let Some(committed) = p.committed else {
                            continue;
                        };
                        let prev = last.insert(p.partition, committed).unwrap_or(-1);
                        assert!(
                            committed >= prev,
                            "partition {} committed offset went back from {prev} to {committed}",
                            p.partition,
                        );
                    }
                    checks += 1;
                }
                tokio::select! {
                    _ = stop_rx.changed() => return checks,
                    _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
            }
        });
        (stop_tx, task)
    };

    let (progress, mut seen_rx) = watch::channel(0usize);
    let victim = start_member(&agent.endpoint, progress.clone());
    let a = start_member(&agent.endpoint, progress.clone());
    let b = start_member(&agent.endpoint, progress.clone());
    // Wait until all three own partitions (the group is stable at three members).
    let mut groups = GroupServiceClient::new(channel.clone());
    loop {
        let d = admin.describe_group("workers").await;
        if let Ok(d) = d
            && d.members.len() == 3
            && d.members.iter().all(|m| m.partitions.len() == 4)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Wait until the first half is processed and committed, so the victim owns partitions
    // with committed progress; then kill it without warning.
    loop {
        let d = admin.describe_group("workers").await?;
        if d.partitions
            .iter()
            .all(|p| p.committed.is_some() && p.lag == 0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let victim_owned = admin
        .describe_group("workers")
        .await?
        .members
        .iter()
        .map(|m| m.partitions.len())
        .sum::<usize>();
    assert_eq!(victim_owned, PARTITIONS as usize);
    let mut victim = victim;
    victim.child.kill()?; // SIGKILL
    victim.child.wait()?;
    let victim_seen = victim.seen.lock().unwrap().clone();

    // Its partitions move to the survivors within the session timeout and a rebalance.
    let moved_at = std::time::Instant::now();
    loop {
        let d = admin.describe_group("workers").await?;
        let owned: usize = d.members.iter().map(|m| m.partitions.len()).sum();
        if d.members.len() == 2 && owned == PARTITIONS as usize {
            assert!(d.members.iter().all(|m| m.partitions.len() == 6), "{d:?}");
            break;
        }
        assert!(
            moved_at.elapsed() < Duration::from_secs(20),
            "the dead member was not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("partitions moved {:?} after the kill", moved_at.elapsed());

    // More records arrive after the kill; the survivors process everything.
    produce(&agent.endpoint, RECORDS / 2, RECORDS).await?;
    let all_processed = |members: &[&Member]| {
        let mut got: HashSet<(u32, i64)> = victim_seen.iter().copied().collect();
        for m in members {
            got.extend(m.seen.lock().unwrap().iter().copied());
        }
        got.len()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while all_processed(&[&a, &b]) < RECORDS {
        tokio::select! {
            r = seen_rx.changed() => r?,
            _ = tokio::time::sleep_until(deadline) => panic!(
                "only {} of {RECORDS} records processed", all_processed(&[&a, &b])
            ),
        }
    }
    // And commits catch up with the high watermarks.
    loop {
        let d = admin.describe_group("workers").await?;
        if d.partitions.iter().all(|p| p.lag == 0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "commits did not catch up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let redelivered: usize = {
        let mut count: BTreeMap<(u32, i64), usize> = BTreeMap::new();
        for (p, o) in victim_seen
            .iter()
            .chain(a.seen.lock().unwrap().iter())
            .chain(b.seen.lock().unwrap().iter())
        {
            *count.entry((*p, *o)).or_default() += 1;
        }
        count.values().filter(|c| **c > 1).count()
    };
    eprintln!(
        "{RECORDS} records processed by 3 members, one killed after {} records; {redelivered} records processed twice (moved during rebalances before their commit)",
        victim_seen.len()
    );

    // A zombie: a member that stops heartbeating is removed, and its late commit is fenced.
    let zombie = groups
        .join_group(v2::JoinGroupRequest {
            group: "workers".into(),
            member_id: String::new(),
            topics: vec!["jobs".into()],
            session_timeout_ms: Some(1_000),
        })
        .await?
        .into_inner()
        .assignment
        .expect("an assignment");
    loop {
        let d = admin.describe_group("workers").await?;
        if !d.members.iter().any(|m| m.member_id == zombie.member_id) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let owned = zombie.partitions.first().cloned();
    let err = groups
        .commit_offsets(v2::CommitOffsetsRequest {
            group: "workers".into(),
            member_id: zombie.member_id.clone(),
            generation: zombie.generation,
            offsets: vec![v2::PartitionOffset {
                topic: "jobs".into(),
                partition: owned.map_or(0, |tp| tp.partition),
                offset: 0,
            }],
        })
        .await
        .expect_err("the zombie's commit is fenced");
    assert_eq!(
        err.code(),
        tonic::Code::FailedPrecondition,
        "{}",
        err.message()
    );
    let reason = cairn_client::ClientError::from(err).reason();
    assert_eq!(reason, Some(ErrorReason::UnknownMember));

    let (stop, task) = watcher;
    stop.send(true)?;
    let checks = task.await?;
    assert!(
        checks > 10,
        "the committed offsets were watched ({checks} times)"
    );
    drop(a);
    drop(b);
    agent.stop()?;
    Ok(())
}

/// A member that missed a generation does not carry on from its own positions: while it
/// was not looking, another member may have owned its partitions and committed past them.
/// A owns both partitions and commits; B joins (A does not heartbeat), reads and commits
/// further on its partitions, and leaves; when A next heartbeats it is two generations on,
/// and reads B's former partitions from B's commits, not again from its stale positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_missed_a_generation_resumes_from_the_commits() -> anyhow::Result<()> {
    use cairn_client::{GroupConfig, GroupConsumer, Offset};
    let dir = temp_dir()?;
    let agent = AgentProcess::on_files(dir.path())?;
    let channel = cairn_client::connect(&agent.endpoint).await?;
    Admin::new(channel.clone())
        .create_topic("jobs", 2, TopicOptions::default())
        .await?;
    let config = GroupConfig {
        start: Offset::Beginning,
        ..GroupConfig::default()
    };
    produce(&agent.endpoint, 0, 40).await?;
    let mut a = GroupConsumer::join(channel.clone(), "g", &["jobs"], config.clone()).await?;
    assert_eq!(a.assignment().len(), 2);
    while !a.caught_up() || a.positions().iter().any(|(_, _, o)| *o == 0) {
        a.poll(Duration::from_millis(100)).await?;
    }
    a.commit().await?;
    let a_at: BTreeMap<u32, i64> = a.positions().into_iter().map(|(_, p, o)| (p, o)).collect();

    let mut b = GroupConsumer::join(channel.clone(), "g", &["jobs"], config).await?;
    let b_owns: Vec<u32> = b.assignment().into_iter().map(|(_, p)| p).collect();
    assert_eq!(b_owns.len(), 1, "B takes one of the two partitions");
    produce(&agent.endpoint, 40, 80).await?;
    while !b.caught_up() || b.positions().iter().any(|(_, p, o)| *o <= a_at[p]) {
        b.poll(Duration::from_millis(100)).await?;
    }
    b.commit().await?;
    let b_at: BTreeMap<u32, i64> = b.positions().into_iter().map(|(_, p, o)| (p, o)).collect();
    b.leave().await?;

    // A's next heartbeat is due a third of its session timeout after its last one: then it
    // learns of two generations at once.
    let generation = a.generation();
    tokio::time::sleep(GroupConfig::default().session_timeout / 3 + Duration::from_millis(100))
        .await;
    let records = a.poll(Duration::ZERO).await?;
    assert_eq!(a.generation(), generation + 2, "A skipped B's generation");
    for r in &records {
        if let Some(&committed) = b_at.get(&r.partition) {
            assert!(
                r.offset >= committed,
                "A read {}/{} again although B committed {committed}",
                r.partition,
                r.offset
            );
        }
    }
    for (_, p, o) in a.positions() {
        if let Some(&committed) = b_at.get(&p) {
            assert!(
                o >= committed,
                "A's position in partition {p} is {o}, B committed {committed}"
            );
        }
    }
    a.leave().await?;
    agent.stop()?;
    Ok(())
}
