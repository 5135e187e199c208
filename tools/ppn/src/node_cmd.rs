//! `ppn node ...`: one node's own controllers, through its control socket. For now the balloon
//! controller (`ppn node balloon`, docs/balloon.md).

use crate::print_json;
use crate::vm::On;
use serde_json::{Value, json};
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Revoke a node of the local fleet and bring everything home: every TCB refuses it within
    /// the mesh's revocation time, its borrowed memory returns to the lenders, its unpinned VMs
    /// live-migrate to trusted nodes (progress shown), its pinned VMs are reported and left.
    Revoke {
        /// The node: an index of the local fleet, or 16 hex digits.
        node: String,
        /// The local fleet's directory.
        #[arg(long, env = "PPN_FLEET_DIR", default_value_os_t = std::env::temp_dir().join("ppn-fleet"))]
        fleet_dir: std::path::PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// The balloon controller: budget, and per VM the weight, floor, target, balloon actual and
    /// the guest's MemAvailable. `--budget-mib` sets the node's budget first.
    Balloon {
        #[command(flatten)]
        on: On,
        /// Guest memory the node grants in total, MiB (0 is refused: use --default-budget).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        budget_mib: Option<u64>,
        /// Back to the default budget: the sum of the VMs' ceilings (no overcommit).
        #[arg(long, conflicts_with = "budget_mib")]
        default_budget: bool,
        /// Override a VM's memory weight for the controller: NAME=W (1..=10000).
        #[arg(long, value_name = "NAME=W")]
        weight: Option<String>,
        #[arg(long)]
        json: bool,
    },
}

fn mib(v: &Value) -> String {
    v.as_u64().map_or("-".into(), |m| m.to_string())
}

fn ago(unix_ms: &Value) -> String {
    let Some(at) = unix_ms.as_u64() else { return "-".into() };
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    format!("{:.0}s ago", now.saturating_sub(at) as f64 / 1000.0)
}

/// Prints the status of `node-balloon` as a table.
pub fn print_status(b: &Value) {
    println!(
        "budget {} MiB ({}); ceilings {} MiB, floors {} MiB, targets {} MiB{}",
        b["budget_mib"],
        b["budget_source"].as_str().unwrap_or("?"),
        b["sum_ceilings_mib"],
        b["sum_floors_mib"],
        b["sum_targets_mib"],
        match b["overcommit_mib"].as_u64() {
            Some(0) | None => String::new(),
            Some(o) => format!(", OVERCOMMIT {o} MiB (floors win)"),
        }
    );
    println!(
        "runs {}, targets sent {}, errors {}{}",
        b["ticks"],
        b["changes"],
        b["errors"],
        b["last_error"].as_str().map(|e| format!(" (last: {e})")).unwrap_or_default()
    );
    println!(
        "{:<14} {:>6} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:<10} {:<14} REASON",
        "VM", "WEIGHT", "CEILING", "FLOOR", "WANT", "TARGET", "ACTUAL", "AVAIL", "AVAIL %", "PRESSURE", "LAST CHANGE"
    );
    for v in b["vms"].as_array().into_iter().flatten() {
        let change = &v["last_change"];
        let last = if change.is_null() {
            "-".to_owned()
        } else {
            format!("{}→{} {}", change["from_mib"], change["to_mib"], ago(&change["unix_ms"]))
        };
        println!(
            "{:<14} {:>5}{} {:>7} {:>6} {:>6} {:>6} {:>6} {:>6} {:>10} {:<10} {:<14} {}{}",
            v["name"].as_str().unwrap_or("?"),
            v["weight"],
            if v["weight_source"] == "override" { "*" } else { " " },
            mib(&v["ceiling_mib"]),
            mib(&v["floor_mib"]),
            mib(&v["want_mib"]),
            mib(&v["target_mib"]),
            mib(&v["actual_mib"]),
            mib(&v["mem_available_mib"]),
            v["available_pct"].as_u64().map_or("-".into(), |p| format!("{p}%")),
            v["pressure"].as_str().unwrap_or("?"),
            last,
            v["reason"].as_str().unwrap_or(""),
            v["last_error"].as_str().map(|e| format!(" [error: {e}]")).unwrap_or_default(),
        );
    }
    println!("(MiB; * = weight overridden; AVAIL = the guest's MemAvailable)");
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Revoke { node, fleet_dir, json } => {
            let v = crate::evacuate::revoke_and_evacuate(&fleet_dir, &node, json)?;
            if json {
                print_json(&v)?;
            } else {
                crate::evacuate::print_summary(&v);
            }
            return Ok(ExitCode::SUCCESS);
        }
        Command::Balloon { on, budget_mib, default_budget, weight, json } => {
            let mut req = json!({ "op": "node-balloon" });
            if let Some(b) = budget_mib {
                req["budget_mib"] = json!(b);
            }
            if default_budget {
                req["budget_mib"] = Value::Null;
            }
            if let Some(w) = weight {
                let (vm, w) = w.split_once('=').ok_or_else(|| format!("--weight {w}: want NAME=W"))?;
                let w: u32 = w.parse().map_err(|e| format!("--weight {vm}={w}: {e}"))?;
                req["weight"] = json!({ "vm": vm, "memory": w });
            }
            let v = on.call(req)?;
            let b = &v["balloon"];
            if json {
                print_json(b)?;
            } else if b.is_null() {
                println!("the balloon controller has not run yet");
            } else {
                print_status(b);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
