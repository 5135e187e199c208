//! VM lifecycle over QEMU: one directory per VM under a state directory.
//!
//! ```text
//! STATE_DIR/<vm>/spec.json    the VmSpec (written crash-safely)
//!               qmp.sock      QMP server socket
//!               agent.sock    guest agent port (virtio-serial)
//!               serial.log    the guest's serial console
//!               qemu.pid      QEMU's pidfile (-daemonize -pidfile)
//!               qemu.log      QEMU's stderr while it starts
//! ```
//!
//! QEMU runs with `-daemonize`, so VMs keep running when the managing process exits; a new
//! [`VmManager::open`] on the same directory re-attaches: a VM is live when its pidfile names a
//! process that exists, is not a zombie and whose command line carries this VM's QMP socket
//! path (so a reused pid is not mistaken for the VM). Every operation opens its own QMP
//! connection and closes it when done; nothing needs to be re-established after a restart.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use qapi::qmp;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::cgroup::{self, CgroupConfig, CgroupSupport, VmCgroup};
use crate::qmp::{QmpClient, QmpError};
use crate::spec::{self, Accel, LaunchMode, SpecError, VMEM_BLOCK_MIB, VMEM_DEVICE_ID, VmPaths, VmSpec, build_argv};

const MIB: u64 = 1024 * 1024;

/// Manager errors; each names the VM (and file or command) concerned.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    #[error(transparent)]
    Spec(#[from] SpecError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: spec.json unreadable: {source}")]
    BadSpec {
        name: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("no VM named {0}")]
    NotFound(String),
    #[error("VM {0} already exists")]
    AlreadyExists(String),
    #[error("VM {name} is already running (pid {pid})")]
    AlreadyRunning { name: String, pid: u32 },
    #[error("VM {0} is not running")]
    NotRunning(String),
    #[error("VM {name}: cannot run {program}: {source}")]
    Spawn {
        name: String,
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("VM {name}: QEMU failed to start ({status}): {log}")]
    LaunchFailed { name: String, status: String, log: String },
    #[error("VM {name}: {what} within {after:?}")]
    StartTimeout { name: String, what: String, after: Duration },
    #[error("VM {name}: {source}")]
    Qmp {
        name: String,
        #[source]
        source: QmpError,
    },
    #[error("VM {name}: virtio-mem size {mib} MiB is not a multiple of the {VMEM_BLOCK_MIB} MiB block size")]
    NotBlockMultiple { name: String, mib: u64 },
    #[error("VM {name}: virtio-mem size {mib} MiB exceeds the device's maximum of {max} MiB")]
    AboveMax { name: String, mib: u64, max: u64 },
    #[error("VM {name}: balloon target {mib} MiB must be 1..={max} MiB (base + plugged)")]
    BalloonTarget { name: String, mib: u64, max: u64 },
    #[error("VM {name}: virtio-mem size stayed at {size_mib} MiB, wanted {want_mib} MiB, after {after:?}")]
    VmemTimeout { name: String, size_mib: u64, want_mib: u64, after: Duration },
    #[error("VM {name} is busy: another start/stop/destroy holds {lock} (waited {after:?})")]
    Busy { name: String, lock: PathBuf, after: Duration },
    #[error("VM {name}: process {pid} still alive after quit and SIGKILL")]
    Unkillable { name: String, pid: u32 },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ManagerError + '_ {
    move |source| ManagerError::Io { path: path.to_path_buf(), source }
}

/// Lifecycle state as seen from outside.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VmState {
    /// No QEMU process and no pidfile: created or cleanly stopped.
    Stopped,
    /// A pidfile names a process that is gone (or a pid now used by another program).
    Dead { pid: u32, why: String },
    /// QEMU is live and answered `query-status` with this run state (`running`, `paused`,
    /// `inmigrate`, `postmigrate`, `shutdown`, ...).
    Live { pid: u32, status: String },
    /// QEMU is live but QMP did not answer (e.g. another client holds the monitor).
    Unresponsive { pid: u32, error: String },
}

impl VmState {
    /// `running`, `paused`, `stopped`, `dead`, `unresponsive`, ...
    pub fn label(&self) -> String {
        match self {
            VmState::Stopped => "stopped".into(),
            VmState::Dead { .. } => "dead".into(),
            VmState::Live { status, .. } => status.clone(),
            VmState::Unresponsive { .. } => "unresponsive".into(),
        }
    }

    /// The QEMU pid when the process is live.
    pub fn pid(&self) -> Option<u32> {
        match self {
            VmState::Live { pid, .. } | VmState::Unresponsive { pid, .. } => Some(*pid),
            _ => None,
        }
    }
}

