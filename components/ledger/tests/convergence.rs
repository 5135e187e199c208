//! Property tests: replicas converge under any delivery order, duplication and loss; token
//! verdicts match a model of the rules exactly.

use ppn_journal::mem::MemStorage;
use ppn_ledger::{Body, Ledger, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::ByteArray;
use ppn_wire::service::{IssueGrant, NodeId, ResourceType, Verdict};
use proptest::prelude::*;
use std::collections::BTreeSet;
use std::sync::Arc;

const NOW: u64 = 1_700_000_000;
const REPLICAS: usize = 4;

fn keys(n: usize) -> NodeKeys {
    NodeKeys::from_seed(&[n as u8 + 1; 32])
}

/// Node ids revocations may name: the replicas themselves and two outsiders.
fn target(i: usize) -> NodeId {
    if i < REPLICAS { keys(i).node_id() } else { NodeId(ByteArray([i as u8; 8])) }
}

#[derive(Debug, Clone)]
enum Step {
    /// Replica `who` authors a record; copies go to every other replica's inbox.
    Author { who: usize, body: u8, a: u8, b: u8 },
    /// Deliver the inbox message at `at`; keep a copy if `dup`.
    Deliver { at: usize, dup: bool },
    /// Lose the inbox message at `at`.
    Lose { at: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        2 => (0..REPLICAS, 0u8..3, any::<u8>(), any::<u8>()).prop_map(|(who, body, a, b)| Step::Author { who, body, a, b }),
        5 => (any::<usize>(), any::<bool>()).prop_map(|(at, dup)| Step::Deliver { at, dup }),
        1 => any::<usize>().prop_map(|at| Step::Lose { at }),
    ]
}

fn body(kind: u8, a: u8, b: u8) -> Body {
    match kind {
        0 => Body::NodeRevoked { node: target(a as usize % (REPLICAS + 2)) },
        1 => {
            let (x, y) = (a.min(b) as u64, a.max(b) as u64);
            Body::GrantRevoked { issuer: target(b as usize % REPLICAS), first: x, last: y }
        }
        // Admitting a fresh key.
        _ => Body::NodeAdmitted { key: keys(10 + a as usize % 5).signing_public(), wireguard: [0x77; 32] },
    }
}

/// Anti-entropy until quiescent: every ordered pair pulls what it lacks, parents first.
fn sync_all(ls: &mut [Ledger<MemStorage>]) {
    loop {
        let mut changed = false;
        for i in 0..ls.len() {
            for j in 0..ls.len() {
                if i == j {
                    continue;
                }
                loop {
                    let heads = ls[i].heads().heads;
                    let lack = ls[j].records_lacking(&heads, 12);
                    for r in &lack.records {
                        let before = ls[i].dag().len();
                        ls[i].ingest(r).unwrap();
                        changed |= ls[i].dag().len() != before;
                    }
                    if !lack.more {
                        break;
                    }
                }
            }
        }
        if !changed {
            return;
        }
    }
}

type Fingerprint = (Vec<ByteArray<32>>, usize, Vec<NodeId>, usize, Vec<bool>);

/// Heads, record count, revoked nodes, revoked ranges, and who is trusted.
fn fingerprint(l: &Ledger<MemStorage>) -> Fingerprint {
    (
        l.dag().heads().copied().collect(),
        l.dag().len(),
        l.revocations().revoked_nodes().copied().collect(),
        l.revocations().grant_range_count(),
        (0..REPLICAS).chain(10..15).map(|i| l.is_trusted(&keys(i).node_id())).collect(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Any interleaving, duplication or loss of deliveries, followed by fair anti-entropy,
    /// leaves every replica with the same heads, records and revocation state.
    #[test]
    fn replicas_converge(steps in proptest::collection::vec(step(), 1..60)) {
        let mut roots = Roots::default();
        for i in 0..REPLICAS {
            prop_assert!(roots.add(&keys(i).signing_public()));
        }
        let roots = Arc::new(roots);
        let mut ls: Vec<_> = (0..REPLICAS).map(|i| Ledger::open(keys(i), Arc::clone(&roots), MemStorage::default()).unwrap().0).collect();
        let mut inbox: Vec<(usize, Vec<u8>)> = Vec::new();
        let mut authored = BTreeSet::new();
        for s in steps {
            match s {
                Step::Author { who, body: k, a, b } => {
                    // A revoked replica cannot author: that refusal is part of the rules.
                    if let Ok(id) = ls[who].author(body(k, a, b), NOW) {
                        authored.insert(id);
                        let bytes = ls[who].dag().get(&id).unwrap().bytes.clone();
                        for to in (0..REPLICAS).filter(|&t| t != who) {
                            inbox.push((to, bytes.clone()));
                        }
                    }
                }
                Step::Deliver { at, dup } if !inbox.is_empty() => {
                    let i = at % inbox.len();
                    let (to, bytes) = if dup { inbox[i].clone() } else { inbox.swap_remove(i) };
                    ls[to].ingest(&bytes).unwrap();
                }
                Step::Lose { at } if !inbox.is_empty() => {
                    let i = at % inbox.len();
                    inbox.swap_remove(i);
                }
                _ => {}
            }
        }
        sync_all(&mut ls);
        let first = fingerprint(&ls[0]);
        for l in &ls[1..] {
            prop_assert_eq!(&fingerprint(l), &first);
        }
        for l in &ls {
            prop_assert_eq!(l.pending_len(), 0);
            // Every record any replica authored (and so accepted itself) is everywhere.
            for id in &authored {
                prop_assert!(l.dag().contains(id));
            }
        }
    }

    /// A token is Valid exactly when the tag checks, it has not expired, and neither its
    /// issuer, its grantee nor its grant is revoked; otherwise the first failing rule is named.
    #[test]
    fn verdicts_match_the_model(ops in proptest::collection::vec((0u8..5, any::<u8>(), any::<u8>()), 1..80)) {
        let k = keys(0);
        let me = k.node_id();
        let mut roots = Roots::default();
        roots.add(&k.signing_public());
        let mut l = Ledger::open(k, Arc::new(roots), MemStorage::default()).unwrap().0;
        let mut tokens: Vec<(Vec<u8>, NodeId, u64, u64)> = Vec::new(); // token, grantee, expires, sequence
        let mut revoked_nodes = BTreeSet::new();
        let mut revoked_seqs = BTreeSet::new();
        for (op, a, b) in ops {
            match op {
                0 => {
                    let grantee = target(REPLICAS + (a as usize % 2));
                    let expires = NOW + 1 + b as u64;
                    let g = IssueGrant { grantee, resource_type: ResourceType::Memory, resource_id: a as u64, expires_unix_s: expires };
                    match l.issue(&g, NOW) {
                        Ok(t) => {
                            prop_assert!(!revoked_nodes.contains(&grantee) && !revoked_nodes.contains(&me));
                            tokens.push((t.token.to_vec(), grantee, expires, t.sequence));
                        }
                        Err(_) => prop_assert!(revoked_nodes.contains(&grantee) || revoked_nodes.contains(&me)),
                    }
                }
                1 if !tokens.is_empty() && !revoked_nodes.contains(&me) => {
                    let seq = tokens[a as usize % tokens.len()].3;
                    l.author(Body::GrantRevoked { issuer: me, first: seq, last: seq + (b as u64 % 3) }, NOW).unwrap();
                    revoked_seqs.extend(seq..=seq + (b as u64 % 3));
                }
                2 if !revoked_nodes.contains(&me) => {
                    // Mostly outsiders; rarely this node itself.
                    let node = if b < 20 { me } else { target(REPLICAS + (a as usize % 2)) };
                    l.author(Body::NodeRevoked { node }, NOW).unwrap();
                    revoked_nodes.insert(node);
                }
                3 | 4 if !tokens.is_empty() => {
                    let (t, grantee, expires, seq) = tokens[a as usize % tokens.len()].clone();
                    let at = NOW + (b as u64);
                    let mut t = t;
                    let tampered = op == 4;
                    if tampered {
                        let i = 4 + (b as usize % 56);
                        t[i] ^= 1 << (a % 8);
                    }
                    let expect = if tampered {
                        Verdict::BadTag
                    } else if expires <= at {
                        Verdict::Expired
                    } else if revoked_nodes.contains(&me) {
                        Verdict::IssuerRevoked
                    } else if revoked_nodes.contains(&grantee) {
                        Verdict::GranteeRevoked
                    } else if revoked_seqs.contains(&seq) {
                        Verdict::GrantRevoked
                    } else {
                        Verdict::Valid
                    };
                    prop_assert_eq!(l.verify(&t, at), expect);
                }
                _ => {}
            }
        }
    }
}
