//! The VM spec (what an operator asks for) and the QEMU command line built from it.
//!
//! [`build_argv`] is a pure function of the spec, the per-VM paths, the accelerator and the
//! launch mode, so the exact command line is unit-tested without QEMU.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// virtio-mem block size: every plug/unplug is a multiple of this.
pub const VMEM_BLOCK_MIB: u64 = 2;
/// Longest VM name (it names a directory, a cgroup and a QEMU `-name`).
pub const MAX_NAME_LEN: usize = 32;
/// The virtio-serial port name the guest agent writes its reports to.
pub const AGENT_PORT_NAME: &str = "org.ppnfabric.agent.0";
/// QOM id of the virtio-mem device (its `size`/`requested-size` properties).
pub const VMEM_DEVICE_ID: &str = "vmem0dev";
/// QOM id of the balloon device.
pub const BALLOON_DEVICE_ID: &str = "balloon0";

/// Errors of a spec: each names the offending field and value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("VM name {name:?} is invalid: use 1..={max} characters from [a-z0-9-]", max = MAX_NAME_LEN)]
    InvalidName { name: String },
    #[error("vcpus must be 1..=64, got {0}")]
    InvalidVcpus(u32),
    #[error("base memory must be at least 64 MiB, got {0} MiB")]
    BaseMemoryTooSmall(u64),
    #[error("virtio-mem max must be a positive multiple of {VMEM_BLOCK_MIB} MiB, got {0} MiB")]
    InvalidVmemMax(u64),
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} contains a comma, which QEMU's option parser would split: {value:?}")]
    Comma { field: &'static str, value: String },
    #[error("weight {field} must be 1..=10000, got {value}")]
    InvalidWeight { field: &'static str, value: u32 },
    #[error("a sealed root needs {0}")]
    Sealed(&'static str),
}

/// Validate a VM name: 1..=32 characters from `[a-z0-9-]`.
pub fn validate_name(name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok { Ok(()) } else { Err(SpecError::InvalidName { name: name.to_string() }) }
}

/// CPU and memory weights of a VM's cgroup (1..=10000, 100 = default share; see
/// [`crate::cgroup`] for how they map onto cgroup v2 and v1 knobs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub cpu: u32,
    pub memory: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Self { cpu: 100, memory: 100 }
    }
}

/// What an operator asks for. Stored as `spec.json` in the VM's directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmSpec {
    pub name: String,
    pub vcpus: u32,
    /// Boot memory (`-m`), MiB.
    pub base_mib: u64,
    /// Size of the virtio-mem region (the most that can be plugged), MiB.
    pub vmem_max_mib: u64,
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    #[serde(default)]
    pub weights: Weights,
    /// Extra QEMU arguments appended verbatim (before `-incoming`).
    #[serde(default)]
    pub extra_args: Vec<String>,
    /// A sealed root disk for the verified boot (docs/attestation.md §4a); `initrd` must then
    /// be the image's `initrd-verified.cpio` and `cmdline` carry `ppn.root=verity`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed: Option<SealedRoot>,
}

/// A sealed guest image as a VM boots it: the image (read-only on virtio-blk), its provisioning
/// statement and the fleet's trust file (both on fw_cfg), and the statement's root hash (which
/// the node's TCB puts in the VM's attestation reports; a verifier checks it against the
/// statement).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedRoot {
    pub disk: PathBuf,
    pub statement: PathBuf,
    pub trust: PathBuf,
    /// Hex, 64 digits.
    pub root_hash: String,
}

impl SealedRoot {
    /// The root hash's bytes.
    pub fn root_hash_bytes(&self) -> Option<[u8; 32]> {
        let h = self.root_hash.as_bytes();
        if h.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(std::str::from_utf8(&h[2 * i..2 * i + 2]).ok()?, 16).ok()?;
        }
        Some(out)
    }
}

