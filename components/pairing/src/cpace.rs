//! CPace, cipher suite CPACE-RISTR255-SHA512, in the initiator-responder setting, as specified by
//! draft-irtf-cfrg-cpace-21 (April 2026): ristretto255 (RFC 9496) as the group, SHA-512 as the hash.
//!
//! Implemented from the draft's text; the tests check every ristretto255 test vector of its
//! appendix (generator string, generator, Ya, Yb, K, the initiator-responder ISK, and the valid
//! and invalid `scalar_mult_vfy` cases) plus the string-utility vectors.
//!
//! What the draft leaves to the caller, this module leaves to the caller too: the encodings of
//! PRS, CI, sid, ADa and ADb, and the randomness. It never sees a socket or a clock.
//!
//! Names follow the draft: `prs` is the password-related string, `ci` the channel identifier,
//! `sid` the session identifier, `ad_a`/`ad_b` the associated data, `Ya`/`Yb` the public shares,
//! `K` the Diffie-Hellman point, `ISK` the intermediate session key.

use curve25519_dalek::ristretto::{CompressedRistretto, RistrettoPoint};
use curve25519_dalek::scalar::Scalar;
use sha2::{Digest, Sha512};
use zeroize::{Zeroize, Zeroizing};

/// `G_Ristretto255.DSI`.
pub const DSI: &[u8] = b"CPaceRistretto255";
/// `G.DSI || b"_ISK"`, the first field of the ISK hash.
pub const DSI_ISK: &[u8] = b"CPaceRistretto255_ISK";
/// `H.s_in_bytes` of SHA-512: its input block size.
pub const S_IN_BYTES: usize = 128;
/// `G_Ristretto255.field_size_bytes`; also the length of an encoded point.
pub const FIELD_SIZE_BYTES: usize = 32;
/// Length of a public share (`Ya`, `Yb`): one encoded ristretto255 point.
pub const SHARE_LEN: usize = FIELD_SIZE_BYTES;
/// Length of ISK: one SHA-512 output.
pub const ISK_LEN: usize = 64;
/// `G.I`: the encoding of the neutral element.
pub const NEUTRAL: [u8; SHARE_LEN] = [0; SHARE_LEN];

/// Why a CPace run aborted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CpaceError {
    /// `scalar_mult_vfy` returned `G.I`: the peer's share does not decode to a ristretto255 point,
    /// or it is the neutral element. The draft says the party MUST abort.
    #[error("the peer's CPace share is not a valid ristretto255 point other than the identity")]
    InvalidShare,
}

/// The LEB128 encoding of `n` (7 bits a byte, least significant first, bit 7 set while more
/// follow), in a buffer; returns the used prefix.
fn leb128(mut n: usize, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = 0;
    loop {
        let low = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            buf[i] = low;
            return &buf[..=i];
        }
        buf[i] = low | 0x80;
        i += 1;
    }
}

/// `len(prepend_len(data))` for data of `len` bytes.
fn prepend_len_size(len: usize) -> usize {
    let mut buf = [0u8; 10];
    leb128(len, &mut buf).len() + len
}

/// Writes `prepend_len(data)`: the LEB128 length of `data`, then `data`.
pub fn prepend_len(sink: &mut impl FnMut(&[u8]), data: &[u8]) {
    let mut buf = [0u8; 10];
    sink(leb128(data.len(), &mut buf));
    sink(data);
}

/// Writes `lv_cat(parts[0], parts[1], ...)`: each part with its length prepended.
pub fn lv_cat(sink: &mut impl FnMut(&[u8]), parts: &[&[u8]]) {
    for part in parts {
        prepend_len(sink, part);
    }
}

/// Writes `transcript_ir(Ya, ADa, Yb, ADb) = lv_cat(Ya, ADa) || lv_cat(Yb, ADb)`.
pub fn transcript_ir(sink: &mut impl FnMut(&[u8]), ya: &[u8], ad_a: &[u8], yb: &[u8], ad_b: &[u8]) {
    lv_cat(sink, &[ya, ad_a, yb, ad_b]);
}

/// Writes `generator_string(G.DSI, PRS, CI, sid, H.s_in_bytes)`:
/// `lv_cat(DSI, PRS, zero_bytes(len_zpad), CI, sid)` with
/// `len_zpad = max(0, s_in_bytes - 1 - len(prepend_len(PRS)) - len(prepend_len(DSI)))`, so that
/// DSI, PRS and the padding fill the first hash block whatever the (short) PRS's length.
pub fn generator_string(sink: &mut impl FnMut(&[u8]), prs: &[u8], ci: &[u8], sid: &[u8]) {
    const ZEROS: [u8; S_IN_BYTES] = [0; S_IN_BYTES];
    let len_zpad = S_IN_BYTES.saturating_sub(1 + prepend_len_size(prs.len()) + prepend_len_size(DSI.len()));
    prepend_len(sink, DSI);
    prepend_len(sink, prs);
    // len_zpad < S_IN_BYTES, so one slice of ZEROS holds the padding.
    prepend_len(sink, &ZEROS[..len_zpad]);
    prepend_len(sink, ci);
    prepend_len(sink, sid);
}

