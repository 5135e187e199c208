//! The guest's verified boot for real (docs/attestation.md): a sealed ext4 root disk, its
//! provisioning statement signed by a node's attestation key and the fleet's trust file, booted
//! in QEMU (TCG). The guest mounts the verified root; a flipped byte in the image, a revoked
//! provisioning node and a node the fleet does not know each make it refuse to boot with its own
//! console message, and QEMU exits.
//!
//! Needs qemu-system-x86_64, veritysetup and mkfs.ext4 on the host, and the guest image (see
//! qemu_guest.rs); PPN_SKIP_GUEST=1 skips.

use ed25519_dalek::SigningKey;
use ppn_attest::{Attester, Standing, TrustFile, VerityParams};
use ppn_guest_agent::image::{self, ImageOptions};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Boots the guest with the sealed disk until the console shows `want` (then kills it), or
/// QEMU exits; returns the console and whether QEMU exited by itself.
fn boot(
    img: &image::GuestImage,
    dir: &Path,
    disk: &Path,
    statement: &Path,
    trust: &Path,
    want: &str,
) -> (String, bool) {
    let console = dir.join(format!("console-{}.log", Instant::now().elapsed().as_nanos()));
    let _ = std::fs::remove_file(&console);
    let mut args = img.qemu_args(&dir.join("agent.sock"), &dir.join("qmp.sock"));
    let i = args.iter().position(|a| a == "-initrd").unwrap() + 1;
    args[i] = img.initrd_verified.display().to_string();
    let i = args.iter().position(|a| a == "-append").unwrap() + 1;
    args[i] = format!("{} {}", args[i], image::VERITY_CMDLINE);
    args.retain(|a| a != "-nographic");
    args.extend(["-display".into(), "none".into(), "-serial".into(), format!("file:{}", console.display())]);
    args.extend(image::verity_args(disk, statement, trust));
    let child = Command::new("qemu-system-x86_64").args(&args).stdin(Stdio::null()).stdout(Stdio::null()).spawn();
    let mut q = Qemu(child.expect("qemu-system-x86_64"));
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(&console).unwrap_or_default();
        if text.contains(want) {
            if !want.contains("REFUSING") {
                return (text, q.0.try_wait().unwrap().is_some());
            }
            // A refusal powers the guest off: QEMU must exit by itself.
            let t1 = Instant::now();
            while t1.elapsed() < Duration::from_secs(30) {
                if q.0.try_wait().unwrap().is_some() {
                    return (std::fs::read_to_string(&console).unwrap_or_default(), true);
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            return (text, false);
        }
        if let Some(status) = q.0.try_wait().unwrap() {
            // Let the last console lines land.
            std::thread::sleep(Duration::from_millis(200));
            let text = std::fs::read_to_string(&console).unwrap_or_default();
            assert!(text.contains(want), "QEMU exited ({status}) without {want:?}:\n{text}");
            return (text, true);
        }
        assert!(t0.elapsed() < Duration::from_secs(180), "no {want:?} in 180 s:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect::<Vec<_>>()).unwrap_or_default();
    path.into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn a_sealed_root_boots_verified_and_every_broken_link_refuses() {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping the verified boot test");
        return;
    }
    let mkfs = tool("mkfs.ext4").expect("mkfs.ext4 (e2fsprogs) is needed to make the root filesystem");
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ppn-guest");
    let img = image::ensure(&cache, &ImageOptions { verbose: true, ..Default::default() })
        .unwrap_or_else(|e| panic!("guest image in {}: {e}", cache.display()));
    let dir = tempfile::tempdir().unwrap();

    // A small ext4 root filesystem with a marker file, sealed.
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc")).unwrap();
    std::fs::write(tree.join("etc/ppn-image"), "sealed test root\n").unwrap();
    let disk = dir.path().join("root.img");
    let out =
        Command::new(&mkfs).args(["-q", "-F", "-b", "4096", "-d"]).arg(&tree).arg(&disk).arg("8M").output().unwrap();
    assert!(out.status.success(), "mkfs.ext4: {}", String::from_utf8_lossy(&out.stderr));
    let p = ppn_verity::seal(&disk, [0x5A; 32], [7; 16]).unwrap();

    // The provisioning node signs the root hash; the fleet trusts it.
    let node_key = SigningKey::from_bytes(&[3; 32]);
    let attester = Attester::new(&Zeroizing::new([4; 32]), &node_key);
    let verity =
        VerityParams { root_hash: p.root_hash, salt: p.salt, data_blocks: p.data_blocks, hash_offset: p.hash_offset };
    let statement = dir.path().join("root.prov");
    std::fs::write(&statement, attester.provision("test-root", &verity, 1_796_000_000).unwrap().bytes).unwrap();
    let write_trust = |name: &str, standing: Option<Standing>| {
        let mut t = TrustFile::new();
        if let Some(s) = standing {
            t.insert(node_key.verifying_key().to_bytes(), s).unwrap();
        }
        let path = dir.path().join(name);
        std::fs::write(&path, t.encode()).unwrap();
        path
    };
    let trusted = write_trust("trusted", Some(Standing::Trusted));

    let (console, exited) = boot(&img, dir.path(), &disk, &statement, &trusted, "ppn-guest: starting the agent");
    assert!(!exited, "{console}");
    assert!(console.contains("ppn-guest: verified boot: image test-root"), "{console}");
    assert!(console.contains(&hex(&p.root_hash)), "{console}");
    assert!(!console.contains("REFUSING"), "{console}");

    // A revoked provisioning node, and one the fleet does not know.
    let revoked = write_trust("revoked", Some(Standing::Revoked));
    let (console, exited) = boot(&img, dir.path(), &disk, &statement, &revoked, "REFUSING TO BOOT");
    assert!(exited && console.contains("is revoked"), "{console}");
    let unknown = write_trust("unknown", None);
    let (console, exited) = boot(&img, dir.path(), &disk, &statement, &unknown, "REFUSING TO BOOT");
    assert!(exited && console.contains("not one the fleet trusts"), "{console}");
    assert!(!console.contains("starting the agent"), "{console}");

    // One flipped byte in the filesystem: veritysetup's check fails, the guest refuses.
    let mut bytes = std::fs::read(&disk).unwrap();
    bytes[3 * 4096 + 100] ^= 0x01;
    std::fs::write(&disk, &bytes).unwrap();
    let (console, exited) = boot(&img, dir.path(), &disk, &statement, &trusted, "REFUSING TO BOOT");
    assert!(exited && console.contains("does not match the signed root hash"), "{console}");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
