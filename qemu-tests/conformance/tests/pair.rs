//! `ppn pair` between two real `ppn-tcb` processes over TCP on loopback: the ceremony admits
//! each node into the other's ledger with its mesh key once both operators answer "yes"; a wrong
//! code, or an operator who answers "no", admits nobody.

use ppn_conformance::{HostedTcb, locate_bin};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::time::Duration;

const WG_A: &str = "oKLdWf7ao6zvswTRWzr6skZpE2DuaIOhbbf/hfv3i2Y=";
const WG_B: &str = "sKLdWf7ao6zvswTRWzr6skZpE2DuaIOhbbf/hfv3i2Y=";

fn spawn(socket: &Path, args: &[&str], wg: &str) -> Child {
    Command::new(locate_bin("ppn"))
        .arg("pair")
        .args(args)
        .args(["--wireguard-key", wg, "--json", "--socket"])
        .arg(socket)
        .env_remove("PPN_TCB_SOCKET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the listener's stderr until it says where it listens; returns the address and the
/// rest of the stream.
fn listening_on(stderr: ChildStderr) -> (String, BufReader<ChildStderr>) {
    let mut r = BufReader::new(stderr);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(r.read_line(&mut line).unwrap() > 0, "the listener exited:\n{seen}");
        seen.push_str(&line);
        if let Some(addr) = line.trim().strip_prefix("listening on ") {
            return (addr.to_owned(), r);
        }
    }
}

struct Outcome {
    ok: bool,
    json: serde_json::Value,
    stderr: String,
}

fn finish(mut child: Child, answer: &str, stderr_rest: Option<BufReader<ChildStderr>>) -> Outcome {
    child.stdin.take().unwrap().write_all(answer.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let mut err = String::new();
    match stderr_rest {
        Some(mut r) => r.read_to_string(&mut err).unwrap(),
        None => child.stderr.take().unwrap().read_to_string(&mut err).unwrap(),
    };
    let ok = child.wait().unwrap().success();
    Outcome { ok, json: serde_json::from_str(&out).unwrap_or(serde_json::Value::Null), stderr: err }
}

fn members(t: &HostedTcb) -> Vec<ppn_wire::service::Member> {
    ppn_tcb_client::blocking::Client::connect(&t.socket, Duration::from_secs(10)).unwrap().ledger_members().unwrap()
}

fn node_id(t: &HostedTcb) -> ppn_wire::NodeId {
    ppn_tcb_client::blocking::Client::connect(&t.socket, Duration::from_secs(10)).unwrap().identity().unwrap().node_id
}

fn pair(a: &HostedTcb, b: &HostedTcb, codes: (&str, &str), answers: (&str, &str)) -> (Outcome, Outcome) {
    let mut listener = spawn(&b.socket, &["--listen", "127.0.0.1:0", "--code", codes.1], WG_B);
    let (addr, rest) = listening_on(listener.stderr.take().unwrap());
    let connector = spawn(&a.socket, &["--connect", &addr, "--code", codes.0], WG_A);
    // Each side answers its SAS question; the answers wait in the pipes until asked.
    let a_out = std::thread::spawn({
        let answer = answers.0.to_owned();
        move || finish(connector, &answer, None)
    });
    let b_out = finish(listener, answers.1, Some(rest));
    (a_out.join().unwrap(), b_out)
}

#[test]
fn two_nodes_pair_and_each_admits_the_other_with_its_mesh_key() {
    let (a, b) = (HostedTcb::start(), HostedTcb::start());
    let (oa, ob) = pair(&a, &b, ("7K3M9-QX2HD", "7k3m9qx2hd"), ("y\n", "yes\n"));
    assert!(oa.ok && ob.ok, "connector:\n{}\nlistener:\n{}", oa.stderr, ob.stderr);
    assert_eq!(oa.json["sas"], ob.json["sas"], "both operators saw the same SAS");
    assert_eq!(oa.json["peer"], node_id(&b).to_string());
    assert_eq!(ob.json["peer"], node_id(&a).to_string());
    assert_eq!((oa.json["admitted"].as_bool(), ob.json["admitted"].as_bool()), (Some(true), Some(true)));
    assert_eq!(
        (oa.json["admitted_by_peer"].as_bool(), ob.json["admitted_by_peer"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(oa.stderr.contains(&format!("SAS           {}", &oa.json["sas"].as_str().unwrap()[..3])));

    let b_in_a = members(&a).into_iter().find(|m| m.node_id == node_id(&b)).expect("B in A's ledger");
    assert!(b_in_a.trusted);
    let key = |b64: &str| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
    };
    assert_eq!(b_in_a.wireguard.unwrap().0.to_vec(), key(WG_B));
    let a_in_b = members(&b).into_iter().find(|m| m.node_id == node_id(&a)).expect("A in B's ledger");
    assert_eq!(a_in_b.wireguard.unwrap().0.to_vec(), key(WG_A));
    // Both admission records are in both ledgers: each accepted the other's.
    for t in [&a, &b] {
        let s = ppn_tcb_client::blocking::Client::connect(&t.socket, Duration::from_secs(10))
            .unwrap()
            .ledger_summary()
            .unwrap();
        assert_eq!(s.record_count, 2);
    }
}

#[test]
fn a_wrong_code_or_a_no_admits_nobody() {
    let (a, b) = (HostedTcb::start(), HostedTcb::start());
    let (oa, ob) = pair(&a, &b, ("7K3M9-QX2HD", "7K3M9-QX2HE"), ("y\n", "y\n"));
    assert!(!oa.ok && !ob.ok);
    assert!(oa.stderr.contains("codes typed on the two nodes differ"), "{}", oa.stderr);
    assert!(ob.stderr.contains("hung up"), "{}", ob.stderr);
    assert_eq!((members(&a).len(), members(&b).len()), (1, 1), "a wrong code wrote something");

    // The right code, but B's operator says no: B admits nobody; A (who said yes, and decided
    // first) admits B, and hears that B did not admit it.
    let (oa, ob) = pair(&a, &b, ("7K3M9-QX2HD", "7K3M9-QX2HD"), ("y\n", "n\n"));
    assert!(oa.ok && !ob.ok, "{}\n{}", oa.stderr, ob.stderr);
    assert_eq!((ob.json["admitted"].as_bool(), oa.json["admitted_by_peer"].as_bool()), (Some(false), Some(false)));
    assert!(oa.stderr.contains("the other node did not admit this one"), "{}", oa.stderr);
    assert_eq!(members(&b).len(), 1);
    assert_eq!(members(&a).len(), 2);

    // A says no: B, whatever its operator says, admits nobody.
    let (c, d) = (HostedTcb::start(), HostedTcb::start());
    let (oc, od) = pair(&c, &d, ("7K3M9-QX2HD", "7K3M9-QX2HD"), ("n\n", "y\n"));
    assert!(!oc.ok && !od.ok, "{}\n{}", oc.stderr, od.stderr);
    assert_eq!((members(&c).len(), members(&d).len()), (1, 1));
}
