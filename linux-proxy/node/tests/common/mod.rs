//! What the fleet tests share: a local fleet stopped however a test ends, the guest image (or
//! a skip), polling until a condition holds.
#![allow(dead_code)] // each test binary uses a part

use ppn_conformance::locate_bin;
use ppn_node::fleet::{self, Fleet, UpOptions};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A running local fleet; `fleet::down` (which also stops the nodes' QEMUs) when dropped.
pub struct Running {
    pub fleet: Fleet,
    _dir: tempfile::TempDir,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = fleet::down(&self.fleet.dir, false);
    }
}

/// Starts a paired fleet of `nodes` in a temporary directory, each TCB lending `lend_mib`.
pub async fn start(nodes: usize, lend_mib: u32) -> Running {
    let dir = tempfile::tempdir().unwrap();
    let opts = UpOptions {
        nodes,
        tcb_bin: locate_bin("ppn-tcb"),
        node_bin: locate_bin("ppn-node"),
        loss: 0.0,
        settle: Duration::from_secs(30),
        lend_mib,
        vm_mem_mib: None,
        vm_vcpus: None,
    };
    let f = fleet::up(&dir.path().join("fleet"), &opts, |l| eprintln!("{l}")).await.unwrap_or_else(|e| panic!("{e}"));
    Running { fleet: f, _dir: dir }
}

/// The guest image from the workspace cache (built on first use), or `None` with
/// `PPN_SKIP_GUEST=1`. Fails the test when it cannot be built.
pub fn guest_image() -> Option<ppn_guest_agent::image::GuestImage> {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping the booted-guest test");
        return None;
    }
    let cache = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/ppn-guest"));
    let options = ppn_guest_agent::image::ImageOptions { verbose: true, ..Default::default() };
    match ppn_guest_agent::image::ensure(&cache, &options) {
        Ok(img) => Some(img),
        Err(e) => panic!(
            "cannot build the guest image in {} ({e}); set PPN_SKIP_GUEST=1 to skip booted-guest tests",
            cache.display()
        ),
    }
}

/// Polls every 50 ms until `probe` answers `Some`, failing after `limit`; returns the answer
/// and the time it took.
pub fn until<T>(what: &str, limit: Duration, mut probe: impl FnMut() -> Option<T>) -> (T, Duration) {
    let start = Instant::now();
    loop {
        if let Some(v) = probe() {
            return (v, start.elapsed());
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
