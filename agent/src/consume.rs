//! The Consumer service: fetch from an offset, long-polling at the high watermark.

use std::sync::Arc;
use std::time::Duration;

use cairn_proto::v2;
use tonic::{Request, Response, Status};

use crate::AgentError;
use crate::quota::Kind;
use crate::service::{Shared, allow, long_poll, status, within_quota};
use cairn_metadata::acls::{Operation, ResourceType};

/// Default and largest `max_bytes` of a fetch.
const DEFAULT_FETCH_BYTES: usize = 1 << 20;
const MAX_FETCH_BYTES: usize = 64 << 20;

/// The Consumer service.
pub(crate) struct ConsumerService(pub(crate) Arc<Shared>);

#[tonic::async_trait]
impl v2::consumer_service_server::ConsumerService for ConsumerService {
    #[tracing::instrument(level = "debug", name = "fetch", skip_all)]
    async fn fetch(
        &self,
        request: Request<v2::FetchRequest>,
    ) -> Result<Response<v2::FetchResponse>, Status> {
        let s = &self.0;
        let started = std::time::Instant::now();
        allow(
            s,
            &request,
            Operation::Read,
            ResourceType::Topic,
            &request.get_ref().topic,
        )?;
        within_quota(s, &request, Kind::FetchBytes, 0).await?;
        let _waiting = long_poll(&request, request.get_ref().max_wait_ms > 0)?;
        let principal = crate::auth::principal_of(&request).map(str::to_string);
        let r = request.into_inner();
        if r.offset < 0 {
            return Err(status(AgentError::Invalid(format!(
                "offset must be 0 or more, got {}",
                r.offset
            ))));
        }
        let max_wait = Duration::from_millis(u64::from(r.max_wait_ms));
        if max_wait > s.settings.max_fetch_wait {
            return Err(status(AgentError::Invalid(format!(
                "max_wait_ms {} is over this agent's limit of {} ms",
                r.max_wait_ms,
                s.settings.max_fetch_wait.as_millis()
            ))));
        }
        let max_bytes = match r.max_bytes.map(|n| n as usize) {
            None => DEFAULT_FETCH_BYTES,
            Some(n @ 1..=MAX_FETCH_BYTES) => n,
            Some(n) => {
                return Err(status(AgentError::Invalid(format!(
                    "max_bytes must be between 1 and {MAX_FETCH_BYTES}, got {n}"
                ))));
            }
        };
        let topic = s
            .topic_with_partition(&r.topic, r.partition)
            .await
            .map_err(status)?;
        let fetched = s
            .reader
            .fetch(&topic, r.partition, r.offset, max_bytes, max_wait)
            .await
            .map_err(status)?;
        let bytes = fetched.frames.iter().map(|f| f.payload.len() as u64).sum();
        s.quotas
            .charge(principal.as_deref(), Kind::FetchBytes, bytes);
        s.metrics.fetch_requests.inc();
        s.metrics.fetch_bytes.inc_by(bytes);
        s.metrics
            .fetch_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(Response::new(v2::FetchResponse {
            frames: crate::fetch::cairn_frames(&topic, fetched.frames).map_err(status)?,
            high_watermark: fetched.high_watermark,
            start_offset: fetched.start_offset,
        }))
    }
}
