//! The pairing protocol on top of CPace: the [`Initiator`] and [`Responder`] state machines.
//!
//! ```text
//!   A (Initiator)                                         B (Responder)
//!   start(code, A, rand)  --- Hello { Ya, A, commit } -->  on_hello
//!   on_reply              <-- Reply { Yb, B, tag_B } ---
//!                         --- Confirm { nonce, tag_A } ->  on_confirm
//!   => Paired { B, secret, sas }                           => Paired { A, secret, sas }
//! ```
//!
//! Sans-IO: each call takes the bytes that arrived and returns the bytes to send, or the outcome.
//! Any error ends the session for good: the secret scalar, ISK and keys are dropped (and
//! zeroized) and every later call answers [`PairError::OutOfOrder`]. A session allows one CPace
//! run, so an attacker gets one guess at the code per session.
//!
//! `docs/pairing.md` specifies the transcript, the key schedule and what the SAS guarantees.

use crate::code::Code;
use crate::cpace::{self, Isk, Party, SecretScalar};
use crate::message::{
    self, CONFIRM_LEN, Confirm, DecodeError, FIELD_LEN, HELLO_LEN, Hello, IDENTITY_LEN, Identity, Message, MessageType,
    REPLY_LEN, Reply,
};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, Zeroizing};

/// CPace's channel identifier: names this protocol and its version, so a run of another
/// protocol or version with the same code derives an unrelated generator.
pub const CI: &[u8] = b"ppn/pairing/v1";
/// CPace's session identifier: empty. The nodes share no public session value before the
/// Hello; the draft's security analysis (BGHJ24) covers an empty sid.
pub const SID: &[u8] = b"";
/// Random bytes each side supplies per session.
pub const RANDOM_LEN: usize = 64;
/// Digits of the short authentication string.
pub const SAS_DIGITS: usize = 6;
/// The SAS is a number below this.
pub const SAS_MODULUS: u32 = 1_000_000;

/// Domain-separation labels. See `docs/pairing.md` §5.
pub mod label {
    /// SHA-512(SCALAR || random): the 64 bytes the CPace scalar is reduced from.
    pub const SCALAR: &[u8] = b"ppn/pairing/v1/scalar";
    /// SHA-512(NONCE || random), first 32 bytes: the initiator's SAS nonce.
    pub const NONCE: &[u8] = b"ppn/pairing/v1/nonce";
    /// SHA-512(COMMIT || nonce), first 32 bytes: the Hello's commitment to the nonce.
    pub const COMMIT: &[u8] = b"ppn/pairing/v1/commit";
    /// HKDF-Expand info of the responder's confirmation key (the Reply's tag).
    pub const KEY_REPLY: &[u8] = b"ppn/pairing/v1/key/reply";
    /// HKDF-Expand info of the initiator's confirmation key (the Confirm's tag).
    pub const KEY_CONFIRM: &[u8] = b"ppn/pairing/v1/key/confirm";
    /// HKDF-Expand info of the pairwise secret.
    pub const PAIRWISE: &[u8] = b"ppn/pairing/v1/pairwise-secret";
    /// HKDF-Expand info prefix of the SAS (followed by the nonce).
    pub const SAS: &[u8] = b"ppn/pairing/v1/sas";
}

/// Which side of the ceremony.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

impl core::fmt::Display for Role {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Initiator => "initiator",
            Self::Responder => "responder",
        })
    }
}

/// Where a session is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    AwaitingHello,
    AwaitingReply,
    AwaitingConfirm,
    /// The outcome was returned; the session holds nothing any more.
    Paired,
    /// An error ended the session; it holds nothing any more.
    Failed,
}

impl core::fmt::Display for Phase {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::AwaitingHello => "awaiting a Hello",
            Self::AwaitingReply => "awaiting a Reply",
            Self::AwaitingConfirm => "awaiting a Confirm",
            Self::Paired => "already paired",
            Self::Failed => "failed",
        })
    }
}

