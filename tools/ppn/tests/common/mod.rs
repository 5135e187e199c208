//! What the CLI tests that run a local fleet share: `ppn` run against the fleet in a directory,
//! and a guard that stops that fleet on every path out of a test.

#![allow(dead_code, reason = "each test file uses a part of it")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Stops the fleet in the directory on every path out of the test.
pub struct Fleet(pub PathBuf);

impl Drop for Fleet {
    fn drop(&mut self) {
        let _ = Command::new(env!("CARGO_BIN_EXE_ppn")).args(["fleet", "down", "--dir"]).arg(&self.0).output();
    }
}

/// Runs `ppn ARGS` on the fleet in `fleet_dir`, with this workspace's binaries and guest cache.
pub fn ppn_in(fleet_dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ppn"))
        .args(args)
        .env("PPN_FLEET_DIR", fleet_dir)
        .env_remove("PPN_NODE")
        .env("PPN_PPN_TCB_BIN", ppn_conformance::locate_bin("ppn-tcb"))
        .env("PPN_PPN_NODE_BIN", ppn_conformance::locate_bin("ppn-node"))
        .env("PPN_DATA_DIR", Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .output()
        .expect("run ppn")
}

/// [`ppn_in`], which must succeed; its stdout.
pub fn ok_in(fleet_dir: &Path, args: &[&str]) -> String {
    let out = ppn_in(fleet_dir, args);
    let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "ppn {args:?}: {o}{e}");
    o.into_owned()
}

/// [`ppn_in`], which must fail; its stderr.
pub fn fails_in(fleet_dir: &Path, args: &[&str]) -> String {
    let out = ppn_in(fleet_dir, args);
    assert!(!out.status.success(), "ppn {args:?} succeeded: {}", String::from_utf8_lossy(&out.stdout));
    String::from_utf8_lossy(&out.stderr).into_owned()
}
