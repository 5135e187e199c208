//! A local fleet: N nodes on this machine, each a `ppn-tcb` and a `ppn-node` with its own state
//! directory and loopback ports, paired and left running (`ppn fleet up|status|down`).
//!
//! ```text
//! DIR/fleet.json            the nodes: ids, sockets, endpoints, process ids
//! DIR/node-I/tcb/           the TCB's state directory
//! DIR/node-I/tcb.sock       the TCB's socket
//! DIR/node-I/node/          ppn-node's directory (mesh.key, endpoints, node.sock)
//! DIR/node-I/tcb.log, node.log
//! ```
//!
//! Pairing: node 0 pairs with every other node (a star); admission chains make every node
//! trusted by every other. `fleet up` plays the operator on both sides of each ceremony: both TCBs
//! are on this machine and under its control, so it compares the two SAS values itself and admits
//! only when they match.

use ppn_tcb_client::TcbClient;
use ppn_wire::service::PairRole;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Name of the fleet description in the fleet directory.
pub const FLEET_JSON: &str = "fleet.json";

/// One node of a local fleet.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FleetNode {
    pub index: usize,
    pub node_id: String,
    pub dir: PathBuf,
    pub tcb_socket: PathBuf,
    pub control: PathBuf,
    pub mesh_endpoint: String,
    pub mesh_key: String,
    pub tcb_pid: u32,
    pub node_pid: u32,
}

/// A local fleet, as `fleet.json` records it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fleet {
    pub dir: PathBuf,
    pub nodes: Vec<FleetNode>,
}

/// Binaries and knobs for [`up`].
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub nodes: usize,
    pub tcb_bin: PathBuf,
    pub node_bin: PathBuf,
    /// Passed to every `ppn-node` (benchmarks).
    pub loss: f64,
    /// How long to wait for every node to see every other up.
    pub settle: Duration,
    /// Memory each node's TCB lends to the others' VMs, MiB (0: none).
    pub lend_mib: u32,
    /// Memory each node offers VMs, MiB, as the scheduler sees it (`ppn-node --vm-mem-mib`);
    /// `None`: the host's.
    pub vm_mem_mib: Option<u64>,
    /// vCPUs each node offers VMs (`ppn-node --vm-vcpus`); `None`: the host's.
    pub vm_vcpus: Option<u32>,
}

