//! The idempotent producer's sequencing: the producer id and epoch, the next sequence per
//! partition, the window of unanswered batches per partition, and what a failure means —
//! retry behind an earlier batch, start over under a new producer id (a gap), or stop
//! (fenced).
//!
//! A stamped batch is `(producer id, epoch, base sequence)` with consecutive sequences per
//! partition. The agent remembers the last [`crate::MAX_IN_FLIGHT`] batches of each
//! producer-partition, so at most that many of a partition may be unanswered at once: a
//! batch whose reply was lost must still be recognised when it is retried after every
//! later batch of its partition committed. The window is per partition, so a producer
//! writing many partitions keeps many requests in flight.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use cairn_proto::v2::ProducerStamp;

use super::accumulator::PartitionKey;
use super::sender::{OutBatch, Outgoing};
use crate::ClientError;
use crate::error::{RejectReason, Rejected};

/// What the request tasks share with the worker.
#[derive(Debug, Default)]
pub(super) struct SendState {
    /// Ordinals of stamped batches not yet answered, per partition.
    unanswered: Mutex<HashMap<PartitionKey, BTreeSet<u64>>>,
    /// A batch failed for good and left a gap: take a new producer id before sending more.
    reset: AtomicBool,
    /// A newer instance of this named producer exists: nothing more can be sent.
    fenced: Mutex<Option<Rejected>>,
}

impl SendState {
    /// `b` is on its way.
    pub(super) fn sent(&self, b: &OutBatch) {
        if b.stamp.is_some() {
            let mut u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            u.entry(b.key.clone()).or_default().insert(b.ordinal);
        }
    }

    /// `b` is settled, committed or failed.
    pub(super) fn answered(&self, b: &OutBatch) {
        if b.stamp.is_some() {
            let mut u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(set) = u.get_mut(&b.key) {
                set.remove(&b.ordinal);
                if set.is_empty() {
                    u.remove(&b.key);
                }
            }
        }
    }

    /// The oldest unanswered batch ordinal of a partition.
    fn oldest(&self, key: &PartitionKey) -> Option<u64> {
        let u = self.unanswered.lock().unwrap_or_else(|p| p.into_inner());
        u.get(key).and_then(|set| set.first().copied())
    }

    /// Whether an out-of-order refusal of `b` only means that an earlier batch of its
    /// partition was not in yet when `b` arrived (the agent expected a lower sequence), so
    /// resending `b` will succeed — unless an earlier batch failed for good.
    pub(super) fn behind_earlier(&self, b: &OutBatch, r: &Rejected) -> bool {
        r.reason == RejectReason::OutOfOrderSequence
            && b.stamp
                .zip(r.expected_sequence)
                .is_some_and(|(stamp, expected)| expected < stamp.base_sequence)
            && !self.reset.load(Ordering::SeqCst)
    }

    /// `b` failed for good with `err`. Unless the agent settled its sequence (a refused
    /// condition or an aborted atomic group), its partition's sequence now has a gap, so
    /// the producer must start over with a new id; a fenced producer stops.
    pub(super) fn failed(&self, b: &OutBatch, err: &ClientError) {
        self.answered(b);
        if b.stamp.is_none() {
            return;
        }
        match err.rejected() {
            Some(r)
                if matches!(
                    r.reason,
                    RejectReason::OffsetMismatch | RejectReason::AtomicAborted
                ) => {}
            Some(r) if r.reason == RejectReason::Fenced => {
                *self.fenced.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.clone());
            }
            _ => self.reset.store(true, Ordering::SeqCst),
        }
    }

    /// Whether the producer must start over under a new id.
    pub(super) fn must_reset(&self) -> bool {
        self.reset.load(Ordering::SeqCst)
    }

    /// The refusal that fenced this producer, if one did.
    pub(super) fn fenced(&self) -> Option<Rejected> {
        self.fenced
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The producer id and the sequences stamped under it.
#[derive(Debug)]
pub(super) struct Sequencer {
    /// Most unanswered batches per partition (at most [`crate::MAX_IN_FLIGHT`]).
    window: u64,
    /// The producer id and epoch, once fetched.
    pub(super) id: Option<(u64, u32)>,
    /// The next sequence per partition under the current id.
    next_seq: HashMap<PartitionKey, i64>,
    /// Stamped batches sent per partition under the current id.
    sent: HashMap<PartitionKey, u64>,
    /// Shared with the request tasks.
    pub(super) shared: std::sync::Arc<SendState>,
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer::new(crate::MAX_IN_FLIGHT)
    }
}

