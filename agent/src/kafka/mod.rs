//! The Kafka listener: Kafka's wire protocol over the same metadata, storage, producer
//! state and ACLs as the gRPC API, so a topic is one topic whichever protocol wrote it.
//!
//! One task per connection. Requests are size-prefixed frames; each is decoded with the
//! `kafka-protocol` crate and handled in two steps: the part whose order matters (a
//! produce's entry into the segment writer) runs as the request is read, in arrival order;
//! the rest (waiting for the commit, a long-poll) runs concurrently with later requests, and
//! responses are written strictly in request order, as Kafka requires. A malformed frame,
//! an unknown API or an unsupported version closes the connection after the responses
//! already owed are written; other connections are not affected.
//!
//! The APIs and versions served are in [`SUPPORTED`] (and docs/ARCHITECTURE.md, "The Kafka
//! protocol").

mod acls;
mod admin;
mod data;
mod groups;
mod meta;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use kafka_protocol::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use crate::AgentError;
use crate::auth::Authenticator;
use crate::service::Shared;
use kafka_protocol::protocol::StrBytes;

/// Requests read ahead of their responses on one connection.
const MAX_INFLIGHT: usize = 32;

/// The APIs this listener serves and their version ranges, as ApiVersions advertises them.
pub(crate) const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 6),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::InitProducerId, 0, 5),
    (ApiKey::FindCoordinator, 0, 4),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 3),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 5),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
];

/// The version range served for `api`, if it is served.
fn supported(api: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == api)
        .map(|&(_, min, max)| (min, max))
}

/// Why a connection is closed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KafkaError {
    /// The peer broke the protocol.
    #[error("{0}")]
    Protocol(String),
    /// The socket failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
}

fn protocol(what: impl Into<String>) -> KafkaError {
    KafkaError::Protocol(what.into())
}

/// A response owed to the peer: its bytes, or nothing (a produce with acks=0).
type Reply = BoxFuture<'static, Result<Option<Bytes>, KafkaError>>;

fn ready(bytes: Result<Bytes, KafkaError>) -> Reply {
    Box::pin(async move { bytes.map(Some) })
}

/// Serves Kafka clients on `listener` until `stop` turns true: over TLS when `tls` is
/// given (Kafka's SSL and SASL_SSL), where a client certificate names the connection's
/// principal as it does on the gRPC port.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    auth: Authenticator,
    listener: TcpListener,
    tls: Option<crate::tls::Reloading>,
    mut stop: watch::Receiver<bool>,
) {
    // Checked with the settings: a bad entry stops the agent's start, not this listener.
    let zones = ZoneCidrs::parse(&shared.settings.kafka_zone_cidrs).unwrap_or_default();
    let conn = |peer: SocketAddr, principal| Connection {
        shared: shared.clone(),
        auth: auth.clone(),
        address_zone: zones.zone_of(peer.ip()).map(str::to_string),
        peer,
        client_id: String::new(),
        principal,
        token: None,
        mechanism: None,
        close_after: None,
        raw_sasl: false,
    };
    if let Some(tls) = tls {
        let mut accepted = tls.accept_loop(listener, None);
        loop {
            tokio::select! {
                next = accepted.recv() => match next {
                    Some((stream, peer)) => {
                        let principal = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| auth.principal_of_certificates(c));
                        tokio::spawn(conn(peer, principal).run(stream, stop.clone()));
                    }
                    None => return,
                },
                _ = stop.changed() => return,
            }
        }
    }
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(conn(peer, None).run(stream, stop.clone()));
                }
                Err(e) => {
                    // Out of file handles, most likely: wait rather than spin.
                    tracing::warn!(error = %e, "the Kafka listener cannot accept a connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => return,
        }
    }
}

