//! The guest image: a Debian kernel (`linux-image-amd64` and the `linux-image-<abi>-amd64` it
//! depends on) and an initramfs holding busybox-static, the kernel modules the fabric needs
//! (virtio-pci, virtio-mem, virtio-balloon, virtio-console) and the agent. Built once with
//! `apt-get download` + `dpkg-deb` (no root needed) and cached; see docs/guest.md.
//!
//! Cache directory layout (everything written temp file, fsync, rename; `manifest` last):
//!
//! * `vmlinuz`: the kernel; `initrd.cpio`: the initramfs (newc, uncompressed);
//! * `base/`: what the initramfs is made of (`busybox`, `modules/*.ko`, `config`), kept so a
//!   new agent needs no download;
//! * `manifest`: package versions, kernel release, module load order, sha256 of every file;
//! * `lock`: held (flock) by the process building or checking, so concurrent callers (two test
//!   processes) wait for each other and then share the result.

use crate::cpio::{CpioError, Writer};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;
use thiserror::Error;

/// The kernel command line the image is made for. `memhp_default_state=online_movable` onlines
/// hot-plugged memory blocks automatically (there is no udev) into ZONE_MOVABLE, without which
/// virtio-mem cannot unplug them again. `swiotlb=noforce`: the hot-plug range lies above 4 GiB,
/// which makes the kernel reserve a 64 MiB bounce buffer (a quarter of a 256 MiB guest) that
/// no device of this guest needs (virtio addresses all memory). `init_on_free=1`: the guest
/// zeroes what it frees, so freed memory leaks nothing and costs a live migration nothing (QEMU
/// sends a zero page as a flag); with the balloon's free page reporting the host drops it too.
pub const CMDLINE: &str =
    "console=ttyS0 memhp_default_state=online_movable swiotlb=noforce init_on_free=1 panic=-1 loglevel=4";

/// The Debian metapackage that names the current kernel.
pub const KERNEL_METAPACKAGE: &str = "linux-image-amd64";
/// The package supplying /bin/busybox (static).
pub const BUSYBOX_PACKAGE: &str = "busybox-static";
/// The musl target the agent is built for.
pub const AGENT_TARGET: &str = "x86_64-unknown-linux-musl";
/// Set to a path to use that agent binary instead of building one.
pub const AGENT_ENV: &str = "PPN_GUEST_AGENT";

const MANIFEST_FORMAT: &str = "ppn-guest-manifest 1";

/// Kernel options the guest needs built in.
const BUILTIN: [&str; 9] = [
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_DEVTMPFS",
    "CONFIG_PROC_FS",
    "CONFIG_SYSFS",
    "CONFIG_BINFMT_SCRIPT",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_PCI",
    "CONFIG_MEMORY_HOTPLUG",
    "CONFIG_MEMORY_HOTREMOVE",
];
/// Kernel options the guest needs built in or as the named module (loaded by /init). The last
/// six are the verified boot's (docs/attestation.md): the root disk, device-mapper and
/// dm-verity, fw_cfg (the statement and the trust file from the host), and ext4 with the
/// crc32c it asks the crypto API for.
/// The first options of [`BUILTIN_OR_MODULE`] are every boot's; the rest the verified boot's.
const BASE_MODULE_OPTIONS: usize = 4;
const BUILTIN_OR_MODULE: [(&str, &str); 10] = [
    ("CONFIG_VIRTIO_PCI", "virtio_pci"),
    ("CONFIG_VIRTIO_MEM", "virtio_mem"),
    ("CONFIG_VIRTIO_BALLOON", "virtio_balloon"),
    ("CONFIG_VIRTIO_CONSOLE", "virtio_console"),
    ("CONFIG_VIRTIO_BLK", "virtio_blk"),
    ("CONFIG_BLK_DEV_DM", "dm_mod"),
    ("CONFIG_DM_VERITY", "dm_verity"),
    ("CONFIG_FW_CFG_SYSFS", "qemu_fw_cfg"),
    ("CONFIG_CRYPTO_CRC32C", "crc32c_generic"),
    ("CONFIG_EXT4_FS", "ext4"),
];

/// The kernel command line word that asks /init for the verified boot.
pub const VERITY_CMDLINE: &str = "ppn.root=verity";
/// The fw_cfg names under which the host hands the guest the image's provisioning statement
/// and the fleet's trust file.
pub const FW_CFG_PROVISIONING: &str = "opt/org.ppnfabric/provisioning";
pub const FW_CFG_TRUST: &str = "opt/org.ppnfabric/trust";

#[derive(Debug, Error)]
pub enum ImageError {
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("cannot run {program}: {source} (scripts/setup installs what the guest build needs)")]
    Spawn { program: String, source: std::io::Error },
    #[error("{command} failed ({status}): {stderr}")]
    Failed { command: String, status: String, stderr: String },
    #[error(
        "apt-get download {package} failed: {stderr}\n(the guest image is made from Debian packages: this needs \
         network access to a Debian mirror and apt lists; run `apt-get update` as root, or scripts/setup)"
    )]
    Download { package: String, stderr: String },
    #[error("{0}")]
    Package(String),
    #[error("the kernel's config lacks {option} (must be {need}; found {found})")]
    KernelConfig { option: &'static str, need: &'static str, found: String },
    #[error("kernel module {module}: {reason}")]
    Module { module: String, reason: String },
    #[error("the agent binary {path} {reason}")]
    Agent { path: PathBuf, reason: String },
    #[error(
        "cannot build the agent: no workspace at {0} (this build of the image builder is not run from its \
         checkout); pass the agent binary with --agent or {AGENT_ENV}"
    )]
    NoWorkspace(PathBuf),
    #[error("initramfs: {0}")]
    Cpio(#[from] CpioError),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { what, path: path.to_owned(), source }
}

