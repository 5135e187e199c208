//! `ppn vm ...` and `ppn lease ...`: a node's VMs and the memory they borrow, through the node's
//! control socket (`ppn-node`, docs/lending.md).

use crate::print_json;
use ppn_guest_agent::image::{self, ImageOptions};
use ppn_node::fleet;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

/// Which node: its control socket, or its index in a local fleet.
#[derive(Debug, clap::Args)]
pub struct On {
    /// The node: a control socket path (`DIR/node.sock`), or a node index of the local fleet.
    #[arg(long, env = "PPN_NODE", default_value = "0")]
    pub node: String,
    /// The local fleet's directory (for `--node INDEX`).
    #[arg(long, env = "PPN_FLEET_DIR", default_value_os_t = std::env::temp_dir().join("ppn-fleet"))]
    pub fleet_dir: PathBuf,
}

impl On {
    pub fn socket(&self) -> Result<PathBuf, String> {
        match self.node.parse::<usize>() {
            Ok(i) => {
                let f = fleet::load(&self.fleet_dir)?;
                let n = f.nodes.get(i).ok_or_else(|| format!("the fleet has no node {i}"))?;
                Ok(n.control.clone())
            }
            Err(_) => Ok(PathBuf::from(&self.node)),
        }
    }

    pub fn call(&self, request: Value) -> Result<Value, String> {
        fleet::control(&self.socket()?, &request)
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Define a VM on the node (the guest image is built or taken from the cache first).
    Create {
        name: String,
        #[command(flatten)]
        on: On,
        /// Boot memory, MiB.
        #[arg(long, default_value_t = 256)]
        mem: u64,
        /// Most memory that can be plugged later (virtio-mem region), MiB.
        #[arg(long, default_value_t = 2048)]
        max: u64,
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Data directory of the guest image cache (DIR/ppn-guest).
        #[arg(long, env = "PPN_DATA_DIR", default_value = "target")]
        data_dir: PathBuf,
        /// Start it too.
        #[arg(long)]
        start: bool,
    },
    /// Start a VM (QEMU, daemonized: it outlives ppn-node).
    Start {
        name: String,
        #[command(flatten)]
        on: On,
    },
    /// Stop a VM (power down, then quit).
    Stop {
        name: String,
        #[command(flatten)]
        on: On,
    },
    /// Stop a VM if it runs, remove it, and end its leases.
    Destroy {
        name: String,
        #[command(flatten)]
        on: On,
    },
    /// The node's VMs: state, memory (base, plugged, borrowed), the guest's own figures.
    List {
        #[command(flatten)]
        on: On,
        #[arg(long)]
        json: bool,
    },
    /// Grow a VM with memory lent by another node: lease, checked by this node's TCB, plugged
    /// with virtio-mem; returns when the guest's MemTotal shows it.
    Grow {
        name: String,
        #[command(flatten)]
        on: On,
        /// MiB to add (a multiple of 2).
        #[arg(long)]
        mib: u64,
        /// The lending node (16 hex digits); default: best fit by the adverts.
        #[arg(long)]
        from: Option<String>,
        /// Lease length, seconds.
        #[arg(long, default_value_t = 3600)]
        lease_secs: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum LeaseCommand {
    /// Leases this node borrows, its own pool, and what it lent.
    List {
        #[command(flatten)]
        on: On,
        #[arg(long)]
        json: bool,
    },
    /// Give a borrowed lease's memory back now (unplug, then the lender releases it).
    Release {
        lease_id: u64,
        #[command(flatten)]
        on: On,
    },
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Create { name, on, mem, max, vcpus, data_dir, start } => {
            let cache = data_dir.join("ppn-guest");
            let img = image::ensure(&cache, &ImageOptions { agent: None, force: false, verbose: true })
                .map_err(|e| format!("guest image in {}: {e}", cache.display()))?;
            let abs = |p: &std::path::Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
            let spec = json!({
                "name": name, "vcpus": vcpus, "base_mib": mem, "vmem_max_mib": max,
                "kernel": abs(&img.kernel)?, "initrd": abs(&img.initrd)?, "cmdline": img.cmdline,
            });
            on.call(json!({ "op": "vm-create", "spec": spec }))?;
            println!("created {name}: {mem} MiB, up to {max} MiB more by virtio-mem, {vcpus} vCPU");
            if start {
                let v = on.call(json!({ "op": "vm-start", "name": name }))?;
                println!("started {name}: pid {}", v["started"]["pid"]);
            }
        }
        Command::Start { name, on } => {
            let v = on.call(json!({ "op": "vm-start", "name": name }))?;
            println!("started {name}: pid {}, QMP after {:.0} ms", v["started"]["pid"], v["started"]["boot_to_qmp_ms"]);
        }
        Command::Stop { name, on } => {
            let v = on.call(json!({ "op": "vm-stop", "name": name }))?;
            println!("{name}: {}", v["stopped"]);
        }
        Command::Destroy { name, on } => {
            let v = on.call(json!({ "op": "vm-destroy", "name": name }))?;
            println!("{name}: destroyed ({})", v["destroyed"]);
        }
        Command::List { on, json } => {
            let v = on.call(json!({ "op": "vm-list" }))?;
            if json {
                print_json(&v["vms"])?;
            } else {
                println!(
                    "{:<16} {:<10} {:>6} {:>8} {:>9} {:>11} {:>9}",
                    "NAME", "STATE", "BASE", "PLUGGED", "BORROWED", "GUEST TOTAL", "COUNTER"
                );
                for vm in v["vms"].as_array().into_iter().flatten() {
                    let mem = &vm["memory"];
                    let mib = |x: &Value| x.as_u64().map_or("-".into(), |m| format!("{m}M"));
                    let guest = vm["agent"]["mem_total_kib"].as_u64().map_or("-".into(), |k| format!("{}M", k / 1024));
                    println!(
                        "{:<16} {:<10} {:>6} {:>8} {:>8}M {:>11} {:>9}",
                        vm["name"].as_str().unwrap_or("?"),
                        vm["state"].as_str().unwrap_or("?"),
                        mib(&mem["base_mib"]),
                        mib(&mem["plugged_mib"]),
                        vm["borrowed_mib"],
                        guest,
                        vm["agent"]["counter"].as_u64().map_or("-".into(), |c| c.to_string()),
                    );
                }
            }
        }
        Command::Grow { name, on, mib, from, lease_secs, json } => {
            let mut req = json!({ "op": "vm-grow", "name": name, "mib": mib, "lease_secs": lease_secs });
            if let Some(f) = from {
                req["from"] = json!(f);
            }
            let v = on.call(req)?;
            let g = &v["grown"];
            if json {
                print_json(g)?;
            } else {
                println!(
                    "{name} grew by {mib} MiB from {} (lease {}): guest MemTotal {} MiB, {:.0} ms \
                     (lease {:.0} ms, TCB check {:.1} ms, plug {:.0} ms)",
                    g["lender"].as_str().unwrap_or("?"),
                    g["lease_id"],
                    g["mem_total_kib"].as_u64().unwrap_or(0) / 1024,
                    g["total_ms"].as_f64().unwrap_or(0.0),
                    g["lease_ms"].as_f64().unwrap_or(0.0),
                    g["verify_ms"].as_f64().unwrap_or(0.0),
                    g["plug_ms"].as_f64().unwrap_or(0.0),
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run_lease(command: LeaseCommand) -> Result<ExitCode, String> {
    match command {
        LeaseCommand::List { on, json } => {
            let v = on.call(json!({ "op": "lease-list" }))?;
            let l = &v["leases"];
            if json {
                print_json(l)?;
                return Ok(ExitCode::SUCCESS);
            }
            match l["pool"].as_object() {
                Some(p) => println!(
                    "pool: {} blocks of {} MiB: {} free, {} reserved, {} lent, {} other",
                    p["total"], p["block_mib"], p["free"], p["reserved"], p["lent"], p["other"]
                ),
                None => println!("pool: this node lends nothing"),
            }
            for b in l["borrowed"].as_array().into_iter().flatten() {
                println!(
                    "borrowed lease {} from {}: {} MiB in {}, expires {}{}",
                    b["lease_id"],
                    b["lender"].as_str().unwrap_or("?"),
                    b["mib"],
                    b["vm"].as_str().unwrap_or("?"),
                    b["expires_unix_s"],
                    if b["plugged"] == true { "" } else { " (unplug pending)" }
                );
            }
            for x in l["lent"].as_array().into_iter().flatten() {
                println!("lent lease {} to {}", x["lease_id"], x["borrower"].as_str().unwrap_or("?"));
            }
        }
        LeaseCommand::Release { lease_id, on } => {
            let v = on.call(json!({ "op": "lease-release", "lease_id": lease_id }))?;
            println!("{}", v["released"].as_str().unwrap_or("released"));
        }
    }
    Ok(ExitCode::SUCCESS)
}
