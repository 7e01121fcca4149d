//! Two `cairn agent` processes share one PostgreSQL metadata database (a throwaway server
//! this test starts) and one object store: a topic created through one is visible through
//! the other, and records produced through both are read back through either, each once,
//! at dense offsets in order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use cairn_client::{Admin, Producer, ProducerConfig, ProducerRecord, TopicOptions};
use cairn_metadata::conformance::TempPostgres;
use cairn_tests::{AgentProcess, read_all, temp_dir};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_share_a_postgres_metadata_database() -> anyhow::Result<()> {
    let pg = TempPostgres::start().map_err(anyhow::Error::msg)?;
    let url = pg
        .create_database("cairn")
        .await
        .map_err(anyhow::Error::msg)?;
    let dir = temp_dir()?;
    let objects = format!("file://{}", dir.path().join("objects").display());
    let args = [
        "--object-store",
        objects.as_str(),
        "--metadata",
        url.as_str(),
    ];
    let a = AgentProcess::start(&args, &[])?;
    let b = AgentProcess::start(&args, &[])?;

    Admin::new(cairn_client::connect(&a.endpoint).await?)
        .create_topic("shared", 2, TopicOptions::default())
        .await?;
    let described = Admin::new(cairn_client::connect(&b.endpoint).await?)
        .describe_topic("shared")
        .await?;
    assert_eq!(described.partitions.len(), 2, "B sees the topic A made");

    let mut sent = BTreeSet::new();
    for (agent, name) in [(&a, "a"), (&b, "b")] {
        let producer = Producer::new(
            cairn_client::connect(&agent.endpoint).await?,
            ProducerConfig::default(),
        );
        let mut deliveries = Vec::new();
        for i in 0..200 {
            let value = format!("{name}-{i}");
            sent.insert(value.clone());
            deliveries.push(
                producer
                    .send(ProducerRecord::new("shared", value).key(format!("k{i}")))
                    .await?,
            );
        }
        for d in deliveries {
            d.await?;
        }
        producer.close().await?;
    }

    for agent in [&a, &b] {
        let records = read_all(&agent.endpoint, "shared").await?;
        let values: BTreeSet<String> = records
            .iter()
            .map(|r| String::from_utf8_lossy(&r.value).into_owned())
            .collect();
        assert_eq!(records.len(), 400, "each record once");
        assert_eq!(values, sent);
        for p in 0..2 {
            let offsets: Vec<i64> = records
                .iter()
                .filter(|r| r.partition == p)
                .map(|r| r.offset)
                .collect();
            let dense: Vec<i64> = (0..offsets.len() as i64).collect();
            assert_eq!(offsets, dense, "partition {p} has dense offsets in order");
        }
    }
    Ok(())
}
