//! The zone read cache across processes: three `cairn agent` processes of one zone
//! (127.0.0.2–4) over LocalStack's S3 and a throwaway PostgreSQL. Consumers of the zone
//! read every partition through the agent that owns it (rendezvous), so each agent needs
//! bytes of every segment object; with the zone cache each 4 MiB chunk is read from S3
//! about once for the whole zone, however many consumers read it. The same data read with
//! the zone cache off (`chunk_cache_bytes = 0`) shows what it saves: there every agent pays
//! one GET per partition per object.
//!
//! The GET counts come from the agents themselves (GetAgentStatus.object_gets), summed
//! over the zone, and are compared with the least a chunked read can cost: the number of
//! 4 MiB chunks that the index entries read touch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use cairn_client::{
    Admin, Cluster, GetAgentStatusResponse, Producer, ProducerConfig, ProducerRecord, TopicOptions,
};
use cairn_metadata::conformance::TempPostgres;
use cairn_tests::{
    AgentProcess, agent_status, incompressible, s3_env, s3_url, temp_dir, zone_cluster,
};

const TOPIC: &str = "zone-reads";
const PARTITIONS: u32 = 24;
const CHUNK: u64 = 4 << 20;
const RECORDS: usize = 8_000;
const VALUE_BYTES: usize = 4_096;

struct Zone {
    agents: Vec<AgentProcess>,
}

impl Zone {
    /// Three agents of zone z1 with the zone cache (4 MiB chunks), or with it off.
    fn start(
        objects: &str,
        metadata: &str,
        config_dir: &std::path::Path,
        zone_cache: bool,
    ) -> anyhow::Result<Zone> {
        let config = config_dir.join(format!("agent-{zone_cache}.toml"));
        std::fs::write(
            &config,
            format!(
                "[tuning]\nchunk_bytes = {CHUNK}\nchunk_cache_bytes = {}\n\
                 segment_max_bytes = {}\nlinger = \"1s\"\n",
                if zone_cache { 256 << 20 } else { 0 },
                8 << 20
            ),
        )?;
        let env = s3_env()?;
        let mut agents = Vec::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let args = [
                "--config",
                config.to_str().unwrap(),
                "--object-store",
                objects,
                "--metadata",
                metadata,
                "--agent-id",
                id,
                "--zone",
                "z1",
                "--agent-lease",
                "2s",
            ];
            agents.push(AgentProcess::start_at(
                &format!("127.0.0.{}:0", i + 2),
                &args,
                &env,
            )?);
        }
        Ok(Zone { agents })
    }

    /// A client of zone z1 that knows all three agents.
    async fn client(&self) -> anyhow::Result<Cluster> {
        let endpoints: Vec<&str> = self.agents.iter().map(|a| a.endpoint.as_str()).collect();
        let cluster = zone_cluster(&endpoints, "z1").await?;
        // Every agent in the view, so each serves its share of the partitions.
        for _ in 0..100 {
            if cluster.agents().len() == 3 {
                return Ok(cluster);
            }
            cluster.refresh().await?;
        }
        anyhow::bail!(
            "the client never saw the three agents: {:?}",
            cluster.agents()
        );
    }

    /// The agents' own accounts.
    async fn statuses(&self) -> anyhow::Result<Vec<GetAgentStatusResponse>> {
        let mut out = Vec::new();
        for a in &self.agents {
            out.push(agent_status(&a.endpoint).await?);
        }
        Ok(out)
    }

    /// GET requests the zone's agents made so far.
    async fn gets(&self) -> anyhow::Result<u64> {
        Ok(self.statuses().await?.iter().map(|s| s.object_gets).sum())
    }

    /// Waits until every agent sees the whole zone (they read it every 2 s), so that they
    /// agree on each chunk's owner.
    async fn settle(&self) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let members: Vec<u32> = self
                .statuses()
                .await?
                .iter()
                .map(|s| s.zone_cache_members)
                .collect();
            if members.iter().all(|&m| m == 3) {
                return Ok(());
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "the agents' views of the zone never became whole: {members:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn stop(self) -> anyhow::Result<()> {
        for a in self.agents {
            a.stop()?;
        }
        Ok(())
    }
}

