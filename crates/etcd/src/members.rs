//! The membership of one fake etcd cluster, derived from plain data so that every replica of
//! the controller answers alike.
//!
//! What the KubeadmControlPlane controller (Cluster API v1.13, `controlplane/kubeadm/internal`)
//! needs from these answers:
//! - Member names are Node names: conditions look members up by `Machine.status.nodeRef.name`
//!   (`workload_cluster_conditions.go`, `etcd/util`), and `forLeader` refuses a leader whose
//!   name is not a Node (`etcd_client_generator.go`). So a member is named after its node.
//! - A learner member is reported unhealthy ("waiting for learner etcd member to be
//!   promoted"): members here are never learners.
//! - The leader is the `Status.leader` of the member KCP connects to; it must be the ID of a
//!   listed member, or `forLeader` fails. So whenever a member exists, exactly one is leader.
//! - KCP reads the member list from one member only and does not compare cluster IDs across
//!   members; still, every member reports the same list and cluster ID, as a real cluster does.
//! - `RemoveEtcdMember` lists members, returns early when the ID is gone, refuses to remove the
//!   last member, then calls `MemberRemove`; `ForwardEtcdLeadership` calls `MoveLeader` on the
//!   leader's member. Both must change what every member reports afterwards, so a decision is
//!   returned as a [`Change`] for the caller to store where all replicas read it.

use std::collections::BTreeSet;

/// What is known of one control-plane node that hosts (or hosted) a member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Candidate {
    /// The Node name, which is also the member name.
    pub node: String,
    /// The host in the member URLs (an address, as kubeadm writes); the node name if unset.
    pub address: Option<String>,
    /// Set once `MemberRemove` removed this member: a removed member stays removed.
    pub removed: bool,
    /// The marker stored by the last `MoveLeader` to this member; the latest one wins.
    pub leader_since: Option<u64>,
}

impl Candidate {
    /// A present member with no stored facts.
    pub fn new(node: impl Into<String>) -> Self {
        Self {
            node: node.into(),
            ..Self::default()
        }
    }
}

/// One member as etcd lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
    pub is_learner: bool,
}

/// The cluster as every member reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    pub cluster_id: u64,
    /// Present members, ordered by name so that lists read the same everywhere.
    pub members: Vec<Member>,
    /// `None` only when no member is present (etcd's "no leader").
    pub leader_id: Option<u64>,
    /// Grows with each recorded leader move; KCP does not read it.
    pub raft_term: u64,
    /// The latest leader marker among present members, so a new one can be later.
    pub latest_leader_marker: Option<u64>,
}

/// What to store so that all replicas see a decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Record `since` as the leader marker of `node`.
    MarkLeader { node: String, since: u64 },
    /// Record that the member of `node` was removed.
    MarkRemoved { node: String },
}

/// A request etcd would refuse, named after etcd's errors (`api/v3rpc/rpctypes/error.go`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `MoveLeader` sent to a member that is not the leader.
    #[error("etcdserver: not leader")]
    NotLeader,
    /// `MoveLeader` to an ID that is no (voting) member.
    #[error("etcdserver: bad leader transferee")]
    BadLeaderTransferee,
    /// `MemberRemove` of an unknown or already removed ID.
    #[error("etcdserver: member not found")]
    MemberNotFound,
    /// `MemberRemove` that would leave fewer started members than a quorum (the last one).
    #[error("etcdserver: re-configuration failed due to not enough started members")]
    NotEnoughStartedMembers,
    /// The answering member was removed: a real one would have stopped.
    #[error("etcdserver: server stopped")]
    Stopped,
}

/// 64-bit FNV-1a: documented, stable across builds and platforms, no keys to keep.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash = OFFSET;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            // A separator keeps ("ab", "c") and ("a", "bc") apart.
            hash ^= 0xff;
            hash = hash.wrapping_mul(PRIME);
        }
        for byte in *part {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    hash
}

/// etcd reserves 0 for "none" (no member, no leader), so a hash of 0 is moved to 1.
fn non_zero(hash: u64) -> u64 {
    hash.max(1)
}

/// The cluster ID: depends on the cluster key only.
pub fn cluster_id(cluster_key: &str) -> u64 {
    non_zero(fnv1a(&[b"cluster", cluster_key.as_bytes()]))
}

/// A member ID: depends on the cluster key and node name only, so it survives other members
/// coming and going and every replica computes the same.
pub fn member_id(cluster_key: &str, node: &str) -> u64 {
    non_zero(fnv1a(&[b"member", cluster_key.as_bytes(), node.as_bytes()]))
}

