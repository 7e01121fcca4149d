//! Sending: a request's batches become frames once, and the request is sent and retried
//! (same frames, same stamps) until each batch is committed, refused for good, or out of
//! time; each record's delivery is then settled.

use std::sync::Arc;
use tokio::time::Instant;

use crate::Cluster;
use cairn_proto::v2::{
    self, Codec, ProduceBatch, ProducerStamp, producer_service_client::ProducerServiceClient,
};
use cairn_proto::{FrameError, build_frame};
use tokio::sync::OwnedSemaphorePermit;

use super::accumulator::PartitionKey;
use super::sequencer::SendState;
use super::{Ack, ProducerConfig, RecordMetadata};
use crate::ClientError;
use crate::error::{Rejected, batch_error_status};

/// One batch on its way, with the acks of its records (in order).
pub(super) struct OutBatch {
    pub(super) key: PartitionKey,
    /// The batch's position among its partition's stamped batches under this producer id.
    pub(super) ordinal: u64,
    /// The records, until [`OutBatch::build`] moves them into the frame.
    pub(super) records: Vec<v2::Record>,
    /// Commit only at this next offset of the partition.
    pub(super) expected_offset: Option<i64>,
    /// The idempotent producer's stamp, set when the batch is stamped for sending.
    pub(super) stamp: Option<ProducerStamp>,
    pub(super) acks: Vec<Ack>,
    pub(super) _permits: Vec<OwnedSemaphorePermit>,
}

impl OutBatch {
    /// Builds the batch's frame, with its stamp (if any) in the header. Done once, after
    /// stamping: every attempt of the request sends this same frame, so a retry carries the
    /// same stamp. On failure the batch comes back with the error (boxed: it is rare).
    pub(super) fn build(mut self, codec: Codec) -> Result<Built, Box<(OutBatch, FrameError)>> {
        match build_frame(std::mem::take(&mut self.records), codec, self.stamp) {
            Ok(frame) => Ok(Built {
                wire: ProduceBatch {
                    topic: self.key.0.clone(),
                    partition: self.key.1,
                    frame: Some(frame),
                    expected_offset: self.expected_offset,
                },
                batch: self,
            }),
            Err(e) => Err(Box::new((self, e))),
        }
    }
}

/// A batch with its frame built: what each attempt of its request sends.
pub(super) struct Built {
    pub(super) wire: ProduceBatch,
    pub(super) batch: OutBatch,
}

/// The request carrying `batches`, the same for every attempt.
pub(super) fn produce_request(batches: &[Built], atomic: bool) -> v2::ProduceRequest {
    v2::ProduceRequest {
        batches: batches.iter().map(|b| b.wire.clone()).collect(),
        atomic,
    }
}

/// One request's batches.
pub(super) struct Outgoing {
    pub(super) batches: Vec<OutBatch>,
    pub(super) atomic: bool,
}

/// Builds the frames of one request's batches (a batch whose frame cannot be built fails;
/// in an atomic request, every batch does), then sends the request and retries it.
pub(super) async fn send_request(
    client: ProducerServiceClient<Cluster>,
    config: ProducerConfig,
    out: Outgoing,
    shared: Arc<SendState>,
) {
    let atomic = out.atomic;
    let mut built = Vec::with_capacity(out.batches.len());
    let mut failure = None;
    for b in out.batches {
        match b.build(config.codec) {
            Ok(b) => built.push(b),
            Err(failed) => {
                let (b, source) = *failed;
                let err = ClientError::Encode {
                    topic: b.key.0.clone(),
                    partition: b.key.1,
                    source: Arc::new(source),
                };
                fail_batch(b, copy_error(&err), &shared);
                failure.get_or_insert(err);
            }
        }
    }
    if let Some(err) = failure
        && atomic
    {
        fail_all(built.into_iter().map(|b| b.batch).collect(), &err, &shared);
        return;
    }
    if !built.is_empty() {
        send_built(client, config, built, atomic, shared).await;
    }
}

