//! The keyspace: every key Cairn writes, tuple-encoded under one root so FoundationDB
//! tools can read it and the order of keys is the order of their tuples.
//!
//! | key | value |
//! | --- | --- |
//! | `(cairn, seq, topic)` | next topic id (tuple `(u64,)`) |
//! | `(cairn, tn, name)` | topic id |
//! | `(cairn, t, topic_id)` | topic config (JSON) |
//! | `(cairn, p, topic_id, partition)` | partition position: start offset, next offset (and two legacy counts, 0 once folded into the counters) |
//! | `(cairn, p, topic_id, partition, bytes)` | stored bytes (i64 LE, atomic adds only) |
//! | `(cairn, p, topic_id, partition, entries)` | index entries (i64 LE, atomic adds only) |
//! | `(cairn, i, topic_id, partition, end_offset)` | index entry |
//! | `(cairn, o, object_key)` | object state |
//! | `(cairn, or, object_key, chunk)` | the commit's batch outcomes, 9 bytes each |
//! | `(cairn, seq, producer)` | next producer id |
//! | `(cairn, pn, name)` | producer id of a named producer |
//! | `(cairn, pr, producer_id)` | producer: epoch, name, last init time |
//! | `(cairn, ps, producer_id, topic_id, partition)` | the producer's last 5 batches there |
//! | `(cairn, seq, member)` | next consumer-group member number |
//! | `(cairn, cg, group)` | consumer group: generation, members, assignment (JSON) |
//! | `(cairn, cgh, group, member)` | the member's last heartbeat (i64 LE) |
//! | `(cairn, co, group, topic_id, partition)` | committed offset, commit time |
//! | `(cairn, oi, object_key, topic_id, partition, end_offset)` | the object holds this index entry |
//! | `(cairn, od, object_key)` | when the object was first seen unreferenced (ms) |
//! | `(cairn, sg, group)` | share group (creation time) |
//! | `(cairn, sp, group, topic_id, partition)` | share-partition: start offset, in-flight records |
//! | `(cairn, seq, compaction)` | next compaction claim token |
//! | `(cairn, cc, topic_id, partition)` | compaction claim: owner, token, lease expiry (ms) |
//! | `(cairn, ag, agent_id)` | a registered agent: address, zone, version, incarnation, lease, load (JSON) |
//! | `(cairn, tok, token_id)` | a bearer token: principal, expiry, salt, salted hash (JSON) |
//! | `(cairn, quota, principal)` | a principal's quotas, `*` for the default (JSON) |
//! | `(cairn, acl, resource_type, pattern_type, pattern, principal, operation, permission)` | an ACL (JSON) |

use foundationdb_tuple::{Subspace, TuplePack, TupleUnpack, pack, unpack};

use crate::MetaError;

const ROOT: &str = "cairn";

fn key<T: TuplePack>(t: T) -> Vec<u8> {
    Subspace::from(ROOT).pack(&t)
}

/// The half-open range of every key under a prefix tuple.
fn range<T: TuplePack>(t: T) -> (Vec<u8>, Vec<u8>) {
    Subspace::from(ROOT).subspace(&t).range()
}

pub(crate) fn acl(
    resource_type: &str,
    pattern_type: &str,
    pattern: &str,
    principal: &str,
    operation: &str,
    permission: &str,
) -> Vec<u8> {
    key((
        "acl",
        resource_type,
        pattern_type,
        pattern,
        principal,
        operation,
        permission,
    ))
}

pub(crate) fn acls() -> (Vec<u8>, Vec<u8>) {
    range(("acl",))
}

pub(crate) fn quota(principal: &str) -> Vec<u8> {
    key(("quota", principal))
}

pub(crate) fn quotas() -> (Vec<u8>, Vec<u8>) {
    range(("quota",))
}

pub(crate) fn token(id: &str) -> Vec<u8> {
    key(("tok", id))
}

pub(crate) fn tokens() -> (Vec<u8>, Vec<u8>) {
    range(("tok",))
}

pub(crate) fn next_topic_id() -> Vec<u8> {
    key(("seq", "topic"))
}

pub(crate) fn topic_name(name: &str) -> Vec<u8> {
    key(("tn", name))
}

pub(crate) fn topic_names() -> (Vec<u8>, Vec<u8>) {
    range(("tn",))
}

pub(crate) fn topic(id: u64) -> Vec<u8> {
    key(("t", id))
}

pub(crate) fn partition(topic_id: u64, partition: u32) -> Vec<u8> {
    key(("p", topic_id, partition))
}

/// The partition's stored-bytes counter (i64 LE, changed only by atomic adds).
pub(crate) fn partition_bytes(topic_id: u64, partition: u32) -> Vec<u8> {
    key(("p", topic_id, partition, "bytes"))
}

/// The partition's index-entry counter (i64 LE, changed only by atomic adds).
pub(crate) fn partition_entries(topic_id: u64, partition: u32) -> Vec<u8> {
    key(("p", topic_id, partition, "entries"))
}

/// Every partition key of a topic: states and their counters.
pub(crate) fn partitions(topic_id: u64) -> (Vec<u8>, Vec<u8>) {
    range(("p", topic_id))
}

pub(crate) fn index(topic_id: u64, partition: u32, end_offset: i64) -> Vec<u8> {
    key(("i", topic_id, partition, end_offset))
}

