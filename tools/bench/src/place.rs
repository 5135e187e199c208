//! `ppn bench place`: the scheduler (`ppn_scheduler::place_all`) placing a batch of VMs on a
//! uniform fleet, next to a peer in the same run: the same best-fit-decreasing rule done by a
//! linear scan of every node for every VM (what a scheduler without an index does). Quality:
//! the nodes the placement uses against `lower_bound` = ceil(total memory asked / one node's
//! memory), which no placement can beat.
//!
//! The fleet: `nodes` nodes of 64 GiB and 64 vCPUs. The VMs: sizes drawn from 512 MiB to
//! 16 GiB (powers of two, smaller ones likelier), one vCPU per 2 GiB (at least one), 5% of
//! them pinned to a node drawn at random. Seeded: one seed, one fleet.

use crate::Rng;
use ppn_scheduler::{Fleet, Node, Request, Status, place_all};
use ppn_wire::{ByteArray, NodeId};
use std::collections::BTreeSet;
use std::time::Instant;

/// One node's memory, MiB.
pub const NODE_MIB: u64 = 64 * 1024;
/// One node's vCPUs.
pub const NODE_VCPUS: u32 = 64;

#[derive(Debug, Clone, Copy)]
pub struct PlaceOpts {
    pub nodes: usize,
    pub vms: usize,
    /// Share of VMs pinned to a random node.
    pub pinned: f64,
    /// Timed runs; the figures are medians.
    pub rounds: usize,
    pub seed: u64,
}

impl Default for PlaceOpts {
    fn default() -> Self {
        Self { nodes: 1000, vms: 10_000, pinned: 0.05, rounds: 5, seed: 8 }
    }
}

impl PlaceOpts {
    pub fn check(&self) -> Result<(), String> {
        if self.nodes == 0 || self.vms == 0 || self.rounds == 0 {
            return Err("--nodes, --vms and --rounds must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.pinned) {
            return Err("--pinned is a share, 0 to 1".into());
        }
        Ok(())
    }
}

fn node_id(i: usize) -> NodeId {
    NodeId(ByteArray((i as u64 + 1).to_be_bytes()))
}

/// The fleet and the requests of one seed.
pub fn workload(o: &PlaceOpts) -> (Fleet, Vec<Request>) {
    let mut rng = Rng::new(o.seed);
    let nodes = (0..o.nodes)
        .map(|i| Node {
            id: node_id(i),
            mem_mib: NODE_MIB,
            reserved_mib: 0,
            vcpus: NODE_VCPUS,
            status: Status::Trusted,
        })
        .collect();
    // 512 MiB .. 16 GiB; weights 6,5,4,3,2,1 from the smallest.
    let sizes: [(u64, usize); 6] = [(512, 6), (1024, 5), (2048, 4), (4096, 3), (8192, 2), (16384, 1)];
    let total: usize = sizes.iter().map(|s| s.1).sum();
    let requests = (0..o.vms)
        .map(|k| {
            let mut pick = rng.below(total);
            let mem = sizes
                .iter()
                .find(|s| {
                    if pick < s.1 {
                        return true;
                    }
                    pick -= s.1;
                    false
                })
                .map_or(512, |s| s.0);
            let pin = (rng.unit() < o.pinned).then(|| node_id(rng.below(o.nodes)));
            Request { name: format!("vm{k:05}"), mem_mib: mem, vcpus: (mem / 2048).max(1) as u32, pin }
        })
        .collect();
    (Fleet { nodes, vms: Vec::new() }, requests)
}

/// The peer: best-fit decreasing by a scan of every node for every VM. Returns the node of
/// each request (in request order), `None` where nothing fits.
pub fn place_by_scan(fleet: &Fleet, requests: &[Request]) -> Vec<Option<NodeId>> {
    let mut free: Vec<(NodeId, u64, u32)> = fleet.nodes.iter().map(|n| (n.id, n.mem_mib, n.vcpus)).collect();
    free.sort_by_key(|f| f.0);
    let mut out = vec![None; requests.len()];
    // The same order as the scheduler's; only the choice of node differs (a scan, no index).
    for i in ppn_scheduler::batch_order(requests) {
        let r = &requests[i];
        let fits = |f: &&mut (NodeId, u64, u32)| f.1 >= r.mem_mib && f.2 >= r.vcpus;
        let chosen = match r.pin {
            Some(p) => free.iter_mut().filter(|f| f.0 == p).find(fits),
            None => free.iter_mut().filter(fits).min_by_key(|f| (f.1, f.2, f.0)),
        };
        if let Some(f) = chosen {
            f.1 -= r.mem_mib;
            f.2 -= r.vcpus;
            out[i] = Some(f.0);
        }
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn place(o: &PlaceOpts) -> serde_json::Value {
    let (fleet, requests) = workload(o);
    let demand: u64 = requests.iter().map(|r| r.mem_mib).sum();
    let lower_bound = demand.div_ceil(NODE_MIB);
    let (mut ms, mut scan_ms) = (Vec::new(), Vec::new());
    let mut answers = Vec::new();
    let mut scanned = Vec::new();
    for _ in 0..o.rounds {
        let t = Instant::now();
        answers = place_all(std::hint::black_box(&fleet), std::hint::black_box(&requests));
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        scanned = place_by_scan(std::hint::black_box(&fleet), std::hint::black_box(&requests));
        scan_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let placed: Vec<Option<NodeId>> = answers.iter().map(|a| a.as_ref().ok().map(|p| p.node)).collect();
    let nodes_used = placed.iter().flatten().collect::<BTreeSet<_>>().len();
    let (total_ms, scan_total_ms) = (median(ms), median(scan_ms));
    serde_json::json!({
        "nodes": o.nodes,
        "vms": o.vms,
        "pinned": requests.iter().filter(|r| r.pin.is_some()).count(),
        "placed": placed.iter().flatten().count(),
        "total_ms": crate::round(total_ms, 3),
        "per_vm_us": crate::round(total_ms * 1e3 / o.vms as f64, 3),
        "nodes_used": nodes_used,
        "lower_bound": lower_bound,
        "nodes_used_per_lower_bound": crate::round(nodes_used as f64 / lower_bound.max(1) as f64, 4),
        "scan_total_ms": crate::round(scan_total_ms, 3),
        "scan_per_index": crate::round(scan_total_ms / total_ms.max(1e-9), 2),
        "scan_agrees": scanned == placed,
        "rounds": o.rounds,
        "seed": o.seed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_index_and_the_scan_agree_and_no_placement_beats_the_lower_bound() {
        let o = PlaceOpts { nodes: 60, vms: 600, pinned: 0.05, rounds: 1, seed: 3 };
        let v = place(&o);
        assert_eq!(v["scan_agrees"], true, "{v}");
        assert_eq!(v["placed"], 600, "{v}");
        let (used, lower) = (v["nodes_used"].as_u64().unwrap(), v["lower_bound"].as_u64().unwrap());
        assert!(lower > 0 && used >= lower && used <= 60, "{v}");
        // One seed, one workload.
        assert_eq!(workload(&o).1, workload(&o).1);
        assert!(PlaceOpts { pinned: 1.5, ..o }.check().is_err());
    }
}