/// Memory of a live VM, MiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryInfo {
    pub base_mib: u64,
    /// virtio-mem `size`: what the guest driver has plugged.
    pub plugged_mib: u64,
    /// virtio-mem `requested-size`.
    pub requested_mib: u64,
    /// virtio-mem maximum (the spec's `vmem_max_mib`).
    pub vmem_max_mib: u64,
    /// `query-balloon` `actual` (guest memory as the balloon sees it); `None` when the balloon
    /// is not active yet (no guest driver).
    pub balloon_actual_mib: Option<u64>,
}

/// One VM as listed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmInfo {
    pub name: String,
    pub state: VmState,
    pub spec: VmSpec,
    pub memory: Option<MemoryInfo>,
    /// `v2 (...)`, `v1 (...)`, `unavailable: reason`, or where the VM's QEMU actually is.
    pub cgroup: String,
}

/// What a stop had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StopOutcome {
    /// Nothing was running.
    AlreadyStopped,
    /// The guest powered off after `system_powerdown`.
    PoweredDown,
    /// `quit` ended QEMU after the powerdown timeout.
    Quit,
    /// QMP was not reachable; SIGTERM ended QEMU.
    Terminated,
    /// Neither QMP nor SIGTERM ended QEMU; SIGKILL.
    Killed,
}

/// Outcome of a start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    pub pid: u32,
    /// From spawning QEMU to a negotiated QMP connection.
    pub boot_to_qmp: Duration,
    /// Cgroup placement (`Err` text when cgroups are unavailable or the write failed).
    pub cgroup: Result<cgroup::Applied, String>,
}

/// Liveness of the process a pidfile names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PidStatus {
    NoPidfile,
    Stale { pid: u32, why: String },
    Live(u32),
}

/// Check a VM's pidfile: the process must exist, not be a zombie, and carry this VM's QMP
/// socket path on its command line.
pub fn pid_status(paths: &VmPaths) -> PidStatus {
    let text = match std::fs::read_to_string(paths.pidfile()) {
        Ok(t) => t,
        Err(_) => return PidStatus::NoPidfile,
    };
    let Ok(pid) = text.trim().parse::<u32>() else {
        return PidStatus::Stale { pid: 0, why: format!("pidfile holds {:?}, not a pid", text.trim()) };
    };
    process_is_vm(pid, &paths.qmp())
}

/// Whether `pid` is a live QEMU whose command line contains `qmp_socket`.
pub fn process_is_vm(pid: u32, qmp_socket: &Path) -> PidStatus {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    let stat = match std::fs::read_to_string(proc_dir.join("stat")) {
        Ok(s) => s,
        Err(_) => return PidStatus::Stale { pid, why: "no such process".into() },
    };
    // The state follows the parenthesised command name, which may itself contain ") ".
    let state = stat.rfind(')').and_then(|i| stat[i + 1..].split_whitespace().next()).unwrap_or("?");
    if state == "Z" || state == "X" {
        return PidStatus::Stale { pid, why: format!("process is a zombie (state {state})") };
    }
    let cmdline = std::fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    // Exactly our `-qmp` argument: a substring test would let `/x/s/vm/qmp.sock` pass for
    // `/s/vm/qmp.sock`.
    let needle = format!("unix:{},", qmp_socket.to_string_lossy());
    let ours = cmdline.split(|b| *b == 0).any(|arg| arg.starts_with(needle.as_bytes()));
    if ours {
        PidStatus::Live(pid)
    } else {
        let prog =
            cmdline.split(|b| *b == 0).next().map(|a| String::from_utf8_lossy(a).into_owned()).unwrap_or_default();
        PidStatus::Stale { pid, why: format!("pid now belongs to another program ({prog:?})") }
    }
}

/// Write a file crash-safely: temp file, fsync, rename, fsync the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ManagerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp =
        dir.join(format!(".{}.tmp", path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    Ok(())
}

/// Options of a manager.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// `None`: `PPN_VM_ACCEL` (`kvm`/`tcg`) if set, else [`Accel::detect`].
    pub accel: Option<Accel>,
    pub cgroup: CgroupConfig,
    /// Timeout of each QMP connect and command.
    pub qmp_timeout: Duration,
    /// How long `start` waits for QEMU to daemonize and answer QMP.
    pub start_timeout: Duration,
}

