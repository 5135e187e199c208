//! COSE_Sign1 with Ed25519 (RFC 9052, RFC 9053 `EdDSA`), tagged, and the claim-map helpers both
//! signed formats share.

use crate::Error;
use alloc::vec::Vec;
use coset::cbor::value::{Integer, Value};
use coset::{CoseSign1, CoseSign1Builder, HeaderBuilder, TaggedCborSerializable, iana};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// Signs `payload` with `aad` as external data (each format its own, so that no signature of
/// one can be taken for the other); returns the tagged COSE_Sign1.
pub fn sign(key: &SigningKey, aad: &[u8], payload: Vec<u8>, what: &'static str) -> Result<Vec<u8>, Error> {
    let protected = HeaderBuilder::new().algorithm(iana::Algorithm::EdDSA).build();
    CoseSign1Builder::new()
        .protected(protected)
        .payload(payload)
        .create_signature(aad, |tbs| key.sign(tbs).to_bytes().to_vec())
        .build()
        .to_tagged_vec()
        .map_err(|_| Error::Decode(what))
}

/// Parses a tagged COSE_Sign1 of at most `max` bytes whose algorithm is EdDSA and which has a
/// payload. The signature is not checked here ([`check`]).
pub fn parse(bytes: &[u8], max: usize, what: &'static str) -> Result<CoseSign1, Error> {
    if bytes.len() > max {
        return Err(Error::TooLong { what, len: bytes.len(), max });
    }
    let s = CoseSign1::from_tagged_slice(bytes).map_err(|_| Error::Decode(what))?;
    if s.protected.header.alg != Some(coset::RegisteredLabelWithPrivate::Assigned(iana::Algorithm::EdDSA)) {
        return Err(Error::Algorithm);
    }
    if !s.protected.header.crit.is_empty() || s.payload.is_none() {
        return Err(Error::Decode(what));
    }
    Ok(s)
}

/// Checks that `s` is signed by `key` with `aad`; `err` if not.
pub fn check(s: &CoseSign1, key: &VerifyingKey, aad: &[u8], err: Error) -> Result<(), Error> {
    s.verify_signature(aad, |sig, tbs| {
        let sig: [u8; 64] = sig.try_into().map_err(|_| ())?;
        key.verify_strict(tbs, &Signature::from_bytes(&sig)).map_err(|_| ())
    })
    .map_err(|()| err)
}

/// A CBOR map with integer keys, each at most once; other shapes are refused.
pub struct ClaimMap(Vec<(i128, Value)>);

impl ClaimMap {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    pub fn put(mut self, key: i64, v: Value) -> Self {
        self.0.push((key.into(), v));
        self
    }

    pub fn encode(self, what: &'static str) -> Result<Vec<u8>, Error> {
        let map = Value::Map(
            self.0.into_iter().map(|(k, v)| (Value::Integer(Integer::try_from(k).expect("i64")), v)).collect(),
        );
        let mut out = Vec::new();
        coset::cbor::ser::into_writer(&map, &mut out).map_err(|_| Error::Decode(what))?;
        Ok(out)
    }

    /// Parses a map whose keys are all in `known`, each once.
    pub fn decode(bytes: &[u8], known: &[i64], what: &'static str) -> Result<Self, Error> {
        let v: Value = coset::cbor::de::from_reader(bytes).map_err(|_| Error::Decode(what))?;
        let Value::Map(entries) = v else { return Err(Error::Claims(what)) };
        let mut out: Vec<(i128, Value)> = Vec::with_capacity(entries.len());
        for (k, v) in entries {
            let Value::Integer(k) = k else { return Err(Error::Claims(what)) };
            let k = i128::from(k);
            if !known.iter().any(|&x| i128::from(x) == k) || out.iter().any(|(x, _)| *x == k) {
                return Err(Error::Claims(what));
            }
            out.push((k, v));
        }
        Ok(Self(out))
    }

    fn take(&mut self, key: i64, what: &'static str) -> Result<Value, Error> {
        let i = self.0.iter().position(|(k, _)| *k == i128::from(key)).ok_or(Error::Claims(what))?;
        Ok(self.0.swap_remove(i).1)
    }

    pub fn bytes(&mut self, key: i64, what: &'static str) -> Result<Vec<u8>, Error> {
        match self.take(key, what)? {
            Value::Bytes(b) => Ok(b),
            _ => Err(Error::Claims(what)),
        }
    }

    pub fn array32(&mut self, key: i64, what: &'static str) -> Result<[u8; 32], Error> {
        self.bytes(key, what)?.try_into().map_err(|_| Error::Claims(what))
    }

    pub fn text(&mut self, key: i64, what: &'static str) -> Result<alloc::string::String, Error> {
        match self.take(key, what)? {
            Value::Text(t) => Ok(t),
            _ => Err(Error::Claims(what)),
        }
    }

    pub fn uint(&mut self, key: i64, what: &'static str) -> Result<u64, Error> {
        match self.take(key, what)? {
            Value::Integer(i) => u64::try_from(i).map_err(|_| Error::Claims(what)),
            _ => Err(Error::Claims(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_checks_only_with_its_own_aad_and_key() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let bytes = sign(&key, b"ppn/report/v1", alloc::vec![1, 2, 3], "x").unwrap();
        let s = parse(&bytes, 1024, "x").unwrap();
        let e = Error::ReportSignature;
        assert!(check(&s, &key.verifying_key(), b"ppn/report/v1", e.clone()).is_ok());
        assert!(check(&s, &key.verifying_key(), b"ppn/provision/v1", e.clone()).is_err());
        assert!(check(&s, &SigningKey::from_bytes(&[4; 32]).verifying_key(), b"ppn/report/v1", e).is_err());
        assert_eq!(
            parse(&bytes, bytes.len() - 1, "x").unwrap_err(),
            Error::TooLong { what: "x", len: bytes.len(), max: bytes.len() - 1 }
        );
    }

    #[test]
    fn claim_maps_refuse_unknown_and_repeated_keys() {
        let ok = ClaimMap::new().put(1, Value::Integer(5.into())).encode("m").unwrap();
        let mut m = ClaimMap::decode(&ok, &[1], "m").unwrap();
        assert_eq!(m.uint(1, "m").unwrap(), 5);
        assert_eq!(ClaimMap::decode(&ok, &[2], "m").err(), Some(Error::Claims("m")));
        let twice =
            ClaimMap::new().put(1, Value::Integer(5.into())).put(1, Value::Integer(6.into())).encode("m").unwrap();
        assert_eq!(ClaimMap::decode(&twice, &[1], "m").err(), Some(Error::Claims("m")));
        assert_eq!(ClaimMap::decode(&[0xA1], &[1], "m").err(), Some(Error::Decode("m")));
    }
}
