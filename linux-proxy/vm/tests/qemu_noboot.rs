//! Against a real QEMU that runs no guest: the VM is started with `-S` (paused before the first
//! instruction) and a header-only bzImage, so QEMU accepts `-kernel`/`-initrd` but no guest
//! code ever runs. QMP, lifecycle, re-attach, stale pidfiles, cgroups and virtio-mem
//! `requested-size` all work without a guest; the plugged `size` only changes when a guest
//! driver plugs (tests/guest.rs).

mod common;

use std::path::{Path, PathBuf};

use common::env;
use std::time::{Duration, Instant};

use ppn_vm::cgroup::{self, CgroupSupport};
use ppn_vm::manager::{ManagerError, PidStatus, StopOutcome};
use ppn_vm::qmp::QmpError;
use ppn_vm::{QmpClient, VmManager, VmSpec, VmState};

/// A header-only bzImage (boot protocol 2.12, no code) and an empty initrd: QEMU loads them,
/// and with `-S` the CPU never starts.
fn stub_images(dir: &Path) -> (PathBuf, PathBuf) {
    let mut k = vec![0u8; 64 * 1024];
    k[0x1f1] = 4; // setup_sects
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x206..0x208].copy_from_slice(&0x020cu16.to_le_bytes());
    k[0x22c..0x230].copy_from_slice(&0x37ff_ffffu32.to_le_bytes()); // initrd_addr_max
    let kernel = dir.join("stub-bzImage");
    let initrd = dir.join("stub-initrd");
    std::fs::write(&kernel, k).unwrap();
    std::fs::write(&initrd, vec![0u8; 4096]).unwrap();
    (kernel, initrd)
}

