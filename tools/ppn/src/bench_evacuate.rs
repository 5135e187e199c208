//! `ppn bench evacuate`: a node revoked on the 3-node emulated fleet, its VMs evacuated
//! (`crate::evacuate`): the revocation to every other TCB refusing the node, and to the last
//! of its VMs running on a trusted node. The fleet and its guests start in a temporary
//! directory and are stopped at the end.

use crate::bench_vm::{guest_spec, in_fleet};
use ppn_node::fleet;
use serde_json::json;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct EvacuateOpts {
    /// Unpinned VMs on the node that is revoked.
    pub vms: usize,
    /// Each VM's boot memory, MiB.
    pub mem: u64,
    pub data_dir: PathBuf,
}

pub fn evacuate(o: &EvacuateOpts, json_out: bool) -> Result<ExitCode, String> {
    if o.vms == 0 {
        return Err("--vms must be at least 1".into());
    }
    let o = o.clone();
    in_fleet("ppn-bench-evacuate-", 0, 2, json_out, move |dir, mut up, _scratch| async move {
        up.nodes = 3;
        up.vm_mem_mib = Some(o.mem * (o.vms as u64 + 1));
        up.vm_vcpus = Some(o.vms as u32 + 1);
        let f = fleet::up(&dir, &up, |l| eprintln!("{l}")).await?;
        let victim = 2;
        for k in 0..o.vms {
            let name = format!("bench-{k}");
            let spec = guest_spec(&o.data_dir, &name, o.mem, o.mem)?;
            let control = f.nodes[victim].control.clone();
            let placement = crate::place::placement(false, crate::place::Why::Chosen);
            fleet::control(&control, &json!({ "op": "vm-create", "spec": spec, "placement": placement }))?;
            fleet::control(&control, &json!({ "op": "vm-start", "name": name }))?;
        }
        // Every guest up and reporting before the revocation.
        let t = Instant::now();
        for k in 0..o.vms {
            let name = format!("bench-{k}");
            while fleet::control(&f.nodes[victim].control, &json!({ "op": "vm-agent", "name": name })).is_err() {
                if t.elapsed() > Duration::from_secs(120) {
                    return Err(format!("{name} did not report in 120 s"));
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        let dir2 = dir.clone();
        let v =
            tokio::task::spawn_blocking(move || crate::evacuate::revoke_and_evacuate(&dir2, &victim.to_string(), true))
                .await
                .map_err(|e| e.to_string())??;
        Ok(json!({
            "vms": v["vms"],
            "revoke_to_refused_ms": v["revoke_to_refused_ms"],
            "revoke_to_last_vm_running_ms": v["revoke_to_last_vm_running_ms"],
            "refused_ms": v["refused_ms"],
            "moved": v["moved"],
            "total_ms": v["total_ms"],
            "vm_mem_mib": o.mem,
            "downtime_limit_ms": crate::place::PLAN_DOWNTIME_MS,
        }))
    })
}