impl Default for ManagerOptions {
    fn default() -> Self {
        Self {
            accel: None,
            cgroup: CgroupConfig::default(),
            qmp_timeout: Duration::from_secs(5),
            start_timeout: Duration::from_secs(30),
        }
    }
}

/// The VMs of one state directory.
#[derive(Debug)]
pub struct VmManager {
    root: PathBuf,
    accel: Accel,
    cgroups: CgroupSupport,
    options: ManagerOptions,
}

impl VmManager {
    /// Open (creating if needed) a state directory with default options.
    pub fn open(state_dir: impl Into<PathBuf>) -> Result<Self, ManagerError> {
        Self::open_with(state_dir, ManagerOptions::default())
    }

    /// Open a state directory. Running VMs found there are controlled like ones this process
    /// started (re-attach); stale pidfiles are reported as [`VmState::Dead`].
    pub fn open_with(state_dir: impl Into<PathBuf>, options: ManagerOptions) -> Result<Self, ManagerError> {
        let root = state_dir.into();
        std::fs::create_dir_all(&root).map_err(io(&root))?;
        // Absolute, so the socket paths on QEMU's command line (the re-attach key) do not
        // depend on the working directory.
        let root = std::fs::canonicalize(&root).map_err(io(&root))?;
        let accel = options.accel.unwrap_or_else(|| match std::env::var("PPN_VM_ACCEL").as_deref() {
            Ok("tcg") => Accel::Tcg,
            Ok("kvm") => Accel::Kvm,
            _ => Accel::detect(),
        });
        let cgroups = cgroup::probe(&options.cgroup);
        Ok(Self { root, accel, cgroups, options })
    }

    pub fn state_dir(&self) -> &Path {
        &self.root
    }

    pub fn accel(&self) -> Accel {
        self.accel
    }

    /// What cgroup support was found at open.
    pub fn cgroup_support(&self) -> &CgroupSupport {
        &self.cgroups
    }

    /// The paths of a VM (whether or not it exists).
    pub fn paths(&self, name: &str) -> Result<VmPaths, ManagerError> {
        spec::validate_name(name)?;
        Ok(VmPaths::new(self.root.join(name)))
    }

    /// Register a VM: validate the spec and write its directory. Nothing is started.
    pub fn create(&self, spec: &VmSpec) -> Result<VmPaths, ManagerError> {
        spec.validate()?;
        let paths = self.paths(&spec.name)?;
        if paths.spec().exists() {
            return Err(ManagerError::AlreadyExists(spec.name.clone()));
        }
        std::fs::create_dir_all(&paths.dir).map_err(io(&paths.dir))?;
        let json = serde_json::to_vec_pretty(spec)
            .map_err(|source| ManagerError::BadSpec { name: spec.name.clone(), source })?;
        write_atomic(&paths.spec(), &json)?;
        Ok(paths)
    }

