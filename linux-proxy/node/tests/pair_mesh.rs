//! Two nodes, each a `ppn-tcb` and a `ppn-node`, pair with `ppn pair --node` (the mesh key read
//! from the daemon, the peer's endpoint handed to it), and a revocation made at one TCB reaches
//! the other through the WireGuard tunnel, the only path between them. A third node with a
//! wrong code fails, and nothing is written on either side.

use ppn_conformance::ledger::fresh_node_id;
use ppn_conformance::{HostedTcb, locate_bin};
use ppn_tcb_client::blocking::Client;
use ppn_wire::service::RevokeTarget;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn daemon(tcb: &HostedTcb) -> Daemon {
    let dir = tcb.dir.path().join("node");
    let child = Command::new(locate_bin("ppn-node"))
        .arg("--dir")
        .arg(&dir)
        .arg("--tcb")
        .arg(&tcb.socket)
        .args(["--mesh-listen", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !dir.join("node.sock").exists() {
        assert!(start.elapsed() < Duration::from_secs(20), "ppn-node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Daemon { child, dir }
}

fn pair_cmd(tcb: &Path, node: &Path, args: &[&str]) -> Child {
    Command::new(locate_bin("ppn"))
        .arg("pair")
        .args(args)
        .arg("--node")
        .arg(node)
        .arg("--socket")
        .arg(tcb)
        .env_remove("PPN_TCB_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs both sides with `codes`, both answering yes; returns (connector ok, listener ok, stderrs).
fn pair(a: (&HostedTcb, &Daemon), b: (&HostedTcb, &Daemon), codes: (&str, &str)) -> (bool, bool, String) {
    let mut listener = pair_cmd(&b.0.socket, &b.1.dir, &["--listen", "127.0.0.1:0", "--code", codes.1]);
    let mut err = BufReader::new(listener.stderr.take().unwrap());
    let addr = loop {
        let mut line = String::new();
        assert!(err.read_line(&mut line).unwrap() > 0, "the listener exited");
        if let Some(a) = line.trim().strip_prefix("listening on ") {
            break a.to_owned();
        }
    };
    let mut connector = pair_cmd(&a.0.socket, &a.1.dir, &["--connect", &addr, "--code", codes.0]);
    connector.stdin.take().unwrap().write_all(b"y\n").unwrap();
    listener.stdin.take().unwrap().write_all(b"y\n").unwrap();
    let c_ok = connector.wait().unwrap().success();
    let l_ok = listener.wait().unwrap().success();
    let mut text = String::new();
    connector.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    err.read_to_string(&mut text).unwrap();
    (c_ok, l_ok, text)
}

fn client(t: &HostedTcb) -> Client {
    Client::connect(&t.socket, Duration::from_secs(10)).unwrap()
}

#[test]
fn paired_nodes_carry_a_revocation_through_the_tunnel_and_a_wrong_code_writes_nothing() {
    let (a, b, c) = (HostedTcb::start(), HostedTcb::start(), HostedTcb::start());
    let (da, db, dc) = (daemon(&a), daemon(&b), daemon(&c));
    let (c_ok, l_ok, text) = pair((&a, &da), (&b, &db), ("7K3M9-QX2HD", "7K3M9-QX2HD"));
    assert!(c_ok && l_ok, "{text}");
    assert!(text.contains("told this node's daemon that"), "{text}");

    let x = fresh_node_id();
    client(&a).revoke(RevokeTarget::Node { node: x }).unwrap();
    let start = Instant::now();
    while !client(&b).ledger_summary().unwrap().revoked_nodes.contains(&x) {
        assert!(start.elapsed() < Duration::from_secs(15), "the revocation did not reach B through the mesh");
        std::thread::sleep(Duration::from_millis(10));
    }
    eprintln!("A's revocation reached B through the tunnel in {:?}", start.elapsed());

    // C, with the wrong code, against A: fails on both sides, writes nothing on either.
    let before = (client(&a).ledger_summary().unwrap().record_count, client(&c).ledger_summary().unwrap().record_count);
    let (c_ok, l_ok, text) = pair((&c, &dc), (&a, &da), ("7K3M9-QX2HD", "QQQQQ-QQQQQ"));
    assert!(!c_ok && !l_ok, "{text}");
    assert!(text.contains("codes typed on the two nodes differ"), "{text}");
    let after = (client(&a).ledger_summary().unwrap().record_count, client(&c).ledger_summary().unwrap().record_count);
    assert_eq!(before, after);
    assert_eq!(client(&a).ledger_members().unwrap().len(), 2, "A knows itself and B only");
}
