//! A history checker in the manner of Jepsen's Kafka workload.
//!
//! Clients record every operation they run against Cairn, with its outcome, in a
//! [`History`]: produces (acked with an offset, failed, or of unknown outcome), appends
//! (atomic and conditional ones among them), polls, group commits, and share-group
//! acquisitions and acknowledgements. After the run a fresh reader reads every partition
//! from the start (the *final read*), and [`check`] compares the two and reports each
//! [`Anomaly`] with a count and the first examples.
//!
//! Which anomalies Cairn's guarantees forbid, and which are allowed ([`Anomaly::forbidden`]):
//! - forbidden: an acknowledged write that is never readable; a readable value that no
//!   producer wrote (damaged data served as if whole); a value readable at two
//!   offsets (idempotent producers never duplicate); two values at one offset; a write at
//!   another offset than its acknowledgement; a write whose failure was definite (say a
//!   conditional append refused for its offset) that is readable; part of an atomic append
//!   readable; a conditional append readable elsewhere than at its expected offset; a
//!   consumer that skips records or reads backwards within one assignment; a group's
//!   committed offset going backwards; a share-group record acknowledged by two consumers,
//!   or never settled once the run drained; one producer's records of one key out of order.
//! - allowed: reprocessing (a group record read again after a rebalance or a lost
//!   membership: delivery is at least once), share-group redelivery (a record whose lease
//!   ran out, or whose consumer died, is delivered again), and writes of unknown outcome,
//!   readable or not (the client could not learn whether the agent committed them).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::Mutex;
use std::time::Instant;

/// A (topic, partition) pair.
pub type Tp = (String, u32);

/// How a write ended, as far as its client knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged at these offsets (one per record, in the order sent).
    Acked(Vec<i64>),
    /// Refused for good: the agent said it did not commit it (e.g. an offset mismatch).
    Refused,
    /// The client gave up without knowing whether it was committed.
    Unknown,
}

/// One batch of a write: records for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBatch {
    /// Where the batch went.
    pub tp: Tp,
    /// The records' values, each unique in the history.
    pub values: Vec<String>,
    /// The record key, if any (order is checked per producer and key).
    pub key: Option<String>,
    /// A conditional append's expected offset.
    pub expected_offset: Option<i64>,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A write of one or more batches by a producer: a single record, an append, or an
    /// atomic append of several batches.
    Write {
        /// The producer that wrote (order is checked per producer and key).
        producer: String,
        /// The producer's own sequence number for this write: writes of one producer are
        /// issued in this order.
        seq: u64,
        /// The batches, each with its outcome.
        batches: Vec<(WriteBatch, Outcome)>,
        /// All batches commit or none does.
        atomic: bool,
    },
    /// Records a consumer's poll returned.
    Poll {
        /// The consumer.
        consumer: String,
        /// Its assignment incarnation: positions only move forward, and without gaps, within
        /// one (for a group member, its member id and generation).
        incarnation: String,
        /// What was read: partition, offset and value.
        records: Vec<(Tp, i64, String)>,
    },
    /// A group commit that the agent accepted.
    Commit {
        /// The group.
        group: String,
        /// The committing member.
        consumer: String,
        /// The offsets committed (the next offset to read, per partition).
        offsets: Vec<(Tp, i64)>,
        /// When the commit was sent and when it was answered (for real-time order).
        invoked: Instant,
        /// When it was answered.
        completed: Instant,
    },
    /// A share-group acquisition.
    ShareAcquire {
        /// The share consumer.
        consumer: String,
        /// What it acquired.
        records: Vec<(Tp, i64, String)>,
    },
    /// A share-group acknowledgement (only accepted ones are settled). A client records
    /// each call twice: with `accepted: None` before it sends it, and with the answer after
    /// (same `call`); the last record of a call counts, so a call whose client died while
    /// it was in flight stays unanswered, of unknown outcome.
    ShareAck {
        /// The share consumer.
        consumer: String,
        /// The call's number, unique per consumer.
        call: u64,
        /// What it acknowledged.
        records: Vec<(Tp, i64)>,
        /// Whether the agent accepted the acknowledgement (`None`: no answer came).
        accepted: Option<bool>,
    },
}

