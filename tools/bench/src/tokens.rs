//! Token issue and verify, against a ledger full of revocations and an empty one, next to the
//! verify path of an equivalent Biscuit token.

use crate::{Rng, round};
use biscuit_auth::builder::Algorithm;
use biscuit_auth::{AuthorizerBuilder, Biscuit, KeyPair, PrivateKey};
use ppn_journal::mem::MemStorage;
use ppn_ledger::{Body, Ledger, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::ByteArray;
use ppn_wire::service::{IssueGrant, NodeId, ResourceType, Verdict};
use serde_json::json;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

/// The ledger's clock during the bench (seconds since the Unix epoch); tokens expire an hour on.
const NOW: u64 = 1_750_000_000;
const TTL: u64 = 3_600;
/// Distinct valid tokens verified in turn.
const POOL: usize = 1_024;
/// Grantees of the pool's tokens (never revoked).
const GRANTEES: usize = 64;
/// Other issuers whose grants the ledger also holds revocations of.
const OTHER_ISSUERS: usize = 16;

/// Options of [`tokens`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokensOpts {
    /// Revocation records the ledger holds, each authored through `Ledger::author`.
    pub revocations: usize,
    /// Timed rounds (one batch of each measurement per round); the median is reported.
    pub batches: usize,
    /// Operations per batch for `issue` and `verify`.
    pub iters: usize,
    /// Operations per batch for the Biscuit verify path.
    pub biscuit_iters: usize,
}

impl Default for TokensOpts {
    fn default() -> Self {
        Self { revocations: 100_000, batches: 9, iters: 200_000, biscuit_iters: 2_000 }
    }
}

fn open(seed: [u8; 32]) -> Ledger<MemStorage> {
    let keys = NodeKeys::from_seed(&seed);
    let mut roots = Roots::default();
    assert!(roots.add(&keys.signing_public()));
    let (ledger, _) = Ledger::open(keys, Arc::new(roots), MemStorage::default()).expect("memory storage does not fail");
    ledger
}

