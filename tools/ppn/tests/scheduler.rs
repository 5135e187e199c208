//! The operator verbs of the scheduler on a real 3-node local fleet (`ppn-tcb` and `ppn-node`
//! processes, paired, meshed), with VMs defined but not booted: `ppn vm create` places by best
//! fit or on the operator's pin, says why it cannot, `ppn vm list` says where each VM is and
//! why, `ppn vm pin|unpin`, `ppn vm migrate` refuses a pinned VM, and `ppn rebalance --dry-run`
//! plans the moves off an overfull node, never moving a pinned VM.

mod common;

use common::{Fleet, fails_in, ok_in};
use serde_json::Value;

#[test]
fn vms_are_placed_by_best_fit_kept_on_their_pins_and_rebalanced_by_plan() {
    if std::env::var("PPN_SKIP_GUEST").as_deref() == Ok("1") {
        eprintln!("PPN_SKIP_GUEST=1: skipping (the VMs need the guest image's kernel)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let fleet_dir = dir.path().join("fleet");
    let ok = |args: &[&str]| ok_in(&fleet_dir, args);
    let fails = |args: &[&str]| fails_in(&fleet_dir, args);
    let dir_s = fleet_dir.to_str().unwrap();
    ok(&["fleet", "up", "--nodes", "3", "--dir", dir_s, "--vm-mem", "1024", "--vm-vcpus", "4", "--lend-mib", "0"]);
    let _fleet = Fleet(fleet_dir.clone());
    let list = || -> Value { serde_json::from_str(&ok(&["vm", "list", "--json"])).unwrap() };
    let node_of = |l: &Value, vm: &str| -> (u64, String, bool) {
        let r = l["vms"].as_array().unwrap().iter().find(|r| r["name"] == vm).unwrap_or_else(|| panic!("{vm}: {l}"));
        (r["node"].as_u64().unwrap(), r["why"].as_str().unwrap().to_owned(), r["pinned"] == true)
    };
    let l = list();
    assert_eq!(l["nodes"].as_array().unwrap().len(), 3);
    for n in l["nodes"].as_array().unwrap() {
        assert_eq!(
            (n["status"].as_str(), n["mem_mib"].as_u64(), n["vcpus"].as_u64()),
            (Some("trusted"), Some(1024), Some(4))
        );
    }

    // Best fit: every node has 1024 MiB free, so a goes to the lowest id; b then fits best
    // where a is (least left over).
    let out = ok(&["vm", "create", "a", "--mem", "512"]);
    assert!(out.contains("placed on node") && out.contains("by best fit: 1024 of 1024 MiB free"), "{out}");
    ok(&["vm", "create", "b", "--mem", "256"]);
    let l = list();
    let (na, why, pinned) = node_of(&l, "a");
    assert_eq!((why.as_str(), pinned), ("placed", false));
    assert_eq!(node_of(&l, "b").0, na, "b fits best next to a: {l}");
    let ids: Vec<(u64, String)> = l["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| (n["index"].as_u64().unwrap(), n["node_id"].as_str().unwrap().to_owned()))
        .collect();
    let lowest = ids.iter().min_by_key(|(_, id)| id.clone()).unwrap().0;
    assert_eq!(na, lowest, "the first placement goes to the lowest node id: {ids:?}");

    // A pin: on that node or nowhere, with the reason.
    let other = (0..3).find(|&i| i != na).unwrap().to_string();
    ok(&["vm", "create", "p", "--mem", "700", "--pin", &other]);
    let (np, why, pinned) = node_of(&list(), "p");
    assert_eq!((np.to_string(), why.as_str(), pinned), (other.clone(), "pinned", true));
    let err = fails(&["vm", "create", "q", "--mem", "400", "--pin", &other]);
    assert!(err.contains("pinned to node") && err.contains("324 MiB") && err.contains("not 400 MiB"), "{err}");
    let err = fails(&["vm", "create", "r", "--mem", "4096"]);
    assert!(err.contains("no trusted, reachable node has 4096 MiB"), "{err}");
    // A pinned VM does not migrate, not even when asked by hand.
    let err = fails(&["vm", "migrate", "p", "--node", &other, "--to", &na.to_string()]);
    assert!(err.contains("pinned to this node"), "{err}");

    // The operator overfills a node by hand (--node: chosen, not pinned): rebalance plans the
    // smallest unpinned VM off it; the pinned one is never in the plan.
    ok(&["vm", "create", "big", "--mem", "600", "--node", &other]);
    let (_, why, pinned) = node_of(&list(), "big");
    assert_eq!((why.as_str(), pinned), ("chosen", false));
    let plan: Value = serde_json::from_str(&ok(&["rebalance", "--dry-run", "--json"])).unwrap();
    let moves = plan["plan"]["moves"].as_array().unwrap();
    assert_eq!(moves.len(), 1, "{plan}");
    assert_eq!(moves[0]["vm"], "big");
    assert_eq!(moves[0]["from"].as_u64(), Some(np));
    assert_ne!(moves[0]["to"].as_u64(), Some(np));
    assert!(plan["done"].as_array().unwrap().is_empty(), "a dry run moves nothing");
    // Nothing moved.
    assert_eq!(node_of(&list(), "big").0, np);

    // Unpinned, p may move too: now the plan takes the smallest VM off first (big, 600 MiB,
    // before p, 700 MiB), and that is enough.
    ok(&["vm", "unpin", "p"]);
    let (_, why, pinned) = node_of(&list(), "p");
    assert_eq!((why.as_str(), pinned), ("chosen", false));
    ok(&["vm", "pin", "big"]);
    let plan: Value = serde_json::from_str(&ok(&["rebalance", "--dry-run", "--json"])).unwrap();
    let moves: Vec<&str> =
        plan["plan"]["moves"].as_array().unwrap().iter().map(|m| m["vm"].as_str().unwrap()).collect();
    assert_eq!(moves, ["p"], "big is pinned now: {plan}");
    let text = ok(&["rebalance", "--dry-run"]);
    assert!(text.contains("stays: big") && text.contains("pinned there by the operator"), "{text}");
}
