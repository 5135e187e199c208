//! A real `ppn-tcb` process for tests: its own state directory and socket, killed on drop.

use crate::{spawn_logged, wait_for_socket};
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

/// The path of a workspace binary, built first with the cargo running the tests so it is never
/// stale. `PPN_<NAME>_BIN` (upper case, `-` as `_`) overrides it, for a binary built elsewhere.
pub fn locate_bin(name: &str) -> PathBuf {
    let var = format!("PPN_{}_BIN", name.to_uppercase().replace('-', "_"));
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    // The test binary lives in target/<profile>/deps/; workspace binaries in target/<profile>/.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>").to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Each workspace binary is named after its package.
    cmd.args(["build", "--quiet", "-p", name, "--bin", name]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "cargo build --bin {name} failed");
    let path = profile_dir.join(name);
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// A running hosted TCB.
#[derive(Debug)]
pub struct HostedTcb {
    bin: PathBuf,
    pub dir: tempfile::TempDir,
    pub state: PathBuf,
    pub socket: PathBuf,
    child: Option<Child>,
    starts: u32,
    /// Arguments after `--state` and `--socket`, on every start.
    extra_args: Vec<OsString>,
}

impl HostedTcb {
    /// Starts `ppn-tcb` on a fresh state directory.
    pub fn start() -> Self {
        Self::start_with::<&str>(&[])
    }

    /// Starts `ppn-tcb` on a fresh state directory with `extra_args` after `--state` and
    /// `--socket` (for example `["--roots", path]`), on this start and every restart.
    pub fn start_with<A: AsRef<OsStr>>(extra_args: &[A]) -> Self {
        let dir = tempfile::Builder::new().prefix("ppn-tcb-test-").tempdir().expect("temp dir");
        let state = dir.path().join("state");
        let socket = dir.path().join("tcb.sock");
        let extra_args = extra_args.iter().map(|a| a.as_ref().to_owned()).collect();
        let mut t = Self { bin: locate_bin("ppn-tcb"), dir, state, socket, child: None, starts: 0, extra_args };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let log = self.log_path();
        let mut args =
            vec![OsStr::new("--state"), self.state.as_os_str(), "--socket".as_ref(), self.socket.as_os_str()];
        args.extend(self.extra_args.iter().map(OsString::as_os_str));
        let mut child = spawn_logged(&self.bin, &args, &log).expect("spawn ppn-tcb");
        if let Err(e) = wait_for_socket(&self.socket, &mut child, Duration::from_secs(20)) {
            let _ = child.kill();
            panic!("ppn-tcb did not start: {e}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
        }
        self.child = Some(child);
    }

    /// The stderr log of the current run.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join(format!("ppn-tcb.{}.log", self.starts))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the process with SIGKILL (no chance to clean up) and waits for it.
    pub fn kill_hard(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops the process with SIGTERM and returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SIGTERM through kill(1) keeps this crate free of unsafe.
        let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
        c.wait().ok()
    }

    /// Starts the process again on the same state directory and socket.
    pub fn restart(&mut self) {
        self.kill_hard();
        self.spawn();
    }

    /// Like [`HostedTcb::restart`], with new extra arguments (kept for later restarts).
    pub fn restart_with<A: AsRef<OsStr>>(&mut self, extra_args: &[A]) {
        self.extra_args = extra_args.iter().map(|a| a.as_ref().to_owned()).collect();
        self.restart();
    }
}

impl Drop for HostedTcb {
    fn drop(&mut self) {
        self.kill_hard();
    }
}
