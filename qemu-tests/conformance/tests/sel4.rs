//! The conformance suite against the booted seL4 image, when the Microkit SDK is present.
//!
//! Without `MICROKIT_SDK` this test says it skipped and returns. With it, it builds the image
//! with `ppn image build`, boots it with `ppn image run` (QEMU, TCG) on a fresh disk, runs every
//! socket-only check against the link exactly as `hosted.rs` does against `ppn-tcb`, then the
//! restart check: QEMU is killed with SIGKILL (a power cut for the image) and booted again on the
//! same disks, and what was written before must be in force after.
//!
//! `lending_between_the_sel4_image_and_a_hosted_tcb` pairs the image with a hosted `ppn-tcb`
//! (the pairing ceremony, driven here as `ppn fleet` drives it) and runs `check_lending` with the
//! image's lender PD as the lender and the hosted TCB as the borrower; its restart power-cuts the
//! image and boots it again on the same two disks.
//!
//! Both tests share one image build.

mod support {
    pub mod attest;
}

use ppn_conformance::{HostedTcb, check_lending, check_persistence_across_restart, checks, locate_bin};
use ppn_tcb_client::blocking::Client;
use ppn_tcb_client::calls;
use ppn_wire::service::{IngestOutcome, PairRole, ServiceState};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// `ppn image run` and the QEMU it started (one process group), killed with `signal` on drop.
struct Boot {
    child: std::process::Child,
    signal: &'static str,
}

impl Boot {
    /// Boots `image` on `disk` (and the lender's `lender.img` next to it), the link on
    /// `socket`, the console appended to `log`, and waits until the TCB answers a status request.
    fn start(ppn: &Path, image: &Path, disk: &Path, socket: &Path, log: &Path) -> Result<Boot, String> {
        let out = std::fs::File::options().create(true).append(true).open(log).map_err(|e| e.to_string())?;
        let started = Instant::now();
        let child = Command::new(ppn)
            .args(["image", "run", "--socket"])
            .arg(socket)
            .arg("--image")
            .arg(image)
            .arg("--disk")
            .arg(disk)
            .arg("--lender-disk")
            .arg(disk.with_file_name("lender.img"))
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
                eprintln!("image up in {} ms", started.elapsed().as_millis());
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

/// True (after saying so) when the SDK is missing.
fn skip() -> bool {
    if std::env::var_os("MICROKIT_SDK").is_none() {
        eprintln!(
            "skipped: MICROKIT_SDK is not set (seL4 image tests need the Microkit SDK 2.3.0; see docs/sel4-image.md)"
        );
        return true;
    }
    false
}

/// `ppn` and the image, built once for every test here.
fn image() -> &'static (PathBuf, PathBuf) {
    static IMAGE: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let ppn = locate_bin("ppn");
        // Kept for the test process's life (the tests share it); removed with the OS's tmp.
        let out = tempfile::Builder::new().prefix("ppn-sel4-image-").tempdir().unwrap().keep();
        let built =
            Command::new(&ppn).args(["image", "build", "--repo"]).arg(&repo).arg("--out").arg(&out).status().unwrap();
        assert!(built.success(), "ppn image build failed");
        (ppn, out.join("loader.img"))
    })
}

fn lender_state(socket: &Path) -> ServiceState {
    let status = Client::connect(socket, Duration::from_secs(30)).and_then(|mut c| c.status()).expect("status");
    status.services.iter().find(|s| s.service == 0x03).map(|s| s.state).expect("the lender in the status")
}

