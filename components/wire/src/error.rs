//! Decoding and encoding errors, and the error codes a TCB sends back in an error frame.

use serde::{Deserialize, Serialize};

/// Why a frame or body could not be decoded or encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Fewer bytes than a header, or than the header's body length says.
    #[error("frame truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// More bytes than the header's body length says.
    #[error("frame has {extra} bytes after its body")]
    TrailingFrameBytes { extra: usize },
    /// The first four bytes are not `PPNW`.
    #[error("bad magic {0:02x?}: not a PPN wire frame")]
    BadMagic([u8; 4]),
    /// A version this build does not speak.
    #[error("unsupported wire version {0} (this build speaks {v})", v = crate::VERSION)]
    UnsupportedVersion(u8),
    /// A reserved flag bit is set.
    #[error("reserved flag bits set: {0:#04x}")]
    ReservedFlags(u8),
    /// The body length exceeds [`crate::MAX_BODY_LEN`].
    #[error("body of {0} bytes exceeds the limit of {max} bytes", max = crate::MAX_BODY_LEN)]
    TooLong(u32),
    /// A kind number this build does not know.
    #[error("unknown message kind {0:#06x}")]
    UnknownKind(u16),
    /// A request frame where a response was expected, or the reverse.
    #[error("wrong direction: kind {kind:#06x} as a {got}")]
    WrongDirection { kind: u16, got: &'static str },
    /// The body is not a valid postcard encoding of the kind's message.
    #[error("malformed body for kind {0:#06x}")]
    MalformedBody(u16),
    /// The body decoded, but bytes were left after it.
    #[error("body for kind {kind:#06x} has {extra} trailing bytes")]
    TrailingBodyBytes { kind: u16, extra: usize },
    /// A whole frame longer than [`crate::MAX_FRAME_LEN`] given to the stream encoder.
    #[error("frame of {0} bytes exceeds the limit of {max} bytes", max = crate::MAX_FRAME_LEN)]
    FrameTooLong(usize),
    /// The output buffer is too small for the encoded frame.
    #[error("output buffer too small")]
    BufferTooSmall,
    /// A COBS-framed chunk was longer than the largest frame could encode to; it was dropped.
    #[error("stream chunk longer than the largest frame; dropped")]
    Oversize,
    /// A COBS-framed chunk is not valid COBS.
    #[error("bad COBS encoding")]
    BadCobs,
}

/// The error code an error frame carries (kind [`crate::Kind::Error`]).
///
/// Encoded as a `u16`; codes this build does not know decode to [`ErrorCode::Unknown`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "u16", into = "u16")]
pub enum ErrorCode {
    /// The request frame could not be decoded (bad header, unknown kind, malformed body).
    BadFrame,
    /// The service exists in the protocol but has not landed in this TCB build.
    NotImplemented,
    /// The request decoded but is not acceptable (a bad argument, a failed check).
    Rejected,
    /// The TCB could not complete the request (storage failure); nothing was acknowledged.
    Internal,
    /// The TCB is overloaded; try again later.
    Busy,
    /// A code from a newer build.
    Unknown(u16),
}

impl From<u16> for ErrorCode {
    fn from(v: u16) -> Self {
        match v {
            1 => Self::BadFrame,
            2 => Self::NotImplemented,
            3 => Self::Rejected,
            4 => Self::Internal,
            5 => Self::Busy,
            n => Self::Unknown(n),
        }
    }
}

impl From<ErrorCode> for u16 {
    fn from(c: ErrorCode) -> u16 {
        match c {
            ErrorCode::BadFrame => 1,
            ErrorCode::NotImplemented => 2,
            ErrorCode::Rejected => 3,
            ErrorCode::Internal => 4,
            ErrorCode::Busy => 5,
            ErrorCode::Unknown(n) => n,
        }
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadFrame => f.write_str("bad frame"),
            Self::NotImplemented => f.write_str("not implemented"),
            Self::Rejected => f.write_str("rejected"),
            Self::Internal => f.write_str("internal error"),
            Self::Busy => f.write_str("busy"),
            Self::Unknown(n) => write!(f, "unknown error code {n}"),
        }
    }
}
