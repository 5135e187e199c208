//! `ppn demo`: the fleet demo, the README's main command. A 3-node emulated fleet on this
//! machine (each node a hosted TCB and a `ppn-node`, paired with CPace and a SAS, meshed over
//! userspace WireGuard); a VM placed by the scheduler, grown with memory another node lends,
//! live-migrated; a pinned VM; then a node revoked and evacuated. Each step is narrated and
//! followed by a status table. Everything runs in a temporary directory and is stopped on the
//! way out, on an error and on Ctrl-C: no process and no state are left behind.

use crate::place;
use ppn_node::fleet::{self, UpOptions};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Data directory of the guest image cache (DIR/ppn-guest; built on first use).
    #[arg(long, env = "PPN_DATA_DIR", default_value = "target")]
    pub data_dir: PathBuf,
    /// Keep the fleet's directory (logs, disks) instead of removing it at the end.
    #[arg(long)]
    pub keep: bool,
}

fn say(step: &mut u32, text: &str) {
    *step += 1;
    println!("\n\x1b[1m# {step}. {text}\x1b[0m");
}

/// Stops the fleet (and its VMs) and removes its directory: on the way out, and on Ctrl-C.
struct Cleanup {
    dir: Mutex<Option<tempfile::TempDir>>,
    keep: bool,
    done: AtomicBool,
}

impl Cleanup {
    fn run(&self) {
        if self.done.swap(true, Ordering::SeqCst) {
            return;
        }
        let Some(tmp) = self.dir.lock().unwrap_or_else(|p| p.into_inner()).take() else { return };
        let fleet_dir = tmp.path().join("fleet");
        if fleet_dir.join(fleet::FLEET_JSON).exists() {
            match fleet::down(&fleet_dir, !self.keep) {
                Ok(n) => println!("stopped {n} processes (the fleet and its VMs); nothing of the demo is running"),
                Err(e) => eprintln!("ppn demo: stopping the fleet: {e}"),
            }
        }
        if self.keep {
            println!("kept {}", tmp.keep().display());
        }
    }
}

fn wait_agent(control: &Path, vm: &str) -> Result<(), String> {
    let t = Instant::now();
    while fleet::control(control, &json!({ "op": "vm-agent", "name": vm })).is_err() {
        if t.elapsed() > Duration::from_secs(180) {
            return Err(format!("{vm}'s guest did not report in 180 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn tables(dir: &Path) -> Result<place::Snapshot, String> {
    let s = place::snapshot(dir)?;
    place::print_rows(&s);
    println!();
    place::print_nodes(&s);
    Ok(s)
}

/// Defines and starts VM `name` where the scheduler (or the pin) says.
fn start_vm(dir: &Path, data_dir: &Path, name: &str, mem: u64, pin: Option<&str>) -> Result<PathBuf, String> {
    let on = crate::vm::On { node: None, fleet_dir: dir.to_path_buf() };
    let (on, placement) = crate::vm::where_to(&on, name, pin, mem, 1)?;
    let spec = crate::bench_vm::guest_spec(data_dir, name, mem, 512)?;
    on.call(json!({ "op": "vm-create", "spec": spec, "placement": placement }))?;
    let v = on.call(json!({ "op": "vm-start", "name": name }))?;
    println!("started {name}: QEMU pid {}; waiting for its guest agent", v["started"]["pid"]);
    let control = on.socket()?;
    wait_agent(&control, name)?;
    Ok(control)
}

fn node_of(s: &place::Snapshot, vm: &str) -> Result<usize, String> {
    Ok(s.holder(vm)?.index)
}

pub fn run(args: DemoArgs) -> Result<ExitCode, String> {
    let tmp = tempfile::Builder::new().prefix("ppn-demo-").tempdir().map_err(|e| format!("temp dir: {e}"))?;
    let dir = tmp.path().join("fleet");
    let cleanup = Arc::new(Cleanup { dir: Mutex::new(Some(tmp)), keep: args.keep, done: AtomicBool::new(false) });
    {
        // Ctrl-C (or a TERM): stop everything, then leave.
        let cleanup = Arc::clone(&cleanup);
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
                }
            });
            eprintln!("\nppn demo: interrupted; stopping the fleet");
            cleanup.run();
            std::process::exit(130);
        });
    }
    // On a thread of its own: the demo starts its own runtime for the fleet.
    let result = std::thread::scope(|s| {
        s.spawn(|| demo(&dir, &args.data_dir)).join().unwrap_or_else(|_| Err("the demo thread panicked".into()))
    });
    cleanup.run();
    result.map(|()| ExitCode::SUCCESS)
}

