//! A real local fleet: `ppn-tcb` and `ppn-node` processes, userspace WireGuard on loopback, the
//! pairing ceremony between the TCBs, gossip over the mesh.
//!
//! - Three nodes come up paired: every node trusts and reaches every other, with the same
//!   ledger heads everywhere.
//! - A node revoked at one TCB is dropped from every other node's mesh, and its handshakes are
//!   refused from then on.
//! - A partition (one node's proxy stopped with SIGSTOP) with revocations on both sides heals to
//!   the same heads everywhere.
//! - `fleet down` leaves no process running.

use ppn_conformance::ledger::fresh_node_id;
use ppn_node::fleet::{self, Fleet};

mod common;
use common::start;
use ppn_tcb_client::blocking::Client;
use ppn_wire::service::RevokeTarget;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

fn heads(f: &Fleet, i: usize) -> BTreeSet<String> {
    let s = fleet::status(&f.nodes[i]).unwrap();
    s["heads"].as_array().unwrap().iter().map(|h| h.as_str().unwrap().to_owned()).collect()
}

fn until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn tcb(f: &Fleet, i: usize) -> Client {
    Client::connect(&f.nodes[i].tcb_socket, Duration::from_secs(10)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paired_fleet_converges_and_a_revoked_node_is_cut_off_everywhere() {
    let run = start(3, 0).await;
    let f = &run.fleet;
    for i in 0..3 {
        let s = fleet::status(&f.nodes[i]).unwrap();
        let peers = s["peers"].as_array().unwrap();
        assert_eq!(peers.len(), 2, "node {i}: {s}");
        assert!(peers.iter().all(|p| p["up"] == true && p["in_mesh"] == true), "node {i}: {s}");
    }
    until("the same heads everywhere", Duration::from_secs(10), || {
        heads(f, 0) == heads(f, 1) && heads(f, 1) == heads(f, 2)
    });

    // Revoke node 2 at node 0.
    let victim = f.nodes[2].node_id.clone();
    let victim_id = ppn_node::hints::parse_node_id(&victim).unwrap();
    tcb(f, 0).revoke(RevokeTarget::Node { node: victim_id }).unwrap();
    let took = until("node 2 out of every other mesh", Duration::from_secs(10), || {
        (0..2).all(|i| {
            let s = fleet::status(&f.nodes[i]).unwrap();
            s["revoked_nodes"] == 1 && !s["peers"].as_array().unwrap().iter().any(|p| p["node_id"] == victim.as_str())
        })
    });
    eprintln!("node 2 cut off everywhere {took:?} after the revocation");
    // Node 2's proxy keeps talking (its own view is stale): the others drop its packets, whose
    // session they no longer have, and refuse its next handshake.
    until("node 2's traffic dropped", Duration::from_secs(30), || {
        (0..2).any(|i| {
            let m = &fleet::status(&f.nodes[i]).unwrap()["mesh"];
            m["packets_unknown_session"].as_u64().unwrap() + m["handshakes_refused"].as_u64().unwrap() > 0
        })
    });
    let stopped = fleet::down(&f.dir, false).unwrap();
    assert_eq!(stopped, 6);
    for n in &f.nodes {
        assert!(!fleet::running(n.tcb_pid, "ppn-tcb") && !fleet::running(n.node_pid, "ppn-node"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_with_revocations_on_both_sides_heals_to_the_same_heads() {
    let run = start(3, 0).await;
    let f = &run.fleet;
    until("the same heads everywhere", Duration::from_secs(10), || {
        heads(f, 0) == heads(f, 1) && heads(f, 1) == heads(f, 2)
    });
    // Node 2's proxy stops: its TCB still works, but nothing reaches or leaves it.
    let signal = |sig: &str, pid: u32| {
        assert!(std::process::Command::new("kill").args(["-s", sig, &pid.to_string()]).status().unwrap().success())
    };
    signal("STOP", f.nodes[2].node_pid);
    let x = fresh_node_id();
    let y = fresh_node_id();
    tcb(f, 0).revoke(RevokeTarget::Node { node: x }).unwrap();
    tcb(f, 2).revoke(RevokeTarget::Node { node: y }).unwrap();
    until("side A has its revocation", Duration::from_secs(10), || {
        tcb(f, 1).ledger_summary().unwrap().revoked_nodes.contains(&x)
    });
    std::thread::sleep(Duration::from_millis(500));
    assert!(!tcb(f, 0).ledger_summary().unwrap().revoked_nodes.contains(&y), "the partition leaked");
    signal("CONT", f.nodes[2].node_pid);
    let took = until("the same heads everywhere after healing", Duration::from_secs(20), || {
        let h = heads(f, 0);
        h == heads(f, 1) && h == heads(f, 2)
    });
    eprintln!("healed in {took:?}");
    for i in 0..3 {
        let s = tcb(f, i).ledger_summary().unwrap();
        assert!(s.revoked_nodes.contains(&x) && s.revoked_nodes.contains(&y), "node {i}: {s:?}");
    }
}