    /// Read a VM's spec.
    pub fn spec(&self, name: &str) -> Result<VmSpec, ManagerError> {
        let paths = self.paths(name)?;
        let bytes = match std::fs::read(paths.spec()) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ManagerError::NotFound(name.into())),
            Err(e) => return Err(io(&paths.spec())(e)),
        };
        serde_json::from_slice(&bytes).map_err(|source| ManagerError::BadSpec { name: name.into(), source })
    }

    /// Names of all VMs (directories with a spec), sorted.
    pub fn names(&self) -> Result<Vec<String>, ManagerError> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if spec::validate_name(&name).is_ok() && entry.path().join("spec.json").is_file() {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// The argv this manager would run for a VM.
    pub fn argv(&self, spec: &VmSpec, mode: &LaunchMode) -> Result<Vec<String>, ManagerError> {
        Ok(build_argv(spec, &self.paths(&spec.name)?, self.accel, mode))
    }

    /// Start a created VM and wait until its QMP monitor answers.
    pub async fn start(&self, name: &str) -> Result<Started, ManagerError> {
        self.start_mode(name, &LaunchMode::daemon()).await
    }

    /// Start a VM in a given mode (e.g. [`LaunchMode::incoming_defer`] for a migration
    /// destination).
    pub async fn start_mode(&self, name: &str, mode: &LaunchMode) -> Result<Started, ManagerError> {
        let spec = self.spec(name)?;
        spec.validate()?;
        let paths = self.paths(name)?;
        let _lock = self.op_lock(name, &paths).await?;
        if let PidStatus::Live(pid) = pid_status(&paths) {
            return Err(ManagerError::AlreadyRunning { name: name.into(), pid });
        }
        for stale in [paths.pidfile(), paths.qmp(), paths.agent()] {
            let _ = std::fs::remove_file(stale);
        }
        let mut mode = mode.clone();
        mode.daemonize = true;
        let argv = build_argv(&spec, &paths, self.accel, &mode);
        let program = spec::qemu_binary();
        let log = std::fs::File::create(paths.qemu_log()).map_err(io(&paths.qemu_log()))?;
        let log2 = log.try_clone().map_err(io(&paths.qemu_log()))?;
        let t0 = Instant::now();
        let mut child = tokio::process::Command::new(&program)
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| ManagerError::Spawn { name: name.into(), program: program.clone(), source })?;
        // With -daemonize the process we spawned exits once QEMU is initialised (sockets
        // created, pidfile written); the VM itself is its detached child.
        let status = match tokio::time::timeout(self.options.start_timeout, child.wait()).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(io(&paths.dir)(e)),
            Err(_) => {
                let _ = child.kill().await;
                return Err(ManagerError::StartTimeout {
                    name: name.into(),
                    what: "QEMU did not daemonize".into(),
                    after: self.options.start_timeout,
                });
            }
        };
        if !status.success() {
            let log = std::fs::read_to_string(paths.qemu_log()).unwrap_or_default();
            return Err(ManagerError::LaunchFailed {
                name: name.into(),
                status: status.to_string(),
                log: log.trim().to_string(),
            });
        }
        let pid = match pid_status(&paths) {
            PidStatus::Live(pid) => pid,
            other => {
                return Err(ManagerError::LaunchFailed {
                    name: name.into(),
                    status: format!("QEMU daemonized but its pidfile says {other:?}"),
                    log: std::fs::read_to_string(paths.qemu_log()).unwrap_or_default(),
                });
            }
        };
        let client = match self.connect_retry(name, &paths, t0).await {
            Ok(c) => c,
            Err(e) => {
                // Do not leave an unreachable QEMU behind a failed start.
                let _ = self.stop_locked(name, &paths, Duration::ZERO).await;
                return Err(e);
            }
        };
        let boot_to_qmp = t0.elapsed();
        drop(client);
        let cgroup = self.place_in_cgroup(&spec, pid, spec.base_mib);
        Ok(Started { pid, boot_to_qmp, cgroup })
    }

    async fn connect_retry(&self, name: &str, paths: &VmPaths, t0: Instant) -> Result<QmpClient, ManagerError> {
        loop {
            match QmpClient::connect(&paths.qmp(), self.options.qmp_timeout).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    if t0.elapsed() > self.options.start_timeout {
                        return Err(ManagerError::Qmp { name: name.into(), source: e });
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn place_in_cgroup(&self, spec: &VmSpec, pid: u32, entitled_mib: u64) -> Result<cgroup::Applied, String> {
        let cg = VmCgroup::create(&self.cgroups, &spec.name).map_err(|e| e.to_string())?;
        cg.add_pid(pid).map_err(|e| e.to_string())?;
        cg.apply(spec.weights, entitled_mib).map_err(|e| e.to_string())
    }

    /// The VM's cgroup handle (when cgroups are available).
    pub fn cgroup(&self, name: &str) -> Result<VmCgroup, String> {
        VmCgroup::create(&self.cgroups, name).map_err(|e| e.to_string())
    }

    /// Where the VM's QEMU is with respect to cgroups, for status output.
    fn cgroup_status(&self, name: &str, pid: Option<u32>) -> String {
        let base = self.cgroups.describe();
        let Some(pid) = pid else { return base };
        if matches!(self.cgroups, CgroupSupport::Unavailable { .. }) {
            return base;
        }
        match self.cgroup(name).and_then(|cg| {
            let inside = cg.contains(pid).map_err(|e| e.to_string())?;
            let applied = cg.read_back().map_err(|e| e.to_string())?;
            Ok((inside, applied))
        }) {
            Ok((true, a)) => format!("{base}: cpu {:?}, memory low {:?} high {:?}", a.cpu, a.memory_low, a.memory_high),
            Ok((false, _)) => format!("{base}: QEMU pid {pid} is not in the VM's cgroup"),
            Err(e) => format!("{base}: {e}"),
        }
    }

    /// Open a QMP connection to a live VM.
    pub async fn qmp(&self, name: &str) -> Result<QmpClient, ManagerError> {
        let paths = self.paths(name)?;
        if !paths.spec().exists() {
            return Err(ManagerError::NotFound(name.into()));
        }
        match pid_status(&paths) {
            PidStatus::Live(_) => {}
            _ => return Err(ManagerError::NotRunning(name.into())),
        }
        QmpClient::connect(&paths.qmp(), self.options.qmp_timeout)
            .await
            .map_err(|source| ManagerError::Qmp { name: name.into(), source })
    }

    fn qmp_err(name: &str) -> impl FnOnce(QmpError) -> ManagerError + '_ {
        move |source| ManagerError::Qmp { name: name.into(), source }
    }

    /// State of one VM.
    pub async fn state(&self, name: &str) -> Result<VmState, ManagerError> {
        let paths = self.paths(name)?;
        if !paths.spec().exists() {
            return Err(ManagerError::NotFound(name.into()));
        }
        Ok(match pid_status(&paths) {
            PidStatus::NoPidfile => VmState::Stopped,
            PidStatus::Stale { pid, why } => VmState::Dead { pid, why },
            PidStatus::Live(pid) => match QmpClient::connect(&paths.qmp(), self.options.qmp_timeout).await {
                Ok(c) => match c.query_status().await {
                    Ok(s) => VmState::Live { pid, status: runstate_name(s.status) },
                    Err(e) => VmState::Unresponsive { pid, error: e.to_string() },
                },
                Err(e) => VmState::Unresponsive { pid, error: e.to_string() },
            },
        })
    }

    /// Memory of a live VM.
    pub async fn memory(&self, name: &str) -> Result<MemoryInfo, ManagerError> {
        let spec = self.spec(name)?;
        let c = self.qmp(name).await?;
        memory_of(&c, &spec).await.map_err(Self::qmp_err(name))
    }

    /// One VM's full status.
    pub async fn info(&self, name: &str) -> Result<VmInfo, ManagerError> {
        let spec = self.spec(name)?;
        let state = self.state(name).await?;
        let memory = match &state {
            VmState::Live { .. } => match self.qmp(name).await {
                Ok(c) => memory_of(&c, &spec).await.ok(),
                Err(_) => None,
            },
            _ => None,
        };
        Ok(VmInfo { name: name.into(), cgroup: self.cgroup_status(name, state.pid()), state, spec, memory })
    }

    /// All VMs with their state.
    pub async fn list(&self) -> Result<Vec<VmInfo>, ManagerError> {
        let mut out = Vec::new();
        for name in self.names()? {
            out.push(self.info(&name).await?);
        }
        Ok(out)
    }

    /// Stop a VM: `system_powerdown`, wait up to `powerdown_timeout` for QEMU to exit, then
    /// `quit`; without QMP, SIGTERM then SIGKILL. Leaves the directory (spec) in place; removes pidfile and sockets.
    pub async fn stop(&self, name: &str, powerdown_timeout: Duration) -> Result<StopOutcome, ManagerError> {
        let paths = self.paths(name)?;
        if !paths.spec().exists() {
            return Err(ManagerError::NotFound(name.into()));
        }
        let _lock = self.op_lock(name, &paths).await?;
        self.stop_locked(name, &paths, powerdown_timeout).await
    }

    /// Serialize start/stop/destroy of one VM across tasks and processes: an exclusive `flock`
    /// on `DIR/lock`, held until the returned file is dropped.
    async fn op_lock(&self, name: &str, paths: &VmPaths) -> Result<std::fs::File, ManagerError> {
        let path = paths.dir.join("lock");
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound { ManagerError::NotFound(name.into()) } else { io(&path)(e) }
        })?;
        let t0 = Instant::now();
        loop {
            match file.try_lock() {
                // A destroy may have removed the VM while we waited.
                Ok(()) if !paths.spec().exists() => return Err(ManagerError::NotFound(name.into())),
                Ok(()) => return Ok(file),
                Err(std::fs::TryLockError::WouldBlock) if t0.elapsed() < self.options.start_timeout => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(ManagerError::Busy { name: name.into(), lock: path, after: t0.elapsed() });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e)),
            }
        }
    }

    async fn stop_locked(
        &self,
        name: &str,
        paths: &VmPaths,
        powerdown_timeout: Duration,
    ) -> Result<StopOutcome, ManagerError> {
        let paths = paths.clone();
        let pid = match pid_status(&paths) {
            PidStatus::Live(pid) => pid,
            _ => {
                self.cleanup_runtime(&paths);
                return Ok(StopOutcome::AlreadyStopped);
            }
        };
        let mut outcome = StopOutcome::Killed;
        if let Ok(c) = QmpClient::connect(&paths.qmp(), self.options.qmp_timeout).await {
            if !powerdown_timeout.is_zero()
                && c.execute(qmp::system_powerdown {}).await.is_ok()
                && wait_gone(pid, &paths.qmp(), powerdown_timeout).await
            {
                outcome = StopOutcome::PoweredDown;
            } else {
                // `quit` may close the connection before its reply arrives.
                let _ = c.execute(qmp::quit {}).await;
                if wait_gone(pid, &paths.qmp(), Duration::from_secs(10)).await {
                    outcome = StopOutcome::Quit;
                }
            }
        }
        if outcome == StopOutcome::Killed {
            // No QMP (e.g. another client holds the monitor): SIGTERM, which QEMU handles like
            // `quit`, then SIGKILL.
            let _ = tokio::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().await;
            if wait_gone(pid, &paths.qmp(), Duration::from_secs(5)).await {
                self.cleanup_runtime(&paths);
                return Ok(StopOutcome::Terminated);
            }
            let _ = tokio::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().await;
            if !wait_gone(pid, &paths.qmp(), Duration::from_secs(5)).await {
                return Err(ManagerError::Unkillable { name: name.into(), pid });
            }
        }
        self.cleanup_runtime(&paths);
        Ok(outcome)
    }

    /// Remove the VM's cgroup; an exited QEMU may stay a member for a moment (until its parent
    /// reaps it), so EBUSY is retried for up to 2 s. Returns the last error, if any.
    pub async fn remove_cgroup(&self, name: &str) -> Option<String> {
        let cg = match self.cgroup(name) {
            Ok(cg) => cg,
            Err(e) => return Some(e),
        };
        let t0 = Instant::now();
        loop {
            match cg.remove() {
                Ok(()) => return None,
                Err(e) if t0.elapsed() > Duration::from_secs(2) => return Some(e.to_string()),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn cleanup_runtime(&self, paths: &VmPaths) {
        for f in [paths.pidfile(), paths.qmp(), paths.agent()] {
            let _ = std::fs::remove_file(f);
        }
    }

    /// Stop (quit at once) if running, remove the cgroup and the VM's directory.
    pub async fn destroy(&self, name: &str) -> Result<StopOutcome, ManagerError> {
        let paths = self.paths(name)?;
        if !paths.dir.exists() {
            return Err(ManagerError::NotFound(name.into()));
        }
        let _lock = self.op_lock(name, &paths).await?;
        let outcome = if paths.spec().exists() {
            self.stop_locked(name, &paths, Duration::ZERO).await?
        } else {
            StopOutcome::AlreadyStopped
        };
        self.remove_cgroup(name).await;
        std::fs::remove_dir_all(&paths.dir).map_err(io(&paths.dir))?;
        Ok(outcome)
    }

    /// Set the virtio-mem `requested-size` (a multiple of 2 MiB, at most the device maximum)
    /// and re-apply the cgroup memory settings for the new entitlement. Returns at once; see
    /// [`VmManager::wait_vmem_size`].
    pub async fn resize_vmem(&self, name: &str, mib: u64) -> Result<(), ManagerError> {
        let spec = self.spec(name)?;
        check_vmem(&spec, mib)?;
        let c = self.qmp(name).await?;
        c.qom_set(VMEM_DEVICE_ID, "requested-size", Value::from(mib * MIB)).await.map_err(Self::qmp_err(name))?;
        if let Ok(cg) = self.cgroup(name) {
            let _ = cg.apply(spec.weights, spec.base_mib + mib);
        }
        Ok(())
    }

    /// Wait until the virtio-mem device's plugged `size` equals `mib` (events, with polling as
    /// a fallback). Returns how long it waited.
    pub async fn wait_vmem_size(&self, name: &str, mib: u64, timeout: Duration) -> Result<Duration, ManagerError> {
        let c = self.qmp(name).await?;
        wait_size(&c, name, mib, timeout).await
    }

    /// `resize_vmem` and `wait_vmem_size` on one connection, timed from the `qom-set`.
    pub async fn resize_vmem_and_wait(
        &self,
        name: &str,
        mib: u64,
        timeout: Duration,
    ) -> Result<Duration, ManagerError> {
        let spec = self.spec(name)?;
        check_vmem(&spec, mib)?;
        let c = self.qmp(name).await?;
        let mut rx = c.subscribe();
        let t0 = Instant::now();
        c.qom_set(VMEM_DEVICE_ID, "requested-size", Value::from(mib * MIB)).await.map_err(Self::qmp_err(name))?;
        if let Ok(cg) = self.cgroup(name) {
            let _ = cg.apply(spec.weights, spec.base_mib + mib);
        }
        wait_size_with(&c, &mut rx, name, mib, timeout.saturating_sub(t0.elapsed())).await?;
        Ok(t0.elapsed())
    }

    /// Set the balloon target (guest memory the balloon leaves to the guest), MiB.
    pub async fn set_balloon(&self, name: &str, target_mib: u64) -> Result<(), ManagerError> {
        let spec = self.spec(name)?;
        let c = self.qmp(name).await?;
        let mem = memory_of(&c, &spec).await.map_err(Self::qmp_err(name))?;
        let max = mem.base_mib + mem.plugged_mib;
        if target_mib == 0 || target_mib > max {
            return Err(ManagerError::BalloonTarget { name: name.into(), mib: target_mib, max });
        }
        c.execute(qmp::balloon { value: (target_mib * MIB) as i64 }).await.map_err(Self::qmp_err(name))?;
        Ok(())
    }

    /// `query-balloon` `actual`, MiB.
    pub async fn balloon_status(&self, name: &str) -> Result<u64, ManagerError> {
        let c = self.qmp(name).await?;
        let info = c.execute(qmp::query_balloon {}).await.map_err(Self::qmp_err(name))?;
        Ok(info.actual.max(0) as u64 / MIB)
    }

    /// Wait until `query-balloon` reports `actual` within 2 MiB of `target_mib`.
    pub async fn wait_balloon(&self, name: &str, target_mib: u64, timeout: Duration) -> Result<Duration, ManagerError> {
        let c = self.qmp(name).await?;
        let t0 = Instant::now();
        loop {
            let info = c.execute(qmp::query_balloon {}).await.map_err(Self::qmp_err(name))?;
            let actual = info.actual.max(0) as u64 / MIB;
            if actual.abs_diff(target_mib) <= 2 {
                return Ok(t0.elapsed());
            }
            if t0.elapsed() > timeout {
                return Err(ManagerError::Qmp {
                    name: name.into(),
                    source: QmpError::WaitTimeout {
                        what: format!("balloon actual {actual} MiB to reach {target_mib} MiB"),
                        after: timeout,
                    },
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn runstate_name(s: qmp::RunState) -> String {
    serde_json::to_value(s).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_else(|| format!("{s:?}"))
}

fn check_vmem(spec: &VmSpec, mib: u64) -> Result<(), ManagerError> {
    if !mib.is_multiple_of(VMEM_BLOCK_MIB) {
        return Err(ManagerError::NotBlockMultiple { name: spec.name.clone(), mib });
    }
    if mib > spec.vmem_max_mib {
        return Err(ManagerError::AboveMax { name: spec.name.clone(), mib, max: spec.vmem_max_mib });
    }
    Ok(())
}

async fn memory_of(c: &QmpClient, spec: &VmSpec) -> Result<MemoryInfo, QmpError> {
    let plugged = c.qom_get_u64(VMEM_DEVICE_ID, "size").await?;
    let requested = c.qom_get_u64(VMEM_DEVICE_ID, "requested-size").await?;
    // query-balloon fails (DeviceNotActive) until the guest driver is up.
    let balloon = c.execute(qmp::query_balloon {}).await.ok();
    Ok(MemoryInfo {
        base_mib: spec.base_mib,
        plugged_mib: plugged / MIB,
        requested_mib: requested / MIB,
        vmem_max_mib: spec.vmem_max_mib,
        balloon_actual_mib: balloon.map(|b| b.actual.max(0) as u64 / MIB),
    })
}

async fn wait_size(c: &QmpClient, name: &str, mib: u64, timeout: Duration) -> Result<Duration, ManagerError> {
    let mut rx = c.subscribe();
    let t0 = Instant::now();
    wait_size_with(c, &mut rx, name, mib, timeout).await?;
    Ok(t0.elapsed())
}

async fn wait_size_with(
    c: &QmpClient,
    rx: &mut tokio::sync::broadcast::Receiver<crate::qmp::QmpEvent>,
    name: &str,
    mib: u64,
    timeout: Duration,
) -> Result<(), ManagerError> {
    let want = mib * MIB;
    let t0 = Instant::now();
    loop {
        let size = c.qom_get_u64(VMEM_DEVICE_ID, "size").await.map_err(VmManager::qmp_err(name))?;
        if size == want {
            return Ok(());
        }
        if t0.elapsed() >= timeout {
            return Err(ManagerError::VmemTimeout {
                name: name.into(),
                size_mib: size / MIB,
                want_mib: mib,
                after: timeout,
            });
        }
        // Wake on MEMORY_DEVICE_SIZE_CHANGE with our size, else re-poll every 100 ms.
        let step = Duration::from_millis(100).min(timeout.saturating_sub(t0.elapsed()));
        let _ = c
            .wait_event(rx, "MEMORY_DEVICE_SIZE_CHANGE", step, |ev| {
                (ev.name == "MEMORY_DEVICE_SIZE_CHANGE" && ev.data.get("size").and_then(Value::as_u64) == Some(want))
                    .then_some(())
            })
            .await;
    }
}

/// Wait until `pid` is no longer a live VM process, at most `timeout`.
async fn wait_gone(pid: u32, qmp_socket: &Path, timeout: Duration) -> bool {
    let t0 = Instant::now();
    loop {
        if !matches!(process_is_vm(pid, qmp_socket), PidStatus::Live(_)) {
            return true;
        }
        if t0.elapsed() >= timeout {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> VmSpec {
        VmSpec::new(name, 256, 2048, "/k", "/i", "console=ttyS0")
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("spec.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn create_validates_and_lists() {
        let dir = tempfile::tempdir().unwrap();
        let m = VmManager::open(dir.path()).unwrap();
        m.create(&spec("b")).unwrap();
        m.create(&spec("a")).unwrap();
        assert!(matches!(m.create(&spec("a")), Err(ManagerError::AlreadyExists(_))));
        assert!(matches!(m.create(&spec("Bad_Name")), Err(ManagerError::Spec(SpecError::InvalidName { .. }))));
        // A directory without a spec (crash during create) is not a VM.
        std::fs::create_dir(dir.path().join("half")).unwrap();
        assert_eq!(m.names().unwrap(), vec!["a", "b"]);
        assert_eq!(m.spec("a").unwrap(), spec("a"));
        assert!(matches!(m.spec("zz"), Err(ManagerError::NotFound(_))));
    }

    #[test]
    fn vmem_checks() {
        let s = spec("a");
        assert!(check_vmem(&s, 0).is_ok());
        assert!(check_vmem(&s, 2048).is_ok());
        let e = check_vmem(&s, 3).unwrap_err();
        assert!(e.to_string().contains("multiple of the 2 MiB"), "{e}");
        let e = check_vmem(&s, 2050).unwrap_err();
        assert!(e.to_string().contains("maximum of 2048 MiB"), "{e}");
    }

    #[tokio::test]
    async fn stale_pidfiles_are_dead_not_live() {
        let dir = tempfile::tempdir().unwrap();
        let m = VmManager::open(dir.path()).unwrap();
        let paths = m.create(&spec("vm")).unwrap();
        assert_eq!(m.state("vm").await.unwrap(), VmState::Stopped);

        // Our own pid: alive, but its command line is not this VM's QEMU (a reused pid).
        std::fs::write(paths.pidfile(), format!("{}\n", std::process::id())).unwrap();
        match m.state("vm").await.unwrap() {
            VmState::Dead { why, .. } => assert!(why.contains("another program"), "{why}"),
            other => panic!("expected dead, got {other:?}"),
        }

        // A pid that exited: spawn and reap a short-lived process.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let gone = child.id();
        child.wait().unwrap();
        std::fs::write(paths.pidfile(), format!("{gone}\n")).unwrap();
        match m.state("vm").await.unwrap() {
            VmState::Dead { pid, why } => {
                assert_eq!(pid, gone);
                assert!(why.contains("no such process"), "{why}");
            }
            other => panic!("expected dead, got {other:?}"),
        }

        // Garbage in the pidfile.
        std::fs::write(paths.pidfile(), "not a pid").unwrap();
        assert!(matches!(m.state("vm").await.unwrap(), VmState::Dead { .. }));

        // Stop on a dead VM cleans up and reports it was already stopped.
        assert_eq!(m.stop("vm", Duration::from_secs(1)).await.unwrap(), StopOutcome::AlreadyStopped);
        assert!(!paths.pidfile().exists());
        assert!(matches!(m.qmp("vm").await, Err(ManagerError::NotRunning(_))));
    }

    #[test]
    fn zombie_is_not_live() {
        // A child we do not reap yet is a zombie after it exits.
        let mut child = std::process::Command::new("sh").args(["-c", "exit 0", "/some/qmp.sock"]).spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(Duration::from_millis(300));
        match process_is_vm(pid, Path::new("/some/qmp.sock")) {
            PidStatus::Stale { why, .. } => assert!(why.contains("zombie"), "{why}"),
            other => panic!("expected a stale zombie, got {other:?}"),
        }
        child.wait().unwrap();
    }
}