/// How to build the image.
#[derive(Debug, Clone, Default)]
pub struct ImageOptions {
    /// The agent binary (static, x86_64). `None`: the `PPN_GUEST_AGENT` environment variable,
    /// else `cargo build --release --target x86_64-unknown-linux-musl -p ppn-guest-agent` in the
    /// workspace this crate was compiled from (target dir `target/guest-agent`).
    pub agent: Option<PathBuf>,
    /// Download and extract the packages again even if the cache checks out.
    pub force: bool,
    /// Progress lines on stderr.
    pub verbose: bool,
}

/// A Debian package the image is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
    /// sha256 of the .deb.
    pub sha256: String,
}

/// A built guest image: boot it with `-kernel kernel -initrd initrd -append cmdline`.
#[derive(Debug, Clone)]
pub struct GuestImage {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The initramfs for a verified boot: `initrd` followed by a second cpio archive with the
    /// verified boot's modules and the host's `veritysetup` with its libraries (the kernel
    /// unpacks concatenated archives in turn). Only sealed-root guests carry the extra ~10 MB.
    pub initrd_verified: PathBuf,
    pub cmdline: String,
    /// `uname -r` of the kernel, e.g. `6.1.0-57-amd64`.
    pub kernel_release: String,
    pub packages: Vec<Package>,
    /// The modules /init loads, in load order.
    pub modules: Vec<String>,
    /// sha256 of the agent binary inside the initramfs.
    pub agent_sha256: String,
    /// Nothing was downloaded: the packages came from the cache.
    pub packages_cached: bool,
    /// Nothing was written at all: the whole image came from the cache.
    pub cached: bool,
}

impl GuestImage {
    /// The QEMU arguments (after the program name) that boot this image as the fabric does:
    /// 256 MiB of boot memory, a virtio-mem device `vmem0dev` of up to 2 GiB (requested size 0),
    /// a balloon `balloon0`, the agent's port on the Unix socket `agent_socket` and QMP on
    /// `qmp_socket` (both servers, no wait); the serial console on stdio is left to the caller
    /// (`-serial ...`).
    pub fn qemu_args(&self, agent_socket: &Path, qmp_socket: &Path) -> Vec<String> {
        let s = |x: &str| x.to_owned();
        vec![
            s("-machine"),
            s("q35"),
            s("-accel"),
            s("tcg"),
            s("-cpu"),
            s("max"),
            s("-smp"),
            s("1"),
            s("-m"),
            s("256M,maxmem=2304M,slots=1"),
            s("-kernel"),
            self.kernel.display().to_string(),
            s("-initrd"),
            self.initrd.display().to_string(),
            s("-append"),
            self.cmdline.clone(),
            s("-nographic"),
            s("-no-reboot"),
            s("-object"),
            s("memory-backend-ram,id=vmem0,size=2G"),
            s("-device"),
            s("virtio-mem-pci,id=vmem0dev,memdev=vmem0,block-size=2M,requested-size=0"),
            s("-device"),
            s("virtio-balloon-pci,id=balloon0,free-page-reporting=on"),
            s("-device"),
            s("virtio-serial-pci"),
            s("-chardev"),
            format!("socket,id=agent,path={},server=on,wait=off", agent_socket.display()),
            s("-device"),
            format!("virtserialport,chardev=agent,name={}", crate::PORT_NAME),
            s("-qmp"),
            format!("unix:{},server=on,wait=off", qmp_socket.display()),
        ]
    }
}

/// The QEMU arguments that add a sealed root disk for the verified boot: the image read-only
/// on virtio-blk (`/dev/vda` in the guest), and its provisioning statement and the fleet's trust
/// file on fw_cfg. The kernel command line must also carry [`VERITY_CMDLINE`].
pub fn verity_args(disk: &Path, statement: &Path, trust: &Path) -> Vec<String> {
    vec![
        "-drive".into(),
        format!("file={},format=raw,if=none,id=ppnroot,readonly=on", disk.display()),
        "-device".into(),
        "virtio-blk-pci,drive=ppnroot".into(),
        "-fw_cfg".into(),
        format!("name={FW_CFG_PROVISIONING},file={}", statement.display()),
        "-fw_cfg".into(),
        format!("name={FW_CFG_TRUST},file={}", trust.display()),
    ]
}

/// Builds the guest image in `cache_dir`, or returns the cached one: the packages are
/// downloaded only if the cache's manifest and files do not check out (or `force`), and the
/// initramfs is rewritten only if its content (agent, /init, modules) changed.
pub fn ensure(cache_dir: &Path, options: &ImageOptions) -> Result<GuestImage, ImageError> {
    std::fs::create_dir_all(cache_dir).map_err(io("cannot create the cache directory", cache_dir))?;
    let lock_path = cache_dir.join("lock");
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("cannot open the lock file", &lock_path))?;
    lock.lock().map_err(io("cannot lock", &lock_path))?;
    let result = ensure_locked(cache_dir, options);
    // Dropping the file releases the lock; say so explicitly for the reader.
    drop(lock);
    result
}

fn say(options: &ImageOptions, msg: &str) {
    if options.verbose {
        eprintln!("guest image: {msg}");
    }
}

