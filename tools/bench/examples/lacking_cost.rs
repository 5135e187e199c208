//! What `records_lacking` costs a replica when the peer's heads are unknown to it (the peer is
//! ahead) versus known (the peer is in sync): the walk paints nothing and visits every record.
//!
//! `cargo run --release -p ppn-bench --example lacking_cost -- [records]`

use ppn_journal::mem::MemStorage;
use ppn_ledger::{Body, Ledger, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::ByteArray;
use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let records: u64 = std::env::args().nth(1).map_or(20_000, |a| a.parse().expect("records"));
    let keys = NodeKeys::from_seed(&[9; 32]);
    let me = keys.node_id();
    let mut roots = Roots::default();
    roots.add(&keys.signing_public());
    let (mut ledger, _) = Ledger::open(keys, Arc::new(roots), MemStorage::default()).expect("open");
    for s in 0..records {
        ledger.author(Body::GrantRevoked { issuer: me, first: 2 * s, last: 2 * s }, 1_000).expect("author");
    }
    let heads = ledger.heads().heads.to_vec();
    let unknown = [ByteArray([0xab; 32])];
    let time = |peer: &[ppn_ledger::RecordId]| {
        let n = 20;
        let t = Instant::now();
        for _ in 0..n {
            black_box(ledger.records_lacking(black_box(peer), 12));
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
    };
    let in_sync = time(&heads);
    let ahead = time(&unknown);
    println!(
        "{records} records: records_lacking, peer in sync {in_sync:.1} us; peer ahead (heads unknown) {ahead:.1} us"
    );
}
