//! Authentication: who a call comes from. A call carries a bearer token in its
//! `authorization` metadata (`Bearer cairn_<id>_<secret>`), or arrives over an mTLS
//! connection whose client certificate names a principal. Tokens are checked against the
//! agent's copy of the token table, read again every [`TOKEN_REFRESH`], so a revoked or
//! expired token is refused everywhere within seconds.
//!
//! Every refusal is logged on the `cairn::audit` tracing target with the principal (if
//! any), the operation, and the peer's address, so it can be routed apart.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cairn_metadata::Metadata;
use cairn_metadata::acls::{Acl, Denial, Operation, ResourceType, decide};
use cairn_metadata::tokens::{TokenRecord, parse_token};
use tonic::Status;

use crate::quota::{Connections, Held, Kind, Quotas};

/// How often the token table is read again.
pub const TOKEN_REFRESH: Duration = Duration::from_secs(2);

/// Fewest time between two reads of the token table forced by an unknown token.
const MIN_FORCED_REFRESH: Duration = Duration::from_millis(250);

/// The answer to a token with no record here (and to a wrong secret).
const UNKNOWN_TOKEN: &str = "the token is unknown or revoked";

/// The tracing target of audit events: refused calls, token and ACL changes.
pub const AUDIT: &str = "cairn::audit";

/// Which name of a client certificate is its principal.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertName {
    /// The subject's common name (CN).
    #[default]
    Cn,
    /// The first DNS name, else the first URI (a SPIFFE id), of the subject alternative
    /// names.
    San,
}

impl std::str::FromStr for CertName {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cn" => Ok(CertName::Cn),
            "san" => Ok(CertName::San),
            other => Err(format!("`{other}`: use cn or san")),
        }
    }
}

/// How the agent authenticates calls.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Refuse calls that present no credential (UNAUTHENTICATED). Without it such calls
    /// are served unauthenticated, as on a loopback-only agent.
    pub required: bool,
    /// Which certificate name is a client's principal.
    pub cert_name: CertName,
    /// Principals that may do anything, whatever the ACLs say: how a new secure cluster
    /// is administered before it has ACLs.
    pub super_users: Vec<String>,
    /// The principal the agents' own certificates name: the only one the peer port admits
    /// (when set), a super-user on the gRPC port, and the actor of the agent's own writes
    /// in the audit log.
    pub service_principal: Option<String>,
}

/// Decides, from the ACLs, whether a principal may do an operation on a resource. ACLs are
/// enforced when the agent requires authentication; without it every call is allowed.
#[derive(Debug)]
pub(crate) struct Authorizer {
    enforce: bool,
    service_principal: Option<String>,
    super_users: std::collections::HashSet<String>,
    acls: RwLock<Arc<Vec<Acl>>>,
}

impl Authorizer {
    /// An authorizer with no ACLs yet.
    pub(crate) fn new(settings: &AuthSettings) -> Self {
        Authorizer {
            enforce: settings.required,
            service_principal: settings.service_principal.clone(),
            super_users: settings
                .super_users
                .iter()
                .chain(&settings.service_principal)
                .cloned()
                .collect(),
            acls: RwLock::default(),
        }
    }

    /// The principal of the agents themselves, if configured.
    pub(crate) fn service_principal(&self) -> Option<&str> {
        self.service_principal.as_deref()
    }

    fn set(&self, acls: Vec<Acl>) {
        *self
            .acls
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(acls);
    }

