//! The running node: mesh, gossip, relay, peer sync, adverts.

use crate::hints::{Hints, HintsError};
use crate::transport::{self, MeshTransport, RELAY_PORT};
use ppn_gossip::{Gossip, GossipConfig};
use ppn_mesh::{Mesh, MeshConfig, PublicKey, keys};
use ppn_tcb_client::{ClientError, TcbClient};
use ppn_wire::NodeId;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;

/// Name of the mesh's WireGuard private key in the node directory.
pub const MESH_KEY: &str = "mesh.key";
/// Name of the endpoint hints file in the node directory.
pub const ENDPOINTS: &str = "endpoints";

/// How `ppn-node` runs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node directory (mode 0700): `mesh.key`, `endpoints`.
    pub dir: PathBuf,
    /// This node's TCB socket.
    pub tcb: PathBuf,
    /// The mesh's UDP address.
    pub mesh_listen: SocketAddr,
    /// Test and benchmark knob: fraction of the mesh's outgoing datagrams dropped.
    pub loss: f64,
    /// Gossip settings.
    pub gossip: GossipConfig,
    /// How often the mesh's peers are checked against the ledger's members (also at once after
    /// every change of the ledger this node sees).
    pub peer_sync: Duration,
    /// What this node offers VMs (the scheduler's capacity; docs/scheduler.md).
    pub capacity: Capacity,
}

/// What a node offers VMs, for the scheduler: memory and vCPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Capacity {
    pub mem_mib: u64,
    pub vcpus: u32,
}

impl Capacity {
    /// The host's: its MemTotal less 1 GiB for itself (at least 256 MiB), and its CPUs.
    pub fn of_host() -> Capacity {
        let total_kib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find(|l| l.starts_with("MemTotal:"))?.split_whitespace().nth(1)?.parse::<u64>().ok()
            })
            .unwrap_or(0);
        let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u32;
        Capacity { mem_mib: (total_kib / 1024).saturating_sub(1024).max(256), vcpus: cpus }
    }
}