impl View {
    /// The view of the cluster `cluster_key` given what is known of its nodes.
    ///
    /// Duplicate node names count once (the first wins). The leader is the present member
    /// with the latest leader marker (ties to the smaller name), else the first by name.
    pub fn derive(cluster_key: &str, candidates: &[Candidate]) -> View {
        let mut seen = BTreeSet::new();
        let mut present: Vec<&Candidate> = candidates
            .iter()
            .filter(|c| seen.insert(c.node.as_str()))
            .filter(|c| !c.removed)
            .collect();
        present.sort_by(|a, b| a.node.cmp(&b.node));

        let leader = present
            .iter()
            .filter_map(|c| c.leader_since.map(|since| (since, *c)))
            // Latest marker first; on a tie the smaller name, as the list is sorted by name.
            .max_by(|(a, ca), (b, cb)| a.cmp(b).then_with(|| cb.node.cmp(&ca.node)))
            .map(|(_, c)| c)
            .or_else(|| present.first().copied());
        let latest_leader_marker = present.iter().filter_map(|c| c.leader_since).max();
        let moves = present.iter().filter(|c| c.leader_since.is_some()).count();

        View {
            cluster_id: cluster_id(cluster_key),
            members: present
                .iter()
                .map(|c| {
                    let host = c.address.as_deref().unwrap_or(&c.node);
                    Member {
                        id: member_id(cluster_key, &c.node),
                        name: c.node.clone(),
                        peer_urls: vec![format!("https://{}", join_host_port(host, 2380))],
                        client_urls: vec![format!("https://{}", join_host_port(host, 2379))],
                        is_learner: false,
                    }
                })
                .collect(),
            leader_id: leader.map(|c| member_id(cluster_key, &c.node)),
            raft_term: 2 + u64::try_from(moves).unwrap_or(u64::MAX - 2),
            latest_leader_marker,
        }
    }