    /// `Ok` when `principal` may do `operation` on `name` of `resource_type`; else why not.
    pub(crate) fn check(
        &self,
        principal: Option<&str>,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> Result<(), String> {
        if !self.enforce {
            return Ok(());
        }
        let Some(principal) = principal else {
            return Err("the call is not authenticated".into());
        };
        if self.super_users.contains(principal) {
            return Ok(());
        }
        let acls = self
            .acls
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        decide(&acls, principal, resource_type, name, operation).map_err(|d| {
            let what =
                format!("principal `{principal}` may not {operation} {resource_type} `{name}`");
            match d {
                Denial::NoAllow => format!(
                    "{what}: no ACL allows it (cairn acl add --principal {principal} \
                     --operation {operation} --{resource_type} {name})"
                ),
                Denial::Denied(acl) => format!("{what}: denied by the ACL `{}`", acl.describe()),
            }
        })
    }

    /// True when `principal` may do `operation` on `name` (for filtering listings).
    pub(crate) fn may(
        &self,
        principal: Option<&str>,
        operation: Operation,
        resource_type: ResourceType,
        name: &str,
    ) -> bool {
        self.check(principal, operation, resource_type, name)
            .is_ok()
    }
}

/// The authenticated principal of a call, in its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// Checks each call's credentials; cheap to clone (it is tonic's interceptor).
#[derive(Debug, Clone)]
pub(crate) struct Authenticator {
    settings: AuthSettings,
    tokens: Arc<RwLock<HashMap<String, TokenRecord>>>,
    metadata: Metadata,
    authorizer: Arc<Authorizer>,
    /// When an unknown token last forced a read of the table (one at a time).
    forced: Arc<tokio::sync::Mutex<Option<std::time::Instant>>>,
    /// Quotas: calls per second are checked here, for every call.
    quotas: Arc<Quotas>,
    /// What each connection has in flight.
    connections: Arc<Connections>,
}

/// What the audit log and the checks need to know of a call's connection.
struct Connection {
    peer: String,
    certs: Option<Arc<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>>>,
}

fn connection<B>(request: &http::Request<B>) -> Connection {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    if let Some(tls) = ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        return Connection {
            peer: tls
                .get_ref()
                .remote_addr()
                .map_or_else(|| "unknown".into(), |a| a.to_string()),
            certs: tls.peer_certs(),
        };
    }
    Connection {
        peer: ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr)
            .map_or_else(|| "unknown".into(), |a| a.to_string()),
        certs: None,
    }
}

/// The peer's address of a call's connection (plain or TLS).
fn remote_addr<B>(request: &http::Request<B>) -> Option<std::net::SocketAddr> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let ext = request.extensions();
    match ext.get::<TlsConnectInfo<TcpConnectInfo>>() {
        Some(tls) => tls.get_ref().remote_addr(),
        None => ext
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr),
    }
}

/// Calls that need no credentials: health checks (load balancers) and reflection.
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// The principal a client certificate names, by `how`.
pub(crate) fn principal_of_certificate(der: &[u8], how: CertName) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let cn = || {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string)
    };
    let san = || {
        let names = cert.subject_alternative_name().ok()??;
        let dns = names.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        });
        dns.or_else(|| {
            names.value.general_names.iter().find_map(|n| match n {
                x509_parser::extensions::GeneralName::URI(u) => Some(u.to_string()),
                _ => None,
            })
        })
    };
    let name = match how {
        CertName::Cn => cn().or_else(san),
        CertName::San => san().or_else(cn),
    }?;
    cairn_metadata::tokens::check_principal(&name).ok()?;
    Some(name)
}

impl Authenticator {
    /// An authenticator reading tokens from `metadata`; [`Authenticator::follow_tokens`]
    /// keeps its table current.
    /// It also keeps `authorizer`'s ACLs current.
    pub(crate) fn new(
        settings: AuthSettings,
        metadata: Metadata,
        authorizer: Arc<Authorizer>,
        quotas: Arc<Quotas>,
        connections: Arc<Connections>,
    ) -> Self {
        Authenticator {
            settings,
            tokens: Arc::default(),
            metadata,
            authorizer,
            forced: Arc::default(),
            quotas,
            connections,
        }
    }

