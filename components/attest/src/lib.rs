//! The attestation core, a TCB component: a node's attestation key, the certificate that binds
//! it to the node's signing key, signed provisioning statements for sealed guest images, and
//! attestation reports for guests as Entity Attestation Tokens (RFC 9711) in COSE_Sign1
//! (RFC 9052) with Ed25519. And the other side: checking a report offline, from the fleet's
//! trust (root keys, admissions, revocations) alone, with no vendor and no network.
//!
//! The chain an auditor checks (docs/attestation.md):
//!
//! 1. **root → node key**: the fleet's trust says the reporting node's signing key is trusted
//!    (a root, or admitted, and not revoked): [`Trust`].
//! 2. **node key → attestation key**: a [`KeyCert`] signed by the node's signing key.
//! 3. **image**: a [`Provisioning`] statement, signed by the provisioning node's attestation key
//!    (itself checked through 1 and 2), gives the image's dm-verity root hash.
//! 4. **report**: signed by the running node's attestation key, it names the VM, the image's
//!    root hash (which must be the provisioned one), the provisioning statement, the node, the
//!    verifier's nonce and the time.
//!
//! Every decoder checks the length before parsing, every format carries a magic or a profile
//! and a version, and every check that fails has its own [`Error`].
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

mod cert;
mod cose;
mod error;
mod provision;
mod report;
mod trust_file;
mod verifier;

pub use cert::{CERT_LEN, KeyCert};
pub use error::{Error, Role};
pub use provision::{PROVISION_PROFILE, Provisioning, VerityParams};
pub use report::{Chain, EAT_PROFILE, Report};
pub use trust_file::{TRUST_FILE_MAX, TRUST_NODES_MAX, TrustFile};
pub use verifier::{CACHE_MAX, Verifier};

use ed25519_dalek::SigningKey;
use ppn_wire::NodeId;
use zeroize::Zeroizing;

/// The longest report this crate encodes or accepts.
pub const MAX_REPORT: usize = 2048;
/// The longest provisioning statement.
pub const MAX_PROVISIONING: usize = 1024;
/// Nonce lengths (RFC 9711 §4.1: 8 to 64 bytes).
pub const NONCE_MIN: usize = 8;
pub const NONCE_MAX: usize = 64;
/// The longest VM or image name.
pub const MAX_NAME: usize = 64;

/// What the fleet's trust says of a node's signing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A root, or admitted, and not revoked.
    Trusted,
    /// Revoked.
    Revoked,
    /// Not known to the fleet, or known with another key.
    Unknown,
}

/// The fleet's trust as a verifier knows it: from a node's ledger, or offline from an
/// exported root set (`ppn verify --roots`).
pub trait Trust {
    /// The standing of `node` if its signing key is `key`.
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing;
}

/// A node's attestation signer: the attestation key (held only by the attestation core) and
/// the certificate its node's signing key gave it.
pub struct Attester {
    key: SigningKey,
    cert: KeyCert,
}

impl core::fmt::Debug for Attester {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Attester").field("cert", &self.cert).finish_non_exhaustive()
    }
}

impl Attester {
    /// An attester for `attest_secret`, certified by `node_key` (the node's Ed25519 signing
    /// key).
    pub fn new(attest_secret: &Zeroizing<[u8; 32]>, node_key: &SigningKey) -> Self {
        let key = SigningKey::from_bytes(attest_secret);
        let cert = KeyCert::issue(node_key, key.verifying_key().to_bytes());
        Self { key, cert }
    }

    /// An attester for `attest_secret` with a certificate issued before.
    pub fn with_cert(attest_secret: &Zeroizing<[u8; 32]>, cert: KeyCert) -> Result<Self, Error> {
        let key = SigningKey::from_bytes(attest_secret);
        if key.verifying_key().to_bytes() != cert.attest_key {
            return Err(Error::CertKeyMismatch);
        }
        Ok(Self { key, cert })
    }

    pub fn cert(&self) -> &KeyCert {
        &self.cert
    }

    /// Gives up the attester for its handoff to the component that will hold it (on seL4, the
    /// ledger PD hands it to the attest PD, which rebuilds it with [`Attester::with_cert`]): the
    /// secret and the certificate. The caller wipes the secret once it has passed it on.
    pub fn into_handoff(self) -> (Zeroizing<[u8; 32]>, KeyCert) {
        (Zeroizing::new(self.key.to_bytes()), self.cert)
    }

    pub fn node(&self) -> NodeId {
        self.cert.node
    }

    /// Signs a provisioning statement for a sealed image.
    pub fn provision(&self, image: &str, verity: &VerityParams, now_unix_s: u64) -> Result<Provisioning, Error> {
        Provisioning::sign(&self.key, &self.cert, image, verity, now_unix_s)
    }

    /// Signs a report for VM `vm`, which booted the image whose dm-verity root hash is
    /// `image_root`, provisioned by `provisioning` (whose checks are the verifier's).
    pub fn report(
        &self,
        vm: &str,
        image_root: &[u8; 32],
        provisioning: &[u8],
        nonce: &[u8],
        now_unix_s: u64,
    ) -> Result<Report, Error> {
        Report::sign(&self.key, &self.cert, vm, image_root, provisioning, nonce, now_unix_s)
    }
}

/// A [`Trust`] that knows no node (fuzzing, and checks that must fail).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoTrust;

impl Trust for NoTrust {
    fn standing(&self, _node: NodeId, _key: &[u8; 32]) -> Standing {
        Standing::Unknown
    }
}

/// Fuzzing hook: decoding and verifying arbitrary bytes as each format (report, provisioning
/// statement, trust file, key certificate) never panics, and what decodes decodes again, from
/// its own bytes, to the same value.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(r) = Report::decode(data) {
        assert_eq!(Report::decode(&r.bytes).as_ref(), Ok(&r));
        let _ = Provisioning::decode(&r.provisioning);
    }
    let _ = Report::verify(data, &NoTrust, &[0; 16]);
    if let Ok(p) = Provisioning::decode(data) {
        assert_eq!(Provisioning::decode(&p.bytes).as_ref(), Ok(&p));
    }
    let _ = Provisioning::verify(data, &NoTrust);
    if let Ok(t) = TrustFile::parse(data) {
        assert_eq!(TrustFile::parse(t.encode().as_bytes()).as_ref(), Ok(&t));
    }
    if let Ok(c) = KeyCert::decode(data) {
        assert_eq!(c.encode()[..], data[..]);
        let _ = c.check(Role::Reporter, &NoTrust);
    }
}
