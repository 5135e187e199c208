//! Live migration of a running VM to another node through the mesh (docs/migration.md).
//!
//! Source (`vm-migrate`): this node's TCB issues a `Vm` grant to the destination (resource id
//! [`vm_id`]: the VM named by its issuer and name) and endorses it; the proxy opens a mesh
//! stream to the destination's [`MIGRATE_PORT`] and sends a [`MigrateMsg::Request`] with the
//! spec, the token and the endorsement. Once the destination answers `Ready`, the source QEMU
//! migrates to a loopback TCP port this proxy listens on, and the proxy copies that connection
//! into the mesh stream. Progress is `query-migrate`, kept for `vm-migrate-status`. When QEMU
//! says `completed` the proxy waits for the destination's `Done`: running → the source QEMU is
//! quit and the VM destroyed here (which ends its borrowed leases at their lenders); anything
//! else before the switch-over → `migrate_cancel`, and the guest runs on here (`cont`).
//!
//! Destination: the TCB checks the endorsed token (`Valid`), and the proxy checks its claims
//! (type `Vm`, issued by the mesh peer that asked, granted to this node, resource id the VM's
//! id); it creates the VM from the spec (no extra QEMU arguments, kernel and initrd present
//! here), starts it with `-incoming defer` and `migrate-incoming` on a unix socket in the VM's
//! directory, answers `Ready` and copies the mesh stream into that socket. When the stream ends it waits until its
//! QEMU runs the guest and answers `Done`; a QEMU that died or failed to load is destroyed. The
//! memory the VM arrives with plugged is then borrowed here from a peer (the source's leases end
//! with the source's copy); if no peer lends it, it is unplugged.

