//! `ppn`: the operator CLI of PPN Fabric. One module per noun: `tcb`, `grant`, `ledger`, `pair`, `bench`.

use clap::{Parser, Subcommand};
use ppn_tcb_client::{ClientError, TcbClient};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod bench;
mod bench_evacuate;
mod bench_migrate;
mod bench_plug;
mod bench_vm;
mod demo;
mod evacuate;
mod fleet;
mod grant;
mod guest;
mod image;
mod ledger;
mod node_cmd;
mod pair;
mod place;
mod sdf;
mod seal;
mod tcb;
mod verify;
mod vm;

/// Operate a PPN Fabric node and fleet.
#[derive(Debug, Parser)]
#[command(name = "ppn", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk to a node's trusted computing base.
    Tcb {
        #[command(subcommand)]
        command: tcb::Command,
    },
    /// Issue, verify and revoke capability grants (the TCB signs and tags them).
    Grant {
        #[command(subcommand)]
        command: grant::Command,
    },
    /// Inspect the node's capability ledger.
    Ledger {
        #[command(subcommand)]
        command: ledger::Command,
    },
    /// A local fleet on this machine: start (paired), inspect, stop.
    Fleet {
        #[command(subcommand)]
        command: fleet::Command,
    },
    /// Pair with another node: the CPace ceremony between the two TCBs over TCP, a six-digit
    /// SAS the operators compare, and on "yes" each TCB admits the other.
    Pair(pair::Args),
    /// Check an attestation report offline against the fleet's trust file and your nonce, and
    /// print the chain it checked (root -> node key -> image -> report).
    Verify(verify::VerifyArgs),
    /// An attestation report on a VM that runs from a sealed image, for your nonce, signed by
    /// its node's TCB: `ppn attest VM --nonce HEX > report.cbor`, then `ppn verify`.
    Attest(verify::AttestArgs),
    /// Images: seal a guest image (dm-verity + a signed statement); build the seL4 node image
    /// (needs MICROKIT_SDK) and boot it in QEMU.
    Image {
        #[command(subcommand)]
        command: image::Command,
    },
    /// Benchmarks (JSON with --json; build with --release for meaningful numbers).
    Bench {
        #[command(subcommand)]
        command: bench::Command,
    },
    /// Check the node image's Microkit system description against its layout.
    Sdf {
        #[command(subcommand)]
        command: sdf::Command,
    },
    /// The guest the fabric's VMs boot: build it (Debian kernel, busybox, the agent), cached.
    Guest {
        #[command(subcommand)]
        command: guest::Command,
    },
    /// A node's VMs: create, start, stop, destroy, list, grow with borrowed memory.
    Vm {
        #[command(subcommand)]
        command: vm::Command,
    },
    /// The fleet demo: a 3-node emulated fleet on this machine, a VM placed by the scheduler,
    /// grown with lent memory, live-migrated, a pinned VM, then a node revoked and evacuated;
    /// narrated, with status tables; everything stopped on the way out and on Ctrl-C.
    Demo(demo::DemoArgs),
    /// Move VMs so that every node holds no more than it offers, and none stays on a node that
    /// is revoked or unreachable: the scheduler's plan (pinned VMs never move), then one live
    /// migration after another. `--dry-run` prints the plan only.
    Rebalance {
        /// The local fleet's directory.
        #[arg(long, env = "PPN_FLEET_DIR", default_value_os_t = std::env::temp_dir().join("ppn-fleet"))]
        fleet_dir: PathBuf,
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
    /// Memory leases: what a node borrows, lends, and its pool.
    Lease {
        #[command(subcommand)]
        command: vm::LeaseCommand,
    },
    /// One node's own controllers: the balloon controller.
    Node {
        #[command(subcommand)]
        command: node_cmd::Command,
    },
}

/// Where the TCB is, and how to print: every command takes these.
#[derive(Debug, clap::Args)]
pub struct Conn {
    /// The TCB's Unix socket (a `ppn-tcb`, or an seL4 image's link).
    #[arg(long, env = "PPN_TCB_SOCKET")]
    pub socket: PathBuf,
    /// Print JSON for scripts instead of text.
    #[arg(long)]
    pub json: bool,
}

impl Conn {
    /// Connects to the TCB; errors name the socket.
    pub async fn connect(&self) -> Result<TcbClient, String> {
        TcbClient::connect(&self.socket).await.map_err(self.context())
    }

    /// Turns a client error into the message the operator sees: the socket, then what the TCB
    /// (or the connection) said.
    pub fn context(&self) -> impl Fn(ClientError) -> String + '_ {
        move |e| at(&self.socket, e)
    }
}

/// `TCB at SOCKET: ERROR`.
pub fn at(socket: &Path, e: ClientError) -> String {
    format!("TCB at {}: {e}", socket.display())
}

/// Prints `value` as pretty JSON.
pub fn print_json(value: &serde_json::Value) -> Result<(), String> {
    println!("{}", serde_json::to_string_pretty(value).map_err(|e| e.to_string())?);
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ppn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Tcb { command } => tcb::run(command).await,
            Command::Grant { command } => grant::run(command).await,
            Command::Ledger { command } => ledger::run(command).await,
            Command::Pair(args) => pair::run(args).await,
            Command::Verify(args) => verify::run(&args),
            Command::Attest(args) => verify::attest(&args),
            Command::Fleet { command } => fleet::run(command).await,
            Command::Bench { command } => bench::run(command),
            Command::Image { command } => image::run(command).await,
            Command::Sdf { command } => sdf::run(command),
            Command::Guest { command } => guest::run(command),
            Command::Vm { command } => vm::run(command),
            Command::Rebalance { fleet_dir, dry_run, json } => place::rebalance(&fleet_dir, dry_run, json),
            Command::Demo(args) => demo::run(args),
            Command::Lease { command } => vm::run_lease(command),
            Command::Node { command } => node_cmd::run(command),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ppn: {e}");
            ExitCode::FAILURE
        }
    }
}