/// Sends one request and retries what may still succeed — the whole request after
/// UNAVAILABLE, a timeout or a lost connection; single batches refused only because an
/// earlier batch of their partition is not in yet — with backoff, until the delivery
/// timeout. Retries send the same frames with the same stamps, so the agent never stores a
/// second copy.
async fn send_built(
    mut client: ProducerServiceClient<Cluster>,
    config: ProducerConfig,
    batches: Vec<Built>,
    atomic: bool,
    shared: Arc<SendState>,
) {
    let started = Instant::now();
    let mut backoff = config.retry_backoff;
    let mut remaining = batches;
    loop {
        // Set when the agent throttled the request: how long it asked to wait.
        let mut throttled = None;
        let request = produce_request(&remaining, atomic);
        let answer =
            match tokio::time::timeout(config.request_timeout, client.produce(request)).await {
                Ok(Ok(r)) => Ok(r.into_inner().results),
                Ok(Err(status)) => Err(ClientError::from(status)),
                Err(_) => Err(ClientError::Status(tonic::Status::deadline_exceeded(
                    "no answer within the producer's request timeout",
                ))),
            };
        let time_left = started.elapsed() + backoff < config.delivery_timeout;
        let mut retry = Vec::new();
        match answer {
            Ok(results) if results.len() == remaining.len() => {
                for (b, r) in remaining.into_iter().zip(results) {
                    let Some(error) = r.error.as_ref() else {
                        match r.base_offset {
                            Some(base) => resolve(b.batch, base, &shared),
                            None => {
                                let err = ClientError::Invalid(format!(
                                    "the agent committed {}/{} without a base offset",
                                    b.wire.topic, b.wire.partition
                                ));
                                fail_batch(b.batch, err, &shared);
                            }
                        }
                        continue;
                    };
                    match Rejected::from_batch_error(error) {
                        Some(rej) if time_left && shared.behind_earlier(&b.batch, &rej) => {
                            retry.push(b)
                        }
                        Some(rej) => fail_batch(b.batch, ClientError::Rejected(rej), &shared),
                        None => fail_batch(b.batch, batch_error_status(error), &shared),
                    }
                }
            }
            Ok(results) => {
                let err = ClientError::Invalid(format!(
                    "agent answered {} results for {} batches",
                    results.len(),
                    remaining.len()
                ));
                fail_all(unbuilt(remaining), &err, &shared);
            }
            Err(err) if err.is_retryable() && time_left => {
                tracing::debug!(error = %err, ?backoff, "produce failed; retrying");
                throttled = err.retry_after();
                retry = remaining;
            }
            Err(ClientError::Rejected(rej))
                if time_left
                    && remaining
                        .iter()
                        .any(|b| shared.behind_earlier(&b.batch, &rej)) =>
            {
                retry = remaining;
            }
            Err(err) if remaining.len() > 1 && !atomic && !err.is_retryable() => {
                // One bad batch must not fail the others: resend each alone, in order.
                for one in remaining {
                    Box::pin(send_built(
                        client.clone(),
                        config.clone(),
                        vec![one],
                        false,
                        shared.clone(),
                    ))
                    .await;
                }
                return;
            }
            Err(err) => fail_all(unbuilt(remaining), &err, &shared),
        }
        if retry.is_empty() {
            return;
        }
        match throttled {
            // The agent said when: no more, no less (doubling would undershoot the quota).
            Some(delay) => tokio::time::sleep(delay).await,
            None => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(config.retry_backoff_max);
            }
        }
        remaining = retry;
    }
}

fn unbuilt(batches: Vec<Built>) -> Vec<OutBatch> {
    batches.into_iter().map(|b| b.batch).collect()
}

fn resolve(b: OutBatch, base_offset: i64, shared: &SendState) {
    shared.answered(&b);
    for (i, ack) in b.acks.into_iter().enumerate() {
        let _ = ack.send(Ok(RecordMetadata {
            topic: b.key.0.clone(),
            partition: b.key.1,
            offset: base_offset + i as i64,
        }));
    }
}

/// Fails a batch for good: the sequencer learns what the failure means for its
/// partition's sequence, and every record's delivery gets the error.
fn fail_batch(b: OutBatch, err: ClientError, shared: &SendState) {
    shared.failed(&b, &err);
    for ack in b.acks {
        let _ = ack.send(Err(copy_error(&err)));
    }
}

pub(super) fn fail_all(batches: Vec<OutBatch>, err: &ClientError, shared: &SendState) {
    for b in batches {
        fail_batch(b, copy_error(err), shared);
    }
}

/// A copy of an error for each record of a failed batch.
pub(super) fn copy_error(err: &ClientError) -> ClientError {
    match err {
        ClientError::Status(s) => ClientError::Status(s.clone()),
        ClientError::Rejected(r) => ClientError::Rejected(r.clone()),
        ClientError::Invalid(m) => ClientError::Invalid(m.clone()),
        ClientError::Encode {
            topic,
            partition,
            source,
        } => ClientError::Encode {
            topic: topic.clone(),
            partition: *partition,
            source: source.clone(),
        },
        ClientError::Closed => ClientError::Closed,
        other => ClientError::Status(tonic::Status::unavailable(other.to_string())),
    }
}
