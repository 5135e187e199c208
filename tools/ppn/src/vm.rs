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
    /// The node: a control socket path (`DIR/node.sock`), or a node index of the local fleet
    /// (default 0; `ppn vm create` and `ppn vm list` without it work on the whole fleet).
    #[arg(long, env = "PPN_NODE")]
    pub node: Option<String>,
    /// The local fleet's directory (for `--node INDEX`).
    #[arg(long, env = "PPN_FLEET_DIR", default_value_os_t = std::env::temp_dir().join("ppn-fleet"))]
    pub fleet_dir: PathBuf,
}

impl On {
    pub fn socket(&self) -> Result<PathBuf, String> {
        let node = self.node.as_deref().unwrap_or("0");
        match node.parse::<usize>() {
            Ok(i) => {
                let f = fleet::load(&self.fleet_dir)?;
                let n = f.nodes.get(i).ok_or_else(|| format!("the fleet has no node {i}"))?;
                Ok(n.control.clone())
            }
            Err(_) => Ok(PathBuf::from(node)),
        }
    }

    pub fn call(&self, request: Value) -> Result<Value, String> {
        fleet::control(&self.socket()?, &request)
    }

    /// The node whose control socket is `control`, of the fleet in `fleet_dir`.
    pub fn at(control: &std::path::Path, fleet_dir: &std::path::Path) -> On {
        On { node: Some(control.display().to_string()), fleet_dir: fleet_dir.to_path_buf() }
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Define a VM (the guest image is built or taken from the cache first). Without `--node`
    /// or `--pin`, the scheduler places it on the local fleet: best fit on memory, then vCPUs,
    /// among the nodes the ledger trusts and the mesh reaches (docs/scheduler.md).
    Create {
        name: String,
        #[command(flatten)]
        on: On,
        /// Pin it to this node (an index of the local fleet, or 16 hex digits): it goes there
        /// or nowhere, and nothing moves it until `ppn vm unpin`.
        #[arg(long, conflicts_with = "node")]
        pin: Option<String>,
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
        /// Boot a sealed image as the root filesystem, verified (`ppn image seal`'s output;
        /// its statement is read from SEALED.prov): docs/attestation.md §4a.
        #[arg(long, requires = "trust")]
        sealed: Option<PathBuf>,
        /// The fleet's trust file the guest checks the statement against (`ppn ledger trust`).
        #[arg(long, requires = "sealed")]
        trust: Option<PathBuf>,
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
    /// The VMs: without `--node`, every node's, with where each runs and why (pinned,
    /// placed, chosen, migrated, rebalanced, evacuated) and the nodes' capacity; with `--node`,
    /// that node's, with memory (base, plugged, borrowed) and the guest's own figures.
    List {
        #[command(flatten)]
        on: On,
        #[arg(long)]
        json: bool,
    },
    /// Pin a VM to the node it runs on: the scheduler never moves it, `ppn vm migrate` refuses.
    Pin {
        name: String,
        #[command(flatten)]
        on: On,
    },
    /// Unpin a VM: the scheduler may move it again (`ppn rebalance`, evacuations).
    Unpin {
        name: String,
        #[command(flatten)]
        on: On,
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
    /// Live-migrate a running VM to another node through the mesh tunnel (the destination
    /// must hold a valid grant from this node's TCB); shows QEMU's progress, then the downtime
    /// and the total. On a failure the VM keeps running on this node.
    Migrate {
        name: String,
        #[command(flatten)]
        on: On,
        /// The destination: a node index of the local fleet, or a node id (16 hex digits).
        #[arg(long)]
        to: String,
        /// QEMU's downtime limit for the switch-over, ms.
        #[arg(long, default_value_t = 30)]
        downtime_ms: u64,
        /// QEMU's bandwidth limit, bytes per second (default: none to speak of).
        #[arg(long)]
        max_bandwidth: Option<u64>,
        /// How the stream crosses the mesh: `zstd` (compressed, about 3:1 for a guest's
        /// memory) or `plain`.
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "plain"])]
        encoding: String,
        /// Give up (and keep the VM here) after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout_s: u64,
        #[arg(long)]
        json: bool,
    },
}

