//! The chain root → node key → attestation key → image → report, and each way it breaks.

use ed25519_dalek::SigningKey;
use ppn_attest::{Attester, Error, KeyCert, Provisioning, Report, Role, Standing, Trust, VerityParams};
use ppn_wire::NodeId;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

/// A fleet's trust as a table: node → (key, revoked).
#[derive(Default)]
struct Fleet(BTreeMap<NodeId, ([u8; 32], bool)>);

impl Trust for Fleet {
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing {
        match self.0.get(&node) {
            Some((k, _)) if k != key => Standing::Unknown,
            Some((_, true)) => Standing::Revoked,
            Some((_, false)) => Standing::Trusted,
            None => Standing::Unknown,
        }
    }
}

struct Node {
    node_secret: Zeroizing<[u8; 32]>,
    attester: Attester,
}

fn node(seed: u8) -> Node {
    let node_secret = Zeroizing::new([seed; 32]);
    let attest_secret = Zeroizing::new([seed ^ 0x5A; 32]);
    let attester = Attester::new(&attest_secret, &SigningKey::from_bytes(&node_secret));
    Node { node_secret, attester }
}

impl Node {
    fn public(&self) -> [u8; 32] {
        SigningKey::from_bytes(&self.node_secret).verifying_key().to_bytes()
    }
}

const NONCE: [u8; 16] = *b"verifier-nonce-1";

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
const NOW: u64 = 1_796_000_100;

fn verity() -> VerityParams {
    VerityParams { root_hash: [0xAB; 32], salt: [7; 32], data_blocks: 4096, hash_offset: 4096 * 4096 }
}

/// Node 1 provisions the image, node 2 runs the VM and reports; both trusted.
fn setup() -> (Fleet, Node, Node, Report) {
    let (p, r) = (node(1), node(2));
    let mut fleet = Fleet::default();
    fleet.0.insert(p.attester.node(), (p.public(), false));
    fleet.0.insert(r.attester.node(), (r.public(), false));
    let prov = p.attester.provision("debian-guest", &verity(), NOW - 50).unwrap();
    let report = r.attester.report("web-1", &verity().root_hash, &prov.bytes, &NONCE, NOW).unwrap();
    (fleet, p, r, report)
}

#[test]
fn a_report_checks_link_by_link() {
    let (fleet, p, r, report) = setup();
    let chain = Report::verify(&report.bytes, &fleet, &NONCE).unwrap();
    assert_eq!(chain.report.vm, "web-1");
    assert_eq!(chain.report.node, r.attester.node());
    assert_eq!(chain.report.issued_unix_s, NOW);
    assert_eq!(chain.report.cert.attest_key, r.attester.cert().attest_key);
    assert_eq!(chain.provisioning.image, "debian-guest");
    assert_eq!(chain.provisioning.verity, verity());
    assert_eq!(chain.provisioning.cert.node, p.attester.node());
    // The same statement checks on its own (what a guest's init does at boot).
    let prov = Provisioning::verify(&report.provisioning, &fleet).unwrap();
    assert_eq!(prov.verity.root_hash, [0xAB; 32]);
}

#[test]
fn a_wrong_nonce_fails() {
    let (fleet, _, _, report) = setup();
    assert_eq!(Report::verify(&report.bytes, &fleet, b"another-nonce-16").unwrap_err(), Error::WrongNonce);
}

#[test]
fn a_tampered_report_fails_on_its_signature() {
    let (fleet, _, _, report) = setup();
    // Change the VM's name inside the signed payload, keeping the encoding valid.
    let i = report.bytes.windows(5).position(|w| w == b"web-1").unwrap();
    let mut bad = report.bytes.clone();
    bad[i + 4] = b'2';
    assert_eq!(Report::verify(&bad, &fleet, &NONCE).unwrap_err(), Error::ReportSignature);
    // And the signature's own bytes.
    let mut bad = report.bytes.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(Report::verify(&bad, &fleet, &NONCE).unwrap_err(), Error::ReportSignature);
}

#[test]
fn a_node_key_the_fleet_does_not_know_fails() {
    let (mut fleet, _, r, report) = setup();
    // The fleet knows the reporting node's id with another key.
    fleet.0.insert(r.attester.node(), ([9; 32], false));
    assert_eq!(
        Report::verify(&report.bytes, &fleet, &NONCE).unwrap_err(),
        Error::UnknownNode { role: Role::Reporter, node: r.attester.node() }
    );
    // A node outside the fleet.
    let stranger = node(3);
    let (fleet, p, _, _) = setup();
    let prov = p.attester.provision("debian-guest", &verity(), NOW).unwrap();
    let report = stranger.attester.report("web-1", &verity().root_hash, &prov.bytes, &NONCE, NOW).unwrap();
    assert_eq!(
        Report::verify(&report.bytes, &fleet, &NONCE).unwrap_err(),
        Error::UnknownNode { role: Role::Reporter, node: stranger.attester.node() }
    );
}