/// A generator derived from the password: secret (it is a function of PRS), zeroized on drop.
pub struct Generator(RistrettoPoint);

impl Drop for Generator {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for Generator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Generator(<secret>)")
    }
}

impl Generator {
    /// The public encoding of the generator (for the test vectors; never sent).
    pub fn encode(&self) -> [u8; 32] {
        self.0.compress().to_bytes()
    }
}

/// `G.calculate_generator(H, PRS, CI, sid)`: `gen_str_hash = SHA-512(generator_string(...))`
/// (64 = 2 * field_size_bytes octets), then ristretto255's element derivation
/// (`RistrettoPoint::from_uniform_bytes`, RFC 9496 §4.3.4) on it.
pub fn calculate_generator(prs: &[u8], ci: &[u8], sid: &[u8]) -> Generator {
    let mut h = Sha512::new();
    generator_string(&mut |b: &[u8]| h.update(b), prs, ci, sid);
    let mut hash: Zeroizing<[u8; 64]> = Zeroizing::new(h.finalize().into());
    let g = RistrettoPoint::from_uniform_bytes(&hash);
    hash.zeroize();
    Generator(g)
}

/// A secret scalar `y` (`ya` or `yb`), never zero, zeroized on drop. Not `Clone`: the draft
/// forbids reusing one.
pub struct SecretScalar(Scalar);

impl Drop for SecretScalar {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for SecretScalar {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("SecretScalar(<secret>)")
    }
}

impl SecretScalar {
    /// `G.sample_scalar()` by the draft's alternative to bit masking, "uniform sampling between 1
    /// and group_order - 1": 64 uniformly random bytes reduced modulo the group order (statistical
    /// distance from uniform below 2^-250). `None` for the zero scalar (probability about 2^-252),
    /// which the caller must treat as a randomness failure.
    pub fn from_uniform_bytes(random: &[u8; 64]) -> Option<Self> {
        Self::nonzero(Scalar::from_bytes_mod_order_wide(random))
    }

    /// A scalar given by its canonical 32-byte little-endian encoding (as in the draft's test
    /// vectors). `None` if it is not canonical or is zero.
    pub fn from_canonical_bytes(bytes: [u8; 32]) -> Option<Self> {
        Option::<Scalar>::from(Scalar::from_canonical_bytes(bytes)).and_then(Self::nonzero)
    }

    fn nonzero(mut s: Scalar) -> Option<Self> {
        if s == Scalar::ZERO {
            s.zeroize();
            None
        } else {
            Some(Self(s))
        }
    }
}

/// `G.scalar_mult(y, g)`: the encoding of `y * g`.
pub fn scalar_mult(y: &SecretScalar, g: &Generator) -> [u8; SHARE_LEN] {
    (y.0 * g.0).compress().to_bytes()
}

/// `G.scalar_mult_vfy(y, X)`: `G.I` if `X` does not decode (RFC 9496 decoding rejects
/// non-canonical encodings), else the encoding of `y * decode(X)`. The result is secret when it
/// is `K`: the caller zeroizes it.
pub fn scalar_mult_vfy(y: &SecretScalar, x: &[u8; SHARE_LEN]) -> [u8; SHARE_LEN] {
    match CompressedRistretto(*x).decompress() {
        Some(mut point) => {
            let mut product = y.0 * point;
            let out = product.compress().to_bytes();
            product.zeroize();
            point.zeroize();
            out
        }
        None => NEUTRAL,
    }
}

/// ISK: 64 bytes, zeroized on drop, never printed.
pub struct Isk([u8; ISK_LEN]);

impl Drop for Isk {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for Isk {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Isk(<secret>)")
    }
}

impl Isk {
    pub fn as_bytes(&self) -> &[u8; ISK_LEN] {
        &self.0
    }
}

