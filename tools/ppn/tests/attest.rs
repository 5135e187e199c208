//! `ppn image seal` against a hosted `ppn-tcb`: the sealed copy verifies with cryptsetup's
//! `veritysetup`, its statement checks under the TCB's node key, a flipped byte is caught, and
//! a TCB that refuses leaves nothing behind. `ppn ledger trust` and `ppn verify`: a report the
//! TCB signed checks offline, and each broken link fails with its own error.

mod common;

use common::Fleet;
use ppn_attest::{Provisioning, Standing, Trust};
use ppn_conformance::HostedTcb;
use ppn_wire::NodeId;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn veritysetup() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    on_path.chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join("veritysetup")).find(|p| p.is_file())
}

fn ppn(args: &[&str], socket: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ppn")).args(args).env("PPN_TCB_SOCKET", socket).output().expect("run ppn")
}

struct OneNode(NodeId, [u8; 32]);

impl Trust for OneNode {
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing {
        if node == self.0 && *key == self.1 { Standing::Trusted } else { Standing::Unknown }
    }
}

#[test]
fn a_sealed_image_verifies_with_veritysetup_and_its_statement_checks() {
    let Some(vs) = veritysetup() else {
        assert!(std::env::var_os("CI").is_none(), "veritysetup (cryptsetup-bin) is missing on CI");
        eprintln!("SKIPPED: veritysetup (cryptsetup-bin) not installed");
        return;
    };
    let tcb = HostedTcb::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("guest.img");
    // 300 blocks of a made-up filesystem: a tree of two levels.
    let data: Vec<u8> = (0..300 * 4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(&image, &data).unwrap();

    let out = ppn(&["image", "seal", image.to_str().unwrap(), "--name", "test-guest", "--json"], &tcb.socket);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let sealed = PathBuf::from(v["sealed"].as_str().unwrap());
    assert_eq!(sealed, dir.path().join("guest.img.sealed"));
    assert_eq!(std::fs::read(&image).unwrap(), data, "the original is untouched");
    assert_eq!(v["data_blocks"], 300);
    assert_eq!(v["hash_offset"], 300 * 4096);

    // cryptsetup's own check accepts the sealed copy.
    let args: Vec<String> =
        v["veritysetup_verify"].as_array().unwrap()[1..].iter().map(|a| a.as_str().unwrap().into()).collect();
    let check = Command::new(&vs).args(&args).output().unwrap();
    assert!(check.status.success(), "veritysetup {args:?}: {}", String::from_utf8_lossy(&check.stderr));

    // The statement checks under the TCB's node key and names what was sealed.
    let statement = std::fs::read(v["statement"].as_str().unwrap()).unwrap();
    let client = ppn_tcb_client::blocking::Client::connect(&tcb.socket, std::time::Duration::from_secs(10));
    let keys = client.unwrap().public_keys().unwrap();
    let p = Provisioning::verify(&statement, &OneNode(keys.node_id, keys.signing_key.0)).unwrap();
    assert_eq!(p.image, "test-guest");
    assert_eq!(hex(&p.verity.root_hash), v["root_hash"].as_str().unwrap());
    assert_eq!(p.verity.data_blocks, 300);

    // The TCB's ledger holds the statement as an ImageProvisioned record of this node.
    let digest: String = {
        use sha2::Digest as _;
        hex(&sha2::Sha256::digest(&statement))
    };
    assert_eq!(v["statement_sha256"].as_str(), Some(digest.as_str()));
    let out = ppn(&["ledger", "provisioned", "--json"], &tcb.socket);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = listed["provisioned"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{listed}");
    assert_eq!(rows[0]["node"].as_str(), Some(keys.node_id.to_string().as_str()));
    assert_eq!(rows[0]["root_hash"], v["root_hash"]);
    assert_eq!(rows[0]["statement_sha256"].as_str(), Some(digest.as_str()));

    // One flipped byte of the data: veritysetup refuses the copy.
    let mut bytes = std::fs::read(&sealed).unwrap();
    bytes[12345] ^= 0x01;
    std::fs::write(&sealed, &bytes).unwrap();
    let check = Command::new(&vs).args(&args).output().unwrap();
    assert!(!check.status.success(), "veritysetup accepted a flipped byte");
}

#[test]
fn a_refused_seal_leaves_nothing_behind() {
    let tcb = HostedTcb::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("odd.img");
    // Not a whole number of blocks: refused by the sealer.
    std::fs::write(&image, vec![1u8; 4096 + 7]).unwrap();
    let out = ppn(&["image", "seal", image.to_str().unwrap()], &tcb.socket);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("4096"), "{err}");
    // A name over 64 bytes: refused before anything is written.
    std::fs::write(&image, vec![1u8; 4096]).unwrap();
    let long = "n".repeat(65);
    let out = ppn(&["image", "seal", image.to_str().unwrap(), "--name", &long], &tcb.socket);
    assert!(!out.status.success());
    let mut left: Vec<String> =
        std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into()).collect();
    left.sort();
    assert_eq!(left, vec!["odd.img".to_string()]);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("run")
}

