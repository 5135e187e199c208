//! The lease protocol between node proxies, on mesh port [`LEASE_PORT`]: one request and one
//! answer per stream. The borrower is whoever the mesh says sent the request (its inner source
//! address is its node id), never a field of the message.
//!
//! A message (all integers little endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `PPNL` |
//! | 4 | 1 | version `1` |
//! | 5 | 1 | type (below) |
//! | 6 | 2 | body length n (at most [`MAX_BODY`]) |
//! | 8 | n | body |
//!
//! | type | message | body |
//! | --- | --- | --- |
//! | 1 | `Request` | blocks u32, expires (Unix s) u64 |
//! | 2 | `Granted` | lease id u64, token length u8 (1..=64), token, endorsement (64) |
//! | 3 | `Refused` | UTF-8 reason, the whole body (at most 256 bytes) |
//! | 4 | `Release` | lease id u64 |
//! | 5 | `Released` | blocks u32, scrubbed u8 (0 or 1) |
//!
//! A body of the wrong length for its type, an unknown type or version, a token of a bad
//! length, a reason that is not UTF-8: each is its own [`LeaseWireError`]. Nothing is read past
//! the length the header gives.

pub use crate::proxy_frame::HEADER_LEN;
use crate::proxy_frame::{FrameError, Framing, cut};

/// The mesh port of the lease service.
pub const LEASE_PORT: u16 = 7003;
/// `PPNL`.
pub const MAGIC: [u8; 4] = *b"PPNL";
pub const VERSION: u8 = 1;
/// The largest body ([`LeaseMsg::Granted`] with a 64-byte token is 137).
pub const MAX_BODY: usize = 256;
/// The longest token ([`ppn_wire::service::TOKEN_MAX`]).
pub const TOKEN_MAX: usize = 64;

const FRAMING: Framing = Framing { magic: MAGIC, version: VERSION, max_body: MAX_BODY };

/// A lease protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseMsg {
    Request { blocks: u32, expires_unix_s: u64 },
    Granted { lease_id: u64, token: Vec<u8>, endorsement: [u8; 64] },
    Refused { reason: String },
    Release { lease_id: u64 },
    Released { blocks: u32, scrubbed: bool },
}

/// Why bytes are not a lease message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseWireError {
    #[error("lease message of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    #[error("not a lease message (magic {0:02x?})")]
    Magic([u8; 4]),
    #[error("lease protocol version {0}; this build speaks 1")]
    Version(u8),
    #[error("lease message body of {0} bytes is over the limit of 256")]
    TooLong(usize),
    #[error("lease message says {said} body bytes, {got} follow")]
    Length { said: usize, got: usize },
    #[error("unknown lease message type {0}")]
    UnknownType(u8),
    #[error("lease message type {kind}: body of {len} bytes, want {want}")]
    Body { kind: u8, len: usize, want: usize },
    #[error("lease token of {0} bytes (1 to 64)")]
    Token(usize),
    #[error("scrubbed flag {0} (0 or 1)")]
    Flag(u8),
    #[error("refusal reason is not UTF-8")]
    Utf8,
}

impl From<FrameError> for LeaseWireError {
    fn from(e: FrameError) -> Self {
        match e {
            FrameError::Short(n) => Self::Short(n),
            FrameError::Magic(m) => Self::Magic(m),
            FrameError::Version(v) => Self::Version(v),
            FrameError::TooLong(n) => Self::TooLong(n),
            FrameError::Length { said, got } => Self::Length { said, got },
        }
    }
}

impl LeaseMsg {
    fn kind(&self) -> u8 {
        match self {
            LeaseMsg::Request { .. } => 1,
            LeaseMsg::Granted { .. } => 2,
            LeaseMsg::Refused { .. } => 3,
            LeaseMsg::Release { .. } => 4,
            LeaseMsg::Released { .. } => 5,
        }
    }

    /// The message's bytes. A token over 64 bytes or a reason over 256 is cut (a reason at a
    /// character boundary); a token is never longer here, the TCB's tokens are 60 bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            LeaseMsg::Request { blocks, expires_unix_s } => {
                body.extend_from_slice(&blocks.to_le_bytes());
                body.extend_from_slice(&expires_unix_s.to_le_bytes());
            }
            LeaseMsg::Granted { lease_id, token, endorsement } => {
                let token = &token[..token.len().min(TOKEN_MAX)];
                body.extend_from_slice(&lease_id.to_le_bytes());
                body.push(token.len() as u8);
                body.extend_from_slice(token);
                body.extend_from_slice(endorsement);
            }
            LeaseMsg::Refused { reason } => body.extend_from_slice(cut(reason, MAX_BODY).as_bytes()),
            LeaseMsg::Release { lease_id } => body.extend_from_slice(&lease_id.to_le_bytes()),
            LeaseMsg::Released { blocks, scrubbed } => {
                body.extend_from_slice(&blocks.to_le_bytes());
                body.push(u8::from(*scrubbed));
            }
        }
        FRAMING.encode(self.kind(), &body)
    }

    /// Decodes exactly one message: `bytes` is its header and whole body, nothing more.
    pub fn decode(bytes: &[u8]) -> Result<LeaseMsg, LeaseWireError> {
        let (kind, body) = FRAMING.split(bytes)?;
        let want = |len: usize| {
            if body.len() == len { Ok(()) } else { Err(LeaseWireError::Body { kind, len: body.len(), want: len }) }
        };
        let u64_at = |at: usize| u64::from_le_bytes(body[at..at + 8].try_into().expect("8 bytes"));
        let u32_at = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
        Ok(match kind {
            1 => {
                want(12)?;
                LeaseMsg::Request { blocks: u32_at(0), expires_unix_s: u64_at(4) }
            }
            2 => {
                if body.len() < 9 {
                    return Err(LeaseWireError::Body { kind, len: body.len(), want: 9 + 1 + 64 });
                }
                let t = body[8] as usize;
                if t == 0 || t > TOKEN_MAX {
                    return Err(LeaseWireError::Token(t));
                }
                want(9 + t + 64)?;
                let endorsement = body[9 + t..].try_into().expect("64 bytes");
                LeaseMsg::Granted { lease_id: u64_at(0), token: body[9..9 + t].to_vec(), endorsement }
            }
            3 => LeaseMsg::Refused { reason: std::str::from_utf8(body).map_err(|_| LeaseWireError::Utf8)?.to_owned() },
            4 => {
                want(8)?;
                LeaseMsg::Release { lease_id: u64_at(0) }
            }
            5 => {
                want(5)?;
                let scrubbed = match body[4] {
                    0 => false,
                    1 => true,
                    f => return Err(LeaseWireError::Flag(f)),
                };
                LeaseMsg::Released { blocks: u32_at(0), scrubbed }
            }
            k => return Err(LeaseWireError::UnknownType(k)),
        })
    }
}

