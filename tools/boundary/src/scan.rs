//! A small Rust lexer, just enough to tell code from comments and literals.
//!
//! [`code_only`] blanks every comment, string literal and character literal (keeping newlines,
//! so line numbers stay right); the keyword and attribute checks then run on what is left, so a
//! `unsafe` in a comment, a doc comment or a string is not taken for the keyword.

/// `src` with comments and string, byte-string, raw-string and character literals replaced by
/// spaces. Newlines are kept, so line `n` of the result is line `n` of `src`.
pub fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied();
        if ch == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if ch == '/' && next == Some('*') {
            // Block comments nest in Rust.
            let mut depth = 0usize;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, c[i]);
                    i += 1;
                }
            }
        } else if ch == '"' {
            i = skip_string(&c, i, &mut out);
        } else if ch == '\'' {
            i = skip_char_or_lifetime(&c, i, &mut out);
        } else if is_ident_start(ch) {
            let start = i;
            while i < c.len() && is_ident_continue(c[i]) {
                i += 1;
            }
            let ident: String = c[start..i].iter().collect();
            if matches!(ident.as_str(), "r" | "br" | "cr") && raw_string_follows(&c, i) {
                for _ in start..i {
                    out.push(' ');
                }
                i = skip_raw_string(&c, i, &mut out);
            } else {
                out.push_str(&ident);
            }
        } else {
            out.push(ch);
            i += 1;
        }
    }
    out
}

/// The 1-based line numbers and texts of the lines of `src` where the keyword `unsafe` appears
/// as code (not in a comment or literal, not as the raw identifier `r#unsafe`).
pub fn unsafe_lines(src: &str) -> Vec<(usize, String)> {
    let code = code_only(src);
    code.lines()
        .zip(src.lines())
        .enumerate()
        .filter(|(_, (code_line, _))| has_word(code_line, "unsafe"))
        .map(|(n, (_, line))| (n + 1, line.trim().to_string()))
        .collect()
}

/// Whether `line` contains `word` as a whole identifier (not part of a longer one, not a raw
/// identifier `r#word`).
pub fn has_word(line: &str, word: &str) -> bool {
    let mut from = 0;
    while let Some(pos) = line[from..].find(word) {
        let start = from + pos;
        let end = start + word.len();
        let before = line[..start].chars().next_back();
        let after = line[end..].chars().next();
        let raw = line[..start].ends_with("r#");
        if !before.is_some_and(is_ident_continue) && !after.is_some_and(is_ident_continue) && !raw {
            return true;
        }
        from = end;
    }
    false
}

/// Whether the code of `src` (comments and literals blanked) has an inner attribute that, with
/// all whitespace removed, is one of `forms` (e.g. `#![no_std]`).
pub fn has_inner_attribute(src: &str, forms: &[&str]) -> bool {
    let code: String = code_only(src).chars().filter(|c| !c.is_whitespace()).collect();
    forms.iter().any(|form| code.contains(form))
}

fn blank(out: &mut String, ch: char) {
    out.push(if ch == '\n' { '\n' } else { ' ' });
}

fn is_ident_start(ch: char) -> bool {
    ch == '_' || ch.is_alphabetic()
}

fn is_ident_continue(ch: char) -> bool {
    ch == '_' || ch.is_alphanumeric()
}

/// Skips a `"..."` literal starting at `i` (escapes honoured); returns the index after it.
fn skip_string(c: &[char], mut i: usize, out: &mut String) -> usize {
    out.push(' ');
    i += 1;
    while i < c.len() {
        match c[i] {
            '\\' => {
                blank(out, c[i]);
                if let Some(&n) = c.get(i + 1) {
                    blank(out, n);
                }
                i += 2;
            }
            '"' => {
                out.push(' ');
                return i + 1;
            }
            other => {
                blank(out, other);
                i += 1;
            }
        }
    }
    i
}

/// At `i` (after an `r`, `br` or `cr` prefix): `#`* then `"`.
fn raw_string_follows(c: &[char], mut i: usize) -> bool {
    while c.get(i) == Some(&'#') {
        i += 1;
    }
    c.get(i) == Some(&'"')
}