/// A concurrent log of operations, shared by every client of a run.
#[derive(Debug, Default)]
pub struct History {
    ops: Mutex<Vec<Op>>,
}

impl History {
    /// An empty history.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records one operation.
    pub fn record(&self, op: Op) {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).push(op);
    }

    /// The operations recorded so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many operations were recorded.
    pub fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A kind of anomaly the checker looks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Anomaly {
    /// An acknowledged write that the final read does not hold.
    LostWrite,
    /// A value readable that no producer wrote: damaged or invented data.
    Unwritten,
    /// A value readable at two offsets.
    Duplicate,
    /// Two values seen at one offset (by any two reads).
    InconsistentOffset,
    /// A write readable at another offset than the one it was acknowledged at.
    WrongAckOffset,
    /// A write the agent refused for good that is readable.
    RefusedVisible,
    /// An atomic append of which some batches are readable and others not.
    PartialAtomic,
    /// A conditional append readable elsewhere than at its expected offset.
    ConditionalMisplaced,
    /// A consumer that jumped over records within one assignment.
    PollSkip,
    /// A consumer that read an offset at or before one it had read within one assignment.
    NonMonotonicRead,
    /// A group's committed offset that went backwards in real time.
    CommitBackwards,
    /// A share-group record whose acknowledgement two consumers both had accepted.
    ShareDoubleAck,
    /// A share-group record that the group does not count as settled at the end of the
    /// drained run, or that it counts as settled though no acknowledgement of it was
    /// accepted or went unanswered and it is not in the dead-letter topic.
    ShareUnsettled,
    /// A share-group record settled without an acknowledgement: it reached the delivery
    /// limit and went to the dead-letter topic (allowed: the limit stops poison records).
    ShareDeadLettered,
    /// A producer's records of one key readable out of the order it wrote them.
    KeyOrder,
    /// A record read again by a group after a rebalance (allowed: at-least-once delivery).
    Reprocessed,
    /// A share-group record acquired more than once (allowed: redelivery).
    ShareRedelivered,
    /// A write of unknown outcome that is readable (allowed).
    UnknownVisible,
    /// A write of unknown outcome that is not readable (allowed).
    UnknownMissing,
}

impl Anomaly {
    /// Whether Cairn's guarantees forbid this anomaly (see the module documentation).
    pub fn forbidden(self) -> bool {
        !matches!(
            self,
            Anomaly::Reprocessed
                | Anomaly::ShareRedelivered
                | Anomaly::ShareDeadLettered
                | Anomaly::UnknownVisible
                | Anomaly::UnknownMissing
        )
    }
}

/// What the checker found.
#[derive(Debug, Default)]
pub struct Report {
    /// Operations checked.
    pub ops: usize,
    /// Acknowledged records checked against the final read.
    pub acked_records: usize,
    /// Records in the final read.
    pub final_records: usize,
    /// Count per anomaly kind.
    pub counts: BTreeMap<Anomaly, usize>,
    /// The first examples per anomaly kind.
    pub examples: BTreeMap<Anomaly, Vec<String>>,
}

/// How many examples the report keeps per anomaly kind.
const EXAMPLES: usize = 5;

impl Report {
    fn add(&mut self, kind: Anomaly, example: impl FnOnce() -> String) {
        let n = self.counts.entry(kind).or_default();
        *n += 1;
        let ex = self.examples.entry(kind).or_default();
        if ex.len() < EXAMPLES {
            ex.push(example());
        }
    }

    /// How many anomalies of this kind were found.
    pub fn count(&self, kind: Anomaly) -> usize {
        self.counts.get(&kind).copied().unwrap_or(0)
    }