/// One client connection.
pub(crate) struct Connection {
    pub(crate) shared: Arc<Shared>,
    pub(crate) peer: SocketAddr,
    /// The client id of the last request (librdkafka and Java clients send one per request).
    pub(crate) client_id: String,
    /// The zone of the client's address (`kafka_zone_cidrs`), used when its client id
    /// names none.
    address_zone: Option<String>,
    /// Checks SASL credentials (Cairn tokens).
    pub(crate) auth: Authenticator,
    /// Who the connection authenticated as (SASL, or a TLS client certificate); `None`
    /// for an anonymous one.
    pub(crate) principal: Option<String>,
    /// The token it authenticated with, checked again at each request: a revoked or
    /// expired token ends the connection.
    token: Option<String>,
    /// The SASL mechanism a SaslHandshake chose.
    mechanism: Option<String>,
    /// Set when the connection must close once the responses owed so far are written.
    close_after: Option<String>,
    /// A v0 SaslHandshake was answered: the next frame is a bare SASL message.
    raw_sasl: bool,
}

impl Connection {
    async fn run<S>(mut self, stream: S, mut stop: watch::Receiver<bool>)
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let (rd, mut wr) = tokio::io::split(stream);
        let max = self.shared.settings.max_request_bytes + (1 << 20);
        let (tx, mut rx) = mpsc::channel(MAX_INFLIGHT);
        let reader = tokio::spawn(read_frames(rd, max, tx));
        let mut pending: FuturesOrdered<Reply> = FuturesOrdered::new();
        let mut closing: Option<String> = None;
        loop {
            if closing.is_some() && pending.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                done = pending.next(), if !pending.is_empty() => match done {
                    Some(Ok(Some(bytes))) => {
                        // A TLS stream may hold written bytes until flushed.
                        if let Err(e) = async {
                            wr.write_all(&bytes).await?;
                            wr.flush().await
                        }
                        .await
                        {
                            closing.get_or_insert(format!("write failed: {e}"));
                            break;
                        }
                    }
                    Some(Ok(None)) | None => {}
                    Some(Err(e)) => {
                        closing.get_or_insert(e.to_string());
                        break;
                    }
                },
                frame = rx.recv(), if closing.is_none() && pending.len() < MAX_INFLIGHT => match frame {
                    Some(Ok(frame)) => match self.dispatch(frame).await {
                        Ok(reply) => {
                            pending.push_back(reply);
                            closing = self.close_after.take();
                        }
                        Err(e) => closing = Some(e.to_string()),
                    },
                    Some(Err(e)) => closing = Some(e.to_string()),
                    None => closing = Some(String::new()),
                },
                _ = stop.changed() => {
                    closing = Some("the agent is stopping".into());
                    break;
                }
            }
        }
        reader.abort();
        match closing.as_deref() {
            None | Some("") => {}
            Some(why) => {
                tracing::info!(peer = %self.peer, client_id = %self.client_id, "closing the Kafka connection: {why}")
            }
        }
    }

    /// Decodes one request, runs the part of it whose order matters, and returns the rest.
    async fn dispatch(&mut self, mut frame: Bytes) -> Result<Reply, KafkaError> {
        if std::mem::take(&mut self.raw_sasl) {
            // After a v0 SaslHandshake the next frame is the bare PLAIN message, answered
            // with an empty frame on success (Kafka before SaslAuthenticate).
            let resp = self.sasl_authenticate(&frame).await;
            if resp.error_code != 0 {
                return Err(protocol(
                    resp.error_message
                        .map_or_else(String::new, |m| m.as_str().to_string()),
                ));
            }
            return Ok(ready(Ok(Bytes::from_static(&[0, 0, 0, 0]))));
        }
        if frame.len() < 8 {
            return Err(protocol(format!(
                "a {}-byte request is shorter than a request header",
                frame.len()
            )));
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let correlation = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
        let api = ApiKey::try_from(key).map_err(|()| protocol(format!("unknown API key {key}")))?;
        let Some((min, max)) = supported(api) else {
            return Err(protocol(format!(
                "{api:?} (key {key}) is not served by this agent"
            )));
        };
        if version < min || version > max {
            if api == ApiKey::ApiVersions {
                // Answered in v0 so any client can read it, and learn what is served.
                let body = meta::api_versions(ResponseError::UnsupportedVersion.code());
                return Ok(ready(encode(api, 0, correlation, &body)));
            }
            return Err(protocol(format!(
                "{api:?} v{version} is not served (this agent serves v{min} to v{max})"
            )));
        }
        if !matches!(
            api,
            ApiKey::ApiVersions | ApiKey::SaslHandshake | ApiKey::SaslAuthenticate
        ) {
            self.authenticated(api)?;
        }
        let header = RequestHeader::decode(&mut frame, api.request_header_version(version))
            .map_err(|e| protocol(format!("malformed {api:?} v{version} request header: {e}")))?;
        if let Some(id) = &header.client_id
            && id.as_str() != self.client_id
        {
            self.client_id = id.as_str().to_string();
        }
        // A request whose handler takes (shared, principal, request[, version]) and runs
        // after the request is read.
        macro_rules! handle {
            ($f:path $(, $v:ident)?) => {{
                let req = body(api, version, &mut frame)?;
                let (s, p) = (self.shared.clone(), self.principal.clone());
                Ok(later(api, version, correlation, async move {
                    $f(&s, p.as_deref(), req $(, $v)?).await
                }))
            }};
        }
        match api {
            ApiKey::ApiVersions => {
                let _req: kafka_protocol::messages::ApiVersionsRequest =
                    body(api, version, &mut frame)?;
                Ok(ready(encode(
                    api,
                    version,
                    correlation,
                    &meta::api_versions(0),
                )))
            }
            ApiKey::Metadata => {
                let req = body(api, version, &mut frame)?;
                let s = self.shared.clone();
                let zone = client_zone(&self.client_id).or_else(|| self.address_zone.clone());
                let principal = self.principal.clone();
                Ok(Box::pin(async move {
                    let resp =
                        meta::metadata(&s, principal.as_deref(), req, version, zone.as_deref())
                            .await;
                    encode(api, version, correlation, &resp).map(Some)
                }))
            }
            ApiKey::InitProducerId => {
                let req = body(api, version, &mut frame)?;
                let s = self.shared.clone();
                Ok(Box::pin(async move {
                    let resp = meta::init_producer_id(&s, req).await;
                    encode(api, version, correlation, &resp).map(Some)
                }))
            }
            ApiKey::ListOffsets => {
                let req = body(api, version, &mut frame)?;
                let s = self.shared.clone();
                let principal = self.principal.clone();
                Ok(Box::pin(async move {
                    let resp = data::list_offsets(&s, principal.as_deref(), req).await;
                    encode(api, version, correlation, &resp).map(Some)
                }))
            }
            ApiKey::Produce => {
                let req = body(api, version, &mut frame)?;
                data::produce(self, req, version, correlation).await
            }
            ApiKey::Fetch => {
                let req = body(api, version, &mut frame)?;
                let s = self.shared.clone();
                let principal = self.principal.clone();
                Ok(Box::pin(async move {
                    let resp = data::fetch(&s, principal.as_deref(), req, version).await;
                    encode(api, version, correlation, &resp).map(Some)
                }))
            }
            ApiKey::SaslHandshake => {
                let req: kafka_protocol::messages::SaslHandshakeRequest =
                    body(api, version, &mut frame)?;
                let resp = self.sasl_handshake(req.mechanism.as_str());
                self.raw_sasl = version == 0 && resp.error_code == 0;
                Ok(ready(encode(api, version, correlation, &resp)))
            }
            ApiKey::SaslAuthenticate => {
                let req: kafka_protocol::messages::SaslAuthenticateRequest =
                    body(api, version, &mut frame)?;
                let resp = self.sasl_authenticate(&req.auth_bytes).await;
                Ok(ready(encode(api, version, correlation, &resp)))
            }
            ApiKey::FindCoordinator => {
                let req = body(api, version, &mut frame)?;
                let resp = groups::find_coordinator(&self.shared, req, version);
                Ok(ready(encode(api, version, correlation, &resp)))
            }
            ApiKey::JoinGroup => handle!(groups::join_group, version),
            ApiKey::SyncGroup => handle!(groups::sync_group, version),
            ApiKey::Heartbeat => handle!(groups::heartbeat),
            ApiKey::LeaveGroup => handle!(groups::leave_group, version),
            ApiKey::OffsetCommit => handle!(groups::offset_commit, version),
            ApiKey::OffsetFetch => handle!(groups::offset_fetch, version),
            ApiKey::DescribeGroups => handle!(groups::describe_groups),
            ApiKey::ListGroups => {
                let _req: kafka_protocol::messages::ListGroupsRequest =
                    body(api, version, &mut frame)?;
                let (s, p) = (self.shared.clone(), self.principal.clone());
                Ok(later(api, version, correlation, async move {
                    groups::list_groups(&s, p.as_deref()).await
                }))
            }
            ApiKey::OffsetForLeaderEpoch => handle!(groups::offset_for_leader_epoch),
            ApiKey::CreateTopics => handle!(admin::create_topics, version),
            ApiKey::DeleteTopics => handle!(admin::delete_topics, version),
            ApiKey::CreatePartitions => handle!(admin::create_partitions),
            ApiKey::DeleteRecords => handle!(admin::delete_records),
            ApiKey::DescribeConfigs => handle!(admin::describe_configs, version),
            ApiKey::IncrementalAlterConfigs => handle!(admin::incremental_alter_configs),
            ApiKey::AlterConfigs => handle!(admin::alter_configs),
            ApiKey::ConsumerGroupHeartbeat => handle!(groups::consumer_group_heartbeat),
            ApiKey::DescribeAcls => handle!(acls::describe_acls),
            ApiKey::CreateAcls => handle!(acls::create_acls),
            ApiKey::DeleteAcls => handle!(acls::delete_acls),
            ApiKey::DescribeCluster => handle!(admin::describe_cluster, version),
            other => Err(protocol(format!("{other:?} is not served by this agent"))),
        }
    }
}