#[test]
fn a_revoked_node_fails_as_reporter_and_as_provisioner() {
    let (mut fleet, p, r, report) = setup();
    fleet.0.get_mut(&r.attester.node()).unwrap().1 = true;
    assert_eq!(
        Report::verify(&report.bytes, &fleet, &NONCE).unwrap_err(),
        Error::RevokedNode { role: Role::Reporter, node: r.attester.node() }
    );
    let (mut fleet, _, _, report) = setup();
    fleet.0.get_mut(&p.attester.node()).unwrap().1 = true;
    assert_eq!(
        Report::verify(&report.bytes, &fleet, &NONCE).unwrap_err(),
        Error::RevokedNode { role: Role::Provisioner, node: p.attester.node() }
    );
}

#[test]
fn an_image_that_is_not_the_provisioned_one_fails() {
    let (fleet, p, r, _) = setup();
    let prov = p.attester.provision("debian-guest", &verity(), NOW).unwrap();
    let report = r.attester.report("web-1", &[0xCD; 32], &prov.bytes, &NONCE, NOW).unwrap();
    assert_eq!(Report::verify(&report.bytes, &fleet, &NONCE).unwrap_err(), Error::ImageMismatch);
}

#[test]
fn a_tampered_provisioning_statement_fails() {
    let (fleet, p, r, _) = setup();
    let prov = p.attester.provision("debian-guest", &verity(), NOW).unwrap();
    // Another root hash in the statement, signature unchanged.
    let i = prov.bytes.windows(32).position(|w| w == [0xAB; 32]).unwrap();
    let mut bad = prov.bytes.clone();
    bad[i] = 0xCD;
    assert_eq!(Provisioning::verify(&bad, &fleet).unwrap_err(), Error::ProvisioningSignature);
    let mut root = [0xAB; 32];
    root[0] = 0xCD;
    let report = r.attester.report("web-1", &root, &bad, &NONCE, NOW).unwrap();
    assert_eq!(Report::verify(&report.bytes, &fleet, &NONCE).unwrap_err(), Error::ProvisioningSignature);
}

#[test]
fn a_report_is_not_a_provisioning_statement() {
    let (fleet, _, _, report) = setup();
    assert_eq!(Provisioning::verify(&report.bytes, &fleet).unwrap_err(), Error::Claims("provisioning statement"));
}

#[test]
fn a_forged_certificate_fails() {
    let (fleet, p, r, _) = setup();
    // Node 2's certificate claiming node 1's attestation key: the signature breaks.
    let mut cert = r.attester.cert().clone();
    cert.attest_key = p.attester.cert().attest_key;
    assert_eq!(KeyCert::decode(&cert.encode()).unwrap(), cert);
    assert!(matches!(cert.check(Role::Reporter, &fleet), Err(Error::Cert(_))));
    // A node id that is not the key's.
    let mut cert = r.attester.cert().clone();
    cert.node = p.attester.node();
    assert!(matches!(cert.check(Role::Reporter, &fleet), Err(Error::Cert(_))));
    // An attester refuses a certificate for another key.
    assert_eq!(
        Attester::with_cert(&Zeroizing::new([1; 32]), r.attester.cert().clone()).unwrap_err(),
        Error::CertKeyMismatch
    );
}

#[test]
fn inputs_out_of_bounds_are_refused() {
    let (_, p, r, report) = setup();
    let prov = p.attester.provision("img", &verity(), NOW).unwrap();
    assert_eq!(r.attester.report("vm", &[0; 32], &prov.bytes, &[1; 7], NOW).unwrap_err(), Error::NonceLength(7));
    assert_eq!(r.attester.report("vm", &[0; 32], &prov.bytes, &[1; 65], NOW).unwrap_err(), Error::NonceLength(65));
    assert_eq!(r.attester.report("", &[0; 32], &prov.bytes, &NONCE, NOW).unwrap_err(), Error::Name(0));
    assert_eq!(p.attester.provision(&"x".repeat(65), &verity(), NOW).unwrap_err(), Error::Name(65));
    let mut long = report.bytes.clone();
    long.resize(ppn_attest::MAX_REPORT + 1, 0);
    assert!(matches!(Report::decode(&long), Err(Error::TooLong { .. })));
    for cut in 0..report.bytes.len() {
        assert!(Report::decode(&report.bytes[..cut]).is_err(), "cut at {cut}");
    }
    assert!(Report::decode(&report.bytes).is_ok());
}

