//! The frame: a fixed 16-byte header and a body of at most [`MAX_BODY_LEN`] bytes.
//!
//! ```text
//! offset size field
//!  0      4   magic       b"PPNW"
//!  4      1   version     1
//!  5      1   flags       bit 0: response; bits 1-7 reserved, must be 0
//!  6      2   kind        u16 little-endian (see `Kind`)
//!  8      4   request id  u32 little-endian, chosen by the client, echoed in the response
//! 12      4   body length u32 little-endian, <= MAX_BODY_LEN
//! 16      n   body        postcard encoding of the kind's message
//! ```

use crate::{Error, Kind};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"PPNW";
/// The wire version this build speaks.
pub const VERSION: u8 = 1;
/// Header size in bytes.
pub const HEADER_LEN: usize = 16;
/// The largest frame, header included: four 4 KiB pages, the size of a PD's request buffer.
pub const MAX_FRAME_LEN: usize = 16 * 1024;
/// The largest body.
pub const MAX_BODY_LEN: usize = MAX_FRAME_LEN - HEADER_LEN;
/// Flag bit: this frame is a response.
pub const FLAG_RESPONSE: u8 = 0x01;
const FLAGS_KNOWN: u8 = FLAG_RESPONSE;

mod field {
    use core::ops::Range;
    pub const MAGIC: Range<usize> = 0..4;
    pub const VERSION: usize = 4;
    pub const FLAGS: usize = 5;
    pub const KIND: Range<usize> = 6..8;
    pub const REQUEST_ID: Range<usize> = 8..12;
    pub const BODY_LEN: Range<usize> = 12..16;
}

/// A read view of a frame in a buffer.
#[derive(Debug, Clone)]
pub struct Frame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Frame<T> {
    /// Wraps a buffer without checks; accessors may then panic. Use [`Frame::new_checked`] on
    /// anything that came from outside.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer after checking, in this order: header length, magic, version, reserved
    /// flags, body length against [`MAX_BODY_LEN`], and that the buffer holds exactly the header
    /// and the body.
    pub fn new_checked(buffer: T) -> Result<Self, Error> {
        let f = Self::new_unchecked(buffer);
        f.check()?;
        Ok(f)
    }

    fn check(&self) -> Result<(), Error> {
        let b = self.buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(Error::Truncated { need: HEADER_LEN, have: b.len() });
        }
        if self.magic() != MAGIC {
            return Err(Error::BadMagic(self.magic()));
        }
        if self.version() != VERSION {
            return Err(Error::UnsupportedVersion(self.version()));
        }
        if self.flags() & !FLAGS_KNOWN != 0 {
            return Err(Error::ReservedFlags(self.flags()));
        }
        let body_len = self.body_len();
        if body_len as usize > MAX_BODY_LEN {
            return Err(Error::TooLong(body_len));
        }
        let total = HEADER_LEN + body_len as usize;
        if b.len() < total {
            return Err(Error::Truncated { need: total, have: b.len() });
        }
        if b.len() > total {
            return Err(Error::TrailingFrameBytes { extra: b.len() - total });
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn magic(&self) -> [u8; 4] {
        let b = self.buffer.as_ref();
        [b[0], b[1], b[2], b[3]]
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VERSION]
    }

    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn is_response(&self) -> bool {
        self.flags() & FLAG_RESPONSE != 0
    }

    pub fn kind(&self) -> Kind {
        let b = &self.buffer.as_ref()[field::KIND];
        Kind::from_u16(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn request_id(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::REQUEST_ID];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn body_len(&self) -> u32 {
        let b = &self.buffer.as_ref()[field::BODY_LEN];
        u32::from_le_bytes([b[0], b[1], b[2], b[3]])
    }

    pub fn body(&self) -> &[u8] {
        &self.buffer.as_ref()[HEADER_LEN..HEADER_LEN + self.body_len() as usize]
    }

    pub fn header(&self) -> Header {
        Header {
            response: self.is_response(),
            kind: self.kind(),
            request_id: self.request_id(),
            body_len: self.body_len(),
        }
    }
}

/// The header's meaning, without magic and version (which are constants of this build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub response: bool,
    pub kind: Kind,
    pub request_id: u32,
    pub body_len: u32,
}

impl Header {
    /// Reads a header from the front of `bytes`, checking magic, version, flags and the size
    /// limit, but not that the body is present: this is what a PD reads first to route a frame.
    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let head = bytes.get(..HEADER_LEN).ok_or(Error::Truncated { need: HEADER_LEN, have: bytes.len() })?;
        let f = Frame::new_unchecked(head);
        if f.magic() != MAGIC {
            return Err(Error::BadMagic(f.magic()));
        }
        if f.version() != VERSION {
            return Err(Error::UnsupportedVersion(f.version()));
        }
        if f.flags() & !FLAGS_KNOWN != 0 {
            return Err(Error::ReservedFlags(f.flags()));
        }
        if f.body_len() as usize > MAX_BODY_LEN {
            return Err(Error::TooLong(f.body_len()));
        }
        Ok(f.header())
    }