use crate::migrate_stream::{self, StreamEncoding, StreamStats};
use crate::migrate_wire::{MIGRATE_PORT, MigrateMsg, MigrateWireError, read_msg};
use crate::transport::{ip_of, node_of};
use crate::vms::{TokenClaims, VmPlane, token_claims};
use ppn_mesh::{Mesh, MeshStream};
use ppn_tcb_client::TcbClient;
use ppn_vm::VmSpec;
use ppn_vm::migrate::{MigrationParams, MigrationProgress};
use ppn_wire::NodeId;
use ppn_wire::service::{ResourceType, Verdict};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::{AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinHandle;

/// Default `downtime-limit`, ms.
pub const DEFAULT_DOWNTIME_MS: u64 = 30;
/// The part of the operator's downtime limit the source keeps for what follows QEMU's
/// switch-over on the fabric: the last of the stream crossing the tunnel, and the destination
/// QEMU loading it and resuming the guest (docs/migration.md). QEMU gets the rest as its own
/// `downtime-limit`, so that the guest's pause, not only QEMU's downtime, stays within the
/// operator's limit.
pub const TAIL_BUDGET_MS: u64 = 10;

/// QEMU's `downtime-limit` for an operator's limit: the limit less [`TAIL_BUDGET_MS`], but not
/// below a third of it (QEMU must still be able to converge) nor below 1 ms.
pub fn qemu_downtime_limit(limit_ms: u64) -> u64 {
    limit_ms.saturating_sub(TAIL_BUDGET_MS).max(limit_ms / 3).max(1)
}

/// Default `max-bandwidth`, bytes per second: far above what the mesh carries, so the
/// stream is paced by the tunnel, not by QEMU.
pub const DEFAULT_MAX_BANDWIDTH: u64 = 8 << 30;
/// Default time the whole migration may take.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the grant the source issues is valid: long enough to reach the destination and be
/// checked there; the destination checks it once, at the request.
pub const GRANT_SECS: u64 = 120;
/// Opening the mesh stream.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Request to `Ready`: the destination checks the grant and starts its QEMU.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The source QEMU connecting to the proxy's socket.
const ACCEPT_TIMEOUT: Duration = Duration::from_secs(10);
/// Source `completed` to the destination's `Done`.
const DONE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often the source polls `query-migrate`.
const POLL: Duration = Duration::from_millis(25);

/// Migration errors.
#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("{0}")]
    Refused(String),
    #[error("VM {name}: {what}")]
    Vm { name: String, what: String },
    #[error("TCB: {0}")]
    Tcb(#[from] ppn_tcb_client::ClientError),
    #[error("mesh stream to {to}: {what}")]
    Stream { to: NodeId, what: String },
    #[error(transparent)]
    Wire(#[from] MigrateWireError),
    #[error("the socket to QEMU: {0}")]
    Io(#[from] std::io::Error),
    #[error("{name}: {what} after {after:?}")]
    Timeout { name: String, what: &'static str, after: Duration },
}

fn vm_err(name: &str) -> impl Fn(String) -> MigrationError + '_ {
    move |what| MigrationError::Vm { name: name.into(), what }
}

/// The resource id of a VM in a `Vm` grant: FNV-1a 64 over `"ppn/vm/v1\0"`, the issuing
/// (source) node's id and the VM's name. It binds a grant to one VM of one source.
pub fn vm_id(source: NodeId, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in b"ppn/vm/v1\0".iter().chain(source.0.0.iter()).chain(name.as_bytes()) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The destination's check of a request's grant, after its TCB gave `verdict` for the endorsed
/// token: valid, a `Vm` grant issued by the peer that asked, to this node, for this VM.
pub fn check_grant(
    verdict: Verdict,
    claims: Option<TokenClaims>,
    me: NodeId,
    peer: NodeId,
    vm_name: &str,
) -> Result<(), String> {
    if verdict != Verdict::Valid {
        return Err(format!("the grant does not check: TCB verdict {verdict:?}"));
    }
    let c = claims.ok_or("the grant is not a token of the known layout")?;
    if c.resource_type != ResourceType::Vm {
        return Err(format!("the grant is for {:?}, not a VM", c.resource_type));
    }
    if c.issuer != peer {
        return Err(format!("the grant was issued by {}, not by the peer that asked ({peer})", c.issuer));
    }
    if c.grantee != me {
        return Err(format!("the grant names {} as grantee, not this node ({me})", c.grantee));
    }
    let want = vm_id(peer, vm_name);
    if c.resource_id != want {
        return Err(format!("the grant is for VM id {:#018x}, not {vm_name} ({want:#018x})", c.resource_id));
    }
    Ok(())
}

/// Where a migration is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// The TCB issues and endorses the grant.
    Granting,
    /// The destination checks the grant and starts its QEMU.
    Connecting,
    /// QEMU's migration stream flows.
    Migrating,
    /// The source QEMU completed; waiting for the destination to run the guest.
    Switching,
    Completed,
    Failed,
}

/// A migration as `vm-migrate-status` shows it (source side).
#[derive(Debug, Clone, Serialize)]
pub struct MigrationStatus {
    pub vm: String,
    pub to: String,
    pub phase: Phase,
    /// The operator's limit on the guest's pause.
    pub downtime_limit_ms: u64,
    /// What QEMU was given of it ([`qemu_downtime_limit`]).
    pub qemu_downtime_limit_ms: u64,
    pub max_bandwidth: u64,
    /// The last `query-migrate` of the source.
    pub progress: Option<MigrationProgress>,
    /// Request until the grant was endorsed, ms.
    pub grant_ms: Option<f64>,
    /// Request until the destination answered `Ready`, ms.
    pub ready_ms: Option<f64>,
    /// QEMU's downtime of the switch-over, ms: ends when the source has written its last byte.
    pub downtime_ms: Option<u64>,
    /// The guest's pause, ms: from the source QEMU's `STOP` to the destination QEMU's `RESUME`
    /// (event timestamps, so the two nodes' wall clocks: exact on one host, off by their skew
    /// otherwise).
    pub guest_pause_ms: Option<f64>,
    /// QEMU's `total-time`, ms.
    pub qemu_total_ms: Option<u64>,
    /// Request until the destination said the guest runs there, ms.
    pub total_ms: Option<f64>,
    pub elapsed_ms: f64,
    /// How the stream crossed the mesh (`plain`, `zstd`).
    pub encoding: &'static str,
    /// QEMU's bytes and the bytes on the mesh, once the stream ended.
    pub stream: Option<StreamStats>,
    /// After a failure: whether the guest runs on this node.
    pub source_running: Option<bool>,
    pub error: Option<String>,
    #[serde(skip)]
    started: Option<Instant>,
}

/// Source-side knobs of one migration.
#[derive(Debug, Clone, Copy)]
pub struct MigrateOptions {
    pub params: MigrationParams,
    pub timeout: Duration,
    /// How the stream crosses the mesh (zstd by default).
    pub encoding: StreamEncoding,
    /// An evacuation from this node, which the ledger has revoked: no grant (this node's TCB
    /// issues none now), an `Evacuate` request that the destination takes only on its own
    /// operator's order (docs/scheduler.md, "Evacuation").
    pub evacuate: bool,
}

impl Default for MigrateOptions {
    fn default() -> Self {
        Self {
            params: MigrationParams { downtime_limit_ms: DEFAULT_DOWNTIME_MS, max_bandwidth: DEFAULT_MAX_BANDWIDTH },
            timeout: DEFAULT_TIMEOUT,
            encoding: StreamEncoding::Zstd,
            evacuate: false,
        }
    }
}

/// How long an evacuation order waits for its VM by default.
pub const EVACUATION_ORDER_SECS: u64 = 300;

/// Evacuation orders a destination holds: (source node, VM name) -> the order. Shared with the
/// node's peer sync, which keeps a revoked source in the mesh while an order for one of its VMs
/// stands, and while the migration it ordered runs.
pub type Orders = Arc<Mutex<BTreeMap<(NodeId, String), Order>>>;

/// One evacuation order.
#[derive(Debug, Clone, Copy)]
pub struct Order {
    /// Until when the request may come; once taken, until when the migration may run.
    pub until: Instant,
    /// The request came: the migration runs (the order ends with it, or at `until`).
    pub taken: bool,
}

/// Send buffer of the proxy's socket into the destination QEMU. Small on purpose: the
/// destination's loading pace must reach the source QEMU, which paces itself (and estimates
/// the downtime) by how fast its socket drains. A stream queued in front of the destination
/// QEMU is loaded only after the source stopped the guest, lengthening the guest's pause beyond
/// QEMU's downtime. A unix stream socket's unread bytes count against the sender's buffer, so
/// the proxy's setting bounds the queue whatever QEMU's own.
const QEMU_SOCKET_BUFFER: usize = 128 * 1024;

/// Both legs between a proxy and its QEMU are unix sockets in the VM's directory (docs/vm.md):
/// no other local user can connect to them, unlike a loopback port, and they need no port.
///
/// The source's listener for its QEMU's stream; a stale socket file is replaced.
fn outgoing_listener(path: &Path) -> std::io::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    UnixListener::bind(path)
}

/// Connects to the destination QEMU's incoming socket with [`QEMU_SOCKET_BUFFER`].
fn connect_incoming(path: &Path) -> std::io::Result<UnixStream> {
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
    s.set_send_buffer_size(QEMU_SOCKET_BUFFER)?;
    s.connect(&socket2::SockAddr::unix(path)?)?;
    s.set_nonblocking(true)?;
    UnixStream::from_std(std::os::unix::net::UnixStream::from(s))
}

/// The source reads the destination's messages after `Ready`: each `Loaded` count goes to
/// `loaded` (a count lower than the last is ignored: it can only slow the stream), and the
/// first other message, or error, is the destination's answer.
async fn answer_after_stream<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    loaded: tokio::sync::watch::Sender<u64>,
) -> std::io::Result<Result<MigrateMsg, MigrateWireError>> {
    loop {
        match read_msg(r).await? {
            Ok(MigrateMsg::Loaded { bytes }) => {
                loaded.send_if_modified(|last| {
                    let more = bytes > *last;
                    *last = (*last).max(bytes);
                    more
                });
            }
            other => return Ok(other),
        }
    }
}

/// Removes a socket file when dropped.
struct Unlink(PathBuf);

impl Drop for Unlink {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Aborts a task when dropped.
struct Abort<T>(JoinHandle<T>);

impl<T> Drop for Abort<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The migration service of a node: both sides.
pub struct Migrations {
    me: NodeId,
    tcb: Arc<TcbClient>,
    mesh: Mesh,
    vms: Arc<VmPlane>,
    status: Mutex<BTreeMap<String, MigrationStatus>>,
    orders: Orders,
}

impl std::fmt::Debug for Migrations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migrations").field("me", &self.me).finish_non_exhaustive()
    }
}

