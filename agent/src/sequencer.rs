//! Keeps an idempotent producer's pipelined batches in sequence order on their way into
//! the segment writer.
//!
//! A producer keeps up to five requests in flight. gRPC runs each request on its own
//! HTTP/2 stream and its own task, so two requests sent in order can reach the batcher in
//! the other order; the metadata store then refuses the later sequence as out of order,
//! and every batch behind it in the pipeline too, and the producer retries them all after
//! a backoff. (Kafka avoids this because a broker reads one connection's requests one at a
//! time.) Before a stamped batch enters the batcher it waits here, briefly, until the batch
//! before it from the same producer and partition has entered. The metadata store stays
//! the judge of sequences: this only orders what arrives at one agent, and a batch whose
//! predecessor never comes goes in after [`REORDER_WAIT`] and is judged there.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cairn_metadata::ProducerStamp;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Longest a batch waits for the batch before it.
pub(crate) const REORDER_WAIT: Duration = Duration::from_millis(500);

/// Producer-partitions remembered; the least recently used are forgotten beyond this.
const MAX_TRACKED: usize = 100_000;

/// A producer's partition: (producer id, topic id, partition).
type Key = (u64, u64, u32);

/// The next sequence expected on a producer's partition at this agent.
#[derive(Debug, Clone, Copy)]
struct Next {
    epoch: u32,
    sequence: i64,
    used: Instant,
}

/// One stamped batch of a request, as the gate sees it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamped {
    /// The topic's id.
    pub(crate) topic_id: u64,
    /// The partition.
    pub(crate) partition: u32,
    /// The producer's stamp.
    pub(crate) stamp: ProducerStamp,
    /// Records in the batch.
    pub(crate) records: u32,
}

impl Stamped {
    fn key(&self) -> Key {
        (self.stamp.producer_id, self.topic_id, self.partition)
    }
}

/// The agent's view of which sequence comes next per producer-partition.
#[derive(Debug, Default)]
pub(crate) struct Sequencer {
    next: Mutex<HashMap<Key, Next>>,
    entered: Notify,
}

impl Sequencer {
    /// Whether every batch may enter now: its producer-partition is unknown here, under
    /// another epoch, or expects exactly this sequence or a later one (a retry).
    fn ready(&self, batches: &[Stamped]) -> bool {
        let next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        batches.iter().all(|b| match next.get(&b.key()) {
            Some(n) if n.epoch == b.stamp.epoch => b.stamp.base_sequence <= n.sequence,
            _ => true,
        })
    }

    /// Waits until each batch's predecessor has entered the batcher, or [`REORDER_WAIT`]
    /// has passed. Returns whether it had to wait at all.
    pub(crate) async fn wait_turn(&self, batches: &[Stamped]) -> bool {
        if batches.is_empty() || self.ready(batches) {
            return false;
        }
        let deadline = Instant::now() + REORDER_WAIT;
        loop {
            let entered = self.entered.notified();
            tokio::pin!(entered);
            entered.as_mut().enable();
            if self.ready(batches) {
                return true;
            }
            if tokio::time::timeout_at(deadline, entered).await.is_err() {
                return true;
            }
        }
    }

    /// Records that `batches` entered the batcher (in this order) and wakes the batches
    /// waiting for them.
    pub(crate) fn entered(&self, batches: &[Stamped]) {
        if batches.is_empty() {
            return;
        }
        let now = Instant::now();
        {
            let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
            for b in batches {
                let after = b.stamp.base_sequence + i64::from(b.records);
                let n = next.entry(b.key()).or_insert(Next {
                    epoch: b.stamp.epoch,
                    sequence: after,
                    used: now,
                });
                if n.epoch != b.stamp.epoch {
                    *n = Next {
                        epoch: b.stamp.epoch,
                        sequence: after,
                        used: now,
                    };
                }
                n.sequence = n.sequence.max(after);
                n.used = now;
            }
            if next.len() > MAX_TRACKED {
                let mut ages: Vec<Instant> = next.values().map(|n| n.used).collect();
                let cut = ages.len() - MAX_TRACKED / 2;
                let (_, oldest_kept, _) = ages.select_nth_unstable(cut);
                let oldest_kept = *oldest_kept;
                next.retain(|_, n| n.used >= oldest_kept);
            }
        }
        self.entered.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn batch(seq: i64, records: u32) -> Stamped {
        Stamped {
            topic_id: 7,
            partition: 0,
            stamp: ProducerStamp {
                producer_id: 1,
                epoch: 0,
                base_sequence: seq,
            },
            records,
        }
    }

    #[tokio::test]
    async fn a_batch_that_overtook_its_predecessor_waits_for_it() {
        let s = Arc::new(Sequencer::default());
        s.entered(&[batch(0, 10)]);
        let waiting = tokio::spawn({
            let s = s.clone();
            async move {
                let waited = s.wait_turn(&[batch(20, 10)]).await;
                // Whatever entered before this batch is what it found in the map.
                let next = s.next.lock().unwrap().get(&(1, 7, 0)).map(|n| n.sequence);
                (waited, next)
            }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "sequence 20 must wait for 10");
        s.entered(&[batch(10, 10)]);
        let (waited, next) = waiting.await.unwrap();
        assert!(waited);
        assert_eq!(next, Some(20));
    }

    #[tokio::test]
    async fn in_order_retried_and_unknown_batches_go_straight_in() {
        let s = Sequencer::default();
        assert!(!s.wait_turn(&[batch(50, 1)]).await, "unknown here: no wait");
        s.entered(&[batch(0, 10)]);
        assert!(!s.wait_turn(&[batch(10, 1)]).await, "next in order");
        assert!(!s.wait_turn(&[batch(0, 10)]).await, "a retry");
        let other_epoch = Stamped {
            stamp: ProducerStamp {
                epoch: 1,
                ..batch(99, 1).stamp
            },
            ..batch(99, 1)
        };
        assert!(
            !s.wait_turn(&[other_epoch]).await,
            "a new epoch starts over"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_predecessor_that_never_comes_holds_a_batch_only_briefly() {
        let s = Sequencer::default();
        s.entered(&[batch(0, 10)]);
        let started = Instant::now();
        assert!(s.wait_turn(&[batch(30, 1)]).await);
        assert_eq!(started.elapsed(), REORDER_WAIT);
    }
}
