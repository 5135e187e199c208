//! The scheduler: pure functions from a snapshot of the fleet to a placement or a migration
//! plan. It keeps no state of its own; the same [`Fleet`] and request always give the same
//! answer, whatever order the nodes and VMs are listed in.
//!
//! Rules (docs/scheduler.md), each checked by the property tests in `tests/properties.rs`:
//! - a VM goes to the node where it fits best: the least memory left over, then the fewest
//!   vCPUs left over, then the lowest node id;
//! - a node that is not [`Status::Trusted`] (revoked by the ledger, or unreachable on the mesh)
//!   is never chosen;
//! - a pinned VM is placed on its pin or not at all, and a plan never moves it;
//! - a plan's moves, applied one after another, never leave a usable node with more memory or
//!   vCPUs in use than it offers; a VM that cannot be moved is reported, with the reason.
//!
//! Free capacity is computed, not advertised: a node offers `mem_mib` and `vcpus` to VMs, minus
//! `reserved_mib` (memory it has lent out, for example), minus the VMs the snapshot places on it.

use ppn_wire::NodeId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};

/// Whether the scheduler may put VMs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A member the ledger trusts, reachable on the mesh.
    Trusted,
    /// Revoked by the ledger (or not, or no longer, a member).
    Revoked,
    /// Trusted, but the mesh has not heard from it (SWIM says down, or its advert is stale).
    Unreachable,
}

/// A node as the scheduler sees it: what it offers VMs and whether it may get any.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Node {
    pub id: NodeId,
    /// Memory the node offers VMs, MiB.
    pub mem_mib: u64,
    /// Memory taken by something other than the VMs in the snapshot (lent out), MiB.
    pub reserved_mib: u64,
    /// vCPUs the node offers VMs.
    pub vcpus: u32,
    pub status: Status,
}

/// A VM that runs somewhere.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vm {
    pub name: String,
    pub node: NodeId,
    pub mem_mib: u64,
    pub vcpus: u32,
    /// The operator pinned it to `node`: it is never moved.
    pub pinned: bool,
}

/// A VM to place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub name: String,
    pub mem_mib: u64,
    pub vcpus: u32,
    /// The node the operator wants it on, whatever the load.
    pub pin: Option<NodeId>,
}

/// The snapshot every decision is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Fleet {
    pub nodes: Vec<Node>,
    pub vms: Vec<Vm>,
}

/// Why a VM is where the scheduler put it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The operator's pin.
    Pinned,
    /// Best fit on memory, then vCPUs.
    BestFit,
}

/// Where a request goes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Placement {
    pub name: String,
    pub node: NodeId,
    pub reason: Reason,
}

/// Why a request cannot be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlaceError {
    #[error("VM {0}: a VM needs at least 1 MiB and 1 vCPU")]
    Empty(String),
    #[error("VM {0}: the name is taken")]
    NameTaken(String),
    #[error("VM {name}: pinned to node {node}, which the fleet does not know")]
    PinUnknown { name: String, node: NodeId },
    #[error("VM {name}: pinned to node {node}, which is {status:?}")]
    PinUnusable { name: String, node: NodeId, status: Status },
    #[error(
        "VM {name}: pinned to node {node}, which has {free_mib} MiB and {free_vcpus} vCPUs free, not {mem_mib} MiB and {vcpus} vCPUs"
    )]
    PinFull { name: String, node: NodeId, mem_mib: u64, vcpus: u32, free_mib: u64, free_vcpus: u32 },
    #[error("VM {name}: no trusted, reachable node has {mem_mib} MiB and {vcpus} vCPUs free")]
    NoRoom { name: String, mem_mib: u64, vcpus: u32 },
}

/// What is free on each usable node, kept in best-fit order: `(free MiB, free vCPUs, id)`.
#[derive(Debug, Clone)]
struct Free {
    by_fit: BTreeSet<(u64, u32, NodeId)>,
    of: BTreeMap<NodeId, (u64, u32)>,
}

