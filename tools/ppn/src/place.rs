//! The scheduler's view of a local fleet (`ppn vm create` without a node, `ppn vm list`,
//! `ppn vm pin|unpin`, `ppn rebalance`): each node's capacity, VMs and placements through its
//! control socket, each node's trust and liveness as the other nodes see them; then
//! `ppn_scheduler` decides (docs/scheduler.md).

use ppn_node::fleet;
pub use ppn_node::vms::Why;
use ppn_scheduler::{Fleet, Node, Status, Vm};
use ppn_wire::NodeId;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One node of the local fleet as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub index: usize,
    pub id: NodeId,
    pub control: PathBuf,
    pub status: Status,
    /// Why it has that status, for the operator.
    pub why: String,
}

/// One VM of the fleet.
#[derive(Debug, Clone)]
pub struct Row {
    pub node: usize,
    pub name: String,
    pub state: String,
    pub held_mib: u64,
    pub vcpus: u32,
    pub pinned: bool,
    /// `pinned`, `placed`, `chosen`, `migrated`, `rebalanced`, `evacuated`; `-` when not recorded.
    pub reason: String,
}

/// The fleet, read now.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub fleet: Fleet,
    pub members: Vec<Member>,
    pub rows: Vec<Row>,
}

impl Snapshot {
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == *id)
    }

    /// The node index and control socket of the node that holds VM `name`.
    pub fn holder(&self, name: &str) -> Result<&Member, String> {
        let row =
            self.rows.iter().find(|r| r.name == name).ok_or_else(|| format!("no node of the fleet has a VM {name}"))?;
        Ok(&self.members[row.node])
    }

    /// A node given as an index of the fleet or as 16 hex digits.
    pub fn resolve(&self, node: &str) -> Result<&Member, String> {
        if let Ok(i) = node.parse::<usize>()
            && let Some(m) = self.members.get(i)
        {
            return Ok(m);
        }
        let id: NodeId = node.parse().map_err(|_| format!("{node}: want a node index or 16 hex digits"))?;
        self.member(&id).ok_or_else(|| format!("node {id} is not in the fleet"))
    }
}

fn parse_id(s: &str) -> Option<NodeId> {
    s.parse().ok()
}

/// Reads the fleet in `dir`: asks every node for its status, capacity and VMs.
pub fn snapshot(dir: &Path) -> Result<Snapshot, String> {
    let f = fleet::load(dir)?;
    struct Seen {
        status: Option<Value>,
        capacity: Option<Value>,
        vms: Option<Value>,
        error: Option<String>,
    }
    let seen: Vec<Seen> = f
        .nodes
        .iter()
        .map(|n| {
            let call = |op: &str| fleet::control(&n.control, &json!({ "op": op }));
            match (call("status"), call("node-capacity"), call("vm-list")) {
                (Ok(s), Ok(c), Ok(v)) => Seen {
                    status: Some(s["status"].clone()),
                    capacity: Some(c["capacity"].clone()),
                    vms: Some(v["vms"].clone()),
                    error: None,
                },
                (s, c, v) => Seen {
                    status: None,
                    capacity: None,
                    vms: None,
                    error: Some(s.err().or(c.err()).or(v.err()).unwrap_or_default()),
                },
            }
        })
        .collect();
    let ids: Vec<Option<NodeId>> = f.nodes.iter().map(|n| parse_id(&n.node_id)).collect();
    // What each answering node says of each other: trusted (in its peers) and up (SWIM).
    let views: Vec<BTreeMap<NodeId, bool>> = seen
        .iter()
        .map(|s| {
            let peers = s.status.as_ref().and_then(|st| st["peers"].as_array().cloned()).unwrap_or_default();
            peers.iter().filter_map(|p| Some((parse_id(p["node_id"].as_str()?)?, p["up"] == true))).collect()
        })
        .collect();
    let mut members = Vec::new();
    let mut nodes = Vec::new();
    let mut vms = Vec::new();
    let mut rows = Vec::new();
    for (j, n) in f.nodes.iter().enumerate() {
        let id = ids[j].ok_or_else(|| format!("node {j} has no node id in fleet.json"))?;
        let others: Vec<usize> = (0..f.nodes.len()).filter(|&i| i != j && seen[i].status.is_some()).collect();
        let (status, why) = if let Some(e) = &seen[j].error {
            (Status::Unreachable, format!("its control socket: {e}"))
        } else if let Some(&i) = others.iter().find(|&&i| !views[i].contains_key(&id)) {
            (Status::Revoked, format!("node {i}'s ledger does not trust it"))
        } else if !others.is_empty() && !others.iter().any(|&i| views[i].get(&id) == Some(&true)) {
            (Status::Unreachable, "no other node sees it up".to_owned())
        } else {
            (Status::Trusted, "trusted and up".to_owned())
        };
        let cap = seen[j].capacity.clone().unwrap_or(Value::Null);
        nodes.push(Node {
            id,
            mem_mib: cap["mem_mib"].as_u64().unwrap_or(0),
            reserved_mib: cap["reserved_mib"].as_u64().unwrap_or(0),
            vcpus: cap["vcpus"].as_u64().unwrap_or(0) as u32,
            status,
        });
        members.push(Member { index: j, id, control: n.control.clone(), status, why });
        for v in seen[j].vms.as_ref().and_then(Value::as_array).into_iter().flatten() {
            let name = v["name"].as_str().unwrap_or_default().to_owned();
            let pinned = v["placement"]["pinned"] == true;
            let row = Row {
                node: j,
                name: name.clone(),
                state: v["state"].as_str().unwrap_or("?").to_owned(),
                held_mib: v["held_mib"].as_u64().unwrap_or(0),
                vcpus: v["vcpus"].as_u64().unwrap_or(1) as u32,
                pinned,
                reason: v["placement"]["reason"].as_str().unwrap_or("-").to_owned(),
            };
            vms.push(Vm { name, node: id, mem_mib: row.held_mib, vcpus: row.vcpus, pinned });
            rows.push(row);
        }
    }
    Ok(Snapshot { fleet: Fleet { nodes, vms }, members, rows })
}

