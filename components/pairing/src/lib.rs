//! The TCB side of pairing two nodes: the operator types the same one-time [`Code`] on both, and
//! the two TCBs learn each other's identity (node id, Ed25519 signing key, WireGuard key),
//! key-confirmed, a shared [`PairwiseSecret`], and a [`Sas`] the operator compares.
//!
//! - [`cpace`]: CPace (draft-irtf-cfrg-cpace-21), cipher suite CPACE-RISTR255-SHA512, checked
//!   against the draft's ristretto255 test vectors.
//! - [`message`]: the Hello, Reply and Confirm messages; length-checked decoding that never panics.
//! - [`Initiator`], [`Responder`]: sans-IO state machines. The caller moves the bytes (the
//!   untrusted proxy relays them over TCP) and supplies 64 random bytes per session.
//! - [`Code`]: the code's alphabet, parsing and generation.
//!
//! `docs/pairing.md` specifies the protocol and says what it guarantees, and what it does not.
//!
//! ```
//! use ppn_pairing::{Code, Identity, Initiator, Responder};
//! # fn identity(seed: u8) -> Identity {
//! #     let keys = ppn_node_core::NodeKeys::from_seed(&[seed; 32]);
//! #     Identity { node_id: keys.node_id().0.0, signing_key: keys.signing_public(), wireguard_key: [seed; 32] }
//! # }
//! # let (random_a, random_b) = ([1u8; 64], [2u8; 64]); // from the platform's entropy source
//! let code = Code::parse("7K3M9-QX2HD")?; // typed by the operator on both nodes
//!
//! // Node A (initiator)                          // Node B (responder)
//! let (mut a, hello) = Initiator::start(&code, &identity(1), &random_a)?;
//!                                                let mut b = Responder::new(&code, &identity(2), &random_b)?;
//!                                                let reply = b.on_hello(&hello)?;
//! let (paired_a, confirm) = a.on_reply(&reply)?;
//!                                                let paired_b = b.on_confirm(&confirm)?;
//! assert_eq!(paired_a.peer, identity(2));
//! assert_eq!(paired_b.peer, identity(1));
//! // Both operators see the same six digits before either node trusts the other.
//! assert_eq!(paired_a.sas.to_string(), paired_b.sas.to_string());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![no_std]
#![forbid(unsafe_code)]

pub mod code;
pub mod cpace;
pub mod message;
mod session;

pub use code::{Code, CodeError};
pub use message::{DecodeError, Identity, MessageType};
pub use session::{
    CI, Initiator, PairError, Paired, PairwiseSecret, Phase, RANDOM_LEN, Responder, Role, SAS_DIGITS, SAS_MODULUS, SID,
    Sas, label,
};

/// Feeds arbitrary bytes to every decoder and, when they decode, to the state machine that
/// expects them. Must return, never panic: the fuzz target (`components/pairing/fuzz`) and the
/// property tests call it.
pub fn fuzz_decode(data: &[u8]) -> Result<(), PairError> {
    let _ = message::Header::parse(data);
    let decoded = message::decode(data)?;
    let code = Code::from_random(&[7; 8]);
    let a = fuzz_identity(1);
    let b = fuzz_identity(2);
    match decoded {
        message::Message::Hello(_) => {
            let mut responder = Responder::new(&code, &b, &[2; RANDOM_LEN])?;
            responder.on_hello(data).map(|_| ())
        }
        message::Message::Reply(_) => {
            let (mut initiator, _) = Initiator::start(&code, &a, &[1; RANDOM_LEN])?;
            initiator.on_reply(data).map(|_| ())
        }
        message::Message::Confirm(_) => {
            let (_, hello) = Initiator::start(&code, &a, &[1; RANDOM_LEN])?;
            let mut responder = Responder::new(&code, &b, &[2; RANDOM_LEN])?;
            responder.on_hello(&hello)?;
            responder.on_confirm(data).map(|_| ())
        }
    }
}

fn fuzz_identity(n: u8) -> Identity {
    let keys = ppn_node_core::NodeKeys::from_seed(&[n; 32]);
    Identity { node_id: keys.node_id().0.0, signing_key: keys.signing_public(), wireguard_key: [n; 32] }
}
