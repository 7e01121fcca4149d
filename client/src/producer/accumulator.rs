//! Accumulating: records gather per partition into batches until a batch is full, has
//! lingered long enough, or a flush asks for it; then pending batches are taken, oldest
//! first, as requests of at most the request size limit.

use std::collections::{BTreeMap, HashMap};

use crate::Cluster;
use cairn_proto::v2::{self, admin_service_client::AdminServiceClient};
use cairn_proto::{MAX_FRAME_RECORDS, partition_for_key};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use super::sender::{OutBatch, Outgoing};
use super::{Ack, ProducerConfig, ProducerRecord, to_wire};
use crate::ClientError;

/// A topic and partition.
pub(super) type PartitionKey = (String, u32);

/// A partition's batch in the making.
struct Pending {
    records: Vec<v2::Record>,
    /// Each record's size, to split a batch that outgrew a request.
    sizes: Vec<usize>,
    acks: Vec<Ack>,
    permits: Vec<OwnedSemaphorePermit>,
    bytes: usize,
    since: Instant,
}

/// The batches of every partition the producer has records for.
pub(super) struct Accumulator {
    config: ProducerConfig,
    admin: AdminServiceClient<Cluster>,
    /// Partition counts, with when they were read.
    topics: HashMap<String, (u32, Instant)>,
    /// The partition unkeyed records of a topic go to until its batch is sent.
    sticky: HashMap<String, u32>,
    pending: BTreeMap<PartitionKey, Pending>,
    pending_bytes: usize,
}

impl Accumulator {
    /// An empty accumulator that reads partition counts through `admin`.
    pub(super) fn new(config: ProducerConfig, admin: AdminServiceClient<Cluster>) -> Self {
        Accumulator {
            config,
            admin,
            topics: HashMap::new(),
            sticky: HashMap::new(),
            pending: BTreeMap::new(),
            pending_bytes: 0,
        }
    }

    /// Whether no record is pending.
    pub(super) fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// When the oldest pending batch of a partition that `free` lets send has lingered
    /// long enough.
    pub(super) fn deadline(&self, free: impl Fn(&PartitionKey) -> bool) -> Option<Instant> {
        self.pending
            .iter()
            .filter(|(k, _)| free(k))
            .map(|(_, p)| p.since + self.config.linger)
            .min()
    }

    /// Whether a request should be formed now from the partitions that `free` lets send
    /// (those with room in their in-flight window): a batch is full, or a flush asks for
    /// it, or a batch has lingered long enough. Requests go out while others are in
    /// flight, so a record waits for its linger, not for the previous request's segment;
    /// while a partition's window is full, its records keep gathering into a larger batch.
    pub(super) fn due(&self, flushing: bool, free: impl Fn(&PartitionKey) -> bool) -> bool {
        let now = Instant::now();
        let over_request = self.pending_bytes >= self.config.request_max_bytes;
        self.pending.iter().any(|(k, p)| {
            free(k)
                && (flushing
                    || over_request
                    || p.bytes >= self.config.batch_max_bytes
                    || p.since + self.config.linger <= now)
        })
    }

    /// Every pending batch, as requests of at most the request size limit, whatever the
    /// partitions' windows (an explicit append goes after them, in order).
    pub(super) fn drain_all(&mut self) -> Vec<Outgoing> {
        let mut all = Vec::new();
        while !self.pending.is_empty() {
            all.push(self.drain(|_| true));
        }
        all
    }

