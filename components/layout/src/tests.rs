//! The layout's own rules. `ppn-sdf` checks the SDF against the layout; these tests check the
//! layout against the isolation it promises.

extern crate std;

use super::*;
use std::collections::{BTreeMap, BTreeSet};
use std::vec::Vec;

fn pd_names() -> Vec<&'static str> {
    PDS.iter().map(|p| p.name).collect()
}

#[test]
fn names_are_unique_and_every_reference_points_into_the_tables() {
    let pds: BTreeSet<_> = PDS.iter().map(|p| p.name).collect();
    assert_eq!(pds.len(), PDS.len(), "PD names repeat");
    let regions: BTreeSet<_> = REGIONS.iter().map(|r| r.name).collect();
    assert_eq!(regions.len(), REGIONS.len(), "region names repeat");
    let devices: BTreeSet<_> = DEVICES.iter().map(|d| d.name).collect();
    assert_eq!(devices.len(), DEVICES.len(), "device names repeat");
    let images: BTreeSet<_> = PDS.iter().map(|p| p.program_image).collect();
    assert_eq!(images.len(), PDS.len(), "two PDs share a program image");

    for m in MAPPINGS {
        assert_eq!(pd(m.pd.name), Some(m.pd), "mapping names unknown PD {}", m.pd.name);
        assert_eq!(region(m.region.name), Some(m.region), "mapping names unknown region {}", m.region.name);
    }
    for d in DEVICES {
        assert_eq!(pd(d.driver.name), Some(d.driver));
    }
    for r in REGIONS {
        if let Some(d) = r.device() {
            assert!(DEVICES.contains(d), "{} belongs to an unlisted device", r.name);
        }
    }
    for c in CHANNELS {
        assert_eq!(pd(c.a.pd.name), Some(c.a.pd));
        assert_eq!(pd(c.b.pd.name), Some(c.b.pd));
    }
    for i in IRQS {
        assert_eq!(pd(i.pd.name), Some(i.pd));
        assert!(DEVICES.contains(i.device));
    }
    for s in SETVARS {
        assert_eq!(region(s.region.name), Some(s.region));
    }
}

#[test]
fn no_two_mappings_overlap_in_one_pd() {
    for p in PDS {
        let maps: Vec<_> = MAPPINGS.iter().filter(|m| m.pd.name == p.name).collect();
        assert!(!maps.is_empty(), "{} maps nothing", p.name);
        for (i, a) in maps.iter().enumerate() {
            for b in &maps[i + 1..] {
                assert!(
                    a.end() <= b.vaddr || b.end() <= a.vaddr,
                    "in {}: {} [{:#x}..{:#x}) overlaps {} [{:#x}..{:#x})",
                    p.name,
                    a.region.name,
                    a.vaddr,
                    a.end(),
                    b.region.name,
                    b.vaddr,
                    b.end()
                );
                assert_ne!(a.region.name, b.region.name, "{} mapped twice into {}", a.region.name, p.name);
            }
        }
    }
}

#[test]
fn every_secret_region_is_mapped_into_exactly_one_pd_and_that_pd_holds_secrets() {
    let secrets: Vec<_> = REGIONS.iter().filter(|r| r.secret).collect();
    assert!(secrets.iter().any(|r| r.name == "ledger_state"), "the ledger's state must be secret");
    for r in secrets {
        let into: Vec<_> = mappings_of(r.name).map(|m| m.pd.name).collect();
        assert_eq!(into.len(), 1, "secret region {} is mapped into {:?}", r.name, into);
        assert!(pd(into[0]).unwrap().holds_secrets, "secret region {} is mapped into {}", r.name, into[0]);
    }
}

