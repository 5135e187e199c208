//! `ppn tcb status` against a real `ppn-tcb`.

use ppn_conformance::HostedTcb;
use std::process::Command;

fn ppn(args: &[&std::ffi::OsStr]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ppn")).args(args).output().expect("run ppn")
}

#[test]
fn tcb_status_human_and_json_agree_with_the_tcb() {
    let tcb = HostedTcb::start();
    let sock = tcb.socket.as_os_str();
    let json = ppn(&["tcb".as_ref(), "status".as_ref(), "--socket".as_ref(), sock, "--json".as_ref()]);
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).expect("valid JSON");
    let node_id = v["node_id"].as_str().expect("node_id").to_owned();
    assert_eq!(node_id.len(), 16);
    assert_eq!(v["platform"], "hosted");
    assert_eq!(v["boot_count"], 1);
    assert_eq!(v["services"]["node"], "ready");
    assert_eq!(v["services"]["ledger"], "ready");
    assert_eq!(v["services"]["lender"], "not implemented");
    assert_eq!(v["signing_key"].as_str().map(str::len), Some(64));
    assert!(v["uptime_ms"].as_u64().is_some());
    // The first status call of this process was answered before the keys call was counted.
    assert_eq!(v["requests_served"], 0);

    let text = ppn(&["tcb".as_ref(), "status".as_ref(), "--socket".as_ref(), sock]);
    assert!(text.status.success());
    let out = String::from_utf8_lossy(&text.stdout);
    assert!(out.contains(&format!("node id      {node_id}")), "{out}");
    assert!(out.contains("platform     hosted"), "{out}");
    assert!(out.contains("requests     2 served, 0 failed"), "{out}");
    assert!(out.contains("node ready, ledger ready, lender not implemented"), "{out}");
}

