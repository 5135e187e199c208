//! Shared by the integration tests: a guard that kills every QEMU of a state directory, and
//! the guest image.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use ppn_vm::manager::{PidStatus, pid_status};
use ppn_vm::spec::VmPaths;

/// Kills every QEMU of the state dir when a test ends, however it ends (panics included).
pub struct Guard(pub PathBuf);

impl Drop for Guard {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.0) else {
            return;
        };
        for e in entries.flatten() {
            if let PidStatus::Live(pid) = pid_status(&VmPaths::new(e.path())) {
                let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            }
        }
    }
}

/// A temp dir with a state dir inside and its guard.
pub struct Env {
    // Field order: the guard kills QEMU before the directory is removed.
    pub guard: Guard,
    pub tmp: tempfile::TempDir,
    pub dir: PathBuf,
    pub state: PathBuf,
}

pub fn env() -> Env {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let state = dir.join("state");
    Env { guard: Guard(state.clone()), tmp, dir, state }
}

/// The guest image cache shared by all test runs.
pub fn image_cache() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/ppn-guest"))
}

/// Booted-guest tests take this lock so that only one TCG guest boots at a time (two cores,
/// shared with other builds): each test then stays well under a minute.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The booted-guest image, or `None` when `PPN_SKIP_GUEST=1`. Any other failure to build it
/// fails the test with the builder's message.
pub fn guest_image() -> Option<ppn_guest_agent::image::GuestImage> {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping the booted-guest test");
        return None;
    }
    let options = ppn_guest_agent::image::ImageOptions { verbose: true, ..Default::default() };
    match ppn_guest_agent::image::ensure(&image_cache(), &options) {
        Ok(img) => Some(img),
        Err(e) => panic!(
            "cannot build the guest image in {} ({e}); set PPN_SKIP_GUEST=1 to skip \
             booted-guest tests on a machine without network",
            image_cache().display()
        ),
    }
}

/// Whether `path` exists.
pub fn exists(path: &Path) -> bool {
    path.exists()
}