#[test]
fn a_handoff_region_is_mapped_only_into_pds_that_hold_secrets_and_no_secret_region_is_one() {
    let handoffs: Vec<_> = REGIONS.iter().filter(|r| r.handoff).collect();
    assert_eq!(handoffs.iter().map(|r| r.name).collect::<Vec<_>>(), ["attest_ledger_buffer"]);
    for r in handoffs {
        assert!(!r.secret, "{} is either secret (one PD) or a handoff (between two)", r.name);
        let into: Vec<_> = mappings_of(r.name).map(|m| m.pd.name).collect();
        assert_eq!(into, ["ledger", "attest"], "handoff region {} is mapped into {into:?}", r.name);
        assert!(into.iter().all(|p| pd(p).unwrap().holds_secrets), "handoff region {} is mapped into {into:?}", r.name);
    }
    // The attestation key lives in the attest PD's own region, and nothing link reaches carries it.
    assert_eq!(mappings_of("attest_state").map(|m| m.pd.name).collect::<Vec<_>>(), ["attest"]);
    assert!(region("attest_state").unwrap().secret);
    assert!(MAPPINGS.iter().filter(|m| m.pd.name == "link").all(|m| !m.region.secret && !m.region.handoff));
}

#[test]
fn a_pd_that_holds_no_secrets_maps_no_secret_region() {
    assert!(!pd("link").unwrap().holds_secrets, "link holds no secrets");
    for m in MAPPINGS.iter().filter(|m| !m.pd.holds_secrets) {
        assert!(!m.region.secret && !m.region.handoff, "{} maps secret region {}", m.pd.name, m.region.name);
    }
    // And nothing link can reach is secret: the buffer it shares with the ledger is public.
    assert!(!region("link_ledger_buffer").unwrap().secret);
}

#[test]
fn every_device_region_is_mapped_into_exactly_the_pd_that_drives_it() {
    let mut device_regions = 0;
    for r in REGIONS {
        let Some(device) = r.device() else { continue };
        device_regions += 1;
        let into: Vec<_> = mappings_of(r.name).map(|m| m.pd.name).collect();
        assert_eq!(into, [device.driver.name], "device region {} of {}", r.name, device.name);
    }
    // Registers and DMA memory for each virtio device; registers only for the clock.
    let virtio = DEVICES.iter().filter(|d| d.transport().is_some()).count();
    assert_eq!(device_regions, 2 * virtio + (DEVICES.len() - virtio));
    for d in DEVICES {
        let kinds: Vec<_> = REGIONS.iter().filter(|r| r.device() == Some(d)).map(|r| r.kind).collect();
        assert!(kinds.iter().any(|k| matches!(k, RegionKind::Mmio { .. })), "{} has no registers", d.name);
        let dma = kinds.iter().any(|k| matches!(k, RegionKind::Dma { .. }));
        assert_eq!(dma, d.transport().is_some(), "{}: DMA memory for virtio devices only", d.name);
    }
}

#[test]
fn device_registers_are_mapped_uncached_and_memory_cached() {
    for m in MAPPINGS {
        let mmio = matches!(m.region.kind, RegionKind::Mmio { .. });
        assert_eq!(m.cached, !mmio, "{} in {}", m.region.name, m.pd.name);
        assert!(!m.perms.execute, "{} is executable in {}", m.region.name, m.pd.name);
        assert!(m.perms.microkit_accepts());
    }
}

#[test]
fn channel_ids_are_unique_per_pd_and_within_microkits_range() {
    let mut used: BTreeMap<&str, Vec<ChannelId>> = BTreeMap::new();
    for c in CHANNELS {
        used.entry(c.a.pd.name).or_default().push(c.a.id);
        used.entry(c.b.pd.name).or_default().push(c.b.id);
    }
    for i in IRQS {
        used.entry(i.pd.name).or_default().push(i.id);
    }
    for (pd, ids) in &used {
        let unique: BTreeSet<_> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{pd} uses a channel id twice: {ids:?}");
        for id in ids {
            assert!(*id <= MAX_CHANNEL_ID, "{pd}: channel id {id} is out of range");
        }
    }
    // The ids the code names are the ones in the tables.
    assert_eq!(used["link"], [link::LEDGER_CHANNEL, link::LENDER_CHANNEL, link::ATTEST_CHANNEL, link::CONSOLE_IRQ]);
    assert_eq!(
        used["ledger"],
        [ledger::LINK_CHANNEL, ledger::LENDER_CHANNEL, ledger::ATTEST_CHANNEL, ledger::BLK_IRQ, ledger::RNG_IRQ]
    );
    assert_eq!(used["lender"], [lender::LINK_CHANNEL, lender::LEDGER_CHANNEL, lender::BLK_IRQ]);
    assert_eq!(used["attest"], [attest::LINK_CHANNEL, attest::LEDGER_CHANNEL]);
}

