//! `ppn node revoke NODE`: revoke a node of the local fleet and bring everything home.
//!
//! 1. A trusted node's TCB signs the revocation; the mesh gossips it. Every other TCB refuses
//!    the node from the moment its ledger holds the record (`revoke_to_refused_ms`: the last
//!    TCB to hold it).
//! 2. The lenders' TCBs end the revoked node's leases as the record arrives (the lender core
//!    ends a lease whose borrower is revoked), so its borrowed memory returns to their pools.
//! 3. The scheduler plans the evacuation (docs/scheduler.md): every unpinned VM of the node to
//!    the best fit among the trusted nodes; pinned VMs stay and are reported.
//! 4. Each move: the destination's operator order (`vm-evacuate-accept`, which keeps the revoked
//!    node in the destination's mesh for that migration only), then a live migration from the
//!    revoked node without a grant (its TCB issues none now), then the destination records it
//!    as `evacuated`. `revoke_to_last_vm_running_ms`: the revocation to the last VM running on
//!    its new node.

use crate::place::{self, Snapshot};
use ppn_node::fleet;
use ppn_scheduler::{Goal, Status};
use ppn_tcb_client::blocking::Client;
use ppn_wire::NodeId;
use ppn_wire::service::RevokeTarget;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the TCBs and lenders get to take in the revocation.
const SETTLE: Duration = Duration::from_secs(30);

fn tcb(socket: &Path) -> Result<Client, String> {
    Client::connect(socket, Duration::from_secs(10)).map_err(|e| format!("TCB at {}: {e}", socket.display()))
}