impl Connection {
    /// Refuses a request (closing the connection) when the agent requires authentication
    /// and the connection has none, or its token was revoked or expired since.
    fn authenticated(&self, api: ApiKey) -> Result<(), KafkaError> {
        match &self.token {
            Some(t) => self.auth.check_token(t).map(|_| ()).map_err(|why| {
                protocol(format!(
                    "{why}: the connection's credential no longer holds"
                ))
            }),
            // A client certificate's principal, checked by the TLS handshake.
            None if self.principal.is_some() => Ok(()),
            None if self.auth.required() => Err(protocol(format!(
                "{api:?} before authenticating: this agent requires SASL (PLAIN with a Cairn \
                 token as the password, or OAUTHBEARER with it as the bearer token) or a \
                 client certificate"
            ))),
            None => Ok(()),
        }
    }

    /// SaslHandshake: PLAIN and OAUTHBEARER are the mechanisms served, both with a Cairn
    /// token as the secret.
    fn sasl_handshake(
        &mut self,
        mechanism: &str,
    ) -> kafka_protocol::messages::SaslHandshakeResponse {
        let resp = kafka_protocol::messages::SaslHandshakeResponse::default().with_mechanisms(
            MECHANISMS
                .iter()
                .map(|m| StrBytes::from_static_str(m))
                .collect(),
        );
        if !MECHANISMS.contains(&mechanism) {
            return resp.with_error_code(ResponseError::UnsupportedSaslMechanism.code());
        }
        self.mechanism = Some(mechanism.to_string());
        resp
    }

