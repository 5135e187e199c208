//! `ppn bench migrate --mem 512 --json`: a live migration through the fabric (grant from the
//! source's TCB checked by the destination's, QEMU's stream through the userspace WireGuard
//! mesh between two `ppn-node`s) next to a plain QEMU-to-QEMU migration on loopback of the same
//! kind of guest, in the same run.
//!
//! - `downtime_ms`: QEMU's downtime of the fabric migration (downtime limit 30 ms).
//! - `total_ms`: the fabric migration from the `vm-migrate` request until the destination's
//!   proxy said the guest runs there (grant, destination QEMU start, stream, switch-over).
//! - `raw_total_ms`: the plain migration from starting the destination QEMU (`-incoming
//!   defer`) until it runs the guest: the same steps without the grant and the tunnel.
//! - `guest_pause_ms`, `raw_guest_pause_ms`: how long each guest was frozen, as the guest lived
//!   it: from its agent's reports before and after the move (`ppn_vm::agent::frozen_ms`).
//!   QEMU's downtime ends when the source has written its last byte; this ends when the
//!   destination runs the guest.

use crate::vm::On;
use ppn_node::fleet::{self, UpOptions};
use ppn_vm::agent::{AgentStream, ClockSample, frozen_ms};
use ppn_vm::migrate::MigrationParams;
use ppn_vm::{VmManager, VmSpec};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Size of the (unplugged) virtio-mem region of both guests, MiB.
const VMEM_MAX_MIB: u64 = 256;
/// How long a guest may take to boot to its first agent report (TCG, a loaded machine).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long one migration may take.
const MIGRATE_LIMIT: Duration = Duration::from_secs(120);
/// The downtime limit of both migrations, ms.
pub const DOWNTIME_LIMIT_MS: u64 = 30;

#[derive(Debug, Clone)]
pub struct MigrateOpts {
    pub mem: u64,
    pub encoding: String,
    pub data_dir: PathBuf,
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn migrate(opts: &MigrateOpts, json_out: bool) -> Result<ExitCode, String> {
    let spec = crate::bench_vm::guest_spec(&opts.data_dir, "bench", opts.mem, VMEM_MAX_MIB)?;
    spec.validate().map_err(|e| format!("--mem {}: {e}", opts.mem))?;
    crate::bench_vm::in_fleet("ppn-bench-migrate.", 0, 2, json_out, |dir, up, raw_dir| async move {
        measure(&dir, &up, &raw_dir, &spec, &opts.encoding).await
    })
}

/// Raw VMs are destroyed on every path.
struct RawVms<'a>(&'a VmManager);

impl Drop for RawVms<'_> {
    fn drop(&mut self) {
        let m = self.0;
        let dir = m.state_dir().to_path_buf();
        // A runtime is running on this thread; destroy from a helper thread with its own.
        std::thread::scope(|s| {
            s.spawn(|| {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build()
                    && let Ok(m) = VmManager::open(&dir)
                {
                    rt.block_on(async {
                        for n in ["raw-src", "raw-dst"] {
                            let _ = m.destroy(n).await;
                        }
                    });
                }
            });
        });
    }
}

