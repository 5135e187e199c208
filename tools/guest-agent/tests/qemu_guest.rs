//! The guest for real: builds (or reuses) the image from Debian packages, boots it in QEMU
//! (TCG) with the fabric's command line, reads the agent's reports from the virtio-serial
//! socket, then plugs 512 MiB with virtio-mem over QMP and unplugs it again, watching the
//! agent's MemTotal follow.
//!
//! Needs qemu-system-x86_64, apt (with lists) and network for the first build; fails with a
//! clear message if they are missing, unless PPN_SKIP_GUEST=1.

use ppn_guest_agent::image::{self, ImageOptions};
use ppn_guest_agent::report::{Decoder, Report};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

const MIB_KIB: u64 = 1024;
const PLUG_MIB: u64 = 512;

/// Kills QEMU on every path out of the test.
struct Qemu {
    child: Child,
    console: PathBuf,
}

impl Qemu {
    fn console(&self) -> String {
        let text = std::fs::read_to_string(&self.console).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics with the guest's console attached.
fn fail(qemu: &Qemu, msg: &str) -> ! {
    panic!("{msg}\n--- guest console (last lines) ---\n{}\n---", qemu.console())
}

struct Stamped {
    at: Instant,
    report: Report,
}

/// Reads the agent's stream on a thread: every report with its arrival time; decode errors
/// after the first good report are counted in the returned handle's result.
fn reader(mut stream: UnixStream) -> (Receiver<Stamped>, std::thread::JoinHandle<usize>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut d = Decoder::new();
        let mut buf = [0u8; 4096];
        let mut synced = false;
        let mut errors_after_sync = 0;
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) | Err(_) => return errors_after_sync,
                Ok(n) => n,
            };
            d.push(&buf[..n]);
            while let Some(r) = d.next_report() {
                match r {
                    Ok(report) => {
                        synced = true;
                        if tx.send(Stamped { at: Instant::now(), report }).is_err() {
                            return errors_after_sync;
                        }
                    }
                    Err(e) => {
                        if synced {
                            eprintln!("decode error after sync: {e}");
                            errors_after_sync += 1;
                        }
                    }
                }
            }
        }
    });
    (rx, handle)
}

/// Reports until one satisfies `pred` (returned) or `timeout` passes (panics); checks that the
/// counter strictly increases on the way.
fn wait_for(
    qemu: &Qemu,
    rx: &Receiver<Stamped>,
    last: &mut Report,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Report) -> bool,
) -> Stamped {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(s) => {
                if s.report.counter <= last.counter {
                    fail(qemu, &format!("counter did not increase: {:?} after {:?}", s.report, last));
                }
                if s.report.monotonic_ns < last.monotonic_ns {
                    fail(qemu, &format!("monotonic_ns went back: {:?} after {:?}", s.report, last));
                }
                *last = s.report;
                if pred(&s.report) {
                    return s;
                }
            }
            Err(RecvTimeoutError::Timeout) => {
                fail(qemu, &format!("timed out after {timeout:?} waiting for {what}; last report {last:?}"))
            }
            Err(RecvTimeoutError::Disconnected) => {
                fail(qemu, &format!("the agent socket closed while waiting for {what}"))
            }
        }
    }
}

/// A minimal QMP client: greeting, capabilities, commands answered by `return` (events skipped).
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let s = UnixStream::connect(path).unwrap_or_else(|e| panic!("QMP socket {}: {e}", path.display()));
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut q = Qmp { reader: BufReader::new(s.try_clone().unwrap()), writer: s };
        let greeting = q.line();
        assert!(greeting.get("QMP").is_some(), "not a QMP greeting: {greeting}");
        q.execute("qmp_capabilities", serde_json::json!({}));
        q
    }

    fn line(&mut self) -> serde_json::Value {
        let mut l = String::new();
        let n = self.reader.read_line(&mut l).expect("reading QMP");
        assert!(n > 0, "QMP closed the connection");
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("QMP sent non-JSON {l:?}: {e}"))
    }

    fn execute(&mut self, command: &str, arguments: serde_json::Value) -> serde_json::Value {
        let msg = serde_json::json!({"execute": command, "arguments": arguments});
        writeln!(self.writer, "{msg}").expect("writing QMP");
        loop {
            let v = self.line();
            if let Some(r) = v.get("return") {
                return r.clone();
            }
            if let Some(e) = v.get("error") {
                panic!("QMP {command} failed: {e}");
            }
            // An event: skip.
        }
    }
}