/// ns per call of `iters` calls of `f(i)`.
fn batch_ns(iters: usize, f: &mut impl FnMut(usize)) -> f64 {
    let t = Instant::now();
    for i in 0..iters {
        f(i);
    }
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the token bench. JSON:
/// `{"token_bytes", "issue_ns", "verify_ns", "verify_ns_empty_ledger", "biscuit_verify_ns",
/// "ratio", "revocations"}`, times in ns per operation (median batch), `ratio` =
/// `biscuit_verify_ns / verify_ns`.
///
/// The ledger holds `revocations` records authored through `Ledger::author`: 90% single
/// grants of its own issuer (every other sequence number, so none merge into a range and the
/// lookup walks a tree of that many ranges), 5% single grants of other issuers, 5% nodes. The
/// verified tokens are valid and their sequence numbers fall between revoked ones.
pub fn tokens(o: &TokensOpts) -> serde_json::Value {
    let seed = [0x5e; 32];
    let mut rng = Rng::new(0x70_6b_65_6e);
    let mut ledger = open(seed);
    let me = ledger.node_id();
    let grantees: Vec<NodeId> = (0..GRANTEES).map(|_| NodeId(ByteArray(rng.bytes()))).collect();
    let others: Vec<NodeId> = (0..OTHER_ISSUERS).map(|_| NodeId(ByteArray(rng.bytes()))).collect();

    let own = (0..o.revocations).filter(|i| i % 20 >= 2).count();
    // Own grants 0, 2, 4, .. 2(own-1) will be revoked; keep a pool of valid tokens with odd
    // sequence numbers spread over that span (issued first: the ledger hands out 0, 1, 2, ..).
    let span = (2 * own).max(2 * POOL) as u64;
    let stride = (span / (2 * POOL as u64)).max(1) * 2;
    let mut pool: Vec<Vec<u8>> = Vec::with_capacity(POOL);
    for i in 0..span {
        let g = IssueGrant {
            grantee: grantees[i as usize % GRANTEES],
            resource_type: ResourceType::Vm,
            resource_id: 42,
            expires_unix_s: NOW + TTL,
        };
        let grant = ledger.issue(&g, NOW).expect("issue");
        assert_eq!(grant.sequence, i);
        if i % stride == 1 && pool.len() < POOL {
            pool.push(grant.token.to_vec());
        }
    }

    let (mut own_seq, mut other_seq) = (0u64, 0u64);
    for i in 0..o.revocations {
        let body = match i % 20 {
            0 => Body::NodeRevoked { node: NodeId(ByteArray(rng.bytes())) },
            1 => {
                other_seq += 1;
                let issuer = others[rng.below(OTHER_ISSUERS)];
                Body::GrantRevoked { issuer, first: other_seq * 2, last: other_seq * 2 }
            }
            _ => {
                let s = own_seq * 2;
                own_seq += 1;
                Body::GrantRevoked { issuer: me, first: s, last: s }
            }
        };
        ledger.author(body, NOW).expect("author a revocation");
    }
    assert_eq!(ledger.dag().len(), o.revocations);
    assert_eq!(own_seq as usize, own);

    let empty = open(seed);
    for t in &pool {
        assert_eq!(ledger.verify(t, NOW), Verdict::Valid);
        assert_eq!(empty.verify(t, NOW), Verdict::Valid);
    }
    let token_bytes = pool[0].len();

    let grant = IssueGrant {
        grantee: grantees[0],
        resource_type: ResourceType::Vm,
        resource_id: 42,
        expires_unix_s: NOW + TTL,
    };
    let mut biscuit = biscuit_verifier();
    // Interleaved rounds, one batch of each per round, so that a noisy moment of the machine
    // hits every measurement alike; one untimed warm-up round first.
    let mut rounds: [Vec<f64>; 4] = Default::default();
    for round in 0..=o.batches {
        let r = [
            batch_ns(o.iters, &mut |_| {
                black_box(ledger.issue(black_box(&grant), NOW).ok());
            }),
            batch_ns(o.iters, &mut |i| {
                black_box(ledger.verify(black_box(&pool[i % POOL]), NOW));
            }),
            batch_ns(o.iters, &mut |i| {
                black_box(empty.verify(black_box(&pool[i % POOL]), NOW));
            }),
            batch_ns(o.biscuit_iters, &mut biscuit),
        ];
        if round > 0 {
            for (acc, x) in rounds.iter_mut().zip(r) {
                acc.push(x);
            }
        }
    }
    let [issue_ns, verify_ns, verify_ns_empty, biscuit_verify_ns] = rounds.map(median);

    json!({
        "token_bytes": token_bytes,
        "issue_ns": round(issue_ns, 1),
        "verify_ns": round(verify_ns, 1),
        "verify_ns_empty_ledger": round(verify_ns_empty, 1),
        "biscuit_verify_ns": round(biscuit_verify_ns, 1),
        "ratio": round(biscuit_verify_ns / verify_ns, 1),
        "revocations": o.revocations,
    })
}

/// The verify path of a service handed the equivalent Biscuit: parse and check the signatures
/// with the root public key, then authorize with the current time and a policy asking for the
/// right. The policy is parsed once, as a service would; the token is parsed every time.
fn biscuit_verifier() -> impl FnMut(usize) {
    let root = PrivateKey::from_bytes(&[0x42; 32], Algorithm::Ed25519).expect("an Ed25519 key");
    let root = KeyPair::from(&root);
    let token = Biscuit::builder()
        .fact(r#"right("vm", 42, "read")"#)
        .and_then(|b| b.check(r#"check if time($t), $t < 2100-01-01T00:00:00Z"#))
        .and_then(|b| b.build(&root))
        .and_then(|t| t.to_vec())
        .expect("a biscuit");
    let public = root.public();
    let policy = AuthorizerBuilder::new().policy(r#"allow if right("vm", 42, "read")"#).expect("a policy");
    let verify = move |bytes: &[u8]| -> bool {
        let Ok(t) = Biscuit::from(bytes, public) else { return false };
        let Ok(mut a) = policy.clone().time().build(&t) else { return false };
        a.authorize().is_ok()
    };
    assert!(verify(&token), "the biscuit authorizes");
    let mut forged = token.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    assert!(!verify(&forged), "a forged biscuit is refused");
    move |_| {
        black_box(verify(black_box(&token)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_meets_the_size_target_and_beats_biscuit() {
        let v = tokens(&TokensOpts { revocations: 200, batches: 3, iters: 300, biscuit_iters: 10 });
        assert!(v["token_bytes"].as_u64().unwrap() <= 64, "{v}");
        assert!(v["ratio"].as_f64().unwrap() > 1.0, "{v}");
        assert_eq!(v["revocations"], 200);
        for k in ["issue_ns", "verify_ns", "verify_ns_empty_ledger", "biscuit_verify_ns"] {
            assert!(v[k].as_f64().unwrap() > 0.0, "{k} in {v}");
        }
    }
}