    /// The forbidden anomalies found, with their counts.
    pub fn forbidden(&self) -> Vec<(Anomaly, usize)> {
        self.counts
            .iter()
            .filter(|(k, n)| k.forbidden() && **n > 0)
            .map(|(k, n)| (*k, *n))
            .collect()
    }

    /// Whether no forbidden anomaly was found.
    pub fn is_valid(&self) -> bool {
        self.forbidden().is_empty()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "history: {} operations, {} acknowledged records, {} records in the final read",
            self.ops, self.acked_records, self.final_records
        )?;
        if self.counts.is_empty() {
            return writeln!(f, "no anomalies");
        }
        for (kind, n) in &self.counts {
            let class = if kind.forbidden() {
                "FORBIDDEN"
            } else {
                "allowed"
            };
            writeln!(f, "{kind:?}: {n} ({class})")?;
            for ex in self.examples.get(kind).into_iter().flatten() {
                writeln!(f, "    e.g. {ex}")?;
            }
        }
        Ok(())
    }
}

/// Which records the share group must settle, and what the group says it settled.
#[derive(Debug, Clone, Default)]
pub struct ShareScope {
    /// Per partition the share consumers read: the group's settled offset after the run
    /// drained (every record before it is acknowledged or dead-lettered, by the group's own
    /// account). Every record of these partitions must be settled.
    pub settled_below: BTreeMap<Tp, i64>,
    /// The values found in the dead-letter topic: a record settled without an
    /// acknowledgement must be one of them.
    pub dead_letters: BTreeSet<String>,
}

/// Checks `ops` against `final_read` (every record of every partition the run wrote, read
/// from the start after the run drained) and reports the anomalies. `share` names the
/// partitions whose every record a share group had to settle.
pub fn check(ops: &[Op], final_read: &[(Tp, i64, String)], share: &ShareScope) -> Report {
    let mut r = Report {
        ops: ops.len(),
        final_records: final_read.len(),
        ..Report::default()
    };
    // The final log: where each value is, and what is at each offset.
    let mut at: HashMap<(Tp, i64), String> = HashMap::new();
    let mut places: HashMap<&str, Vec<(Tp, i64)>> = HashMap::new();
    for (tp, o, v) in final_read {
        if let Some(old) = at.insert((tp.clone(), *o), v.clone())
            && old != *v
        {
            r.add(Anomaly::InconsistentOffset, || {
                format!(
                    "{}/{} offset {o}: {old:?} and {v:?} in the final read",
                    tp.0, tp.1
                )
            });
        }
        places.entry(v.as_str()).or_default().push((tp.clone(), *o));
    }
    for (v, ps) in &places {
        if ps.len() > 1 {
            r.add(Anomaly::Duplicate, || format!("{v:?} readable at {ps:?}"));
        }
    }
    let visible = |v: &str| places.contains_key(v);
    let written: std::collections::HashSet<&str> = ops
        .iter()
        .filter_map(|op| match op {
            Op::Write { batches, .. } => Some(batches),
            _ => None,
        })
        .flat_map(|batches| batches.iter().flat_map(|(b, _)| b.values.iter()))
        .map(String::as_str)
        .collect();
    for (tp, o, v) in final_read {
        if !written.contains(v.as_str()) {
            r.add(Anomaly::Unwritten, || {
                format!(
                    "{}/{} offset {o}: {v:?}, which no producer wrote",
                    tp.0, tp.1
                )
            });
        }
    }

    check_writes(ops, &places, &mut r, &visible);
    check_reads(ops, &at, &mut r);
    check_commits(ops, &mut r);
    check_share(ops, final_read, share, &mut r);
    r
}

