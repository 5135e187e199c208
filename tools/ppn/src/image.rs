//! `ppn image build|run`: the seL4 node image (Microkit PDs around the trusted cores).
//!
//! Needs the Microkit SDK 2.3.0 (`MICROKIT_SDK`) and, to build, the PD toolchain pinned in
//! `system/microkit/rust-toolchain.toml`; see `docs/sel4-image.md`.

use clap::Subcommand;
use std::path::{Path, PathBuf};
use std::process::{Command as Process, ExitCode};

const SDF: &str = "sdf/qemu_virt_aarch64.system";

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Seal a guest image: a copy with its dm-verity hash tree appended, and the node TCB's
    /// signed provisioning statement for its root hash (docs/attestation.md).
    Seal(crate::seal::SealArgs),
    /// Build the PDs and the bootable image (loader.img) with the Microkit tool.
    Build {
        #[arg(long, default_value = "qemu_virt_aarch64")]
        board: String,
        /// Microkit kernel configuration: debug (prints on the PL011) or release.
        #[arg(long, default_value = "debug")]
        config: String,
        /// The repository checkout (holds system/microkit and sdf/).
        #[arg(long, default_value = ".")]
        repo: PathBuf,
        /// Where loader.img, report.txt and the PD ELFs go.
        #[arg(long, default_value = "target/image")]
        out: PathBuf,
    },
    /// Boot the image in qemu-system-aarch64 (TCG) with the link on a Unix socket; runs in the
    /// foreground, printing the PL011 debug console, until Ctrl-C.
    Run {
        /// The Unix socket the proxy (or `ppn tcb status`) connects to.
        #[arg(long)]
        socket: PathBuf,
        #[arg(long, default_value = "target/image/loader.img")]
        image: PathBuf,
        /// The ledger's disk: node and ledger journals (created, sparse, 64 MiB, mode 0600, if missing).
        #[arg(long, default_value = "target/image/blk.img")]
        disk: PathBuf,
        /// The lender's own disk: its journal (created, sparse, 16 MiB, mode 0600, if missing).
        /// Default: `lender.img` next to `--disk`.
        #[arg(long)]
        lender_disk: Option<PathBuf>,
    },
}

pub async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Seal(args) => crate::seal::seal(&args).await,
        Command::Build { board, config, repo, out } => build(&board, &config, &repo, &out),
        Command::Run { socket, image, disk, lender_disk } => {
            let lender_disk = lender_disk.unwrap_or_else(|| disk.with_file_name("lender.img"));
            boot(&socket, &image, &disk, &lender_disk)
        }
    }
}

fn sdk() -> Result<PathBuf, String> {
    let sdk = std::env::var_os("MICROKIT_SDK")
        .map(PathBuf::from)
        .ok_or("MICROKIT_SDK is not set: the seL4 image needs the Microkit SDK 2.3.0 (see docs/sel4-image.md)")?;
    if !sdk.join("bin/microkit").is_file() {
        return Err(format!("MICROKIT_SDK={} has no bin/microkit", sdk.display()));
    }
    Ok(sdk)
}

fn status(what: &str, cmd: &mut Process) -> Result<(), String> {
    let s = cmd.status().map_err(|e| format!("{what}: {e}"))?;
    if s.success() { Ok(()) } else { Err(format!("{what} failed ({s})")) }
}

fn build(board: &str, config: &str, repo: &Path, out: &Path) -> Result<ExitCode, String> {
    let sdk = sdk()?;
    let include = sdk.join("board").join(board).join(config).join("include");
    if !include.is_dir() {
        return Err(format!("the SDK has no board {board} in config {config} ({} is missing)", include.display()));
    }
    let ws = repo.join("system/microkit");
    if !ws.join("Cargo.toml").is_file() {
        return Err(format!("{} is not a PPN Fabric checkout (no system/microkit)", repo.display()));
    }
    // The PD workspace picks its own toolchain and target: nothing of the caller's cargo or
    // rustup environment may leak into it.
    let mut cargo = Process::new("cargo");
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("CARGO") || k == "RUSTUP_TOOLCHAIN" || k == "RUSTFLAGS" || k == "RUSTC" {
            cargo.env_remove(k);
        }
    }
    cargo.current_dir(&ws).args(["build", "--release"]).env("SEL4_INCLUDE_DIRS", &include);
    eprintln!("ppn image: building the PDs in {}", ws.display());
    status("cargo build of the PDs", &mut cargo)?;
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    // Every PD of the layout, by the program image name the SDF gives it.
    for pd in ppn_layout::PDS {
        let elf = ws.join("target/aarch64-ppn-sel4/release").join(pd.program_image);
        std::fs::copy(&elf, out.join(pd.program_image)).map_err(|e| format!("{}: {e}", elf.display()))?;
    }
    let image = out.join("loader.img");
    let report = out.join("report.txt");
    let mut microkit = Process::new(sdk.join("bin/microkit"));
    microkit.arg(repo.join(SDF)).arg("--search-path").arg(out).args(["--board", board, "--config", config]);
    microkit.arg("-o").arg(&image).arg("-r").arg(&report);
    status("microkit", &mut microkit)?;
    println!("image   {}", image.display());
    println!("report  {}", report.display());
    Ok(ExitCode::SUCCESS)
}