    /// SaslAuthenticate: the PLAIN password or the OAUTHBEARER bearer token is a Cairn
    /// token, whose principal the connection takes (a user name or authorization id, when
    /// given, must be that principal; it replaces a client certificate's). A failure is
    /// answered, audited and closes the connection.
    async fn sasl_authenticate(
        &mut self,
        bytes: &Bytes,
    ) -> kafka_protocol::messages::SaslAuthenticateResponse {
        use kafka_protocol::messages::SaslAuthenticateResponse;
        let fail = |this: &mut Self, code: ResponseError, why: String| {
            tracing::warn!(
                target: crate::auth::AUDIT,
                principal = "",
                operation = "kafka:SaslAuthenticate",
                peer = %this.peer,
                reason = %why,
                "refused: not authenticated"
            );
            this.close_after = Some(format!("SASL authentication failed: {why}"));
            SaslAuthenticateResponse::default()
                .with_error_code(code.code())
                .with_error_message(Some(StrBytes::from_string(why)))
        };
        let parsed = match self.mechanism.as_deref() {
            _ if self.token.is_some() => Err((
                ResponseError::IllegalSaslState,
                "the connection is already authenticated".to_string(),
            )),
            Some("PLAIN") => sasl_plain(bytes),
            Some("OAUTHBEARER") => sasl_oauthbearer(bytes),
            _ => Err((
                ResponseError::IllegalSaslState,
                "SaslAuthenticate comes after a SaslHandshake choosing PLAIN or OAUTHBEARER"
                    .to_string(),
            )),
        };
        let (user, token) = match parsed {
            Ok(p) => p,
            Err((code, why)) => return fail(self, code, why),
        };
        match self.auth.principal_of_token(&token).await {
            Ok(p) if user.as_deref().is_none_or(|u| u.is_empty() || u == p) => {
                tracing::info!(target: crate::auth::AUDIT, principal = %p, peer = %self.peer, "kafka connection authenticated");
                self.principal = Some(p);
                self.token = Some(token);
                SaslAuthenticateResponse::default()
            }
            Ok(p) => fail(
                self,
                ResponseError::SaslAuthenticationFailed,
                format!(
                    "the token is principal `{p}`'s, not user `{}`'s",
                    user.unwrap_or_default()
                ),
            ),
            Err(why) => fail(
                self,
                ResponseError::SaslAuthenticationFailed,
                why.to_string(),
            ),
        }
    }
}