fn check_writes(
    ops: &[Op],
    places: &HashMap<&str, Vec<(Tp, i64)>>,
    r: &mut Report,
    visible: &dyn Fn(&str) -> bool,
) {
    // Per producer and key: (write seq, value) of acknowledged records, for the order check.
    // (write seq, index in the batch, value), per (producer, key, partition).
    type Written<'a> = Vec<(u64, usize, &'a str)>;
    let mut by_key: BTreeMap<(&str, &str, &Tp), Written<'_>> = BTreeMap::new();
    for op in ops {
        let Op::Write {
            producer,
            seq,
            batches,
            atomic,
        } = op
        else {
            continue;
        };
        let mut seen_batches = 0;
        for (b, outcome) in batches {
            let shown = b.values.iter().filter(|v| visible(v)).count();
            if shown > 0 {
                seen_batches += 1;
            }
            match outcome {
                Outcome::Acked(offsets) => {
                    for (i, v) in b.values.iter().enumerate() {
                        r.acked_records += 1;
                        let acked = offsets.get(i).copied();
                        match places.get(v.as_str()) {
                            None => r.add(Anomaly::LostWrite, || {
                                format!(
                                    "{v:?} acked by {producer} at {}/{} offset {acked:?}, never readable",
                                    b.tp.0, b.tp.1
                                )
                            }),
                            Some(ps) => {
                                if !ps.iter().any(|(tp, o)| *tp == b.tp && Some(*o) == acked) {
                                    r.add(Anomaly::WrongAckOffset, || {
                                        format!(
                                            "{v:?} acked at {}/{} offset {acked:?}, readable at {ps:?}",
                                            b.tp.0, b.tp.1
                                        )
                                    });
                                }
                            }
                        }
                        if let Some(k) = &b.key {
                            by_key
                                .entry((producer.as_str(), k.as_str(), &b.tp))
                                .or_default()
                                .push((*seq, i, v.as_str()));
                        }
                    }
                }
                Outcome::Refused => {
                    if shown > 0 {
                        r.add(Anomaly::RefusedVisible, || {
                            format!(
                                "{producer}'s write #{seq} to {}/{} was refused, yet {shown} of its records are readable",
                                b.tp.0, b.tp.1
                            )
                        });
                    }
                }
                Outcome::Unknown => {
                    for v in &b.values {
                        if visible(v) {
                            r.add(Anomaly::UnknownVisible, || format!("{v:?}"));
                        } else {
                            r.add(Anomaly::UnknownMissing, || format!("{v:?}"));
                        }
                    }
                }
            }
            if let Some(expected) = b.expected_offset {
                for (i, v) in b.values.iter().enumerate() {
                    let want = (b.tp.clone(), expected + i as i64);
                    if let Some(ps) = places.get(v.as_str())
                        && !ps.contains(&want)
                    {
                        r.add(Anomaly::ConditionalMisplaced, || {
                            format!(
                                "{v:?} appended on condition of offset {} is at {ps:?}",
                                want.1
                            )
                        });
                    }
                }
            }
            // Within a batch the records are dense and in order, visible all or none.
            if shown > 0 && shown < b.values.len() {
                r.add(Anomaly::PartialAtomic, || {
                    format!(
                        "{shown} of {} records of one batch of {producer}'s write #{seq} are readable",
                        b.values.len()
                    )
                });
            }
        }
        if *atomic && seen_batches > 0 && seen_batches < batches.len() {
            r.add(Anomaly::PartialAtomic, || {
                format!(
                    "{seen_batches} of {} batches of {producer}'s atomic write #{seq} are readable",
                    batches.len()
                )
            });
        }
    }
    for ((producer, key, tp), mut writes) in by_key {
        writes.sort();
        let mut last: Option<(i64, &str)> = None;
        for (_, _, v) in writes {
            let Some(o) = places
                .get(v)
                .and_then(|ps| ps.iter().find(|(t, _)| t == tp).map(|(_, o)| *o))
            else {
                continue;
            };
            if let Some((lo, lv)) = last
                && o <= lo
            {
                r.add(Anomaly::KeyOrder, || {
                    format!(
                        "{producer} wrote {lv:?} before {v:?} (key {key:?}), but they are at offsets {lo} and {o} of {}/{}",
                        tp.0, tp.1
                    )
                });
            }
            last = Some((o, v));
        }
    }
}