/// Why pairing did not complete. After any of these the session is over and yields nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PairError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("expected a pairing {expected} message, got a {got}")]
    UnexpectedMessage { expected: MessageType, got: MessageType },
    #[error("pairing message out of order: this {role} is {phase}")]
    OutOfOrder { role: Role, phase: Phase },
    #[error("pairing failed: the peer's CPace share is not a valid ristretto255 point (or is the identity)")]
    InvalidShare,
    #[error("pairing failed: the peer's node id is not the one its signing key gives")]
    PeerIdentity,
    #[error("pairing failed: the peer presents this node's own node id, signing key or WireGuard key")]
    PeerIsSelf,
    #[error(
        "pairing failed: key confirmation did not match. The codes typed on the two nodes differ, or someone \
         in the middle altered the exchange. Nothing was paired; start again with a new code"
    )]
    ConfirmationFailed,
    #[error("pairing failed: the initiator's nonce does not open its commitment. Nothing was paired")]
    CommitmentMismatch,
    #[error("this node's own node id is not the one its signing key gives")]
    OwnIdentity,
    #[error("the random bytes reduced to the zero scalar: supply fresh random bytes")]
    Randomness,
}

impl From<cpace::CpaceError> for PairError {
    fn from(e: cpace::CpaceError) -> Self {
        match e {
            cpace::CpaceError::InvalidShare => Self::InvalidShare,
        }
    }
}

/// The short authentication string: 6 decimal digits (log2(10^6) ≈ 19.9 bits) that both
/// operators read out and compare. Not secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sas(u32);

impl Sas {
    /// The number, below [`SAS_MODULUS`].
    pub fn value(&self) -> u32 {
        self.0
    }

    /// The six ASCII digits, leading zeros kept.
    pub fn digits(&self) -> [u8; SAS_DIGITS] {
        let mut out = [b'0'; SAS_DIGITS];
        let mut v = self.0;
        for d in out.iter_mut().rev() {
            *d = b'0' + (v % 10) as u8;
            v /= 10;
        }
        out
    }
}

/// `123 456`.
impl core::fmt::Display for Sas {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, &d) in self.digits().iter().enumerate() {
            if i == SAS_DIGITS / 2 {
                f.write_str(" ")?;
            }
            core::fmt::Write::write_char(f, char::from(d))?;
        }
        Ok(())
    }
}

/// A 32-byte secret only the two paired TCBs know. Zeroized on drop; `Debug` does not show it;
/// `==` is constant-time.
pub struct PairwiseSecret([u8; 32]);

impl Drop for PairwiseSecret {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for PairwiseSecret {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("PairwiseSecret(<secret>)")
    }
}

impl PartialEq for PairwiseSecret {
    fn eq(&self, other: &Self) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl Eq for PairwiseSecret {}

impl PairwiseSecret {
    pub fn expose_secret(&self) -> &[u8; 32] {
        &self.0
    }
}

/// A completed pairing.
#[derive(Debug, PartialEq, Eq)]
pub struct Paired {
    /// The other node's identity, exactly as it sent it, key-confirmed.
    pub peer: Identity,
    /// Derived from ISK; the same on both nodes.
    pub pairwise_secret: PairwiseSecret,
    /// What the operator compares across the two nodes before trusting `peer`.
    pub sas: Sas,
}

type HmacSha512 = Hmac<Sha512>;

fn hmac(key: &[u8]) -> HmacSha512 {
    <HmacSha512 as Mac>::new_from_slice(key).expect("HMAC takes keys of any length")
}

/// HKDF-Expand(PRK = ISK, info, L ≤ 64) with SHA-512 (RFC 5869): one block,
/// T(1) = HMAC-SHA512(ISK, info || 0x01). ISK is already a uniform 64-byte key, so it is the PRK
/// (no Extract step).
fn expand(isk: &Isk, info: &[&[u8]]) -> Zeroizing<[u8; 64]> {
    let mut mac = hmac(isk.as_bytes());
    for part in info {
        mac.update(part);
    }
    mac.update(&[1]);
    Zeroizing::new(mac.finalize().into_bytes().into())
}

fn sha512(parts: &[&[u8]]) -> Zeroizing<[u8; 64]> {
    let mut h = Sha512::new();
    for p in parts {
        h.update(p);
    }
    Zeroizing::new(h.finalize().into())
}

fn first32(b: &[u8; 64]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[..32]);
    out
}