/// The SASL mechanisms served.
const MECHANISMS: &[&str] = &["PLAIN", "OAUTHBEARER"];

/// A SASL message's user name (if any) and token, or why it is refused.
type SaslCredentials = Result<(Option<String>, String), (ResponseError, String)>;

/// A PLAIN message (RFC 4616): authzid NUL user NUL password.
fn sasl_plain(bytes: &[u8]) -> SaslCredentials {
    let failed = |why: &str| Err((ResponseError::SaslAuthenticationFailed, why.to_string()));
    let mut parts = bytes.split(|b| *b == 0);
    let (Some(_authzid), Some(user), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return failed("a PLAIN message is authzid, user name and password separated by NUL bytes");
    };
    let (Ok(user), Ok(token)) = (std::str::from_utf8(user), std::str::from_utf8(password)) else {
        return failed("the user name and password must be UTF-8");
    };
    Ok((Some(user.to_string()), token.trim().to_string()))
}

/// An OAUTHBEARER client's first message (RFC 7628): a GS2 header (`n,a=<authzid>,` or
/// `n,,`), then `^A`-separated `key=value` pairs, one of them `auth=Bearer <token>`, ended by
/// `^A^A`.
fn sasl_oauthbearer(bytes: &[u8]) -> SaslCredentials {
    let failed = |why: &str| Err((ResponseError::SaslAuthenticationFailed, why.to_string()));
    let Ok(text) = std::str::from_utf8(bytes) else {
        return failed("an OAUTHBEARER message must be UTF-8");
    };
    let Some((gs2, rest)) = text.split_once('\x01') else {
        return failed("an OAUTHBEARER message starts with a GS2 header ending in `,` and ^A");
    };
    let mut header = gs2.split(',');
    let (Some("n" | "y"), Some(authzid), Some(""), None) =
        (header.next(), header.next(), header.next(), header.next())
    else {
        return failed("the OAUTHBEARER GS2 header must read `n,,` or `n,a=<principal>,`");
    };
    let user = match authzid {
        "" => None,
        a => match a.strip_prefix("a=") {
            Some(p) => Some(p.to_string()),
            None => return failed("the OAUTHBEARER authorization id must read `a=<principal>`"),
        },
    };
    let Some(pairs) = rest.strip_suffix("\x01\x01") else {
        return failed("an OAUTHBEARER message ends with ^A^A");
    };
    let token = pairs
        .split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    match token {
        Some(t) if !t.is_empty() => Ok((user, t.to_string())),
        _ => failed("the OAUTHBEARER message has no `auth=Bearer <token>`"),
    }
}