#[test]
fn tcb_status_on_a_dead_socket_says_so_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody.sock");
    let out = ppn(&["tcb".as_ref(), "status".as_ref(), "--socket".as_ref(), sock.as_os_str()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nobody.sock") && err.contains("TCB connection"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bench_revocation_prints_the_promised_json_and_is_deterministic() {
    let args = [
        "bench",
        "revocation",
        "--nodes",
        "12",
        "--link-ms",
        "2",
        "--loss",
        "0.1",
        "--seed",
        "4",
        "--revocations",
        "3",
        "--json",
    ];
    let run = || {
        let out = Command::new(env!("CARGO_BIN_EXE_ppn")).args(args).output().expect("run ppn");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("JSON")
    };
    let v = run();
    for key in ["nodes", "p50_ms", "p99_ms", "max_ms", "messages_per_node"] {
        assert!(v.get(key).is_some(), "{key} missing from {v}");
    }
    assert_eq!(v["nodes"], 12);
    assert!(v["max_ms"].as_f64().unwrap() >= v["p50_ms"].as_f64().unwrap());
    assert_eq!(run(), v, "same seed, same result");
    let bad = Command::new(env!("CARGO_BIN_EXE_ppn")).args(["bench", "revocation", "--nodes", "1"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--nodes"));
}

#[test]
fn bench_tokens_reports_size_and_a_ratio() {
    let out = Command::new(env!("CARGO_BIN_EXE_ppn"))
        .args([
            "bench",
            "tokens",
            "--revocations",
            "50",
            "--batches",
            "1",
            "--iters",
            "200",
            "--biscuit-iters",
            "5",
            "--json",
        ])
        .output()
        .expect("run ppn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["token_bytes"], 60);
    for key in ["issue_ns", "verify_ns", "biscuit_verify_ns", "ratio"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key} in {v}");
    }
}

/// `ppn bench tcb` with `args` after it; panics unless it succeeds. Returns stdout.
fn bench_tcb(args: &[&std::ffi::OsStr]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ppn")).args(["bench", "tcb"]).args(args).output().expect("run ppn");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8")
}

fn positive_finite(v: &serde_json::Value, key: &str) -> f64 {
    let x = v[key].as_f64().unwrap_or_else(|| panic!("{key} missing from {v}"));
    assert!(x.is_finite() && x > 0.0, "{key} in {v}");
    x
}

#[test]
fn bench_tcb_times_round_trips_to_a_hosted_tcb() {
    let tcb = HostedTcb::start();
    let out = bench_tcb(&[
        "--socket".as_ref(),
        tcb.socket.as_os_str(),
        "--requests".as_ref(),
        "50".as_ref(),
        "--json".as_ref(),
    ]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).expect("JSON");
    assert_eq!(v["backend"], "hosted");
    assert_eq!(v["requests"], 50);
    assert_eq!(v["socket"], tcb.socket.to_str().unwrap());
    for p in ["verify_us", "issue_us"] {
        let p50 = positive_finite(&v, &format!("{p}_p50"));
        assert!(positive_finite(&v, &format!("{p}_p99")) >= p50, "{v}");
    }
    // The promised keys come first, in the promised order.
    assert!(lines[0].starts_with(r#"{"backend":"hosted","requests":50,"verify_us_p50":"#), "{out}");
}

#[test]
fn bench_tcb_compares_two_backends_in_one_run() {
    let a = HostedTcb::start();
    let b = HostedTcb::start();
    let two = |json: bool| {
        let mut args = vec![
            "--socket".as_ref(),
            a.socket.as_os_str(),
            "--socket".as_ref(),
            b.socket.as_os_str(),
            "--requests".as_ref(),
            "20".as_ref(),
        ];
        if json {
            args.push("--json".as_ref());
        }
        bench_tcb(&args)
    };
    let out = two(true);
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).expect("JSON")).collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert_eq!(lines[0]["socket"], a.socket.to_str().unwrap());
    assert_eq!(lines[1]["socket"], b.socket.to_str().unwrap());
    assert_eq!(lines[1]["requests"], 20);
    positive_finite(&lines[2], "ratio_verify");
    positive_finite(&lines[2], "ratio_issue");
    assert_eq!(lines[2]["baseline"], a.socket.to_str().unwrap());

    let text = two(false);
    assert!(text.lines().next().is_some_and(|l| l.contains("verify p50 us") && l.contains("issue p50 us")), "{text}");
    assert_eq!(text.lines().filter(|l| l.contains(" hosted ")).count(), 3, "{text}");
    assert!(text.contains(&format!("p50 ratios to {} (hosted):", a.socket.display())), "{text}");
}

#[test]
fn bench_tcb_on_a_missing_socket_names_it_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("nobody-here.sock");
    let out = ppn(&["bench".as_ref(), "tcb".as_ref(), "--socket".as_ref(), sock.as_os_str(), "--json".as_ref()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(sock.to_str().unwrap()) && err.contains("TCB connection"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn ledger_sync_pulls_a_revocation_into_a_node_that_trusts_the_author() {
    let mut a = HostedTcb::start();
    let mut b = HostedTcb::start();
    let key = |t: &HostedTcb| {
        let out = Command::new(env!("CARGO_BIN_EXE_ppn"))
            .args(["ledger", "roots", "--socket"])
            .arg(&t.socket)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()
    };
    let roots = a.dir.path().join("roots.txt");
    std::fs::write(&roots, format!("{}{}", key(&a), key(&b))).unwrap();
    a.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    b.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    let ppn = |args: &[&std::ffi::OsStr]| Command::new(env!("CARGO_BIN_EXE_ppn")).args(args).output().unwrap();
    let revoke = ppn(&[
        "grant".as_ref(),
        "revoke".as_ref(),
        "--socket".as_ref(),
        a.socket.as_os_str(),
        "--node".as_ref(),
        "00000000deadbeef".as_ref(),
    ]);
    assert!(revoke.status.success(), "{}", String::from_utf8_lossy(&revoke.stderr));
    let sync = ppn(&[
        "ledger".as_ref(),
        "sync".as_ref(),
        "--socket".as_ref(),
        b.socket.as_os_str(),
        "--from".as_ref(),
        a.socket.as_os_str(),
        "--json".as_ref(),
    ]);
    assert!(sync.status.success(), "{}", String::from_utf8_lossy(&sync.stderr));
    let v: serde_json::Value = serde_json::from_slice(&sync.stdout).unwrap();
    assert_eq!((v["accepted"].as_u64(), v["refused_or_pending"].as_u64()), (Some(1), Some(0)), "{v}");
    let show = ppn(&["ledger".as_ref(), "show".as_ref(), "--socket".as_ref(), b.socket.as_os_str(), "--json".as_ref()]);
    let s: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(s["revoked_nodes"], serde_json::json!(["00000000deadbeef"]));
    // Again: nothing left to pull.
    let again = ppn(&[
        "ledger".as_ref(),
        "sync".as_ref(),
        "--socket".as_ref(),
        b.socket.as_os_str(),
        "--from".as_ref(),
        a.socket.as_os_str(),
        "--json".as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(v["relayed"], 0, "{v}");
}