impl Free {
    /// Free capacity of every trusted node, with `vms` on it.
    fn of(fleet: &Fleet) -> Free {
        let mut used: BTreeMap<NodeId, (u64, u32)> = BTreeMap::new();
        for vm in &fleet.vms {
            let u = used.entry(vm.node).or_default();
            u.0 = u.0.saturating_add(vm.mem_mib);
            u.1 = u.1.saturating_add(vm.vcpus);
        }
        let mut free = Free { by_fit: BTreeSet::new(), of: BTreeMap::new() };
        for n in fleet.nodes.iter().filter(|n| n.status == Status::Trusted) {
            let (mem, cpu) = used.get(&n.id).copied().unwrap_or_default();
            let f = (n.mem_mib.saturating_sub(n.reserved_mib).saturating_sub(mem), n.vcpus.saturating_sub(cpu));
            // A node listed twice counts once: the first (lowest id order is applied later).
            if free.of.insert(n.id, f).is_none() {
                free.by_fit.insert((f.0, f.1, n.id));
            }
        }
        free
    }

    fn get(&self, node: &NodeId) -> Option<(u64, u32)> {
        self.of.get(node).copied()
    }

    /// The best-fit node with room for `mem` and `cpu`, other than `except`.
    fn best(&self, mem: u64, cpu: u32, except: Option<NodeId>) -> Option<NodeId> {
        let min = NodeId::default();
        self.by_fit.range((mem, 0, min)..).find(|&&(_, c, id)| c >= cpu && Some(id) != except).map(|&(_, _, id)| id)
    }

    /// Sets `node`'s free capacity (a node not usable stays out).
    fn set(&mut self, node: NodeId, free: (u64, u32)) {
        let Some(&(m, c)) = self.of.get(&node) else { return };
        self.by_fit.remove(&(m, c, node));
        self.of.insert(node, free);
        self.by_fit.insert((free.0, free.1, node));
    }

    /// Takes `mem` and `cpu` from `node`'s free capacity.
    fn take(&mut self, node: NodeId, mem: u64, cpu: u32) {
        if let Some((m, c)) = self.get(&node) {
            self.set(node, (m.saturating_sub(mem), c.saturating_sub(cpu)));
        }
    }
}

/// Places one request on the fleet.
pub fn place(fleet: &Fleet, request: &Request) -> Result<Placement, PlaceError> {
    place_all(fleet, core::slice::from_ref(request)).pop().expect("one answer per request")
}

/// The order in which a batch is placed, as indices into `requests`: pinned requests first,
/// then the others largest first (best-fit decreasing), ties by name.
pub fn batch_order(requests: &[Request]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..requests.len()).collect();
    order.sort_by(|&a, &b| {
        let (x, y) = (&requests[a], &requests[b]);
        (y.pin.is_some(), y.mem_mib, y.vcpus).cmp(&(x.pin.is_some(), x.mem_mib, x.vcpus)).then(x.name.cmp(&y.name))
    });
    order
}

/// Places a batch of requests, each on the capacity the earlier ones left, in
/// [`batch_order`]. The answers come back in the order of `requests`.
pub fn place_all(fleet: &Fleet, requests: &[Request]) -> Vec<Result<Placement, PlaceError>> {
    let mut free = Free::of(fleet);
    let status: BTreeMap<NodeId, Status> = fleet.nodes.iter().map(|n| (n.id, n.status)).collect();
    let mut taken: BTreeSet<&str> = fleet.vms.iter().map(|v| v.name.as_str()).collect();
    let mut out: Vec<Option<Result<Placement, PlaceError>>> = vec![None; requests.len()];
    for i in batch_order(requests) {
        let r = &requests[i];
        let answer = place_one(&mut free, &status, &mut taken, r);
        out[i] = Some(answer);
    }
    out.into_iter().map(|a| a.expect("every request answered")).collect()
}