/// `ISK = H.hash(lv_cat(G.DSI || b"_ISK", sid, K) || transcript_ir(Ya, ADa, Yb, ADb))`.
fn derive_isk(sid: &[u8], k: &[u8; SHARE_LEN], ya: &[u8], ad_a: &[u8], yb: &[u8], ad_b: &[u8]) -> Isk {
    let mut h = Sha512::new();
    let mut sink = |b: &[u8]| h.update(b);
    lv_cat(&mut sink, &[DSI_ISK, sid, k]);
    transcript_ir(&mut sink, ya, ad_a, yb, ad_b);
    Isk(h.finalize().into())
}

/// One party's side of one CPace run: its secret scalar and its public share. Consumed by
/// `finish_*`, so a scalar serves one run only.
#[derive(Debug)]
pub struct Party {
    y: SecretScalar,
    share: [u8; SHARE_LEN],
}

impl Party {
    /// Computes `g = calculate_generator(PRS, CI, sid)` and the share `Y = scalar_mult(y, g)`.
    pub fn new(prs: &[u8], ci: &[u8], sid: &[u8], y: SecretScalar) -> Self {
        let g = calculate_generator(prs, ci, sid);
        let share = scalar_mult(&y, &g);
        Self { y, share }
    }

    /// This party's public share (`Ya` for the initiator, `Yb` for the responder).
    pub fn share(&self) -> &[u8; SHARE_LEN] {
        &self.share
    }

    fn finish(
        self,
        sid: &[u8],
        peer: &[u8; SHARE_LEN],
        ya: &[u8],
        ad_a: &[u8],
        yb: &[u8],
        ad_b: &[u8],
    ) -> Result<Isk, CpaceError> {
        let mut k = Zeroizing::new(scalar_mult_vfy(&self.y, peer));
        if *k == NEUTRAL {
            return Err(CpaceError::InvalidShare);
        }
        let isk = derive_isk(sid, &k, ya, ad_a, yb, ad_b);
        k.zeroize();
        Ok(isk)
    }

    /// The initiator (A, who sent `Ya = self.share()` with `ad_a`) on receiving `Yb` and `ad_b`.
    pub fn finish_initiator(
        self,
        sid: &[u8],
        ad_a: &[u8],
        yb: &[u8; SHARE_LEN],
        ad_b: &[u8],
    ) -> Result<Isk, CpaceError> {
        let ya = self.share;
        self.finish(sid, yb, &ya, ad_a, yb, ad_b)
    }

    /// The responder (B, who sends `Yb = self.share()` with `ad_b`) on receiving `Ya` and `ad_a`.
    pub fn finish_responder(
        self,
        sid: &[u8],
        ya: &[u8; SHARE_LEN],
        ad_a: &[u8],
        ad_b: &[u8],
    ) -> Result<Isk, CpaceError> {
        let yb = self.share;
        self.finish(sid, ya, ya, ad_a, &yb, ad_b)
    }
}

