//! COBS framing for byte streams.
//!
//! On a stream (a Unix socket, a UART, a virtio-console) each frame is COBS-encoded (so it
//! contains no `0x00`) and followed by one `0x00`. A receiver that joins mid-stream or meets
//! garbage resynchronises at the next `0x00`. Empty chunks (`0x00 0x00`) are ignored, so a
//! sender may emit a lone `0x00` to flush a receiver's state.

use crate::{Error, MAX_FRAME_LEN};

/// The most bytes one frame takes on a stream: its COBS encoding plus the `0x00` terminator.
pub const MAX_ENCODED_LEN: usize = cobs::max_encoding_length(MAX_FRAME_LEN) + 1;
const MAX_CHUNK: usize = MAX_ENCODED_LEN - 1;

/// COBS-encodes `frame` into `out` and appends the `0x00` terminator; returns bytes written.
pub fn encode(frame: &[u8], out: &mut [u8]) -> Result<usize, Error> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(Error::FrameTooLong(frame.len()));
    }
    let n = cobs::try_encode(frame, out).map_err(|_| Error::BufferTooSmall)?;
    *out.get_mut(n).ok_or(Error::BufferTooSmall)? = 0;
    Ok(n + 1)
}

/// Splits a byte stream into decoded frames, with a fixed buffer of one maximum-size frame.
///
/// A chunk longer than any frame could encode to is dropped whole and reported once as
/// [`Error::Oversize`] when its terminator arrives; an invalid COBS chunk as [`Error::BadCobs`].
/// The frames it yields are not yet checked: pass them to [`crate::decode_request`].
#[derive(Debug)]
pub struct Deframer {
    buf: [u8; MAX_CHUNK],
    len: usize,
    overflow: bool,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    pub const fn new() -> Self {
        Self { buf: [0; MAX_CHUNK], len: 0, overflow: false }
    }

    /// Bytes held of an unfinished chunk.
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Consumes bytes of `input` up to and including the end of the next chunk, and returns how
    /// many it consumed and, if a chunk ended, the decoded frame or the error. Call again with
    /// the rest of `input` until it is consumed.
    pub fn push(&mut self, input: &[u8]) -> (usize, Option<Result<&[u8], Error>>) {
        let Some(end) = input.iter().position(|&b| b == 0) else {
            self.append(input);
            return (input.len(), None);
        };
        self.append(&input[..end]);
        let used = end + 1;
        let len = core::mem::take(&mut self.len);
        if core::mem::take(&mut self.overflow) {
            return (used, Some(Err(Error::Oversize)));
        }
        if len == 0 {
            return (used, None);
        }
        match cobs::decode_in_place(&mut self.buf[..len]) {
            Ok(n) => (used, Some(Ok(&self.buf[..n]))),
            Err(_) => (used, Some(Err(Error::BadCobs))),
        }
    }

    fn append(&mut self, bytes: &[u8]) {
        if self.overflow {
            return;
        }
        match self.buf.get_mut(self.len..self.len + bytes.len()) {
            Some(dst) => {
                dst.copy_from_slice(bytes);
                self.len += bytes.len();
            }
            None => {
                self.overflow = true;
                self.len = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::vec::Vec;

    fn deframe_all(d: &mut Deframer, mut input: &[u8]) -> Vec<Result<Vec<u8>, Error>> {
        let mut out = Vec::new();
        while !input.is_empty() {
            let (used, ev) = d.push(input);
            assert!(used > 0);
            input = &input[used..];
            if let Some(ev) = ev {
                out.push(ev.map(|f| f.to_vec()));
            }
        }
        out
    }

    #[test]
    fn frames_survive_any_split() {
        let a = [1u8, 0, 2, 0, 0, 3];
        let b = [0u8; 300];
        let mut stream = Vec::new();
        for f in [&a[..], &b[..]] {
            let mut enc = [0u8; 400];
            let n = encode(f, &mut enc).unwrap();
            assert!(!enc[..n - 1].contains(&0));
            stream.extend_from_slice(&enc[..n]);
        }
        for split in 0..stream.len() {
            let mut d = Deframer::new();
            let mut got = deframe_all(&mut d, &stream[..split]);
            got.extend(deframe_all(&mut d, &stream[split..]));
            assert_eq!(got, [Ok(a.to_vec()), Ok(b.to_vec())], "split at {split}");
        }
    }

    #[test]
    fn oversize_chunk_is_dropped_and_stream_recovers() {
        let mut d = Deframer::new();
        let big = std::vec![7u8; MAX_ENCODED_LEN + 10];
        assert!(deframe_all(&mut d, &big).is_empty());
        assert_eq!(d.pending(), 0);
        let mut stream = std::vec![0u8];
        let mut enc = [0u8; 8];
        let n = encode(&[5, 6], &mut enc).unwrap();
        stream.extend_from_slice(&enc[..n]);
        assert_eq!(deframe_all(&mut d, &stream), [Err(Error::Oversize), Ok(std::vec![5, 6])]);
    }

    #[test]
    fn largest_frame_fits_the_buffer() {
        let frame = std::vec![0xAAu8; MAX_FRAME_LEN];
        let mut enc = std::vec![0u8; MAX_ENCODED_LEN];
        let n = encode(&frame, &mut enc).unwrap();
        assert_eq!(n, MAX_ENCODED_LEN);
        let mut d = Deframer::new();
        assert_eq!(deframe_all(&mut d, &enc[..n]), [Ok(frame)]);
        assert_eq!(encode(&[0; MAX_FRAME_LEN + 1], &mut enc), Err(Error::FrameTooLong(MAX_FRAME_LEN + 1)));
    }

    #[test]
    fn empty_chunks_are_ignored_and_bad_cobs_is_reported() {
        let mut d = Deframer::new();
        assert!(deframe_all(&mut d, &[0, 0, 0]).is_empty());
        // Code byte 5 promises four more bytes before the chunk ends after one.
        assert_eq!(deframe_all(&mut d, &[5, 1, 0]), [Err(Error::BadCobs)]);
    }
}