/// Reads one message from a stream: the header, checked, then exactly its body.
pub async fn read_msg<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Result<LeaseMsg, LeaseWireError>> {
    Ok(match FRAMING.read(r).await? {
        Ok(bytes) => LeaseMsg::decode(&bytes),
        Err(e) => Err(e.into()),
    })
}

/// Fuzzing hook: decoding never panics, and what decodes re-encodes to the same bytes.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(m) = LeaseMsg::decode(data) {
        assert_eq!(m.encode(), data, "a decoded lease message did not re-encode to its bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<LeaseMsg> {
        vec![
            LeaseMsg::Request { blocks: 512, expires_unix_s: 1_800_000_000 },
            LeaseMsg::Granted { lease_id: 7, token: vec![9; 60], endorsement: [3; 64] },
            LeaseMsg::Granted { lease_id: u64::MAX, token: vec![1], endorsement: [0; 64] },
            LeaseMsg::Refused { reason: "not enough free blocks: 9 requested, 8 free".into() },
            LeaseMsg::Refused { reason: String::new() },
            LeaseMsg::Release { lease_id: 42 },
            LeaseMsg::Released { blocks: 3, scrubbed: true },
            LeaseMsg::Released { blocks: 0, scrubbed: false },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_truncation_is_refused() {
        for m in all() {
            let bytes = m.encode();
            assert_eq!(LeaseMsg::decode(&bytes), Ok(m.clone()));
            fuzz_decode(&bytes);
            for cut in 0..bytes.len() {
                assert!(LeaseMsg::decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut} decoded");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(LeaseMsg::decode(&longer).is_err());
        }
    }

    #[test]
    fn each_bad_field_has_its_error() {
        let ok = LeaseMsg::Release { lease_id: 1 }.encode();
        let mut m = ok.clone();
        m[0] = b'X';
        assert_eq!(LeaseMsg::decode(&m), Err(LeaseWireError::Magic(*b"XPNL")));
        let mut m = ok.clone();
        m[4] = 2;
        assert_eq!(LeaseMsg::decode(&m), Err(LeaseWireError::Version(2)));
        let mut m = ok.clone();
        m[5] = 9;
        assert_eq!(LeaseMsg::decode(&m), Err(LeaseWireError::UnknownType(9)));
        let mut m = ok.clone();
        m[6..8].copy_from_slice(&300u16.to_le_bytes());
        assert_eq!(LeaseMsg::decode(&m), Err(LeaseWireError::TooLong(300)));
        let mut m = ok;
        m[5] = 1;
        assert_eq!(LeaseMsg::decode(&m), Err(LeaseWireError::Body { kind: 1, len: 8, want: 12 }));
        let mut g = LeaseMsg::Granted { lease_id: 1, token: vec![1; 60], endorsement: [0; 64] }.encode();
        g[HEADER_LEN + 8] = 65;
        assert_eq!(LeaseMsg::decode(&g), Err(LeaseWireError::Token(65)));
        let mut r = LeaseMsg::Released { blocks: 1, scrubbed: true }.encode();
        r[HEADER_LEN + 4] = 2;
        assert_eq!(LeaseMsg::decode(&r), Err(LeaseWireError::Flag(2)));
        let mut f = LeaseMsg::Refused { reason: "ab".into() }.encode();
        f[HEADER_LEN] = 0xFF;
        assert_eq!(LeaseMsg::decode(&f), Err(LeaseWireError::Utf8));
        assert_eq!(LeaseMsg::decode(&[1, 2]), Err(LeaseWireError::Short(2)));
    }

    #[test]
    fn a_long_reason_is_cut_at_a_character_boundary() {
        let m = LeaseMsg::Refused { reason: "é".repeat(200) };
        let bytes = m.encode();
        assert!(bytes.len() - HEADER_LEN <= MAX_BODY);
        match LeaseMsg::decode(&bytes).unwrap() {
            LeaseMsg::Refused { reason } => assert_eq!(reason, "é".repeat(128)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_reads_exactly_one_message() {
        let a = LeaseMsg::Request { blocks: 2, expires_unix_s: 5 }.encode();
        let b = LeaseMsg::Release { lease_id: 9 }.encode();
        let mut bytes = a.clone();
        bytes.extend_from_slice(&b);
        let mut r = &bytes[..];
        assert_eq!(read_msg(&mut r).await.unwrap(), Ok(LeaseMsg::Request { blocks: 2, expires_unix_s: 5 }));
        assert_eq!(read_msg(&mut r).await.unwrap(), Ok(LeaseMsg::Release { lease_id: 9 }));
        assert!(read_msg(&mut r).await.is_err(), "end of stream is an I/O error");
    }
}
