//! `ppn-tcb --state DIR --socket PATH [--roots FILE]`: the hosted TCB.

use clap::Parser;
use ppn_ledger::Roots;
use ppn_tcb::{roots, server, tcb::Tcb};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

/// The PPN Fabric TCB as a Linux process (development and emulated fleets).
#[derive(Debug, Parser)]
#[command(name = "ppn-tcb", version)]
struct Args {
    /// State directory (created with mode 0700): node identity and journals.
    #[arg(long)]
    state: PathBuf,
    /// Unix socket to serve the wire protocol on (created with mode 0600).
    #[arg(long)]
    socket: PathBuf,
    /// Connections served at once; more are answered `Busy` and closed.
    #[arg(long, default_value_t = 32)]
    max_connections: usize,
    /// The fleet root set besides this node itself: a file with one hex Ed25519 public key per
    /// line (`#` starts a comment), as `ppn ledger roots` prints it. Records by other authors
    /// are refused unless a root admitted them.
    #[arg(long, value_name = "FILE")]
    roots: Option<PathBuf>,
    /// Lend this much memory to other nodes' VMs, in MiB (a multiple of 2: blocks are 2 MiB).
    /// Fixed at the first start with a pool: a later start with another size is refused.
    #[arg(long, value_name = "MIB", value_parser = parse_lend_mib)]
    lend_mib: Option<u32>,
}

fn parse_lend_mib(s: &str) -> Result<u32, String> {
    let mib: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if mib == 0 || !mib.is_multiple_of(2) {
        return Err("the pool is whole 2 MiB blocks: give a positive even number of MiB".into());
    }
    Ok(mib)
}

fn main() -> ExitCode {
    let args = Args::parse();
    // Before any secret is in memory.
    if let Err(e) = ppn_tcb::harden::harden_process() {
        eprintln!("ppn-tcb: cannot make the process non-dumpable: {e}");
        return ExitCode::from(2);
    }
    let extra_roots = match &args.roots {
        Some(path) => match roots::load(path) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("ppn-tcb: {e}");
                return ExitCode::from(2);
            }
        },
        None => Roots::default(),
    };
    let (tcb, report) = match Tcb::open(&args.state, &extra_roots, args.lend_mib.map(|m| m / 2)) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ppn-tcb: {e}");
            return ExitCode::from(2);
        }
    };
    if report.journal.truncated_bytes > 0 {
        eprintln!(
            "ppn-tcb: node journal had a torn tail of {} bytes after {} records; it was saved aside and cut",
            report.journal.truncated_bytes, report.journal.records
        );
    }
    let ledger = &report.ledger;
    if ledger.rejected > 0 {
        eprintln!(
            "ppn-tcb: ledger journal: {} entries no longer pass the ledger's checks and were skipped \
             ({} records replayed); was --roots changed?",
            ledger.rejected, ledger.records
        );
    }
    if ledger.truncated_bytes > 0 {
        eprintln!(
            "ppn-tcb: ledger journal had a torn tail of {} bytes after {} records; it was saved aside and cut",
            ledger.truncated_bytes, ledger.records
        );
    }
    if let Some(pool) = tcb.lender_pool() {
        eprintln!(
            "ppn-tcb: lending {} MiB: {} blocks free, {} lent, {} reserved, {} neither",
            u64::from(pool.total) * 2,
            pool.free,
            pool.lent,
            pool.reserved,
            pool.in_use
        );
    }
    let node_id = tcb.node().node_id();
    let (records, root_count) = (tcb.ledger().dag().len(), tcb.ledger().roots().len());
    let listener = match server::bind(&args.socket) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ppn-tcb: socket {}: {e}", args.socket.display());
            return ExitCode::from(2);
        }
    };
    let socket = args.socket.clone();
    if let Err(e) = remove_socket_on_signal(socket) {
        eprintln!("ppn-tcb: signal handler: {e}");
        return ExitCode::from(2);
    }
    eprintln!(
        "ppn-tcb: node {node_id} boot {} ({}), ledger of {records} records and {root_count} roots, serving on {}",
        report.boot_count,
        if report.created_identity { "new identity" } else { "identity loaded" },
        args.socket.display()
    );
    match server::serve(listener, Arc::new(Mutex::new(tcb)), args.max_connections) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ppn-tcb: {e}");
            ExitCode::FAILURE
        }
    }
}

/// On SIGINT or SIGTERM: remove the socket and exit. Every acknowledged write is already
/// durable, so exiting at any instant loses nothing.
fn remove_socket_on_signal(socket: PathBuf) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            let _ = std::fs::remove_file(&socket);
            eprintln!("ppn-tcb: signal {sig}, stopped");
            std::process::exit(0);
        }
    });
    Ok(())
}