/// How the source's stream part ended.
enum SourceEnd {
    Completed { progress: MigrationProgress },
}

impl Migrations {
    pub fn new(me: NodeId, tcb: Arc<TcbClient>, mesh: Mesh, vms: Arc<VmPlane>) -> Arc<Self> {
        Arc::new(Self { me, tcb, mesh, vms, status: Mutex::default(), orders: Arc::default() })
    }

    /// The evacuation orders (the node's peer sync reads them).
    pub fn orders(&self) -> Orders {
        Arc::clone(&self.orders)
    }

    /// The operator's order to take VM `name` from node `from`, which the ledger has revoked,
    /// within `secs` seconds: one `Evacuate` request from that node for that VM is then taken
    /// without a grant.
    pub fn order_evacuation(&self, from: NodeId, name: &str, secs: u64) {
        let until = Instant::now() + Duration::from_secs(secs);
        lock(&self.orders).insert((from, name.to_owned()), Order { until, taken: false });
    }

    /// Takes the evacuation order for `name` from `peer`: only on this node's operator's order
    /// for this VM from this peer, and once. A taken order stands until the migration ends
    /// (`serve`), or for as long as a migration may take.
    fn take_order(&self, peer: NodeId, name: &str) -> Result<(), String> {
        let mut orders = lock(&self.orders);
        match orders.get_mut(&(peer, name.to_owned())) {
            Some(o) if !o.taken && o.until > Instant::now() => {
                o.taken = true;
                o.until = Instant::now() + DEFAULT_TIMEOUT;
                Ok(())
            }
            _ => Err(format!("no evacuation order here for {name} from {peer}")),
        }
    }

    /// The nodes that evacuation orders stand for now (expired orders are dropped).
    pub fn evacuating_from(orders: &Orders) -> std::collections::BTreeSet<NodeId> {
        let mut o = lock(orders);
        let now = Instant::now();
        o.retain(|_, order| order.until > now);
        o.keys().map(|(n, _)| *n).collect()
    }