fn scalar_from(random: &[u8; RANDOM_LEN]) -> Result<SecretScalar, PairError> {
    SecretScalar::from_uniform_bytes(&sha512(&[label::SCALAR, random])).ok_or(PairError::Randomness)
}

fn commitment(nonce: &[u8; 32]) -> [u8; 32] {
    first32(&sha512(&[label::COMMIT, nonce]))
}

/// The CPace transcript: `Ya`, `ADa = A's identity || commitment`, `Yb`, `ADb = B's identity`.
struct Transcript {
    ya: [u8; FIELD_LEN],
    ad_a: [u8; IDENTITY_LEN + FIELD_LEN],
    yb: [u8; FIELD_LEN],
    ad_b: [u8; IDENTITY_LEN],
}

impl Transcript {
    fn new(hello: &Hello, yb: &[u8; FIELD_LEN], responder: &Identity) -> Self {
        Self { ya: hello.share, ad_a: hello.ad(), yb: *yb, ad_b: responder.to_bytes() }
    }

    fn isk_initiator(&self, party: Party) -> Result<Isk, PairError> {
        Ok(party.finish_initiator(SID, &self.ad_a, &self.yb, &self.ad_b)?)
    }

    fn isk_responder(&self, party: Party) -> Result<Isk, PairError> {
        Ok(party.finish_responder(SID, &self.ya, &self.ad_a, &self.ad_b)?)
    }

    /// HMAC-SHA512(key, transcript_ir(Ya, ADa, Yb, ADb) [|| nonce]), first 32 bytes, with the key
    /// HKDF-Expand(ISK, key_label).
    fn tag(&self, isk: &Isk, key_label: &[u8], nonce: Option<&[u8; 32]>) -> [u8; 32] {
        let key = expand(isk, &[key_label]);
        let mut mac = hmac(&key[..]);
        cpace::transcript_ir(&mut |b: &[u8]| mac.update(b), &self.ya, &self.ad_a, &self.yb, &self.ad_b);
        if let Some(n) = nonce {
            mac.update(n);
        }
        let full: [u8; 64] = mac.finalize().into_bytes().into();
        first32(&full)
    }
}

fn outcome(isk: &Isk, peer: Identity, nonce: &[u8; 32]) -> Paired {
    let secret = expand(isk, &[label::PAIRWISE]);
    let sas = expand(isk, &[label::SAS, nonce]);
    let sas = u64::from_le_bytes([sas[0], sas[1], sas[2], sas[3], sas[4], sas[5], sas[6], sas[7]]);
    // 2^64 mod 10^6 values are one more likely than the rest: a bias below 2^-44.
    Paired { peer, pairwise_secret: PairwiseSecret(first32(&secret)), sas: Sas((sas % u64::from(SAS_MODULUS)) as u32) }
}

fn check_peer(me: &Identity, peer: &Identity) -> Result<(), PairError> {
    if !peer.is_consistent() {
        return Err(PairError::PeerIdentity);
    }
    if peer.node_id == me.node_id || peer.signing_key == me.signing_key || peer.wireguard_key == me.wireguard_key {
        return Err(PairError::PeerIsSelf);
    }
    Ok(())
}

fn tags_equal(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.ct_eq(b).into()
}

#[allow(clippy::large_enum_variant, reason = "no_std without alloc: a session is a few hundred bytes, kept in place")]
enum InitiatorState {
    AwaitingReply { party: Party, hello: Hello, nonce: [u8; 32] },
    Paired,
    Failed,
}

/// Node A: speaks first. Not `Clone`: a session runs once.
pub struct Initiator {
    state: InitiatorState,
}