    /// Reads the token table again for a token it does not know (one just issued on
    /// another agent) that arrived at `arrived`: a new token works at once. Reads are
    /// shared (a read begun after the call arrived serves it) and at least
    /// [`MIN_FORCED_REFRESH`] apart, so a flood of bogus tokens costs the store four reads
    /// a second at most.
    async fn refresh_for_unknown(&self, arrived: std::time::Instant) {
        let mut last = self.forced.lock().await;
        if let Some(t) = *last {
            if t >= arrived {
                return;
            }
            let wait = MIN_FORCED_REFRESH.saturating_sub(t.elapsed());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        let started = std::time::Instant::now();
        if let Err(e) = self.refresh().await {
            tracing::debug!(error = %e, "cannot read the tokens for an unknown one");
        }
        *last = Some(started);
    }

    /// Reads the token table and the ACLs now.
    pub(crate) async fn refresh(&self) -> Result<(), cairn_metadata::MetaError> {
        self.authorizer.set(self.metadata.list_acls().await?);
        let table: HashMap<String, TokenRecord> = self
            .metadata
            .list_tokens()
            .await?
            .into_iter()
            .map(|t| (t.id.clone(), t))
            .collect();
        *self
            .tokens
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = table;
        Ok(())
    }

    /// Reads the quotas and the number of live agents (which share each quota) now.
    pub(crate) async fn refresh_quotas(&self) -> Result<(), cairn_metadata::MetaError> {
        let quotas = self.metadata.list_quotas().await?;
        let agents = self.metadata.live_agents().await?.len();
        self.quotas.set(quotas, agents);
        Ok(())
    }

    /// Reads the token table, the ACLs and the quotas every [`TOKEN_REFRESH`], for ever. A
    /// failed read keeps what it had (revocations wait for the store to answer again).
    pub(crate) async fn follow_tokens(self) {
        let mut warned = false;
        loop {
            tokio::time::sleep(TOKEN_REFRESH).await;
            let read = match self.refresh().await {
                Ok(()) => self.refresh_quotas().await,
                Err(e) => Err(e),
            };
            match read {
                Ok(()) => warned = false,
                Err(e) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot read the tokens, ACLs and quotas; using the last ones read");
                }
                Err(_) => {}
            }
        }
    }

    /// Whether calls without a credential are refused.
    pub(crate) fn required(&self) -> bool {
        self.settings.required
    }

    /// The principal a TLS client's certificate chain names (its first certificate, by
    /// the configured name), if any: the Kafka listener's mTLS clients.
    pub(crate) fn principal_of_certificates(
        &self,
        certs: &[tokio_rustls::rustls::pki_types::CertificateDer<'_>],
    ) -> Option<String> {
        certs
            .first()
            .and_then(|c| principal_of_certificate(c.as_ref(), self.settings.cert_name))
    }

    /// The principal of a token presented outside gRPC (the Kafka listener's SASL PLAIN),
    /// reading the token table again once when the token is unknown here (issued on
    /// another agent a moment ago); or why it is refused.
    pub(crate) async fn principal_of_token(&self, token: &str) -> Result<String, &'static str> {
        match self.check_token(token) {
            Err(UNKNOWN_TOKEN) => {
                self.refresh_for_unknown(std::time::Instant::now()).await;
                self.check_token(token)
            }
            r => r,
        }
    }

    /// The principal of `token`, or why it is refused.
    pub(crate) fn check_token(&self, token: &str) -> Result<String, &'static str> {
        let presented = parse_token(token).ok_or("the token is malformed")?;
        let tokens = self
            .tokens
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An unknown id and a wrong secret read the same, so ids cannot be probed.
        let record = tokens
            .get(presented.id)
            .filter(|r| r.matches(presented.secret))
            .ok_or(UNKNOWN_TOKEN)?;
        if record.expired(self.metadata.clock().now_ms()) {
            return Err("the token has expired");
        }
        Ok(record.principal.clone())
    }

    /// Refuses a call as UNAUTHENTICATED, with an audit event.
    fn refuse(&self, operation: &str, peer: &str, why: &str) -> Status {
        tracing::warn!(
            target: AUDIT,
            principal = "",
            operation = %operation,
            peer = %peer,
            reason = %why,
            "refused: not authenticated"
        );
        Status::unauthenticated(why.to_string())
    }

    /// Finds who `request` comes from and records it in its extensions, or refuses it.
    /// With `may_retry`, a token this agent does not know is answered `Err(None)`: read
    /// the table again and retry.
    fn authenticate<B>(
        &self,
        request: &mut http::Request<B>,
        may_retry: bool,
    ) -> Result<(), Option<Status>> {
        let operation = request.uri().path().to_string();
        if is_open(&operation) {
            return Ok(());
        }
        let conn = connection(request);
        let principal = match request.headers().get(cairn_proto::AUTHORIZATION) {
            Some(value) => {
                let Some(token) = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer "))
                else {
                    return Err(Some(self.refuse(
                        &operation,
                        &conn.peer,
                        "the authorization metadata must read `Bearer <token>`",
                    )));
                };
                match self.check_token(token.trim()) {
                    Ok(p) => Some(p),
                    Err(UNKNOWN_TOKEN) if may_retry => return Err(None),
                    Err(why) => return Err(Some(self.refuse(&operation, &conn.peer, why))),
                }
            }
            None => conn
                .certs
                .as_ref()
                .and_then(|certs| certs.first())
                .and_then(|c| principal_of_certificate(c.as_ref(), self.settings.cert_name)),
        };
        match principal {
            Some(p) => {
                request.extensions_mut().insert(Principal(p));
            }
            None if self.settings.required => {
                return Err(Some(self.refuse(
                    &operation,
                    &conn.peer,
                    "this agent requires authentication: give a token (--token or \
                     CAIRN_TOKEN) or a client certificate",
                )));
            }
            None => {}
        }
        Ok(())
    }
}