    /// Starts the destination service on [`MIGRATE_PORT`].
    pub async fn spawn(self: &Arc<Self>) -> Result<(), String> {
        let mut listener = self.mesh.listen(MIGRATE_PORT).await.map_err(|e| e.to_string())?;
        let this = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok(stream) = listener.accept().await {
                let this = Arc::clone(&this);
                tokio::spawn(async move { this.serve(stream).await });
            }
        });
        Ok(())
    }

    /// The status of the latest migration of `name` from this node.
    pub fn status(&self, name: &str) -> Option<MigrationStatus> {
        let mut s = lock(&self.status).get(name).cloned()?;
        if let Some(t0) = s.started
            && !matches!(s.phase, Phase::Completed | Phase::Failed)
        {
            s.elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
        }
        Some(s)
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut MigrationStatus)) {
        if let Some(s) = lock(&self.status).get_mut(name) {
            f(s);
            if let Some(t0) = s.started {
                s.elapsed_ms = t0.elapsed().as_secs_f64() * 1e3;
            }
        }
    }

    /// Starts migrating `name` to `to`; returns at once (see [`Migrations::status`]).
    pub async fn start(
        self: &Arc<Self>,
        name: &str,
        to: NodeId,
        opts: MigrateOptions,
    ) -> Result<MigrationStatus, MigrationError> {
        if to == self.me {
            return Err(MigrationError::Refused(format!("{name} already runs on this node ({to})")));
        }
        // The operator's pin is never overridden, not even by a migration asked by hand.
        if self.vms.placement(name).is_some_and(|p| p.pinned) {
            return Err(MigrationError::Refused(format!("{name} is pinned to this node: `ppn vm unpin {name}` first")));
        }
        let state = self.vms.manager.state(name).await.map_err(|e| vm_err(name)(e.to_string()))?;
        if state.label() != "running" {
            return Err(vm_err(name)(format!("is {}, only a running VM migrates", state.label())));
        }
        // Plugged memory moves with the guest; a resize still in flight does not (with QEMU 7.2
        // a guest migrated mid-plug crashed on the destination, docs/migration.md).
        let mem = self.vms.manager.memory(name).await.map_err(|e| vm_err(name)(e.to_string()))?;
        if mem.plugged_mib != mem.requested_mib {
            return Err(MigrationError::Refused(format!(
                "{name}'s virtio-mem resize is in flight ({} of {} MiB plugged): a guest migrated \
                 mid-resize crashed on the destination with QEMU 7.2 (docs/migration.md); try again \
                 once it has settled",
                mem.plugged_mib, mem.requested_mib
            )));
        }
        let status = MigrationStatus {
            vm: name.into(),
            to: to.to_string(),
            phase: Phase::Granting,
            downtime_limit_ms: opts.params.downtime_limit_ms,
            qemu_downtime_limit_ms: qemu_downtime_limit(opts.params.downtime_limit_ms),
            max_bandwidth: opts.params.max_bandwidth,
            progress: None,
            grant_ms: None,
            ready_ms: None,
            downtime_ms: None,
            guest_pause_ms: None,
            qemu_total_ms: None,
            total_ms: None,
            elapsed_ms: 0.0,
            encoding: opts.encoding.name(),
            stream: None,
            source_running: None,
            error: None,
            started: Some(Instant::now()),
        };
        {
            let mut all = lock(&self.status);
            if let Some(s) = all.get(name)
                && !matches!(s.phase, Phase::Completed | Phase::Failed)
            {
                return Err(vm_err(name)(format!("is already migrating to {}", s.to)));
            }
            all.insert(name.into(), status.clone());
        }
        let this = Arc::clone(self);
        let name = name.to_owned();
        tokio::spawn(async move { this.run_source(name, to, opts).await });
        Ok(status)
    }

    async fn run_source(self: Arc<Self>, name: String, to: NodeId, opts: MigrateOptions) {
        let t0 = Instant::now();
        self.vms_event(format!("migrating {name} to {to} (downtime limit {} ms)", opts.params.downtime_limit_ms));
        match self.source(&name, to, opts, t0).await {
            Ok(SourceEnd::Completed { progress }) => {
                let total_ms = t0.elapsed().as_secs_f64() * 1e3;
                // The guest runs on the destination: quit the paused copy here, remove it, end
                // its leases (the lenders are told; the destination borrows for itself).
                let destroyed = self.vms.destroy(&name).await;
                self.vms_event(format!(
                    "{name} migrated to {to}: downtime {:?} ms, total {total_ms:.0} ms; source copy: {destroyed:?}",
                    progress.downtime_ms
                ));
                self.update(&name, |s| {
                    s.phase = Phase::Completed;
                    s.downtime_ms = progress.downtime_ms;
                    s.qemu_total_ms = progress.total_time_ms;
                    s.total_ms = Some(total_ms);
                    s.error = destroyed.err().map(|e| format!("removing the source copy: {e}"));
                    s.progress = Some(progress);
                });
            }
            Err((e, started)) => {
                let running = if started { self.recover(&name).await } else { self.is_running(&name).await };
                self.vms_event(format!("migrating {name} to {to} failed: {e}; guest running here: {running}"));
                self.update(&name, |s| {
                    s.phase = Phase::Failed;
                    s.error = Some(e.to_string());
                    s.source_running = Some(running);
                });
            }
        }
    }

    fn vms_event(&self, what: String) {
        eprintln!("ppn-node: {what}");
    }

    async fn is_running(&self, name: &str) -> bool {
        matches!(self.vms.manager.state(name).await, Ok(s) if s.label() == "running")
    }

    /// After a failed migration: cancel it, wait until QEMU says it ended, and make sure the
    /// guest runs here. Returns whether it does.
    async fn recover(&self, name: &str) -> bool {
        let Ok(c) = self.vms.manager.qmp(name).await else { return false };
        let _ = c.execute(qapi::qmp::migrate_cancel {}).await;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            match c.execute_value(qapi::qmp::query_migrate {}).await {
                Ok(v) => {
                    let p = MigrationProgress::from_value(&v);
                    if p.is_finished() || p.status == "none" {
                        break;
                    }
                }
                Err(_) => break,
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        match c.query_status().await {
            Ok(s) if s.status == qapi::qmp::RunState::running => return true,
            Ok(_) => {
                let _ = c.execute(qapi::qmp::cont {}).await;
            }
            Err(_) => return false,
        }
        matches!(c.query_status().await, Ok(s) if s.status == qapi::qmp::RunState::running)
    }

    /// The source's part; the error says whether the source QEMU's migration had started.
    async fn source(
        &self,
        name: &str,
        to: NodeId,
        opts: MigrateOptions,
        t0: Instant,
    ) -> Result<SourceEnd, (MigrationError, bool)> {
        let before = |e: MigrationError| (e, false);
        let spec = self.vms.manager.spec(name).map_err(|e| before(vm_err(name)(e.to_string())))?;
        if spec.sealed.is_some() {
            return Err(before(vm_err(name)("it boots a sealed image, and those do not migrate yet".into())));
        }
        let spec_json = serde_json::to_string(&spec).map_err(|e| before(vm_err(name)(e.to_string())))?;
        let request = if opts.evacuate {
            if spec_json.len() > crate::migrate_wire::MAX_SPEC {
                return Err(before(vm_err(name)(format!("its spec is {} bytes, over the limit", spec_json.len()))));
            }
            MigrateMsg::Evacuate { encoding: opts.encoding, spec: spec_json }
        } else {
            let expires = now_unix_s() + GRANT_SECS;
            let grant = self
                .tcb
                .issue_grant(to, ResourceType::Vm, vm_id(self.me, name), expires)
                .await
                .map_err(|e| before(e.into()))?;
            let endorsement = self.tcb.endorse(&grant.token).await.map_err(|e| before(e.into()))?;
            MigrateMsg::request(opts.encoding, &grant.token, endorsement.0, spec_json).map_err(|e| before(e.into()))?
        };
        self.update(name, |s| {
            s.grant_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            s.phase = Phase::Connecting;
        });

        let stream_err = |what: String| MigrationError::Stream { to, what };
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, self.mesh.connect(ip_of(to), MIGRATE_PORT))
            .await
            .map_err(|_| before(stream_err(format!("no connection in {CONNECT_TIMEOUT:?}"))))?
            .map_err(|e| before(stream_err(e.to_string())))?;
        let (mut mr, mut mw): (ReadHalf<MeshStream>, WriteHalf<MeshStream>) = tokio::io::split(stream);
        mw.write_all(&request.encode()).await.map_err(|e| before(stream_err(e.to_string())))?;
        let answer = tokio::time::timeout(READY_TIMEOUT, read_msg(&mut mr))
            .await
            .map_err(|_| before(stream_err(format!("no answer in {READY_TIMEOUT:?}"))))?
            .map_err(|e| before(stream_err(e.to_string())))?
            .map_err(|e| before(e.into()))?;
        match answer {
            MigrateMsg::Ready => {}
            MigrateMsg::Refused { reason } => {
                return Err(before(MigrationError::Refused(format!("{to} refused the migration: {reason}"))));
            }
            other => return Err(before(stream_err(format!("answered the request with {other:?}")))),
        }
        self.update(name, |s| {
            s.ready_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            s.phase = Phase::Migrating;
        });

        // From here on a failure cancels the source's migration.
        let after = |e: MigrationError| (e, true);
        let m = &self.vms.manager;
        let sock_path = m.paths(name).map_err(|e| before(vm_err(name)(e.to_string())))?.outgoing();
        let listener = outgoing_listener(&sock_path).map_err(|e| before(e.into()))?;
        let _unlink = Unlink(sock_path.clone());
        let params =
            MigrationParams { downtime_limit_ms: qemu_downtime_limit(opts.params.downtime_limit_ms), ..opts.params };
        m.set_migration_params(name, params).await.map_err(|e| before(vm_err(name)(e.to_string())))?;
        m.migrate_start(name, &format!("unix:{}", sock_path.display()))
            .await
            .map_err(|e| after(vm_err(name)(e.to_string())))?;
        let (qemu, _) = tokio::time::timeout(ACCEPT_TIMEOUT, listener.accept())
            .await
            .map_err(|_| {
                after(MigrationError::Timeout {
                    name: name.into(),
                    what: "source QEMU did not connect",
                    after: ACCEPT_TIMEOUT,
                })
            })?
            .map_err(|e| after(e.into()))?;
        drop(listener);
        // QEMU's stream into the mesh; then the mesh stream's writing side is closed, which
        // tells the destination the stream is complete. The destination sends nothing back to
        // QEMU (no return path), but the write half stays open until the copy ends.
        let (pump_tx, mut pump_rx) = tokio::sync::oneshot::channel();
        let encoding = opts.encoding;
        let (loaded_tx, loaded_rx) = tokio::sync::watch::channel(0u64);
        let _pump = Abort(tokio::spawn(async move {
            let (qr, qw) = qemu.into_split();
            let sent = migrate_stream::send(qr, &mut mw, encoding, loaded_rx).await;
            drop(qw);
            let _ = pump_tx.send(sent);
        }));
        let mut done = Abort(tokio::spawn(async move { answer_after_stream(&mut mr, loaded_tx).await }));

        let c = m.qmp(name).await.map_err(|e| after(vm_err(name)(e.to_string())))?;
        let mut events = c.subscribe();
        let t_mig = Instant::now();
        let mut pumped = None;
        let progress = loop {
            let v =
                c.execute_value(qapi::qmp::query_migrate {}).await.map_err(|e| after(vm_err(name)(e.to_string())))?;
            let mut p = MigrationProgress::from_value(&v);
            self.update(name, |s| s.progress = Some(p.clone()));
            match p.status.as_str() {
                "completed" => {
                    p.stopped_unix_us = ppn_vm::migrate::last_event_at(&mut events, "STOP");
                    break p;
                }
                "failed" | "cancelled" => {
                    let why = p.error.clone().unwrap_or_else(|| "no error given".into());
                    return Err(after(vm_err(name)(format!("QEMU's migration {}: {why}", p.status))));
                }
                _ => {}
            }
            match pump_rx.try_recv() {
                Ok(Err(e)) => return Err(after(stream_err(format!("QEMU's stream into the mesh: {e}")))),
                Ok(Ok(stats)) => pumped = Some(stats),
                Err(_) => {}
            }
            if done.0.is_finished() {
                // The destination answered before the source completed: it failed.
                return Err(after(stream_err("the destination ended the migration before the switch-over".into())));
            }
            if t_mig.elapsed() > opts.timeout {
                return Err(after(MigrationError::Timeout {
                    name: name.into(),
                    what: "migration not complete",
                    after: opts.timeout,
                }));
            }
            tokio::time::sleep(POLL).await;
        };
        drop(c);
        self.update(name, |s| s.phase = Phase::Switching);
        let answer = tokio::time::timeout(DONE_TIMEOUT, &mut done.0).await;
        match answer {
            Ok(Ok(Ok(Ok(MigrateMsg::Done { running: true, resumed_unix_us, .. })))) => {
                let resumed = (resumed_unix_us > 0).then_some(resumed_unix_us);
                let pause = ppn_vm::migrate::pause_ms(progress.stopped_unix_us, resumed);
                self.update(name, |s| s.guest_pause_ms = pause);
                // The destination read the whole stream, so the pump has ended.
                let stream = match pumped {
                    Some(s) => Some(s),
                    None => tokio::time::timeout(Duration::from_secs(1), pump_rx).await.ok().and_then(|r| r.ok()?.ok()),
                };
                self.update(name, |s| s.stream = stream);
                Ok(SourceEnd::Completed { progress })
            }
            Ok(Ok(Ok(Ok(MigrateMsg::Done { running: false, detail, .. })))) => {
                Err(after(MigrationError::Refused(format!("{to} could not run the guest: {detail}"))))
            }
            other => Err(after(stream_err(format!("no Done from the destination after the switch-over: {other:?}")))),
        }
    }

    /// One incoming migration (destination side).
    async fn serve(&self, stream: MeshStream) {
        let Some(peer) = node_of(stream.peer_addr().ip()) else { return };
        let (mut mr, mut mw) = tokio::io::split(stream);
        let request = match tokio::time::timeout(READY_TIMEOUT, read_msg(&mut mr)).await {
            Ok(Ok(Ok(m))) => m,
            Ok(Ok(Err(e))) => {
                let _ = mw.write_all(&MigrateMsg::Refused { reason: e.to_string() }.encode()).await;
                return;
            }
            _ => return,
        };
        let (name, path, encoding) = match self.accept(peer, request).await {
            Ok(x) => x,
            Err(reason) => {
                self.vms_event(format!("refused a migration from {peer}: {reason}"));
                let _ = mw.write_all(&MigrateMsg::Refused { reason }.encode()).await;
                return;
            }
        };
        let outcome = self.receive(&name, &path, encoding, &mut mr, &mut mw).await;
        match outcome {
            Ok(resumed) => {
                self.vms_event(format!("{name} arrived from {peer} and runs here"));
                let done =
                    MigrateMsg::Done { running: true, resumed_unix_us: resumed.unwrap_or(0), detail: "running".into() };
                let _ = mw.write_all(&done.encode()).await;
                let _ = mw.shutdown().await;
                self.cover_leases(&name).await;
            }
            Err(detail) => {
                self.vms_event(format!("incoming migration of {name} from {peer} failed: {detail}"));
                let done = MigrateMsg::Done { running: false, resumed_unix_us: 0, detail: detail.clone() };
                let _ = mw.write_all(&done.encode()).await;
                let _ = mw.shutdown().await;
                let _ = self.vms.destroy(&name).await;
            }
        }
        // An evacuation order ends with its migration, once the source has its answer: the
        // revoked source then leaves the mesh at the next peer sync.
        if lock(&self.orders).remove(&(peer, name.clone())).is_some() {
            self.vms_event(format!("evacuation of {name} from {peer} ended"));
        }
    }

    /// Checks a request and prepares the destination QEMU; returns the VM's name, the socket
    /// its QEMU listens on and the stream's encoding.
    async fn accept(&self, peer: NodeId, request: MigrateMsg) -> Result<(String, PathBuf, StreamEncoding), String> {
        // A `Request` carries a grant from the source's TCB; an `Evacuate` none.
        let (encoding, spec, grant) = match request {
            MigrateMsg::Request { encoding, token, endorsement, spec } => (encoding, spec, Some((token, endorsement))),
            MigrateMsg::Evacuate { encoding, spec } => (encoding, spec, None),
            other => return Err(format!("{other:?} is not a request")),
        };
        let spec: VmSpec = serde_json::from_str(&spec).map_err(|e| format!("VM spec: {e}"))?;
        match grant {
            Some((token, endorsement)) => {
                let verdict = self
                    .tcb
                    .verify_endorsed(&token, &ppn_wire::ByteArray(endorsement))
                    .await
                    .map_err(|e| format!("TCB: {e}"))?;
                check_grant(verdict, token_claims(&token), self.me, peer, &spec.name)?;
            }
            None => self.take_order(peer, &spec.name)?,
        }
        if let StreamEncoding::Unknown(c) = encoding {
            return Err(format!("stream encoding {c} is not one this node knows (0 plain, 1 zstd)"));
        }
        spec.validate().map_err(|e| format!("VM spec: {e}"))?;
        if !spec.extra_args.is_empty() {
            return Err("a migrating VM carries no extra QEMU arguments".into());
        }
        if spec.sealed.is_some() {
            // Its spec names files on this host (the image, statement and trust file) that the
            // guest would read: a hostile source could name any file here. Not before the
            // destination can check the image against its own ledger (docs/attestation.md).
            return Err("a VM that boots a sealed image does not migrate yet".into());
        }
        for (what, p) in [("kernel", &spec.kernel), ("initrd", &spec.initrd)] {
            if !p.is_file() {
                return Err(format!("the {what} {} is not here", p.display()));
            }
        }
        let name = spec.name.clone();
        let m = &self.vms.manager;
        if m.paths(&name).map_err(|e| e.to_string())?.dir.exists() {
            return Err(format!("a VM named {name} exists here"));
        }
        self.vms.create(&spec)?;
        let prepared = async {
            m.start_incoming(&name).await.map_err(|e| e.to_string())?;
            let path = m.paths(&name).map_err(|e| e.to_string())?.incoming();
            m.migrate_incoming(&name, &format!("unix:{}", path.display())).await.map_err(|e| e.to_string())?;
            Ok::<PathBuf, String>(path)
        };
        match prepared.await {
            Ok(path) => Ok((name, path, encoding)),
            Err(e) => {
                let _ = self.vms.destroy(&name).await;
                Err(e)
            }
        }
    }

    /// Answers `Ready`, copies the stream into the destination QEMU, and waits until it runs
    /// the guest.
    async fn receive(
        &self,
        name: &str,
        path: &Path,
        encoding: StreamEncoding,
        mr: &mut ReadHalf<MeshStream>,
        mw: &mut WriteHalf<MeshStream>,
    ) -> Result<Option<u64>, String> {
        let t0 = Instant::now();
        let qemu = loop {
            match connect_incoming(path) {
                Ok(s) => break s,
                Err(e) if t0.elapsed() > Duration::from_secs(5) => {
                    return Err(format!("destination QEMU's socket {}: {e}", path.display()));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        };
        // QEMU accepted the one connection it waits for; the name is not needed any more.
        let _ = std::fs::remove_file(path);
        // One monitor connection for the rest, subscribed before the stream can end, so that the
        // guest's `RESUME` is seen.
        let c = self.vms.manager.qmp(name).await.map_err(|e| e.to_string())?;
        let mut events = c.subscribe();
        mw.write_all(&MigrateMsg::Ready.encode()).await.map_err(|e| format!("answering Ready: {e}"))?;
        let (_qr, qw) = qemu.into_split();
        let (loaded_tx, mut loaded_rx) = tokio::sync::watch::channel(0u64);
        // `Loaded` after every write into QEMU (the latest count when the mesh lags behind),
        // until the stream has ended.
        let reports = async {
            while loaded_rx.changed().await.is_ok() {
                let bytes = *loaded_rx.borrow_and_update();
                if mw.write_all(&MigrateMsg::Loaded { bytes }.encode()).await.is_err() {
                    break;
                }
            }
        };
        let (got, ()) = tokio::join!(migrate_stream::receive(mr, qw, encoding, loaded_tx), reports);
        let got = got.map_err(|e| format!("the {} stream into the destination QEMU: {e}", encoding.name()))?;
        // The source closed its side: the stream is whole if QEMU loads it and runs.
        let resumed = ppn_vm::migrate::wait_resumed(&c, &mut events, name, DONE_TIMEOUT).await.map_err(|e| {
            format!("destination QEMU after {} bytes: {e}; its log: {}", got.stream_bytes, self.qemu_log_tail(name))
        })?;
        drop(c);
        self.vms.watch_agent(name);
        Ok(resumed)
    }

    fn qemu_log_tail(&self, name: &str) -> String {
        let Ok(p) = self.vms.manager.paths(name) else { return String::new() };
        let log = std::fs::read_to_string(p.qemu_log()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(3)..].join(" / ")
    }

    /// The memory the VM arrived with plugged is borrowed here from a peer; if none lends it,
    /// it is unplugged (plugged memory on a node is always what its lease book says).
    async fn cover_leases(&self, name: &str) {
        let plugged = match self.vms.manager.memory(name).await {
            Ok(m) => m.plugged_mib,
            Err(e) => {
                self.vms_event(format!("{name}: reading its plugged memory: {e}"));
                return;
            }
        };
        if plugged == 0 {
            return;
        }
        if let Err(e) = self.vms.cover_plugged(name, plugged).await {
            self.vms_event(format!("{name} arrived with {plugged} MiB plugged and no lease for it ({e}): unplugging"));
            if let Err(e) = self.vms.manager.resize_vmem_and_wait(name, 0, Duration::from_secs(60)).await {
                self.vms_event(format!("{name}: unplugging: {e}"));
            }
        }
    }
}

/// The control ops `vm-migrate`, `vm-migrate-status` and `vm-agent` (see `crate::control`).
pub async fn control(node: &crate::Node, op: &str, req: &serde_json::Value) -> Result<serde_json::Value, String> {
    let name = req["name"].as_str().ok_or("want \"name\": a VM name")?;
    let status = match op {
        "vm-evacuate-accept" => {
            let from = req["from"]
                .as_str()
                .and_then(crate::hints::parse_node_id)
                .ok_or("vm-evacuate-accept: want \"from\": the revoked node, 16 hex digits")?;
            let secs = req["secs"].as_u64().unwrap_or(EVACUATION_ORDER_SECS).clamp(1, 3600);
            node.migrations.order_evacuation(from, name, secs);
            // Back into the mesh at once, for this migration only (the peer sync keeps it).
            node.sync_soon();
            return Ok(
                serde_json::json!({ "ok": true, "order": { "from": from.to_string(), "name": name, "secs": secs } }),
            );
        }
        "vm-migrate" => {
            let to = req["to"]
                .as_str()
                .and_then(crate::hints::parse_node_id)
                .ok_or("vm-migrate: want \"to\": the destination node, 16 hex digits")?;
            let mut opts = MigrateOptions::default();
            if let Some(d) = req["downtime_ms"].as_u64() {
                opts.params.downtime_limit_ms = d;
            }
            if let Some(b) = req["max_bandwidth"].as_u64() {
                opts.params.max_bandwidth = b;
            }
            match req["encoding"].as_str() {
                None | Some("zstd") => {}
                Some("plain") => opts.encoding = StreamEncoding::Plain,
                Some(e) => return Err(format!("vm-migrate: encoding {e:?}: want \"zstd\" or \"plain\"")),
            }
            if let Some(t) = req["timeout_s"].as_u64() {
                opts.timeout = Duration::from_secs(t);
            }
            opts.evacuate = req["evacuate"] == true;
            node.migrations.start(name, to, opts).await.map_err(|e| e.to_string())?
        }
        "vm-agent" => {
            // The latest guest agent report of a VM here, with when it arrived (wall clock):
            // cheap (no QMP), for following a guest across a migration.
            let view = node.vms.agent(name).ok_or_else(|| format!("no guest agent report of {name} here"))?;
            let age = view.at.map(|t| t.elapsed()).unwrap_or_default();
            let at = SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH);
            let at_unix_us = at.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
            return Ok(serde_json::json!({ "ok": true, "agent": { "counter": view.counter,
                "mem_total_kib": view.mem_total_kib, "at_unix_us": at_unix_us } }));
        }
        _ => node.migrations.status(name).ok_or_else(|| format!("no migration of {name} from this node"))?,
    };
    Ok(serde_json::json!({ "ok": true, "migration": status }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qemu_gets_the_limit_less_the_tail_budget() {
        assert_eq!(qemu_downtime_limit(30), 30 - TAIL_BUDGET_MS);
        assert_eq!(qemu_downtime_limit(300), 300 - TAIL_BUDGET_MS);
        // Small limits keep a third for QEMU, and never 0 (QEMU would never switch over).
        assert_eq!(qemu_downtime_limit(12), 4);
        assert_eq!(qemu_downtime_limit(2), 1);
        assert_eq!(qemu_downtime_limit(0), 1);
        for l in 0..1000 {
            assert!(qemu_downtime_limit(l) <= l.max(1), "{l}");
        }
    }

    fn id(b: u8) -> NodeId {
        NodeId(ppn_wire::ByteArray([b; 8]))
    }

    fn claims(t: ResourceType, issuer: NodeId, grantee: NodeId, rid: u64) -> Option<TokenClaims> {
        Some(TokenClaims { resource_type: t, issuer, grantee, resource_id: rid, expires_unix_s: 1 })
    }

    #[test]
    fn vm_ids_bind_source_and_name() {
        assert_eq!(vm_id(id(1), "demo"), vm_id(id(1), "demo"));
        assert_ne!(vm_id(id(1), "demo"), vm_id(id(2), "demo"));
        assert_ne!(vm_id(id(1), "demo"), vm_id(id(1), "demo2"));
    }

    #[test]
    fn the_destination_checks_every_claim() {
        let (me, src, other) = (id(1), id(2), id(3));
        let rid = vm_id(src, "vm");
        assert_eq!(check_grant(Verdict::Valid, claims(ResourceType::Vm, src, me, rid), me, src, "vm"), Ok(()));
        for (verdict, c, what) in [
            (Verdict::GranteeRevoked, claims(ResourceType::Vm, src, me, rid), "GranteeRevoked"),
            (Verdict::BadEndorsement, claims(ResourceType::Vm, src, me, rid), "BadEndorsement"),
            (Verdict::Valid, None, "layout"),
            (Verdict::Valid, claims(ResourceType::Memory, src, me, rid), "Memory"),
            (Verdict::Valid, claims(ResourceType::Vm, other, me, rid), "issued by"),
            (Verdict::Valid, claims(ResourceType::Vm, src, other, rid), "grantee"),
            (Verdict::Valid, claims(ResourceType::Vm, src, me, vm_id(src, "other")), "VM id"),
        ] {
            let e = check_grant(verdict, c, me, src, "vm").unwrap_err();
            assert!(e.contains(what), "{e} (want {what})");
        }
    }
}
