//! Fuzz-ish properties: random bytes and random mutations of the real SDF never panic the
//! checker, its errors are well formed, and whatever passes describes exactly the layout.

use ppn_sdf::{SdfError, Summary, check, check_bytes};
use proptest::prelude::*;

const REAL: &str = include_str!("../../../sdf/qemu_virt_aarch64.system");
const FILE: &str = "fuzz.system";

fn layout_summary() -> Summary {
    Summary {
        pds: ppn_layout::PDS.len(),
        regions: ppn_layout::REGIONS.len(),
        maps: ppn_layout::MAPPINGS.len(),
        channels: ppn_layout::CHANNELS.len(),
        irqs: ppn_layout::IRQS.len(),
        setvars: ppn_layout::SETVARS.len(),
    }
}

/// What every outcome must satisfy: a pass is the layout exactly; a failure lists at least one
/// error, in line order, each on a line of the input and printed with the file and line.
fn well_formed(text_lines: usize, outcome: &Result<Summary, Vec<SdfError>>) -> Result<(), TestCaseError> {
    match outcome {
        Ok(summary) => prop_assert_eq!(*summary, layout_summary()),
        Err(errors) => {
            prop_assert!(!errors.is_empty());
            prop_assert!(errors.windows(2).all(|w| w[0].line() <= w[1].line()));
            for e in errors {
                prop_assert!(
                    e.line() >= 1 && e.line() as usize <= text_lines + 1,
                    "line {} of {}",
                    e.line(),
                    text_lines
                );
                let printed = e.to_string();
                let prefix = format!("{FILE}:{}: ", e.line());
                prop_assert!(printed.starts_with(&prefix), "{}", printed);
            }
        }
    }
    Ok(())
}

/// One edit of a text, on its lines or its bytes.
#[derive(Debug, Clone)]
enum Mutation {
    DeleteLine(usize),
    DuplicateLine(usize),
    SwapLines(usize, usize),
    /// Replace the `n`th quoted attribute value with a token.
    ReplaceValue(usize, String),
    InsertAt(usize, String),
    DeleteRange(usize, usize),
}

fn token() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("0".to_owned()),
        Just("62".to_owned()),
        Just("-1".to_owned()),
        Just("0x1000_0000".to_owned()),
        Just("0x3000_0000".to_owned()),
        Just("ledger_state".to_owned()),
        Just("link".to_owned()),
        Just("ledger".to_owned()),
        Just("true".to_owned()),
        Just("rwx".to_owned()),
        Just("edge".to_owned()),
        "[a-z0-9_x]{1,12}",
        "[<>/=\"' a-z0-9_x!-]{0,8}",
    ]
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (0..100usize).prop_map(Mutation::DeleteLine),
        (0..100usize).prop_map(Mutation::DuplicateLine),
        (0..100usize, 0..100usize).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        (0..100usize, token()).prop_map(|(n, t)| Mutation::ReplaceValue(n, t)),
        (0..5000usize, "[<>/=\"' a-z0-9_x!-]{1,16}").prop_map(|(at, s)| Mutation::InsertAt(at, s)),
        (0..5000usize, 1..40usize).prop_map(|(at, n)| Mutation::DeleteRange(at, n)),
    ]
}

fn apply(text: &str, m: &Mutation) -> String {
    let mut lines: Vec<&str> = text.split('\n').collect();
    let n = lines.len();
    match m {
        Mutation::DeleteLine(i) => {
            lines.remove(i % n);
            lines.join("\n")
        }
        Mutation::DuplicateLine(i) => {
            lines.insert(i % n, lines[i % n]);
            lines.join("\n")
        }
        Mutation::SwapLines(a, b) => {
            lines.swap(a % n, b % n);
            lines.join("\n")
        }
        Mutation::ReplaceValue(k, value) => {
            // Quoted values start after `="`.
            let starts: Vec<usize> = text.match_indices("=\"").map(|(i, _)| i + 2).collect();
            let start = starts[k % starts.len()];
            let end = start + text[start..].find('"').unwrap_or(0);
            format!("{}{}{}", &text[..start], value, &text[end..])
        }
        Mutation::InsertAt(at, s) => {
            let at = floor_char_boundary(text, at % (text.len() + 1));
            format!("{}{}{}", &text[..at], s, &text[at..])
        }
        Mutation::DeleteRange(at, len) => {
            let start = floor_char_boundary(text, at % (text.len() + 1));
            let end = floor_char_boundary(text, (start + len).min(text.len()));
            format!("{}{}", &text[..start], &text[end..])
        }
    }
}

fn floor_char_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic_the_checker(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        let outcome = check_bytes(FILE, &bytes);
        let lines = 1 + bytes.iter().filter(|b| **b == b'\n').count();
        prop_assert!(outcome.is_err(), "random bytes are not the node image");
        well_formed(lines, &outcome)?;
    }

    #[test]
    fn random_xml_ish_text_never_panics_the_checker(text in "[<>/=\"' a-z_0-9\n!?-]{0,600}") {
        let outcome = check(FILE, &format!("<system>{text}</system>"));
        well_formed(1 + text.matches('\n').count(), &outcome)?;
    }

    #[test]
    fn mutations_of_the_real_sdf_never_panic_the_checker(mutations in prop::collection::vec(mutation(), 1..5)) {
        let mut text = REAL.to_owned();
        for m in &mutations {
            text = apply(&text, m);
        }
        let outcome = check(FILE, &text);
        well_formed(1 + text.matches('\n').count(), &outcome)?;
    }
}

#[test]
fn the_mutations_reach_the_checks_not_just_the_xml_parser() {
    // A deterministic sweep: replacing each attribute value in turn with a wrong one must fail
    // past the XML parser, on the line of the edited value.
    let starts: Vec<usize> = REAL.match_indices("=\"").map(|(i, _)| i + 2).collect();
    let mut checked = 0;
    for (k, start) in starts.iter().enumerate() {
        let line = 1 + REAL[..*start].matches('\n').count() as u32;
        if line <= 2 {
            continue; // the XML declaration's version and encoding
        }
        let text = apply(REAL, &Mutation::ReplaceValue(k, "9999".to_owned()));
        let errors = check(FILE, &text).expect_err("a wrong value must fail");
        assert!(errors.iter().all(|e| e.kind() != "malformed"), "{errors:?}");
        assert!(errors.iter().any(|e| e.line() == line), "value {k} on line {line}: {errors:?}");
        checked += 1;
    }
    assert!(checked > 60, "{checked} values edited");
}
