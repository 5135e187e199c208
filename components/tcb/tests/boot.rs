//! Booting a TCB from its journals, as the seL4 ledger PD does: both journals on one disk
//! (`ppn_layout::disk`), a grant revoked before a reboot is still revoked after it.

use ppn_journal::block::{BlockStorage, MemDisk};
use ppn_layout::disk;
use ppn_ledger::Roots;
use ppn_tcb_core::{BootError, Booted, boot};
use ppn_wire::message::{LedgerRequest, LedgerResponse, NodeRequest, NodeResponse};
use ppn_wire::service::{IssueGrant, Platform, ResourceType, Revoke, RevokeTarget, Verdict, VerifyToken};
use ppn_wire::{NodeId, Request, Response};
use std::cell::RefCell;
use std::rc::Rc;

type Disk = Rc<RefCell<MemDisk>>;
type Tcb = Booted<BlockStorage<Disk>, BlockStorage<Disk>>;

const NOW: u64 = 1_800_000_000;

fn boot_disk(disk: &Disk, entropy: impl FnOnce(&mut [u8; 32]) -> Result<(), &'static str>) -> Result<Tcb, BootError> {
    let (node, _) = BlockStorage::open(disk.clone(), disk::NODE_JOURNAL).unwrap();
    let (ledger, _) = BlockStorage::open(disk.clone(), disk::LEDGER_JOURNAL).unwrap();
    boot(node, ledger, &Roots::default(), Platform::Sel4Microkit, "test", entropy)
}

fn ledger(tcb: &mut Tcb, r: LedgerRequest) -> LedgerResponse {
    match tcb.core.answer(&Request::Ledger(r), 0, NOW) {
        Response::Ledger(l) => l,
        other => panic!("not a ledger answer: {other:?}"),
    }
}

fn node_id(tcb: &mut Tcb) -> NodeId {
    match tcb.core.answer(&Request::Node(NodeRequest::Identity), 0, NOW) {
        Response::Node(NodeResponse::Identity(id)) => id.node_id,
        other => panic!("not an identity: {other:?}"),
    }
}

/// A small disk: the layout's areas need the whole 64 MiB, which is fine in memory.
fn blank_disk() -> Disk {
    Rc::new(RefCell::new(MemDisk::new(disk::SECTORS)))
}

#[test]
fn a_revocation_written_before_a_reboot_is_in_force_after_it() {
    let disk = blank_disk();
    let mut tcb = boot_disk(&disk, |s| {
        s.fill(0x5a);
        Ok(())
    })
    .unwrap();
    assert!(tcb.report.created_identity);
    assert_eq!(tcb.report.boot_count, 1);
    let me = node_id(&mut tcb);
    let issue = IssueGrant {
        grantee: NodeId(ppn_wire::ByteArray([9; 8])),
        resource_type: ResourceType::Vm,
        resource_id: 1,
        expires_unix_s: NOW + 3600,
    };
    let LedgerResponse::IssueGrant(grant) = ledger(&mut tcb, LedgerRequest::IssueGrant(issue)) else { panic!() };
    let verify = || LedgerRequest::VerifyToken(VerifyToken { token: grant.token.clone() });
    let LedgerResponse::VerifyToken(v) = ledger(&mut tcb, verify()) else { panic!() };
    assert_eq!(v.verdict, Verdict::Valid);
    let revoke = Revoke { target: RevokeTarget::Grant { issuer: me, sequence: grant.sequence } };
    assert!(matches!(ledger(&mut tcb, LedgerRequest::Revoke(revoke)), LedgerResponse::Revoke(_)));
    drop(tcb);

    // Reboot from what is on the disk only.
    let image = disk.borrow().bytes.clone();
    let disk = Rc::new(RefCell::new(MemDisk { bytes: image }));
    let mut tcb = boot_disk(&disk, |_| panic!("a second boot must not ask for entropy")).unwrap();
    assert!(!tcb.report.created_identity);
    assert_eq!(tcb.report.boot_count, 2);
    assert_eq!(node_id(&mut tcb), me, "the identity survives the reboot");
    let LedgerResponse::VerifyToken(v) = ledger(&mut tcb, verify()) else { panic!() };
    assert_eq!(v.verdict, Verdict::GrantRevoked);
}

#[test]
fn no_entropy_no_identity_and_nothing_written() {
    let disk = blank_disk();
    let err = boot_disk(&disk, |s| {
        s.fill(0);
        Ok(())
    })
    .unwrap_err();
    assert!(matches!(err, BootError::ZeroSeed), "{err}");
    let err = boot_disk(&disk, |_| Err("device absent")).unwrap_err();
    assert!(err.to_string().contains("device absent"), "{err}");
    assert!(disk.borrow().bytes.iter().all(|&b| b == 0), "a failed boot wrote to the disk");
}