    /// Takes pending batches of the partitions `free` lets send, oldest first, up to the
    /// request size limit.
    pub(super) fn drain(&mut self, free: impl Fn(&PartitionKey) -> bool) -> Outgoing {
        let mut keys: Vec<(Instant, PartitionKey)> = self
            .pending
            .iter()
            .filter(|(k, _)| free(k))
            .map(|(k, p)| (p.since, k.clone()))
            .collect();
        keys.sort();
        let mut batches = Vec::new();
        let mut bytes = 0;
        for (_, key) in keys {
            let Some(p) = self.pending.get(&key) else {
                continue;
            };
            let room = self.config.request_max_bytes.saturating_sub(bytes);
            if !batches.is_empty() && p.sizes.first().is_some_and(|&s| s > room) {
                break;
            }
            let Some(mut p) = self.pending.remove(&key) else {
                continue;
            };
            let mut full = false;
            let max_records = MAX_FRAME_RECORDS as usize;
            if p.bytes > room || p.records.len() > max_records {
                // The batch outgrew a request or a frame (it kept filling while requests
                // were in flight): send its oldest records now, keep the rest pending.
                let mut take = 0;
                let mut taken = 0;
                while take < p.sizes.len()
                    && take < max_records
                    && (take == 0 || taken + p.sizes[take] <= room)
                {
                    taken += p.sizes[take];
                    take += 1;
                }
                let rest = Pending {
                    records: p.records.split_off(take),
                    sizes: p.sizes.split_off(take),
                    acks: p.acks.split_off(take),
                    permits: p.permits.split_off(take),
                    bytes: p.bytes - taken,
                    since: p.since,
                };
                p.bytes = taken;
                self.pending.insert(key.clone(), rest);
                full = true;
            }
            bytes += p.bytes;
            self.pending_bytes -= p.bytes;
            // Unkeyed records stick to one partition until its batch is sent.
            if let Some(next) = self.sticky.get_mut(&key.0) {
                *next = next.wrapping_add(1);
            }
            batches.push(OutBatch {
                key,
                ordinal: 0,
                records: p.records,
                expected_offset: None,
                stamp: None,
                acks: p.acks,
                _permits: p.permits,
            });
            if full {
                break;
            }
        }
        Outgoing {
            batches,
            atomic: false,
        }
    }

    /// Puts a record into its partition's batch (choosing the partition if the record
    /// names none).
    pub(super) async fn add(
        &mut self,
        record: ProducerRecord,
        ack: Ack,
        permit: OwnedSemaphorePermit,
    ) {
        let partition = match record.partition {
            Some(p) => p,
            None => match self.partitions(&record.topic).await {
                Ok(n) => match &record.key {
                    Some(key) => partition_for_key(key, n),
                    None => {
                        self.sticky
                            .entry(record.topic.clone())
                            .or_insert(0)
                            .to_owned()
                            % n
                    }
                },
                Err(e) => {
                    let _ = ack.send(Err(e));
                    return;
                }
            },
        };
        let size = record.size();
        let entry = self
            .pending
            .entry((record.topic.clone(), partition))
            .or_insert_with(|| Pending {
                records: Vec::new(),
                sizes: Vec::new(),
                acks: Vec::new(),
                permits: Vec::new(),
                bytes: 0,
                since: Instant::now(),
            });
        entry.records.push(to_wire(record));
        entry.sizes.push(size);
        entry.acks.push(ack);
        entry.permits.push(permit);
        entry.bytes += size;
        self.pending_bytes += size;
    }

