//! Sharding without coordination: each replica handles the clusters whose
//! `namespace/name` hashes to its index, so N replicas split the work with no protocol
//! between them. The hash must be stable across builds and versions (every replica must
//! agree), hence FNV-1a rather than std's randomized hasher.

use std::str::FromStr;

use crate::fake::stable_hash;

/// This replica's part of the clusters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Default for Shard {
    /// The only shard: everything.
    fn default() -> Self {
        Self { index: 0, count: 1 }
    }
}

impl Shard {
    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "shard index {index} is not in 0..{count} (--shard-index, --shard-count)"
            ));
        }
        Ok(Self { index, count })
    }

    pub fn is_sharded(&self) -> bool {
        self.count > 1
    }

    /// The shard of the cluster `namespace/cluster`.
    pub fn of(namespace: &str, cluster: &str, count: u32) -> u32 {
        let key = format!("{namespace}/{cluster}");
        // FNV-1a alone avalanches poorly: names differing in their last characters (as
        // cluster names do) keep the same low and high bits, which put every cluster in a
        // few shards. murmur3's finalizer mixes it; multiply-shift then maps the 64 bits
        // onto 0..count evenly.
        ((u128::from(stable_hash(&key)) * u128::from(count.max(1))) >> 64) as u32
    }

    /// Whether this replica handles a Metal3Machine of `cluster` in `namespace`. One
    /// without a cluster yet goes to shard 0, so that its problem is reported once.
    pub fn owns(&self, namespace: &str, cluster: Option<&str>) -> bool {
        match cluster {
            Some(c) if !c.is_empty() => Self::of(namespace, c, self.count) == self.index,
            _ => self.index == 0,
        }
    }
}

/// `I/N`, or a StatefulSet Pod name ending in `-I` with the count given apart.
impl FromStr for Shard {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not INDEX/COUNT"))?;
        let parse = |v: &str| v.parse::<u32>().map_err(|e| format!("{s:?}: {e}"));
        Self::new(parse(i)?, parse(n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::fnv1a;

    #[test]
    fn the_hash_is_fnv1a() {
        // Published FNV-1a 64 test vectors: a changed hash would move clusters between
        // shards of replicas running different builds.
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a("foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn every_cluster_has_exactly_one_owner_and_shards_are_balanced() {
        let count = 4;
        let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).unwrap()).collect();
        let mut per_shard = [0usize; 4];
        for c in 0..1000 {
            let cluster = format!("cluster-{c:04}");
            let owners: Vec<_> = shards
                .iter()
                .filter(|s| s.owns(&cluster, Some(&cluster)))
                .collect();
            assert_eq!(owners.len(), 1, "{cluster}");
            per_shard[owners[0].index as usize] += 1;
        }
        for n in per_shard {
            assert!((200..300).contains(&n), "unbalanced: {per_shard:?}");
        }
        // Names that differ only at the end still spread.
        let two: Vec<u32> = (0..24)
            .map(|c| Shard::of("shards-0", &format!("shards-0-c{c}"), 2))
            .collect();
        assert!(two.contains(&0) && two.contains(&1), "{two:?}");
        // Unknown cluster: shard 0 only.
        assert!(shards[0].owns("ns", None) && !shards[1].owns("ns", Some("")));
        assert!(Shard::default().owns("any", Some("thing")));
    }

    #[test]
    fn shard_flags_parse_and_are_checked() {
        assert_eq!("1/3".parse::<Shard>(), Ok(Shard { index: 1, count: 3 }));
        assert!("3/3".parse::<Shard>().is_err());
        assert!("0/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }
}
