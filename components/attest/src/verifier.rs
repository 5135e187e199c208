//! Checking many reports against one fleet's trust: each key certificate's and provisioning
//! statement's signature is checked once and remembered (by its exact bytes); the nodes'
//! standing, the report's own signature, its nonce and the image are checked every time.

use crate::{CERT_LEN, Chain, Error, KeyCert, Provisioning, Report, Role, Trust};
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use ed25519_dalek::VerifyingKey;

/// Certificates or statements remembered at most; past it the memory starts over.
pub const CACHE_MAX: usize = 1024;

/// A verifier for one fleet's trust.
pub struct Verifier<'t, T: Trust> {
    trust: &'t T,
    certs: BTreeMap<[u8; CERT_LEN], VerifyingKey>,
    statements: BTreeMap<Vec<u8>, Provisioning>,
}

impl<T: Trust> core::fmt::Debug for Verifier<'_, T> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Verifier")
            .field("certs", &self.certs.len())
            .field("statements", &self.statements.len())
            .finish()
    }
}

impl<'t, T: Trust> Verifier<'t, T> {
    pub fn new(trust: &'t T) -> Self {
        Self { trust, certs: BTreeMap::new(), statements: BTreeMap::new() }
    }

    /// The certificate's attestation key, its signature checked once; its node's standing
    /// checked every time.
    fn attest_key(&mut self, cert: &KeyCert, role: Role) -> Result<VerifyingKey, Error> {
        let bytes = cert.encode();
        let key = match self.certs.get(&bytes) {
            Some(k) => *k,
            None => {
                let k = cert.check_signature()?;
                if self.certs.len() >= CACHE_MAX {
                    self.certs.clear();
                }
                self.certs.insert(bytes, k);
                k
            }
        };
        cert.check_standing(role, self.trust)?;
        Ok(key)
    }

    /// A provisioning statement: see [`Provisioning::verify`].
    pub fn verify_provisioning(&mut self, bytes: &[u8]) -> Result<Provisioning, Error> {
        if let Some(p) = self.statements.get(bytes) {
            let p = p.clone();
            p.cert.check_standing(Role::Provisioner, self.trust)?;
            return Ok(p);
        }
        let (p, s) = Provisioning::decode_parts(bytes)?;
        let key = self.attest_key(&p.cert, Role::Provisioner)?;
        crate::cose::check(&s, &key, crate::provision::AAD, Error::ProvisioningSignature)?;
        if self.statements.len() >= CACHE_MAX {
            self.statements.clear();
        }
        self.statements.insert(bytes.to_vec(), p.clone());
        Ok(p)
    }

    /// A report: see [`Report::verify`].
    pub fn verify_report(&mut self, bytes: &[u8], nonce: &[u8]) -> Result<Chain, Error> {
        let (report, s) = Report::decode_parts(bytes)?;
        let key = self.attest_key(&report.cert, Role::Reporter)?;
        crate::cose::check(&s, &key, crate::report::AAD, Error::ReportSignature)?;
        if report.nonce != nonce {
            return Err(Error::WrongNonce);
        }
        let provisioning = self.verify_provisioning(&report.provisioning)?;
        if provisioning.verity.root_hash != report.image_root {
            return Err(Error::ImageMismatch);
        }
        Ok(Chain { report, provisioning })
    }
}
