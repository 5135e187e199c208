//! `ppn bench migrate --mem 512 --json`: a live migration through the fabric (grant from the
//! source's TCB checked by the destination's, QEMU's stream through the userspace WireGuard
//! mesh between two `ppn-node`s) next to a plain QEMU-to-QEMU migration on loopback of the same
//! kind of guest, in the same run. `--rounds N` (3 by default) moves each guest back and forth
//! N times; the headline figures are medians over the rounds, and `ratio` is the fabric's
//! median total over the raw median (the raw figure alone varies 2x between runs here), with
//! every round under `rounds`.
//!
//! - `downtime_ms`: QEMU's downtime of the fabric migration (downtime limit 30 ms).
//! - `total_ms`: the fabric migration from the `vm-migrate` request until the destination's
//!   proxy said the guest runs there (grant, destination QEMU start, stream, switch-over).
//! - `raw_total_ms`: the plain migration from starting the destination QEMU (`-incoming
//!   defer`) until it runs the guest: the same steps without the grant and the tunnel.
//! - `guest_pause_ms`, `raw_guest_pause_ms`: how long each guest was paused: from the source
//!   QEMU's `STOP` event to the destination QEMU's `RESUME` (their timestamps; one host here).
//!   QEMU's downtime ends when the source has written its last byte; the pause ends when the
//!   destination runs the guest.

use crate::vm::On;
use ppn_node::fleet::{self, UpOptions};
use ppn_vm::agent::AgentStream;
use ppn_vm::migrate::MigrationParams;
use ppn_vm::{VmManager, VmSpec};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Size of the (unplugged) virtio-mem region of both guests, MiB.
const VMEM_MAX_MIB: u64 = 256;
/// How long a guest may take to boot to its first agent report (TCG, a loaded machine).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long one migration may take.
const MIGRATE_LIMIT: Duration = Duration::from_secs(120);
/// The raw guest's two QEMUs (it moves from one to the other and back).
const RAW: [&str; 2] = ["raw-a", "raw-b"];
/// The downtime limit of both migrations, ms.
pub const DOWNTIME_LIMIT_MS: u64 = 30;