#[test]
fn sizes_and_addresses_are_page_multiples() {
    for r in REGIONS {
        assert!(r.size > 0 && r.size.is_multiple_of(PAGE_SIZE), "{} size {:#x}", r.name, r.size);
        if let Some(pa) = r.phys_addr() {
            assert!(pa.is_multiple_of(PAGE_SIZE), "{} phys_addr {pa:#x}", r.name);
        }
    }
    for m in MAPPINGS {
        assert!(m.vaddr.is_multiple_of(PAGE_SIZE), "{} in {} at {:#x}", m.region.name, m.pd.name, m.vaddr);
    }
    for p in PDS {
        assert!(p.stack_size.is_multiple_of(PAGE_SIZE), "{} stack", p.name);
        // Microkit's bounds: 4 KiB to 16 MiB.
        assert!((0x1000..=0x100_0000).contains(&p.stack_size), "{} stack", p.name);
    }
}

#[test]
fn mappings_stay_clear_of_program_images_and_the_stack() {
    for m in MAPPINGS {
        assert!(m.vaddr >= MAP_FLOOR, "{} in {} at {:#x} may collide with an ELF", m.region.name, m.pd.name, m.vaddr);
        // Far below the top of a 39-bit user address space, where Microkit puts the stack and
        // the IPC buffer.
        assert!(m.end() < 1 << 36, "{} in {}", m.region.name, m.pd.name);
    }
}

#[test]
fn a_protected_call_goes_only_to_a_pd_of_strictly_higher_priority() {
    for p in PDS {
        assert!(p.priority <= MAX_PRIORITY, "{}", p.name);
    }
    for c in CHANNELS {
        assert!(!(c.a.pp && c.b.pp), "{}: PPC both ways", c.purpose);
        assert_ne!(c.a.pd.name, c.b.pd.name, "a channel to itself");
        for (caller, callee) in [(&c.a, &c.b), (&c.b, &c.a)] {
            if caller.pp {
                assert!(
                    callee.pd.priority > caller.pd.priority,
                    "{} calls {} of no higher priority",
                    caller.pd.name,
                    callee.pd.name
                );
            }
        }
    }
    // At most one channel per pair of PDs (the checker relies on it).
    let mut pairs = BTreeSet::new();
    for c in CHANNELS {
        let mut pair = [c.a.pd.name, c.b.pd.name];
        pair.sort();
        assert!(pairs.insert(pair), "two channels between {pair:?}");
    }
}