/// Index keys of one partition with end offset in `[from, ∞)`.
pub(crate) fn index_from(topic_id: u64, partition: u32, from_end: i64) -> (Vec<u8>, Vec<u8>) {
    let (_, end) = range(("i", topic_id, partition));
    (index(topic_id, partition, from_end), end)
}

pub(crate) fn indexes_of_topic(topic_id: u64) -> (Vec<u8>, Vec<u8>) {
    range(("i", topic_id))
}

pub(crate) fn next_compaction_token() -> Vec<u8> {
    key(("seq", "compaction"))
}

pub(crate) fn compaction_claim(topic_id: u64, partition: u32) -> Vec<u8> {
    key(("cc", topic_id, partition))
}

pub(crate) fn object(object_key: &str) -> Vec<u8> {
    key(("o", object_key))
}

/// Every object record from `from` on.
pub(crate) fn objects_from(from: &str) -> (Vec<u8>, Vec<u8>) {
    let (_, end) = range(("o",));
    (object(from), end)
}

pub(crate) fn object_ref(object_key: &str, topic_id: u64, partition: u32, end: i64) -> Vec<u8> {
    key(("oi", object_key, topic_id, partition, end))
}

pub(crate) fn object_refs(object_key: &str) -> (Vec<u8>, Vec<u8>) {
    range(("oi", object_key))
}

pub(crate) fn object_dead(object_key: &str) -> Vec<u8> {
    key(("od", object_key))
}

pub(crate) fn object_result(object_key: &str, chunk: u32) -> Vec<u8> {
    key(("or", object_key, chunk))
}

pub(crate) fn object_results(object_key: &str) -> (Vec<u8>, Vec<u8>) {
    range(("or", object_key))
}

pub(crate) fn next_producer_id() -> Vec<u8> {
    key(("seq", "producer"))
}

pub(crate) fn producer_name(name: &str) -> Vec<u8> {
    key(("pn", name))
}

pub(crate) fn producer(id: u64) -> Vec<u8> {
    key(("pr", id))
}

/// Every producer record with id ≥ `from`.
pub(crate) fn producers_from(from: u64) -> (Vec<u8>, Vec<u8>) {
    let (_, end) = range(("pr",));
    (producer(from), end)
}

pub(crate) fn producer_partition(id: u64, topic_id: u64, partition: u32) -> Vec<u8> {
    key(("ps", id, topic_id, partition))
}

/// Every per-partition state of one producer.
pub(crate) fn producer_partitions(id: u64) -> (Vec<u8>, Vec<u8>) {
    range(("ps", id))
}

/// Every per-partition producer state from `(id, topic_id, partition)` on.
pub(crate) fn producer_partitions_from(
    id: u64,
    topic_id: u64,
    partition: u32,
) -> (Vec<u8>, Vec<u8>) {
    let (_, end) = range(("ps",));
    (producer_partition(id, topic_id, partition), end)
}

/// The store's format marker: written when Cairn creates a store, so that a store without
/// it (a truncated or replaced file) is not taken for a new, empty cluster.
pub(crate) fn format_marker() -> Vec<u8> {
    key(("cairn", "format"))
}

/// The format marker's value.
pub(crate) const FORMAT: &[u8] = b"cairn-metadata 1";

pub(crate) fn next_member_id() -> Vec<u8> {
    key(("seq", "member"))
}

pub(crate) fn group(name: &str) -> Vec<u8> {
    key(("cg", name))
}

pub(crate) fn groups() -> (Vec<u8>, Vec<u8>) {
    range(("cg",))
}

pub(crate) fn group_heartbeat(group: &str, member: &str) -> Vec<u8> {
    key(("cgh", group, member))
}

pub(crate) fn group_heartbeats(group: &str) -> (Vec<u8>, Vec<u8>) {
    range(("cgh", group))
}

pub(crate) fn group_offset(group: &str, topic_id: u64, partition: u32) -> Vec<u8> {
    key(("co", group, topic_id, partition))
}

pub(crate) fn group_offsets(group: &str) -> (Vec<u8>, Vec<u8>) {
    range(("co", group))
}

pub(crate) fn share_group(name: &str) -> Vec<u8> {
    key(("sg", name))
}

pub(crate) fn share_groups() -> (Vec<u8>, Vec<u8>) {
    range(("sg",))
}

pub(crate) fn share_partition(group: &str, topic_id: u64, partition: u32) -> Vec<u8> {
    key(("sp", group, topic_id, partition))
}

/// A registered agent.
pub(crate) fn agent(id: &str) -> Vec<u8> {
    key(("ag", id))
}

/// Every registered agent.
pub(crate) fn agents() -> (Vec<u8>, Vec<u8>) {
    range(("ag",))
}

/// Encodes a value tuple.
pub(crate) fn value<T: TuplePack>(t: &T) -> Vec<u8> {
    pack(t)
}

/// Decodes a value tuple, naming the key on failure.
pub(crate) fn decode<'de, T: TupleUnpack<'de>>(
    what: &str,
    bytes: &'de [u8],
) -> Result<T, MetaError> {
    unpack(bytes).map_err(|e| MetaError::corrupt(what, e))
}

/// Reads the little-endian i64 that `atomic_add` maintains (short values are zero-padded,
/// as FoundationDB does).
pub(crate) fn decode_i64_le(bytes: &[u8]) -> i64 {
    let mut buf = [0u8; 8];
    let n = bytes.len().min(8);
    buf[..n].copy_from_slice(&bytes[..n]);
    i64::from_le_bytes(buf)
}
