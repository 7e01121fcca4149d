//! The producer's background task: it owns the accumulator and the sequencer, forms
//! requests when a slot is free, stamps them and hands each to a request task.

use std::collections::VecDeque;

use crate::Cluster;
use cairn_proto::v2::{
    self, Codec, admin_service_client::AdminServiceClient,
    producer_service_client::ProducerServiceClient,
};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::accumulator::{Accumulator, PartitionKey};
use super::sender::{Outgoing, fail_all, send_request};
use super::sequencer::Sequencer;
use super::{Msg, ProducerConfig};
use crate::{ClientError, MAX_MESSAGE_BYTES};

/// The background task of one [`super::Producer`].
pub(super) struct Worker {
    producer: ProducerServiceClient<Cluster>,
    pub(super) config: ProducerConfig,
    pub(super) acc: Accumulator,
    /// Requests formed and waiting for a slot, in order.
    ready: VecDeque<Outgoing>,
    pub(super) seq: Sequencer,
    /// Requests in flight at once: unbounded with idempotence (each partition's window
    /// bounds its own batches), one without (to keep order).
    max_requests: usize,
}

impl Worker {
    /// A worker over `channel`, with the configuration's limits applied.
    pub(super) fn new(channel: Cluster, mut config: ProducerConfig) -> Self {
        config.max_in_flight = if config.idempotence {
            config.max_in_flight.clamp(1, crate::MAX_IN_FLIGHT)
        } else {
            1
        };
        if config.codec == Codec::Unspecified {
            config.codec = Codec::Zstd;
        }
        Worker {
            max_requests: if config.idempotence { usize::MAX } else { 1 },
            seq: Sequencer::new(config.max_in_flight),
            producer: ProducerServiceClient::new(channel.clone())
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
            acc: Accumulator::new(config.clone(), AdminServiceClient::new(channel)),
            config,
            ready: VecDeque::new(),
        }
    }

    /// Runs until the producer is dropped or closed and everything pending is answered.
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Msg>) {
        let mut inflight: JoinSet<()> = JoinSet::new();
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        let mut open = true;
        loop {
            // A request is formed only from partitions with room in their in-flight window:
            // while a partition's window is full, its records keep gathering, so its next
            // batch carries all of them (the agent's round trip is a segment's linger + PUT
            // + commit, and only `max_in_flight` batches per partition may be in flight).
            let request_room = inflight.len() < self.max_requests;
            if self.ready.is_empty()
                && request_room
                && self
                    .acc
                    .due(!flushes.is_empty() || !open, free(&self.config, &self.seq))
            {
                let out = self.acc.drain(free(&self.config, &self.seq));
                if !out.batches.is_empty() {
                    self.ready.push_back(out);
                }
            }
            if self.seq.restart_if_gap(inflight.is_empty()) {
                tracing::info!("a batch failed for good; starting over with a new producer id");
            }
            while inflight.len() < self.max_requests
                && !self.seq.shared.must_reset()
                && self
                    .ready
                    .front()
                    .is_some_and(|out| !self.config.idempotence || self.seq.within_window(out))
            {
                let Some(out) = self.ready.pop_front() else {
                    break;
                };
                match self.stamp(out).await {
                    Ok(out) => {
                        for b in &out.batches {
                            self.seq.shared.sent(b);
                        }
                        inflight.spawn(send_request(
                            self.producer.clone(),
                            self.config.clone(),
                            out,
                            self.seq.shared.clone(),
                        ));
                    }
                    Err((out, e)) => fail_all(out.batches, &e, &self.seq.shared),
                }
            }
            if inflight.is_empty() && self.acc.is_empty() && self.ready.is_empty() {
                for f in flushes.drain(..) {
                    let _ = f.send(());
                }
                if !open {
                    return;
                }
            }
            let deadline = if self.ready.is_empty() && inflight.len() < self.max_requests {
                self.acc.deadline(free(&self.config, &self.seq))
            } else {
                None
            };
            tokio::select! {
                msg = rx.recv(), if open => match msg {
                    Some(Msg::Record(record, ack, permit)) => self.acc.add(record, ack, permit).await,
                    Some(Msg::Request(batches, atomic)) => {
                        // Everything sent before goes first, so partition order holds.
                        let before = self.acc.drain_all();
                        self.ready.extend(before);
                        self.ready.push_back(Outgoing { batches, atomic });
                    }
                    Some(Msg::Flush(done)) => flushes.push(done),
                    None => open = false,
                },
                Some(_) = inflight.join_next(), if !inflight.is_empty() => {}
                _ = sleep_until(deadline), if deadline.is_some() => {}
            }
        }
    }

    /// Stamps a request's batches with the producer id, epoch and the next sequences
    /// (fetching a producer id first if there is none).
    pub(super) async fn stamp(
        &mut self,
        mut out: Outgoing,
    ) -> Result<Outgoing, (Outgoing, ClientError)> {
        if !self.config.idempotence {
            return Ok(out);
        }
        if let Some(r) = self.seq.shared.fenced() {
            return Err((out, ClientError::Rejected(r)));
        }
        let id = match self.seq.id {
            Some(id) => id,
            None => match self.init().await {
                Ok(id) => {
                    self.seq.id = Some(id);
                    id
                }
                Err(e) => return Err((out, e)),
            },
        };
        self.seq.stamp(&mut out, id);
        Ok(out)
    }

    /// Gets a producer id, retrying while the agent is unavailable.
    async fn init(&mut self) -> Result<(u64, u32), ClientError> {
        let started = Instant::now();
        let mut backoff = self.config.retry_backoff;
        loop {
            let request = v2::InitProducerRequest {
                name: self.config.name.clone().unwrap_or_default(),
            };
            match self.producer.init_producer(request).await {
                Ok(r) => {
                    let r = r.into_inner();
                    tracing::debug!(producer_id = r.producer_id, epoch = r.epoch, "producer id");
                    return Ok((r.producer_id, r.epoch));
                }
                Err(status) => {
                    let err = ClientError::from(status);
                    if !err.is_retryable()
                        || started.elapsed() + backoff >= self.config.delivery_timeout
                    {
                        return Err(err);
                    }
                    tokio::time::sleep(err.retry_after().unwrap_or(backoff)).await;
                    backoff = (backoff * 2).min(self.config.retry_backoff_max);
                }
            }
        }
    }
}

