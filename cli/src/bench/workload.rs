//! The load: producers at a target rate or flat out (with a consumer for `e2e`, a
//! catch-up read for `consume`), a read of an existing topic, and raw PUTs of
//! segment-sized objects for the baseline.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{
    Admin, Cluster, ClusterConfig, Consumer, ConsumerConfig, Offset, Producer, ProducerConfig,
    ProducerRecord, TopicOptions,
};
use indicatif::{ProgressBar, ProgressStyle};
use object_store::{ObjectStoreExt, PutPayload};

use super::agents::{Agents, merged};
use super::args::ValuesArg;
use super::report::{
    Bill, GIB, MIB, Percentiles, RawReport, Report, S3_GET_PER_1000, S3_PUT_PER_1000, peak_rss,
    percentiles, report,
};
use super::{Common, Kind};

/// A progress bar over the run's duration (drawn only on a terminal).
fn progress(duration: Duration, json: bool, what: &str) -> ProgressBar {
    let bar = if json {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(duration.as_millis() as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix} [{bar:30}] {elapsed_precise} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_string());
    bar
}

/// Bytes of the pool values are sliced from.
const POOL_BYTES: usize = 8 << 20;

/// Incompressible bytes to slice record values from (zstd would shrink repeated values).
fn random_pool() -> Bytes {
    use rand::{RngCore, SeedableRng};
    let mut buf = vec![0u8; POOL_BYTES];
    rand::rngs::StdRng::seed_from_u64(42).fill_bytes(&mut buf);
    Bytes::from(buf)
}

/// Words to build text values from: the vocabulary of order and click events.
const WORDS: &[&str] = &[
    "order",
    "customer",
    "shipped",
    "paid",
    "amount",
    "currency",
    "EUR",
    "USD",
    "warehouse",
    "berlin",
    "paris",
    "lisbon",
    "status",
    "pending",
    "item",
    "quantity",
    "price",
    "discount",
    "the",
    "a",
    "of",
    "to",
    "and",
    "user",
    "login",
    "session",
    "click",
    "page",
    "view",
    "error",
    "timeout",
    "retry",
    "ok",
    "cart",
    "checkout",
    "refund",
    "delivered",
    "address",
];

/// Text to slice record values from: random words, with a number now and then.
fn text_pool() -> Bytes {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut buf = Vec::with_capacity(POOL_BYTES + 16);
    while buf.len() < POOL_BYTES {
        if rng.random_ratio(1, 8) {
            buf.extend_from_slice(rng.random_range(0..100_000u32).to_string().as_bytes());
        } else {
            buf.extend_from_slice(WORDS[rng.random_range(0..WORDS.len())].as_bytes());
        }
        buf.push(b' ');
    }
    buf.truncate(POOL_BYTES);
    Bytes::from(buf)
}

/// The pool of the values the run asked for.
fn value_pool(values: ValuesArg) -> Bytes {
    match values {
        ValuesArg::Random => random_pool(),
        ValuesArg::Text => text_pool(),
    }
}

/// The values one producer sends: slices of `pool` from `offset` on, with the send time in
/// their first 8 bytes when `stamp`, at `rate` a second (0: flat out), none once `deadline`
/// has passed when the next is asked for.
fn values(
    pool: Bytes,
    mut offset: usize,
    size: usize,
    stamp: bool,
    epoch: Instant,
    deadline: Instant,
    rate: f64,
) -> super::kafka::NextValue {
    let mut sent = 0u64;
    Box::new(move || {
        if Instant::now() >= deadline {
            return Box::pin(std::future::ready(None));
        }
        let due = (rate > 0.0).then(|| epoch + Duration::from_secs_f64(sent as f64 / rate));
        let mut value = pool.slice(offset..offset + size).to_vec();
        offset = (offset + 4099) % (pool.len() - size);
        sent += 1;
        Box::pin(async move {
            if let Some(due) = due {
                tokio::time::sleep_until(due.into()).await;
            }
            if stamp {
                let t = epoch.elapsed().as_micros() as u64;
                value[..8].copy_from_slice(&t.to_le_bytes());
            }
            Some(value)
        })
    })
}