impl Sequencer {
    /// A sequencer keeping at most `window` batches of a partition unanswered (clamped to
    /// 1..=[`crate::MAX_IN_FLIGHT`], the agent's memory).
    pub(super) fn new(window: usize) -> Self {
        Sequencer {
            window: window.clamp(1, crate::MAX_IN_FLIGHT) as u64,
            id: None,
            next_seq: HashMap::new(),
            sent: HashMap::new(),
            shared: std::sync::Arc::default(),
        }
    }

    /// Whether one more batch of `key` may be sent now.
    pub(super) fn has_room(&self, key: &PartitionKey) -> bool {
        let next = self.sent.get(key).copied().unwrap_or(0);
        self.shared
            .oldest(key)
            .is_none_or(|oldest| next - oldest < self.window)
    }

    /// Whether sending `out` keeps every partition's unanswered batches within the window.
    pub(super) fn within_window(&self, out: &Outgoing) -> bool {
        out.batches.iter().all(|b| self.has_room(&b.key))
    }

    /// Stamps a request's batches with `id` and each partition's next sequences, in order.
    pub(super) fn stamp(&mut self, out: &mut Outgoing, (producer_id, epoch): (u64, u32)) {
        for b in &mut out.batches {
            let seq = self.next_seq.entry(b.key.clone()).or_insert(0);
            b.stamp = Some(ProducerStamp {
                producer_id,
                epoch,
                base_sequence: *seq,
            });
            *seq += b.records.len() as i64;
            let sent = self.sent.entry(b.key.clone()).or_insert(0);
            b.ordinal = *sent;
            *sent += 1;
        }
    }

    /// After a gap, once nothing is in flight (`idle`): forgets the producer id and every
    /// sequence, so the next batch is stamped under a new id from sequence 0. Returns
    /// whether it did.
    pub(super) fn restart_if_gap(&mut self, idle: bool) -> bool {
        if !idle || !self.shared.must_reset() {
            return false;
        }
        self.id = None;
        self.next_seq.clear();
        self.sent.clear();
        self.shared.reset.store(false, Ordering::SeqCst);
        true
    }