/// Revokes `node` and evacuates it; returns the summary (JSON), printing progress unless `quiet`.
pub fn revoke_and_evacuate(fleet_dir: &Path, node: &str, quiet: bool) -> Result<Value, String> {
    let say = |s: String| {
        if !quiet {
            println!("{s}");
        }
    };
    let f = fleet::load(fleet_dir)?;
    let before = place::snapshot(fleet_dir)?;
    let target = before.resolve(node)?.clone();
    let issuer = before
        .members
        .iter()
        .find(|m| m.id != target.id && m.status == Status::Trusted)
        .ok_or("no other trusted node to sign the revocation")?
        .clone();
    // What the node borrows now (it comes home when the lenders end the leases).
    let borrowed = fleet::control(&target.control, &json!({ "op": "lease-list" }))
        .map(|v| v["leases"]["borrowed"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    let pools_before: Vec<Option<u64>> = f
        .nodes
        .iter()
        .map(|n| {
            fleet::control(&n.control, &json!({ "op": "lease-list" }))
                .ok()
                .and_then(|v| v["leases"]["pool"]["lent"].as_u64())
        })
        .collect();

    // 1. The revocation, and every other TCB refusing the node.
    let t0 = Instant::now();
    let record = tcb(&f.nodes[issuer.index].tcb_socket)?
        .revoke(RevokeTarget::Node { node: target.id })
        .map_err(|e| format!("node {}'s TCB refused the revocation: {e}", issuer.index))?;
    say(format!("revoked node {} ({}) by node {}'s TCB: record {record:x}", target.index, target.id, issuer.index));
    let mut refused_ms = Vec::new();
    for n in f.nodes.iter().filter(|n| n.index != target.index) {
        let mut c = tcb(&n.tcb_socket)?;
        loop {
            let s = c.ledger_summary().map_err(|e| format!("node {}'s TCB: {e}", n.index))?;
            if s.revoked_nodes.contains(&target.id) {
                refused_ms.push((n.index, t0.elapsed().as_secs_f64() * 1e3));
                break;
            }
            if t0.elapsed() > SETTLE {
                return Err(format!("node {}'s TCB does not hold the revocation after {SETTLE:?}", n.index));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let revoke_to_refused_ms = refused_ms.iter().map(|r| r.1).fold(0.0, f64::max);
    say(format!("every other TCB refuses node {} ({revoke_to_refused_ms:.0} ms)", target.index));

    // 2. The plan, from the fleet as it is now.
    let s = wait_revoked(fleet_dir, &target.id)?;
    let plan = ppn_scheduler::plan(&s.fleet, Goal::Evacuate);
    let mine: Vec<_> = plan.moves.iter().filter(|m| m.from == target.id).cloned().collect();
    let stranded: Vec<_> = plan.stranded.iter().filter(|x| x.node == target.id).cloned().collect();
    say(format!("evacuation plan: {} VMs to move, {} stay", mine.len(), stranded.len()));
    if !quiet {
        place::print_plan(&s, &ppn_scheduler::Plan { moves: mine.clone(), stranded: stranded.clone() });
    }

    // 3. The moves.
    let mut moved = Vec::new();
    let mut last_running_ms: f64 = 0.0;
    for m in &mine {
        let to = s.member(&m.to).ok_or("unknown destination")?;
        fleet::control(
            &to.control,
            &json!({ "op": "vm-evacuate-accept", "name": m.vm, "from": target.id.to_string() }),
        )?;
        let on = crate::vm::On::at(&target.control, fleet_dir);
        let t = Instant::now();
        let req = json!({ "op": "vm-migrate", "name": m.vm, "to": to.id.to_string(),
            "downtime_ms": place::PLAN_DOWNTIME_MS, "timeout_s": 300, "evacuate": true });
        let status = crate::vm::migrate(&on, req, !quiet)?;
        last_running_ms = t0.elapsed().as_secs_f64() * 1e3;
        fleet::control(
            &to.control,
            &json!({ "op": "vm-placement", "name": m.vm,
            "placement": place::placement(false, place::Why::Evacuated) }),
        )?;
        say(format!(
            "  {} now runs on node {} ({:.0} ms, guest paused {} ms)",
            m.vm,
            to.index,
            t.elapsed().as_secs_f64() * 1e3,
            status["guest_pause_ms"].as_f64().map_or("?".into(), |p| format!("{p:.1}"))
        ));
        moved.push(json!({ "vm": m.vm, "to": to.index, "to_id": to.id.to_string(),
            "ms": t.elapsed().as_secs_f64() * 1e3, "guest_pause_ms": status["guest_pause_ms"] }));
    }

    // 4. Borrowed memory home: each lender's pool lends less by what the node borrowed.
    let mut home = Vec::new();
    for b in &borrowed {
        let (Some(lender), Some(mib)) =
            (b["lender"].as_str().and_then(|l| l.parse::<NodeId>().ok()), b["mib"].as_u64())
        else {
            continue;
        };
        let Some(l) = s.member(&lender) else { continue };
        let Some(was) = pools_before[l.index] else { continue };
        let blocks = mib / 2;
        loop {
            let now = fleet::control(&l.control, &json!({ "op": "lease-list" }))?["leases"]["pool"]["lent"].as_u64();
            if now.is_some_and(|n| n + blocks <= was) {
                break;
            }
            if t0.elapsed() > SETTLE + Duration::from_secs(300) {
                return Err(format!("node {}'s pool still lends the revoked node's {mib} MiB", l.index));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        say(format!("  {mib} MiB lent by node {} came home (lease {})", l.index, b["lease_id"]));
        home.push(json!({ "lender": l.index, "mib": mib, "lease_id": b["lease_id"] }));
    }
    let idx = |id: &NodeId| s.member(id).map_or(usize::MAX, |m| m.index);
    Ok(json!({
        "node": target.index,
        "node_id": target.id.to_string(),
        "revoked_by": issuer.index,
        "vms": mine.len(),
        "moved": moved,
        "stayed": stranded.iter().map(|x| json!({ "vm": x.vm, "why": x.why, "node": idx(&x.node) })).collect::<Vec<_>>(),
        "came_home": home,
        "revoke_to_refused_ms": revoke_to_refused_ms,
        "refused_ms": refused_ms.iter().map(|(i, ms)| json!({ "node": i, "ms": ms })).collect::<Vec<_>>(),
        "revoke_to_last_vm_running_ms": if mine.is_empty() { Value::Null } else { json!(last_running_ms) },
        "total_ms": t0.elapsed().as_secs_f64() * 1e3,
    }))
}

/// The fleet once the other nodes' proxies see `node` revoked (their peer sync follows their
/// ledgers within a second or so).
fn wait_revoked(fleet_dir: &Path, node: &NodeId) -> Result<Snapshot, String> {
    let t = Instant::now();
    loop {
        let s = place::snapshot(fleet_dir)?;
        if s.member(node).is_some_and(|m| m.status == Status::Revoked) {
            return Ok(s);
        }
        if t.elapsed() > SETTLE {
            return Err(format!("the fleet's proxies do not see node {node} revoked after {SETTLE:?}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Prints the summary of [`revoke_and_evacuate`].
pub fn print_summary(v: &Value) {
    println!(
        "\nnode {} ({}) revoked: every other TCB refused it after {:.0} ms",
        v["node"],
        v["node_id"].as_str().unwrap_or("?"),
        v["revoke_to_refused_ms"].as_f64().unwrap_or(0.0)
    );
    for m in v["moved"].as_array().into_iter().flatten() {
        println!(
            "  moved  {} -> node {} ({:.0} ms)",
            m["vm"].as_str().unwrap_or("?"),
            m["to"],
            m["ms"].as_f64().unwrap_or(0.0)
        );
    }
    for x in v["stayed"].as_array().into_iter().flatten() {
        println!(
            "  stayed {} on the revoked node: {}",
            x["vm"].as_str().unwrap_or("?"),
            x["why"].as_str().unwrap_or("?")
        );
    }
    for h in v["came_home"].as_array().into_iter().flatten() {
        println!("  home   {} MiB to node {}'s pool", h["mib"], h["lender"]);
    }
    match v["revoke_to_last_vm_running_ms"].as_f64() {
        Some(ms) => println!(
            "last VM running elsewhere {ms:.0} ms after the revocation; all done in {:.0} ms",
            v["total_ms"].as_f64().unwrap_or(0.0)
        ),
        None => println!("no VM had to move; all done in {:.0} ms", v["total_ms"].as_f64().unwrap_or(0.0)),
    }
}