/// PUTs `object_size`-byte objects, `concurrency` at a time, for `duration`.
pub(super) async fn raw_put(
    url: &str,
    size: usize,
    concurrency: usize,
    duration: Duration,
    quiet: bool,
) -> anyhow::Result<(RawReport, Percentiles)> {
    if size == 0 || concurrency == 0 {
        bail!("object size and concurrency must be at least 1");
    }
    let store = cairn_storage::open_object_store(url, &[])?;
    let pool = random_pool();
    let payload = pool.slice(0..size.min(pool.len()));
    let bar = progress(duration, quiet, "raw-put");
    let started = Instant::now();
    let deadline = started + duration;
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (store, payload, next) = (store.clone(), payload.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut keys = Vec::new();
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let key = object_store::path::Path::from(format!("bench-raw/{n:08}"));
                let t = Instant::now();
                store
                    .put(&key, PutPayload::from_bytes(payload.clone()))
                    .await
                    .with_context(|| format!("PUT {key}"))?;
                lat.push(t.elapsed().as_micros() as u64);
                keys.push(key);
            }
            Ok::<_, anyhow::Error>((lat, keys))
        }));
    }
    let ticker = {
        let bar = bar.clone();
        let next = next.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(started.elapsed().as_millis() as u64);
                bar.set_message(format!("{} PUTs", next.load(Ordering::Relaxed)));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut all = Vec::new();
    let mut keys = Vec::new();
    for t in tasks {
        let (lat, k) = t.await??;
        all.extend(lat);
        keys.extend(k);
    }
    let secs = started.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    for k in &keys {
        let _ = store.delete(k).await;
    }
    let puts = all.len() as u64;
    let lat = percentiles(all);
    Ok((
        RawReport {
            object_store: url.to_string(),
            object_size: size,
            concurrency,
            seconds: secs,
            puts,
            puts_per_sec: puts as f64 / secs,
            mib_per_sec: puts as f64 * size as f64 / MIB / secs,
            put_latency: lat.clone(),
        },
        lat,
    ))
}

/// The cluster at `endpoints` as a client of the bench's zone sees it.
async fn cluster(c: &Common, endpoints: &[String]) -> anyhow::Result<Cluster> {
    let mut config = ClusterConfig::new(endpoints.to_vec());
    if !c.embedded {
        config = config.security(c.connect.security()?);
    }
    if let Some(z) = &c.connect.zone {
        config = config.zone(z.clone());
    }
    Ok(Cluster::connect(config).await?)
}

