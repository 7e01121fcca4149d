//! Object keys: the only place that spells where objects live.
//!
//! - segments: `segments/{crc32c(id) & 0xff:02x}/{uuidv7}.seg` — the hashed prefix spreads
//!   load across S3 partitions, the UUIDv7 is time-ordered and unique;
//! - Parquet: `topics/{topic}/partition={p}/{first:020}-{last:020}-{writer:x}.parquet` —
//!   Hive-style, so engines read a topic's directory as a partitioned table; `writer` is the
//!   compaction claim's token, so two compactors never write the same key.

use object_store::path::Path;

/// Every top-level prefix Cairn writes under; the garbage collector lists these.
pub const OBJECT_PREFIXES: [&str; 2] = [SEGMENTS, TOPICS];
/// The prefix of segment objects.
pub const SEGMENTS: &str = "segments";
/// The prefix of Parquet tables.
pub const TOPICS: &str = "topics";

/// Where an agent writes the small object that proves the store takes writes (at start
/// and for readiness): one per agent id, overwritten, outside [`OBJECT_PREFIXES`] so the
/// compactor never looks at it.
pub fn probe_key(agent_id: &str) -> Path {
    let safe: String = agent_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    Path::from(format!("probes/{safe}"))
}

/// A fresh segment key for a segment sealed at `now_ms` (from the injected clock).
pub fn segment_key(now_ms: i64) -> Path {
    let ms = now_ms.max(0) as u64;
    let ts =
        uuid::Timestamp::from_unix(uuid::NoContext, ms / 1000, ((ms % 1000) * 1_000_000) as u32);
    let id = uuid::Uuid::new_v7(ts);
    let hash = crc32c::crc32c(id.as_bytes()) & 0xff;
    Path::from(format!("{SEGMENTS}/{hash:02x}/{id}.seg"))
}

/// Where a compacted Parquet file of `topic`/`partition` covering offsets `first..=last`,
/// written under claim token `writer`, lives.
pub fn parquet_key(topic: &str, partition: u32, first: i64, last: i64, writer: u64) -> Path {
    Path::from(format!(
        "{TOPICS}/{topic}/partition={partition}/{first:020}-{last:020}-{writer:x}.parquet"
    ))
}

/// The directory of a topic's Parquet files (for engines that read it as a dataset).
pub fn topic_dir(topic: &str) -> Path {
    Path::from(format!("{TOPICS}/{topic}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_spread_and_time_ordered() {
        let a = segment_key(1_700_000_000_000).to_string();
        let b = segment_key(1_700_000_000_001).to_string();
        assert!(a.starts_with("segments/") && a.ends_with(".seg"), "{a}");
        assert_ne!(a, b);
        let id = |k: &str| k.rsplit('/').next().map(str::to_string);
        assert!(id(&a) < id(&b));
        assert_eq!(
            parquet_key("orders", 3, 100, 100_099, 42).to_string(),
            "topics/orders/partition=3/00000000000000000100-00000000000000100099-2a.parquet"
        );
    }
}