/// Temp files of a writer that crashed (`write_atomic`'s `.NAME.tmp-PID`); only called with the
/// lock held, so no live writer owns them.
fn remove_stale_temps(cache_dir: &Path) {
    for dir in [cache_dir.to_owned(), cache_dir.join("base"), cache_dir.join("base/modules")] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') && name.contains(".tmp-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn ensure_locked(cache_dir: &Path, options: &ImageOptions) -> Result<GuestImage, ImageError> {
    remove_stale_temps(cache_dir);
    let agent_path = agent_binary(options)?;
    let agent = std::fs::read(&agent_path).map_err(io("cannot read the agent binary", &agent_path))?;
    check_static_x86_64(&agent_path, &agent)?;

    let manifest_path = cache_dir.join("manifest");
    let old = std::fs::read_to_string(&manifest_path).ok().and_then(|t| Manifest::parse(&t));
    let base = match old.as_ref().filter(|m| !options.force && m.base_ok(cache_dir)) {
        Some(m) => {
            say(options, "packages: cached");
            Base { packages: m.packages.clone(), release: m.release.clone(), modules: m.modules.clone(), cached: true }
        }
        None => {
            let t = Instant::now();
            let base = fetch_base(cache_dir, options)?;
            say(options, &format!("packages downloaded and extracted in {:.1} s", t.elapsed().as_secs_f64()));
            base
        }
    };
    let (initrd, extras) = initramfs(cache_dir, &base.modules, &agent)?;
    let initrd_sha = sha256(&initrd);
    let initrd_path = cache_dir.join("initrd.cpio");
    let verified = [initrd.as_slice(), extras.as_slice()].concat();
    let verified_sha = sha256(&verified);
    let verified_path = cache_dir.join("initrd-verified.cpio");
    let cached_as = |name: &str, path: &Path, sha: &String| {
        base.cached
            && old.as_ref().and_then(|m| m.files.get(name)) == Some(sha)
            && file_sha256(path).as_ref() == Some(sha)
    };
    let initrd_cached = cached_as("initrd.cpio", &initrd_path, &initrd_sha)
        && cached_as("initrd-verified.cpio", &verified_path, &verified_sha);
    if !initrd_cached {
        write_atomic(&initrd_path, &initrd)?;
        write_atomic(&verified_path, &verified)?;
        say(
            options,
            &format!(
                "initramfs written ({} KiB; {} KiB for a verified boot)",
                initrd.len() / 1024,
                verified.len() / 1024
            ),
        );
    }
    let mut files = BTreeMap::new();
    for name in base_files(&base.modules) {
        let path = cache_dir.join(&name);
        let sha = file_sha256(&path).ok_or_else(|| ImageError::Io {
            what: "cannot read the cached file",
            path: path.clone(),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        })?;
        files.insert(name, sha);
    }
    files.insert("initrd.cpio".to_owned(), initrd_sha);
    files.insert("initrd-verified.cpio".to_owned(), verified_sha);
    let agent_sha256 = sha256(&agent);
    let manifest = Manifest {
        packages: base.packages.clone(),
        release: base.release.clone(),
        modules: base.modules.clone(),
        agent: agent_sha256.clone(),
        files,
    };
    if old.as_ref() != Some(&manifest) {
        write_atomic(&manifest_path, manifest.render().as_bytes())?;
    }
    Ok(GuestImage {
        kernel: cache_dir.join("vmlinuz"),
        initrd: initrd_path,
        initrd_verified: verified_path,
        cmdline: CMDLINE.to_owned(),
        kernel_release: base.release,
        packages: base.packages,
        modules: base.modules,
        agent_sha256,
        packages_cached: base.cached,
        cached: initrd_cached && old.as_ref() == Some(&manifest),
    })
}

struct Base {
    packages: Vec<Package>,
    release: String,
    modules: Vec<String>,
    cached: bool,
}

