//! The migration protocol between node proxies, on mesh port [`MIGRATE_PORT`]: one migration
//! per stream. The source is whoever the mesh says opened the stream (its inner source address
//! is its node id), never a field of a message.
//!
//! A message (all integers little endian):
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `PPNM` |
//! | 4 | 1 | version `3` |
//! | 5 | 1 | type (below) |
//! | 6 | 2 | body length n (at most [`MAX_BODY`]) |
//! | 8 | n | body |
//!
//! | type | message | direction | body |
//! | --- | --- | --- | --- |
//! | 1 | `Request` | source → destination | stream encoding u8 ([`StreamEncoding`]: 0 plain, 1 zstd), token length u8 (1..=64), token, endorsement (64), VM spec: UTF-8 JSON, the rest of the body (1..=[`MAX_SPEC`] bytes) |
//! | 2 | `Ready` | destination → source | empty |
//! | 3 | `Refused` | destination → source | UTF-8 reason, the whole body (at most 256 bytes) |
//! | 4 | `Done` | destination → source | running u8 (0 or 1), resumed u64 (when the guest resumed here: QEMU's `RESUME` timestamp, Unix µs; 0 unknown), UTF-8 detail (at most 256 bytes) |
//! | 5 | `Loaded` | destination → source | bytes u64: QEMU stream bytes handed to the destination QEMU so far |
//! | 6 | `Evacuate` | source → destination | stream encoding u8, VM spec: UTF-8 JSON, the rest of the body (1..=[`MAX_SPEC`] bytes) |
//!
//! `Evacuate` is a `Request` without a grant, from a node the ledger has revoked (whose TCB
//! issues none): the destination takes it only when its own operator ordered it to take that
//! VM from that node (control op `evacuate-accept`), and otherwise answers `Refused`.
//!
//! After `Ready` the source → destination direction carries QEMU's migration stream in the
//! request's encoding (`crate::migrate_stream`) until the source closes its writing side. The
//! destination → source direction carries `Loaded` messages while the stream flows (the
//! source keeps at most `migrate_stream::WINDOW` bytes of QEMU's stream beyond the last one,
//! so the stream's pace is the destination QEMU's), then exactly one `Done`, once the
//! destination's QEMU runs the guest (1) or has failed (0).
//!
//! A body of the wrong length for its type, an unknown type or version, a token of a bad
//! length, a spec or a reason that is not UTF-8, an empty or oversized spec: each is its own
//! [`MigrateWireError`]. Nothing is read past the length the header gives.

pub use crate::migrate_stream::StreamEncoding;
pub use crate::proxy_frame::HEADER_LEN;
use crate::proxy_frame::{FrameError, Framing, cut};
pub use crate::transport::MIGRATE_PORT;

/// `PPNM`.
pub const MAGIC: [u8; 4] = *b"PPNM";
pub const VERSION: u8 = 3;
/// The longest spec JSON.
pub const MAX_SPEC: usize = 4096;
/// The longest token ([`ppn_wire::service::TOKEN_MAX`]).
pub const TOKEN_MAX: usize = 64;
/// The largest body: a `Request` with a 64-byte token and the longest spec.
pub const MAX_BODY: usize = 2 + TOKEN_MAX + 64 + MAX_SPEC;
/// The longest reason or detail.
pub const MAX_TEXT: usize = 256;

const FRAMING: Framing = Framing { magic: MAGIC, version: VERSION, max_body: MAX_BODY };

/// A migration protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrateMsg {
    Request { encoding: StreamEncoding, token: Vec<u8>, endorsement: [u8; 64], spec: String },
    Ready,
    Refused { reason: String },
    Done { running: bool, resumed_unix_us: u64, detail: String },
    Loaded { bytes: u64 },
    Evacuate { encoding: StreamEncoding, spec: String },
}

/// Why bytes are not a migration message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MigrateWireError {
    #[error("migration message of {0} bytes is shorter than its 8-byte header")]
    Short(usize),
    #[error("not a migration message (magic {0:02x?})")]
    Magic([u8; 4]),
    #[error("migration protocol version {0}; this build speaks {VERSION}")]
    Version(u8),
    #[error("migration message body of {0} bytes is over the limit of {MAX_BODY}")]
    TooLong(usize),
    #[error("migration message says {said} body bytes, {got} follow")]
    Length { said: usize, got: usize },
    #[error("unknown migration message type {0}")]
    UnknownType(u8),
    #[error("migration message type {kind}: body of {len} bytes, want {want}")]
    Body { kind: u8, len: usize, want: usize },
    #[error("migration token of {0} bytes (1 to 64)")]
    Token(usize),
    #[error("VM spec of {0} bytes (1 to {MAX_SPEC})")]
    Spec(usize),
    #[error("text of {0} bytes (at most {MAX_TEXT})")]
    Text(usize),
    #[error("running flag {0} (0 or 1)")]
    Flag(u8),
    #[error("{0} is not UTF-8")]
    Utf8(&'static str),
}

