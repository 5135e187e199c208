//! The attest service: provisioning statements for sealed images and attestation reports, by
//! the node's attestation key (`ppn_attest`, docs/attestation.md). The key never leaves the
//! TCB: the proxy sends what to sign and gets the signed statement or report back.

use ppn_attest::{Attester, VerityParams};
use ppn_wire::ErrorCode;
use ppn_wire::message::{AttestRequest, AttestResponse};
use ppn_wire::service::{ProvisioningStatement, Report, SignReport, SignRootHash};

/// Answers one attest request, or why not.
pub fn handle(
    attester: &Attester,
    request: &AttestRequest,
    now_unix_s: u64,
) -> Result<AttestResponse, (ErrorCode, alloc::string::String)> {
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
