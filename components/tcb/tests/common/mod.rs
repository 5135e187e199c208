//! What the TCB core's tests share: deterministic node keys, and a freshly booted TCB on
//! in-memory journals whose fleet roots are given nodes.
#![allow(dead_code)] // each test binary uses a part

use ppn_journal::mem::MemStorage;
use ppn_ledger::Roots;
use ppn_node_core::NodeKeys;
use ppn_tcb_core::{Booted, boot};
use ppn_wire::service::Platform;

pub type Tcb = Booted<MemStorage, MemStorage>;

pub fn keys(seed: u8) -> NodeKeys {
    NodeKeys::from_seed(&[seed; 32])
}

/// A TCB with identity seed `seed` (repeated) on `platform`, whose fleet roots are the nodes
/// of `fleet`.
pub fn tcb(seed: u8, fleet: &[u8], platform: Platform) -> Tcb {
    let mut roots = Roots::default();
    for &n in fleet {
        assert!(roots.add(&keys(n).signing_public()));
    }
    let entropy = |s: &mut [u8; 32]| {
        s.fill(seed);
        Ok::<(), ()>(())
    };
    boot(MemStorage::default(), MemStorage::default(), &roots, platform, "t", entropy).unwrap()
}