impl From<FrameError> for MigrateWireError {
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

impl MigrateMsg {
    fn kind(&self) -> u8 {
        match self {
            MigrateMsg::Request { .. } => 1,
            MigrateMsg::Ready => 2,
            MigrateMsg::Refused { .. } => 3,
            MigrateMsg::Done { .. } => 4,
            MigrateMsg::Loaded { .. } => 5,
            MigrateMsg::Evacuate { .. } => 6,
        }
    }

    /// The message's bytes. A token over 64 bytes, a spec over [`MAX_SPEC`] or a text over 256
    /// bytes is cut (texts at a character boundary); the sender checks the spec's length first
    /// ([`MigrateMsg::request`]).
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            MigrateMsg::Request { encoding, token, endorsement, spec } => {
                let token = &token[..token.len().min(TOKEN_MAX)];
                body.push(encoding.code());
                body.push(token.len() as u8);
                body.extend_from_slice(token);
                body.extend_from_slice(endorsement);
                body.extend_from_slice(cut(spec, MAX_SPEC).as_bytes());
            }
            MigrateMsg::Ready => {}
            MigrateMsg::Refused { reason } => body.extend_from_slice(cut(reason, MAX_TEXT).as_bytes()),
            MigrateMsg::Done { running, resumed_unix_us, detail } => {
                body.push(u8::from(*running));
                body.extend_from_slice(&resumed_unix_us.to_le_bytes());
                body.extend_from_slice(cut(detail, MAX_TEXT).as_bytes());
            }
            MigrateMsg::Loaded { bytes } => body.extend_from_slice(&bytes.to_le_bytes()),
            MigrateMsg::Evacuate { encoding, spec } => {
                body.push(encoding.code());
                body.extend_from_slice(cut(spec, MAX_SPEC).as_bytes());
            }
        }
        FRAMING.encode(self.kind(), &body)
    }

    /// A request, refused here when the spec does not fit rather than cut.
    pub fn request(
        encoding: StreamEncoding,
        token: &[u8],
        endorsement: [u8; 64],
        spec: String,
    ) -> Result<Self, MigrateWireError> {
        if token.is_empty() || token.len() > TOKEN_MAX {
            return Err(MigrateWireError::Token(token.len()));
        }
        if spec.is_empty() || spec.len() > MAX_SPEC {
            return Err(MigrateWireError::Spec(spec.len()));
        }
        Ok(MigrateMsg::Request { encoding, token: token.to_vec(), endorsement, spec })
    }

    /// Decodes exactly one message: `bytes` is its header and whole body, nothing more.
    pub fn decode(bytes: &[u8]) -> Result<MigrateMsg, MigrateWireError> {
        let (kind, body) = FRAMING.split(bytes)?;
        let text = |b: &[u8], what: &'static str| -> Result<String, MigrateWireError> {
            if b.len() > MAX_TEXT {
                return Err(MigrateWireError::Text(b.len()));
            }
            Ok(std::str::from_utf8(b).map_err(|_| MigrateWireError::Utf8(what))?.to_owned())
        };
        Ok(match kind {
            1 => {
                let (Some(&e), Some(&t)) = (body.first(), body.get(1)) else {
                    return Err(MigrateWireError::Body { kind, len: body.len(), want: 2 + 1 + 64 + 1 });
                };
                let t = t as usize;
                if t == 0 || t > TOKEN_MAX {
                    return Err(MigrateWireError::Token(t));
                }
                if body.len() < 2 + t + 64 {
                    return Err(MigrateWireError::Body { kind, len: body.len(), want: 2 + t + 64 + 1 });
                }
                let spec = &body[2 + t + 64..];
                if spec.is_empty() || spec.len() > MAX_SPEC {
                    return Err(MigrateWireError::Spec(spec.len()));
                }
                MigrateMsg::Request {
                    encoding: StreamEncoding::from_code(e),
                    token: body[2..2 + t].to_vec(),
                    endorsement: body[2 + t..2 + t + 64].try_into().expect("64 bytes"),
                    spec: std::str::from_utf8(spec).map_err(|_| MigrateWireError::Utf8("VM spec"))?.to_owned(),
                }
            }
            2 => {
                if !body.is_empty() {
                    return Err(MigrateWireError::Body { kind, len: body.len(), want: 0 });
                }
                MigrateMsg::Ready
            }
            3 => MigrateMsg::Refused { reason: text(body, "refusal reason")? },
            4 => {
                if body.len() < 9 {
                    return Err(MigrateWireError::Body { kind, len: body.len(), want: 9 });
                }
                let running = match body[0] {
                    0 => false,
                    1 => true,
                    f => return Err(MigrateWireError::Flag(f)),
                };
                let resumed_unix_us = u64::from_le_bytes(body[1..9].try_into().expect("8 bytes"));
                MigrateMsg::Done { running, resumed_unix_us, detail: text(&body[9..], "detail")? }
            }
            5 => {
                let bytes: [u8; 8] =
                    body.try_into().map_err(|_| MigrateWireError::Body { kind, len: body.len(), want: 8 })?;
                MigrateMsg::Loaded { bytes: u64::from_le_bytes(bytes) }
            }
            6 => {
                let Some((&e, spec)) = body.split_first() else {
                    return Err(MigrateWireError::Body { kind, len: 0, want: 2 });
                };
                if spec.is_empty() || spec.len() > MAX_SPEC {
                    return Err(MigrateWireError::Spec(spec.len()));
                }
                MigrateMsg::Evacuate {
                    encoding: StreamEncoding::from_code(e),
                    spec: std::str::from_utf8(spec).map_err(|_| MigrateWireError::Utf8("VM spec"))?.to_owned(),
                }
            }
            k => return Err(MigrateWireError::UnknownType(k)),
        })
    }
}

