//! [`Security`]: how a client checks the agents it talks to (TLS, and which CA signs
//! their certificates), proves who it is (a client certificate, or a bearer token), and
//! the endpoints built with it.

use std::path::Path;
use std::time::Duration;

use tonic::codegen::http::HeaderValue;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::ClientError;

pub(crate) use cairn_proto::AUTHORIZATION;

/// A client's TLS settings and credentials. The default is plain text, no credentials:
/// what an agent listening on loopback without security serves.
#[derive(Clone, Default)]
pub struct Security {
    tls: Option<ClientTlsConfig>,
    /// `Bearer <token>`, marked sensitive (its Debug shows no secret).
    token: Option<HeaderValue>,
}

impl std::fmt::Debug for Security {
    // Neither the client key (inside the TLS config) nor the token is shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token.is_some())
            .finish()
    }
}

/// Reads a PEM file for `what`.
fn read(what: &str, path: &Path) -> Result<Vec<u8>, ClientError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ClientError::Invalid(format!("cannot read {what} {}: {e}", path.display())))?;
    if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
        return Err(ClientError::Invalid(format!(
            "{what} {} is not a PEM file (no -----BEGIN line)",
            path.display()
        )));
    }
    Ok(bytes)
}

impl Security {
    /// TLS to the agents, trusting `ca` (a PEM bundle) or, without one, the system's
    /// trusted roots; presenting the certificate `cert` with its key `key` (mTLS) when
    /// both are given.
    pub fn tls_from_files(
        ca: Option<&Path>,
        cert: Option<&Path>,
        key: Option<&Path>,
    ) -> Result<Security, ClientError> {
        let mut config = ClientTlsConfig::new();
        config = match ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(read("CA", ca)?)),
            None => config.with_native_roots(),
        };
        match (cert, key) {
            (Some(cert), Some(key)) => {
                config = config.identity(Identity::from_pem(
                    read("certificate", cert)?,
                    read("key", key)?,
                ));
            }
            (None, None) => {}
            (Some(_), None) => {
                return Err(ClientError::Invalid(
                    "a client certificate needs its key too (--key / CAIRN_KEY)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(ClientError::Invalid(
                    "a client key needs its certificate too (--cert / CAIRN_CERT)".into(),
                ));
            }
        }
        Ok(Security {
            tls: Some(config),
            token: None,
        })
    }

    /// The same settings, sending `token` (as issued by `cairn token create`) with every
    /// call.
    pub fn with_token(mut self, token: &str) -> Result<Security, ClientError> {
        let token = token.trim();
        if token.is_empty() {
            return Err(ClientError::Invalid("the token is empty".into()));
        }
        let mut value = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|_| {
            ClientError::Invalid("the token holds characters a header cannot carry".into())
        })?;
        value.set_sensitive(true);
        self.token = Some(value);
        Ok(self)
    }

    /// True when the agents are reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The `authorization` value sent with every call, if any.
    pub(crate) fn token(&self) -> Option<&HeaderValue> {
        self.token.as_ref()
    }

    /// `address` (`host:port` or with a scheme) with the scheme these settings speak:
    /// `https://` with TLS, `http://` without. An explicit scheme that disagrees is refused,
    /// since the call would fail with a far less clear error.
    pub fn url(&self, address: &str) -> Result<String, ClientError> {
        let address = address.trim();
        match address.split_once("://") {
            None if self.is_tls() => Ok(format!("https://{address}")),
            None => Ok(format!("http://{address}")),
            Some(("http", _)) if self.is_tls() => Err(ClientError::Invalid(format!(
                "{address} is a plain-text address but TLS settings were given \
                 (--ca/--cert/--key): write https://"
            ))),
            Some(("http", _)) => Ok(address.to_string()),
            // An https address without TLS settings trusts the system's roots.
            Some(("https", _)) => Ok(address.to_string()),
            Some((scheme, _)) => Err(ClientError::Invalid(format!(
                "{address}: unknown scheme {scheme}://; agents are reached at http:// or \
                 https:// addresses"
            ))),
        }
    }

    /// An endpoint for `address`, with TLS when it is an https:// address.
    pub(crate) fn endpoint(
        &self,
        address: &str,
        connect_timeout: Duration,
    ) -> Result<Endpoint, ClientError> {
        let url = self.url(address)?;
        let err = |source| ClientError::Connect {
            endpoint: url.clone(),
            source,
        };
        let mut endpoint = Endpoint::from_shared(url.clone())
            .map_err(err)?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            // An agent cut off the network answers nothing, not even a reset: pings on a
            // connection with calls in flight find it dead within seconds, and those calls
            // fail (UNAVAILABLE) and are retried on another agent instead of waiting out
            // their timeout.
            .http2_keep_alive_interval(crate::cluster::KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(crate::cluster::KEEP_ALIVE_TIMEOUT)
            // Fetch responses arrive in frames of up to 1 MiB rather than 16 KiB.
            .max_frame_size(cairn_proto::MAX_HTTP2_FRAME_SIZE);
        if url.starts_with("https://") {
            let tls = self
                .tls
                .clone()
                .unwrap_or_else(|| ClientTlsConfig::new().with_native_roots());
            endpoint = endpoint.tls_config(tls).map_err(err)?;
        }
        Ok(endpoint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_follow_the_settings_and_disagreements_are_refused() {
        let plain = Security::default();
        assert_eq!(plain.url("a:1").unwrap(), "http://a:1");
        assert_eq!(plain.url("https://a:1").unwrap(), "https://a:1");
        assert!(plain.url("ftp://a:1").is_err());
        let tls = Security {
            tls: Some(ClientTlsConfig::new()),
            token: None,
        };
        assert_eq!(tls.url("a:1").unwrap(), "https://a:1");
        let e = tls.url("http://a:1").unwrap_err().to_string();
        assert!(e.contains("write https://"), "{e}");
    }

    #[test]
    fn tokens_are_checked_and_never_shown() {
        let s = Security::default().with_token("cairn_abc_secret").unwrap();
        assert!(!format!("{s:?}").contains("secret"));
        assert!(Security::default().with_token(" ").is_err());
        assert!(Security::default().with_token("a\nb").is_err());
        let missing = Security::tls_from_files(Some(Path::new("/nonexistent/ca.pem")), None, None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
    }
}