/// The reply of a handler that runs after the request is read: its response, encoded.
fn later<T: Encodable + Send + 'static>(
    api: ApiKey,
    version: i16,
    correlation: i32,
    handler: impl std::future::Future<Output = T> + Send + 'static,
) -> Reply {
    Box::pin(async move { encode(api, version, correlation, &handler.await).map(Some) })
}

/// Decodes a request body of `version`, refusing bytes left after it.
fn body<T: Decodable>(api: ApiKey, version: i16, frame: &mut Bytes) -> Result<T, KafkaError> {
    let req = T::decode(frame, version)
        .map_err(|e| protocol(format!("malformed {api:?} v{version} request: {e}")))?;
    if frame.has_remaining() {
        return Err(protocol(format!(
            "{} bytes follow the {api:?} v{version} request",
            frame.remaining()
        )));
    }
    Ok(req)
}

/// A response: its size, header and body.
pub(crate) fn encode<T: Encodable>(
    api: ApiKey,
    version: i16,
    correlation: i32,
    body: &T,
) -> Result<Bytes, KafkaError> {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation);
    header
        .encode(&mut buf, api.response_header_version(version))
        .and_then(|()| body.encode(&mut buf, version))
        .map_err(|e| {
            // A field this version lacks was set: a bug here, not the peer's.
            tracing::error!(error = %e, "cannot encode a {api:?} v{version} response");
            protocol(format!(
                "cannot encode the {api:?} v{version} response: {e}"
            ))
        })?;
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

/// Reads size-prefixed frames until the peer closes, a frame is malformed, or `tx` closes.
async fn read_frames(
    mut rd: impl tokio::io::AsyncRead + Unpin,
    max: usize,
    tx: mpsc::Sender<Result<Bytes, KafkaError>>,
) {
    loop {
        let mut size = [0u8; 4];
        match rd.read_exact(&mut size).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        }
        let size = i32::from_be_bytes(size);
        let Some(len) = usize::try_from(size).ok().filter(|n| *n <= max) else {
            let _ = tx
                .send(Err(protocol(format!(
                    "a request of {size} bytes is over this agent's {max}-byte limit \
                     (max_request_bytes), or negative"
                ))))
                .await;
            return;
        };
        let mut frame = BytesMut::zeroed(len);
        if let Err(e) = rd.read_exact(&mut frame).await {
            let why = if e.kind() == std::io::ErrorKind::UnexpectedEof {
                protocol(format!("the connection closed inside a {len}-byte request"))
            } else {
                e.into()
            };
            let _ = tx.send(Err(why)).await;
            return;
        }
        if tx.send(Ok(frame.freeze())).await.is_err() {
            return;
        }
    }
}

/// Kafka clients' zones by address (the agent's `kafka_zone_cidrs`), most specific range
/// first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ZoneCidrs(Vec<(ipnet::IpNet, String)>);

impl ZoneCidrs {
    /// Parses `ZONE=CIDR` entries; the first that is not one is the error.
    pub(crate) fn parse(entries: &[String]) -> Result<ZoneCidrs, String> {
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let Some((zone, cidr)) = e.split_once('=') else {
                return Err(format!("`{e}` is not ZONE=CIDR (e.g. eu-1a=10.1.0.0/16)"));
            };
            let (zone, cidr) = (zone.trim(), cidr.trim());
            if zone.is_empty() || zone.len() > 64 || zone.chars().any(|c| c.is_control()) {
                return Err(format!("`{e}`: a zone is 1 to 64 printable characters"));
            }
            let net: ipnet::IpNet = cidr
                .parse()
                .map_err(|err| format!("`{e}`: `{cidr}` is not a CIDR range ({err})"))?;
            out.push((net.trunc(), zone.to_string()));
        }
        out.sort_by_key(|(net, _)| std::cmp::Reverse(net.prefix_len()));
        Ok(ZoneCidrs(out))
    }

    /// The zone of a client at `ip`: that of the most specific range holding it.
    pub(crate) fn zone_of(&self, ip: std::net::IpAddr) -> Option<&str> {
        let ip = ip.to_canonical();
        self.0
            .iter()
            .find(|(net, _)| net.contains(&ip))
            .map(|(_, z)| z.as_str())
    }
}

