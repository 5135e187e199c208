//! `ppn bench plug --mib N --json`: growing a VM with memory through the fabric (a lease from
//! another node's TCB, checked by this node's TCB, plugged with virtio-mem) next to a bare QMP
//! `qom-set` of virtio-mem's `requested-size` on the same kind of guest, in the same run.
//!
//! Both are timed from the request until the guest's own MemTotal (its agent's report) shows
//! the memory. Each round plugs and then unplugs again, the fabric's VM and the bare VM taking
//! turns; the medians are reported with their ratio.

use ppn_node::fleet::{self, UpOptions};
use ppn_vm::agent::AgentStream;
use ppn_vm::{VmManager, VmSpec};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Boot memory of both guests, MiB.
const BASE_MIB: u64 = 256;
/// How long a guest may take to boot to its first agent report (TCG, a loaded machine).
const BOOT_LIMIT: Duration = Duration::from_secs(120);
/// How long one plug or unplug may take.
const STEP_LIMIT: Duration = Duration::from_secs(90);

#[derive(Debug, Clone)]
pub struct PlugOpts {
    pub mib: u64,
    pub rounds: usize,
    pub data_dir: PathBuf,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

fn r1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub fn plug(opts: &PlugOpts, json_out: bool) -> Result<ExitCode, String> {
    if opts.mib == 0 || !opts.mib.is_multiple_of(2) || opts.rounds == 0 {
        return Err("--mib must be a positive even number of MiB and --rounds at least 1".into());
    }
    let spec = crate::bench_vm::guest_spec(&opts.data_dir, "bench", BASE_MIB, opts.mib)?;
    let lend_mib = u32::try_from(opts.mib).map_err(|_| "--mib is too large")?;
    crate::bench_vm::in_fleet("ppn-bench-plug.", lend_mib, 1, json_out, |dir, up, raw_dir| async move {
        measure(&dir, &up, &raw_dir, &spec, opts).await
    })
}

/// The latest MemTotal of a guest, kept by a task reading its agent.
fn follow(agent: PathBuf) -> Arc<Mutex<Option<u64>>> {
    let latest = Arc::new(Mutex::new(None));
    let out = Arc::clone(&latest);
    tokio::spawn(async move {
        loop {
            let Ok(mut s) = AgentStream::connect(&agent, Duration::from_secs(2)).await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while let Ok(r) = s.next_report(Duration::from_secs(10)).await {
                *out.lock().unwrap_or_else(|p| p.into_inner()) = Some(r.report.mem_total_kib);
            }
        }
    });
    latest
}

async fn wait_kib(latest: &Mutex<Option<u64>>, pred: impl Fn(u64) -> bool, limit: Duration) -> Result<u64, String> {
    let t0 = Instant::now();
    loop {
        if let Some(k) = *latest.lock().unwrap_or_else(|p| p.into_inner())
            && pred(k)
        {
            return Ok(k);
        }
        if t0.elapsed() > limit {
            return Err(format!("the guest's MemTotal did not get there in {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// A control request to a fleet node, off the async threads (the client is blocking).
async fn control(socket: &Path, req: serde_json::Value) -> Result<serde_json::Value, String> {
    let socket = socket.to_path_buf();
    tokio::task::spawn_blocking(move || fleet::control(&socket, &req)).await.map_err(|e| e.to_string())?
}

async fn measure(
    dir: &Path,
    up: &UpOptions,
    raw_dir: &Path,
    spec: &VmSpec,
    opts: &PlugOpts,
) -> Result<serde_json::Value, String> {
    let f = fleet::up(dir, up, |line| eprintln!("ppn bench: {line}")).await?;
    let borrower = &f.nodes[1];
    let lender = &f.nodes[0];
    let spec_json = serde_json::to_value(spec).map_err(|e| e.to_string())?;
    control(&borrower.control, json!({ "op": "vm-create", "spec": spec_json })).await?;
    control(&borrower.control, json!({ "op": "vm-start", "name": spec.name })).await?;

    let raw = VmManager::open(raw_dir).map_err(|e| e.to_string())?;
    raw.create(spec).map_err(|e| e.to_string())?;
    raw.start(&spec.name).await.map_err(|e| e.to_string())?;
    let raw_agent = follow(raw.paths(&spec.name).map_err(|e| e.to_string())?.agent());
    let measured = rounds(&borrower.control, &lender.node_id, &raw, &raw_agent, spec, opts).await;
    let _ = raw.destroy(&spec.name).await;
    let (fabric, bare, parts) = measured?;
    let (f, r) = (median(fabric.clone()), median(bare.clone()));
    Ok(json!({
        "mib": opts.mib,
        "rounds": opts.rounds,
        "fabric_ms": r1(f),
        "raw_ms": r1(r),
        "ratio": (f / r * 100.0).round() / 100.0,
        "fabric_samples_ms": fabric.iter().map(|x| r1(*x)).collect::<Vec<_>>(),
        "raw_samples_ms": bare.iter().map(|x| r1(*x)).collect::<Vec<_>>(),
        "fabric_lease_ms": r1(median(parts.0)),
        "fabric_verify_ms": (median(parts.1) * 100.0).round() / 100.0,
        "fabric_plug_ms": r1(median(parts.2)),
    }))
}

type Parts = (Vec<f64>, Vec<f64>, Vec<f64>);

async fn rounds(
    borrower: &Path,
    lender: &str,
    raw: &VmManager,
    raw_agent: &Mutex<Option<u64>>,
    spec: &VmSpec,
    opts: &PlugOpts,
) -> Result<(Vec<f64>, Vec<f64>, Parts), String> {
    let kib = opts.mib * 1024;
    // Both guests booted: the fabric's VM has an agent report, the bare one too.
    let t0 = Instant::now();
    let fabric_base = loop {
        let v = control(borrower, json!({ "op": "vm-list" })).await?;
        if let Some(k) = v["vms"][0]["agent"]["mem_total_kib"].as_u64() {
            break k;
        }
        if t0.elapsed() > BOOT_LIMIT {
            return Err(format!("the fabric's guest sent no agent report in {BOOT_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let raw_base = wait_kib(raw_agent, |_| true, BOOT_LIMIT).await?;
    let (mut fabric, mut bare, mut parts) = (Vec::new(), Vec::new(), (Vec::new(), Vec::new(), Vec::new()));
    for round in 0..opts.rounds {
        let t = Instant::now();
        let g = control(
            borrower,
            json!({ "op": "vm-grow", "name": spec.name, "mib": opts.mib, "from": lender, "lease_secs": 600 }),
        )
        .await?;
        fabric.push(t.elapsed().as_secs_f64() * 1e3);
        let g = &g["grown"];
        let total = g["mem_total_kib"].as_u64().unwrap_or(0);
        if total < fabric_base + kib {
            return Err(format!("round {round}: the fabric's guest shows {total} KiB, want {}", fabric_base + kib));
        }
        parts.0.push(g["lease_ms"].as_f64().unwrap_or(f64::NAN));
        parts.1.push(g["verify_ms"].as_f64().unwrap_or(f64::NAN));
        parts.2.push(g["plug_ms"].as_f64().unwrap_or(f64::NAN));
        let lease = g["lease_id"].as_u64().ok_or("vm-grow answered no lease id")?;
        control(borrower, json!({ "op": "lease-release", "lease_id": lease })).await?;

        let t = Instant::now();
        raw.resize_vmem(&spec.name, opts.mib).await.map_err(|e| e.to_string())?;
        wait_kib(raw_agent, |k| k >= raw_base + kib, STEP_LIMIT).await?;
        bare.push(t.elapsed().as_secs_f64() * 1e3);
        raw.resize_vmem_and_wait(&spec.name, 0, STEP_LIMIT).await.map_err(|e| e.to_string())?;
        wait_kib(raw_agent, |k| k < raw_base + kib, STEP_LIMIT).await?;
    }
    Ok((fabric, bare, parts))
}
