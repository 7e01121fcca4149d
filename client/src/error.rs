//! The client's error type, and how the agent's `cairn.v2.ErrorReason` (carried in a
//! failed call's google.rpc.ErrorInfo, or in a produce batch's `BatchError`) reaches
//! programs: as [`ClientError::reason`] for any call, and as a [`Rejected`] batch for the
//! reasons a producer acts on.

use std::collections::HashMap;
use std::sync::Arc;

use cairn_proto::FrameError;
use cairn_proto::v2::{self, ErrorReason};
use tonic_types::{ErrorDetails, StatusExt};

/// The `domain` of the google.rpc.ErrorInfo the agent attaches to a failed call.
const ERROR_DOMAIN: &str = "cairn";

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The endpoint could not be parsed or reached.
    #[error("cannot connect to {endpoint}: {}", with_hint(source))]
    Connect {
        /// The endpoint that was dialled.
        endpoint: String,
        /// Why it failed.
        #[source]
        source: tonic::transport::Error,
    },
    /// No agent of a cluster's bootstrap list (nor any agent it knew) answered.
    #[error("no agent answered at {addresses}: {last_error}")]
    Unreachable {
        /// The addresses tried.
        addresses: String,
        /// The last failure, with its causes.
        last_error: String,
    },
    /// The agent answered with an error status ([`ClientError::reason`] says why).
    #[error("{}", describe_status(.0))]
    Status(tonic::Status),
    /// An argument the agent would reject anyway, caught before sending, or an answer the
    /// client cannot use.
    #[error("{0}")]
    Invalid(String),
    /// A fetched or leased frame failed verification (checksum, sizes, record count,
    /// decompression or decoding).
    #[error("corrupt frame from {topic}/{partition} at offset {offset}: {source}")]
    Corrupt {
        /// Topic of the frame.
        topic: String,
        /// Partition of the frame.
        partition: u32,
        /// Base offset of the frame.
        offset: i64,
        /// What failed.
        #[source]
        source: FrameError,
    },
    /// The agent's records do not sit where they should: a frame skips offsets, or a
    /// leased offset is not in the frame it came with.
    #[error("unexpected records from {topic}/{partition} at offset {offset}: {reason}")]
    Unexpected {
        /// The topic.
        topic: String,
        /// The partition.
        partition: u32,
        /// The offset at which the answer went wrong.
        offset: i64,
        /// What was wrong.
        reason: String,
    },
    /// The producer could not build the frame of a batch (too many records or bytes for
    /// one frame, or the codec failed). Nothing of the batch was sent.
    #[error("cannot build a frame for {topic}/{partition}: {source}")]
    Encode {
        /// The batch's topic.
        topic: String,
        /// The batch's partition.
        partition: u32,
        /// What failed (shared by the errors of every record of the batch).
        #[source]
        source: Arc<FrameError>,
    },
    /// The agent did not commit a batch, for a reason a program can act on.
    #[error("{}: {}", .0.reason.name(), .0.message)]
    Rejected(Rejected),
    /// The producer was closed before the record was sent.
    #[error("the producer is closed")]
    Closed,
}

/// Why the agent did not commit a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectReason {
    /// The producer's sequence had a gap or a reorder.
    OutOfOrderSequence,
    /// A newer instance of this named producer exists.
    Fenced,
    /// The producer id is unknown or expired.
    UnknownProducer,
    /// A conditional append's expected offset was not the partition's next offset.
    OffsetMismatch,
    /// Another batch of the same atomic append was rejected.
    AtomicAborted,
    /// The topic was deleted while the batch was in flight.
    TopicDeleted,
}

impl RejectReason {
    /// The wire name (`ERROR_REASON_OFFSET_MISMATCH`, ...).
    pub fn name(&self) -> &'static str {
        ErrorReason::from(*self).as_str_name()
    }

    fn from_proto(r: ErrorReason) -> Option<Self> {
        use ErrorReason as R;
        Some(match r {
            R::OutOfOrderSequence => RejectReason::OutOfOrderSequence,
            R::Fenced => RejectReason::Fenced,
            R::UnknownProducer => RejectReason::UnknownProducer,
            R::OffsetMismatch => RejectReason::OffsetMismatch,
            R::AtomicAborted => RejectReason::AtomicAborted,
            R::TopicDeleted => RejectReason::TopicDeleted,
            _ => return None,
        })
    }
}

