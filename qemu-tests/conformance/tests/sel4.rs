//! The conformance suite against the booted seL4 image, when the Microkit SDK is present.
//!
//! Without `MICROKIT_SDK` this test says it skipped and returns. With it, it builds the image
//! with `ppn image build`, boots it with `ppn image run` (QEMU, TCG) on a fresh disk, runs every
//! socket-only check against the link exactly as `hosted.rs` does against `ppn-tcb`, then the
//! restart check: QEMU is killed with SIGKILL (a power cut for the image) and booted again on the
//! same disk, and what was written before must be in force after.

use ppn_conformance::{check_persistence_across_restart, checks, locate_bin};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `ppn image run` and the QEMU it started (one process group), killed with `signal` on drop.
struct Boot {
    child: std::process::Child,
    signal: &'static str,
}

impl Boot {
    /// Boots `image` on `disk`, the link on `socket`, the console appended to `log`, and waits
    /// until the TCB answers a status request.
    fn start(ppn: &Path, image: &Path, disk: &Path, socket: &Path, log: &Path) -> Result<Boot, String> {
        let out = std::fs::File::options().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        let child = Command::new(ppn)
            .args(["image", "run", "--socket"])
            .arg(socket)
            .arg("--image")
            .arg(image)
            .arg("--disk")
            .arg(disk)
            .stdin(Stdio::null())
            .stdout(out.try_clone().map_err(|e| e.to_string())?)
            .stderr(out)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("ppn image run: {e}"))?;
        let boot = Boot { child, signal: "TERM" };
        // QEMU serves the socket at once; the TCB answers once the PDs are up.
        let start = Instant::now();
        loop {
            let up = socket.exists()
                && ppn_tcb_client::blocking::Client::connect(socket, Duration::from_secs(5))
                    .and_then(|mut c| c.status())
                    .is_ok();
            if up {
                return Ok(boot);
            }
            if start.elapsed() > Duration::from_secs(120) {
                return Err(format!("the image did not answer in 120 s:\n{}", console(log)));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Boot {
    fn drop(&mut self) {
        // `--` so that kill(1) takes the negative number as a process group, not an option.
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-s", self.signal, "--"]).arg(group).status();
        let _ = self.child.wait();
    }
}

fn console(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}

#[test]
fn conformance_against_the_sel4_image() {
    if std::env::var_os("MICROKIT_SDK").is_none() {
        eprintln!(
            "skipped: MICROKIT_SDK is not set (seL4 image tests need the Microkit SDK 2.3.0; see docs/sel4-image.md)"
        );
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let ppn = locate_bin("ppn");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("image");
    let built =
        Command::new(&ppn).args(["image", "build", "--repo"]).arg(&repo).arg("--out").arg(&out).status().unwrap();
    assert!(built.success(), "ppn image build failed");
    let image = out.join("loader.img");
    let disk: PathBuf = dir.path().join("blk.img");
    let socket = dir.path().join("link.sock");
    let log = dir.path().join("console.log");

    let mut boot = Some(Boot::start(&ppn, &image, &disk, &socket, &log).unwrap_or_else(|e| panic!("{e}")));
    for (name, check) in checks() {
        match check(&socket) {
            Ok(what) => eprintln!("ok {name}: {what}"),
            Err(why) => panic!("{name} on seL4: {why}\nconsole:\n{}", console(&log)),
        }
    }

    let mut restart = || {
        if let Some(mut b) = boot.take() {
            b.signal = "KILL";
        }
        boot = Some(Boot::start(&ppn, &image, &disk, &socket, &log)?);
        Ok(())
    };
    match check_persistence_across_restart(&socket, &mut restart) {
        Ok(what) => eprintln!("ok restart-persistence: {what}"),
        Err(why) => panic!("restart-persistence on seL4: {why}\nconsole:\n{}", console(&log)),
    }
    let text = console(&log);
    assert!(text.contains("ledger: ready: boot 1, new identity"), "first boot:\n{text}");
    assert!(text.contains("ledger: ready: boot 2, identity from the disk"), "second boot:\n{text}");
}