impl core::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Initiator").field("phase", &self.phase()).finish_non_exhaustive()
    }
}

impl Initiator {
    /// Starts a session: `random` must be 64 fresh bytes from the platform's entropy source,
    /// never reused. Returns the session and the Hello to send.
    pub fn start(code: &Code, me: &Identity, random: &[u8; RANDOM_LEN]) -> Result<(Self, [u8; HELLO_LEN]), PairError> {
        if !me.is_consistent() {
            return Err(PairError::OwnIdentity);
        }
        let y = scalar_from(random)?;
        let nonce = first32(&sha512(&[label::NONCE, random]));
        let party = Party::new(code.as_prs(), CI, SID, y);
        let hello = Hello { share: *party.share(), identity: *me, commitment: commitment(&nonce) };
        let bytes = hello.encode();
        Ok((Self { state: InitiatorState::AwaitingReply { party, hello, nonce } }, bytes))
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            InitiatorState::AwaitingReply { .. } => Phase::AwaitingReply,
            InitiatorState::Paired => Phase::Paired,
            InitiatorState::Failed => Phase::Failed,
        }
    }

    /// Takes the responder's Reply. On success returns the outcome and the Confirm to send (the
    /// responder has its outcome only once the Confirm arrives). On any error the session is over.
    pub fn on_reply(&mut self, bytes: &[u8]) -> Result<(Paired, [u8; CONFIRM_LEN]), PairError> {
        self.reply(bytes, true)
    }

    fn reply(&mut self, bytes: &[u8], check_tag: bool) -> Result<(Paired, [u8; CONFIRM_LEN]), PairError> {
        let (party, hello, nonce) = match core::mem::replace(&mut self.state, InitiatorState::Failed) {
            InitiatorState::AwaitingReply { party, hello, nonce } => (party, hello, nonce),
            InitiatorState::Paired => {
                self.state = InitiatorState::Paired;
                return Err(PairError::OutOfOrder { role: Role::Initiator, phase: Phase::Paired });
            }
            InitiatorState::Failed => {
                return Err(PairError::OutOfOrder { role: Role::Initiator, phase: Phase::Failed });
            }
        };
        let reply = match message::decode(bytes)? {
            Message::Reply(r) => r,
            other => return Err(PairError::UnexpectedMessage { expected: MessageType::Reply, got: other.ty() }),
        };
        check_peer(&hello.identity, &reply.identity)?;
        let transcript = Transcript::new(&hello, &reply.share, &reply.identity);
        let isk = transcript.isk_initiator(party)?;
        let expected = transcript.tag(&isk, label::KEY_REPLY, None);
        if check_tag && !tags_equal(&expected, &reply.tag) {
            return Err(PairError::ConfirmationFailed);
        }
        let confirm = Confirm { nonce, tag: transcript.tag(&isk, label::KEY_CONFIRM, Some(&nonce)) };
        let paired = outcome(&isk, reply.identity, &nonce);
        self.state = InitiatorState::Paired;
        Ok((paired, confirm.encode()))
    }

    /// A dishonest initiator that does not check the Reply's tag (as an attacker would not):
    /// lets tests show the responder refusing the resulting Confirm.
    #[cfg(test)]
    pub(crate) fn on_reply_unchecked(&mut self, bytes: &[u8]) -> Result<(Paired, [u8; CONFIRM_LEN]), PairError> {
        self.reply(bytes, false)
    }
}

#[allow(clippy::large_enum_variant, reason = "no_std without alloc: a session is a few hundred bytes, kept in place")]
enum ResponderState {
    AwaitingHello { party: Party, me: Identity },
    AwaitingConfirm { isk: Isk, transcript: Transcript, hello: Hello },
    Paired,
    Failed,
}

/// Node B: answers. Not `Clone`: a session runs once.
pub struct Responder {
    state: ResponderState,
}

impl core::fmt::Debug for Responder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Responder").field("phase", &self.phase()).finish_non_exhaustive()
    }
}