    /// Writes the header into the first [`HEADER_LEN`] bytes of `out`.
    pub fn emit(&self, out: &mut [u8]) -> Result<(), Error> {
        if self.body_len as usize > MAX_BODY_LEN {
            return Err(Error::TooLong(self.body_len));
        }
        let out = out.get_mut(..HEADER_LEN).ok_or(Error::BufferTooSmall)?;
        out[field::MAGIC].copy_from_slice(&MAGIC);
        out[field::VERSION] = VERSION;
        out[field::FLAGS] = if self.response { FLAG_RESPONSE } else { 0 };
        out[field::KIND].copy_from_slice(&self.kind.to_u16().to_le_bytes());
        out[field::REQUEST_ID].copy_from_slice(&self.request_id.to_le_bytes());
        out[field::BODY_LEN].copy_from_slice(&self.body_len.to_le_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(body: &[u8]) -> ([u8; 64], usize) {
        let mut buf = [0u8; 64];
        let h = Header { response: false, kind: Kind::NodeStatus, request_id: 7, body_len: body.len() as u32 };
        h.emit(&mut buf).unwrap();
        buf[HEADER_LEN..HEADER_LEN + body.len()].copy_from_slice(body);
        (buf, HEADER_LEN + body.len())
    }

    #[test]
    fn header_round_trips() {
        let (buf, n) = sample(&[1, 2, 3]);
        let f = Frame::new_checked(&buf[..n]).unwrap();
        assert_eq!(f.kind(), Kind::NodeStatus);
        assert_eq!(f.request_id(), 7);
        assert_eq!(f.body(), &[1, 2, 3]);
        assert!(!f.is_response());
        assert_eq!(Header::parse(&buf[..n]).unwrap(), f.header());
    }

    #[test]
    fn checks_fail_in_order() {
        let (mut buf, n) = sample(&[9]);
        assert_eq!(Frame::new_checked(&buf[..3]).unwrap_err(), Error::Truncated { need: 16, have: 3 });
        assert_eq!(Frame::new_checked(&buf[..n - 1]).unwrap_err(), Error::Truncated { need: 17, have: 16 });
        assert_eq!(Frame::new_checked(&buf[..n + 1]).unwrap_err(), Error::TrailingFrameBytes { extra: 1 });
        buf[5] = 0x80;
        assert_eq!(Frame::new_checked(&buf[..n]).unwrap_err(), Error::ReservedFlags(0x80));
        buf[4] = 2;
        assert_eq!(Frame::new_checked(&buf[..n]).unwrap_err(), Error::UnsupportedVersion(2));
        buf[0] = b'X';
        assert!(matches!(Frame::new_checked(&buf[..n]).unwrap_err(), Error::BadMagic(_)));
    }

    #[test]
    fn size_limit_is_checked_before_the_body() {
        let (mut buf, _) = sample(&[]);
        buf[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Frame::new_checked(&buf[..HEADER_LEN]).unwrap_err(), Error::TooLong(u32::MAX));
        assert_eq!(Header::parse(&buf[..HEADER_LEN]).unwrap_err(), Error::TooLong(u32::MAX));
        let h = Header { response: true, kind: Kind::Error, request_id: 0, body_len: MAX_BODY_LEN as u32 + 1 };
        assert_eq!(h.emit(&mut buf).unwrap_err(), Error::TooLong(MAX_BODY_LEN as u32 + 1));
    }
}
