//! The operator CLI's grant and ledger commands (`ppn grant ...`, `ppn ledger ...`) against real
//! `ppn-tcb` processes.

use ppn_conformance::ledger::fresh_node_id;
use ppn_conformance::{HostedTcb, locate_bin};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn ppn_bin() -> &'static PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| locate_bin("ppn"))
}

/// Runs `ppn ARGS --socket SOCKET` (no `PPN_TCB_SOCKET` from the environment).
fn ppn(socket: &Path, args: &[&str]) -> Output {
    Command::new(ppn_bin()).args(args).arg("--socket").arg(socket).env_remove("PPN_TCB_SOCKET").output().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and print JSON.
fn json(socket: &Path, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = ppn(socket, &all);
    assert!(o.status.success(), "ppn {args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("ppn {args:?}: {e}: {}", stdout(&o)))
}

fn is_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

#[test]
fn grants_are_issued_verified_and_revoked_and_the_ledger_shows_it() {
    let tcb = HostedTcb::start();
    let s = tcb.socket.as_path();
    let me = json(s, &["tcb", "status"])["node_id"].as_str().unwrap().to_owned();
    let grantee = fresh_node_id().to_string();

    let g1 = json(s, &["grant", "issue", "--grantee", &grantee, "--resource", "vm:7", "--expires", "2h"]);
    let token1 = g1["token"].as_str().unwrap().to_owned();
    assert!(is_hex(&token1, 120), "{g1}");
    assert_eq!((&g1["grantee"], &g1["resource"]), (&grantee.clone().into(), &"vm:7".into()));
    let seq1 = g1["sequence"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let expires = g1["expires_unix_s"].as_u64().unwrap();
    assert!((now + 7190..=now + 7210).contains(&expires), "expires {expires}, now {now}");

    // Text output: the token and its sequence number, in lines a person can read.
    let o = ppn(s, &["grant", "issue", "--grantee", &grantee, "--resource", "memory:3", "--expires", "10m"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    let token2 = text.lines().find_map(|l| l.strip_prefix("token     ")).expect("token line").to_owned();
    assert!(is_hex(&token2, 120), "{text}");
    let seq2: u64 = text.lines().find_map(|l| l.strip_prefix("sequence  ")).expect("sequence line").parse().unwrap();
    assert!(seq2 > seq1);
    assert!(text.contains("resource  memory:3\n"), "{text}");

    let v = ppn(s, &["grant", "verify", &token1]);
    assert_eq!(v.status.code(), Some(0), "{}", stderr(&v));
    assert!(stdout(&v).starts_with("valid: "), "{}", stdout(&v));
    assert_eq!(json(s, &["grant", "verify", &token1]), serde_json::json!({ "verdict": "valid", "valid": true }));

    // Revoke by sequence: the token fails, and verify exits 1 with the verdict on stdout.
    let r = json(s, &["grant", "revoke", "--issuer", &me, "--sequence", &seq1.to_string()]);
    let record = r["record_id"].as_str().unwrap().to_owned();
    assert!(is_hex(&record, 64), "{r}");
    assert_eq!(r["revoked"], serde_json::json!({ "kind": "grant", "issuer": me, "sequence": seq1 }));
    let v = ppn(s, &["grant", "verify", &token1]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).starts_with("grant-revoked: "), "{}", stdout(&v));
    assert!(stderr(&v).is_empty(), "{}", stderr(&v));
    let mut flipped = token2.clone().into_bytes();
    flipped[119] = if flipped[119] == b'0' { b'1' } else { b'0' };
    let v = ppn(s, &["grant", "verify", std::str::from_utf8(&flipped).unwrap(), "--json"]);
    assert_eq!(v.status.code(), Some(1));
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&v.stdout).unwrap()["verdict"], "bad-tag");
    let v = ppn(s, &["grant", "verify", "00ff"]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).starts_with("malformed: "), "{}", stdout(&v));
    // A token too long for a frame is refused by the client, naming the limit.
    let v = ppn(s, &["grant", "verify", &"00".repeat(65)]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stderr(&v).contains("65 token bytes do not fit in one frame (at most 64)"), "{}", stderr(&v));

    // Revoke a range (text), then the grantee node, with the socket from PPN_TCB_SOCKET.
    let o = ppn(s, &["grant", "revoke", "--issuer", &me, "--range", "100..200"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains(&format!("revoked  grants 100..200 of {me}\n")), "{}", stdout(&o));
    let o = Command::new(ppn_bin())
        .args(["grant", "revoke", "--node", &grantee])
        .env("PPN_TCB_SOCKET", s)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let last_record = stdout(&o).lines().find_map(|l| l.strip_prefix("record   ")).expect("record line").to_owned();
    assert!(stdout(&o).contains(&format!("revoked  node {grantee}\n")), "{}", stdout(&o));
    let v = ppn(s, &["grant", "verify", &token2]);
    assert_eq!(v.status.code(), Some(1));
    assert!(stdout(&v).starts_with("grantee-revoked: "), "{}", stdout(&v));

    // A refusal by the TCB: exit 1, the socket and the TCB's detail on stderr.
    let o = ppn(s, &["grant", "issue", "--grantee", &grantee, "--resource", "vm:1", "--expires", "1h"]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(err.contains(&s.display().to_string()) && err.contains("the grantee has been revoked"), "{err}");
    assert!(o.stdout.is_empty());

    let show = json(s, &["ledger", "show"]);
    assert_eq!(show["record_count"], 3, "{show}");
    assert_eq!(show["head_count"], 1);
    assert_eq!(show["heads"], serde_json::json!([last_record]));
    assert_eq!(show["revoked_node_count"], 1);
    assert_eq!(show["revoked_nodes"], serde_json::json!([grantee]));
    assert_eq!(show["revoked_grant_ranges"], 2);
    assert_eq!((&show["root_count"], &show["admitted_count"], &show["pending"]), (&1.into(), &0.into(), &0.into()));
    assert!(show["next_sequence"].as_u64().unwrap() > seq2);
    let o = ppn(s, &["ledger", "show"]);
    assert!(o.status.success());
    let text = stdout(&o);
    assert!(text.contains("  records        3\n  heads          1\n"), "{text}");
    assert!(text.contains(&format!("  revoked nodes  1\n                 {grantee}\n")), "{text}");
}

#[test]
fn ledger_roots_round_trips_into_ppn_tcb_roots() {
    let a = HostedTcb::start();
    let key_a = json(&a.socket, &["tcb", "status"])["signing_key"].as_str().unwrap().to_owned();
    let o = ppn(&a.socket, &["ledger", "roots"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), format!("{key_a}\n"));
    assert_eq!(json(&a.socket, &["ledger", "roots"]), serde_json::json!({ "roots": [key_a] }));

    // `ppn ledger roots > roots.txt`, then `ppn-tcb --roots roots.txt`.
    let roots = a.dir.path().join("roots.txt");
    std::fs::write(&roots, &o.stdout).unwrap();
    let b = HostedTcb::start_with(&[OsStr::new("--roots"), roots.as_os_str()]);
    let key_b = json(&b.socket, &["tcb", "status"])["signing_key"].as_str().unwrap().to_owned();
    let o = ppn(&b.socket, &["ledger", "roots"]);
    let out = stdout(&o);
    let mut got: Vec<&str> = out.lines().collect();
    got.sort();
    let mut want = vec![key_a.as_str(), key_b.as_str()];
    want.sort();
    assert_eq!(got, want);
    assert_eq!(json(&b.socket, &["ledger", "show"])["root_count"], 2);

    // B's export, read by a third TCB, is the same set plus that TCB.
    let roots_b = b.dir.path().join("roots.txt");
    std::fs::write(&roots_b, ppn(&b.socket, &["ledger", "roots"]).stdout).unwrap();
    let c = HostedTcb::start_with(&[OsStr::new("--roots"), roots_b.as_os_str()]);
    assert_eq!(json(&c.socket, &["ledger", "show"])["root_count"], 3);
}

#[test]
fn ledger_members_lists_the_roots_with_their_trust() {
    let a = HostedTcb::start();
    let status = json(&a.socket, &["tcb", "status"]);
    let members = json(&a.socket, &["ledger", "members"]);
    assert_eq!(
        members,
        serde_json::json!({ "members": [{
            "node_id": status["node_id"], "signing_key": status["signing_key"],
            "wireguard": null, "root": true, "trusted": true,
        }] })
    );
    let o = ppn(&a.socket, &["ledger", "members"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(text.starts_with("node "), "{text}");
    assert!(text.contains(status["node_id"].as_str().unwrap()) && text.contains("root"), "{text}");
}

#[test]
fn commands_on_a_dead_socket_name_it_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let token = "00".repeat(60);
    let node = "0011223344556677";
    for args in [
        &["grant", "issue", "--grantee", node, "--resource", "vm:1", "--expires", "1h"][..],
        &["grant", "verify", &token],
        &["grant", "revoke", "--node", node],
        &["ledger", "show"],
        &["ledger", "roots", "--json"],
    ] {
        let o = ppn(&sock, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("nobody.sock") && err.contains("TCB connection"), "{args:?}: {err}");
        assert!(o.stdout.is_empty(), "{args:?}");
    }
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("unused.sock");
    let node = "0011223344556677";
    for (args, word) in [
        (
            &["grant", "issue", "--grantee", node, "--resource", "disk:1", "--expires", "1h"][..],
            "memory, vm, image or mesh",
        ),
        (&["grant", "issue", "--grantee", node, "--resource", "vm:1", "--expires", "1w"], "not a duration"),
        (&["grant", "issue", "--grantee", "xyz", "--resource", "vm:1", "--expires", "1h"], "16 hex digits"),
        (&["grant", "verify", "abc"], "odd number"),
        (&["grant", "revoke", "--issuer", node], "required"),
        (&["grant", "revoke", "--node", node, "--issuer", node], "cannot be used with"),
        (&["grant", "revoke", "--sequence", "3"], "--issuer"),
        (&["grant", "revoke", "--issuer", node, "--range", "9..3"], "above the last"),
    ] {
        let o = ppn(&sock, args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains(word), "{args:?}: {}", stderr(&o));
    }
}