impl Responder {
    /// Prepares a session: `random` must be 64 fresh bytes from the platform's entropy source,
    /// never reused.
    pub fn new(code: &Code, me: &Identity, random: &[u8; RANDOM_LEN]) -> Result<Self, PairError> {
        if !me.is_consistent() {
            return Err(PairError::OwnIdentity);
        }
        let party = Party::new(code.as_prs(), CI, SID, scalar_from(random)?);
        Ok(Self { state: ResponderState::AwaitingHello { party, me: *me } })
    }

    pub fn phase(&self) -> Phase {
        match self.state {
            ResponderState::AwaitingHello { .. } => Phase::AwaitingHello,
            ResponderState::AwaitingConfirm { .. } => Phase::AwaitingConfirm,
            ResponderState::Paired => Phase::Paired,
            ResponderState::Failed => Phase::Failed,
        }
    }

    fn take(&mut self) -> ResponderState {
        match core::mem::replace(&mut self.state, ResponderState::Failed) {
            ResponderState::Paired => {
                self.state = ResponderState::Paired;
                ResponderState::Paired
            }
            s => s,
        }
    }

    /// Takes the initiator's Hello; returns the Reply to send. The Hello is not authenticated
    /// yet: that happens when the Confirm arrives.
    pub fn on_hello(&mut self, bytes: &[u8]) -> Result<[u8; REPLY_LEN], PairError> {
        let (party, me) = match self.take() {
            ResponderState::AwaitingHello { party, me } => (party, me),
            other => return Err(out_of_order(&other)),
        };
        let hello = match message::decode(bytes)? {
            Message::Hello(h) => h,
            other => return Err(PairError::UnexpectedMessage { expected: MessageType::Hello, got: other.ty() }),
        };
        check_peer(&me, &hello.identity)?;
        let yb = *party.share();
        let transcript = Transcript::new(&hello, &yb, &me);
        let isk = transcript.isk_responder(party)?;
        let reply = Reply { share: yb, identity: me, tag: transcript.tag(&isk, label::KEY_REPLY, None) };
        self.state = ResponderState::AwaitingConfirm { isk, transcript, hello };
        Ok(reply.encode())
    }

    /// Takes the initiator's Confirm; returns the outcome. On any error the session is over.
    pub fn on_confirm(&mut self, bytes: &[u8]) -> Result<Paired, PairError> {
        let (isk, transcript, hello) = match self.take() {
            ResponderState::AwaitingConfirm { isk, transcript, hello } => (isk, transcript, hello),
            other => return Err(out_of_order(&other)),
        };
        let confirm = match message::decode(bytes)? {
            Message::Confirm(c) => c,
            other => return Err(PairError::UnexpectedMessage { expected: MessageType::Confirm, got: other.ty() }),
        };
        let expected = transcript.tag(&isk, label::KEY_CONFIRM, Some(&confirm.nonce));
        if !tags_equal(&expected, &confirm.tag) {
            return Err(PairError::ConfirmationFailed);
        }
        if commitment(&confirm.nonce) != hello.commitment {
            return Err(PairError::CommitmentMismatch);
        }
        let paired = outcome(&isk, hello.identity, &confirm.nonce);
        self.state = ResponderState::Paired;
        Ok(paired)
    }
}

