//! Broken SDFs, one per rule: each is the real SDF with one edit, and each must fail with exactly
//! the expected errors, at the lines of the offending elements.
//!
//! Building them from the real file keeps them in step with it: an edit whose text no longer
//! occurs in the real SDF fails the test instead of silently testing nothing.

use ppn_sdf::{SdfError, check};

const REAL: &str = include_str!("../../../sdf/qemu_virt_aarch64.system");
const FILE: &str = "sdf/qemu_virt_aarch64.system";

/// The real SDF with `find` (which must occur exactly once) replaced by `replace`.
fn edit(find: &str, replace: &str) -> String {
    assert_eq!(REAL.matches(find).count(), 1, "the edit's text must occur once in the real SDF: {find}");
    REAL.replacen(find, replace, 1)
}

/// The 1-based line of `anchor`, which must occur exactly once in `text`.
fn line_of(text: &str, anchor: &str) -> u32 {
    assert_eq!(text.matches(anchor).count(), 1, "anchor must occur once: {anchor}");
    let at = text.find(anchor).unwrap();
    u32::try_from(1 + text[..at].matches('\n').count()).unwrap()
}

/// Checks `text` and asserts it fails with exactly `expected`: (kind, anchor of the line).
fn expect(text: &str, expected: &[(&str, &str)]) -> Vec<SdfError> {
    let errors = check(FILE, text).expect_err("the broken SDF must fail");
    let got: Vec<(&str, u32)> = errors.iter().map(|e| (e.kind(), e.line())).collect();
    let want: Vec<(&str, u32)> = expected.iter().map(|(k, a)| (*k, line_of(text, a))).collect();
    assert_eq!(got, want, "errors:\n{}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"));
    for e in &errors {
        let printed = e.to_string();
        assert!(printed.starts_with(&format!("{FILE}:{}: ", e.line())), "{printed}");
        assert!(printed.contains(e.element()), "{printed}");
    }
    errors
}

const LINK_LAST_MAP: &str = r#"<map mr="link_console_dma" vaddr="0x4000_0000" perms="rw" cached="true" />"#;

fn add_to_link(element: &str) -> String {
    edit(LINK_LAST_MAP, &format!("{LINK_LAST_MAP}\n        {element}"))
}

const LEDGER_LAST_MAP: &str = r#"<map mr="ledger_rng_dma" vaddr="0x4010_0000" perms="rw" cached="true" />"#;

fn add_to_ledger(element: &str) -> String {
    edit(LEDGER_LAST_MAP, &format!("{LEDGER_LAST_MAP}\n        {element}"))
}

#[test]
fn a_secret_region_mapped_into_a_second_pd() {
    let bad = r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="r" />"#;
    let text = add_to_link(bad);
    let errors = expect(&text, &[("secret_shared", bad)]);
    assert_eq!(
        errors[0].to_string(),
        format!(
            "{FILE}:{}: <map mr=\"ledger_state\"> maps secret region ledger_state into link; it may only be mapped \
             into ledger",
            line_of(&text, bad)
        )
    );
}

#[test]
fn the_secret_entropy_page_mapped_into_link() {
    // Secret and a device region: the secret rule speaks first.
    let bad = r#"<map mr="ledger_rng_dma" vaddr="0x5000_0000" perms="rw" />"#;
    expect(&add_to_link(bad), &[("secret_shared", bad)]);
}

#[test]
fn a_channel_the_code_uses_is_missing() {
    let channel = r#"    <channel>
        <end pd="link" id="1" pp="true" notify="false" />
        <end pd="ledger" id="0" notify="false" />
    </channel>
"#;
    let text = edit(channel, "");
    let errors = expect(&text, &[("missing_channel", "<system>")]);
    let printed = errors[0].to_string();
    assert!(printed.contains("between link (id 1) and ledger (id 0)"), "{printed}");
}

