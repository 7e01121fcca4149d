//! Rendezvous (highest random weight) hashing, the rule that places work on agents: a
//! client sends a partition's fetches to the agent with the highest score for it (see the
//! proto's `AgentInfo`), and the agents of a zone give each object chunk of the zone read
//! cache to the agent with the highest score for it (see `peer.proto`). Adding or removing
//! an agent moves only what it wins or held.

/// 64-bit FNV-1a.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// MurmurHash3's 64-bit finalizer: FNV-1a alone barely separates ids that differ in one
/// character.
fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

/// The score of `agent` for the item (`name`, `index`): `fmix64(fnv1a64("<agent>\n<name>\n
/// <index>"))`, the index in decimal. A partition is (topic, partition number); an object
/// chunk is (object key, chunk index). The item goes to the agent with the highest score.
pub fn rendezvous_score(agent: &str, name: &str, index: u64) -> u64 {
    fmix64(fnv1a64(format!("{agent}\n{name}\n{index}").as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_and_the_score_match_their_definitions() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        assert_eq!(
            rendezvous_score("agent-1", "orders", 3),
            fmix64(fnv1a64(b"agent-1\norders\n3"))
        );
    }
}
