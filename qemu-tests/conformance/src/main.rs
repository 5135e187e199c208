//! `ppn-conformance --socket PATH`: runs every socket-only check against a running TCB.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let socket = match (args.next().as_deref(), args.next()) {
        (Some("--socket"), Some(p)) => PathBuf::from(p),
        _ => {
            eprintln!("usage: ppn-conformance --socket PATH");
            return ExitCode::from(2);
        }
    };
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in ppn_conformance::checks() {
        match check(&socket) {
            Ok(what) => {
                passed += 1;
                println!("ok    {name}: {what}");
            }
            Err(why) => {
                failed += 1;
                println!("FAIL  {name}: {why}");
            }
        }
    }
    println!("{passed} passed, {failed} failed");
    if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
