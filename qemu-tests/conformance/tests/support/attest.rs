//! The Attest service over the wire: a provisioning statement and a report signed by the TCB's
//! attestation key check offline with `ppn_attest` against the TCB's own node key, the statement
//! is in the TCB's ledger as an `ImageProvisioned` record, and bad requests are refused. A test-only module (`tests/attest.rs`, `tests/sel4.rs`): `ppn-attest`
//! and `ppn-ledger` are dev-dependencies, so the proxy crates that use `ppn-conformance` do not reach the trusted
//! core (ppn-boundary, R1-dev).

use ppn_attest::{Error, Provisioning, Report, Standing, Trust};
use ppn_conformance::{CheckResult, TIMEOUT};
use ppn_tcb_client::ClientError;
use ppn_tcb_client::blocking::Client;
use ppn_wire::message::{AttestRequest, AttestResponse, NodeRequest, NodeResponse};
use ppn_wire::service::{ServiceState, SignReport, SignRootHash};
use ppn_wire::{ByteArray, ErrorCode, NodeId, Request, Response, Service};
use sha2::Digest as _;
use std::path::Path;

fn err(context: &str) -> impl FnOnce(ClientError) -> String + '_ {
    move |e| format!("{context}: {e}")
}

fn node(c: &mut Client, req: NodeRequest) -> Result<NodeResponse, String> {
    match c.call(&Request::Node(req.clone())).map_err(err("node request"))? {
        Response::Node(r) => Ok(r),
        r => Err(format!("{req:?} answered with {:?}", r.kind())),
    }
}

/// The TCB's own node as the only trusted one.
struct OneNode(NodeId, [u8; 32]);

impl Trust for OneNode {
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing {
        if node == self.0 && *key == self.1 { Standing::Trusted } else { Standing::Unknown }
    }
}

fn attest(c: &mut Client, req: AttestRequest) -> Result<AttestResponse, ClientError> {
    let req = Request::Attest(req);
    match c.call(&req)? {
        Response::Attest(a) => Ok(a),
        other => Err(ClientError::UnexpectedResponse { expected: req.kind(), got: other.kind() }),
    }
}

pub fn check_attest(socket: &Path) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let NodeResponse::Status(status) = node(&mut c, NodeRequest::Status)? else { return Err("not a status".into()) };
    if !status.services.iter().any(|s| s.service() == Service::Attest && s.state == ServiceState::Ready) {
        return Ok("the attest service is not served by this TCB build".into());
    }
    let NodeResponse::PublicKeys(keys) = node(&mut c, NodeRequest::PublicKeys)? else { return Err("not keys".into()) };
    let Some(attest_key) = keys.attestation_key else {
        return Err("attest is ready but NodePublicKeys gives no attestation key".into());
    };
    let trust = OneNode(keys.node_id, keys.signing_key.0);

    let before = c.heads().map_err(err("heads"))?;
    let sign = SignRootHash {
        image: "conformance-image".try_into().map_err(|_| "name")?,
        root_hash: ByteArray([0xAB; 32]),
        salt: ByteArray([7; 32]),
        data_blocks: 1024,
        hash_offset: 1024 * 4096,
    };
    let AttestResponse::SignRootHash(st) =
        attest(&mut c, AttestRequest::SignRootHash(sign)).map_err(err("SignRootHash"))?
    else {
        return Err("SignRootHash answered with another response".into());
    };
    let prov = Provisioning::verify(&st.statement, &trust).map_err(|e| format!("the provisioning statement: {e}"))?;
    if prov.image != "conformance-image"
        || prov.verity.root_hash != [0xAB; 32]
        || prov.verity.data_blocks != 1024
        || prov.cert.attest_key != attest_key.0
    {
        return Err(format!("the provisioning statement says something else: {prov:?}"));
    }
    // The ledger recorded it: one record more, by this node, naming the root hash and the
    // statement's digest.
    let records = c.records_lacking(&before.heads, 12).map_err(err("records"))?;
    if records.records.len() != 1 || records.more {
        return Err(format!("{} records new since SignRootHash, want 1", records.records.len()));
    }
    let digest: [u8; 32] = sha2::Sha256::digest(&st.statement).into();
    let recorded = records.records.iter().filter_map(|r| ppn_ledger::Record::decode(r).ok()).any(|r| {
        r.author == keys.node_id
            && r.body == ppn_ledger::Body::ImageProvisioned { root_hash: [0xAB; 32], statement: digest }
    });
    if !recorded {
        return Err("no ImageProvisioned record of the statement in the ledger".into());
    }

    let nonce = *b"conformance-nonce-123456";
    let req = SignReport {
        vm: "conformance-vm".try_into().map_err(|_| "name")?,
        root_hash: ByteArray([0xAB; 32]),
        provisioning: st.statement.clone(),
        nonce: heapless::Vec::from_slice(&nonce).map_err(|_| "nonce")?,
    };
    let AttestResponse::SignReport(r) =
        attest(&mut c, AttestRequest::SignReport(req.clone())).map_err(err("SignReport"))?
    else {
        return Err("SignReport answered with another response".into());
    };
    let chain = Report::verify(&r.cose_sign1, &trust, &nonce).map_err(|e| format!("the report: {e}"))?;
    if chain.report.vm != "conformance-vm" || chain.report.node != keys.node_id {
        return Err(format!("the report says something else: {:?}", chain.report));
    }
    match Report::verify(&r.cose_sign1, &trust, b"another-nonce-123") {
        Err(Error::WrongNonce) => {}
        other => return Err(format!("a wrong nonce gave {other:?}")),
    }
    let mut bad = r.cose_sign1.to_vec();
    let n = bad.len();
    bad[n - 1] ^= 1;
    match Report::verify(&bad, &trust, &nonce) {
        Err(Error::ReportSignature) => {}
        other => return Err(format!("a tampered report gave {other:?}")),
    }

    // Refused: a nonce of 7 bytes, an empty VM name.
    let mut short = req.clone();
    short.nonce = heapless::Vec::from_slice(&nonce[..7]).map_err(|_| "nonce")?;
    let mut unnamed = req;
    unnamed.vm = Default::default();
    for (what, bad) in [("a 7-byte nonce", short), ("an empty VM name", unnamed)] {
        match attest(&mut c, AttestRequest::SignReport(bad)) {
            Err(ClientError::Tcb { code: ErrorCode::Rejected, .. }) => {}
            other => return Err(format!("{what} gave {other:?}")),
        }
    }
    node(&mut c, NodeRequest::Status)?;
    Ok(format!(
        "statement {} B (recorded in the ledger) and report {} B check offline; bad requests refused",
        st.statement.len(),
        r.cose_sign1.len()
    ))
}
