//! The balloon controller against real booted guests: a one-node local fleet (`ppn-tcb`,
//! `ppn-node`), two TCG guests (Debian kernel, busybox, the agent) created and started through
//! the control socket. The guest runs nothing but its agent, so its memory use cannot be driven
//! from here; the test moves what the policy reacts to from outside instead: the node's budget
//! and the VMs' memory weights. It checks the plan (sum within the budget, floors, weights), that
//! QEMU's `query-balloon` actual follows the targets, that the guests' MemTotal follows the
//! balloon, that the targets stay put once reached (no flapping), that floors win over a budget
//! below them, and that the default budget gives every VM its ceiling back.
//! `PPN_SKIP_GUEST=1` skips it on a machine that cannot build the guest image.

use ppn_node::fleet;

mod common;
use common::{guest_image, start, until};
use ppn_vm::VmManager;
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const BASE_MIB: u64 = 512;

fn call(socket: &Path, req: Value) -> Value {
    fleet::control(socket, &req).unwrap_or_else(|e| panic!("{req}: {e}"))
}

fn balloon(socket: &Path, req: Value) -> Value {
    let mut req = req;
    req["op"] = json!("node-balloon");
    call(socket, req)["balloon"].take()
}

fn vm<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["vms"].as_array().unwrap().iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{name}: {status}"))
}

fn u(v: &Value, field: &str) -> u64 {
    v[field].as_u64().unwrap_or_else(|| panic!("{field} in {v}"))
}

