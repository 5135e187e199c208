//! The scheduler's rules, over random fleets: best fit, never an unusable node, pins kept,
//! plans that never overcommit a node at any step, the same answer for the same input.

use ppn_scheduler::{
    Fleet, Goal, Move, Node, PlaceError, Reason, Request, Status, Stuck, Vm, apply, place, place_all, plan, used,
};
use ppn_wire::{ByteArray, NodeId};
use proptest::prelude::*;
use std::collections::BTreeSet;

fn id(n: u8) -> NodeId {
    NodeId(ByteArray([n, 0, 0, 0, 0, 0, 0, 0]))
}

fn status() -> impl Strategy<Value = Status> {
    prop_oneof![6 => Just(Status::Trusted), 1 => Just(Status::Revoked), 1 => Just(Status::Unreachable)]
}

/// 1 to 10 nodes (distinct ids), 0 to 30 VMs on them (node over its capacity sometimes), some
/// pinned.
fn fleet() -> impl Strategy<Value = Fleet> {
    let nodes = proptest::collection::btree_map(0u8..40, (1u64..64, 0u64..8, 1u32..16, status()), 1..10);
    nodes
        .prop_flat_map(|nodes| {
            let nodes: Vec<Node> = nodes
                .into_iter()
                .map(|(i, (mem, reserved, vcpus, status))| Node {
                    id: id(i),
                    mem_mib: mem * 256,
                    reserved_mib: reserved * 128,
                    vcpus,
                    status,
                })
                .collect();
            let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
            let vms = proptest::collection::vec((0..ids.len(), 1u64..24, 1u32..6, prop::bool::weighted(0.2)), 0..30);
            (Just(nodes), Just(ids), vms)
        })
        .prop_map(|(nodes, ids, vms)| Fleet {
            nodes,
            vms: vms
                .into_iter()
                .enumerate()
                .map(|(k, (n, mem, vcpus, pinned))| Vm {
                    name: format!("vm{k}"),
                    node: ids[n],
                    mem_mib: mem * 128,
                    vcpus,
                    pinned,
                })
                .collect(),
        })
}

/// What `n` has free in `f`, negative when over. Lent-out memory beyond what the node offers
/// leaves it nothing for VMs (not less than nothing: no VM can make up for it).
fn free(f: &Fleet, n: &Node) -> (i128, i64) {
    let (m, c) = used(f, &n.id);
    let offered = n.mem_mib.saturating_sub(n.reserved_mib);
    (i128::from(offered) - i128::from(m - n.reserved_mib), i64::from(n.vcpus) - i64::from(c))
}

fn request(name: &str, mem: u64, vcpus: u32, pin: Option<NodeId>) -> Request {
    Request { name: name.into(), mem_mib: mem, vcpus, pin }
}

