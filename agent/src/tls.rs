//! TLS for the agent's listeners: the server configuration from PEM files, reloaded when the
//! files change (certificate rotation without a restart), and the stream of accepted TLS
//! connections that tonic serves.
//!
//! The configuration is swapped whole (certificate, key and client CA together) in a
//! `watch`; each connection is handshaken with the configuration current when it arrived,
//! so a rotation never cuts an open connection. Files are compared by content every
//! [`RELOAD_EVERY`], not by modification time or file events: Kubernetes rotates a
//! secret by swapping a symlink and certificate managers write the pair in two steps, and
//! a pair that does not load (half written, a key of another certificate) keeps the old
//! configuration until the next look.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How often the certificate files are read again to notice a rotation.
pub const RELOAD_EVERY: Duration = Duration::from_secs(5);

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Most handshakes in progress at once on one listener; further connections wait to be
/// accepted, so a flood of slow handshakes cannot take the agent's memory.
pub const MAX_HANDSHAKES: usize = 1024;

/// The PEM files of a TLS listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, the agent's own certificate first.
    pub cert: PathBuf,
    /// The private key of that certificate.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca: Option<PathBuf>,
}

/// An agent's TLS: the certificate it serves clients and the agents of its zone with, and
/// the CAs it checks their certificates against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTls {
    /// The gRPC listener's files; with a client CA, clients must present a certificate
    /// it signed (mTLS).
    pub files: TlsFiles,
    /// The CA that signed the other agents' certificates. The peer port (the zone read
    /// cache) asks each caller for a certificate of this CA, and the agent presents its
    /// own certificate when it calls another. Default: the client CA.
    pub peer_ca: Option<PathBuf>,
    /// Serve the metrics endpoint (/metrics, /healthz, /readyz) over TLS too, with the same
    /// certificate and no client certificate asked.
    pub metrics: bool,
}

impl AgentTls {
    /// The peer CA in use: the one given, else the client CA.
    pub fn peer_ca(&self) -> Option<&Path> {
        self.peer_ca.as_deref().or(self.files.client_ca.as_deref())
    }

    /// The metrics endpoint's files: the agent's certificate and key, and no client CA
    /// (scrapers and health probes present no certificate; the endpoint holds no secret).
    pub(crate) fn http_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.files.cert.clone(),
            key: self.files.key.clone(),
            client_ca: None,
        }
    }

    /// The peer port's files: the agent's certificate, and the peer CA as client CA.
    pub(crate) fn peer_server_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.files.cert.clone(),
            key: self.files.key.clone(),
            client_ca: self.peer_ca().map(Path::to_path_buf),
        }
    }

    /// How the agent calls the peer port of another: trusting the peer CA, presenting
    /// its own certificate.
    pub(crate) fn peer_client(&self) -> Result<tonic::transport::ClientTlsConfig, TlsError> {
        let ca = self.peer_ca().ok_or_else(|| {
            TlsError::Config(
                "the zone read cache's peer port needs the CA of the agents' certificates: \
                 give --tls-peer-ca (or --tls-client-ca), or turn the zone cache off with \
                 chunk_cache_bytes = 0"
                    .into(),
            )
        })?;
        let read = |what: &'static str, path: &Path| {
            std::fs::read(path).map_err(|e| file_error(what, path, e))
        };
        // Loaded once to fail now on a bad file, rather than on the first peer call.
        load(&self.peer_server_files())?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read(
                "peer CA", ca,
            )?))
            .identity(tonic::transport::Identity::from_pem(
                read("certificate", &self.files.cert)?,
                read("key", &self.files.key)?,
            )))
    }
}

/// Why a TLS configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM item.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file: certificate, key or client CA.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// rustls refused the combination (e.g. a key that is not the certificate's).
    #[error("the TLS configuration is refused: {0}")]
    Config(String),
}

fn file_error(what: &'static str, path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// The certificates of a PEM file (at least one).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// Builds the server configuration `files` describe (ALPN `h2`, as gRPC needs).
pub fn load(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    load_for(files, Alpn::H2)
}

/// The application protocol a listener offers in its TLS handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    /// HTTP/2 only: gRPC.
    H2,
    /// HTTP/1.1: the metrics endpoint (Prometheus, curl, health probes).
    Http1,
    /// None: the Kafka listener (Kafka clients offer no application protocol).
    None,
}