/// The zone a client names in its client id (`cairn_az=<zone>`, as WarpStream's
/// `warpstream_az`), if any.
pub(crate) fn client_zone(client_id: &str) -> Option<String> {
    client_id
        .split([',', ';', ' '])
        .find_map(|part| part.trim().strip_prefix("cairn_az="))
        .filter(|z| !z.is_empty())
        .map(str::to_string)
}

/// The Kafka error code of an agent error.
pub(crate) fn error_code(e: &AgentError) -> i16 {
    kind_code(e.kind())
}

/// The Kafka error code of an error of this kind.
pub(crate) fn kind_code(kind: cairn_metadata::ErrorKind) -> i16 {
    use cairn_metadata::ErrorKind as K;
    let code = match kind {
        K::NotFound => ResponseError::UnknownTopicOrPartition,
        K::OutOfRange => ResponseError::OffsetOutOfRange,
        K::TooLarge => ResponseError::MessageTooLarge,
        K::Invalid | K::Conflict | K::AlreadyExists => ResponseError::InvalidRequest,
        // Retriable: the client refreshes its metadata and tries again.
        K::Unavailable => ResponseError::KafkaStorageError,
        K::Data | K::Internal => ResponseError::UnknownServerError,
    };
    code.code()
}

/// The Kafka node id of an agent: a stable hash of its id.
pub(crate) fn node_id(agent_id: &str) -> i32 {
    (cairn_proto::murmur2(agent_id.as_bytes()) & 0x7fff_ffff) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zones_come_from_the_client_id() {
        assert_eq!(client_zone("app,cairn_az=eu-1a"), Some("eu-1a".into()));
        assert_eq!(client_zone("cairn_az=b"), Some("b".into()));
        assert_eq!(client_zone("rdkafka"), None);
        assert_eq!(client_zone("cairn_az="), None);
    }

    #[test]
    fn zones_come_from_the_most_specific_range() {
        let z = ZoneCidrs::parse(&[
            "wide=10.0.0.0/8".into(),
            "a = 10.1.0.0/16".into(),
            "v6=fd00::/8".into(),
        ])
        .unwrap();
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(z.zone_of(ip("10.1.2.3")), Some("a"));
        assert_eq!(z.zone_of(ip("10.2.2.3")), Some("wide"));
        assert_eq!(z.zone_of(ip("::ffff:10.1.0.9")), Some("a"));
        assert_eq!(z.zone_of(ip("fd00::1")), Some("v6"));
        assert_eq!(z.zone_of(ip("192.168.1.1")), None);
        for bad in ["10.0.0.0/8", "a=10.0.0.0/33", "=10.0.0.0/8", "a=host"] {
            assert!(ZoneCidrs::parse(&[bad.into()]).is_err(), "{bad}");
        }
    }

    #[test]
    fn sasl_messages_parse() {
        assert_eq!(
            sasl_plain(b"\0alice\0tok").ok(),
            Some((Some("alice".into()), "tok".into()))
        );
        assert!(sasl_plain(b"alice\0tok").is_err());
        assert!(sasl_plain(b"\0a\0b\0c").is_err());
        assert_eq!(
            sasl_oauthbearer(b"n,,\x01auth=Bearer tok\x01\x01").ok(),
            Some((None, "tok".into()))
        );
        assert_eq!(
            sasl_oauthbearer(b"n,a=bob,\x01host=h\x01auth=Bearer tok\x01\x01").ok(),
            Some((Some("bob".into()), "tok".into()))
        );
        for bad in [
            &b"n,,\x01auth=Bearer tok\x01"[..],
            b"n,,\x01auth=Basic tok\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"p=x,,\x01auth=Bearer tok\x01\x01",
            b"n,bob,\x01auth=Bearer tok\x01\x01",
            b"n,,",
            b"\xff",
        ] {
            assert!(sasl_oauthbearer(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn every_served_version_is_one_the_codec_knows() {
        for &(api, min, max) in SUPPORTED {
            let known = api.valid_versions();
            assert!(min >= known.min && max <= known.max, "{api:?}");
        }
    }
}
