//! Rendezvous (highest random weight) hashing, the rule that places work on agents: a
//! client sends a partition's fetches to the agent with the highest score for it (see the
//! proto's `AgentInfo`), and the agents of a zone give each object chunk of the zone read
//! cache to the agent with the highest score for it (see `peer.proto`). Adding or removing
//! an agent moves only what it wins or held.
//!
//! A topic's partitions are few, so the highest score alone can split them unevenly (12
//! partitions over two agents: 10 and 2 for some topic names). [`balanced_owners`] caps each
//! agent at ⌈partitions / agents⌉, still by score, so the split is even and adding an agent
//! moves about its share, most of it to the new agent.

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

/// The owner of each of a topic's `partitions` among `agents` (indexes into `agents`), every
/// agent owning at most ⌈partitions / agents⌉: the (partition, agent) pairs are taken in
/// descending [`rendezvous_score`] (ties: the smaller agent id first), each pair assigning
/// its partition when the partition has no owner yet and the agent is under the cap. Empty
/// when `agents` is.
pub fn balanced_owners(agents: &[&str], topic: &str, partitions: u32) -> Vec<usize> {
    if agents.is_empty() {
        return Vec::new();
    }
    let count = partitions as usize;
    let cap = count.div_ceil(agents.len());
    let mut pairs: Vec<(u64, usize, u32)> = Vec::with_capacity(count * agents.len());
    for p in 0..partitions {
        for (i, a) in agents.iter().enumerate() {
            pairs.push((rendezvous_score(a, topic, u64::from(p)), i, p));
        }
    }
    pairs.sort_unstable_by(|x, y| {
        y.0.cmp(&x.0)
            .then_with(|| agents[x.1].cmp(agents[y.1]))
            .then_with(|| x.2.cmp(&y.2))
    });
    let mut owner = vec![usize::MAX; count];
    let mut owned = vec![0usize; agents.len()];
    let mut left = count;
    for (_, agent, p) in pairs {
        if left == 0 {
            break;
        }
        let slot = &mut owner[p as usize];
        if *slot == usize::MAX && owned[agent] < cap {
            *slot = agent;
            owned[agent] += 1;
            left -= 1;
        }
    }
    owner
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_owners_split_evenly_and_a_new_agent_takes_about_its_share() {
        // By the highest score alone, "hosts" puts 10 of 12 partitions on a3.
        let plain = (0..12)
            .filter(|&p| rendezvous_score("a3", "hosts", p) > rendezvous_score("a2", "hosts", p))
            .count();
        assert_eq!(plain, 10);
        let two = balanced_owners(&["a2", "a3"], "hosts", 12);
        assert_eq!(two.iter().filter(|&&i| i == 1).count(), 6);
        // Over many topics: never more than the cap, and a fourth agent moves little.
        let (mut moved, mut to_new, mut total) = (0, 0, 0);
        for t in 0..100 {
            let topic = format!("topic-{t}");
            for partitions in [1u32, 7, 12, 48] {
                let before = balanced_owners(&["a", "b", "c"], &topic, partitions);
                let after = balanced_owners(&["a", "b", "c", "d"], &topic, partitions);
                for (owners, n) in [(&before, 3usize), (&after, 4)] {
                    assert_eq!(owners.len(), partitions as usize);
                    for agent in 0..n {
                        let k = owners.iter().filter(|&&i| i == agent).count();
                        assert!(
                            k <= (partitions as usize).div_ceil(n),
                            "{topic}: {owners:?}"
                        );
                    }
                }
                for (b, a) in before.iter().zip(&after) {
                    total += 1;
                    if b != a {
                        moved += 1;
                        to_new += usize::from(*a == 3);
                    }
                }
            }
        }
        // Ideal: a quarter moves, all of it to d.
        assert!(moved * 100 <= total * 35, "{moved} of {total} moved");
        assert!(
            to_new * 100 >= moved * 75,
            "{to_new} of {moved} moves went to d"
        );
        assert!(balanced_owners(&[], "t", 3).is_empty());
        assert!(balanced_owners(&["a"], "t", 0).is_empty());
    }

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