#[derive(Debug, Clone)]
pub struct MigrateOpts {
    pub mem: u64,
    pub encoding: String,
    pub rounds: usize,
    pub data_dir: PathBuf,
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn migrate(opts: &MigrateOpts, json_out: bool) -> Result<ExitCode, String> {
    let spec = crate::bench_vm::guest_spec(&opts.data_dir, "bench", opts.mem, VMEM_MAX_MIB)?;
    spec.validate().map_err(|e| format!("--mem {}: {e}", opts.mem))?;
    crate::bench_vm::in_fleet("ppn-bench-migrate.", 0, 2, json_out, |dir, up, raw_dir| async move {
        measure(&dir, &up, &raw_dir, &spec, &opts.encoding, opts.rounds.max(1)).await
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
                        for n in RAW {
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

/// One raw migration: QEMU `from` (running) to a new QEMU `to` on loopback.
struct RawRound {
    total_ms: f64,
    downtime_ms: Option<u64>,
    qemu_total_ms: Option<u64>,
    transferred_mib: u64,
    pause_ms: Option<f64>,
}

async fn raw_round(m: &VmManager, spec: &VmSpec, from: &str, to: &str) -> Result<RawRound, String> {
    let mut s = spec.clone();
    s.name = to.into();
    m.create(&s).map_err(|e| e.to_string())?;
    let params = MigrationParams {
        downtime_limit_ms: DOWNTIME_LIMIT_MS,
        max_bandwidth: ppn_node::migration::DEFAULT_MAX_BANDWIDTH,
    };
    m.set_migration_params(from, params).await.map_err(|e| e.to_string())?;
    let t0 = Instant::now();
    m.start_incoming(to).await.map_err(|e| e.to_string())?;
    let port =
        std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map_err(|e| e.to_string())?.port();
    let uri = format!("tcp:127.0.0.1:{port}");
    m.migrate_incoming(to, &uri).await.map_err(|e| e.to_string())?;
    // The destination's monitor, subscribed before the stream starts: its `RESUME`.
    let c = m.qmp(to).await.map_err(|e| e.to_string())?;
    let mut events = c.subscribe();
    m.migrate_start(from, &uri).await.map_err(|e| e.to_string())?;
    let p = m
        .wait_migration(from, MIGRATE_LIMIT, Duration::from_millis(25), |_| {})
        .await
        .map_err(|e| format!("raw migration: {e}"))?;
    let resumed = ppn_vm::migrate::wait_resumed(&c, &mut events, to, MIGRATE_LIMIT)
        .await
        .map_err(|e| format!("the raw destination: {e}"))?;
    let total_ms = t0.elapsed().as_secs_f64() * 1e3;
    drop(c);
    m.destroy(from).await.map_err(|e| e.to_string())?;
    Ok(RawRound {
        total_ms,
        downtime_ms: p.downtime_ms,
        qemu_total_ms: p.total_time_ms,
        transferred_mib: p.transferred_bytes >> 20,
        pause_ms: ppn_vm::migrate::pause_ms(p.stopped_unix_us, resumed),
    })
}

/// One fabric migration of the guest `name` from node `from` to node `to`: its final status.
fn fabric_round(
    f: &fleet::Fleet,
    on: impl Fn(usize) -> On,
    name: &str,
    (from, to): (usize, usize),
    encoding: &str,
) -> Result<serde_json::Value, String> {
    let (src, dst) = (on(from), on(to));
    let req = json!({ "op": "vm-migrate", "name": name, "to": f.nodes[to].node_id,
        "downtime_ms": DOWNTIME_LIMIT_MS, "encoding": encoding });
    let st = crate::vm::migrate(&src, req, false)?;
    if st["phase"] != "completed" {
        return Err(format!("the fabric migration from node {from} to node {to}: {st}"));
    }
    let listed = dst.call(json!({ "op": "vm-list" }))?;
    let running = listed["vms"].as_array().into_iter().flatten().any(|v| v["name"] == name && v["state"] == "running");
    if !running {
        return Err(format!("after the migration node {to} lists {listed}"));
    }
    Ok(st)
}

/// The median of what is there (`None` for none).
fn median(mut xs: Vec<f64>) -> Option<f64> {
    xs.retain(|x| x.is_finite());
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(xs[n / 2]),
        _ => Some((xs[n / 2 - 1] + xs[n / 2]) / 2.0),
    }
}

async fn measure(
    dir: &Path,
    up: &UpOptions,
    raw_dir: &Path,
    spec: &VmSpec,
    encoding: &str,
    rounds: usize,
) -> Result<serde_json::Value, String> {
    let f = fleet::up(dir, up, |_| {}).await?;
    let on = |i: usize| On::at(&f.nodes[i].control, dir);

    // The fabric's guest on node 1, the raw one beside it; both boot at once.
    on(1).call(json!({ "op": "vm-create", "spec": spec }))?;
    on(1).call(json!({ "op": "vm-start", "name": spec.name }))?;
    let m = VmManager::open(raw_dir).map_err(|e| e.to_string())?;
    let _raw = RawVms(&m);
    let mut s = spec.clone();
    s.name = RAW[0].into();
    m.create(&s).map_err(|e| e.to_string())?;
    m.start(RAW[0]).await.map_err(|e| e.to_string())?;
    first_report(&m.paths(RAW[0]).map_err(|e| e.to_string())?.agent()).await?;
    let t0 = Instant::now();
    loop {
        let v = on(1).call(json!({ "op": "vm-list" }))?;
        if v["vms"][0]["agent"]["counter"].as_u64().is_some() {
            break;
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!("the fabric's guest sent no agent report in {BOOT_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Each round: the raw guest moves between two QEMUs on loopback, then the fabric's guest
    // between the two nodes through the mesh; back and forth.
    let mut per_round = Vec::new();
    let (mut raws, mut fabs) = (Vec::new(), Vec::new());
    for r in 0..rounds {
        let raw = raw_round(&m, spec, RAW[r % 2], RAW[(r + 1) % 2]).await?;
        let hops = if r % 2 == 0 { (1, 0) } else { (0, 1) };
        let st = fabric_round(&f, on, &spec.name, hops, encoding)?;
        per_round.push(json!({
            "from": hops.0, "to": hops.1,
            "downtime_ms": st["downtime_ms"], "raw_downtime_ms": raw.downtime_ms,
            "guest_pause_ms": st["guest_pause_ms"].as_f64().map(r1), "raw_guest_pause_ms": raw.pause_ms.map(r1),
            "total_ms": st["total_ms"].as_f64().map(r1), "raw_total_ms": r1(raw.total_ms),
            "qemu_total_ms": st["qemu_total_ms"], "raw_qemu_total_ms": raw.qemu_total_ms,
            "grant_ms": st["grant_ms"], "ready_ms": st["ready_ms"],
            "transferred_mib": st["progress"]["transferred_bytes"].as_u64().unwrap_or(0) >> 20,
            "raw_transferred_mib": raw.transferred_mib,
            "wire_mib": r1(st["stream"]["wire_bytes"].as_f64().unwrap_or(f64::NAN) / f64::from(1 << 20)),
        }));
        raws.push(raw);
        fabs.push(st);
    }
    let med = |xs: Vec<f64>| median(xs).map(r1);
    let fab = |k: &str| fabs.iter().filter_map(|st| st[k].as_f64()).collect::<Vec<_>>();
    let total = median(fab("total_ms")).unwrap_or(f64::NAN);
    let raw_total = median(raws.iter().map(|x| x.total_ms).collect()).unwrap_or(f64::NAN);
    Ok(json!({
        "downtime_ms": med(fab("downtime_ms")),
        "guest_pause_ms": med(fab("guest_pause_ms")),
        "raw_guest_pause_ms": med(raws.iter().filter_map(|x| x.pause_ms).collect()),
        "total_ms": r1(total),
        "raw_total_ms": r1(raw_total),
        "ratio": (total / raw_total * 100.0).round() / 100.0,
        "raw_downtime_ms": med(raws.iter().filter_map(|x| x.downtime_ms.map(|d| d as f64)).collect()),
        "rounds": per_round,
        "encoding": encoding,
        "mem_mib": spec.base_mib,
        "downtime_limit_ms": DOWNTIME_LIMIT_MS,
        "accel": m.accel().as_str(),
    }))
}
