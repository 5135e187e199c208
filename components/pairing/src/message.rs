//! The three pairing messages and their byte format.
//!
//! Every message is an 8-byte header and a fixed-size body (`docs/pairing.md` §3):
//!
//! ```text
//! offset size field
//!  0      4   magic        b"PPNP"
//!  4      1   version      1
//!  5      1   type         1 Hello, 2 Reply, 3 Confirm
//!  6      2   body length  u16 little-endian: 136 (Hello), 136 (Reply), 64 (Confirm)
//!  8      n   body
//! ```
//!
//! [`decode`] checks the header and the exact length before it reads a body byte, and never
//! panics: anything else is a [`DecodeError`].

/// Message magic.
pub const MAGIC: [u8; 4] = *b"PPNP";
/// Format version.
pub const VERSION: u8 = 1;
/// Header size.
pub const HEADER_LEN: usize = 8;
/// Encoded [`Identity`] size.
pub const IDENTITY_LEN: usize = 8 + 32 + 32;
/// Length of a public share, a commitment, a nonce, a tag.
pub const FIELD_LEN: usize = 32;
/// Body sizes.
pub const HELLO_BODY_LEN: usize = FIELD_LEN + IDENTITY_LEN + FIELD_LEN;
pub const REPLY_BODY_LEN: usize = FIELD_LEN + IDENTITY_LEN + FIELD_LEN;
pub const CONFIRM_BODY_LEN: usize = FIELD_LEN + FIELD_LEN;
/// Whole-message sizes.
pub const HELLO_LEN: usize = HEADER_LEN + HELLO_BODY_LEN;
pub const REPLY_LEN: usize = HEADER_LEN + REPLY_BODY_LEN;
pub const CONFIRM_LEN: usize = HEADER_LEN + CONFIRM_BODY_LEN;
/// The longest message: a receiver never needs to buffer more.
pub const MAX_MESSAGE_LEN: usize = HELLO_LEN;

const _: () = assert!(HELLO_LEN == 144 && REPLY_LEN == 144 && CONFIRM_LEN == 72);
const _: () = assert!(REPLY_LEN <= MAX_MESSAGE_LEN && CONFIRM_LEN <= MAX_MESSAGE_LEN);

/// A node's public identity, as pairing exchanges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Identity {
    /// The node id: the first 8 bytes of SHA-256(b"ppn/node-id/v1" || signing key)
    /// (`ppn_node_core::node_id_of`). Pairing refuses a peer whose id does not match its key.
    pub node_id: [u8; 8],
    /// The node's Ed25519 signing public key (held by its TCB).
    pub signing_key: [u8; 32],
    /// The node's WireGuard static public key (X25519; held by its proxy, a transport key).
    pub wireguard_key: [u8; 32],
}

impl Identity {
    /// `node_id || signing_key || wireguard_key`.
    pub fn to_bytes(&self) -> [u8; IDENTITY_LEN] {
        let mut out = [0u8; IDENTITY_LEN];
        out[..8].copy_from_slice(&self.node_id);
        out[8..40].copy_from_slice(&self.signing_key);
        out[40..].copy_from_slice(&self.wireguard_key);
        out
    }

    pub fn from_bytes(b: &[u8; IDENTITY_LEN]) -> Self {
        let mut id = Self { node_id: [0; 8], signing_key: [0; 32], wireguard_key: [0; 32] };
        id.node_id.copy_from_slice(&b[..8]);
        id.signing_key.copy_from_slice(&b[8..40]);
        id.wireguard_key.copy_from_slice(&b[40..]);
        id
    }

    /// Whether the node id is the one the signing key gives.
    pub fn is_consistent(&self) -> bool {
        ppn_node_core::node_id_of(&self.signing_key).0.0 == self.node_id
    }
}

/// The message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    Hello = 1,
    Reply = 2,
    Confirm = 3,
}

impl MessageType {
    pub fn from_u8(t: u8) -> Option<Self> {
        match t {
            1 => Some(Self::Hello),
            2 => Some(Self::Reply),
            3 => Some(Self::Confirm),
            _ => None,
        }
    }

    /// The body length this type must have.
    pub fn body_len(self) -> usize {
        match self {
            Self::Hello => HELLO_BODY_LEN,
            Self::Reply => REPLY_BODY_LEN,
            Self::Confirm => CONFIRM_BODY_LEN,
        }
    }
}

impl core::fmt::Display for MessageType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Hello => "Hello",
            Self::Reply => "Reply",
            Self::Confirm => "Confirm",
        })
    }
}