fn check_reads(ops: &[Op], at: &HashMap<(Tp, i64), String>, r: &mut Report) {
    // Last offset read per (consumer, incarnation, partition); what each group consumer read.
    let mut last: HashMap<(&str, &str, &Tp), i64> = HashMap::new();
    let mut read_by: HashMap<(&Tp, i64), BTreeSet<(&str, &str)>> = HashMap::new();
    for op in ops {
        let Op::Poll {
            consumer,
            incarnation,
            records,
        } = op
        else {
            continue;
        };
        for (tp, o, v) in records {
            match at.get(&(tp.clone(), *o)) {
                Some(fv) if fv != v => r.add(Anomaly::InconsistentOffset, || {
                    format!(
                        "{consumer} read {v:?} at {}/{} offset {o}; the final read has {fv:?}",
                        tp.0, tp.1
                    )
                }),
                None => r.add(Anomaly::InconsistentOffset, || {
                    format!(
                        "{consumer} read {v:?} at {}/{} offset {o}, which the final read lacks",
                        tp.0, tp.1
                    )
                }),
                _ => {}
            }
            let key = (consumer.as_str(), incarnation.as_str(), tp);
            if let Some(&prev) = last.get(&key) {
                if *o <= prev {
                    r.add(Anomaly::NonMonotonicRead, || {
                        format!(
                            "{consumer} ({incarnation}) read {}/{} offset {o} after offset {prev}",
                            tp.0, tp.1
                        )
                    });
                } else if let Some(gap) =
                    (prev + 1..*o).find(|g| at.contains_key(&(tp.clone(), *g)))
                {
                    r.add(Anomaly::PollSkip, || {
                        format!(
                            "{consumer} ({incarnation}) read {}/{} offset {o} after {prev}, skipping {gap}",
                            tp.0, tp.1
                        )
                    });
                }
            }
            last.insert(key, *o);
            // Read again by a new incarnation or another member: reprocessing (counted once
            // per record).
            let readers = read_by.entry((tp, *o)).or_default();
            if readers.insert((consumer.as_str(), incarnation.as_str())) && readers.len() == 2 {
                r.add(Anomaly::Reprocessed, || {
                    format!("{}/{} offset {o} read by {readers:?}", tp.0, tp.1)
                });
            }
        }
    }
}

fn check_commits(ops: &[Op], r: &mut Report) {
    // Per (group, partition): commits in the order they were answered.
    // (invoked, completed, offset, member), per (group, partition).
    type Commits<'a> = Vec<(Instant, Instant, i64, &'a str)>;
    let mut commits: BTreeMap<(&str, &Tp), Commits<'_>> = BTreeMap::new();
    for op in ops {
        if let Op::Commit {
            group,
            consumer,
            offsets,
            invoked,
            completed,
        } = op
        {
            for (tp, o) in offsets {
                commits.entry((group.as_str(), tp)).or_default().push((
                    *invoked,
                    *completed,
                    *o,
                    consumer.as_str(),
                ));
            }
        }
    }
    for ((group, tp), list) in commits {
        // A commit that was answered before another was sent must not be above it.
        let mut by_completion = list.clone();
        by_completion.sort_by_key(|c| c.1);
        let mut by_invocation = list;
        by_invocation.sort_by_key(|c| c.0);
        let mut highest: Option<(i64, &str)> = None;
        let mut done = by_completion.iter().peekable();
        for (invoked, _, o, who) in &by_invocation {
            while let Some((_, completed, co, cwho)) = done.peek() {
                if completed >= invoked {
                    break;
                }
                if highest.is_none_or(|(h, _)| *co > h) {
                    highest = Some((*co, cwho));
                }
                done.next();
            }
            if let Some((h, hwho)) = highest
                && *o < h
            {
                r.add(Anomaly::CommitBackwards, || {
                    format!(
                        "group {group} {}/{}: {who} committed {o} after {hwho}'s commit of {h} was answered",
                        tp.0, tp.1
                    )
                });
            }
        }
    }
}