#[test]
fn ppn_verify_checks_a_report_offline_and_names_each_broken_link() {
    let tcb = HostedTcb::start();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("g.img");
    std::fs::write(&image, vec![7u8; 8 * 4096]).unwrap();
    let out = ppn(&["image", "seal", image.to_str().unwrap(), "--json"], &tcb.socket);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let statement = std::fs::read(v["statement"].as_str().unwrap()).unwrap();
    let root: [u8; 32] = unhex(v["root_hash"].as_str().unwrap()).try_into().unwrap();

    // What `ppn attest` will ask of the node's TCB: a report on a VM of that image.
    let nonce = "00112233445566778899aabbccddeeff";
    let mut c = ppn_tcb_client::blocking::Client::connect(&tcb.socket, std::time::Duration::from_secs(10)).unwrap();
    let report = c.sign_report("web-1", root, &statement, &unhex(nonce)).unwrap();
    let report_path = dir.path().join("report.cbor");
    std::fs::write(&report_path, &report).unwrap();

    let trust =
        run(Command::new(env!("CARGO_BIN_EXE_ppn")).args(["ledger", "trust"]).env("PPN_TCB_SOCKET", &tcb.socket));
    assert!(trust.status.success(), "{}", String::from_utf8_lossy(&trust.stderr));
    let trust_text = String::from_utf8(trust.stdout).unwrap();
    assert!(trust_text.starts_with("ppn-trust v1\n") && trust_text.contains(" trusted\n"), "{trust_text}");
    let trust_path = dir.path().join("fleet.trust");
    std::fs::write(&trust_path, &trust_text).unwrap();
    // Offline from here: the TCB is gone.
    drop(tcb);

    let verify = |report: &Path, trust: &Path, nonce: &str| {
        let r = report.to_str().unwrap();
        run(Command::new(env!("CARGO_BIN_EXE_ppn")).args([
            "verify",
            r,
            "--roots",
            trust.to_str().unwrap(),
            "--nonce",
            nonce,
        ]))
    };
    let ok = verify(&report_path, &trust_path, nonce);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let said = String::from_utf8_lossy(&ok.stdout);
    for line in ["root ", "node key ", "image ", "report ", "verified"] {
        assert!(said.lines().any(|l| l.starts_with(line)), "no {line:?} line in {said}");
    }
    assert!(said.contains(v["root_hash"].as_str().unwrap()), "{said}");

    let fails = |out: Output, want: &str| {
        assert!(!out.status.success(), "accepted, wanted {want:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{err} does not say {want:?}");
    };
    fails(verify(&report_path, &trust_path, "ffeeddccbbaa99887766554433221100"), "nonce is not the verifier's");
    let mut tampered = report.clone();
    let n = tampered.len();
    tampered[n - 3] ^= 0x10;
    let tampered_path = dir.path().join("tampered.cbor");
    std::fs::write(&tampered_path, &tampered).unwrap();
    fails(verify(&tampered_path, &trust_path, nonce), "report's signature does not check");
    let revoked_path = dir.path().join("revoked.trust");
    std::fs::write(&revoked_path, trust_text.replace(" trusted\n", " revoked\n")).unwrap();
    fails(verify(&report_path, &revoked_path, nonce), "is revoked");
    let stranger_path = dir.path().join("stranger.trust");
    std::fs::write(&stranger_path, "ppn-trust v1\n").unwrap();
    fails(verify(&report_path, &stranger_path, nonce), "not one the fleet trusts");
    fails(verify(&report_path, &trust_path, "xyz"), "--nonce");
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

/// The whole path on a one-node fleet: seal an image through the node's TCB, export the trust,
/// run a VM from the sealed image (the guest checks it and boots verified), have the node's TCB
/// attest it, stop the fleet, and verify the report offline.
#[test]
fn a_sealed_vm_boots_verified_and_its_report_verifies_offline() {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping");
        return;
    }
    let (Some(_), Some(mkfs)) = (veritysetup(), tool("mkfs.ext4")) else {
        assert!(std::env::var_os("CI").is_none(), "veritysetup or mkfs.ext4 is missing on CI");
        eprintln!("SKIPPED: veritysetup (cryptsetup-bin) or mkfs.ext4 (e2fsprogs) not installed");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    let ppn_in = |args: &[&str]| common::ppn_in(&fleet_dir, args);
    let ok = |out: Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    ok(ppn_in(&["fleet", "up", "--nodes", "1", "--lend-mib", "0"]), "fleet up");
    let _fleet = Fleet(fleet_dir.clone());
    let tcb = fleet_dir.join("node-0/tcb.sock");
    assert!(tcb.exists(), "no TCB socket at {}", tcb.display());

    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/motd"), "a sealed guest\n").unwrap();
    let image = dir.path().join("web.img");
    let mk =
        Command::new(mkfs).args(["-q", "-F", "-b", "4096", "-d"]).arg(&tree).arg(&image).arg("8M").output().unwrap();
    assert!(mk.status.success(), "{}", String::from_utf8_lossy(&mk.stderr));
    let tcb_s = tcb.to_str().unwrap();
    let sealed: serde_json::Value = serde_json::from_slice(&ok(
        ppn_in(&["image", "seal", image.to_str().unwrap(), "--name", "web", "--socket", tcb_s, "--json"]),
        "seal",
    ))
    .unwrap();
    let trust = dir.path().join("fleet.trust");
    std::fs::write(&trust, ok(ppn_in(&["ledger", "trust", "--socket", tcb_s]), "ledger trust")).unwrap();

    let sealed_path = sealed["sealed"].as_str().unwrap();
    let said = ok(
        ppn_in(&[
            "vm",
            "create",
            "web-1",
            "--mem",
            "256",
            "--max",
            "128",
            "--sealed",
            sealed_path,
            "--trust",
            trust.to_str().unwrap(),
            "--start",
        ]),
        "vm create --sealed",
    );
    assert!(String::from_utf8_lossy(&said).contains("verified"), "{}", String::from_utf8_lossy(&said));
    let serial = fleet_dir.join("node-0/node/vms/web-1/serial.log");
    let t0 = std::time::Instant::now();
    loop {
        let text = std::fs::read_to_string(&serial).unwrap_or_default();
        if text.contains("ppn-guest: starting the agent") {
            assert!(text.contains("ppn-guest: verified boot: image web"), "{text}");
            break;
        }
        assert!(!text.contains("REFUSING"), "{text}");
        assert!(t0.elapsed() < std::time::Duration::from_secs(180), "the guest did not boot in 180 s:\n{text}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    let nonce = "6e6f6e63652d666f722d7765622d31";
    let report = dir.path().join("report.cbor");
    ok(ppn_in(&["attest", "web-1", "--nonce", nonce, "--out", report.to_str().unwrap()]), "attest");
    // A nonce of 7 bytes is refused before the node is asked.
    let short = ppn_in(&["attest", "web-1", "--nonce", "00112233445566"]);
    assert!(!short.status.success() && String::from_utf8_lossy(&short.stderr).contains("8 to 64"));
    drop(_fleet);

    let verified = ok(
        ppn_in(&["verify", report.to_str().unwrap(), "--roots", trust.to_str().unwrap(), "--nonce", nonce, "--json"]),
        "verify",
    );
    let v: serde_json::Value = serde_json::from_slice(&verified).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["vm"], "web-1");
    assert_eq!(v["image"], "web");
    assert_eq!(v["image_root_hash"], sealed["root_hash"]);
    assert_eq!(v["node"], v["provisioned_by"]);
}

fn tool(name: &str) -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH").into_iter().flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>());
    on_path.chain(["/usr/sbin".into(), "/sbin".into()]).map(|d| d.join(name)).find(|p| p.is_file())
}