#[test]
fn conformance_against_the_sel4_image() {
    if skip() {
        return;
    }
    let (ppn, image) = image();
    let dir = tempfile::tempdir().unwrap();
    let disk: PathBuf = dir.path().join("blk.img");
    let socket = dir.path().join("link.sock");
    let log = dir.path().join("console.log");

    let mut boot = Some(Boot::start(ppn, image, &disk, &socket, &log).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(lender_state(&socket), ServiceState::Ready, "the lender PD serves the Lender service");
    for (name, check) in checks() {
        match check(&socket) {
            Ok(what) => {
                eprintln!("ok {name}: {what}");
                if name == "every-kind-answered" {
                    // Every kind is served: the lender PD's four, the attest PD's two, and the
                    // rest by the ledger PD's core.
                    assert!(what.ends_with(" 0 not implemented here"), "{what}");
                }
            }
            Err(why) => panic!("{name} on seL4: {why}\nconsole:\n{}", console(&log)),
        }
    }
    match support::attest::check_attest(&socket) {
        Ok(what) => {
            assert!(what.contains("check offline"), "{what}");
            eprintln!("ok attest: {what}");
        }
        Err(why) => panic!("attest on seL4: {why}\nconsole:\n{}", console(&log)),
    }
    // The attest PD answered, with the key the ledger handed it: the one the node advertises.
    let attest_key = Client::connect(&socket, Duration::from_secs(30))
        .and_then(|mut c| c.public_keys())
        .expect("public keys")
        .attestation_key
        .expect("an attestation key");
    let attest_ready = format!(
        "attest: ready: attestation key {} certified by node",
        attest_key.0[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
    );

    let mut restart = || {
        if let Some(mut b) = boot.take() {
            b.signal = "KILL";
        }
        boot = Some(Boot::start(ppn, image, &disk, &socket, &log)?);
        Ok(())
    };
    match check_persistence_across_restart(&socket, &mut restart) {
        Ok(what) => eprintln!("ok restart-persistence: {what}"),
        Err(why) => panic!("restart-persistence on seL4: {why}\nconsole:\n{}", console(&log)),
    }
    let text = console(&log);
    assert!(text.contains("ledger: ready: boot 1, new identity"), "first boot:\n{text}");
    assert!(text.contains("ledger: ready: boot 2, identity from the disk"), "second boot:\n{text}");
    assert!(text.contains("lender: ready: 16 blocks of 2 MiB, 16 free, 0 lent; journal created"), "{text}");
    assert!(dir.path().join("lender.img").exists(), "the lender's own disk");
    // Both boots handed the same key to the attest PD (the ledger derives it from the seed).
    assert_eq!(text.matches(&attest_ready).count(), 2, "{attest_ready}:\n{text}");
}

/// The pairing ceremony between two TCBs, as `ppn fleet` drives it (`pair_locally`): each
/// admits the other into its ledger; `a`'s ledger also takes `b`'s admission record.
fn pair(a: &Path, b: &Path) -> Result<u32, String> {
    let e = |what: &'static str| move |e: ppn_tcb_client::ClientError| format!("{what}: {e}");
    let mut a = Client::connect(a, Duration::from_secs(60)).map_err(e("connect a"))?;
    let mut b = Client::connect(b, Duration::from_secs(60)).map_err(e("connect b"))?;
    let code = "7K3M9-QX2HD";
    let hello =
        a.run(calls::pair_begin(PairRole::Initiator, code, [1; 32]).map_err(e("begin"))?).map_err(e("a begin"))?;
    b.run(calls::pair_begin(PairRole::Responder, code, [2; 32]).map_err(e("begin"))?).map_err(e("b begin"))?;
    let reply = b.run(calls::pair_step(&hello.message).map_err(e("step"))?).map_err(e("b step"))?;
    let confirm = a.run(calls::pair_step(&reply.message).map_err(e("step"))?).map_err(e("a step"))?;
    let done = b.run(calls::pair_step(&confirm.message).map_err(e("step"))?).map_err(e("b step 2"))?;
    let (pa, pb) = (confirm.paired.ok_or("no peer at a")?, done.paired.ok_or("no peer at b")?);
    if pa.sas != pb.sas {
        return Err(format!("the SAS differ: {} and {}", pa.sas, pb.sas));
    }
    let ra = a.run(calls::pair_decide(pa.node_id, pa.sas, true, &[]).map_err(e("decide"))?).map_err(e("a decide"))?;
    let rb =
        b.run(calls::pair_decide(pb.node_id, pb.sas, true, &ra.record).map_err(e("decide"))?).map_err(e("b decide"))?;
    let outcome = a.ingest_records(&[&rb.record[..]]).map_err(e("a ingests b's record"))?;
    if outcome != [IngestOutcome::Accepted] {
        return Err(format!("a refused b's admission record: {outcome:?}"));
    }
    Ok(pa.sas)
}

#[test]
fn lending_between_the_sel4_image_and_a_hosted_tcb() {
    if skip() {
        return;
    }
    let (ppn, image) = image();
    let dir = tempfile::tempdir().unwrap();
    let disk: PathBuf = dir.path().join("blk.img");
    let socket = dir.path().join("link.sock");
    let log = dir.path().join("console.log");
    let mut boot = Some(Boot::start(ppn, image, &disk, &socket, &log).unwrap_or_else(|e| panic!("{e}")));
    assert_eq!(lender_state(&socket), ServiceState::Ready);
    let borrower = HostedTcb::start();

    let t = Instant::now();
    let sas = pair(&socket, &borrower.socket).unwrap_or_else(|e| panic!("pairing: {e}\nconsole:\n{}", console(&log)));
    eprintln!("paired the image and the hosted TCB (SAS {sas:06}) in {} ms", t.elapsed().as_millis());
    for (who, s, other) in [("image", &socket, &borrower.socket), ("hosted", &borrower.socket, &socket)] {
        let mut c = Client::connect(s, Duration::from_secs(30)).unwrap();
        let other_id = Client::connect(other, Duration::from_secs(30)).unwrap().identity().unwrap().node_id;
        let m = c.ledger_members().unwrap();
        assert!(m.iter().any(|m| m.node_id == other_id && m.trusted), "{who} trusts the other: {m:?}");
    }

    let mut restart = || {
        if let Some(mut b) = boot.take() {
            b.signal = "KILL";
        }
        boot = Some(Boot::start(ppn, image, &disk, &socket, &log)?);
        Ok(())
    };
    let t = Instant::now();
    match check_lending(&socket, &borrower.socket, &mut restart) {
        Ok(what) => eprintln!("ok lending (seL4 lender PD, hosted borrower) in {} ms: {what}", t.elapsed().as_millis()),
        Err(why) => panic!("lending on seL4: {why}\nconsole:\n{}", console(&log)),
    }
    let text = console(&log);
    assert!(text.contains("lender: ready: 16 blocks of 2 MiB, 16 free, 0 lent; journal created"), "{text}");
    let port = text.lines().find(|l| l.starts_with("lender: ledger port connected")).expect("the port connected");
    eprintln!("{port}");
    // After the power cut the lease (2 blocks) came back from the lender's own disk.
    assert!(text.contains("lender: ready: 16 blocks of 2 MiB, 14 free, 2 lent; journal replayed"), "{text}");
}