/// Reads the whole topic through `cluster` once and checks every record came back.
async fn read_once(cluster: &Cluster) -> anyhow::Result<()> {
    let values = cairn_tests::read_all_mapped(cluster.clone(), TOPIC, |r| r.value.len()).await?;
    anyhow::ensure!(
        values.len() == RECORDS && values.iter().all(|&n| n == VALUE_BYTES),
        "read {} records, wanted {RECORDS} of {VALUE_BYTES} bytes",
        values.len()
    );
    Ok(())
}

/// GETs for one pass and for four passes over the topic (four consumer groups).
async fn gets_for_one_and_four_reads(zone: &Zone, zoned: bool) -> anyhow::Result<(u64, u64)> {
    let cluster = zone.client().await?;
    if zoned {
        zone.settle().await?;
    }
    let before = zone.gets().await?;
    read_once(&cluster).await?;
    let one = zone.gets().await? - before;
    for _ in 0..3 {
        read_once(&cluster).await?;
    }
    let four = zone.gets().await? - before;
    Ok((one, four))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zone_reads_each_chunk_from_the_store_about_once_however_many_consumers_read()
-> anyhow::Result<()> {
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let metadata = pg
        .create_database("zone_cache")
        .await
        .map_err(anyhow::Error::msg)?;
    let objects = s3_url("zone-cache");
    let dir = temp_dir()?;

    let zone = Zone::start(&objects, &metadata, dir.path(), true)?;
    let cluster = zone.client().await?;
    Admin::new(cluster.clone())
        .create_topic(TOPIC, PARTITIONS, TopicOptions::default())
        .await?;
    let producer = Producer::new(cluster.clone(), ProducerConfig::default());
    let mut pending = Vec::new();
    for i in 0..RECORDS {
        let record = ProducerRecord::new(TOPIC, incompressible(i as u64, VALUE_BYTES))
            .partition((i % PARTITIONS as usize) as u32);
        pending.push(producer.send(record).await?);
    }
    for d in pending {
        d.await?;
    }

    // The least a chunked read costs: one GET per chunk that an index entry touches.
    let (chunks, objects_read, bytes) =
        cairn_tests::chunks_touched(&metadata, TOPIC, CHUNK).await?;
    assert!(objects_read >= 3, "{objects_read} segment objects");

    let (on_one, on_four) = gets_for_one_and_four_reads(&zone, true).await?;
    let peers = zone.statuses().await?;
    zone.stop()?;
    let zone = Zone::start(&objects, &metadata, dir.path(), false)?;
    let (off_one, off_four) = gets_for_one_and_four_reads(&zone, false).await?;
    zone.stop()?;

    let gib = bytes as f64 / f64::from(1u32 << 30);
    eprintln!(
        "zone cache: {objects_read} segment objects, {bytes} bytes indexed, {chunks} chunks of \
         4 MiB touched (the least: {:.0} GETs/GiB); GETs with the zone cache: 1 reader {on_one} ({:.0}/GiB), \
         4 readers {on_four} ({:.0}/GiB); without: 1 reader {off_one} ({:.0}/GiB), 4 readers \
         {off_four} ({:.0}/GiB)",
        chunks as f64 / gib,
        on_one as f64 / gib,
        on_four as f64 / gib,
        off_one as f64 / gib,
        off_four as f64 / gib,
    );
    let failures: u64 = peers.iter().map(|s| s.zone_cache_peer_failures).sum();
    let from_peers: u64 = peers.iter().map(|s| s.zone_cache_peer_reads).sum();
    eprintln!("zone cache: {from_peers} pieces read from their owner, {failures} owner failures");
    assert!(from_peers > 0, "no agent read from another");
    // The promise: about one GET per chunk per zone (≤ 1.1×), and no more for more readers.
    assert!(
        on_one >= chunks && on_one * 10 <= chunks * 11,
        "one reader through the zone: {on_one} GETs for {chunks} chunks"
    );
    assert!(
        on_four * 10 <= chunks * 11,
        "four readers through the zone: {on_four} GETs for {chunks} chunks"
    );
    // Without it every index entry (a partition's range of an object) costs its own GET.
    let entries_read = off_one;
    assert!(
        entries_read >= objects_read * u64::from(PARTITIONS) / 2 && off_one >= 2 * on_one,
        "without the zone cache: {off_one} GETs (with: {on_one})"
    );
    Ok(())
}