/// Why the node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("node directory {path}: {source}")]
    Dir { path: String, source: std::io::Error },
    #[error("mesh key {path}: {what}")]
    Key { path: String, what: String },
    #[error("TCB at {path}: {source}")]
    Tcb { path: String, source: ClientError },
    #[error("mesh: {0}")]
    Mesh(#[from] ppn_mesh::MeshError),
    #[error(transparent)]
    Hints(#[from] HintsError),
    #[error("VM plane: {0}")]
    Vms(String),
}

/// Reads the mesh key, or makes one (owner only, written whole before it is used).
fn mesh_key(dir: &Path) -> Result<ppn_mesh::StaticSecret, NodeError> {
    let path = dir.join(MESH_KEY);
    let err = |what: String| NodeError::Key { path: path.display().to_string(), what };
    match std::fs::read_to_string(&path) {
        Ok(text) => keys::decode_private_key(text.trim()).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = keys::generate_private_key().map_err(|e| err(e.to_string()))?;
            let tmp = dir.join("mesh.key.tmp");
            let write = || -> std::io::Result<()> {
                use std::io::Write;
                let mut f = std::fs::File::options().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
                f.write_all(format!("{}\n", keys::encode_private_key(&key)).as_bytes())?;
                f.sync_all()?;
                std::fs::rename(&tmp, &path)?;
                std::fs::File::open(dir)?.sync_all()
            };
            write().map_err(|e| err(e.to_string()))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

/// One peer in the status.
#[derive(Debug, Clone, Serialize)]
pub struct PeerStatus {
    pub node_id: String,
    pub mesh_key: String,
    pub endpoint: Option<String>,
    /// In the mesh now (trusted, with a mesh key and an endpoint).
    pub in_mesh: bool,
    /// SWIM says it is up.
    pub up: bool,
    pub last_handshake_s_ago: Option<f64>,
    pub advert: Option<AdvertStatus>,
}

/// A peer's last advert.
#[derive(Debug, Clone, Serialize)]
pub struct AdvertStatus {
    pub free_blocks: u32,
    pub total_blocks: u32,
    pub block_mib: u16,
    pub cpus: u16,
    pub load_permille: u16,
    pub vms: u16,
    pub age_ms: u64,
}

/// What `ppn fleet status` shows of a node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node_id: String,
    pub mesh_ip: String,
    pub mesh_key: String,
    pub mesh_endpoint: String,
    pub tcb: String,
    pub records: u64,
    pub heads: Vec<String>,
    pub revoked_nodes: u32,
    pub peers: Vec<PeerStatus>,
    pub gossip: BTreeMap<&'static str, u64>,
    pub mesh: BTreeMap<&'static str, u64>,
}

/// A running node.
pub struct Node {
    pub me: NodeId,
    pub mesh: Mesh,
    pub gossip: Arc<Gossip<MeshTransport>>,
    /// VMs, borrowed leases, the lease service.
    pub vms: Arc<crate::vms::VmPlane>,
    /// The balloon controller (control op `node-balloon`).
    pub balloon: Arc<crate::balloon::Balloon>,
    /// Live migrations, both sides (mesh port 7004).
    pub migrations: Arc<crate::migration::Migrations>,
    /// What this node offers VMs.
    pub capacity: Capacity,
    tcb: Arc<TcbClient>,
    tcb_path: PathBuf,
    hints: Arc<Mutex<Hints>>,
    /// Members the last peer sync saw: node id -> (mesh key, trusted).
    members: Arc<Mutex<BTreeMap<NodeId, (PublicKey, bool)>>>,
    sync_now: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("me", &self.me).field("mesh", &self.mesh).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Node {
    /// Opens the node directory, connects to the TCB, starts the mesh, gossip, the relay and
    /// the peer sync.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        let dir_err = |source| NodeError::Dir { path: cfg.dir.display().to_string(), source };
        std::fs::create_dir_all(&cfg.dir).map_err(dir_err)?;
        std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700)).map_err(dir_err)?;
        let key = mesh_key(&cfg.dir)?;
        let hints = Hints::load(&cfg.dir.join(ENDPOINTS))?;
        let tcb_err = |source| NodeError::Tcb { path: cfg.tcb.display().to_string(), source };
        let tcb = Arc::new(TcbClient::connect(&cfg.tcb).await.map_err(tcb_err)?);
        let me = tcb.identity().await.map_err(tcb_err)?.node_id;

        let mut mesh_cfg = MeshConfig::new(key, cfg.mesh_listen, transport::ip_of(me));
        mesh_cfg.loss = cfg.loss;
        mesh_cfg.loss_seed = u64::from_le_bytes(me.0.0);
        let mesh = Mesh::start(mesh_cfg).await?;

        let (inbox, inbox_rx) = mpsc::channel(4096);
        let transport = Arc::new(MeshTransport::start(mesh.clone(), inbox).await?);
        let gossip = Gossip::new(me, Arc::clone(&tcb), transport, cfg.gossip.clone());
        gossip.prime().await.map_err(tcb_err)?;
        tokio::spawn(Arc::clone(&gossip).run(inbox_rx));

        // The read-only relay for peers' pulls, on its own TCB connection.
        let relay_tcb = Arc::new(TcbClient::connect(&cfg.tcb).await.map_err(tcb_err)?);
        let mut listener = mesh.listen(RELAY_PORT).await?;
        tokio::spawn(async move {
            while let Ok(stream) = listener.accept().await {
                let tcb = Arc::clone(&relay_tcb);
                tokio::spawn(async move { ppn_gossip::relay::serve(stream, &tcb).await });
            }
        });

        let vms = crate::vms::VmPlane::open(&cfg.dir, me, Arc::clone(&tcb), mesh.clone(), Arc::clone(&gossip))
            .map_err(NodeError::Vms)?;
        vms.spawn(gossip.subscribe_ledger_changes()).await.map_err(NodeError::Vms)?;
        let migrations = crate::migration::Migrations::new(me, Arc::clone(&tcb), mesh.clone(), Arc::clone(&vms));
        migrations.spawn().await.map_err(NodeError::Vms)?;
        let node = Node {
            me,
            mesh,
            gossip,
            balloon: crate::balloon::Balloon::spawn(Arc::clone(&vms)),
            vms,
            migrations,
            capacity: cfg.capacity,
            tcb,
            tcb_path: cfg.tcb.clone(),
            hints: Arc::new(Mutex::new(hints)),
            members: Arc::default(),
            sync_now: Arc::default(),
        };
        node.sync_peers().await;
        node.spawn_peer_sync(cfg.peer_sync);
        node.spawn_adverts();
        Ok(node)
    }

    fn spawn_peer_sync(&self, every: Duration) {
        let (tcb, mesh, gossip, hints, members, notify, me) = (
            Arc::clone(&self.tcb),
            self.mesh.clone(),
            Arc::clone(&self.gossip),
            Arc::clone(&self.hints),
            Arc::clone(&self.members),
            Arc::clone(&self.sync_now),
            self.me,
        );
        let orders = self.migrations.orders();
        let changes = self.gossip.ledger_changed();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = changes.notified() => {}
                    _ = notify.notified() => {}
                }
                let keep = crate::migration::Migrations::evacuating_from(&orders);
                sync_peers(me, &tcb, &mesh, &gossip, &hints, &members, &keep).await;
            }
        });
    }

    /// Adverts every second: CPUs, load, VMs, and the lender's pool (what this node can lend;
    /// 0 when its TCB lends nothing). Asking the pool also lets the TCB end expired leases.
    fn spawn_adverts(&self) {
        let (gossip, tcb, vms) = (Arc::clone(&self.gossip), Arc::clone(&self.tcb), Arc::clone(&self.vms));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let host = host_figures();
                let pool = tcb.pool_status().await.ok();
                let count = vms.manager.names().map(|n| n.len()).unwrap_or(0);
                gossip.set_advert(|a| {
                    a.cpus = host.cpus;
                    a.load_permille = host.load_permille;
                    a.total_blocks = pool.as_ref().map_or(0, |p| p.total);
                    a.free_blocks = pool.as_ref().map_or(0, |p| p.free);
                    a.block_mib = 2;
                    a.vms = u16::try_from(count).unwrap_or(u16::MAX);
                });
            }
        });
    }

    /// Brings the mesh's peers in line with the ledger now.
    pub async fn sync_peers(&self) {
        let keep = crate::migration::Migrations::evacuating_from(&self.migrations.orders());
        sync_peers(self.me, &self.tcb, &self.mesh, &self.gossip, &self.hints, &self.members, &keep).await;
    }

    /// Asks the peer sync to run now (after an evacuation order).
    pub fn sync_soon(&self) {
        self.sync_now.notify_one();
    }

    /// An attestation report on VM `name` for a verifier's `nonce`, signed by this node's TCB
    /// (`AttestSignReport`, docs/attestation.md): the VM must run here from a sealed root; the
    /// report names it, the root hash it booted with and the image's provisioning statement.
    pub async fn attest_vm(&self, name: &str, nonce: &[u8]) -> Result<Vec<u8>, String> {
        let m = &self.vms.manager;
        let spec = m.spec(name).map_err(|e| e.to_string())?;
        let Some(sealed) = &spec.sealed else {
            return Err(format!("{name} does not boot a sealed image: there is nothing to attest"));
        };
        let state = m.state(name).await.map_err(|e| e.to_string())?;
        if state.label() != "running" {
            return Err(format!("{name} is {}, not running", state.label()));
        }
        let root = sealed.root_hash_bytes().ok_or("the VM's spec has a bad root hash")?;
        let max = ppn_wire::service::PROVISIONING_MAX as u64;
        let len =
            std::fs::metadata(&sealed.statement).map_err(|e| format!("{}: {e}", sealed.statement.display()))?.len();
        if len > max {
            return Err(format!("{}: {len} bytes, over the limit of {max}", sealed.statement.display()));
        }
        let statement = std::fs::read(&sealed.statement).map_err(|e| format!("{}: {e}", sealed.statement.display()))?;
        self.tcb.sign_report(name, root, &statement, nonce).await.map_err(|e| format!("TCB: {e}"))
    }

    /// What the scheduler needs of this node (control op `node-capacity`): what it offers VMs,
    /// and the memory its TCB has lent out (taken from what it offers: the lent blocks are
    /// promised to a borrower).
    pub async fn capacity(&self) -> serde_json::Value {
        let pool = self.tcb.pool_status().await.ok();
        let lent_mib = pool.map_or(0, |p| u64::from(p.total.saturating_sub(p.free)) * 2);
        serde_json::json!({
            "node_id": self.me.to_string(),
            "mem_mib": self.capacity.mem_mib,
            "vcpus": self.capacity.vcpus,
            "reserved_mib": lent_mib,
        })
    }

    /// Records where `node`'s mesh listens, and syncs peers.
    pub fn hint(&self, node: NodeId, endpoint: SocketAddr) -> Result<(), HintsError> {
        lock(&self.hints).set(node, endpoint)?;
        self.sync_now.notify_one();
        Ok(())
    }

    /// The node's state, for `ppn fleet status`.
    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        let summary = self.tcb.ledger_summary().await?;
        let heads = self.tcb.heads().await?;
        let mesh_peers = self.mesh.peers().await.unwrap_or_default();
        let views = self.gossip.peers();
        let members = lock(&self.members).clone();
        let hints = lock(&self.hints).all().clone();
        let now = SystemTime::now();
        let mut peers = Vec::new();
        for (id, (key, trusted)) in &members {
            if !trusted || *id == self.me {
                continue;
            }
            let in_mesh = mesh_peers.iter().find(|p| p.public_key == *key);
            let view = views.get(id);
            peers.push(PeerStatus {
                node_id: id.to_string(),
                mesh_key: keys::encode_public_key(key),
                endpoint: in_mesh.map(|p| p.endpoint).or(hints.get(id).copied()).map(|e| e.to_string()),
                in_mesh: in_mesh.is_some(),
                up: view.is_some_and(|v| v.up),
                last_handshake_s_ago: in_mesh
                    .and_then(|p| p.last_handshake)
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|d| d.as_secs_f64()),
                advert: view.and_then(|v| v.advert).map(|a| AdvertStatus {
                    free_blocks: a.free_blocks,
                    total_blocks: a.total_blocks,
                    block_mib: a.block_mib,
                    cpus: a.cpus,
                    load_permille: a.load_permille,
                    vms: a.vms,
                    age_ms: now_ms().saturating_sub(a.sent_unix_ms),
                }),
            });
        }
        let c = &self.gossip.counters;
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        let gossip = BTreeMap::from([
            ("pushed_records", load(&c.pushed_records)),
            ("received_records", load(&c.received_records)),
            ("accepted", load(&c.accepted)),
            ("refused", load(&c.refused)),
            ("bad_datagrams", load(&c.bad_datagrams)),
            ("pulls", load(&c.pulls)),
            ("pulled_accepted", load(&c.pulled_accepted)),
            ("pull_failures", load(&c.pull_failures)),
        ]);
        let m = self.mesh.stats();
        let mesh = BTreeMap::from([
            ("datagrams_in", m.datagrams_in),
            ("datagrams_out", m.datagrams_out),
            ("handshakes_refused", m.handshakes_refused),
            ("packets_invalid", m.packets_invalid),
            ("packets_unknown_session", m.packets_unknown_session),
            ("loss_dropped", m.loss_dropped),
        ]);
        Ok(NodeStatus {
            node_id: self.me.to_string(),
            mesh_ip: self.mesh.mesh_ip().to_string(),
            mesh_key: keys::encode_public_key(&self.mesh.public_key()),
            mesh_endpoint: self.mesh.local_addr().to_string(),
            tcb: self.tcb_path.display().to_string(),
            records: summary.record_count,
            heads: heads.heads.iter().map(|h| format!("{h:x}")).collect(),
            revoked_nodes: summary.revoked_node_count,
            peers,
            gossip,
            mesh,
        })
    }
}

