//! The agent's report: what the guest tells the host every 10 ms, and its wire format.
//!
//! One frame is [`FRAME_LEN`] bytes, every integer little-endian:
//!
//! | offset | size | field                                            |
//! |-------:|-----:|--------------------------------------------------|
//! |      0 |    4 | magic `b"PPNR"`                                  |
//! |      4 |    1 | version, [`VERSION`] (1)                         |
//! |      5 |    1 | reserved, 0                                      |
//! |      6 |    2 | payload length, 32 for version 1                 |
//! |      8 |    8 | `counter`                                        |
//! |     16 |    8 | `monotonic_ns`                                   |
//! |     24 |    8 | `mem_total_kib`                                  |
//! |     32 |    8 | `mem_available_kib`                              |
//! |     40 |    4 | CRC-32 (ISO-HDLC, as zlib) of bytes 0..40        |
//!
//! The host reads a byte stream that may begin in the middle of a frame (it reconnects to the
//! chardev socket at any time), so [`Decoder`] scans for the magic, checks the header, the length
//! and the checksum, and reports every discarded region as an error without ever consuming the
//! first byte of a later good frame.

use thiserror::Error;

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"PPNR";
/// The only version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Header: magic, version, reserved, payload length.
pub const HEADER_LEN: usize = 8;
/// Payload of a version 1 frame: four u64.
pub const PAYLOAD_LEN: usize = 32;
/// Trailing CRC-32.
pub const CHECKSUM_LEN: usize = 4;
/// A whole version 1 frame.
pub const FRAME_LEN: usize = HEADER_LEN + PAYLOAD_LEN + CHECKSUM_LEN;

/// What the agent reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Report {
    /// 1 for the first report after the agent started, +1 for every report produced (a report
    /// that could not be written because the host was not connected still takes its number).
    pub counter: u64,
    /// Nanoseconds of the guest's CLOCK_MONOTONIC elapsed since the agent started.
    pub monotonic_ns: u64,
    /// `MemTotal` of the guest's /proc/meminfo, KiB.
    pub mem_total_kib: u64,
    /// `MemAvailable` of the guest's /proc/meminfo, KiB.
    pub mem_available_kib: u64,
}

/// Why bytes of the stream were not a report.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReportError {
    /// Bytes before the next magic (or with no magic at all) were discarded.
    #[error("skipped {bytes} bytes of the report stream that are not a frame")]
    Skipped { bytes: usize },
    /// A frame needs more bytes than were given (only from [`Report::decode`]; the decoder waits).
    #[error("truncated report frame: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    /// The frame does not start with the magic.
    #[error("report frame does not start with the magic PPNR (found {found:02x?})")]
    BadMagic { found: [u8; 4] },
    /// A version this build does not know.
    #[error("unknown report version {version} (this agent protocol speaks version {VERSION})")]
    UnknownVersion { version: u8 },
    /// The reserved header byte is not zero.
    #[error("report frame's reserved byte is {value:#04x}, must be 0")]
    Reserved { value: u8 },
    /// The payload length does not match the version.
    #[error("report frame of version {version} has payload length {len}, must be {PAYLOAD_LEN}")]
    BadLength { version: u8, len: u16 },
    /// The CRC-32 does not match the frame.
    #[error("report frame checksum mismatch: frame says {stated:#010x}, computed {computed:#010x}")]
    BadChecksum { stated: u32, computed: u32 },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

impl Report {
    /// The frame of this report.
    pub fn encode(&self) -> [u8; FRAME_LEN] {
        let mut f = [0u8; FRAME_LEN];
        f[0..4].copy_from_slice(&MAGIC);
        f[4] = VERSION;
        f[5] = 0;
        f[6..8].copy_from_slice(&(PAYLOAD_LEN as u16).to_le_bytes());
        f[8..16].copy_from_slice(&self.counter.to_le_bytes());
        f[16..24].copy_from_slice(&self.monotonic_ns.to_le_bytes());
        f[24..32].copy_from_slice(&self.mem_total_kib.to_le_bytes());
        f[32..40].copy_from_slice(&self.mem_available_kib.to_le_bytes());
        let crc = crc32(&f[..HEADER_LEN + PAYLOAD_LEN]);
        f[HEADER_LEN + PAYLOAD_LEN..].copy_from_slice(&crc.to_le_bytes());
        f
    }

