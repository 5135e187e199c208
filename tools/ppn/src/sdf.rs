//! `ppn sdf check FILE`: holds a Microkit system description to the node image's layout
//! (`ppn-layout`, the one source the PD code takes its channel ids, regions and addresses from).

use crate::print_json;
use ppn_sdf::{SdfError, Summary};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Check an SDF against the layout: exit 0 with a one-line summary, or exit 1 listing every
    /// error (file:line: element, then what is wrong).
    Check {
        /// The system description, e.g. sdf/qemu_virt_aarch64.system.
        file: PathBuf,
        /// Print JSON for scripts instead of text.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Check { file, json } => check(&file, json),
    }
}

fn check(file: &Path, json: bool) -> Result<ExitCode, String> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let name = file.display().to_string();
    let outcome = ppn_sdf::check_bytes(&name, &bytes);
    if json {
        print_json(&to_json(&name, &outcome))?;
    } else {
        match &outcome {
            Ok(summary) => {
                println!("{name}: ok: {summary} match ppn-layout (board {})", ppn_layout::BOARD)
            }
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                let s = if errors.len() == 1 { "" } else { "s" };
                eprintln!("{name}: {} error{s}; the layout is components/layout (ppn-layout)", errors.len());
            }
        }
    }
    Ok(if outcome.is_ok() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn to_json(file: &str, outcome: &Result<Summary, Vec<SdfError>>) -> serde_json::Value {
    let summary = |s: &Summary| {
        serde_json::json!({
            "pds": s.pds, "regions": s.regions, "maps": s.maps,
            "channels": s.channels, "irqs": s.irqs, "setvars": s.setvars,
        })
    };
    match outcome {
        Ok(s) => serde_json::json!({
            "file": file, "board": ppn_layout::BOARD, "ok": true, "summary": summary(s), "errors": [],
        }),
        Err(errors) => serde_json::json!({
            "file": file, "board": ppn_layout::BOARD, "ok": false, "summary": null,
            "errors": errors.iter().map(|e| serde_json::json!({
                "kind": e.kind(), "line": e.line(), "element": e.element(), "message": e.to_string(),
            })).collect::<Vec<_>>(),
        }),
    }
}
