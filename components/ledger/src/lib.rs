//! The capability ledger, the heart of the TCB: who may use what, and who has been cut off.
//!
//! - [`token`]: 60-byte capability tokens, HMAC-SHA256 tagged (128-bit tag) with the issuing
//!   node's grant key, which never leaves its TCB.
//! - [`record`]: signed, content-addressed records (NodeAdmitted, NodeRevoked, GrantRevoked)
//!   naming their author's known heads as parents: a Merkle DAG.
//! - [`dag`]: heads, ancestry, and the "records a peer lacks" walk that makes sync cost
//!   proportional to the difference between two replicas.
//! - [`revocations`]: the revoked nodes and grant ranges a token check consults.
//! - [`Ledger`]: all of it behind the wire protocol, persisted to a [`ppn_journal::Journal`]
//!   (durable before acknowledged; replayed and re-checked at open).
//!
//! `docs/ledger.md` specifies the formats and the acceptance rules.
#![no_std]
#![forbid(unsafe_code)]

pub mod dag;
pub mod ledger;
pub mod record;
pub mod revocations;
pub mod token;

pub use ledger::{Ledger, OpenReport, Refusal, Roots};
pub use record::{Body, Record, RecordError, RecordId};
pub use token::{Claims, TOKEN_LEN, TokenBytes, TokenError};
