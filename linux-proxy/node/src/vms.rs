//! The node's VM plane: its QEMU guests (`ppn-vm`), the memory it borrows for them from other
//! nodes, and the lease service through which it lends its own pool.
//!
//! Borrowing (`vm-grow`): pick a lender from the adverts (best fit among peers that are up, or
//! the operator's choice), ask its proxy on mesh port [`LEASE_PORT`] for a lease, have this
//! node's TCB check the lender's endorsement of the lease token (and check that the token
//! names this node, memory, that lease), then plug the memory into the VM with virtio-mem and
//! wait until the guest's MemTotal shows it. The lease book (`DIR/leases.json`) records what is
//! plugged for which lease. A watcher asks the TCB about every lease each second and at every
//! ledger change: when one is no longer valid (expired, revoked), the VM gives the memory back
//! (unplug), and then the lender is told to release it.
//!
//! Lending: the lease service answers a peer's request with its TCB (reserve, commit,
//! endorse). The borrower is the mesh peer that asked, never a field of the request.
//!
//! In this step the borrower's host backs the memory it plugs; the lender's pool shrinks by
//! the same amount (docs/lending.md).

use crate::lease_wire::{LEASE_PORT, LeaseMsg, read_msg};
use crate::transport::{ip_of, node_of};
use ppn_gossip::Gossip;
use ppn_mesh::Mesh;
use ppn_tcb_client::TcbClient;
use ppn_vm::agent::AgentStream;
use ppn_vm::{VmManager, VmSpec};
use ppn_wire::NodeId;
use ppn_wire::service::{ResourceType, Verdict};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::io::AsyncWriteExt;

use crate::transport::MeshTransport;

/// Name of the lease book in the node directory.
pub const LEASE_BOOK: &str = "leases.json";
/// Name of the VM state directory in the node directory.
pub const VM_DIR: &str = "vms";
/// Default lease length.
pub const DEFAULT_LEASE_SECS: u64 = 3600;
/// Longest lease a lender grants; a request for longer gets this.
pub const MAX_LEASE_SECS: u64 = 7 * 24 * 3600;
/// How long a lease request may take end to end on the lender's side.
const LEASE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plug or an unplug may take.
const PLUG_TIMEOUT: Duration = Duration::from_secs(60);

/// A lease this node borrows, and where its memory went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BorrowedLease {
    pub lease_id: u64,
    /// The lending node (16 hex digits).
    pub lender: String,
    pub vm: String,
    pub mib: u64,
    pub expires_unix_s: u64,
    /// The token and the lender's endorsement, hex.
    pub token: String,
    pub endorsement: String,
    /// Plugged into the VM (false while the unplug of an ended lease is pending).
    pub plugged: bool,
}

/// The latest report of a VM's guest agent.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct AgentView {
    pub counter: u64,
    pub mem_total_kib: u64,
    pub mem_available_kib: u64,
    /// Milliseconds since the report arrived.
    #[serde(skip)]
    pub at: Option<Instant>,
}

/// The VM plane of a node.
/// Why a VM runs where it runs, and whether the operator pinned it there. Kept next to the VM
/// (`placement.json`), so `ppn vm list` can say it and the scheduler never moves a pinned VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Placement {
    pub pinned: bool,
    pub reason: Why,
    /// When it was recorded.
    pub at_unix_s: u64,
}

/// How a VM came to run on its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// The operator put it there (`--pin`, `ppn vm pin`).
    Pinned,
    /// The scheduler's best fit.
    Placed,
    /// The operator named the node (`ppn vm create --node`) without pinning it.
    Chosen,
    /// Moved here by `ppn vm migrate`.
    Migrated,
    /// Moved here by `ppn rebalance`.
    Rebalanced,
    /// Moved here when its node was revoked.
    Evacuated,
}

pub struct VmPlane {
    me: NodeId,
    pub manager: VmManager,
    tcb: Arc<TcbClient>,
    mesh: Mesh,
    gossip: Arc<Gossip<MeshTransport>>,
    book_path: PathBuf,
    book: tokio::sync::Mutex<Vec<BorrowedLease>>,
    /// Lender side: lease id -> borrower, for the leases granted since this proxy started.
    lent: Mutex<BTreeMap<u64, NodeId>>,
    agents: Arc<Mutex<BTreeMap<String, AgentView>>>,
    events: Mutex<Vec<String>>,
}