/// Waits until QEMU's balloon actual (query-balloon, our own QMP connection) is within 2 MiB
/// of each VM's target, and returns the time it took.
async fn actuals_reach(m: &VmManager, targets: &[(&str, u64)], limit: Duration) -> Duration {
    let t0 = Instant::now();
    for (name, t) in targets {
        loop {
            // The controller's own QMP connection may hold the monitor for a moment.
            if let Ok(a) = m.balloon_status(name).await
                && a.abs_diff(*t) <= 2
            {
                break;
            }
            assert!(t0.elapsed() < limit, "{name}: balloon actual did not reach {t} MiB within {limit:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    t0.elapsed()
}

/// Waits until the guest's MemTotal (its agent, as the node keeps it) is `reserve` below the
/// balloon target, within 4 MiB.
fn mem_total_follows(socket: &Path, name: &str, target: u64, reserve: u64) -> u64 {
    let (total, _) =
        until(&format!("{name}: MemTotal follows the balloon to {target} MiB"), Duration::from_secs(15), || {
            let s = balloon(socket, json!({}));
            let total = vm(&s, name)["mem_total_mib"].as_u64()?;
            (total.abs_diff(target - reserve) <= 4).then_some(total)
        });
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_balloon_controller_moves_memory_by_budget_and_weight() {
    let Some(img) = guest_image() else { return };
    let t_start = Instant::now();
    let run = start(1, 0).await;
    let sock = run.fleet.nodes[0].control.clone();
    let m = VmManager::open(run.fleet.nodes[0].dir.join("node").join(ppn_node::vms::VM_DIR)).unwrap();

    for name in ["bal-a", "bal-b"] {
        let spec = json!({
            "name": name, "vcpus": 1, "base_mib": BASE_MIB, "vmem_max_mib": 256,
            "kernel": img.kernel, "initrd": img.initrd, "cmdline": img.cmdline,
            "weights": { "cpu": 100, "memory": 100 },
        });
        call(&sock, json!({ "op": "vm-create", "spec": spec }));
        call(&sock, json!({ "op": "vm-start", "name": name }));
    }

    // Both guests report; with the default budget (the sum of the ceilings) nothing moves.
    let (s, boot) = until("both guests observed by the controller", Duration::from_secs(60), || {
        let s = balloon(&sock, json!({}));
        let ok = ["bal-a", "bal-b"].iter().all(|n| {
            let Some(v) = s["vms"].as_array().into_iter().flatten().find(|v| v["name"] == *n) else { return false };
            v["pressure"] != "unobserved" && v["actual_mib"].is_u64() && v["mem_total_mib"].is_u64()
        });
        ok.then_some(s)
    });
    eprintln!("guests observed {boot:?} after the start:\n{s:#}");
    assert_eq!(s["budget_source"], "sum of ceilings");
    assert_eq!(u(&s, "budget_mib"), 2 * BASE_MIB);
    assert_eq!(u(&s, "changes"), 0, "no overcommit, no balloon: {s}");
    let mut reserve = 0;
    for n in ["bal-a", "bal-b"] {
        let v = vm(&s, n);
        assert_eq!((u(v, "target_mib"), u(v, "actual_mib")), (BASE_MIB, BASE_MIB), "{v}");
        // What the guest's kernel keeps outside MemTotal (kernel image, memmap, initramfs).
        reserve = BASE_MIB - u(v, "mem_total_mib");
        assert!(u(v, "floor_mib") < BASE_MIB / 2, "an idle guest's floor: {v}");
    }

    // 1. A budget of 768 MiB for 1024 MiB of ceilings, equal weights: equal shares.
    let s = balloon(&sock, json!({ "budget_mib": 768 }));
    let (a, b) = (vm(&s, "bal-a"), vm(&s, "bal-b"));
    eprintln!("budget 768:\n{s:#}");
    assert_eq!(s["budget_source"], "operator");
    assert!(u(&s, "sum_targets_mib") <= 768 && u(&s, "sum_targets_mib") >= 768 - 8, "{s}");
    assert_eq!(u(&s, "overcommit_mib"), 0);
    let (ta, tb) = (u(a, "target_mib"), u(b, "target_mib"));
    assert!(ta.abs_diff(tb) <= 8 && ta >= u(a, "floor_mib") && tb >= u(b, "floor_mib"), "{s}");
    let took = actuals_reach(&m, &[("bal-a", ta), ("bal-b", tb)], Duration::from_secs(20)).await;
    let total_a = mem_total_follows(&sock, "bal-a", ta, reserve);
    eprintln!("budget 768: targets {ta}/{tb} MiB, actuals reached in {took:?}; bal-a MemTotal {total_a} MiB");

    // No flapping: once reached, the targets stay (3 more runs of the controller).
    let sent = u(&balloon(&sock, json!({})), "changes");
    std::thread::sleep(Duration::from_secs(3));
    let s = balloon(&sock, json!({}));
    assert_eq!(u(&s, "changes"), sent, "targets changed with nothing changing: {s}");
    assert_eq!((u(vm(&s, "bal-a"), "target_mib"), u(vm(&s, "bal-b"), "target_mib")), (ta, tb));

    // 2. bal-b weighs three times as much: its share above the floor is three times bal-a's.
    let s = balloon(&sock, json!({ "weight": { "vm": "bal-b", "memory": 300 } }));
    eprintln!("weight 300 for bal-b:\n{s:#}");
    let (a, b) = (vm(&s, "bal-a"), vm(&s, "bal-b"));
    assert_eq!(b["weight_source"], "override");
    let (ta2, tb2) = (u(a, "target_mib"), u(b, "target_mib"));
    let (sa, sb) = (ta2 - u(a, "want_mib"), tb2 - u(b, "want_mib"));
    assert!(tb2 > tb && ta2 < ta, "weights move memory from a to b: {ta}/{tb} -> {ta2}/{tb2}");
    assert!(sb.abs_diff(3 * sa) <= 8, "shares above want {sa}/{sb} are not 1:3: {s}");
    assert!(ta2 + tb2 <= 768);
    let took = actuals_reach(&m, &[("bal-a", ta2), ("bal-b", tb2)], Duration::from_secs(20)).await;
    let total_b = mem_total_follows(&sock, "bal-b", tb2, reserve);
    eprintln!("weights 100/300: targets {ta2}/{tb2} MiB, actuals reached in {took:?}; bal-b MemTotal {total_b} MiB");

    // 3. A budget below the floors: floors win, the overcommit is reported, the guests live on.
    let s = balloon(&sock, json!({ "budget_mib": 256 }));
    eprintln!("budget 256:\n{s:#}");
    let (a, b) = (vm(&s, "bal-a"), vm(&s, "bal-b"));
    let (fa, fb) = (u(a, "floor_mib"), u(b, "floor_mib"));
    assert_eq!((u(a, "target_mib"), u(b, "target_mib")), (fa, fb));
    assert_eq!(u(&s, "overcommit_mib"), fa + fb - 256);
    assert!(fa >= 128 && fb >= 128);
    let took = actuals_reach(&m, &[("bal-a", fa), ("bal-b", fb)], Duration::from_secs(20)).await;
    let counter = |name: &str| {
        let vms = call(&sock, json!({ "op": "vm-list" }))["vms"].take();
        vms.as_array().unwrap().iter().find(|v| v["name"] == name).unwrap()["agent"]["counter"].as_u64().unwrap()
    };
    let c0 = counter("bal-a");
    let ((), _) = until("bal-a's agent reports at its floor", Duration::from_secs(10), || {
        (counter("bal-a") > c0 + 10).then_some(())
    });
    eprintln!("budget 256: floors {fa}/{fb} MiB, overcommit {} MiB, actuals reached in {took:?}", fa + fb - 256);

    // 4. Back to the default budget: every VM gets its ceiling back.
    let s = balloon(&sock, json!({ "budget_mib": null }));
    assert_eq!(s["budget_source"], "sum of ceilings");
    assert_eq!((u(vm(&s, "bal-a"), "target_mib"), u(vm(&s, "bal-b"), "target_mib")), (BASE_MIB, BASE_MIB));
    let took = actuals_reach(&m, &[("bal-a", BASE_MIB), ("bal-b", BASE_MIB)], Duration::from_secs(20)).await;
    mem_total_follows(&sock, "bal-a", BASE_MIB, reserve);
    eprintln!("default budget: ceilings back in {took:?}; whole test {:?}", t_start.elapsed());

    let stopped = fleet::down(&run.fleet.dir, false).unwrap();
    assert_eq!(stopped, 4, "ppn-tcb, ppn-node and the two QEMUs");
    for name in ["bal-a", "bal-b"] {
        assert!(!matches!(m.state(name).await.unwrap(), ppn_vm::VmState::Live { .. }), "{name} still runs");
    }
}
