//! Bearer tokens: issued by the cluster, kept only as a salted keyed hash, listed and
//! revoked here; agents read the table every few seconds and check tokens against it.
//!
//! A token reads `cairn_<id>_<secret>`: `id` (16 hex digits) names its record, `secret`
//! (43 characters, 256 random bits, URL-safe base64) is shown once when it is issued and
//! never stored. The record holds a random 16-byte salt and HMAC-SHA256(salt, secret); a
//! check recomputes it and compares in constant time. Since the secret is 256 random bits,
//! a fast keyed hash is enough: no password-stretching is needed, and a check costs a
//! microsecond, not the milliseconds of argon2 on every call.

use hmac::{Hmac, KeyInit, Mac};
use rand::TryRngCore;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::keys;
use crate::{MetaError, Metadata};

/// What every token begins with.
pub const TOKEN_PREFIX: &str = "cairn_";

/// Longest principal name.
pub const MAX_PRINCIPAL_BYTES: usize = 200;

/// A token's record: who it authenticates and until when. The secret is not here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    /// Its id (16 hex digits), the part of the token before the secret.
    pub id: String,
    /// The principal it authenticates as.
    pub principal: String,
    /// When it was issued (ms since the epoch, the store's clock).
    pub created_ms: i64,
    /// When it stops working (ms), if ever.
    pub expires_ms: Option<i64>,
    /// Who issued it (a principal, or `(metadata store)` when written directly).
    pub created_by: String,
    /// The random salt, hex.
    salt: String,
    /// HMAC-SHA256(salt, secret), hex.
    hash: String,
}

/// A token as presented: its id and secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PresentedToken<'a> {
    /// The record it names.
    pub id: &'a str,
    /// The secret to check.
    pub secret: &'a str,
}

/// Splits `cairn_<id>_<secret>`; `None` when the token does not have that shape.
pub fn parse_token(token: &str) -> Option<PresentedToken<'_>> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex_id = id.len() == 16 && id.bytes().all(|b| b.is_ascii_hexdigit());
    let ok_secret = (16..=128).contains(&secret.len())
        && secret
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    (hex_id && ok_secret).then_some(PresentedToken { id, secret })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

fn mac(salt: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(salt)
        .unwrap_or_else(|_| unreachable!("HMAC takes a key of any length"))
}

/// URL-safe base64 without padding, for the secret.
fn base64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(char::from(ALPHABET[(n >> (18 - 6 * i) & 63) as usize]));
        }
    }
    out
}

fn random<const N: usize>() -> Result<[u8; N], MetaError> {
    let mut buf = [0u8; N];
    rand::rngs::OsRng.try_fill_bytes(&mut buf).map_err(|e| {
        MetaError::InvalidArgument(format!("the system's random source failed: {e}"))
    })?;
    Ok(buf)
}

impl TokenRecord {
    /// True when `secret` is this token's, checked in constant time.
    pub fn matches(&self, secret: &str) -> bool {
        let Some(salt) = unhex(&self.salt) else {
            return false;
        };
        let Some(expected) = unhex(&self.hash) else {
            return false;
        };
        let mut m = mac(&salt);
        m.update(secret.as_bytes());
        m.verify_slice(&expected).is_ok()
    }

    /// True when it has expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        self.expires_ms.is_some_and(|e| e <= now_ms)
    }
}

/// Checks a principal name: 1 to 200 bytes, printable, no spaces or control characters.
pub fn check_principal(name: &str) -> Result<(), MetaError> {
    if name.is_empty() || name.len() > MAX_PRINCIPAL_BYTES {
        return Err(MetaError::InvalidArgument(format!(
            "a principal name is 1 to {MAX_PRINCIPAL_BYTES} bytes, got {}",
            name.len()
        )));
    }
    if let Some(c) = name.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(MetaError::InvalidArgument(format!(
            "principal `{}` contains {c:?}; use no spaces or control characters",
            name.escape_debug()
        )));
    }
    Ok(())
}

