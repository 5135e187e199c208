//! `ppn`: the operator CLI of PPN Fabric.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

mod tcb;

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
        command: TcbCommand,
    },
}

#[derive(Debug, Subcommand)]
enum TcbCommand {
    /// Show the TCB's identity, uptime, counters and services.
    Status {
        /// The TCB's Unix socket (a `ppn-tcb`, or an seL4 image's link).
        #[arg(long, env = "PPN_TCB_SOCKET")]
        socket: PathBuf,
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
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
            Command::Tcb { command: TcbCommand::Status { socket, json } } => tcb::status(&socket, json).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ppn: {e}");
            ExitCode::FAILURE
        }
    }
}
