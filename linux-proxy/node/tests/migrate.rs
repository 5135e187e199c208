//! Live migration through the fabric with real QEMU guests (TCG here) in a 2-node local fleet
//! (docs/migration.md). Set `PPN_SKIP_GUEST=1` to skip on a machine that cannot build the guest
//! image.
//!
//! - A VM on node 1 migrates to node 0: the guest agent's counter never goes back across the
//!   move, the longest silence between two reports the hosts saw is about the downtime, the VM
//!   runs on node 0 and is gone from node 1.
//! - The destination's QEMU is killed mid-migration: the VM keeps running on the source, its
//!   counter keeps going, and the destination is cleaned up. A destination that has revoked the
//!   source refuses the migration, and the VM stays on the source.

use ppn_node::fleet::{self, Fleet};

mod common;
use common::{guest_image, start};
use serde_json::{Value, json};
use std::path::PathBuf;
use std::time::{Duration, Instant};

const VM: &str = "mig";

/// Booted-guest tests in this file run one at a time (two cores, TCG).
async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The VM's directory on node `i` (`ppn-node --dir` is the node's `node/`).
fn vm_dir(f: &Fleet, i: usize) -> PathBuf {
    f.nodes[i].dir.join("node").join(ppn_node::vms::VM_DIR).join(VM)
}

fn call(f: &Fleet, i: usize, req: Value) -> Value {
    fleet::control(&f.nodes[i].control, &req).unwrap_or_else(|e| panic!("node {i}: {req}: {e}"))
}

fn try_call(f: &Fleet, i: usize, req: Value) -> Result<Value, String> {
    fleet::control(&f.nodes[i].control, &req)
}

/// The latest agent report of the VM on node `i`: (counter, host receive time, µs).
fn agent(f: &Fleet, i: usize) -> Option<(u64, u64)> {
    let v = try_call(f, i, json!({ "op": "vm-agent", "name": VM })).ok()?;
    Some((v["agent"]["counter"].as_u64()?, v["agent"]["at_unix_us"].as_u64()?))
}

fn state(f: &Fleet, i: usize) -> Option<String> {
    let v = call(f, i, json!({ "op": "vm-list" }));
    v["vms"].as_array().unwrap().iter().find(|x| x["name"] == VM).map(|x| x["state"].as_str().unwrap().to_owned())
}

