//! `ppn bench attest`: signing an attestation report, and checking one offline link by link
//! (`ppn_attest::Report::verify`: two key certificates, the provisioning statement and the
//! report, four Ed25519 signatures, and the fleet's standing of both nodes), next to one bare
//! Ed25519 `verify_strict` in the same run. `verify_warm_us`: the same with one
//! `ppn_attest::Verifier` for every report, which checks each key certificate's and the
//! provisioning statement's signature once (the standing of both nodes, the report's signature,
//! nonce and image every time): an auditor checking many reports of one fleet.

use ed25519_dalek::{Signer, SigningKey};
use ppn_attest::{Attester, Report, Standing, Trust, VerityParams};
use ppn_wire::NodeId;
use std::collections::BTreeMap;
use std::time::Instant;
use zeroize::Zeroizing;

#[derive(Debug, Clone, Copy)]
pub struct AttestOpts {
    /// Timed batches of each operation; the figures are medians over batches.
    pub batches: usize,
    /// Operations per batch.
    pub iters: usize,
}

impl Default for AttestOpts {
    fn default() -> Self {
        Self { batches: 21, iters: 200 }
    }
}

struct Fleet(BTreeMap<NodeId, [u8; 32]>);

impl Trust for Fleet {
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing {
        match self.0.get(&node) {
            Some(k) if k == key => Standing::Trusted,
            _ => Standing::Unknown,
        }
    }
}

/// Median over `batches` of the mean µs of `f` in a batch of `iters`.
fn median_us(o: &AttestOpts, mut f: impl FnMut()) -> f64 {
    for _ in 0..o.iters {
        f();
    }
    let mut v: Vec<f64> = (0..o.batches)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..o.iters {
                f();
            }
            t.elapsed().as_secs_f64() * 1e6 / o.iters as f64
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

pub fn attest(o: &AttestOpts) -> serde_json::Value {
    let now = 1_796_000_000;
    let mut fleet = Fleet(BTreeMap::new());
    let mut node = |seed: u8| {
        let secret = Zeroizing::new([seed; 32]);
        let a = Attester::new(&Zeroizing::new([seed ^ 0x5A; 32]), &SigningKey::from_bytes(&secret));
        fleet.0.insert(a.node(), SigningKey::from_bytes(&secret).verifying_key().to_bytes());
        a
    };
    let (provisioner, reporter) = (node(1), node(2));
    let verity = VerityParams { root_hash: [0xAB; 32], salt: [7; 32], data_blocks: 1 << 16, hash_offset: 1 << 28 };
    let prov = provisioner.provision("bench-image", &verity, now).expect("provision");
    let nonce = [0x6E; 32];
    let report = reporter.report("bench-vm", &verity.root_hash, &prov.bytes, &nonce, now).expect("report");
    Report::verify(&report.bytes, &fleet, &nonce).expect("the report verifies");

    let sign_us = median_us(o, || {
        let r = reporter.report("bench-vm", &verity.root_hash, &prov.bytes, &nonce, now).expect("report");
        std::hint::black_box(r);
    });
    let verify_us = median_us(o, || {
        let c = Report::verify(std::hint::black_box(&report.bytes), &fleet, &nonce).expect("verify");
        std::hint::black_box(c);
    });
    let mut verifier = ppn_attest::Verifier::new(&fleet);
    let verify_warm_us = median_us(o, || {
        let c = verifier.verify_report(std::hint::black_box(&report.bytes), &nonce).expect("verify");
        std::hint::black_box(c);
    });
    let key = SigningKey::from_bytes(&[9; 32]);
    let msg = [0x42u8; 200];
    let sig = key.sign(&msg);
    let vk = key.verifying_key();
    let ed25519_verify_us = median_us(o, || {
        vk.verify_strict(std::hint::black_box(&msg), &sig).expect("verify");
    });
    serde_json::json!({
        "sign_us": round2(sign_us),
        "verify_us": round2(verify_us),
        "verify_warm_us": round2(verify_warm_us),
        "ed25519_verify_us": round2(ed25519_verify_us),
        "verify_per_ed25519": round2(verify_us / ed25519_verify_us),
        "signatures_checked": 4,
        "report_bytes": report.bytes.len(),
        "batches": o.batches,
        "iters": o.iters,
    })
}
