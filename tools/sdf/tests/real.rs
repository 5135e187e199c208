//! The real node image SDF passes the checker and holds what the layout has.

use ppn_sdf::{Summary, check};

pub const REAL: &str = include_str!("../../../sdf/qemu_virt_aarch64.system");

#[test]
fn the_real_sdf_matches_the_layout() {
    let summary = check("sdf/qemu_virt_aarch64.system", REAL).unwrap_or_else(|errors| {
        let listing: Vec<String> = errors.iter().map(ToString::to_string).collect();
        panic!("the real SDF fails:\n{}", listing.join("\n"))
    });
    assert_eq!(
        summary,
        Summary {
            pds: ppn_layout::PDS.len(),
            regions: ppn_layout::REGIONS.len(),
            maps: ppn_layout::MAPPINGS.len(),
            channels: ppn_layout::CHANNELS.len(),
            irqs: ppn_layout::IRQS.len(),
            setvars: ppn_layout::SETVARS.len(),
        }
    );
    assert_eq!((summary.pds, summary.regions, summary.maps), (4, 17, 22));
    assert_eq!((summary.channels, summary.irqs, summary.setvars), (5, 4, 4));
}

#[test]
fn the_attest_pd_its_secret_heap_and_its_port_are_in_the_real_sdf() {
    for needle in [
        r#"<protection_domain name="attest" priority="130" stack_size="0x4_0000">"#,
        r#"<memory_region name="attest_state" size="0x10_0000" />"#,
        r#"<map mr="attest_state" vaddr="0x2000_0000" perms="rw" cached="true" />"#,
        r#"<map mr="attest_ledger_buffer" vaddr="0x1002_0000" perms="rw" cached="true" />"#,
        r#"<end pd="link" id="3" pp="true" notify="false" />"#,
        r#"<end pd="attest" id="1" pp="true" notify="false" />"#,
        r#"<end pd="ledger" id="4" notify="false" />"#,
    ] {
        assert!(REAL.contains(needle), "{needle}");
    }
    assert_eq!(REAL.matches(r#"mr="attest_state""#).count(), 1, "the attestation key's region is mapped once");
}

#[test]
fn the_lender_pd_and_its_pool_disk_and_port_are_in_the_real_sdf() {
    // The checker compares every element with the layout; here: the lender's pieces are there.
    for needle in [
        r#"<protection_domain name="lender" priority="125" stack_size="0x10_0000">"#,
        r#"<memory_region name="lender_pool" size="0x200_0000" />"#,
        r#"<memory_region name="lender_blk_mmio" size="0x1000" phys_addr="0x0a00_3000" />"#,
        r#"<map mr="lender_ledger_buffer" vaddr="0x1001_0000" perms="rw" cached="true" />"#,
        r#"<end pd="lender" id="1" pp="true" notify="false" />"#,
        r#"<end pd="ledger" id="3" notify="false" />"#,
        r#"<irq irq="72" id="2" trigger="edge" />"#,
    ] {
        assert!(REAL.contains(needle), "{needle}");
    }
    assert_eq!(REAL.matches(r#"mr="lender_pool""#).count(), 1, "the pool is mapped into one PD");
}
