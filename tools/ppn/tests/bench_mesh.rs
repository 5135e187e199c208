//! `ppn bench mesh-revocation` against a real (debug) fleet of `ppn-tcb` and `ppn-node`
//! processes, and `ppn bench tunnel` on a small transfer.

use ppn_conformance::locate_bin;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// `ppn-tcb` and `ppn-node`, built once (the bench finds them next to `ppn`; named explicitly
/// here all the same).
fn siblings() -> &'static (PathBuf, PathBuf) {
    static BINS: OnceLock<(PathBuf, PathBuf)> = OnceLock::new();
    BINS.get_or_init(|| (locate_bin("ppn-tcb"), locate_bin("ppn-node")))
}

/// Runs `ppn` with `TMPDIR` set to `tmp` (so the bench's fleet directory lands in it).
fn ppn(args: &[&str], tmp: &Path) -> Output {
    let (tcb, node) = siblings();
    Command::new(env!("CARGO_BIN_EXE_ppn"))
        .args(args)
        .env("TMPDIR", tmp)
        .env("PPN_PPN_TCB_BIN", tcb)
        .env("PPN_PPN_NODE_BIN", node)
        .output()
        .expect("run ppn")
}

/// The command lines of running processes that mention `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // A process may end between the listing and the read.
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
        }
    }
    found
}

fn number(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} is not a number in {v}"));
    assert!(x.is_finite() && x > 0.0, "{key} = {x} in {v}");
    x
}

#[test]
fn mesh_revocation_times_a_real_fleet_and_leaves_nothing_running() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ppn(&["bench", "mesh-revocation", "--nodes", "3", "--runs", "3", "--json"], tmp.path());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "ppn failed: {stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&stdout).expect("valid JSON");
    assert_eq!(v["nodes"], 3, "{v}");
    assert_eq!(v["runs"], 3, "{v}");
    let (p50, p99, max) = (number(&v, "p50_ms"), number(&v, "p99_ms"), number(&v, "max_ms"));
    assert!(p50 <= p99 && p99 <= max, "{v}");
    assert_eq!(v["loss"], 0.0, "{v}");
    assert!(v["target_met"].is_boolean(), "{v}");
    let samples = v["samples_ms"].as_array().expect("samples_ms");
    assert_eq!(samples.len(), 3, "{v}");
    // The promised keys come first, in this order.
    let keys: Vec<&str> =
        stdout.split(',').take(5).map(|f| f.trim_start_matches('{').split(':').next().unwrap()).collect();
    assert_eq!(keys, [r#""nodes""#, r#""runs""#, r#""p50_ms""#, r#""p99_ms""#, r#""max_ms""#]);

    // Nothing of the fleet is left: no process mentions the temporary directory, and the bench
    // removed its directory.
    let needle = tmp.path().to_string_lossy().into_owned();
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "still running: {left:?}");
    let entries: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().flatten().map(|e| e.path()).collect();
    assert!(entries.is_empty(), "left behind: {entries:?}");
}

#[test]
fn mesh_revocation_refuses_bad_options_before_starting_anything() {
    let tmp = tempfile::tempdir().unwrap();
    for (args, says) in [
        (&["bench", "mesh-revocation", "--nodes", "1"][..], "--nodes"),
        (&["bench", "mesh-revocation", "--runs", "0"][..], "--runs"),
        (&["bench", "mesh-revocation", "--loss", "1.5"][..], "--loss"),
        (&["bench", "tunnel", "--mib", "0"][..], "--mib"),
    ] {
        let out = ppn(args, tmp.path());
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    assert_eq!(std::fs::read_dir(tmp.path()).unwrap().count(), 0);
}

#[test]
fn tunnel_reports_positive_rates() {
    let tmp = tempfile::tempdir().unwrap();
    let out = ppn(&["bench", "tunnel", "--mib", "1", "--json"], tmp.path());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
    number(&v, "tunnel_mbps");
    number(&v, "loopback_mbps");
    number(&v, "ratio");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with(r#"{"tunnel_mbps":"#), "{text}");
}

#[test]
fn an_interrupted_mesh_revocation_stops_its_fleet() {
    use std::io::BufRead;
    let tmp = tempfile::tempdir().unwrap();
    let (tcb, node) = siblings();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ppn"))
        .args(["bench", "mesh-revocation", "--nodes", "2", "--runs", "100000", "--json"])
        .env("TMPDIR", tmp.path())
        .env("PPN_PPN_TCB_BIN", tcb)
        .env("PPN_PPN_NODE_BIN", node)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run ppn");
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "ppn ended before its first run: {seen}");
        seen += &line;
        if line.contains("run 1/") {
            break;
        }
    }
    let needle = tmp.path().to_string_lossy().into_owned();
    assert_eq!(processes_mentioning(&needle).len(), 4, "the fleet should be running now");
    let kill = Command::new("kill").args(["-s", "INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest}");
    assert!(rest.contains("interrupted") && rest.contains("the fleet is stopped"), "{rest}");
    let left = processes_mentioning(&needle);
    assert!(left.is_empty(), "still running: {left:?}");
}
