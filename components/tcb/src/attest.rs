//! The attest service: provisioning statements for sealed images and attestation reports, by
//! the node's attestation key (`ppn_attest`, docs/attestation.md). The key never leaves the
//! TCB: the proxy sends what to sign and gets the signed statement or report back. Every
//! statement is recorded in the ledger (an `ImageProvisioned` record, gossiped to the fleet)
//! before it is handed out: a statement the ledger could not record is not given.

use alloc::string::String;
use ppn_attest::{Attester, VerityParams};
use ppn_journal::Storage;
use ppn_ledger::{Body, Ledger};
use ppn_wire::ErrorCode;
use ppn_wire::message::{AttestRequest, AttestResponse};
use ppn_wire::service::{ProvisioningStatement, Report, SignReport, SignRootHash};
use sha2::{Digest as _, Sha256};

/// Where provisioning statements are recorded: the ledger (its own in the hosted TCB; across
/// the ledger port from the seL4 attest PD).
pub trait ProvisioningLog {
    /// Authors an `ImageProvisioned` record for `root_hash` and the statement's SHA-256; returns
    /// the record's id.
    fn record_provisioning(
        &mut self,
        root_hash: [u8; 32],
        statement: [u8; 32],
        now_unix_s: u64,
    ) -> Result<[u8; 32], (ErrorCode, String)>;
}

impl<S: Storage> ProvisioningLog for Ledger<S> {
    fn record_provisioning(
        &mut self,
        root_hash: [u8; 32],
        statement: [u8; 32],
        now_unix_s: u64,
    ) -> Result<[u8; 32], (ErrorCode, String)> {
        self.author(Body::ImageProvisioned { root_hash, statement }, now_unix_s)
            .map(|id| id.0)
            .map_err(|r| (r.code, alloc::format!("the provisioning record: {}", r.detail)))
    }
}

/// Answers one attest request, or why not. A provisioning statement is recorded in `log` first.
pub fn handle(
    attester: &Attester,
    request: &AttestRequest,
    now_unix_s: u64,
    log: &mut impl ProvisioningLog,
) -> Result<AttestResponse, (ErrorCode, String)> {
    let rejected = |e: ppn_attest::Error| (ErrorCode::Rejected, alloc::format!("{e}"));
    let too_long = |what: &str| (ErrorCode::Internal, alloc::format!("the {what} does not fit its wire body"));
    match request {
        AttestRequest::SignRootHash(SignRootHash { image, root_hash, salt, data_blocks, hash_offset }) => {
            let verity = VerityParams {
                root_hash: root_hash.0,
                salt: salt.0,
                data_blocks: *data_blocks,
                hash_offset: *hash_offset,
            };
            let p = attester.provision(image, &verity, now_unix_s).map_err(rejected)?;
            log.record_provisioning(verity.root_hash, Sha256::digest(&p.bytes).into(), now_unix_s)?;
            let statement = heapless::Vec::from_slice(&p.bytes).map_err(|_| too_long("provisioning statement"))?;
            Ok(AttestResponse::SignRootHash(ProvisioningStatement { statement }))
        }
        AttestRequest::SignReport(SignReport { vm, root_hash, provisioning, nonce }) => {
            let r = attester.report(vm, &root_hash.0, provisioning, nonce, now_unix_s).map_err(rejected)?;
            let cose_sign1 = heapless::Vec::from_slice(&r.bytes).map_err(|_| too_long("report"))?;
            Ok(AttestResponse::SignReport(Report { cose_sign1 }))
        }
    }
}