    /// The next sequence of a partition (tests).
    #[cfg(test)]
    pub(super) fn next_sequence(&self, key: &PartitionKey) -> Option<i64> {
        self.next_seq.get(key).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::testing::out_batch;

    fn key(p: u32) -> PartitionKey {
        ("t".to_string(), p)
    }

    fn request(batches: &[(u32, &[&str])]) -> Outgoing {
        Outgoing {
            batches: batches
                .iter()
                .map(|(p, values)| out_batch("t", *p, values).0)
                .collect(),
            atomic: false,
        }
    }

    fn rejected(reason: RejectReason, expected_sequence: Option<i64>) -> Rejected {
        Rejected {
            reason,
            message: String::new(),
            next_offset: None,
            expected_sequence,
            current_epoch: None,
        }
    }

    #[test]
    fn sequences_are_consecutive_per_partition_across_requests() {
        let mut s = Sequencer::default();
        let mut a = request(&[(0, &["a", "b"]), (1, &["c"])]);
        s.stamp(&mut a, (7, 1));
        let mut b = request(&[(0, &["d"]), (1, &["e", "f", "g"])]);
        s.stamp(&mut b, (7, 1));
        let stamps: Vec<(u32, i64, u64)> = a
            .batches
            .iter()
            .chain(&b.batches)
            .map(|b| {
                let st = b.stamp.expect("stamped");
                assert_eq!((st.producer_id, st.epoch), (7, 1));
                (b.key.1, st.base_sequence, b.ordinal)
            })
            .collect();
        assert_eq!(stamps, [(0, 0, 0), (1, 0, 0), (0, 2, 1), (1, 1, 1)]);
        assert_eq!(s.next_sequence(&key(0)), Some(3));
        assert_eq!(s.next_sequence(&key(1)), Some(4));
    }

    #[test]
    fn at_most_five_batches_of_a_partition_are_unanswered() {
        let mut s = Sequencer::default();
        let mut sent = Vec::new();
        for _ in 0..crate::MAX_IN_FLIGHT {
            let mut r = request(&[(0, &["x"])]);
            assert!(s.within_window(&r));
            s.stamp(&mut r, (1, 0));
            s.shared.sent(&r.batches[0]);
            sent.extend(r.batches);
        }
        let sixth = request(&[(0, &["x"])]);
        assert!(
            !s.within_window(&sixth),
            "a sixth would leave the agent's window"
        );
        assert!(
            s.within_window(&request(&[(1, &["x"])])),
            "other partitions are free"
        );
        // Answering a later batch does not help: the oldest still pins the window.
        s.shared.answered(&sent[4]);
        assert!(!s.within_window(&sixth));
        s.shared.answered(&sent[0]);
        assert!(s.within_window(&sixth));
    }

    #[test]
    fn an_out_of_order_refusal_is_retried_only_behind_an_earlier_batch() {
        let mut s = Sequencer::default();
        let mut r = request(&[(0, &["a", "b"]), (0, &["c"])]);
        s.stamp(&mut r, (1, 0));
        let later = &r.batches[1]; // base sequence 2
        let ooo = |expected| rejected(RejectReason::OutOfOrderSequence, Some(expected));
        assert!(
            s.shared.behind_earlier(later, &ooo(0)),
            "sequence 0 is not in yet"
        );
        assert!(
            !s.shared.behind_earlier(later, &ooo(2)),
            "the agent expects this one"
        );
        assert!(
            !s.shared.behind_earlier(later, &ooo(3)),
            "the agent is past it"
        );
        let other = rejected(RejectReason::UnknownProducer, Some(0));
        assert!(!s.shared.behind_earlier(later, &other));
        // Once an earlier batch failed for good, waiting for it is pointless.
        s.shared
            .failed(&r.batches[0], &ClientError::Invalid("lost".into()));
        assert!(!s.shared.behind_earlier(later, &ooo(0)));
    }

    #[test]
    fn a_gap_restarts_under_a_new_id_once_idle_and_a_settled_refusal_does_not() {
        let mut s = Sequencer {
            id: Some((1, 0)),
            ..Sequencer::default()
        };
        let mut r = request(&[(0, &["a"]), (0, &["b"]), (0, &["c"])]);
        s.stamp(&mut r, (1, 0));
        for b in &r.batches {
            s.shared.sent(b);
        }
        // A refused condition settles the sequence: no gap.
        let mismatch = ClientError::Rejected(rejected(RejectReason::OffsetMismatch, None));
        s.shared.failed(&r.batches[0], &mismatch);
        assert!(!s.shared.must_reset());
        assert!(!s.restart_if_gap(true));
        // A batch lost for good leaves a gap; the restart waits until nothing is in flight.
        s.shared.failed(
            &r.batches[1],
            &ClientError::Status(tonic::Status::internal("boom")),
        );
        assert!(s.shared.must_reset());
        assert!(!s.restart_if_gap(false));
        assert_eq!(s.id, Some((1, 0)));
        assert!(s.restart_if_gap(true));
        assert_eq!(s.id, None);
        assert!(!s.shared.must_reset());
        let mut next = request(&[(0, &["d"])]);
        s.stamp(&mut next, (2, 0));
        assert_eq!(next.batches[0].stamp.map(|st| st.base_sequence), Some(0));
        assert_eq!(next.batches[0].ordinal, 0);
    }

    #[test]
    fn a_fenced_producer_remembers_why() {
        let mut s = Sequencer::default();
        let mut r = request(&[(0, &["a"])]);
        s.stamp(&mut r, (1, 0));
        assert!(s.shared.fenced().is_none());
        let fenced = rejected(RejectReason::Fenced, None);
        s.shared
            .failed(&r.batches[0], &ClientError::Rejected(fenced.clone()));
        assert_eq!(s.shared.fenced(), Some(fenced));
        assert!(
            !s.shared.must_reset(),
            "fenced is final, not a gap to restart from"
        );
    }
}