/// [`load`] for a listener speaking `alpn`.
pub fn load_for(files: &TlsFiles, alpn: Alpn) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certificates("certificate", &files.cert)?;
    let key =
        PrivateKeyDer::from_pem_file(&files.key).map_err(|e| file_error("key", &files.key, e))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates("client CA", ca)? {
                roots
                    .add(cert)
                    .map_err(|e| file_error("client CA", ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    config.alpn_protocols = match alpn {
        Alpn::H2 => vec![b"h2".to_vec()],
        Alpn::Http1 => vec![b"http/1.1".to_vec()],
        Alpn::None => Vec::new(),
    };
    Ok(Arc::new(config))
}

/// A fingerprint of the files' contents (`None` when one cannot be read).
fn fingerprint(files: &TlsFiles) -> Option<u64> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for path in [
        Some(&files.cert),
        Some(&files.key),
        files.client_ca.as_ref(),
    ]
    .into_iter()
    .flatten()
    {
        std::fs::read(path).ok()?.hash(&mut h);
    }
    Some(h.finish())
}

/// A TLS configuration kept current with its files.
#[derive(Debug, Clone)]
pub struct Reloading {
    config: watch::Receiver<Arc<ServerConfig>>,
}

impl Reloading {
    /// Loads `files` (failing now if they do not load) and looks at them again every
    /// `every` until the returned value and its clones are dropped.
    pub fn start(files: TlsFiles, every: Duration) -> Result<Reloading, TlsError> {
        Self::start_for(files, every, Alpn::H2)
    }

    /// [`Reloading::start`] for a listener speaking `alpn`.
    pub fn start_for(files: TlsFiles, every: Duration, alpn: Alpn) -> Result<Reloading, TlsError> {
        let config = load_for(&files, alpn)?;
        let mut seen = fingerprint(&files);
        let (tx, rx) = watch::channel(config);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = tick.tick() => {}
                }
                let now = fingerprint(&files);
                if now.is_none() || now == seen {
                    continue;
                }
                match load_for(&files, alpn) {
                    Ok(config) => {
                        seen = now;
                        tx.send_replace(config);
                        tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
                    }
                    Err(e) => tracing::warn!(
                        error = %e,
                        "the changed TLS files do not load; serving with the previous ones"
                    ),
                }
            }
        });
        Ok(Reloading { config: rx })
    }

    /// The configuration in use now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.config.borrow().clone()
    }

    /// The TLS connections `listener` accepts, each handshaken (concurrently, within
    /// [`HANDSHAKE_TIMEOUT`]) with the configuration current when it arrived. A failed
    /// handshake is logged and dropped: tonic stops serving at most errors of its stream.
    /// A plain-text client is answered with a gRPC status saying to use TLS.
    pub fn incoming(
        &self,
        listener: TcpListener,
    ) -> impl Stream<Item = Result<TlsStream<Buffered>, std::io::Error>> + use<> {
        let rx = self.accept_loop(listener, Some(plain_text_refuser()));
        tokio_stream::wrappers::ReceiverStream::new(rx).map(|(tls, _)| Ok(tls))
    }

    /// The TLS connections `listener` accepts, as an axum listener (the metrics endpoint);
    /// a plain-text client's connection is closed.
    pub(crate) fn http_listener(&self, listener: TcpListener) -> std::io::Result<HttpsListener> {
        let local = listener.local_addr()?;
        Ok(HttpsListener {
            accepted: self.accept_loop(listener, None),
            local,
        })
    }

    /// The TLS connections `listener` accepts, each with its peer's address; a plain-text
    /// client's connection is closed.
    pub(crate) fn accept_loop(
        &self,
        listener: TcpListener,
        plain: Option<tokio::sync::mpsc::Sender<TcpStream>>,
    ) -> tokio::sync::mpsc::Receiver<(TlsStream<Buffered>, std::net::SocketAddr)> {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let this = self.clone();
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let Ok(permit) = handshakes.clone().acquire_owned().await else {
                    return;
                };
                let (tcp, peer) = tokio::select! {
                    _ = tx.closed() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(a) => a,
                        Err(e) => {
                            tracing::warn!(error = %e, "accepting a connection failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let _ = tcp.set_nodelay(true);
                let acceptor = tokio_rustls::TlsAcceptor::from(this.current());
                let tx = tx.clone();
                let plain = plain.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    // A TLS connection opens with a handshake record (0x16). Anything else
                    // is a client speaking plain text, most likely HTTP/2 to an http://
                    // address: it is answered in HTTP/2 with a gRPC status saying so,
                    // rather than with a TLS alert it would report as a broken pipe.
                    let mut first = [0u8; 1];
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tcp.peek(&mut first)).await {
                        Ok(Ok(1)) if first[0] != 0x16 => {
                            tracing::info!(%peer, "TLS handshake failed: the client speaks plain text to this TLS port");
                            if let Some(plain) = plain {
                                let _ = plain.send(tcp).await;
                            }
                            return;
                        }
                        // Closed before a byte: a port probe (the agent's own reachability
                        // check among them), not a client.
                        Ok(Ok(0)) => return,
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake timed out");
                            return;
                        }
                    }
                    let io = Buffered(tokio::io::BufReader::with_capacity(READ_BUFFER, tcp));
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(io)).await {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, peer)).await;
                        }
                        // Told at info: a client that speaks plain text to this port, or
                        // trusts another CA, learns only that the connection closed.
                        Ok(Err(e)) => {
                            tracing::info!(%peer, error = %e, "TLS handshake failed")
                        }
                        Err(_) => tracing::info!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        rx
    }
}