impl From<RejectReason> for ErrorReason {
    fn from(r: RejectReason) -> Self {
        match r {
            RejectReason::OutOfOrderSequence => ErrorReason::OutOfOrderSequence,
            RejectReason::Fenced => ErrorReason::Fenced,
            RejectReason::UnknownProducer => ErrorReason::UnknownProducer,
            RejectReason::OffsetMismatch => ErrorReason::OffsetMismatch,
            RejectReason::AtomicAborted => ErrorReason::AtomicAborted,
            RejectReason::TopicDeleted => ErrorReason::TopicDeleted,
        }
    }
}

/// A batch the agent did not commit, with what the reason says about the log's state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// Why.
    pub reason: RejectReason,
    /// The agent's message, naming the topic-partition.
    pub message: String,
    /// For [`RejectReason::OffsetMismatch`]: the partition's next offset.
    pub next_offset: Option<i64>,
    /// For [`RejectReason::OutOfOrderSequence`]: the sequence the agent expected.
    pub expected_sequence: Option<i64>,
    /// For [`RejectReason::Fenced`]: the current epoch.
    pub current_epoch: Option<u32>,
}

impl Rejected {
    /// From a per-batch error in a produce response.
    pub(crate) fn from_batch_error(e: &v2::BatchError) -> Option<Self> {
        let reason = RejectReason::from_proto(e.reason())?;
        Some(Rejected {
            reason,
            message: e.message.clone(),
            next_offset: e.next_offset,
            expected_sequence: e.expected_sequence,
            current_epoch: e.current_epoch,
        })
    }

    /// From a call's status carrying a google.rpc.ErrorInfo with a produce reason.
    pub(crate) fn from_status(status: &tonic::Status) -> Option<Self> {
        let details = status.get_error_details();
        let info = details.error_info()?;
        let reason = RejectReason::from_proto(ErrorReason::from_str_name(&info.reason)?)?;
        let num = |k: &str| info.metadata.get(k).and_then(|v| v.parse::<i64>().ok());
        Some(Rejected {
            reason,
            message: status.message().to_string(),
            next_offset: num("next_offset"),
            expected_sequence: num("expected_sequence"),
            current_epoch: num("current_epoch").and_then(|v| u32::try_from(v).ok()),
        })
    }
}

/// A per-batch error whose reason is not one a producer acts on, as the status the agent
/// gives the same failure when it fails a whole call, so [`ClientError::reason`] still
/// names it.
pub(crate) fn batch_error_status(e: &v2::BatchError) -> ClientError {
    let mut numbers = HashMap::new();
    if let Some(n) = e.next_offset {
        numbers.insert("next_offset".to_string(), n.to_string());
    }
    if let Some(n) = e.expected_sequence {
        numbers.insert("expected_sequence".to_string(), n.to_string());
    }
    if let Some(n) = e.current_epoch {
        numbers.insert("current_epoch".to_string(), n.to_string());
    }
    ClientError::Status(tonic::Status::with_error_details(
        tonic::Code::FailedPrecondition,
        format!("batch refused: {}", e.message),
        ErrorDetails::with_error_info(e.reason().as_str_name(), ERROR_DOMAIN, numbers),
    ))
}

/// An error and its causes in one line, with what to do when the causes show a TLS
/// mismatch (the transport's own words are accurate but rarely say what to fix).
fn with_hint(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        // Debug names what Display leaves out (hyper's "http2 error" is a GOAWAY of
        // FRAME_SIZE_ERROR underneath).
        let debug = format!("{s:?}");
        if let Some(hint) = tls_hint(&debug).or_else(|| tls_hint(&text)) {
            out.push_str(hint);
            return out;
        }
        source = s.source();
    }
    out
}

