//! Quotas per principal: produce and fetch bytes per second and calls per second, for the
//! whole cluster. Agents read the table every few seconds and enforce each rate as their
//! share of it (divided by the live agents). A principal's unset rate falls back to the
//! default's (principal `*`); unset there too, it is unlimited.

use serde::{Deserialize, Serialize};

use crate::keys;
use crate::tokens::check_principal;
use crate::{MetaError, Metadata};

/// The principal whose quotas apply to every principal without its own (and to
/// unauthenticated calls).
pub const DEFAULT_PRINCIPAL: &str = "*";

/// Highest rate a quota may set: far above what any cluster serves, low enough that the
/// agents' arithmetic on it never overflows.
pub const MAX_RATE: u64 = 1 << 50;

/// One principal's quotas.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// The principal, or [`DEFAULT_PRINCIPAL`].
    pub principal: String,
    /// Payload bytes produced per second.
    pub produce_bytes_per_sec: Option<u64>,
    /// Record bytes fetched (or acquired by share groups) per second.
    pub fetch_bytes_per_sec: Option<u64>,
    /// Calls per second.
    pub requests_per_sec: Option<u64>,
}

impl Quota {
    /// Checks the fields: a principal name or `*`, at least one rate, each from 1 to
    /// [`MAX_RATE`].
    pub fn validate(&self) -> Result<(), MetaError> {
        if self.principal != DEFAULT_PRINCIPAL {
            check_principal(&self.principal)?;
        }
        let rates = [
            ("produce bytes per second", self.produce_bytes_per_sec),
            ("fetch bytes per second", self.fetch_bytes_per_sec),
            ("requests per second", self.requests_per_sec),
        ];
        if rates.iter().all(|(_, r)| r.is_none()) {
            return Err(MetaError::InvalidArgument(
                "a quota sets at least one rate (produce bytes, fetch bytes or requests per second)"
                    .into(),
            ));
        }
        for (what, rate) in rates {
            if let Some(r) = rate
                && !(1..=MAX_RATE).contains(&r)
            {
                return Err(MetaError::InvalidArgument(format!(
                    "{what} must be between 1 and {MAX_RATE}, got {r}"
                )));
            }
        }
        Ok(())
    }

    /// This quota with every rate it leaves unset taken from `default`.
    pub fn or(&self, default: Option<&Quota>) -> Quota {
        let Some(d) = default else {
            return self.clone();
        };
        Quota {
            principal: self.principal.clone(),
            produce_bytes_per_sec: self.produce_bytes_per_sec.or(d.produce_bytes_per_sec),
            fetch_bytes_per_sec: self.fetch_bytes_per_sec.or(d.fetch_bytes_per_sec),
            requests_per_sec: self.requests_per_sec.or(d.requests_per_sec),
        }
    }
}

fn decode(k: &[u8], v: &[u8]) -> Result<Quota, MetaError> {
    serde_json::from_slice(v)
        .map_err(|e| MetaError::corrupt(format!("quota {}", String::from_utf8_lossy(k)), e))
}

impl Metadata {
    /// Sets `quota`, replacing the principal's earlier quotas.
    pub async fn set_quota(&self, quota: &Quota) -> Result<(), MetaError> {
        quota.validate()?;
        let value = serde_json::to_vec(quota).map_err(|e| MetaError::corrupt("quota", e))?;
        self.put_record("set_quota", keys::quota(&quota.principal), value)
            .await
    }

    /// Removes `principal`'s quotas; false when it had none.
    pub async fn remove_quota(&self, principal: &str) -> Result<bool, MetaError> {
        self.remove_record("remove_quota", keys::quota(principal))
            .await
    }

    /// Every principal's quotas, by principal (the default, `*`, sorts first).
    pub async fn list_quotas(&self) -> Result<Vec<Quota>, MetaError> {
        self.list_records("list_quotas", keys::quotas(), decode)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotas_are_checked_and_fall_back_to_the_default() {
        let q = |p: &str, produce, fetch, req| Quota {
            principal: p.into(),
            produce_bytes_per_sec: produce,
            fetch_bytes_per_sec: fetch,
            requests_per_sec: req,
        };
        assert!(q("*", Some(1), None, None).validate().is_ok());
        assert!(q("alice", None, None, Some(10)).validate().is_ok());
        let none = q("alice", None, None, None).validate().unwrap_err();
        assert!(none.to_string().contains("at least one rate"), "{none}");
        let zero = q("alice", Some(0), None, None).validate().unwrap_err();
        assert!(
            zero.to_string().contains("produce bytes per second"),
            "{zero}"
        );
        assert!(q("al ice", Some(1), None, None).validate().is_err());
        assert!(q("a", Some(MAX_RATE + 1), None, None).validate().is_err());

        let default = q("*", Some(100), Some(200), None);
        let own = q("alice", Some(5), None, None).or(Some(&default));
        assert_eq!(own, q("alice", Some(5), Some(200), None));
        assert_eq!(own.or(None), own);
    }
}
