//! The hosted TCB (`ppn-tcb`): the trusted component cores run as one Linux process behind the
//! wire protocol on a Unix socket, with their state in a directory. It gives the isolation of a
//! process and no more; `docs/threat-model.md` says what that means.
#![deny(unsafe_code)]

#[allow(unsafe_code)]
pub mod harden;
pub mod pool;
pub mod roots;
pub mod server;
pub mod storage;
pub mod tcb;