#[test]
fn devices_sit_on_qemu_virt_transports_each_in_a_page_of_its_own() {
    // QEMU hw/arm/virt.c: transport n at 0x0a000000 + n * 0x200, SPI 16 + n (GIC id 48 + n).
    assert_eq!(devices::CONSOLE.regs_paddr(), 0x0a00_0000);
    assert_eq!(devices::CONSOLE.irq(), 48);
    assert_eq!(devices::BLK.regs_paddr(), 0x0a00_1000);
    assert_eq!(devices::BLK.irq(), 56);
    assert_eq!(devices::RNG.regs_paddr(), 0x0a00_2000);
    assert_eq!(devices::RNG.irq(), 64);
    assert_eq!(devices::LENDER_BLK.regs_paddr(), 0x0a00_3000);
    assert_eq!(devices::LENDER_BLK.irq(), 72);
    assert_eq!(qemu_virt::virtio_mmio_addr(31), 0x0a00_3e00);
    assert_eq!(qemu_virt::virtio_mmio_irq(31), 79);

    let mut pages = BTreeSet::new();
    // hw/arm/virt.c: VIRT_RTC at 0x09010000 (0x1000 bytes), SPI 2.
    assert_eq!((devices::RTC.regs_paddr(), devices::RTC.irq(), devices::RTC.page_offset()), (0x0901_0000, 34, 0));
    for d in DEVICES {
        if let Some(transport) = d.transport() {
            assert!(transport < qemu_virt::VIRTIO_MMIO_TRANSPORTS, "{}", d.name);
            assert!(d.regs_paddr() + qemu_virt::VIRTIO_MMIO_SIZE <= d.page_paddr() + PAGE_SIZE);
        }
        assert!(pages.insert(d.page_paddr()), "{} shares a register page with another device", d.name);
        // Device space, not RAM.
        assert!(d.page_paddr() < qemu_virt::RAM_BASE);
    }
    for r in REGIONS {
        if let RegionKind::Mmio { device } = r.kind {
            assert_eq!(r.phys_addr(), Some(device.page_paddr()));
            assert_eq!(r.size, PAGE_SIZE, "{} maps more than its device's page", r.name);
        } else {
            assert_eq!(r.phys_addr(), None, "{}: RAM is placed by the Microkit tool", r.name);
        }
    }
}

#[test]
fn every_device_interrupt_goes_to_its_driver_and_only_there() {
    // Every virtio device's interrupt is delivered; the clock is read, its alarm unused.
    assert_eq!(IRQS.len(), DEVICES.iter().filter(|d| d.transport().is_some()).count());
    let mut numbers = BTreeSet::new();
    for i in IRQS {
        assert_eq!(i.pd, i.device.driver, "IRQ of {} goes to {}", i.device.name, i.pd.name);
        assert_eq!(i.trigger, Trigger::Edge, "QEMU's virtio-mmio interrupts are edge-triggered");
        assert!(numbers.insert(i.irq()), "IRQ {} twice", i.irq());
    }
}

#[test]
fn every_dma_region_has_one_setvar_into_its_driver() {
    let dma: Vec<_> = REGIONS.iter().filter(|r| matches!(r.kind, RegionKind::Dma { .. })).collect();
    assert_eq!(SETVARS.len(), dma.len());
    for r in dma {
        let RegionKind::Dma { device, paddr_symbol } = r.kind else { unreachable!() };
        let s: Vec<_> = SETVARS.iter().filter(|s| s.region.name == r.name).collect();
        assert_eq!(s.len(), 1, "{}", r.name);
        assert_eq!(s[0].pd, device.driver, "{}'s address goes to {}", r.name, s[0].pd.name);
        assert_eq!(s[0].symbol, paddr_symbol);
    }
    let symbols: BTreeSet<_> = SETVARS.iter().map(|s| (s.pd.name, s.symbol)).collect();
    assert_eq!(symbols.len(), SETVARS.len(), "a symbol is patched twice");
}

#[test]
fn every_region_is_mapped_and_every_pd_is_in_the_layout() {
    for r in REGIONS {
        assert!(mappings_of(r.name).next().is_some(), "{} is mapped nowhere", r.name);
    }
    assert_eq!(pd_names(), ["link", "ledger", "lender", "attest"]);
}

#[test]
fn the_request_buffer_holds_a_maximum_frame_and_is_shared_by_link_and_ledger_only() {
    use buffer::*;
    assert_eq!(FRAME_CAPACITY, ppn_wire::frame::MAX_FRAME_LEN);
    assert!(FRAME_OFFSET + FRAME_CAPACITY <= SIZE as usize);
    assert_eq!(SIZE, 0x5000);
    assert_eq!(RESERVED_OFFSET + RESERVED_SIZE, FRAME_OFFSET);
    let into: Vec<_> = mappings_of(regions::LINK_LEDGER_BUFFER.name).map(|m| (m.pd.name, m.perms)).collect();
    assert_eq!(into, [("link", Perms::RW), ("ledger", Perms::RW)]);
    assert_eq!(mapping("link", "link_ledger_buffer").unwrap().vaddr, link::LEDGER_BUFFER_VADDR);
    assert_eq!(mapping("ledger", "link_ledger_buffer").unwrap().vaddr, ledger::REQUEST_BUFFER_VADDR);
}