/// Skips `#`*`"` ... `"``#`* starting at `i` (just after the prefix).
fn skip_raw_string(c: &[char], mut i: usize, out: &mut String) -> usize {
    let mut hashes = 0;
    while c.get(i) == Some(&'#') {
        hashes += 1;
        out.push(' ');
        i += 1;
    }
    out.push(' ');
    i += 1; // the opening quote
    while i < c.len() {
        if c[i] == '"' && (1..=hashes).all(|k| c.get(i + k) == Some(&'#')) {
            for _ in 0..=hashes {
                out.push(' ');
            }
            return i + 1 + hashes;
        }
        blank(out, c[i]);
        i += 1;
    }
    i
}

/// At a `'`: a character literal (`'a'`, `'\n'`, `'\u{1F600}'`) is blanked; a lifetime or
/// label (`'a`, `'static`) is kept.
fn skip_char_or_lifetime(c: &[char], i: usize, out: &mut String) -> usize {
    let end = if c.get(i + 1) == Some(&'\\') {
        // Escaped: the closing quote comes after the escape's first character.
        (i + 3..c.len().min(i + 16)).find(|&j| c[j] == '\'')
    } else if c.get(i + 2) == Some(&'\'') {
        Some(i + 2)
    } else {
        None
    };
    match end {
        Some(end) => {
            for &ch in &c[i..=end] {
                blank(out, ch);
            }
            end + 1
        }
        None => {
            out.push('\'');
            i + 1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The keyword is spelled with `concat!` in the fixtures so that this file holds none.
    const KW: &str = concat!("un", "safe");

    fn src(template: &str) -> String {
        template.replace("KW", KW)
    }

    #[test]
    fn finds_blocks_fns_impls_externs() {
        for form in [
            "fn f() { KW { g() } }",
            "KW fn f() {}",
            "KW impl Send for X {}",
            "KW extern \"C\" { fn g(); }",
            "KW trait T {}",
            "#[KW(no_mangle)] fn f() {}",
            "let x = KW{ 1 };",
        ] {
            let s = src(form);
            assert_eq!(unsafe_lines(&s).len(), 1, "{s}");
        }
    }

    #[test]
    fn ignores_comments_strings_and_identifiers() {
        for form in [
            "// KW { }",
            "/// KW fn",
            "/* KW { } */ fn f() {}",
            "/* /* nested */ KW */ fn f() {}",
            "let s = \"KW { }\";",
            "let s = \"a \\\" KW\";",
            "let s = r#\"KW \" { }\"#;",
            "let s = br\"KW\";",
            "let s = b\"KW\";",
            "fn KW_thing() {}",
            "fn not_KW() {}",
            "let r#KW = 1;",
            "#![forbid(KW_code)]",
        ] {
            let s = src(form);
            assert!(unsafe_lines(&s).is_empty(), "{s}");
        }
    }

    #[test]
    fn char_literals_and_lifetimes() {
        let s = src("fn f<'a>(x: &'a str) -> char { let q = '\"'; KW { g() } }");
        assert_eq!(unsafe_lines(&s).len(), 1);
        let s = src("let q = '\\''; let d = '\"'; let s = \"KW\";");
        assert!(unsafe_lines(&s).is_empty(), "{s}");
        let s = src("let e = '\\u{1F600}'; let s: &'static str = \"KW\";");
        assert!(unsafe_lines(&s).is_empty(), "{s}");
    }

    #[test]
    fn line_numbers_survive_multiline_literals() {
        let s = src("let s = \"\nKW\n\";\n/*\nKW\n*/\nKW fn f() {}\n");
        assert_eq!(unsafe_lines(&s), vec![(7, format!("{KW} fn f() {{}}"))]);
    }

    #[test]
    fn inner_attributes() {
        let lib = "//! Doc.\n#![no_std]\n#![ forbid( unsafe_code ) ]\n";
        assert!(has_inner_attribute(lib, &["#![no_std]"]));
        assert!(has_inner_attribute(lib, &["#![forbid(unsafe_code)]"]));
        let commented = "// #![no_std]\nconst S: &str = \"#![no_std]\";\n";
        assert!(!has_inner_attribute(commented, &["#![no_std]"]));
    }
}
