//! `ppn-node --dir DIR --tcb SOCKET --mesh-listen ADDR`: the node daemon (see the library docs).

use clap::Parser;
use ppn_gossip::GossipConfig;
use ppn_node::hints::parse_node_id;
use ppn_node::{Node, NodeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The PPN Fabric node daemon: mesh, gossip and the link to this node's TCB.
#[derive(Debug, Parser)]
#[command(name = "ppn-node", version)]
struct Args {
    /// The node directory: mesh key, endpoint hints, the control socket `node.sock`.
    #[arg(long)]
    dir: PathBuf,
    /// This node's TCB socket (`ppn-tcb`, or an seL4 image's link).
    #[arg(long)]
    tcb: PathBuf,
    /// The mesh's UDP address (WireGuard).
    #[arg(long, default_value = "0.0.0.0:51820")]
    mesh_listen: SocketAddr,
    /// Where another node's mesh listens: NODEID=HOST:PORT (repeatable; kept in DIR/endpoints).
    #[arg(long = "peer", value_name = "NODEID=HOST:PORT")]
    peers: Vec<String>,
    /// Test and benchmark knob: drop this fraction of the mesh's outgoing datagrams.
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Peers each new ledger record is pushed to.
    #[arg(long, default_value_t = 8)]
    fanout: usize,
    /// Anti-entropy period in milliseconds.
    #[arg(long, default_value_t = 1000)]
    anti_entropy_ms: u64,
    /// Guest memory this node grants its VMs in total (MiB); the balloon controller keeps the
    /// targets within it. Default: the sum of the VMs' ceilings (no overcommit).
    #[arg(long)]
    balloon_budget_mib: Option<u64>,
    /// Memory this node offers VMs, MiB, as the scheduler sees it. Default: MemTotal less 1 GiB.
    #[arg(long)]
    vm_mem_mib: Option<u64>,
    /// vCPUs this node offers VMs. Default: the host's CPUs.
    #[arg(long)]
    vm_vcpus: Option<u32>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ppn-node: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ppn-node: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let cfg = NodeConfig {
        dir: args.dir.clone(),
        tcb: args.tcb,
        mesh_listen: args.mesh_listen,
        loss: args.loss,
        gossip: GossipConfig {
            fanout: args.fanout,
            anti_entropy: Duration::from_millis(args.anti_entropy_ms.max(10)),
            ..GossipConfig::default()
        },
        peer_sync: Duration::from_millis(500),
        capacity: {
            let host = ppn_node::node::Capacity::of_host();
            ppn_node::node::Capacity {
                mem_mib: args.vm_mem_mib.unwrap_or(host.mem_mib),
                vcpus: args.vm_vcpus.unwrap_or(host.vcpus),
            }
        },
    };
    let node = Arc::new(Node::start(cfg).await.map_err(|e| e.to_string())?);
    node.balloon.set_budget(args.balloon_budget_mib);
    for p in &args.peers {
        let (id, addr) = p.split_once('=').ok_or_else(|| format!("--peer {p}: want NODEID=HOST:PORT"))?;
        let id = parse_node_id(id).ok_or_else(|| format!("--peer {p}: the node id is not 16 hex digits"))?;
        let addr = addr.parse().map_err(|e| format!("--peer {p}: {e}"))?;
        node.hint(id, addr).map_err(|e| e.to_string())?;
    }
    let control = args.dir.join("node.sock");
    ppn_node::control::serve(&control, Arc::clone(&node)).map_err(|e| format!("{}: {e}", control.display()))?;
    eprintln!(
        "ppn-node {}: mesh {} on {}, key {}, control {}",
        node.me,
        node.mesh.mesh_ip(),
        node.mesh.local_addr(),
        ppn_mesh::keys::encode_public_key(&node.mesh.public_key()),
        control.display()
    );
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|e| e.to_string())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    let _ = std::fs::remove_file(&control);
    node.mesh.shutdown();
    Ok(())
}