#[test]
fn the_len_field_round_trips_and_refuses_more_than_a_frame() {
    use buffer::*;
    for len in [0, 1, 16, 4096, FRAME_CAPACITY] {
        let raw = encode_len(len).unwrap();
        assert_eq!(decode_len(raw), Some(len));
    }
    assert_eq!(encode_len(FRAME_CAPACITY + 1), None);
    assert_eq!(decode_len(((FRAME_CAPACITY + 1) as u32).to_le_bytes()), None);
    assert_eq!(decode_len([0xff; 4]), None);
    assert_eq!(encode_len(0x1234).unwrap(), [0x34, 0x12, 0, 0], "little-endian");
}

#[test]
fn link_routes_node_ledger_and_pair_to_the_ledger_lender_to_the_lender_and_attest_to_attest() {
    assert_eq!(route(Service::Node).map(|r| r.pd.name), Some("ledger"));
    assert_eq!(route(Service::Ledger).map(|r| r.pd.name), Some("ledger"));
    assert_eq!(route(Service::Pair).map(|r| r.pd.name), Some("ledger"));
    assert_eq!(route(Service::Lender).map(|r| (r.pd.name, r.buffer.name)), Some(("lender", "link_lender_buffer")));
    assert_eq!(route(Service::Attest).map(|r| (r.pd.name, r.buffer.name)), Some(("attest", "link_attest_buffer")));
    assert_eq!(route(Service::Link), None);
    for r in ROUTES {
        let c = channel_between("link", r.pd.name).expect("a channel from link");
        let (link_end, other) = if c.a.pd.name == "link" { (&c.a, &c.b) } else { (&c.b, &c.a) };
        assert_eq!(link_end.id, r.link_channel);
        assert!(link_end.pp && !other.pp, "link calls {}", r.pd.name);
        assert!(mapping("link", r.buffer.name).is_some() && mapping(r.pd.name, r.buffer.name).is_some());
        assert!(!r.buffer.secret);
    }
}

#[test]
fn per_pd_constants_agree_with_the_tables() {
    assert_eq!(link::CONSOLE_REGS_VADDR, 0x3000_0000);
    assert_eq!(ledger::BLK_REGS_VADDR, ledger::BLK_MMIO_VADDR);
    assert_eq!(ledger::RNG_REGS_VADDR, ledger::RNG_MMIO_VADDR);
    assert_eq!(mapping("ledger", "ledger_state").unwrap().vaddr, ledger::STATE_VADDR);
    assert_eq!(ledger::STATE_SIZE, region("ledger_state").unwrap().size);
    assert_eq!(mapping("link", "link_console_mmio").unwrap().vaddr, link::CONSOLE_MMIO_VADDR);
    assert_eq!(mapping("link", "link_console_dma").unwrap().vaddr, link::CONSOLE_DMA_VADDR);
    assert_eq!(mapping("ledger", "ledger_blk_dma").unwrap().vaddr, ledger::BLK_DMA_VADDR);
    assert_eq!(mapping("ledger", "ledger_rng_dma").unwrap().vaddr, ledger::RNG_DMA_VADDR);
    assert_eq!(mapping("ledger", "ledger_rng_mmio").unwrap().vaddr, ledger::RNG_MMIO_VADDR);
    assert_eq!(link::CONSOLE, devices::CONSOLE);
    assert_eq!(mapping("link", "ledger_state"), None);
}

