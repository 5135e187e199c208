//! The conformance suite against a real hosted `ppn-tcb` process.

use ppn_conformance::{HostedTcb, check_garbage_resilience};
use ppn_tcb_client::blocking::Client;
use ppn_wire::message::{NodeRequest, NodeResponse};
use ppn_wire::{Request, Response};
use std::time::Duration;

fn status(t: &HostedTcb) -> ppn_wire::service::NodeStatus {
    let mut c = Client::connect(&t.socket, Duration::from_secs(10)).expect("connect");
    match c.call(&Request::Node(NodeRequest::Status)).expect("status") {
        Response::Node(NodeResponse::Status(s)) => s,
        r => panic!("status answered with {r:?}"),
    }
}

#[test]
fn every_check_passes_against_ppn_tcb() {
    let mut tcb = HostedTcb::start();
    for (name, check) in ppn_conformance::checks() {
        match check(&tcb.socket) {
            Ok(what) => eprintln!("ok {name}: {what}"),
            Err(why) => panic!("{name}: {why}\nppn-tcb log:\n{}", tcb.log()),
        }
        assert!(tcb.is_running(), "ppn-tcb exited during {name}:\n{}", tcb.log());
    }
    // Restart and persistence, with a SIGKILL as the restart (as sel4.rs does with a hard stop
    // of QEMU).
    let socket = tcb.socket.clone();
    let mut restart = || {
        tcb.restart();
        Ok(())
    };
    match ppn_conformance::check_persistence_across_restart(&socket, &mut restart) {
        Ok(what) => eprintln!("ok restart-persistence: {what}"),
        Err(why) => panic!("restart-persistence: {why}\nppn-tcb log:\n{}", tcb.log()),
    }
}

#[test]
fn ten_thousand_hostile_frames_then_a_valid_request_and_the_process_lives() {
    let mut tcb = HostedTcb::start();
    let before = status(&tcb);
    let what =
        check_garbage_resilience(&tcb.socket, 10_000, 0xBAD_F00D).unwrap_or_else(|e| panic!("{e}\n{}", tcb.log()));
    assert!(what.contains("10001 hostile chunks"), "{what}");
    assert!(tcb.is_running(), "ppn-tcb exited:\n{}", tcb.log());
    let after = status(&tcb);
    assert_eq!(after.node_id, before.node_id);
    assert!(
        after.requests_failed >= before.requests_failed + 5_000,
        "{} -> {}",
        before.requests_failed,
        after.requests_failed
    );
}

#[test]
fn identity_survives_hard_kills_and_boots_are_counted() {
    let mut tcb = HostedTcb::start();
    let first = status(&tcb);
    assert_eq!(first.boot_count, 1);
    for boot in 2..=4 {
        tcb.restart();
        let s = status(&tcb);
        assert_eq!(s.node_id, first.node_id, "identity changed on boot {boot}");
        assert_eq!(s.boot_count, boot);
    }
    let other = HostedTcb::start();
    assert_ne!(status(&other).node_id, first.node_id, "two fresh TCBs share an identity");
}

#[test]
fn a_torn_journal_tail_is_cut_and_saved_aside_and_nothing_acknowledged_is_lost() {
    let mut tcb = HostedTcb::start();
    let first = status(&tcb);
    tcb.kill_hard();
    let journal = tcb.state.join("node.journal");
    let mut bytes = std::fs::read(&journal).unwrap();
    let whole = bytes.len();
    bytes.extend_from_slice(b"PJ\x01\x02\x04\x00"); // a boot record torn after 6 bytes
    std::fs::write(&journal, &bytes).unwrap();
    tcb.restart();
    let s = status(&tcb);
    assert_eq!(s.node_id, first.node_id);
    assert_eq!(s.boot_count, 2);
    assert!(tcb.log().contains("torn tail of 6 bytes"), "{}", tcb.log());
    let aside: Vec<_> = std::fs::read_dir(&tcb.state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("node.journal.torn-"))
        .collect();
    assert_eq!(aside.len(), 1, "the torn tail was not saved aside");
    assert_eq!(std::fs::read(aside[0].path()).unwrap(), b"PJ\x01\x02\x04\x00");
    assert!(std::fs::metadata(&journal).unwrap().len() > whole as u64, "the new boot record was not appended");
}

#[test]
fn a_second_tcb_on_the_same_state_is_refused_and_sigterm_removes_the_socket() {
    let mut tcb = HostedTcb::start();
    let bin = ppn_conformance::locate_bin("ppn-tcb");
    let out = std::process::Command::new(bin)
        .arg("--state")
        .arg(&tcb.state)
        .arg("--socket")
        .arg(tcb.dir.path().join("second.sock"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by another ppn-tcb"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status = tcb.terminate().expect("exit status");
    assert!(status.success(), "{status}");
    assert!(!tcb.socket.exists(), "socket left behind after SIGTERM");
}

#[test]
fn state_directory_and_socket_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let tcb = HostedTcb::start();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&tcb.state), 0o700);
    assert_eq!(mode(&tcb.state.join("node.journal")), 0o600);
    assert_eq!(mode(&tcb.state.join("ledger.journal")), 0o600);
    assert_eq!(mode(&tcb.socket), 0o600);
}

/// The roots file of `t` (`ppn ledger roots` format: one hex key a line).
fn roots_file(t: &HostedTcb, path: &std::path::Path) {
    let mut c = Client::connect(&t.socket, Duration::from_secs(10)).expect("connect");
    let keys = match c.call(&Request::Node(NodeRequest::PublicKeys)).expect("keys") {
        Response::Node(NodeResponse::PublicKeys(k)) => k,
        r => panic!("public keys answered with {r:?}"),
    };
    let hex: String = keys.signing_key.0.iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(path, format!("{hex}\n")).unwrap();
}

#[test]
fn lending_between_two_hosted_tcbs() {
    let mut borrower = HostedTcb::start();
    let borrower_roots = borrower.dir.path().join("borrower.roots");
    roots_file(&borrower, &borrower_roots);
    let mut lender = HostedTcb::start_with(&[
        std::ffi::OsStr::new("--roots"),
        borrower_roots.as_os_str(),
        "--lend-mib".as_ref(),
        "64".as_ref(),
    ]);
    let lender_roots = lender.dir.path().join("lender.roots");
    roots_file(&lender, &lender_roots);
    borrower.restart_with(&[std::ffi::OsStr::new("--roots"), lender_roots.as_os_str()]);
    assert!(
        status(&lender).services.iter().any(|s| s.service == 0x03 && s.state == ppn_wire::service::ServiceState::Ready)
    );
    assert!(lender.log().contains("lending 64 MiB: 32 blocks free"), "{}", lender.log());

    let (lsock, bsock) = (lender.socket.clone(), borrower.socket.clone());
    let mut restart = || {
        lender.restart();
        Ok(())
    };
    match ppn_conformance::check_lending(&lsock, &bsock, &mut restart) {
        Ok(what) => eprintln!("ok lending: {what}"),
        Err(why) => panic!("lending: {why}\nlender log:\n{}", lender.log()),
    }
    // The pool's size is fixed: another --lend-mib on the same state is refused, clearly.
    lender.kill_hard();
    let out = std::process::Command::new(ppn_conformance::locate_bin("ppn-tcb"))
        .args([
            std::ffi::OsStr::new("--state"),
            lender.state.as_os_str(),
            "--socket".as_ref(),
            lender.socket.as_os_str(),
        ])
        .args(["--lend-mib", "32"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("the lender journal is for 32 blocks of 2097152 bytes, not 16 blocks"), "{stderr}");
}