/// What a transport failure's words mean for TLS, if anything.
fn tls_hint(causes: &str) -> Option<&'static str> {
    const HINTS: &[(&[&str], &str)] = &[
        (
            &["FRAME_SIZE_ERROR", "frame with invalid size"],
            " (the agent answered in something other than plain HTTP/2: it probably serves \
             TLS; use an https:// address and --ca)",
        ),
        (
            &["InvalidContentType", "corrupt message", "InvalidMessage"],
            " (the agent does not serve TLS at this address: use http:// and no --ca)",
        ),
        (
            &["UnknownIssuer", "BadSignature"],
            " (the agent's certificate is not signed by the CA given with --ca)",
        ),
        (&["Expired"], " (the agent's certificate has expired)"),
        (
            &["NotValidForName"],
            " (the agent's certificate does not name this address: add it as a SAN)",
        ),
        (
            &[
                "CertificateRequired",
                "UnknownCA",
                "BadCertificate",
                "connection closed",
            ],
            " (the agent closed the connection: if it asks for client certificates (mTLS), \
             give --cert and --key signed by its client CA; its log says why)",
        ),
    ];
    HINTS
        .iter()
        .find(|(needles, _)| needles.iter().any(|n| causes.contains(n)))
        .map(|(_, hint)| *hint)
}

/// A status in one line: its code and message, and for a failure of the connection (not
/// an answer of the agent) its causes.
fn describe_status(s: &tonic::Status) -> String {
    let name = if throttle_delay(s).is_some() {
        "throttled"
    } else {
        code_name(s.code())
    };
    let head = format!("{name}: {}", s.message());
    match std::error::Error::source(s) {
        Some(source) if is_transport_failure(s) => {
            let causes = with_hint(source);
            if head.contains(&causes) {
                head
            } else {
                format!("{head}: {causes}")
            }
        }
        _ => head,
    }
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        match Rejected::from_status(&status) {
            Some(r) => ClientError::Rejected(r),
            None => ClientError::Status(status),
        }
    }
}

impl ClientError {
    /// The gRPC code, if the agent answered with an error.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            ClientError::Status(s) => Some(s.code()),
            ClientError::Rejected(r) if r.reason == RejectReason::TopicDeleted => {
                Some(tonic::Code::NotFound)
            }
            ClientError::Rejected(_) => Some(tonic::Code::FailedPrecondition),
            _ => None,
        }
    }

    /// Why the agent failed the call, from the google.rpc.ErrorInfo it attaches to an error
    /// status (or the reason of a refused produce batch); `None` for errors that did not
    /// come from the agent, and for statuses without a specific reason.
    pub fn reason(&self) -> Option<ErrorReason> {
        match self {
            ClientError::Rejected(r) => Some(r.reason.into()),
            ClientError::Status(s) => s
                .get_error_details()
                .error_info()
                .and_then(|info| ErrorReason::from_str_name(&info.reason))
                .filter(|r| *r != ErrorReason::Unspecified),
            _ => None,
        }
    }

    /// The rejection, if the agent refused a batch for a reason a program can act on.
    pub fn rejected(&self) -> Option<&Rejected> {
        match self {
            ClientError::Rejected(r) => Some(r),
            _ => None,
        }
    }

    /// How long the agent asked to wait before sending a throttled call again (a quota or a
    /// per-connection limit held it back, and nothing of it was done); `None` for any other
    /// error.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            ClientError::Status(s) => throttle_delay(s),
            _ => None,
        }
    }

    /// Whether sending the same request again may succeed: the agent was unavailable, the
    /// call timed out, the connection broke before an answer came (the request may or may
    /// not have been applied; idempotent producers make resending it safe), or the call was
    /// throttled (wait [`ClientError::retry_after`] first).
    pub fn is_retryable(&self) -> bool {
        self.retry_after().is_some()
            || matches!(
                self.code(),
                Some(
                    tonic::Code::Unavailable | tonic::Code::Aborted | tonic::Code::DeadlineExceeded
                )
            )
            || matches!(
                self,
                ClientError::Connect { .. } | ClientError::Unreachable { .. }
            )
            || matches!(self, ClientError::Status(s) if is_transport_failure(s))
    }
}

/// Longest delay a throttled call is waited out for: a longer one means a quota far below
/// what the client sends, and the caller should hear of it.
pub const MAX_THROTTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The delay an agent asked for in a throttled call's google.rpc.RetryInfo
/// (RESOURCE_EXHAUSTED with `ERROR_REASON_THROTTLED`), at most [`MAX_THROTTLE_WAIT`].
pub fn throttle_delay(status: &tonic::Status) -> Option<std::time::Duration> {
    if status.code() != tonic::Code::ResourceExhausted {
        return None;
    }
    let details = status.get_error_details();
    let throttled = details
        .error_info()
        .is_some_and(|i| i.reason == ErrorReason::Throttled.as_str_name());
    if !throttled {
        return None;
    }
    let delay = details
        .retry_info()
        .and_then(|r| r.retry_delay)
        .unwrap_or(std::time::Duration::from_millis(100));
    Some(delay.min(MAX_THROTTLE_WAIT))
}

