//! The short prefix that keeps one workload cluster's names apart from every other's in
//! the backing server.
//!
//! Prefixes have a fixed length and no `-`, so `<prefix>-<name>` splits back in exactly
//! one way: two clusters' mapped names can never be equal, whatever the names.
//!
//! A prefix belongs to one Cluster *incarnation*, identified by its UID. A Cluster deleted
//! and recreated under the same namespace/name has a new UID, so it gets a new prefix and
//! starts empty, while the old prefix stays recorded (and so is never handed out again)
//! until the caller has removed its objects and retires it. The candidate for a UID is
//! computed deterministically, but what is recorded always wins over what is computed:
//! the record is the truth, the hash only a good first guess.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Characters in a prefix: a lowercase letter, then lowercase letters or digits.
pub const PREFIX_LEN: usize = 6;

/// How many candidates `allocate` tries before it gives up. With 36^5 (60 million) values
/// and a few thousand clusters, needing more than a handful means the record is wrong.
pub const MAX_ATTEMPTS: u32 = 64;

/// The letter every computed prefix starts with: a backing name starting with it and a
/// `-` at position 6 is recognisably the front's.
const LEAD: char = 't';

/// A validated cluster prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix(String);

impl Prefix {
    /// Reads a prefix from a record (or a backing name); refuses anything of another shape.
    pub fn parse(value: &str) -> Result<Prefix> {
        let bytes = value.as_bytes();
        let valid = bytes.len() == PREFIX_LEN
            && bytes[0].is_ascii_lowercase()
            && bytes[1..]
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if valid {
            Ok(Prefix(value.to_string()))
        } else {
            Err(Error::InvalidPrefix {
                value: value.to_string(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for Prefix {
    type Error = Error;
    fn try_from(value: String) -> Result<Prefix> {
        Prefix::parse(&value)
    }
}

impl From<Prefix> for String {
    fn from(prefix: Prefix) -> String {
        prefix.0
    }
}

/// Which CAPI Cluster a prefix belongs to. The UID decides identity (a recreated Cluster
/// is another incarnation); namespace and name say which Cluster it was, for people and
/// for spotting superseded incarnations.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ClusterKey {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ClusterKey {
    fn validate(&self) -> Result<()> {
        for (field, value) in [
            ("namespace", &self.namespace),
            ("name", &self.name),
            ("uid", &self.uid),
        ] {
            if value.is_empty() {
                return Err(Error::InvalidClusterKey {
                    field,
                    message: "is empty",
                });
            }
        }
        Ok(())
    }

    fn same_name(&self, other: &ClusterKey) -> bool {
        self.namespace == other.namespace && self.name == other.name
    }
}

impl fmt::Display for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{} (uid {})", self.namespace, self.name, self.uid)
    }
}

/// The outcome of `allocate`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allocation {
    /// The prefix this Cluster incarnation uses.
    pub prefix: Prefix,
    /// False when the prefix is new: the caller must record it before using it.
    pub recorded: bool,
    /// Prefixes recorded for earlier incarnations of a Cluster of the same namespace/name:
    /// their objects are to be removed from the backing server and the prefixes retired.
    pub superseded: Vec<Prefix>,
}

/// Gives a Cluster its prefix: the recorded one if its UID has one, otherwise the first
/// computed candidate that no record holds (superseded incarnations included, so a
/// recreated Cluster never sees its predecessor's objects).
pub fn allocate(
    cluster: &ClusterKey,
    recorded: &BTreeMap<Prefix, ClusterKey>,
) -> Result<Allocation> {
    allocate_within(cluster, recorded, MAX_ATTEMPTS)
}

fn allocate_within(
    cluster: &ClusterKey,
    recorded: &BTreeMap<Prefix, ClusterKey>,
    attempts: u32,
) -> Result<Allocation> {
    cluster.validate()?;
    let superseded: Vec<Prefix> = recorded
        .iter()
        .filter(|(_, owner)| owner.same_name(cluster) && owner.uid != cluster.uid)
        .map(|(prefix, _)| prefix.clone())
        .collect();
    let own: Vec<&Prefix> = recorded
        .iter()
        .filter(|(_, owner)| owner.uid == cluster.uid)
        .map(|(prefix, _)| prefix)
        .collect();
    match own.as_slice() {
        [prefix] => {
            return Ok(Allocation {
                prefix: (*prefix).clone(),
                recorded: true,
                superseded,
            });
        }
        [] => {}
        several => {
            return Err(Error::ConflictingAllocations {
                cluster: cluster.to_string(),
                prefixes: several
                    .iter()
                    .map(|p| p.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    (0..attempts)
        .map(|attempt| candidate(&cluster.uid, attempt))
        .find(|prefix| !recorded.contains_key(prefix))
        .map(|prefix| Allocation {
            prefix,
            recorded: false,
            superseded,
        })
        .ok_or_else(|| Error::NoFreePrefix {
            cluster: cluster.to_string(),
            attempts,
        })
}

/// The `attempt`-th candidate for a UID: stable across releases and machines, since a
/// front that restarts before recording must compute the same first guess.
pub(crate) fn candidate(uid: &str, attempt: u32) -> Prefix {
    // FNV-1a over the UID and the attempt, then a splitmix64 finaliser to spread the bits.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in uid.bytes().chain([0xff]).chain(attempt.to_le_bytes()) {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut value = String::with_capacity(PREFIX_LEN);
    value.push(LEAD);
    for _ in 1..PREFIX_LEN {
        value.push(char::from(DIGITS[(hash % 36) as usize]));
        hash /= 36;
    }
    Prefix(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(name: &str, uid: &str) -> ClusterKey {
        ClusterKey {
            namespace: "metal3".into(),
            name: name.into(),
            uid: uid.into(),
        }
    }

    #[test]
    fn a_new_cluster_gets_its_first_candidate_and_must_record_it() {
        let allocation = allocate(&key("test1", "u1"), &BTreeMap::new()).unwrap();
        assert_eq!(allocation.prefix, candidate("u1", 0));
        assert!(!allocation.recorded);
        assert!(allocation.superseded.is_empty());
        assert_eq!(allocation.prefix.as_str().len(), PREFIX_LEN);
        assert!(allocation.prefix.as_str().starts_with('t'));
    }

    #[test]
    fn the_candidate_is_stable() {
        // A front restarted before recording must guess the same prefix again.
        assert_eq!(candidate("u1", 0), candidate("u1", 0));
        assert_ne!(candidate("u1", 0), candidate("u1", 1));
        assert_ne!(candidate("u1", 0), candidate("u2", 0));
    }

    #[test]
    fn a_recorded_prefix_wins_over_the_computed_one() {
        let recorded = BTreeMap::from([(Prefix::parse("zzzzzz").unwrap(), key("test1", "u1"))]);
        let allocation = allocate(&key("test1", "u1"), &recorded).unwrap();
        assert_eq!(allocation.prefix.as_str(), "zzzzzz");
        assert!(allocation.recorded);
    }

    #[test]
    fn a_taken_candidate_is_skipped() {
        let recorded = BTreeMap::from([(candidate("u1", 0), key("other", "u9"))]);
        let allocation = allocate(&key("test1", "u1"), &recorded).unwrap();
        assert_eq!(allocation.prefix, candidate("u1", 1));
    }

    #[test]
    fn a_cluster_recreated_under_the_same_name_starts_empty() {
        let old = allocate(&key("test1", "old-uid"), &BTreeMap::new()).unwrap();
        let mut recorded = BTreeMap::from([(old.prefix.clone(), key("test1", "old-uid"))]);
        let new = allocate(&key("test1", "new-uid"), &recorded).unwrap();
        assert_ne!(new.prefix, old.prefix);
        assert!(!new.recorded);
        assert_eq!(new.superseded, vec![old.prefix.clone()]);
        // Once the old objects are gone the caller retires the old prefix; the new stays.
        recorded.remove(&old.prefix);
        recorded.insert(new.prefix.clone(), key("test1", "new-uid"));
        let again = allocate(&key("test1", "new-uid"), &recorded).unwrap();
        assert_eq!(again.prefix, new.prefix);
        assert!(again.recorded && again.superseded.is_empty());
    }

    #[test]
    fn no_free_prefix_is_an_error() {
        let recorded: BTreeMap<_, _> = (0..3)
            .map(|attempt| {
                (
                    candidate("u1", attempt),
                    key("other", &format!("o{attempt}")),
                )
            })
            .collect();
        let err = allocate_within(&key("test1", "u1"), &recorded, 3).unwrap_err();
        assert_eq!(err.reason(), "no_free_prefix");
        assert!(err.to_string().contains("metal3/test1"), "{err}");
    }

    #[test]
    fn two_prefixes_for_one_uid_are_an_error() {
        let recorded = BTreeMap::from([
            (Prefix::parse("taaaaa").unwrap(), key("test1", "u1")),
            (Prefix::parse("tbbbbb").unwrap(), key("test1", "u1")),
        ]);
        let err = allocate(&key("test1", "u1"), &recorded).unwrap_err();
        assert_eq!(err.reason(), "conflicting_allocations");
    }

    #[test]
    fn an_incomplete_key_is_an_error() {
        let err = allocate(&key("test1", ""), &BTreeMap::new()).unwrap_err();
        assert_eq!(
            err,
            Error::InvalidClusterKey {
                field: "uid",
                message: "is empty"
            }
        );
    }

    #[test]
    fn prefixes_of_another_shape_are_refused() {
        for bad in [
            "", "t1234", "t123456", "T12345", "1abcde", "t-2345", "tabcd_",
        ] {
            assert_eq!(
                Prefix::parse(bad).unwrap_err().reason(),
                "invalid_prefix",
                "{bad}"
            );
        }
        assert!(serde_json::from_str::<Prefix>("\"t-2345\"").is_err());
        let p: Prefix = serde_json::from_str("\"t0a9zz\"").unwrap();
        assert_eq!(serde_json::to_string(&p).unwrap(), "\"t0a9zz\"");
    }

    proptest! {
        #[test]
        fn candidates_are_valid_prefixes(uid in ".{0,40}", attempt in 0u32..1000) {
            let p = candidate(&uid, attempt);
            prop_assert_eq!(Prefix::parse(p.as_str()), Ok(p.clone()));
        }

        #[test]
        fn allocations_never_reuse_a_recorded_prefix(
            uids in proptest::collection::btree_set("[a-f0-9-]{8,36}", 1..40),
        ) {
            let mut recorded = BTreeMap::new();
            for (i, uid) in uids.iter().enumerate() {
                let cluster = key(&format!("c{}", i % 5), uid);
                let allocation = allocate(&cluster, &recorded).unwrap();
                prop_assert!(!allocation.recorded);
                prop_assert!(!recorded.contains_key(&allocation.prefix));
                recorded.insert(allocation.prefix, cluster);
            }
            prop_assert_eq!(recorded.len(), uids.len());
        }
    }
}