fn place_one<'a>(
    free: &mut Free,
    status: &BTreeMap<NodeId, Status>,
    taken: &mut BTreeSet<&'a str>,
    r: &'a Request,
) -> Result<Placement, PlaceError> {
    let name = || r.name.clone();
    if r.mem_mib == 0 || r.vcpus == 0 {
        return Err(PlaceError::Empty(name()));
    }
    if taken.contains(r.name.as_str()) {
        return Err(PlaceError::NameTaken(name()));
    }
    let (node, reason) = match r.pin {
        Some(node) => {
            match status.get(&node) {
                None => return Err(PlaceError::PinUnknown { name: name(), node }),
                Some(&s) if s != Status::Trusted => {
                    return Err(PlaceError::PinUnusable { name: name(), node, status: s });
                }
                Some(_) => {}
            }
            let (fm, fc) = free.get(&node).unwrap_or_default();
            if fm < r.mem_mib || fc < r.vcpus {
                return Err(PlaceError::PinFull {
                    name: name(),
                    node,
                    mem_mib: r.mem_mib,
                    vcpus: r.vcpus,
                    free_mib: fm,
                    free_vcpus: fc,
                });
            }
            (node, Reason::Pinned)
        }
        None => match free.best(r.mem_mib, r.vcpus, None) {
            Some(node) => (node, Reason::BestFit),
            None => return Err(PlaceError::NoRoom { name: name(), mem_mib: r.mem_mib, vcpus: r.vcpus }),
        },
    };
    free.take(node, r.mem_mib, r.vcpus);
    taken.insert(r.name.as_str());
    Ok(Placement { name: name(), node, reason })
}

/// What a plan is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Goal {
    /// Move every unpinned VM off the nodes that are not trusted and reachable.
    Evacuate,
    /// [`Goal::Evacuate`], and also off this node (which may still be trusted).
    Drain(NodeId),
    /// [`Goal::Evacuate`], then, on usable nodes whose VMs need more than the node offers,
    /// move VMs (smallest first) until the rest fit.
    Rebalance,
}

/// One live migration of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Move {
    pub vm: String,
    pub from: NodeId,
    pub to: NodeId,
    pub mem_mib: u64,
    pub vcpus: u32,
}

/// Why a VM that should move does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stuck {
    /// The operator pinned it there.
    Pinned,
    /// No usable node has room for it.
    NoRoom,
}

/// A VM a plan leaves where it is, though the goal would move it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stranded {
    pub vm: String,
    pub node: NodeId,
    pub why: Stuck,
}

/// An ordered list of migrations, and what stays behind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub moves: Vec<Move>,
    pub stranded: Vec<Stranded>,
}