/// Runs `call` until it is not throttled, waiting between tries what the agent asked for.
/// Each try must be a whole new call (a throttled call did nothing).
pub async fn patiently<T, F, Fut>(mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    loop {
        match call().await {
            Err(s) => match throttle_delay(&s) {
                Some(delay) => {
                    tracing::debug!(?delay, message = %s.message(), "throttled; waiting");
                    tokio::time::sleep(delay).await;
                }
                None => return Err(s),
            },
            ok => return ok,
        }
    }
}

/// A status the client library made up because the connection failed (tonic reports a
/// connection reset mid-call as `UNKNOWN: transport error`), not one the agent sent.
fn is_transport_failure(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::transport::Error>() || e.is::<std::io::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// A short, human name for a gRPC code ("not found", "invalid argument").
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown error",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal error",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(code: tonic::Code, reason: ErrorReason, meta: &[(&str, &str)]) -> tonic::Status {
        let meta: HashMap<String, String> = meta
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        tonic::Status::with_error_details(
            code,
            "refused",
            ErrorDetails::with_error_info(reason.as_str_name(), ERROR_DOMAIN, meta),
        )
    }

    #[test]
    fn any_status_exposes_its_reason() {
        let err = ClientError::from(status(
            tonic::Code::FailedPrecondition,
            ErrorReason::UnknownMember,
            &[],
        ));
        assert!(matches!(err, ClientError::Status(_)));
        assert_eq!(err.reason(), Some(ErrorReason::UnknownMember));
        let plain = ClientError::from(tonic::Status::unavailable("down"));
        assert_eq!(plain.reason(), None);
        assert!(plain.is_retryable());
        let unspecified =
            ClientError::from(status(tonic::Code::Internal, ErrorReason::Unspecified, &[]));
        assert_eq!(unspecified.reason(), None);
    }

    #[test]
    fn produce_reasons_become_rejections_with_their_numbers() {
        let err = ClientError::from(status(
            tonic::Code::FailedPrecondition,
            ErrorReason::OffsetMismatch,
            &[("next_offset", "42")],
        ));
        let r = err.rejected().cloned();
        assert_eq!(
            r,
            Some(Rejected {
                reason: RejectReason::OffsetMismatch,
                message: "refused".into(),
                next_offset: Some(42),
                expected_sequence: None,
                current_epoch: None,
            })
        );
        assert_eq!(err.reason(), Some(ErrorReason::OffsetMismatch));
        assert_eq!(err.code(), Some(tonic::Code::FailedPrecondition));
        assert!(
            err.to_string()
                .starts_with("ERROR_REASON_OFFSET_MISMATCH: ")
        );
    }

    #[test]
    fn batch_errors_map_to_rejections_or_statuses() {
        let fenced = v2::BatchError {
            reason: ErrorReason::Fenced as i32,
            message: "t/0: fenced".into(),
            current_epoch: Some(3),
            ..Default::default()
        };
        let r = Rejected::from_batch_error(&fenced);
        assert_eq!(r.as_ref().map(|r| r.reason), Some(RejectReason::Fenced));
        assert_eq!(r.and_then(|r| r.current_epoch), Some(3));

        let other = v2::BatchError {
            reason: ErrorReason::TooLarge as i32,
            message: "t/0: too large".into(),
            ..Default::default()
        };
        assert_eq!(Rejected::from_batch_error(&other), None);
        let err = batch_error_status(&other);
        assert_eq!(err.reason(), Some(ErrorReason::TooLarge));
        assert!(!err.is_retryable());
    }

    #[test]
    fn every_reject_reason_round_trips() {
        for r in [
            RejectReason::OutOfOrderSequence,
            RejectReason::Fenced,
            RejectReason::UnknownProducer,
            RejectReason::OffsetMismatch,
            RejectReason::AtomicAborted,
            RejectReason::TopicDeleted,
        ] {
            assert_eq!(RejectReason::from_proto(ErrorReason::from(r)), Some(r));
        }
    }
}