impl std::fmt::Debug for VmPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmPlane").field("me", &self.me).finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// The claims of a token, from its public layout (docs/ledger.md §2). The proxy reads them
/// only after its TCB has said the token is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenClaims {
    pub resource_type: ResourceType,
    pub issuer: NodeId,
    pub grantee: NodeId,
    pub resource_id: u64,
    pub expires_unix_s: u64,
}

pub fn token_claims(token: &[u8]) -> Option<TokenClaims> {
    if token.len() != 60 || &token[..3] != b"PT\x01" {
        return None;
    }
    let id = |at: usize| NodeId(ppn_wire::ByteArray(token[at..at + 8].try_into().expect("8 bytes")));
    let u64_at = |at: usize| u64::from_le_bytes(token[at..at + 8].try_into().expect("8 bytes"));
    Some(TokenClaims {
        resource_type: ResourceType::from(token[3]),
        issuer: id(4),
        grantee: id(12),
        resource_id: u64_at(20),
        expires_unix_s: u64_at(28),
    })
}

/// What a grow did, with its timings.
#[derive(Debug, Clone, Serialize)]
pub struct Grown {
    pub lease_id: u64,
    pub lender: String,
    pub mib: u64,
    pub plugged_total_mib: u64,
    pub mem_total_kib: u64,
    /// Request to lease granted (the lender's TCB reserved, committed, endorsed).
    pub lease_ms: f64,
    /// This node's TCB checking the endorsement.
    pub verify_ms: f64,
    /// `requested-size` to the device's `size`.
    pub plug_ms: f64,
    /// Request until the guest's MemTotal shows the memory.
    pub total_ms: f64,
}

impl VmPlane {
    pub fn open(
        dir: &Path,
        me: NodeId,
        tcb: Arc<TcbClient>,
        mesh: Mesh,
        gossip: Arc<Gossip<MeshTransport>>,
    ) -> Result<Arc<Self>, String> {
        let manager = VmManager::open(dir.join(VM_DIR)).map_err(|e| e.to_string())?;
        let book_path = dir.join(LEASE_BOOK);
        let book = match std::fs::read(&book_path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", book_path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(format!("{}: {e}", book_path.display())),
        };
        let plane = Arc::new(Self {
            me,
            manager,
            tcb,
            mesh,
            gossip,
            book_path,
            book: tokio::sync::Mutex::new(book),
            lent: Mutex::default(),
            agents: Arc::default(),
            events: Mutex::default(),
        });
        if let Ok(names) = plane.manager.names() {
            for name in names {
                plane.watch_agent(&name);
            }
        }
        Ok(plane)
    }

    fn event(&self, what: String) {
        eprintln!("ppn-node: {what}");
        let mut e = lock(&self.events);
        e.push(what);
        let n = e.len();
        if n > 64 {
            e.drain(..n - 64);
        }
    }