fn out_of_order(state: &ResponderState) -> PairError {
    let phase = match state {
        ResponderState::AwaitingHello { .. } => Phase::AwaitingHello,
        ResponderState::AwaitingConfirm { .. } => Phase::AwaitingConfirm,
        ResponderState::Paired => Phase::Paired,
        ResponderState::Failed => Phase::Failed,
    };
    PairError::OutOfOrder { role: Role::Responder, phase }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use ppn_node_core::NodeKeys;

    fn identity(seed: u8) -> Identity {
        let keys = NodeKeys::from_seed(&[seed; 32]);
        Identity { node_id: keys.node_id().0.0, signing_key: keys.signing_public(), wireguard_key: [seed; 32] }
    }

    fn code(s: &str) -> Code {
        Code::parse(s).unwrap()
    }

    #[test]
    fn wrong_code_fails_at_reply_and_at_confirm() {
        let (a, b) = (identity(1), identity(2));
        let (mut honest, hello) = Initiator::start(&code("AAAAA-AAAAA"), &a, &[1; 64]).unwrap();
        // The same session once more (same randomness), for an initiator that does not check.
        let (mut cheat, hello_again) = Initiator::start(&code("AAAAA-AAAAA"), &a, &[1; 64]).unwrap();
        assert_eq!(hello, hello_again);
        let mut resp = Responder::new(&code("AAAAA-AAAAB"), &b, &[2; 64]).unwrap();
        let reply = resp.on_hello(&hello).unwrap();

        // An honest initiator stops at the Reply.
        assert_eq!(honest.on_reply(&reply).unwrap_err(), PairError::ConfirmationFailed);
        assert_eq!(honest.phase(), Phase::Failed);

        // One that goes on anyway sends a Confirm the responder refuses.
        let (_, confirm) = cheat.on_reply_unchecked(&reply).unwrap();
        assert_eq!(resp.on_confirm(&confirm).unwrap_err(), PairError::ConfirmationFailed);
        assert_eq!(resp.phase(), Phase::Failed);
        assert!(matches!(resp.on_confirm(&confirm), Err(PairError::OutOfOrder { phase: Phase::Failed, .. })));
    }

    #[test]
    fn nonce_that_does_not_open_the_commitment_is_refused() {
        // An initiator that knows the code but reveals another nonce than it committed to
        // (trying to steer the SAS) is refused even with a valid tag.
        let (a, b) = (identity(1), identity(2));
        let c = code("7K3M9-QX2HD");
        let (mut init, hello) = Initiator::start(&c, &a, &[1; 64]).unwrap();
        let mut resp = Responder::new(&c, &b, &[2; 64]).unwrap();
        let reply = resp.on_hello(&hello).unwrap();
        let InitiatorState::AwaitingReply { party, hello: h, .. } =
            core::mem::replace(&mut init.state, InitiatorState::Failed)
        else {
            unreachable!()
        };
        let Ok(Message::Reply(r)) = message::decode(&reply) else { unreachable!() };
        let t = Transcript::new(&h, &r.share, &r.identity);
        let isk = t.isk_initiator(party).unwrap();
        let other_nonce = [9u8; 32];
        let confirm = Confirm { nonce: other_nonce, tag: t.tag(&isk, label::KEY_CONFIRM, Some(&other_nonce)) };
        assert_eq!(resp.on_confirm(&confirm.encode()).unwrap_err(), PairError::CommitmentMismatch);
    }

    #[test]
    fn sas_formats() {
        assert_eq!(std::format!("{}", Sas(42)), "000 042");
        assert_eq!(Sas(987_654).digits(), *b"987654");
        assert_eq!(std::format!("{}", Sas(987_654)), "987 654");
    }

    #[test]
    fn expand_is_hkdf_expand_single_block() {
        // RFC 5869 HKDF-Expand with L <= HashLen is T(1) = HMAC(PRK, info || 0x01): check against
        // a direct computation with a different code path.
        let c = code("7K3M9-QX2HD");
        let party = Party::new(c.as_prs(), CI, SID, SecretScalar::from_uniform_bytes(&[3; 64]).unwrap());
        let peer = Party::new(c.as_prs(), CI, SID, SecretScalar::from_uniform_bytes(&[4; 64]).unwrap());
        let isk = party.finish_initiator(SID, b"a", peer.share(), b"b").unwrap();
        let mut info = std::vec::Vec::from(label::PAIRWISE);
        info.push(1);
        let direct: [u8; 64] = hmac(isk.as_bytes()).chain_update(&info).finalize().into_bytes().into();
        assert_eq!(*expand(&isk, &[label::PAIRWISE]), direct);
    }
}