/// A node id: given as 16 hex digits, or as a node index of the local fleet.
pub fn node_id(on: &On, node: &str) -> Result<String, String> {
    if node.len() == 16 && node.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(node.to_ascii_lowercase());
    }
    let i: usize = node.parse().map_err(|_| format!("--to {node}: want a node index or 16 hex digits"))?;
    let f = fleet::load(&on.fleet_dir)?;
    Ok(f.nodes.get(i).ok_or_else(|| format!("the fleet has no node {i}"))?.node_id.clone())
}

/// Starts a migration and follows it until it ends (`bar`: an indicatif progress bar on
/// stderr); returns the final status, or the error with the status when it failed.
pub fn migrate(on: &On, request: Value, bar: bool) -> Result<Value, String> {
    let name = request["name"].as_str().unwrap_or_default().to_owned();
    on.call(request)?;
    let pb = if bar {
        let pb = indicatif::ProgressBar::new(0);
        pb.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {msg:<12} [{bar:40}] {bytes}/{total_bytes} {binary_bytes_per_sec} {elapsed}",
            )
            .map_err(|e| e.to_string())?
            .progress_chars("=> "),
        );
        pb
    } else {
        indicatif::ProgressBar::hidden()
    };
    let status = loop {
        let v = on.call(json!({ "op": "vm-migrate-status", "name": name }))?;
        let m = v["migration"].clone();
        let p = &m["progress"];
        let total = p["total_bytes"].as_u64().unwrap_or(0);
        if total > 0 {
            pb.set_length(total);
            pb.set_position(total.saturating_sub(p["remaining_bytes"].as_u64().unwrap_or(total)));
        }
        pb.set_message(m["phase"].as_str().unwrap_or("?").to_owned());
        match m["phase"].as_str() {
            Some("completed") | Some("failed") => break m,
            _ => std::thread::sleep(std::time::Duration::from_millis(50)),
        }
    };
    pb.finish_and_clear();
    if status["phase"] == "completed" {
        Ok(status)
    } else {
        Err(format!(
            "migrating {name} failed: {}; the guest {} on the source",
            status["error"].as_str().unwrap_or("?"),
            if status["source_running"] == true { "runs on" } else { "does NOT run" }
        ))
    }
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
        Command::Create { name, on, pin, mem, max, vcpus, data_dir, start, sealed, trust } => {
            // Where: the operator's pin, the operator's node, or the scheduler's best fit.
            let (on, placement) = where_to(&on, &name, pin.as_deref(), mem, vcpus)?;
            let cache = data_dir.join("ppn-guest");
            let img = image::ensure(&cache, &ImageOptions { agent: None, force: false, verbose: true })
                .map_err(|e| format!("guest image in {}: {e}", cache.display()))?;
            let abs = |p: &std::path::Path| std::fs::canonicalize(p).map_err(|e| format!("{}: {e}", p.display()));
            let mut spec = json!({
                "name": name, "vcpus": vcpus, "base_mib": mem, "vmem_max_mib": max,
                "kernel": abs(&img.kernel)?, "initrd": abs(&img.initrd)?, "cmdline": img.cmdline,
            });
            if let (Some(disk), Some(trust)) = (sealed, trust) {
                let mut prov = disk.clone().into_os_string();
                prov.push(".prov");
                let prov = PathBuf::from(prov);
                let bytes = std::fs::read(&prov)
                    .map_err(|e| format!("the sealed image's statement {}: {e}", prov.display()))?;
                let p = ppn_attest::Provisioning::decode(&bytes).map_err(|e| format!("{}: {e}", prov.display()))?;
                let root = crate::verify::hex(&p.verity.root_hash);
                spec["initrd"] = json!(abs(&img.initrd_verified)?);
                spec["cmdline"] = json!(format!("{} {}", img.cmdline, image::VERITY_CMDLINE));
                spec["sealed"] = json!({
                    "disk": abs(&disk)?, "statement": abs(&prov)?, "trust": abs(&trust)?, "root_hash": root,
                });
                println!("{name} boots the sealed image {:?} (root hash {root}), verified", p.image);
            }
            on.call(json!({ "op": "vm-create", "spec": spec, "placement": placement }))?;
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
        Command::List { on, json } if on.node.is_none() => {
            let s = crate::place::snapshot(&on.fleet_dir)?;
            if json {
                print_json(&json!({ "nodes": crate::place::nodes_json(&s), "vms": crate::place::rows_json(&s) }))?;
            } else {
                crate::place::print_rows(&s);
                println!();
                crate::place::print_nodes(&s);
            }
        }
        Command::Pin { name, on } => pin(&on, &name, true)?,
        Command::Unpin { name, on } => pin(&on, &name, false)?,
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
        Command::Migrate { name, on, to, downtime_ms, max_bandwidth, encoding, timeout_s, json } => {
            let to_id = node_id(&on, &to)?;
            let mut req = json!({ "op": "vm-migrate", "name": name, "to": to_id, "downtime_ms": downtime_ms,
                "timeout_s": timeout_s, "encoding": encoding });
            if let Some(b) = max_bandwidth {
                req["max_bandwidth"] = json!(b);
            }
            let m = migrate(&on, req, !json)?;
            if json {
                print_json(&m)?;
            } else {
                let p = &m["progress"];
                println!(
                    "{name} migrated to {to_id}: downtime {} ms (limit {downtime_ms} ms), total {:.0} ms \
                     (QEMU {} ms, grant {:.1} ms, destination ready {:.0} ms), {} MiB sent at {:.0} Mbit/s",
                    m["downtime_ms"],
                    m["total_ms"].as_f64().unwrap_or(0.0),
                    m["qemu_total_ms"],
                    m["grant_ms"].as_f64().unwrap_or(0.0),
                    m["ready_ms"].as_f64().unwrap_or(0.0),
                    p["transferred_bytes"].as_u64().unwrap_or(0) >> 20,
                    p["mbps"].as_f64().unwrap_or(0.0),
                );
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

/// Where `ppn vm create` defines VM `name`: on the `--pin` node (pinned, checked by the
/// scheduler), on the `--node` the operator named, or on the scheduler's best fit over the
/// local fleet. Returns the node and the placement record to keep with the VM.
pub fn where_to(on: &On, name: &str, pin: Option<&str>, mem: u64, vcpus: u32) -> Result<(On, Value), String> {
    if on.node.is_some() {
        return Ok((
            On { node: on.node.clone(), fleet_dir: on.fleet_dir.clone() },
            crate::place::placement(false, crate::place::Why::Chosen),
        ));
    }
    let s = crate::place::snapshot(&on.fleet_dir)?;
    let pin = pin.map(|p| s.resolve(p).map(|m| m.id)).transpose()?;
    let request = ppn_scheduler::Request { name: name.to_owned(), mem_mib: mem, vcpus, pin };
    let p = ppn_scheduler::place(&s.fleet, &request).map_err(|e| e.to_string())?;
    let m = s.member(&p.node).ok_or("the scheduler chose a node the fleet does not have")?;
    let (free, _) = crate::place::free(&s, &m.id);
    let offers = s.fleet.nodes[m.index].mem_mib;
    match p.reason {
        ppn_scheduler::Reason::Pinned => {
            println!("{name}: pinned to node {} ({}), {free} of {offers} MiB free there", m.index, m.id)
        }
        ppn_scheduler::Reason::BestFit => println!(
            "{name}: placed on node {} ({}) by best fit: {free} of {offers} MiB free there, the least of the nodes it fits",
            m.index, m.id
        ),
    }
    Ok((
        On::at(&m.control, &on.fleet_dir),
        crate::place::placement(
            pin.is_some(),
            if pin.is_some() { crate::place::Why::Pinned } else { crate::place::Why::Placed },
        ),
    ))
}

/// `ppn vm pin|unpin`: on the node that holds the VM (`--node`, or found in the fleet).
fn pin(on: &On, name: &str, pinned: bool) -> Result<(), String> {
    let socket = match &on.node {
        Some(_) => on.socket()?,
        None => crate::place::snapshot(&on.fleet_dir)?.holder(name)?.control.clone(),
    };
    let v = fleet::control(&socket, &json!({ "op": "vm-pin", "name": name, "pinned": pinned }))?;
    let p = &v["placement"];
    println!(
        "{name}: {} ({})",
        if p["pinned"] == true { "pinned" } else { "not pinned" },
        p["reason"].as_str().unwrap_or("?")
    );
    Ok(())
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