fn io(what: impl std::fmt::Display) -> impl FnOnce(std::io::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// Starts `bin args` in a session of its own (so it outlives this process and a Ctrl-C here),
/// stdout and stderr to `log`.
fn daemon(bin: &Path, args: &[&std::ffi::OsStr], log: &Path) -> Result<u32, String> {
    let out = std::fs::File::create(log).map_err(io(log.display()))?;
    let err = out.try_clone().map_err(io(log.display()))?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(io(bin.display()))?;
    Ok(child.id())
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<(), String> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() > timeout {
            return Err(format!("{what}: not ready after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Sends one control request to a node and returns its answer.
pub fn control(socket: &Path, request: &serde_json::Value) -> Result<serde_json::Value, String> {
    let mut conn = std::os::unix::net::UnixStream::connect(socket).map_err(io(socket.display()))?;
    // VM operations (a start, a plug, an unplug, a stop) take seconds under TCG.
    conn.set_read_timeout(Some(Duration::from_secs(120))).ok();
    let mut line = request.to_string();
    line.push('\n');
    conn.write_all(line.as_bytes()).map_err(io(socket.display()))?;
    let mut answer = String::new();
    std::io::BufReader::new(conn).read_line(&mut answer).map_err(io(socket.display()))?;
    let v: serde_json::Value = serde_json::from_str(&answer).map_err(|e| format!("{}: {e}", socket.display()))?;
    if v["ok"] != true {
        return Err(format!("{}: {}", socket.display(), v["error"]));
    }
    Ok(v)
}

/// A node's status through its control socket.
pub fn status(node: &FleetNode) -> Result<serde_json::Value, String> {
    Ok(control(&node.control, &serde_json::json!({ "op": "status" }))?["status"].take())
}

/// A one-time pairing code in the form the TCB parses (docs/pairing.md §2: ten Crockford base32
/// symbols, 50 bits, shown as `XXXXX-XXXXX`), from /dev/urandom. The TCB checks it; this side
/// only makes it.
fn random_code() -> Result<String, String> {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut random = [0u8; 10];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut random))
        .map_err(io("/dev/urandom"))?;
    let mut code: String = random.iter().map(|b| char::from(ALPHABET[usize::from(b % 32)])).collect();
    code.insert(5, '-');
    Ok(code)
}

fn wg_key(b64: &str) -> Result<[u8; 32], String> {
    let key = ppn_mesh::keys::decode_public_key(b64).map_err(|e| format!("mesh key {b64}: {e}"))?;
    Ok(*key.as_bytes())
}

/// Runs the pairing ceremony between two local TCBs, relaying the messages in memory, and
/// admits each into the other when both show the same SAS. Returns the SAS.
pub async fn pair_locally(a: &TcbClient, a_wg: [u8; 32], b: &TcbClient, b_wg: [u8; 32]) -> Result<u32, String> {
    let e = |e: ppn_tcb_client::ClientError| e.to_string();
    let code = random_code()?;
    let hello = a.pair_begin(PairRole::Initiator, &code, a_wg).await.map_err(e)?;
    b.pair_begin(PairRole::Responder, &code, b_wg).await.map_err(e)?;
    let reply = b.pair_step(&hello.message).await.map_err(e)?;
    let confirm = a.pair_step(&reply.message).await.map_err(e)?;
    let done = b.pair_step(&confirm.message).await.map_err(e)?;
    let (pa, pb) = (confirm.paired.ok_or("no peer at A")?, done.paired.ok_or("no peer at B")?);
    let same = pa.sas == pb.sas;
    // A decides first; B ingests A's admission record before signing its own, so B's record
    // descends from B's admission and every node that trusts A accepts it; A then takes B's.
    let ra = a.pair_decide(pa.node_id, pa.sas, same, &[]).await.map_err(e)?;
    let rb = b.pair_decide(pb.node_id, pb.sas, same, &ra.record).await.map_err(e)?;
    if !same {
        return Err(format!("the SAS differ ({} and {}): not admitted", pa.sas, pb.sas));
    }
    let outcome = a.ingest_records(&[&rb.record[..]]).await.map_err(e)?;
    if outcome != [ppn_wire::service::IngestOutcome::Accepted] {
        return Err(format!("A refused B's admission record: {outcome:?}"));
    }
    Ok(pa.sas)
}

/// Starts a fleet of `opts.nodes` in `dir` (which must not hold a running fleet), pairs it and
/// waits until every node sees every other up. `progress` hears what is happening.
pub async fn up(dir: &Path, opts: &UpOptions, mut progress: impl FnMut(&str)) -> Result<Fleet, String> {
    if dir.join(FLEET_JSON).exists() {
        return Err(format!("{} already holds a fleet: `ppn fleet down --dir {}` first", dir.display(), dir.display()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir.display()))?;
    let mut nodes = Vec::new();
    let result = start_nodes(dir, opts, &mut nodes, &mut progress).await;
    // Written whatever happened, so `fleet down` can stop what did start.
    let fleet = Fleet { dir: dir.to_owned(), nodes };
    save(&fleet)?;
    result?;

    progress("pairing: node 0 with every other node (CPace; both SAS compared here)");
    let clients: Vec<TcbClient> = {
        let mut v = Vec::new();
        for n in &fleet.nodes {
            v.push(TcbClient::connect(&n.tcb_socket).await.map_err(|e| format!("{}: {e}", n.tcb_socket.display()))?);
        }
        v
    };
    for i in 1..fleet.nodes.len() {
        let (a, b) = (&fleet.nodes[0], &fleet.nodes[i]);
        let sas = pair_locally(&clients[0], wg_key(&a.mesh_key)?, &clients[i], wg_key(&b.mesh_key)?).await?;
        progress(&format!(
            "  node 0 {} <-> node {i} {}: SAS {:03} {:03}, admitted",
            a.node_id,
            b.node_id,
            sas / 1000,
            sas % 1000
        ));
    }
    for n in &fleet.nodes {
        for m in fleet.nodes.iter().filter(|m| m.index != n.index) {
            control(&n.control, &serde_json::json!({ "op": "hint", "node": m.node_id, "endpoint": m.mesh_endpoint }))?;
        }
    }
    progress("waiting for every node to see every other up (WireGuard handshakes, SWIM)");
    let want = fleet.nodes.len().saturating_sub(1);
    let start = Instant::now();
    loop {
        let mut all = true;
        for n in &fleet.nodes {
            let s = status(n)?;
            let up = s["peers"].as_array().map(|p| p.iter().filter(|p| p["up"] == true).count()).unwrap_or(0);
            all &= up == want;
        }
        if all {
            break;
        }
        if start.elapsed() > opts.settle {
            return Err(format!(
                "the fleet did not settle in {:?}: see `ppn fleet status --dir {}`",
                opts.settle,
                dir.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    progress(&format!("fleet of {} up in {:.1} s", fleet.nodes.len(), start.elapsed().as_secs_f64()));
    Ok(fleet)
}

async fn start_nodes(
    dir: &Path,
    opts: &UpOptions,
    nodes: &mut Vec<FleetNode>,
    progress: &mut impl FnMut(&str),
) -> Result<(), String> {
    for i in 0..opts.nodes {
        let ndir = dir.join(format!("node-{i}"));
        std::fs::create_dir_all(&ndir).map_err(io(ndir.display()))?;
        let tcb_socket = ndir.join("tcb.sock");
        let state = ndir.join("tcb");
        let lend = opts.lend_mib.to_string();
        let mut args: Vec<&std::ffi::OsStr> =
            vec!["--state".as_ref(), state.as_os_str(), "--socket".as_ref(), tcb_socket.as_os_str()];
        if opts.lend_mib > 0 {
            args.push(std::ffi::OsStr::new("--lend-mib"));
            args.push(std::ffi::OsStr::new(&lend));
        }
        let tcb_pid = daemon(&opts.tcb_bin, &args, &ndir.join("tcb.log"))?;
        // Recorded before anything else starts, so that `fleet down` can stop what did start.
        nodes.push(FleetNode {
            index: i,
            node_id: String::new(),
            dir: ndir.clone(),
            tcb_socket: tcb_socket.clone(),
            control: ndir.join("node").join("node.sock"),
            mesh_endpoint: String::new(),
            mesh_key: String::new(),
            tcb_pid,
            node_pid: 0,
        });
        let node = nodes.last_mut().ok_or("no node recorded")?;
        wait_for(&format!("ppn-tcb of node {i}"), Duration::from_secs(20), || {
            std::os::unix::net::UnixStream::connect(&tcb_socket).is_ok()
        })?;
        let node_dir = ndir.join("node");
        let loss = opts.loss.to_string();
        let vm_mem = opts.vm_mem_mib.map(|m| m.to_string());
        let mut node_args: Vec<&std::ffi::OsStr> = vec![
            "--dir".as_ref(),
            node_dir.as_os_str(),
            "--tcb".as_ref(),
            tcb_socket.as_os_str(),
            "--mesh-listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--loss".as_ref(),
            loss.as_ref(),
        ];
        if let Some(m) = &vm_mem {
            node_args.push("--vm-mem-mib".as_ref());
            node_args.push(m.as_ref());
        }
        let vm_vcpus = opts.vm_vcpus.map(|c| c.to_string());
        if let Some(c) = &vm_vcpus {
            node_args.push("--vm-vcpus".as_ref());
            node_args.push(c.as_ref());
        }
        node.node_pid = daemon(&opts.node_bin, &node_args, &ndir.join("node.log"))?;
        let control = node.control.clone();
        wait_for(&format!("ppn-node of node {i}"), Duration::from_secs(20), || control.exists())?;
        let s = status(node)?;
        node.node_id = s["node_id"].as_str().unwrap_or_default().to_owned();
        node.mesh_endpoint = s["mesh_endpoint"].as_str().unwrap_or_default().to_owned();
        node.mesh_key = s["mesh_key"].as_str().unwrap_or_default().to_owned();
        progress(&format!(
            "node {i}: {} (TCB pid {tcb_pid}, node pid {}, mesh {})",
            node.node_id, node.node_pid, node.mesh_endpoint
        ));
    }
    Ok(())
}

fn save(fleet: &Fleet) -> Result<(), String> {
    let path = fleet.dir.join(FLEET_JSON);
    let tmp = fleet.dir.join("fleet.json.tmp");
    let text = serde_json::to_string_pretty(fleet).map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(&tmp).map_err(io(tmp.display()))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io(tmp.display()))?;
    std::fs::rename(&tmp, &path).map_err(io(path.display()))
}

/// Reads `DIR/fleet.json`.
pub fn load(dir: &Path) -> Result<Fleet, String> {
    let path = dir.join(FLEET_JSON);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e} (no fleet there?)", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Whether process `pid` is alive and runs `name` (so a recycled pid is never signalled).
pub fn running(pid: u32, name: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|b| *b == 0).next().is_some_and(|argv0| argv0.ends_with(name.as_bytes())))
        .unwrap_or(false)
}

fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill").args(["-s", sig, &pid.to_string()]).status();
}

/// Stops every process of the fleet in `dir` (SIGTERM, then SIGKILL after 5 s), checks that none
/// is left, and removes `fleet.json` (the state directories stay, unless `purge`).
pub fn down(dir: &Path, purge: bool) -> Result<usize, String> {
    let fleet = load(dir)?;
    let mut procs: Vec<(u32, &str)> = fleet
        .nodes
        .iter()
        .flat_map(|n| [(n.node_pid, "ppn-node"), (n.tcb_pid, "ppn-tcb")])
        .filter(|(pid, name)| *pid != 0 && running(*pid, name))
        .collect();
    // The nodes' VMs: daemonized QEMUs that outlive ppn-node by design; a fleet going down
    // takes them along.
    for n in &fleet.nodes {
        let vms = n.dir.join("node").join(crate::vms::VM_DIR);
        for entry in std::fs::read_dir(&vms).into_iter().flatten().flatten() {
            let paths = ppn_vm::spec::VmPaths::new(entry.path());
            if let ppn_vm::manager::PidStatus::Live(pid) = ppn_vm::manager::pid_status(&paths) {
                procs.push((pid, "qemu-system-x86_64"));
            }
        }
    }
    for (pid, _) in &procs {
        signal(*pid, "TERM");
    }
    let start = Instant::now();
    while procs.iter().any(|(pid, name)| running(*pid, name)) {
        if start.elapsed() > Duration::from_secs(5) {
            for (pid, name) in &procs {
                if running(*pid, name) {
                    signal(*pid, "KILL");
                }
            }
        }
        if start.elapsed() > Duration::from_secs(10) {
            return Err("processes survived SIGKILL".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for n in &fleet.nodes {
        let _ = std::fs::remove_file(&n.tcb_socket);
        let _ = std::fs::remove_file(&n.control);
    }
    std::fs::remove_file(dir.join(FLEET_JSON)).map_err(io(dir.display()))?;
    if purge {
        std::fs::remove_dir_all(dir).map_err(io(dir.display()))?;
    }
    Ok(procs.len())
}