#[test]
fn a_channel_id_repeated_on_one_line() {
    let bad = r#"<channel><end pd="link" id="5" /><end pd="link" id="5" /></channel>"#;
    let text = edit("</system>", &format!("    {bad}\n</system>"));
    let errors = expect(&text, &[("duplicate_id", bad), ("unexpected_channel", bad)]);
    assert_eq!(errors[0].element(), r#"<end pd="link" id="5">"#);
}

#[test]
fn a_channel_the_code_does_not_use() {
    let bad = r#"<channel><end pd="link" id="5" /><end pd="link" id="6" /></channel>"#;
    let text = edit("</system>", &format!("    {bad}\n</system>"));
    expect(&text, &[("unexpected_channel", bad)]);
}

#[test]
fn the_same_channel_twice() {
    let bad = r#"<channel><end pd="link" id="5" pp="true" notify="false" /><end pd="ledger" id="6" notify="false" /></channel>"#;
    let text = edit("</system>", &format!("    {bad}\n</system>"));
    expect(&text, &[("duplicate", bad)]);
}

#[test]
fn a_channel_end_with_the_wrong_id_or_both_ends_calling() {
    let text = edit(
        r#"<end pd="link" id="1" pp="true" notify="false" />"#,
        r#"<end pd="link" id="5" pp="true" notify="false" />"#,
    );
    expect(&text, &[("mismatch", r#"<end pd="link" id="5""#)]);

    // The first channel's element is marked so that its line can be found (five <channel>s).
    let text = edit(
        "<channel>\n        <end pd=\"link\" id=\"1\" pp=\"true\" notify=\"false\" />\n        <end pd=\"ledger\" id=\"0\" notify=\"false\" />",
        "<channel><!-- first -->\n        <end pd=\"link\" id=\"1\" pp=\"true\" notify=\"false\" />\n        <end pd=\"ledger\" id=\"0\" pp=\"true\" notify=\"false\" />",
    );
    expect(&text, &[("structure", "<channel><!-- first -->"), ("mismatch", r#"<end pd="ledger" id="0" pp="true""#)]);
}

#[test]
fn overlapping_mappings_in_one_pd() {
    let find = r#"<map mr="ledger_rng_mmio" vaddr="0x3010_0000""#;
    let text = edit(find, r#"<map mr="ledger_rng_mmio" vaddr="0x3000_0000""#);
    let errors = expect(&text, &[("mismatch", r#"mr="ledger_rng_mmio""#), ("overlap", r#"mr="ledger_rng_mmio""#)]);
    let printed = errors[1].to_string();
    let first = line_of(&text, r#"<map mr="ledger_blk_mmio""#);
    let want = format!("overlapping ledger_blk_mmio [0x30000000..0x30001000) mapped at line {first}");
    assert!(printed.contains(&want), "{printed}");
}

#[test]
fn a_region_grown_into_its_neighbour_overlaps_it() {
    // The overlap is computed from the SDF's own sizes, not the layout's.
    let text = edit(
        r#"<memory_region name="ledger_blk_mmio" size="0x1000""#,
        r#"<memory_region name="ledger_blk_mmio" size="0x20_0000""#,
    );
    expect(&text, &[("mismatch", r#"name="ledger_blk_mmio""#), ("overlap", r#"mr="ledger_rng_mmio""#)]);
}

#[test]
fn a_device_region_mapped_into_a_pd_that_does_not_drive_it() {
    let bad = r#"<map mr="link_console_mmio" vaddr="0x3030_0000" perms="rw" cached="false" />"#;
    let errors = expect(&add_to_ledger(bad), &[("not_driver", bad)]);
    let printed = errors[0].to_string();
    assert!(
        printed
            .ends_with("gives region link_console_mmio of device console to ledger; only its driver link may have it"),
        "{printed}"
    );

    // The clock the ledger reads is not link's either, even read only.
    let bad = r#"<map mr="ledger_rtc_mmio" vaddr="0x5000_0000" perms="r" cached="false" />"#;
    expect(&add_to_link(bad), &[("not_driver", bad)]);
    // A secret device region (the disk's DMA carries the identity seed) is named as a secret.
    let bad = r#"<map mr="ledger_blk_dma" vaddr="0x5000_0000" perms="rw" />"#;
    expect(&add_to_link(bad), &[("secret_shared", bad)]);
}

#[test]
fn a_device_interrupt_or_dma_address_given_to_a_pd_that_does_not_drive_it() {
    let bad = r#"<irq irq="56" id="7" trigger="edge" />"#;
    expect(&add_to_link(bad), &[("not_driver", bad)]);

    let bad = r#"<setvar symbol="console_paddr" region_paddr="link_console_dma" />"#;
    expect(&add_to_ledger(bad), &[("not_driver", bad)]);
}

#[test]
fn a_pd_the_layout_does_not_know() {
    let bad = r#"<protection_domain name="audit" priority="120">"#;
    let text = edit(
        "    <!-- ===== Channels",
        &format!("    {bad}<program_image path=\"audit.elf\" /></protection_domain>\n    <!-- ===== Channels"),
    );
    expect(&text, &[("unknown_pd", bad)]);
}

#[test]
fn the_attestation_key_reaches_no_pd_but_attest_and_its_handoff_no_pd_but_ledger_and_attest() {
    // The lender maps the attest PD's heap, and then the page the key is handed over in.
    for (mr, vaddr) in [("attest_state", "0x5000_0000"), ("attest_ledger_buffer", "0x5010_0000")] {
        let anchor = format!(r#"<map mr="{mr}" vaddr="{vaddr}" perms="r" />"#);
        let text = edit(
            r#"<map mr="lender_pool" vaddr="0x2000_0000" perms="rw" cached="true" />"#,
            &format!("<map mr=\"lender_pool\" vaddr=\"0x2000_0000\" perms=\"rw\" cached=\"true\" />\n        {anchor}"),
        );
        let errors = expect(&text, &[("secret_shared", &anchor)]);
        let owners = if mr == "attest_state" { "attest" } else { "ledger and attest" };
        assert!(errors[0].to_string().ends_with(&format!("it may only be mapped into {owners}")), "{}", errors[0]);
    }
}

#[test]
fn a_pd_the_layout_does_not_know_still_may_not_map_a_secret_or_a_device() {
    let pd = r#"<protection_domain name="spy" priority="1">"#;
    let secret = r#"<map mr="ledger_state" vaddr="0x2000_0000" />"#;
    let device = r#"<irq irq="64" id="0" />"#;
    let text = edit(
        "    <!-- ===== Channels",
        &format!(
            "    {pd}\n        <program_image path=\"spy.elf\" />\n        {secret}\n        {device}\n    </protection_domain>\n    <!-- ===== Channels"
        ),
    );
    expect(&text, &[("unknown_pd", pd), ("secret_shared", secret), ("not_driver", device)]);
}

#[test]
fn a_region_the_layout_does_not_know() {
    let bad = r#"<memory_region name="scratch" size="0x1000" />"#;
    let text = edit("    <!-- ===== Protection domains", &format!("    {bad}\n    <!-- ===== Protection domains"));
    expect(&text, &[("unknown_region", bad)]);
}

#[test]
fn a_mapping_at_another_vaddr_or_with_other_perms() {
    let find = r#"<map mr="link_ledger_buffer" vaddr="0x1000_0000" perms="rw" cached="true" />
        <map mr="link_lender_buffer""#;
    let text = edit(find, &find.replace("0x1000_0000", "0x1100_0000"));
    let errors = expect(&text, &[("mismatch", "0x1100_0000")]);
    assert!(
        errors[0]
            .to_string()
            .ends_with(r#"<map mr="link_ledger_buffer"> has vaddr 0x11000000 in link; the layout says 0x10000000"#),
        "{}",
        errors[0]
    );

    let find = r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="rw" cached="true" />"#;
    let text = edit(find, r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="rwx" cached="true" />"#);
    expect(&text, &[("mismatch", "perms=\"rwx\"")]);

    let text = edit(find, r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="rw" cached="false" />"#);
    expect(&text, &[("mismatch", r#"ledger_state" vaddr="0x2000_0000" perms="rw" cached="false""#)]);
}

#[test]
fn defaults_count_as_written() {
    // perms defaults to rw and cached to true: leaving them out changes nothing.
    let find = r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="rw" cached="true" />"#;
    let text = edit(find, r#"<map mr="ledger_state" vaddr="0x2000_0000" />"#);
    assert!(check(FILE, &text).is_ok());
    // notify defaults to true, which the layout does not want.
    let text = edit(r#"<end pd="ledger" id="0" notify="false" />"#, r#"<end pd="ledger" id="0" />"#);
    expect(&text, &[("mismatch", r#"<end pd="ledger" id="0" />"#)]);
}

#[test]
fn a_priority_stack_or_image_other_than_the_layouts() {
    let text = edit(r#"name="ledger" priority="150""#, r#"name="ledger" priority="50""#);
    expect(&text, &[("mismatch", r#"name="ledger" priority="50""#)]);
    let text = edit(r#"stack_size="0x4000""#, "");
    expect(&text, &[("mismatch", r#"<protection_domain name="link""#)]);
    let text = edit(r#"<program_image path="ledger.elf" />"#, r#"<program_image path="other.elf" />"#);
    expect(&text, &[("mismatch", "other.elf")]);
}

#[test]
fn a_region_with_another_size_or_physical_address() {
    let find = r#"<memory_region name="ledger_blk_mmio" size="0x1000" phys_addr="0x0a00_1000" />"#;
    let text = edit(find, &find.replace("0x0a00_1000", "0x0a00_0000"));
    expect(&text, &[("mismatch", r#"name="ledger_blk_mmio""#)]);
    let text = edit(
        r#"<memory_region name="ledger_state" size="0x40_0000" />"#,
        r#"<memory_region name="ledger_state" size="0x40_0000" phys_addr="0x4800_0000" />"#,
    );
    expect(&text, &[("mismatch", r#"name="ledger_state""#)]);
    let text = edit(r#"name="link_ledger_buffer" size="0x5000""#, r#"name="link_ledger_buffer" size="0x4800""#);
    expect(&text, &[("bad_value", r#"name="link_ledger_buffer""#), ("mismatch", r#"name="link_ledger_buffer""#)]);
}

#[test]
fn an_element_the_layout_does_not_describe() {
    let bad = r#"<virtual_machine name="guest" />"#;
    expect(&add_to_ledger(bad), &[("unknown_element", bad)]);
    let bad = r#"<domains />"#;
    let text = edit("    <!-- ===== Channels", &format!("    {bad}\n    <!-- ===== Channels"));
    expect(&text, &[("unknown_element", bad)]);
}

#[test]
fn an_attribute_the_layout_does_not_describe() {
    let find = r#"<map mr="ledger_blk_dma" vaddr="0x4000_0000" perms="rw" cached="true" />"#;
    let text =
        edit(find, r#"<map mr="ledger_blk_dma" vaddr="0x4000_0000" perms="rw" cached="true" setvar_vaddr="blk" />"#);
    let errors = expect(&text, &[("unknown_attribute", "setvar_vaddr")]);
    assert!(errors[0].to_string().contains("has attribute setvar_vaddr"));
    let text = edit(
        r#"<memory_region name="ledger_rng_dma" size="0x1000" />"#,
        r#"<memory_region name="ledger_rng_dma" size="0x1000" page_size="0x1000" />"#,
    );
    expect(&text, &[("unknown_attribute", "page_size")]);
}

#[test]
fn malformed_xml_names_its_position() {
    // An unterminated attribute value: the XML parser stops where the quote never closes.
    let find = r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="rw" cached="true" />"#;
    let text = edit(find, r#"<map mr="ledger_state" vaddr="0x2000_0000 perms="rw" cached="true" />"#);
    let errors = expect(&text, &[("malformed", r#"vaddr="0x2000_0000 perms"#)]);
    assert!(errors[0].to_string().contains("malformed XML at column"), "{}", errors[0]);

    // The XML declaration's '--' rule: a comment may not contain two dashes.
    let text = edit("<!-- ===== Channels ===== -->", "<!-- ===== Channels -- ===== -->");
    expect(&text, &[("malformed", "Channels --")]);

    let errors = check(FILE, "").unwrap_err();
    assert_eq!((errors[0].kind(), errors[0].line()), ("malformed", 1));
}

#[test]
fn something_the_layout_has_is_missing() {
    // A region: missing at <system>, and every use of it undeclared.
    let text = edit("    <memory_region name=\"ledger_rng_dma\" size=\"0x1000\" />\n", "");
    expect(
        &text,
        &[
            ("missing", "<system>"),
            ("undeclared", r#"<map mr="ledger_rng_dma""#),
            ("undeclared", r#"region_paddr="ledger_rng_dma""#),
        ],
    );
    // A mapping, an interrupt, a setvar: missing at their PD.
    let text = edit(&format!("        {LINK_LAST_MAP}\n"), "");
    let errors = expect(&text, &[("missing", r#"<protection_domain name="link""#)]);
    assert!(errors[0].to_string().contains("lacks the mapping of link_console_dma at 0x40000000 (rw)"));
    let text = edit("        <irq irq=\"64\" id=\"2\" trigger=\"edge\" />\n", "");
    expect(&text, &[("missing", r#"<protection_domain name="ledger""#)]);
    let text = edit("        <setvar symbol=\"ppn_console_dma_paddr\" region_paddr=\"link_console_dma\" />\n", "");
    expect(&text, &[("missing", r#"<protection_domain name="link""#)]);
}

#[test]
fn a_channel_id_used_twice_in_one_pd() {
    let text = edit(r#"<irq irq="64" id="2" trigger="edge" />"#, r#"<irq irq="64" id="1" trigger="edge" />"#);
    let errors = expect(&text, &[("duplicate_id", r#"irq="64""#), ("mismatch", r#"irq="64""#)]);
    let first = line_of(&text, r#"<irq irq="56""#);
    assert!(errors[0].to_string().contains(&format!("uses channel id 1 in ledger again, first at line {first}")));
    // An interrupt and a channel end share the id space.
    let text = edit(r#"<irq irq="48" id="0" trigger="edge" />"#, r#"<irq irq="48" id="1" trigger="edge" />"#);
    expect(&text, &[("mismatch", r#"irq="48""#), ("duplicate_id", r#"<end pd="link" id="1""#)]);
}

#[test]
fn values_microkit_would_refuse() {
    let text = edit(r#"<end pd="ledger" id="0" notify="false" />"#, r#"<end pd="ledger" id="62" notify="false" />"#);
    let errors = expect(&text, &[("bad_value", r#"id="62""#)]);
    assert!(errors[0].to_string().contains("0..=61"));
    let text = edit(r#"<irq irq="48" id="0""#, r#"<irq irq="0x30" id="0""#);
    expect(&text, &[("missing", r#"<protection_domain name="link""#), ("bad_value", r#"irq="0x30""#)]);
    let text = edit(
        r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="rw""#,
        r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="w""#,
    );
    expect(&text, &[("bad_value", r#"perms="w""#)]);
    let text = edit(r#"<map mr="ledger_state" vaddr="0x2000_0000""#, r#"<map mr="ledger_state" vaddr="0x2000_0800""#);
    expect(&text, &[("bad_value", "0x2000_0800"), ("mismatch", "0x2000_0800")]);
    let text = edit(
        r#"cached="false" />
        <map mr="link_console_dma""#,
        r#"cached="no" />
        <map mr="link_console_dma""#,
    );
    expect(&text, &[("bad_value", r#"cached="no""#)]);
}

#[test]
fn text_where_only_elements_belong() {
    let text = edit("    <!-- ===== Channels", "    stray words\n    <!-- ===== Channels");
    expect(&text, &[("unexpected_text", "<system>")]);
}

#[test]
fn a_second_mapping_of_the_same_region() {
    let bad = r#"<map mr="ledger_state" vaddr="0x5000_0000" perms="rw" />"#;
    expect(&add_to_ledger(bad), &[("duplicate", bad)]);
}

#[test]
fn a_wrong_root_element() {
    let text = REAL.replace("<system>", "<systems>").replace("</system>", "</systems>");
    expect(&text, &[("unknown_element", "<systems>")]);
}

#[test]
fn every_error_in_a_file_is_reported_in_line_order() {
    let text = add_to_link(r#"<map mr="ledger_state" vaddr="0x2000_0000" perms="r" />"#)
        .replacen(r#"name="ledger" priority="150""#, r#"name="ledger" priority="50""#, 1)
        .replacen(
            r#"<end pd="link" id="1" pp="true" notify="false" />"#,
            r#"<end pd="link" id="1" pp="true" notify="true" />"#,
            1,
        );
    let errors = check(FILE, &text).unwrap_err();
    let kinds: Vec<_> = errors.iter().map(SdfError::kind).collect();
    assert_eq!(kinds, ["secret_shared", "mismatch", "mismatch"]);
    assert!(errors.windows(2).all(|w| w[0].line() <= w[1].line()));
}