async fn first_report(agent: &Path) -> Result<u64, String> {
    let t0 = Instant::now();
    loop {
        if let Ok(mut s) = AgentStream::connect(agent, Duration::from_secs(2)).await
            && let Ok(r) = s.next_report(BOOT_LIMIT).await
        {
            return Ok(r.report.counter);
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!("no guest agent report on {} in {BOOT_LIMIT:?}", agent.display()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Reports of a guest's agent read from its socket until `stop` (or the socket ends).
async fn sample_socket(agent: PathBuf, stop: &AtomicBool, at_least: usize) -> Vec<ClockSample> {
    let mut out = Vec::new();
    let t0 = Instant::now();
    let Ok(mut s) = AgentStream::connect(&agent, Duration::from_secs(10)).await else { return out };
    while !(stop.load(Ordering::Relaxed) && out.len() >= at_least) && t0.elapsed() < MIGRATE_LIMIT {
        match s.next_report(Duration::from_millis(100)).await {
            Ok(r) => out.push(ClockSample::of(&r)),
            Err(ppn_vm::agent::AgentError::Timeout { .. }) => {}
            Err(_) => break,
        }
    }
    out
}

/// Reports of a guest's agent as a node's `vm-agent` gives them (each new one once), polled
/// until `stop` and at least `at_least` are in.
fn sample_node(on: &On, name: &str, stop: &AtomicBool, at_least: usize) -> Vec<ClockSample> {
    let mut out: Vec<ClockSample> = Vec::new();
    let t0 = Instant::now();
    while !(stop.load(Ordering::Relaxed) && out.len() >= at_least) && t0.elapsed() < MIGRATE_LIMIT {
        if let Ok(v) = on.call(json!({ "op": "vm-agent", "name": name }))
            && let (Some(g), Some(h)) = (v["agent"]["guest_ns"].as_u64(), v["agent"]["at_unix_us"].as_u64())
            && out.last().is_none_or(|l| l.guest_ns != g)
        {
            out.push(ClockSample { guest_ns: g, host_unix_us: h });
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    out
}

/// Reports after the switch-over that the pause is measured on (10 ms apart).
const AFTER_REPORTS: usize = 40;

async fn measure(
    dir: &Path,
    up: &UpOptions,
    raw_dir: &Path,
    spec: &VmSpec,
    encoding: &str,
) -> Result<serde_json::Value, String> {
    let f = fleet::up(dir, up, |_| {}).await?;
    let on = |i: usize| On { node: f.nodes[i].control.display().to_string(), fleet_dir: dir.to_path_buf() };
    let (src, dst) = (on(1), on(0));

    // The fabric's guest on node 1, the raw pair beside it; both boot at once.
    src.call(json!({ "op": "vm-create", "spec": spec }))?;
    src.call(json!({ "op": "vm-start", "name": spec.name }))?;
    let m = VmManager::open(raw_dir).map_err(|e| e.to_string())?;
    let _raw = RawVms(&m);
    for n in ["raw-src", "raw-dst"] {
        let mut s = spec.clone();
        s.name = n.into();
        m.create(&s).map_err(|e| e.to_string())?;
    }
    m.start("raw-src").await.map_err(|e| e.to_string())?;
    first_report(&m.paths("raw-src").map_err(|e| e.to_string())?.agent()).await?;
    let t0 = Instant::now();
    loop {
        let v = src.call(json!({ "op": "vm-list" }))?;
        if v["vms"][0]["agent"]["counter"].as_u64().is_some() {
            break;
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!("the fabric's guest sent no agent report in {BOOT_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Raw: destination QEMU started, listening, source migrates straight to it on loopback.
    let params = MigrationParams {
        downtime_limit_ms: DOWNTIME_LIMIT_MS,
        max_bandwidth: ppn_node::migration::DEFAULT_MAX_BANDWIDTH,
    };
    m.set_migration_params("raw-src", params).await.map_err(|e| e.to_string())?;
    let raw_agent = |n: &str| m.paths(n).map(|p| p.agent()).map_err(|e| e.to_string());
    let src_done = Arc::new(AtomicBool::new(false));
    let raw_before = tokio::spawn({
        let (agent, stop) = (raw_agent("raw-src")?, Arc::clone(&src_done));
        async move { sample_socket(agent, &stop, 0).await }
    });
    // A few reports in before the clock starts.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t_raw = Instant::now();
    m.start_incoming("raw-dst").await.map_err(|e| e.to_string())?;
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let uri = format!("tcp:127.0.0.1:{port}");
    m.migrate_incoming("raw-dst", &uri).await.map_err(|e| e.to_string())?;
    m.migrate_start("raw-src", &uri).await.map_err(|e| e.to_string())?;
    let raw = m
        .wait_migration("raw-src", MIGRATE_LIMIT, Duration::from_millis(25), |_| {})
        .await
        .map_err(|e| format!("raw migration: {e}"))?;
    loop {
        if m.state("raw-dst").await.is_ok_and(|s| s.label() == "running") {
            break;
        }
        if t_raw.elapsed() > MIGRATE_LIMIT {
            return Err("the raw destination never ran".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let raw_total_ms = t_raw.elapsed().as_secs_f64() * 1e3;
    src_done.store(true, Ordering::Relaxed);
    let raw_before = raw_before.await.unwrap_or_default();
    let raw_after = sample_socket(raw_agent("raw-dst")?, &AtomicBool::new(true), AFTER_REPORTS).await;
    let raw_pause = frozen_ms(&raw_before, &raw_after);

    // The fabric: node 1 to node 0 through the mesh.
    let req = json!({ "op": "vm-migrate", "name": spec.name, "to": f.nodes[0].node_id,
        "downtime_ms": DOWNTIME_LIMIT_MS, "encoding": encoding });
    let stop = AtomicBool::new(false);
    let (st, before) = std::thread::scope(|sc| {
        let sampler = sc.spawn(|| sample_node(&src, &spec.name, &stop, 0));
        std::thread::sleep(Duration::from_millis(200));
        let st = crate::vm::migrate(&src, req, false);
        stop.store(true, Ordering::Relaxed);
        (st, sampler.join().unwrap_or_default())
    });
    let st = st?;
    let after = sample_node(&dst, &spec.name, &AtomicBool::new(true), AFTER_REPORTS);
    let pause = frozen_ms(&before, &after);
    let listed = dst.call(json!({ "op": "vm-list" }))?;
    let running_at_dst = listed["vms"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|v| v["name"] == spec.name.as_str() && v["state"] == "running");
    if !running_at_dst {
        return Err(format!("after the migration node 0 lists {listed}"));
    }
    let total_ms = st["total_ms"].as_f64().unwrap_or(f64::NAN);
    Ok(json!({
        "downtime_ms": st["downtime_ms"],
        "guest_pause_ms": pause.map(r1),
        "raw_guest_pause_ms": raw_pause.map(r1),
        "total_ms": r1(total_ms),
        "raw_total_ms": r1(raw_total_ms),
        "ratio": (total_ms / raw_total_ms * 100.0).round() / 100.0,
        "raw_downtime_ms": raw.downtime_ms,
        "qemu_total_ms": st["qemu_total_ms"],
        "raw_qemu_total_ms": raw.total_time_ms,
        "grant_ms": st["grant_ms"],
        "ready_ms": st["ready_ms"],
        "transferred_mib": st["progress"]["transferred_bytes"].as_u64().unwrap_or(0) >> 20,
        "encoding": st["encoding"],
        "wire_mib": r1(st["stream"]["wire_bytes"].as_f64().unwrap_or(f64::NAN) / f64::from(1 << 20)),
        "pause_samples": [before.len(), after.len(), raw_before.len(), raw_after.len()],
        "raw_transferred_mib": raw.transferred_bytes >> 20,
        "mem_mib": spec.base_mib,
        "downtime_limit_ms": DOWNTIME_LIMIT_MS,
        "accel": m.accel().as_str(),
    }))
}
