//! The one wire protocol between the untrusted Linux proxy and the trusted computing base (TCB).
//!
//! Both the seL4 protection domains and the hosted TCB (`ppn-tcb`) speak it; the proxy, the `ppn`
//! CLI and the conformance suite are its clients. `docs/wire.md` is the field-by-field
//! specification; this crate is its only implementation.
//!
//! Layers, bottom up:
//! - [`stream`]: COBS framing for byte streams (a socket, a UART, a virtio-console): every frame is
//!   COBS-encoded and ends with a `0x00` byte. [`stream::Deframer`] has a fixed buffer and never
//!   holds more than one maximum-size frame.
//! - [`frame`]: a 16-byte header (magic, version, flags, kind, request id, body length) and a
//!   body. [`frame::Frame::new_checked`] checks every header field and the size limit before a
//!   body byte is looked at.
//! - [`Request`] / [`Response`]: typed messages with postcard bodies, one [`Kind`] per message,
//!   grouped by the [`Service`] that owns them (node, ledger, lender, attest).
//!
//! Nothing in this crate panics on input: every malformed frame or body decodes to an [`Error`].
#![no_std]
#![forbid(unsafe_code)]

pub mod bytes;
pub mod frame;
pub mod kind;
pub mod message;
pub mod service;
pub mod stream;
pub mod sync;

mod error;

pub use bytes::ByteArray;
pub use error::{Error, ErrorCode};
pub use frame::{FLAG_RESPONSE, Frame, HEADER_LEN, Header, MAGIC, MAX_BODY_LEN, MAX_FRAME_LEN, VERSION};
pub use kind::{Kind, Service};
pub use message::{Request, Response, decode_request, decode_response, encode_request, encode_response};
pub use service::*;

/// Decodes any byte string the way a TCB decodes a request frame, returning the outcome.
///
/// This is the entry point of the fuzz target and of the property tests: it must return, never
/// panic, whatever `data` holds.
pub fn fuzz_decode(data: &[u8]) -> Result<(), Error> {
    let mut deframer = stream::Deframer::new();
    let mut rest = data;
    while !rest.is_empty() {
        let (used, event) = deframer.push(rest);
        rest = &rest[used..];
        if let Some(Ok(frame)) = event {
            let _ = decode_request(frame);
        }
    }
    // The same bytes taken as one unframed frame, both as a request and as a response.
    let _ = decode_response(data);
    decode_request(data).map(|_| ())
}