/// The same fleet with its nodes and VMs in another order.
fn shuffled(f: &Fleet, seed: u64) -> Fleet {
    let mut g = f.clone();
    let k = (seed as usize) % (g.nodes.len().max(1));
    g.nodes.rotate_left(k);
    g.nodes.reverse();
    if !g.vms.is_empty() {
        let k = (seed as usize / 7) % g.vms.len();
        g.vms.rotate_left(k);
    }
    g
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn a_placement_is_the_best_fit_among_usable_nodes(f in fleet(), mem in 1u64..40, vcpus in 1u32..8) {
        let r = request("new", mem * 128, vcpus, None);
        // Brute force: the least (memory, then vCPUs) left over, then the lowest id.
        let best = f.nodes.iter()
            .filter(|n| n.status == Status::Trusted)
            .filter_map(|n| {
                let (m, c) = free(&f, n);
                (m >= i128::from(r.mem_mib) && c >= i64::from(r.vcpus)).then_some((m, c, n.id))
            })
            .min();
        match place(&f, &r) {
            Ok(p) => {
                prop_assert_eq!(p.reason, Reason::BestFit);
                prop_assert_eq!(Some(p.node), best.map(|b| b.2));
            }
            Err(PlaceError::NoRoom { .. }) => prop_assert!(best.is_none(), "a node fits: {:?}", best),
            Err(e) => prop_assert!(false, "{}", e),
        }
    }

    #[test]
    fn a_pinned_request_goes_to_its_pin_or_says_why_not(f in fleet(), pick in 0usize..10, mem in 1u64..40) {
        let node = &f.nodes[pick % f.nodes.len()];
        let r = request("pinned", mem * 128, 1, Some(node.id));
        let (m, c) = free(&f, node);
        match place(&f, &r) {
            Ok(p) => {
                prop_assert_eq!((p.node, p.reason), (node.id, Reason::Pinned));
                prop_assert!(node.status == Status::Trusted && m >= i128::from(r.mem_mib) && c >= 1);
            }
            Err(PlaceError::PinUnusable { node: n, status, .. }) => {
                prop_assert_eq!(n, node.id);
                prop_assert_eq!(status, node.status);
                prop_assert!(status != Status::Trusted);
            }
            Err(PlaceError::PinFull { node: n, .. }) => {
                prop_assert_eq!(n, node.id);
                prop_assert!(node.status == Status::Trusted && (m < i128::from(r.mem_mib) || c < 1));
            }
            Err(e) => prop_assert!(false, "{}", e),
        }
        // A pin to a node the fleet does not know.
        let unknown = request("lost", 128, 1, Some(id(200)));
        prop_assert!(matches!(place(&f, &unknown), Err(PlaceError::PinUnknown { .. })), "an unknown pin was placed");
    }

    #[test]
    fn a_batch_never_overcommits_and_answers_like_the_input_order_does_not_matter(
        f in fleet(),
        reqs in proptest::collection::vec((1u64..30, 1u32..6, prop::option::weighted(0.1, 0u8..40)), 0..25),
        seed in any::<u64>(),
    ) {
        let reqs: Vec<Request> = reqs.iter().enumerate()
            .map(|(k, &(m, c, pin))| request(&format!("new{k}"), m * 128, c, pin.map(id)))
            .collect();
        let answers = place_all(&f, &reqs);
        prop_assert_eq!(answers.len(), reqs.len());
        let mut after = f.clone();
        for (r, a) in reqs.iter().zip(&answers) {
            if let Ok(p) = a {
                prop_assert_eq!(&p.name, &r.name);
                let n = f.nodes.iter().find(|n| n.id == p.node).unwrap();
                prop_assert_eq!(n.status, Status::Trusted);
                if let Some(pin) = r.pin { prop_assert_eq!(p.node, pin); }
                after.vms.push(Vm { name: r.name.clone(), node: p.node, mem_mib: r.mem_mib, vcpus: r.vcpus, pinned: r.pin.is_some() });
            }
        }
        // A node that took new VMs is within what it offers.
        let touched: BTreeSet<NodeId> = answers.iter().filter_map(|a| a.as_ref().ok().map(|p| p.node)).collect();
        for n in f.nodes.iter().filter(|n| touched.contains(&n.id)) {
            let (m, c) = free(&after, n);
            prop_assert!(m >= 0 && c >= 0, "node {} overcommitted: {} MiB, {} vCPUs free", n.id, m, c);
        }
        // Same input, any order: same answers.
        prop_assert_eq!(place_all(&shuffled(&f, seed), &reqs), answers);
    }

    #[test]
    fn a_plan_keeps_pins_avoids_unusable_nodes_and_never_overcommits_at_any_step(
        f in fleet(),
        goal in prop_oneof![Just(0u8), Just(1u8), Just(2u8)],
        drain in 0usize..10,
        seed in any::<u64>(),
    ) {
        let drained = f.nodes[drain % f.nodes.len()].id;
        let goal = match goal { 0 => Goal::Evacuate, 1 => Goal::Drain(drained), _ => Goal::Rebalance };
        let p = plan(&f, goal);
        let usable = |n: &NodeId| {
            f.nodes.iter().any(|x| x.id == *n && x.status == Status::Trusted) && goal != Goal::Drain(*n)
        };
        let mut moved = BTreeSet::new();
        for m in &p.moves {
            let vm = f.vms.iter().find(|v| v.name == m.vm).unwrap();
            prop_assert!(!vm.pinned, "pinned {} moved", vm.name);
            prop_assert_eq!(m.from, vm.node);
            prop_assert!(usable(&m.to) && m.to != m.from, "{:?}", m);
            prop_assert!(moved.insert(m.vm.clone()), "{} moved twice", m.vm);
        }
        // Step by step: each destination is within what it offers once the VM is on it.
        for (m, step) in p.moves.iter().zip(apply(&f, &p.moves)) {
            let n = f.nodes.iter().find(|n| n.id == m.to).unwrap();
            let (fm, fc) = free(&step, n);
            prop_assert!(fm >= 0 && fc >= 0, "step {:?} leaves {} at {} MiB, {} vCPUs", m, n.id, fm, fc);
        }
        // Every VM on a node it may not stay on moved, or is reported with the reason.
        let stranded: Vec<(&str, Stuck)> = p.stranded.iter().map(|s| (s.vm.as_str(), s.why)).collect();
        for vm in f.vms.iter().filter(|v| !usable(&v.node)) {
            let here = stranded.iter().find(|s| s.0 == vm.name).map(|s| s.1);
            if vm.pinned {
                prop_assert_eq!(here, Some(Stuck::Pinned));
            } else {
                prop_assert!(moved.contains(&vm.name) || here == Some(Stuck::NoRoom), "{} left on {}", vm.name, vm.node);
            }
        }
        // Rebalance: every usable node ends within what it offers, or says what keeps it over.
        if goal == Goal::Rebalance {
            let end = apply(&f, &p.moves).pop().unwrap_or_else(|| f.clone());
            for n in f.nodes.iter().filter(|n| usable(&n.id)) {
                let (fm, fc) = free(&end, n);
                let reported = p.stranded.iter().any(|s| s.node == n.id);
                prop_assert!((fm >= 0 && fc >= 0) || reported, "node {} over: {} MiB, {} vCPUs", n.id, fm, fc);
            }
        }
        prop_assert_eq!(plan(&shuffled(&f, seed), goal), p);
    }
}