    /// Starts the lease service and the lease watcher.
    pub async fn spawn(self: &Arc<Self>, ledger_changed: Arc<tokio::sync::Notify>) -> Result<(), String> {
        let mut listener = self.mesh.listen(LEASE_PORT).await.map_err(|e| e.to_string())?;
        let plane = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok(stream) = listener.accept().await {
                let plane = Arc::clone(&plane);
                tokio::spawn(async move { plane.serve_lease(stream).await });
            }
        });
        let plane = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = ledger_changed.notified() => {}
                }
                plane.check_leases().await;
            }
        });
        Ok(())
    }

    /// Keeps the latest guest agent report of `name` (reconnecting while the VM exists).
    pub(crate) fn watch_agent(&self, name: &str) {
        let Ok(paths) = self.manager.paths(name) else { return };
        let agents = Arc::clone(&self.agents);
        let name = name.to_owned();
        let root = self.manager.state_dir().to_path_buf();
        tokio::spawn(async move {
            loop {
                if !root.join(&name).exists() {
                    lock(&agents).remove(&name);
                    return;
                }
                let Ok(mut stream) = AgentStream::connect(&paths.agent(), Duration::from_secs(2)).await else {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                };
                while let Ok(r) = stream.next_report(Duration::from_secs(5)).await {
                    let view = AgentView {
                        counter: r.report.counter,
                        mem_total_kib: r.report.mem_total_kib,
                        mem_available_kib: r.report.mem_available_kib,
                        at: Some(r.at),
                    };
                    lock(&agents).insert(name.clone(), view);
                }
            }
        });
    }

    pub fn agent(&self, name: &str) -> Option<AgentView> {
        lock(&self.agents).get(name).copied()
    }

    /// Waits until the guest's MemTotal is at least `kib`.
    async fn wait_mem_total(&self, name: &str, kib: u64, timeout: Duration) -> Result<AgentView, String> {
        let t0 = Instant::now();
        loop {
            if let Some(v) = self.agent(name)
                && v.mem_total_kib >= kib
            {
                return Ok(v);
            }
            if t0.elapsed() > timeout {
                let now = self.agent(name).map(|v| v.mem_total_kib);
                return Err(format!("{name}: MemTotal {now:?} KiB did not reach {kib} KiB in {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn create(&self, spec: &VmSpec) -> Result<(), String> {
        self.manager.create(spec).map_err(|e| e.to_string())?;
        Ok(())
    }

    pub async fn start(&self, name: &str) -> Result<serde_json::Value, String> {
        let s = self.manager.start(name).await.map_err(|e| e.to_string())?;
        // Plugged memory is what the leases of this VM say (a restarted VM starts with none).
        let mib: u64 = self.book.lock().await.iter().filter(|l| l.vm == name && l.plugged).map(|l| l.mib).sum();
        if mib > 0 {
            self.manager.resize_vmem(name, mib).await.map_err(|e| e.to_string())?;
        }
        self.watch_agent(name);
        Ok(serde_json::json!({ "pid": s.pid, "boot_to_qmp_ms": s.boot_to_qmp.as_secs_f64() * 1e3,
            "cgroup": s.cgroup.map(|a| format!("{a:?}")).unwrap_or_else(|e| e) }))
    }

    pub async fn stop(&self, name: &str) -> Result<String, String> {
        let o = self.manager.stop(name, Duration::from_secs(2)).await.map_err(|e| e.to_string())?;
        Ok(format!("{o:?}"))
    }

    /// Destroys the VM and ends its leases (the lenders are told at once).
    pub async fn destroy(&self, name: &str) -> Result<String, String> {
        let o = self.manager.destroy(name).await.map_err(|e| e.to_string())?;
        let ended: Vec<BorrowedLease> = {
            let mut book = self.book.lock().await;
            let (gone, keep): (Vec<_>, Vec<_>) = book.drain(..).partition(|l| l.vm == name);
            *book = keep;
            self.save(&book)?;
            gone
        };
        for l in ended {
            self.release_at_lender(&l).await;
        }
        Ok(format!("{o:?}"))
    }

    /// Where a VM's placement is kept: `placement.json` in its directory.
    fn placement_path(&self, name: &str) -> Result<PathBuf, String> {
        Ok(self.manager.paths(name).map_err(|e| e.to_string())?.dir.join("placement.json"))
    }

    /// Why VM `name` runs here (docs/scheduler.md, "Placement records"); `None` when nothing
    /// was recorded (a VM defined before placements were kept).
    pub fn placement(&self, name: &str) -> Option<Placement> {
        let bytes = std::fs::read(self.placement_path(name).ok()?).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Records why VM `name` runs here (crash-safe: a temporary file, fsync, rename).
    pub fn set_placement(&self, name: &str, p: &Placement) -> Result<(), String> {
        self.manager.spec(name).map_err(|e| e.to_string())?;
        let bytes = serde_json::to_vec_pretty(p).map_err(|e| e.to_string())?;
        ppn_vm::manager::write_atomic(&self.placement_path(name)?, &bytes).map_err(|e| e.to_string())
    }

    /// Pins VM `name` to this node, or unpins it; returns the new placement.
    pub fn pin(&self, name: &str, pinned: bool) -> Result<Placement, String> {
        let mut p = self.placement(name).unwrap_or(Placement { pinned: false, reason: Why::Placed, at_unix_s: 0 });
        p.pinned = pinned;
        if pinned {
            p.reason = Why::Pinned;
        } else if p.reason == Why::Pinned {
            // Unpinned, it stays where the operator put it.
            p.reason = Why::Chosen;
        }
        p.at_unix_s = now_unix_s();
        self.set_placement(name, &p)?;
        Ok(p)
    }

    /// Memory VM `name` holds on this host, MiB: its boot memory and what is plugged (or asked
    /// for) when it runs, its boot memory when it does not.
    fn held_mib(v: &ppn_vm::manager::VmInfo) -> u64 {
        let plugged = v.memory.as_ref().map_or(0, |m| m.plugged_mib.max(m.requested_mib));
        v.spec.base_mib + plugged
    }

    pub async fn list(&self) -> Result<serde_json::Value, String> {
        let vms = self.manager.list().await.map_err(|e| e.to_string())?;
        let book = self.book.lock().await.clone();
        let out: Vec<serde_json::Value> = vms
            .iter()
            .map(|v| {
                let leases: Vec<&BorrowedLease> = book.iter().filter(|l| l.vm == v.name).collect();
                serde_json::json!({
                    "name": v.name, "state": v.state.label(), "memory": v.memory, "cgroup": v.cgroup,
                    "vcpus": v.spec.vcpus, "agent": self.agent(&v.name), "held_mib": Self::held_mib(v),
                    "placement": self.placement(&v.name),
                    "borrowed_mib": leases.iter().filter(|l| l.plugged).map(|l| l.mib).sum::<u64>(),
                    "leases": leases.iter().map(|l| l.lease_id).collect::<Vec<_>>(),
                })
            })
            .collect();
        Ok(serde_json::Value::Array(out))
    }

    fn save(&self, book: &[BorrowedLease]) -> Result<(), String> {
        let bytes = serde_json::to_vec_pretty(book).map_err(|e| e.to_string())?;
        ppn_vm::manager::write_atomic(&self.book_path, &bytes).map_err(|e| e.to_string())
    }

    /// The lender for `blocks`: the peer that is up with the fewest free pool blocks that still
    /// hold them (best fit), by its last advert.
    pub fn choose_lender(&self, blocks: u32) -> Result<NodeId, String> {
        let peers = self.gossip.peers();
        let mut fits: Vec<(u32, NodeId)> = peers
            .iter()
            .filter(|(id, v)| **id != self.me && v.up)
            .filter_map(|(id, v)| v.advert.filter(|a| a.free_blocks >= blocks).map(|a| (a.free_blocks, *id)))
            .collect();
        fits.sort();
        fits.first().map(|(_, id)| *id).ok_or_else(|| {
            let offers: Vec<String> = peers
                .iter()
                .filter(|(id, _)| **id != self.me)
                .map(|(id, v)| format!("{id}: {} free, up {}", v.advert.map_or(0, |a| a.free_blocks), v.up))
                .collect();
            format!("no peer that is up lends {blocks} blocks of 2 MiB (adverts: {})", offers.join("; "))
        })
    }

    /// Asks `lender`'s proxy for a lease.
    async fn ask(&self, lender: NodeId, msg: &LeaseMsg) -> Result<LeaseMsg, String> {
        let io = |e: std::io::Error| format!("lease service of {lender}: {e}");
        let talk = async {
            let mut s = self.mesh.connect(ip_of(lender), LEASE_PORT).await.map_err(|e| format!("{lender}: {e}"))?;
            s.write_all(&msg.encode()).await.map_err(io)?;
            s.flush().await.map_err(io)?;
            read_msg(&mut s).await.map_err(io)?.map_err(|e| format!("{lender} answered: {e}"))
        };
        tokio::time::timeout(LEASE_TIMEOUT, talk)
            .await
            .map_err(|_| format!("lease service of {lender}: no answer in {LEASE_TIMEOUT:?}"))?
    }

    /// Asks `lender` for a lease of `mib` MiB for `vm` until `expires_unix_s`, and has this
    /// node's TCB check it: the endorsement `Valid`, the claims Memory, issuer `lender`, grantee
    /// this node, the lease id and the expiry asked. A lease that does not check is released at
    /// the lender. Returns the book record, and the ms from `t0` to the grant and of the check.
    async fn borrow(
        &self,
        lender: NodeId,
        vm: &str,
        mib: u64,
        expires_unix_s: u64,
        t0: Instant,
    ) -> Result<(BorrowedLease, f64, f64), String> {
        let blocks = u32::try_from(mib / 2).map_err(|_| format!("{mib} MiB is too much to lend at once"))?;
        let (lease_id, token, endorsement) =
            match self.ask(lender, &LeaseMsg::Request { blocks, expires_unix_s }).await? {
                LeaseMsg::Granted { lease_id, token, endorsement } => (lease_id, token, endorsement),
                LeaseMsg::Refused { reason } => return Err(format!("{lender} refused the lease: {reason}")),
                other => return Err(format!("{lender} answered a lease request with {other:?}")),
            };
        let lease_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let verdict = self.tcb.verify_endorsed(&token, &ppn_wire::ByteArray(endorsement)).await;
        let verify_ms = t1.elapsed().as_secs_f64() * 1e3;
        let record = BorrowedLease {
            lease_id,
            lender: lender.to_string(),
            vm: vm.to_owned(),
            mib,
            expires_unix_s,
            token: hex(&token),
            endorsement: hex(&endorsement),
            plugged: true,
        };
        let claims = token_claims(&token);
        let want = TokenClaims {
            resource_type: ResourceType::Memory,
            issuer: lender,
            grantee: self.me,
            resource_id: lease_id,
            expires_unix_s,
        };
        match verdict {
            Ok(Verdict::Valid) if claims == Some(want) => Ok((record, lease_ms, verify_ms)),
            verdict => {
                self.release_at_lender(&record).await;
                Err(format!(
                    "the lease from {lender} does not check: TCB verdict {verdict:?}, claims {claims:?} (want {want:?})"
                ))
            }
        }
    }

    /// Grows `vm` by `mib` MiB of memory lent by `from` (or the best-fit lender).
    pub async fn grow(&self, vm: &str, mib: u64, from: Option<NodeId>, lease_secs: u64) -> Result<Grown, String> {
        let t0 = Instant::now();
        if mib == 0 || !mib.is_multiple_of(2) {
            return Err(format!("--mib {mib}: memory is lent in blocks of 2 MiB; give a positive even number"));
        }
        let spec = self.manager.spec(vm).map_err(|e| e.to_string())?;
        let blocks = u32::try_from(mib / 2).map_err(|_| format!("{mib} MiB is too much to lend at once"))?;
        let mut book = self.book.lock().await;
        let plugged: u64 = book.iter().filter(|l| l.vm == vm).map(|l| l.mib).sum();
        if plugged + mib > spec.vmem_max_mib {
            return Err(format!(
                "{vm} has {plugged} MiB plugged of its virtio-mem maximum {}; {mib} more do not fit",
                spec.vmem_max_mib
            ));
        }
        let before =
            self.agent(vm).map(|v| v.mem_total_kib).ok_or_else(|| format!("{vm}: no guest agent report yet"))?;
        let lender = match from {
            Some(n) => n,
            None => self.choose_lender(blocks)?,
        };
        let expires = now_unix_s() + lease_secs.clamp(10, MAX_LEASE_SECS);
        let (record, lease_ms, verify_ms) = self.borrow(lender, vm, mib, expires, t0).await?;
        let lease_id = record.lease_id;
        // Recorded before the plug: a crash after the plug must not forget the lease.
        book.push(record.clone());
        self.save(&book)?;
        let total = plugged + mib;
        let plug = self.manager.resize_vmem_and_wait(vm, total, PLUG_TIMEOUT).await;
        let plug_ms = match plug {
            Ok(d) => d.as_secs_f64() * 1e3,
            Err(e) => {
                book.retain(|l| !same(l, &record));
                self.save(&book)?;
                let _ = self.manager.resize_vmem(vm, plugged).await;
                self.release_at_lender(&record).await;
                return Err(format!("plugging {mib} MiB into {vm}: {e}"));
            }
        };
        drop(book);
        let view = self.wait_mem_total(vm, before + mib * 1024, PLUG_TIMEOUT).await?;
        self.event(format!("{vm} grew by {mib} MiB lent by {lender} (lease {lease_id})"));
        Ok(Grown {
            lease_id,
            lender: lender.to_string(),
            mib,
            plugged_total_mib: total,
            mem_total_kib: view.mem_total_kib,
            lease_ms,
            verify_ms,
            plug_ms,
            total_ms: t0.elapsed().as_secs_f64() * 1e3,
        })
    }

    /// Ends a borrowed lease now (the operator gives the memory back early).
    pub async fn give_back(&self, lease_id: u64) -> Result<String, String> {
        let l = self.book.lock().await.iter().find(|l| l.lease_id == lease_id).cloned();
        let l = l.ok_or_else(|| format!("no borrowed lease {lease_id}"))?;
        self.end_lease(&l, "given back").await
    }

    /// Unplugs a lease's memory from its VM, drops it from the book, tells the lender.
    async fn end_lease(&self, l: &BorrowedLease, why: &str) -> Result<String, String> {
        let mut book = self.book.lock().await;
        let remaining: u64 = book.iter().filter(|x| x.vm == l.vm && x.plugged && !same(x, l)).map(|x| x.mib).sum();
        let live = matches!(self.manager.state(&l.vm).await, Ok(ppn_vm::VmState::Live { .. }));
        if live {
            if let Some(x) = book.iter_mut().find(|x| same(x, l)) {
                x.plugged = false;
            }
            self.save(&book)?;
            self.manager.resize_vmem_and_wait(&l.vm, remaining, PLUG_TIMEOUT).await.map_err(|e| {
                format!("unplugging lease {} from {}: {e} (retried at the next check)", l.lease_id, l.vm)
            })?;
        }
        book.retain(|x| !same(x, l));
        self.save(&book)?;
        drop(book);
        self.release_at_lender(l).await;
        let what = format!("lease {} of {} MiB from {} for {} ended ({why})", l.lease_id, l.mib, l.lender, l.vm);
        self.event(what.clone());
        Ok(what)
    }

    async fn release_at_lender(&self, l: &BorrowedLease) {
        let Ok(lender) = l.lender.parse::<NodeId>() else { return };
        match self.ask(lender, &LeaseMsg::Release { lease_id: l.lease_id }).await {
            Ok(LeaseMsg::Released { .. }) => {}
            Ok(other) => self.event(format!("{lender} on releasing lease {}: {other:?}", l.lease_id)),
            // The lender's TCB ends the lease at its expiry anyway.
            Err(e) => self.event(format!("releasing lease {} at {lender}: {e}", l.lease_id)),
        }
    }

    /// Ends every borrowed lease this node's TCB no longer finds valid.
    pub async fn check_leases(&self) {
        let book = self.book.lock().await.clone();
        for l in book {
            let (Some(token), Some(sig)) = (unhex(&l.token), unhex(&l.endorsement)) else { continue };
            let Ok(sig) = <[u8; 64]>::try_from(sig) else { continue };
            let verdict = match self.tcb.verify_endorsed(&token, &ppn_wire::ByteArray(sig)).await {
                Ok(v) => v,
                Err(_) => continue,
            };
            if verdict != Verdict::Valid || !l.plugged {
                let why = if l.plugged { format!("{verdict:?}") } else { "unplug pending".into() };
                if let Err(e) = self.end_lease(&l, &why).await {
                    self.event(e);
                }
            }
        }
    }

    /// The lease book and this node's pool.
    pub async fn leases(&self) -> serde_json::Value {
        let book = self.book.lock().await.clone();
        let pool = self.tcb.pool_status().await.ok();
        let lent: Vec<serde_json::Value> = lock(&self.lent)
            .iter()
            .map(|(id, b)| serde_json::json!({ "lease_id": id, "borrower": b.to_string() }))
            .collect();
        serde_json::json!({
            "borrowed": book,
            "pool": pool.map(|p| serde_json::json!({ "block_mib": p.block_bytes / (1024 * 1024), "total": p.total,
                "free": p.free, "reserved": p.reserved, "lent": p.lent, "other": p.in_use })),
            "lent": lent,
            "events": lock(&self.events).clone(),
        })
    }

    /// One lease-service stream: one request, one answer.
    async fn serve_lease(&self, mut s: ppn_mesh::MeshStream) {
        let Some(peer) = node_of(s.peer_addr().ip()) else { return };
        let answer = match tokio::time::timeout(LEASE_TIMEOUT, read_msg(&mut s)).await {
            Ok(Ok(Ok(msg))) => self.answer_lease(peer, msg).await,
            Ok(Ok(Err(e))) => LeaseMsg::Refused { reason: e.to_string() },
            _ => return,
        };
        let _ = s.write_all(&answer.encode()).await;
        let _ = s.flush().await;
    }

    async fn answer_lease(&self, peer: NodeId, msg: LeaseMsg) -> LeaseMsg {
        let refuse = |reason: String| LeaseMsg::Refused { reason };
        match msg {
            LeaseMsg::Request { blocks, expires_unix_s } => {
                let expires = expires_unix_s.min(now_unix_s() + MAX_LEASE_SECS);
                let r = match self.tcb.reserve(peer, blocks, expires).await {
                    Ok(r) => r,
                    Err(e) => return refuse(e.to_string()),
                };
                let lease = match self.tcb.commit_lease(r.reservation_id).await {
                    Ok(l) => l,
                    Err(e) => return refuse(e.to_string()),
                };
                let endorsement = match self.tcb.endorse(&lease.token).await {
                    Ok(s) => s,
                    Err(e) => {
                        let _ = self.tcb.release(lease.lease_id).await;
                        return refuse(e.to_string());
                    }
                };
                lock(&self.lent).insert(lease.lease_id, peer);
                self.event(format!("lent {} MiB to {peer} (lease {})", u64::from(blocks) * 2, lease.lease_id));
                LeaseMsg::Granted { lease_id: lease.lease_id, token: lease.token.to_vec(), endorsement: endorsement.0 }
            }
            LeaseMsg::Release { lease_id } => {
                if lock(&self.lent).get(&lease_id) != Some(&peer) {
                    return refuse(format!("lease {lease_id} was not lent to {peer} by this node"));
                }
                let answer = self.tcb.release(lease_id).await;
                // Released now, or already ended by the TCB (expiry, revocation): gone either way.
                lock(&self.lent).remove(&lease_id);
                match answer {
                    Ok(r) => {
                        self.event(format!(
                            "{peer} returned lease {lease_id}: {} blocks, scrubbed {}",
                            r.blocks, r.scrubbed
                        ));
                        LeaseMsg::Released { blocks: r.blocks, scrubbed: r.scrubbed }
                    }
                    Err(e) => refuse(e.to_string()),
                }
            }
            other => refuse(format!("{other:?} is not a request")),
        }
    }
}

impl VmPlane {
    /// Migration hook (`crate::migration`): `vm` arrived with `mib` MiB plugged that this node
    /// holds no lease for; borrow that much from a peer (best fit) and book it as plugged.
    /// On an error nothing is booked and the caller unplugs the memory.
    pub(crate) async fn cover_plugged(&self, vm: &str, mib: u64) -> Result<u64, String> {
        let blocks = u32::try_from(mib / 2).map_err(|_| format!("{mib} MiB is too much to lend at once"))?;
        let lender = self.choose_lender(blocks)?;
        let (record, _, _) = self.borrow(lender, vm, mib, now_unix_s() + DEFAULT_LEASE_SECS, Instant::now()).await?;
        let lease_id = record.lease_id;
        let mut book = self.book.lock().await;
        book.push(record);
        self.save(&book)?;
        self.event(format!("{vm} arrived with {mib} MiB plugged: now lent by {lender} (lease {lease_id})"));
        Ok(lease_id)
    }
}

fn same(a: &BorrowedLease, b: &BorrowedLease) -> bool {
    a.lease_id == b.lease_id && a.lender == b.lender
}