fn decode(k: &[u8], v: &[u8]) -> Result<TokenRecord, MetaError> {
    serde_json::from_slice(v)
        .map_err(|e| MetaError::corrupt(format!("token {}", String::from_utf8_lossy(k)), e))
}

impl Metadata {
    /// Issues a token for `principal` that expires `expires_in_ms` after now (never when
    /// `None`), recorded as issued by `created_by`. Returns the record and the whole token,
    /// which is shown once and cannot be recovered.
    pub async fn create_token(
        &self,
        principal: &str,
        expires_in_ms: Option<i64>,
        created_by: &str,
    ) -> Result<(TokenRecord, String), MetaError> {
        check_principal(principal)?;
        if let Some(ms) = expires_in_ms
            && ms <= 0
        {
            return Err(MetaError::InvalidArgument(format!(
                "a token's lifetime must be positive, got {ms} ms"
            )));
        }
        let id = hex(&random::<8>()?);
        let secret = base64url(&random::<32>()?);
        let salt = random::<16>()?;
        let mut m = mac(&salt);
        m.update(secret.as_bytes());
        let hash = hex(&m.finalize().into_bytes());
        let now = self.clock().now_ms();
        let record = TokenRecord {
            id: id.clone(),
            principal: principal.to_string(),
            created_ms: now,
            expires_ms: expires_in_ms.map(|ms| now.saturating_add(ms)),
            created_by: created_by.to_string(),
            salt: hex(&salt),
            hash,
        };
        let value = serde_json::to_vec(&record)
            .map_err(|e| MetaError::corrupt(format!("token {id}"), e))?;
        // The id is drawn before the transaction: a rerun after a lost reply writes the
        // same record again.
        self.put_record("create_token", keys::token(&id), value)
            .await?;
        Ok((record, format!("{TOKEN_PREFIX}{id}_{secret}")))
    }

    /// Every token's record, by id (expired ones too, until revoked).
    pub async fn list_tokens(&self) -> Result<Vec<TokenRecord>, MetaError> {
        self.list_records("list_tokens", keys::tokens(), decode)
            .await
    }

    /// Revokes (deletes) the token `id`; false when there was none.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, MetaError> {
        // A whole token is accepted too, as someone holding one would paste it.
        let id = parse_token(id).map_or(id, |t| t.id);
        self.remove_record("revoke_token", keys::token(id)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_check_only_their_own_secret() {
        let salt = [7u8; 16];
        let mut m = mac(&salt);
        m.update(b"s3cret-s3cret-s3cret");
        let record = TokenRecord {
            id: "0123456789abcdef".into(),
            principal: "alice".into(),
            created_ms: 0,
            expires_ms: Some(10),
            created_by: "admin".into(),
            salt: hex(&salt),
            hash: hex(&m.finalize().into_bytes()),
        };
        assert!(record.matches("s3cret-s3cret-s3cret"));
        assert!(!record.matches("s3cret-s3cret-s3cres"));
        assert!(record.expired(10) && !record.expired(9));
        let t = parse_token("cairn_0123456789abcdef_s3cret-s3cret-s3cret").unwrap();
        assert_eq!(t.id, "0123456789abcdef");
        for bad in [
            "",
            "cairn_",
            "cairn_0123_s3cret-s3cret-s3cret",
            "cairn_0123456789abcdeg_s3cret-s3cret-s3cret",
            "cairn_0123456789abcdef_short",
            "bearer_0123456789abcdef_s3cret-s3cret-s3cret",
            "cairn_0123456789abcdef_s3cret s3cret s3cret",
        ] {
            assert!(parse_token(bad).is_none(), "{bad}");
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(base64url(&[0u8; 32]).len(), 43);
        assert!(check_principal("svc:compactor").is_ok());
        assert!(check_principal("a b").is_err());
        assert!(check_principal("").is_err());
    }
}