/// One benchmark against the cluster at `endpoints` (one agent or many).
pub(super) async fn run_against(
    c: &Common,
    kind: Kind,
    endpoints: &[String],
    store_url: Option<String>,
    kafka: Option<String>,
) -> anyhow::Result<Report> {
    let raw = match (&store_url, c.baseline) {
        (Some(url), true) => Some(
            raw_put(
                url,
                c.segment_max_bytes,
                8,
                c.duration.min(Duration::from_secs(5)),
                c.json,
            )
            .await?
            .0,
        ),
        _ => None,
    };
    let channel = cluster(c, endpoints).await?;
    let admin = Admin::new(channel.clone());
    let security = if c.embedded {
        cairn_client::Security::default()
    } else {
        c.connect.security()?
    };
    let agents = Agents::connect(
        &channel,
        endpoints.first().map_or("", |e| e.as_str()),
        &security,
    )
    .await?;
    if let Some(existing) = &c.topic {
        if kind != Kind::Consume {
            bail!("--topic is for `cairn bench consume` (produce benches make their own topic)");
        }
        return read_existing(c, &admin, &agents, channel, existing).await;
    }
    let topic = format!("bench-{}", std::process::id());
    admin
        .create_topic(&topic, c.partitions, TopicOptions::default())
        .await?;
    let before_each = agents.statuses().await?;
    let before = merged(&before_each);
    let pool = value_pool(c.values);
    let epoch = Instant::now();
    let acked = Arc::new(AtomicU64::new(0));

    // e2e: a consumer of every partition from the end, started before the producers.
    let consumer = if kind == Kind::E2e {
        let mut consumer = Consumer::new(channel.clone(), ConsumerConfig::default());
        consumer.assign_all(&topic, Offset::End).await?;
        Some(consumer)
    } else {
        None
    };
    let deadline = epoch + c.duration;
    let e2e = consumer.map(|mut consumer| {
        tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let records = consumer.poll(Duration::from_millis(200)).await?;
                let now = epoch.elapsed().as_micros() as u64;
                for r in &records {
                    if let Some(head) = r.value.get(..8) {
                        let mut b = [0u8; 8];
                        b.copy_from_slice(head);
                        lat.push(now.saturating_sub(u64::from_le_bytes(b)));
                    }
                }
                if records.is_empty() && Instant::now() > deadline + Duration::from_secs(2) {
                    return Ok::<_, anyhow::Error>(lat);
                }
            }
        })
    });

    let bar = progress(
        c.duration,
        c.json,
        match kind {
            Kind::Produce => "produce",
            Kind::E2e => "e2e",
            Kind::Consume => "produce (then read)",
        },
    );
    let ticker = {
        let (bar, acked) = (bar.clone(), acked.clone());
        tokio::spawn(async move {
            loop {
                let secs = epoch.elapsed().as_secs_f64().max(1e-3);
                bar.set_position(epoch.elapsed().as_millis() as u64);
                bar.set_message(format!(
                    "{:.0} records/s",
                    acked.load(Ordering::Relaxed) as f64 / secs
                ));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let mut tasks = Vec::new();
    for p in 0..c.producers {
        let (topic, acked) = (topic.clone(), acked.clone());
        // Only the end-to-end bench reads a send time back from the value.
        let mut next = values(
            pool.clone(),
            (p * 7919) % (POOL_BYTES - c.record_size),
            c.record_size,
            kind == Kind::E2e,
            epoch,
            deadline,
            c.rate as f64 / c.producers as f64,
        );
        if let Some(address) = &kafka {
            let load = super::kafka::KafkaLoad {
                address: address.clone(),
                topic,
                partitions: c.partitions,
                codec: c.codec,
                linger: ProducerConfig::default().linger,
                batch_max_bytes: ProducerConfig::default().batch_max_bytes,
                first_partition: p as u32,
            };
            tasks.push(tokio::spawn(super::kafka::produce(load, next, acked)));
            continue;
        }
        // Each producer learns the cluster itself and picks its own agent, as separate
        // clients would.
        let channel = cluster(c, endpoints).await?;
        let config = ProducerConfig {
            codec: c.codec.into(),
            ..ProducerConfig::default()
        };
        tasks.push(tokio::spawn(async move {
            let producer = Producer::new(channel, config);
            // Deliveries are awaited in send order by a collector task: a producer settles
            // them nearly in that order, and a large FuturesUnordered would cost the bench
            // more CPU than the producer itself. A delivery that settles before an earlier
            // one is counted when the earlier one settles (latency over-, never
            // under-stated).
            let (settle_tx, mut settle_rx) =
                tokio::sync::mpsc::unbounded_channel::<(Instant, cairn_client::Delivery)>();
            let collector = {
                let acked = acked.clone();
                tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while let Some((start, delivery)) = settle_rx.recv().await {
                        delivery.await?;
                        lat.push(start.elapsed().as_micros() as u64);
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<_, anyhow::Error>(lat)
                })
            };
            while let Some(value) = next().await {
                let delivery = producer
                    .send(ProducerRecord::new(topic.clone(), value))
                    .await?;
                // No cap of our own on records in flight: `send` waits while the
                // producer's buffer is full, as an application's would.
                if settle_tx.send((Instant::now(), delivery)).is_err() {
                    break; // the collector stopped on a failed delivery
                }
            }
            drop(settle_tx);
            let lat = collector.await??;
            producer.close().await?;
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await??);
    }
    let produce_secs = epoch.elapsed().as_secs_f64();
    ticker.abort();
    bar.finish_and_clear();
    let records = lat.len() as u64;
    let bytes = records * c.record_size as u64;
    let e2e_lat = match e2e {
        Some(t) => Some(percentiles(t.await??)),
        None => None,
    };

    let (read_records, read_mib) = if kind == Kind::Consume {
        let bar = progress(Duration::from_secs(records.max(1)), c.json, "read");
        let mut consumer = Consumer::new(channel.clone(), ConsumerConfig::default());
        consumer.assign_all(&topic, Offset::Beginning).await?;
        let started = Instant::now();
        let mut n = 0u64;
        loop {
            let got = consumer.poll(Duration::ZERO).await?;
            n += got.len() as u64;
            bar.set_position(n);
            if got.is_empty() && consumer.caught_up() {
                break;
            }
        }
        bar.finish_and_clear();
        let secs = started.elapsed().as_secs_f64();
        (Some(n), Some(n as f64 * c.record_size as f64 / MIB / secs))
    } else {
        (None, None)
    };
    let after_each = agents.statuses().await?;
    let after = merged(&after_each);
    let shares = agents.shares(&before_each, &after_each, epoch.elapsed().as_secs_f64());
    if c.keep {
        eprintln!("kept topic {topic}");
    } else {
        admin.delete_topic(&topic).await?;
    }
    let mut report = report(
        c,
        kind,
        &before,
        &after,
        produce_secs,
        records,
        bytes,
        percentiles(lat),
        e2e_lat,
        read_records,
        read_mib,
        raw,
    );
    if agents.len() > 1 {
        report.agents = shares;
    }
    Ok(report)
}

/// `bench consume --topic T --from N`: catch-up read throughput of stored data.
async fn read_existing(
    c: &Common,
    admin: &Admin,
    agents: &Agents,
    channel: Cluster,
    topic: &str,
) -> anyhow::Result<Report> {
    if c.from < 0 {
        bail!("--from must be 0 or more, got {}", c.from);
    }
    let before_each = agents.statuses().await?;
    let before = merged(&before_each);
    let described = admin.describe_topic(topic).await?;
    let partitions = described.partitions.len() as u32;
    let mut consumer = Consumer::new(channel, ConsumerConfig::default());
    for p in &described.partitions {
        let from = c.from.clamp(p.start_offset, p.high_watermark);
        consumer
            .assign(topic, p.partition, Offset::At(from))
            .await?;
    }
    let total: i64 = described
        .partitions
        .iter()
        .map(|p| p.high_watermark - c.from.clamp(p.start_offset, p.high_watermark))
        .sum();
    let bar = progress(Duration::from_millis(total.max(1) as u64), c.json, "read");
    let started = Instant::now();
    let (mut n, mut bytes) = (0u64, 0u64);
    loop {
        let got = consumer.poll(Duration::ZERO).await?;
        n += got.len() as u64;
        bytes += got
            .iter()
            .map(|r| (r.key.len() + r.value.len()) as u64)
            .sum::<u64>();
        bar.set_position(n);
        if got.is_empty() && consumer.caught_up() {
            break;
        }
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let after_each = agents.statuses().await?;
    let after = merged(&after_each);
    let d = |a: u64, b: u64| b.saturating_sub(a);
    let gets = d(before.object_gets, after.object_gets);
    let gib = (bytes as f64 / GIB).max(1e-12);
    Ok(Report {
        bench: "consume".into(),
        object_store: after.object_store.clone(),
        metadata: after.metadata_backend.clone(),
        partitions,
        seconds: secs,
        read_records: Some(n),
        read_mib_per_sec: Some(bytes as f64 / MIB / secs),
        bill: Bill {
            gets,
            get_bytes: d(before.object_get_bytes, after.object_get_bytes),
            gets_per_gib_read: gets as f64 / gib,
            usd_per_tib_read: gets as f64 / gib * 1024.0 * S3_GET_PER_1000 / 1000.0,
            s3_put_usd_per_1000: S3_PUT_PER_1000,
            s3_get_usd_per_1000: S3_GET_PER_1000,
            ..Bill::default()
        },
        agent_cpu_seconds: (after.cpu_seconds - before.cpu_seconds).max(0.0),
        agent_peak_rss_bytes: peak_rss(&after),
        agents: if agents.len() > 1 {
            agents.shares(&before_each, &after_each, secs)
        } else {
            Vec::new()
        },
        ..Report::default()
    })
}