fn check_share(ops: &[Op], final_read: &[(Tp, i64, String)], share: &ShareScope, r: &mut Report) {
    let mut acquired: HashMap<(&Tp, i64), usize> = HashMap::new();
    // The last record of each acknowledgement call (by consumer and call number): what it
    // acknowledged, and its answer if one came.
    type Calls<'a> = BTreeMap<(&'a str, u64), (&'a [(Tp, i64)], Option<bool>)>;
    let mut calls: Calls<'_> = BTreeMap::new();
    for op in ops {
        match op {
            Op::ShareAcquire { records, .. } => {
                for (tp, o, _) in records {
                    *acquired.entry((tp, *o)).or_default() += 1;
                }
            }
            Op::ShareAck {
                consumer,
                call,
                records,
                accepted,
            } => {
                calls.insert((consumer.as_str(), *call), (records.as_slice(), *accepted));
            }
            _ => {}
        }
    }
    let mut acked: HashMap<(&Tp, i64), Vec<&str>> = HashMap::new();
    let mut maybe_acked: BTreeSet<(&Tp, i64)> = BTreeSet::new();
    for ((consumer, _), (records, accepted)) in &calls {
        match accepted {
            Some(true) => {
                for (tp, o) in records.iter() {
                    acked.entry((tp, *o)).or_default().push(consumer);
                }
            }
            None => maybe_acked.extend(records.iter().map(|(tp, o)| (tp, *o))),
            Some(false) => {}
        }
    }
    for ((tp, o), n) in &acquired {
        if *n > 1 {
            r.add(Anomaly::ShareRedelivered, || {
                format!("{}/{} offset {o} acquired {n} times", tp.0, tp.1)
            });
        }
    }
    for ((tp, o), who) in &acked {
        if who.len() > 1 {
            r.add(Anomaly::ShareDoubleAck, || {
                format!("{}/{} offset {o} acknowledged by {who:?}", tp.0, tp.1)
            });
        }
    }
    for (tp, o, v) in final_read {
        let Some(&below) = share.settled_below.get(tp) else {
            continue;
        };
        let settled = *o < below;
        let ack = acked.contains_key(&(tp, *o));
        if !settled {
            r.add(Anomaly::ShareUnsettled, || {
                format!(
                    "{}/{} offset {o} ({v:?}) is not settled (the group settled below {below})",
                    tp.0, tp.1
                )
            });
        } else if !ack && !maybe_acked.contains(&(tp, *o)) {
            let n = acquired.get(&(tp, *o)).copied().unwrap_or(0);
            let example = || {
                format!(
                    "{}/{} offset {o} ({v:?}) settled without an acknowledgement (the clients saw it acquired {n} times)",
                    tp.0, tp.1
                )
            };
            if share.dead_letters.contains(v) {
                r.add(Anomaly::ShareDeadLettered, example);
            } else {
                r.add(Anomaly::ShareUnsettled, || {
                    format!("{}, and it is not in the dead-letter topic", example())
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(p: u32) -> Tp {
        ("t".to_string(), p)
    }

    fn write(
        producer: &str,
        seq: u64,
        p: u32,
        key: Option<&str>,
        values: &[&str],
        outcome: Outcome,
    ) -> Op {
        Op::Write {
            producer: producer.into(),
            seq,
            batches: vec![(
                WriteBatch {
                    tp: tp(p),
                    values: values.iter().map(|v| v.to_string()).collect(),
                    key: key.map(str::to_string),
                    expected_offset: None,
                },
                outcome,
            )],
            atomic: false,
        }
    }

    fn log(entries: &[(u32, i64, &str)]) -> Vec<(Tp, i64, String)> {
        entries
            .iter()
            .map(|(p, o, v)| (tp(*p), *o, v.to_string()))
            .collect()
    }

    fn poll(consumer: &str, inc: &str, records: &[(u32, i64, &str)]) -> Op {
        Op::Poll {
            consumer: consumer.into(),
            incarnation: inc.into(),
            records: log(records),
        }
    }

    #[test]
    fn a_clean_history_has_no_anomalies() {
        let ops = vec![
            write(
                "p",
                0,
                0,
                Some("k"),
                &["a", "b"],
                Outcome::Acked(vec![0, 1]),
            ),
            write("p", 1, 0, Some("k"), &["c"], Outcome::Acked(vec![2])),
            poll("c", "1", &[(0, 0, "a"), (0, 1, "b")]),
            poll("c", "1", &[(0, 2, "c")]),
        ];
        let r = check(
            &ops,
            &log(&[(0, 0, "a"), (0, 1, "b"), (0, 2, "c")]),
            &ShareScope::default(),
        );
        assert!(r.is_valid(), "{r}");
        assert!(r.counts.is_empty(), "{r}");
        assert_eq!(r.acked_records, 3);
    }

    #[test]
    fn lost_duplicated_and_misplaced_writes_are_found() {
        let ops = vec![
            write("p", 0, 0, None, &["a"], Outcome::Acked(vec![0])),
            write("p", 1, 0, None, &["b"], Outcome::Acked(vec![1])),
            write("p", 2, 0, None, &["c"], Outcome::Acked(vec![5])),
            write("p", 3, 0, None, &["d"], Outcome::Refused),
            write("p", 4, 0, None, &["e"], Outcome::Unknown),
        ];
        let final_read = log(&[
            (0, 0, "a"),
            (0, 1, "c"),
            (0, 2, "c"),
            (0, 3, "d"),
            (0, 4, "z"),
        ]);
        let r = check(&ops, &final_read, &ShareScope::default());
        assert_eq!(r.count(Anomaly::Unwritten), 1, "{r}");
        assert_eq!(r.count(Anomaly::LostWrite), 1, "{r}");
        assert_eq!(r.count(Anomaly::Duplicate), 1, "{r}");
        assert_eq!(r.count(Anomaly::WrongAckOffset), 1, "{r}");
        assert_eq!(r.count(Anomaly::RefusedVisible), 1, "{r}");
        assert_eq!(r.count(Anomaly::UnknownMissing), 1, "{r}");
        assert!(!r.is_valid());
        let shown = r.to_string();
        assert!(shown.contains("LostWrite: 1 (FORBIDDEN)"), "{shown}");
        assert!(shown.contains("UnknownMissing: 1 (allowed)"), "{shown}");
    }

    #[test]
    fn inconsistent_reads_skips_and_rewinds_are_found() {
        let ops = vec![
            poll("c", "1", &[(0, 0, "a"), (0, 2, "c")]),
            poll("c", "1", &[(0, 1, "b")]),
            poll("d", "1", &[(0, 0, "x")]),
            // A new incarnation may start anywhere: reprocessing, allowed.
            poll("c", "2", &[(0, 0, "a")]),
        ];
        let final_read = log(&[(0, 0, "a"), (0, 1, "b"), (0, 2, "c")]);
        let r = check(&ops, &final_read, &ShareScope::default());
        assert_eq!(r.count(Anomaly::PollSkip), 1, "{r}");
        assert_eq!(r.count(Anomaly::NonMonotonicRead), 1, "{r}");
        assert_eq!(r.count(Anomaly::InconsistentOffset), 1, "{r}");
        assert_eq!(r.count(Anomaly::Reprocessed), 1, "{r}");
    }

    #[test]
    fn atomic_conditional_and_key_order_violations_are_found() {
        let batch = |p: u32, v: &str, expected: Option<i64>| WriteBatch {
            tp: tp(p),
            values: vec![v.to_string()],
            key: None,
            expected_offset: expected,
        };
        let ops = vec![
            Op::Write {
                producer: "p".into(),
                seq: 0,
                batches: vec![
                    (batch(0, "a", None), Outcome::Unknown),
                    (batch(1, "b", None), Outcome::Unknown),
                ],
                atomic: true,
            },
            Op::Write {
                producer: "p".into(),
                seq: 1,
                batches: vec![(batch(2, "c", Some(0)), Outcome::Acked(vec![1]))],
                atomic: false,
            },
            write("q", 0, 3, Some("k"), &["x"], Outcome::Acked(vec![1])),
            write("q", 1, 3, Some("k"), &["y"], Outcome::Acked(vec![0])),
        ];
        let final_read = log(&[
            (0, 0, "a"),
            (2, 0, "z"),
            (2, 1, "c"),
            (3, 0, "y"),
            (3, 1, "x"),
        ]);
        let r = check(&ops, &final_read, &ShareScope::default());
        assert_eq!(r.count(Anomaly::PartialAtomic), 1, "{r}");
        assert_eq!(r.count(Anomaly::ConditionalMisplaced), 1, "{r}");
        assert_eq!(r.count(Anomaly::KeyOrder), 1, "{r}");
    }

    #[test]
    fn commits_going_backwards_in_real_time_are_found() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + std::time::Duration::from_millis(ms);
        let commit = |who: &str, o: i64, from: u64, to: u64| Op::Commit {
            group: "g".into(),
            consumer: who.into(),
            offsets: vec![(tp(0), o)],
            invoked: at(from),
            completed: at(to),
        };
        // Concurrent commits may land in any order; one sent after another was answered
        // may not be lower.
        let ok = vec![
            commit("a", 10, 0, 5),
            commit("b", 8, 1, 6),
            commit("a", 12, 7, 8),
        ];
        assert!(check(&ok, &[], &ShareScope::default()).is_valid());
        let bad = vec![commit("a", 10, 0, 5), commit("b", 8, 6, 7)];
        let r = check(&bad, &[], &ShareScope::default());
        assert_eq!(r.count(Anomaly::CommitBackwards), 1, "{r}");
    }

    #[test]
    fn share_groups_settle_every_record_once() {
        let ops = vec![
            Op::ShareAcquire {
                consumer: "a".into(),
                records: log(&[(0, 0, "x"), (0, 1, "y")]),
            },
            Op::ShareAcquire {
                consumer: "b".into(),
                records: log(&[(0, 0, "x")]),
            },
            Op::ShareAck {
                consumer: "a".into(),
                call: 1,
                records: vec![(tp(0), 0)],
                accepted: Some(true),
            },
            Op::ShareAck {
                consumer: "b".into(),
                call: 1,
                records: vec![(tp(0), 0)],
                accepted: Some(true),
            },
            // Sent, then refused: the refusal counts, not the invocation.
            Op::ShareAck {
                consumer: "a".into(),
                call: 2,
                records: vec![(tp(0), 1), (tp(0), 2)],
                accepted: None,
            },
            Op::ShareAck {
                consumer: "a".into(),
                call: 2,
                records: vec![(tp(0), 1), (tp(0), 2)],
                accepted: Some(false),
            },
            // Sent, and no answer ever recorded (its client died while it was in flight).
            Op::ShareAck {
                consumer: "a".into(),
                call: 3,
                records: vec![(tp(0), 3)],
                accepted: None,
            },
        ];
        let scope = ShareScope {
            settled_below: [(tp(0), 4)].into(),
            dead_letters: ["y".to_string()].into(),
        };
        let final_read = log(&[
            (0, 0, "x"),
            (0, 1, "y"),
            (0, 2, "z"),
            (0, 3, "w"),
            (0, 4, "v"),
        ]);
        let r = check(&ops, &final_read, &scope);
        assert_eq!(r.count(Anomaly::ShareRedelivered), 1, "{r}");
        assert_eq!(r.count(Anomaly::ShareDoubleAck), 1, "{r}");
        // Offset 4 is not settled; 1 and 2 are settled without an ack, 1 dead-lettered, 2
        // not; 3's unanswered ack may have been the one that settled it.
        assert_eq!(r.count(Anomaly::ShareUnsettled), 2, "{r}");
        assert_eq!(r.count(Anomaly::ShareDeadLettered), 1, "{r}");
    }
}