#[test]
fn requests_that_cannot_be_placed_say_why() {
    let f = Fleet {
        nodes: vec![Node { id: id(1), mem_mib: 1024, reserved_mib: 0, vcpus: 2, status: Status::Trusted }],
        vms: vec![Vm { name: "a".into(), node: id(1), mem_mib: 512, vcpus: 1, pinned: false }],
    };
    assert!(matches!(place(&f, &request("a", 128, 1, None)), Err(PlaceError::NameTaken(n)) if n == "a"));
    assert!(matches!(place(&f, &request("b", 0, 1, None)), Err(PlaceError::Empty(_))));
    assert!(matches!(place(&f, &request("b", 1024, 1, None)), Err(PlaceError::NoRoom { .. })));
    let e = place(&f, &request("b", 1024, 1, Some(id(1)))).unwrap_err();
    assert_eq!(
        e.to_string(),
        "VM b: pinned to node 0100000000000000, which has 512 MiB and 1 vCPUs free, not 1024 MiB and 1 vCPUs"
    );
    // Two requests of one name in a batch: the second is refused.
    let twice = place_all(&f, &[request("c", 128, 1, None), request("c", 128, 1, None)]);
    assert!(twice[0].is_ok() && matches!(twice[1], Err(PlaceError::NameTaken(_))), "{twice:?}");
}

#[test]
fn evacuating_a_revoked_node_moves_the_unpinned_and_reports_the_pinned() {
    let (a, b, c) = (id(1), id(2), id(3));
    let node = |id, status| Node { id, mem_mib: 4096, reserved_mib: 0, vcpus: 8, status };
    let vm = |name: &str, node, mem, pinned| Vm { name: name.into(), node, mem_mib: mem, vcpus: 1, pinned };
    let f = Fleet {
        nodes: vec![node(a, Status::Revoked), node(b, Status::Trusted), node(c, Status::Trusted)],
        vms: vec![vm("web", a, 1024, false), vm("db", a, 2048, true), vm("big", b, 3072, false)],
    };
    let p = plan(&f, Goal::Evacuate);
    // Best fit: b has 1024 MiB free, exactly what web needs.
    assert_eq!(p.moves, vec![Move { vm: "web".into(), from: a, to: b, mem_mib: 1024, vcpus: 1 }]);
    assert_eq!(p.stranded.len(), 1);
    assert_eq!((p.stranded[0].vm.as_str(), p.stranded[0].why), ("db", Stuck::Pinned));
    // Draining b as well: big goes to c, and web (planned after big, largest first) then fits
    // nowhere but c too.
    let p = plan(&f, Goal::Drain(b));
    let tos: Vec<(&str, NodeId)> = p.moves.iter().map(|m| (m.vm.as_str(), m.to)).collect();
    assert_eq!(tos, vec![("big", c), ("web", c)]);
}
