//! The pairing code: the one-time secret the operator types on both nodes, CPace's PRS.
//!
//! Ten symbols of Crockford's base32 alphabet (`0-9`, `A-Z` without `I`, `L`, `O`, `U`): 50 bits,
//! shown as two groups of five (`7K3M9-QX2HD`). Parsing is forgiving the way Crockford's is:
//! letters in either case, `I`/`L` read as `1` and `O` as `0`, and `-` and spaces ignored. The
//! canonical form (ten upper-case ASCII symbols) is the PRS. The code is all digits and letters,
//! the SAS is six digits: the operator does not mistake one for the other.

use zeroize::Zeroize;

/// Number of symbols in a code.
pub const CODE_LEN: usize = 10;
/// Bits of entropy of a code drawn with [`Code::from_random`]: 5 per symbol.
pub const CODE_BITS: u32 = 5 * CODE_LEN as u32;
/// Crockford's base32 alphabet: symbol `i` encodes the value `i`.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Why a typed code is not a code. Never holds the code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a pairing code has {CODE_LEN} symbols (dashes and spaces aside), this one has {0}")]
    Length(usize),
    #[error("a pairing code holds only digits and the letters A-Z except U; found a character that is neither")]
    Symbol,
}

/// A pairing code, in canonical form. Zeroized on drop; `Debug` does not show it; `==` is
/// constant-time.
#[derive(Clone)]
pub struct Code([u8; CODE_LEN]);

impl PartialEq for Code {
    fn eq(&self, other: &Self) -> bool {
        subtle::ConstantTimeEq::ct_eq(&self.0[..], &other.0[..]).into()
    }
}

impl Eq for Code {}

impl Drop for Code {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl core::fmt::Debug for Code {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Code(<secret>)")
    }
}

/// Shows the code to the operator, as `XXXXX-XXXXX`. Only for the one screen that must show it.
impl core::fmt::Display for Code {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for (i, &c) in self.0.iter().enumerate() {
            if i == CODE_LEN / 2 {
                f.write_str("-")?;
            }
            core::fmt::Write::write_char(f, char::from(c))?;
        }
        Ok(())
    }
}

/// The value of one typed symbol, Crockford's way; `None` if it is not one.
fn symbol_value(c: u8) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    let c = match c {
        b'O' => b'0',
        b'I' | b'L' => b'1',
        c => c,
    };
    ALPHABET.iter().position(|&a| a == c).map(|v| v as u8)
}

impl Code {
    /// A fresh code from 8 random bytes (the low 50 bits of their little-endian value are used;
    /// each symbol is uniform).
    pub fn from_random(random: &[u8; 8]) -> Self {
        let mut v = u64::from_le_bytes(*random);
        let mut out = [0u8; CODE_LEN];
        for c in out.iter_mut() {
            *c = ALPHABET[(v & 31) as usize];
            v >>= 5;
        }
        v.zeroize();
        Self(out)
    }

    /// Parses what the operator typed. `-` and ASCII spaces are skipped.
    pub fn parse(typed: &str) -> Result<Self, CodeError> {
        let mut out = [0u8; CODE_LEN];
        let mut n = 0usize;
        let mut bad = false;
        for &c in typed.as_bytes() {
            if c == b'-' || c == b' ' {
                continue;
            }
            match symbol_value(c) {
                Some(v) if n < CODE_LEN => out[n] = ALPHABET[v as usize],
                Some(_) => {}
                None => bad = true,
            }
            n += 1;
        }
        let result = if bad {
            Err(CodeError::Symbol)
        } else if n != CODE_LEN {
            Err(CodeError::Length(n))
        } else {
            return Ok(Self(out));
        };
        out.zeroize();
        result
    }

    /// The canonical form: ten upper-case ASCII symbols. This is CPace's PRS.
    pub fn as_prs(&self) -> &[u8; CODE_LEN] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use std::string::ToString;

    #[test]
    fn parse_is_forgiving_and_canonical() {
        let c = Code::parse("7k3m9-qx2hd").unwrap();
        assert_eq!(c.as_prs(), b"7K3M9QX2HD");
        assert_eq!(c.to_string(), "7K3M9-QX2HD");
        assert_eq!(Code::parse(" 7K3M9 QX2HD ").unwrap(), c);
        assert_eq!(Code::parse("O1L1I-00000").unwrap().as_prs(), b"0111100000");
    }

    #[test]
    fn parse_refuses_bad_input() {
        assert_eq!(Code::parse("7K3M9-QX2H"), Err(CodeError::Length(9)));
        assert_eq!(Code::parse("7K3M9-QX2HDD"), Err(CodeError::Length(11)));
        assert_eq!(Code::parse(""), Err(CodeError::Length(0)));
        assert_eq!(Code::parse("7K3M9-QX2HU"), Err(CodeError::Symbol));
        assert_eq!(Code::parse("7K3M9_QX2HD"), Err(CodeError::Symbol));
        assert_eq!(Code::parse("7K3M9-QX2Hé"), Err(CodeError::Symbol));
    }

    #[test]
    fn random_codes_round_trip() {
        for seed in 0..=255u8 {
            let c = Code::from_random(&[seed.wrapping_mul(37), seed, !seed, 1, 2, 3, seed ^ 0x5a, 9]);
            assert_eq!(Code::parse(&c.to_string()).unwrap(), c);
        }
        assert_eq!(Code::from_random(&[0; 8]).as_prs(), b"0000000000");
        assert_eq!(Code::from_random(&[0xff; 8]).as_prs(), b"ZZZZZZZZZZ");
    }

    #[test]
    fn debug_hides_the_code() {
        let c = Code::parse("7K3M9-QX2HD").unwrap();
        assert_eq!(std::format!("{c:?}"), "Code(<secret>)");
    }
}
