//! The fleet root set file of `ppn-tcb --roots FILE`: one hex Ed25519 public key per line.
//!
//! ```text
//! # fleet roots (this is a comment)
//! 3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29
//! 8f1c...  # the server; text after `#` is a comment
//! ```
//!
//! Blank lines are skipped. A key is 64 hex digits (either case). `ppn ledger roots` prints a
//! TCB's root set in this format.

use ppn_ledger::Roots;
use std::path::Path;

/// Why a roots file was not read.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("roots file {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("roots file {path} line {line}: {reason}")]
    Line { path: String, line: usize, reason: String },
}

/// Parses the text of a roots file into the keys it lists. `path` only names the file in errors.
pub fn parse(text: &str, path: &str) -> Result<Roots, RootsError> {
    let mut roots = Roots::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or_default().trim();
        if line.is_empty() {
            continue;
        }
        let bad = |reason: String| RootsError::Line { path: path.to_owned(), line: i + 1, reason };
        let key = parse_key(line).map_err(bad)?;
        if !roots.add(&key) {
            return Err(bad(format!("{line} is not a valid Ed25519 public key")));
        }
    }
    Ok(roots)
}

/// Reads and parses the roots file at `path`.
pub fn load(path: &Path) -> Result<Roots, RootsError> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RootsError::Io { path: name.clone(), source })?;
    parse(&text, &name)
}

fn parse_key(s: &str) -> Result<[u8; 32], String> {
    let bad = || {
        let shown: String = s.chars().take(80).collect();
        format!("expected 64 hex digits (an Ed25519 public key), got {shown:?}")
    };
    if s.len() != 64 {
        return Err(bad());
    }
    let mut key = [0u8; 32];
    for (k, pair) in key.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        let hi = char::from(pair[0]).to_digit(16).ok_or_else(bad)?;
        let lo = char::from(pair[1]).to_digit(16).ok_or_else(bad)?;
        *k = (hi * 16 + lo) as u8;
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppn_node_core::NodeKeys;

    fn hex(k: &[u8; 32]) -> String {
        k.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn keys_comments_and_blank_lines() {
        let a = NodeKeys::from_seed(&[1; 32]);
        let b = NodeKeys::from_seed(&[2; 32]);
        let text = format!(
            "# fleet roots\n\n{}\n  {}  # the server\n{}\n",
            hex(&a.signing_public()),
            hex(&b.signing_public()).to_uppercase(),
            hex(&a.signing_public()),
        );
        let roots = parse(&text, "r.txt").unwrap();
        assert_eq!(roots.len(), 2, "a repeated key counts once");
        assert!(roots.get(&a.node_id()).is_some());
        assert!(roots.get(&b.node_id()).is_some());
        assert!(parse("# nothing\n\n", "r.txt").unwrap().is_empty());
    }

    #[test]
    fn a_bad_line_is_named() {
        let a = hex(&NodeKeys::from_seed(&[1; 32]).signing_public());
        let cases = [
            (format!("{a}\n# ok\nabc\n"), 3, "64 hex digits"),
            (format!("{a}0\n"), 1, "64 hex digits"),
            (format!("\n{}zz\n", &a[..62]), 2, "64 hex digits"),
            (format!("{a} {a}\n"), 1, "64 hex digits"),
        ];
        for (text, line, word) in cases {
            match parse(&text, "r.txt") {
                Err(e @ RootsError::Line { line: l, .. }) => {
                    assert_eq!(l, line, "{e}");
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("r.txt line {line}:")) && msg.contains(word), "{msg}");
                }
                other => panic!("{text:?}: expected an error on line {line}, got {other:?}"),
            }
        }
    }

    #[test]
    fn a_point_that_is_not_a_key_is_refused() {
        // y = 2 is not the y-coordinate of any point on edwards25519.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        let err = parse(&format!("{}\n", hex(&bad)), "r.txt").unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("not a valid Ed25519 public key"), "{err}");
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let err = load(Path::new("/nonexistent/ppn-roots.txt")).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ppn-roots.txt"), "{err}");
    }
}