/// Free memory and vCPUs of `node` in the snapshot (what the scheduler computes).
pub fn free(s: &Snapshot, node: &NodeId) -> (u64, u32) {
    let Some(n) = s.fleet.nodes.iter().find(|n| n.id == *node) else { return (0, 0) };
    let (m, c) = ppn_scheduler::used(&s.fleet, node);
    (n.mem_mib.saturating_sub(m), n.vcpus.saturating_sub(c))
}

/// A placement record for `vm-create` and `vm-placement` (the node's own type, so the node
/// decodes exactly what is sent).
pub fn placement(pinned: bool, reason: Why) -> Value {
    let at_unix_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    serde_json::to_value(ppn_node::vms::Placement { pinned, reason, at_unix_s }).unwrap_or(Value::Null)
}

/// The snapshot's nodes as JSON.
pub fn nodes_json(s: &Snapshot) -> Value {
    Value::Array(
        s.members
            .iter()
            .zip(&s.fleet.nodes)
            .map(|(m, n)| {
                let (fm, fc) = free(s, &m.id);
                json!({ "index": m.index, "node_id": m.id.to_string(), "status": m.status, "why": m.why,
                    "mem_mib": n.mem_mib, "reserved_mib": n.reserved_mib, "vcpus": n.vcpus,
                    "free_mib": fm, "free_vcpus": fc })
            })
            .collect(),
    )
}

/// The snapshot's VMs as JSON.
pub fn rows_json(s: &Snapshot) -> Value {
    Value::Array(
        s.rows
            .iter()
            .map(|r| {
                json!({ "name": r.name, "node": r.node, "node_id": s.members[r.node].id.to_string(), "state": r.state,
                    "mem_mib": r.held_mib, "vcpus": r.vcpus, "pinned": r.pinned, "why": r.reason })
            })
            .collect(),
    )
}

/// The fleet's VMs as a table: where each runs and why.
pub fn print_rows(s: &Snapshot) {
    println!("{:<16} {:<5} {:<16} {:<10} {:>7} {:>5}  WHY", "NAME", "NODE", "NODE ID", "STATE", "MEM", "VCPU");
    for r in &s.rows {
        let why = if r.pinned && r.reason != "pinned" { format!("pinned ({})", r.reason) } else { r.reason.clone() };
        println!(
            "{:<16} {:<5} {:<16} {:<10} {:>6}M {:>5}  {why}",
            r.name, r.node, s.members[r.node].id, r.state, r.held_mib, r.vcpus
        );
    }
}

/// The fleet's nodes as a table.
pub fn print_nodes(s: &Snapshot) {
    println!("{:<5} {:<16} {:<12} {:>9} {:>9} {:>6}  WHY", "NODE", "NODE ID", "STATUS", "OFFERS", "FREE", "VCPU");
    for (m, n) in s.members.iter().zip(&s.fleet.nodes) {
        let (fm, fc) = free(s, &m.id);
        let status = format!("{:?}", m.status).to_lowercase();
        println!(
            "{:<5} {:<16} {:<12} {:>8}M {:>8}M {:>2}/{:<3}  {}",
            m.index, m.id, status, n.mem_mib, fm, fc, n.vcpus, m.why
        );
    }
}