/// The files of the cache that come from the packages.
fn base_files(modules: &[String]) -> Vec<String> {
    let mut v = vec!["vmlinuz".to_owned(), "base/busybox".to_owned(), "base/config".to_owned()];
    v.extend(modules.iter().map(|m| format!("base/modules/{m}.ko")));
    v
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Manifest {
    packages: Vec<Package>,
    release: String,
    modules: Vec<String>,
    agent: String,
    files: BTreeMap<String, String>,
}

impl Manifest {
    fn render(&self) -> String {
        let mut s = format!("{MANIFEST_FORMAT}\nrelease {}\n", self.release);
        for p in &self.packages {
            s += &format!("package {} {} {}\n", p.name, p.version, p.sha256);
        }
        for m in &self.modules {
            s += &format!("module {m}\n");
        }
        s += &format!("agent {}\n", self.agent);
        for (name, sha) in &self.files {
            s += &format!("file {name} {sha}\n");
        }
        s
    }

    fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        if lines.next()? != MANIFEST_FORMAT {
            return None;
        }
        let mut m = Manifest {
            packages: vec![],
            release: String::new(),
            modules: vec![],
            agent: String::new(),
            files: BTreeMap::new(),
        };
        for line in lines {
            let f: Vec<&str> = line.split(' ').collect();
            match f.as_slice() {
                ["release", r] => m.release = (*r).to_owned(),
                ["package", n, v, h] => m.packages.push(Package {
                    name: (*n).to_owned(),
                    version: (*v).to_owned(),
                    sha256: (*h).to_owned(),
                }),
                ["module", n] => m.modules.push((*n).to_owned()),
                ["agent", h] => m.agent = (*h).to_owned(),
                ["file", n, h] => {
                    m.files.insert((*n).to_owned(), (*h).to_owned());
                }
                _ => return None,
            }
        }
        (!m.release.is_empty()).then_some(m)
    }

    /// Every file that comes from the packages is there with the recorded hash, and the
    /// modules cover what this build wants of the cached kernel config.
    fn base_ok(&self, cache_dir: &Path) -> bool {
        let wanted = std::fs::read_to_string(cache_dir.join("base/config")).ok().and_then(|c| modules_wanted(&c).ok());
        wanted.is_some_and(|w| w.iter().all(|m| self.modules.contains(m)))
            && base_files(&self.modules).iter().all(|name| {
                self.files.get(name).is_some_and(|sha| file_sha256(&cache_dir.join(name)).as_ref() == Some(sha))
            })
    }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

fn file_sha256(path: &Path) -> Option<String> {
    std::fs::read(path).ok().map(|b| sha256(&b))
}

/// Writes `path` crash-safely: a temp file beside it, fsync, rename, fsync of the directory.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io("cannot create", dir))?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
    f.write_all(bytes).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot fsync", &tmp))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(io("cannot rename into place", path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("cannot fsync the directory", dir))
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, ImageError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let out = cmd.output().map_err(|source| ImageError::Spawn { program, source })?;
    if !out.status.success() {
        return Err(ImageError::Failed {
            command: format!("{cmd:?}"),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out.stdout)
}

/// Downloads the packages into `cache_dir/download` and extracts what the image needs.
fn fetch_base(cache_dir: &Path, options: &ImageOptions) -> Result<Base, ImageError> {
    let work = cache_dir.join("download");
    if work.exists() {
        std::fs::remove_dir_all(&work).map_err(io("cannot clear", &work))?;
    }
    std::fs::create_dir_all(&work).map_err(io("cannot create", &work))?;
    let result = fetch_base_in(cache_dir, &work, options);
    // The .debs and the extracted tree (~400 MiB) are not kept, success or not.
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn download(work: &Path, package: &str, options: &ImageOptions) -> Result<(PathBuf, Package), ImageError> {
    say(options, &format!("apt-get download {package}"));
    let out = Command::new("apt-get")
        .args(["download", "-q", package])
        .current_dir(work)
        .output()
        .map_err(|source| ImageError::Spawn { program: "apt-get".to_owned(), source })?;
    if !out.status.success() {
        return Err(ImageError::Download {
            package: package.to_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let prefix = format!("{package}_");
    let deb = std::fs::read_dir(work)
        .map_err(io("cannot list", work))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb")))
        .ok_or_else(|| {
            ImageError::Package(format!(
                "apt-get download {package} succeeded but left no {prefix}*.deb in {}",
                work.display()
            ))
        })?;
    let field = |name: &str| -> Result<String, ImageError> {
        let v = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg(name))?;
        Ok(String::from_utf8_lossy(&v).trim().to_owned())
    };
    let version = field("Version")?;
    let bytes = std::fs::read(&deb).map_err(io("cannot read", &deb))?;
    Ok((deb, Package { name: package.to_owned(), version, sha256: sha256(&bytes) }))
}

fn fetch_base_in(cache_dir: &Path, work: &Path, options: &ImageOptions) -> Result<Base, ImageError> {
    let (meta_deb, meta) = download(work, KERNEL_METAPACKAGE, options)?;
    let depends =
        String::from_utf8_lossy(&run(Command::new("dpkg-deb").arg("-f").arg(&meta_deb).arg("Depends"))?).into_owned();
    let kernel_pkg = depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|n| n.starts_with("linux-image-") && n != &KERNEL_METAPACKAGE)
        .ok_or_else(|| {
            ImageError::Package(format!("{KERNEL_METAPACKAGE} depends on no linux-image-* package: {depends:?}"))
        })?
        .to_owned();
    let (kernel_deb, kernel) = download(work, &kernel_pkg, options)?;
    let (busybox_deb, busybox) = download(work, BUSYBOX_PACKAGE, options)?;

    let ktree = work.join("kernel");
    run(Command::new("dpkg-deb").arg("-x").arg(&kernel_deb).arg(&ktree))?;
    let btree = work.join("busybox");
    run(Command::new("dpkg-deb").arg("-x").arg(&busybox_deb).arg(&btree))?;

    // The kernel release: the one directory under lib/modules.
    let mods_root = ktree.join("lib/modules");
    let releases: Vec<String> = std::fs::read_dir(&mods_root)
        .map_err(io("cannot list", &mods_root))?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    let [release] = releases.as_slice() else {
        return Err(ImageError::Package(format!(
            "{kernel_pkg} has {} module trees under lib/modules, expected one: {releases:?}",
            releases.len()
        )));
    };
    let release = release.clone();
    let config_path = ktree.join(format!("boot/config-{release}"));
    let config = std::fs::read_to_string(&config_path).map_err(io("cannot read the kernel config", &config_path))?;
    let wanted = modules_wanted(&config)?;
    let index = index_modules(&mods_root.join(&release))?;
    let order = load_order(&wanted, &index)?;

    let vmlinuz = ktree.join(format!("boot/vmlinuz-{release}"));
    copy_atomic(&vmlinuz, &cache_dir.join("vmlinuz"))?;
    copy_atomic(&config_path, &cache_dir.join("base/config"))?;
    copy_atomic(&btree.join("bin/busybox"), &cache_dir.join("base/busybox"))?;
    for m in &order {
        copy_atomic(&index[m], &cache_dir.join(format!("base/modules/{m}.ko")))?;
    }
    Ok(Base { packages: vec![meta, kernel, busybox], release, modules: order, cached: false })
}

fn copy_atomic(from: &Path, to: &Path) -> Result<(), ImageError> {
    let bytes = std::fs::read(from).map_err(io("cannot read", from))?;
    write_atomic(to, &bytes)
}

/// The modules to load for the options the guest needs (none for those built in); an option
/// that is neither is an error naming it.
pub fn modules_wanted(config: &str) -> Result<Vec<String>, ImageError> {
    let value = |option: &str| -> String {
        let set = format!("{option}=");
        let unset = format!("# {option} is not set");
        config
            .lines()
            .find_map(|l| {
                if let Some(v) = l.strip_prefix(&set) {
                    Some(v.to_owned())
                } else if l == unset {
                    Some("n".to_owned())
                } else {
                    None
                }
            })
            .unwrap_or_else(|| "absent".to_owned())
    };
    for option in BUILTIN {
        let v = value(option);
        if v != "y" {
            return Err(ImageError::KernelConfig { option, need: "y", found: v });
        }
    }
    let mut modules = Vec::new();
    for (option, module) in BUILTIN_OR_MODULE {
        match value(option).as_str() {
            "y" => {}
            "m" => modules.push(module.to_owned()),
            other => return Err(ImageError::KernelConfig { option, need: "y or m", found: other.to_owned() }),
        }
    }
    Ok(modules)
}

/// Module name (dashes as underscores, as the kernel names them) to .ko path, for every module
/// under `dir`. Compressed modules (.ko.xz etc.) are not supported: busybox's insmod would need
/// them decompressed, and Debian bookworm ships them plain (CONFIG_MODULE_COMPRESS_NONE).
fn index_modules(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ImageError> {
    let mut index = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io("cannot list", &d))? {
            let e = e.map_err(io("cannot list", &d))?;
            let p = e.path();
            let ft = e.file_type().map_err(io("cannot stat", &p))?;
            if ft.is_dir() {
                stack.push(p);
            } else if let Some(stem) = p.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".ko")) {
                index.insert(stem.replace('-', "_"), p.clone());
            }
        }
    }
    Ok(index)
}

/// `wanted` and their dependencies (from each module's .modinfo `depends=`; Debian's package
/// has no modules.dep, depmod makes it at install time), dependencies first.
fn load_order(wanted: &[String], index: &BTreeMap<String, PathBuf>) -> Result<Vec<String>, ImageError> {
    fn visit(
        m: &str,
        index: &BTreeMap<String, PathBuf>,
        order: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), ImageError> {
        if order.iter().any(|o| o == m) {
            return Ok(());
        }
        if path.iter().any(|p| p == m) {
            return Err(ImageError::Module {
                module: m.to_owned(),
                reason: format!("dependency cycle {}", path.join(" -> ")),
            });
        }
        let file = index.get(m).ok_or_else(|| ImageError::Module {
            module: m.to_owned(),
            reason: "not in the kernel package".to_owned(),
        })?;
        let bytes = std::fs::read(file).map_err(io("cannot read", file))?;
        let info = modinfo(&bytes).map_err(|reason| ImageError::Module { module: m.to_owned(), reason })?;
        path.push(m.to_owned());
        for dep in info.get("depends").map(String::as_str).unwrap_or("").split(',').filter(|d| !d.is_empty()) {
            visit(&dep.replace('-', "_"), index, order, path)?;
        }
        path.pop();
        order.push(m.to_owned());
        Ok(())
    }
    let mut order = Vec::new();
    for m in wanted {
        visit(m, index, &mut order, &mut Vec::new())?;
    }
    Ok(order)
}

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn le_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Checks the ELF64 little-endian header; `Err` says what is wrong.
fn elf64(b: &[u8]) -> Result<(), String> {
    if b.len() < 64 || b[..4] != *b"\x7fELF" {
        return Err("is not an ELF file".to_owned());
    }
    if b[4] != 2 || b[5] != 1 {
        return Err("is not a 64-bit little-endian ELF file".to_owned());
    }
    Ok(())
}

/// The key=value pairs of a kernel module's `.modinfo` section.
pub fn modinfo(b: &[u8]) -> Result<BTreeMap<String, String>, String> {
    elf64(b)?;
    let bad = || "has a malformed ELF section table".to_owned();
    let shoff = usize::try_from(le_u64(b, 0x28).ok_or_else(bad)?).map_err(|_| bad())?;
    let shentsize = usize::from(le_u16(b, 0x3a).ok_or_else(bad)?);
    let shnum = usize::from(le_u16(b, 0x3c).ok_or_else(bad)?);
    let shstrndx = usize::from(le_u16(b, 0x3e).ok_or_else(bad)?);
    if shentsize < 64 || shstrndx >= shnum {
        return Err(bad());
    }
    let section = |i: usize| -> Option<(u32, &[u8])> {
        let h = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = le_u32(b, h)?;
        let off = usize::try_from(le_u64(b, h + 24)?).ok()?;
        let size = usize::try_from(le_u64(b, h + 32)?).ok()?;
        Some((name, b.get(off..off.checked_add(size)?)?))
    };
    let (_, strtab) = section(shstrndx).ok_or_else(bad)?;
    for i in 0..shnum {
        let (name, data) = section(i).ok_or_else(bad)?;
        let name = strtab.get(name as usize..).ok_or_else(bad)?;
        let name = name.split(|&c| c == 0).next().unwrap_or(&[]);
        if name == b".modinfo" {
            return Ok(data
                .split(|&c| c == 0)
                .filter_map(|kv| std::str::from_utf8(kv).ok()?.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect());
        }
    }
    Err("has no .modinfo section (not a kernel module?)".to_owned())
}

/// The agent must be a static x86_64 ELF executable: no PT_INTERP (the guest has no libc).
fn check_static_x86_64(path: &Path, b: &[u8]) -> Result<(), ImageError> {
    let err = |reason: String| ImageError::Agent { path: path.to_owned(), reason };
    elf64(b).map_err(err)?;
    if le_u16(b, 0x12) != Some(62) {
        return Err(err("is not an x86_64 executable".to_owned()));
    }
    let bad = || err("has a malformed ELF program header table".to_owned());
    let phoff = usize::try_from(le_u64(b, 0x20).ok_or_else(bad)?).map_err(|_| bad())?;
    let phentsize = usize::from(le_u16(b, 0x36).ok_or_else(bad)?);
    let phnum = usize::from(le_u16(b, 0x38).ok_or_else(bad)?);
    for i in 0..phnum {
        let at = phoff.checked_add(i.checked_mul(phentsize).ok_or_else(bad)?).ok_or_else(bad)?;
        if le_u32(b, at).ok_or_else(bad)? == 3 {
            return Err(err(format!("is dynamically linked (has an ELF interpreter); build it for {AGENT_TARGET}")));
        }
    }
    Ok(())
}

/// The workspace this crate was compiled in (for building the agent).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The agent binary: the option, the environment variable, or a cargo build.
fn agent_binary(options: &ImageOptions) -> Result<PathBuf, ImageError> {
    if let Some(p) = &options.agent {
        return Ok(p.clone());
    }
    if let Some(p) = std::env::var_os(AGENT_ENV).filter(|p| !p.is_empty()) {
        return Ok(PathBuf::from(p));
    }
    let ws = workspace_root();
    if !ws.join("Cargo.toml").is_file() || !ws.join("tools/guest-agent/Cargo.toml").is_file() {
        return Err(ImageError::NoWorkspace(ws));
    }
    // Its own target directory: the caller may be a `cargo test` holding the lock of the
    // workspace's target directory, and the musl build shares nothing with it anyway.
    let target_dir = ws.join("target/guest-agent");
    say(options, &format!("building the agent (cargo build --release --target {AGENT_TARGET} --features boot-check)"));
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo
        .current_dir(&ws)
        .args([
            "build",
            "--release",
            "--quiet",
            "--target",
            AGENT_TARGET,
            "-p",
            "ppn-guest-agent",
            "--bin",
            "ppn-guest-agent",
            "--features",
            "boot-check",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // Stripped, no debug info: the binary goes into every guest's initramfs (the workspace's
    // release profile keeps line tables, which makes it ~2.5x larger).
    cargo.env("CARGO_PROFILE_RELEASE_DEBUG", "false").env("CARGO_PROFILE_RELEASE_STRIP", "symbols");
    for k in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS"]
    {
        cargo.env_remove(k);
    }
    run(&mut cargo).map_err(|e| match e {
        ImageError::Failed { command, status, stderr } => ImageError::Failed {
            command,
            status,
            stderr: format!(
                "{stderr}\n(is the rustup target installed? `rustup target add {AGENT_TARGET}`, or scripts/setup)"
            ),
        },
        e => e,
    })?;
    Ok(target_dir.join(AGENT_TARGET).join("release/ppn-guest-agent"))
}

/// Of the modules in load order, those only the verified boot needs (the dependency closure
/// of its options' modules, less that of the others), which /init loads only when asked for a
/// verified root: they cost every other boot seconds under TCG.
fn verity_only(cache_dir: &Path, modules: &[String]) -> Result<Vec<String>, ImageError> {
    let closure = |wanted: &[(&str, &str)]| -> Result<Vec<String>, ImageError> {
        let mut seen: Vec<String> = Vec::new();
        let mut stack: Vec<String> = wanted.iter().map(|(_, m)| (*m).to_owned()).collect();
        while let Some(m) = stack.pop() {
            if seen.contains(&m) || !modules.contains(&m) {
                continue;
            }
            let path = cache_dir.join(format!("base/modules/{m}.ko"));
            let bytes = std::fs::read(&path).map_err(io("cannot read the cached module", &path))?;
            let info = modinfo(&bytes).map_err(|reason| ImageError::Module { module: m.clone(), reason })?;
            for dep in info.get("depends").map(String::as_str).unwrap_or("").split(',').filter(|d| !d.is_empty()) {
                stack.push(dep.replace('-', "_"));
            }
            seen.push(m);
        }
        Ok(seen)
    };
    let base = closure(&BUILTIN_OR_MODULE[..BASE_MODULE_OPTIONS])?;
    let verity = closure(&BUILTIN_OR_MODULE[BASE_MODULE_OPTIONS..])?;
    Ok(modules.iter().filter(|m| verity.contains(m) && !base.contains(m)).cloned().collect())
}

/// The /init script: mounts, loads the modules in order (those in `verity` only when the kernel
/// command line carries `ppn.root=verity`, and then opens the verified root filesystem or
/// refuses to boot: docs/attestation.md), runs the agent forever.
pub fn init_script(modules: &[String], verity: &[String]) -> String {
    let always: Vec<&str> = modules.iter().filter(|m| !verity.contains(m)).map(String::as_str).collect();
    format!(
        r#"#!/bin/sh
# PPN guest /init (written by ppn-guest-agent's image builder; see docs/guest.md).
/bin/busybox --install -s /bin
export PATH=/bin:/sbin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
echo "ppn-guest: kernel $(uname -r), loading {modules}"
for m in {modules}; do
    insmod /lib/modules/$m.ko || echo "ppn-guest: insmod $m failed"
done

refuse() {{
    echo "ppn-guest: REFUSING TO BOOT: $*"
    sync
    poweroff -f
    sleep 10
}}

verified_root() {{
    echo "ppn-guest: verified boot: loading {verity_modules}"
    for m in {verity_modules}; do
        insmod /lib/modules/$m.ko || echo "ppn-guest: insmod $m failed"
    done
    fw=/sys/firmware/qemu_fw_cfg/by_name
    statement=$fw/{fw_prov}/raw
    trust=$fw/{fw_trust}/raw
    [ -r $statement ] || refuse "no provisioning statement from the host (fw_cfg {fw_prov})"
    [ -r $trust ] || refuse "no fleet trust file from the host (fw_cfg {fw_trust})"
    disk=/dev/vda
    n=0
    while [ ! -b $disk ] && [ $n -lt 50 ]; do sleep 0.1; n=$((n + 1)); done
    [ -b $disk ] || refuse "no root disk ($disk)"
    checked=$(/bin/ppn-guest-agent boot-check $statement $trust $disk) || refuse "$checked"
    set -- $checked
    root=$1 offset=$2 image=$3
    veritysetup verify $disk $disk $root --hash-offset=$offset >/tmp/verity.log 2>&1 \
        || refuse "the root disk does not match the signed root hash $root of image $image: $(tail -n 1 /tmp/verity.log)"
    veritysetup open $disk ppn-root $disk $root --hash-offset=$offset >/tmp/verity.log 2>&1 \
        || refuse "veritysetup open: $(tail -n 1 /tmp/verity.log)"
    mkdir -p /root
    mount -t ext4 -o ro /dev/mapper/ppn-root /root || refuse "mounting the verified root filesystem failed"
    echo $root > /tmp/ppn-root-hash
    echo "ppn-guest: verified boot: image $image, dm-verity root hash $root, signature checked against the fleet trust; root filesystem mounted read-only on /root"
}}
case " $(cat /proc/cmdline) " in
    *" {verity} "*) verified_root ;;
esac
# The initramfs stays in memory (ramfs): drop what is no longer needed, so that it costs the
# guest nothing (freed pages are zeroed: init_on_free) and a live migration does not carry it.
rm -rf /sbin/veritysetup /lib/x86_64-linux-gnu /lib64 /usr /lib/modules

echo "ppn-guest: starting the agent"
while true; do
    /bin/ppn-guest-agent
    echo "ppn-guest: agent exited ($?), restarting in 1 s"
    sleep 1
done
"#,
        modules = always.join(" "),
        verity_modules = verity.join(" "),
        fw_prov = FW_CFG_PROVISIONING,
        fw_trust = FW_CFG_TRUST,
        verity = VERITY_CMDLINE,
    )
}

/// Where veritysetup is on the host: PATH, then /usr/sbin and /sbin (Debian leaves them off
/// a user's PATH).
fn host_veritysetup() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path.into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join("veritysetup"))
        .find(|p| p.is_file())
}

/// The host's `veritysetup` and every shared library it loads (from `ldd`, the dynamic loader
/// included), as (path in the initramfs, bytes): the guest's verified boot runs it, as
/// initramfs-tools' `copy_exec` would.
fn veritysetup_files() -> Result<Vec<(String, Vec<u8>)>, ImageError> {
    let bin = host_veritysetup().ok_or_else(|| ImageError::Package(
        "veritysetup is not installed on this host: the guest's verified boot carries it (scripts/setup installs cryptsetup-bin)".into(),
    ))?;
    let out = run(Command::new("ldd").arg(&bin))?;
    let mut files = vec![("sbin/veritysetup".to_owned(), std::fs::read(&bin).map_err(io("cannot read", &bin))?)];
    for line in String::from_utf8_lossy(&out).lines() {
        // "libx.so.1 => /lib/x86_64-linux-gnu/libx.so.1 (0x...)" or "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.split_whitespace().next(),
            None => line.split_whitespace().next().filter(|p| p.starts_with('/')),
        };
        let Some(path) = path.filter(|p| p.starts_with('/')) else { continue };
        let p = Path::new(path);
        files.push((path.trim_start_matches('/').to_owned(), std::fs::read(p).map_err(io("cannot read", p))?));
    }
    Ok(files)
}