/// Reads one message from a stream: the header, checked, then exactly its body.
pub async fn read_msg<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
) -> std::io::Result<Result<MigrateMsg, MigrateWireError>> {
    Ok(match FRAMING.read(r).await? {
        Ok(bytes) => MigrateMsg::decode(&bytes),
        Err(e) => Err(e.into()),
    })
}

/// Fuzzing hook: decoding never panics, and what decodes re-encodes to the same bytes.
pub fn fuzz_decode(data: &[u8]) {
    if let Ok(m) = MigrateMsg::decode(data) {
        assert_eq!(m.encode(), data, "a decoded migration message did not re-encode to its bytes");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<MigrateMsg> {
        vec![
            MigrateMsg::Request {
                encoding: StreamEncoding::Zstd,
                token: vec![9; 60],
                endorsement: [3; 64],
                spec: r#"{"name":"a"}"#.into(),
            },
            MigrateMsg::Request {
                encoding: StreamEncoding::Plain,
                token: vec![1],
                endorsement: [0; 64],
                spec: "x".repeat(MAX_SPEC),
            },
            MigrateMsg::Request {
                encoding: StreamEncoding::Unknown(200),
                token: vec![64; 64],
                endorsement: [1; 64],
                spec: "{}".into(),
            },
            MigrateMsg::Ready,
            MigrateMsg::Refused { reason: "the grant does not check: BadEndorsement".into() },
            MigrateMsg::Refused { reason: String::new() },
            MigrateMsg::Done { running: true, resumed_unix_us: 1_796_000_000_123_456, detail: "running".into() },
            MigrateMsg::Done { running: false, resumed_unix_us: 0, detail: String::new() },
            MigrateMsg::Loaded { bytes: 0 },
            MigrateMsg::Loaded { bytes: u64::MAX },
            MigrateMsg::Evacuate { encoding: StreamEncoding::Zstd, spec: r#"{"name":"web"}"#.into() },
            MigrateMsg::Evacuate { encoding: StreamEncoding::Plain, spec: "y".repeat(MAX_SPEC) },
        ]
    }

    #[test]
    fn every_message_round_trips_and_every_truncation_is_refused() {
        for m in all() {
            let bytes = m.encode();
            assert_eq!(MigrateMsg::decode(&bytes), Ok(m.clone()));
            fuzz_decode(&bytes);
            for cut in 0..bytes.len() {
                assert!(MigrateMsg::decode(&bytes[..cut]).is_err(), "{m:?} cut at {cut} decoded");
            }
            let mut longer = bytes.clone();
            longer.push(0);
            assert!(MigrateMsg::decode(&longer).is_err());
        }
    }

    #[test]
    fn each_bad_field_has_its_error() {
        let ok = MigrateMsg::Ready.encode();
        let mut m = ok.clone();
        m[0] = b'X';
        assert_eq!(MigrateMsg::decode(&m), Err(MigrateWireError::Magic(*b"XPNM")));
        let mut m = ok.clone();
        m[4] = 2;
        assert_eq!(MigrateMsg::decode(&m), Err(MigrateWireError::Version(2)));
        let mut m = ok.clone();
        m[5] = 9;
        assert_eq!(MigrateMsg::decode(&m), Err(MigrateWireError::UnknownType(9)));
        let mut m = ok.clone();
        m[6..8].copy_from_slice(&(MAX_BODY as u16 + 1).to_le_bytes());
        assert_eq!(MigrateMsg::decode(&m), Err(MigrateWireError::TooLong(MAX_BODY + 1)));
        let mut m = MigrateMsg::Refused { reason: "ab".into() }.encode();
        m[5] = 2;
        assert_eq!(MigrateMsg::decode(&m), Err(MigrateWireError::Body { kind: 2, len: 2, want: 0 }));
        let req = MigrateMsg::Request {
            encoding: StreamEncoding::Zstd,
            token: vec![1; 60],
            endorsement: [0; 64],
            spec: "{}".into(),
        };
        // An evacuation with no spec, or one that is not UTF-8.
        let e = MigrateMsg::Evacuate { encoding: StreamEncoding::Zstd, spec: "{}".into() }.encode();
        assert_eq!(MigrateMsg::decode(&FRAMING.encode(6, &[1])), Err(MigrateWireError::Spec(0)));
        assert_eq!(
            MigrateMsg::decode(&FRAMING.encode(6, &[])),
            Err(MigrateWireError::Body { kind: 6, len: 0, want: 2 })
        );
        let mut bad = e.clone();
        bad[HEADER_LEN + 1] = 0xff;
        assert_eq!(MigrateMsg::decode(&bad), Err(MigrateWireError::Utf8("VM spec")));
        let mut r = req.encode();
        r[HEADER_LEN + 1] = 65;
        assert_eq!(MigrateMsg::decode(&r), Err(MigrateWireError::Token(65)));
        let mut r = req.encode();
        r[HEADER_LEN + 1] = 0;
        assert_eq!(MigrateMsg::decode(&r), Err(MigrateWireError::Token(0)));
        let mut r = req.encode();
        let n = r.len();
        r[n - 1] = 0xFF;
        assert_eq!(MigrateMsg::decode(&r), Err(MigrateWireError::Utf8("VM spec")));
        // A request whose spec is empty.
        let mut r = req.encode();
        r.truncate(r.len() - 2);
        let body = (r.len() - HEADER_LEN) as u16;
        r[6..8].copy_from_slice(&body.to_le_bytes());
        assert_eq!(MigrateMsg::decode(&r), Err(MigrateWireError::Spec(0)));
        let mut d = MigrateMsg::Done { running: true, resumed_unix_us: 7, detail: String::new() }.encode();
        d[HEADER_LEN] = 2;
        assert_eq!(MigrateMsg::decode(&d), Err(MigrateWireError::Flag(2)));
        let mut l = MigrateMsg::Refused { reason: "abc".into() }.encode();
        l[5] = 5;
        assert_eq!(MigrateMsg::decode(&l), Err(MigrateWireError::Body { kind: 5, len: 3, want: 8 }));
        let mut f = MigrateMsg::Refused { reason: "ab".into() }.encode();
        f[HEADER_LEN] = 0xFF;
        assert_eq!(MigrateMsg::decode(&f), Err(MigrateWireError::Utf8("refusal reason")));
        assert_eq!(MigrateMsg::decode(&[1, 2]), Err(MigrateWireError::Short(2)));
        // A refusal longer than 256 bytes is refused, though within MAX_BODY.
        let mut long = MigrateMsg::Refused { reason: String::new() }.encode();
        long.extend_from_slice(&[b'a'; 300]);
        long[6..8].copy_from_slice(&300u16.to_le_bytes());
        assert_eq!(MigrateMsg::decode(&long), Err(MigrateWireError::Text(300)));
    }

    #[test]
    fn request_refuses_what_would_be_cut_and_encode_cuts_texts() {
        let z = StreamEncoding::Zstd;
        assert_eq!(
            MigrateMsg::request(z, &[1; 60], [0; 64], "x".repeat(MAX_SPEC + 1)),
            Err(MigrateWireError::Spec(4097))
        );
        assert_eq!(MigrateMsg::request(z, &[], [0; 64], "{}".into()), Err(MigrateWireError::Token(0)));
        assert!(MigrateMsg::request(z, &[1; 60], [0; 64], "{}".into()).is_ok());
        let m = MigrateMsg::Refused { reason: "é".repeat(200) };
        match MigrateMsg::decode(&m.encode()).unwrap() {
            MigrateMsg::Refused { reason } => assert_eq!(reason, "é".repeat(128)),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn a_stream_reads_exactly_one_message_then_raw_bytes_follow() {
        let mut bytes = MigrateMsg::Ready.encode();
        bytes.extend_from_slice(b"QEVM raw migration bytes");
        let mut r = &bytes[..];
        assert_eq!(read_msg(&mut r).await.unwrap(), Ok(MigrateMsg::Ready));
        assert_eq!(r, b"QEVM raw migration bytes");
    }
}