/// QEMU's downtime limit for the migrations the scheduler's plans run (rebalance,
/// evacuation), ms. Higher than `ppn vm migrate`'s 30 on purpose: QEMU before 9.0 under TCG
/// loses guest writes when it syncs the dirty bitmap with the guest running and then iterates
/// again (the TCG TLB is not reset; upstream fix 03bfc2188f, "physmem: Fix migration dirty
/// bitmap coherency with TCG memory access"), and a busy guest's kernel on the destination
/// then panics. With 300 ms QEMU switches over after its first pass (docs/migration.md, "QEMU
/// 7.2 under TCG").
pub const PLAN_DOWNTIME_MS: u64 = 300;

/// A plan as JSON, nodes by index and id.
pub fn plan_json(s: &Snapshot, p: &ppn_scheduler::Plan) -> Value {
    let idx = |id: &NodeId| s.member(id).map_or(usize::MAX, |m| m.index);
    json!({
        "moves": p.moves.iter().map(|m| json!({ "vm": m.vm, "from": idx(&m.from), "from_id": m.from.to_string(),
            "to": idx(&m.to), "to_id": m.to.to_string(), "mem_mib": m.mem_mib, "vcpus": m.vcpus })).collect::<Vec<_>>(),
        "stranded": p.stranded.iter().map(|x| json!({ "vm": x.vm, "node": idx(&x.node), "node_id": x.node.to_string(),
            "why": x.why })).collect::<Vec<_>>(),
    })
}

/// Prints a plan, one line per move and per VM left behind.
pub fn print_plan(s: &Snapshot, p: &ppn_scheduler::Plan) {
    let idx = |id: &NodeId| s.member(id).map_or(usize::MAX, |m| m.index);
    if p.moves.is_empty() {
        println!("nothing to move");
    }
    for (k, m) in p.moves.iter().enumerate() {
        println!(
            "  {}. {} ({} MiB, {} vCPU): node {} -> node {}",
            k + 1,
            m.vm,
            m.mem_mib,
            m.vcpus,
            idx(&m.from),
            idx(&m.to)
        );
    }
    for x in &p.stranded {
        let why = match x.why {
            ppn_scheduler::Stuck::Pinned => "pinned there by the operator",
            ppn_scheduler::Stuck::NoRoom => "no usable node has room for it",
        };
        println!("  stays: {} on node {}: {why}", x.vm, idx(&x.node));
    }
}

/// Runs a plan's moves in order: each a live migration from its node, then the destination
/// records why the VM is there (`reason`). Stops at the first failure (the VM keeps running on
/// its node). Returns each move's result as JSON.
pub fn run_plan(
    s: &Snapshot,
    fleet_dir: &Path,
    p: &ppn_scheduler::Plan,
    reason: Why,
    bar: bool,
) -> Result<Vec<Value>, String> {
    let mut done = Vec::new();
    for m in &p.moves {
        let (from, to) = (s.member(&m.from).ok_or("unknown source")?, s.member(&m.to).ok_or("unknown destination")?);
        let on = crate::vm::On::at(&from.control, fleet_dir);
        let t = std::time::Instant::now();
        let req = json!({ "op": "vm-migrate", "name": m.vm, "to": to.id.to_string(), "downtime_ms": PLAN_DOWNTIME_MS,
                "timeout_s": 300 });
        let status =
            crate::vm::migrate(&on, req, bar).map_err(|e| format!("{e} (moves done before it: {})", done.len()))?;
        fleet::control(
            &to.control,
            &json!({ "op": "vm-placement", "name": m.vm, "placement": placement(false, reason) }),
        )?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if bar {
            println!(
                "  moved {} node {} -> node {} in {ms:.0} ms (guest paused {} ms)",
                m.vm,
                from.index,
                to.index,
                status["guest_pause_ms"].as_f64().map_or("?".into(), |p| format!("{p:.1}"))
            );
        }
        done.push(json!({ "vm": m.vm, "from": from.index, "to": to.index, "ms": ms,
            "guest_pause_ms": status["guest_pause_ms"], "downtime_ms": status["downtime_ms"] }));
    }
    Ok(done)
}

/// `ppn rebalance [--dry-run]`.
pub fn rebalance(fleet_dir: &Path, dry_run: bool, json_out: bool) -> Result<std::process::ExitCode, String> {
    let s = snapshot(fleet_dir)?;
    let p = ppn_scheduler::plan(&s.fleet, ppn_scheduler::Goal::Rebalance);
    if !json_out {
        print_nodes(&s);
        println!("\nplan ({}):", if dry_run { "dry run, nothing moves" } else { "running it" });
        print_plan(&s, &p);
    }
    let done = if dry_run { Vec::new() } else { run_plan(&s, fleet_dir, &p, Why::Rebalanced, !json_out)? };
    if json_out {
        crate::print_json(
            &json!({ "dry_run": dry_run, "nodes": nodes_json(&s), "plan": plan_json(&s, &p), "done": done }),
        )?;
    }
    Ok(std::process::ExitCode::SUCCESS)
}