    /// The partition count of `topic`, from a cache refreshed every
    /// [`ProducerConfig::metadata_max_age`].
    async fn partitions(&mut self, topic: &str) -> Result<u32, ClientError> {
        if let Some(&(n, at)) = self.topics.get(topic)
            && at.elapsed() < self.config.metadata_max_age
        {
            return Ok(n);
        }
        // Retried while the cluster is unavailable (an agent died and the view still lists
        // it, the metadata store restarts), as sends are, up to the delivery timeout; a
        // count read earlier is used meanwhile rather than failing the send.
        let started = Instant::now();
        let mut backoff = self.config.retry_backoff;
        let described = loop {
            let request = v2::DescribeTopicRequest {
                name: topic.to_string(),
            };
            match self.admin.describe_topic(request).await {
                Ok(r) => break r.into_inner(),
                Err(status) => {
                    let err = ClientError::from(status);
                    if !err.is_retryable() {
                        return Err(err);
                    }
                    if let Some(&(n, _)) = self.topics.get(topic) {
                        // Kept for another period, rather than asked again for each record.
                        self.topics.insert(topic.to_string(), (n, Instant::now()));
                        return Ok(n);
                    }
                    if started.elapsed() + backoff >= self.config.delivery_timeout {
                        return Err(err);
                    }
                    tokio::time::sleep(err.retry_after().unwrap_or(backoff)).await;
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        };
        let n = described.topic.map_or(0, |t| t.partitions);
        if n == 0 {
            return Err(ClientError::Invalid(format!(
                "topic `{topic}` has no partitions"
            )));
        }
        self.topics.insert(topic.to_string(), (n, Instant::now()));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::Duration;

    use tokio::sync::{Semaphore, oneshot};

    use super::*;
    use crate::producer::testing::channel;

    #[tokio::test]
    async fn keyed_records_go_to_kafkas_partition_for_the_key() {
        let mut acc = Accumulator::new(
            ProducerConfig::default(),
            AdminServiceClient::new(channel()),
        );
        acc.topics.insert("t".into(), (7, Instant::now()));
        for (key, partition) in [("foobar", None), ("other", None), ("foobar", Some(6))] {
            let (ack, _rx) = oneshot::channel();
            let permit = Arc::new(Semaphore::new(1 << 10))
                .try_acquire_owned()
                .expect("a free permit");
            let mut record = ProducerRecord::new("t", "v").key(key);
            record.partition = partition;
            acc.add(record, ack, permit).await;
        }
        let keys: BTreeSet<u32> = acc.pending.keys().map(|(_, p)| *p).collect();
        let want: BTreeSet<u32> = [
            partition_for_key(b"foobar", 7),
            partition_for_key(b"other", 7),
            6,
        ]
        .into();
        assert_eq!(keys, want);
    }

    fn accumulator(config: ProducerConfig) -> Accumulator {
        Accumulator::new(config, AdminServiceClient::new(channel()))
    }

    async fn add(acc: &mut Accumulator, partition: u32, value: &[u8]) {
        let (ack, _rx) = oneshot::channel();
        let permit = Arc::new(Semaphore::new(1 << 20))
            .try_acquire_owned()
            .expect("a free permit");
        acc.add(
            ProducerRecord::new("t", value.to_vec()).partition(partition),
            ack,
            permit,
        )
        .await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_is_due_when_full_when_it_lingered_or_when_flushed() {
        let mut acc = accumulator(ProducerConfig {
            linger: Duration::from_millis(5),
            batch_max_bytes: 1000,
            ..ProducerConfig::default()
        });
        assert!(!acc.due(true, |_| true), "nothing pending, nothing due");
        add(&mut acc, 0, &[0; 100]).await;
        assert!(!acc.due(false, |_| true));
        assert!(acc.due(true, |_| true), "a flush sends what is pending");
        tokio::time::advance(Duration::from_millis(5)).await;
        assert!(acc.due(false, |_| true), "lingered long enough");
        let mut acc = accumulator(ProducerConfig {
            linger: Duration::from_secs(60),
            batch_max_bytes: 1000,
            ..ProducerConfig::default()
        });
        add(&mut acc, 0, &[0; 600]).await;
        assert!(!acc.due(false, |_| true));
        add(&mut acc, 0, &[0; 600]).await;
        assert!(acc.due(false, |_| true), "full");
    }

    #[tokio::test]
    async fn a_batch_that_outgrew_a_request_goes_in_pieces_oldest_records_first() {
        let mut acc = accumulator(ProducerConfig {
            request_max_bytes: 2_500,
            ..ProducerConfig::default()
        });
        for i in 0..5u8 {
            add(&mut acc, 0, &[i; 1000]).await;
        }
        add(&mut acc, 1, &[9; 10]).await;
        let first = acc.drain(|_| true);
        assert_eq!(first.batches.len(), 1, "the split batch fills the request");
        let values: Vec<u8> = first.batches[0]
            .records
            .iter()
            .map(|r| r.value[0])
            .collect();
        assert_eq!(values, [0, 1], "two records of ~1 KiB fit in 2,500 bytes");
        let rest: Vec<(u32, Vec<u8>)> = acc
            .drain_all()
            .into_iter()
            .flat_map(|o| o.batches)
            .map(|b| (b.key.1, b.records.iter().map(|r| r.value[0]).collect()))
            .collect();
        assert_eq!(rest, [(0, vec![2, 3]), (0, vec![4]), (1, vec![9])]);
        assert!(acc.is_empty());
    }

    #[tokio::test]
    async fn a_partition_without_room_keeps_gathering_while_others_go() {
        let mut acc = accumulator(ProducerConfig {
            linger: Duration::ZERO,
            ..ProducerConfig::default()
        });
        add(&mut acc, 0, b"a").await;
        add(&mut acc, 1, b"b").await;
        let window_full = |k: &PartitionKey| k.1 != 0;
        assert!(acc.due(false, window_full));
        let out = acc.drain(window_full);
        let sent: Vec<u32> = out.batches.iter().map(|b| b.key.1).collect();
        assert_eq!(sent, [1]);
        assert!(!acc.due(false, window_full), "partition 0 waits for room");
        assert_eq!(acc.deadline(window_full), None);
        add(&mut acc, 0, b"c").await;
        let out = acc.drain(|_| true);
        assert_eq!(out.batches.len(), 1);
        let values: Vec<&[u8]> = out.batches[0]
            .records
            .iter()
            .map(|r| &r.value[..])
            .collect();
        assert_eq!(values, [b"a", b"c"], "one larger batch, in order");
    }
}