/// Creates and starts the VM on node `i`; returns when its agent reported.
fn boot(f: &Fleet, i: usize, img: &ppn_guest_agent::image::GuestImage) {
    let abs = |p: &std::path::Path| std::fs::canonicalize(p).unwrap();
    let spec = json!({ "name": VM, "vcpus": 1, "base_mib": 256, "vmem_max_mib": 256,
        "kernel": abs(&img.kernel), "initrd": abs(&img.initrd), "cmdline": img.cmdline });
    call(f, i, json!({ "op": "vm-create", "spec": spec }));
    call(f, i, json!({ "op": "vm-start", "name": VM }));
    let t0 = Instant::now();
    while agent(f, i).is_none() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no agent report from the guest on node {i}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn migration(f: &Fleet, i: usize) -> Value {
    call(f, i, json!({ "op": "vm-migrate-status", "name": VM }))["migration"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_vm_moves_to_another_node_and_its_counter_never_goes_back() {
    let _serial = serial().await;
    let Some(img) = guest_image() else { return };
    let run = start(2, 256).await;
    let f = &run.fleet;
    boot(f, 1, &img);
    // 64 MiB borrowed from node 0 and plugged move with the guest (docs/migration.md, Leases).
    let grown = call(f, 1, json!({ "op": "vm-grow", "name": VM, "mib": 64, "from": f.nodes[0].node_id }));
    let mem_total_kib = grown["grown"]["mem_total_kib"].as_u64().expect("MemTotal after the grow");
    // 300 ms, not the 30 of `ppn vm migrate`: QEMU before 9.0 under TCG loses guest writes when
    // it syncs the dirty bitmap with the guest running and then iterates again (the TCG TLB is
    // not reset; fixed upstream by 03bfc2188f "physmem: Fix migration dirty bitmap coherency
    // with TCG memory access"), and the destination's kernel then panics within seconds. With
    // 30 ms a busy guest (just grown) needed that second running pass in 1 run of 5 (85 runs:
    // dirty-sync-count 4 to 6 crashed every time, 3 never); with 300 ms QEMU switches over after
    // its first pass (0 crashes in 29 runs). docs/migration.md, "QEMU 7.2 under TCG".
    let limit_ms = 300;
    call(f, 1, json!({ "op": "vm-migrate", "name": VM, "to": f.nodes[0].node_id, "downtime_ms": limit_ms }));
    // Follow the guest on both nodes until the migration ends: (node, counter, received µs).
    let mut seen: Vec<(usize, u64, u64)> = Vec::new();
    let t0 = Instant::now();
    let status = loop {
        for i in [1, 0] {
            if let Some((c, at)) = agent(f, i)
                && seen.last().is_none_or(|&(n, lc, _)| (n, lc) != (i, c))
            {
                seen.push((i, c, at));
            }
        }
        let m = migration(f, 1);
        if m["phase"] == "completed" || m["phase"] == "failed" {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "migration not done in 60 s: {m}");
        std::thread::sleep(Duration::from_millis(2));
    };
    eprintln!("migration: {status}");
    assert_eq!(status["phase"], "completed", "{status}");
    // Forty reports on the destination after the switch.
    let t1 = Instant::now();
    while seen.iter().filter(|s| s.0 == 0).count() < 40 {
        assert!(t1.elapsed() < Duration::from_secs(15), "the destination's guest does not report: {seen:?}");
        if let Some((c, at)) = agent(f, 0)
            && seen.last().is_none_or(|&(n, lc, _)| (n, lc) != (0, c))
        {
            seen.push((0, c, at));
        }
        std::thread::sleep(Duration::from_millis(2));
    }

    // Reports in the order the hosts received them: the counter never goes back, and the
    // destination's first report is beyond the source's last.
    seen.sort_by_key(|&(_, _, at)| at);
    seen.dedup_by_key(|&mut (n, c, _)| (n, c));
    let counters: Vec<u64> = seen.iter().map(|s| s.1).collect();
    assert!(
        counters.windows(2).all(|w| w[0] <= w[1]),
        "counter went back: {seen:?}\n--- destination's console ---\n{}\n--- source's console ---\n{}",
        serial_tail(f, 0),
        serial_tail(f, 1)
    );
    let last_src = seen.iter().filter(|s| s.0 == 1).map(|s| s.1).max().expect("reports from the source");
    let first_dst = seen.iter().find(|s| s.0 == 0).expect("reports from the destination");
    assert!(first_dst.1 > last_src, "destination's first counter {} <= source's last {last_src}", first_dst.1);
    let max_gap_ms = seen.windows(2).map(|w| (w[1].2 - w[0].2) as f64 / 1e3).fold(0.0, f64::max);
    let downtime = status["downtime_ms"].as_u64().expect("QEMU's downtime");
    let pause_ms = status["guest_pause_ms"].as_f64().expect("the guest's pause (STOP to RESUME)");
    eprintln!(
        "downtime {downtime} ms (limit {limit_ms}), guest paused {pause_ms:.1} ms, total {} ms, QEMU total {} ms, \
         stream {} ({}); {} reports followed, largest gap between two seen by the hosts {max_gap_ms:.1} ms; \
         source's last counter {last_src}, destination's first {}",
        status["total_ms"],
        status["qemu_total_ms"],
        status["encoding"],
        status["stream"],
        seen.len(),
        first_dst.1
    );
    // QEMU's downtime: the limit is its target (it usually stops well below it: 20-70 ms).
    assert!(downtime < 3 * limit_ms, "downtime {downtime} ms");
    // The guest's pause, the source QEMU's STOP to the destination's RESUME: QEMU's downtime
    // (until the source wrote its last byte) plus the tail of the stream through the tunnel and
    // the destination's load: 26-82 ms in 29 runs of this debug build, up to 542 ms when the
    // two cores also ran a build and two other TCG guests.
    assert!(pause_ms + 2.0 >= downtime as f64, "paused {pause_ms:.1} ms, less than QEMU's downtime {downtime} ms");
    assert!(pause_ms < 3.0 * limit_ms as f64, "the guest was paused {pause_ms:.1} ms");
    // QEMU switched over after its first pass with the guest running (setup sync, one running
    // sync, the final sync): the case the QEMU bug above cannot touch.
    let syncs = status["progress"]["dirty_sync_count"].as_u64();
    eprintln!("dirty-sync-count {syncs:?}");
    assert_eq!(status["encoding"], "zstd");
    let stream = &status["stream"];
    assert!(stream["wire_bytes"].as_u64() < stream["stream_bytes"].as_u64(), "{stream}");

    // Runs on node 0, gone from node 1.
    assert_eq!(state(f, 0).as_deref(), Some("running"));
    assert_eq!(state(f, 1), None);
    assert!(!vm_dir(f, 1).exists());

    // The plugged memory came along, and the leases followed it: node 0 borrows the 64 MiB from
    // node 1 (its one peer) and books it as plugged; node 1's lease from node 0 ended with its
    // copy of the VM, and node 0's pool has it back (pools count 2 MiB blocks).
    let leases = |i: usize| call(f, i, json!({ "op": "lease-list" }))["leases"].clone();
    let lender = f.nodes[1].node_id.to_string();
    let t2 = Instant::now();
    loop {
        let (l0, l1) = (leases(0), leases(1));
        let b0 = l0["borrowed"].as_array().cloned().unwrap_or_default();
        let settled = b0.len() == 1
            && b0[0]["mib"] == 64
            && b0[0]["plugged"] == true
            && b0[0]["lender"] == lender.as_str()
            && l1["borrowed"].as_array().is_some_and(|b| b.is_empty())
            && l0["pool"]["lent"] == 0
            && l1["pool"]["lent"].as_u64().zip(l1["pool"]["block_mib"].as_u64()).map(|(n, b)| n * b) == Some(64);
        if settled {
            break;
        }
        assert!(t2.elapsed() < Duration::from_secs(30), "the leases did not follow the VM: node 0 {l0}, node 1 {l1}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (c, _) = agent(f, 0).expect("a report on node 0");
    let v = call(f, 0, json!({ "op": "vm-agent", "name": VM }));
    assert_eq!(v["agent"]["mem_total_kib"].as_u64(), Some(mem_total_kib), "counter {c}: {v}");
    // The guest lives on with it for a while (a guest that had been handed corrupt memory
    // panicked within seconds: `panic=-1` and `-no-reboot` end its QEMU).
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(state(f, 0).as_deref(), Some("running"), "{}", serial_tail(f, 0));
    let (c2, _) = agent(f, 0).expect("a report on node 0");
    assert!(c2 > c, "the counter stood still at {c}");
}

fn serial_tail(f: &Fleet, i: usize) -> String {
    let log = std::fs::read_to_string(vm_dir(f, i).join("serial.log")).unwrap_or_default();
    log.lines().rev().take(30).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_killed_mid_migration_leaves_the_vm_running_on_the_source() {
    let _serial = serial().await;
    let Some(img) = guest_image() else { return };
    let run = start(2, 256).await;
    let f = &run.fleet;
    boot(f, 1, &img);

    // Throttled to 16 MB/s so that the stream (about 90 MB for this guest) takes a few seconds.
    call(
        f,
        1,
        json!({ "op": "vm-migrate", "name": VM, "to": f.nodes[0].node_id, "downtime_ms": 30, "max_bandwidth": 16_000_000 }),
    );
    let pidfile = vm_dir(f, 0).join("qemu.pid");
    let t0 = Instant::now();
    loop {
        let m = migration(f, 1);
        let sent = m["progress"]["transferred_bytes"].as_u64().unwrap_or(0);
        if m["phase"] == "migrating" && sent > 8 << 20 && pidfile.exists() {
            break;
        }
        assert!(m["phase"] != "completed" && m["phase"] != "failed", "ended before the kill: {m}");
        assert!(t0.elapsed() < Duration::from_secs(60), "migration never got going: {m}");
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let before = agent(f, 1).unwrap();
    assert!(std::process::Command::new("kill").args(["-KILL", pid.trim()]).status().unwrap().success());
    eprintln!("killed the destination's QEMU {} after {:?}", pid.trim(), t0.elapsed());

    let t1 = Instant::now();
    let status = loop {
        let m = migration(f, 1);
        if m["phase"] == "completed" || m["phase"] == "failed" {
            break m;
        }
        assert!(t1.elapsed() < Duration::from_secs(30), "the source did not notice: {m}");
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("after the kill ({:?}): {status}", t1.elapsed());
    assert_eq!(status["phase"], "failed", "{status}");
    assert_eq!(status["source_running"], true, "{status}");
    assert_eq!(state(f, 1).as_deref(), Some("running"));
    // The counter keeps going on the source.
    let t2 = Instant::now();
    loop {
        let now = agent(f, 1).unwrap();
        if now.0 > before.0 + 20 {
            break;
        }
        assert!(t2.elapsed() < Duration::from_secs(10), "counter stuck at {now:?} (before the kill {before:?})");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The destination cleaned up.
    let t3 = Instant::now();
    while state(f, 0).is_some() || vm_dir(f, 0).exists() {
        assert!(t3.elapsed() < Duration::from_secs(10), "node 0 kept the dead destination: {:?}", state(f, 0));
        std::thread::sleep(Duration::from_millis(50));
    }

    // Node 0 revokes node 1: its TCB no longer finds node 1's grants valid (and its mesh drops
    // node 1), so the migration is refused and the VM stays on node 1.
    let tcb0 = ppn_tcb_client::blocking::Client::connect(&f.nodes[0].tcb_socket, Duration::from_secs(10));
    let mut tcb0 = tcb0.unwrap();
    let node1: ppn_wire::NodeId = f.nodes[1].node_id.parse().unwrap();
    tcb0.revoke(ppn_wire::service::RevokeTarget::Node { node: node1 }).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    call(f, 1, json!({ "op": "vm-migrate", "name": VM, "to": f.nodes[0].node_id }));
    let t4 = Instant::now();
    let refused = loop {
        let m = migration(f, 1);
        if m["phase"] == "completed" || m["phase"] == "failed" {
            break m;
        }
        assert!(t4.elapsed() < Duration::from_secs(40), "no outcome: {m}");
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("to a node that revoked the source: {refused}");
    assert_eq!(refused["phase"], "failed", "{refused}");
    assert_eq!(refused["source_running"], true);
    assert_eq!(state(f, 1).as_deref(), Some("running"));
    assert_eq!(state(f, 0), None);
}
