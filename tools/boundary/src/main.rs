//! `ppn-boundary [--manifest-path PATH]`: checks the workspace's trust boundary.
//!
//! Prints every violation, one a line, then a summary. Exit status: 0 if every rule holds,
//! 1 on any violation, 2 if the check could not run.

use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage: ppn-boundary [--manifest-path PATH]

Checks the trust boundary of the PPN Fabric workspace:
  R1      linux-proxy/ crates reach no components/ crate but ppn-wire (normal/build deps)
  R1-dev  ... nor through their dev-dependencies
  R2      components/ crates depend on no local crate outside components/
  R3      components/, linux-proxy/, tools/ crates have `[lints] workspace = true`;
          components/ library roots have #![no_std] and #![forbid(unsafe_code)]
  R4      no `unsafe` keyword in any .rs file outside system/

Exit status: 0 all rules hold, 1 violations found, 2 the check could not run.
Runs `cargo metadata` through $CARGO (or `cargo`).";

fn main() -> ExitCode {
    let mut manifest: Option<PathBuf> = None;
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy();
        if text == "-h" || text == "--help" {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        } else if text == "--manifest-path" {
            let Some(path) = args.next() else {
                eprintln!("ppn-boundary: --manifest-path needs a value\n\n{USAGE}");
                return ExitCode::from(2);
            };
            manifest = Some(path.into());
        } else if let Some(path) = text.strip_prefix("--manifest-path=") {
            manifest = Some(path.into());
        } else {
            eprintln!("ppn-boundary: unexpected argument {text:?}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    }
    match ppn_boundary::run(manifest.as_deref()) {
        Ok(outcome) => {
            for v in &outcome.violations {
                println!("{v}");
            }
            println!("{}", outcome.summary());
            if outcome.passed() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("ppn-boundary: {e}");
            ExitCode::from(2)
        }
    }
}
