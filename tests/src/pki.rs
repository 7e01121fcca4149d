//! Certificates for the security tests, made with rcgen: a CA per test, and certificates
//! it signs for agents (server and client use, for 127.0.0.1 and localhost) and clients,
//! written as PEM files.

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A certificate authority whose certificate is written to `<dir>/<name>.crt`.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    dir: PathBuf,
    /// The CA's certificate file (PEM).
    pub cert: PathBuf,
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct Pair {
    /// The certificate file.
    pub cert: PathBuf,
    /// The key file.
    pub key: PathBuf,
}

/// How long certificates of a test live: from yesterday to next week.
fn valid_now(params: &mut CertificateParams) {
    // Certificates are judged by the wall clock of whoever checks them.
    #[allow(clippy::disallowed_methods)]
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let now = rcgen::date_time_ymd(1970, 1, 1) + since_epoch;
    params.not_before = now - std::time::Duration::from_secs(86_400);
    params.not_after = now + std::time::Duration::from_secs(7 * 86_400);
}

impl Ca {
    /// A new CA `name` in `dir`.
    pub fn new(dir: &Path, name: &str) -> anyhow::Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        valid_now(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let path = dir.join(format!("{name}.crt"));
        std::fs::write(&path, cert.pem()).context("writing the CA certificate")?;
        Ok(Ca {
            issuer: Issuer::new(params, key),
            dir: dir.to_path_buf(),
            cert: path,
        })
    }

    /// A certificate for `name` (its common name), valid for 127.0.0.1 and localhost, for
    /// server and client use, written to `<dir>/<name>.crt` and `.key`.
    pub fn issue(&self, name: &str) -> anyhow::Result<Pair> {
        self.issue_with(name, false)
    }

    /// [`Ca::issue`], but the certificate expired yesterday when `expired`.
    pub fn issue_with(&self, name: &str, expired: bool) -> anyhow::Result<Pair> {
        let mut params = CertificateParams::new(
            ["127.0.0.1", "127.0.0.2", "127.0.0.3", "localhost"]
                .map(String::from)
                .to_vec(),
        )?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        valid_now(&mut params);
        if expired {
            params.not_after = params.not_before;
            params.not_before -= std::time::Duration::from_secs(86_400);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let pair = Pair {
            cert: self.dir.join(format!("{name}.crt")),
            key: self.dir.join(format!("{name}.key")),
        };
        std::fs::write(&pair.cert, cert.pem())?;
        std::fs::write(&pair.key, key.serialize_pem())?;
        Ok(pair)
    }
}