#[cfg(test)]
mod tests {
    //! The test vectors of draft-irtf-cfrg-cpace-21, appendix "CPace function definitions" and
    //! "Test vector for CPace using group ristretto255 and hash SHA-512".
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2).map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap()).collect()
    }

    fn arr<const N: usize>(s: &str) -> [u8; N] {
        hex(s).try_into().unwrap()
    }

    fn collect(f: impl FnOnce(&mut dyn FnMut(&[u8]))) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut |b: &[u8]| out.extend_from_slice(b));
        out
    }

    fn prepend(data: &[u8]) -> Vec<u8> {
        collect(|s| prepend_len(&mut |b: &[u8]| s(b), data))
    }

    #[test]
    fn prepend_len_vectors() {
        assert_eq!(prepend(b""), hex("00"));
        assert_eq!(prepend(b"1234"), hex("0431323334"));
        let r127: Vec<u8> = (0..127u8).collect();
        let mut want = std::vec![0x7f];
        want.extend_from_slice(&r127);
        assert_eq!(prepend(&r127), want);
        let r128: Vec<u8> = (0..128u8).collect();
        let mut want = std::vec![0x80, 0x01];
        want.extend_from_slice(&r128);
        assert_eq!(prepend(&r128), want);
        // Beyond the draft's vectors: a three-byte length.
        assert_eq!(prepend(&[0u8; 16384])[..3], [0x80, 0x80, 0x01]);
    }

    #[test]
    fn lv_cat_vector() {
        let got = collect(|s| lv_cat(&mut |b: &[u8]| s(b), &[b"1234", b"5", b"", b"678"]));
        assert_eq!(got, hex("043132333401350003363738"));
    }

    #[test]
    fn transcript_ir_vectors() {
        let t = |ya: &[u8], ad_a: &[u8], yb: &[u8], ad_b: &[u8]| {
            collect(|s| transcript_ir(&mut |b: &[u8]| s(b), ya, ad_a, yb, ad_b))
        };
        assert_eq!(t(b"123", b"PartyA", b"234", b"PartyB"), hex("03313233065061727479410332333406506172747942"));
        assert_eq!(t(b"3456", b"PartyA", b"2345", b"PartyB"), hex("043334353606506172747941043233343506506172747942"));
    }

    // The ristretto255 / SHA-512 vector set.
    const PRS: &[u8] = b"Password";
    const CI: &str = "0b415f696e69746961746f720b425f726573706f6e646572";
    const SID: &str = "7e4b4791d6a8ef019b936c79fb7f2c57";
    const YA_SCALAR: &str = "da3d23700a9e5699258aef94dc060dfda5ebb61f02a5ea77fad53f4ff0976d08";
    const YB_SCALAR: &str = "d2316b454718c35362d83d69df6320f38578ed5984651435e2949762d900b80d";
    const YA: &str = "d6bac480f2c386c394efc7c47adb9925dcd2630b64f240c50f8d0eec482b9157";
    const YB: &str = "3ea7e0b19560d7c0b0f5734f63b955286dfa8232b5ebe63324e2d9e7433f7258";
    const K: &str = "80b69a8a76457ab6a4d7f887a4bf6b55a2f80ac19c333f917a05fc9887c8b40f";
    const ISK_IR: &str = "b69effbf61b51d56401c0f65601abe428de8206feaaf0e32198896dcae7b35cd\
                          2b38950a39dfd5d4a79164614c2984f7daa460b588c1e80c3fa2068af7900447";

    #[test]
    fn generator_vectors() {
        let ci = hex(CI);
        let sid = hex(SID);
        // The CI of the vectors is lv_cat(b"A_initiator", b"B_responder").
        assert_eq!(ci, collect(|s| lv_cat(&mut |b: &[u8]| s(b), &[b"A_initiator", b"B_responder"])));
        let gen_str = collect(|s| generator_string(&mut |b: &[u8]| s(b), PRS, &ci, &sid));
        assert_eq!(
            gen_str,
            hex("11435061636552697374726574746f3235350850617373776f726464
                 00000000000000000000000000000000000000000000000000000000
                 00000000000000000000000000000000000000000000000000000000
                 00000000000000000000000000000000000000000000000000000000
                 00000000000000000000000000000000180b415f696e69746961746f
                 720b425f726573706f6e646572107e4b4791d6a8ef019b936c79fb7f
                 2c57")
        );
        assert_eq!(gen_str.len(), 170);
        let hash: [u8; 64] = Sha512::digest(&gen_str).into();
        assert_eq!(
            hash.to_vec(),
            hex("da6d3ddc8802fca9058755ffd3ebde08a9c2c74945901a258482a288
                 b6663af06bf645c93cd1c51512307199c80e84908916d983b34af772
                 05f90851a657ee27")
        );
        let g = calculate_generator(PRS, &ci, &sid);
        assert_eq!(g.encode(), arr::<32>("222b6b195fe84b1652badb6f6a3ae3d24341e7306967f0b8115b40d5698c7e56"));
    }

    #[test]
    fn shares_k_and_isk_vectors() {
        let ci = hex(CI);
        let sid = hex(SID);
        let a = Party::new(PRS, &ci, &sid, SecretScalar::from_canonical_bytes(arr(YA_SCALAR)).unwrap());
        let b = Party::new(PRS, &ci, &sid, SecretScalar::from_canonical_bytes(arr(YB_SCALAR)).unwrap());
        assert_eq!(*a.share(), arr::<32>(YA));
        assert_eq!(*b.share(), arr::<32>(YB));

        // K on both sides.
        let ya = SecretScalar::from_canonical_bytes(arr(YA_SCALAR)).unwrap();
        let yb = SecretScalar::from_canonical_bytes(arr(YB_SCALAR)).unwrap();
        assert_eq!(scalar_mult_vfy(&ya, &arr(YB)), arr::<32>(K));
        assert_eq!(scalar_mult_vfy(&yb, &arr(YA)), arr::<32>(K));

        // The transcript and the ISK hash input of the initiator-responder setting.
        let t = collect(|s| transcript_ir(&mut |b: &[u8]| s(b), &hex(YA), b"ADa", &hex(YB), b"ADb"));
        assert_eq!(
            t,
            hex("20d6bac480f2c386c394efc7c47adb9925dcd2630b64f240c50f8d0e
                 ec482b915703414461203ea7e0b19560d7c0b0f5734f63b955286dfa
                 8232b5ebe63324e2d9e7433f725803414462")
        );
        let input = collect(|s| {
            lv_cat(&mut |b: &[u8]| s(b), &[DSI_ISK, &sid, &hex(K)]);
            transcript_ir(&mut |b: &[u8]| s(b), &hex(YA), b"ADa", &hex(YB), b"ADb");
        });
        assert_eq!(
            input,
            hex("15435061636552697374726574746f3235355f49534b107e4b4791d6
                 a8ef019b936c79fb7f2c572080b69a8a76457ab6a4d7f887a4bf6b55
                 a2f80ac19c333f917a05fc9887c8b40f20d6bac480f2c386c394efc7
                 c47adb9925dcd2630b64f240c50f8d0eec482b915703414461203ea7
                 e0b19560d7c0b0f5734f63b955286dfa8232b5ebe63324e2d9e7433f
                 725803414462")
        );

        let isk_a = a.finish_initiator(&sid, b"ADa", &arr(YB), b"ADb").unwrap();
        let isk_b = b.finish_responder(&sid, &arr(YA), b"ADa", b"ADb").unwrap();
        assert_eq!(isk_a.as_bytes().to_vec(), hex(ISK_IR));
        assert_eq!(isk_b.as_bytes().to_vec(), hex(ISK_IR));
    }

    #[test]
    fn scalar_mult_vfy_valid_vector() {
        let s =
            SecretScalar::from_canonical_bytes(arr("7cd0e075fa7955ba52c02759a6c90dbbfc10e6d40aea8d283e407d88cf538a05"))
                .unwrap();
        let x = arr("2c3c6b8c4f3800e7aef6864025b4ed79bd599117e427c41bd47d93d654b4a51c");
        assert_eq!(
            scalar_mult_vfy(&s, &x),
            arr::<32>("7c13645fe790a468f62c39beb7388e541d8405d1ade69d1778c5fe3e7f6b600e")
        );
    }

    #[test]
    fn scalar_mult_vfy_invalid_vectors_abort() {
        let s = || {
            SecretScalar::from_canonical_bytes(arr("7cd0e075fa7955ba52c02759a6c90dbbfc10e6d40aea8d283e407d88cf538a05"))
                .unwrap()
        };
        // Y_i1 does not decode; Y_i2 is G.I.
        let y_i1 = arr("2b3c6b8c4f3800e7aef6864025b4ed79bd599117e427c41bd47d93d654b4a51c");
        let y_i2 = NEUTRAL;
        assert_eq!(scalar_mult_vfy(&s(), &y_i1), NEUTRAL);
        assert_eq!(scalar_mult_vfy(&s(), &y_i2), NEUTRAL);
        // In a protocol run, both make the receiving party abort, on either side.
        let ci = hex(CI);
        let sid = hex(SID);
        for bad in [y_i1, y_i2] {
            let a = Party::new(PRS, &ci, &sid, s());
            assert_eq!(a.finish_initiator(&sid, b"ADa", &bad, b"ADb").unwrap_err(), CpaceError::InvalidShare);
            let b = Party::new(PRS, &ci, &sid, s());
            assert_eq!(b.finish_responder(&sid, &bad, b"ADa", b"ADb").unwrap_err(), CpaceError::InvalidShare);
        }
    }

    #[test]
    fn zero_and_non_canonical_scalars_are_refused() {
        assert!(SecretScalar::from_canonical_bytes([0; 32]).is_none());
        assert!(SecretScalar::from_canonical_bytes([0xff; 32]).is_none());
        assert!(SecretScalar::from_uniform_bytes(&[0; 64]).is_none());
        // The group order itself reduces to zero.
        let mut l = [0u8; 64];
        l[..32].copy_from_slice(&arr::<32>("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010"));
        assert!(SecretScalar::from_uniform_bytes(&l).is_none());
        assert!(SecretScalar::from_uniform_bytes(&[1; 64]).is_some());
    }

    #[test]
    fn zero_padding_for_long_and_short_prs() {
        // A PRS that fills the first block by itself gets no padding (len_zpad saturates at 0).
        let long = [b'x'; 200];
        let s = collect(|sink| generator_string(&mut |b: &[u8]| sink(b), &long, b"", b""));
        // 18 (DSI) + 2 + 200 (PRS, two-byte length) + 1 (empty padding) + 1 + 1
        assert_eq!(s.len(), 18 + 202 + 1 + 1 + 1);
        // Our PRS (a 10-symbol code) gets 128 - 1 - 11 - 18 = 98 zero bytes.
        let s = collect(|sink| generator_string(&mut |b: &[u8]| sink(b), b"0123456789", b"", b""));
        assert_eq!(s.len(), 18 + 11 + 1 + 98 + 1 + 1);
    }
}
