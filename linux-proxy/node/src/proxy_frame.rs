//! The framing the proxy-to-proxy protocols share ([`crate::lease_wire`] `PPNL`,
//! [`crate::migrate_wire`] `PPNM`): each message is
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic |
//! | 4 | 1 | version |
//! | 5 | 1 | type |
//! | 6 | 2 | body length n, u16 LE (at most the protocol's limit) |
//! | 8 | n | body |
//!
//! The header is checked (magic, version, length limit) before a body byte is read. Each
//! protocol maps [`FrameError`] onto its own error enum and decodes the body by type.

pub const HEADER_LEN: usize = 8;

/// One protocol's framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub magic: [u8; 4],
    pub version: u8,
    pub max_body: usize,
}

/// Why bytes are not a frame of a protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// Fewer bytes than a header.
    Short(usize),
    Magic([u8; 4]),
    Version(u8),
    /// The header's body length is over the protocol's limit.
    TooLong(usize),
    /// The header's body length is not what follows it.
    Length {
        said: usize,
        got: usize,
    },
}

impl Framing {
    /// A message of type `kind` with `body` (at most `max_body` bytes: the caller cuts).
    pub fn encode(&self, kind: u8, body: &[u8]) -> Vec<u8> {
        debug_assert!(body.len() <= self.max_body);
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(&self.magic);
        out.push(self.version);
        out.push(kind);
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
        out
    }

    /// Checks a header; returns the body length that follows it.
    pub fn body_len(&self, header: &[u8]) -> Result<usize, FrameError> {
        if header.len() < HEADER_LEN {
            return Err(FrameError::Short(header.len()));
        }
        let magic: [u8; 4] = header[..4].try_into().expect("4 bytes");
        if magic != self.magic {
            return Err(FrameError::Magic(magic));
        }
        if header[4] != self.version {
            return Err(FrameError::Version(header[4]));
        }
        let n = u16::from_le_bytes([header[6], header[7]]) as usize;
        if n > self.max_body {
            return Err(FrameError::TooLong(n));
        }
        Ok(n)
    }

    /// Exactly one message, header and whole body: its type and body.
    pub fn split<'a>(&self, bytes: &'a [u8]) -> Result<(u8, &'a [u8]), FrameError> {
        let n = self.body_len(bytes)?;
        let body = &bytes[HEADER_LEN..];
        if body.len() != n {
            return Err(FrameError::Length { said: n, got: body.len() });
        }
        Ok((bytes[5], body))
    }

    /// Reads one message's bytes from a stream: the header, checked, then exactly its body.
    pub async fn read<R: tokio::io::AsyncRead + Unpin>(
        &self,
        r: &mut R,
    ) -> std::io::Result<Result<Vec<u8>, FrameError>> {
        use tokio::io::AsyncReadExt;
        let mut buf = vec![0u8; HEADER_LEN];
        r.read_exact(&mut buf).await?;
        let n = match self.body_len(&buf) {
            Ok(n) => n,
            Err(e) => return Ok(Err(e)),
        };
        buf.resize(HEADER_LEN + n, 0);
        r.read_exact(&mut buf[HEADER_LEN..]).await?;
        Ok(Ok(buf))
    }
}

/// `s` cut to at most `max` bytes at a character boundary.
pub fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
