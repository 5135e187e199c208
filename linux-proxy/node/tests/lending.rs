//! Memory lending end to end with a real guest: a local fleet of two nodes (`ppn-tcb` lending
//! 1 GiB on each, `ppn-node`), a QEMU guest on node 1 booted from the Debian-built image, and
//! memory lent by node 0:
//!
//! - grow: lease from node 0's TCB, checked by node 1's TCB, plugged; the guest's MemTotal grows
//!   and node 0's pool shows the blocks lent; giving it back shrinks the guest and frees them;
//! - a lease that expires is unplugged and the lender's blocks are free again;
//! - revoking the lease's grant at the lender makes the borrower unplug it;
//! - revoking the borrower node ends the lease in the lender's TCB at once.
//!
//! Needs QEMU and the guest image (built into target/ppn-guest on first use; network for the
//! Debian packages). `PPN_SKIP_GUEST=1` skips it.

use ppn_node::fleet::{self, FleetNode};

mod common;
use common::{guest_image, start, until};
use ppn_tcb_client::blocking::Client;
use ppn_wire::service::RevokeTarget;
use serde_json::{Value, json};
use std::time::Duration;

fn call(n: &FleetNode, req: Value) -> Value {
    fleet::control(&n.control, &req).unwrap_or_else(|e| panic!("{req}: {e}"))
}

fn mem_total_kib(n: &FleetNode) -> Option<u64> {
    call(n, json!({ "op": "vm-list" }))["vms"][0]["agent"]["mem_total_kib"].as_u64()
}

fn pool(n: &FleetNode) -> Value {
    call(n, json!({ "op": "lease-list" }))["leases"]["pool"].clone()
}

fn borrowed(n: &FleetNode) -> Vec<Value> {
    call(n, json!({ "op": "lease-list" }))["leases"]["borrowed"].as_array().cloned().unwrap_or_default()
}

fn grow(n: &FleetNode, mib: u64, from: &str, lease_secs: u64) -> Value {
    call(n, json!({ "op": "vm-grow", "name": "g", "mib": mib, "from": from, "lease_secs": lease_secs }))["grown"]
        .clone()
}

/// The grant sequence in a token (bytes 36..44, docs/ledger.md §2), from its hex.
fn sequence(token_hex: &str) -> u64 {
    let b: Vec<u8> =
        (0..token_hex.len()).step_by(2).map(|i| u8::from_str_radix(&token_hex[i..i + 2], 16).unwrap()).collect();
    u64::from_le_bytes(b[36..44].try_into().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_is_lent_plugged_and_returned_on_release_expiry_and_revocation() {
    let Some(img) = guest_image() else { return };
    let running = start(2, 1024).await;
    let (lender, borrower) = (running.fleet.nodes[0].clone(), running.fleet.nodes[1].clone());

    tokio::task::spawn_blocking(move || {
        let spec = json!({
            "name": "g", "vcpus": 1, "base_mib": 256, "vmem_max_mib": 1024,
            "kernel": std::fs::canonicalize(&img.kernel).unwrap(),
            "initrd": std::fs::canonicalize(&img.initrd).unwrap(), "cmdline": img.cmdline,
        });
        call(&borrower, json!({ "op": "vm-create", "spec": spec }));
        call(&borrower, json!({ "op": "vm-start", "name": "g" }));
        let (base, boot) =
            until("the guest's first agent report", Duration::from_secs(180), || mem_total_kib(&borrower));
        eprintln!("guest up after {boot:?}: MemTotal {base} KiB");
        assert_eq!(pool(&lender)["total"], 512);

        // Grow by 256 MiB, then give it back.
        let g = grow(&borrower, 256, &lender.node_id, 600);
        eprintln!("grow 256 MiB: {g}");
        assert!(g["mem_total_kib"].as_u64().unwrap() >= base + 256 * 1024, "{g}");
        assert_eq!(pool(&lender)["lent"], 128);
        let lease = g["lease_id"].as_u64().unwrap();
        assert_eq!(borrowed(&borrower).len(), 1);
        call(&borrower, json!({ "op": "lease-release", "lease_id": lease }));
        assert_eq!(mem_total_kib(&borrower).map(|k| k < base + 256 * 1024), Some(true));
        let (_, t) = until("the lender's pool after the release", Duration::from_secs(5), || {
            (pool(&lender)["lent"] == 0 && pool(&lender)["free"] == 512).then_some(())
        });
        eprintln!("released: pool free again after {t:?}");
        assert!(borrowed(&borrower).is_empty());

        // A lease that expires.
        let g = grow(&borrower, 128, &lender.node_id, 10);
        assert!(g["mem_total_kib"].as_u64().unwrap() >= base + 128 * 1024);
        let (_, t) = until("the expired lease unplugged", Duration::from_secs(40), || {
            (borrowed(&borrower).is_empty() && mem_total_kib(&borrower)? < base + 128 * 1024).then_some(())
        });
        eprintln!("expired lease returned {t:?} after the check started");
        until("the lender's pool after expiry", Duration::from_secs(5), || (pool(&lender)["lent"] == 0).then_some(()));

        // The lease's grant revoked at the lender: the borrower's TCB hears of it by gossip.
        let g = grow(&borrower, 128, &lender.node_id, 600);
        let book = borrowed(&borrower);
        let seq = sequence(book[0]["token"].as_str().unwrap());
        let lender_id = lender.node_id.parse().unwrap();
        let mut tcb = Client::connect(&lender.tcb_socket, Duration::from_secs(10)).unwrap();
        tcb.revoke(RevokeTarget::Grant { issuer: lender_id, sequence: seq }).unwrap();
        assert_eq!(pool(&lender)["lent"], 0, "the lender's TCB ends the lease with its grant");
        let (_, t) = until("the revoked lease unplugged", Duration::from_secs(30), || {
            (borrowed(&borrower).is_empty() && mem_total_kib(&borrower)? < base + 128 * 1024).then_some(())
        });
        eprintln!("revoked grant (lease {}): borrower unplugged after {t:?}", g["lease_id"]);

        // The borrower revoked: its leases end in the lender's TCB at once.
        grow(&borrower, 64, &lender.node_id, 600);
        assert_eq!(pool(&lender)["lent"], 32);
        let borrower_id = borrower.node_id.parse().unwrap();
        tcb.revoke(RevokeTarget::Node { node: borrower_id }).unwrap();
        assert_eq!(pool(&lender)["lent"], 0);
        assert_eq!(pool(&lender)["free"], 512, "every block scrubbed and free");
    })
    .await
    .unwrap();
    drop(running);
}
