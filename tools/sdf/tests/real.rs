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
    assert_eq!((summary.pds, summary.regions, summary.maps), (2, 9, 10));
}