/// Bytes read from a TLS connection's socket at once. rustls asks for 4 KiB per read,
/// so without a buffer below it a produce of 1 MiB costs 256 `read` calls; with it, 16.
const READ_BUFFER: usize = 64 << 10;

/// A TLS connection's socket with a read buffer under rustls (writes go straight
/// through), known to tonic by its peer's address like a plain socket.
#[derive(Debug)]
pub struct Buffered(tokio::io::BufReader<TcpStream>);

impl tonic::transport::server::Connected for Buffered {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::Connected::connect_info(self.0.get_ref())
    }
}

impl tokio::io::AsyncRead for Buffered {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Buffered {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// TLS connections for axum (the metrics endpoint), from [`Reloading::http_listener`].
#[derive(Debug)]
pub(crate) struct HttpsListener {
    accepted: tokio::sync::mpsc::Receiver<(TlsStream<Buffered>, std::net::SocketAddr)>,
    local: std::net::SocketAddr,
}

impl axum::serve::Listener for HttpsListener {
    type Io = TlsStream<Buffered>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop is gone (it ends only when this listener is dropped).
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Serves plain-text connections that reached a TLS port, answering every call with
/// FAILED_PRECONDITION saying to use TLS; returns where to send them. It stops when the
/// sender is dropped (with the listener's accept loop).
fn plain_text_refuser() -> tokio::sync::mpsc::Sender<TcpStream> {
    let (tx, rx) = tokio::sync::mpsc::channel::<TcpStream>(16);
    let incoming = tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok::<_, std::io::Error>);
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .layer(Refuse)
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(incoming)
            .await;
        if let Err(e) = served {
            tracing::debug!(error = %e, "the plain-text refuser stopped");
        }
    });
    tx
}

/// A layer answering every call with the status that this port serves TLS.
#[derive(Debug, Clone, Copy)]
struct Refuse;

impl<S> tower::Layer<S> for Refuse {
    type Service = Refuse;

    fn layer(&self, _inner: S) -> Refuse {
        Refuse
    }
}

