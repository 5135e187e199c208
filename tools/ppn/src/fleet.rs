//! `ppn fleet up|status|down`: a local fleet of nodes on this machine (`ppn_node::fleet`).

use crate::print_json;
use ppn_node::fleet::{self, UpOptions};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Start N nodes (each a ppn-tcb and a ppn-node, own state directory, own loopback ports),
    /// pair them, and leave them running.
    Up {
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        #[command(flatten)]
        at: At,
        /// Benchmark knob: each node's mesh drops this fraction of its outgoing datagrams.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Memory each node lends to the others' VMs, MiB (a multiple of 2; 0 lends nothing).
        #[arg(long, default_value_t = 1024)]
        lend_mib: u32,
        /// Memory each node offers VMs, MiB, as the scheduler sees it (default: the host's
        /// MemTotal less 1 GiB, the same for every node of a fleet on one machine).
        #[arg(long)]
        vm_mem: Option<u64>,
        /// vCPUs each node offers VMs (default: the host's CPUs; TCG guests share them).
        #[arg(long)]
        vm_vcpus: Option<u32>,
    },
    /// Each node's peers (up, in the mesh), ledger heads and adverts.
    Status {
        #[command(flatten)]
        at: At,
        #[arg(long)]
        json: bool,
    },
    /// Stop every process of the fleet and check that none is left.
    Down {
        #[command(flatten)]
        at: At,
        /// Also delete the fleet directory (every node's state).
        #[arg(long)]
        purge: bool,
    },
}

/// Where the fleet lives.
#[derive(Debug, clap::Args)]
pub struct At {
    /// The fleet directory.
    #[arg(long, env = "PPN_FLEET_DIR", default_value_os_t = default_dir())]
    pub dir: PathBuf,
}

fn default_dir() -> PathBuf {
    std::env::temp_dir().join("ppn-fleet")
}

/// A sibling binary of this `ppn` (`PPN_<NAME>_BIN` overrides it).
pub fn sibling(name: &str) -> Result<PathBuf, String> {
    let var = format!("PPN_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Some(p) = std::env::var_os(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let p = exe.with_file_name(name);
    if p.exists() { Ok(p) } else { Err(format!("{} not found next to ppn (set {var})", p.display())) }
}

/// A local fleet of `nodes` with the `ppn-tcb` and `ppn-node` next to this `ppn`, each TCB
/// lending `lend_mib`, every node waited for up to 60 s; the rest as the defaults.
pub fn up_options(nodes: usize, lend_mib: u32) -> Result<UpOptions, String> {
    Ok(UpOptions {
        nodes,
        tcb_bin: sibling("ppn-tcb")?,
        node_bin: sibling("ppn-node")?,
        loss: 0.0,
        settle: Duration::from_secs(60),
        lend_mib,
        vm_mem_mib: None,
        vm_vcpus: None,
    })
}

pub async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Up { nodes, at, loss, lend_mib, vm_mem, vm_vcpus } => {
            if nodes == 0 {
                return Err("--nodes must be at least 1".into());
            }
            let opts = UpOptions { loss, vm_mem_mib: vm_mem, vm_vcpus, ..up_options(nodes, lend_mib)? };
            fleet::up(&at.dir, &opts, |line| eprintln!("{line}")).await?;
            println!(
                "fleet of {nodes} running in {}; `ppn fleet status` shows it, `ppn fleet down` stops it",
                at.dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { at, json } => status(&at.dir, json),
        Command::Down { at, purge } => {
            let stopped = fleet::down(&at.dir, purge)?;
            println!("stopped {stopped} processes; nothing of the fleet in {} is running", at.dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn status(dir: &Path, json: bool) -> Result<ExitCode, String> {
    let f = fleet::load(dir)?;
    let mut all = Vec::new();
    for n in &f.nodes {
        match fleet::status(n) {
            Ok(s) => all.push(s),
            Err(e) => all.push(serde_json::json!({ "node_id": n.node_id, "error": e })),
        }
    }
    if json {
        print_json(&serde_json::Value::Array(all))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<4} {:<16} {:<21} {:>8} {:>7} {:>7} {:<14} adverts (cpus, free GiB)",
        "#", "node", "mesh", "peers up", "records", "revoked", "head"
    );
    for (i, s) in all.iter().enumerate() {
        if let Some(e) = s.get("error") {
            println!("{i:<4} {:<16} unreachable: {e}", s["node_id"].as_str().unwrap_or("?"));
            continue;
        }
        let peers = s["peers"].as_array().cloned().unwrap_or_default();
        let up = peers.iter().filter(|p| p["up"] == true).count();
        let head = s["heads"]
            .as_array()
            .and_then(|h| h.first())
            .and_then(|h| h.as_str())
            .map(|h| &h[..12.min(h.len())])
            .unwrap_or("-");
        let adverts: Vec<String> = peers
            .iter()
            .filter_map(|p| {
                let a = p.get("advert")?.as_object()?;
                let gib = a["free_blocks"].as_u64()? * a["block_mib"].as_u64()? / 1024;
                Some(format!("{}:{}c/{}G", &p["node_id"].as_str()?[..4], a["cpus"], gib))
            })
            .collect();
        println!(
            "{i:<4} {:<16} {:<21} {:>8} {:>7} {:>7} {:<14} {}",
            s["node_id"].as_str().unwrap_or("?"),
            s["mesh_endpoint"].as_str().unwrap_or("?"),
            format!("{up}/{}", peers.len()),
            s["records"],
            s["revoked_nodes"],
            head,
            adverts.join(" ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