    pub fn member(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn member_named(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The leader member, if any member is present.
    pub fn leader(&self) -> Option<&Member> {
        self.leader_id.and_then(|id| self.member(id))
    }

    /// `MoveLeader(target_id)` asked of the member `local`. `now` is a marker candidate (e.g.
    /// a clock); the stored marker is made later than any present one regardless.
    ///
    /// `Ok(None)` when the target already leads, which etcd also accepts without change.
    pub fn move_leader(
        &self,
        local: &str,
        target_id: u64,
        now: u64,
    ) -> Result<Option<Change>, Refusal> {
        let local = self.member_named(local).ok_or(Refusal::Stopped)?;
        if Some(local.id) != self.leader_id {
            return Err(Refusal::NotLeader);
        }
        let target = self
            .member(target_id)
            .filter(|m| !m.is_learner)
            .ok_or(Refusal::BadLeaderTransferee)?;
        if Some(target.id) == self.leader_id {
            return Ok(None);
        }
        let since = match self.latest_leader_marker {
            Some(latest) => now.max(latest.saturating_add(1)),
            None => now,
        };
        Ok(Some(Change::MarkLeader {
            node: target.name.clone(),
            since,
        }))
    }

    /// `MemberRemove(id)` asked of the member `local`. Removing the leader is allowed, as in
    /// etcd: the next leader follows from the remaining members.
    pub fn remove_member(&self, local: &str, id: u64) -> Result<Change, Refusal> {
        if self.member_named(local).is_none() {
            return Err(Refusal::Stopped);
        }
        // etcd checks the quorum of the remaining started members before the ID itself.
        let remaining = self.members.iter().filter(|m| m.id != id).count();
        if remaining == 0 {
            return Err(Refusal::NotEnoughStartedMembers);
        }
        let member = self.member(id).ok_or(Refusal::MemberNotFound)?;
        Ok(Change::MarkRemoved {
            node: member.name.clone(),
        })
    }

    /// The members left once `id` is removed, as `MemberRemove` answers.
    pub fn members_without(&self, id: u64) -> Vec<Member> {
        self.members
            .iter()
            .filter(|m| m.id != id)
            .cloned()
            .collect()
    }
}

/// Brackets IPv6 literals, as URLs need.
fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl Candidate {
    /// Applies a change to the stored facts, as the caller would when persisting it.
    pub fn apply(candidates: &mut [Candidate], change: &Change) {
        match change {
            Change::MarkLeader { node, since } => {
                if let Some(c) = candidates.iter_mut().find(|c| &c.node == node) {
                    c.leader_since = Some(*since);
                }
            }
            Change::MarkRemoved { node } => {
                if let Some(c) = candidates.iter_mut().find(|c| &c.node == node) {
                    c.removed = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: &str = "6f1c0f43-uid";

    fn nodes(names: &[&str]) -> Vec<Candidate> {
        names.iter().map(|n| Candidate::new(*n)).collect()
    }

    #[test]
    fn fnv1a_matches_the_reference_vectors() {
        // From the FNV reference test suite.
        assert_eq!(fnv1a(&[b""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(&[b"a"]), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(&[b"foobar"]), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn ids_are_pinned_so_a_change_of_hash_is_noticed() {
        // Stored markers and running KCPs hold these IDs; they must not change across builds.
        assert_eq!(member_id("k", "n"), member_id("k", "n"));
        assert_ne!(member_id("k", "n"), member_id("kn", ""));
        assert_ne!(cluster_id("k"), member_id("k", ""));
        assert_eq!(member_id("k", "n"), 0x4747_a7d6_43d1_8e28);
        assert_eq!(cluster_id("k"), 0x02ed_ff90_8fb6_0b47);
    }

    #[test]
    fn default_leader_is_first_by_name_and_members_are_sorted() {
        let view = View::derive(KEY, &nodes(&["cp-b", "cp-a", "cp-c"]));
        let names: Vec<_> = view.members.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["cp-a", "cp-b", "cp-c"]);
        assert_eq!(view.leader().map(|m| m.name.as_str()), Some("cp-a"));
        assert!(view.members.iter().all(|m| !m.is_learner));
    }

    #[test]
    fn no_members_no_leader() {
        let view = View::derive(KEY, &[]);
        assert!(view.members.is_empty());
        assert_eq!(view.leader_id, None);
    }

    #[test]
    fn urls_use_the_address_when_known() {
        let mut c = Candidate::new("cp-a");
        c.address = Some("fd00::1".into());
        let view = View::derive(KEY, &[c, Candidate::new("cp-b")]);
        assert_eq!(view.members[0].peer_urls, ["https://[fd00::1]:2380"]);
        assert_eq!(view.members[0].client_urls, ["https://[fd00::1]:2379"]);
        assert_eq!(view.members[1].client_urls, ["https://cp-b:2379"]);
    }

    #[test]
    fn move_leader_follows_etcd_rules() {
        let view = View::derive(KEY, &nodes(&["a", "b"]));
        let a = member_id(KEY, "a");
        let b = member_id(KEY, "b");
        assert_eq!(view.move_leader("b", a, 5), Err(Refusal::NotLeader));
        assert_eq!(
            view.move_leader("a", 12345, 5),
            Err(Refusal::BadLeaderTransferee)
        );
        assert_eq!(view.move_leader("a", a, 5), Ok(None));
        assert_eq!(view.move_leader("gone", b, 5), Err(Refusal::Stopped));
        assert_eq!(
            view.move_leader("a", b, 5),
            Ok(Some(Change::MarkLeader {
                node: "b".into(),
                since: 5
            }))
        );
    }

    #[test]
    fn a_new_marker_is_later_than_a_skewed_clock() {
        let mut cs = nodes(&["a", "b"]);
        cs[1].leader_since = Some(100);
        let view = View::derive(KEY, &cs);
        let a = member_id(KEY, "a");
        let change = view.move_leader("b", a, 7);
        assert_eq!(
            change,
            Ok(Some(Change::MarkLeader {
                node: "a".into(),
                since: 101
            }))
        );
    }

    #[test]
    fn remove_member_follows_etcd_rules() {
        let view = View::derive(KEY, &nodes(&["a", "b"]));
        let a = member_id(KEY, "a");
        assert_eq!(view.remove_member("a", 1), Err(Refusal::MemberNotFound));
        assert_eq!(
            view.remove_member("b", a),
            Ok(Change::MarkRemoved { node: "a".into() })
        );
        let single = View::derive(KEY, &nodes(&["a"]));
        assert_eq!(
            single.remove_member("a", a),
            Err(Refusal::NotEnoughStartedMembers)
        );
        assert_eq!(single.remove_member("a", 1), Err(Refusal::MemberNotFound));
        assert_eq!(view.members_without(a).len(), 1);
    }

    #[test]
    fn removing_the_leader_hands_leadership_on() {
        let mut cs = nodes(&["a", "b", "c"]);
        cs[0].leader_since = Some(1);
        cs[2].leader_since = Some(3);
        let view = View::derive(KEY, &cs);
        assert_eq!(view.leader().map(|m| m.name.as_str()), Some("c"));
        let change = view.remove_member("a", member_id(KEY, "c"));
        let Ok(change) = change else {
            panic!("removal refused: {change:?}");
        };
        Candidate::apply(&mut cs, &change);
        let after = View::derive(KEY, &cs);
        assert_eq!(after.leader().map(|m| m.name.as_str()), Some("a"));
        assert_eq!(after.members.len(), 2);
    }

    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        prop::collection::vec(
            ("[a-z0-9-]{1,12}", any::<bool>(), prop::option::of(0u64..20)),
            0..8,
        )
        .prop_map(|raw| {
            raw.into_iter()
                .map(|(node, removed, leader_since)| Candidate {
                    node,
                    address: None,
                    removed,
                    leader_since,
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn ids_are_unique_non_zero_and_independent_of_others(cs in candidates(), key in "[a-f0-9-]{1,36}") {
            let view = View::derive(&key, &cs);
            let ids: BTreeSet<u64> = view.members.iter().map(|m| m.id).collect();
            prop_assert_eq!(ids.len(), view.members.len());
            prop_assert!(!ids.contains(&0));
            prop_assert_ne!(view.cluster_id, 0);
            for m in &view.members {
                let alone = View::derive(&key, &[Candidate::new(m.name.clone())]);
                prop_assert_eq!(alone.members[0].id, m.id);
                prop_assert_eq!(alone.cluster_id, view.cluster_id);
            }
        }

        #[test]
        fn exactly_one_leader_whenever_a_member_is_present(cs in candidates()) {
            let view = View::derive(KEY, &cs);
            match view.leader() {
                Some(leader) => prop_assert!(view.members.iter().any(|m| m.id == leader.id)),
                None => prop_assert!(view.members.is_empty()),
            }
            prop_assert!(view.members.is_empty() || view.leader().is_some());
        }

        #[test]
        fn order_of_input_does_not_matter(cs in candidates()) {
            let mut reversed = cs.clone();
            reversed.reverse();
            // Duplicates resolve to the first occurrence, so only compare duplicate-free input.
            let names: BTreeSet<_> = cs.iter().map(|c| c.node.clone()).collect();
            prop_assume!(names.len() == cs.len());
            prop_assert_eq!(View::derive(KEY, &cs), View::derive(KEY, &reversed));
        }

        #[test]
        fn removed_members_are_gone(cs in candidates()) {
            let view = View::derive(KEY, &cs);
            for c in &cs {
                let first = cs.iter().find(|o| o.node == c.node);
                let removed = first.is_some_and(|f| f.removed);
                prop_assert_eq!(view.member_named(&c.node).is_none(), removed);
            }
        }

        #[test]
        fn leader_moves_and_removals_are_reflected(cs in candidates(), pick in any::<prop::sample::Index>(), now in 0u64..40) {
            let names: BTreeSet<_> = cs.iter().map(|c| c.node.clone()).collect();
            prop_assume!(names.len() == cs.len());
            let view = View::derive(KEY, &cs);
            prop_assume!(!view.members.is_empty());
            let target = pick.get(&view.members).clone();
            let Some(leader) = view.leader().cloned() else {
                return Err(TestCaseError::fail("no leader"));
            };

            let mut moved = cs.clone();
            if let Ok(Some(change)) = view.move_leader(&leader.name, target.id, now) {
                Candidate::apply(&mut moved, &change);
            }
            let after = View::derive(KEY, &moved);
            prop_assert_eq!(after.leader_id, Some(target.id));
            prop_assert!(after.raft_term >= view.raft_term);

            let mut removed = cs.clone();
            match view.remove_member(&leader.name, target.id) {
                Ok(change) => {
                    Candidate::apply(&mut removed, &change);
                    let after = View::derive(KEY, &removed);
                    prop_assert!(after.member(target.id).is_none());
                    prop_assert_eq!(after.members.len() + 1, view.members.len());
                    prop_assert!(after.leader().is_some());
                    if target.id != leader.id {
                        prop_assert_eq!(after.leader_id, Some(leader.id));
                    }
                }
                Err(refusal) => {
                    prop_assert_eq!(refusal, Refusal::NotEnoughStartedMembers);
                    prop_assert_eq!(view.members.len(), 1);
                }
            }
        }
    }
}