fn demo(dir: &Path, data_dir: &Path) -> Result<(), String> {
    let mut step = 0;
    let t0 = Instant::now();

    say(
        &mut step,
        "A fleet of three nodes on this machine: each a TCB (hosted ppn-tcb) and a ppn-node; node 0 pairs with the others (CPace, six-digit SAS, key confirmation), and every node meshes with every other over userspace WireGuard. Each offers VMs 1024 MiB and 4 vCPUs, and lends 1024 MiB of its pool.",
    );
    let up = UpOptions { vm_mem_mib: Some(1024), vm_vcpus: Some(4), ..crate::fleet::up_options(3, 1024)? };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let f = rt.block_on(fleet::up(dir, &up, |l| println!("  {l}")))?;
    place::print_nodes(&place::snapshot(dir)?);

    say(
        &mut step,
        "VM web (384 MiB) is placed by the scheduler: best fit on memory, then vCPUs, among the nodes the ledger trusts and the mesh reaches. Every node has 1024 MiB free, so the lowest node id wins.",
    );
    let web_control = start_vm(dir, data_dir, "web", 384, None)?;
    let s = tables(dir)?;
    let web_node = node_of(&s, "web")?;

    say(
        &mut step,
        "web grows by 128 MiB lent by another node: that node's TCB leases blocks of its pool and endorses the token, web's node's TCB checks it, virtio-mem plugs the memory and the guest sees it.",
    );
    let g = fleet::control(&web_control, &json!({ "op": "vm-grow", "name": "web", "mib": 128 }))?;
    let g = &g["grown"];
    println!(
        "web grew by 128 MiB from {} (lease {}): guest MemTotal {} MiB, in {:.0} ms",
        g["lender"].as_str().unwrap_or("?"),
        g["lease_id"],
        g["mem_total_kib"].as_u64().unwrap_or(0) / 1024,
        g["total_ms"].as_f64().unwrap_or(0.0)
    );
    tables(dir)?;

    say(
        &mut step,
        "web moves by live migration to the node the scheduler would drain it to: its node's TCB grants the destination the VM (endorsed), the destination's TCB checks it, QEMU's stream crosses the WireGuard tunnel compressed, and the borrowed memory follows the VM.",
    );
    let plan = ppn_scheduler::plan(&s.fleet, ppn_scheduler::Goal::Drain(s.members[web_node].id));
    let to = plan.moves.iter().find(|m| m.vm == "web").map(|m| m.to).ok_or("the scheduler has no node for web")?;
    let to_m = s.member(&to).ok_or("unknown node")?.clone();
    let on = crate::vm::On::at(&web_control, dir);
    let req = json!({ "op": "vm-migrate", "name": "web", "to": to.to_string(),
        "downtime_ms": place::PLAN_DOWNTIME_MS, "timeout_s": 300 });
    let m = crate::vm::migrate(&on, req, true)?;
    fleet::control(
        &to_m.control,
        &json!({ "op": "vm-placement", "name": "web", "placement": place::placement(false, place::Why::Migrated) }),
    )?;
    println!(
        "web now runs on node {}: guest paused {} ms, {} MiB of QEMU stream sent as {} MiB",
        to_m.index,
        m["guest_pause_ms"].as_f64().map_or("?".into(), |p| format!("{p:.1}")),
        m["stream"]["stream_bytes"].as_u64().unwrap_or(0) >> 20,
        m["stream"]["wire_bytes"].as_u64().unwrap_or(0) >> 20
    );
    wait_agent(&to_m.control, "web")?;

    say(
        &mut step,
        &format!(
            "VM db is pinned by the operator to node {}, where web now runs: it goes there or nowhere, and nothing moves it.",
            to_m.index
        ),
    );
    start_vm(dir, data_dir, "db", 256, Some(&to_m.index.to_string()))?;
    tables(dir)?;

    say(
        &mut step,
        &format!(
            "The operator revokes node {}: another node's TCB signs the revocation and the mesh gossips it; every TCB refuses the node; the memory it borrowed goes back to its lender; web (unpinned) is evacuated live to a trusted node; db (pinned) is reported and left.",
            to_m.index
        ),
    );
    let v = crate::evacuate::revoke_and_evacuate(dir, &to_m.index.to_string(), false)?;
    crate::evacuate::print_summary(&v);
    tables(dir)?;

    say(&mut step, "Leases: what each node lends and borrows now.");
    for n in &f.nodes {
        let l = fleet::control(&n.control, &json!({ "op": "lease-list" }))?;
        let pool = &l["leases"]["pool"];
        let borrowed: u64 =
            l["leases"]["borrowed"].as_array().map_or(0, |b| b.iter().filter_map(|x| x["mib"].as_u64()).sum());
        println!(
            "  node {}: pool {} blocks, {} lent; borrows {borrowed} MiB",
            n.index,
            pool["total"].as_u64().map_or("-".into(), |t| t.to_string()),
            pool["lent"].as_u64().map_or("-".into(), |t| t.to_string())
        );
    }
    println!("\ndemo done in {:.0} s; stopping the fleet", t0.elapsed().as_secs_f64());
    Ok(())
}
