//! Compaction in metadata: claiming a partition's compaction with a lease, and the one
//! transaction that swaps a run of index entries for the Parquet file that replaced them.
//!
//! A compactor claims `(topic, partition)` and gets a fencing token, a number no other claim
//! ever had. It reads the run, writes the file (named with the token, so two writers never
//! write the same object) and calls [`Metadata::swap_compacted`], which checks in one
//! transaction that the claim is still its own and that every covered entry is exactly as it
//! read it; otherwise nothing changes and the file is left for the orphan collector. Entries
//! produced meanwhile sit after the run and are untouched, so a produce racing a compaction
//! neither loses nor doubles a record.

use std::time::Duration;

use crate::keys::{self, decode, value};
use crate::metadata::{
    Tx, add_counters, decode_index_value, delta, encode_index, read_topic_by_id,
};
use crate::{EntryKind, FenceReason, IndexEntry, MetaError, Metadata};

/// Most index entries one swap may replace (keeps the transaction well inside the limits).
pub const MAX_SWAP_ENTRIES: usize = 2_000;

/// A claim on one partition's compaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionClaim {
    /// Topic id.
    pub topic_id: u64,
    /// Partition.
    pub partition: u32,
    /// The fencing token: unique to this claim.
    pub token: u64,
}

/// A Parquet file written to replace a run of index entries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactedFile {
    /// Object key.
    pub object_key: String,
    /// The file's first offset: the first covered entry's base offset, or later when the
    /// file drops records below the partition's start offset (a trim after
    /// `delete_records`, so every engine reading the file sees only live records).
    pub first_offset: i64,
    /// Object size in bytes.
    pub size: u64,
    /// Row groups in the file.
    pub row_groups: u32,
    /// Smallest record timestamp.
    pub min_timestamp_ms: i64,
    /// Largest record timestamp.
    pub max_timestamp_ms: i64,
}

/// A claim as stored: owner, fencing token, lease expiry (ms), and the operation token of
/// the `claim_compaction` call that wrote it (0 in claims written before those existed).
struct Claim {
    owner: String,
    token: u64,
    expires: i64,
    by: u64,
}

impl Claim {
    fn decode(v: &[u8]) -> Result<Claim, MetaError> {
        let (owner, token, expires, by) =
            match decode::<(String, u64, i64, u64)>("compaction claim", v) {
                Ok(c) => c,
                Err(e) => match decode::<(String, u64, i64)>("compaction claim", v) {
                    Ok((owner, token, expires)) => (owner, token, expires, 0),
                    Err(_) => return Err(e),
                },
            };
        Ok(Claim {
            owner,
            token,
            expires,
            by,
        })
    }

    fn encode(&self) -> Vec<u8> {
        value(&(self.owner.as_str(), self.token, self.expires, self.by))
    }
}