    /// Decodes the frame at the start of `bytes`: the report and the frame's length. Every check
    /// is made on the bytes present before more are asked for, so garbage fails fast rather than
    /// as [`ReportError::Truncated`].
    pub fn decode(bytes: &[u8]) -> Result<(Report, usize), ReportError> {
        let truncated = |need: usize| ReportError::Truncated { need, have: bytes.len() };
        // The magic, as far as it is present.
        let n = bytes.len().min(MAGIC.len());
        if bytes[..n] != MAGIC[..n] {
            let mut found = [0u8; 4];
            found[..n].copy_from_slice(&bytes[..n]);
            return Err(ReportError::BadMagic { found });
        }
        if bytes.len() < MAGIC.len() + 1 {
            return Err(truncated(HEADER_LEN));
        }
        let version = bytes[4];
        if version != VERSION {
            return Err(ReportError::UnknownVersion { version });
        }
        if bytes.len() < 6 {
            return Err(truncated(HEADER_LEN));
        }
        if bytes[5] != 0 {
            return Err(ReportError::Reserved { value: bytes[5] });
        }
        if bytes.len() < HEADER_LEN {
            return Err(truncated(HEADER_LEN));
        }
        let len = u16::from_le_bytes([bytes[6], bytes[7]]);
        if usize::from(len) != PAYLOAD_LEN {
            return Err(ReportError::BadLength { version, len });
        }
        if bytes.len() < FRAME_LEN {
            return Err(truncated(FRAME_LEN));
        }
        let body = &bytes[..HEADER_LEN + PAYLOAD_LEN];
        let computed = crc32(body);
        let mut c = [0u8; 4];
        c.copy_from_slice(&bytes[HEADER_LEN + PAYLOAD_LEN..FRAME_LEN]);
        let stated = u32::from_le_bytes(c);
        if stated != computed {
            return Err(ReportError::BadChecksum { stated, computed });
        }
        let report = Report {
            counter: u64_at(bytes, 8),
            monotonic_ns: u64_at(bytes, 16),
            mem_total_kib: u64_at(bytes, 24),
            mem_available_kib: u64_at(bytes, 32),
        };
        Ok((report, FRAME_LEN))
    }
}

/// Streaming decoder: push the bytes as they arrive, take reports and errors out in order.
///
/// Bounded memory: it holds at most one partial frame (plus whatever was pushed and not yet
/// taken out with [`Decoder::next_report`]).
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held that are not yet a report or an error.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// The next report, or the next error (a discarded region), or `None` until more bytes are
    /// pushed. After an error, call again: the decoder has already moved past the bad bytes.
    pub fn next_report(&mut self) -> Option<Result<Report, ReportError>> {
        if self.buf.is_empty() {
            return None;
        }
        match find_magic(&self.buf) {
            Some(0) => match Report::decode(&self.buf) {
                Ok((report, n)) => {
                    self.buf.drain(..n);
                    Some(Ok(report))
                }
                Err(ReportError::Truncated { .. }) => None,
                Err(e) => {
                    // Drop the bad frame's first byte only: a good frame may start anywhere
                    // after it (the next call scans for it and reports what lies between).
                    self.buf.drain(..1);
                    Some(Err(e))
                }
            },
            Some(at) => {
                self.buf.drain(..at);
                Some(Err(ReportError::Skipped { bytes: at }))
            }
            None => {
                // Keep the longest tail that could still become the magic.
                let keep = (1..MAGIC.len())
                    .rev()
                    .find(|&k| k <= self.buf.len() && self.buf[self.buf.len() - k..] == MAGIC[..k])
                    .unwrap_or(0);
                let drop = self.buf.len() - keep;
                if drop == 0 {
                    return None;
                }
                self.buf.drain(..drop);
                Some(Err(ReportError::Skipped { bytes: drop }))
            }
        }
    }
}

/// Position of the first complete magic.
fn find_magic(buf: &[u8]) -> Option<usize> {
    buf.windows(MAGIC.len()).position(|w| w == MAGIC)
}

