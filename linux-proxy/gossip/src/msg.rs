//! The gossip datagram: what one node's proxy sends another's inside the mesh tunnel.
//!
//! ```text
//! offset size field
//!  0      4   magic    b"PPNG"
//!  4      1   version  1
//!  5      1   type     1 records, 2 advert, 3 SWIM (others: Unknown, ignored)
//!  6      2   length   body bytes (little-endian), the rest of the datagram exactly
//!  8      n   body
//! ```
//!
//! Records body: a count (u8, at least 1), then per record a u16 length (1..=RECORD_MAX) and the
//! record's bytes. The records are the ledger's signed records, passed to the receiving TCB as
//! they are: the TCB checks every one, the gossip layer only moves bytes.
//!
//! Advert body, [`ADVERT_LEN`] bytes, little-endian: node id (8), sequence (u64, grows with
//! every advert the node sends), sent at (u64 ms since the Unix epoch, the sender's clock),
//! free memory blocks (u32), total memory blocks (u32), block size in MiB (u16), CPUs (u16),
//! CPU load in permille (u16), running VMs (u16), 8 reserved bytes (zero). A receiver takes an advert only from the peer
//! whose tunnel it came through (the node id must match), and keeps the one with the highest
//! sequence.
//!
//! SWIM body: one packet of the membership protocol (`foca`'s postcard encoding), at most
//! `MAX_DATAGRAM - HEADER_LEN` bytes, decoded by foca itself.
//!
//! Every decoder checks lengths before it reads; nothing here panics on any input.

use ppn_wire::service::{NodeId, RECORD_MAX};

/// First bytes of every gossip datagram.
pub const MAGIC: [u8; 4] = *b"PPNG";
/// Format version.
pub const VERSION: u8 = 1;
/// Header bytes.
pub const HEADER_LEN: usize = 8;
/// The largest datagram: fits the tunnel's MTU (1420) under IPv6 and UDP headers.
pub const MAX_DATAGRAM: usize = 1280;
/// Bytes of an advert body.
pub const ADVERT_LEN: usize = 48;

const TYPE_RECORDS: u8 = 1;
const TYPE_ADVERT: u8 = 2;
const TYPE_SWIM: u8 = 3;
/// Largest SWIM packet a datagram carries.
pub const MAX_SWIM: usize = MAX_DATAGRAM - HEADER_LEN;

/// Why a datagram was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgError {
    #[error("datagram of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("datagram of {0} bytes exceeds the {MAX_DATAGRAM}-byte limit")]
    TooLong(usize),
    #[error("not a gossip datagram (bad magic)")]
    Magic,
    #[error("gossip version {0} is not supported (this build speaks {VERSION})")]
    Version(u8),
    #[error("header says {header} body bytes, the datagram has {actual}")]
    Length { header: usize, actual: usize },
    #[error("records body: {0}")]
    Records(&'static str),
    #[error("advert body of {0} bytes, want {ADVERT_LEN}")]
    Advert(usize),
    #[error("{0} records do not fit in one datagram")]
    TooMany(usize),
}

/// A node advert: what the scheduler needs to know about a node, sent by that node's proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advert {
    pub node_id: NodeId,
    pub sequence: u64,
    pub sent_unix_ms: u64,
    pub free_blocks: u32,
    pub total_blocks: u32,
    pub block_mib: u16,
    pub cpus: u16,
    pub load_permille: u16,
    pub vms: u16,
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    Records(Vec<&'a [u8]>),
    Advert(Advert),
    /// A membership (SWIM) packet, for foca.
    Swim(&'a [u8]),
    /// A type this build does not know; ignored, so newer peers can add types.
    Unknown(u8),
}

/// Decodes one datagram.
pub fn decode(bytes: &[u8]) -> Result<Message<'_>, MsgError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(MsgError::TooLong(bytes.len()));
    }
    let header = bytes.get(..HEADER_LEN).ok_or(MsgError::Short(bytes.len()))?;
    if header[..4] != MAGIC {
        return Err(MsgError::Magic);
    }
    if header[4] != VERSION {
        return Err(MsgError::Version(header[4]));
    }
    let len = usize::from(u16::from_le_bytes([header[6], header[7]]));
    let body = &bytes[HEADER_LEN..];
    if body.len() != len {
        return Err(MsgError::Length { header: len, actual: body.len() });
    }
    match header[5] {
        TYPE_RECORDS => decode_records(body).map(Message::Records),
        TYPE_ADVERT => decode_advert(body).map(Message::Advert),
        TYPE_SWIM => Ok(Message::Swim(body)),
        other => Ok(Message::Unknown(other)),
    }
}