/// The initramfs bytes from the cached base files and the agent, and the second archive a
/// verified boot adds (its modules, `veritysetup` and its libraries).
fn initramfs(cache_dir: &Path, modules: &[String], agent: &[u8]) -> Result<(Vec<u8>, Vec<u8>), ImageError> {
    let read = |name: &str| -> Result<Vec<u8>, ImageError> {
        let p = cache_dir.join(name);
        std::fs::read(&p).map_err(io("cannot read the cached file", &p))
    };
    let verity = verity_only(cache_dir, modules)?;
    let mut w = Writer::new();
    for d in ["bin", "sbin", "dev", "proc", "sys", "lib", "lib/modules", "tmp", "run"] {
        w.dir(d, 0o755)?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.file("bin/busybox", 0o755, &read("base/busybox")?)?;
    w.symlink("bin/sh", "busybox")?;
    w.file("bin/ppn-guest-agent", 0o755, agent)?;
    for m in modules.iter().filter(|m| !verity.contains(m)) {
        w.file(&format!("lib/modules/{m}.ko"), 0o644, &read(&format!("base/modules/{m}.ko"))?)?;
    }
    w.file("init", 0o755, init_script(modules, &verity).as_bytes())?;

    let mut x = Writer::new();
    for m in &verity {
        x.file(&format!("lib/modules/{m}.ko"), 0o644, &read(&format!("base/modules/{m}.ko"))?)?;
    }
    let mut dirs: Vec<String> = Vec::new();
    for (path, bytes) in veritysetup_files()? {
        let parent = Path::new(&path).parent().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let mut at = String::new();
        for part in parent.split('/').filter(|p| !p.is_empty()) {
            at = if at.is_empty() { part.to_owned() } else { format!("{at}/{part}") };
            if !["bin", "sbin", "lib"].contains(&at.as_str()) && !dirs.contains(&at) {
                x.dir(&at, 0o755)?;
                dirs.push(at.clone());
            }
        }
        x.file(&path, 0o755, &bytes)?;
    }
    Ok((w.finish(), x.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_gives_the_modules_and_names_what_is_missing() {
        let mut config: String = BUILTIN.iter().map(|o| format!("{o}=y\n")).collect();
        config += "CONFIG_VIRTIO_PCI=m\nCONFIG_VIRTIO_MEM=m\nCONFIG_VIRTIO_BALLOON=y\nCONFIG_VIRTIO_CONSOLE=m\n";
        config += "CONFIG_VIRTIO_BLK=m\nCONFIG_BLK_DEV_DM=y\nCONFIG_DM_VERITY=m\nCONFIG_FW_CFG_SYSFS=m\n";
        config += "CONFIG_CRYPTO_CRC32C=y\nCONFIG_EXT4_FS=m\n";
        assert_eq!(
            modules_wanted(&config).unwrap(),
            ["virtio_pci", "virtio_mem", "virtio_console", "virtio_blk", "dm_verity", "qemu_fw_cfg", "ext4"]
        );
        let config = config.replace("CONFIG_VIRTIO_MEM=m", "# CONFIG_VIRTIO_MEM is not set");
        let e = modules_wanted(&config).unwrap_err();
        assert!(e.to_string().contains("CONFIG_VIRTIO_MEM (must be y or m; found n)"), "{e}");
        let config = config.replace("CONFIG_MEMORY_HOTREMOVE=y\n", "");
        let e = modules_wanted(&config).unwrap_err();
        assert!(e.to_string().contains("CONFIG_MEMORY_HOTREMOVE (must be y; found absent)"), "{e}");
    }

    #[test]
    fn manifest_round_trips() {
        let mut files = BTreeMap::new();
        files.insert("vmlinuz".to_owned(), "ab".repeat(32));
        let m = Manifest {
            packages: vec![Package {
                name: "busybox-static".into(),
                version: "1:1.35.0-4+deb12u1+b1".into(),
                sha256: "cd".repeat(32),
            }],
            release: "6.1.0-57-amd64".into(),
            modules: vec!["virtio_ring".into(), "virtio".into()],
            agent: "ef".repeat(32),
            files,
        };
        assert_eq!(Manifest::parse(&m.render()), Some(m.clone()));
        assert_eq!(Manifest::parse(&m.render().replace("manifest 1", "manifest 2")), None);
        assert_eq!(Manifest::parse(&(m.render() + "junk\n")), None);
    }

    #[test]
    fn modinfo_rejects_non_elf_and_truncated_input() {
        assert!(modinfo(b"not an elf").unwrap_err().contains("not an ELF"));
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x28] = 0xff; // section table beyond the end
        b[0x3a] = 64;
        b[0x3c] = 2;
        assert!(modinfo(&b).is_err());
    }

    #[test]
    fn write_atomic_replaces_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/f");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two!").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"two!");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("sub")).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "temp files left behind");
    }

    #[test]
    fn stale_temp_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("base/modules")).unwrap();
        for f in
            [".initrd.cpio.tmp-123", "base/.busybox.tmp-9", "base/modules/.virtio.ko.tmp-1", "manifest", "base/busybox"]
        {
            std::fs::write(dir.path().join(f), b"x").unwrap();
        }
        remove_stale_temps(dir.path());
        assert!(!dir.path().join(".initrd.cpio.tmp-123").exists());
        assert!(!dir.path().join("base/.busybox.tmp-9").exists());
        assert!(!dir.path().join("base/modules/.virtio.ko.tmp-1").exists());
        assert!(dir.path().join("manifest").exists() && dir.path().join("base/busybox").exists());
    }

    #[test]
    fn init_loads_modules_in_order_and_never_ends() {
        let s = init_script(&["virtio_ring".into(), "virtio".into(), "dm_mod".into()], &["dm_mod".into()]);
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("for m in virtio_ring virtio; do"));
        assert!(s.contains("while true; do\n    /bin/ppn-guest-agent"));
        // The verified boot runs only when the command line asks for it, and refuses loudly.
        assert!(s.contains(&format!("*\" {VERITY_CMDLINE} \"*) verified_root ;;")), "{s}");
        assert!(s.contains("REFUSING TO BOOT"));
        assert!(s.contains("veritysetup verify $disk $disk $root --hash-offset=$offset"));
    }
}