#[test]
fn every_flipped_bit_of_a_report_is_caught_and_nothing_panics() {
    let (fleet, _, _, report) = setup();
    for i in 0..report.bytes.len() {
        for bit in [0x01u8, 0x80] {
            let mut bad = report.bytes.clone();
            bad[i] ^= bit;
            ppn_attest::fuzz_decode(&bad);
            assert!(Report::verify(&bad, &fleet, &NONCE).is_err(), "byte {i} bit {bit:#x} still verifies");
        }
    }
}

/// Trust whose revocations can change while a verifier holds it.
struct Changing(std::cell::RefCell<Fleet>);

impl Trust for Changing {
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing {
        self.0.borrow().standing(node, key)
    }
}

#[test]
fn a_verifier_remembers_signatures_but_not_standing() {
    let (fleet, p, r, report) = setup();
    let trust = Changing(std::cell::RefCell::new(fleet));
    let mut v = ppn_attest::Verifier::new(&trust);
    for _ in 0..3 {
        assert_eq!(v.verify_report(&report.bytes, &NONCE).unwrap().report.vm, "web-1");
    }
    // A tampered report still fails on its own signature with the certificate remembered.
    let mut bad = report.bytes.clone();
    let n = bad.len();
    bad[n - 1] ^= 1;
    assert_eq!(v.verify_report(&bad, &NONCE).unwrap_err(), Error::ReportSignature);
    assert_eq!(v.verify_report(&report.bytes, b"another-nonce-16").unwrap_err(), Error::WrongNonce);
    // Revoking the provisioner, then the reporter, is seen at once.
    trust.0.borrow_mut().0.get_mut(&p.attester.node()).unwrap().1 = true;
    assert_eq!(
        v.verify_report(&report.bytes, &NONCE).unwrap_err(),
        Error::RevokedNode { role: Role::Provisioner, node: p.attester.node() }
    );
    trust.0.borrow_mut().0.get_mut(&r.attester.node()).unwrap().1 = true;
    assert_eq!(
        v.verify_report(&report.bytes, &NONCE).unwrap_err(),
        Error::RevokedNode { role: Role::Reporter, node: r.attester.node() }
    );
}

#[test]
fn a_trust_file_round_trips_and_answers_like_the_fleet() {
    let (_, p, r, report) = setup();
    let mut t = ppn_attest::TrustFile::new();
    t.insert(p.public(), Standing::Trusted).unwrap();
    t.insert(r.public(), Standing::Trusted).unwrap();
    let text = t.encode();
    assert!(text.starts_with("ppn-trust v1\n"), "{text}");
    let parsed = ppn_attest::TrustFile::parse(text.as_bytes()).unwrap();
    assert_eq!(parsed, t);
    assert!(Report::verify(&report.bytes, &parsed, &NONCE).is_ok());
    // The reporter revoked in the file: its own error.
    let revoked = text.replacen(&format!("{} trusted", hex(&r.public())), &format!("{} revoked", hex(&r.public())), 1);
    let revoked = ppn_attest::TrustFile::parse(revoked.as_bytes()).unwrap();
    assert_eq!(
        Report::verify(&report.bytes, &revoked, &NONCE).unwrap_err(),
        Error::RevokedNode { role: Role::Reporter, node: r.attester.node() }
    );
    // Comments and blank lines are skipped.
    let commented = format!("ppn-trust v1\n# exported\n\n{}", &text["ppn-trust v1\n".len()..]);
    assert_eq!(ppn_attest::TrustFile::parse(commented.as_bytes()).unwrap(), t);
}

#[test]
fn each_bad_trust_line_is_refused_with_its_number() {
    let r = node(2);
    let key = hex(&r.public());
    let id = r.attester.node().to_string();
    let bad = |text: String, line: usize| match ppn_attest::TrustFile::parse(text.as_bytes()) {
        Err(Error::TrustFile { line: l, .. }) => assert_eq!(l, line, "{text}"),
        other => panic!("{text}: {other:?}"),
    };
    bad("ppn-trust v2\n".into(), 1);
    bad(String::new(), 1);
    bad(format!("ppn-trust v1\n{id} {key}\n"), 2);
    bad(format!("ppn-trust v1\n\n{id} {key} trusted extra\n"), 3);
    bad(format!("ppn-trust v1\n{id}0 {key} trusted\n"), 2);
    bad(format!("ppn-trust v1\n{id} {}zz trusted\n", &key[..62]), 2);
    bad(format!("ppn-trust v1\n{id} {key} maybe\n"), 2);
    bad(format!("ppn-trust v1\n0000000000000000 {key} trusted\n"), 2);
    bad(format!("ppn-trust v1\n{id} {key} trusted\n{id} {key} revoked\n"), 3);
    assert!(matches!(ppn_attest::TrustFile::parse(&[0xff, 0xfe]), Err(Error::TrustFile { line: 0, .. })));
}