/// Whether a batch of a partition may be sent now: always for a plain producer (it has one
/// request in flight at most), within the partition's window for an idempotent one.
fn free<'a>(config: &'a ProducerConfig, seq: &'a Sequencer) -> impl Fn(&PartitionKey) -> bool + 'a {
    move |key| !config.idempotence || seq.has_room(key)
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use cairn_proto::v2::ProducerStamp;

    use super::*;
    use crate::producer::sender::{Built, produce_request};
    use crate::producer::testing::{channel, out_batch, records};

    fn worker(codec: Codec) -> Worker {
        Worker::new(
            channel(),
            ProducerConfig {
                codec,
                ..ProducerConfig::default()
            },
        )
    }

    #[tokio::test]
    async fn a_built_request_round_trips_with_the_producers_stamp() {
        let mut w = worker(Codec::Lz4Frame);
        w.seq.id = Some((7, 2));
        let out = Outgoing {
            batches: vec![
                out_batch("t", 0, &["a", "b"]).0,
                out_batch("t", 1, &["c"]).0,
                out_batch("t", 0, &["d", "e", "f"]).0,
            ],
            atomic: false,
        };
        let Ok(out) = w.stamp(out).await else {
            panic!("stamping with a known producer id needs no agent");
        };
        let built: Vec<Built> = out
            .batches
            .into_iter()
            .map(|b| b.build(w.config.codec).map_err(|failed| failed.1))
            .collect::<Result<_, _>>()
            .expect("frames build");
        let request = produce_request(&built, false);
        let expected = [
            (0, 0, records("t", &["a", "b"])),
            (1, 0, records("t", &["c"])),
            (0, 2, records("t", &["d", "e", "f"])),
        ];
        assert_eq!(request.batches.len(), expected.len());
        for (wire, (partition, base_sequence, want)) in request.batches.iter().zip(expected) {
            assert_eq!((wire.topic.as_str(), wire.partition), ("t", partition));
            assert_eq!(wire.expected_offset, None);
            let frame = wire.frame.clone().expect("a frame");
            let header = frame.header.expect("a header");
            assert_eq!(
                header.producer,
                Some(ProducerStamp {
                    producer_id: 7,
                    epoch: 2,
                    base_sequence,
                })
            );
            assert_eq!(header.codec(), Codec::Lz4Frame);
            assert_eq!(header.timestamp_type(), v2::TimestampType::CreateTime);
            assert_eq!(header.first_timestamp_ms, 1_700_000_000_000);
            let opened = cairn_proto::open_frame(&header, frame.payload).expect("the frame opens");
            assert_eq!(opened, want);
        }
        // A retry sends the very same batches: same frames, same stamps.
        assert_eq!(produce_request(&built, false), request);
        assert_eq!(w.seq.next_sequence(&("t".to_string(), 0)), Some(5));
        assert_eq!(w.seq.next_sequence(&("t".to_string(), 1)), Some(1));
    }

    #[tokio::test]
    async fn without_idempotence_frames_carry_no_stamp() {
        let mut w = worker(Codec::Unspecified);
        w.config.idempotence = false;
        assert_eq!(w.config.codec, Codec::Zstd);
        let out = Outgoing {
            batches: vec![out_batch("t", 0, &["a"]).0],
            atomic: false,
        };
        let Ok(out) = w.stamp(out).await else {
            panic!("a plain producer stamps nothing");
        };
        let built: Vec<Built> = out
            .batches
            .into_iter()
            .map(|b| b.build(w.config.codec).map_err(|failed| failed.1))
            .collect::<Result<_, _>>()
            .expect("frames build");
        let header = produce_request(&built, false).batches[0]
            .frame
            .clone()
            .and_then(|f| f.header)
            .expect("a header");
        assert_eq!(header.producer, None);
        assert_eq!(header.codec(), Codec::Zstd);
    }
}