impl VmSpec {
    /// A spec with one vCPU, default weights and no extra arguments.
    pub fn new(
        name: impl Into<String>,
        base_mib: u64,
        vmem_max_mib: u64,
        kernel: impl Into<PathBuf>,
        initrd: impl Into<PathBuf>,
        cmdline: impl Into<String>,
    ) -> Self {
        Self {
            name: name.into(),
            vcpus: 1,
            base_mib,
            vmem_max_mib,
            kernel: kernel.into(),
            initrd: initrd.into(),
            cmdline: cmdline.into(),
            weights: Weights::default(),
            extra_args: Vec::new(),
            sealed: None,
        }
    }

    /// Check every field; the first problem is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        validate_name(&self.name)?;
        if !(1..=64).contains(&self.vcpus) {
            return Err(SpecError::InvalidVcpus(self.vcpus));
        }
        if self.base_mib < 64 {
            return Err(SpecError::BaseMemoryTooSmall(self.base_mib));
        }
        if self.vmem_max_mib == 0 || !self.vmem_max_mib.is_multiple_of(VMEM_BLOCK_MIB) {
            return Err(SpecError::InvalidVmemMax(self.vmem_max_mib));
        }
        for (field, path) in [("kernel", &self.kernel), ("initrd", &self.initrd)] {
            let s = path.to_string_lossy();
            if s.is_empty() {
                return Err(SpecError::Empty { field });
            }
            if s.contains(',') {
                return Err(SpecError::Comma { field, value: s.into_owned() });
            }
        }
        if let Some(r) = &self.sealed {
            for (field, p) in [("sealed.disk", &r.disk), ("sealed.statement", &r.statement), ("sealed.trust", &r.trust)]
            {
                let v = p.to_string_lossy();
                if v.is_empty() {
                    return Err(SpecError::Empty { field });
                }
                if v.contains(',') {
                    return Err(SpecError::Comma { field, value: v.into_owned() });
                }
            }
            if r.root_hash_bytes().is_none() {
                return Err(SpecError::Sealed("a root hash of 64 hex digits"));
            }
            if !self.cmdline.split_whitespace().any(|w| w == ppn_guest_agent::image::VERITY_CMDLINE) {
                return Err(SpecError::Sealed("`ppn.root=verity` on the kernel command line"));
            }
        }
        for (field, value) in [("cpu", self.weights.cpu), ("memory", self.weights.memory)] {
            if !(1..=10_000).contains(&value) {
                return Err(SpecError::InvalidWeight { field, value });
            }
        }
        Ok(())
    }

    /// `maxmem` for `-m`: base plus the whole virtio-mem region.
    pub fn maxmem_mib(&self) -> u64 {
        self.base_mib + self.vmem_max_mib
    }
}

/// QEMU accelerator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    /// KVM if `/dev/kvm` can be opened read-write *and* the host kernel has hardware
    /// virtualization (`kvm_intel` or `kvm_amd` loaded), else TCG.
    ///
    /// `/dev/kvm` alone is not enough: some sandboxes (e.g. a Firecracker host with `kvm_pvm`,
    /// pagetable-based virtualization) offer `/dev/kvm` on CPUs without VMX/SVM, and a stock
    /// Debian guest kernel then never prints a byte.
    pub fn detect() -> Self {
        Self::detect_in(Path::new("/dev/kvm"), Path::new("/sys/module"))
    }

    /// [`Accel::detect`] with the device and module directory given (for tests).
    pub fn detect_in(dev_kvm: &Path, sys_module: &Path) -> Self {
        let opens = std::fs::OpenOptions::new().read(true).write(true).open(dev_kvm).is_ok();
        let hw = ["kvm_intel", "kvm_amd"].iter().any(|m| sys_module.join(m).exists());
        if opens && hw { Accel::Kvm } else { Accel::Tcg }
    }

    /// The `-accel` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The files of one VM inside its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPaths {
    pub dir: PathBuf,
}

