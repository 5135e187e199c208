//! What has been revoked: nodes, single grants, and per issuer a set of disjoint sequence ranges.
//!
//! A token check asks three questions (issuer revoked? grantee revoked? grant revoked?). Revoked
//! nodes and single revoked grants are hash sets, one probe each; multi-grant ranges are a
//! B-tree per issuer, consulted only for issuers that have any. None of it scans the ledger.

extern crate alloc;
use alloc::collections::{BTreeMap, BTreeSet};
use hashbrown::HashSet;
use ppn_wire::service::NodeId;

/// Disjoint, non-adjacent inclusive ranges, keyed by their first element.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    pub fn contains(&self, x: u64) -> bool {
        self.0.range(..=x).next_back().is_some_and(|(_, &last)| last >= x)
    }

    /// Adds `first..=last`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, mut first: u64, mut last: u64) {
        // A range that starts before `first` and reaches it (or ends right before it) merges.
        if let Some((&s, &e)) = self.0.range(..=first).next_back()
            && e.saturating_add(1) >= first
        {
            if e >= last {
                return;
            }
            first = s;
            self.0.remove(&s);
        }
        // Ranges that start inside `first..=last+1` are absorbed.
        loop {
            let next = self.0.range(first..).next().map(|(&s, &e)| (s, e));
            match next {
                Some((s, e)) if s <= last.saturating_add(1) => {
                    last = last.max(e);
                    self.0.remove(&s);
                }
                _ => break,
            }
        }
        self.0.insert(first, last);
    }

    /// Number of disjoint ranges.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Revoked nodes and grants.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    /// For lookups.
    nodes: HashSet<NodeId>,
    /// The same nodes, in order, for listing.
    listed: BTreeSet<NodeId>,
    /// Grants revoked one by one: (issuer, sequence).
    single: HashSet<(NodeId, u64)>,
    /// Ranges of more than one grant, per issuer.
    ranges: BTreeMap<NodeId, Ranges>,
}

impl Revocations {
    pub fn revoke_node(&mut self, node: NodeId) {
        self.nodes.insert(node);
        self.listed.insert(node);
    }

    pub fn revoke_grants(&mut self, issuer: NodeId, first: u64, last: u64) {
        if first == last {
            self.single.insert((issuer, first));
        } else {
            self.ranges.entry(issuer).or_default().insert(first, last);
        }
    }

    pub fn node_revoked(&self, node: &NodeId) -> bool {
        self.nodes.contains(node)
    }

    pub fn grant_revoked(&self, issuer: &NodeId, sequence: u64) -> bool {
        self.single.contains(&(*issuer, sequence)) || self.ranges.get(issuer).is_some_and(|r| r.contains(sequence))
    }

    /// Revoked nodes, ascending.
    pub fn revoked_nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.listed.iter()
    }

    pub fn revoked_node_count(&self) -> usize {
        self.nodes.len()
    }

    /// Revocation entries for grants: single grants plus disjoint multi-grant ranges (a single
    /// grant inside a range counts in both).
    pub fn grant_range_count(&self) -> usize {
        self.single.len() + self.ranges.values().map(Ranges::len).sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The range set answers exactly like the naive set of every inserted number, and stays
        /// disjoint and non-adjacent.
        #[test]
        fn ranges_match_a_naive_set(ops in proptest::collection::vec((0u64..200, 0u64..20), 0..40), probes in proptest::collection::vec(0u64..230, 50)) {
            let mut r = Ranges::default();
            let mut naive = BTreeSet::new();
            for (first, len) in ops {
                r.insert(first, first + len);
                naive.extend(first..=first + len);
            }
            for p in probes {
                prop_assert_eq!(r.contains(p), naive.contains(&p), "probe {}", p);
            }
            let spans: alloc::vec::Vec<_> = r.0.iter().map(|(&s, &e)| (s, e)).collect();
            for w in spans.windows(2) {
                prop_assert!(w[0].1 + 1 < w[1].0, "ranges {:?} touch", w);
            }
        }
    }

    #[test]
    fn extremes_do_not_overflow() {
        let mut r = Ranges::default();
        r.insert(u64::MAX - 1, u64::MAX);
        r.insert(0, 0);
        r.insert(1, u64::MAX - 2);
        assert_eq!(r.len(), 1);
        assert!(r.contains(0) && r.contains(u64::MAX));
    }

    /// Grant revocations answer like a naive set of (issuer, sequence), whether they came as
    /// singles or ranges.
    #[test]
    fn grants_match_a_naive_set() {
        let a = NodeId(ppn_wire::ByteArray([1; 8]));
        let b = NodeId(ppn_wire::ByteArray([2; 8]));
        let mut r = Revocations::default();
        r.revoke_grants(a, 5, 5);
        r.revoke_grants(a, 10, 12);
        r.revoke_grants(b, 11, 11);
        let naive: BTreeSet<(NodeId, u64)> = [(a, 5), (a, 10), (a, 11), (a, 12), (b, 11)].into();
        for issuer in [a, b] {
            for seq in 0..20 {
                assert_eq!(r.grant_revoked(&issuer, seq), naive.contains(&(issuer, seq)), "{issuer} {seq}");
            }
        }
        assert_eq!(r.grant_range_count(), 3);
        r.revoke_node(b);
        r.revoke_node(a);
        assert!(r.node_revoked(&a) && r.node_revoked(&b));
        assert_eq!(r.revoked_nodes().copied().collect::<alloc::vec::Vec<_>>(), [a, b]);
    }
}
