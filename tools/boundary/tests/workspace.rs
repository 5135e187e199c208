//! The check against the real workspace: it must pass, as CI requires.

use std::path::PathBuf;
use std::process::Command;

fn root_manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml")
}

#[test]
fn real_workspace_passes() {
    let outcome = ppn_boundary::run(Some(&root_manifest())).expect("the check runs");
    let listing: Vec<String> = outcome.violations.iter().map(ToString::to_string).collect();
    assert!(outcome.passed(), "boundary violations:\n{}", listing.join("\n"));
    // This crate and ppn-wire are members at least; a scan that found nothing scanned nothing.
    assert!(outcome.counts.total_members() >= 2, "{}", outcome.summary());
    assert!(outcome.counts.source_files > 0, "{}", outcome.summary());
}

#[test]
fn binary_exits_zero_on_real_workspace() {
    let out = Command::new(env!("CARGO_BIN_EXE_ppn-boundary"))
        .arg("--manifest-path")
        .arg(root_manifest())
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("ppn-boundary: ok: R1-R4 hold for "), "{stdout}");
}

#[test]
fn binary_rejects_unknown_arguments() {
    let out = Command::new(env!("CARGO_BIN_EXE_ppn-boundary")).arg("--bogus").output().expect("runs");
    assert_eq!(out.status.code(), Some(2));
}

/// Writes `files` (path, text) under `root`.
fn write_tree(root: &std::path::Path, files: &[(&str, String)]) {
    for (path, text) in files {
        let path = root.join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

fn manifest(name: &str, deps: &str, lints: bool) -> String {
    let lints = if lints { "\n[lints]\nworkspace = true\n" } else { "" };
    format!("[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[dependencies]\n{deps}\n{lints}")
}

#[test]
fn binary_reports_a_violating_workspace() {
    // A throwaway workspace with path dependencies only, so `cargo metadata` needs no network:
    // proxy -> tool -> ledger (R1), ledger -> proxy-ish util (R2), no lints (R3), unsafe (R4).
    let dir = tempfile::tempdir().unwrap();
    let kw = concat!("un", "safe");
    let core_lib = "#![no_std]\n#![forbid(unsafe_code)]\n".to_string();
    write_tree(
        dir.path(),
        &[
            (
                "Cargo.toml",
                "[workspace]\nresolver = \"3\"\nmembers = [\"components/wire\", \"components/ledger\", \
                 \"linux-proxy/foo\", \"linux-proxy/util\", \"tools/bar\"]\n\
                 [workspace.lints.rust]\nunsafe_code = \"forbid\"\n"
                    .to_string(),
            ),
            ("components/wire/Cargo.toml", manifest("ppn-wire", "", true)),
            ("components/wire/src/lib.rs", core_lib.clone()),
            (
                "components/ledger/Cargo.toml",
                manifest("ppn-ledger", "ppn-util = { path = \"../../linux-proxy/util\" }", true),
            ),
            ("components/ledger/src/lib.rs", core_lib),
            ("linux-proxy/util/Cargo.toml", manifest("ppn-util", "", true)),
            ("linux-proxy/util/src/lib.rs", String::new()),
            (
                "linux-proxy/foo/Cargo.toml",
                manifest(
                    "ppn-foo",
                    "ppn-wire = { path = \"../../components/wire\" }\nppn-bar = { path = \"../../tools/bar\" }",
                    true,
                ),
            ),
            ("linux-proxy/foo/src/lib.rs", format!("pub fn f(p: *const u8) -> u8 {{ {kw} {{ *p }} }}\n")),
            ("tools/bar/Cargo.toml", manifest("ppn-bar", "ppn-ledger = { path = \"../../components/ledger\" }", false)),
            ("tools/bar/src/lib.rs", String::new()),
        ],
    );
    let out = Command::new(env!("CARGO_BIN_EXE_ppn-boundary"))
        .arg("--manifest-path")
        .arg(dir.path().join("Cargo.toml"))
        .output()
        .expect("the binary runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for expected in [
        "[R1] linux-proxy/foo (ppn-foo) -> ppn-bar -> ppn-ledger: ",
        "[R2] components/ledger (ppn-ledger) -> ppn-util: ",
        "[R3] tools/bar/Cargo.toml (ppn-bar): ",
        "[R4] linux-proxy/foo/src/lib.rs:1: ",
    ] {
        assert!(stdout.lines().any(|l| l.starts_with(expected)), "missing {expected:?} in\n{stdout}");
    }
    assert!(stdout.trim_end().ends_with("ppn-boundary: 4 violation(s) in 5 workspace crates (2 components, 2 linux-proxy, 1 tools), 5 .rs files scanned"), "{stdout}");
}