const CRC_TABLE: [u32; 256] = {
    let mut t = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        t[i] = c;
        i += 1;
    }
    t
};

/// CRC-32/ISO-HDLC (the zlib and Ethernet CRC): reflected 0x04C11DB7, init and xorout !0.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in bytes {
        c = CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

/// Decodes arbitrary bytes fed in arbitrary chunks; for the fuzz target. Returns the reports
/// and the number of errors; panics only if the decoder breaks one of its own invariants.
pub fn fuzz_stream(data: &[u8]) -> (Vec<Report>, usize) {
    let mut d = Decoder::new();
    let mut reports = Vec::new();
    let mut errors = 0;
    let mut skipped = 0usize;
    let mut consumed_reports = 0usize;
    // Chunk sizes from the data itself: its first byte.
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    for chunk in data.chunks(step) {
        d.push(chunk);
        while let Some(r) = d.next_report() {
            match r {
                Ok(r) => {
                    assert_eq!(Report::decode(&r.encode()), Ok((r, FRAME_LEN)));
                    reports.push(r);
                    consumed_reports += FRAME_LEN;
                }
                Err(ReportError::Skipped { bytes }) => {
                    assert!(bytes > 0, "a skip of nothing");
                    skipped += bytes;
                    errors += 1;
                }
                Err(ReportError::Truncated { .. }) => panic!("the decoder waits, never returns Truncated"),
                Err(_) => {
                    skipped += 1;
                    errors += 1;
                }
            }
        }
    }
    // Every byte is accounted for: in a report, skipped, or still buffered (less than a frame).
    assert_eq!(consumed_reports + skipped + d.buffered(), data.len());
    assert!(d.buffered() < FRAME_LEN);
    (reports, errors)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn report(i: u64) -> Report {
        Report {
            counter: i,
            monotonic_ns: i.wrapping_mul(10_000_000),
            mem_total_kib: i.wrapping_add(230_000),
            mem_available_kib: 200_000u64.wrapping_sub(i),
        }
    }

    fn drain(d: &mut Decoder) -> Vec<Result<Report, ReportError>> {
        std::iter::from_fn(|| d.next_report()).collect()
    }

    #[test]
    fn crc32_matches_the_standard_check_value() {
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn layout_is_as_documented() {
        let f = report(0x0102_0304_0506_0708).encode();
        assert_eq!(&f[0..4], b"PPNR");
        assert_eq!(f[4], 1);
        assert_eq!(f[5], 0);
        assert_eq!(&f[6..8], &[32, 0]);
        assert_eq!(&f[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(f.len(), 44);
        assert_eq!(u32::from_le_bytes([f[40], f[41], f[42], f[43]]), crc32(&f[..40]));
    }

    #[test]
    fn every_truncation_is_truncated_and_the_decoder_waits() {
        let r = report(7);
        let f = r.encode();
        for cut in 0..FRAME_LEN {
            match Report::decode(&f[..cut]) {
                Err(ReportError::Truncated { have, need }) => {
                    assert_eq!(have, cut);
                    assert!(need > cut && need <= FRAME_LEN);
                }
                other => panic!("cut at {cut}: {other:?}"),
            }
            let mut d = Decoder::new();
            d.push(&f[..cut]);
            assert_eq!(d.next_report(), None, "cut at {cut}");
            d.push(&f[cut..]);
            assert_eq!(d.next_report(), Some(Ok(r)));
            assert_eq!(d.next_report(), None);
        }
    }

    #[test]
    fn unknown_version_is_a_clear_error() {
        let mut f = report(1).encode();
        f[4] = 2;
        assert_eq!(Report::decode(&f), Err(ReportError::UnknownVersion { version: 2 }));
        let msg = ReportError::UnknownVersion { version: 2 }.to_string();
        assert!(msg.contains("unknown report version 2"), "{msg}");
        let mut d = Decoder::new();
        d.push(&f);
        d.push(&report(2).encode());
        let out = drain(&mut d);
        assert_eq!(out[0], Err(ReportError::UnknownVersion { version: 2 }));
        assert_eq!(out[1], Err(ReportError::Skipped { bytes: FRAME_LEN - 1 }));
        assert_eq!(out[2], Ok(report(2)));
        assert_eq!(out.len(), 3);
    }

    #[test]
    fn bad_length_and_reserved_are_rejected() {
        let mut f = report(1).encode();
        f[6] = 33;
        assert_eq!(Report::decode(&f), Err(ReportError::BadLength { version: 1, len: 33 }));
        let mut f = report(1).encode();
        f[5] = 1;
        assert_eq!(Report::decode(&f), Err(ReportError::Reserved { value: 1 }));
    }

    #[test]
    fn every_single_byte_corruption_is_detected_and_the_next_frame_survives() {
        let (a, b) = (report(1), report(2));
        for at in 0..FRAME_LEN {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut f = a.encode();
                f[at] ^= flip;
                assert!(Report::decode(&f).is_err(), "flip {flip:#x} at {at} undetected");
                let mut d = Decoder::new();
                d.push(&f);
                d.push(&b.encode());
                let out = drain(&mut d);
                let good: Vec<_> = out.iter().filter_map(|r| r.as_ref().ok()).collect();
                assert_eq!(good, vec![&b], "flip {flip:#x} at {at}: {out:?}");
                assert!(out.iter().any(|r| r.is_err()), "flip {flip:#x} at {at}: no error reported");
            }
        }
    }

    #[test]
    fn resyncs_after_garbage_and_mid_frame_start() {
        let frames: Vec<u8> = (1..=3).flat_map(|i| report(i).encode()).collect();
        // The host connects in the middle of frame 1.
        let mut d = Decoder::new();
        d.push(&frames[17..]);
        let out = drain(&mut d);
        assert_eq!(out, vec![Err(ReportError::Skipped { bytes: FRAME_LEN - 17 }), Ok(report(2)), Ok(report(3))]);
        // Garbage, including a false magic, between frames.
        let mut d = Decoder::new();
        d.push(&report(1).encode());
        d.push(b"xxPPNR\x01\x00");
        d.push(&report(2).encode());
        let out = drain(&mut d);
        let good: Vec<_> = out.iter().filter_map(|r| r.as_ref().ok().copied()).collect();
        assert_eq!(good, vec![report(1), report(2)]);
        assert!(out.iter().filter(|r| r.is_err()).count() >= 2, "{out:?}");
    }

    #[test]
    fn garbage_without_magic_is_dropped_but_a_magic_prefix_is_kept() {
        let mut d = Decoder::new();
        d.push(b"hello worldPPN");
        assert_eq!(d.next_report(), Some(Err(ReportError::Skipped { bytes: 11 })));
        assert_eq!(d.next_report(), None);
        assert_eq!(d.buffered(), 3);
        let f = report(9).encode();
        d.push(&f[3..]);
        assert_eq!(d.next_report(), Some(Ok(report(9))));
    }

    proptest! {
        #[test]
        fn round_trip(counter: u64, monotonic_ns: u64, mem_total_kib: u64, mem_available_kib: u64) {
            let r = Report { counter, monotonic_ns, mem_total_kib, mem_available_kib };
            prop_assert_eq!(Report::decode(&r.encode()), Ok((r, FRAME_LEN)));
        }

        /// Good frames separated by arbitrary garbage, pushed in arbitrary chunks: every frame
        /// whose bytes are intact comes out, in order.
        #[test]
        fn no_good_frame_is_lost(
            parts in proptest::collection::vec((proptest::collection::vec(any::<u8>(), 0..60), any::<u64>()), 1..12),
            chunk in 1usize..100,
        ) {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for (garbage, c) in &parts {
                stream.extend_from_slice(garbage);
                let r = report(*c);
                stream.extend_from_slice(&r.encode());
                expected.push(r);
            }
            let mut d = Decoder::new();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(r) = d.next_report() {
                    if let Ok(r) = r { got.push(r) }
                }
            }
            // Garbage can by chance contain a valid frame (CRC and all); it cannot here
            // with overwhelming probability, so equality, not inclusion.
            prop_assert_eq!(got, expected);
        }

        #[test]
        fn fuzz_stream_never_panics(data in proptest::collection::vec(any::<u8>(), 0..400)) {
            let (reports, _) = fuzz_stream(&data);
            prop_assert!(reports.len() <= data.len() / FRAME_LEN);
        }
    }
}