impl VmPaths {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join("spec.json")
    }
    pub fn qmp(&self) -> PathBuf {
        self.dir.join("qmp.sock")
    }
    pub fn agent(&self) -> PathBuf {
        self.dir.join("agent.sock")
    }
    pub fn serial_log(&self) -> PathBuf {
        self.dir.join("serial.log")
    }
    /// Where a migration destination's QEMU listens for the incoming stream.
    pub fn incoming(&self) -> PathBuf {
        self.dir.join("incoming.sock")
    }
    /// Where the node listens for a migration source's QEMU to connect with its stream.
    pub fn outgoing(&self) -> PathBuf {
        self.dir.join("outgoing.sock")
    }
    pub fn pidfile(&self) -> PathBuf {
        self.dir.join("qemu.pid")
    }
    /// QEMU's own stderr while it starts (before `-daemonize` detaches).
    pub fn qemu_log(&self) -> PathBuf {
        self.dir.join("qemu.log")
    }
}

/// How QEMU is started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LaunchMode {
    /// `-daemonize -pidfile`: QEMU detaches and outlives its starter. Without it QEMU stays in
    /// the foreground with `-nographic` (the colleague's reference line, handy for debugging).
    pub daemonize: bool,
    /// `-incoming URI` (`defer` for a migration destination that gets `migrate-incoming`).
    pub incoming: Option<String>,
}

