//! The conformance suite against the booted seL4 image, when the Microkit SDK is present.
//!
//! Without `MICROKIT_SDK` this test says it skipped and returns. With it, it builds the image
//! with `ppn image build`, boots it with `ppn image run` (QEMU, TCG), and runs every socket-only
//! check against the link, exactly as `hosted.rs` does against `ppn-tcb`.

use ppn_conformance::{checks, locate_bin};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Checks that do not pass on seL4 yet, and why. When one starts passing the test fails, so
/// that this list only ever shrinks.
const KNOWN_SEL4_GAPS: &[(&str, &str)] =
    &[("ledger-lifecycle", "the image has no trusted clock: expiry is judged by build time + uptime")];

/// Stops `ppn image run` and the QEMU it started (one process group).
struct Boot(std::process::Child);

impl Drop for Boot {
    fn drop(&mut self) {
        // `--` so that kill(1) takes the negative number as a process group, not an option.
        let _ = Command::new("kill").args(["-s", "TERM", "--"]).arg(format!("-{}", self.0.id())).status();
        let _ = self.0.wait();
    }
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

    let socket = dir.path().join("link.sock");
    let log = std::fs::File::create(dir.path().join("console.log")).unwrap();
    let child = Command::new(&ppn)
        .args(["image", "run", "--socket"])
        .arg(&socket)
        .arg("--image")
        .arg(out.join("loader.img"))
        .arg("--disk")
        .arg(out.join("blk.img"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .process_group(0)
        .spawn()
        .unwrap();
    let _boot = Boot(child);
    let console = || std::fs::read_to_string(dir.path().join("console.log")).unwrap_or_default();

    // QEMU serves the socket at once; the TCB answers once the PDs are up.
    let start = Instant::now();
    loop {
        let up = socket.exists()
            && ppn_tcb_client::blocking::Client::connect(&socket, Duration::from_secs(5))
                .and_then(|mut c| c.call(&ppn_wire::Request::Node(ppn_wire::message::NodeRequest::Status)))
                .is_ok();
        if up {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(120), "the image did not answer in 120 s:\n{}", console());
        std::thread::sleep(Duration::from_millis(500));
    }

    for (name, check) in checks() {
        let result = check(&socket);
        match KNOWN_SEL4_GAPS.iter().find(|(gap, _)| *gap == name) {
            Some((_, why)) => {
                assert!(result.is_err(), "{name} now passes on seL4: remove it from KNOWN_SEL4_GAPS");
                eprintln!("known gap {name} ({why}): {}", result.unwrap_err());
            }
            None => match result {
                Ok(what) => eprintln!("ok {name}: {what}"),
                Err(why) => panic!("{name} on seL4: {why}\nconsole:\n{}", console()),
            },
        }
    }
}