/// Plans migrations towards `goal`. Moves are chosen one after another, largest VM first, each
/// to the best-fit node on the capacity the earlier moves left, so the moves can run in order
/// with no node ever holding more than it offers (a VM being migrated counts on its
/// destination from the move's start).
pub fn plan(fleet: &Fleet, goal: Goal) -> Plan {
    let mut free = Free::of(fleet);
    let status: BTreeMap<NodeId, Status> = fleet.nodes.iter().map(|n| (n.id, n.status)).collect();
    let drained = match goal {
        Goal::Drain(n) => Some(n),
        _ => None,
    };
    // A drained node takes nothing.
    if let Some(d) = drained
        && let Some((m, c)) = free.get(&d)
    {
        free.by_fit.remove(&(m, c, d));
    }
    let usable = |n: &NodeId| status.get(n) == Some(&Status::Trusted) && Some(*n) != drained;
    let mut vms: Vec<&Vm> = fleet.vms.iter().collect();
    vms.sort_by(|a, b| (b.mem_mib, b.vcpus).cmp(&(a.mem_mib, a.vcpus)).then(a.name.cmp(&b.name)));
    let mut p = Plan::default();

    // Off every node that may not keep VMs.
    for vm in vms.iter().filter(|v| !usable(&v.node)) {
        if vm.pinned {
            p.stranded.push(Stranded { vm: vm.name.clone(), node: vm.node, why: Stuck::Pinned });
            continue;
        }
        match free.best(vm.mem_mib, vm.vcpus, Some(vm.node)) {
            Some(to) => {
                free.take(to, vm.mem_mib, vm.vcpus);
                p.moves.push(Move { vm: vm.name.clone(), from: vm.node, to, mem_mib: vm.mem_mib, vcpus: vm.vcpus });
            }
            None => p.stranded.push(Stranded { vm: vm.name.clone(), node: vm.node, why: Stuck::NoRoom }),
        }
    }

    if goal == Goal::Rebalance {
        // Nodes whose VMs need more than they offer: move their smallest unpinned VMs away
        // until the rest fit (a node over on memory or vCPUs shows as 0 free).
        let offered: BTreeMap<NodeId, (u64, u32)> = fleet
            .nodes
            .iter()
            .filter(|n| usable(&n.id))
            .map(|n| (n.id, (n.mem_mib.saturating_sub(n.reserved_mib), n.vcpus)))
            .collect();
        for (&node, &(mem, cpu)) in &offered {
            let mut here: Vec<&&Vm> = vms.iter().filter(|v| v.node == node).collect();
            let mut used: (u64, u32) =
                here.iter().fold((0, 0), |(m, c), v| (m.saturating_add(v.mem_mib), c.saturating_add(v.vcpus)));
            if used.0 <= mem && used.1 <= cpu {
                continue;
            }
            here.sort_by(|a, b| (a.mem_mib, a.vcpus).cmp(&(b.mem_mib, b.vcpus)).then(a.name.cmp(&b.name)));
            for vm in here {
                if used.0 <= mem && used.1 <= cpu {
                    break;
                }
                if vm.pinned {
                    p.stranded.push(Stranded { vm: vm.name.clone(), node, why: Stuck::Pinned });
                    continue;
                }
                match free.best(vm.mem_mib, vm.vcpus, Some(node)) {
                    Some(to) => {
                        free.take(to, vm.mem_mib, vm.vcpus);
                        used = (used.0 - vm.mem_mib, used.1 - vm.vcpus);
                        // What it leaves behind is free only once the node is back within
                        // what it offers (until then it shows 0 free on the dimension over).
                        free.set(node, (mem.saturating_sub(used.0), cpu.saturating_sub(used.1)));
                        p.moves.push(Move {
                            vm: vm.name.clone(),
                            from: node,
                            to,
                            mem_mib: vm.mem_mib,
                            vcpus: vm.vcpus,
                        });
                    }
                    None => p.stranded.push(Stranded { vm: vm.name.clone(), node, why: Stuck::NoRoom }),
                }
            }
        }
    }
    p
}

/// Applies a plan's moves to a fleet snapshot, one by one, and returns the snapshot after each
/// (for checking a plan, and for showing what it would do).
pub fn apply(fleet: &Fleet, moves: &[Move]) -> Vec<Fleet> {
    let mut f = fleet.clone();
    let mut steps = Vec::with_capacity(moves.len());
    for m in moves {
        if let Some(vm) = f.vms.iter_mut().find(|v| v.name == m.vm) {
            vm.node = m.to;
        }
        steps.push(f.clone());
    }
    steps
}

/// Memory and vCPUs the snapshot's VMs use on `node`, plus its reserved memory.
pub fn used(fleet: &Fleet, node: &NodeId) -> (u64, u32) {
    let reserved = fleet.nodes.iter().find(|n| n.id == *node).map_or(0, |n| n.reserved_mib);
    fleet
        .vms
        .iter()
        .filter(|v| v.node == *node)
        .fold((reserved, 0), |(m, c), v| (m.saturating_add(v.mem_mib), c.saturating_add(v.vcpus)))
}