fn paused_spec(dir: &Path, name: &str) -> VmSpec {
    let (k, i) = stub_images(dir);
    let mut s = VmSpec::new(name, 128, 512, k, i, "console=ttyS0");
    s.extra_args = vec!["-S".into()];
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_kernel_is_a_clear_launch_error() {
    let e = env();
    let m = VmManager::open(&e.state).unwrap();
    let mut s = paused_spec(&e.dir, "nokernel");
    s.kernel = "/nonexistent/vmlinuz".into();
    m.create(&s).unwrap();
    let err = m.start("nokernel").await.unwrap_err();
    match &err {
        ManagerError::LaunchFailed { log, .. } => {
            assert!(log.contains("/nonexistent/vmlinuz"), "{log}")
        }
        other => panic!("expected LaunchFailed, got {other:?}"),
    }
    assert_eq!(m.state("nokernel").await.unwrap(), VmState::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_reattach_and_vmem_requests() {
    let e = env();
    let m = VmManager::open(&e.state).unwrap();
    m.create(&paused_spec(&e.dir, "vm-a")).unwrap();
    assert_eq!(m.state("vm-a").await.unwrap(), VmState::Stopped);

    let started = m.start("vm-a").await.unwrap();
    eprintln!("boot-to-QMP {:?} (accel {:?}), cgroup {:?}", started.boot_to_qmp, m.accel(), started.cgroup);
    assert!(started.boot_to_qmp < Duration::from_secs(30));
    let pid = started.pid;
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert!(matches!(
        m.start("vm-a").await,
        Err(ManagerError::AlreadyRunning { pid: p, .. }) if p == pid
    ));

    // Paused before the first instruction.
    assert_eq!(m.state("vm-a").await.unwrap(), VmState::Live { pid, status: "prelaunch".into() });
    let info = m.info("vm-a").await.unwrap();
    let mem = info.memory.expect("memory of a live VM");
    assert_eq!((mem.base_mib, mem.plugged_mib, mem.requested_mib), (128, 0, 0));
    assert_eq!(mem.vmem_max_mib, 512);
    eprintln!("cgroup status: {}", info.cgroup);

    // requested-size is QEMU's to keep even without a guest driver; size stays 0.
    m.resize_vmem("vm-a", 256).await.unwrap();
    let mem = m.memory("vm-a").await.unwrap();
    assert_eq!((mem.plugged_mib, mem.requested_mib), (0, 256));
    let err = m.resize_vmem("vm-a", 3).await.unwrap_err();
    assert!(matches!(err, ManagerError::NotBlockMultiple { mib: 3, .. }), "{err}");
    let err = m.resize_vmem("vm-a", 514).await.unwrap_err();
    assert!(matches!(err, ManagerError::AboveMax { mib: 514, max: 512, .. }), "{err}");
    let err = m.wait_vmem_size("vm-a", 256, Duration::from_millis(300)).await.unwrap_err();
    assert!(matches!(err, ManagerError::VmemTimeout { size_mib: 0, want_mib: 256, .. }), "{err}");
    // Balloon target outside 1..=base+plugged is refused before QEMU sees it.
    assert!(matches!(m.set_balloon("vm-a", 4096).await, Err(ManagerError::BalloonTarget { max: 128, .. })));

    // The managing process "restarts": a new manager on the same directory re-attaches.
    drop(m);
    let m2 = VmManager::open(&e.state).unwrap();
    let listed = m2.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state.pid(), Some(pid));
    assert_eq!(listed[0].state.label(), "prelaunch");
    assert_eq!(listed[0].memory.unwrap().requested_mib, 256);

    // A paused guest cannot power down: stop falls back to quit.
    let t0 = Instant::now();
    let outcome = m2.stop("vm-a", Duration::from_millis(500)).await.unwrap();
    assert_eq!(outcome, StopOutcome::Quit);
    eprintln!("stop (powerdown 0.5 s, then quit) took {:?}", t0.elapsed());
    assert!(
        !Path::new(&format!("/proc/{pid}/cmdline")).exists() || {
            // pid may already be reused; it must not be our VM.
            !matches!(ppn_vm::manager::process_is_vm(pid, &m2.paths("vm-a").unwrap().qmp()), PidStatus::Live(_))
        }
    );
    assert_eq!(m2.state("vm-a").await.unwrap(), VmState::Stopped);
    assert_eq!(m2.stop("vm-a", Duration::ZERO).await.unwrap(), StopOutcome::AlreadyStopped);

    // Start again from stopped; destroy a running VM.
    let again = m2.start("vm-a").await.unwrap();
    assert_eq!(m2.destroy("vm-a").await.unwrap(), StopOutcome::Quit);
    assert!(!e.state.join("vm-a").exists());
    assert!(!matches!(ppn_vm::manager::process_is_vm(again.pid, &e.state.join("vm-a/qmp.sock")), PidStatus::Live(_)));
    assert!(m2.names().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_qemu_leaves_a_dead_vm_that_can_restart() {
    let e = env();
    let m = VmManager::open(&e.state).unwrap();
    m.create(&paused_spec(&e.dir, "vm-k")).unwrap();
    let pid = m.start("vm-k").await.unwrap().pid;
    std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
    let t0 = Instant::now();
    loop {
        if let VmState::Dead { pid: p, .. } = m.state("vm-k").await.unwrap() {
            assert_eq!(p, pid);
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "VM never seen dead");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(matches!(m.qmp("vm-k").await, Err(ManagerError::NotRunning(_))));
    // The stale pidfile and sockets do not block a new start.
    let again = m.start("vm-k").await.unwrap();
    assert_ne!(again.pid, pid);
    assert_eq!(m.state("vm-k").await.unwrap().label(), "prelaunch");
    m.destroy("vm-k").await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qmp_commands_events_and_exclusive_monitor() {
    let e = env();
    let m = VmManager::open(&e.state).unwrap();
    m.create(&paused_spec(&e.dir, "vm-q")).unwrap();
    m.start("vm-q").await.unwrap();
    let c = m.qmp("vm-q").await.unwrap();
    assert!(c.qemu_version().0 >= 7, "{:?}", c.qemu_version());

    // A second client waits for the monitor: its greeting never comes.
    let paths = m.paths("vm-q").unwrap();
    let err = QmpClient::connect(&paths.qmp(), Duration::from_millis(500)).await.unwrap_err();
    assert!(matches!(&err, QmpError::Greeting { reason, .. } if reason.contains("another QMP client")), "{err}");

    // An unknown command is a clear error and the connection survives it.
    let mut rx = c.subscribe();
    let err =
        c.execute(qapi::qmp::qom_get { path: "no-such-device".into(), property: "size".into() }).await.unwrap_err();
    assert!(matches!(&err, QmpError::Command { command: "qom-get", .. }), "{err}");

    // cont -> RESUME, stop -> STOP (typed where qapi's schema decodes them).
    c.execute(qapi::qmp::cont {}).await.unwrap();
    let resumed = c
        .wait_event(&mut rx, "RESUME", Duration::from_secs(5), |ev| (ev.name == "RESUME").then(|| ev.clone()))
        .await
        .unwrap();
    assert!(matches!(resumed.typed, Some(qapi::qmp::Event::RESUME { .. })));
    assert!(resumed.timestamp_us > 0);
    assert!(c.query_status().await.unwrap().running);
    c.execute(qapi::qmp::stop {}).await.unwrap();
    c.wait_event(&mut rx, "STOP", Duration::from_secs(5), |ev| (ev.name == "STOP").then_some(())).await.unwrap();
    assert!(!c.query_status().await.unwrap().running);

    // quit: SHUTDOWN event, then the connection closes.
    let mut rx = c.subscribe();
    let _ = c.execute(qapi::qmp::quit {}).await;
    let shutdown = c
        .wait_event(&mut rx, "SHUTDOWN", Duration::from_secs(5), |ev| (ev.name == "SHUTDOWN").then(|| ev.clone()))
        .await
        .unwrap();
    assert_eq!(shutdown.data["reason"], "host-qmp-quit");
    assert!(matches!(shutdown.typed, Some(qapi::qmp::Event::SHUTDOWN { .. })));
    c.wait_closed(Duration::from_secs(5)).await.unwrap();
    assert!(c.is_closed());
    let err = c.query_status().await.unwrap_err();
    assert!(matches!(err, QmpError::Closed { .. }), "{err}");
    drop(c);
    m.destroy("vm-q").await.unwrap();
}

/// What this machine's cgroups support, and that a started VM's QEMU lands in its cgroup with
/// the mapped weights when they do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroup_placement_on_this_machine() {
    let e = env();
    let m = VmManager::open(&e.state).unwrap();
    let support = m.cgroup_support().clone();
    eprintln!("cgroup support here: {}", support.describe());
    let mut s = paused_spec(&e.dir, "vm-cg");
    s.weights.cpu = 200;
    s.weights.memory = 50;
    m.create(&s).unwrap();
    let started = m.start("vm-cg").await.unwrap();
    match &support {
        CgroupSupport::Unavailable { reason } => {
            // Start still succeeded; the reason is reported.
            assert!(!reason.is_empty());
            assert!(started.cgroup.is_err());
            let info = m.info("vm-cg").await.unwrap();
            assert!(info.cgroup.starts_with("unavailable: "), "{}", info.cgroup);
        }
        CgroupSupport::V2 { .. } | CgroupSupport::V1 { .. } => {
            let applied = started.cgroup.clone().expect("placement where supported");
            let cg = m.cgroup("vm-cg").unwrap();
            assert!(cg.contains(started.pid).unwrap(), "QEMU in its cgroup");
            let expect_cpu = if matches!(support, CgroupSupport::V2 { .. }) { 200 } else { cgroup::cpu_shares(200) };
            if applied.cpu.is_some() {
                assert_eq!(applied.cpu, Some(expect_cpu));
                assert_eq!(cg.read_back().unwrap().cpu, Some(expect_cpu));
            }
            if applied.memory_low.is_some() {
                assert_eq!(applied.memory_low, Some(cgroup::memory_low(50, 128)));
            }
            // Resizing re-applies the memory mapping for the new entitlement.
            m.resize_vmem("vm-cg", 256).await.unwrap();
            if applied.memory_low.is_some() {
                let back = cg.read_back().unwrap();
                // v1 rounds soft limits to pages; both values are page multiples here.
                assert_eq!(back.memory_low, Some(cgroup::memory_low(50, 128 + 256)));
            }
            let info = m.info("vm-cg").await.unwrap();
            assert!(info.cgroup.contains("cpu Some"), "{}", info.cgroup);
        }
    }
    let dirs = m.cgroup("vm-cg").map(|cg| cg.dirs()).unwrap_or_default();
    m.destroy("vm-cg").await.unwrap();
    // The VM's cgroup directories went with it.
    assert!(dirs.iter().all(|d| !d.exists()), "{dirs:?}");
}

/// Migration between two paused QEMUs: a throttled migration can be followed and cancelled,
/// the source keeps its state; an unthrottled one completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_cancel_then_complete_without_guest() {
    use ppn_vm::migrate::{MigrateError, MigrationParams};
    let e = env();
    let m = VmManager::open(&e.state).unwrap();
    m.create(&paused_spec(&e.dir, "src")).unwrap();
    m.create(&paused_spec(&e.dir, "dst")).unwrap();
    m.start("src").await.unwrap();
    // A source that is not a destination is refused for migrate-incoming.
    assert!(matches!(m.migrate_incoming("src", "tcp:127.0.0.1:1").await, Err(MigrateError::WrongState { .. })));
    m.start_incoming("dst").await.unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let uri = format!("tcp:127.0.0.1:{port}");
    m.migrate_incoming("dst", &uri).await.unwrap();

    // 1 MiB/s: far too slow to finish, so it is still active when cancelled.
    m.set_migration_params("src", MigrationParams { downtime_limit_ms: 100, max_bandwidth: 1 << 20 }).await.unwrap();
    assert_eq!(m.migration_progress("src").await.unwrap().status, "none");
    m.migrate_start("src", &uri).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let p = m.migration_progress("src").await.unwrap();
    assert!(matches!(p.status.as_str(), "setup" | "active"), "{p:?}");
    m.migrate_cancel("src").await.unwrap();
    let err = m.wait_migration("src", Duration::from_secs(10), Duration::from_millis(20), |_| {}).await.unwrap_err();
    assert!(matches!(&err, MigrateError::Failed { status, .. } if status == "cancelled"), "{err}");
    assert_eq!(m.state("src").await.unwrap().label(), "prelaunch");

    // The cancelled stream failed the destination (it exits); start a fresh one and complete.
    let t = Instant::now();
    while m.state("dst").await.unwrap().pid().is_some() {
        assert!(t.elapsed() < Duration::from_secs(10), "destination still alive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    m.start_incoming("dst").await.unwrap();
    m.migrate_incoming("dst", &uri).await.unwrap();
    m.set_migration_params("src", MigrationParams::default()).await.unwrap();
    m.migrate_start("src", &uri).await.unwrap();
    let done = m.wait_migration("src", Duration::from_secs(30), Duration::from_millis(20), |_| {}).await.unwrap();
    assert_eq!(done.status, "completed");
    assert!(done.total_time_ms.is_some());
    assert_eq!(m.state("src").await.unwrap().label(), "postmigrate");
    // The destination ends up where the source was: paused before launch (-S). It leaves
    // `inmigrate` shortly after the source reports completion (it still loads device state).
    let t = Instant::now();
    let dst_state = loop {
        let s = m.state("dst").await.unwrap().label();
        if s != "inmigrate" || t.elapsed() > Duration::from_secs(10) {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(matches!(dst_state.as_str(), "prelaunch" | "paused"), "{dst_state}");
    m.destroy("src").await.unwrap();
    m.destroy("dst").await.unwrap();
}

/// Two managers (as two processes would) start the same VM at once: the per-VM lock lets one
/// launch QEMU, the other then sees it running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_run_one_qemu() {
    let e = env();
    let a = VmManager::open(&e.state).unwrap();
    let b = VmManager::open(&e.state).unwrap();
    a.create(&paused_spec(&e.dir, "vm-c")).unwrap();
    let (ra, rb) = tokio::join!(a.start("vm-c"), b.start("vm-c"));
    let (ok, err) = match (ra, rb) {
        (Ok(s), Err(e)) | (Err(e), Ok(s)) => (s, e),
        other => panic!("expected exactly one start to succeed: {other:?}"),
    };
    assert!(matches!(err, ManagerError::AlreadyRunning { pid, .. } if pid == ok.pid), "{err}");
    // Exactly one QEMU carries this VM's QMP socket.
    let qmp_arg = format!("unix:{},", a.paths("vm-c").unwrap().qmp().display());
    let mut ours = 0;
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).any(|arg| arg.starts_with(qmp_arg.as_bytes())) {
            ours += 1;
        }
    }
    assert_eq!(ours, 1);
    // Stop and destroy from the two managers at once: whichever runs first ends QEMU, the
    // other finds it stopped (stop after destroy: the VM is gone).
    let (sa, sb) = tokio::join!(a.stop("vm-c", Duration::ZERO), b.destroy("vm-c"));
    match (&sa, &sb) {
        (Ok(StopOutcome::Quit), Ok(StopOutcome::AlreadyStopped)) => {}
        (Err(ManagerError::NotFound(_)), Ok(StopOutcome::Quit)) => {}
        other => panic!("unexpected outcomes {other:?}"),
    }
    assert!(!e.state.join("vm-c").exists());
    assert!(!matches!(ppn_vm::manager::process_is_vm(ok.pid, &e.state.join("vm-c/qmp.sock")), PidStatus::Live(_)));
}