/// The QEMU command line: devices pinned to the virtio-mmio transports `ppn-layout` gives them.
pub fn qemu_args(image: &Path, socket: &Path, disk: &Path, lender_disk: &Path) -> Vec<String> {
    use ppn_layout::devices;
    let on = |d: &ppn_layout::Device| {
        format!("{},bus=virtio-mmio-bus.{}", d.qemu_device().unwrap_or_default(), d.transport().unwrap_or_default())
    };
    [
        // The PL031 real-time clock (the ledger's wall clock) follows the host's UTC clock.
        "-machine virt,virtualization=on -cpu cortex-a53 -m size=2G -nographic -serial mon:stdio -monitor none \
         -rtc base=utc,clock=host"
            .split(' ')
            .map(String::from)
            .collect::<Vec<_>>(),
        vec!["-device".into(), format!("loader,file={},addr=0x70000000,cpu-num=0", image.display())],
        vec!["-chardev".into(), format!("socket,id=link,path={},server=on,wait=off", socket.display())],
        vec!["-device".into(), on(&devices::CONSOLE)],
        vec!["-device".into(), "virtconsole,chardev=link".into()],
        vec!["-drive".into(), format!("file={},if=none,format=raw,id=blk0", disk.display())],
        vec!["-device".into(), format!("{},drive=blk0", on(&devices::BLK))],
        vec!["-object".into(), "rng-random,id=rng0,filename=/dev/urandom".into()],
        vec!["-device".into(), format!("{},rng=rng0", on(&devices::RNG))],
        // The lender PD's own disk, on its own transport: the ledger PD cannot reach it.
        vec!["-drive".into(), format!("file={},if=none,format=raw,id=blk1", lender_disk.display())],
        vec!["-device".into(), format!("{},drive=blk1", on(&devices::LENDER_BLK))],
    ]
    .concat()
}

/// Creates `disk` (sparse, zeroed, `size` bytes, owner only) if it is missing.
fn create_disk(disk: &Path, size: u64) -> Result<(), String> {
    if disk.exists() {
        return Ok(());
    }
    // Owner only: the node journal holds the identity seed.
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(disk)
        .map_err(|e| format!("{}: {e}", disk.display()))?;
    f.set_len(size).map_err(|e| format!("{}: {e}", disk.display()))
}

fn boot(socket: &Path, image: &Path, disk: &Path, lender_disk: &Path) -> Result<ExitCode, String> {
    if !image.is_file() {
        return Err(format!("{} does not exist: run `ppn image build` first", image.display()));
    }
    if disk == lender_disk {
        return Err(format!("the ledger and the lender need two disks, not both {}", disk.display()));
    }
    create_disk(disk, ppn_layout::disk::SIZE_BYTES)?;
    create_disk(lender_disk, ppn_layout::lender_disk::SIZE_BYTES)?;
    if socket.exists() {
        std::fs::remove_file(socket).map_err(|e| format!("{}: {e}", socket.display()))?;
    }
    eprintln!("ppn image: booting {} (TCG); link on {}; Ctrl-C stops it", image.display(), socket.display());
    let mut qemu = Process::new("qemu-system-aarch64");
    qemu.args(qemu_args(image, socket, disk, lender_disk));
    status("qemu-system-aarch64", &mut qemu)?;
    Ok(ExitCode::SUCCESS)
}