/// Why bytes are not a pairing message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("pairing message truncated: need {need} bytes, have {have}")]
    Truncated { need: usize, have: usize },
    #[error("not a pairing message: bad magic {0:02x?}")]
    BadMagic([u8; 4]),
    #[error("unsupported pairing message version {0} (this node speaks {VERSION})")]
    UnsupportedVersion(u8),
    #[error("unknown pairing message type {0}")]
    Unknown(u8),
    #[error("pairing {ty} message declares a {len}-byte body, expected {expected}")]
    BodyLength { ty: MessageType, len: usize, expected: usize },
    #[error("pairing message has {extra} bytes after its body")]
    Trailing { extra: usize },
}

/// A checked header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub ty: MessageType,
    pub body_len: usize,
}

impl Header {
    /// Checks, in order: at least 8 bytes, the magic, the version, a known type, and the body
    /// length its type requires. Reads the 8 header bytes only, so a stream reader can learn
    /// how many bytes the message has (`HEADER_LEN + body_len`) before the body arrives.
    pub fn parse(bytes: &[u8]) -> Result<Self, DecodeError> {
        let Some(h) = bytes.first_chunk::<HEADER_LEN>() else {
            return Err(DecodeError::Truncated { need: HEADER_LEN, have: bytes.len() });
        };
        let magic = [h[0], h[1], h[2], h[3]];
        if magic != MAGIC {
            return Err(DecodeError::BadMagic(magic));
        }
        if h[4] != VERSION {
            return Err(DecodeError::UnsupportedVersion(h[4]));
        }
        let ty = MessageType::from_u8(h[5]).ok_or(DecodeError::Unknown(h[5]))?;
        let body_len = usize::from(u16::from_le_bytes([h[6], h[7]]));
        if body_len != ty.body_len() {
            return Err(DecodeError::BodyLength { ty, len: body_len, expected: ty.body_len() });
        }
        Ok(Self { ty, body_len })
    }

    /// Writes the header of a `ty` message into `out[..HEADER_LEN]`.
    fn write(ty: MessageType, out: &mut [u8]) {
        out[..4].copy_from_slice(&MAGIC);
        out[4] = VERSION;
        out[5] = ty as u8;
        // Body lengths are constants below 256.
        out[6..8].copy_from_slice(&(ty.body_len() as u16).to_le_bytes());
    }
}

/// A → B: the initiator's CPace share, its identity, and its commitment to the nonce it reveals
/// in [`Confirm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    pub share: [u8; 32],
    pub identity: Identity,
    pub commitment: [u8; 32],
}

/// B → A: the responder's CPace share, its identity, and its key-confirmation tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reply {
    pub share: [u8; 32],
    pub identity: Identity,
    pub tag: [u8; 32],
}

/// A → B: the nonce the Hello committed to, and the initiator's key-confirmation tag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Confirm {
    pub nonce: [u8; 32],
    pub tag: [u8; 32],
}

/// Any decoded message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Reply(Reply),
    Confirm(Confirm),
}

impl Message {
    pub fn ty(&self) -> MessageType {
        match self {
            Self::Hello(_) => MessageType::Hello,
            Self::Reply(_) => MessageType::Reply,
            Self::Confirm(_) => MessageType::Confirm,
        }
    }
}

fn field(b: &[u8], at: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(&b[at..at + 32]);
    out
}

fn identity_at(b: &[u8], at: usize) -> Identity {
    let mut raw = [0u8; IDENTITY_LEN];
    raw.copy_from_slice(&b[at..at + IDENTITY_LEN]);
    Identity::from_bytes(&raw)
}

/// Decodes one whole message: [`Header::parse`], then exactly `HEADER_LEN + body_len` bytes.
pub fn decode(bytes: &[u8]) -> Result<Message, DecodeError> {
    let header = Header::parse(bytes)?;
    let need = HEADER_LEN + header.body_len;
    if bytes.len() < need {
        return Err(DecodeError::Truncated { need, have: bytes.len() });
    }
    if bytes.len() > need {
        return Err(DecodeError::Trailing { extra: bytes.len() - need });
    }
    let body = &bytes[HEADER_LEN..];
    // The body has exactly the length its type needs (checked above), so the slicing below is
    // in bounds.
    Ok(match header.ty {
        MessageType::Hello => Message::Hello(Hello {
            share: field(body, 0),
            identity: identity_at(body, 32),
            commitment: field(body, 32 + IDENTITY_LEN),
        }),
        MessageType::Reply => Message::Reply(Reply {
            share: field(body, 0),
            identity: identity_at(body, 32),
            tag: field(body, 32 + IDENTITY_LEN),
        }),
        MessageType::Confirm => Message::Confirm(Confirm { nonce: field(body, 0), tag: field(body, 32) }),
    })
}