impl<B> tower::Service<http::Request<B>> for Refuse {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: http::Request<B>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::failed_precondition(
            "this agent serves TLS on this port: use an https:// address (and --ca if its \
             certificate is not signed by a public CA)",
        )
        .into_http()))
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    use super::*;

    /// Runs openssl with `args` in `dir`.
    fn openssl(dir: &Path, args: &[&str]) {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl is installed");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A CA `name`.crt/.key in `dir`.
    fn ca(dir: &Path, name: &str) {
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// A certificate `name`.crt/.key for 127.0.0.1, for server and client use, signed by
    /// CA `ca`.
    fn leaf(dir: &Path, name: &str, ca: &str) {
        std::fs::write(
            dir.join(format!("{name}.ext")),
            "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.crt"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.crt"),
            ],
        );
    }

    /// Serves gRPC health over TLS on a free port; returns its address.
    async fn serve(tls: &Reloading) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_reporter, health) = tonic_health::server::health_reporter();
        let incoming = tls.incoming(listener);
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(health)
                .serve_with_incoming(incoming)
                .await;
        });
        addr
    }

    /// A health check over TLS trusting `ca`, presenting `identity` if given.
    async fn check(
        addr: std::net::SocketAddr,
        dir: &Path,
        ca: &str,
        identity: Option<&str>,
    ) -> Result<(), String> {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            std::fs::read(dir.join(format!("{ca}.crt"))).unwrap(),
        ));
        if let Some(id) = identity {
            config = config.identity(Identity::from_pem(
                std::fs::read(dir.join(format!("{id}.crt"))).unwrap(),
                std::fs::read(dir.join(format!("{id}.key"))).unwrap(),
            ));
        }
        let channel = Endpoint::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(config)
            .map_err(|e| e.to_string())?
            .connect()
            .await
            .map_err(|e| format!("{e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    #[tokio::test]
    async fn serves_tls_rotates_certificates_and_checks_client_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        ca(d, "ca1");
        ca(d, "ca2");
        leaf(d, "server1", "ca1");
        leaf(d, "server2", "ca2");
        leaf(d, "client", "ca1");
        let files = TlsFiles {
            cert: d.join("server.crt"),
            key: d.join("server.key"),
            client_ca: None,
        };
        std::fs::copy(d.join("server1.crt"), &files.cert).unwrap();
        std::fs::copy(d.join("server1.key"), &files.key).unwrap();
        let tls = Reloading::start(files.clone(), Duration::from_millis(50)).unwrap();
        let addr = serve(&tls).await;
        check(addr, d, "ca1", None).await.unwrap();
        // Plain text to the TLS port is answered in kind, saying what to do.
        let plain = Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        let e = HealthClient::new(plain)
            .check(HealthCheckRequest::default())
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("https://"), "{e:?}");
        let refused = check(addr, d, "ca2", None).await.unwrap_err();
        assert!(
            refused.contains("UnknownIssuer") || refused.contains("invalid peer certificate"),
            "{refused}"
        );

        // A half-written rotation (the new certificate, the old key) keeps the old pair.
        let mut changes = tls.config.clone();
        std::fs::copy(d.join("server2.crt"), &files.cert).unwrap();
        check(addr, d, "ca1", None).await.unwrap();
        // The key follows: the new pair is served without a restart.
        std::fs::copy(d.join("server2.key"), &files.key).unwrap();
        changes.changed().await.unwrap();
        check(addr, d, "ca2", None).await.unwrap();
        assert!(check(addr, d, "ca1", None).await.is_err());

        // mTLS: a client without a certificate of the client CA is refused.
        let mtls = Reloading::start(
            TlsFiles {
                cert: d.join("server1.crt"),
                key: d.join("server1.key"),
                client_ca: Some(d.join("ca1.crt")),
            },
            RELOAD_EVERY,
        )
        .unwrap();
        let addr = serve(&mtls).await;
        check(addr, d, "ca1", Some("client")).await.unwrap();
        assert!(check(addr, d, "ca1", None).await.is_err());

        // Files that do not load are refused at start, naming the file.
        let bad = Reloading::start(
            TlsFiles {
                cert: d.join("server1.crt"),
                key: d.join("server2.key"),
                client_ca: None,
            },
            RELOAD_EVERY,
        )
        .unwrap_err();
        assert!(matches!(bad, TlsError::Config(_)), "{bad}");
        let missing = load(&TlsFiles {
            cert: d.join("nothing.crt"),
            key: d.join("server1.key"),
            client_ca: None,
        })
        .unwrap_err();
        assert!(missing.to_string().contains("nothing.crt"), "{missing}");
    }
}