fn connect_retry(path: &Path, timeout: Duration) -> UnixStream {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return s,
            Err(e) if Instant::now() > deadline => panic!("cannot connect to {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn guest_boots_reports_and_follows_virtio_mem_plug_and_unplug() {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping the QEMU guest test");
        return;
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ppn-guest");
    let t = Instant::now();
    let img = image::ensure(&cache, &ImageOptions { verbose: true, ..Default::default() }).unwrap_or_else(|e| {
        panic!(
            "cannot build the guest image in {}: {e}\n(needs apt-get with lists, network to a Debian mirror, \
             dpkg-deb and the rustup target x86_64-unknown-linux-musl: see scripts/setup; set PPN_SKIP_GUEST=1 to skip)",
            cache.display()
        )
    });
    eprintln!(
        "image ready in {:.1} s (packages cached: {}, all cached: {})",
        t.elapsed().as_secs_f64(),
        img.packages_cached,
        img.cached
    );
    assert!(img.kernel.is_file() && img.initrd.is_file());
    assert!(img.cmdline.contains("memhp_default_state=online_movable"));
    // The modules /init loads: each one's .modinfo names it, matches the kernel, and lists
    // only dependencies loaded before it.
    for (i, m) in img.modules.iter().enumerate() {
        let ko = std::fs::read(cache.join(format!("base/modules/{m}.ko"))).expect("cached module");
        let info = image::modinfo(&ko).unwrap_or_else(|e| panic!("{m}.ko {e}"));
        assert_eq!(info.get("name"), Some(m), "{m}.ko's name");
        assert!(
            info.get("vermagic").is_some_and(|v| v.starts_with(&format!("{} ", img.kernel_release))),
            "{m}.ko's vermagic: {info:?}"
        );
        for dep in info.get("depends").map(String::as_str).unwrap_or("").split(',').filter(|d| !d.is_empty()) {
            // .modinfo names some dependencies by file name (dm-mod for dm_mod).
            let dep = dep.replace('-', "_");
            assert!(
                img.modules[..i].contains(&dep),
                "{m} depends on {dep}, which is not loaded before it: {:?}",
                img.modules
            );
        }
    }
    for needed in ["virtio_pci", "virtio_mem", "virtio_balloon", "virtio_console"] {
        assert!(img.modules.iter().any(|m| m == needed), "{needed} missing from {:?}", img.modules);
    }

    let dir = tempfile::tempdir().unwrap();
    let agent_sock = dir.path().join("agent.sock");
    let qmp_sock = dir.path().join("qmp.sock");
    let console = dir.path().join("console.log");
    let booted = Instant::now();
    let child = Command::new("qemu-system-x86_64")
        .args(img.qemu_args(&agent_sock, &qmp_sock))
        .args(["-serial", &format!("file:{}", console.display()), "-monitor", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run qemu-system-x86_64: {e} (scripts/setup installs qemu-system-x86; set PPN_SKIP_GUEST=1 to skip)"));
    let qemu = Qemu { child, console };

    let stream = connect_retry(&agent_sock, Duration::from_secs(10));
    let control = stream.try_clone().unwrap();
    let (rx, first_reader) = reader(stream);
    let mut last = Report::default();
    let first = wait_for(&qemu, &rx, &mut last, Duration::from_secs(40), "the first report", |_| true);
    let boot = first.at - booted;
    eprintln!("first report {:.1} s after QEMU started: {:?}", boot.as_secs_f64(), first.report);
    let total0 = first.report.mem_total_kib;
    if !(150 * MIB_KIB..=256 * MIB_KIB).contains(&total0) {
        fail(&qemu, &format!("MemTotal {total0} KiB is not plausible for 256 MiB of boot memory"));
    }
    assert!(first.report.mem_available_kib > 0 && first.report.mem_available_kib <= total0, "{:?}", first.report);
    // A second of reports: they keep coming, about every 10 ms.
    let second = wait_for(&qemu, &rx, &mut last, Duration::from_secs(5), "a second of reports", |r| {
        r.monotonic_ns >= first.report.monotonic_ns + 1_000_000_000
    });
    let ticks = second.report.counter - first.report.counter;
    eprintln!("{ticks} reports in the agent's second ({:?} of host time)", second.at - first.at);
    assert!((50..=101).contains(&ticks), "{ticks} reports per second of agent time, expected ~100");

    let mut qmp = Qmp::connect(&qmp_sock);
    let plug = Instant::now();
    qmp.execute("qom-set", serde_json::json!({"path": "/machine/peripheral/vmem0dev", "property": "requested-size", "value": PLUG_MIB * 1024 * 1024}));
    let plugged = wait_for(&qemu, &rx, &mut last, Duration::from_secs(30), "MemTotal to grow by 512 MiB", |r| {
        r.mem_total_kib >= total0 + (PLUG_MIB - 8) * MIB_KIB
    });
    let grown = plugged.report.mem_total_kib - total0;
    eprintln!("plug {PLUG_MIB} MiB: MemTotal +{grown} KiB after {:.2} s", (plugged.at - plug).as_secs_f64());
    assert!(grown <= PLUG_MIB * MIB_KIB, "MemTotal grew by {grown} KiB, more than was plugged");
    let size = qmp.execute("qom-get", serde_json::json!({"path": "/machine/peripheral/vmem0dev", "property": "size"}));
    assert_eq!(size.as_u64(), Some(PLUG_MIB * 1024 * 1024), "virtio-mem size after plug");

    let unplug = Instant::now();
    qmp.execute(
        "qom-set",
        serde_json::json!({"path": "/machine/peripheral/vmem0dev", "property": "requested-size", "value": 0}),
    );
    let unplugged = wait_for(&qemu, &rx, &mut last, Duration::from_secs(30), "MemTotal to shrink back", |r| {
        r.mem_total_kib <= total0 + 8 * MIB_KIB
    });
    eprintln!(
        "unplug: MemTotal {} KiB (was {total0} before the plug) after {:.2} s",
        unplugged.report.mem_total_kib,
        (unplugged.at - unplug).as_secs_f64()
    );
    let size = qmp.execute("qom-get", serde_json::json!({"path": "/machine/peripheral/vmem0dev", "property": "size"}));
    assert_eq!(size.as_u64(), Some(0), "virtio-mem size after unplug");

    // The balloon: ask for 64 MiB back (the guest at 192 MiB), watch the agent's MemTotal
    // drop by it and QEMU's view follow, then deflate.
    let inflate = Instant::now();
    qmp.execute("balloon", serde_json::json!({"value": 192u64 * 1024 * 1024}));
    let ballooned = wait_for(&qemu, &rx, &mut last, Duration::from_secs(20), "MemTotal to drop by the balloon", |r| {
        r.mem_total_kib <= total0 - 60 * MIB_KIB
    });
    eprintln!(
        "balloon to 192 MiB: MemTotal {} KiB after {:.2} s",
        ballooned.report.mem_total_kib,
        (ballooned.at - inflate).as_secs_f64()
    );
    // QEMU learns the balloon's size from the guest a little after the guest gave the pages.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let actual = qmp.execute("query-balloon", serde_json::json!({}));
        if actual["actual"].as_u64().is_some_and(|a| a <= 196 * 1024 * 1024) {
            break;
        }
        if Instant::now() > deadline {
            fail(&qemu, &format!("query-balloon 10 s after the guest's MemTotal dropped: {actual}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    qmp.execute("balloon", serde_json::json!({"value": 256u64 * 1024 * 1024}));
    let unplugged = wait_for(&qemu, &rx, &mut last, Duration::from_secs(20), "MemTotal back after deflating", |r| {
        r.mem_total_kib >= total0
    });

    // The host goes away and comes back: the agent keeps going (the reports it could not
    // deliver take their numbers), the new connection resynchronises.
    control.shutdown(std::net::Shutdown::Both).unwrap();
    let errors = first_reader.join().expect("reader thread");
    assert_eq!(errors, 0, "decode errors after the stream synchronised");
    drop(rx);
    std::thread::sleep(Duration::from_millis(500));
    let (rx, second_reader) = reader(connect_retry(&agent_sock, Duration::from_secs(5)));
    let before = last;
    let again = wait_for(&qemu, &rx, &mut last, Duration::from_secs(10), "a report after reconnecting", |_| true);
    let missed = again.report.counter - before.counter - 1;
    eprintln!("reconnected: {missed} reports not delivered while the host was away");
    assert!(missed >= 5, "the agent did not keep counting while the host was away: {missed} missed in 500 ms");
    assert_eq!(again.report.mem_total_kib, unplugged.report.mem_total_kib);

    drop(qmp);
    drop(rx);
    drop(qemu);
    let errors = second_reader.join().expect("reader thread");
    assert_eq!(errors, 0, "decode errors after the stream synchronised (second connection)");
}

/// Two callers at once (two test processes do this) serialise on the cache's lock and get the
/// same image.
#[test]
fn concurrent_callers_share_the_cache() {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping the guest image test");
        return;
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ppn-guest");
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let cache = cache.clone();
            std::thread::spawn(move || image::ensure(&cache, &ImageOptions::default()))
        })
        .collect();
    let images: Vec<_> = callers
        .into_iter()
        .map(|c| {
            c.join()
                .expect("caller thread")
                .unwrap_or_else(|e| panic!("cannot build the guest image: {e} (PPN_SKIP_GUEST=1 skips)"))
        })
        .collect();
    assert_eq!(images[0].initrd, images[1].initrd);
    assert_eq!(images[0].agent_sha256, images[1].agent_sha256);
    assert_eq!(images[0].packages, images[1].packages);
    assert!(images.iter().any(|i| i.cached), "the second caller found no valid cache");
    let manifest = std::fs::read_to_string(cache.join("manifest")).expect("manifest");
    let initrd = std::fs::read(&images[0].initrd).expect("initrd");
    let sha: String = {
        use sha2::Digest;
        sha2::Sha256::digest(&initrd).iter().map(|b| format!("{b:02x}")).collect()
    };
    assert!(manifest.contains(&format!("file initrd.cpio {sha}")), "manifest does not match the initrd:\n{manifest}");
}