impl Hello {
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut out = [0u8; HELLO_LEN];
        let (h, body) = out.split_at_mut(HEADER_LEN);
        Header::write(MessageType::Hello, h);
        body[..32].copy_from_slice(&self.share);
        body[32..32 + IDENTITY_LEN].copy_from_slice(&self.identity.to_bytes());
        body[32 + IDENTITY_LEN..].copy_from_slice(&self.commitment);
        out
    }

    /// `ADa`: everything the Hello carries besides `Ya` (`identity || commitment`).
    pub fn ad(&self) -> [u8; IDENTITY_LEN + FIELD_LEN] {
        let mut out = [0u8; IDENTITY_LEN + FIELD_LEN];
        out[..IDENTITY_LEN].copy_from_slice(&self.identity.to_bytes());
        out[IDENTITY_LEN..].copy_from_slice(&self.commitment);
        out
    }
}

impl Reply {
    pub fn encode(&self) -> [u8; REPLY_LEN] {
        let mut out = [0u8; REPLY_LEN];
        let (h, body) = out.split_at_mut(HEADER_LEN);
        Header::write(MessageType::Reply, h);
        body[..32].copy_from_slice(&self.share);
        body[32..32 + IDENTITY_LEN].copy_from_slice(&self.identity.to_bytes());
        body[32 + IDENTITY_LEN..].copy_from_slice(&self.tag);
        out
    }
}

impl Confirm {
    pub fn encode(&self) -> [u8; CONFIRM_LEN] {
        let mut out = [0u8; CONFIRM_LEN];
        let (h, body) = out.split_at_mut(HEADER_LEN);
        Header::write(MessageType::Confirm, h);
        body[..32].copy_from_slice(&self.nonce);
        body[32..].copy_from_slice(&self.tag);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity(n: u8) -> Identity {
        Identity { node_id: [n; 8], signing_key: [n + 1; 32], wireguard_key: [n + 2; 32] }
    }

    #[test]
    fn round_trips() {
        let hello = Hello { share: [1; 32], identity: identity(7), commitment: [3; 32] };
        let reply = Reply { share: [4; 32], identity: identity(9), tag: [6; 32] };
        let confirm = Confirm { nonce: [7; 32], tag: [8; 32] };
        assert_eq!(decode(&hello.encode()), Ok(Message::Hello(hello)));
        assert_eq!(decode(&reply.encode()), Ok(Message::Reply(reply)));
        assert_eq!(decode(&confirm.encode()), Ok(Message::Confirm(confirm)));
        assert_eq!(&hello.encode()[..8], b"PPNP\x01\x01\x88\x00");
        assert_eq!(&reply.encode()[..8], b"PPNP\x01\x02\x88\x00");
        assert_eq!(&confirm.encode()[..8], b"PPNP\x01\x03\x40\x00");
    }

    #[test]
    fn header_checks_in_order() {
        let good = Confirm { nonce: [7; 32], tag: [8; 32] }.encode();
        assert_eq!(decode(&good[..7]), Err(DecodeError::Truncated { need: 8, have: 7 }));
        let mut b = good;
        b[0] = b'X';
        assert_eq!(decode(&b), Err(DecodeError::BadMagic(*b"XPNP")));
        let mut b = good;
        b[4] = 2;
        assert_eq!(decode(&b), Err(DecodeError::UnsupportedVersion(2)));
        let mut b = good;
        b[5] = 0;
        assert_eq!(decode(&b), Err(DecodeError::Unknown(0)));
        b[5] = 4;
        assert_eq!(decode(&b), Err(DecodeError::Unknown(4)));
        let mut b = good;
        b[6] = 0x41;
        assert_eq!(
            decode(&b),
            Err(DecodeError::BodyLength { ty: MessageType::Confirm, len: 0x41, expected: CONFIRM_BODY_LEN })
        );
        let mut b = good;
        b[7] = 1;
        assert!(matches!(decode(&b), Err(DecodeError::BodyLength { len: 0x140, .. })));
        assert_eq!(decode(&good[..71]), Err(DecodeError::Truncated { need: 72, have: 71 }));
        let mut long = [0u8; 73];
        long[..72].copy_from_slice(&good);
        assert_eq!(decode(&long), Err(DecodeError::Trailing { extra: 1 }));
        assert_eq!(Header::parse(&good[..8]), Ok(Header { ty: MessageType::Confirm, body_len: 64 }));
    }
}
