//! Where the time of `Ledger::verify` goes: the HMAC tag check alone, one SHA-256 block, verify
//! against an empty ledger (tag + lookups in empty maps), and the revocation lookups alone in a
//! `Revocations` shaped like the one `tokens` builds (90% own single grants, every other
//! sequence number; 5% other issuers' grants; 5% nodes). See docs/benchmarks.md.
//!
//! `cargo run --release -p ppn-bench --example verify_breakdown`

use ppn_journal::mem::MemStorage;
use ppn_ledger::revocations::Revocations;
use ppn_ledger::token::TokenBytes;
use ppn_ledger::{Ledger, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::ByteArray;
use ppn_wire::service::{IssueGrant, NodeId, ResourceType};
use sha2::Digest;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn ns(iters: u32, mut f: impl FnMut()) -> f64 {
    let mut v: Vec<f64> = (0..7)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..iters {
                f();
            }
            t.elapsed().as_nanos() as f64 / f64::from(iters)
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[3]
}

fn main() {
    let seed = [3u8; 32];
    let grant_key = ppn_ledger::token::TokenKey::new(NodeKeys::from_seed(&seed).grant_key());
    let keys = NodeKeys::from_seed(&seed);
    let mut roots = Roots::default();
    roots.add(&keys.signing_public());
    let (mut ledger, _) = Ledger::open(keys, Arc::new(roots), MemStorage::default()).expect("open");
    let g = IssueGrant {
        grantee: NodeId(ByteArray([2; 8])),
        resource_type: ResourceType::Vm,
        resource_id: 42,
        expires_unix_s: 2_000_000_000,
    };
    let token = ledger.issue(&g, 1_000).expect("issue").token.to_vec();
    let n = 500_000;
    let parse = ns(n, || {
        black_box(TokenBytes::parse(black_box(&token)).is_ok());
    });
    let tag = ns(n, || {
        black_box(TokenBytes::parse(black_box(&token)).is_ok_and(|t| t.tag_ok(black_box(&grant_key))));
    });
    let block = ns(n, || {
        black_box(sha2::Sha256::digest(black_box(&token[..44])));
    });
    let verify = ns(n, || {
        black_box(ledger.verify(black_box(&token), 1_000));
    });
    let total: u64 = 100_000;
    let me = NodeId(ByteArray([1; 8]));
    let mut r = Revocations::default();
    let mut x: u64 = 0x1234_5678;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let own = total * 9 / 10;
    for s in 0..own {
        r.revoke_grants(me, 2 * s, 2 * s);
    }
    for s in 0..total / 20 {
        r.revoke_grants(NodeId(ByteArray([(s % 16) as u8 + 10; 8])), 2 * s, 2 * s);
        r.revoke_node(NodeId(ByteArray(next().to_le_bytes())));
    }
    let probes: Vec<(NodeId, u64)> =
        (0..1024u64).map(|i| (NodeId(ByteArray(next().to_le_bytes())), (i * 2 * own / 1024) | 1)).collect();
    let mut i = 0;
    let spread = ns(n, || {
        let (grantee, seq) = probes[i % probes.len()];
        i += 1;
        black_box(r.node_revoked(black_box(&me)));
        black_box(r.node_revoked(black_box(&grantee)));
        black_box(r.grant_revoked(black_box(&me), black_box(seq)));
    });
    let mut i = 0;
    let grant_only = ns(n, || {
        let (_, seq) = probes[i % probes.len()];
        i += 1;
        black_box(r.grant_revoked(black_box(&me), black_box(seq)));
    });
    let mut i = 0;
    let newest = ns(n, || {
        i += 1;
        black_box(r.node_revoked(black_box(&me)));
        black_box(r.node_revoked(black_box(&probes[0].0)));
        black_box(r.grant_revoked(black_box(&me), black_box(2 * own + 1 + (i & 63))));
    });
    println!("parse {parse:.1} ns");
    println!("parse + HMAC tag check {tag:.1} ns");
    println!("one SHA-256 of 44 bytes (one block) {block:.1} ns");
    println!("verify, empty ledger {verify:.1} ns");
    println!("revocation lookups of one verify, 100k revocations, spread sequence numbers {spread:.1} ns");
    println!("  of which the grant range lookup {grant_only:.1} ns");
    println!("revocation lookups, newest sequence numbers (hot in cache) {newest:.1} ns");
}