impl Authenticator {
    /// Applies the limits every call is under, once it is authenticated: the principal's
    /// calls per second, and its connection's bytes in flight (counted as its body arrives,
    /// until it is answered: the returned [`Held`]). The connection's use goes into the
    /// request's extensions for the handlers' own limits (long-polls).
    fn admit(
        &self,
        mut request: http::Request<tonic::body::Body>,
    ) -> Result<(http::Request<tonic::body::Body>, Option<Held>), Status> {
        if is_open(request.uri().path()) {
            return Ok((request, None));
        }
        let principal = request
            .extensions()
            .get::<Principal>()
            .map(|p| p.0.as_str());
        self.quotas
            .take(principal, Kind::Requests, 1, std::time::Duration::ZERO)
            .map_err(|t| t.status())?;
        let Some(addr) = remote_addr(&request) else {
            return Ok((request, None));
        };
        let conn = self.connections.of(addr);
        let held = Held::new(conn.clone());
        request = request.map(|b| held.body(b));
        request.extensions_mut().insert(conn);
        Ok((request, Some(held)))
    }
}

/// The tower layer that authenticates every call before any service sees it.
#[derive(Debug, Clone)]
pub(crate) struct AuthLayer(pub(crate) Authenticator);

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;

    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            auth: self.0.clone(),
            inner,
        }
    }
}

/// [`AuthLayer`]'s service.
#[derive(Debug, Clone)]
pub(crate) struct AuthService<S> {
    auth: Authenticator,
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for AuthService<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        match self.auth.authenticate(&mut request, true) {
            Ok(()) => match self.auth.admit(request) {
                Ok((request, held)) => {
                    let answered = self.inner.call(request);
                    Box::pin(async move {
                        let response = answered.await;
                        drop(held);
                        response
                    })
                }
                Err(status) => {
                    let response = status.into_http();
                    Box::pin(async move { Ok(response) })
                }
            },
            Err(Some(status)) => {
                let response = status.into_http();
                Box::pin(async move { Ok(response) })
            }
            Err(None) => {
                // The service made ready is the one that must take the call.
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let auth = self.auth.clone();
                let arrived = std::time::Instant::now();
                Box::pin(async move {
                    auth.refresh_for_unknown(arrived).await;
                    match auth.authenticate(&mut request, false) {
                        Ok(()) => match auth.admit(request) {
                            Ok((request, held)) => {
                                let response = inner.call(request).await;
                                drop(held);
                                response
                            }
                            Err(status) => Ok(status.into_http()),
                        },
                        Err(status) => Ok(status
                            .unwrap_or_else(|| Status::unauthenticated(UNKNOWN_TOKEN))
                            .into_http()),
                    }
                })
            }
        }
    }
}

/// The principal a call was authenticated as, if any.
pub(crate) fn principal_of<T>(request: &tonic::Request<T>) -> Option<&str> {
    request
        .extensions()
        .get::<Principal>()
        .map(|p| p.0.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cert_names_parse() {
        assert_eq!("cn".parse::<CertName>(), Ok(CertName::Cn));
        assert_eq!("san".parse::<CertName>(), Ok(CertName::San));
        assert!("subject".parse::<CertName>().is_err());
        assert!(principal_of_certificate(b"not a certificate", CertName::Cn).is_none());
    }
}
