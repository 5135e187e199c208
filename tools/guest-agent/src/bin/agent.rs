//! `ppn-guest-agent`: runs in the guest (started by the initramfs's /init), writes one report
//! frame every 10 ms to the virtio-serial port `org.ppnfabric.agent.0`: a counter, the
//! nanoseconds since it started (CLOCK_MONOTONIC, via `Instant`), MemTotal and MemAvailable.
//!
//! It never exits on its own: a missing port, a host that is not connected or a failed write
//! are logged (rate-limited, to stderr = the serial console) and retried.

use ppn_guest_agent::PORT_NAME;
use ppn_guest_agent::agent::{find_port, read_meminfo};
use ppn_guest_agent::report::Report;
use std::fs::{File, OpenOptions};
use std::io::Write;

/// A line on stderr (the serial console). Never panics, unlike `eprintln!`: the agent must not
/// die because the console is gone.
fn console(line: &str) {
    let _ = writeln!(std::io::stderr(), "ppn-guest-agent: {line}");
}
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

const PERIOD: Duration = Duration::from_millis(10);
/// O_NONBLOCK (0o4000 on Linux x86_64 and aarch64): a write to a port whose host end is not
/// connected fails with EAGAIN instead of blocking, so the agent keeps its 10 ms rhythm.
const O_NONBLOCK: i32 = 0o4000;

struct Log {
    last: Option<Instant>,
    suppressed: u64,
}

impl Log {
    /// Prints at most one message every 5 s.
    fn say(&mut self, msg: &str) {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(5)) {
            self.suppressed += 1;
            return;
        }
        if self.suppressed > 0 {
            console(&format!("{msg} ({} similar messages suppressed)", self.suppressed));
        } else {
            console(msg);
        }
        self.last = Some(now);
        self.suppressed = 0;
    }
}

fn open_port() -> Result<File, String> {
    let dev =
        find_port(Path::new("/sys/class/virtio-ports"), Path::new("/dev"), PORT_NAME).map_err(|e| e.to_string())?;
    OpenOptions::new()
        .write(true)
        .custom_flags(O_NONBLOCK)
        .open(&dev)
        .map_err(|e| format!("cannot open {}: {e}", dev.display()))
}

/// `ppn-guest-agent boot-check STATEMENT TRUST DISK`: prints `ROOT_HEX HASH_OFFSET IMAGE`
/// and exits 0, or prints why not and exits 1 (ppn_guest_agent::boot_check).
fn boot_check(args: &[String]) -> ! {
    let [statement, trust, disk] = args else {
        println!("usage: ppn-guest-agent boot-check STATEMENT TRUST DISK");
        std::process::exit(2);
    };
    #[cfg(feature = "boot-check")]
    match ppn_guest_agent::boot_check::boot_check(Path::new(statement), Path::new(trust), Path::new(disk)) {
        Ok(v) => {
            println!("{}", v.line());
            std::process::exit(0)
        }
        Err(e) => {
            println!("{e}");
            std::process::exit(1)
        }
    }
    #[cfg(not(feature = "boot-check"))]
    {
        let _ = (statement, trust, disk);
        println!("this agent was built without the boot-check feature: no verified boot");
        std::process::exit(1)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("boot-check") {
        boot_check(&args[1..]);
    }
    let start = Instant::now();
    let meminfo = Path::new("/proc/meminfo");
    let mut log = Log { last: None, suppressed: 0 };
    let mut port: Option<File> = None;
    let mut counter = 0u64;
    let mut next = start;
    let mut announced = false;
    loop {
        next += PERIOD;
        counter += 1;
        let (mem_total_kib, mem_available_kib) = match read_meminfo(meminfo) {
            Ok(m) => m,
            Err(e) => {
                log.say(&e.to_string());
                (0, 0)
            }
        };
        let monotonic_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let frame = Report { counter, monotonic_ns, mem_total_kib, mem_available_kib }.encode();
        if port.is_none() {
            match open_port() {
                Ok(f) => {
                    console(&format!("reporting on the port {PORT_NAME}"));
                    port = Some(f);
                }
                Err(e) => log.say(&e),
            }
        }
        if let Some(f) = port.as_mut() {
            match f.write(&frame) {
                Ok(n) if n == frame.len() => {
                    if !announced {
                        console(&format!("first report delivered (counter {counter})"));
                        announced = true;
                    }
                }
                Ok(n) => log.say(&format!("short write to the port: {n} of {} bytes", frame.len())),
                // Host not connected (EAGAIN), or not reading: drop this report, keep going.
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    log.say(&format!("write to the port failed: {e}; reopening"));
                    port = None;
                }
            }
        }
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Fell behind (a stalled vCPU): do not burst to catch up.
            next = now;
        }
    }
}
