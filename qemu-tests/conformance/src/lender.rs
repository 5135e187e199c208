//! The Lender service between a lending TCB and a borrower's TCB, over the wire only.

use crate::ledger::{fresh_node_id, now_unix_s};
use crate::{CheckResult, err};
use ppn_tcb_client::ClientError;
use ppn_tcb_client::blocking::Client;
use ppn_wire::service::{Pool, ResourceType, RevokeTarget, Verdict};
use ppn_wire::{ErrorCode, NodeId};
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes in a lender block (docs/lender.md §1).
const BLOCK_BYTES: u32 = 2 * 1024 * 1024;

/// The claims of a token, read from its public layout (docs/ledger.md §2).
#[derive(Debug, PartialEq, Eq)]
struct Claims {
    resource_type: u8,
    issuer: [u8; 8],
    grantee: [u8; 8],
    resource_id: u64,
    expires: u64,
    sequence: u64,
}

fn claims(token: &[u8]) -> Result<Claims, String> {
    if token.len() != 60 || &token[..3] != b"PT\x01" {
        return Err(format!("not a version-1 token of 60 bytes: {} bytes", token.len()));
    }
    let u64_at = |at: usize| u64::from_le_bytes(token[at..at + 8].try_into().expect("8 bytes"));
    Ok(Claims {
        resource_type: token[3],
        issuer: token[4..12].try_into().expect("8 bytes"),
        grantee: token[12..20].try_into().expect("8 bytes"),
        resource_id: u64_at(20),
        expires: u64_at(28),
        sequence: u64_at(36),
    })
}

fn check_sums(p: &Pool, when: &str) -> Result<(), String> {
    let sum = u64::from(p.free) + u64::from(p.reserved) + u64::from(p.lent) + u64::from(p.in_use);
    if sum != u64::from(p.total) || p.block_bytes != BLOCK_BYTES {
        return Err(format!("{when}: pool {p:?} does not add up to its total of {BLOCK_BYTES}-byte blocks"));
    }
    Ok(())
}

fn expect(what: &str, got: &Pool, want: (u32, u32, u32)) -> Result<(), String> {
    check_sums(got, what)?;
    if (got.free, got.reserved, got.lent) != want {
        return Err(format!("{what}: pool {got:?}, want (free, reserved, lent) = {want:?}"));
    }
    Ok(())
}

fn rejected<T: std::fmt::Debug>(r: Result<T, ClientError>, what: &str) -> Result<String, String> {
    match r {
        Err(ClientError::Tcb { code: ErrorCode::Rejected, detail }) => Ok(detail),
        other => Err(format!("{what}: {other:?}, want a Rejected error")),
    }
}

/// Lending end to end over the wire. `lender` lends at least 4 free blocks and counts the TCB
/// at `borrower` as a trusted member; the borrower has the lender's key. Reserve, commit (a
/// token for the borrower: Memory, the lease id), endorsement checked by the borrower's TCB,
/// refusals, the lease surviving `restart_lender`, release with a confirmed scrub, and a grant
/// revocation ending a lease at once.
pub fn check_lending(
    lender: &Path,
    borrower: &Path,
    restart_lender: &mut dyn FnMut() -> Result<(), String>,
) -> CheckResult {
    let mut l = Client::connect(lender, TIMEOUT).map_err(err("connect to the lender"))?;
    let mut b = Client::connect(borrower, TIMEOUT).map_err(err("connect to the borrower"))?;
    let lender_id: NodeId = l.identity().map_err(err("lender identity"))?.node_id;
    let borrower_id: NodeId = b.identity().map_err(err("borrower identity"))?.node_id;
    let start = l.pool_status().map_err(err("pool status"))?;
    check_sums(&start, "at start")?;
    if start.free < 4 {
        return Err(format!("the lender needs 4 free blocks for this check: {start:?}"));
    }
    let (free, reserved, lent) = (start.free, start.reserved, start.lent);
    let expires = now_unix_s() + 3600;

    let r = l.reserve(borrower_id, 2, expires).map_err(err("reserve"))?;
    if r.blocks != 2 {
        return Err(format!("reserved {} blocks, asked 2", r.blocks));
    }
    expect("after reserve", &l.pool_status().map_err(err("pool"))?, (free - 2, reserved + 2, lent))?;
    let lease = l.commit_lease(r.reservation_id).map_err(err("commit"))?;
    expect("after commit", &l.pool_status().map_err(err("pool"))?, (free - 2, reserved, lent + 2))?;
    let c = claims(&lease.token)?;
    let want = Claims {
        resource_type: ResourceType::Memory.into(),
        issuer: lender_id.0.0,
        grantee: borrower_id.0.0,
        resource_id: lease.lease_id,
        expires,
        sequence: c.sequence,
    };
    if c != want {
        return Err(format!("lease token claims {c:?}, want {want:?}"));
    }
    rejected(l.commit_lease(r.reservation_id), "committing the same reservation twice")?;

    // The borrower's TCB checks the lender's endorsement of the token.
    let sig = l.endorse(&lease.token).map_err(err("endorse"))?;
    match b.verify_endorsed(&lease.token, &sig).map_err(err("borrower verify"))? {
        Verdict::Valid => {}
        v => return Err(format!("the borrower's TCB found the endorsed lease token {v:?}")),
    }
    let mut forged = sig;
    forged.0[0] ^= 1;
    match b.verify_endorsed(&lease.token, &forged).map_err(err("borrower verify"))? {
        Verdict::BadEndorsement => {}
        v => return Err(format!("a forged endorsement: {v:?}, want BadEndorsement")),
    }

    let stranger = rejected(l.reserve(fresh_node_id(), 1, expires), "reserving for a node outside the fleet")?;
    let too_many = rejected(l.reserve(borrower_id, start.total + 1, expires), "reserving more than the pool")?;

    restart_lender()?;
    let mut l = Client::connect(lender, TIMEOUT).map_err(err("connect to the lender after the restart"))?;
    expect("after the restart", &l.pool_status().map_err(err("pool"))?, (free - 2, reserved, lent + 2))?;
    match l.verify_token(&lease.token).map_err(err("verify after the restart"))? {
        Verdict::Valid => {}
        v => return Err(format!("the lease token after the restart: {v:?}")),
    }
    let released = l.release(lease.lease_id).map_err(err("release"))?;
    if (released.blocks, released.scrubbed) != (2, true) {
        return Err(format!("release answered {released:?}, want 2 blocks scrubbed"));
    }
    expect("after release", &l.pool_status().map_err(err("pool"))?, (free, reserved, lent))?;

    // Revoking the lease's grant ends the lease at once.
    let r = l.reserve(borrower_id, 3, expires).map_err(err("reserve"))?;
    let lease = l.commit_lease(r.reservation_id).map_err(err("commit"))?;
    let sequence = claims(&lease.token)?.sequence;
    l.revoke(RevokeTarget::Grant { issuer: lender_id, sequence }).map_err(err("revoke the grant"))?;
    expect("after the grant's revocation", &l.pool_status().map_err(err("pool"))?, (free, reserved, lent))?;
    rejected(l.release(lease.lease_id), "releasing a revoked lease")?;
    Ok(format!(
        "lease of 2 blocks endorsed and checked by {borrower_id}, kept across a restart, released and \
         scrubbed; revoked lease ended; refusals: {stranger:?}, {too_many:?}"
    ))
}