impl LaunchMode {
    /// A normal, detached VM.
    pub fn daemon() -> Self {
        Self { daemonize: true, incoming: None }
    }
    /// A detached migration destination waiting for `migrate-incoming`.
    pub fn incoming_defer() -> Self {
        Self { daemonize: true, incoming: Some("defer".into()) }
    }
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The QEMU argv (without the program name, see [`QEMU_BINARY`]) for a spec.
///
/// This is the colleague's reference line; with `daemonize` `-nographic` (which QEMU refuses
/// together with `-daemonize`) becomes `-display none -monitor none`, followed by
/// `-daemonize -pidfile PIDFILE`.
pub fn build_argv(spec: &VmSpec, paths: &VmPaths, accel: Accel, mode: &LaunchMode) -> Vec<String> {
    let mut a: Vec<String> = Vec::new();
    let mut push = |items: &[&str]| a.extend(items.iter().map(|s| s.to_string()));
    push(&["-name", &spec.name]);
    push(&["-machine", "q35", "-accel", accel.as_str()]);
    push(&["-cpu", if accel == Accel::Kvm { "host" } else { "max" }]);
    push(&["-smp", &spec.vcpus.to_string()]);
    push(&["-m", &format!("{}M,maxmem={}M,slots=1", spec.base_mib, spec.maxmem_mib())]);
    push(&["-kernel", &path_str(&spec.kernel)]);
    push(&["-initrd", &path_str(&spec.initrd)]);
    push(&["-append", &spec.cmdline]);
    if mode.daemonize {
        push(&["-display", "none", "-monitor", "none"]);
    } else {
        push(&["-nographic"]);
    }
    push(&["-serial", &format!("file:{}", path_str(&paths.serial_log()))]);
    push(&["-object", &format!("memory-backend-ram,id=vmem0,size={}M", spec.vmem_max_mib)]);
    push(&[
        "-device",
        &format!("virtio-mem-pci,id={VMEM_DEVICE_ID},memdev=vmem0,block-size={VMEM_BLOCK_MIB}M,requested-size=0"),
    ]);
    push(&["-device", &format!("virtio-balloon-pci,id={BALLOON_DEVICE_ID},free-page-reporting=on")]);
    push(&["-device", "virtio-serial-pci"]);
    push(&["-chardev", &format!("socket,id=agent,path={},server=on,wait=off", path_str(&paths.agent()))]);
    push(&["-device", &format!("virtserialport,chardev=agent,name={AGENT_PORT_NAME}")]);
    push(&["-qmp", &format!("unix:{},server=on,wait=off", path_str(&paths.qmp()))]);
    if mode.daemonize {
        push(&["-daemonize", "-pidfile", &path_str(&paths.pidfile())]);
    }
    if let Some(r) = &spec.sealed {
        a.extend(ppn_guest_agent::image::verity_args(&r.disk, &r.statement, &r.trust));
    }
    a.extend(spec.extra_args.iter().cloned());
    if let Some(uri) = &mode.incoming {
        a.push("-incoming".into());
        a.push(uri.clone());
    }
    a
}

/// The QEMU binary (looked up in `PATH`); `PPN_QEMU` overrides it.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";

/// The QEMU binary to run: `$PPN_QEMU` or [`QEMU_BINARY`].
pub fn qemu_binary() -> String {
    std::env::var("PPN_QEMU").unwrap_or_else(|_| QEMU_BINARY.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> VmSpec {
        VmSpec::new("vm-1", 256, 2048, "/k/vmlinuz", "/k/initrd", "console=ttyS0 quiet")
    }

    #[test]
    fn a_sealed_root_is_checked_and_boots_from_virtio_blk_with_fw_cfg() {
        let mut s = spec();
        s.sealed = Some(SealedRoot {
            disk: "/img/web.img.sealed".into(),
            statement: "/img/web.img.sealed.prov".into(),
            trust: "/img/fleet.trust".into(),
            root_hash: "ab".repeat(32),
        });
        assert!(matches!(s.validate(), Err(SpecError::Sealed(_))), "ppn.root=verity is missing");
        s.cmdline += " ppn.root=verity";
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(s.sealed.as_ref().unwrap().root_hash_bytes(), Some([0xAB; 32]));
        let a = build_argv(&s, &VmPaths::new("/state/vm-1"), Accel::Tcg, &LaunchMode::daemon()).join(" ");
        assert!(a.contains("-drive file=/img/web.img.sealed,format=raw,if=none,id=ppnroot,readonly=on"), "{a}");
        assert!(a.contains("-fw_cfg name=opt/org.ppnfabric/provisioning,file=/img/web.img.sealed.prov"), "{a}");
        assert!(a.contains("-fw_cfg name=opt/org.ppnfabric/trust,file=/img/fleet.trust"), "{a}");
        let mut bad = s.clone();
        bad.sealed.as_mut().unwrap().root_hash = "xy".repeat(32);
        assert!(matches!(bad.validate(), Err(SpecError::Sealed(_))));
        let mut bad = s.clone();
        bad.sealed.as_mut().unwrap().trust = "/a,b".into();
        assert!(matches!(bad.validate(), Err(SpecError::Comma { field: "sealed.trust", .. })));
        // A spec without a sealed root reads and writes as before.
        let plain = serde_json::to_string(&spec()).unwrap();
        assert!(!plain.contains("sealed"), "{plain}");
        assert_eq!(serde_json::from_str::<VmSpec>(&plain).unwrap(), spec());
    }

    #[test]
    fn names() {
        for ok in ["a", "vm-1", "0", &"x".repeat(32)] {
            assert_eq!(validate_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "A", "vm_1", "vm.1", "vm/1", "vm 1", &"x".repeat(33), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn spec_validation() {
        assert_eq!(spec().validate(), Ok(()));
        let mut s = spec();
        s.vmem_max_mib = 3;
        assert_eq!(s.validate(), Err(SpecError::InvalidVmemMax(3)));
        let mut s = spec();
        s.vcpus = 0;
        assert_eq!(s.validate(), Err(SpecError::InvalidVcpus(0)));
        let mut s = spec();
        s.base_mib = 32;
        assert_eq!(s.validate(), Err(SpecError::BaseMemoryTooSmall(32)));
        let mut s = spec();
        s.kernel = "/a,b".into();
        assert!(matches!(s.validate(), Err(SpecError::Comma { field: "kernel", .. })));
        let mut s = spec();
        s.weights.memory = 0;
        assert!(matches!(s.validate(), Err(SpecError::InvalidWeight { field: "memory", value: 0 })));
        let msg = SpecError::InvalidName { name: "A".into() }.to_string();
        assert!(msg.contains("[a-z0-9-]"), "{msg}");
    }

    #[test]
    fn spec_json_roundtrip_and_defaults() {
        let s = spec();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<VmSpec>(&json).unwrap(), s);
        // Older/hand-written specs without weights or extra args still load.
        let minimal = r#"{"name":"a","vcpus":1,"base_mib":256,"vmem_max_mib":2048,
            "kernel":"/k","initrd":"/i","cmdline":""}"#;
        let m: VmSpec = serde_json::from_str(minimal).unwrap();
        assert_eq!(m.weights, Weights::default());
        assert!(m.extra_args.is_empty());
    }

    #[test]
    fn argv_matches_reference_line() {
        let paths = VmPaths::new("/s/vm-1");
        let argv = build_argv(&spec(), &paths, Accel::Tcg, &LaunchMode { daemonize: false, incoming: None });
        let expected = "-name vm-1 -machine q35 -accel tcg -cpu max -smp 1 \
            -m 256M,maxmem=2304M,slots=1 -kernel /k/vmlinuz -initrd /k/initrd \
            -append @CMDLINE@ -nographic -serial file:/s/vm-1/serial.log \
            -object memory-backend-ram,id=vmem0,size=2048M \
            -device virtio-mem-pci,id=vmem0dev,memdev=vmem0,block-size=2M,requested-size=0 \
            -device virtio-balloon-pci,id=balloon0,free-page-reporting=on -device virtio-serial-pci \
            -chardev socket,id=agent,path=/s/vm-1/agent.sock,server=on,wait=off \
            -device virtserialport,chardev=agent,name=org.ppnfabric.agent.0 \
            -qmp unix:/s/vm-1/qmp.sock,server=on,wait=off";
        let expected: Vec<String> = expected
            .split_whitespace()
            .map(|s| if s == "@CMDLINE@" { "console=ttyS0 quiet".to_string() } else { s.to_string() })
            .collect();
        assert_eq!(argv, expected);
    }

    #[test]
    fn argv_daemon_incoming_kvm_extra() {
        let paths = VmPaths::new("/s/vm-1");
        let mut s = spec();
        s.vcpus = 2;
        s.extra_args = vec!["-no-reboot".into()];
        let argv = build_argv(&s, &paths, Accel::Kvm, &LaunchMode::incoming_defer());
        let joined = argv.join(" ");
        assert!(joined.contains("-accel kvm -cpu host -smp 2"), "{joined}");
        assert!(!joined.contains("-nographic"), "{joined}");
        assert!(joined.contains("-display none -monitor none"), "{joined}");
        assert!(joined.ends_with("-daemonize -pidfile /s/vm-1/qemu.pid -no-reboot -incoming defer"), "{joined}");
        let plain = build_argv(&s, &paths, Accel::Tcg, &LaunchMode::daemon()).join(" ");
        assert!(!plain.contains("-incoming"), "{plain}");
        assert!(plain.contains("-daemonize -pidfile"), "{plain}");
    }

    #[test]
    fn accel_detection() {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("kvm");
        let modules = dir.path().join("module");
        std::fs::create_dir_all(&modules).unwrap();
        // No device: TCG.
        assert_eq!(Accel::detect_in(&dev, &modules), Accel::Tcg);
        // A device that opens but no hardware virtualization module (kvm_pvm-style): TCG.
        std::fs::write(&dev, b"").unwrap();
        std::fs::create_dir(modules.join("kvm_pvm")).unwrap();
        assert_eq!(Accel::detect_in(&dev, &modules), Accel::Tcg);
        // Device and kvm_intel: KVM.
        std::fs::create_dir(modules.join("kvm_intel")).unwrap();
        assert_eq!(Accel::detect_in(&dev, &modules), Accel::Kvm);
        assert_eq!(Accel::Kvm.as_str(), "kvm");
        assert_eq!(Accel::Tcg.as_str(), "tcg");
    }
}