fn decode_records(body: &[u8]) -> Result<Vec<&[u8]>, MsgError> {
    let (&count, mut rest) = body.split_first().ok_or(MsgError::Records("empty body"))?;
    if count == 0 {
        return Err(MsgError::Records("no records"));
    }
    let mut out = Vec::with_capacity(usize::from(count));
    for _ in 0..count {
        let len = rest.get(..2).ok_or(MsgError::Records("record length cut off"))?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        if len == 0 || len > RECORD_MAX {
            return Err(MsgError::Records("record length out of range"));
        }
        let record = rest.get(2..2 + len).ok_or(MsgError::Records("record cut off"))?;
        out.push(record);
        rest = &rest[2 + len..];
    }
    if !rest.is_empty() {
        return Err(MsgError::Records("bytes after the last record"));
    }
    Ok(out)
}

fn decode_advert(body: &[u8]) -> Result<Advert, MsgError> {
    if body.len() != ADVERT_LEN {
        return Err(MsgError::Advert(body.len()));
    }
    let u64_at = |i: usize| u64::from_le_bytes(body[i..i + 8].try_into().unwrap_or([0; 8]));
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap_or([0; 4]));
    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
    let mut id = [0u8; 8];
    id.copy_from_slice(&body[..8]);
    Ok(Advert {
        node_id: NodeId(ppn_wire::ByteArray(id)),
        sequence: u64_at(8),
        sent_unix_ms: u64_at(16),
        free_blocks: u32_at(24),
        total_blocks: u32_at(28),
        block_mib: u16_at(32),
        cpus: u16_at(34),
        load_permille: u16_at(36),
        vms: u16_at(38),
        // 40..48 reserved, zero.
    })
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind);
    out.extend_from_slice(&(body.len() as u16).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// Encodes an advert datagram.
pub fn encode_advert(a: &Advert) -> Vec<u8> {
    let mut body = [0u8; ADVERT_LEN];
    body[..8].copy_from_slice(&a.node_id.0.0);
    body[8..16].copy_from_slice(&a.sequence.to_le_bytes());
    body[16..24].copy_from_slice(&a.sent_unix_ms.to_le_bytes());
    body[24..28].copy_from_slice(&a.free_blocks.to_le_bytes());
    body[28..32].copy_from_slice(&a.total_blocks.to_le_bytes());
    body[32..34].copy_from_slice(&a.block_mib.to_le_bytes());
    body[34..36].copy_from_slice(&a.cpus.to_le_bytes());
    body[36..38].copy_from_slice(&a.load_permille.to_le_bytes());
    body[38..40].copy_from_slice(&a.vms.to_le_bytes());
    frame(TYPE_ADVERT, &body)
}

/// Encodes a SWIM datagram; `None` if the packet is over [`MAX_SWIM`] bytes.
pub fn encode_swim(packet: &[u8]) -> Option<Vec<u8>> {
    (packet.len() <= MAX_SWIM).then(|| frame(TYPE_SWIM, packet))
}

/// Packs records into as few datagrams as fit [`MAX_DATAGRAM`] (at most 255 records each).
/// Records longer than `RECORD_MAX` or empty are left out and counted in the second value.
pub fn encode_records<R: AsRef<[u8]>>(records: &[R]) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut skipped = 0;
    let mut body: Vec<u8> = vec![0];
    for r in records {
        let r = r.as_ref();
        if r.is_empty() || r.len() > RECORD_MAX {
            skipped += 1;
            continue;
        }
        if body[0] == u8::MAX || HEADER_LEN + body.len() + 2 + r.len() > MAX_DATAGRAM {
            out.push(frame(TYPE_RECORDS, &body));
            body = vec![0];
        }
        body[0] += 1;
        body.extend_from_slice(&(r.len() as u16).to_le_bytes());
        body.extend_from_slice(r);
    }
    if body[0] > 0 {
        out.push(frame(TYPE_RECORDS, &body));
    }
    (out, skipped)
}