impl Metadata {
    /// Claims `topic_id`/`partition` for compaction by `owner` for `lease`. Returns `None`
    /// while another owner's lease is running; a claim of the same owner is replaced.
    pub async fn claim_compaction(
        &self,
        topic_id: u64,
        partition: u32,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<CompactionClaim>, MetaError> {
        let now = self.clock().now_ms();
        let lease_ms = i64::try_from(lease.as_millis()).unwrap_or(i64::MAX);
        let by = self.token();
        self.run("claim_compaction", |tx, maybe| async move {
            let key = keys::compaction_claim(topic_id, partition);
            if let Some(v) = tx.get(&key).await? {
                let held = Claim::decode(&v)?;
                // After a lost reply: the claim this call's first attempt took is ours;
                // answer it rather than replace it with another token.
                if maybe.get() && held.by == by {
                    return Ok(Some(CompactionClaim {
                        topic_id,
                        partition,
                        token: held.token,
                    }));
                }
                if held.owner != owner && held.expires > now {
                    return Ok(None);
                }
            }
            // Fencing tokens come from a counter the transaction must read to hand the token
            // out, so it stays a read-modify-write.
            let token = match tx.get(&keys::next_compaction_token()).await? {
                Some(v) => decode::<(u64,)>("next compaction token", &v)?.0,
                None => 1,
            };
            tx.set(&keys::next_compaction_token(), &value(&(token + 1,)))
                .await?;
            let claim = Claim {
                owner: owner.to_string(),
                token,
                expires: now.saturating_add(lease_ms),
                by,
            };
            tx.set(&key, &claim.encode()).await?;
            Ok(Some(CompactionClaim {
                topic_id,
                partition,
                token,
            }))
        })
        .await
    }

    /// Gives a claim up (nothing happens if it was already taken over).
    pub async fn release_compaction(&self, claim: CompactionClaim) -> Result<(), MetaError> {
        self.run("release_compaction", |tx, _| async move {
            let key = keys::compaction_claim(claim.topic_id, claim.partition);
            if check_claim(&tx, &claim).await.is_ok() {
                tx.clear(&key).await?;
            }
            Ok(())
        })
        .await
    }

    /// Replaces the contiguous run `covered` (as read by the claimer) with one Parquet
    /// index entry for `file`, in one transaction. Fails with `Fenced` (reason
    /// `CLAIM_LOST` or `COMPACTION_CONFLICT`) and changes nothing if the claim was taken
    /// over or any covered entry was removed or replaced meanwhile.
    pub async fn swap_compacted(
        &self,
        claim: CompactionClaim,
        covered: &[IndexEntry],
        file: &CompactedFile,
    ) -> Result<(), MetaError> {
        let (Some(first), Some(last)) = (covered.first(), covered.last()) else {
            return Err(MetaError::InvalidArgument(
                "a compaction must cover at least one index entry".into(),
            ));
        };
        if covered.len() > MAX_SWAP_ENTRIES {
            return Err(MetaError::TooLarge(format!(
                "a compaction may replace at most {MAX_SWAP_ENTRIES} index entries, not {}",
                covered.len()
            )));
        }
        for pair in covered.windows(2) {
            if pair[0].end_offset != pair[1].base_offset {
                return Err(MetaError::InvalidArgument(format!(
                    "covered entries are not contiguous: {} then {}",
                    pair[0].end_offset, pair[1].base_offset
                )));
            }
        }
        if covered
            .iter()
            .any(|e| e.topic_id != claim.topic_id || e.partition != claim.partition)
        {
            return Err(MetaError::InvalidArgument(
                "covered entries belong to another partition than the claim".into(),
            ));
        }
        // Only records below the partition's start offset may be dropped, and the claimer
        // read that offset under its claim: it only ever moves forward, so a file starting
        // at or before the offset seen then drops nothing readable.
        if file.first_offset < first.base_offset || file.first_offset >= last.end_offset {
            return Err(MetaError::InvalidArgument(format!(
                "a compacted file covering {}..{} must start within it, not at {}",
                first.base_offset, last.end_offset, file.first_offset
            )));
        }
        let replacement = IndexEntry {
            topic_id: claim.topic_id,
            partition: claim.partition,
            base_offset: file.first_offset,
            end_offset: last.end_offset,
            object_key: file.object_key.clone(),
            position: 0,
            length: file.size,
            batch_count: file.row_groups,
            min_timestamp_ms: file.min_timestamp_ms,
            max_timestamp_ms: file.max_timestamp_ms,
            kind: EntryKind::Parquet,
        };
        let now = self.clock().now_ms();
        self.run("swap_compacted", |tx, maybe| {
            let replacement = replacement.clone();
            async move {
                let (tid, p) = (claim.topic_id, claim.partition);
                // After a lost reply the covered entries are gone, which would read as a
                // conflict. The file's object key is unique to this claim (it names the
                // fencing token), so finding it as the run's entry means the swap went
                // through.
                if maybe.get()
                    && let Some(v) = tx.get(&keys::index(tid, p, replacement.end_offset)).await?
                {
                    let (object, ..) = decode_index_value(&v)?;
                    if object == replacement.object_key {
                        return Ok(());
                    }
                }
                if read_topic_by_id(&tx, tid).await?.is_none() {
                    return Err(MetaError::Fenced {
                        reason: FenceReason::CompactionConflict,
                        message: format!("topic {tid} was deleted during its compaction"),
                    });
                }
                check_claim(&tx, &claim).await?;
                let mut removed_bytes = 0u64;
                for e in covered {
                    let k = keys::index(tid, p, e.end_offset);
                    let unchanged = match tx.get(&k).await? {
                        Some(v) => {
                            let (o, pos, len, base, n, _, _, kind) = decode_index_value(&v)?;
                            o == e.object_key
                                && pos == e.position
                                && len == e.length
                                && base == e.base_offset
                                && n == e.batch_count
                                && kind == e.kind.code()
                        }
                        None => false,
                    };
                    if !unchanged {
                        return Err(MetaError::Fenced {
                            reason: FenceReason::CompactionConflict,
                            message: format!(
                                "index entry {tid}/{p} ending at {} changed during its compaction",
                                e.end_offset
                            ),
                        });
                    }
                    tx.clear(&k).await?;
                    tx.clear(&keys::object_ref(&e.object_key, tid, p, e.end_offset))
                        .await?;
                    removed_bytes += e.length;
                }
                let end = replacement.end_offset;
                tx.set(&keys::index(tid, p, end), &encode_index(&replacement))
                    .await?;
                tx.set(&keys::object_ref(&replacement.object_key, tid, p, end), b"")
                    .await?;
                tx.set(
                    &keys::object(&replacement.object_key),
                    &value(&("live", now, replacement.length, 1u64)),
                )
                .await?;
                // Only the counters change, by atomic adds: the swap neither reads nor writes
                // the partition's position, so commits racing it do not conflict with it.
                add_counters(
                    &tx,
                    tid,
                    p,
                    delta(replacement.length, removed_bytes),
                    1 - covered.len() as i64,
                )
                .await?;
                Ok(())
            }
        })
        .await
    }
}

async fn check_claim(tx: &Tx, claim: &CompactionClaim) -> Result<(), MetaError> {
    let key = keys::compaction_claim(claim.topic_id, claim.partition);
    let held = match tx.get(&key).await? {
        Some(v) => Claim::decode(&v)?.token == claim.token,
        None => false,
    };
    if held {
        Ok(())
    } else {
        Err(MetaError::Fenced {
            reason: FenceReason::ClaimLost,
            message: format!(
                "compaction claim {} on {}/{} was taken over",
                claim.token, claim.topic_id, claim.partition
            ),
        })
    }
}