#[test]
fn the_lender_reaches_its_pool_and_disk_alone_and_the_ledger_only_by_its_port() {
    // The pool, the lender's disk and its DMA memory: mapped into lender only.
    for r in ["lender_pool", "lender_blk_mmio", "lender_blk_dma"] {
        let into: Vec<_> = mappings_of(r).map(|m| m.pd.name).collect();
        assert_eq!(into, ["lender"], "{r}");
    }
    // Nothing of the ledger's (state, disk, entropy, clock) is mapped into lender.
    let lender_maps: Vec<_> = MAPPINGS.iter().filter(|m| m.pd.name == "lender").map(|m| m.region.name).collect();
    assert_eq!(
        lender_maps,
        ["link_lender_buffer", "lender_ledger_buffer", "lender_pool", "lender_blk_mmio", "lender_blk_dma"]
    );
    // The port's buffer: lender and ledger, nobody else; one channel, lender calls ledger.
    let into: Vec<_> = mappings_of("lender_ledger_buffer").map(|m| (m.pd.name, m.vaddr)).collect();
    assert_eq!(into, [("ledger", ledger::LENDER_BUFFER_VADDR), ("lender", lender::LEDGER_BUFFER_VADDR)]);
    let c = channel_between("lender", "ledger").unwrap();
    assert_eq!((c.a.pd.name, c.a.id, c.a.pp), ("lender", lender::LEDGER_CHANNEL, true));
    assert_eq!((c.b.pd.name, c.b.id, c.b.pp), ("ledger", ledger::LENDER_CHANNEL, false));
    let c = channel_between("link", "lender").unwrap();
    assert_eq!((c.a.id, c.b.id), (link::LENDER_CHANNEL, lender::LINK_CHANNEL));
    // The pool is 16 blocks of 2 MiB, the disks two different devices on two transports.
    assert_eq!(region("lender_pool").unwrap().size, 32 << 20);
    assert_eq!(lender::POOL_SIZE, u64::from(lender::POOL_BLOCKS) * lender::BLOCK_BYTES);
    assert_ne!(devices::LENDER_BLK.transport(), devices::BLK.transport());
    assert_eq!(lender_disk::LENDER_JOURNAL.first + lender_disk::LENDER_JOURNAL.sectors, lender_disk::SECTORS);
    assert!(ledger_port::MAX_MESSAGE as u64 <= region("lender_ledger_buffer").unwrap().size);
    // priorities: link < lender < ledger, so link may call lender and lender may call ledger.
    const { assert!(pds::LINK.priority < pds::LENDER.priority && pds::LENDER.priority < pds::LEDGER.priority) };
    assert_eq!(mapping("lender", "link_lender_buffer").unwrap().vaddr, lender::REQUEST_BUFFER_VADDR);
    assert_eq!(mapping("link", "link_lender_buffer").unwrap().vaddr, link::LENDER_BUFFER_VADDR);
    assert_eq!(mapping("lender", "lender_pool").unwrap().vaddr, lender::POOL_VADDR);
    assert_eq!(mapping("lender", "lender_blk_dma").unwrap().vaddr, lender::BLK_DMA_VADDR);
    assert_eq!(lender::BLK_REGS_VADDR, lender::BLK_MMIO_VADDR);
}

#[test]
fn perms_parse_like_microkit() {
    assert_eq!(Perms::parse("rw"), Some(Perms::RW));
    assert_eq!(Perms::parse("wr"), Some(Perms::RW));
    assert_eq!(Perms::parse("r"), Some(Perms::R));
    assert_eq!(Perms::parse("rrx").map(Perms::as_str), Some("rx"));
    assert_eq!(Perms::parse("").map(Perms::as_str), Some("-"));
    assert_eq!(Perms::parse("rw "), None);
    assert_eq!(Perms::parse("R"), None);
    assert!(!Perms::parse("w").unwrap().microkit_accepts());
    assert!(Perms::parse("wx").unwrap().microkit_accepts());
    assert_eq!(Trigger::parse("edge"), Some(Trigger::Edge));
    assert_eq!(Trigger::parse("Edge"), None);
}