/// For fuzzing: decodes, and checks that what decodes re-encodes to the same bytes.
pub fn fuzz_decode(bytes: &[u8]) {
    match decode(bytes) {
        Ok(Message::Records(records)) => {
            let (again, skipped) = encode_records(&records);
            assert_eq!(skipped, 0);
            assert_eq!(again.len(), 1, "a datagram's records fit one datagram");
            assert_eq!(again[0], bytes);
        }
        Ok(Message::Advert(a)) => {
            // The reserved bytes are not kept.
            let again = encode_advert(&a);
            assert_eq!(again[..HEADER_LEN + 40], bytes[..HEADER_LEN + 40]);
        }
        Ok(Message::Swim(packet)) => assert_eq!(encode_swim(packet).as_deref(), Some(bytes)),
        Ok(Message::Unknown(_)) | Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn advert() -> Advert {
        Advert {
            node_id: NodeId(ppn_wire::ByteArray([1, 2, 3, 4, 5, 6, 7, 8])),
            sequence: 9,
            sent_unix_ms: 1_800_000_000_000,
            free_blocks: 100,
            total_blocks: 512,
            block_mib: 2,
            cpus: 4,
            load_permille: 250,
            vms: 3,
        }
    }

    #[test]
    fn an_advert_round_trips_and_every_cut_is_refused() {
        let bytes = encode_advert(&advert());
        assert_eq!(bytes.len(), HEADER_LEN + ADVERT_LEN);
        assert_eq!(decode(&bytes), Ok(Message::Advert(advert())));
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn header_errors_are_named() {
        let mut b = encode_advert(&advert());
        b[4] = 2;
        assert_eq!(decode(&b), Err(MsgError::Version(2)));
        b[0] = b'X';
        assert_eq!(decode(&b), Err(MsgError::Magic));
        let mut b = encode_advert(&advert());
        b[5] = 77;
        assert_eq!(decode(&b), Ok(Message::Unknown(77)));
        assert_eq!(decode(&vec![0u8; MAX_DATAGRAM + 1]), Err(MsgError::TooLong(MAX_DATAGRAM + 1)));
    }

    proptest! {
        #[test]
        fn records_pack_into_datagrams_and_come_back_in_order(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..=RECORD_MAX), 0..20)
        ) {
            let (datagrams, skipped) = encode_records(&records);
            prop_assert_eq!(skipped, 0);
            let mut back = Vec::new();
            for d in &datagrams {
                prop_assert!(d.len() <= MAX_DATAGRAM);
                match decode(d) {
                    Ok(Message::Records(rs)) => back.extend(rs.into_iter().map(<[u8]>::to_vec)),
                    other => prop_assert!(false, "{:?}", other),
                }
            }
            prop_assert_eq!(back, records);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1400)) {
            fuzz_decode(&bytes);
        }

        #[test]
        fn a_valid_header_on_arbitrary_bodies_never_panics(kind in 0u8..4, body in proptest::collection::vec(any::<u8>(), 0..1272)) {
            let mut b = MAGIC.to_vec();
            b.push(VERSION);
            b.push(kind);
            b.extend_from_slice(&(body.len() as u16).to_le_bytes());
            b.extend_from_slice(&body);
            fuzz_decode(&b);
        }
    }
}