/// One peer sync: the mesh gets every trusted member with a mesh key and an endpoint, loses
/// every peer that is no longer one (a revoked node is dropped here, at once), and gossip gets
/// the same set.
async fn sync_peers(
    me: NodeId,
    tcb: &TcbClient,
    mesh: &Mesh,
    gossip: &Gossip<MeshTransport>,
    hints: &Mutex<Hints>,
    members: &Mutex<BTreeMap<NodeId, (PublicKey, bool)>>,
    evacuating: &BTreeSet<NodeId>,
) {
    let Ok(list) = tcb.ledger_members().await else { return };
    let mut seen = BTreeMap::new();
    let mut want: BTreeMap<[u8; 32], (PublicKey, NodeId, SocketAddr)> = BTreeMap::new();
    let mut gossip_to = Vec::new();
    for m in &list {
        let Some(wg) = m.wireguard else { continue };
        let key = PublicKey::from(wg.0);
        seen.insert(m.node_id, (key, m.trusted));
        // A revoked node stays in the mesh only while this node's operator has it evacuate a
        // VM here (and it never gets gossip: its records are refused anyway).
        if m.node_id == me || !(m.trusted || evacuating.contains(&m.node_id)) {
            continue;
        }
        if let Some(endpoint) = lock(hints).get(&m.node_id) {
            want.insert(wg.0, (key, m.node_id, endpoint));
            if m.trusted {
                gossip_to.push(m.node_id);
            }
        }
    }
    *lock(members) = seen;
    let current = mesh.peers().await.unwrap_or_default();
    for p in &current {
        if !want.contains_key(p.public_key.as_bytes()) {
            let _ = mesh.remove_peer(&p.public_key).await;
        }
    }
    let have: BTreeSet<[u8; 32]> = current.iter().map(|p| *p.public_key.as_bytes()).collect();
    for (raw, (key, node, endpoint)) in &want {
        if !have.contains(raw) {
            let _ = mesh.add_peer(*key, *endpoint, transport::ip_of(*node)).await;
        }
    }
    gossip.set_peers(gossip_to);
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

struct HostFigures {
    cpus: u16,
    load_permille: u16,
}

/// This host's CPUs and load, from /proc.
fn host_figures() -> HostFigures {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1) as u16;
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|l| l.parse::<f64>().ok()))
        .unwrap_or(0.0);
    HostFigures { cpus, load_permille: ((load / f64::from(cpus.max(1))) * 1000.0).min(65535.0) as u16 }
}
